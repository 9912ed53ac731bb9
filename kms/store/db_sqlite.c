/* The db_* API (db.h): SQLite's part, a direct pass-through to SQLite, and the
 * dispatch to db_pg.c for a PostgreSQL connection. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/store/db_int.h"

static sqlite3_destructor_type lite_destructor(db_destructor d)
{
	return d == DB_STATIC ? SQLITE_STATIC : SQLITE_TRANSIENT;
}

int db_open_sqlite(const char *path, int flags, struct db **out)
{
	struct db *db = calloc(1, sizeof(*db));

	*out = db;
	if (db == NULL)
		return SQLITE_NOMEM;
	db->backend = DB_SQLITE;
	return sqlite3_open_v2(path, &db->lite, flags, NULL);
}

int db_open_pg(const char *uri, struct db **out)
{
	return dbpg_open(uri, out);
}

int db_close(struct db *db)
{
	int rc;

	if (db == NULL)
		return DB_OK;
	if (db->backend == DB_PG)
		return dbpg_close(db);
	rc = sqlite3_close(db->lite);
	if (rc != SQLITE_OK)
		return rc; /* still open: the caller may log db_errmsg and must not retry */
	free(db);
	return DB_OK;
}

enum db_backend db_backend(const struct db *db)
{
	return db->backend;
}

struct sqlite3 *db_sqlite_handle(struct db *db)
{
	return db->lite;
}

struct pg_conn *db_pg_handle(struct db *db)
{
	return db->pg;
}

int db_prepare(struct db *db, const char *sql, bool persistent, db_stmt **out)
{
	db_stmt *st;
	int rc;

	*out = NULL;
	if (db->backend == DB_PG)
		return dbpg_prepare(db, sql, persistent, out);
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return SQLITE_NOMEM;
	st->db = db;
	rc = sqlite3_prepare_v3(db->lite, sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0, &st->lite, NULL);
	if (rc != SQLITE_OK || st->lite == NULL) {
		(void)sqlite3_finalize(st->lite);
		free(st);
		return rc != SQLITE_OK ? rc : SQLITE_MISUSE;
	}
	*out = st;
	return DB_OK;
}

int db_finalize(db_stmt *st)
{
	int rc;

	if (st == NULL)
		return DB_OK;
	if (st->db->backend == DB_PG)
		return dbpg_finalize(st);
	rc = sqlite3_finalize(st->lite);
	free(st);
	return rc;
}

int db_reset(db_stmt *st)
{
	return st->db->backend == DB_PG ? dbpg_reset(st) : sqlite3_reset(st->lite);
}

int db_clear_bindings(db_stmt *st)
{
	return st->db->backend == DB_PG ? dbpg_clear_bindings(st) : sqlite3_clear_bindings(st->lite);
}

int db_bind_parameter_count(db_stmt *st)
{
	return st->db->backend == DB_PG ? st->nparams : sqlite3_bind_parameter_count(st->lite);
}

int db_bind_int64(db_stmt *st, int idx, int64_t v)
{
	char buf[24];
	int n;

	if (st->db->backend != DB_PG)
		return sqlite3_bind_int64(st->lite, idx, v);
	n = snprintf(buf, sizeof(buf), "%" PRId64, v);
	return dbpg_bind(st, idx, buf, n, 0, 20);
}

int db_bind_int(db_stmt *st, int idx, int v)
{
	return db_bind_int64(st, idx, v);
}

int db_bind_text(db_stmt *st, int idx, const char *t, int len, db_destructor d)
{
	if (st->db->backend != DB_PG)
		return sqlite3_bind_text(st->lite, idx, t, len, lite_destructor(d));
	if (t == NULL)
		return dbpg_bind(st, idx, NULL, 0, 0, 0);
	return dbpg_bind(st, idx, t, len < 0 ? (int)strlen(t) : len, 0, 25);
}

int db_bind_blob(db_stmt *st, int idx, const void *b, int len, db_destructor d)
{
	if (st->db->backend != DB_PG)
		return sqlite3_bind_blob(st->lite, idx, b, len, lite_destructor(d));
	if (b == NULL)
		return dbpg_bind(st, idx, NULL, 0, 0, 0);
	return dbpg_bind(st, idx, b, len, 1, 17);
}

int db_bind_null(db_stmt *st, int idx)
{
	if (st->db->backend != DB_PG)
		return sqlite3_bind_null(st->lite, idx);
	return dbpg_bind(st, idx, NULL, 0, 0, 0);
}

int db_step(db_stmt *st)
{
	return st->db->backend == DB_PG ? dbpg_step(st) : sqlite3_step(st->lite);
}

int64_t db_column_int64(db_stmt *st, int col)
{
	const char *v;
	bool isnull;
	int len;

	if (st->db->backend != DB_PG)
		return sqlite3_column_int64(st->lite, col);
	v = dbpg_value(st, col, &len, &isnull);
	if (v == NULL || isnull)
		return 0;
	/* booleans come back as t/f: as SQLite, a comparison is 1 or 0 */
	if (v[0] == 't' && v[1] == '\0')
		return 1;
	if (v[0] == 'f' && v[1] == '\0')
		return 0;
	return strtoll(v, NULL, 10);
}

int db_column_int(db_stmt *st, int col)
{
	return (int)db_column_int64(st, col);
}

const unsigned char *db_column_text(db_stmt *st, int col)
{
	bool isnull;
	int len;
	const char *v;

	if (st->db->backend != DB_PG)
		return sqlite3_column_text(st->lite, col);
	v = dbpg_value(st, col, &len, &isnull);
	return isnull ? NULL : (const unsigned char *)v;
}

const void *db_column_blob(db_stmt *st, int col)
{
	int len;

	if (st->db->backend != DB_PG)
		return sqlite3_column_blob(st->lite, col);
	return dbpg_blob(st, col, &len);
}

int db_column_bytes(db_stmt *st, int col)
{
	bool isnull;
	int len = 0;

	if (st->db->backend != DB_PG)
		return sqlite3_column_bytes(st->lite, col);
	if (st->res != NULL && col >= 0 && col < st->ncols && PQftype(st->res, col) == 17) {
		(void)dbpg_blob(st, col, &len);
		return len;
	}
	(void)dbpg_value(st, col, &len, &isnull);
	return isnull ? 0 : len;
}

int db_column_type(db_stmt *st, int col)
{
	bool isnull;
	int len;
	const char *v;

	if (st->db->backend != DB_PG)
		return sqlite3_column_type(st->lite, col);
	v = dbpg_value(st, col, &len, &isnull);
	if (v == NULL || isnull)
		return DB_NULL;
	switch (PQftype(st->res, col)) {
	case 17:
		return DB_BLOB;
	case 20:
	case 21:
	case 23:
	case 16:
		return DB_INTEGER;
	default:
		return DB_TEXT;
	}
}

int64_t db_changes(struct db *db)
{
	return db->backend == DB_PG ? db->changes : sqlite3_changes64(db->lite);
}

int64_t db_total_changes(struct db *db)
{
	return db->backend == DB_PG ? db->total_changes : sqlite3_total_changes64(db->lite);
}

const char *db_errmsg(struct db *db)
{
	if (db->backend != DB_PG)
		return sqlite3_errmsg(db->lite);
	return db->errmsg != NULL ? db->errmsg : "not an error";
}

int db_errcode(struct db *db)
{
	return db->backend == DB_PG ? db->errcode : sqlite3_extended_errcode(db->lite);
}

bool db_is_unique(int rc)
{
	return rc == DB_CONSTRAINT_UNIQUE || rc == DB_CONSTRAINT_PRIMARYKEY;
}

bool db_in_tx(struct db *db)
{
	return db->backend == DB_PG ? dbpg_in_tx(db) : !sqlite3_get_autocommit(db->lite);
}

int db_exec(struct db *db, const char *sql, char **errmsg)
{
	if (db->backend == DB_PG)
		return dbpg_exec(db, sql, errmsg);
	return sqlite3_exec(db->lite, sql, NULL, NULL, errmsg);
}

void db_free(void *p)
{
	/* db_exec's message: sqlite3_malloc'd on SQLite, malloc'd on PostgreSQL; the
	 * PostgreSQL driver hands out its message through sqlite3_mprintf too */
	sqlite3_free(p);
}

const char *db_errstr(int rc)
{
	if (rc == DB_UNAVAILABLE)
		return "database connection lost";
	return sqlite3_errstr(rc);
}

int db_set_session(struct db *db, const char *sql)
{
	return db->backend == DB_PG ? dbpg_set_session(db, sql) : DB_OK;
}
