/* A thin SQL driver under the metadata store: what store.c needs of SQLite, with the
 * same semantics, on SQLite (db_sqlite.c) or PostgreSQL through libpq (db_pg.c).
 *
 * Statements use SQLite's placeholders (?NNN or ?); the PostgreSQL driver rewrites
 * them to $NNN at prepare, skipping string literals and quoted identifiers. Result
 * codes keep SQLite's values (DB_ROW, DB_DONE, the constraint codes) so that store.c
 * reads the same on both; db_is_unique() is the portable unique-violation test.
 *
 * Lifetimes follow SQLite: a column's text or blob pointer stays valid until the next
 * db_step, db_reset or db_finalize of its statement. Parameters are copied when bound
 * (PostgreSQL) or per the destructor argument (SQLite), so DB_STATIC is always safe
 * while the caller's buffer lives until the statement has been stepped.
 *
 * Not thread-safe: one struct db is used under its owner's lock (struct store's mu). */
#ifndef KMS_STORE_DB_H
#define KMS_STORE_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum db_backend { DB_SQLITE, DB_PG };

/* SQLite's result codes, by value, where store.c tests them */
#define DB_OK 0
#define DB_ERROR 1
#define DB_BUSY 5
#define DB_FULL 13
#define DB_CONSTRAINT 19
#define DB_NOTADB 26
#define DB_ROW 100
#define DB_DONE 101
#define DB_CONSTRAINT_CHECK 275
#define DB_CONSTRAINT_FOREIGNKEY 787
#define DB_CONSTRAINT_PRIMARYKEY 1555
#define DB_CONSTRAINT_UNIQUE 2067
/* not a SQLite code: the PostgreSQL connection is lost (reset at the next call) */
#define DB_UNAVAILABLE 0x10000

/* column types (SQLite's values) */
#define DB_INTEGER 1
#define DB_FLOAT 2
#define DB_TEXT 3
#define DB_BLOB 4
#define DB_NULL 5

typedef void (*db_destructor)(void *);
#define DB_STATIC ((db_destructor)0)
#define DB_TRANSIENT ((db_destructor)-1)

struct db;
typedef struct db_stmt db_stmt;

/* Opens a SQLite file (flags are SQLite's open flags) or a PostgreSQL connection URI.
 * *out is set even on failure (for db_errmsg) unless memory ran out; db_close it. */
int db_open_sqlite(const char *path, int flags, struct db **out);
int db_open_pg(const char *uri, struct db **out);
int db_close(struct db *db); /* NULL-safe */
enum db_backend db_backend(const struct db *db);
/* The SQLite connection (NULL on PostgreSQL), for the few SQLite-only features. */
struct sqlite3 *db_sqlite_handle(struct db *db);
/* The libpq connection (NULL on SQLite), for LISTEN and leases. */
struct pg_conn *db_pg_handle(struct db *db);

/* persistent: kept for the life of the connection (SQLite's PREPARE_PERSISTENT; on
 * PostgreSQL a named server-side statement, prepared again after a reconnect). */
int db_prepare(struct db *db, const char *sql, bool persistent, db_stmt **out);
int db_finalize(db_stmt *st); /* NULL-safe */
int db_reset(db_stmt *st);
int db_clear_bindings(db_stmt *st);
int db_bind_parameter_count(db_stmt *st);
int db_bind_int64(db_stmt *st, int idx, int64_t v);
int db_bind_int(db_stmt *st, int idx, int v);
int db_bind_text(db_stmt *st, int idx, const char *t, int len, db_destructor d);
int db_bind_blob(db_stmt *st, int idx, const void *b, int len, db_destructor d);
int db_bind_null(db_stmt *st, int idx);
int db_step(db_stmt *st); /* DB_ROW, DB_DONE or an error code */
int64_t db_column_int64(db_stmt *st, int col);
int db_column_int(db_stmt *st, int col);
const unsigned char *db_column_text(db_stmt *st, int col);
const void *db_column_blob(db_stmt *st, int col);
int db_column_bytes(db_stmt *st, int col);
int db_column_type(db_stmt *st, int col);

/* rows changed by the last INSERT/UPDATE/DELETE on this connection, and in total */
int64_t db_changes(struct db *db);
int64_t db_total_changes(struct db *db);
const char *db_errmsg(struct db *db);
int db_errcode(struct db *db);
bool db_is_unique(int rc);
bool db_in_tx(struct db *db);
/* Runs a script of statements separated by ';' (no parameters). */
int db_exec(struct db *db, const char *sql, char **errmsg);
void db_free(void *p); /* frees db_exec's message */
const char *db_errstr(int rc);

/* Runs sql (a script) now and again after every reconnect: session settings such as
 * SET kmsd.node. PostgreSQL only; DB_OK on SQLite without running it. */
int db_set_session(struct db *db, const char *sql);

/* A libpq connection to uri (connect_timeout 10 s unless the URI sets one); check
 * PQstatus. For the store's second connection (LISTEN, leases). */
struct pg_conn *db_pg_connect(const char *uri);

/* PostgreSQL only: translates SQLite placeholders to $N; malloc'd result or NULL. */
char *db_pg_translate(const char *sql);

#endif
