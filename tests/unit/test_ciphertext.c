/* Ciphertext wire form and AAD, pinned by the vector in docs/FORMATS.md. AES-GCM here
 * is OpenSSL's, standing in for the token, so the format is checked independently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/core/ciphertext.h"

#define VEC_AAD                                                                                    \
	"6b6d73642e6161642e7631000000000464656d6f0000000f70617469656e742d7265636f726473000000010000" \
	"0004666869720000000200000007707572706f73650000000974726561746d656e74000000067265636f72640000" \
	"00086d726e2d30303031"
#define VEC_WIRE "vault:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk="
#define VEC_PT "patient-42 DEK!!"

static json_t *vec_ctx(void)
{
	return json_pack("{s:s,s:s}", "record", "mrn-0001", "purpose", "treatment");
}

static void test_aad_vector(void **state)
{
	json_t *ctx = vec_ctx();
	uint8_t *aad;
	size_t al;
	char hx[512];
	(void)state;

	assert_int_equal(ct_aad_build("demo", "patient-records", 1, (const uint8_t *)"fhir", 4, ctx, &aad, &al), KMS_OK);
	kms_hex_encode(aad, al, hx);
	assert_string_equal(hx, VEC_AAD);
	ct_aad_free(aad, al);
	json_decref(ctx);
}

static void test_wire_vector(void **state)
{
	uint8_t key[32], raw[128], pt[64], *aad;
	size_t raw_len, al;
	uint32_t ver;
	json_t *ctx = vec_ctx();
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, m;
	(void)state;

	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)i;
	assert_int_equal(ct_parse(VEC_WIRE, strlen(VEC_WIRE), &ver, raw, sizeof(raw), &raw_len), KMS_OK);
	assert_int_equal(ver, 1);
	assert_int_equal(raw_len, CT_IV_LEN + strlen(VEC_PT) + CT_TAG_LEN);
	for (int i = 0; i < CT_IV_LEN; i++)
		assert_int_equal(raw[i], 0xa0 + i);
	assert_int_equal(ct_aad_build("demo", "patient-records", 1, (const uint8_t *)"fhir", 4, ctx, &aad, &al), KMS_OK);
	assert_int_equal(EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, raw), 1);
	assert_int_equal(EVP_DecryptUpdate(c, NULL, &n, aad, (int)al), 1);
	assert_int_equal(EVP_DecryptUpdate(c, pt, &n, raw + CT_IV_LEN, (int)(raw_len - CT_IV_LEN - CT_TAG_LEN)), 1);
	assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, CT_TAG_LEN, raw + raw_len - CT_TAG_LEN), 1);
	assert_int_equal(EVP_DecryptFinal_ex(c, pt + n, &m), 1);
	assert_int_equal(n + m, (int)strlen(VEC_PT));
	assert_memory_equal(pt, VEC_PT, strlen(VEC_PT));
	EVP_CIPHER_CTX_free(c);
	ct_aad_free(aad, al);
	json_decref(ctx);
}

static void test_format_roundtrip(void **state)
{
	uint8_t raw[40], back[40];
	char wire[128];
	size_t bl;
	uint32_t v;
	(void)state;

	for (int i = 0; i < 40; i++)
		raw[i] = (uint8_t)(i * 7);
	assert_int_equal(ct_format(4294967295u, raw, sizeof(raw), wire, sizeof(wire)), KMS_OK);
	assert_int_equal(strlen(wire), ct_wire_len(4294967295u, sizeof(raw)));
	assert_int_equal(ct_parse(wire, strlen(wire), &v, back, sizeof(back), &bl), KMS_OK);
	assert_int_equal(v, 4294967295u);
	assert_int_equal(bl, sizeof(raw));
	assert_memory_equal(raw, back, sizeof(raw));
	assert_int_equal(ct_format(1, raw, sizeof(raw), wire, 10), KMS_ERR_INTERNAL);
}

static void test_parse_rejects(void **state)
{
	static const char *const bad[] = {
		"",
		"vault:",
		"vault:v",
		"vault:v:AAAA",
		"vault:v0:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:v01:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:v4294967296:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:v99999999999:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:vx:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:v1-oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"vault:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk", /* bad padding */
		"vault:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavX!k=",
		"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",			     /* 27 bytes: too short */
		"VAULT:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
		"kms:v1:oKGio6SlpqeoqaqrlnkIRCCldpJWV6eXQjHh/0Ul8St/+r5O9ggz7bavXvk=",
	};
	uint8_t raw[256];
	size_t rl;
	uint32_t v;
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kms_err e = ct_parse(bad[i], strlen(bad[i]), &v, raw, sizeof(raw), &rl);
		if (e != KMS_ERR_INVALID)
			fail_msg("accepted bad ciphertext %zu: %s", i, bad[i]);
		assert_non_null(strstr(kms_err_detail(e), "invalid ciphertext"));
	}
	/* the shortest valid body: IV and tag, empty plaintext (28 bytes) */
	{ const char *ok = "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="; assert_int_equal(ct_parse(ok, strlen(ok), &v, raw, sizeof(raw), &rl), KMS_OK); }
	assert_int_equal(rl, 28);
}

static void test_aad_binds_everything(void **state)
{
	json_t *c1 = json_pack("{s:s}", "purpose", "treatment");
	json_t *c2 = json_pack("{s:s}", "purpose", "payment");
	json_t *c3 = json_pack("{s:s,s:s}", "purpose", "treatment", "x", "");
	json_t *c4 = json_pack("{s:s}", "purposetreatment", "");
	uint8_t *a[9];
	size_t l[9];
	(void)state;

	assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, c1, &a[0], &l[0]), KMS_OK);
	assert_int_equal(ct_aad_build("t2", "k", 1, NULL, 0, c1, &a[1], &l[1]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k2", 1, NULL, 0, c1, &a[2], &l[2]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 2, NULL, 0, c1, &a[3], &l[3]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 1, (const uint8_t *)"x", 1, c1, &a[4], &l[4]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, c2, &a[5], &l[5]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, c3, &a[6], &l[6]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, c4, &a[7], &l[7]), KMS_OK);
	assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, NULL, &a[8], &l[8]), KMS_OK);
	for (int i = 0; i < 9; i++)
		for (int j = i + 1; j < 9; j++)
			if (l[i] == l[j] && memcmp(a[i], a[j], l[i]) == 0)
				fail_msg("AAD %d and %d collide", i, j);
	for (int i = 0; i < 9; i++)
		ct_aad_free(a[i], l[i]);
	/* the tenant/key boundary is length-prefixed: "ab"+"c" != "a"+"bc" */
	assert_int_equal(ct_aad_build("ab", "c", 1, NULL, 0, NULL, &a[0], &l[0]), KMS_OK);
	assert_int_equal(ct_aad_build("a", "bc", 1, NULL, 0, NULL, &a[1], &l[1]), KMS_OK);
	assert_true(l[0] == l[1] && memcmp(a[0], a[1], l[0]) != 0);
	ct_aad_free(a[0], l[0]);
	ct_aad_free(a[1], l[1]);
	json_decref(c1);
	json_decref(c2);
	json_decref(c3);
	json_decref(c4);
}

static void test_aad_rejects(void **state)
{
	json_t *bad[4];
	uint8_t *a;
	size_t l;
	char k[16];
	(void)state;

	bad[0] = json_pack("{s:i}", "n", 1);
	bad[1] = json_pack("[s]", "x");
	bad[2] = json_pack("{s:s}", "", "v");
	bad[3] = json_object();
	for (int i = 0; i < 65; i++) {
		snprintf(k, sizeof(k), "k%d", i);
		json_object_set_new(bad[3], k, json_string("v"));
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(ct_aad_build("t", "k", 1, NULL, 0, bad[i], &a, &l), KMS_ERR_INVALID);
		json_decref(bad[i]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_aad_vector),	    cmocka_unit_test(test_wire_vector),
		cmocka_unit_test(test_format_roundtrip),    cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_aad_binds_everything), cmocka_unit_test(test_aad_rejects),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("ciphertext", tests, NULL, NULL);
}
