/* Sealed-file header (kms_seal_header_len, kms_seal_header_parse) and the chunk cipher
 * keyed by a parsed header. Input: the bytes of a header (a sealed file's first bytes).
 *
 * Properties:
 *   - kms_seal_header_len: success only with the magic and version 1, and then the
 *     length is the u32be at offset 8, in 13..KMS_SEAL_HEADER_MAX;
 *   - kms_seal_header_parse: on failure the header is left empty (all NULL); on success
 *     every field is within its documented bounds, the context is a JSON object of
 *     strings, the header length agrees with kms_seal_header_len, and encoding the
 *     result reproduces the input byte for byte (only canonical headers parse), while
 *     the input less its last byte does not parse;
 *   - with a parsed header as AAD, a chunk sealed and opened round-trips; opened with
 *     the final flag flipped, under another counter, or with the header changed in one
 *     byte, it fails with KMS_ERR_DECRYPT. */
#include <string.h>

#include "kms/base/json.h"
#include "kms/base/seal.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kms_json_init();
	return 0;
}

static void check_fields(const struct kms_seal_header *h)
{
	json_error_t jerr;
	json_t *ctx, *v;
	const char *k;
	size_t n;

	CHECK(h->chunk_size >= KMS_SEAL_CHUNK_MIN && h->chunk_size <= KMS_SEAL_CHUNK_MAX);
	n = strlen(h->tenant);
	CHECK(n >= 1 && n <= KMS_SEAL_NAME_MAX);
	n = strlen(h->key);
	CHECK(n >= 1 && n <= KMS_SEAL_NAME_MAX);
	n = strlen(h->wrapped);
	CHECK(n >= 7 && n <= KMS_SEAL_WRAPPED_MAX && strncmp(h->wrapped, "vault:v", 7) == 0);
	for (const char *p = h->tenant; *p; p++)
		CHECK(*p > 0x20 && *p < 0x7f);
	ctx = json_loads(h->context, JSON_REJECT_DUPLICATES, &jerr);
	CHECK(json_is_object(ctx));
	CHECK(json_object_size(ctx) <= KMS_SEAL_CTX_MAX_PAIRS);
	json_object_foreach(ctx, k, v)
		CHECK(json_is_string(v) && strlen(k) >= 1);
	json_decref(ctx);
}

static void check_chunks(const uint8_t *hdr, size_t len)
{
	static const uint8_t dek[KMS_SEAL_DEK_LEN] = {1, 2, 3};
	static const uint8_t pt[KMS_SEAL_CHUNK_MIN] = "fuzz plaintext!";
	struct kms_seal_stream s, o;
	uint8_t ct[KMS_SEAL_CHUNK_MIN + KMS_SEAL_TAG_LEN], back[KMS_SEAL_CHUNK_MIN];
	uint8_t *h2 = malloc(len);

	CHECK(h2 != NULL);
	CHECK(kms_seal_stream_init(&s, dek, hdr, len) == KMS_OK);
	CHECK(kms_seal_stream_seal(&s, 0, pt, KMS_SEAL_CHUNK_MIN, ct) == KMS_ERR_INVALID ||
	      s.chunk_size == KMS_SEAL_CHUNK_MIN);
	kms_seal_stream_clear(&s);
	/* one final chunk of 16 bytes (always <= chunk_size) */
	CHECK(kms_seal_stream_init(&s, dek, hdr, len) == KMS_OK);
	CHECK(kms_seal_stream_seal(&s, 1, pt, sizeof(pt), ct) == KMS_OK);
	kms_seal_stream_clear(&s);
	CHECK(kms_seal_stream_init(&o, dek, hdr, len) == KMS_OK);
	CHECK(kms_seal_stream_open(&o, 0, ct, sizeof(ct), back) == KMS_ERR_DECRYPT); /* flag */
	kms_seal_stream_clear(&o);
	CHECK(kms_seal_stream_init(&o, dek, hdr, len) == KMS_OK);
	CHECK(kms_seal_stream_open(&o, 1, ct, sizeof(ct), back) == KMS_OK);
	CHECK(memcmp(back, pt, sizeof(pt)) == 0);
	kms_seal_stream_clear(&o);
	/* the record under another counter: open a genuine chunk 0 first (only possible
	 * when the chunk size is 16), then the record as chunk 1 */
	if (kms_seal_stream_init(&s, dek, hdr, len) == KMS_OK && s.chunk_size == KMS_SEAL_CHUNK_MIN) {
		uint8_t c0[sizeof(ct)];

		CHECK(kms_seal_stream_seal(&s, 0, pt, sizeof(pt), c0) == KMS_OK);
		CHECK(kms_seal_stream_init(&o, dek, hdr, len) == KMS_OK);
		CHECK(kms_seal_stream_open(&o, 0, c0, sizeof(c0), back) == KMS_OK);
		CHECK(kms_seal_stream_open(&o, 1, ct, sizeof(ct), back) == KMS_ERR_DECRYPT);
		kms_seal_stream_clear(&o);
	}
	kms_seal_stream_clear(&s);
	/* the header changed in its last byte (inside the context) */
	memcpy(h2, hdr, len);
	h2[len - 1] ^= 1; /* last header byte (inside the context) */
	CHECK(kms_seal_stream_init(&o, dek, h2, len) == KMS_OK);
	CHECK(kms_seal_stream_open(&o, 1, ct, sizeof(ct), back) == KMS_ERR_DECRYPT);
	kms_seal_stream_clear(&o);
	free(h2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kms_seal_header h;
	uint8_t *buf = (uint8_t *)fuzz_dup(data, size, 0), *enc = NULL;
	size_t total = 0, el = 0;
	kms_err e;

	if (size >= KMS_SEAL_FIXED_LEN) {
		e = kms_seal_header_len(buf, &total);
		if (e == KMS_OK) {
			CHECK(memcmp(buf, KMS_SEAL_MAGIC, 7) == 0 && buf[7] == KMS_SEAL_VERSION);
			CHECK(total == ((size_t)buf[8] << 24 | (size_t)buf[9] << 16 | (size_t)buf[10] << 8 | buf[11]));
			CHECK(total > KMS_SEAL_FIXED_LEN && total <= KMS_SEAL_HEADER_MAX);
		} else {
			CHECK(e == KMS_ERR_INVALID && total == 0);
		}
	}
	e = kms_seal_header_parse(buf, size, &h);
	if (e != KMS_OK) {
		CHECK(e == KMS_ERR_INVALID || e == KMS_ERR_NOMEM);
		CHECK(h.tenant == NULL && h.key == NULL && h.wrapped == NULL && h.context == NULL);
		free(buf);
		return 0;
	}
	CHECK(total == size);
	check_fields(&h);
	CHECK(kms_seal_header_encode(&h, &enc, &el) == KMS_OK);
	CHECK(el == size && memcmp(enc, buf, size) == 0);
	free(enc);
	kms_seal_header_free(&h);
	CHECK(kms_seal_header_parse(buf, size - 1, &h) == KMS_ERR_INVALID);
	check_chunks(buf, size);
	free(buf);
	return 0;
}
