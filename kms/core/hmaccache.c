/* The audit-HMAC cache. See hmaccache.h for what it holds and why.
 *
 * Chained buckets keyed by the fingerprint, a doubly linked list in use order, one
 * mutex. The fingerprint is computed before the lock is taken. The fingerprint key is
 * made from the OpenSSL private DRBG at start, handed to an HMAC context (which keeps
 * only its derived state) and wiped at once. */
#include "kms/core/hmaccache.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/secret.h"

#define FP_LEN 32

struct hent {
	struct hent *next;	   /* bucket chain */
	struct hent *newer, *older; /* use order */
	uint8_t fp[FP_LEN];
	uint8_t mac[HMACCACHE_MAC_LEN];
};

struct hmaccache {
	pthread_mutex_t mu;
	EVP_MAC *mac;
	EVP_MAC_CTX *tmpl; /* keyed; duplicated for each fingerprint */
	struct hent **b;
	size_t nb, n, max;
	struct hent *newest, *oldest;
	uint64_t hits, misses;
};

static bool fingerprint(struct hmaccache *hc, const void *v, size_t len, uint8_t fp[FP_LEN])
{
	static const unsigned char empty[1];
	EVP_MAC_CTX *x = EVP_MAC_CTX_dup(hc->tmpl);
	size_t n = 0;
	bool ok;

	ok = x != NULL && EVP_MAC_update(x, len ? v : empty, len) == 1 && EVP_MAC_final(x, fp, &n, FP_LEN) == 1 &&
	     n == FP_LEN;
	EVP_MAC_CTX_free(x);
	return ok;
}

static size_t bucket_of(const struct hmaccache *hc, const uint8_t fp[FP_LEN])
{
	uint64_t v;

	memcpy(&v, fp, sizeof(v));
	return (size_t)(v % hc->nb);
}

static struct hent *find_locked(struct hmaccache *hc, const uint8_t fp[FP_LEN], struct hent ***link)
{
	struct hent **l = &hc->b[bucket_of(hc, fp)];

	for (; *l != NULL; l = &(*l)->next)
		if (CRYPTO_memcmp((*l)->fp, fp, FP_LEN) == 0) {
			if (link != NULL)
				*link = l;
			return *l;
		}
	return NULL;
}

static void unlink_use_locked(struct hmaccache *hc, struct hent *e)
{
	if (e->newer != NULL)
		e->newer->older = e->older;
	else
		hc->newest = e->older;
	if (e->older != NULL)
		e->older->newer = e->newer;
	else
		hc->oldest = e->newer;
	e->newer = e->older = NULL;
}

static void push_newest_locked(struct hmaccache *hc, struct hent *e)
{
	e->older = hc->newest;
	e->newer = NULL;
	if (hc->newest != NULL)
		hc->newest->newer = e;
	hc->newest = e;
	if (hc->oldest == NULL)
		hc->oldest = e;
}

static void drop_locked(struct hmaccache *hc, struct hent *e)
{
	struct hent **l = NULL;

	if (find_locked(hc, e->fp, &l) == e)
		*l = e->next;
	unlink_use_locked(hc, e);
	kms_wipe(e, sizeof(*e));
	free(e);
	hc->n--;
}

kms_err hmaccache_new(size_t max, struct hmaccache **out)
{
	struct hmaccache *hc;
	uint8_t key[32];
	OSSL_PARAM params[2];
	kms_err rc = KMS_ERR_NOMEM;

	*out = NULL;
	if (max == 0)
		return KMS_OK;
	hc = calloc(1, sizeof(*hc));
	if (hc == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit HMAC cache");
	hc->max = max;
	hc->nb = max * 2 + 1;
	hc->b = calloc(hc->nb, sizeof(*hc->b));
	if (hc->b == NULL || pthread_mutex_init(&hc->mu, NULL) != 0) {
		free(hc->b);
		free(hc);
		return kms_errf(KMS_ERR_NOMEM, "audit HMAC cache");
	}
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (RAND_priv_bytes(key, sizeof(key)) != 1) {
		rc = kms_errf(KMS_ERR_INTERNAL, "audit HMAC cache: no random key");
		goto fail;
	}
	hc->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	hc->tmpl = hc->mac ? EVP_MAC_CTX_new(hc->mac) : NULL;
	if (hc->tmpl == NULL || EVP_MAC_init(hc->tmpl, key, sizeof(key), params) != 1) {
		rc = kms_errf(KMS_ERR_INTERNAL, "audit HMAC cache: HMAC-SHA256 unavailable");
		goto fail;
	}
	kms_wipe(key, sizeof(key));
	*out = hc;
	return KMS_OK;
fail:
	kms_wipe(key, sizeof(key));
	hmaccache_free(hc);
	return rc;
}

void hmaccache_clear(struct hmaccache *hc)
{
	if (hc == NULL)
		return;
	pthread_mutex_lock(&hc->mu);
	while (hc->oldest != NULL)
		drop_locked(hc, hc->oldest);
	pthread_mutex_unlock(&hc->mu);
}

void hmaccache_free(struct hmaccache *hc)
{
	if (hc == NULL)
		return;
	hmaccache_clear(hc);
	EVP_MAC_CTX_free(hc->tmpl);
	EVP_MAC_free(hc->mac);
	pthread_mutex_destroy(&hc->mu);
	free(hc->b);
	free(hc);
}

bool hmaccache_get(struct hmaccache *hc, const void *value, size_t len, uint8_t mac[HMACCACHE_MAC_LEN])
{
	uint8_t fp[FP_LEN];
	struct hent *e;

	if (hc == NULL)
		return false;
	if (!fingerprint(hc, value, len, fp))
		return false;
	pthread_mutex_lock(&hc->mu);
	e = find_locked(hc, fp, NULL);
	if (e != NULL) {
		memcpy(mac, e->mac, HMACCACHE_MAC_LEN);
		unlink_use_locked(hc, e);
		push_newest_locked(hc, e);
		hc->hits++;
	} else {
		hc->misses++;
	}
	pthread_mutex_unlock(&hc->mu);
	kms_wipe(fp, sizeof(fp));
	return e != NULL;
}

void hmaccache_put(struct hmaccache *hc, const void *value, size_t len, const uint8_t mac[HMACCACHE_MAC_LEN])
{
	uint8_t fp[FP_LEN];
	struct hent *e;
	size_t b;

	if (hc == NULL || !fingerprint(hc, value, len, fp))
		return;
	e = calloc(1, sizeof(*e));
	if (e == NULL) {
		kms_wipe(fp, sizeof(fp));
		return;
	}
	memcpy(e->fp, fp, FP_LEN);
	memcpy(e->mac, mac, HMACCACHE_MAC_LEN);
	b = bucket_of(hc, fp);
	kms_wipe(fp, sizeof(fp));
	pthread_mutex_lock(&hc->mu);
	if (find_locked(hc, e->fp, NULL) != NULL) { /* another thread was first */
		pthread_mutex_unlock(&hc->mu);
		kms_wipe(e, sizeof(*e));
		free(e);
		return;
	}
	while (hc->n >= hc->max && hc->oldest != NULL)
		drop_locked(hc, hc->oldest);
	e->next = hc->b[b];
	hc->b[b] = e;
	push_newest_locked(hc, e);
	hc->n++;
	pthread_mutex_unlock(&hc->mu);
}

void hmaccache_get_stats(struct hmaccache *hc, struct hmaccache_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (hc == NULL)
		return;
	pthread_mutex_lock(&hc->mu);
	st->hits = hc->hits;
	st->misses = hc->misses;
	st->entries = hc->n;
	pthread_mutex_unlock(&hc->mu);
}
