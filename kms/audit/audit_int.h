/* Internals shared by the log writer (audit.c) and the offline verifier (verify.c):
 * the byte-level shape of a chained record line. See docs/FORMATS.md "Audit record". */
#ifndef KMS_AUDIT_AUDIT_INT_H
#define KMS_AUDIT_AUDIT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "kms/audit/audit.h"

#define AUDIT_HASH_HEX 64
/* A line (without its '\n') ends in AUDIT_HASH_MEMBER, 64 lower-case hex digits, "\"}". */
#define AUDIT_HASH_MEMBER ",\"hash\":\""
#define AUDIT_HASH_SUFFIX_LEN (sizeof(AUDIT_HASH_MEMBER) - 1 + AUDIT_HASH_HEX + 2)

/* If line (len bytes, no newline) ends in ,"hash":"<64 lower-case hex>"} copies the hex
 * and a NUL into hash_hex and returns 0; else -1. */
int audit_line_hash_hex(const char *line, size_t len, char hash_hex[AUDIT_HASH_HEX + 1]);

/* SHA-256 of the line's body: line[0, len - AUDIT_HASH_SUFFIX_LEN) followed by "}", i.e.
 * the record as written minus its hash member. len must exceed AUDIT_HASH_SUFFIX_LEN.
 * Returns 0, or -1 if OpenSSL failed. */
int audit_line_body_hash(const char *line, size_t len, uint8_t out[AUDIT_HASH_LEN]);

#endif
