/* A bounded LRU of the audit HMACs of encryption-context values, so that a value a
 * service sends with every request (a purpose, a record type, a patient id) costs one
 * token call per process, not one per request (docs/PERFORMANCE.md).
 *
 * What it holds, and why that is acceptable for PHI-ish values: never the value. An
 * entry is found by a fingerprint, HMAC-SHA256 of the value under a random key made for
 * this process (kept in locked, non-dumpable memory, wiped at free), and holds that
 * fingerprint and the audit HMAC, which is what the audit log holds anyway. The value
 * cannot be read back from an entry; guessing it needs the per-process key, i.e. this
 * process's memory, which sees the values in the requests themselves. Entries are wiped
 * when evicted or cleared. `audit_hmac_cache = 0` turns it off.
 *
 * The audit HMAC key lives in the token and is never replaced while kmsd runs; a token
 * that could change it would call hmaccache_clear(). */
#ifndef KMS_CORE_HMACCACHE_H
#define KMS_CORE_HMACCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define HMACCACHE_MAC_LEN 32
#define HMACCACHE_DEFAULT_MAX 4096

struct hmaccache;

/* max 0 -> *out = NULL (no cache: every call below accepts NULL and misses). */
KMS_WUR kms_err hmaccache_new(size_t max, struct hmaccache **out);
void hmaccache_free(struct hmaccache *hc); /* accepts NULL; wipes */

/* true and mac filled when the value's HMAC is cached; false on a miss or any fault. */
bool hmaccache_get(struct hmaccache *hc, const void *value, size_t len, uint8_t mac[HMACCACHE_MAC_LEN]);
/* Remembers mac for value, evicting the least recently used entry when full. */
void hmaccache_put(struct hmaccache *hc, const void *value, size_t len, const uint8_t mac[HMACCACHE_MAC_LEN]);
void hmaccache_clear(struct hmaccache *hc);

struct hmaccache_stats {
	uint64_t hits, misses;
	size_t entries;
};
void hmaccache_get_stats(struct hmaccache *hc, struct hmaccache_stats *st);

#endif
