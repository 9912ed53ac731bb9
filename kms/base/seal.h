/* Sealed files (docs/FORMATS.md "Sealed files"): the header codec and the chunk
 * cipher of `kmsctl seal` / `kmsctl open`. Pure functions: no server, no I/O; the DEK
 * and the nonce prefix come from the caller, so the test vectors are reproducible.
 *
 * Format v1 in brief: a header (magic, version, length, chunk size, a random 7-byte
 * nonce prefix, tenant, key, the wrapped DEK, the canonical encryption context), then
 * chunks of AES-256-GCM under the DEK, chunk i with nonce prefix || u32be(i) || last
 * (the STREAM construction: counter and final flag in the nonce) and the whole header
 * as its AAD. */
#ifndef KMS_BASE_SEAL_H
#define KMS_BASE_SEAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define KMS_SEAL_MAGIC "KMSSEAL" /* 7 bytes, then the version byte */
#define KMS_SEAL_VERSION 1
#define KMS_SEAL_FIXED_LEN 12 /* magic, version, u32be header length */
#define KMS_SEAL_HEADER_MAX 65536
#define KMS_SEAL_CHUNK_MIN 16
#define KMS_SEAL_CHUNK_MAX (4u << 20)
#define KMS_SEAL_CHUNK_DEFAULT 65536
#define KMS_SEAL_PREFIX_LEN 7
#define KMS_SEAL_TAG_LEN 16
#define KMS_SEAL_DEK_LEN 32
#define KMS_SEAL_NAME_MAX 255
#define KMS_SEAL_WRAPPED_MAX 4096
#define KMS_SEAL_CTX_MAX_PAIRS 64
#define KMS_SEAL_CTX_KEY_MAX 1024
#define KMS_SEAL_CTX_VALUE_MAX 1024

struct kms_seal_header {
	uint32_t chunk_size;
	uint8_t prefix[KMS_SEAL_PREFIX_LEN];
	char *tenant;  /* NUL-terminated; owned (malloc) after a parse */
	char *key;
	char *wrapped; /* the DEK as the server wrapped it: vault:vN:... */
	char *context; /* canonical JSON of the encryption context ("{}" when none) */
};

/* The canonical text of an encryption context (NULL or an object of string values):
 * compact JSON, members sorted by key bytes, non-ASCII escaped (\uXXXX). *out is
 * malloc'd (free()). KMS_ERR_INVALID (detail set) for anything else or out of bounds. */
KMS_WUR kms_err kms_seal_context_canonical(const json_t *ctx, char **out);

/* Encodes h (fields checked as the parser checks them) into a malloc'd header of *len
 * bytes. KMS_ERR_INVALID with a detail when a field is out of bounds. */
KMS_WUR kms_err kms_seal_header_encode(const struct kms_seal_header *h, uint8_t **out, size_t *len);

/* From the first KMS_SEAL_FIXED_LEN bytes: checks magic and version, and sets *total
 * to the header's whole length (KMS_SEAL_FIXED_LEN < *total <= KMS_SEAL_HEADER_MAX).
 * KMS_ERR_INVALID ("not a sealed file", "unsupported format version N", ...). */
KMS_WUR kms_err kms_seal_header_len(const uint8_t *fixed, size_t *total);

/* Parses exactly len bytes (the whole header) into h, whose strings the caller frees
 * with kms_seal_header_free. Only canonical headers parse: encoding the result gives
 * back the same bytes. On failure h is left empty and the detail says why. */
KMS_WUR kms_err kms_seal_header_parse(const uint8_t *buf, size_t len, struct kms_seal_header *h);

/* Frees the strings of a parsed header and zeroes it. Accepts a zeroed header. */
void kms_seal_header_free(struct kms_seal_header *h);

/* The chunk cipher over one file: a copy of the DEK, the header bytes (the AAD; the
 * nonce prefix and chunk size are read from it), the next chunk's counter. */
struct kms_seal_stream {
	uint8_t dek[KMS_SEAL_DEK_LEN];
	const uint8_t *hdr; /* borrowed: must outlive the stream */
	size_t hdr_len;
	uint32_t chunk_size;
	uint64_t next; /* counter of the next chunk */
	int done;      /* the final chunk went through */
	void *evp;     /* EVP_CIPHER_CTX */
};

/* hdr must be a header that kms_seal_header_parse accepts (or that encode made). */
KMS_WUR kms_err kms_seal_stream_init(struct kms_seal_stream *s, const uint8_t *dek, const uint8_t *hdr,
				     size_t hdr_len);

/* Seals the next chunk: n plaintext bytes (exactly chunk_size unless last; the final
 * chunk holds 0..chunk_size, 0 only when it is the only chunk) into out, which receives
 * n + KMS_SEAL_TAG_LEN bytes. */
KMS_WUR kms_err kms_seal_stream_seal(struct kms_seal_stream *s, int last, const uint8_t *in, size_t n,
				     uint8_t *out);

/* Opens the next record of n bytes (ciphertext and tag) into out (n - 16 bytes, only
 * written in full when the tag verifies; the caller must not use out on failure).
 * KMS_ERR_DECRYPT when the record does not authenticate as chunk `next` (with the
 * final flag `last`) of this header, or has a size no writer makes. */
KMS_WUR kms_err kms_seal_stream_open(struct kms_seal_stream *s, int last, const uint8_t *in, size_t n,
				     uint8_t *out);

/* Wipes the DEK copy and frees the cipher context. Accepts a zeroed stream. */
void kms_seal_stream_clear(struct kms_seal_stream *s);

#endif
