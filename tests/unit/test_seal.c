/* Sealed files (kms/base/seal.c), pinned by docs/vectors/sealed-file-v1.json, which an
 * independent implementation wrote (docs/vectors/gen-sealed-file-v1.py, Python
 * cryptography). Then every tamper case on a multi-chunk file: each byte flipped,
 * every truncation, appended bytes, chunks swapped, chunks from another file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/base/seal.h"

#define VECTORS "docs/vectors/sealed-file-v1.json"

static uint8_t *unhex(const char *s, size_t *len)
{
	size_t n = strlen(s) / 2;
	uint8_t *b = malloc(n ? n : 1);

	assert_non_null(b);
	assert_int_equal(strlen(s) % 2, 0);
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
		b[i] = (uint8_t)v;
	}
	*len = n;
	return b;
}

static json_t *load(void)
{
	json_error_t err;
	json_t *root = json_load_file(VECTORS, JSON_REJECT_DUPLICATES, &err);

	if (root == NULL)
		fail_msg("%s:%d: %s", VECTORS, err.line, err.text);
	return root;
}

/* Seals pt as the CLI does: full chunks, the last one 0..cs bytes. */
static uint8_t *seal_all(const uint8_t *dek, const uint8_t *hdr, size_t hl, const uint8_t *pt, size_t n,
			 size_t *out_len)
{
	struct kms_seal_stream s;
	size_t cs, nchunks, cap, o = hl, off = 0;
	uint8_t *out;

	assert_int_equal(kms_seal_stream_init(&s, dek, hdr, hl), KMS_OK);
	cs = s.chunk_size;
	nchunks = n == 0 ? 1 : (n + cs - 1) / cs;
	cap = hl + n + nchunks * KMS_SEAL_TAG_LEN;
	out = malloc(cap);
	assert_non_null(out);
	memcpy(out, hdr, hl);
	for (size_t i = 0; i < nchunks; i++) {
		size_t m = n - off < cs ? n - off : cs;

		assert_int_equal(kms_seal_stream_seal(&s, i == nchunks - 1, pt + off, m, out + o), KMS_OK);
		off += m;
		o += m + KMS_SEAL_TAG_LEN;
	}
	assert_int_equal(o, cap);
	kms_seal_stream_clear(&s);
	*out_len = cap;
	return out;
}

/* Opens a whole sealed file as the CLI does (a record is the last when no byte follows
 * it). Returns 0 and the plaintext, or -1. */
static int open_all(const uint8_t *dek, const uint8_t *f, size_t len, uint8_t **pt, size_t *pt_len)
{
	struct kms_seal_header h;
	struct kms_seal_stream s;
	size_t hl, pos, rec, o = 0;
	uint8_t *out;
	int last = 0, rc = -1;

	*pt = NULL;
	*pt_len = 0;
	if (len < KMS_SEAL_FIXED_LEN || kms_seal_header_len(f, &hl) != KMS_OK || hl > len ||
	    kms_seal_header_parse(f, hl, &h) != KMS_OK)
		return -1;
	rec = h.chunk_size + KMS_SEAL_TAG_LEN;
	kms_seal_header_free(&h);
	assert_int_equal(kms_seal_stream_init(&s, dek, f, hl), KMS_OK);
	out = malloc(len + 1);
	assert_non_null(out);
	for (pos = hl; !last;) {
		size_t rem = len - pos, n;

		last = rem <= rec;
		n = last ? rem : rec;
		if (kms_seal_stream_open(&s, last, f + pos, n, out + o) != KMS_OK)
			goto out;
		o += n - KMS_SEAL_TAG_LEN;
		pos += n;
	}
	*pt = out;
	*pt_len = o;
	out = NULL;
	rc = 0;
out:
	free(out);
	kms_seal_stream_clear(&s);
	return rc;
}

static void test_vectors(void **state)
{
	json_t *root = load(), *v;
	size_t i, dl, pl;
	uint8_t *dek = unhex(json_string_value(json_object_get(root, "dek")), &dl);
	uint8_t *prefix = unhex(json_string_value(json_object_get(root, "nonce_prefix")), &pl);
	const char *wrapped = json_string_value(json_object_get(root, "wrapped_dek"));

	assert_int_equal(dl, KMS_SEAL_DEK_LEN);
	assert_int_equal(pl, KMS_SEAL_PREFIX_LEN);
	assert_true(json_array_size(json_object_get(root, "vectors")) >= 5);
	json_array_foreach(json_object_get(root, "vectors"), i, v) {
		struct kms_seal_header h = {0}, p;
		size_t hl, el, ptl, sl, ml, ol;
		uint8_t *hdr = unhex(json_string_value(json_object_get(v, "header")), &hl);
		uint8_t *pt = unhex(json_string_value(json_object_get(v, "plaintext")), &ptl);
		uint8_t *sealed = unhex(json_string_value(json_object_get(v, "sealed")), &sl);
		uint8_t *enc, *mine, *opened;
		char *canon;

		/* the context's canonical text */
		assert_int_equal(kms_seal_context_canonical(json_object_get(v, "encryption_context"), &canon),
				 KMS_OK);
		assert_string_equal(canon, json_string_value(json_object_get(v, "context_canonical")));
		/* header encode and parse */
		h.chunk_size = (uint32_t)json_integer_value(json_object_get(v, "chunk_size"));
		memcpy(h.prefix, prefix, KMS_SEAL_PREFIX_LEN);
		h.tenant = (char *)json_string_value(json_object_get(v, "tenant"));
		h.key = (char *)json_string_value(json_object_get(v, "key"));
		h.wrapped = (char *)wrapped;
		h.context = canon;
		assert_int_equal(kms_seal_header_encode(&h, &enc, &el), KMS_OK);
		assert_int_equal(el, hl);
		assert_memory_equal(enc, hdr, hl);
		assert_int_equal(kms_seal_header_parse(hdr, hl, &p), KMS_OK);
		assert_int_equal(p.chunk_size, h.chunk_size);
		assert_memory_equal(p.prefix, prefix, KMS_SEAL_PREFIX_LEN);
		assert_string_equal(p.tenant, h.tenant);
		assert_string_equal(p.key, h.key);
		assert_string_equal(p.wrapped, wrapped);
		assert_string_equal(p.context, canon);
		kms_seal_header_free(&p);
		/* the file, byte for byte, and back */
		mine = seal_all(dek, hdr, hl, pt, ptl, &ml);
		assert_int_equal(ml, sl);
		assert_memory_equal(mine, sealed, sl);
		assert_int_equal(open_all(dek, sealed, sl, &opened, &ol), 0);
		assert_int_equal(ol, ptl);
		if (ptl > 0)
			assert_memory_equal(opened, pt, ptl);
		free(opened);
		free(mine);
		free(enc);
		free(canon);
		free(hdr);
		free(pt);
		free(sealed);
	}
	free(dek);
	free(prefix);
	json_decref(root);
}

/* A sealed file of 3 chunks of 16 (the last one short) with a given prefix. */
static uint8_t *make_file(const uint8_t *dek, uint8_t pfx, size_t *len, size_t *hl)
{
	struct kms_seal_header h = {.chunk_size = 16,
				    .tenant = "demo",
				    .key = "k",
				    .wrapped = "vault:v1:AAAA",
				    .context = "{\"purpose\":\"treatment\"}"};
	static const uint8_t pt[40] = "0123456789abcdef0123456789ABCDEFtail-end";
	uint8_t *hdr, *f;

	memset(h.prefix, pfx, sizeof(h.prefix));
	assert_int_equal(kms_seal_header_encode(&h, &hdr, hl), KMS_OK);
	f = seal_all(dek, hdr, *hl, pt, sizeof(pt), len);
	free(hdr);
	return f;
}

static void expect_refused(const uint8_t *dek, const uint8_t *f, size_t len, const char *what, size_t at)
{
	uint8_t *pt;
	size_t n;

	if (open_all(dek, f, len, &pt, &n) == 0)
		fail_msg("%s at %zu was not detected", what, at);
}

static void test_tamper(void **state)
{
	uint8_t dek[32], dek2[32], *f, *g, *t, *pt;
	size_t len, len2, hl, hl2, n, rec = 16 + KMS_SEAL_TAG_LEN;

	memset(dek, 7, sizeof(dek));
	memset(dek2, 8, sizeof(dek2));
	f = make_file(dek, 1, &len, &hl);
	assert_int_equal(len, hl + 3 * KMS_SEAL_TAG_LEN + 40);
	assert_int_equal(open_all(dek, f, len, &pt, &n), 0);
	assert_int_equal(n, 40);
	free(pt);
	t = malloc(len + 2 * rec);
	assert_non_null(t);

	/* every bit of every byte: header and chunks */
	for (size_t i = 0; i < len; i++) {
		for (int b = 0; b < 8; b++) {
			memcpy(t, f, len);
			t[i] ^= (uint8_t)(1u << b);
			expect_refused(dek, t, len, "a flipped bit", i);
		}
	}
	/* every truncation, mid-chunk and at chunk boundaries (also the header alone) */
	for (size_t l = 0; l < len; l++)
		expect_refused(dek, f, l, "truncation", l);
	/* appended data: 1 byte, a tag's worth, a whole record, a copy of the last record */
	memcpy(t, f, len);
	memset(t + len, 0, 2 * rec);
	expect_refused(dek, t, len + 1, "1 byte appended", len);
	expect_refused(dek, t, len + KMS_SEAL_TAG_LEN, "16 bytes appended", len);
	expect_refused(dek, t, len + rec, "a record appended", len);
	memcpy(t + len, f + hl + 2 * rec, len - hl - 2 * rec);
	expect_refused(dek, t, len + (len - hl - 2 * rec), "the final record repeated", len);
	/* the first two chunks swapped; a chunk repeated */
	memcpy(t, f, len);
	memcpy(t + hl, f + hl + rec, rec);
	memcpy(t + hl + rec, f + hl, rec);
	expect_refused(dek, t, len, "chunks 0 and 1 swapped", hl);
	memcpy(t, f, len);
	memcpy(t + hl + rec, f + hl, rec);
	expect_refused(dek, t, len, "chunk 0 repeated", hl);
	/* the final chunk dropped and chunk 1 presented as final */
	expect_refused(dek, f, hl + 2 * rec, "the final chunk dropped", hl + 2 * rec);
	/* a chunk from another file under the same DEK (another prefix), and under another DEK */
	g = make_file(dek, 2, &len2, &hl2);
	assert_int_equal(hl, hl2);
	memcpy(t, f, len);
	memcpy(t + hl + rec, g + hl + rec, rec);
	expect_refused(dek, t, len, "a chunk from another file, same DEK", hl + rec);
	memcpy(t, g, hl);
	memcpy(t + hl, f + hl, len - hl); /* f's chunks behind g's header */
	expect_refused(dek, t, len, "another file's header", 0);
	free(g);
	g = make_file(dek2, 1, &len2, &hl2);
	memcpy(t, f, len);
	memcpy(t + hl + rec, g + hl + rec, rec);
	expect_refused(dek, t, len, "a chunk from another file, other DEK", hl + rec);
	/* the right file with the wrong DEK */
	expect_refused(dek2, f, len, "the wrong DEK", 0);
	free(g);
	free(t);
	free(f);
}

static void test_header_rejects(void **state)
{
	struct kms_seal_header h = {.chunk_size = 64,
				    .tenant = "demo",
				    .key = "k",
				    .wrapped = "vault:v1:AAAA",
				    .context = "{\"a\":\"1\",\"b\":\"2\"}"},
			       p, bad;
	static const char *const contexts[] = {
		"{\"b\":\"2\",\"a\":\"1\"}", /* not sorted */
		"{\"a\": \"1\"}",           /* not compact */
		"{\"a\":1}",                /* not a string */
		"[]",                       /* not an object */
		"{\"a\":\"\\u00e9\"}",      /* lower-case hex escape (canonical: \u00E9) */
		"{\"a\":\"\\u0041\"}",      /* an escape where the byte is plain ASCII */
		"{\"\":\"x\"}",             /* empty key */
		"{\"a\":\"1\",\"a\":\"1\"}", /* duplicate */
	};
	uint8_t *b, *e;
	size_t len, el, total;

	assert_int_equal(kms_seal_header_encode(&h, &b, &len), KMS_OK);
	assert_int_equal(kms_seal_header_parse(b, len, &p), KMS_OK);
	kms_seal_header_free(&p);
	assert_int_equal(kms_seal_header_len(b, &total), KMS_OK);
	assert_int_equal(total, len);
	/* magic, version, header length, flags, stray bytes */
	e = malloc(len + 1);
	assert_non_null(e);
	memcpy(e, b, len);
	e[0] = 'k';
	assert_int_equal(kms_seal_header_parse(e, len, &p), KMS_ERR_INVALID);
	assert_null(p.tenant);
	memcpy(e, b, len);
	e[7] = 2;
	assert_int_equal(kms_seal_header_parse(e, len, &p), KMS_ERR_INVALID);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_INVALID), "version 2"));
	memcpy(e, b, len);
	e[23] = 1;
	assert_int_equal(kms_seal_header_parse(e, len, &p), KMS_ERR_INVALID);
	memcpy(e, b, len);
	e[len] = 0;
	e[11] = (uint8_t)(e[11] + 1); /* header_len says one more byte */
	assert_int_equal(kms_seal_header_parse(e, len + 1, &p), KMS_ERR_INVALID);
	memcpy(e, b, len);
	e[8] = 0x01; /* 16 MiB + ... */
	assert_int_equal(kms_seal_header_len(e, &total), KMS_ERR_INVALID);
	memcpy(e, b, len);
	e[8] = e[9] = e[10] = 0;
	e[11] = 12;
	assert_int_equal(kms_seal_header_len(e, &total), KMS_ERR_INVALID);
	assert_int_equal(kms_seal_header_parse(b, len - 1, &p), KMS_ERR_INVALID);
	free(e);
	free(b);
	/* field bounds */
	bad = h;
	bad.chunk_size = KMS_SEAL_CHUNK_MIN - 1;
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
	bad.chunk_size = KMS_SEAL_CHUNK_MAX + 1;
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
	bad = h;
	bad.tenant = "de mo";
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
	bad = h;
	bad.tenant = "";
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
	bad = h;
	bad.wrapped = "AAAA";
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
	for (size_t i = 0; i < sizeof(contexts) / sizeof(contexts[0]); i++) {
		bad = h;
		bad.context = (char *)contexts[i];
		if (kms_seal_header_encode(&bad, &b, &len) != KMS_ERR_INVALID)
			fail_msg("context %s accepted", contexts[i]);
	}
	bad = h;
	bad.context = "{\"a\":\"\\u00E9\"}";
	assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_OK);
	free(b);
	/* a header just over the limit */
	{
		char *big = malloc(KMS_SEAL_HEADER_MAX);
		json_t *ctx = json_object();
		char k[16], *canon;

		assert_non_null(big);
		memset(big, 'v', 1024);
		big[1024] = '\0';
		for (int i = 0; i < 64; i++) {
			snprintf(k, sizeof(k), "k%02d", i);
			json_object_set_new(ctx, k, json_string(big));
		}
		assert_int_equal(kms_seal_context_canonical(ctx, &canon), KMS_OK);
		bad = h;
		bad.context = canon;
		assert_int_equal(kms_seal_header_encode(&bad, &b, &len), KMS_ERR_INVALID);
		assert_non_null(strstr(kms_err_detail(KMS_ERR_INVALID), "exceeds"));
		free(canon);
		json_object_set_new(ctx, "k64", json_string("x"));
		assert_int_equal(kms_seal_context_canonical(ctx, &canon), KMS_ERR_INVALID);
		json_decref(ctx);
		free(big);
	}
	(void)el;
}

static void test_stream_rules(void **state)
{
	struct kms_seal_header h = {.chunk_size = 16, .tenant = "t", .key = "k", .wrapped = "vault:v1:A", .context = "{}"};
	struct kms_seal_stream s;
	uint8_t dek[32] = {0}, in[17] = {0}, out[64], *hdr;
	size_t hl;

	assert_int_equal(kms_seal_header_encode(&h, &hdr, &hl), KMS_OK);
	assert_int_equal(kms_seal_stream_init(&s, dek, hdr, hl), KMS_OK);
	assert_int_equal(kms_seal_stream_seal(&s, 0, in, 15, out), KMS_ERR_INVALID); /* short, not last */
	assert_int_equal(kms_seal_stream_seal(&s, 1, in, 17, out), KMS_ERR_INVALID); /* over the chunk size */
	assert_int_equal(kms_seal_stream_seal(&s, 0, in, 16, out), KMS_OK);
	assert_int_equal(kms_seal_stream_seal(&s, 1, in, 0, out), KMS_ERR_INVALID); /* empty final after data */
	assert_int_equal(kms_seal_stream_seal(&s, 1, in, 3, out), KMS_OK);
	assert_int_equal(kms_seal_stream_seal(&s, 1, in, 3, out), KMS_ERR_INVALID); /* after the final */
	kms_seal_stream_clear(&s);
	for (size_t i = 0; i < sizeof(s); i++)
		assert_int_equal(((uint8_t *)&s)[i], 0);
	free(hdr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_tamper),
		cmocka_unit_test(test_header_rejects),
		cmocka_unit_test(test_stream_rules),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("seal", tests, NULL, NULL);
}
