/* The PostgreSQL side of the db_* API (db.h), on libpq.
 *
 * Statements: SQLite's ?NNN placeholders become $NNN (db_pg_translate). A persistent
 * statement is a named server-side statement, prepared at its first execution with the
 * types of its first bindings (int8, text, bytea; unknown for NULL) and again after a
 * reconnect; a one-off statement runs through PQexecParams. A statement executes at its
 * first db_step and the rows are then read from the PGresult. Integers and text travel
 * as text, blobs as binary bytea parameters; results come back as text (bytea in hex,
 * decoded on demand).
 *
 * Connection loss: the failing call returns DB_UNAVAILABLE (store.c: KMS_ERR_STORE,
 * 503) and the next statement resets the connection first. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/store/db_int.h"

static void set_error(struct db *db, int code, const char *msg)
{
	size_t n;

	free(db->errmsg);
	db->errcode = code;
	if (msg == NULL)
		msg = "unknown PostgreSQL error";
	db->errmsg = strdup(msg);
	/* libpq's messages end in a newline: not in the log line */
	if (db->errmsg != NULL) {
		n = strlen(db->errmsg);
		while (n > 0 && (db->errmsg[n - 1] == '\n' || db->errmsg[n - 1] == ' '))
			db->errmsg[--n] = '\0';
	}
}

static int map_sqlstate(const char *state)
{
	if (state == NULL)
		return DB_ERROR;
	if (strcmp(state, "23505") == 0)
		return DB_CONSTRAINT_UNIQUE;
	if (strcmp(state, "23503") == 0)
		return DB_CONSTRAINT_FOREIGNKEY;
	if (strcmp(state, "23514") == 0)
		return DB_CONSTRAINT_CHECK;
	if (strncmp(state, "23", 2) == 0)
		return DB_CONSTRAINT;
	if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0)
		return DB_BUSY;
	if (strcmp(state, "53100") == 0)
		return DB_FULL;
	if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
		return DB_UNAVAILABLE;
	return DB_ERROR;
}

/* Records a failed result (or a NULL one) as the connection's error; returns the code. */
static int result_error(struct db *db, PGresult *res)
{
	int code;

	if (PQstatus(db->pg) != CONNECTION_OK) {
		db->broken = true;
		set_error(db, DB_UNAVAILABLE, PQerrorMessage(db->pg));
		return DB_UNAVAILABLE;
	}
	if (res == NULL) {
		set_error(db, DB_ERROR, PQerrorMessage(db->pg));
		return DB_ERROR;
	}
	code = map_sqlstate(PQresultErrorField(res, PG_DIAG_SQLSTATE));
	set_error(db, code, PQresultErrorMessage(res));
	if (code == DB_UNAVAILABLE)
		db->broken = true;
	return code;
}

static int run_session(struct db *db)
{
	PGresult *res;
	int rc = DB_OK;

	if (db->session == NULL)
		return DB_OK;
	res = PQexec(db->pg, db->session);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = result_error(db, res);
	PQclear(res);
	return rc;
}

/* Before a statement: a connection known or found to be bad is reset once. */
static int ensure_conn(struct db *db)
{
	if (!db->broken && PQstatus(db->pg) == CONNECTION_OK)
		return DB_OK;
	PQreset(db->pg);
	if (PQstatus(db->pg) != CONNECTION_OK) {
		db->broken = true;
		set_error(db, DB_UNAVAILABLE, PQerrorMessage(db->pg));
		return DB_UNAVAILABLE;
	}
	db->broken = false;
	db->gen++;
	return run_session(db);
}

static void notice_quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg; /* NOTICEs (e.g. "schema already exists") are not errors */
}

/* The URI with a default connect_timeout: an unreachable server turns into an error
 * (503) within seconds instead of a worker blocked for the TCP timeout. A URI that sets
 * connect_timeout itself wins (it is processed after the default). */
PGconn *db_pg_connect(const char *uri)
{
	static const char *const keys[] = {"connect_timeout", "dbname", NULL};
	const char *vals[] = {"10", uri, NULL};

	return PQconnectdbParams(keys, vals, 1);
}

int dbpg_open(const char *uri, struct db **out)
{
	struct db *db = calloc(1, sizeof(*db));

	*out = db;
	if (db == NULL)
		return DB_ERROR;
	db->backend = DB_PG;
	db->gen = 1;
	db->pg = db_pg_connect(uri);
	if (db->pg == NULL) {
		set_error(db, DB_UNAVAILABLE, "out of memory");
		return DB_UNAVAILABLE;
	}
	if (PQstatus(db->pg) != CONNECTION_OK) {
		set_error(db, DB_UNAVAILABLE, PQerrorMessage(db->pg));
		return DB_UNAVAILABLE;
	}
	(void)PQsetNoticeProcessor(db->pg, notice_quiet, NULL);
	return DB_OK;
}

int dbpg_close(struct db *db)
{
	if (db->pg != NULL)
		PQfinish(db->pg);
	free(db->errmsg);
	free(db->session);
	free(db);
	return DB_OK;
}

int dbpg_set_session(struct db *db, const char *sql)
{
	char *copy = strdup(sql);
	int rc;

	if (copy == NULL)
		return DB_ERROR;
	free(db->session);
	db->session = copy;
	if ((rc = ensure_conn(db)) != DB_OK)
		return rc;
	return run_session(db);
}

char *db_pg_translate(const char *sql)
{
	size_t n = strlen(sql), o = 0;
	/* "?" becomes "$NNNNN" at most: 6 bytes for 1 */
	char *out = malloc(n * 6 + 1);
	long maxp = 0;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < n;) {
		char c = sql[i];

		if (c == '\'' || c == '"') {
			/* a literal or quoted identifier, copied as is up to its closing quote
			 * (a doubled quote inside closes and reopens it: same result) */
			out[o++] = sql[i++];
			while (i < n && sql[i] != c)
				out[o++] = sql[i++];
			if (i < n)
				out[o++] = sql[i++];
		} else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
			while (i < n && sql[i] != '\n')
				out[o++] = sql[i++];
		} else if (c == '?') {
			long p;

			i++;
			if (i < n && isdigit((unsigned char)sql[i])) {
				p = 0;
				while (i < n && isdigit((unsigned char)sql[i]) && p < 100000)
					p = p * 10 + (sql[i++] - '0');
			} else {
				p = maxp + 1;
			}
			if (p > maxp)
				maxp = p;
			o += (size_t)sprintf(out + o, "$%ld", p);
		} else {
			out[o++] = sql[i++];
		}
	}
	out[o] = '\0';
	return out;
}

/* The highest $N of a translated statement; used[N - 1] set for each one that occurs
 * (when used is not NULL and N <= cap). */
static int count_params(const char *translated, bool *used, int cap)
{
	int maxp = 0;
	const char *p = translated;

	/* the translation wrote every parameter as $N outside quotes; count the highest */
	for (size_t i = 0; p[i] != '\0';) {
		char c = p[i];

		if (c == '\'' || c == '"') {
			i++;
			while (p[i] != '\0' && p[i] != c)
				i++;
			if (p[i] != '\0')
				i++;
		} else if (c == '$' && isdigit((unsigned char)p[i + 1])) {
			int v = atoi(p + i + 1);

			if (v > maxp)
				maxp = v;
			if (used != NULL && v >= 1 && v <= cap)
				used[v - 1] = true;
			i++;
			while (isdigit((unsigned char)p[i]))
				i++;
		} else {
			i++;
		}
	}
	return maxp;
}

int dbpg_prepare(struct db *db, const char *sql, bool persistent, db_stmt **out)
{
	db_stmt *st = calloc(1, sizeof(*st));

	if (st == NULL)
		return DB_ERROR;
	st->db = db;
	st->sql = db_pg_translate(sql);
	if (st->sql == NULL) {
		free(st);
		return DB_ERROR;
	}
	st->nparams = count_params(st->sql, NULL, 0);
	if (st->nparams > 0) {
		st->params = calloc((size_t)st->nparams, sizeof(*st->params));
		st->used = calloc((size_t)st->nparams, sizeof(*st->used));
		if (st->params == NULL || st->used == NULL) {
			free(st->params);
			free(st->used);
			free(st->sql);
			free(st);
			return DB_ERROR;
		}
		(void)count_params(st->sql, st->used, st->nparams);
	}
	if (persistent)
		snprintf(st->name, sizeof(st->name), "kms%u", ++db->next_name);
	*out = st;
	return DB_OK;
}

static void free_row(db_stmt *st)
{
	for (int i = 0; i < st->ncols && st->blobs != NULL; i++) {
		if (st->blobs[i] != NULL)
			PQfreemem(st->blobs[i]);
		st->blobs[i] = NULL;
	}
}

int dbpg_reset(db_stmt *st)
{
	free_row(st);
	free(st->blobs);
	free(st->blob_lens);
	st->blobs = NULL;
	st->blob_lens = NULL;
	st->ncols = 0;
	PQclear(st->res);
	st->res = NULL;
	st->row = st->nrows = 0;
	st->executed = false;
	return DB_OK;
}

int dbpg_clear_bindings(db_stmt *st)
{
	for (int i = 0; i < st->nparams; i++) {
		free(st->params[i].val);
		memset(&st->params[i], 0, sizeof(st->params[i]));
	}
	return DB_OK;
}

int dbpg_finalize(db_stmt *st)
{
	(void)dbpg_reset(st);
	(void)dbpg_clear_bindings(st);
	/* A named statement stays on the server until the connection ends: persistent
	 * statements live as long as the connection anyway. */
	free(st->params);
	free(st->used);
	free(st->sql);
	free(st);
	return DB_OK;
}

int dbpg_bind(db_stmt *st, int idx, const void *v, int len, int fmt, Oid type)
{
	struct pg_param *p;

	if (idx < 1 || idx > st->nparams)
		return 25; /* SQLITE_RANGE */
	p = &st->params[idx - 1];
	free(p->val);
	memset(p, 0, sizeof(*p));
	if (v != NULL) {
		p->val = malloc((size_t)len + 1);
		if (p->val == NULL)
			return 7; /* SQLITE_NOMEM */
		memcpy(p->val, v, (size_t)len);
		p->val[len] = '\0';
		p->len = len;
		p->fmt = fmt;
		p->type = type;
	}
	return DB_OK;
}

static int execute(db_stmt *st)
{
	struct db *db = st->db;
	const char **vals = NULL;
	int *lens = NULL, *fmts = NULL;
	Oid *types = NULL;
	PGresult *res;
	ExecStatusType es;
	int rc;

	if ((rc = ensure_conn(db)) != DB_OK)
		return rc;
	if (st->nparams > 0) {
		vals = calloc((size_t)st->nparams, sizeof(*vals));
		lens = calloc((size_t)st->nparams, sizeof(*lens));
		fmts = calloc((size_t)st->nparams, sizeof(*fmts));
		types = calloc((size_t)st->nparams, sizeof(*types));
		if (vals == NULL || lens == NULL || fmts == NULL || types == NULL) {
			set_error(db, DB_ERROR, "out of memory");
			rc = DB_ERROR;
			goto out;
		}
		for (int i = 0; i < st->nparams; i++) {
			vals[i] = st->params[i].val;
			lens[i] = st->params[i].len;
			fmts[i] = st->params[i].fmt;
			/* a parameter the SQL never names (SQLite allows ?3 without ?2)
			 * still needs a type: text */
			types[i] = st->used[i] ? st->params[i].type : 25;
		}
	}
	if (st->name[0] != '\0') {
		if (st->prepared_gen != db->gen) {
			res = PQprepare(db->pg, st->name, st->sql, st->nparams, types);
			if (PQresultStatus(res) != PGRES_COMMAND_OK) {
				rc = result_error(db, res);
				PQclear(res);
				goto out;
			}
			PQclear(res);
			st->prepared_gen = db->gen;
		}
		res = PQexecPrepared(db->pg, st->name, st->nparams, vals, lens, fmts, 0);
	} else {
		res = PQexecParams(db->pg, st->sql, st->nparams, types, vals, lens, fmts, 0);
	}
	es = PQresultStatus(res);
	if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK) {
		rc = result_error(db, res);
		PQclear(res);
		goto out;
	}
	{
		const char *cmd = PQcmdStatus(res);

		if (strncmp(cmd, "INSERT", 6) == 0 || strncmp(cmd, "UPDATE", 6) == 0 ||
		    strncmp(cmd, "DELETE", 6) == 0) {
			db->changes = strtoll(PQcmdTuples(res), NULL, 10);
			db->total_changes += db->changes;
		}
	}
	st->res = res;
	st->executed = true;
	st->row = 0;
	st->nrows = es == PGRES_TUPLES_OK ? PQntuples(res) : 0;
	st->ncols = es == PGRES_TUPLES_OK ? PQnfields(res) : 0;
	if (st->ncols > 0) {
		st->blobs = calloc((size_t)st->ncols, sizeof(*st->blobs));
		st->blob_lens = calloc((size_t)st->ncols, sizeof(*st->blob_lens));
		if (st->blobs == NULL || st->blob_lens == NULL) {
			set_error(db, DB_ERROR, "out of memory");
			rc = DB_ERROR;
			goto out;
		}
	}
	rc = st->nrows > 0 ? DB_ROW : DB_DONE;
out:
	free(vals);
	free(lens);
	free(fmts);
	free(types);
	return rc;
}

int dbpg_step(db_stmt *st)
{
	if (!st->executed)
		return execute(st);
	free_row(st);
	if (st->row + 1 >= st->nrows) {
		st->row = st->nrows;
		return DB_DONE;
	}
	st->row++;
	return DB_ROW;
}

const char *dbpg_value(db_stmt *st, int col, int *len, bool *isnull)
{
	*len = 0;
	*isnull = true;
	if (st->res == NULL || st->row >= st->nrows || col < 0 || col >= st->ncols)
		return NULL;
	if (PQgetisnull(st->res, st->row, col))
		return NULL;
	*isnull = false;
	*len = PQgetlength(st->res, st->row, col);
	return PQgetvalue(st->res, st->row, col);
}

const void *dbpg_blob(db_stmt *st, int col, int *len)
{
	const char *v;
	bool isnull;
	size_t n = 0;

	*len = 0;
	v = dbpg_value(st, col, len, &isnull);
	if (v == NULL)
		return NULL;
	if (PQftype(st->res, col) != 17)
		return v; /* text read as bytes, as SQLite does */
	if (st->blobs[col] == NULL) {
		st->blobs[col] = PQunescapeBytea((const unsigned char *)v, &n);
		if (st->blobs[col] == NULL) {
			*len = 0;
			return NULL;
		}
		st->blob_lens[col] = n;
	}
	*len = (int)st->blob_lens[col];
	/* as SQLite: an empty blob reads as NULL */
	return st->blob_lens[col] == 0 ? NULL : st->blobs[col];
}

int dbpg_exec(struct db *db, const char *sql, char **errmsg)
{
	PGresult *res;
	ExecStatusType es;
	int rc;

	if (errmsg != NULL)
		*errmsg = NULL;
	if ((rc = ensure_conn(db)) != DB_OK)
		goto fail;
	res = PQexec(db->pg, sql);
	es = PQresultStatus(res);
	if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK && es != PGRES_EMPTY_QUERY) {
		rc = result_error(db, res);
		PQclear(res);
		goto fail;
	}
	PQclear(res);
	return DB_OK;
fail:
	if (errmsg != NULL)
		*errmsg = sqlite3_mprintf("%s", db->errmsg != NULL ? db->errmsg : "error");
	return rc;
}

bool dbpg_in_tx(struct db *db)
{
	PGTransactionStatusType t = PQtransactionStatus(db->pg);

	return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}
