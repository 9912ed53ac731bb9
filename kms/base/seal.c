/* Sealed files: header codec and chunk cipher (see seal.h, docs/FORMATS.md). */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/seal.h"

static void put_u16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_u16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Tenant, key and wrapped DEK: printable ASCII without spaces, 1..max bytes. */
static kms_err check_name(const char *what, const char *s, size_t n, size_t max)
{
	if (n == 0 || n > max)
		return kms_errf(KMS_ERR_INVALID, "sealed file: %s length %zu is not in 1..%zu", what, n, max);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return kms_errf(KMS_ERR_INVALID, "sealed file: %s has a byte outside printable ASCII",
					what);
	return KMS_OK;
}

kms_err kms_seal_context_canonical(const json_t *ctx, char **out)
{
	json_free_t jfree;
	const char *k;
	json_t *v;
	char *s, *t;

	*out = NULL;
	if (ctx == NULL) {
		s = strdup("{}");
		if (s == NULL)
			return kms_errf(KMS_ERR_NOMEM, "out of memory");
		*out = s;
		return KMS_OK;
	}
	if (!json_is_object(ctx))
		return kms_errf(KMS_ERR_INVALID, "sealed file: the encryption context is not an object");
	if (json_object_size(ctx) > KMS_SEAL_CTX_MAX_PAIRS)
		return kms_errf(KMS_ERR_INVALID, "sealed file: more than %d context pairs",
				KMS_SEAL_CTX_MAX_PAIRS);
	json_object_foreach((json_t *)ctx, k, v) {
		size_t kl = strlen(k);

		if (kl == 0 || kl > KMS_SEAL_CTX_KEY_MAX)
			return kms_errf(KMS_ERR_INVALID, "sealed file: a context key is not 1..%d bytes",
					KMS_SEAL_CTX_KEY_MAX);
		if (!json_is_string(v))
			return kms_errf(KMS_ERR_INVALID, "sealed file: context value of %.64s is not a string",
					k);
		if (json_string_length(v) > KMS_SEAL_CTX_VALUE_MAX ||
		    strlen(json_string_value(v)) != json_string_length(v))
			return kms_errf(KMS_ERR_INVALID,
					"sealed file: context value of %.64s is longer than %d bytes or holds NUL",
					k, KMS_SEAL_CTX_VALUE_MAX);
	}
	/* jansson's memory comes from its (wiping) allocator: hand back a plain copy. */
	t = json_dumps(ctx, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
	s = t != NULL ? strdup(t) : NULL;
	if (t != NULL) {
		json_get_alloc_funcs(NULL, &jfree);
		jfree(t);
	}
	if (s == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	*out = s;
	return KMS_OK;
}

/* Checks h's fields; sets the lengths. */
static kms_err check_fields(const struct kms_seal_header *h, size_t *tl, size_t *kl, size_t *wl,
			    size_t *cl, size_t *total)
{
	kms_err e;

	if (h->chunk_size < KMS_SEAL_CHUNK_MIN || h->chunk_size > KMS_SEAL_CHUNK_MAX)
		return kms_errf(KMS_ERR_INVALID, "sealed file: chunk size %u is not in %u..%u",
				(unsigned)h->chunk_size, KMS_SEAL_CHUNK_MIN, KMS_SEAL_CHUNK_MAX);
	if (h->tenant == NULL || h->key == NULL || h->wrapped == NULL || h->context == NULL)
		return kms_errf(KMS_ERR_INVALID, "sealed file: a header field is missing");
	*tl = strlen(h->tenant);
	*kl = strlen(h->key);
	*wl = strlen(h->wrapped);
	*cl = strlen(h->context);
	if ((e = check_name("tenant", h->tenant, *tl, KMS_SEAL_NAME_MAX)) != KMS_OK ||
	    (e = check_name("key", h->key, *kl, KMS_SEAL_NAME_MAX)) != KMS_OK ||
	    (e = check_name("wrapped key", h->wrapped, *wl, KMS_SEAL_WRAPPED_MAX)) != KMS_OK)
		return e;
	if (strncmp(h->wrapped, "vault:v", 7) != 0)
		return kms_errf(KMS_ERR_INVALID, "sealed file: the wrapped key is not vault:vN:...");
	*total = KMS_SEAL_FIXED_LEN + 4 + KMS_SEAL_PREFIX_LEN + 1 + 2 + *tl + 2 + *kl + 2 + *wl + 4 + *cl;
	if (*total > KMS_SEAL_HEADER_MAX)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header of %zu bytes exceeds %d", *total,
				KMS_SEAL_HEADER_MAX);
	return KMS_OK;
}

kms_err kms_seal_header_encode(const struct kms_seal_header *h, uint8_t **out, size_t *len)
{
	size_t tl, kl, wl, cl, total, o = 0;
	json_error_t jerr;
	json_t *ctx = NULL;
	char *canon = NULL;
	uint8_t *b;
	kms_err e;

	*out = NULL;
	*len = 0;
	if ((e = check_fields(h, &tl, &kl, &wl, &cl, &total)) != KMS_OK)
		return e;
	/* The context must already be canonical: the reader insists on it. */
	ctx = json_loadb(h->context, cl, JSON_REJECT_DUPLICATES, &jerr);
	if (ctx == NULL)
		return kms_errf(KMS_ERR_INVALID, "sealed file: the context is not JSON: %s", jerr.text);
	e = kms_seal_context_canonical(ctx, &canon);
	json_decref(ctx);
	if (e != KMS_OK)
		return e;
	if (strcmp(canon, h->context) != 0) {
		free(canon);
		return kms_errf(KMS_ERR_INVALID, "sealed file: the context is not in canonical form");
	}
	free(canon);
	b = malloc(total);
	if (b == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	memcpy(b, KMS_SEAL_MAGIC, 7);
	b[7] = KMS_SEAL_VERSION;
	put_u32(b + 8, (uint32_t)total);
	put_u32(b + 12, h->chunk_size);
	memcpy(b + 16, h->prefix, KMS_SEAL_PREFIX_LEN);
	b[23] = 0; /* flags: none defined in v1 */
	o = 24;
	put_u16(b + o, (uint32_t)tl);
	memcpy(b + o + 2, h->tenant, tl);
	o += 2 + tl;
	put_u16(b + o, (uint32_t)kl);
	memcpy(b + o + 2, h->key, kl);
	o += 2 + kl;
	put_u16(b + o, (uint32_t)wl);
	memcpy(b + o + 2, h->wrapped, wl);
	o += 2 + wl;
	put_u32(b + o, (uint32_t)cl);
	memcpy(b + o + 4, h->context, cl);
	*out = b;
	*len = total;
	return KMS_OK;
}

kms_err kms_seal_header_len(const uint8_t *fixed, size_t *total)
{
	uint32_t n;

	*total = 0;
	if (memcmp(fixed, KMS_SEAL_MAGIC, 7) != 0)
		return kms_errf(KMS_ERR_INVALID, "not a sealed file (bad magic)");
	if (fixed[7] != KMS_SEAL_VERSION)
		return kms_errf(KMS_ERR_INVALID, "sealed file: unsupported format version %u", fixed[7]);
	n = get_u32(fixed + 8);
	if (n <= KMS_SEAL_FIXED_LEN || n > KMS_SEAL_HEADER_MAX)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header length %u is not in %d..%d", n,
				KMS_SEAL_FIXED_LEN + 1, KMS_SEAL_HEADER_MAX);
	*total = n;
	return KMS_OK;
}

/* Takes a u16/u32-length-prefixed field at *o into a fresh string. */
static kms_err take(const uint8_t *buf, size_t len, size_t *o, int wide, const char *what, char **out)
{
	size_t pl = wide ? 4 : 2, n;

	if (len - *o < pl)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header ends inside the %s length", what);
	n = wide ? get_u32(buf + *o) : get_u16(buf + *o);
	*o += pl;
	if (len - *o < n)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header ends inside the %s", what);
	if (memchr(buf + *o, 0, n) != NULL)
		return kms_errf(KMS_ERR_INVALID, "sealed file: the %s holds a NUL byte", what);
	*out = strndup((const char *)buf + *o, n);
	if (*out == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	*o += n;
	return KMS_OK;
}

kms_err kms_seal_header_parse(const uint8_t *buf, size_t len, struct kms_seal_header *h)
{
	struct kms_seal_header t = {0};
	size_t total, o = 24, tl, kl, wl, cl, enc_len = 0;
	uint8_t *enc = NULL;
	kms_err e;

	memset(h, 0, sizeof(*h));
	if (len < KMS_SEAL_FIXED_LEN)
		return kms_errf(KMS_ERR_INVALID, "sealed file: truncated header");
	if ((e = kms_seal_header_len(buf, &total)) != KMS_OK)
		return e;
	if (total != len)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header length %zu, but %zu bytes given", total,
				len);
	if (len < 24)
		return kms_errf(KMS_ERR_INVALID, "sealed file: header too short");
	t.chunk_size = get_u32(buf + 12);
	memcpy(t.prefix, buf + 16, KMS_SEAL_PREFIX_LEN);
	if (buf[23] != 0) {
		e = kms_errf(KMS_ERR_INVALID, "sealed file: unknown flags 0x%02x", buf[23]);
		goto out;
	}
	if ((e = take(buf, len, &o, 0, "tenant", &t.tenant)) != KMS_OK ||
	    (e = take(buf, len, &o, 0, "key", &t.key)) != KMS_OK ||
	    (e = take(buf, len, &o, 0, "wrapped key", &t.wrapped)) != KMS_OK ||
	    (e = take(buf, len, &o, 1, "context", &t.context)) != KMS_OK)
		goto out;
	if (o != len) {
		e = kms_errf(KMS_ERR_INVALID, "sealed file: %zu stray bytes at the end of the header", len - o);
		goto out;
	}
	if ((e = check_fields(&t, &tl, &kl, &wl, &cl, &total)) != KMS_OK)
		goto out;
	/* Canonical only: one file, one header; encode checks the context's form. */
	if ((e = kms_seal_header_encode(&t, &enc, &enc_len)) != KMS_OK)
		goto out;
	if (enc_len != len || memcmp(enc, buf, len) != 0) {
		e = kms_errf(KMS_ERR_INVALID, "sealed file: header is not in canonical form");
		goto out;
	}
	*h = t;
	memset(&t, 0, sizeof(t));
out:
	free(enc);
	kms_seal_header_free(&t);
	return e;
}

void kms_seal_header_free(struct kms_seal_header *h)
{
	if (h == NULL)
		return;
	free(h->tenant);
	free(h->key);
	free(h->wrapped);
	free(h->context);
	memset(h, 0, sizeof(*h));
}

kms_err kms_seal_stream_init(struct kms_seal_stream *s, const uint8_t *dek, const uint8_t *hdr,
			     size_t hdr_len)
{
	size_t total;
	kms_err e;

	memset(s, 0, sizeof(*s));
	if (hdr_len < 24 || (e = kms_seal_header_len(hdr, &total)) != KMS_OK || total != hdr_len)
		return kms_errf(KMS_ERR_INVALID, "sealed file: bad header");
	s->chunk_size = get_u32(hdr + 12);
	if (s->chunk_size < KMS_SEAL_CHUNK_MIN || s->chunk_size > KMS_SEAL_CHUNK_MAX)
		return kms_errf(KMS_ERR_INVALID, "sealed file: bad chunk size");
	s->evp = EVP_CIPHER_CTX_new();
	if (s->evp == NULL)
		return kms_errf(KMS_ERR_NOMEM, "out of memory");
	memcpy(s->dek, dek, KMS_SEAL_DEK_LEN);
	s->hdr = hdr;
	s->hdr_len = hdr_len;
	return KMS_OK;
}

/* nonce = prefix (7) || u32be(counter) || last (1) */
static void nonce_of(const struct kms_seal_stream *s, int last, uint8_t nonce[12])
{
	memcpy(nonce, s->hdr + 16, KMS_SEAL_PREFIX_LEN);
	put_u32(nonce + 7, (uint32_t)s->next);
	nonce[11] = last ? 1 : 0;
}

/* Checks that the next chunk may be one of n plaintext bytes. */
static kms_err check_next(const struct kms_seal_stream *s, int last, size_t n, kms_err kind)
{
	if (s->done)
		return kms_errf(kind, "sealed file: data after the final chunk");
	if (s->next > UINT32_MAX)
		return kms_errf(kind, "sealed file: more than 2^32 chunks");
	if (!last && n != s->chunk_size)
		return kms_errf(kind, "sealed file: chunk %llu is not a full chunk",
				(unsigned long long)s->next);
	if (last && (n > s->chunk_size || (n == 0 && s->next > 0)))
		return kms_errf(kind, "sealed file: final chunk %llu has a bad size",
				(unsigned long long)s->next);
	return KMS_OK;
}

kms_err kms_seal_stream_seal(struct kms_seal_stream *s, int last, const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *c = s->evp;
	uint8_t nonce[12];
	int l;
	kms_err e;

	if ((e = check_next(s, last, n, KMS_ERR_INVALID)) != KMS_OK)
		return e;
	nonce_of(s, last, nonce);
	if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_EncryptInit_ex(c, NULL, NULL, s->dek, nonce) != 1 ||
	    EVP_EncryptUpdate(c, NULL, &l, s->hdr, (int)s->hdr_len) != 1 ||
	    (n > 0 && EVP_EncryptUpdate(c, out, &l, in, (int)n) != 1) ||
	    EVP_EncryptFinal_ex(c, out + n, &l) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, KMS_SEAL_TAG_LEN, out + n) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "AES-GCM failed");
	s->next++;
	s->done = last;
	return KMS_OK;
}

kms_err kms_seal_stream_open(struct kms_seal_stream *s, int last, const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *c = s->evp;
	uint8_t nonce[12], tag[KMS_SEAL_TAG_LEN];
	size_t pn;
	int l;
	kms_err e;

	if (n < KMS_SEAL_TAG_LEN)
		return kms_errf(KMS_ERR_DECRYPT, "sealed file: truncated: chunk %llu is shorter than its tag",
				(unsigned long long)s->next);
	pn = n - KMS_SEAL_TAG_LEN;
	if ((e = check_next(s, last, pn, KMS_ERR_DECRYPT)) != KMS_OK)
		return e;
	nonce_of(s, last, nonce);
	memcpy(tag, in + pn, KMS_SEAL_TAG_LEN);
	if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_DecryptInit_ex(c, NULL, NULL, s->dek, nonce) != 1 ||
	    EVP_DecryptUpdate(c, NULL, &l, s->hdr, (int)s->hdr_len) != 1 ||
	    (pn > 0 && EVP_DecryptUpdate(c, out, &l, in, (int)pn) != 1) ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, KMS_SEAL_TAG_LEN, tag) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "AES-GCM failed");
	if (EVP_DecryptFinal_ex(c, out + pn, &l) != 1) {
		OPENSSL_cleanse(out, pn);
		return kms_errf(KMS_ERR_DECRYPT,
				"sealed file: chunk %llu%s failed authentication (edited, reordered, "
				"swapped, truncated or extended)",
				(unsigned long long)s->next, last ? " (final)" : "");
	}
	s->next++;
	s->done = last;
	return KMS_OK;
}

void kms_seal_stream_clear(struct kms_seal_stream *s)
{
	if (s == NULL)
		return;
	EVP_CIPHER_CTX_free(s->evp);
	OPENSSL_cleanse(s, sizeof(*s));
}
