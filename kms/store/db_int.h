/* Internals shared by db.c (dispatch), db_sqlite.c and db_pg.c. Not for store.c. */
#ifndef KMS_STORE_DB_INT_H
#define KMS_STORE_DB_INT_H

#include <libpq-fe.h>
#include <sqlite3.h>

#include "kms/store/db.h"

struct pg_param {
	char *val; /* malloc'd copy; NULL for SQL NULL */
	int len;
	int fmt;   /* 0 text, 1 binary */
	Oid type;  /* 20 int8, 25 text, 17 bytea, 0 unknown (NULL) */
};

struct db {
	enum db_backend backend;
	sqlite3 *lite;
	PGconn *pg;
	/* PostgreSQL state */
	unsigned gen;	       /* bumped at every (re)connect: named statements are per connection */
	unsigned next_name;    /* counter for named statements */
	int64_t changes, total_changes;
	int errcode;
	char *errmsg;	       /* malloc'd */
	bool broken;	       /* reset before the next statement */
	char *session;	       /* db_set_session's script, run after each reconnect */
};

struct db_stmt {
	struct db *db;
	sqlite3_stmt *lite;
	/* PostgreSQL */
	char *sql;	    /* translated */
	char name[24];	    /* "" for a one-off statement (unnamed, PQexecParams) */
	unsigned prepared_gen; /* db->gen it was prepared on; 0 = never */
	int nparams;
	struct pg_param *params;
	bool *used;	    /* per parameter: named in the SQL */
	PGresult *res;
	int row, nrows;
	bool executed;
	/* decoded bytea of the current row, per column */
	unsigned char **blobs;
	size_t *blob_lens;
	int ncols;
};

int dbpg_open(const char *uri, struct db **out);
int dbpg_close(struct db *db);
int dbpg_prepare(struct db *db, const char *sql, bool persistent, db_stmt **out);
int dbpg_finalize(db_stmt *st);
int dbpg_reset(db_stmt *st);
int dbpg_clear_bindings(db_stmt *st);
int dbpg_bind(db_stmt *st, int idx, const void *v, int len, int fmt, Oid type);
int dbpg_step(db_stmt *st);
const char *dbpg_value(db_stmt *st, int col, int *len, bool *isnull);
const void *dbpg_blob(db_stmt *st, int col, int *len);
int dbpg_exec(struct db *db, const char *sql, char **errmsg);
bool dbpg_in_tx(struct db *db);
int dbpg_set_session(struct db *db, const char *sql);

#endif
