/* libkmsclient's data-key cache (kms/client/dkcache.c) with a fake clock: each bound
 * (age, messages, bytes) evicts; a DEK is never served under another id (tenant, key,
 * context); every DEK is wiped before it is freed (eviction, replacement, capacity, free),
 * seen through the test hook; the bounds hold under threads. And kmsc_open refuses a
 * cache without all three bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "include/kmsclient.h"
#include "kms/client/dkcache.h"

static uint64_t fake_now;
static size_t wiped, wiped_dirty;

static uint64_t fake_clock(void *arg)
{
	(void)arg;
	return fake_now;
}

static void on_wipe(const uint8_t *dek, size_t n, void *arg)
{
	(void)arg;
	wiped++;
	for (size_t i = 0; i < n; i++)
		if (dek[i] != 0) {
			wiped_dirty++;
			break;
		}
}

static struct kmsc_cache *mk(uint64_t age, uint64_t msgs, uint64_t bytes, size_t entries)
{
	struct kmsc_cache_limits lim = {age, msgs, bytes, entries, fake_clock, NULL};
	struct kmsc_cache *c;

	assert_int_equal(kmsc_cache_new(&lim, &c), 0);
	return c;
}

static int setup(void **state)
{
	(void)state;
	fake_now = 1000;
	wiped = wiped_dirty = 0;
	kmsc_cache_set_wipe_hook(on_wipe, NULL);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	assert_int_equal(wiped_dirty, 0);
	kmsc_cache_set_wipe_hook(NULL, NULL);
	return 0;
}

static const uint8_t DEK_A[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
				  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t DEK_B[32] = {0xbb, 0xbb, 0xbb, 0xbb};
#define ID(s) s, sizeof(s) - 1

static void test_bounds_required(void **state)
{
	struct kmsc_cache_limits lim = {1, 1, 1, 1, NULL, NULL};
	struct kmsc_cache *c;

	(void)state;
	for (int i = 0; i < 4; i++) {
		struct kmsc_cache_limits l = lim;

		if (i == 0)
			l.max_age_ms = 0;
		if (i == 1)
			l.max_messages = 0;
		if (i == 2)
			l.max_bytes = 0;
		if (i == 3)
			l.max_entries = 0;
		assert_int_equal(kmsc_cache_new(&l, &c), -1);
		assert_null(c);
	}
}

static void test_open_requires_bounds(void **state)
{
	struct kmsc_config cfg = {.addr = "https://127.0.0.1:1", .token = "t", .token_len = 1,
				  .cache = 1, .cache_max_age_ms = 1000, .cache_max_messages = 10,
				  .cache_max_bytes = 1000};
	struct kmsc *k = NULL;

	(void)state;
	for (int i = 0; i < 3; i++) {
		struct kmsc_config c2 = cfg;

		if (i == 0)
			c2.cache_max_age_ms = 0;
		if (i == 1)
			c2.cache_max_messages = 0;
		if (i == 2)
			c2.cache_max_bytes = 0;
		assert_int_equal(kmsc_open(&c2, &k), KMSC_ERR_INVALID);
		assert_null(k);
		assert_non_null(strstr(kmsc_last_message(), "three bounds"));
	}
	assert_int_equal(kmsc_open(&cfg, &k), KMSC_OK);
	kmsc_close(k);
	cfg.cache = 0;
	cfg.cache_max_age_ms = 0; /* bounds do not matter with the cache off */
	assert_int_equal(kmsc_open(&cfg, &k), KMSC_OK);
	kmsc_close(k);
}

static void test_age_evicts(void **state)
{
	struct kmsc_cache *c = mk(5000, 100, 1 << 20, 8);
	uint8_t dek[32];
	char *w = NULL;

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("Et\0k\0{}"), DEK_A, "vault:v1:AAAA", 10), 0);
	fake_now += 4999;
	assert_int_equal(kmsc_cache_take(c, ID("Et\0k\0{}"), 10, dek, &w), 1);
	assert_memory_equal(dek, DEK_A, 32);
	assert_string_equal(w, "vault:v1:AAAA");
	free(w);
	assert_int_equal(wiped, 0);
	fake_now += 1; /* exactly max age: too old */
	assert_int_equal(kmsc_cache_take(c, ID("Et\0k\0{}"), 10, dek, &w), 0);
	assert_null(w);
	assert_int_equal(wiped, 1);
	assert_int_equal(kmsc_cache_count(c), 0);
	kmsc_cache_free(c);
}

static void test_clock_backwards_evicts(void **state)
{
	struct kmsc_cache *c = mk(5000, 100, 1 << 20, 8);
	uint8_t dek[32];

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_A, "vault:v1:A", 1), 0);
	fake_now -= 1;
	assert_int_equal(kmsc_cache_take(c, ID("x"), 1, dek, NULL), 0);
	assert_int_equal(wiped, 1);
	kmsc_cache_free(c);
}

static void test_messages_evict(void **state)
{
	struct kmsc_cache *c = mk(60000, 3, 1 << 20, 8);
	uint8_t dek[32];

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_A, "vault:v1:A", 1), 0); /* use 1 */
	assert_int_equal(kmsc_cache_take(c, ID("x"), 1, dek, NULL), 1);         /* use 2 */
	assert_int_equal(wiped, 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 1, dek, NULL), 1); /* use 3: spent, wiped now */
	assert_int_equal(wiped, 1);
	assert_int_equal(kmsc_cache_count(c), 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 1, dek, NULL), 0); /* a 4th use never happens */
	kmsc_cache_free(c);

	/* max_messages 1: nothing is ever reused, so nothing is kept */
	c = mk(60000, 1, 1 << 20, 8);
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_A, "vault:v1:A", 1), 0);
	assert_int_equal(kmsc_cache_count(c), 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 1, dek, NULL), 0);
	kmsc_cache_free(c);
}

static void test_bytes_evict(void **state)
{
	struct kmsc_cache *c = mk(60000, 100, 100, 8);
	uint8_t dek[32];

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_A, "vault:v1:A", 40), 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 40, dek, NULL), 1); /* 80 */
	assert_int_equal(kmsc_cache_take(c, ID("x"), 21, dek, NULL), 0); /* 101 > 100: evicted */
	assert_int_equal(wiped, 1);
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_B, "vault:v1:B", 60), 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 40, dek, NULL), 1); /* exactly 100: spent */
	assert_memory_equal(dek, DEK_B, 32);
	assert_int_equal(wiped, 2);
	assert_int_equal(kmsc_cache_count(c), 0);
	/* one message at or over the bound is never cached */
	assert_int_equal(kmsc_cache_put(c, ID("x"), DEK_A, "vault:v1:A", 100), 0);
	assert_int_equal(kmsc_cache_count(c), 0);
	assert_int_equal(kmsc_cache_take(c, ID("x"), 0, dek, NULL), 0);
	kmsc_cache_free(c);
}

static void test_never_across_ids(void **state)
{
	struct kmsc_cache *c = mk(60000, 100, 1 << 20, 16);
	static const struct {
		const char *id;
		size_t len;
	} others[] = {
		{ID("Et2\0k\0{}")},                       /* another tenant */
		{ID("Et\0k2\0{}")},                       /* another key */
		{ID("Et\0k\0{\"field\":\"name\"}")},      /* another context */
		{ID("Et\0k\0{\"field\":\"birthDate\"}")}, /* another context value */
		{ID("Et\0k\0")},                          /* a prefix of the id */
		{ID("Et\0k\0{}\0")},                      /* the id and more */
		{ID("Dt\0k\0{}")},                        /* the decrypt side */
	};
	uint8_t dek[32];

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("Et\0k\0{}"), DEK_A, "vault:v1:A", 1), 0);
	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
		assert_int_equal(kmsc_cache_take(c, others[i].id, others[i].len, 1, dek, NULL), 0);
	/* each gets its own DEK, and the first is still the first */
	assert_int_equal(kmsc_cache_put(c, ID("Et\0k\0{\"field\":\"name\"}"), DEK_B, "vault:v1:B", 1), 0);
	assert_int_equal(kmsc_cache_take(c, ID("Et\0k\0{}"), 1, dek, NULL), 1);
	assert_memory_equal(dek, DEK_A, 32);
	assert_int_equal(kmsc_cache_take(c, ID("Et\0k\0{\"field\":\"name\"}"), 1, dek, NULL), 1);
	assert_memory_equal(dek, DEK_B, 32);
	assert_int_equal(wiped, 0);
	kmsc_cache_free(c);
	assert_int_equal(wiped, 2); /* wiped at free */
}

static void test_capacity_and_replace_wipe(void **state)
{
	struct kmsc_cache *c = mk(60000, 100, 1 << 20, 2);
	uint8_t dek[32];

	(void)state;
	assert_int_equal(kmsc_cache_put(c, ID("a"), DEK_A, "vault:v1:A", 1), 0);
	fake_now++;
	assert_int_equal(kmsc_cache_put(c, ID("b"), DEK_B, "vault:v1:B", 1), 0);
	fake_now++;
	assert_int_equal(kmsc_cache_put(c, ID("c"), DEK_B, "vault:v1:C", 1), 0); /* "a" goes */
	assert_int_equal(wiped, 1);
	assert_int_equal(kmsc_cache_count(c), 2);
	assert_int_equal(kmsc_cache_take(c, ID("a"), 1, dek, NULL), 0);
	assert_int_equal(kmsc_cache_put(c, ID("b"), DEK_A, "vault:v1:B2", 1), 0); /* replaces "b" */
	assert_int_equal(wiped, 2);
	assert_int_equal(kmsc_cache_take(c, ID("b"), 1, dek, NULL), 1);
	assert_memory_equal(dek, DEK_A, 32);
	kmsc_cache_free(c);
	assert_int_equal(wiped, 4);
}

/* Threads share a cache with max_messages 7: whichever thread puts a DEK, it is served at
 * most 7 times in all. Each put carries a distinct DEK (its first byte numbers it). */
#define THREADS 4
#define ROUNDS 2000
static struct kmsc_cache *shared;
static unsigned served[THREADS * ROUNDS + 1];
static unsigned next_dek = 1;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
	uint8_t dek[32] = {0};

	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		int hit = kmsc_cache_take(shared, ID("x"), 1, dek, NULL);
		unsigned id;

		if (hit == 1) {
			memcpy(&id, dek, sizeof(id));
			pthread_mutex_lock(&mu);
			served[id]++;
			pthread_mutex_unlock(&mu);
			continue;
		}
		pthread_mutex_lock(&mu);
		id = next_dek++;
		served[id]++;
		pthread_mutex_unlock(&mu);
		memset(dek, 0, sizeof(dek));
		memcpy(dek, &id, sizeof(id));
		if (kmsc_cache_put(shared, ID("x"), dek, "vault:v1:A", 1) != 0)
			abort();
	}
	return NULL;
}

static void test_threads(void **state)
{
	pthread_t t[THREADS];

	(void)state;
	shared = mk(60000, 7, 1 << 20, 4);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, worker, NULL), 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	kmsc_cache_free(shared);
	for (unsigned i = 1; i < next_dek; i++)
		assert_true(served[i] >= 1 && served[i] <= 7);
	assert_true(next_dek - 1 >= THREADS * ROUNDS / 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bounds_required, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_requires_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_age_evicts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clock_backwards_evicts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_messages_evict, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bytes_evict, setup, teardown),
		cmocka_unit_test_setup_teardown(test_never_across_ids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_capacity_and_replace_wipe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
	};
	return cmocka_run_group_tests_name("kmsc_cache", tests, NULL, NULL);
}
