#include "kms/core/ciphertext.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/secret.h"

#define CT_PREFIX "vault:v"
#define AAD_LABEL "kmsd.aad.v1"

kms_err ct_parse(const char *s, size_t len, uint32_t *version, uint8_t *raw, size_t raw_cap,
		 size_t *raw_len)
{
	size_t plen = sizeof(CT_PREFIX) - 1, i;
	uint64_t v = 0;
	long n;

	if (len < plen || memcmp(s, CT_PREFIX, plen) != 0)
		return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: expected the \"vault:v<N>:\" prefix");
	for (i = plen; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
		if (i - plen >= 10)
			return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: key version out of range");
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (i == plen || i >= len || s[i] != ':')
		return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: malformed key version");
	if (s[plen] == '0' || v == 0 || v > UINT32_MAX)
		return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: key version out of range");
	i++;
	n = kms_b64_decode(s + i, len - i, raw, raw_cap);
	if (n < 0)
		return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: bad base64");
	if ((size_t)n < CT_MIN_RAW)
		return kms_errf(KMS_ERR_INVALID, "invalid ciphertext: too short");
	*version = (uint32_t)v;
	*raw_len = (size_t)n;
	return KMS_OK;
}

size_t ct_wire_len(uint32_t version, size_t raw_len)
{
	char num[16];

	return sizeof(CT_PREFIX) - 1 + (size_t)snprintf(num, sizeof(num), "%u", version) + 1 +
	       KMS_B64_ENC_LEN(raw_len);
}

kms_err ct_format(uint32_t version, const uint8_t *raw, size_t raw_len, char *out, size_t cap)
{
	int n;

	if (cap < ct_wire_len(version, raw_len) + 1)
		return kms_errf(KMS_ERR_INTERNAL, "ciphertext buffer too small");
	n = snprintf(out, cap, CT_PREFIX "%u:", version);
	if (kms_b64_encode(raw, raw_len, out + n, cap - (size_t)n) < 0)
		return kms_errf(KMS_ERR_INTERNAL, "ciphertext buffer too small");
	return KMS_OK;
}

struct pair {
	const char *k, *v;
	size_t kl, vl;
};

static int pair_cmp(const void *a, const void *b)
{
	const struct pair *x = a, *y = b;
	size_t m = x->kl < y->kl ? x->kl : y->kl;
	int c = memcmp(x->k, y->k, m);

	if (c != 0)
		return c;
	return x->kl < y->kl ? -1 : x->kl > y->kl;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
	return p + 4;
}

static uint8_t *put_lp(uint8_t *p, const void *x, size_t n)
{
	p = put32(p, (uint32_t)n);
	if (n > 0)
		memcpy(p, x, n);
	return p + n;
}

kms_err ct_aad_build(const char *tenant, const char *key, uint32_t version, const uint8_t *ad,
		     size_t ad_len, const json_t *ctx, uint8_t **out, size_t *out_len)
{
	struct pair pairs[CT_CTX_MAX_PAIRS];
	size_t np = 0, tl = strlen(tenant), kl = strlen(key), total;
	const char *k;
	json_t *v;
	uint8_t *buf, *p;

	if (ctx != NULL && !json_is_null(ctx)) {
		if (!json_is_object(ctx))
			return kms_errf(KMS_ERR_INVALID, "encryption_context must be an object of strings");
		if (json_object_size(ctx) > CT_CTX_MAX_PAIRS)
			return kms_errf(KMS_ERR_INVALID, "encryption_context has more than %d entries",
					CT_CTX_MAX_PAIRS);
		json_object_foreach((json_t *)ctx, k, v) {
			if (!json_is_string(v))
				return kms_errf(KMS_ERR_INVALID,
						"encryption_context value for \"%.64s\" must be a string", k);
			pairs[np].k = k;
			pairs[np].kl = strlen(k);
			pairs[np].v = json_string_value(v);
			pairs[np].vl = json_string_length(v);
			if (pairs[np].kl == 0 || pairs[np].kl > CT_CTX_MAX_LEN || pairs[np].vl > CT_CTX_MAX_LEN)
				return kms_errf(KMS_ERR_INVALID,
						"encryption_context keys must be 1..%d bytes and values at most %d",
						CT_CTX_MAX_LEN, CT_CTX_MAX_LEN);
			if (memchr(pairs[np].v, '\0', pairs[np].vl) != NULL)
				return kms_errf(KMS_ERR_INVALID, "encryption_context values may not contain NUL");
			np++;
		}
		qsort(pairs, np, sizeof(pairs[0]), pair_cmp);
	}
	total = sizeof(AAD_LABEL) + 4 + tl + 4 + kl + 4 + 4 + ad_len + 4;
	for (size_t i = 0; i < np; i++)
		total += 8 + pairs[i].kl + pairs[i].vl;
	buf = malloc(total);
	if (buf == NULL)
		return kms_errf(KMS_ERR_NOMEM, "aad");
	p = buf;
	memcpy(p, AAD_LABEL, sizeof(AAD_LABEL)); /* includes the 0x00 */
	p += sizeof(AAD_LABEL);
	p = put_lp(p, tenant, tl);
	p = put_lp(p, key, kl);
	p = put32(p, version);
	p = put_lp(p, ad, ad_len);
	p = put32(p, (uint32_t)np);
	for (size_t i = 0; i < np; i++) {
		p = put_lp(p, pairs[i].k, pairs[i].kl);
		p = put_lp(p, pairs[i].v, pairs[i].vl);
	}
	*out = buf;
	*out_len = (size_t)(p - buf);
	return KMS_OK;
}

void ct_aad_free(uint8_t *aad, size_t len)
{
	if (aad == NULL)
		return;
	kms_wipe(aad, len); /* context values may be identifying */
	free(aad);
}
