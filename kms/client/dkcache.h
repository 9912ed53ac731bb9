/* The data-key cache of libkmsclient (docs/CLIENT.md "Data-key cache"): plaintext
 * DEKs kept for reuse, each bounded by age, number of uses and plaintext bytes. Pure
 * (no network); its own mutex, so one cache serves many threads.
 *
 * An entry is found by an opaque id the caller builds: the client uses
 * "E" tenant NUL key NUL canonical-context for DEKs it seals with, and
 * "D" tenant NUL key NUL canonical-context NUL wrapped for DEKs it unwrapped, so a DEK is
 * never served for another tenant, key or context. */
#ifndef KMS_CLIENT_DKCACHE_H
#define KMS_CLIENT_DKCACHE_H

#include <stddef.h>
#include <stdint.h>

#define KMSC_CACHE_DEK_LEN 32

struct kmsc_cache_limits {
	uint64_t max_age_ms;   /* > 0 */
	uint64_t max_messages; /* > 0 */
	uint64_t max_bytes;    /* > 0 */
	size_t max_entries;    /* > 0 */
	uint64_t (*now_ms)(void *arg); /* NULL: CLOCK_MONOTONIC */
	void *clock_arg;
};

struct kmsc_cache;

/* Returns 0, or -1 (a bound is 0, or no memory). */
int kmsc_cache_new(const struct kmsc_cache_limits *lim, struct kmsc_cache **out);

/* Wipes every DEK and frees. Accepts NULL. */
void kmsc_cache_free(struct kmsc_cache *c);

/* Finds id and, if its DEK may take one more message of n bytes (age < max_age,
 * uses < max_messages, bytes + n <= max_bytes), counts that use, copies the DEK into
 * dek and, when wrapped is not NULL, a malloc'd copy of its wrapped form into *wrapped.
 * Returns 1 (hit), 0 (miss: an entry that cannot take the message is evicted and
 * wiped), -1 (no memory). */
int kmsc_cache_take(struct kmsc_cache *c, const void *id, size_t id_len, uint64_t n,
		    uint8_t dek[KMSC_CACHE_DEK_LEN], char **wrapped);

/* Adds a DEK just used for one message of n bytes (counted as its first use). A
 * DEK already spent (n >= max_bytes, or max_messages 1) is not cached. An existing entry for id is replaced;
 * when full, the oldest entry goes. Returns 0 or -1 (no memory: nothing cached). */
int kmsc_cache_put(struct kmsc_cache *c, const void *id, size_t id_len,
		   const uint8_t dek[KMSC_CACHE_DEK_LEN], const char *wrapped, uint64_t n);

/* Number of entries (tests). */
size_t kmsc_cache_count(struct kmsc_cache *c);

/* Test hook: called with each entry's DEK memory after it was wiped and before it is
 * freed (eviction, replacement, free). NULL to unset. Process-wide; tests only. */
void kmsc_cache_set_wipe_hook(void (*fn)(const uint8_t *dek, size_t n, void *arg), void *arg);

#endif
