/* The authentication cache: what the store says about a token that authenticated,
 * kept in memory so that a request costs no SQLite reads (docs/PERFORMANCE.md).
 *
 * Keyed by the SHA-256 of the presented token (the hash the store keeps), never by
 * the token: no plaintext token is held. An entry is found by comparing full hashes in
 * constant time. Only tokens that passed every check are cached; expiry is checked on
 * every hit against the caller's clock, so a token stops working at its expiry time.
 *
 * Correctness rule: every lookup passes the store's change stamp (store_change_stamp),
 * taken just before; a stamp that differs from the cache's empties the cache and starts
 * a new generation, and an entry read from the store is inserted only if no emptying
 * happened between its lookup and its insert. So any write through this process's store (revoke a token, change
 * a principal, its role or its tenant scope, or any other row) and any commit by
 * another process on the same database takes effect on the very next request.
 * authcache_invalidate() is the hook for invalidations the store cannot see (issue 10:
 * another node of a cluster). */
#ifndef KMS_CORE_AUTHCACHE_H
#define KMS_CORE_AUTHCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"
#include "kms/store/store.h"
#include "policy/authn.h"

#define AUTHCACHE_DEFAULT_MAX 4096 /* entries; a full cache is emptied, not grown */

struct authcache;

/* What a hit hands back; scope is malloc'd (free()), NULL when n_scope is 0. */
struct authcache_entry {
	uint8_t hash[AUTHN_HASH_LEN];
	char accessor[STORE_ACCESSOR_MAX + 1];
	int64_t expires;   /* 0 = never */
	int64_t last_used; /* as recorded in the store, or as this process last wrote it */
	struct store_principal who;
	int64_t *scope;	   /* tenant ids of a service principal */
	size_t n_scope;
};

/* max 0 -> AUTHCACHE_DEFAULT_MAX. */
KMS_WUR kms_err authcache_new(size_t max, struct authcache **out);
void authcache_free(struct authcache *ac); /* accepts NULL */

/* true and *out filled (out->scope malloc'd) when hash is cached. stamp is the store's,
 * taken just before; one that differs from the cache's empties the cache first. false
 * also on NOMEM. Either way *ticket names the cache's generation now: a miss passes it
 * to authcache_put after reading the rows from the store. */
bool authcache_get(struct authcache *ac, const struct store_stamp *stamp, const uint8_t hash[AUTHN_HASH_LEN],
		   struct authcache_entry *out, uint64_t *ticket);

/* Caches a copy of e, read from the store after the authcache_get that gave ticket;
 * refused (silently) when the cache has been emptied since. */
void authcache_put(struct authcache *ac, uint64_t ticket, const struct authcache_entry *e);

/* Claims the once-a-minute last-used write for a cached token: true (and the entry's
 * last_used set to now) for the one caller that should write it. */
bool authcache_claim_touch(struct authcache *ac, const uint8_t hash[AUTHN_HASH_LEN], int64_t now,
			   int64_t every);

/* Drops every entry now, and refuses inserts of anything read before this call. */
void authcache_invalidate(struct authcache *ac);

/* Counters for /v1/sys/metrics and tests. */
struct authcache_stats {
	uint64_t hits, misses, flushes;
	size_t entries;
};
void authcache_get_stats(struct authcache *ac, struct authcache_stats *st);

#endif
