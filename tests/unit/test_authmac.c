/* Unit tests for the authority-row MACs: the canonical encoding (kms/store/authmac.c)
 * is injective (distinct rows never share an encoding, field boundaries cannot move,
 * tables and key rows are domain-separated), and the store (kms/store/store.c) MACs
 * authority rows as it writes them, refuses rows edited, added, copied or left without
 * a MAC once MACs are initialised, reports each refusal, and MACs older rows once
 * (trust on first use). An OpenSSL HMAC under a fixed key stands in for the token. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "kms/store/authmac.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"

/* ---- the encoding ---- */

static void enc(enum store_am_table t, const struct store_am_field *f, size_t n, uint8_t **out, size_t *len)
{
	assert_int_equal(store_am_encode(t, f, n, out, len), KMS_OK);
}

static bool same(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
	return al == bl && memcmp(a, b, al) == 0;
}

static void test_encoding_layout(void **state)
{
	struct store_am_field f[] = {{.kind = STORE_AM_INT, .i = 7}, {.kind = STORE_AM_BYTES, .b = "ab", .n = 2}};
	static const uint8_t want[] = {'k', 'm', 's', 'd', '.', 'a', 'u', 't', 'h', 'r', 'o', 'w', '.', 'v', '1', 0,
				       STORE_AM_PRINCIPAL, 2, 1, 0, 0, 0, 0, 0, 0, 0, 7, 2, 0, 0, 0, 2, 'a', 'b'};
	uint8_t *e;
	size_t len;

	(void)state;
	enc(STORE_AM_PRINCIPAL, f, 2, &e, &len);
	assert_true(same(e, len, want, sizeof(want)));
	free(e);
}

/* The example in docs/FORMATS.md "Authority rows". */
static void test_encoding_doc_example(void **state)
{
	struct store_am_field f[] = {{.kind = STORE_AM_INT, .i = 7},
				     {.kind = STORE_AM_BYTES, .b = "ab", .n = 2},
				     {.kind = STORE_AM_BYTES, .b = "admin", .n = 5}};
	static const char want[] = "6b6d73642e61757468726f772e763100010301000000000000000702000000026162020000000561646d696e";
	char hex[2 * 64 + 1] = "";
	uint8_t *e;
	size_t len;

	(void)state;
	enc(STORE_AM_PRINCIPAL, f, 3, &e, &len);
	assert_true(2 * len < sizeof(hex));
	for (size_t i = 0; i < len; i++)
		snprintf(hex + 2 * i, 3, "%02x", e[i]);
	assert_string_equal(hex, want);
	free(e);
}

/* Moving a byte from one text field to the next changes the encoding. */
static void test_encoding_boundaries(void **state)
{
	struct store_am_field a[] = {{.kind = STORE_AM_INT, .i = 1},
				     {.kind = STORE_AM_BYTES, .b = "ab", .n = 2},
				     {.kind = STORE_AM_BYTES, .b = "c", .n = 1}};
	struct store_am_field b[] = {{.kind = STORE_AM_INT, .i = 1},
				     {.kind = STORE_AM_BYTES, .b = "a", .n = 1},
				     {.kind = STORE_AM_BYTES, .b = "bc", .n = 2}};
	struct store_am_field c[] = {{.kind = STORE_AM_INT, .i = 1},
				     {.kind = STORE_AM_BYTES, .b = "abc", .n = 3},
				     {.kind = STORE_AM_BYTES, .b = "", .n = 0}};
	uint8_t *ea, *eb, *ec;
	size_t la, lb, lc;

	(void)state;
	enc(STORE_AM_PRINCIPAL, a, 3, &ea, &la);
	enc(STORE_AM_PRINCIPAL, b, 3, &eb, &lb);
	enc(STORE_AM_PRINCIPAL, c, 3, &ec, &lc);
	assert_false(same(ea, la, eb, lb));
	assert_false(same(ea, la, ec, lc));
	assert_false(same(eb, lb, ec, lc));
	free(ea);
	free(eb);
	free(ec);
}

/* The same values in another table, as an integer instead of bytes, with a field
 * fewer, or with another primary key, never give the same encoding. */
static void test_encoding_distinct(void **state)
{
	struct store_am_field two_ints[] = {{.kind = STORE_AM_INT, .i = 5}, {.kind = STORE_AM_INT, .i = 9}};
	struct store_am_field swapped[] = {{.kind = STORE_AM_INT, .i = 9}, {.kind = STORE_AM_INT, .i = 5}};
	uint8_t v8[8] = {0, 0, 0, 0, 0, 0, 0, 5};
	struct store_am_field as_bytes[] = {{.kind = STORE_AM_BYTES, .b = v8, .n = 8}, {.kind = STORE_AM_INT, .i = 9}};
	struct store_am_field one[] = {{.kind = STORE_AM_INT, .i = 5}};
	uint8_t *e[5];
	size_t l[5];

	(void)state;
	enc(STORE_AM_TENANT, two_ints, 2, &e[0], &l[0]);
	enc(STORE_AM_POLICY, two_ints, 2, &e[1], &l[1]);
	enc(STORE_AM_TENANT, swapped, 2, &e[2], &l[2]);
	enc(STORE_AM_TENANT, as_bytes, 2, &e[3], &l[3]);
	enc(STORE_AM_TENANT, one, 1, &e[4], &l[4]);
	for (int i = 0; i < 5; i++)
		for (int j = i + 1; j < 5; j++)
			assert_false(same(e[i], l[i], e[j], l[j]));
	/* and none starts like a key_versions row ("kmsd.row.v1") */
	for (int i = 0; i < 5; i++) {
		assert_true(memcmp(e[i], "kmsd.row", 8) != 0);
		free(e[i]);
	}
	/* negative integers are encoded in full (two's complement), not truncated */
	{
		struct store_am_field m1[] = {{.kind = STORE_AM_INT, .i = -1}};
		struct store_am_field big[] = {{.kind = STORE_AM_INT, .i = INT64_MAX}};
		uint8_t *x, *y;
		size_t lx, ly;

		enc(STORE_AM_POLICY, m1, 1, &x, &lx);
		enc(STORE_AM_POLICY, big, 1, &y, &ly);
		assert_false(same(x, lx, y, ly));
		free(x);
		free(y);
	}
}

static void test_encoding_bad_input(void **state)
{
	struct store_am_field f[STORE_AM_FIELDS_MAX + 1] = {0};
	struct store_am_field bad_kind[] = {{.kind = 9}};
	struct store_am_field null_bytes[] = {{.kind = STORE_AM_BYTES, .b = NULL, .n = 3}};
	uint8_t *e = (uint8_t *)1;
	size_t len = 1;

	(void)state;
	for (size_t i = 0; i <= STORE_AM_FIELDS_MAX; i++)
		f[i].kind = STORE_AM_INT;
	assert_int_equal(store_am_encode(STORE_AM_TOKEN, f, STORE_AM_FIELDS_MAX + 1, &e, &len), KMS_ERR_INVALID);
	assert_null(e);
	assert_int_equal(store_am_encode((enum store_am_table)0, f, 1, &e, &len), KMS_ERR_INVALID);
	assert_int_equal(store_am_encode((enum store_am_table)99, f, 1, &e, &len), KMS_ERR_INVALID);
	assert_int_equal(store_am_encode(STORE_AM_TOKEN, bad_kind, 1, &e, &len), KMS_ERR_INVALID);
	assert_int_equal(store_am_encode(STORE_AM_TOKEN, null_bytes, 1, &e, &len), KMS_ERR_INVALID);
	assert_int_equal(store_am_encode(STORE_AM_TOKEN, f, 1, NULL, &len), KMS_ERR_INVALID);
	assert_string_equal(store_am_table_name(STORE_AM_TOKEN), "api_tokens");
	assert_string_equal(store_am_table_name((enum store_am_table)77), "unknown");
}

/* ---- the store ---- */

/* true while the tests run again on PostgreSQL (KMS_TEST_PG_URI): setup opens that */
static bool on_pg;

struct fx {
	char dir[64];
	char path[128];
	struct store *s;
	unsigned macs; /* MAC computations */
	unsigned bad;  /* integrity reports */
	char last_table[32];
	char last_row[96];
};

static const uint8_t test_key[32] = "kmsd unit test authority mac k.";

static kms_err fake_mac(void *ctx, const uint8_t *msg, size_t len, uint8_t mac[STORE_MAC_LEN])
{
	struct fx *f = ctx;
	unsigned int ml = 0;

	f->macs++;
	if (HMAC(EVP_sha256(), test_key, sizeof(test_key), msg, len, mac, &ml) == NULL || ml != STORE_MAC_LEN)
		return kms_errf(KMS_ERR_TOKEN, "hmac");
	return KMS_OK;
}

static void fake_bad(void *ctx, const char *table, const char *row)
{
	struct fx *f = ctx;

	f->bad++;
	snprintf(f->last_table, sizeof(f->last_table), "%s", table);
	snprintf(f->last_row, sizeof(f->last_row), "%s", row);
}

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
	snprintf(f->dir, sizeof(f->dir), "/tmp/kmsd-test-authmac-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	if (pgtest_store_path(on_pg, f->dir, f->path, sizeof(f->path)) != 0)
		return -1;
	if (store_open(f->path, &f->s) != KMS_OK) {
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
	nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Raw SQL on the same file, as an insider with write access would. */
static void sql(struct fx *f, const char *q)
{
	sqlite3 *db;
	char *err = NULL;

	if (on_pg) {
		/* the same edit in PostgreSQL's words: zeroblob(32) -> 32 zero bytes */
		char pq[512];
		const char *z = strstr(q, "zeroblob(32)");

		if (z != NULL)
			snprintf(pq, sizeof(pq), "%.*sdecode(repeat('00', 32), 'hex')%s", (int)(z - q), q, z + 12);
		else
			snprintf(pq, sizeof(pq), "%s", q);
		assert_int_equal(pgtest_exec(pq), 0);
		return;
	}
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_exec(db, q, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", q, err);
	sqlite3_close(db);
}

static void attach(struct fx *f)
{
	store_set_authmac(f->s, fake_mac, f, fake_bad, f);
}

/* Rows written with MACs verify; every kind of edit is refused and reported. */
static void test_store_refuses_edits(void **state)
{
	struct fx *f = *state;
	struct store_token t = {0}, got;
	struct store_principal p;
	int64_t tid, tid2, svc, adm, pid, cert_id, ver;
	int64_t *scope;
	size_t n, sealed;
	bool first;
	char *text;

	attach(f);
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_OK);
	assert_true(first);
	assert_int_equal(sealed, 0);
	assert_int_equal(store_tenant_create(f->s, "t1", "phi", 1, &tid), KMS_OK);
	assert_int_equal(store_tenant_create(f->s, "t2", "phi", 1, &tid2), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "svc", "service", &tid, 1, 1, &svc), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "adm", "admin", NULL, 0, 1, &adm), KMS_OK);
	snprintf(t.accessor, sizeof(t.accessor), "acc1");
	memset(t.hash, 0x11, sizeof(t.hash));
	t.principal_id = svc;
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	assert_int_equal(store_policy_put(f->s, 2, "{\"v\":2}", "adm", 1), KMS_OK);
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SPKI, "aa", 1, &cert_id), KMS_OK);

	/* all good */
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_int_equal(store_principal_get_id(f->s, svc, &p), KMS_OK);
	assert_int_equal(store_principal_get(f->s, "adm", &p), KMS_OK);
	assert_int_equal(store_principal_tenants(f->s, svc, &scope, &n), KMS_OK);
	assert_int_equal(n, 1);
	free(scope);
	assert_int_equal(store_policy_latest(f->s, &ver, &text), KMS_OK);
	free(text);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, "aa", &pid), KMS_OK);
	assert_int_equal(pid, svc);
	assert_int_equal(f->bad, 0);

	/* role changed */
	sql(f, "UPDATE principals SET role = 'admin' WHERE name = 'svc'");
	assert_int_equal(store_principal_get(f->s, "svc", &p), KMS_ERR_DENIED);
	assert_int_equal(f->bad, 1);
	assert_string_equal(f->last_table, "principals");
	sql(f, "UPDATE principals SET role = 'service' WHERE name = 'svc'");
	assert_int_equal(store_principal_get(f->s, "svc", &p), KMS_OK);

	/* a scope row added, then a scope row without MAC */
	{
		char q[160];

		snprintf(q, sizeof(q), "INSERT INTO principal_tenants (principal_id, tenant_id, mac) "
				       "SELECT %lld, %lld, mac FROM principal_tenants WHERE principal_id = %lld",
			 (long long)svc, (long long)tid2, (long long)svc);
		sql(f, q);
	}
	assert_int_equal(store_principal_tenants(f->s, svc, &scope, &n), KMS_ERR_DENIED);
	assert_null(scope);
	assert_string_equal(f->last_table, "principal_tenants");
	assert_non_null(strstr(f->last_row, "tenant_id="));

	/* token hash replaced, token un-revoked, MAC copied from another row */
	sql(f, "UPDATE api_tokens SET hash = zeroblob(32) WHERE accessor = 'acc1'");
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_ERR_DENIED);
	assert_string_equal(f->last_table, "api_tokens");
	assert_string_equal(f->last_row, "accessor=acc1");
	{
		char q[256];

		snprintf(q, sizeof(q),
			 "INSERT INTO api_tokens (accessor, principal_id, hash, created, expires, revoked, mac) "
			 "SELECT 'acc2', %lld, hash, created, expires, revoked, mac FROM api_tokens WHERE accessor = 'acc1'",
			 (long long)adm);
		sql(f, q);
	}
	assert_int_equal(store_token_get(f->s, "acc2", &got), KMS_ERR_DENIED);
	/* a row with no MAC at all */
	sql(f, "INSERT INTO api_tokens (accessor, principal_id, hash, created) VALUES ('acc3', 1, zeroblob(32), 0)");
	assert_int_equal(store_token_get(f->s, "acc3", &got), KMS_ERR_DENIED);
	assert_int_equal(store_token_revoke(f->s, "acc3"), KMS_ERR_DENIED); /* no fresh MAC for a bad row */

	/* policy text edited */
	sql(f, "UPDATE policies SET text = '{\"v\":3}' WHERE version = 2");
	assert_int_equal(store_policy_latest(f->s, &ver, &text), KMS_ERR_DENIED);
	assert_string_equal(f->last_table, "policies");
	assert_string_equal(f->last_row, "version=2");

	/* certificate mapping moved to the admin */
	{
		char q[128];

		snprintf(q, sizeof(q), "UPDATE principal_certs SET principal_id = %lld", (long long)adm);
		sql(f, q);
	}
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SPKI, "aa", &pid), KMS_ERR_DENIED);
	assert_string_equal(f->last_table, "principal_certs");

	/* without a MAC function nothing is checked (offline tools) */
	store_set_authmac(f->s, NULL, NULL, NULL, NULL);
	assert_int_equal(store_token_get(f->s, "acc3", &got), KMS_OK);
}

/* Revocation re-MACs the row; a revoked row flipped back is refused. The second read
 * of an unchanged row needs no MAC computation. */
static void test_store_revoke_and_memory(void **state)
{
	struct fx *f = *state;
	struct store_token t = {0}, got;
	int64_t svc;
	unsigned before;
	size_t sealed;
	bool first;

	attach(f);
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "svc", "service", NULL, 0, 1, &svc), KMS_OK);
	snprintf(t.accessor, sizeof(t.accessor), "acc1");
	t.principal_id = svc;
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	before = f->macs;
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_int_equal(f->macs, before); /* known from the write */
	assert_int_equal(store_token_revoke(f->s, "acc1"), KMS_OK);
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_true(got.revoked);
	sql(f, "UPDATE api_tokens SET revoked = 0 WHERE accessor = 'acc1'");
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_ERR_DENIED);
	assert_int_equal(f->bad, 1);
	/* another key: what verified before proves nothing */
	store_set_authmac(f->s, fake_mac, &f->macs, fake_bad, f); /* another context */
	store_set_authmac(f->s, fake_mac, f, fake_bad, f);
	before = f->macs;
	sql(f, "UPDATE api_tokens SET revoked = 1 WHERE accessor = 'acc1'");
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_int_equal(f->macs, before + 1);
}

/* Trust on first use: rows from before MACs get them once; later NULLs are refused. */
static void test_store_first_use(void **state)
{
	struct fx *f = *state;
	struct store_token t = {0}, got;
	struct store_principal p;
	int64_t tid, svc, ver, *scope, pid;
	size_t sealed, n;
	bool first;
	char *text;

	/* written without a MAC function, as an old kmsd did */
	assert_int_equal(store_tenant_create(f->s, "t1", "phi", 1, &tid), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "svc", "service", &tid, 1, 1, &svc), KMS_OK);
	snprintf(t.accessor, sizeof(t.accessor), "acc1");
	t.principal_id = svc;
	assert_int_equal(store_token_create(f->s, &t), KMS_OK);
	assert_int_equal(store_policy_put(f->s, 1, "{}", "x", 1), KMS_OK);
	assert_int_equal(store_cert_add(f->s, svc, STORE_CERT_SUBJECT, "CN=a", 1, NULL), KMS_OK);
	attach(f);
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_ERR_DENIED); /* not yet sealed */
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_OK);
	assert_true(first);
	assert_int_equal(sealed, 5);
	assert_int_equal(store_token_get(f->s, "acc1", &got), KMS_OK);
	assert_int_equal(store_principal_get(f->s, "svc", &p), KMS_OK);
	assert_int_equal(store_principal_tenants(f->s, svc, &scope, &n), KMS_OK);
	free(scope);
	assert_int_equal(store_policy_latest(f->s, &ver, &text), KMS_OK);
	free(text);
	assert_int_equal(store_cert_lookup(f->s, STORE_CERT_SUBJECT, "CN=a", &pid), KMS_OK);
	/* once only: a row without MAC added later stays refused */
	sql(f, "INSERT INTO api_tokens (accessor, principal_id, hash, created) VALUES ('acc9', 1, zeroblob(32), 0)");
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_OK);
	assert_false(first);
	assert_int_equal(sealed, 0);
	assert_int_equal(store_token_get(f->s, "acc9", &got), KMS_ERR_DENIED);
	/* no MAC function: refused */
	store_set_authmac(f->s, NULL, NULL, NULL, NULL);
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_ERR_INVALID);
}

/* MFA rows: MAC'd on put and on activation; an edit of the seed, state or recovery
 * codes is refused on read and is not laundered by a later change; the counters are
 * not MAC'd. */
static void test_store_mfa(void **state)
{
	struct fx *f = *state;
	struct store_mfa *m = calloc(1, sizeof(*m)), *got = calloc(1, sizeof(*got));
	int64_t pid;
	size_t sealed;
	bool first;
	char q[160];

	assert_non_null(m);
	assert_non_null(got);
	attach(f);
	assert_int_equal(store_authmac_init(f->s, &sealed, &first), KMS_OK);
	assert_int_equal(store_principal_create(f->s, "adm", "admin", NULL, 0, 1, &pid), KMS_OK);
	m->principal_id = pid;
	snprintf(m->state, sizeof(m->state), "pending");
	memset(m->sealed_seed, 0x42, 40);
	m->sealed_len = 40;
	snprintf(m->recovery, sizeof(m->recovery), "r1");
	assert_int_equal(store_mfa_put(f->s, m, 5), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_OK);
	assert_int_equal(store_mfa_accept_step(f->s, pid, 7, true, 6), KMS_OK); /* activate */
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_OK);
	assert_string_equal(got->state, "active");
	assert_int_equal(store_mfa_accept_step(f->s, pid, 8, false, 7), KMS_OK);
	assert_int_equal(store_mfa_put_pending(f->s, pid, m->sealed_seed, 40, "r2", 8), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_OK);
	assert_int_equal(got->pending_len, 40);
	/* counters: not MAC'd */
	snprintf(q, sizeof(q), "UPDATE principal_mfa SET failures = 2, last_step = 1 WHERE principal_id = %lld",
		 (long long)pid);
	sql(f, q);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_OK);
	/* recovery codes of the insider's choosing */
	snprintf(q, sizeof(q), "UPDATE principal_mfa SET recovery = 'mine' WHERE principal_id = %lld", (long long)pid);
	sql(f, q);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_ERR_DENIED);
	assert_string_equal(f->last_table, "principal_mfa");
	assert_int_equal(store_mfa_use_recovery(f->s, pid, "mine", "mine2", 9), KMS_ERR_DENIED);
	assert_int_equal(store_mfa_put_pending(f->s, pid, m->sealed_seed, 40, "r3", 9), KMS_ERR_DENIED);
	assert_int_equal(store_mfa_accept_step(f->s, pid, 20, true, 9), KMS_ERR_DENIED);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_ERR_DENIED); /* still refused: nothing re-MAC'd it */
	/* a new enrolment replaces the row and MACs it */
	assert_int_equal(store_mfa_put(f->s, m, 10), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, pid, got), KMS_OK);
	free(m);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_encoding_layout),
		cmocka_unit_test(test_encoding_doc_example),
		cmocka_unit_test(test_encoding_boundaries),
		cmocka_unit_test(test_encoding_distinct),
		cmocka_unit_test(test_encoding_bad_input),
		cmocka_unit_test_setup_teardown(test_store_refuses_edits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_revoke_and_memory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_first_use, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_mfa, setup, teardown),
	};

	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (pgtest_uri() != NULL) {
		on_pg = true;
		failed += cmocka_run_group_tests_name("authmac on PostgreSQL", tests, NULL, NULL);
	}
	return failed;
}
