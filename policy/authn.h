/* API tokens: format, generation and hashing. Pure functions; the store lookup is the
 * caller's. A token reads "kms.<accessor>.<secret>": the accessor (16 hex) is the public
 * handle used for lookup, revocation and audit; the secret (64 hex, 256 bits from the
 * OpenSSL DRBG) is never stored, only SHA-256 of the whole token string. */
#ifndef KMS_POLICY_AUTHN_H
#define KMS_POLICY_AUTHN_H

#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define AUTHN_ACCESSOR_LEN 16
#define AUTHN_TOKEN_LEN (4 + AUTHN_ACCESSOR_LEN + 1 + 64)
#define AUTHN_HASH_LEN 32

/* Makes a new token; token must hold AUTHN_TOKEN_LEN + 1, accessor
 * AUTHN_ACCESSOR_LEN + 1. The caller wipes token after showing it once. */
KMS_WUR kms_err authn_token_new(char *token, char *accessor);

/* Checks the shape of a presented token and copies out its accessor. Anything else ->
 * KMS_ERR_UNAUTHENTICATED. Runs in time independent of the secret's value. */
KMS_WUR kms_err authn_token_parse(const char *token, size_t len, char *accessor);

/* SHA-256 of the token string. */
void authn_token_hash(const char *token, size_t len, uint8_t out[AUTHN_HASH_LEN]);

/* Constant-time equality of two hashes: 1 equal, 0 not. */
int authn_hash_equal(const uint8_t a[AUTHN_HASH_LEN], const uint8_t b[AUTHN_HASH_LEN]);

#endif
