/* Token randomness handed out in small pieces.
 *
 * A data key needs 44 to 76 random bytes (DEK and IV), an encrypt 12 (IV). Asking the
 * token for each costs a C_GenerateRandom per request: a round trip on a network HSM,
 * and on SoftHSM2 a session checkout, two fork checks and a DRBG call. The pool asks the
 * token for RNDPOOL_CHUNK bytes at a time and hands them out in order:
 *
 * - every byte comes from the token's RNG (DESIGN.md: DEKs are token random bits) and
 *   is handed out once; it is wiped in the pool as it leaves, and the pool lives in
 *   secret memory (mlock'd, not in core dumps, wiped when freed);
 * - no lock is held across the token call: the thread that finds the pool short fills
 *   a spare buffer outside the lock and swaps it in; threads that find a fill already
 *   under way ask the token themselves for just what they need, and so does a request
 *   larger than RNDPOOL_DIRECT;
 * - a failed fill is followed by a request for just the caller's bytes. If that fails
 *   too, it is the caller's error (503), as a failed C_GenerateRandom was, and the pool
 *   is left as it was; the next request tries again. If it works, the token may refuse
 *   random requests of the chunk's size (some HSM front ends cap them): later fills ask
 *   for half as much, down to RNDPOOL_MIN_CHUNK, below which every request asks the
 *   token for its own bytes (a warning says so each time). A passing fault that fails
 *   one fill halves the chunk too, so after RNDPOOL_REGROW fills at a reduced size (or
 *   direct draws, below the smallest) the next fill tries twice the size: if the token
 *   takes it, that is the chunk again (logged); if not, the caller's bytes come alone as
 *   above and the chunk stays, without a warning. A token that caps random requests
 *   costs one refused call per RNDPOOL_REGROW fills.
 *
 * Thread-safe. Used by core for DEKs and IVs (ops_data.c). */
#ifndef KMS_CORE_RNDPOOL_H
#define KMS_CORE_RNDPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

/* 1 KiB: 23 data keys of 256 bits, 85 IVs. Not more, as some HSM front ends refuse
 * larger random requests (cloud KMS APIs cap one call at 1,024 bytes). */
#define RNDPOOL_CHUNK 1024u
#define RNDPOOL_DIRECT 256u /* larger requests go straight to the source */
#define RNDPOOL_MIN_CHUNK 64u /* the smallest fill (one data key and its IV is 44 bytes) */
#define RNDPOOL_REGROW 256u  /* rounds at a reduced chunk before a larger one is tried */

/* Where the bytes come from: p11_random in kmsd, something countable in tests. */
typedef kms_err (*rndpool_fill_fn)(void *ctx, uint8_t *out, size_t n);

struct rndpool;

KMS_WUR kms_err rndpool_new(rndpool_fill_fn fill, void *ctx, struct rndpool **out);
void rndpool_free(struct rndpool *p); /* NULL-safe; wipes what is left */

/* n fresh bytes into out (n may be 0); on error out is wiped. */
KMS_WUR kms_err rndpool_get(struct rndpool *p, uint8_t *out, size_t n);

#endif
