/* Ciphertext wire form (ct_parse) and the AAD (ct_aad_build) with an encryption
 * context parsed from the input.
 *
 * Input: "<wire ciphertext>\n<JSON value used as encryption_context>". Bytes of the
 * wire part also serve as associated_data.
 *
 * Properties of ct_parse:
 *   - success: version in 1..2^32-1, raw_len in [CT_MIN_RAW, raw_cap], and ct_format
 *     of the result reproduces the input byte for byte (the form is canonical: no
 *     leading zeros, strict base64), with ct_wire_len predicting its length;
 *   - failure: the detail starts "invalid ciphertext: ";
 *   - a smaller output buffer never leads to a write past it (ASan), and the answer
 *     only changes from success to failure.
 * Properties of ct_aad_build:
 *   - success: the AAD decodes back (label, tenant, key, version, associated_data, the
 *     pairs) to exactly the inputs, pairs strictly sorted by key bytes, and the length
 *     is what it says; the same context with its members inserted in reverse order
 *     gives the same bytes;
 *   - failure: KMS_ERR_INVALID for anything but an object of at most CT_CTX_MAX_PAIRS
 *     strings of the allowed lengths. */
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/core/ciphertext.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kms_json_init();
	return 0;
}

static void check_parse(const uint8_t *data, size_t len)
{
	char *s = fuzz_dup(data, len, 0), *wire;
	size_t cap = KMS_B64_DEC_MAX(len), raw_len = 0, raw_len2 = 0, wl;
	uint8_t *raw = malloc(cap ? cap : 1), *raw2;
	uint32_t version = 0, version2 = 0;
	size_t small;
	kms_err rc, rc2;

	CHECK(raw != NULL);
	rc = ct_parse(s, len, &version, raw, cap, &raw_len);
	if (rc != KMS_OK) {
		CHECK(rc == KMS_ERR_INVALID);
		CHECK(strncmp(kms_err_detail(rc), "invalid ciphertext: ", 20) == 0);
	} else {
		CHECK(version >= 1);
		CHECK(raw_len >= CT_MIN_RAW && raw_len <= cap);
		wl = ct_wire_len(version, raw_len);
		CHECK(wl == len);
		wire = malloc(wl + 1);
		CHECK(wire != NULL);
		CHECK(ct_format(version, raw, raw_len, wire, wl + 1) == KMS_OK);
		CHECK(memcmp(wire, s, len) == 0 && wire[wl] == '\0');
		/* one byte short is refused, not overrun */
		CHECK(ct_format(version, raw, raw_len, wire, wl) != KMS_OK);
		free(wire);
	}
	/* An output buffer smaller than the decoding: refused or same answer. */
	small = cap > 0 ? (size_t)(data[0] % (cap + 1)) : 0;
	raw2 = malloc(small ? small : 1);
	CHECK(raw2 != NULL);
	rc2 = ct_parse(s, len, &version2, raw2, small, &raw_len2);
	if (rc2 == KMS_OK) {
		CHECK(rc == KMS_OK && version2 == version && raw_len2 == raw_len && raw_len2 <= small);
		CHECK(memcmp(raw, raw2, raw_len) == 0);
	}
	free(raw2);
	free(raw);
	free(s);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads lp(x) at *p (bounds-checked) and compares it with want. */
static void expect_lp(const uint8_t *aad, size_t aad_len, size_t *p, const void *want, size_t wlen)
{
	CHECK(*p + 4 <= aad_len);
	CHECK(get32(aad + *p) == wlen);
	*p += 4;
	CHECK(*p + wlen <= aad_len);
	CHECK(wlen == 0 || memcmp(aad + *p, want, wlen) == 0);
	*p += wlen;
}

static int ctx_acceptable(const json_t *ctx)
{
	const char *k;
	json_t *v;

	if (ctx == NULL || json_is_null(ctx))
		return 1;
	if (!json_is_object(ctx) || json_object_size(ctx) > CT_CTX_MAX_PAIRS)
		return 0;
	json_object_foreach((json_t *)ctx, k, v) {
		if (!json_is_string(v) || strlen(k) == 0 || strlen(k) > CT_CTX_MAX_LEN ||
		    json_string_length(v) > CT_CTX_MAX_LEN)
			return 0;
	}
	return 1;
}

static void check_aad(const char *tenant, const char *key, uint32_t version, const uint8_t *ad,
		      size_t ad_len, json_t *ctx)
{
	uint8_t *aad = NULL, *aad2 = NULL;
	size_t aad_len = 0, aad2_len = 0, p = 0, n;
	const char *prev = NULL, *k;
	size_t prev_len = 0;
	json_t *rev, *v;
	kms_err rc;

	rc = ct_aad_build(tenant, key, version, ad, ad_len, ctx, &aad, &aad_len);
	CHECK((rc == KMS_OK) == ctx_acceptable(ctx));
	if (rc != KMS_OK) {
		CHECK(rc == KMS_ERR_INVALID && aad == NULL);
		return;
	}
	CHECK(aad_len >= 12 && memcmp(aad, "kmsd.aad.v1", 12) == 0);
	p = 12;
	expect_lp(aad, aad_len, &p, tenant, strlen(tenant));
	expect_lp(aad, aad_len, &p, key, strlen(key));
	CHECK(p + 4 <= aad_len && get32(aad + p) == version);
	p += 4;
	expect_lp(aad, aad_len, &p, ad, ad_len);
	CHECK(p + 4 <= aad_len);
	n = get32(aad + p);
	p += 4;
	CHECK(n == (ctx != NULL && json_is_object(ctx) ? json_object_size(ctx) : 0));
	for (size_t i = 0; i < n; i++) {
		size_t kl;
		int cmp;
		CHECK(p + 4 <= aad_len);
		kl = get32(aad + p);
		CHECK(p + 4 + kl <= aad_len);
		k = (const char *)aad + p + 4;
		/* strictly ascending by key bytes: keys are unique and the order canonical */
		if (prev != NULL) {
			cmp = memcmp(prev, k, prev_len < kl ? prev_len : kl);
			CHECK(cmp < 0 || (cmp == 0 && prev_len < kl));
		}
		/* the pair is the context's own */
		{
			char *kz = fuzz_dup((const uint8_t *)k, kl, 1);
			v = json_object_get(ctx, kz);
			CHECK(v != NULL && strlen(kz) == kl);
			free(kz);
		}
		prev = k;
		prev_len = kl;
		p += 4 + kl;
		expect_lp(aad, aad_len, &p, json_string_value(v), json_string_length(v));
	}
	CHECK(p == aad_len);

	/* Member order does not matter. */
	if (ctx != NULL && json_is_object(ctx)) {
		const char *keys[CT_CTX_MAX_PAIRS];
		size_t nk = 0;
		json_object_foreach(ctx, k, v) {
			(void)v;
			keys[nk++] = k;
		}
		rev = json_object();
		CHECK(rev != NULL);
		while (nk > 0) {
			nk--;
			CHECK(json_object_set(rev, keys[nk], json_object_get(ctx, keys[nk])) == 0);
		}
		CHECK(ct_aad_build(tenant, key, version, ad, ad_len, rev, &aad2, &aad2_len) == KMS_OK);
		CHECK(aad2_len == aad_len && memcmp(aad, aad2, aad_len) == 0);
		ct_aad_free(aad2, aad2_len);
		json_decref(rev);
	}
	ct_aad_free(aad, aad_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl;
	size_t wlen;
	json_t *ctx = NULL;
	json_error_t je;
	uint32_t version = 1, v2;
	uint8_t raw[64];
	size_t raw_len;

	if (size > 16384)
		return 0;
	nl = memchr(data, '\n', size);
	wlen = nl != NULL ? (size_t)(nl - data) : size;
	check_parse(data, wlen);
	if (wlen < 200 && ct_parse((const char *)data, wlen, &v2, raw, sizeof(raw), &raw_len) == KMS_OK)
		version = v2;
	if (nl != NULL) {
		ctx = json_loadb((const char *)nl + 1, size - wlen - 1,
				 JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
		if (ctx == NULL)
			return 0;
	}
	check_aad("t1", "k1", version, wlen > 0 ? data : NULL, wlen > 64 ? 64 : wlen, ctx);
	check_aad("", "", 0xffffffffu, NULL, 0, ctx);
	json_decref(ctx);
	return 0;
}
