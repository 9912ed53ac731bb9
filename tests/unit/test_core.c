/* The request path on a real SoftHSM2 token, without HTTP: round trips, a tampered
 * store row refused before unwrap, fail closed when the audit log cannot be written,
 * and datakey/decrypt racing rotations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/json.h"
#include "kms/core/core.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"
#include "pkcs11/p11.h"
#include "tests/common/nomfa.h"
#include "tests/common/softhsm.h"

/* true while the tests run again on PostgreSQL (KMS_TEST_PG_URI): setup opens that */
static bool on_pg;

struct fx {
	struct softhsm_token tok;
	char db[160], log[160];
	struct store *st;
	struct p11 *p11;
	struct audit *au;
	struct core *core;
	char admin[128], svc[128];
};

static json_t *call(struct fx *f, enum kms_op op, const char *tenant, const char *key,
		    const char *name, const char *variant, const char *token, const char *body,
		    int *status)
{
	struct core_call c = {.op = op, .tenant = tenant, .key = key, .name = name, .variant = variant,
			      .token = token, .remote_addr = "127.0.0.1"};
	struct core_result r;
	json_error_t je;

	if (body != NULL) {
		c.body = json_loads(body, JSON_REJECT_DUPLICATES, &je);
		assert_non_null(c.body);
	}
	core_call(f->core, &c, &r);
	json_decref(c.body);
	*status = r.status;
	assert_non_null(r.body);
	return r.body;
}

static const char *dstr(json_t *b, const char *k)
{
	return json_string_value(json_object_get(json_object_get(b, "data"), k));
}

/* The built-in policy without its MFA step-up: these tests act as an admin with a bare
 * token (the step-up itself is tested in tests/integration/test_mfa.py). */
static kms_err policy_nomfa(struct core *core, const char *dir)
{
	char path[512];

	if (test_policy_nomfa_file(dir, path, sizeof(path)) != 0)
		return KMS_ERR_IO;
	return core_policy_init(core, path);
}

static int open_core(struct fx *f, const char *audit_path)
{
	struct p11_config pc = {f->tok.module, f->tok.label, 4};

	if (store_open(f->db, &f->st) != KMS_OK || audit_open(audit_path, "test", &f->au) != KMS_OK ||
	    p11_open(&pc, f->tok.user_pin, f->tok.user_pin_len, &f->p11) != KMS_OK ||
	    core_new(f->st, f->p11, f->au, &f->core) != KMS_OK || policy_nomfa(f->core, f->tok.dir) != KMS_OK)
		return -1;
	return 0;
}

static void close_core(struct fx *f)
{
	core_free(f->core);
	p11_close(f->p11);
	audit_close(f->au);
	store_close(f->st);
	f->core = NULL;
	f->p11 = NULL;
	f->au = NULL;
	f->st = NULL;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct p11_config pc;
	json_t *b;
	int st;

	if (f == NULL || softhsm_token_create(&f->tok) != 0)
		return -1;
	pc = (struct p11_config){f->tok.module, f->tok.label, 1};
	if (p11_provision(&pc, f->tok.so_pin, f->tok.so_pin_len, f->tok.user_pin, f->tok.user_pin_len) != KMS_OK)
		return -1;
	if (pgtest_store_path(on_pg, f->tok.dir, f->db, sizeof(f->db)) != 0)
		return -1;
	snprintf(f->log, sizeof(f->log), "%s/audit.log", f->tok.dir);
	if (open_core(f, f->log) != 0)
		return -1;
	if (core_bootstrap_admin(f->st, "admin", f->admin, sizeof(f->admin)) != KMS_OK)
		return -1;
	*state = f;
	json_decref(call(f, KMS_OP_TENANT_CREATE, NULL, NULL, "t1", NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	json_decref(call(f, KMS_OP_KEY_CREATE, "t1", "k1", NULL, NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	json_decref(call(f, KMS_OP_KEY_CREATE, "t1", "k2", NULL, NULL, f->admin, NULL, &st));
	assert_int_equal(st, 200);
	json_decref(call(f, KMS_OP_PRINCIPAL_CREATE, NULL, NULL, "svc", NULL, f->admin,
			 "{\"role\":\"service\",\"tenants\":[\"t1\"]}", &st));
	assert_int_equal(st, 200);
	b = call(f, KMS_OP_TOKEN_CREATE, NULL, NULL, "svc", NULL, f->admin, NULL, &st);
	assert_int_equal(st, 200);
	snprintf(f->svc, sizeof(f->svc), "%s",
		 json_string_value(json_object_get(json_object_get(b, "auth"), "client_token")));
	json_decref(b);
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	close_core(f);
	softhsm_token_destroy(&f->tok);
	free(f);
	return 0;
}

static void test_roundtrip_and_audit_count(void **state)
{
	struct fx *f = *state;
	uint64_t before = audit_seq(f->au);
	char body[512];
	json_t *a, *b;
	int st;

	a = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", f->svc, "{\"bits\":512}", &st);
	assert_int_equal(st, 200);
	assert_int_equal(strlen(dstr(a, "plaintext")), 88); /* 64 bytes in base64 */
	snprintf(body, sizeof(body), "{\"ciphertext\":\"%s\"}", dstr(a, "ciphertext"));
	b = call(f, KMS_OP_DECRYPT, "t1", "k1", NULL, NULL, f->svc, body, &st);
	assert_int_equal(st, 200);
	assert_string_equal(dstr(a, "plaintext"), dstr(b, "plaintext"));
	json_decref(b);
	/* the same ciphertext under k2 does not authenticate */
	b = call(f, KMS_OP_DECRYPT, "t1", "k2", NULL, NULL, f->svc, body, &st);
	assert_int_equal(st, 400);
	json_decref(b);
	json_decref(a);
	/* admin never gets key material; the denial is audited too */
	b = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", f->admin, NULL, &st);
	assert_int_equal(st, 403);
	assert_null(json_object_get(b, "data"));
	json_decref(b);
	b = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", NULL, NULL, &st);
	assert_int_equal(st, 401);
	json_decref(b);
	assert_int_equal(audit_seq(f->au), before + 5);
}

static void test_tampered_row_refused(void **state)
{
	struct fx *f = *state;
	char body[512];
	sqlite3 *db;
	json_t *a, *b;
	int st;

	a = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "wrapped", f->svc, NULL, &st);
	assert_int_equal(st, 200);
	assert_null(dstr(a, "plaintext"));
	snprintf(body, sizeof(body), "{\"ciphertext\":\"%s\"}", dstr(a, "ciphertext"));
	json_decref(a);
	close_core(f);
	/* Someone with write access to the database moves k2's wrapped KEK (and its MAC)
	 * into k1's row. The blob unwraps fine under the master key; only the row MAC,
	 * which binds tenant, key and version, can tell. */
#define MOVE_KEK                                                                              \
	"UPDATE key_versions SET blob = (SELECT blob FROM key_versions WHERE key_id = "        \
	"(SELECT id FROM keys WHERE name = 'k2')), mac = (SELECT mac FROM key_versions "     \
	"WHERE key_id = (SELECT id FROM keys WHERE name = 'k2')) WHERE key_id = "            \
	"(SELECT id FROM keys WHERE name = 'k1')"
	if (on_pg) {
		assert_int_equal(pgtest_exec(MOVE_KEK), 0);
	} else {
		assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
		assert_int_equal(sqlite3_exec(db, MOVE_KEK, NULL, NULL, NULL), SQLITE_OK);
		sqlite3_close(db);
	}
	assert_int_equal(open_core(f, f->log), 0);
	b = call(f, KMS_OP_DECRYPT, "t1", "k1", NULL, NULL, f->svc, body, &st);
	assert_int_equal(st, 500);
	assert_non_null(strstr(json_string_value(json_array_get(json_object_get(b, "errors"), 0)), "internal"));
	json_decref(b);
	b = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", f->svc, NULL, &st);
	assert_int_equal(st, 500);
	assert_null(json_object_get(b, "data"));
	json_decref(b);
	/* k2 itself is untouched */
	b = call(f, KMS_OP_DATAKEY, "t1", "k2", NULL, "plaintext", f->svc, NULL, &st);
	assert_int_equal(st, 200);
	json_decref(b);
}

static void test_fail_closed_without_audit(void **state)
{
	struct fx *f = *state;
	json_t *b;
	int st;

	if (access("/dev/full", W_OK) != 0)
		skip();
	close_core(f);
	assert_int_equal(open_core(f, "/dev/full"), 0);
	b = call(f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", f->svc, NULL, &st);
	assert_int_equal(st, 503);
	assert_null(json_object_get(b, "data"));
	assert_non_null(strstr(json_string_value(json_array_get(json_object_get(b, "errors"), 0)), "audit"));
	json_decref(b);
	b = call(f, KMS_OP_HEALTH, NULL, NULL, NULL, NULL, NULL, NULL, &st);
	assert_int_equal(st, 503);
	json_decref(b);
	close_core(f);
	assert_int_equal(open_core(f, f->log), 0);
}

struct racer {
	struct fx *f;
	int failures;
	int done;
};

static void *race_datakeys(void *arg)
{
	struct racer *r = arg;
	char body[512];
	int st;

	for (int i = 0; i < 60; i++) {
		json_t *a = call(r->f, KMS_OP_DATAKEY, "t1", "k1", NULL, "plaintext", r->f->svc,
				 "{\"encryption_context\":{\"p\":\"x\"}}", &st);
		if (st != 200) {
			r->failures++;
			json_decref(a);
			continue;
		}
		snprintf(body, sizeof(body), "{\"ciphertext\":\"%s\",\"encryption_context\":{\"p\":\"x\"}}",
			 dstr(a, "ciphertext"));
		json_t *b = call(r->f, KMS_OP_DECRYPT, "t1", "k1", NULL, NULL, r->f->svc, body, &st);
		if (st != 200 || strcmp(dstr(a, "plaintext"), dstr(b, "plaintext")) != 0)
			r->failures++;
		json_decref(a);
		json_decref(b);
		r->done++;
	}
	return NULL;
}

static void test_rotation_under_load(void **state)
{
	struct fx *f = *state;
	struct racer r[4] = {{f, 0, 0}, {f, 0, 0}, {f, 0, 0}, {f, 0, 0}};
	pthread_t t[4];
	json_t *b;
	int st;

	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, race_datakeys, &r[i]), 0);
	for (int i = 0; i < 10; i++) {
		b = call(f, KMS_OP_KEY_ROTATE, "t1", "k1", NULL, NULL, f->admin, NULL, &st);
		assert_int_equal(st, 200);
		json_decref(b);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(r[i].failures, 0);
		assert_int_equal(r[i].done, 60);
	}
	b = call(f, KMS_OP_KEY_READ, "t1", "k1", NULL, NULL, f->admin, NULL, &st);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "data"), "latest_version")), 11);
	json_decref(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip_and_audit_count, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tampered_row_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fail_closed_without_audit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_under_load, setup, teardown),
	};
	kms_json_init();
	int failed = cmocka_run_group_tests_name("core", tests, NULL, NULL);

	if (pgtest_uri() != NULL) {
		on_pg = true;
		failed += cmocka_run_group_tests_name("core on PostgreSQL", tests, NULL, NULL);
	}
	return failed;
}
