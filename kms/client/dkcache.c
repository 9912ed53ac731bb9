/* The data-key cache (dkcache.h). A short list under one mutex: services hold a few
 * DEKs at a time (one per tenant, key and context they seal under), so a linear scan
 * is cheaper than anything cleverer. DEKs live in secret memory (kms_secret_alloc). */
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#include "kms/base/secret.h"
#include "kms/client/dkcache.h"

struct entry {
	struct entry *next;
	uint8_t *dek; /* secret memory */
	char *wrapped;
	void *id;
	size_t id_len;
	uint64_t born, uses, bytes;
};

struct kmsc_cache {
	pthread_mutex_t mu;
	struct kmsc_cache_limits lim;
	struct entry *head; /* newest first */
	size_t count;
};

static void (*wipe_hook)(const uint8_t *, size_t, void *);
static void *wipe_hook_arg;

void kmsc_cache_set_wipe_hook(void (*fn)(const uint8_t *dek, size_t n, void *arg), void *arg)
{
	wipe_hook = fn;
	wipe_hook_arg = arg;
}

static uint64_t now_of(const struct kmsc_cache *c)
{
	struct timespec ts;

	if (c->lim.now_ms != NULL)
		return c->lim.now_ms(c->lim.clock_arg);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void entry_free(struct entry *e)
{
	if (e == NULL)
		return;
	kms_wipe(e->dek, KMSC_CACHE_DEK_LEN);
	if (wipe_hook != NULL)
		wipe_hook(e->dek, KMSC_CACHE_DEK_LEN, wipe_hook_arg);
	kms_secret_free(e->dek);
	free(e->wrapped);
	free(e->id);
	free(e);
}

int kmsc_cache_new(const struct kmsc_cache_limits *lim, struct kmsc_cache **out)
{
	struct kmsc_cache *c;

	*out = NULL;
	if (lim->max_age_ms == 0 || lim->max_messages == 0 || lim->max_bytes == 0 ||
	    lim->max_entries == 0)
		return -1;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -1;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return -1;
	}
	c->lim = *lim;
	*out = c;
	return 0;
}

void kmsc_cache_free(struct kmsc_cache *c)
{
	struct entry *e, *next;

	if (c == NULL)
		return;
	for (e = c->head; e != NULL; e = next) {
		next = e->next;
		entry_free(e);
	}
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* Unlinks and returns the entry for id, or NULL. Caller holds the lock. */
static struct entry *unlink_locked(struct kmsc_cache *c, const void *id, size_t id_len)
{
	struct entry **pp, *e;

	for (pp = &c->head; (e = *pp) != NULL; pp = &e->next) {
		if (e->id_len == id_len && memcmp(e->id, id, id_len) == 0) {
			*pp = e->next;
			c->count--;
			return e;
		}
	}
	return NULL;
}

int kmsc_cache_take(struct kmsc_cache *c, const void *id, size_t id_len, uint64_t n,
		    uint8_t dek[KMSC_CACHE_DEK_LEN], char **wrapped)
{
	struct entry *e, *gone = NULL;
	uint64_t now = now_of(c);
	char *w = NULL;
	int rc = 0;

	if (wrapped != NULL)
		*wrapped = NULL;
	pthread_mutex_lock(&c->mu);
	for (e = c->head; e != NULL; e = e->next)
		if (e->id_len == id_len && memcmp(e->id, id, id_len) == 0)
			break;
	if (e == NULL)
		goto out;
	/* now < born: a clock that went back; the entry's age is unknown, so it goes. */
	if (now < e->born || now - e->born >= c->lim.max_age_ms || e->uses >= c->lim.max_messages ||
	    n > c->lim.max_bytes - e->bytes) {
		gone = unlink_locked(c, id, id_len);
		goto out;
	}
	if (wrapped != NULL) {
		w = strdup(e->wrapped);
		if (w == NULL) {
			rc = -1;
			goto out;
		}
	}
	e->uses++;
	e->bytes += n;
	memcpy(dek, e->dek, KMSC_CACHE_DEK_LEN);
	if (wrapped != NULL)
		*wrapped = w;
	rc = 1;
	/* Spent: wipe it now rather than at the next look-up. */
	if (e->uses >= c->lim.max_messages || e->bytes >= c->lim.max_bytes)
		gone = unlink_locked(c, id, id_len);
out:
	pthread_mutex_unlock(&c->mu);
	entry_free(gone);
	return rc;
}

int kmsc_cache_put(struct kmsc_cache *c, const void *id, size_t id_len,
		   const uint8_t dek[KMSC_CACHE_DEK_LEN], const char *wrapped, uint64_t n)
{
	struct entry *e, *old = NULL, *oldest = NULL, **pp;

	/* A message at or over the bound, or a single-use bound: the DEK is spent. */
	if (n >= c->lim.max_bytes || c->lim.max_messages <= 1)
		return 0;
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -1;
	e->dek = kms_secret_alloc(KMSC_CACHE_DEK_LEN);
	e->wrapped = strdup(wrapped != NULL ? wrapped : "");
	e->id = malloc(id_len ? id_len : 1);
	if (e->dek == NULL || e->wrapped == NULL || e->id == NULL) {
		entry_free(e);
		return -1;
	}
	memcpy(e->dek, dek, KMSC_CACHE_DEK_LEN);
	memcpy(e->id, id, id_len);
	e->id_len = id_len;
	e->born = now_of(c);
	e->uses = 1;
	e->bytes = n;
	pthread_mutex_lock(&c->mu);
	old = unlink_locked(c, id, id_len);
	if (c->count >= c->lim.max_entries) {
		/* the list is newest first: the last entry is the oldest */
		for (pp = &c->head; (*pp)->next != NULL; pp = &(*pp)->next)
			;
		oldest = *pp;
		*pp = NULL;
		c->count--;
	}
	e->next = c->head;
	c->head = e;
	c->count++;
	pthread_mutex_unlock(&c->mu);
	entry_free(old);
	entry_free(oldest);
	return 0;
}

size_t kmsc_cache_count(struct kmsc_cache *c)
{
	size_t n;

	pthread_mutex_lock(&c->mu);
	n = c->count;
	pthread_mutex_unlock(&c->mu);
	return n;
}
