/* Two cores on one store (two "nodes", each its own store connection and audit log, one
 * token): what the cluster thread does when another node changed something
 * (kms/core/cluster.c), driven here by hand so that each step is deterministic:
 *   - a rotation made on A is used by B once B has read the key again;
 *   - a version disabled or a key revoked on A is refused on B after the read;
 *   - rotations on both nodes yield consecutive versions (B's stale cache meets the
 *     store's compare-and-set, reads again and follows);
 *   - counter blocks: both nodes together never hand out more encryptions than the
 *     limit, because each skips the blocks the other reserved;
 *   - a key that another node keeps changing while it is read is not cached, and the
 *     request gets 503 after five reads;
 *   - a rotation whose retry cannot read the latest version answers the store's 503
 *     and writes nothing.
 * The last two stand between the core and the store (the Makefile links this test with
 * ld --wrap for store_version_list and store_key_latest). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/audit/audit.h"
#include "kms/base/json.h"
#include "kms/core/core.h"
#include "kms/core/core_int.h"
#include "kms/store/store.h"
#include "pkcs11/p11.h"
#include "tests/common/nomfa.h"
#include "tests/common/softhsm.h"

struct node {
	struct store *st;
	struct audit *au;
	struct core *core;
};

struct fx {
	struct softhsm_token tok;
	char db[160];
	struct p11 *p11;
	struct node a, b;
	char admin[128], svc[128];
	int64_t k1;
};

/* The store reads this test stands between (ld --wrap, see the Makefile). */
kms_err __real_store_version_list(struct store *s, int64_t key_id, struct store_version **out, size_t *n);
kms_err __wrap_store_version_list(struct store *s, int64_t key_id, struct store_version **out, size_t *n);
kms_err __real_store_key_latest(struct store *s, int64_t key_id, uint32_t *latest);
kms_err __wrap_store_key_latest(struct store *s, int64_t key_id, uint32_t *latest);

static struct core *changing;	/* when set: each version list read bumps its cache epoch */
static unsigned version_reads;	/* version list reads so far */
static bool latest_fails;	/* when set: store_key_latest fails as a lost store would */
static unsigned latest_reads;

kms_err __wrap_store_version_list(struct store *s, int64_t key_id, struct store_version **out, size_t *n)
{
	kms_err rc = __real_store_version_list(s, key_id, out, n);

	version_reads++;
	if (changing != NULL) /* what the cluster thread does as it applies another node's change */
		__atomic_add_fetch(&changing->cache_epoch, 1, __ATOMIC_ACQ_REL);
	return rc;
}

kms_err __wrap_store_key_latest(struct store *s, int64_t key_id, uint32_t *latest)
{
	latest_reads++;
	if (latest_fails)
		return kms_errf(KMS_ERR_STORE, "metadata store error");
	return __real_store_key_latest(s, key_id, latest);
}

static json_t *call(struct node *n, enum kms_op op, const char *key, const char *variant, const char *token,
		    const char *body, int *status)
{
	struct core_call c = {.op = op, .tenant = "t1", .key = key, .variant = variant, .token = token,
			      .remote_addr = "127.0.0.1"};
	struct core_result r;
	json_error_t je;

	if (op == KMS_OP_TENANT_CREATE) {
		c.tenant = NULL;
		c.name = "t1";
	}
	if (body != NULL) {
		c.body = json_loads(body, JSON_REJECT_DUPLICATES, &je);
		assert_non_null(c.body);
	}
	core_call(n->core, &c, &r);
	json_decref(c.body);
	*status = r.status;
	assert_non_null(r.body);
	return r.body;
}

static const char *dstr(json_t *b, const char *k)
{
	return json_string_value(json_object_get(json_object_get(b, "data"), k));
}

static int open_node(struct fx *f, struct node *n, const char *name, uint64_t max_enc)
{
	char log[200], pol[512];
	struct core_options o = {.max_encryptions = max_enc};

	snprintf(log, sizeof(log), "%s/audit-%s.log", f->tok.dir, name);
	if (store_open(f->db, &n->st) != KMS_OK || audit_open(log, name, &n->au) != KMS_OK ||
	    core_new(n->st, f->p11, n->au, &n->core) != KMS_OK || core_configure(n->core, &o) != KMS_OK ||
	    test_policy_nomfa_file(f->tok.dir, pol, sizeof(pol)) != 0 || core_policy_init(n->core, pol) != KMS_OK)
		return -1;
	return 0;
}

static void close_node(struct node *n)
{
	core_free(n->core);
	audit_close(n->au);
	store_close(n->st);
	memset(n, 0, sizeof(*n));
}

static int setup_limit(void **state, uint64_t max_enc)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct p11_config pc;
	struct store_tenant t;
	struct store_key k;
	json_t *b;
	int st;

	if (f == NULL || softhsm_token_create(&f->tok) != 0)
		return -1;
	pc = (struct p11_config){f->tok.module, f->tok.label, 1};
	if (p11_provision(&pc, f->tok.so_pin, f->tok.so_pin_len, f->tok.user_pin, f->tok.user_pin_len) != KMS_OK)
		return -1;
	pc.sessions = 4;
	if (p11_open(&pc, f->tok.user_pin, f->tok.user_pin_len, &f->p11) != KMS_OK)
		return -1;
	snprintf(f->db, sizeof(f->db), "%s/kmsd.db", f->tok.dir);
	if (open_node(f, &f->a, "node-a", max_enc) != 0 || open_node(f, &f->b, "node-b", max_enc) != 0)
		return -1;
	if (core_bootstrap_admin(f->a.st, "admin", f->admin, sizeof(f->admin)) != KMS_OK)
		return -1;
	json_decref(call(&f->a, KMS_OP_TENANT_CREATE, NULL, NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	json_decref(call(&f->a, KMS_OP_KEY_CREATE, "k1", NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	{
		struct core_call c = {.op = KMS_OP_PRINCIPAL_CREATE, .name = "svc", .token = f->admin,
				      .remote_addr = "127.0.0.1"};
		struct core_result r;
		json_error_t je;

		c.body = json_loads("{\"role\":\"service\",\"tenants\":[\"t1\"]}", 0, &je);
		core_call(f->a.core, &c, &r);
		json_decref(c.body);
		assert_int_equal(r.status, 200);
		json_decref(r.body);
		c = (struct core_call){.op = KMS_OP_TOKEN_CREATE, .name = "svc", .token = f->admin,
				       .remote_addr = "127.0.0.1"};
		core_call(f->a.core, &c, &r);
		assert_int_equal(r.status, 200);
		b = r.body;
	}
	snprintf(f->svc, sizeof(f->svc), "%s",
		 json_string_value(json_object_get(json_object_get(b, "auth"), "client_token")));
	json_decref(b);
	assert_int_equal(store_tenant_get(f->a.st, "t1", &t), KMS_OK);
	assert_int_equal(store_key_get(f->a.st, t.id, "k1", &k), KMS_OK);
	f->k1 = k.id;
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_limit(state, 1ULL << 30);
}

/* 32 encryptions per version: blocks of 2 */
static int setup_small(void **state)
{
	return setup_limit(state, 32);
}

static int teardown(void **state)
{
	struct fx *f = *state;

	close_node(&f->a);
	close_node(&f->b);
	p11_close(f->p11);
	softhsm_token_destroy(&f->tok);
	free(f);
	return 0;
}

static long datakey_version(struct node *n, const char *token, char *ct, size_t cap, int *st)
{
	json_t *b = call(n, KMS_OP_DATAKEY, "k1", "plaintext", token, NULL, st);
	long v = -1;

	if (*st == 200) {
		v = (long)json_integer_value(json_object_get(json_object_get(b, "data"), "key_version"));
		if (ct != NULL)
			snprintf(ct, cap, "%s", dstr(b, "ciphertext"));
	}
	json_decref(b);
	return v;
}

/* A rotation on node n that must succeed; the new latest version. */
static long rotate_on(struct node *n, struct fx *f)
{
	int st;
	json_t *b = call(n, KMS_OP_KEY_ROTATE, "k1", NULL, f->admin, NULL, &st);
	long v = (long)json_integer_value(json_object_get(json_object_get(b, "data"), "latest_version"));

	assert_int_equal(st, 200);
	json_decref(b);
	return v;
}

/* The store holds versions 1..n of k1, no gap, no twin. */
static void assert_versions(struct fx *f, size_t n)
{
	struct store_version *vs = NULL;
	size_t nv = 0;

	assert_int_equal(store_version_list(f->a.st, f->k1, &vs, &nv), KMS_OK);
	assert_int_equal(nv, n);
	for (size_t i = 0; i < nv; i++)
		assert_int_equal(vs[i].version, i + 1);
	free(vs);
}

static void test_rotation_followed_after_refresh(void **state)
{
	struct fx *f = *state;
	int st;

	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1); /* B caches k1 */
	for (int i = 0; i < 2; i++) {
		json_decref(call(&f->a, KMS_OP_KEY_ROTATE, "k1", NULL, f->admin, NULL, &st));
		assert_int_equal(st, 200);
	}
	assert_int_equal(datakey_version(&f->a, f->svc, NULL, 0, &st), 3);
	/* B has not heard of it yet: still version 1, which is allowed (decrypt-only
	 * starts only when B knows of a newer one) */
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1);
	assert_int_equal(core_key_refresh(f->b.core, f->k1), KMS_OK);
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 3);
}

static void test_disable_and_revoke_refused_after_refresh(void **state)
{
	struct fx *f = *state;
	char ct[512], body[640];
	json_t *r;
	int st;

	json_decref(call(&f->a, KMS_OP_KEY_ROTATE, "k1", NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	assert_int_equal(datakey_version(&f->b, f->svc, ct, sizeof(ct), &st), 2);
	snprintf(body, sizeof(body), "{\"ciphertext\":\"%s\"}", ct);
	/* A disables version 2 (after rotating to 3, so that 2 is no longer the latest) */
	json_decref(call(&f->a, KMS_OP_KEY_ROTATE, "k1", NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	{
		struct core_call c = {.op = KMS_OP_VERSION_DISABLE, .tenant = "t1", .key = "k1", .version = "2",
				      .token = f->admin, .remote_addr = "127.0.0.1"};
		struct core_result res;
		json_error_t je;

		c.body = json_loads("{\"reason\":\"suspected exposure\"}", 0, &je);
		core_call(f->a.core, &c, &res);
		json_decref(c.body);
		assert_int_equal(res.status, 200);
		json_decref(res.body);
	}
	r = call(&f->b, KMS_OP_DECRYPT, "k1", NULL, f->svc, body, &st);
	json_decref(r);
	assert_int_equal(st, 200); /* B has not read the change yet */
	assert_int_equal(core_key_refresh(f->b.core, f->k1), KMS_OK);
	r = call(&f->b, KMS_OP_DECRYPT, "k1", NULL, f->svc, body, &st);
	json_decref(r);
	assert_int_equal(st, 409);
	/* A revokes the key: B refuses every version after the read */
	json_decref(call(&f->a, KMS_OP_KEY_REVOKE, "k1", NULL, f->admin, "{\"reason\":\"incident 42\"}", &st));
	assert_int_equal(st, 200);
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 3);
	assert_int_equal(core_key_refresh(f->b.core, f->k1), KMS_OK);
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), -1);
	assert_int_equal(st, 409);
}

static void test_rotations_on_both_nodes_are_consecutive(void **state)
{
	struct fx *f = *state;
	int st;

	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1); /* B caches k1 at 1 */
	for (int i = 0; i < 5; i++) {
		assert_int_equal(rotate_on(&f->a, f), 2 + 2 * i);
		/* B's cache says the latest is lower: the store refuses B's version, B reads
		 * the key again and makes the next one */
		assert_int_equal(rotate_on(&f->b, f), 3 + 2 * i);
	}
	assert_versions(f, 11);
	assert_int_equal(datakey_version(&f->a, f->svc, NULL, 0, &st), 10); /* A has not read B's last */
	assert_int_equal(core_key_refresh(f->a.core, f->k1), KMS_OK);
	assert_int_equal(datakey_version(&f->a, f->svc, NULL, 0, &st), 11);
}

static void test_counter_blocks_shared_by_nodes(void **state)
{
	struct fx *f = *state;
	int v1 = 0, later = 0, st;

	/* Alternate between the nodes: each reserves its own blocks of 2 in the store. The
	 * version's limit of 32 holds for the two together: exactly 32 data keys under
	 * version 1, then the usage limit rotates the key and the rest use version 2
	 * (a node that has not read that rotation yet answers 409 meanwhile). */
	for (int i = 0; i < 40; i++) {
		struct node *n = (i / 3) % 2 ? &f->b : &f->a;
		long v = datakey_version(n, f->svc, NULL, 0, &st);

		if (v == 1)
			v1++;
		else if (v == 2)
			later++;
		else
			assert_int_equal(st, 409);
		if (st == 409)
			assert_int_equal(core_key_refresh(n->core, f->k1), KMS_OK);
	}
	assert_int_equal(v1, 32);
	assert_true(later >= 1);
}

static void test_key_changing_while_read_is_not_cached(void **state)
{
	struct fx *f = *state;
	unsigned before;
	int st;
	json_t *b;

	/* B has never read k1; every read of it meets another node's change */
	changing = f->b.core;
	before = version_reads;
	b = call(&f->b, KMS_OP_DATAKEY, "k1", "plaintext", f->svc, NULL, &st);
	changing = NULL;
	assert_int_equal(st, 503);
	assert_non_null(strstr(json_string_value(json_array_get(json_object_get(b, "errors"), 0)),
			       "keeps changing on other nodes"));
	json_decref(b);
	assert_int_equal(version_reads - before, 5);
	/* nothing was cached: the next request reads the key (once) and is served, and the
	 * one after that comes from the cache */
	before = version_reads;
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1);
	assert_int_equal(version_reads - before, 1);
	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1);
	assert_int_equal(version_reads - before, 1);
}

static void test_rotation_retry_without_the_store(void **state)
{
	struct fx *f = *state;
	int st;
	json_t *b;

	assert_int_equal(datakey_version(&f->b, f->svc, NULL, 0, &st), 1); /* B caches k1 at 1 */
	assert_int_equal(rotate_on(&f->a, f), 2);
	/* B's version 2 meets A's; reading the latest version then fails */
	latest_fails = true;
	latest_reads = 0;
	b = call(&f->b, KMS_OP_KEY_ROTATE, "k1", NULL, f->admin, NULL, &st);
	latest_fails = false;
	assert_int_equal(st, 503);
	assert_int_equal(latest_reads, 1);
	json_decref(b);
	assert_versions(f, 2); /* nothing written by B */
	/* the store back: B's next rotation follows A's */
	assert_int_equal(rotate_on(&f->b, f), 3);
	assert_versions(f, 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_rotation_followed_after_refresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_disable_and_revoke_refused_after_refresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotations_on_both_nodes_are_consecutive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_counter_blocks_shared_by_nodes, setup_small, teardown),
		cmocka_unit_test_setup_teardown(test_key_changing_while_read_is_not_cached, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_retry_without_the_store, setup, teardown),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("core_nodes", tests, NULL, NULL);
}
