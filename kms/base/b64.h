/* Strict base64 (RFC 4648 standard alphabet, '=' padding required) and hex. */
#ifndef KMS_BASE_B64_H
#define KMS_BASE_B64_H

#include <stddef.h>
#include <stdint.h>

/* Length of the encoding of n bytes, without the NUL. */
#define KMS_B64_ENC_LEN(n) ((((n) + 2) / 3) * 4)
/* Upper bound of the decoding of an n-character encoding. */
#define KMS_B64_DEC_MAX(n) (((n) / 4) * 3)

/* Writes the encoding and a NUL to out (outcap >= KMS_B64_ENC_LEN(n) + 1).
 * Returns the encoded length, or -1 if out is too small. */
long kms_b64_encode(const uint8_t *in, size_t n, char *out, size_t outcap);

/* Decodes exactly n characters. Rejects characters outside the alphabet, whitespace,
 * missing or misplaced padding and non-zero trailing bits. Returns the decoded length,
 * or -1 on bad input or when outcap is too small. */
long kms_b64_decode(const char *in, size_t n, uint8_t *out, size_t outcap);

/* Lower-case hex; out must hold 2n+1. */
void kms_hex_encode(const uint8_t *in, size_t n, char *out);

/* Value of one hex digit (either case), or -1. */
int kms_hex_digit(char c);

/* Decodes 2*outlen hex characters. Returns 0 or -1. */
int kms_hex_decode(const char *in, size_t n, uint8_t *out, size_t outcap, size_t *outlen);

#endif
