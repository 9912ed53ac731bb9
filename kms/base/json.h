/* jansson, set up for request bodies that carry key material: every block jansson
 * frees is wiped first, and parsing rejects duplicate keys. */
#ifndef KMS_BASE_JSON_H
#define KMS_BASE_JSON_H

#include <jansson.h>
#include <stdbool.h>
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
 * which wipes it). The bytes are jansson's json_dumps(v, JSON_COMPACT), made by the
 * writer below (jansson's own serialiser costs about 40 instructions a byte). */
char *kms_json_dump(const json_t *v, size_t *len);
void kms_json_free_str(char *s, size_t len);

/* A compact JSON writer whose output is byte for byte what jansson's json_dumpb gives
 * for JSON_COMPACT (optionally | JSON_ENSURE_ASCII): members in insertion order, the
 * same escapes (\\uXXXX in upper case, surrogate pairs), reals through jansson itself.
 * Writes into buf[0, cap) and counts every byte in len even past cap, so a caller that
 * finds len > cap retries with a buffer of len bytes (nothing past cap is written).
 * buf may be NULL with cap 0 to measure. ok turns false on a string that is not valid
 * UTF-8 (jansson's dump fails there too). */
struct kms_jw {
	char *buf;
	size_t cap;
	size_t len;
	bool ascii; /* JSON_ENSURE_ASCII */
	bool ok;
};

void kms_jw_init(struct kms_jw *w, char *buf, size_t cap, bool ascii);
void kms_jw_raw(struct kms_jw *w, const char *s, size_t n);
/* A string of n bytes as a quoted JSON string. */
void kms_jw_str(struct kms_jw *w, const char *s, size_t n);
/* kms_json_text(s) as written: null for NULL, and when s is not valid UTF-8 every byte
 * from 0x80 up becomes '?'. */
void kms_jw_text(struct kms_jw *w, const char *s);
void kms_jw_int(struct kms_jw *w, long long v);
/* Any jansson value. */
void kms_jw_value(struct kms_jw *w, const json_t *v);

#endif
