/* kms/core/rndpool: bytes from the source handed out in order and once each, across
 * threads; large requests straight from the source; a failed fill is followed by a
 * request for just the caller's bytes, and when that fails too it is the caller's
 * error, wipes its output and leaves the pool usable; a source that refuses the
 * chunk's size but not the caller's gets smaller fills, then none.
 *
 * The source writes 4-byte records (fill number, record number), so that every record
 * a caller receives names where it came from; all requests here are multiples of 4. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kms/core/rndpool.h"

struct src {
	pthread_mutex_t mu;
	uint32_t fills;	 /* calls so far; the next is fills + 1 */
	size_t last_n;	 /* the size of the last call */
	bool fail;
	size_t max_n;	 /* when not 0: larger requests are refused */
	uint32_t refused; /* refused calls so far */
	size_t refused_n; /* the size of the last refused call */
};

static kms_err fill(void *ctx, uint8_t *out, size_t n)
{
	struct src *s = ctx;
	uint32_t k;

	pthread_mutex_lock(&s->mu);
	k = ++s->fills;
	s->last_n = n;
	if (s->fail || (s->max_n > 0 && n > s->max_n)) {
		s->refused++;
		s->refused_n = n;
		pthread_mutex_unlock(&s->mu);
		memset(out, 0x5a, n); /* a source that left junk behind */
		return kms_errf(KMS_ERR_TOKEN, "test: fill refused");
	}
	pthread_mutex_unlock(&s->mu);
	assert_true(n % 4 == 0 && n / 4 <= 0xffff);
	for (size_t i = 0; i < n / 4; i++) {
		out[4 * i] = (uint8_t)(k >> 8);
		out[4 * i + 1] = (uint8_t)k;
		out[4 * i + 2] = (uint8_t)(i >> 8);
		out[4 * i + 3] = (uint8_t)i;
	}
	return KMS_OK;
}

static uint32_t rec(const uint8_t *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* every record in recs[0..n) distinct */
static void assert_distinct(uint32_t *recs, size_t n)
{
	qsort(recs, n, sizeof(*recs), cmp_u32);
	for (size_t i = 1; i < n; i++)
		if (recs[i] == recs[i - 1])
			fail_msg("record %08x handed out twice", recs[i]);
}

static void test_order_and_once(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rndpool *p;
	uint8_t b[44];
	enum { N = 600 }; /* 26,400 bytes: many chunks */
	const uint32_t per_chunk = RNDPOOL_CHUNK / 44, fills = (N + per_chunk - 1) / per_chunk;
	static uint32_t recs[N * 11];
	uint32_t expect_fill = 0, expect_rec = RNDPOOL_CHUNK / 4;

	(void)state;
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	assert_int_equal(s.fills, 0); /* nothing asked before the first request */
	for (size_t r = 0; r < N; r++) {
		if (RNDPOOL_CHUNK / 4 - expect_rec < 11) {
			/* a new chunk; the old one's tail (fewer than 44 bytes) is never used */
			expect_fill++;
			expect_rec = 0;
		}
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
		for (size_t i = 0; i < 11; i++) {
			uint32_t v = rec(b + 4 * i);

			recs[r * 11 + i] = v;
			assert_int_equal(v, expect_fill << 16 | expect_rec);
			expect_rec++;
		}
		assert_int_equal(s.last_n, RNDPOOL_CHUNK);
	}
	assert_true(fills > 1);
	assert_int_equal(s.fills, fills);
	assert_int_equal(expect_fill, fills);
	assert_distinct(recs, N * 11);
	assert_int_equal(rndpool_get(p, b, 0), KMS_OK);
	assert_int_equal(rndpool_get(p, NULL, 0), KMS_OK);
	assert_int_not_equal(rndpool_get(p, NULL, 4), KMS_OK);
	assert_int_not_equal(rndpool_get(NULL, b, 4), KMS_OK);
	assert_int_equal(s.fills, fills);
	rndpool_free(p);
	rndpool_free(NULL);
}

static void test_large_goes_direct(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rndpool *p;
	uint8_t small[12], big[RNDPOOL_DIRECT + 4];

	(void)state;
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	assert_int_equal(rndpool_get(p, small, sizeof(small)), KMS_OK);
	assert_int_equal(s.fills, 1);
	assert_int_equal(rndpool_get(p, big, sizeof(big)), KMS_OK);
	assert_int_equal(s.fills, 2);
	assert_int_equal(s.last_n, sizeof(big));
	assert_int_equal(rec(big), 2u << 16);
	/* the pool went on where it was */
	assert_int_equal(rndpool_get(p, small, sizeof(small)), KMS_OK);
	assert_int_equal(s.fills, 2);
	assert_int_equal(rec(small), (1u << 16) | 3);
	rndpool_free(p);
}

static void test_fill_error(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct rndpool *p;
	uint8_t b[76], zero[RNDPOOL_DIRECT + 4] = {0}, big[RNDPOOL_DIRECT + 4];

	(void)state;
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	s.fail = true;
	memset(b, 0xaa, sizeof(b));
	/* the fill, then a request for the 76 bytes alone: both refused */
	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_ERR_TOKEN);
	assert_memory_equal(b, zero, sizeof(b)); /* no junk from the failed source */
	assert_int_equal(s.fills, 2);
	assert_int_equal(s.last_n, sizeof(b));
	memset(big, 0xaa, sizeof(big));
	assert_int_equal(rndpool_get(p, big, sizeof(big)), KMS_ERR_TOKEN);
	assert_memory_equal(big, zero, sizeof(big));
	s.fail = false;
	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
	assert_int_equal(s.last_n, RNDPOOL_CHUNK); /* a refusal of both keeps the chunk */
	assert_int_equal(rec(b), 4u << 16);
	/* the rest of this chunk: RNDPOOL_CHUNK / 76 requests in all, a tail left over */
	assert_true(RNDPOOL_CHUNK % sizeof(b) != 0);
	for (int i = 1; i < (int)(RNDPOOL_CHUNK / sizeof(b)); i++) {
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
		assert_int_equal(rec(b) >> 16, 4);
	}
	s.fail = true;
	memset(b, 0xaa, sizeof(b));
	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_ERR_TOKEN);
	assert_memory_equal(b, zero, sizeof(b));
	assert_int_equal(s.fills, 6);
	s.fail = false;
	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
	assert_int_equal(rec(b), 7u << 16); /* a fresh chunk: the tail was not used */
	rndpool_free(p);
}

/* A source that refuses requests above 100 bytes (as some HSM front ends cap random
 * requests): every request is still served, from the source, in order and once; the
 * fills halve until one is accepted (64 bytes) and stay there. One that refuses even
 * that, but not 44 bytes: no more fills, every request asks for its own bytes. */
static void test_refused_size_shrinks_the_chunk(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER, .max_n = 100};
	struct rndpool *p;
	uint8_t b[44], c[12];
	uint32_t fills;

	(void)state;
	assert_true(RNDPOOL_CHUNK == 1024 && RNDPOOL_MIN_CHUNK == 64);
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	/* 1024, 512, 256 and 128 refused, each followed by a direct 44 that works */
	for (uint32_t i = 0; i < 4; i++) {
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
		assert_int_equal(s.fills, 2 * i + 2);
		assert_int_equal(s.last_n, sizeof(b));
		assert_int_equal(rec(b), (2 * i + 2) << 16);
	}
	/* 64 is accepted: 44 + 12 come from it, the next 44 from a new chunk of 64 */
	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
	assert_int_equal(s.fills, 9);
	assert_int_equal(s.last_n, 64);
	assert_int_equal(rec(b), 9u << 16);
	assert_int_equal(rndpool_get(p, c, sizeof(c)), KMS_OK);
	assert_int_equal(rec(c), (9u << 16) | 11);
	assert_int_equal(s.fills, 9);
	for (uint32_t i = 0; i < 20; i++) {
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
		assert_int_equal(s.fills, 10 + i);
		assert_int_equal(s.last_n, 64);
		assert_int_equal(rec(b), (10 + i) << 16);
	}
	rndpool_free(p);

	s = (struct src){.mu = PTHREAD_MUTEX_INITIALIZER, .max_n = 48};
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	for (uint32_t i = 0; i < 5; i++) /* 1024 .. 64 refused */
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
	assert_int_equal(s.fills, 10);
	fills = s.fills;
	for (uint32_t i = 0; i < 10; i++) {
		assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
		assert_int_equal(s.fills, ++fills);
		assert_int_equal(s.last_n, sizeof(b));
		assert_int_equal(rec(b), fills << 16);
	}
	rndpool_free(p);
}

/* One 44-byte request; it must come from the newest call to the source. */
static void get44(struct rndpool *p, struct src *s)
{
	uint8_t b[44];

	assert_int_equal(rndpool_get(p, b, sizeof(b)), KMS_OK);
	assert_int_equal(rec(b) >> 16, s->fills);
}

/* A reduced chunk is tried at twice its size after RNDPOOL_REGROW rounds: a passing
 * refusal is undone, a lasting cap costs one refused call per RNDPOOL_REGROW rounds
 * and changes nothing. */
static void test_reduced_chunk_grows_back(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER, .max_n = 600};
	struct rndpool *p;
	uint32_t f0;

	(void)state;
	assert_true(RNDPOOL_CHUNK == 1024 && RNDPOOL_MIN_CHUNK == 64);
	/* a passing refusal of 1024: the chunk halves */
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	get44(p, &s);
	assert_int_equal(s.refused, 1);
	assert_int_equal(s.last_n, 44);
	s.max_n = 0;
	f0 = s.fills;
	/* RNDPOOL_REGROW fills of 512, then one of 1024, which is the chunk from then on */
	while (s.last_n != RNDPOOL_CHUNK) {
		get44(p, &s);
		assert_true(s.last_n == 512 || s.last_n == RNDPOOL_CHUNK);
		assert_true(s.fills - f0 <= RNDPOOL_REGROW + 1);
	}
	assert_int_equal(s.fills - f0, RNDPOOL_REGROW + 1);
	f0 = s.fills;
	for (uint32_t i = 0; i < (RNDPOOL_REGROW + 10) * (RNDPOOL_CHUNK / 44); i++)
		get44(p, &s);
	assert_int_equal(s.last_n, RNDPOOL_CHUNK);
	assert_int_equal(s.fills - f0, RNDPOOL_REGROW + 10);
	assert_int_equal(s.refused, 1);
	rndpool_free(p);

	/* a lasting cap of 100 bytes: the chunk stays 64; every RNDPOOL_REGROW fills, one
	 * refused try of 128, the caller's 44 bytes asked alone, no change */
	s = (struct src){.mu = PTHREAD_MUTEX_INITIALIZER, .max_n = 100};
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	for (uint32_t i = 0; i < 5; i++) /* 1024 .. 128 refused, then 64 taken */
		get44(p, &s);
	assert_int_equal(s.refused, 4);
	assert_int_equal(s.last_n, 64);
	for (uint32_t round = 0; round < 3; round++) {
		for (uint32_t i = 1; i < RNDPOOL_REGROW; i++) { /* one chunk of 64 per request */
			get44(p, &s);
			assert_int_equal(s.last_n, 64);
		}
		f0 = s.fills;
		get44(p, &s); /* the try */
		assert_int_equal(s.fills - f0, 2);
		assert_int_equal(s.refused, 5 + round);
		assert_int_equal(s.refused_n, 128);
		assert_int_equal(s.last_n, 44);
		get44(p, &s); /* and 64 again */
		assert_int_equal(s.last_n, 64);
	}
	rndpool_free(p);

	/* a cap of 48 bytes: every request alone; every RNDPOOL_REGROW of them, a refused
	 * try of 64 */
	s = (struct src){.mu = PTHREAD_MUTEX_INITIALIZER, .max_n = 48};
	assert_int_equal(rndpool_new(fill, &s, &p), KMS_OK);
	for (uint32_t i = 0; i < 5; i++) /* 1024 .. 64 refused */
		get44(p, &s);
	assert_int_equal(s.refused, 5);
	f0 = s.fills;
	for (uint32_t i = 0; i < RNDPOOL_REGROW; i++)
		get44(p, &s);
	assert_int_equal(s.fills - f0, RNDPOOL_REGROW);
	assert_int_equal(s.refused, 5);
	get44(p, &s);
	assert_int_equal(s.refused, 6);
	assert_int_equal(s.refused_n, 64);
	assert_int_equal(s.fills - f0, RNDPOOL_REGROW + 2);
	/* and the cap lifted: the next try takes 64, later ones 128, 256, ... */
	s.max_n = 0;
	while (s.last_n < RNDPOOL_CHUNK)
		get44(p, &s);
	assert_int_equal(s.refused, 6);
	rndpool_free(p);
}

#define THREADS 4
#define PER_THREAD 3000

struct racer {
	struct rndpool *p;
	uint32_t *recs;
	size_t n;
	kms_err rc;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	static const size_t sizes[] = {12, 44, 76};
	uint8_t b[76];

	for (size_t i = 0; i < PER_THREAD; i++) {
		size_t n = sizes[i % 3];

		if ((r->rc = rndpool_get(r->p, b, n)) != KMS_OK)
			return NULL;
		for (size_t j = 0; j < n / 4; j++)
			r->recs[r->n++] = rec(b + 4 * j);
	}
	return NULL;
}

static void test_threads_get_disjoint_bytes(void **state)
{
	struct src s = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct racer r[THREADS];
	pthread_t t[THREADS];
	uint32_t *all;
	size_t total = 0;

	(void)state;
	memset(r, 0, sizeof(r));
	all = calloc((size_t)THREADS * PER_THREAD * 19, sizeof(*all));
	assert_non_null(all);
	assert_int_equal(rndpool_new(fill, &s, &r[0].p), KMS_OK);
	for (int i = 0; i < THREADS; i++) {
		r[i].p = r[0].p;
		r[i].recs = all + (size_t)i * PER_THREAD * 19;
		assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(r[i].rc, KMS_OK);
	}
	/* compact and check: no record twice, whichever thread got it */
	for (int i = 0; i < THREADS; i++) {
		memmove(all + total, r[i].recs, r[i].n * sizeof(*all));
		total += r[i].n;
	}
	assert_int_equal(total, (size_t)THREADS * PER_THREAD / 3 * (3 + 11 + 19));
	assert_distinct(all, total);
	rndpool_free(r[0].p);
	free(all);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_and_once),
		cmocka_unit_test(test_large_goes_direct),
		cmocka_unit_test(test_fill_error),
		cmocka_unit_test(test_refused_size_shrinks_the_chunk),
		cmocka_unit_test(test_reduced_chunk_grows_back),
		cmocka_unit_test(test_threads_get_disjoint_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
