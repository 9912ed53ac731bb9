/* pkcs11/: the token layer against a real SoftHSM2 token, a fresh one per test.
 * Besides the API contract, these tests try the ways a holder of the user PIN could get
 * a KEK or the master key out of the token through the raw PKCS#11 interface
 * (DESIGN "Token object templates"), and assert that each is refused. The CKR codes
 * SoftHSM2 answers are printed, so that a change of module shows up in the log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/err.h"
#include "pkcs11/ckr.h"
#include "pkcs11/p11.h"
#include "pkcs11/p11_internal.h"
#include "tests/common/softhsm.h"

struct fx {
	struct softhsm_token t;
	struct p11_config cfg;
	struct p11 *p;
	CK_FUNCTION_LIST_PTR f;
	CK_SESSION_HANDLE s; /* a session of the test's own (user logged in via p) */
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int setup_token(void **state)
{
	struct fx *x = calloc(1, sizeof(*x));

	if (x == NULL || softhsm_token_create(&x->t) != 0) {
		if (x != NULL)
			softhsm_token_destroy(&x->t);
		free(x);
		return -1;
	}
	x->cfg.module = x->t.module;
	x->cfg.token_label = x->t.label;
	x->cfg.sessions = 4;
	x->s = CK_INVALID_HANDLE;
	*state = x;
	return 0;
}

static int setup_open(void **state)
{
	struct fx *x;
	CK_RV rv;

	if (setup_token(state) != 0)
		return -1;
	x = *state;
	if (p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
			  x->t.user_pin_len) != KMS_OK) {
		fprintf(stderr, "provision: %s\n", kms_err_detail(KMS_ERR_TOKEN));
		return -1;
	}
	if (p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &x->p) != KMS_OK) {
		fprintf(stderr, "open: %s\n", kms_err_detail(KMS_ERR_TOKEN));
		return -1;
	}
	x->f = p11_internal_functions(x->p);
	rv = x->f->C_OpenSession(p11_internal_slot(x->p), CKF_SERIAL_SESSION | CKF_RW_SESSION,
				 NULL, NULL, &x->s);
	if (rv != CKR_OK)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	struct fx *x = *state;

	if (x == NULL)
		return 0;
	if (x->s != CK_INVALID_HANDLE)
		(void)x->f->C_CloseSession(x->s);
	p11_close(x->p);
	softhsm_token_destroy(&x->t);
	free(x);
	return 0;
}

static void show(const char *what, CK_RV rv)
{
	printf("    [softhsm2] %-60s -> %s\n", what, p11_ckr_name(rv));
}

/* ------------------------------------------------------------------ provisioning */

static void test_provision_then_open(void **state)
{
	struct fx *x = *state;
	struct p11 *p = NULL;

	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_OK);
	assert_non_null(p);
	assert_int_not_equal(p11_internal_object(p, P11_LABEL_MK), CK_INVALID_HANDLE);
	p11_close(p);
	/* A second open after close: the module is finalised and initialised again. */
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_OK);
	p11_close(p);
	p11_close(NULL);
}

static void test_provision_twice_conflict(void **state)
{
	struct fx *x = *state;
	struct p11 *p = NULL;
	CK_FUNCTION_LIST_PTR f;
	CK_SESSION_HANDLE s;

	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_ERR_CONFLICT);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFLICT), "already exists"));
	/* No SO PIN is needed when the master key exists. */
	assert_int_equal(p11_provision(&x->cfg, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_CONFLICT);

	/* A missing MAC key is still created on a CONFLICT run. */
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_OK);
	f = p11_internal_functions(p);
	s = p11_internal_holder(p);
	assert_int_equal(f->C_DestroyObject(s, p11_internal_object(p, P11_LABEL_AUDIT_HMAC)),
			 CKR_OK);
	p11_close(p);
	p = NULL;
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_TOKEN);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_TOKEN), P11_LABEL_AUDIT_HMAC));
	assert_int_equal(p11_provision(&x->cfg, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_CONFLICT);
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_OK);
	p11_close(p);
}

static void test_provision_needs_so_pin(void **state)
{
	struct fx *x = *state;

	assert_int_equal(p11_provision(&x->cfg, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_INVALID);
	assert_int_equal(p11_provision(&x->cfg, "wrong-so-pin", 12, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_ERR_CONFIG);
	printf("    wrong SO PIN: %s\n", kms_err_detail(KMS_ERR_CONFIG));
	/* Nothing half-made is left behind: the real ceremony still works. */
	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
}

static void test_mk_attributes(void **state)
{
	struct fx *x = *state;
	CK_OBJECT_HANDLE mk = p11_internal_object(x->p, P11_LABEL_MK);
	CK_BBOOL trusted = 0, token = 0, priv = 0, sens = 0, extr = 1, enc = 1, dec = 1, wrap = 0,
		 unwrap = 0, sign = 1, verify = 1, local = 0;
	CK_ATTRIBUTE a[] = {
		{CKA_TRUSTED, &trusted, 1}, {CKA_TOKEN, &token, 1},     {CKA_PRIVATE, &priv, 1},
		{CKA_SENSITIVE, &sens, 1},  {CKA_EXTRACTABLE, &extr, 1}, {CKA_ENCRYPT, &enc, 1},
		{CKA_DECRYPT, &dec, 1},	    {CKA_WRAP, &wrap, 1},	  {CKA_UNWRAP, &unwrap, 1},
		{CKA_SIGN, &sign, 1},	    {CKA_VERIFY, &verify, 1},	  {CKA_LOCAL, &local, 1},
	};
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE all[16];
	CK_ULONG n = 0, i;
	char label[64];
	CK_ATTRIBUTE la = {CKA_LABEL, label, sizeof(label)};

	assert_int_equal(x->f->C_GetAttributeValue(x->s, mk, a, NELEM(a)), CKR_OK);
	assert_true(trusted && token && priv && sens && !extr && wrap && unwrap);
	assert_false(enc || dec || sign || verify);
	printf("    master key: CKA_LOCAL=%d after C_CopyObject\n", (int)local);

	/* The staging key is gone: exactly the three kmsd keys exist. */
	assert_int_equal(x->f->C_FindObjectsInit(x->s, find, 1), CKR_OK);
	assert_int_equal(x->f->C_FindObjects(x->s, all, NELEM(all), &n), CKR_OK);
	assert_int_equal(x->f->C_FindObjectsFinal(x->s), CKR_OK);
	assert_int_equal(n, 3);
	for (i = 0; i < n; i++) {
		la.ulValueLen = sizeof(label) - 1;
		assert_int_equal(x->f->C_GetAttributeValue(x->s, all[i], &la, 1), CKR_OK);
		label[la.ulValueLen] = '\0';
		assert_null(strstr(label, "staging"));
	}
}

/* ------------------------------------------------------------------ KEKs and GCM */

static void test_kek_generate_and_load(void **state)
{
	struct fx *x = *state;
	uint8_t a[P11_KEK_BLOB_LEN], b[P11_KEK_BLOB_LEN];
	p11_key ka = 0, kb = 0;

	assert_int_equal(p11_kek_generate(x->p, 1, a), KMS_OK);
	assert_int_equal(p11_kek_generate(x->p, 1, b), KMS_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(p11_kek_load(x->p, 1, a, sizeof(a), &ka), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, b, sizeof(b), &kb), KMS_OK);
	assert_true(ka != 0 && kb != 0 && ka != kb);
	p11_kek_unload(x->p, ka);
	p11_kek_unload(x->p, kb);
	p11_kek_unload(x->p, 0);
}

static void test_kek_leaves_no_session_object(void **state)
{
	struct fx *x = *state;
	uint8_t blob[P11_KEK_BLOB_LEN];
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE find[] = {{CKA_TOKEN, &no, 1}};
	CK_OBJECT_HANDLE h[4];
	CK_ULONG n = 99;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(x->f->C_FindObjectsInit(x->s, find, 1), CKR_OK);
	assert_int_equal(x->f->C_FindObjects(x->s, h, NELEM(h), &n), CKR_OK);
	assert_int_equal(x->f->C_FindObjectsFinal(x->s), CKR_OK);
	assert_int_equal(n, 0);
}

static void test_gcm_round_trip(void **state)
{
	struct fx *x = *state;
	static const uint8_t aad[] = "v1|tenant|key|3|ctx";
	uint8_t blob[P11_KEK_BLOB_LEN], iv[P11_GCM_IV_LEN];
	size_t sizes[] = {0, 1, 16, 64, 1000, 4096, 5000};
	size_t i, n;
	p11_key k = 0;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);
	for (i = 0; i < NELEM(sizes); i++) {
		size_t len = sizes[i];
		uint8_t *pt = malloc(len + 1), *ct = malloc(len + P11_GCM_TAG_LEN);
		uint8_t *back = malloc(len + P11_GCM_TAG_LEN);

		assert_non_null(pt);
		assert_non_null(ct);
		assert_non_null(back);
		assert_int_equal(p11_random(x->p, pt, len), KMS_OK);
		assert_int_equal(p11_random(x->p, iv, sizeof(iv)), KMS_OK);
		assert_int_equal(p11_gcm_encrypt(x->p, k, iv, aad, sizeof(aad), len ? pt : NULL,
						 len, ct, len + P11_GCM_TAG_LEN),
				 KMS_OK);
		/* Output buffer of exactly the plaintext size (scratch path)... */
		n = 12345;
		assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), ct,
						 len + P11_GCM_TAG_LEN, back, len, &n),
				 KMS_OK);
		assert_int_equal(n, len);
		assert_memory_equal(back, pt, len);
		/* ...and with room for the tag (direct path). */
		memset(back, 0, len + P11_GCM_TAG_LEN);
		assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), ct,
						 len + P11_GCM_TAG_LEN, back,
						 len + P11_GCM_TAG_LEN, &n),
				 KMS_OK);
		assert_int_equal(n, len);
		assert_memory_equal(back, pt, len);
		/* No AAD at all. */
		assert_int_equal(p11_gcm_encrypt(x->p, k, iv, NULL, 0, pt, len, ct,
						 len + P11_GCM_TAG_LEN),
				 KMS_OK);
		assert_int_equal(p11_gcm_decrypt(x->p, k, iv, NULL, 0, ct, len + P11_GCM_TAG_LEN,
						 back, len, &n),
				 KMS_OK);
		assert_memory_equal(back, pt, len);
		free(pt);
		free(ct);
		free(back);
	}
	p11_kek_unload(x->p, k);
}

static void test_gcm_buffer_checks(void **state)
{
	struct fx *x = *state;
	uint8_t blob[P11_KEK_BLOB_LEN], iv[P11_GCM_IV_LEN] = {0}, pt[32] = {0}, ct[48], out[32];
	size_t n;
	p11_key k = 0;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);
	assert_int_equal(p11_gcm_encrypt(x->p, k, iv, NULL, 0, pt, sizeof(pt), ct, sizeof(ct) - 1),
			 KMS_ERR_INTERNAL);
	assert_int_equal(p11_gcm_encrypt(x->p, k, iv, NULL, 0, pt, sizeof(pt), ct, sizeof(ct)),
			 KMS_OK);
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, NULL, 0, ct, sizeof(ct), out,
					 sizeof(out) - 1, &n),
			 KMS_ERR_INTERNAL);
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, NULL, 0, ct, 15, out, sizeof(out), &n),
			 KMS_ERR_DECRYPT);
	assert_int_equal(p11_gcm_encrypt(x->p, 0, iv, NULL, 0, pt, sizeof(pt), ct, sizeof(ct)),
			 KMS_ERR_INTERNAL);
	/* The pool is intact after the refusals. */
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, NULL, 0, ct, sizeof(ct), out, sizeof(out),
					 &n),
			 KMS_OK);
	p11_kek_unload(x->p, k);
}

static void test_gcm_tamper_is_decrypt_error(void **state)
{
	struct fx *x = *state;
	uint8_t aad[] = "tenant-a|key-1|v1";
	uint8_t blob[P11_KEK_BLOB_LEN], blob2[P11_KEK_BLOB_LEN], iv[P11_GCM_IV_LEN];
	uint8_t pt[40], ct[sizeof(pt) + P11_GCM_TAG_LEN], bad[sizeof(ct)], out[sizeof(ct)];
	size_t n;
	p11_key k = 0, other = 0;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_generate(x->p, 1, blob2), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob2, sizeof(blob2), &other), KMS_OK);
	assert_int_equal(p11_random(x->p, pt, sizeof(pt)), KMS_OK);
	assert_int_equal(p11_random(x->p, iv, sizeof(iv)), KMS_OK);
	assert_int_equal(p11_gcm_encrypt(x->p, k, iv, aad, sizeof(aad), pt, sizeof(pt), ct,
					 sizeof(ct)),
			 KMS_OK);

	/* changed AAD */
	aad[0] ^= 1;
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), ct, sizeof(ct), out,
					 sizeof(out), &n),
			 KMS_ERR_DECRYPT);
	printf("    changed AAD: %s\n", kms_err_detail(KMS_ERR_DECRYPT));
	aad[0] ^= 1;
	/* flipped ciphertext bit */
	memcpy(bad, ct, sizeof(ct));
	bad[3] ^= 0x10;
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), bad, sizeof(bad), out,
					 sizeof(out), &n),
			 KMS_ERR_DECRYPT);
	/* flipped tag bit */
	memcpy(bad, ct, sizeof(ct));
	bad[sizeof(bad) - 1] ^= 0x01;
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), bad, sizeof(bad), out,
					 sizeof(pt), &n),
			 KMS_ERR_DECRYPT);
	/* other IV */
	iv[0] ^= 1;
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), ct, sizeof(ct), out,
					 sizeof(out), &n),
			 KMS_ERR_DECRYPT);
	iv[0] ^= 1;
	/* wrong key */
	assert_int_equal(p11_gcm_decrypt(x->p, other, iv, aad, sizeof(aad), ct, sizeof(ct), out,
					 sizeof(out), &n),
			 KMS_ERR_DECRYPT);
	assert_int_equal(n, 0);
	/* and the original still decrypts on the same pool */
	assert_int_equal(p11_gcm_decrypt(x->p, k, iv, aad, sizeof(aad), ct, sizeof(ct), out,
					 sizeof(out), &n),
			 KMS_OK);
	assert_memory_equal(out, pt, sizeof(pt));

	/* An unloaded key is a token-side failure, not the caller's ciphertext. */
	p11_kek_unload(x->p, other);
	assert_int_equal(p11_gcm_decrypt(x->p, other, iv, aad, sizeof(aad), ct, sizeof(ct), out,
					 sizeof(out), &n),
			 KMS_ERR_TOKEN);
	printf("    unloaded key: %s\n", kms_err_detail(KMS_ERR_TOKEN));
	p11_kek_unload(x->p, k);
}

static void test_hmac(void **state)
{
	struct fx *x = *state;
	static const uint8_t msg[] = "tenant|key|3|blob";
	uint8_t a[P11_HMAC_LEN], b[P11_HMAC_LEN], c[P11_HMAC_LEN], d[P11_HMAC_LEN];

	assert_int_equal(p11_hmac(x->p, P11_MAC_STORE, msg, sizeof(msg), a), KMS_OK);
	assert_int_equal(p11_hmac(x->p, P11_MAC_STORE, msg, sizeof(msg), b), KMS_OK);
	assert_memory_equal(a, b, sizeof(a));
	assert_int_equal(p11_hmac(x->p, P11_MAC_AUDIT, msg, sizeof(msg), c), KMS_OK);
	assert_memory_not_equal(a, c, sizeof(a));
	assert_int_equal(p11_hmac(x->p, P11_MAC_STORE, msg, sizeof(msg) - 1, d), KMS_OK);
	assert_memory_not_equal(a, d, sizeof(a));
	assert_int_equal(p11_hmac(x->p, P11_MAC_STORE, NULL, 0, d), KMS_OK);
	assert_int_equal(p11_hmac(x->p, (enum p11_mac_key)7, msg, 1, d), KMS_ERR_INTERNAL);
}

static void test_random(void **state)
{
	struct fx *x = *state;
	uint8_t a[64] = {0}, b[64] = {0};

	assert_int_equal(p11_random(x->p, a, sizeof(a)), KMS_OK);
	assert_int_equal(p11_random(x->p, b, sizeof(b)), KMS_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(p11_random(x->p, NULL, 0), KMS_OK);
}

static void test_bad_blob_is_invalid(void **state)
{
	struct fx *x = *state;
	uint8_t blob[P11_KEK_BLOB_LEN], bad[P11_KEK_BLOB_LEN];
	size_t i;
	p11_key k = 0;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	for (i = 0; i < sizeof(blob); i += 13) {
		memcpy(bad, blob, sizeof(bad));
		bad[i] ^= 0x40;
		assert_int_equal(p11_kek_load(x->p, 1, bad, sizeof(bad), &k), KMS_ERR_INVALID);
		assert_int_equal(k, 0);
	}
	printf("    bad blob: %s\n", kms_err_detail(KMS_ERR_INVALID));
	assert_int_equal(p11_random(x->p, bad, sizeof(bad)), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, bad, sizeof(bad), &k), KMS_ERR_INVALID);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob) - 8, &k), KMS_ERR_INVALID);
	assert_int_equal(p11_kek_load(x->p, 1, blob, 0, &k), KMS_ERR_INVALID);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);
	p11_kek_unload(x->p, k);
}

/* ------------------------------------------------------------------ open failures */

static void test_open_wrong_pin(void **state)
{
	struct fx *x = *state;
	struct p11 *p = (struct p11 *)1;
	kms_err e;

	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
	e = p11_open(&x->cfg, "not-the-pin", 11, &p);
	assert_int_not_equal(e, KMS_OK);
	assert_null(p);
	printf("    wrong PIN: %s: %s\n", kms_strerror(e), kms_err_detail(e));
	assert_null(strstr(kms_err_detail(e), "not-the-pin"));
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, 0, &p), KMS_ERR_CONFIG);
}

static void test_open_unknown_label(void **state)
{
	struct fx *x = *state;
	struct p11_config cfg = x->cfg;
	struct p11 *p = NULL;
	kms_err e;

	cfg.token_label = "no-such-token";
	e = p11_open(&cfg, x->t.user_pin, x->t.user_pin_len, &p);
	assert_int_not_equal(e, KMS_OK);
	assert_null(p);
	printf("    unknown label: %s\n", kms_err_detail(e));
	cfg.token_label = "a-label-that-is-longer-than-32-bytes";
	assert_int_equal(p11_open(&cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_CONFIG);
	cfg.token_label = x->t.label;
	cfg.module = "/nonexistent/libpkcs11.so";
	assert_int_equal(p11_open(&cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_CONFIG);
	cfg.module = x->t.module;
	cfg.sessions = 0;
	assert_int_equal(p11_open(&cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_CONFIG);
}

static void test_open_unprovisioned(void **state)
{
	struct fx *x = *state;
	struct p11 *p = NULL;

	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_TOKEN);
	assert_null(p);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_TOKEN), "not provisioned"));
	printf("    unprovisioned: %s\n", kms_err_detail(KMS_ERR_TOKEN));
}

/* ------------------------------------------------------------------ master-key rotation */

/* Session objects of the token, counted on a session of p's. */
static CK_ULONG session_objects(struct p11 *p)
{
	CK_FUNCTION_LIST_PTR f = p11_internal_functions(p);
	CK_SESSION_HANDLE s = p11_internal_holder(p);
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE find[] = {{CKA_TOKEN, &no, 1}};
	CK_OBJECT_HANDLE h[8];
	CK_ULONG n = 99;

	assert_int_equal(f->C_FindObjectsInit(s, find, 1), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, h, NELEM(h), &n), CKR_OK);
	assert_int_equal(f->C_FindObjectsFinal(s), CKR_OK);
	return n;
}

/* A second master key by the init ceremony, a KEK moved onto it inside the token (the
 * same key: it decrypts what the old serving copy encrypted), the old master key
 * destroyed, and what each call answers before and after. */
static void test_mk_rotation(void **state)
{
	struct fx *x = *state;
	static const uint8_t pt[16] = "PHI: MRN 000042";
	uint8_t b1[P11_KEK_BLOB_LEN], b2[P11_KEK_BLOB_LEN], b3[P11_KEK_BLOB_LEN];
	uint8_t iv[P11_GCM_IV_LEN] = {1, 2, 3}, ct[sizeof(pt) + P11_GCM_TAG_LEN], back[sizeof(ct)];
	size_t n = 0;
	p11_key k1 = 0, k2 = 0, k;

	assert_int_equal(p11_provision(&x->cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &x->p), KMS_OK);
	assert_int_equal(p11_mk_check(x->p, 1), KMS_OK);
	assert_int_equal(p11_mk_check(x->p, 2), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_kek_generate(x->p, 1, b1), KMS_OK);
	assert_int_equal(p11_kek_generate(x->p, 2, b3), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_kek_rewrap(x->p, 1, b1, sizeof(b1), 2, b2), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_kek_rewrap(x->p, 1, b1, sizeof(b1), 1, b2), KMS_ERR_INTERNAL);
	assert_int_equal(p11_kek_load(x->p, 1, b1, sizeof(b1), &k1), KMS_OK);
	assert_int_equal(p11_gcm_encrypt(x->p, k1, iv, NULL, 0, pt, sizeof(pt), ct, sizeof(ct)), KMS_OK);
	p11_close(x->p);
	x->p = NULL;

	/* the ceremony: SO PIN required and checked, nothing made when it fails */
	assert_int_equal(p11_mk_create(&x->cfg, 2, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_INVALID);
	assert_int_equal(p11_mk_create(&x->cfg, 2, "wrong-so-pin", 12, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_CONFIG);
	assert_int_equal(p11_mk_create(&x->cfg, 0, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_ERR_INVALID);
	assert_int_equal(p11_mk_create(&x->cfg, 2, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_OK);
	/* a second run finds it and reuses it (after checking it) */
	assert_int_equal(p11_mk_create(&x->cfg, 2, x->t.so_pin, x->t.so_pin_len, x->t.user_pin,
				       x->t.user_pin_len),
			 KMS_ERR_CONFLICT);

	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &x->p), KMS_OK);
	assert_int_equal(p11_mk_check(x->p, 2), KMS_OK); /* trusted, unwrap template, mechanisms */
	assert_int_equal(session_objects(x->p), 0);
	assert_int_equal(p11_kek_rewrap(x->p, 1, b1, sizeof(b1), 2, b2), KMS_OK);
	assert_int_equal(session_objects(x->p), 0); /* the transit and check copies are gone */
	assert_memory_not_equal(b1, b2, sizeof(b1));
	/* a blob answers only to its own master key */
	assert_int_equal(p11_kek_load(x->p, 1, b2, sizeof(b2), &k), KMS_ERR_INVALID);
	assert_int_equal(p11_kek_load(x->p, 2, b1, sizeof(b1), &k), KMS_ERR_INVALID);
	assert_int_equal(p11_kek_load(x->p, 2, b2, sizeof(b2), &k2), KMS_OK);
	assert_int_equal(p11_gcm_decrypt(x->p, k2, iv, NULL, 0, ct, sizeof(ct), back, sizeof(back), &n),
			 KMS_OK);
	assert_int_equal(n, sizeof(pt));
	assert_memory_equal(back, pt, sizeof(pt));
	/* a blob that is not a KEK under the old key is refused, nothing is written */
	memcpy(b3, b1, sizeof(b3));
	b3[5] ^= 1;
	assert_int_equal(p11_kek_rewrap(x->p, 1, b3, sizeof(b3), 2, b2), KMS_ERR_INVALID);
	assert_int_equal(session_objects(x->p), 1); /* k2 only */

	assert_int_equal(p11_mk_destroy(x->p, 1), KMS_OK);
	assert_int_equal(p11_mk_destroy(x->p, 1), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_mk_check(x->p, 1), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_kek_load(x->p, 1, b1, sizeof(b1), &k), KMS_ERR_NOT_FOUND);
	assert_int_equal(p11_kek_rewrap(x->p, 1, b1, sizeof(b1), 2, b3), KMS_ERR_NOT_FOUND);
	/* serving copies do not depend on the master key that unwrapped them */
	memset(back, 0, sizeof(back));
	assert_int_equal(p11_gcm_decrypt(x->p, k2, iv, NULL, 0, ct, sizeof(ct), back, sizeof(back), &n),
			 KMS_OK);
	assert_memory_equal(back, pt, sizeof(pt));
	assert_int_equal(p11_kek_generate(x->p, 2, b3), KMS_OK);
	p11_kek_unload(x->p, k2);
}

/* ------------------------------------------------------------------ extraction paths */

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
static CK_KEY_TYPE aes = CKK_AES;

static void test_values_are_sensitive(void **state)
{
	struct fx *x = *state;
	uint8_t blob[P11_KEK_BLOB_LEN], v[64];
	CK_ATTRIBUTE a = {CKA_VALUE, v, sizeof(v)};
	const char *labels[] = {P11_LABEL_MK, P11_LABEL_STORE_MAC, P11_LABEL_AUDIT_HMAC};
	p11_key k = 0;
	CK_RV rv;
	size_t i;

	for (i = 0; i < NELEM(labels); i++) {
		a.ulValueLen = sizeof(v);
		rv = x->f->C_GetAttributeValue(x->s, p11_internal_object(x->p, labels[i]), &a, 1);
		show(labels[i], rv);
		assert_int_equal(rv, CKR_ATTRIBUTE_SENSITIVE);
	}
	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);
	a.ulValueLen = sizeof(v);
	rv = x->f->C_GetAttributeValue(x->s, (CK_OBJECT_HANDLE)k, &a, 1);
	show("C_GetAttributeValue(CKA_VALUE) on a loaded KEK", rv);
	assert_int_equal(rv, CKR_ATTRIBUTE_SENSITIVE);
	p11_kek_unload(x->p, k);
}

/* (1) Unwrap a stored blob as a key whose value can be read. */
static void test_unwrap_as_readable_is_refused(void **state)
{
	struct fx *x = *state;
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE mk = p11_internal_object(x->p, P11_LABEL_MK), h;
	uint8_t blob[P11_KEK_BLOB_LEN];
	/* The naive template: what an attacker asks for. */
	CK_ATTRIBUTE open_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},		      {CKA_SENSITIVE, &no, 1},
		{CKA_EXTRACTABLE, &yes, 1},
	};
	/* Names SENSITIVE=FALSE but satisfies WRAP_WITH_TRUSTED. */
	CK_ATTRIBUTE half_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},		      {CKA_SENSITIVE, &no, 1},
		{CKA_EXTRACTABLE, &yes, 1},	      {CKA_WRAP_WITH_TRUSTED, &yes, 1},
	};
	/* Sensitive, but wrappable by any key (to wrap it under one of our own next). */
	CK_ATTRIBUTE untrusted_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},		      {CKA_SENSITIVE, &yes, 1},
		{CKA_EXTRACTABLE, &yes, 1},	      {CKA_WRAP_WITH_TRUSTED, &no, 1},
	};
	/* Omits both: SoftHSM2 does not fill them in from the unwrap template. */
	CK_ATTRIBUTE bare_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)},
		{CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},
	};
	struct {
		const char *name;
		CK_ATTRIBUTE *t;
		CK_ULONG n;
	} cases[] = {
		{"C_UnwrapKey(MK, {SENSITIVE=F, EXTRACTABLE=T})", open_tmpl, NELEM(open_tmpl)},
		{"C_UnwrapKey(MK, {SENSITIVE=F, EXTRACTABLE=T, WWT=T})", half_tmpl,
		 NELEM(half_tmpl)},
		{"C_UnwrapKey(MK, {SENSITIVE=T, EXTRACTABLE=T, WWT=F})", untrusted_tmpl,
		 NELEM(untrusted_tmpl)},
		{"C_UnwrapKey(MK, {no SENSITIVE, no WWT})", bare_tmpl, NELEM(bare_tmpl)},
	};
	size_t i;
	CK_RV rv;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	for (i = 0; i < NELEM(cases); i++) {
		h = CK_INVALID_HANDLE;
		rv = x->f->C_UnwrapKey(x->s, &kwp, mk, blob, sizeof(blob), cases[i].t, cases[i].n,
				       &h);
		show(cases[i].name, rv);
		assert_int_equal(rv, CKR_TEMPLATE_INCONSISTENT);
		assert_int_equal(h, CK_INVALID_HANDLE);
	}
}

/* (2) Turn the master key into a decryptor and undo the key wrap by hand. */
static void test_mk_as_decryptor_is_refused(void **state)
{
	struct fx *x = *state;
	CK_OBJECT_HANDLE mk = p11_internal_object(x->p, P11_LABEL_MK);
	CK_ATTRIBUTE set_dec = {CKA_DECRYPT, &yes, 1};
	CK_MECHANISM_TYPE more[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_ECB, CKM_AES_CBC};
	CK_ATTRIBUTE set_mechs = {CKA_ALLOWED_MECHANISMS, more, sizeof(more)};
	CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
	CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
	uint8_t blob[P11_KEK_BLOB_LEN], out[P11_KEK_BLOB_LEN];
	CK_ULONG n = sizeof(out);
	CK_RV rv_set, rv_init, rv;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	rv_set = x->f->C_SetAttributeValue(x->s, mk, &set_dec, 1);
	show("C_SetAttributeValue(MK, CKA_DECRYPT=TRUE)", rv_set);
	rv_init = x->f->C_DecryptInit(x->s, &ecb, mk);
	show("C_DecryptInit(CKM_AES_ECB, MK)", rv_init);
	if (rv_init == CKR_OK) {
		rv = x->f->C_Decrypt(x->s, blob, sizeof(blob), out, &n);
		show("C_Decrypt(blob) with the MK", rv);
	}
	assert_false(rv_set == CKR_OK && rv_init == CKR_OK);
	/* SoftHSM2 lets the user set CKA_DECRYPT; CKA_ALLOWED_MECHANISMS is what holds. */
	assert_int_equal(rv_init, CKR_MECHANISM_INVALID);

	/* Widening the mechanism list is refused: it is read-only after creation. */
	rv = x->f->C_SetAttributeValue(x->s, mk, &set_mechs, 1);
	show("C_SetAttributeValue(MK, CKA_ALLOWED_MECHANISMS += ECB)", rv);
	assert_int_equal(rv, CKR_ATTRIBUTE_READ_ONLY);
	/* Plain RFC 3394 key wrap on the MK (a different unwrap path) is not allowed either. */
	rv = x->f->C_DecryptInit(x->s, &kw, mk);
	show("C_DecryptInit(CKM_AES_KEY_WRAP, MK)", rv);
	assert_int_not_equal(rv, CKR_OK);
}

static CK_OBJECT_HANDLE own_wrapping_key(struct fx *x)
{
	static uint8_t value[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},		      {CKA_PRIVATE, &yes, 1},
		{CKA_VALUE, value, sizeof(value)},    {CKA_WRAP, &yes, 1},
		{CKA_UNWRAP, &yes, 1},		      {CKA_DECRYPT, &yes, 1},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

	assert_int_equal(x->f->C_CreateObject(x->s, t, NELEM(t), &h), CKR_OK);
	return h;
}

/* (3) Wrap a KEK under a key whose value the caller knows. */
static void test_wrap_under_own_key_is_refused(void **state)
{
	struct fx *x = *state;
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ULONG len32 = 32;
	CK_ATTRIBUTE kek_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)},
		{CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_VALUE_LEN, &len32, sizeof(len32)},
		{CKA_TOKEN, &no, 1},
		{CKA_SENSITIVE, &yes, 1},
		{CKA_EXTRACTABLE, &yes, 1},
		{CKA_WRAP_WITH_TRUSTED, &yes, 1},
		{CKA_ENCRYPT, &yes, 1},
		{CKA_DECRYPT, &yes, 1},
	};
	/* What MK rotation does: an extractable serving copy, wrappable by trusted keys. */
	CK_ATTRIBUTE rot_tmpl[] = {
		{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &no, 1},		      {CKA_SENSITIVE, &yes, 1},
		{CKA_EXTRACTABLE, &yes, 1},	      {CKA_WRAP_WITH_TRUSTED, &yes, 1},
	};
	CK_OBJECT_HANDLE own = own_wrapping_key(x), fresh = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE rot = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE mk = p11_internal_object(x->p, P11_LABEL_MK);
	CK_ATTRIBUTE unset_wwt = {CKA_WRAP_WITH_TRUSTED, &no, 1};
	CK_ATTRIBUTE set_trusted = {CKA_TRUSTED, &yes, 1};
	uint8_t blob[P11_KEK_BLOB_LEN], out[64];
	CK_ULONG n;
	p11_key k = 0;
	CK_RV rv;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);

	n = sizeof(out);
	rv = x->f->C_WrapKey(x->s, &kwp, own, (CK_OBJECT_HANDLE)k, out, &n);
	show("C_WrapKey(own key, loaded KEK)", rv);
	assert_true(rv == CKR_KEY_UNEXTRACTABLE || rv == CKR_KEY_NOT_WRAPPABLE);

	assert_int_equal(x->f->C_GenerateKey(x->s, &gen, kek_tmpl, NELEM(kek_tmpl), &fresh),
			 CKR_OK);
	n = sizeof(out);
	rv = x->f->C_WrapKey(x->s, &kwp, own, fresh, out, &n);
	show("C_WrapKey(own key, fresh extractable WWT KEK)", rv);
	assert_int_equal(rv, CKR_KEY_NOT_WRAPPABLE);

	/* The rotation form of a serving copy is no easier to get out. */
	rv = x->f->C_UnwrapKey(x->s, &kwp, mk, blob, sizeof(blob), rot_tmpl, NELEM(rot_tmpl), &rot);
	show("C_UnwrapKey(MK, rotation template)", rv);
	assert_int_equal(rv, CKR_OK);
	n = sizeof(out);
	rv = x->f->C_WrapKey(x->s, &kwp, own, rot, out, &n);
	show("C_WrapKey(own key, rotation copy)", rv);
	assert_int_equal(rv, CKR_KEY_NOT_WRAPPABLE);
	/* ...and the MK itself can rewrap it (what rotation needs). */
	n = sizeof(out);
	rv = x->f->C_WrapKey(x->s, &kwp, mk, rot, out, &n);
	show("C_WrapKey(MK, rotation copy)", rv);
	assert_int_equal(rv, CKR_OK);
	assert_int_equal(n, P11_KEK_BLOB_LEN);

	/* Nor can the user drop WRAP_WITH_TRUSTED, or make their own key trusted. */
	rv = x->f->C_SetAttributeValue(x->s, rot, &unset_wwt, 1);
	show("C_SetAttributeValue(KEK, CKA_WRAP_WITH_TRUSTED=FALSE)", rv);
	assert_int_equal(rv, CKR_ATTRIBUTE_READ_ONLY);
	rv = x->f->C_SetAttributeValue(x->s, own, &set_trusted, 1);
	show("C_SetAttributeValue(own key, CKA_TRUSTED=TRUE) as user", rv);
	assert_int_not_equal(rv, CKR_OK);

	assert_int_equal(x->f->C_DestroyObject(x->s, rot), CKR_OK);
	assert_int_equal(x->f->C_DestroyObject(x->s, fresh), CKR_OK);
	assert_int_equal(x->f->C_DestroyObject(x->s, own), CKR_OK);
	p11_kek_unload(x->p, k);
}

/* Other ways a PIN holder might try: make a serving copy non-sensitive, copy it into a
 * readable object, or derive a key from it. */
static void test_other_paths_are_refused(void **state)
{
	struct fx *x = *state;
	CK_ATTRIBUTE unsens = {CKA_SENSITIVE, &no, 1};
	CK_ATTRIBUTE extract = {CKA_EXTRACTABLE, &yes, 1};
	CK_ATTRIBUTE copy_open[] = {{CKA_SENSITIVE, &no, 1}};
	CK_ATTRIBUTE copy_extr[] = {{CKA_EXTRACTABLE, &yes, 1}};
	uint8_t blob[P11_KEK_BLOB_LEN];
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	p11_key k = 0;
	CK_RV rv;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	assert_int_equal(p11_kek_load(x->p, 1, blob, sizeof(blob), &k), KMS_OK);

	rv = x->f->C_SetAttributeValue(x->s, (CK_OBJECT_HANDLE)k, &unsens, 1);
	show("C_SetAttributeValue(KEK, CKA_SENSITIVE=FALSE)", rv);
	assert_int_not_equal(rv, CKR_OK);
	rv = x->f->C_SetAttributeValue(x->s, (CK_OBJECT_HANDLE)k, &extract, 1);
	show("C_SetAttributeValue(KEK, CKA_EXTRACTABLE=TRUE)", rv);
	assert_int_not_equal(rv, CKR_OK);
	rv = x->f->C_CopyObject(x->s, (CK_OBJECT_HANDLE)k, copy_open, 1, &h);
	show("C_CopyObject(KEK, {SENSITIVE=FALSE})", rv);
	assert_int_not_equal(rv, CKR_OK);
	rv = x->f->C_CopyObject(x->s, (CK_OBJECT_HANDLE)k, copy_extr, 1, &h);
	show("C_CopyObject(KEK, {EXTRACTABLE=TRUE})", rv);
	assert_int_not_equal(rv, CKR_OK);
	p11_kek_unload(x->p, k);
}

/* ------------------------------------------------------------------ audit signing key */

static void test_audit_sign_key_attributes(void **state)
{
	struct fx *x = *state;
	CK_OBJECT_HANDLE priv = p11_internal_object(x->p, P11_LABEL_AUDIT_SIGN);
	CK_OBJECT_HANDLE pub = p11_internal_audit_pubkey(x->p);
	CK_BBOOL token = 0, prv = 0, sens = 0, extr = 1, sign = 0, dec = 1, unwrap = 1, derive = 1,
		 recover = 1, ptoken = 0, pprv = 1, verify = 0, enc = 1, wrap = 1;
	CK_KEY_TYPE kt = 0;
	CK_ATTRIBUTE a[] = {
		{CKA_TOKEN, &token, 1},	      {CKA_PRIVATE, &prv, 1},	 {CKA_SENSITIVE, &sens, 1},
		{CKA_EXTRACTABLE, &extr, 1},   {CKA_SIGN, &sign, 1},	 {CKA_DECRYPT, &dec, 1},
		{CKA_UNWRAP, &unwrap, 1},      {CKA_DERIVE, &derive, 1}, {CKA_SIGN_RECOVER, &recover, 1},
		{CKA_KEY_TYPE, &kt, sizeof(kt)},
	};
	CK_ATTRIBUTE pa[] = {
		{CKA_TOKEN, &ptoken, 1}, {CKA_PRIVATE, &pprv, 1}, {CKA_VERIFY, &verify, 1},
		{CKA_ENCRYPT, &enc, 1},	 {CKA_WRAP, &wrap, 1},
	};
	CK_MECHANISM_TYPE mechs[4];
	CK_ATTRIBUTE ma = {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
	uint8_t v[256];
	CK_ATTRIBUTE va = {CKA_VALUE, v, sizeof(v)};
	CK_RV rv;

	assert_int_not_equal(priv, CK_INVALID_HANDLE);
	assert_int_not_equal(pub, CK_INVALID_HANDLE);
	assert_int_equal(x->f->C_GetAttributeValue(x->s, priv, a, NELEM(a)), CKR_OK);
	assert_true(token && prv && sens && !extr && sign && kt == CKK_EC);
	assert_false(dec || unwrap || derive || recover);
	assert_int_equal(x->f->C_GetAttributeValue(x->s, priv, &ma, 1), CKR_OK);
	assert_int_equal(ma.ulValueLen, sizeof(CK_MECHANISM_TYPE));
	assert_int_equal(mechs[0], CKM_ECDSA);
	assert_int_equal(x->f->C_GetAttributeValue(x->s, pub, pa, NELEM(pa)), CKR_OK);
	assert_true(ptoken && !pprv && verify && !enc && !wrap);
	rv = x->f->C_GetAttributeValue(x->s, priv, &va, 1);
	show("C_GetAttributeValue(CKA_VALUE) on kmsd-audit-sign", rv);
	assert_int_equal(rv, CKR_ATTRIBUTE_SENSITIVE);
}

/* The token's signature verifies with the exported PEM the way `openssl dgst -sha256
 * -verify` checks it: ECDSA over SHA-256(message), DER signature. */
static void test_audit_sign_verifies_with_pem(void **state)
{
	struct fx *x = *state;
	static const char msg[] = "kmsd-audit-checkpoint:1:42:00ff";
	uint8_t digest[P11_SHA256_LEN], sig[P11_AUDIT_SIG_MAX], small[16];
	unsigned dn = 0;
	size_t sig_len = 0;
	char *pem = NULL;
	EVP_PKEY *pk;
	EVP_MD_CTX *mc;
	BIO *bio;

	assert_int_equal(EVP_Digest(msg, strlen(msg), digest, &dn, EVP_sha256(), NULL), 1);
	assert_int_equal(p11_audit_sign(x->p, digest, sig, sizeof(sig), &sig_len), KMS_OK);
	assert_true(sig_len >= 8 && sig_len <= P11_AUDIT_SIG_MAX);
	assert_int_equal(sig[0], 0x30); /* DER SEQUENCE */
	assert_int_equal(p11_audit_pubkey_pem(x->p, &pem), KMS_OK);
	assert_non_null(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
	bio = BIO_new_mem_buf(pem, -1);
	pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	assert_non_null(pk);
	assert_true(EVP_PKEY_is_a(pk, "EC"));
	assert_int_equal(EVP_PKEY_get_bits(pk), 256);
	mc = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, pk), 1);
	assert_int_equal(EVP_DigestVerify(mc, sig, sig_len, (const uint8_t *)msg, strlen(msg)), 1);
	EVP_MD_CTX_free(mc);
	/* a different message does not verify */
	mc = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, pk), 1);
	assert_int_not_equal(EVP_DigestVerify(mc, sig, sig_len, (const uint8_t *)msg, 5), 1);
	EVP_MD_CTX_free(mc);
	EVP_PKEY_free(pk);
	BIO_free(bio);
	free(pem);
	assert_int_equal(p11_audit_sign(x->p, digest, small, sizeof(small), &sig_len),
			 KMS_ERR_INTERNAL);
}

static void destroy_labelled(struct fx *x, CK_OBJECT_CLASS cls, const char *label)
{
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
			    {CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE h[4];
	CK_ULONG n = 0, i;

	assert_int_equal(x->f->C_FindObjectsInit(x->s, t, 2), CKR_OK);
	assert_int_equal(x->f->C_FindObjects(x->s, h, 4, &n), CKR_OK);
	assert_int_equal(x->f->C_FindObjectsFinal(x->s), CKR_OK);
	assert_int_equal(n, 1);
	for (i = 0; i < n; i++)
		assert_int_equal(x->f->C_DestroyObject(x->s, h[i]), CKR_OK);
}

/* Missing pair: p11_open refuses, provisioning (a CONFLICT run) makes a new one. A lone
 * half is refused: the public key could not be recreated. */
static void test_audit_sign_key_missing(void **state)
{
	struct fx *x = *state;
	char *pem1 = NULL, *pem2 = NULL;
	struct p11 *p = NULL;

	assert_int_equal(p11_audit_pubkey_pem(x->p, &pem1), KMS_OK);
	destroy_labelled(x, CKO_PUBLIC_KEY, P11_LABEL_AUDIT_SIGN);
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_ERR_TOKEN);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_TOKEN), P11_LABEL_AUDIT_SIGN));
	assert_int_equal(p11_provision(&x->cfg, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_TOKEN);
	printf("    lone private half: %s\n", kms_err_detail(KMS_ERR_TOKEN));
	assert_non_null(strstr(kms_err_detail(KMS_ERR_TOKEN), "only the private half"));
	destroy_labelled(x, CKO_PRIVATE_KEY, P11_LABEL_AUDIT_SIGN);
	assert_int_equal(p11_provision(&x->cfg, NULL, 0, x->t.user_pin, x->t.user_pin_len),
			 KMS_ERR_CONFLICT);
	assert_int_equal(p11_open(&x->cfg, x->t.user_pin, x->t.user_pin_len, &p), KMS_OK);
	assert_int_equal(p11_audit_pubkey_pem(p, &pem2), KMS_OK);
	assert_string_not_equal(pem1, pem2);
	p11_close(p);
	free(pem1);
	free(pem2);
}

/* ------------------------------------------------------------------ concurrency */

#define THREADS 8
#define ROUNDS 25

struct worker {
	struct p11 *p;
	const uint8_t *blob;
	int failures;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint8_t iv[P11_GCM_IV_LEN], pt[48], ct[sizeof(pt) + P11_GCM_TAG_LEN], back[sizeof(pt)];
	uint8_t mac[P11_HMAC_LEN], blob[P11_KEK_BLOB_LEN], sig[P11_AUDIT_SIG_MAX];
	size_t n, sig_len;
	p11_key k;
	int i;

	for (i = 0; i < ROUNDS; i++) {
		k = 0;
		if (p11_kek_load(w->p, 1, w->blob, P11_KEK_BLOB_LEN, &k) != KMS_OK ||
		    p11_random(w->p, iv, sizeof(iv)) != KMS_OK ||
		    p11_random(w->p, pt, sizeof(pt)) != KMS_OK ||
		    p11_gcm_encrypt(w->p, k, iv, iv, sizeof(iv), pt, sizeof(pt), ct, sizeof(ct)) !=
			    KMS_OK ||
		    p11_gcm_decrypt(w->p, k, iv, iv, sizeof(iv), ct, sizeof(ct), back, sizeof(back),
				    &n) != KMS_OK ||
		    n != sizeof(pt) || memcmp(back, pt, sizeof(pt)) != 0 ||
		    p11_hmac(w->p, P11_MAC_AUDIT, pt, sizeof(pt), mac) != KMS_OK ||
		    p11_audit_sign(w->p, mac, sig, sizeof(sig), &sig_len) != KMS_OK)
			w->failures++;
		ct[0] ^= 1;
		if (p11_gcm_decrypt(w->p, k, iv, iv, sizeof(iv), ct, sizeof(ct), back, sizeof(back),
				    &n) != KMS_ERR_DECRYPT)
			w->failures++;
		if (i % 5 == 0 && p11_kek_generate(w->p, 1, blob) != KMS_OK)
			w->failures++;
		p11_kek_unload(w->p, k);
	}
	return NULL;
}

/* More threads than pool sessions: checkout waits, object creation is serialised, and
 * every answer is still right. */
static void test_concurrent_use(void **state)
{
	struct fx *x = *state;
	struct worker w[THREADS];
	pthread_t th[THREADS];
	uint8_t blob[P11_KEK_BLOB_LEN];
	int i;

	assert_int_equal(p11_kek_generate(x->p, 1, blob), KMS_OK);
	for (i = 0; i < THREADS; i++) {
		w[i].p = x->p;
		w[i].blob = blob;
		w[i].failures = 0;
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	for (i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].failures, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_provision_then_open, setup_token, teardown),
		cmocka_unit_test_setup_teardown(test_provision_twice_conflict, setup_token,
						teardown),
		cmocka_unit_test_setup_teardown(test_provision_needs_so_pin, setup_token, teardown),
		cmocka_unit_test_setup_teardown(test_mk_attributes, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_kek_generate_and_load, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_kek_leaves_no_session_object, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_gcm_round_trip, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_gcm_buffer_checks, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_gcm_tamper_is_decrypt_error, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_hmac, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_random, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_bad_blob_is_invalid, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_open_wrong_pin, setup_token, teardown),
		cmocka_unit_test_setup_teardown(test_open_unknown_label, setup_token, teardown),
		cmocka_unit_test_setup_teardown(test_open_unprovisioned, setup_token, teardown),
		cmocka_unit_test_setup_teardown(test_values_are_sensitive, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_unwrap_as_readable_is_refused, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_mk_as_decryptor_is_refused, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_wrap_under_own_key_is_refused, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_other_paths_are_refused, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_audit_sign_key_attributes, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_audit_sign_verifies_with_pem, setup_open,
						teardown),
		cmocka_unit_test_setup_teardown(test_audit_sign_key_missing, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_use, setup_open, teardown),
		cmocka_unit_test_setup_teardown(test_mk_rotation, setup_token, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
