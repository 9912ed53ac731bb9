/* Unit tests for the MFA parts outside policy/totp.c (which test_totp.c covers):
 * the store's principal_mfa functions (the compare-and-set that accepts a step once,
 * the failure count and lock, the one-time recovery set, re-enrolment beside an active
 * enrolment, reset) and the token's seed sealing (kmsd-mfa-seal on a fresh SoftHSM2
 * token: round trip, AAD binding, tampering, the key's attributes). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"
#include "pkcs11/p11.h"
#include "pkcs11/p11_internal.h"
#include "tests/common/softhsm.h"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* true while the tests run again on PostgreSQL (KMS_TEST_PG_URI): setup opens that */
static bool on_pg;

struct sfx {
	char dir[64], path[128];
	struct store *s;
	int64_t alice, bob;
};

static int store_setup(void **state)
{
	struct sfx *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/kmsd-test-mfa-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	if (pgtest_store_path(on_pg, f->dir, f->path, sizeof(f->path)) != 0)
		return -1;
	if (store_open(f->path, &f->s) != KMS_OK ||
	    store_principal_create(f->s, "alice", "admin", NULL, 0, 1000, &f->alice) != KMS_OK ||
	    store_principal_create(f->s, "bob", "admin", NULL, 0, 1000, &f->bob) != KMS_OK)
		return -1;
	*state = f;
	return 0;
}

static int store_teardown(void **state)
{
	struct sfx *f = *state;

	store_close(f->s);
	nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void row(struct store_mfa *m, int64_t pid, const char *state, uint8_t fill, const char *recovery)
{
	memset(m, 0, sizeof(*m));
	m->principal_id = pid;
	snprintf(m->state, sizeof(m->state), "%s", state);
	memset(m->sealed_seed, fill, 48);
	m->sealed_len = 48;
	snprintf(m->recovery, sizeof(m->recovery), "%s", recovery);
}

static void test_enrol_confirm_and_steps(void **state)
{
	struct sfx *f = *state;
	struct store_mfa m, got;

	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_ERR_NOT_FOUND);
	row(&m, f->alice, "pending", 0xa1, "r1$set-a");
	assert_int_equal(store_mfa_put(f->s, &m, 2000), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_string_equal(got.state, "pending");
	assert_int_equal(got.sealed_len, 48);
	assert_memory_equal(got.sealed_seed, m.sealed_seed, 48);
	assert_int_equal(got.last_step, 0);
	assert_int_equal(got.pending_len, 0);
	/* a pending enrolment takes no step-up, only its confirmation */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 100, false, 3000), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 100, true, 3000), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_string_equal(got.state, "active");
	assert_int_equal(got.last_step, 100);
	assert_int_equal(got.mfa_at, 3000);
	/* each step once, and only forward */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 100, false, 3001), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 99, false, 3001), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 101, false, 3002), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_int_equal(got.last_step, 101);
	assert_int_equal(got.mfa_at, 3002);
	/* survives a reopen */
	store_close(f->s);
	assert_int_equal(store_open(f->path, &f->s), KMS_OK);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 101, false, 3003), KMS_ERR_CONFLICT);
	/* bad input */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 0, false, 1), KMS_ERR_INVALID);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, (uint64_t)INT64_MAX + 1, false, 1), KMS_ERR_INVALID);
	assert_int_equal(store_mfa_accept_step(f->s, 424242, 500, true, 1), KMS_ERR_CONFLICT);
	row(&m, 424242, "pending", 1, "x");
	assert_int_equal(store_mfa_put(f->s, &m, 1), KMS_ERR_NOT_FOUND); /* no such principal */
	row(&m, f->bob, "weird", 1, "x");
	assert_int_equal(store_mfa_put(f->s, &m, 1), KMS_ERR_INVALID);
}

static void test_failures_lock_unlock(void **state)
{
	struct sfx *f = *state;
	struct store_mfa m, got;
	uint32_t n = 0;
	bool locked = true;

	row(&m, f->bob, "pending", 0xb0, "r1$b");
	assert_int_equal(store_mfa_put(f->s, &m, 10), KMS_OK);
	assert_int_equal(store_mfa_accept_step(f->s, f->bob, 7, true, 11), KMS_OK);
	assert_int_equal(store_mfa_fail(f->s, f->bob, 3, 12, &n, &locked), KMS_OK);
	assert_int_equal(n, 1);
	assert_false(locked);
	assert_int_equal(store_mfa_fail(f->s, f->bob, 3, 12, &n, &locked), KMS_OK);
	assert_false(locked);
	/* a success clears the count */
	assert_int_equal(store_mfa_accept_step(f->s, f->bob, 8, false, 13), KMS_OK);
	for (int i = 1; i <= 3; i++) {
		assert_int_equal(store_mfa_fail(f->s, f->bob, 3, 14, &n, &locked), KMS_OK);
		assert_int_equal(n, (uint32_t)i);
		assert_int_equal(locked, i == 3);
	}
	/* locked: not even a new step passes, nor a recovery code, nor a re-enrolment */
	assert_int_equal(store_mfa_accept_step(f->s, f->bob, 9, false, 15), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_use_recovery(f->s, f->bob, "r1$b", "r1$b2", 15), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_put_pending(f->s, f->bob, m.sealed_seed, 48, "r1$c", 15), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_fail(f->s, f->bob, 3, 16, &n, &locked), KMS_OK);
	assert_true(locked);
	assert_int_equal(n, 4);
	assert_int_equal(store_mfa_unlock(f->s, f->bob, 17), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->bob, &got), KMS_OK);
	assert_false(got.locked);
	assert_int_equal(got.failures, 0);
	assert_int_equal(got.last_step, 8); /* unlocking does not reopen steps */
	assert_int_equal(store_mfa_accept_step(f->s, f->bob, 8, false, 18), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->bob, 9, false, 18), KMS_OK);
	assert_int_equal(store_mfa_fail(f->s, f->bob, 0, 1, &n, &locked), KMS_ERR_INVALID);
	assert_int_equal(store_mfa_fail(f->s, 424242, 3, 1, &n, &locked), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_mfa_unlock(f->s, 424242, 1), KMS_ERR_NOT_FOUND);
}

static void test_recovery_once(void **state)
{
	struct sfx *f = *state;
	struct store_mfa m, got;

	row(&m, f->alice, "pending", 0xa2, "r1$old");
	assert_int_equal(store_mfa_put(f->s, &m, 10), KMS_OK);
	assert_int_equal(store_mfa_use_recovery(f->s, f->alice, "r1$old", "r1$new", 20), KMS_ERR_CONFLICT); /* pending */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 5000, true, 11), KMS_OK);
	assert_int_equal(store_mfa_use_recovery(f->s, f->alice, "r1$old", "r1$new", 20), KMS_OK);
	/* the same old set again: another request used it first */
	assert_int_equal(store_mfa_use_recovery(f->s, f->alice, "r1$old", "r1$other", 21), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_string_equal(got.recovery, "r1$new");
	assert_int_equal(got.mfa_at, 20);
	assert_int_equal(store_mfa_use_recovery(f->s, f->alice, NULL, "x", 1), KMS_ERR_INVALID);
}

static void test_reenrol_and_reset(void **state)
{
	struct sfx *f = *state;
	struct store_mfa m, got;
	uint8_t newseed[60];

	memset(newseed, 0xee, sizeof(newseed));
	row(&m, f->alice, "pending", 0xa3, "r1$one");
	assert_int_equal(store_mfa_put(f->s, &m, 10), KMS_OK);
	/* no re-enrolment beside a pending one */
	assert_int_equal(store_mfa_put_pending(f->s, f->alice, newseed, sizeof(newseed), "r1$two", 11), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 200, true, 12), KMS_OK);
	assert_int_equal(store_mfa_put_pending(f->s, f->alice, newseed, sizeof(newseed), "r1$two", 13), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_string_equal(got.state, "active");
	assert_int_equal(got.sealed_len, 48); /* the active seed is still in force */
	assert_int_equal(got.pending_len, sizeof(newseed));
	assert_string_equal(got.pending_recovery, "r1$two");
	/* a step-up with the old seed leaves the re-enrolment pending */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 201, false, 14), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_int_equal(got.pending_len, sizeof(newseed));
	/* the confirmation swaps it in */
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 202, true, 15), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_OK);
	assert_int_equal(got.sealed_len, sizeof(newseed));
	assert_memory_equal(got.sealed_seed, newseed, sizeof(newseed));
	assert_string_equal(got.recovery, "r1$two");
	assert_int_equal(got.pending_len, 0);
	/* a fresh enrolment over an old row keeps the last step (never accepted twice) */
	row(&m, f->alice, "pending", 0xa4, "r1$three");
	assert_int_equal(store_mfa_put(f->s, &m, 16), KMS_OK);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 202, true, 17), KMS_ERR_CONFLICT);
	assert_int_equal(store_mfa_accept_step(f->s, f->alice, 203, true, 17), KMS_OK);
	/* reset */
	assert_int_equal(store_mfa_delete(f->s, f->alice), KMS_OK);
	assert_int_equal(store_mfa_get(f->s, f->alice, &got), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_mfa_delete(f->s, f->alice), KMS_ERR_NOT_FOUND);
}

/* ---- the token's seed sealing ---- */

static void test_seal(void **state)
{
	struct softhsm_token t;
	struct p11_config pc;
	struct p11 *p = NULL;
	uint8_t seed[20], out[20 + P11_MFA_SEAL_OVERHEAD], back[64];
	static const uint8_t aad_a[] = "kmsd.mfa.seed.v1 alice", aad_b[] = "kmsd.mfa.seed.v1 bob";
	size_t n = 0, bn = 0;
	CK_OBJECT_HANDLE h;
	CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
	CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sens, sizeof(sens)}, {CKA_EXTRACTABLE, &extr, sizeof(extr)}};
	CK_BYTE value[64];
	CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
	CK_ULONG cnt = 0;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)},
			       {CKA_LABEL, (void *)P11_LABEL_MFA_SEAL, sizeof(P11_LABEL_MFA_SEAL) - 1}};
	CK_FUNCTION_LIST_PTR fl;
	(void)state;

	assert_int_equal(softhsm_token_create(&t), 0);
	pc = (struct p11_config){t.module, t.label, 2};
	assert_int_equal(p11_provision(&pc, t.so_pin, t.so_pin_len, t.user_pin, t.user_pin_len), KMS_OK);
	assert_int_equal(p11_open(&pc, t.user_pin, t.user_pin_len, &p), KMS_OK);
	memset(seed, 0x5a, sizeof(seed));
	/* no key yet: unsealing is a token error, not a made-up key */
	memset(out, 0, sizeof(out));
	assert_int_equal(p11_mfa_unseal(p, aad_a, sizeof(aad_a), out, sizeof(out), back, sizeof(back), &bn),
			 KMS_ERR_TOKEN);
	assert_int_equal(p11_mfa_seal(p, aad_a, sizeof(aad_a), seed, sizeof(seed), out, sizeof(out), &n), KMS_OK);
	assert_int_equal(n, sizeof(out));
	assert_null(memmem(out, n, seed, 8)); /* not in the clear */
	assert_int_equal(p11_mfa_unseal(p, aad_a, sizeof(aad_a), out, n, back, sizeof(back), &bn), KMS_OK);
	assert_int_equal(bn, sizeof(seed));
	assert_memory_equal(back, seed, sizeof(seed));
	/* another principal's AAD, or one flipped bit anywhere: refused */
	assert_int_equal(p11_mfa_unseal(p, aad_b, sizeof(aad_b), out, n, back, sizeof(back), &bn), KMS_ERR_DECRYPT);
	for (size_t i = 0; i < n; i += 7) {
		out[i] ^= 0x01;
		assert_int_equal(p11_mfa_unseal(p, aad_a, sizeof(aad_a), out, n, back, sizeof(back), &bn),
				 KMS_ERR_DECRYPT);
		out[i] ^= 0x01;
	}
	assert_int_equal(p11_mfa_unseal(p, aad_a, sizeof(aad_a), out, P11_MFA_SEAL_OVERHEAD, back, sizeof(back), &bn),
			 KMS_ERR_DECRYPT);
	assert_int_equal(p11_mfa_seal(p, aad_a, sizeof(aad_a), seed, sizeof(seed), out, sizeof(out) - 1, &n),
			 KMS_ERR_INTERNAL);
	/* two seals of one seed differ (random IV) */
	{
		uint8_t o2[sizeof(out)];
		size_t n2 = 0;
		assert_int_equal(p11_mfa_seal(p, aad_a, sizeof(aad_a), seed, sizeof(seed), out, sizeof(out), &n), KMS_OK);
		assert_int_equal(p11_mfa_seal(p, aad_a, sizeof(aad_a), seed, sizeof(seed), o2, sizeof(o2), &n2), KMS_OK);
		assert_memory_not_equal(out, o2, n);
	}
	/* the key: one token object, sensitive, not extractable, its value unreadable */
	fl = p11_internal_functions(p);
	assert_int_equal(fl->C_FindObjectsInit(p11_internal_holder(p), find, 2), CKR_OK);
	assert_int_equal(fl->C_FindObjects(p11_internal_holder(p), &h, 1, &cnt), CKR_OK);
	assert_int_equal(fl->C_FindObjectsFinal(p11_internal_holder(p)), CKR_OK);
	assert_int_equal(cnt, 1);
	assert_int_equal(fl->C_GetAttributeValue(p11_internal_holder(p), h, a, 2), CKR_OK);
	assert_true(sens == CK_TRUE);
	assert_true(extr == CK_FALSE);
	assert_int_not_equal(fl->C_GetAttributeValue(p11_internal_holder(p), h, &v, 1), CKR_OK);
	/* and it is found again by a new process (p11_open) */
	p11_close(p);
	p = NULL;
	assert_int_equal(p11_open(&pc, t.user_pin, t.user_pin_len, &p), KMS_OK);
	assert_int_equal(p11_mfa_unseal(p, aad_a, sizeof(aad_a), out, n, back, sizeof(back), &bn), KMS_OK);
	assert_memory_equal(back, seed, sizeof(seed));
	p11_close(p);
	softhsm_token_destroy(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_enrol_confirm_and_steps, store_setup, store_teardown),
		cmocka_unit_test_setup_teardown(test_failures_lock_unlock, store_setup, store_teardown),
		cmocka_unit_test_setup_teardown(test_recovery_once, store_setup, store_teardown),
		cmocka_unit_test_setup_teardown(test_reenrol_and_reset, store_setup, store_teardown),
		cmocka_unit_test(test_seal),
	};
	int failed = cmocka_run_group_tests_name("mfa", tests, NULL, NULL);

	if (pgtest_uri() != NULL) {
		on_pg = true;
		failed += cmocka_run_group_tests_name("mfa on PostgreSQL", tests, NULL, NULL);
	}
	return failed;
}
