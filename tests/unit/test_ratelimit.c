/* Token buckets (kms/core/ratelimit.c): burst then refill, peek does not take, buckets
 * are separate by name, the table stays bounded (idle buckets swept, a full table of
 * busy names limits new ones), concurrent takes never hand out more than the bucket
 * holds, and per-operation limits parse strictly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/op.h"
#include "kms/core/ratelimit.h"

static void test_burst_then_refill(void **state)
{
	struct ratelimit *rl;
	int i;
	(void)state;

	assert_int_equal(ratelimit_new(16, &rl), KMS_OK);
	for (i = 0; i < 5; i++)
		assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1000), 0);
	assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1000), 1); /* 0.5 s to one token */
	assert_int_equal(ratelimit_peek(rl, "svc", 2, 5, 1000), 1);
	assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1499), 1);
	assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1500), 0); /* one token after 0.5 s */
	assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1500), 1);
	/* a slow rate: the wait is whole seconds, rounded up */
	for (i = 0; i < 2; i++)
		assert_int_equal(ratelimit_take(rl, "slow", 0.1, 2, 0), 0);
	assert_int_equal(ratelimit_take(rl, "slow", 0.1, 2, 0), 10);
	/* never more than the burst, however long idle */
	for (i = 0; i < 5; i++)
		assert_int_equal(ratelimit_take(rl, "svc", 2, 5, 1000000), 0);
	assert_int_not_equal(ratelimit_take(rl, "svc", 2, 5, 1000000), 0);
	/* separate names, separate buckets; rate 0 means no limit */
	assert_int_equal(ratelimit_take(rl, "other", 2, 5, 1000), 0);
	for (i = 0; i < 100; i++)
		assert_int_equal(ratelimit_take(rl, "free", 0, 0, 1000), 0);
	assert_int_equal(ratelimit_size(rl), 3);
	ratelimit_free(rl);
	ratelimit_free(NULL);
}

static void test_peek_takes_nothing(void **state)
{
	struct ratelimit *rl;
	(void)state;

	assert_int_equal(ratelimit_new(16, &rl), KMS_OK);
	for (int i = 0; i < 10; i++)
		assert_int_equal(ratelimit_peek(rl, "10.0.0.1", 1, 1, 0), 0);
	assert_int_equal(ratelimit_size(rl), 0); /* peeking makes no bucket */
	assert_int_equal(ratelimit_take(rl, "10.0.0.1", 1, 1, 0), 0);
	assert_int_equal(ratelimit_peek(rl, "10.0.0.1", 1, 1, 0), 1);
	ratelimit_free(rl);
}

static void test_bounded_table(void **state)
{
	struct ratelimit *rl;
	char name[32];
	(void)state;

	assert_int_equal(ratelimit_new(4, &rl), KMS_OK);
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "10.0.0.%d", i);
		assert_int_equal(ratelimit_take(rl, name, 1, 3, 0), 0);
	}
	assert_int_equal(ratelimit_size(rl), 4);
	/* full of busy names: a new one is limited rather than let through unlimited,
	 * whether it is taken from or only looked at */
	assert_int_not_equal(ratelimit_take(rl, "10.0.0.99", 1, 3, 500), 0);
	assert_int_not_equal(ratelimit_peek(rl, "10.0.0.98", 1, 3, 500), 0);
	assert_int_equal(ratelimit_size(rl), 4);
	/* once they refilled (3 s at 1/s), they are swept and the new name gets a bucket */
	assert_int_equal(ratelimit_take(rl, "10.0.0.99", 1, 3, 3000), 0);
	assert_int_equal(ratelimit_size(rl), 1);
	ratelimit_free(rl);
}

#define THREADS 8
static struct ratelimit *shared;
static int granted[THREADS];

static void *taker(void *arg)
{
	int idx = (int)(intptr_t)arg;

	for (int i = 0; i < 1000; i++)
		if (ratelimit_take(shared, "busy", 0.001, 100, 5000) == 0)
			granted[idx]++;
	return NULL;
}

static void test_concurrent_takes(void **state)
{
	pthread_t th[THREADS];
	int total = 0;
	(void)state;

	assert_int_equal(ratelimit_new(16, &shared), KMS_OK);
	for (intptr_t i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, taker, (void *)i), 0);
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		total += granted[i];
	}
	assert_int_equal(total, 100); /* exactly the burst: the clock did not move */
	ratelimit_free(shared);
}

static void test_parse_ops(void **state)
{
	double rate[KMS_OP__COUNT], burst[KMS_OP__COUNT];
	static const char *const bad[] = {"rotate=1", "key.rotate", "key.rotate=", "key.rotate=0",
					  "key.rotate=-1", "key.rotate=1:0", "key.rotate=1x",
					  "=1", "key.rotate=1,,", "key.rotate=1:2:3", "datakey=nan"};
	(void)state;

	assert_null(ratelimit_parse_ops("", rate, burst, KMS_OP__COUNT));
	assert_null(ratelimit_parse_ops("key.rotate=1:5,datakey=500", rate, burst, KMS_OP__COUNT));
	assert_true(rate[KMS_OP_KEY_ROTATE] == 1 && burst[KMS_OP_KEY_ROTATE] == 5);
	assert_true(rate[KMS_OP_DATAKEY] == 500 && burst[KMS_OP_DATAKEY] == 1000);
	assert_true(rate[KMS_OP_DECRYPT] == 0);
	assert_null(ratelimit_parse_ops("policy.write=0.1:3", rate, burst, KMS_OP__COUNT));
	assert_true(rate[KMS_OP_POLICY_WRITE] > 0.09 && rate[KMS_OP_POLICY_WRITE] < 0.11);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (ratelimit_parse_ops(bad[i], rate, burst, KMS_OP__COUNT) == NULL)
			fail_msg("accepted \"%s\"", bad[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_refill),
		cmocka_unit_test(test_peek_takes_nothing),
		cmocka_unit_test(test_bounded_table),
		cmocka_unit_test(test_concurrent_takes),
		cmocka_unit_test(test_parse_ops),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
