#include "tests/common/pgtest.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pgtest_uri(void)
{
	const char *u = getenv("KMS_TEST_PG_URI");

	return u != NULL && u[0] != '\0' ? u : NULL;
}

static PGconn *connect_quiet(void)
{
	PGconn *c;

	if (pgtest_uri() == NULL) {
		fprintf(stderr, "pgtest: KMS_TEST_PG_URI is not set\n");
		return NULL;
	}
	c = PQconnectdb(pgtest_uri());
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "pgtest: connect: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PQclear(PQexec(c, "SET client_min_messages = warning"));
	return c;
}

int pgtest_exec(const char *sql)
{
	PGconn *c = connect_quiet();
	PGresult *r;
	int rc = 0;

	if (c == NULL)
		return -1;
	r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "pgtest: %s: %s", sql, PQerrorMessage(c));
		rc = -1;
	}
	PQclear(r);
	PQfinish(c);
	return rc;
}

int pgtest_query(const char *sql, char *out, unsigned long cap)
{
	PGconn *c = connect_quiet();
	PGresult *r;
	int rc = 0;

	if (c == NULL)
		return -1;
	r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
		fprintf(stderr, "pgtest: %s: %s", sql, PQerrorMessage(c));
		rc = -1;
	} else {
		snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
	}
	PQclear(r);
	PQfinish(c);
	return rc;
}

int pgtest_reset(void)
{
	return pgtest_exec("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public");
}

int pgtest_store_path(bool on_pg, const char *dir, char *out, unsigned long cap)
{
	int n;

	if (on_pg && pgtest_reset() != 0)
		return -1;
	n = on_pg ? snprintf(out, cap, "%s", pgtest_uri()) : snprintf(out, cap, "%s/kmsd.db", dir);
	if (n < 0 || (unsigned long)n >= cap) {
		fprintf(stderr, "pgtest: store path too long\n");
		return -1;
	}
	return 0;
}
