/* Token buckets by name, for the request path's rate limits (docs/API.md "Rate
 * limits"): per principal (and per principal and operation) on authenticated calls,
 * and per source address on failed authentication. A bucket holds up to `burst`
 * tokens and refills at `rate` tokens a second; a call takes one.
 *
 * Memory is bounded: at most `max_entries` buckets; when full, buckets that have
 * refilled completely (their holder went quiet) are dropped, and if none has, a new
 * name is limited as if its bucket were empty (an attacker who floods the table with
 * source addresses does not get past it). Thread-safe; the lock is striped by name. */
#ifndef KMS_CORE_RATELIMIT_H
#define KMS_CORE_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

struct ratelimit;

KMS_WUR kms_err ratelimit_new(size_t max_entries, struct ratelimit **out);
void ratelimit_free(struct ratelimit *rl); /* accepts NULL */

/* Takes a token from the bucket `name` (made full on first use). Returns 0 when one
 * was there, else the whole seconds (>= 1) until one will be. now_ms: a monotonic
 * clock in milliseconds. */
unsigned ratelimit_take(struct ratelimit *rl, const char *name, double rate, double burst,
			int64_t now_ms);

/* Like ratelimit_take without taking: 0 when a token is there. */
unsigned ratelimit_peek(struct ratelimit *rl, const char *name, double rate, double burst,
			int64_t now_ms);

/* Buckets held (for tests and metrics). */
size_t ratelimit_size(struct ratelimit *rl);

/* Parses per-operation limits "op=rate[:burst],op=rate[:burst]..." (op names of
 * kms_op_name; rate > 0 requests a second; burst >= 1, default 2 x rate). Fills
 * rate[] and burst[] indexed by enum kms_op (0 = no limit for that operation). NULL on
 * success, else why not (for the config validator). */
const char *ratelimit_parse_ops(const char *spec, double *rate, double *burst, size_t n_ops);

#endif
