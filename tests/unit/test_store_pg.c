/* Unit tests of what the PostgreSQL store adds: the placeholder translation (always),
 * and, when KMS_TEST_PG_URI names a server these tests may wipe: counter blocks
 * reserved by two connections at once, racing rotations, the change-log triggers
 * (quiet columns not logged), the watch connection's notice, leases and their probe, the foreign
 * schema refusal and the SQLite-only functions' answer. Each test starts from an
 * empty public schema. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/base/err.h"
#include "kms/store/db.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"

#include <libpq-fe.h>

static void translates(const char *in, const char *want)
{
	char *got = db_pg_translate(in);

	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

static void test_translate(void **state)
{
	(void)state;
	translates("SELECT 1", "SELECT 1");
	translates("SELECT v FROM meta WHERE k = ?1", "SELECT v FROM meta WHERE k = $1");
	translates("UPDATE t SET a = ?2 WHERE id = ?1 AND b = ?12", "UPDATE t SET a = $2 WHERE id = $1 AND b = $12");
	/* bare ? takes the next number after the highest so far, as in SQLite */
	translates("VALUES (?, ?, ?5, ?)", "VALUES ($1, $2, $5, $6)");
	/* inside literals, quoted identifiers and comments a ? is text */
	translates("SELECT '?1', 'it''s ?', \"a?b\" FROM t WHERE x = ?1", "SELECT '?1', 'it''s ?', \"a?b\" FROM t WHERE x = $1");
	translates("SELECT replace(k, '?', '_') -- what?\nFROM t WHERE a = ?2", "SELECT replace(k, '?', '_') -- what?\nFROM t WHERE a = $2");
	translates("SELECT '\\x00'::bytea, ?1", "SELECT '\\x00'::bytea, $1");
	/* an unterminated literal is copied as is (the server reports it) */
	translates("SELECT 'abc ?1", "SELECT 'abc ?1");
}

static int pg_setup(void **state)
{
	struct store **s = calloc(1, sizeof(*s));

	if (s == NULL || pgtest_reset() != 0 || store_open(pgtest_uri(), s) != KMS_OK) {
		free(s);
		return -1;
	}
	*state = s;
	return 0;
}

static int pg_teardown(void **state)
{
	struct store **s = *state;

	store_close(*s);
	free(s);
	return 0;
}

static void make_version(struct store_version *v, uint32_t version, uint8_t tag)
{
	memset(v, 0, sizeof(*v));
	v->version = version;
	v->mk_version = 1;
	v->blob_len = 40;
	memset(v->blob, tag, v->blob_len);
	v->blob[0] = (uint8_t)version;
	memset(v->mac, 0xa0 ^ tag, sizeof(v->mac));
	v->created = 2000 + version;
}

static int64_t make_key(struct store *s, const char *tenant, const char *name)
{
	struct store_version v;
	struct store_tenant t;
	int64_t tid, kid;

	if (store_tenant_get(s, tenant, &t) == KMS_OK)
		tid = t.id;
	else
		assert_int_equal(store_tenant_create(s, tenant, "phi", 1000, &tid), KMS_OK);
	make_version(&v, 1, 1);
	assert_int_equal(store_key_create(s, tid, name, "aes256-gcm96", 1000, &v, &kid), KMS_OK);
	return kid;
}

static void test_backend_and_sqlite_only(void **state)
{
	struct store *s = *(struct store **)*state;
	uint8_t *snap = NULL;
	size_t len = 0;
	kms_err rc;

	assert_int_equal(store_backend(s), STORE_BACKEND_PG);
	rc = store_snapshot(s, &snap, &len);
	assert_int_equal(rc, KMS_ERR_UNSUPPORTED);
	assert_int_equal(kms_err_http_status(rc), 501);
	assert_non_null(strstr(kms_err_detail(rc), "pg_dump"));
	assert_null(snap);
}

static void test_foreign_schema_refused(void **state)
{
	struct store *s2 = NULL;
	char n[32];

	(void)state;
	/* another application's table in the schema: refused, nothing created */
	assert_int_equal(pgtest_reset(), 0);
	assert_int_equal(pgtest_exec("CREATE TABLE invoices (id int)"), 0);
	assert_int_equal(store_open(pgtest_uri(), &s2), KMS_ERR_CONFIG);
	assert_null(s2);
	assert_int_equal(pgtest_query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", n, sizeof(n)), 0);
	assert_string_equal(n, "1");
	/* a newer kmsd's schema: refused */
	assert_int_equal(pgtest_reset(), 0);
	assert_int_equal(store_open(pgtest_uri(), &s2), KMS_OK);
	store_close(s2);
	s2 = NULL;
	assert_int_equal(pgtest_exec("UPDATE schema_version SET version = 99"), 0);
	assert_int_equal(store_open(pgtest_uri(), &s2), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "newer kmsd"));
	/* and the password is not in the message */
	assert_int_equal(pgtest_exec("UPDATE schema_version SET version = 15"), 0);
}

#define RES_THREADS 4
#define RES_BLOCK 10
#define RES_LIMIT 1000

struct res_arg {
	struct store *s;
	int64_t key_id;
	uint64_t got[RES_LIMIT / RES_BLOCK];
	size_t n;
	int conflicts, failed;
};

static void *reserve_worker(void *p)
{
	struct res_arg *a = p;

	for (;;) {
		uint64_t upto = 0;
		kms_err rc = store_version_reserve(a->s, a->key_id, 1, RES_BLOCK, RES_LIMIT, &upto);

		if (rc == KMS_ERR_CONFLICT) {
			a->conflicts++;
			break;
		}
		if (rc != KMS_OK || a->n == RES_LIMIT / RES_BLOCK) {
			a->failed++;
			break;
		}
		a->got[a->n++] = upto;
	}
	return NULL;
}

static void test_reserve_race(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store *other[RES_THREADS];
	struct res_arg args[RES_THREADS];
	pthread_t th[RES_THREADS];
	bool seen[RES_LIMIT / RES_BLOCK + 1] = {false};
	int64_t id = make_key(s, "t", "k");
	uint64_t upto = 0;
	size_t total = 0;

	/* each worker on its own connection: four "nodes" */
	for (int i = 0; i < RES_THREADS; i++) {
		assert_int_equal(store_open(pgtest_uri(), &other[i]), KMS_OK);
		memset(&args[i], 0, sizeof(args[i]));
		args[i].s = other[i];
		args[i].key_id = id;
		assert_int_equal(pthread_create(&th[i], NULL, reserve_worker, &args[i]), 0);
	}
	for (int i = 0; i < RES_THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		store_close(other[i]);
		assert_int_equal(args[i].failed, 0);
		assert_int_equal(args[i].conflicts, 1);
		for (size_t j = 0; j < args[i].n; j++) {
			uint64_t u = args[i].got[j];

			/* every block ends on a multiple of the block size, never past the limit,
			 * and no two reservations got the same block */
			assert_int_equal(u % RES_BLOCK, 0);
			assert_in_range(u, RES_BLOCK, RES_LIMIT);
			assert_false(seen[u / RES_BLOCK]);
			seen[u / RES_BLOCK] = true;
			total++;
		}
	}
	assert_int_equal(total, RES_LIMIT / RES_BLOCK);
	/* at the limit: CONFLICT, and *upto tells where the counter stands */
	assert_int_equal(store_version_reserve(s, id, 1, 1, RES_LIMIT, &upto), KMS_ERR_CONFLICT);
	assert_int_equal(upto, RES_LIMIT);
	assert_int_equal(store_version_reserve(s, id, 9, 1, RES_LIMIT, &upto), KMS_ERR_NOT_FOUND);
}

struct rot_arg {
	struct store *s;
	int64_t key_id;
	uint32_t version;
	kms_err rc;
	pthread_barrier_t *go;
};

static void *rotate_once(void *p)
{
	struct rot_arg *a = p;
	struct store_version v;

	make_version(&v, a->version, 9);
	pthread_barrier_wait(a->go);
	a->rc = store_key_rotate(a->s, a->key_id, &v);
	return NULL;
}

static void test_rotate_race(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store *s2 = NULL, *s3 = NULL;
	pthread_barrier_t go;
	pthread_t t1, t2;
	struct rot_arg a1, a2;
	struct store_key k;
	int64_t id = make_key(s, "t", "hot");

	/* two nodes rotate the same key to version 2 at once: one wins, the other CONFLICT */
	assert_int_equal(store_open(pgtest_uri(), &s2), KMS_OK);
	assert_int_equal(store_open(pgtest_uri(), &s3), KMS_OK);
	for (int round = 0; round < 5; round++) {
		uint32_t next = (uint32_t)round + 2;

		assert_int_equal(pthread_barrier_init(&go, NULL, 2), 0);
		a1 = (struct rot_arg){.s = s2, .key_id = id, .version = next, .go = &go};
		a2 = (struct rot_arg){.s = s3, .key_id = id, .version = next, .go = &go};
		assert_int_equal(pthread_create(&t1, NULL, rotate_once, &a1), 0);
		assert_int_equal(pthread_create(&t2, NULL, rotate_once, &a2), 0);
		assert_int_equal(pthread_join(t1, NULL), 0);
		assert_int_equal(pthread_join(t2, NULL), 0);
		pthread_barrier_destroy(&go);
		assert_true((a1.rc == KMS_OK && a2.rc == KMS_ERR_CONFLICT) ||
			    (a1.rc == KMS_ERR_CONFLICT && a2.rc == KMS_OK));
		assert_int_equal(store_key_get(s, 1, "hot", &k), KMS_OK);
		assert_int_equal(k.latest_version, next);
	}
	store_close(s2);
	store_close(s3);
}

static bool has_change(const struct store_change *c, size_t n, const char *kind, int64_t ref)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(c[i].kind, kind) == 0 && (ref < 0 || c[i].ref == ref))
			return true;
	return false;
}

static void test_triggers(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store_change *c = NULL;
	struct store_token tok;
	int64_t head = -1, head2 = -1, pid, key_id;
	size_t n = 0;
	bool gap = true;
	uint64_t upto;
	char cnt[32];

	assert_int_equal(store_set_node(s, "node-a"), KMS_OK);
	assert_int_equal(store_set_node(s, "bad'id"), KMS_ERR_INVALID);
	assert_int_equal(store_changes_head(s, &head), KMS_OK);
	assert_int_equal(head, 0);
	key_id = make_key(s, "t", "k");
	assert_int_equal(store_principal_create(s, "svc", "service", NULL, 0, 1000, &pid), KMS_OK);
	memset(&tok, 0, sizeof(tok));
	snprintf(tok.accessor, sizeof(tok.accessor), "acc1");
	tok.principal_id = pid;
	tok.created = 1000;
	assert_int_equal(store_token_create(s, &tok), KMS_OK);

	assert_int_equal(store_changes_since(s, 0, 100, &c, &n, &gap), KMS_OK);
	assert_false(gap);
	assert_true(n >= 4);
	assert_true(has_change(c, n, "tenants", 1));
	assert_true(has_change(c, n, "keys", key_id));
	assert_true(has_change(c, n, "key_versions", key_id));
	assert_true(has_change(c, n, "principals", 0));
	assert_true(has_change(c, n, "api_tokens", 0));
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(c[i].node, "node-a");
		assert_true(c[i].seq > 0 && (i == 0 || c[i].seq > c[i - 1].seq));
		assert_true(c[i].time > 1600000000);
	}
	head = c[n - 1].seq;
	free(c);
	c = NULL;
	assert_int_equal(store_changes_head(s, &head2), KMS_OK);
	assert_int_equal(head2, head);

	/* quiet columns: enc_reserved and last_used change no cache; meta is not watched */
	assert_int_equal(store_version_reserve(s, key_id, 1, 10, 100, &upto), KMS_OK);
	assert_int_equal(store_token_touch(s, "acc1", 5000), KMS_OK);
	assert_int_equal(store_meta_set(s, "x", "y"), KMS_OK);
	assert_int_equal(store_changes_head(s, &head2), KMS_OK);
	assert_int_equal(head2, head);

	/* a revocation is logged */
	assert_int_equal(store_token_revoke(s, "acc1"), KMS_OK);
	assert_int_equal(store_changes_since(s, head, 100, &c, &n, &gap), KMS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(c[0].kind, "api_tokens");
	free(c);
	c = NULL;
	/* max bounds the answer */
	assert_int_equal(store_changes_since(s, 0, 2, &c, &n, &gap), KMS_OK);
	assert_int_equal(n, 2);
	assert_false(gap);
	free(c);
	c = NULL;

	/* pruning: a reader behind the pruned rows is told to reload */
	assert_int_equal(store_changes_prune(s, (int64_t)time(NULL) + 10), KMS_OK);
	assert_int_equal(pgtest_query("SELECT count(*) FROM cluster_changes", cnt, sizeof(cnt)), 0);
	assert_string_equal(cnt, "0");
	assert_int_equal(store_changes_since(s, 0, 100, &c, &n, &gap), KMS_OK);
	assert_true(gap);
	assert_int_equal(n, 0);
	free(c);
	c = NULL;
	assert_int_equal(store_changes_head(s, &head2), KMS_OK);
	assert_int_equal(head2, 0);
	/* a reader that had seen everything pruned is not */
	assert_int_equal(store_changes_since(s, head + 1, 100, &c, &n, &gap), KMS_OK);
	assert_false(gap);
	free(c);
}

static void test_watch_notice(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store_watch *w = NULL;
	bool notified = true;

	assert_int_equal(store_watch_open(pgtest_uri(), &w), KMS_OK);
	/* nothing happened: a timeout */
	assert_int_equal(store_watch_wait(w, 50, &notified), KMS_OK);
	assert_false(notified);
	/* a change on another connection wakes the watcher */
	int64_t id = make_key(s, "t", "k"); /* two transactions: tenant, then key */
	uint64_t upto;
	int quiet_after = 0;

	assert_int_equal(store_watch_wait(w, 5000, &notified), KMS_OK);
	assert_true(notified);
	for (int i = 0; i < 3 && notified; i++, quiet_after++)
		assert_int_equal(store_watch_wait(w, 200, &notified), KMS_OK);
	assert_false(notified);
	assert_in_range(quiet_after, 1, 2);
	/* a quiet column (enc_reserved) does not wake anyone */
	assert_int_equal(store_version_reserve(s, id, 1, 10, 100, &upto), KMS_OK);
	assert_int_equal(store_watch_wait(w, 200, &notified), KMS_OK);
	assert_false(notified);
	/* a watched one does */
	assert_int_equal(store_key_set_revoked(s, id, 1, &(struct store_event){.event = "revoke", .time = 5}),
			 KMS_OK);
	assert_int_equal(store_watch_wait(w, 5000, &notified), KMS_OK);
	assert_true(notified);
	store_watch_close(w);
}

static void test_leases(void **state)
{
	struct store_watch *w[2] = {NULL, NULL};
	bool got = false;
	/* in order: which watch (0 = a, 1 = b), take the lease or only probe it, its name,
	 * the answer (held / free) */
	static const struct {
		int who;
		bool probe;
		const char *name;
		bool want;
	} steps[] = {
		{0, false, "scheduler", true},
		{0, false, "scheduler", true}, /* still ours */
		{1, false, "scheduler", false},
		{1, false, "rewrap", true}, /* another name is another lease */
		/* a probe: not free while held (elsewhere, or by the prober), free when nobody
		 * holds it, and given back at once (someone else can take it after the probe) */
		{1, true, "scheduler", false},
		{0, true, "scheduler", false},
		{0, true, "node:gone", true},
		{1, false, "node:gone", true},
		{0, true, "node:gone", false},
	};

	(void)state;
	assert_int_equal(store_watch_open(pgtest_uri(), &w[0]), KMS_OK);
	assert_int_equal(store_watch_open(pgtest_uri(), &w[1]), KMS_OK);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		struct store_watch *x = w[steps[i].who];

		assert_int_equal(steps[i].probe ? store_watch_lease_free(x, steps[i].name, &got)
						: store_watch_lease(x, steps[i].name, &got),
				 KMS_OK);
		if (got != steps[i].want)
			fail_msg("step %zu: %s of \"%s\" by %c: %d", i, steps[i].probe ? "probe" : "take", steps[i].name,
				 'a' + steps[i].who, got);
	}
	/* the holder's connection ends (node death): a probe sees it free, and the next
	 * try elsewhere wins */
	store_watch_close(w[0]);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(store_watch_lease_free(w[1], "scheduler", &got), KMS_OK);
		if (got)
			break;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	assert_true(got);
	assert_int_equal(store_watch_lease(w[1], "scheduler", &got), KMS_OK);
	assert_true(got);
	store_watch_close(w[1]);
}

static void test_connection_loss(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store_change *c = NULL;
	struct store_tenant t;
	int64_t id, head = 0;
	size_t n = 0;
	bool gap;
	kms_err rc;

	assert_int_equal(store_set_node(s, "node-b"), KMS_OK);
	assert_int_equal(store_tenant_create(s, "before", "phi", 1000, &id), KMS_OK);
	/* the server ends every other session: ours is gone */
	assert_int_equal(pgtest_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
				     "WHERE datname = current_database() AND pid <> pg_backend_pid()"),
			 0);
	/* the call in flight fails as the store being unavailable (503) ... */
	rc = store_tenant_get(s, "before", &t);
	assert_int_equal(rc, KMS_ERR_STORE);
	assert_int_equal(kms_err_http_status(rc), 503);
	/* ... and the next one reconnects, prepares its statements again and works, in and
	 * out of transactions, with the session settings (node id) restored */
	assert_int_equal(store_tenant_get(s, "before", &t), KMS_OK);
	assert_int_equal(store_changes_head(s, &head), KMS_OK);
	(void)make_key(s, "before", "after-reconnect");
	assert_int_equal(store_changes_since(s, head, 100, &c, &n, &gap), KMS_OK);
	assert_true(n >= 2);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(c[i].node, "node-b");
	free(c);
}

static void test_writer_lock_waits_then_fails(void **state)
{
	struct store *s = *(struct store **)*state;
	struct store_version v;
	PGconn *other = PQconnectdb(pgtest_uri());
	PGresult *r;
	int64_t tid, kid;
	time_t t0;

	assert_int_equal(store_tenant_create(s, "t", "phi", 1000, &tid), KMS_OK);
	/* another node in the middle of a writer transaction */
	assert_int_equal(PQstatus(other), CONNECTION_OK);
	r = PQexec(other, "BEGIN; SELECT pg_advisory_xact_lock(7011486240561237329)");
	assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	/* our transaction waits for it, as long as SQLite's busy_timeout, then 503 */
	make_version(&v, 1, 1);
	t0 = time(NULL);
	assert_int_equal(store_key_create(s, tid, "k", "aes256-gcm96", 1000, &v, &kid), KMS_ERR_STORE);
	assert_in_range(time(NULL) - t0, 4, 8);
	/* an autocommit statement that logs a change waits for the same lock (its BEFORE
	 * statement trigger); one that changes only a quiet column does not */
	assert_int_equal(store_tenant_create(s, "t2", "phi", 1000, &tid), KMS_ERR_STORE);
	assert_int_equal(store_meta_set(s, "x", "y"), KMS_OK);
	/* the other ends: we go through */
	r = PQexec(other, "COMMIT");
	PQclear(r);
	PQfinish(other);
	assert_int_equal(store_key_create(s, tid, "k", "aes256-gcm96", 1000, &v, &kid), KMS_OK);
}

static void test_sqlite_single_node(void **state)
{
	struct store_watch *w = NULL;
	bool held = false, notified = true, is_free = true;

	(void)state;
	/* on SQLite the watch is a stub: a sleep, and the lease is always this node's */
	assert_int_equal(store_watch_open("/nonexistent/kmsd.db", &w), KMS_OK);
	assert_int_equal(store_watch_wait(w, 10, &notified), KMS_OK);
	assert_false(notified);
	assert_int_equal(store_watch_lease(w, "scheduler", &held), KMS_OK);
	assert_true(held);
	/* and no lease is ever free for another node to take over: there is none */
	assert_int_equal(store_watch_lease_free(w, "node:other", &is_free), KMS_OK);
	assert_false(is_free);
	store_watch_close(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_translate),
		cmocka_unit_test(test_sqlite_single_node),
	};
	const struct CMUnitTest pg_tests[] = {
		cmocka_unit_test_setup_teardown(test_backend_and_sqlite_only, pg_setup, pg_teardown),
		cmocka_unit_test(test_foreign_schema_refused),
		cmocka_unit_test_setup_teardown(test_reserve_race, pg_setup, pg_teardown),
		cmocka_unit_test_setup_teardown(test_rotate_race, pg_setup, pg_teardown),
		cmocka_unit_test_setup_teardown(test_triggers, pg_setup, pg_teardown),
		cmocka_unit_test_setup_teardown(test_watch_notice, pg_setup, pg_teardown),
		cmocka_unit_test(test_leases),
		cmocka_unit_test_setup_teardown(test_connection_loss, pg_setup, pg_teardown),
		cmocka_unit_test_setup_teardown(test_writer_lock_waits_then_fails, pg_setup, pg_teardown),
	};
	int failed = cmocka_run_group_tests_name("store driver", tests, NULL, NULL);

	if (pgtest_uri() != NULL)
		failed += cmocka_run_group_tests_name("store on PostgreSQL", pg_tests, NULL, NULL);
	else
		print_message("KMS_TEST_PG_URI not set: the PostgreSQL tests did not run\n");
	return failed;
}
