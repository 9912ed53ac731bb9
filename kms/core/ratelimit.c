/* Token buckets (contract in ratelimit.h). */
#include "kms/core/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/op.h"

#define RL_STRIPES 64
#define RL_CHAINS 4096 /* per limiter; a power of two */
#define RL_NAME_MAX 200

struct bucket {
	struct bucket *next;
	double tokens;
	int64_t last_ms;
	double full_after_ms; /* burst / rate in ms: idle this long, it is full again */
	char name[];
};

struct ratelimit {
	pthread_mutex_t mu[RL_STRIPES];
	struct bucket *chain[RL_CHAINS];
	size_t n, max; /* n under every stripe's lock for changes; read racily for the check */
	pthread_mutex_t count_mu;
};

static uint32_t name_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

kms_err ratelimit_new(size_t max_entries, struct ratelimit **out)
{
	struct ratelimit *rl = calloc(1, sizeof(*rl));

	*out = NULL;
	if (rl == NULL)
		return kms_errf(KMS_ERR_NOMEM, "rate limiter");
	for (size_t i = 0; i < RL_STRIPES; i++)
		pthread_mutex_init(&rl->mu[i], NULL);
	pthread_mutex_init(&rl->count_mu, NULL);
	rl->max = max_entries ? max_entries : 1;
	*out = rl;
	return KMS_OK;
}

void ratelimit_free(struct ratelimit *rl)
{
	if (rl == NULL)
		return;
	for (size_t i = 0; i < RL_CHAINS; i++) {
		struct bucket *b = rl->chain[i], *nx;
		for (; b != NULL; b = nx) {
			nx = b->next;
			free(b);
		}
	}
	for (size_t i = 0; i < RL_STRIPES; i++)
		pthread_mutex_destroy(&rl->mu[i]);
	pthread_mutex_destroy(&rl->count_mu);
	free(rl);
}

static void refill(struct bucket *b, double rate, double burst, int64_t now_ms)
{
	if (now_ms > b->last_ms) {
		b->tokens += rate * (double)(now_ms - b->last_ms) / 1000.0;
		if (b->tokens > burst)
			b->tokens = burst;
		b->last_ms = now_ms;
	}
}

/* Drops buckets idle long enough to be full again, from every chain. */
static void sweep(struct ratelimit *rl, int64_t now_ms)
{
	for (size_t s = 0; s < RL_STRIPES; s++) {
		pthread_mutex_lock(&rl->mu[s]);
		for (size_t c = s; c < RL_CHAINS; c += RL_STRIPES) {
			struct bucket **pp = &rl->chain[c];
			while (*pp != NULL) {
				struct bucket *b = *pp;
				if ((double)(now_ms - b->last_ms) >= b->full_after_ms) {
					*pp = b->next;
					free(b);
					pthread_mutex_lock(&rl->count_mu);
					rl->n--;
					pthread_mutex_unlock(&rl->count_mu);
				} else {
					pp = &b->next;
				}
			}
		}
		pthread_mutex_unlock(&rl->mu[s]);
	}
}

static unsigned wait_s(double missing, double rate)
{
	double s = ceil(missing / rate);

	return s < 1 ? 1 : s > 86400 ? 86400 : (unsigned)s;
}

static unsigned bucket_op(struct ratelimit *rl, const char *name, double rate, double burst,
			  int64_t now_ms, bool take)
{
	uint32_t h = name_hash(name);
	size_t c = h & (RL_CHAINS - 1), s = c % RL_STRIPES, len = strnlen(name, RL_NAME_MAX);
	struct bucket *b;
	unsigned wait = 0;
	bool full;

	if (rate <= 0)
		return 0;
	if (burst < 1)
		burst = 1;
	pthread_mutex_lock(&rl->mu[s]);
	for (b = rl->chain[c]; b != NULL; b = b->next)
		if (strncmp(b->name, name, len) == 0 && b->name[len] == '\0')
			break;
	if (b == NULL && !take) {
		/* no bucket: a full one, unless the table is full of busy names, in which
		 * case a name it cannot track is limited (as ratelimit_take would) */
		pthread_mutex_unlock(&rl->mu[s]);
		pthread_mutex_lock(&rl->count_mu);
		full = rl->n >= rl->max;
		pthread_mutex_unlock(&rl->count_mu);
		if (!full)
			return 0;
		sweep(rl, now_ms);
		pthread_mutex_lock(&rl->count_mu);
		full = rl->n >= rl->max;
		pthread_mutex_unlock(&rl->count_mu);
		return full ? wait_s(1, rate) : 0;
	}
	if (b == NULL) {
		pthread_mutex_lock(&rl->count_mu);
		full = rl->n >= rl->max;
		pthread_mutex_unlock(&rl->count_mu);
		if (full) {
			pthread_mutex_unlock(&rl->mu[s]);
			sweep(rl, now_ms);
			pthread_mutex_lock(&rl->mu[s]);
			pthread_mutex_lock(&rl->count_mu);
			full = rl->n >= rl->max;
			pthread_mutex_unlock(&rl->count_mu);
			if (full) {
				pthread_mutex_unlock(&rl->mu[s]);
				return wait_s(1, rate); /* the table is full of busy names */
			}
		}
		b = malloc(sizeof(*b) + len + 1);
		if (b == NULL) {
			pthread_mutex_unlock(&rl->mu[s]);
			return wait_s(1, rate);
		}
		memcpy(b->name, name, len);
		b->name[len] = '\0';
		b->tokens = burst;
		b->last_ms = now_ms;
		b->full_after_ms = burst / rate * 1000.0;
		b->next = rl->chain[c];
		rl->chain[c] = b;
		pthread_mutex_lock(&rl->count_mu);
		rl->n++;
		pthread_mutex_unlock(&rl->count_mu);
	}
	refill(b, rate, burst, now_ms);
	b->full_after_ms = burst / rate * 1000.0;
	if (b->tokens >= 1) {
		if (take)
			b->tokens -= 1;
	} else {
		wait = wait_s(1 - b->tokens, rate);
	}
	pthread_mutex_unlock(&rl->mu[s]);
	return wait;
}

unsigned ratelimit_take(struct ratelimit *rl, const char *name, double rate, double burst,
			int64_t now_ms)
{
	return bucket_op(rl, name, rate, burst, now_ms, true);
}

unsigned ratelimit_peek(struct ratelimit *rl, const char *name, double rate, double burst,
			int64_t now_ms)
{
	return bucket_op(rl, name, rate, burst, now_ms, false);
}

size_t ratelimit_size(struct ratelimit *rl)
{
	size_t n;

	pthread_mutex_lock(&rl->count_mu);
	n = rl->n;
	pthread_mutex_unlock(&rl->count_mu);
	return n;
}

const char *ratelimit_parse_ops(const char *spec, double *rate, double *burst, size_t n_ops)
{
	static _Thread_local char why[160];
	const char *p = spec;

	for (size_t i = 0; i < n_ops; i++)
		rate[i] = burst[i] = 0;
	while (*p != '\0') {
		const char *eq = strchr(p, '='), *end = strchr(p, ',');
		char op[64], *q;
		double r, b = 0;
		size_t i, n;

		if (end == NULL)
			end = p + strlen(p);
		if (eq == NULL || eq > end || eq == p || (size_t)(eq - p) >= sizeof(op)) {
			snprintf(why, sizeof(why), "expected op=rate[:burst] at \"%.40s\"", p);
			return why;
		}
		n = (size_t)(eq - p);
		memcpy(op, p, n);
		op[n] = '\0';
		for (i = 1; i < n_ops; i++)
			if (strcmp(kms_op_name((enum kms_op)i), op) == 0)
				break;
		if (i >= n_ops) {
			snprintf(why, sizeof(why), "unknown operation \"%s\"", op);
			return why;
		}
		r = strtod(eq + 1, &q);
		if (q == eq + 1 || !(r > 0 && r <= 1e6)) {
			snprintf(why, sizeof(why), "%s: rate must be a number of requests a second, > 0", op);
			return why;
		}
		if (*q == ':') {
			const char *bs = q + 1;
			b = strtod(bs, &q);
			if (q == bs || !(b >= 1 && b <= 1e7)) {
				snprintf(why, sizeof(why), "%s: burst must be >= 1", op);
				return why;
			}
		}
		if (q != end) {
			snprintf(why, sizeof(why), "%s: unexpected \"%.20s\"", op, q);
			return why;
		}
		rate[i] = r;
		burst[i] = b > 0 ? b : 2 * r;
		p = *end == ',' ? end + 1 : end;
	}
	return NULL;
}
