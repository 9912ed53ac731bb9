/* Unit tests for kms/store: every function on a fresh store in its own temporary
 * directory, the error categories the callers map to HTTP status, durability across
 * reopen, refusal of newer or foreign files, and compare-and-set rotation under
 * concurrency (threads on one handle and on two handles to the same file). With
 * KMS_TEST_PG_URI set, every test that does not read the SQLite file itself runs again
 * on PostgreSQL (tests/unit/test_store_pg.c has what only PostgreSQL has). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"

struct fx {
	char dir[64];
	char path[128];
	struct store *s;
	int64_t tenant; /* tenant "t1", created in setup */
};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/kmsd-test-store-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/kmsd.db", f->dir);
	if (store_open(f->path, &f->s) != KMS_OK ||
	    store_tenant_create(f->s, "t1", "phi", 1000, &f->tenant) != KMS_OK) {
		fprintf(stderr, "setup: %s\n", kms_err_detail(KMS_ERR_INTERNAL));
		store_close(f->s);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

/* The same fixture on PostgreSQL (KMS_TEST_PG_URI): an empty schema, the URI as path;
 * dir stays a temporary directory for the tests that make files beside the store. */
static int setup_pg(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/kmsd-test-store-XXXXXX");
	if (mkdtemp(f->dir) == NULL || pgtest_reset() != 0 ||
	    snprintf(f->path, sizeof(f->path), "%s", pgtest_uri()) >= (int)sizeof(f->path)) {
		free(f);
		return -1;
	}
	if (store_open(f->path, &f->s) != KMS_OK ||
	    store_tenant_create(f->s, "t1", "phi", 1000, &f->tenant) != KMS_OK) {
		fprintf(stderr, "setup_pg: %s\n", kms_err_detail(KMS_ERR_INTERNAL));
		store_close(f->s);
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	store_close(f->s);
	(void)nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void assert_detail_has(kms_err rc, const char *needle)
{
	const char *d = kms_err_detail(rc);

	if (strstr(d, needle) == NULL)
		fail_msg("detail \"%s\" does not contain \"%s\"", d, needle);
}

static void make_version(struct store_version *v, uint32_t version, uint8_t tag)
{
	memset(v, 0, sizeof(*v));
	v->version = version;
	v->mk_version = 7;
	v->blob_len = 40;
	memset(v->blob, tag, v->blob_len);
	v->blob[0] = (uint8_t)version;
	memset(v->mac, 0xa0 ^ tag, sizeof(v->mac));
	v->created = 2000 + version;
}

static int64_t make_key(struct fx *f, const char *name)
{
	struct store_version v1;
	int64_t id = -1;

	make_version(&v1, 1, 0x11);
	assert_int_equal(store_key_create(f->s, f->tenant, name, "aes256-gcm96", 1500, &v1, &id),
			 KMS_OK);
	return id;
}

/* Raw SQLite access to the file, bypassing the store, for tampering and inspection. */
static sqlite3 *raw_open(const char *path)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_busy_timeout(db, 5000), SQLITE_OK);
	return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
		sqlite3_free(msg);
		fail();
	}
}

static void raw_text(sqlite3 *db, const char *sql, char *out, size_t cap)
{
	sqlite3_stmt *st = NULL;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	assert_int_equal(sqlite3_finalize(st), SQLITE_OK);
}

/* ---- open ---- */

static void test_open_mode_0600(void **state)
{
	struct fx *f = *state;
	char wal[160], shm[160];
	struct stat sb;

	assert_int_equal(stat(f->path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	/* the WAL and shared-memory files exist while a connection is open and must not be
	 * any more readable than the database */
	snprintf(wal, sizeof(wal), "%s-wal", f->path);
	snprintf(shm, sizeof(shm), "%s-shm", f->path);
	assert_int_equal(stat(wal, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	assert_int_equal(stat(shm, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
}

static void test_open_mode_ignores_umask_and_tightens(void **state)
{
	struct fx *f = *state;
	struct store *s2 = NULL;
	char p[160];
	struct stat sb;
	mode_t old;
	FILE *fp;

	snprintf(p, sizeof(p), "%s/umask.db", f->dir);
	old = umask(0);
	assert_int_equal(store_open(p, &s2), KMS_OK);
	umask(old);
	assert_int_equal(stat(p, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	store_close(s2);

	/* an existing empty file with a loose mode is tightened, not trusted */
	snprintf(p, sizeof(p), "%s/loose.db", f->dir);
	fp = fopen(p, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(chmod(p, 0644), 0);
	assert_int_equal(store_open(p, &s2), KMS_OK);
	assert_int_equal(stat(p, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	store_close(s2);
}

static void test_open_wal_and_schema(void **state)
{
	struct fx *f = *state;
	char got[32];
	sqlite3 *db = raw_open(f->path);

	raw_text(db, "PRAGMA journal_mode", got, sizeof(got));
	assert_string_equal(got, "wal");
	raw_text(db, "SELECT version FROM schema_version", got, sizeof(got));
	assert_int_equal(atoi(got), STORE_SCHEMA_VERSION);
	raw_text(db, "PRAGMA application_id", got, sizeof(got));
	assert_string_equal(got, "1802335076");
	/* foreign keys are declared (checked through the store in other tests) */
	raw_text(db, "SELECT count(*) FROM pragma_foreign_key_list('key_versions')", got,
		 sizeof(got));
	assert_string_equal(got, "1");
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_open_errors(void **state)
{
	struct fx *f = *state;
	struct store *s2 = (struct store *)1;
	char p[160], got[16];
	struct stat sb;
	sqlite3 *db;
	FILE *fp;

	assert_int_equal(store_open(NULL, &s2), KMS_ERR_INVALID);
	assert_int_equal(store_open("", &s2), KMS_ERR_INVALID);

	assert_int_equal(store_open("/nonexistent-dir/x/kmsd.db", &s2), KMS_ERR_CONFIG);
	assert_null(s2);
	assert_int_equal(store_open(f->dir, &s2), KMS_ERR_CONFIG); /* a directory */

	snprintf(p, sizeof(p), "%s/text.db", f->dir);
	fp = fopen(p, "w");
	assert_non_null(fp);
	for (int i = 0; i < 100; i++)
		fputs("this is not a database file at all\n", fp);
	fclose(fp);
	assert_int_equal(chmod(p, 0644), 0);
	assert_int_equal(store_open(p, &s2), KMS_ERR_CONFIG);
	assert_detail_has(KMS_ERR_CONFIG, "not a SQLite database");
	assert_null(s2);
	assert_int_equal(stat(p, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0644);

	/* another application's SQLite file is left exactly as it was: no migration, no
	 * journal mode change, no chmod */
	snprintf(p, sizeof(p), "%s/foreign.db", f->dir);
	assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
	raw_exec(db, "CREATE TABLE accounts (id INTEGER PRIMARY KEY)");
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	assert_int_equal(chmod(p, 0644), 0);
	assert_int_equal(store_open(p, &s2), KMS_ERR_CONFIG);
	assert_detail_has(KMS_ERR_CONFIG, "not a kmsd store");
	db = raw_open(p);
	raw_text(db, "SELECT count(*) FROM sqlite_schema", got, sizeof(got));
	assert_string_equal(got, "1");
	raw_text(db, "PRAGMA journal_mode", got, sizeof(got));
	assert_string_equal(got, "delete");
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	assert_int_equal(stat(p, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0644);
}

static void test_open_newer_schema_refused(void **state)
{
	struct fx *f = *state;
	struct store *s2 = NULL;
	char got[16];
	sqlite3 *db;

	store_close(f->s);
	f->s = NULL;
	char sql[64], want[32];

	snprintf(sql, sizeof(sql), "UPDATE schema_version SET version = %d", STORE_SCHEMA_VERSION + 1);
	db = raw_open(f->path);
	raw_exec(db, sql);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);

	assert_int_equal(store_open(f->path, &s2), KMS_ERR_CONFIG);
	assert_null(s2);
	snprintf(want, sizeof(want), "schema version %d", STORE_SCHEMA_VERSION + 1);
	assert_detail_has(KMS_ERR_CONFIG, want);
	assert_detail_has(KMS_ERR_CONFIG, "newer kmsd");
	assert_int_equal(store_open(f->path, &s2), KMS_ERR_CONFIG); /* and again */

	/* refused without touching the version */
	db = raw_open(f->path);
	raw_text(db, "SELECT version FROM schema_version", got, sizeof(got));
	assert_string_equal(got, want + strlen("schema version "));
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_reopen_keeps_data(void **state)
{
	struct fx *f = *state;
	struct store_version v2, got_v;
	struct store_principal p;
	struct store_tenant t;
	struct store_token tok, got_tok;
	struct store_key k;
	int64_t key_id, pid, *tids = NULL;
	size_t n = 0;
	char buf[64];

	key_id = make_key(f, "k1");
	make_version(&v2, 2, 0x22);
	assert_int_equal(store_key_rotate(f->s, key_id, &v2), KMS_OK);
	assert_int_equal(store_meta_set(f->s, "initialized", "yes"), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "svc", "service", &f->tenant, 1, 1600, &pid),
			 KMS_OK);
	memset(&tok, 0, sizeof(tok));
	snprintf(tok.accessor, sizeof(tok.accessor), "acc1");
	tok.principal_id = pid;
	memset(tok.hash, 0x5a, sizeof(tok.hash));
	tok.created = 1700;
	tok.expires = 9999;
	assert_int_equal(store_token_create(f->s, &tok), KMS_OK);

	store_close(f->s);
	f->s = NULL;
	assert_int_equal(store_open(f->path, &f->s), KMS_OK);

	assert_int_equal(store_meta_get(f->s, "initialized", buf, sizeof(buf)), KMS_OK);
	assert_string_equal(buf, "yes");
	assert_int_equal(store_tenant_get(f->s, "t1", &t), KMS_OK);
	assert_int_equal(t.id, f->tenant);
	assert_int_equal(store_key_get(f->s, f->tenant, "k1", &k), KMS_OK);
	assert_int_equal(k.id, key_id);
	assert_int_equal(k.latest_version, 2);
	assert_int_equal(store_version_get(f->s, key_id, 2, &got_v), KMS_OK);
	assert_int_equal(got_v.blob_len, v2.blob_len);
	assert_memory_equal(got_v.blob, v2.blob, v2.blob_len);
	assert_memory_equal(got_v.mac, v2.mac, STORE_MAC_LEN);
	assert_int_equal(store_principal_get(f->s, "svc", &p), KMS_OK);
	assert_int_equal(p.id, pid);
	assert_int_equal(store_principal_tenants(f->s, pid, &tids, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_int_equal(tids[0], f->tenant);
	free(tids);
	assert_int_equal(store_token_get(f->s, "acc1", &got_tok), KMS_OK);
	assert_memory_equal(got_tok.hash, tok.hash, STORE_HASH_LEN);
	assert_int_equal(got_tok.expires, 9999);
}

/* ---- meta ---- */

static void test_meta(void **state)
{
	struct fx *f = *state;
	char buf[16], big[5000], name[STORE_NAME_MAX + 2];

	assert_int_equal(store_meta_get(f->s, "initialized", buf, sizeof(buf)), KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "initialized");
	assert_int_equal(store_meta_set(f->s, "initialized", "1"), KMS_OK);
	assert_int_equal(store_meta_get(f->s, "initialized", buf, sizeof(buf)), KMS_OK);
	assert_string_equal(buf, "1");
	assert_int_equal(store_meta_set(f->s, "initialized", "2"), KMS_OK);
	assert_int_equal(store_meta_get(f->s, "initialized", buf, sizeof(buf)), KMS_OK);
	assert_string_equal(buf, "2");
	assert_int_equal(store_meta_set(f->s, "empty", ""), KMS_OK);
	assert_int_equal(store_meta_get(f->s, "empty", buf, sizeof(buf)), KMS_OK);
	assert_string_equal(buf, "");

	/* a value that does not fit is refused, not truncated */
	assert_int_equal(store_meta_set(f->s, "long", "0123456789abcdef"), KMS_OK);
	assert_int_equal(store_meta_get(f->s, "long", buf, sizeof(buf)), KMS_ERR_INVALID);
	assert_int_equal(store_meta_get(f->s, "long", buf, 0), KMS_ERR_INVALID);

	memset(big, 'v', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(store_meta_set(f->s, "big", big), KMS_ERR_INVALID);
	big[4096] = '\0';
	assert_int_equal(store_meta_set(f->s, "big", big), KMS_OK);
	memset(name, 'k', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(store_meta_set(f->s, name, "x"), KMS_ERR_INVALID);
	assert_int_equal(store_meta_set(f->s, "", "x"), KMS_ERR_INVALID);
	assert_int_equal(store_meta_set(f->s, "k", NULL), KMS_ERR_INVALID);
	assert_int_equal(store_meta_get(f->s, NULL, buf, sizeof(buf)), KMS_ERR_INVALID);
}

/* ---- tenants ---- */

static void test_tenants(void **state)
{
	struct fx *f = *state;
	char name[STORE_NAME_MAX + 2];
	struct store_tenant t, *list = NULL;
	int64_t id = 0;
	size_t n = 0;

	assert_int_equal(store_tenant_get(f->s, "t1", &t), KMS_OK);
	assert_int_equal(t.id, f->tenant);
	assert_string_equal(t.name, "t1");
	assert_string_equal(t.retention, "phi");
	assert_int_equal(t.created, 1000);

	assert_int_equal(store_tenant_create(f->s, "t1", "non-phi", 1, &id), KMS_ERR_CONFLICT);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFLICT), "tenant \"t1\" already exists");
	assert_int_equal(store_tenant_get(f->s, "nope", &t), KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "nope");
	assert_int_equal(store_tenant_create(f->s, "x", "secret", 1, &id), KMS_ERR_INVALID);
	assert_int_equal(store_tenant_create(f->s, "x", NULL, 1, &id), KMS_ERR_INVALID);
	assert_int_equal(store_tenant_create(f->s, "", "phi", 1, &id), KMS_ERR_INVALID);
	assert_int_equal(store_tenant_create(f->s, NULL, "phi", 1, &id), KMS_ERR_INVALID);

	/* STORE_NAME_MAX bytes is the limit, one more is refused */
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(store_tenant_create(f->s, name, "phi", 1, &id), KMS_ERR_INVALID);
	assert_int_equal(store_tenant_get(f->s, name, &t), KMS_ERR_INVALID);
	name[STORE_NAME_MAX] = '\0';
	assert_int_equal(store_tenant_create(f->s, name, "non-phi", 5, &id), KMS_OK);
	assert_int_equal(store_tenant_get(f->s, name, &t), KMS_OK);
	assert_int_equal(strlen(t.name), STORE_NAME_MAX);
	assert_string_equal(t.retention, "non-phi");

	/* names are bytes: UTF-8 and quotes go through bound parameters untouched */
	assert_int_equal(store_tenant_create(f->s, "kl\xc3\xadnica'; DROP TABLE tenants;--", "phi",
					     6, NULL),
			 KMS_OK);
	assert_int_equal(store_tenant_create(f->s, "a", "phi", 7, NULL), KMS_OK);
	assert_int_equal(store_tenant_list(f->s, &list, &n), KMS_OK);
	assert_int_equal(n, 4);
	assert_string_equal(list[0].name, "a");
	assert_string_equal(list[1].name, "kl\xc3\xadnica'; DROP TABLE tenants;--");
	assert_string_equal(list[2].name, name);
	assert_string_equal(list[3].name, "t1");
	free(list);
}

static void test_tenant_list_empty(void **state)
{
	struct store_tenant *list = (struct store_tenant *)1;
	struct store *s2 = NULL;
	struct fx *f = *state;
	char p[160];
	size_t n = 99;

	snprintf(p, sizeof(p), "%s/empty.db", f->dir);
	assert_int_equal(store_open(p, &s2), KMS_OK);
	assert_int_equal(store_tenant_list(s2, &list, &n), KMS_OK);
	assert_int_equal(n, 0);
	assert_null(list);
	store_close(s2);
}

/* ---- keys and versions ---- */

static void test_keys(void **state)
{
	struct fx *f = *state;
	struct store_version v1, v;
	struct store_key k;
	int64_t id, other_tenant, id2;
	char **names = NULL, type[40];
	size_t n = 0;

	id = make_key(f, "k-b");
	assert_int_equal(store_key_get(f->s, f->tenant, "k-b", &k), KMS_OK);
	assert_int_equal(k.id, id);
	assert_int_equal(k.tenant_id, f->tenant);
	assert_string_equal(k.name, "k-b");
	assert_string_equal(k.type, "aes256-gcm96");
	assert_int_equal(k.created, 1500);
	assert_int_equal(k.latest_version, 1);
	assert_int_equal(k.min_decryption_version, 1);
	assert_int_equal(k.min_encryption_version, 0);
	assert_int_equal(k.deletion_allowed, 0);
	assert_int_equal(k.auto_rotate_period, 0);

	make_version(&v1, 1, 0x33);
	assert_int_equal(store_key_create(f->s, f->tenant, "k-b", "aes256-gcm96", 1, &v1, &id2),
			 KMS_ERR_CONFLICT);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFLICT), "key \"k-b\" already exists");
	/* the failed create left version 1 of the existing key alone */
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_OK);
	assert_int_equal(v.blob[1], 0x11);

	/* the same name in another tenant is another key */
	assert_int_equal(store_tenant_create(f->s, "t2", "non-phi", 1, &other_tenant), KMS_OK);
	assert_int_equal(store_key_create(f->s, other_tenant, "k-b", "aes256-gcm96", 1, &v1, &id2),
			 KMS_OK);
	assert_true(id2 != id);

	assert_int_equal(store_key_create(f->s, 424242, "k-x", "aes256-gcm96", 1, &v1, &id2),
			 KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "tenant");
	assert_int_equal(store_key_get(f->s, f->tenant, "nope", &k), KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "nope");
	assert_int_equal(store_key_get(f->s, other_tenant + 100, "k-b", &k), KMS_ERR_NOT_FOUND);

	/* invalid input is refused before anything is written */
	make_version(&v, 2, 0x33);
	assert_int_equal(store_key_create(f->s, f->tenant, "k-v2", "aes256-gcm96", 1, &v, NULL),
			 KMS_ERR_INVALID);
	make_version(&v, 1, 0x33);
	v.blob_len = 0;
	assert_int_equal(store_key_create(f->s, f->tenant, "k-e", "aes256-gcm96", 1, &v, NULL),
			 KMS_ERR_INVALID);
	v.blob_len = STORE_BLOB_MAX + 1;
	assert_int_equal(store_key_create(f->s, f->tenant, "k-e", "aes256-gcm96", 1, &v, NULL),
			 KMS_ERR_INVALID);
	assert_int_equal(store_key_create(f->s, f->tenant, "k-e", "aes256-gcm96", 1, NULL, NULL),
			 KMS_ERR_INVALID);
	memset(type, 't', sizeof(type) - 1);
	type[sizeof(type) - 1] = '\0';
	assert_int_equal(store_key_create(f->s, f->tenant, "k-e", type, 1, &v1, NULL),
			 KMS_ERR_INVALID);
	assert_int_equal(store_key_create(f->s, f->tenant, "k-e", "", 1, &v1, NULL),
			 KMS_ERR_INVALID);
	assert_int_equal(store_key_get(f->s, f->tenant, "k-e", &k), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_key_get(f->s, f->tenant, "k-v2", &k), KMS_ERR_NOT_FOUND);

	v1.blob_len = STORE_BLOB_MAX;
	assert_int_equal(store_key_create(f->s, f->tenant, "k-a", "aes256-gcm96", 1, &v1, NULL),
			 KMS_OK);
	assert_int_equal(store_key_list(f->s, f->tenant, &names, &n), KMS_OK);
	assert_int_equal(n, 2);
	assert_string_equal(names[0], "k-a");
	assert_string_equal(names[1], "k-b");
	store_names_free(names, n);
}

static void test_key_list_edges(void **state)
{
	struct fx *f = *state;
	char **names = (char **)1;
	int64_t empty;
	size_t n = 99;

	assert_int_equal(store_tenant_create(f->s, "empty", "phi", 1, &empty), KMS_OK);
	assert_int_equal(store_key_list(f->s, empty, &names, &n), KMS_OK);
	assert_int_equal(n, 0);
	assert_null(names);
	store_names_free(names, n);
	assert_int_equal(store_key_list(f->s, empty + 1000, &names, &n), KMS_ERR_NOT_FOUND);
	assert_null(names);
	assert_int_equal(n, 0);
}

static void test_versions(void **state)
{
	struct fx *f = *state;
	struct store_version v, want, *list = NULL;
	int64_t id = make_key(f, "k");
	size_t n = 0;

	make_version(&want, 1, 0x11);
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_OK);
	assert_int_equal(v.version, 1);
	assert_int_equal(v.mk_version, 7);
	assert_int_equal(v.blob_len, 40);
	assert_memory_equal(v.blob, want.blob, 40);
	assert_memory_equal(v.mac, want.mac, STORE_MAC_LEN);
	assert_int_equal(v.created, want.created);
	assert_int_equal(store_version_get(f->s, id, 2, &v), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_version_get(f->s, id + 99, 1, &v), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_version_get(f->s, id, 0, &v), KMS_ERR_NOT_FOUND);

	make_version(&want, 2, 0x22);
	assert_int_equal(store_key_rotate(f->s, id, &want), KMS_OK);
	assert_int_equal(store_version_list(f->s, id, &list, &n), KMS_OK);
	assert_int_equal(n, 2);
	assert_int_equal(list[0].version, 1);
	assert_int_equal(list[1].version, 2);
	assert_memory_equal(list[1].blob, want.blob, want.blob_len);
	free(list);
	list = NULL;
	assert_int_equal(store_version_list(f->s, id + 99, &list, &n), KMS_ERR_NOT_FOUND);
	assert_null(list);
	assert_int_equal(n, 0);
}

static void test_rotate_compare_and_set(void **state)
{
	struct fx *f = *state;
	struct store_version v, got, *list = NULL;
	struct store_key k;
	int64_t id = make_key(f, "k");
	size_t n = 0;

	make_version(&v, 2, 0x22);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_OK);
	assert_int_equal(store_key_get(f->s, f->tenant, "k", &k), KMS_OK);
	assert_int_equal(k.latest_version, 2);

	/* a caller that read latest_version 1 before that rotation is refused and writes
	 * nothing: version 2 keeps its blob and latest_version stays 2 */
	make_version(&v, 2, 0x99);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "latest is 2");
	assert_int_equal(store_version_get(f->s, id, 2, &got), KMS_OK);
	assert_int_equal(got.blob[1], 0x22);
	/* a version that skips ahead is refused too */
	make_version(&v, 4, 0x44);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_ERR_CONFLICT);
	assert_int_equal(store_version_get(f->s, id, 4, &got), KMS_ERR_NOT_FOUND);
	make_version(&v, 1, 0x44);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_ERR_CONFLICT);

	assert_int_equal(store_key_get(f->s, f->tenant, "k", &k), KMS_OK);
	assert_int_equal(k.latest_version, 2);
	assert_int_equal(store_version_list(f->s, id, &list, &n), KMS_OK);
	assert_int_equal(n, 2);
	free(list);

	make_version(&v, 2, 0x22);
	assert_int_equal(store_key_rotate(f->s, id + 99, &v), KMS_ERR_NOT_FOUND);
	make_version(&v, 0, 0x22);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_ERR_INVALID);
	make_version(&v, 3, 0x22);
	v.blob_len = STORE_BLOB_MAX + 1;
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_ERR_INVALID);
	assert_int_equal(store_key_rotate(f->s, id, NULL), KMS_ERR_INVALID);

	make_version(&v, 3, 0x33);
	assert_int_equal(store_key_rotate(f->s, id, &v), KMS_OK);
	assert_int_equal(store_key_get(f->s, f->tenant, "k", &k), KMS_OK);
	assert_int_equal(k.latest_version, 3);
}

/* A row edited behind the store's back (CHECKs switched off) must not overflow the
 * fixed-size output fields. */
static void test_corrupt_row_refused(void **state)
{
	struct fx *f = *state;
	struct store_version v;
	int64_t id = make_key(f, "k");
	char sql[160];
	sqlite3 *db;

	db = raw_open(f->path);
	raw_exec(db, "PRAGMA ignore_check_constraints = ON");
	snprintf(sql, sizeof(sql),
		 "UPDATE key_versions SET blob = zeroblob(200) WHERE key_id = %lld",
		 (long long)id);
	raw_exec(db, sql);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_ERR_STORE);
	assert_string_equal(kms_err_detail(KMS_ERR_STORE), "metadata store error");
}

/* ---- concurrency ---- */

#define ROT_THREADS 8
#define ROT_EACH 25

struct rot_arg {
	struct store *s;
	int64_t tenant, key_id;
	uint8_t tag;
	int done, conflicts, failed;
};

static void *rotate_worker(void *p)
{
	struct rot_arg *a = p;
	struct store_version v;
	struct store_key k;
	kms_err rc;

	while (a->done < ROT_EACH) {
		if (store_key_get(a->s, a->tenant, "hot", &k) != KMS_OK) {
			a->failed = 1;
			break;
		}
		make_version(&v, k.latest_version + 1, a->tag);
		rc = store_key_rotate(a->s, a->key_id, &v);
		if (rc == KMS_OK) {
			a->done++;
		} else if (rc == KMS_ERR_CONFLICT) {
			a->conflicts++; /* someone else won this version: re-read and retry */
		} else {
			a->failed = 1;
			break;
		}
	}
	return NULL;
}

static void test_concurrent_rotate(void **state)
{
	struct fx *f = *state;
	struct rot_arg args[ROT_THREADS];
	pthread_t th[ROT_THREADS];
	struct store_version *list = NULL;
	struct store *s2 = NULL;
	int per_tag[ROT_THREADS + 1] = {0};
	int conflicts = 0;
	int64_t id = make_key(f, "hot");
	struct store_key k;
	size_t n = 0, i;

	/* half the threads go through a second connection, so the compare-and-set is also
	 * exercised across SQLite connections (BEGIN IMMEDIATE + busy_timeout), not only
	 * under the in-process mutex */
	assert_int_equal(store_open(f->path, &s2), KMS_OK);
	for (i = 0; i < ROT_THREADS; i++) {
		memset(&args[i], 0, sizeof(args[i]));
		args[i].s = i % 2 ? s2 : f->s;
		args[i].tenant = f->tenant;
		args[i].key_id = id;
		args[i].tag = (uint8_t)(i + 1);
		assert_int_equal(pthread_create(&th[i], NULL, rotate_worker, &args[i]), 0);
	}
	for (i = 0; i < ROT_THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (i = 0; i < ROT_THREADS; i++) {
		assert_int_equal(args[i].failed, 0);
		assert_int_equal(args[i].done, ROT_EACH);
		conflicts += args[i].conflicts;
	}
	store_close(s2);
	/* how often the compare-and-set refused a stale version (varies run to run) */
	print_message("compare-and-set conflicts retried: %d\n", conflicts);

	assert_int_equal(store_key_get(f->s, f->tenant, "hot", &k), KMS_OK);
	assert_int_equal(k.latest_version, 1 + ROT_THREADS * ROT_EACH);
	assert_int_equal(store_version_list(f->s, id, &list, &n), KMS_OK);
	assert_int_equal(n, 1 + ROT_THREADS * ROT_EACH);
	for (i = 0; i < n; i++) {
		/* consecutive: no gap, no twin */
		assert_int_equal(list[i].version, i + 1);
		assert_int_equal(list[i].blob[0], (uint8_t)(i + 1));
		if (i > 0) {
			assert_in_range(list[i].blob[1], 1, ROT_THREADS);
			per_tag[list[i].blob[1]]++;
		}
	}
	for (i = 1; i <= ROT_THREADS; i++)
		assert_int_equal(per_tag[i], ROT_EACH);
	free(list);
}

/* ---- principals ---- */

static void test_principals(void **state)
{
	struct fx *f = *state;
	struct store_principal p, *list = NULL;
	int64_t t2, t3, ids[2], dup[2], bogus[1] = {987654}, admin, svc, *tids = NULL, x;
	char name[STORE_NAME_MAX + 2];
	size_t n = 0;

	assert_int_equal(store_tenant_create(f->s, "t2", "phi", 1, &t2), KMS_OK);
	assert_int_equal(store_tenant_create(f->s, "t3", "phi", 1, &t3), KMS_OK);

	/* admins are not scoped to tenants: the ids are ignored */
	ids[0] = t2;
	ids[1] = f->tenant;
	assert_int_equal(store_principal_create(f->s, "root", "admin", ids, 2, 100, &admin), KMS_OK);
	assert_int_equal(store_principal_tenants(f->s, admin, &tids, &n), KMS_OK);
	assert_int_equal(n, 0);
	assert_null(tids);

	assert_int_equal(store_principal_create(f->s, "ehr", "service", ids, 2, 200, &svc), KMS_OK);
	assert_int_equal(store_principal_tenants(f->s, svc, &tids, &n), KMS_OK);
	assert_int_equal(n, 2);
	assert_int_equal(tids[0], f->tenant < t2 ? f->tenant : t2); /* ascending */
	assert_int_equal(tids[1], f->tenant < t2 ? t2 : f->tenant);
	free(tids);
	tids = NULL;

	assert_int_equal(store_principal_get(f->s, "ehr", &p), KMS_OK);
	assert_int_equal(p.id, svc);
	assert_string_equal(p.name, "ehr");
	assert_string_equal(p.role, "service");
	assert_int_equal(p.created, 200);
	assert_int_equal(store_principal_get_id(f->s, admin, &p), KMS_OK);
	assert_string_equal(p.name, "root");
	assert_string_equal(p.role, "admin");

	assert_int_equal(store_principal_create(f->s, "ehr", "service", NULL, 0, 1, &x),
			 KMS_ERR_CONFLICT);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFLICT), "principal \"ehr\" already exists");
	assert_int_equal(store_principal_get(f->s, "nope", &p), KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "nope");
	assert_int_equal(store_principal_get_id(f->s, svc + 100, &p), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_principal_tenants(f->s, svc + 100, &tids, &n), KMS_ERR_NOT_FOUND);

	/* a bad tenant id or a repeated one fails the whole create: no principal row */
	assert_int_equal(store_principal_create(f->s, "lab", "service", bogus, 1, 1, &x),
			 KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "987654");
	assert_int_equal(store_principal_get(f->s, "lab", &p), KMS_ERR_NOT_FOUND);
	dup[0] = t3;
	dup[1] = t3;
	assert_int_equal(store_principal_create(f->s, "lab", "service", dup, 2, 1, &x),
			 KMS_ERR_INVALID);
	assert_int_equal(store_principal_get(f->s, "lab", &p), KMS_ERR_NOT_FOUND);

	assert_int_equal(store_principal_create(f->s, "lab", "superuser", NULL, 0, 1, &x),
			 KMS_ERR_INVALID);
	assert_int_equal(store_principal_create(f->s, "lab", "service", NULL, 1, 1, &x),
			 KMS_ERR_INVALID);
	memset(name, 'p', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(store_principal_create(f->s, name, "admin", NULL, 0, 1, &x),
			 KMS_ERR_INVALID);
	assert_int_equal(store_principal_get(f->s, name, &p), KMS_ERR_INVALID);

	/* a service with no tenants is allowed (it can do nothing yet) */
	assert_int_equal(store_principal_create(f->s, "idle", "service", NULL, 0, 1, &x), KMS_OK);
	assert_int_equal(store_principal_tenants(f->s, x, &tids, &n), KMS_OK);
	assert_int_equal(n, 0);

	assert_int_equal(store_principal_list(f->s, &list, &n), KMS_OK);
	assert_int_equal(n, 3);
	assert_string_equal(list[0].name, "ehr");
	assert_string_equal(list[1].name, "idle");
	assert_string_equal(list[2].name, "root");
	free(list);
}

/* ---- tokens ---- */

static void test_tokens(void **state)
{
	struct fx *f = *state;
	struct store_token t, got;
	int64_t pid;

	assert_int_equal(store_principal_create(f->s, "ehr", "service", NULL, 0, 1, &pid), KMS_OK);
	memset(&t, 0, sizeof(t));
	snprintf(t.accessor, sizeof(t.accessor), "hvs.acc-1");
	t.principal_id = pid;
	memset(t.hash, 0x42, sizeof(t.hash));
	t.created = 300;
	t.expires = 0;
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	assert_int_equal(store_token_get(f->s, "hvs.acc-1", &got), KMS_OK);
	assert_string_equal(got.accessor, "hvs.acc-1");
	assert_int_equal(got.principal_id, pid);
	assert_memory_equal(got.hash, t.hash, STORE_HASH_LEN);
	assert_int_equal(got.created, 300);
	assert_int_equal(got.expires, 0);
	assert_int_equal(got.revoked, 0);
	assert_int_equal(got.last_used, 0);
	/* last used only moves forward; an unknown accessor changes nothing */
	assert_int_equal(store_token_touch(f->s, "hvs.acc-1", 400), KMS_OK);
	assert_int_equal(store_token_touch(f->s, "hvs.acc-1", 350), KMS_OK);
	assert_int_equal(store_token_touch(f->s, "hvs.nobody", 500), KMS_OK);
	assert_int_equal(store_token_get(f->s, "hvs.acc-1", &got), KMS_OK);
	assert_int_equal(got.last_used, 400);

	assert_int_equal(store_token_create(f->s, &t), KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "already exists");
	assert_int_equal(store_token_get(f->s, "hvs.other", &got), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_token_revoke(f->s, "hvs.other"), KMS_ERR_NOT_FOUND);

	assert_int_equal(store_token_revoke(f->s, "hvs.acc-1"), KMS_OK);
	assert_int_equal(store_token_get(f->s, "hvs.acc-1", &got), KMS_OK);
	assert_int_equal(got.revoked, 1);
	assert_int_equal(store_token_revoke(f->s, "hvs.acc-1"), KMS_OK); /* idempotent */

	snprintf(t.accessor, sizeof(t.accessor), "hvs.acc-2");
	t.principal_id = pid + 100;
	assert_int_equal(store_token_create(f->s, &t), KMS_ERR_NOT_FOUND);
	assert_detail_has(KMS_ERR_NOT_FOUND, "principal");
	assert_int_equal(store_token_get(f->s, "hvs.acc-2", &got), KMS_ERR_NOT_FOUND);

	t.principal_id = pid;
	t.expires = -1;
	assert_int_equal(store_token_create(f->s, &t), KMS_ERR_INVALID);
	t.expires = 5000;
	t.revoked = 7; /* any non-zero means revoked */
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	assert_int_equal(store_token_get(f->s, "hvs.acc-2", &got), KMS_OK);
	assert_int_equal(got.revoked, 1);
	assert_int_equal(got.expires, 5000);

	t.accessor[0] = '\0';
	assert_int_equal(store_token_create(f->s, &t), KMS_ERR_INVALID);
	memset(t.accessor, 'a', sizeof(t.accessor)); /* not terminated */
	assert_int_equal(store_token_create(f->s, &t), KMS_ERR_INVALID);
	t.accessor[STORE_ACCESSOR_MAX] = '\0';
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	assert_int_equal(store_token_get(f->s, t.accessor, &got), KMS_OK);
	assert_int_equal(store_token_get(f->s, "", &got), KMS_ERR_INVALID);
	assert_int_equal(store_token_get(f->s, NULL, &got), KMS_ERR_INVALID);
	assert_int_equal(store_token_revoke(f->s, NULL), KMS_ERR_INVALID);
	assert_int_equal(store_token_create(f->s, NULL), KMS_ERR_INVALID);
}

static void test_null_handles(void **state)
{
	struct store_tenant t;
	char buf[8];

	(void)state;
	store_close(NULL);
	store_names_free(NULL, 0);
	assert_int_equal(store_meta_get(NULL, "k", buf, sizeof(buf)), KMS_ERR_INTERNAL);
	assert_int_equal(store_tenant_get(NULL, "t", &t), KMS_ERR_INTERNAL);
}

static struct store_event ev_of(const char *event, uint32_t version, const char *reason)
{
	struct store_event e;

	memset(&e, 0, sizeof(e));
	snprintf(e.event, sizeof(e.event), "%s", event);
	snprintf(e.principal, sizeof(e.principal), "admin");
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	e.version = version;
	e.time = 5000;
	return e;
}

static void test_lifecycle(void **state)
{
	struct fx *f = *state;
	struct store_event e, *evs = NULL;
	struct store_version v;
	struct store_key k, cfg;
	size_t n = 0;
	int64_t id = make_key(f, "lk");

	/* a new version is enabled, a new key not revoked */
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_ENABLED);
	assert_int_equal(store_key_get(f->s, f->tenant, "lk", &k), KMS_OK);
	assert_int_equal(k.revoked, 0);

	/* transitions are compare-and-set; a refusal names the state and writes nothing */
	e = ev_of("disable", 1, "suspected");
	assert_int_equal(store_version_transition(f->s, id, 1, STORE_STATE_ENABLED, STORE_STATE_DISABLED, 0, &e), KMS_OK);
	assert_int_equal(store_version_transition(f->s, id, 1, STORE_STATE_ENABLED, STORE_STATE_DISABLED, 0, &e),
			 KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "is disabled, not enabled");
	assert_int_equal(store_version_transition(f->s, id, 9, STORE_STATE_ENABLED, STORE_STATE_DISABLED, 0, &e),
			 KMS_ERR_NOT_FOUND);
	assert_int_equal(store_version_transition(f->s, id, 1, "bogus", STORE_STATE_DISABLED, 0, &e), KMS_ERR_INVALID);
	e = ev_of("schedule", 1, "");
	assert_int_equal(store_version_transition(f->s, id, 1, STORE_STATE_DISABLED, STORE_STATE_PENDING, 777, &e), KMS_OK);
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_PENDING);
	assert_int_equal(v.destroy_after, 777);

	/* several versions at once: all or none */
	{
		struct store_version v2, v3;
		uint32_t vers[2] = {2, 3};
		const char *from[2] = {STORE_STATE_ENABLED, STORE_STATE_DISABLED}; /* 3 is enabled */
		struct store_event *hist = NULL;
		size_t nh = 0;

		make_version(&v2, 2, 0x22);
		make_version(&v3, 3, 0x33);
		assert_int_equal(store_key_rotate(f->s, id, &v2), KMS_OK);
		assert_int_equal(store_key_rotate(f->s, id, &v3), KMS_OK);
		e = ev_of("trim", 0, "");
		assert_int_equal(store_versions_transition(f->s, id, 2, vers, from, STORE_STATE_PENDING, 888, &e),
				 KMS_ERR_CONFLICT);
		assert_detail_has(KMS_ERR_CONFLICT, "key version 3 changed meanwhile");
		assert_int_equal(store_version_get(f->s, id, 2, &v), KMS_OK);
		assert_string_equal(v.state, STORE_STATE_ENABLED); /* rolled back */
		from[1] = STORE_STATE_ENABLED;
		assert_int_equal(store_versions_transition(f->s, id, 2, vers, from, STORE_STATE_PENDING, 888, &e),
				 KMS_OK);
		assert_int_equal(store_version_get(f->s, id, 3, &v), KMS_OK);
		assert_string_equal(v.state, STORE_STATE_PENDING);
		assert_int_equal(v.destroy_after, 888);
		assert_int_equal(store_key_events(f->s, id, &hist, &nh), KMS_OK);
		assert_int_equal(nh, 4); /* disable, schedule, and one trim per version */
		assert_int_equal(hist[2].version, 2);
		assert_int_equal(hist[3].version, 3);
		free(hist);
		/* back out of them for the rest of this test */
		e = ev_of("cancel", 0, "");
		from[0] = from[1] = STORE_STATE_PENDING;
		assert_int_equal(store_versions_transition(f->s, id, 2, vers, from, STORE_STATE_DISABLED, 0, &e),
				 KMS_OK);
	}

	/* revocation */
	e = ev_of("revoke", 0, "stolen");
	assert_int_equal(store_key_set_revoked(f->s, id, 1, &e), KMS_OK);
	assert_int_equal(store_key_set_revoked(f->s, id, 1, &e), KMS_ERR_CONFLICT);
	assert_int_equal(store_key_get(f->s, f->tenant, "lk", &k), KMS_OK);
	assert_int_equal(k.revoked, 1);
	e = ev_of("restore", 0, "ok");
	assert_int_equal(store_key_set_revoked(f->s, id, 0, &e), KMS_OK);
	assert_int_equal(store_key_set_revoked(f->s, id, 0, &e), KMS_ERR_CONFLICT);

	/* config */
	cfg = k;
	cfg.min_decryption_version = 1;
	cfg.min_encryption_version = 1;
	cfg.deletion_allowed = 1;
	cfg.auto_rotate_period = 7200;
	e = ev_of("config", 0, "");
	assert_int_equal(store_key_config(f->s, id, &cfg, &e), KMS_OK);
	assert_int_equal(store_key_get(f->s, f->tenant, "lk", &k), KMS_OK);
	assert_int_equal(k.min_encryption_version, 1);
	assert_int_equal(k.deletion_allowed, 1);
	assert_int_equal(k.auto_rotate_period, 7200);
	assert_int_equal(store_key_config(f->s, 999999, &cfg, &e), KMS_ERR_NOT_FOUND);

	/* the history holds exactly the transitions that happened, in order */
	assert_int_equal(store_key_events(f->s, id, &evs, &n), KMS_OK);
	assert_int_equal(n, 9);
	assert_string_equal(evs[0].event, "disable");
	assert_int_equal(evs[0].version, 1);
	assert_string_equal(evs[0].reason, "suspected");
	assert_string_equal(evs[1].event, "schedule");
	assert_string_equal(evs[2].event, "trim");
	assert_string_equal(evs[4].event, "cancel");
	assert_string_equal(evs[6].event, "revoke");
	assert_int_equal(evs[6].version, 0);
	assert_string_equal(evs[7].event, "restore");
	assert_string_equal(evs[8].event, "config");
	assert_string_equal(evs[8].principal, "admin");
	assert_int_equal(evs[8].time, 5000);
	free(evs);
}

/* A destruction with its erasure receipt is one transaction: stored together, or (the
 * receipt refused) neither, the version still pending. */
/* The change stamp in front of the caches: unchanged while nobody commits, and read
 * then from the wal-index header without a statement; another process's commit moves
 * its external part at once; this connection's own write moves only the local part. */
static void test_change_stamp_sees_other_process(void **state)
{
	struct fx *f = *state;
	struct store_stamp a, b, c, d, e;
	int64_t own;
	uint64_t q0;
	pid_t pid;
	int status;

	assert_int_equal(store_change_stamp(f->s, &a), KMS_OK);
	q0 = store_change_stamp_queries(f->s);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(store_change_stamp(f->s, &b), KMS_OK);
		assert_true(b.external == a.external && b.local == a.local);
	}
	/* nothing committed: no statement ran for these 50 */
	assert_true(store_change_stamp_queries(f->s) == q0);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		sqlite3 *db = NULL;
		int ok = sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
			 sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
			 sqlite3_exec(db, "INSERT INTO meta (k, v) VALUES ('test.other-process', '1')", NULL,
				      NULL, NULL) == SQLITE_OK;
		sqlite3_close(db);
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(store_change_stamp(f->s, &c), KMS_OK);
	assert_true(c.external != b.external);
	assert_true(c.local == b.local);
	assert_int_equal(store_change_stamp(f->s, &d), KMS_OK);
	assert_true(d.external == c.external && d.local == c.local);

	assert_int_equal(store_tenant_create(f->s, "t-own", "phi", 1000, &own), KMS_OK);
	assert_int_equal(store_change_stamp(f->s, &e), KMS_OK);
	assert_true(e.external == d.external);
	assert_true(e.local != d.local);
	q0 = store_change_stamp_queries(f->s);
	assert_int_equal(store_change_stamp(f->s, &e), KMS_OK);
	assert_true(store_change_stamp_queries(f->s) == q0);
}

static void test_destroy_with_receipt_is_one_transaction(void **state)
{
	struct fx *f = *state;
	struct store_event e = ev_of("x", 1, "");
	static const uint8_t sig[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
	struct store_receipt r = {"{\"format\":\"kmsd-erasure-receipt-v1\"}", sig, sizeof(sig), 200};
	struct store_version v;
	char *text = NULL;
	uint8_t *got = NULL;
	size_t got_len = 0;
	int64_t a = make_key(f, "ra"), b = make_key(f, "rb");

	assert_int_equal(store_version_transition(f->s, a, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 100, &e), KMS_OK);
	assert_int_equal(store_version_transition(f->s, b, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 100, &e), KMS_OK);
	assert_int_equal(store_receipt_get(f->s, a, 1, &text, &got, &got_len), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_version_destroy(f->s, a, 1, &e, &r), KMS_OK);
	assert_int_equal(store_version_get(f->s, a, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_DESTROYED);
	assert_int_equal(store_receipt_get(f->s, a, 1, &text, &got, &got_len), KMS_OK);
	assert_string_equal(text, r.text);
	assert_int_equal(got_len, sizeof(sig));
	assert_memory_equal(got, sig, sizeof(sig));
	free(text);
	free(got);

	/* b already has a receipt (written by hand): its destruction is refused whole */
	assert_int_equal(store_receipt_put(f->s, b, 1, "{}", sig, sizeof(sig), 150), KMS_OK);
	assert_int_equal(store_version_destroy(f->s, b, 1, &e, &r), KMS_ERR_CONFLICT);
	assert_int_equal(store_version_get(f->s, b, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_PENDING);
	assert_true(v.blob_len > 1);
}

static void test_destroy_and_due(void **state)
{
	struct fx *f = *state;
	struct store_event e = ev_of("x", 1, "");
	struct store_due *due = NULL;
	struct store_version v, before;
	struct store_tenant t, cfg;
	size_t n = 0;
	int64_t id = make_key(f, "dk");

	assert_int_equal(store_version_get(f->s, id, 1, &before), KMS_OK);
	/* only a pending version can be destroyed */
	assert_int_equal(store_version_destroy(f->s, id, 1, &e, NULL), KMS_ERR_CONFLICT);
	assert_int_equal(store_version_transition(f->s, id, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 100, &e), KMS_OK);
	assert_int_equal(store_due_destructions(f->s, 99, &due, &n), KMS_OK);
	assert_int_equal(n, 0);
	free(due);
	assert_int_equal(store_due_destructions(f->s, 100, &due, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_int_equal(due[0].key_id, id);
	assert_int_equal(due[0].version, 1);
	assert_int_equal(due[0].destroy_after, 100);
	assert_string_equal(due[0].tenant, "t1");
	assert_string_equal(due[0].key, "dk");
	free(due);
	assert_int_equal(store_version_destroy(f->s, id, 1, &e, NULL), KMS_OK);
	assert_int_equal(store_version_get(f->s, id, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_DESTROYED);
	assert_int_equal(v.blob_len, 1);
	assert_int_equal(v.blob[0], 0);
	assert_memory_not_equal(v.mac, before.mac, STORE_MAC_LEN);
	assert_int_equal(store_version_destroy(f->s, id, 1, &e, NULL), KMS_ERR_CONFLICT);
	assert_int_equal(store_due_destructions(f->s, 1000, &due, &n), KMS_OK);
	assert_int_equal(n, 0);
	free(due);

	/* tenant retention settings */
	assert_int_equal(store_tenant_get(f->s, "t1", &t), KMS_OK);
	assert_int_equal(t.retention_period, 189216000);
	assert_int_equal(t.min_destroy_wait, 604800);
	assert_int_equal(t.legal_hold, 0);
	cfg = t;
	cfg.legal_hold = 1;
	cfg.min_destroy_wait = 10 * 86400;
	assert_int_equal(store_tenant_config(f->s, t.id, &cfg), KMS_OK);
	assert_int_equal(store_tenant_get(f->s, "t1", &t), KMS_OK);
	assert_int_equal(t.legal_hold, 1);
	assert_int_equal(t.min_destroy_wait, 864000);
	cfg.min_destroy_wait = 86400; /* under the 7-day floor */
	assert_int_equal(store_tenant_config(f->s, t.id, &cfg), KMS_ERR_INVALID);
	assert_int_equal(store_tenant_config(f->s, 424242, &t), KMS_ERR_NOT_FOUND);
}

/* Another process opening and closing the store must not take our view of it away:
 * closing a descriptor drops every POSIX lock of the process on that file, so a store
 * that closed its checking descriptor lost SQLite's shared lock; the other process then
 * took itself for the last user, deleted the WAL, and we kept reading a stale snapshot
 * (kmsd did not see what `kmsd master-key rotate` wrote). */
static void test_other_process_close_keeps_our_view(void **state)
{
	struct fx *f = *state;
	char v[16], round_s[16];
	pid_t pid;
	int st = 0;

	assert_int_equal(store_meta_set(f->s, "mine", "1"), KMS_OK);
	for (int round = 0; round < 2; round++) {
		/* A process of its own (fork alone would share SQLite's per-process state of
		 * the file with us): this binary again, as the child (see main). */
		snprintf(round_s, sizeof(round_s), "%d", round);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			execl("/proc/self/exe", "test_store", "--child-open-close-write", f->path, round_s,
			      (char *)NULL);
			_exit(127);
		}
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		assert_int_equal(store_meta_get(f->s, "theirs", v, sizeof(v)), KMS_OK);
		assert_int_equal(atoi(v), round);
		assert_int_equal(store_meta_set(f->s, "mine", round_s), KMS_OK);
	}
}

/* The child of the test above: open and close, then open, write, close. */
static int child_open_close_write(const char *path, const char *val)
{
	struct store *o = NULL;

	if (store_open(path, &o) != KMS_OK)
		return 1;
	store_close(o);
	if (store_open(path, &o) != KMS_OK || store_meta_set(o, "theirs", val) != KMS_OK)
		return 2;
	store_close(o);
	return 0;
}

static uint32_t row_mk(struct fx *f, int64_t key, uint32_t version)
{
	struct store_version v;

	assert_int_equal(store_version_get(f->s, key, version, &v), KMS_OK);
	return v.mk_version;
}

static void mk_ev(struct store_mk_event *ev, uint32_t version, const char *event)
{
	memset(ev, 0, sizeof(*ev));
	ev->time = 5000;
	ev->mk_version = version;
	snprintf(ev->event, sizeof(ev->event), "%s", event);
	snprintf(ev->principal, sizeof(ev->principal), "os:test");
	snprintf(ev->detail, sizeof(ev->detail), "unit test");
}

static void test_master_keys(void **state)
{
	struct fx *f = *state;
	struct store_mk_status ms;
	struct store_mk_event ev, *evs = NULL;
	struct store_mk_row rows[8];
	struct store_version v, nv[8];
	int64_t k1, k2;
	uint64_t cnt;
	uint32_t active;
	size_t n, done;

	/* a store that never saw a rotation: version 1, anything may be inserted */
	assert_int_equal(store_mk_active(f->s, &active), KMS_OK);
	assert_int_equal(active, 1);
	make_version(&v, 1, 1);
	v.mk_version = 1;
	assert_int_equal(store_key_create(f->s, f->tenant, "a", "aes256-gcm96", 1000, &v, &k1), KMS_OK);
	make_version(&v, 2, 2);
	v.mk_version = 1;
	assert_int_equal(store_key_rotate(f->s, k1, &v), KMS_OK);
	make_version(&v, 1, 3);
	v.mk_version = 1;
	assert_int_equal(store_key_create(f->s, f->tenant, "b", "aes256-gcm96", 1000, &v, &k2), KMS_OK);
	assert_int_equal(store_mk_status(f->s, &ms), KMS_OK);
	assert_int_equal(ms.active, 1);
	assert_int_equal(ms.retiring, 0);
	assert_int_equal(ms.highest, 1);
	assert_int_equal(ms.n_counts, 1);
	assert_int_equal(ms.counts[0].rows, 3);

	/* begin: 1 retiring, 2 active; no second rotation, no going back */
	mk_ev(&ev, 2, "rotate_start");
	assert_int_equal(store_mk_begin(f->s, 1, &ev), KMS_ERR_CONFLICT);
	assert_int_equal(store_mk_begin(f->s, 2, &ev), KMS_OK);
	assert_int_equal(store_mk_begin(f->s, 3, &ev), KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "in progress");
	assert_int_equal(store_mk_active(f->s, &active), KMS_OK);
	assert_int_equal(active, 2);

	/* new rows only under the active key */
	make_version(&v, 3, 4);
	v.mk_version = 1;
	assert_int_equal(store_key_rotate(f->s, k1, &v), KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "master key version 2");
	v.mk_version = 2;
	assert_int_equal(store_key_rotate(f->s, k1, &v), KMS_OK);

	/* pending rows, in (key, version) order, with their place; paging by cursor */
	assert_int_equal(store_mk_pending_count(f->s, 2, &cnt), KMS_OK);
	assert_int_equal(cnt, 3);
	assert_int_equal(store_mk_pending(f->s, 2, 0, 0, 2, rows, &n), KMS_OK);
	assert_int_equal(n, 2);
	assert_int_equal(rows[0].key_id, k1);
	assert_int_equal(rows[0].v.version, 1);
	assert_int_equal(rows[1].v.version, 2);
	assert_string_equal(rows[0].tenant, "t1");
	assert_string_equal(rows[0].key, "a");
	assert_int_equal(store_mk_pending(f->s, 2, k1, 2, 8, rows + 2, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_int_equal(rows[2].key_id, k2);

	/* finish refused while rows remain */
	mk_ev(&ev, 1, "mk_destroyed");
	assert_int_equal(store_mk_finish(f->s, 1, &ev), KMS_ERR_CONFLICT);
	assert_detail_has(KMS_ERR_CONFLICT, "still wrapped");

	/* rewrap: compare-and-set; a row destroyed meanwhile is left alone */
	for (int i = 0; i < 3; i++) {
		make_version(&nv[i], rows[i].v.version, (uint8_t)(0x40 + i));
		nv[i].mk_version = 2;
	}
	assert_int_equal(store_version_transition(f->s, k2, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 1, NULL),
			 KMS_ERR_INVALID);
	{
		struct store_event e = {.version = 1, .time = 1};
		snprintf(e.event, sizeof(e.event), "schedule_destroy");
		assert_int_equal(store_version_transition(f->s, k2, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 1, &e),
				 KMS_OK);
		snprintf(e.event, sizeof(e.event), "destroy");
		assert_int_equal(store_version_destroy(f->s, k2, 1, &e, NULL), KMS_OK);
	}
	mk_ev(&ev, 2, "rewrap");
	assert_int_equal(store_mk_rewrap(f->s, rows, nv, 3, &ev, &done), KMS_OK);
	assert_int_equal(done, 2);
	assert_int_equal(row_mk(f, k1, 1), 2);
	assert_int_equal(row_mk(f, k1, 2), 2);
	assert_int_equal(row_mk(f, k2, 1), 1); /* destroyed: not resurrected */
	assert_int_equal(store_version_get(f->s, k2, 1, &v), KMS_OK);
	assert_string_equal(v.state, STORE_STATE_DESTROYED);
	assert_int_equal(v.blob_len, 1);
	/* the same batch again changes nothing: the rows moved on */
	assert_int_equal(store_mk_rewrap(f->s, rows, nv, 3, &ev, &done), KMS_OK);
	assert_int_equal(done, 0);
	assert_int_equal(store_mk_pending_count(f->s, 2, &cnt), KMS_OK);
	assert_int_equal(cnt, 0);

	assert_int_equal(store_mk_status(f->s, &ms), KMS_OK);
	assert_int_equal(ms.retiring, 1);
	assert_int_equal(ms.destroyed_rows, 1);
	assert_int_equal(ms.n_counts, 1);
	assert_int_equal(ms.counts[0].mk_version, 2);
	assert_int_equal(ms.counts[0].rows, 3);

	mk_ev(&ev, 1, "mk_destroyed");
	assert_int_equal(store_mk_finish(f->s, 1, &ev), KMS_OK);
	assert_int_equal(store_mk_finish(f->s, 1, &ev), KMS_ERR_CONFLICT);
	assert_int_equal(store_mk_status(f->s, &ms), KMS_OK);
	assert_int_equal(ms.active, 2);
	assert_int_equal(ms.retiring, 0);
	assert_int_equal(ms.highest, 2);
	mk_ev(&ev, 2, "rotate_start");
	assert_int_equal(store_mk_begin(f->s, 2, &ev), KMS_ERR_CONFLICT); /* not newer */
	mk_ev(&ev, 3, "rotate_start");
	assert_int_equal(store_mk_begin(f->s, 3, &ev), KMS_OK);

	/* the events, in order, paged by id */
	assert_int_equal(store_mk_events_since(f->s, 0, 100, &evs, &n), KMS_OK);
	assert_int_equal(n, 5); /* refused steps wrote nothing; an empty rewrap batch is recorded */
	assert_string_equal(evs[0].event, "rotate_start");
	assert_string_equal(evs[3].event, "mk_destroyed");
	assert_string_equal(evs[4].event, "rotate_start");
	assert_int_equal(evs[4].mk_version, 3);
	free(evs);
	assert_int_equal(store_mk_events_since(f->s, 1, 1, &evs, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(evs[0].event, "rewrap");
	free(evs);
	assert_int_equal(store_mk_events_since(f->s, 0, 0, &evs, &n), KMS_ERR_INVALID);
}

/* Client certificate mappings (mTLS) and the auditor role (schema step 9). */
static void test_principal_certs(void **state)
{
	struct fx *f = *state;
	struct store_cert *certs = NULL;
	struct store_principal p;
	int64_t admin, svc, aud, got, id;
	char big[STORE_CERT_VALUE_MAX + 2];
	const char *spki = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	size_t n = 0;

	assert_int_equal(store_principal_create(f->s, "ops", "admin", NULL, 0, 1, &admin), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "ehr", "service", &f->tenant, 1, 1, &svc), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "carol", "auditor", NULL, 0, 1, &aud), KMS_OK);
	assert_int_equal(store_principal_get(f->s, "carol", &p), KMS_OK);
	assert_string_equal(p.role, "auditor");
	assert_int_equal(store_principal_create(f->s, "eve", "superuser", NULL, 0, 1, NULL), KMS_ERR_INVALID);

	assert_int_equal(store_cert_kind_parse("spki"), STORE_CERT_SPKI);
	assert_int_equal(store_cert_kind_parse("subject"), STORE_CERT_SUBJECT);
	assert_int_equal(store_cert_kind_parse("issuer"), 0);
	assert_int_equal(store_cert_kind_parse(NULL), 0);
	assert_string_equal(store_cert_kind_name(0), "unknown");

	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SPKI, spki, 10, &id), KMS_OK);
	assert_true(id > 0);
	/* one value, one principal */
	assert_int_equal(store_cert_add(f->s, admin, STORE_CERT_SPKI, spki, 11, NULL), KMS_ERR_CONFLICT);
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SPKI, spki, 11, NULL), KMS_ERR_CONFLICT);
	/* the same text as another kind is another mapping */
	assert_int_equal(store_cert_add(f->s, aud, STORE_CERT_SUBJECT, spki, 12, NULL), KMS_OK);
	assert_int_equal(store_cert_add(f->s, admin, STORE_CERT_SUBJECT, "CN=ops,O=Example", 13, NULL), KMS_OK);
	assert_int_equal(store_cert_add(f->s, 987654, STORE_CERT_SUBJECT, "CN=x", 1, NULL), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_cert_add(f->s, svc, 0, "CN=x", 1, NULL), KMS_ERR_INVALID);
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SUBJECT, "", 1, NULL), KMS_ERR_INVALID);
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SUBJECT, NULL, 1, NULL), KMS_ERR_INVALID);
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SUBJECT, big, 1, NULL), KMS_ERR_INVALID);
	big[STORE_CERT_VALUE_MAX] = '\0'; /* exactly the maximum */
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SUBJECT, big, 14, NULL), KMS_OK);

	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, spki, &got), KMS_OK);
	assert_int_equal(got, svc);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SUBJECT, spki, &got), KMS_OK);
	assert_int_equal(got, aud);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SUBJECT, "CN=ops,O=Example", &got), KMS_OK);
	assert_int_equal(got, admin);
	/* exact match only */
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SUBJECT, "cn=ops,O=Example", &got), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SUBJECT, "CN=ops, O=Example", &got), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, spki, NULL), KMS_ERR_INVALID);

	assert_int_equal(store_cert_list(f->s, svc, &certs, &n), KMS_OK);
	assert_int_equal(n, 2);
	assert_int_equal(certs[0].kind, STORE_CERT_SPKI);
	assert_string_equal(certs[0].value, spki);
	assert_int_equal(certs[0].created, 10);
	assert_int_equal(certs[1].kind, STORE_CERT_SUBJECT);
	assert_int_equal(strlen(certs[1].value), STORE_CERT_VALUE_MAX);
	free(certs);
	assert_int_equal(store_cert_list(f->s, 987654, &certs, &n), KMS_OK);
	assert_int_equal(n, 0);
	assert_null(certs);

	/* delete: only the principal's own mapping, and then it is gone */
	assert_int_equal(store_cert_delete(f->s, admin, STORE_CERT_SPKI, spki), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_cert_delete(f->s, svc, STORE_CERT_SPKI, spki), KMS_OK);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, spki, &got), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_cert_delete(f->s, svc, STORE_CERT_SPKI, spki), KMS_ERR_NOT_FOUND);
	/* and the value is free again */
	assert_int_equal(store_cert_add(f->s, admin, STORE_CERT_SPKI, spki, 20, NULL), KMS_OK);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, spki, &got), KMS_OK);
	assert_int_equal(got, admin);
}

/* Gauges and compliance rows: one aggregate each, figures as the rows say. */
static void test_gauges_and_report_rows(void **state)
{
	struct fx *f = *state;
	struct store_event e = ev_of("x", 1, "");
	struct store_tenant_states *ts = NULL;
	struct store_crow *rows = NULL;
	struct store_token_owner *to = NULL;
	struct store_usage u;
	struct store_version v2;
	struct store_token tok;
	int64_t t2, pid, a, b;
	size_t n = 0;
	uint64_t upto = 0;

	/* a tenant, no key: nothing to count */
	assert_int_equal(store_version_gauges(f->s, 100, &ts, &n, &u), KMS_OK);
	assert_int_equal(n, 0);
	assert_int_equal(u.max_reserved, 0);
	assert_int_equal(u.next_destroy, 0);
	free(ts);
	assert_int_equal(store_version_gauges(f->s, 0, &ts, &n, &u), KMS_ERR_INVALID);

	a = make_key(f, "a");
	b = make_key(f, "b");
	make_version(&v2, 2, 0x22);
	assert_int_equal(store_key_rotate(f->s, a, &v2), KMS_OK);
	assert_int_equal(store_version_transition(f->s, a, 1, STORE_STATE_ENABLED, STORE_STATE_PENDING, 5000, &e),
			 KMS_OK);
	assert_int_equal(store_version_reserve(f->s, b, 1, 60, 100, &upto), KMS_OK);
	assert_int_equal(store_version_reserve(f->s, a, 2, 95, 100, &upto), KMS_OK);
	assert_int_equal(store_tenant_create(f->s, "t0", "non-phi", 1000, &t2), KMS_OK);
	assert_int_equal(store_version_gauges(f->s, 100, &ts, &n, &u), KMS_OK);
	assert_int_equal(n, 1); /* t0 has no version */
	assert_string_equal(ts[0].tenant, "t1");
	assert_int_equal(ts[0].versions[0], 2);
	assert_int_equal(ts[0].versions[1], 0);
	assert_int_equal(ts[0].versions[2], 1);
	assert_int_equal(ts[0].versions[3], 0);
	assert_int_equal(u.max_reserved, 95);
	assert_int_equal(u.over_half, 2);
	assert_int_equal(u.over_90, 1);
	assert_int_equal(u.next_destroy, 5000);
	free(ts);

	assert_int_equal(store_compliance_rows(f->s, &rows, &n), KMS_OK);
	assert_int_equal(n, 4); /* t0 (no key), t1/a v1, t1/a v2, t1/b v1 */
	assert_string_equal(rows[0].tenant, "t0");
	assert_string_equal(rows[0].key, "");
	assert_int_equal(rows[0].version, 0);
	assert_string_equal(rows[1].key, "a");
	assert_int_equal(rows[1].version, 1);
	assert_string_equal(rows[1].state, STORE_STATE_PENDING);
	assert_int_equal(rows[1].destroy_after, 5000);
	assert_int_equal(rows[2].version, 2);
	assert_int_equal(rows[2].latest, 2);
	assert_int_equal(rows[2].enc_reserved, 95);
	assert_string_equal(rows[3].key, "b");
	assert_string_equal(rows[3].retention, "phi");
	free(rows);

	assert_int_equal(store_principal_create(f->s, "svc", "service", &f->tenant, 1, 1600, &pid), KMS_OK);
	memset(&tok, 0, sizeof(tok));
	tok.principal_id = pid;
	memset(tok.hash, 0x5a, sizeof(tok.hash));
	tok.created = 1700;
	snprintf(tok.accessor, sizeof(tok.accessor), "forever");
	assert_int_equal(store_token_create(f->s, &tok), KMS_OK);
	snprintf(tok.accessor, sizeof(tok.accessor), "expires");
	tok.expires = 9999;
	memset(tok.hash, 0x5b, sizeof(tok.hash));
	assert_int_equal(store_token_create(f->s, &tok), KMS_OK);
	snprintf(tok.accessor, sizeof(tok.accessor), "revoked");
	tok.expires = 0;
	memset(tok.hash, 0x5c, sizeof(tok.hash));
	assert_int_equal(store_token_create(f->s, &tok), KMS_OK);
	assert_int_equal(store_token_revoke(f->s, "revoked"), KMS_OK);
	assert_int_equal(store_tokens_without_expiry(f->s, &to, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(to[0].accessor, "forever");
	assert_string_equal(to[0].principal, "svc");
	assert_string_equal(to[0].role, "service");
	assert_int_equal(to[0].created, 1700);
	free(to);
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--child-open-close-write") == 0)
		return child_open_close_write(argv[2], argv[3]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_mode_0600, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_mode_ignores_umask_and_tightens, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_open_wal_and_schema, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_newer_schema_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tenants, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tenant_list_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_list_edges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_versions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotate_compare_and_set, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_row_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_rotate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_principals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_and_due, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_with_receipt_is_one_transaction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_change_stamp_sees_other_process, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_process_close_keeps_our_view, setup, teardown),
		cmocka_unit_test_setup_teardown(test_master_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_principal_certs, setup, teardown),
		cmocka_unit_test(test_null_handles),
		cmocka_unit_test_setup_teardown(test_gauges_and_report_rows, setup, teardown),
	};

	/* Every test that does not read the SQLite file itself, again on PostgreSQL. */
	const struct CMUnitTest pg_tests[] = {
		cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_meta, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_tenants, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_keys, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_key_list_edges, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_versions, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_rotate_compare_and_set, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_rotate, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_principals, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_tokens, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_lifecycle, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_and_due, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_with_receipt_is_one_transaction, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_master_keys, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_principal_certs, setup_pg, teardown),
		cmocka_unit_test_setup_teardown(test_gauges_and_report_rows, setup_pg, teardown),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (pgtest_uri() != NULL)
		failed += cmocka_run_group_tests_name("store on PostgreSQL", pg_tests, NULL, NULL);
	return failed;
}
