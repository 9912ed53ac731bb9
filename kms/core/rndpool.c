/* Token randomness handed out in small pieces. See rndpool.h.
 *
 * Two secret buffers of RNDPOOL_CHUNK bytes: `cur`, whose bytes [off, len) are unused,
 * and `spare`, filled (with `chunk` bytes) by the one thread that holds `filling`.
 * Bytes are wiped in `cur` as they are handed out, so a used byte is never in the
 * pool. */
#include "kms/core/rndpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/log.h"
#include "kms/base/secret.h"

struct rndpool {
	pthread_mutex_t mu;
	rndpool_fill_fn fill;
	void *ctx;
	uint8_t *cur, *spare;
	size_t off, len; /* cur[off..len) unused */
	size_t chunk;	 /* what the next fill asks for; 0: every request goes direct */
	unsigned since;	 /* fills (or direct draws, chunk 0) at a reduced chunk since the last try
			  * of a larger one */
	bool filling;	 /* a thread is filling spare, outside mu */
};

kms_err rndpool_new(rndpool_fill_fn fill, void *ctx, struct rndpool **out)
{
	struct rndpool *p;

	if (fill == NULL || out == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "rndpool: bad arguments");
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return kms_errf(KMS_ERR_NOMEM, "rndpool");
	p->cur = kms_secret_alloc(RNDPOOL_CHUNK);
	p->spare = kms_secret_alloc(RNDPOOL_CHUNK);
	if (p->cur == NULL || p->spare == NULL) {
		kms_secret_free(p->cur);
		kms_secret_free(p->spare);
		free(p);
		return kms_errf(KMS_ERR_NOMEM, "rndpool");
	}
	pthread_mutex_init(&p->mu, NULL);
	p->fill = fill;
	p->ctx = ctx;
	p->off = p->len = RNDPOOL_CHUNK; /* empty: the first request fills it */
	p->chunk = RNDPOOL_CHUNK;
	*out = p;
	return KMS_OK;
}

void rndpool_free(struct rndpool *p)
{
	if (p == NULL)
		return;
	kms_secret_free(p->cur);
	kms_secret_free(p->spare);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* Takes n bytes from cur into out; mu held, n <= what is left. */
static void take_locked(struct rndpool *p, uint8_t *out, size_t n)
{
	memcpy(out, p->cur + p->off, n);
	kms_wipe(p->cur + p->off, n);
	p->off += n;
}

static kms_err direct(struct rndpool *p, uint8_t *out, size_t n)
{
	kms_err rc = p->fill(p->ctx, out, n);

	if (rc != KMS_OK)
		kms_wipe(out, n);
	return rc;
}

kms_err rndpool_get(struct rndpool *p, uint8_t *out, size_t n)
{
	char why[160];
	uint8_t *fresh;
	size_t want, smaller;
	bool trying = false;
	kms_err rc;

	if (p == NULL || (out == NULL && n > 0))
		return kms_errf(KMS_ERR_INTERNAL, "rndpool: bad arguments");
	if (n == 0)
		return KMS_OK;
	if (n > RNDPOOL_DIRECT)
		return direct(p, out, n);
	pthread_mutex_lock(&p->mu);
	if (p->len - p->off >= n) {
		take_locked(p, out, n);
		pthread_mutex_unlock(&p->mu);
		return KMS_OK;
	}
	want = p->chunk;
	if (!p->filling && p->chunk < RNDPOOL_CHUNK && p->since >= RNDPOOL_REGROW) {
		/* reduced a while ago: a passing fault may have done it, so try twice the size */
		want = p->chunk > 0 ? p->chunk * 2 : RNDPOOL_MIN_CHUNK;
		trying = want >= n;
	}
	if (p->filling || want < n) {
		/* another thread is at the token for the next chunk: do not wait for it (or
		 * chunks are too small for this request, or off) */
		if (!p->filling && p->chunk < RNDPOOL_CHUNK)
			p->since++;
		pthread_mutex_unlock(&p->mu);
		return direct(p, out, n);
	}
	p->filling = true;
	if (trying)
		p->since = 0;
	fresh = p->spare;
	pthread_mutex_unlock(&p->mu);

	rc = p->fill(p->ctx, fresh, want);

	if (rc != KMS_OK) {
		kms_wipe(fresh, want);
		/* Perhaps the token refuses random requests this large (some HSM front ends
		 * cap them): ask for just what this request needs. If that works, later
		 * fills ask for half as much, down to RNDPOOL_MIN_CHUNK, then not at all. */
		snprintf(why, sizeof(why), "%s", kms_err_detail(rc));
		rc = direct(p, out, n);
		smaller = want / 2 >= RNDPOOL_MIN_CHUNK ? want / 2 : 0;
		pthread_mutex_lock(&p->mu);
		p->filling = false; /* only the filling thread changes chunk */
		if (rc == KMS_OK)
			p->chunk = smaller; /* after a try of a larger size: the size before it */
		pthread_mutex_unlock(&p->mu);
		if (rc == KMS_OK && trying)
			kms_debug("token: a random request of %zu bytes still fails (%s)", want, why);
		else if (rc == KMS_OK)
			kms_warn("token: a random request of %zu bytes failed (%s) where one of %zu "
				 "bytes worked: asking for %s from now on",
				 want, why, n, smaller > 0 ? "half as much" : "each request's bytes alone");
		return rc;
	}
	pthread_mutex_lock(&p->mu);
	p->filling = false;
	if (trying)
		p->chunk = want;
	else if (p->chunk < RNDPOOL_CHUNK)
		p->since++;
	/* the rest of the old chunk (fewer than n bytes) is wiped, never handed out */
	kms_wipe(p->cur + p->off, p->len - p->off);
	p->spare = p->cur;
	p->cur = fresh;
	p->off = 0;
	p->len = want;
	take_locked(p, out, n);
	pthread_mutex_unlock(&p->mu);
	if (trying)
		kms_info("token: random requests of %zu bytes work again: asking for %zu at a time", want, want);
	return KMS_OK;
}
