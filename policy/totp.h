/* TOTP (RFC 6238) for MFA step-up, with base32 (RFC 4648), otpauth:// URIs, recovery codes
 * and a lockout counter. Pure apart from the RNG (RAND_bytes) used to make seeds and
 * recovery codes: the seed is an input buffer (in the server it is decrypted under a
 * token key by the caller, who wipes it), and the replay and lockout state is passed in
 * and handed back for the caller to persist before it answers.
 *
 * Replay: a code is accepted only for a time step strictly greater than the last
 * accepted step, so a code is good once per principal, a code from an earlier step is
 * refused even if it was never used, and a clock stepping back (or a restart, since the
 * caller persists the step) does not reopen old steps. */
#ifndef KMS_POLICY_TOTP_H
#define KMS_POLICY_TOTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

enum totp_alg { TOTP_SHA1 = 0, TOTP_SHA256, TOTP_SHA512 };

struct totp_params {
	enum totp_alg alg;
	unsigned digits; /* 6..8 */
	unsigned period; /* seconds, 1..300 */
};

/* SHA-1, 6 digits, 30 seconds: what every authenticator app understands. */
#define TOTP_PARAMS_DEFAULT ((struct totp_params){TOTP_SHA1, 6, 30})
#define TOTP_SEED_MIN 16
#define TOTP_SEED_MAX 64
#define TOTP_SEED_DEFAULT 20 /* RFC 4226 recommends 160 bits */
#define TOTP_WINDOW 1	     /* steps accepted either side of now */
#define TOTP_LOCKOUT_MAX 100

/* "SHA1" / "SHA256" / "SHA512" as in otpauth URIs. */
const char *totp_alg_name(enum totp_alg alg);

/* HOTP (RFC 4226) value for one counter, as `digits` decimal digits and a NUL (out
 * holds digits + 1). */
KMS_WUR kms_err totp_hotp(const uint8_t *seed, size_t seed_len, const struct totp_params *p,
			  uint64_t counter, char *out);

/* The time step of a unix time (negative times -> KMS_ERR_INVALID). */
KMS_WUR kms_err totp_step(const struct totp_params *p, int64_t unix_time, uint64_t *step);

/* The TOTP code at unix_time (out holds digits + 1). */
KMS_WUR kms_err totp_code(const uint8_t *seed, size_t seed_len, const struct totp_params *p,
			  int64_t unix_time, char *out);

/* Checks a presented code against steps now-1, now, now+1, considering only steps greater
 * than last_step (0 = never used). All candidates are computed and compared in constant
 * time. KMS_OK: *accepted is the matched step, which the caller persists as its new
 * last_step. KMS_ERR_DENIED: wrong, malformed, or already used / older than last_step
 * (one answer for all, so a replay does not confirm a code was right). */
KMS_WUR kms_err totp_verify(const uint8_t *seed, size_t seed_len, const struct totp_params *p,
			    int64_t now, const char *code, uint64_t last_step, uint64_t *accepted);

/* Per-principal state the caller persists after every check. */
struct totp_state {
	uint64_t last_step;
	uint32_t failures; /* consecutive failed checks */
};

/* Lockout helpers: limit is 1..TOTP_LOCKOUT_MAX. */
bool totp_lockout_valid_limit(unsigned limit);
bool totp_locked(const struct totp_state *st, unsigned limit);
/* failures + 1 (saturating) on failure, 0 on success. */
uint32_t totp_failures_after(uint32_t failures, bool success);

/* The whole check: refuses without looking at the code when locked; otherwise verifies,
 * and updates st (last_step and failures = 0 on success, failures + 1 on failure). The
 * caller persists st whatever the answer, before answering. Returns KMS_OK,
 * KMS_ERR_DENIED (bad code or locked; *locked tells which) or KMS_ERR_INVALID (bad limit,
 * seed or parameters; st untouched). */
KMS_WUR kms_err totp_check(const uint8_t *seed, size_t seed_len, const struct totp_params *p, int64_t now,
			   const char *code, unsigned limit, struct totp_state *st, bool *locked);

/* ---- base32, RFC 4648 alphabet (A-Z, 2-7) */

#define TOTP_B32_ENC_LEN(n) ((((n) + 4) / 5) * 8) /* with padding */

/* Writes the encoding and a NUL; pad selects '=' padding. Returns the length, or -1 if
 * outcap is too small. */
long totp_base32_encode(const uint8_t *in, size_t n, bool pad, char *out, size_t outcap);

/* Decodes n characters; case-insensitive, padding optional but must be correct when
 * present, non-zero trailing bits and impossible lengths refused. Returns the decoded
 * length or -1. */
long totp_base32_decode(const char *in, size_t n, uint8_t *out, size_t outcap);

/* ---- enrolment */

/* Fills seed with len random bytes (TOTP_SEED_MIN..TOTP_SEED_MAX). */
KMS_WUR kms_err totp_seed_new(uint8_t *seed, size_t len);

/* otpauth://totp/kmsd:<label>?secret=<BASE32>&issuer=kmsd&algorithm=SHA1&digits=6&period=30
 * (label percent-encoded, secret without padding). The URI carries the secret: the caller
 * wipes out after use. Returns the length, or -1 when out is too small or an input is
 * invalid. */
long totp_uri(const char *label, const uint8_t *seed, size_t seed_len, const struct totp_params *p,
	      char *out, size_t outcap);

/* ---- recovery codes: TOTP_RECOVERY_N codes of TOTP_RECOVERY_LEN base32 characters (50
 * bits each). Only a PBKDF2-HMAC-SHA256 hash under one per-set random salt is stored; a
 * code verifies once. */
#define TOTP_RECOVERY_N 10
#define TOTP_RECOVERY_LEN 10
#define TOTP_RECOVERY_ITER 50000
#define TOTP_RECOVERY_ENC_MAX 1024

struct totp_recovery {
	uint8_t salt[16];
	uint32_t iter;
	uint32_t used; /* bit i: code i was used */
	uint8_t hash[TOTP_RECOVERY_N][32];
};

/* Makes a fresh set: codes (to show once, then kms_wipe) and its stored form. iter 0
 * means TOTP_RECOVERY_ITER. */
KMS_WUR kms_err totp_recovery_new(char codes[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1], uint32_t iter,
				  struct totp_recovery *set);

/* Uses a code: KMS_OK and marks it used (the caller persists set), or KMS_ERR_DENIED.
 * Input is case-insensitive and may contain '-' and spaces. */
KMS_WUR kms_err totp_recovery_use(struct totp_recovery *set, const char *code);

/* Unused codes left. */
unsigned totp_recovery_left(const struct totp_recovery *set);

/* Stored text form "r1$<iter>$<salt hex>$<used hex>$<hash hex>,<hash hex>,..." and back.
 * encode returns the length or -1; decode returns KMS_OK or KMS_ERR_INVALID. */
long totp_recovery_encode(const struct totp_recovery *set, char *out, size_t outcap);
KMS_WUR kms_err totp_recovery_decode(const char *s, struct totp_recovery *set);

#endif
