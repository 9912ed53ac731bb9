/* jansson, set up for request bodies that carry key material: every block jansson
 * frees is wiped first, and parsing rejects duplicate keys. */
#ifndef KMS_BASE_JSON_H
#define KMS_BASE_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "kms/base/err.h"

/* Installs the wiping allocator. Call once at start-up, before any json_* call. */
void kms_json_init(void);

/* Parses exactly len bytes as one JSON object. On failure returns NULL with the error
 * detail set ("malformed JSON at line L column C: ..."); *err is KMS_ERR_INVALID. */
json_t *kms_json_parse_object(const char *buf, size_t len, kms_err *err);

/* Checks that obj has no member outside allowed (a NULL-terminated list). On failure
 * sets the detail to name the first unknown member and returns KMS_ERR_INVALID. */
KMS_WUR kms_err kms_json_only(json_t *obj, const char *const *allowed);

/* Fetches an optional string member. Absent or null -> *out NULL, KMS_OK; present but
 * not a string -> KMS_ERR_INVALID naming the member. */
KMS_WUR kms_err kms_json_opt_string(json_t *obj, const char *name, const char **out);

/* Fetches an optional non-negative integer member (also accepted as a decimal string,
 * which is how some Vault clients send numbers). Absent -> *out = dflt. */
KMS_WUR kms_err kms_json_opt_uint(json_t *obj, const char *name, long long dflt, long long max,
				  long long *out);

/* Optional boolean (also "true"/"false" strings). */
KMS_WUR kms_err kms_json_opt_bool(json_t *obj, const char *name, int dflt, int *out);

/* A JSON string for text that may come from outside (names, error details): invalid
 * UTF-8 bytes are replaced by '?' instead of failing, so that an answer or an audit
 * record never loses a member. NULL s -> JSON null. Returns NULL only without memory. */
json_t *kms_json_text(const char *s);

/* Serialises compactly into a malloc'd string (the caller frees with kms_json_free_str,
 * which wipes it). */
char *kms_json_dump(const json_t *v, size_t *len);
void kms_json_free_str(char *s, size_t len);

#endif
