/* The authentication cache. See authcache.h for the contract and its correctness rule.
 *
 * A chained hash table of AUTHCACHE_BUCKETS buckets under one mutex; the critical
 * sections copy a few hundred bytes and never call the store or the token. The bucket
 * comes from the first bytes of the token's SHA-256 (which an attacker who sends the
 * token already knows); within a bucket every candidate is compared in full and in
 * constant time. */
#include "kms/core/authcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/secret.h"

#define AUTHCACHE_BUCKETS 1024

struct aent {
	struct aent *next;
	struct authcache_entry e; /* e.scope owned by the entry */
};

struct authcache {
	pthread_mutex_t mu;
	struct aent *b[AUTHCACHE_BUCKETS];
	size_t n, max;
	uint64_t gen;		 /* moves on every emptying */
	struct store_stamp stamp; /* the store as the current generation saw it */
	bool have_stamp;
	uint64_t hits, misses, flushes;
};

static size_t bucket_of(const uint8_t hash[AUTHN_HASH_LEN])
{
	return ((size_t)hash[0] << 8 | hash[1]) % AUTHCACHE_BUCKETS;
}

static void aent_free(struct aent *a)
{
	free(a->e.scope);
	kms_wipe(a, sizeof(*a));
	free(a);
}

static void flush_locked(struct authcache *ac)
{
	for (size_t i = 0; i < AUTHCACHE_BUCKETS; i++) {
		struct aent *a = ac->b[i];
		while (a != NULL) {
			struct aent *n = a->next;
			aent_free(a);
			a = n;
		}
		ac->b[i] = NULL;
	}
	ac->n = 0;
	ac->gen++;
	ac->flushes++;
}

static struct aent *find_locked(struct authcache *ac, const uint8_t hash[AUTHN_HASH_LEN])
{
	struct aent *hit = NULL;

	/* every entry of the bucket is compared, whether or not one matched already */
	for (struct aent *a = ac->b[bucket_of(hash)]; a != NULL; a = a->next)
		if (authn_hash_equal(a->e.hash, hash) && hit == NULL)
			hit = a;
	return hit;
}

static kms_err copy_entry(struct authcache_entry *dst, const struct authcache_entry *src)
{
	*dst = *src;
	dst->scope = NULL;
	if (src->n_scope > 0) {
		dst->scope = malloc(src->n_scope * sizeof(*dst->scope));
		if (dst->scope == NULL)
			return kms_errf(KMS_ERR_NOMEM, "auth cache");
		memcpy(dst->scope, src->scope, src->n_scope * sizeof(*dst->scope));
	}
	return KMS_OK;
}

kms_err authcache_new(size_t max, struct authcache **out)
{
	struct authcache *ac = calloc(1, sizeof(*ac));

	if (ac == NULL)
		return kms_errf(KMS_ERR_NOMEM, "auth cache");
	if (pthread_mutex_init(&ac->mu, NULL) != 0) {
		free(ac);
		return kms_errf(KMS_ERR_INTERNAL, "auth cache lock");
	}
	ac->max = max ? max : AUTHCACHE_DEFAULT_MAX;
	*out = ac;
	return KMS_OK;
}

void authcache_free(struct authcache *ac)
{
	if (ac == NULL)
		return;
	flush_locked(ac);
	pthread_mutex_destroy(&ac->mu);
	free(ac);
}

bool authcache_get(struct authcache *ac, const struct store_stamp *stamp, const uint8_t hash[AUTHN_HASH_LEN],
		   struct authcache_entry *out, uint64_t *ticket)
{
	struct aent *a;
	bool hit = false;

	pthread_mutex_lock(&ac->mu);
	if (!ac->have_stamp || ac->stamp.local != stamp->local || ac->stamp.external != stamp->external) {
		if (ac->n > 0 || ac->have_stamp)
			flush_locked(ac);
		ac->stamp = *stamp;
		ac->have_stamp = true;
	}
	*ticket = ac->gen;
	a = find_locked(ac, hash);
	if (a != NULL && copy_entry(out, &a->e) == KMS_OK) {
		hit = true;
		ac->hits++;
	} else {
		ac->misses++;
	}
	pthread_mutex_unlock(&ac->mu);
	return hit;
}

void authcache_put(struct authcache *ac, uint64_t ticket, const struct authcache_entry *e)
{
	struct aent *a = calloc(1, sizeof(*a));
	size_t b;

	if (a == NULL)
		return;
	if (copy_entry(&a->e, e) != KMS_OK) {
		aent_free(a);
		return;
	}
	b = bucket_of(e->hash);
	pthread_mutex_lock(&ac->mu);
	if (ticket != ac->gen || find_locked(ac, e->hash) != NULL) {
		pthread_mutex_unlock(&ac->mu);
		aent_free(a);
		return;
	}
	if (ac->n >= ac->max) {
		/* Bounded, and simple: a full cache starts over (its callers refill it from
		 * the store). Only tokens that authenticated get here. */
		flush_locked(ac); /* a was read in the generation just ended: still good */
	}
	a->next = ac->b[b];
	ac->b[b] = a;
	ac->n++;
	pthread_mutex_unlock(&ac->mu);
}

bool authcache_claim_touch(struct authcache *ac, const uint8_t hash[AUTHN_HASH_LEN], int64_t now, int64_t every)
{
	struct aent *a;
	bool mine = false;

	pthread_mutex_lock(&ac->mu);
	a = find_locked(ac, hash);
	if (a != NULL && now - a->e.last_used >= every) {
		a->e.last_used = now;
		mine = true;
	}
	pthread_mutex_unlock(&ac->mu);
	return mine;
}

void authcache_invalidate(struct authcache *ac)
{
	if (ac == NULL)
		return;
	pthread_mutex_lock(&ac->mu);
	flush_locked(ac);
	pthread_mutex_unlock(&ac->mu);
}

void authcache_get_stats(struct authcache *ac, struct authcache_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (ac == NULL)
		return;
	pthread_mutex_lock(&ac->mu);
	st->hits = ac->hits;
	st->misses = ac->misses;
	st->flushes = ac->flushes;
	st->entries = ac->n;
	pthread_mutex_unlock(&ac->mu);
}
