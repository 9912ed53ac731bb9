/* Ciphertext wire form and the AAD that binds it to its place. Pure functions.
 * Byte-by-byte description and a test vector: docs/FORMATS.md.
 *
 *   wire  = "vault:v" <version, decimal, 1..4294967295, no leading zero> ":" base64(iv || ct || tag)
 *   AAD   = "kmsd.aad.v1" 0x00
 *           lp(tenant) lp(key) u32be(version) lp(associated_data)
 *           u32be(n) { lp(ctx_key) lp(ctx_value) } * n      (pairs sorted by key bytes)
 *   lp(x) = u32be(len(x)) || x
 */
#ifndef KMS_CORE_CIPHERTEXT_H
#define KMS_CORE_CIPHERTEXT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define CT_IV_LEN 12
#define CT_TAG_LEN 16
#define CT_MIN_RAW (CT_IV_LEN + CT_TAG_LEN)
#define CT_CTX_MAX_PAIRS 64
#define CT_CTX_MAX_LEN 1024 /* bytes, per context key and per value */

/* Parses a wire ciphertext. raw receives iv || ct || tag. Errors are KMS_ERR_INVALID
 * with a detail that starts "invalid ciphertext: ". */
KMS_WUR kms_err ct_parse(const char *s, size_t len, uint32_t *version, uint8_t *raw,
			 size_t raw_cap, size_t *raw_len);

/* Length of the wire form of raw_len bytes at version, without the NUL. */
size_t ct_wire_len(uint32_t version, size_t raw_len);

/* Writes the wire form and a NUL. cap >= ct_wire_len() + 1. */
KMS_WUR kms_err ct_format(uint32_t version, const uint8_t *raw, size_t raw_len, char *out, size_t cap);

/* Builds the AAD. ctx may be NULL (no context) or a JSON object of string values;
 * anything else, more than CT_CTX_MAX_PAIRS pairs, an empty key or an over-long key or
 * value -> KMS_ERR_INVALID naming the problem. *out is malloc'd; free it with
 * ct_aad_free. */
KMS_WUR kms_err ct_aad_build(const char *tenant, const char *key, uint32_t version,
			     const uint8_t *ad, size_t ad_len, const json_t *ctx, uint8_t **out,
			     size_t *out_len);
void ct_aad_free(uint8_t *aad, size_t len);

#endif
