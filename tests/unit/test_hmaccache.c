/* kms/core/hmaccache: hit and miss, least-recently-used eviction, off at 0, clear. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "kms/core/hmaccache.h"

static void mac_of(uint8_t tag, uint8_t mac[HMACCACHE_MAC_LEN])
{
	memset(mac, tag, HMACCACHE_MAC_LEN);
}

static void test_hit_miss(void **state)
{
	struct hmaccache *hc;
	uint8_t m[HMACCACHE_MAC_LEN], want[HMACCACHE_MAC_LEN];
	struct hmaccache_stats st;
	(void)state;

	assert_int_equal(hmaccache_new(8, &hc), KMS_OK);
	assert_non_null(hc);
	assert_false(hmaccache_get(hc, "treatment", 9, m));
	mac_of(0xa1, want);
	hmaccache_put(hc, "treatment", 9, want);
	memset(m, 0, sizeof(m));
	assert_true(hmaccache_get(hc, "treatment", 9, m));
	assert_memory_equal(m, want, sizeof(m));
	/* a prefix, an extension, another case: other values */
	assert_false(hmaccache_get(hc, "treatmen", 8, m));
	assert_false(hmaccache_get(hc, "treatment\0", 10, m));
	assert_false(hmaccache_get(hc, "Treatment", 9, m));
	/* the empty value is a value */
	assert_false(hmaccache_get(hc, "", 0, m));
	hmaccache_put(hc, "", 0, want);
	assert_true(hmaccache_get(hc, "", 0, m));
	/* a second put of the same value keeps one entry */
	hmaccache_put(hc, "treatment", 9, want);
	hmaccache_get_stats(hc, &st);
	assert_int_equal(st.entries, 2);
	assert_int_equal(st.hits, 2);
	hmaccache_clear(hc);
	assert_false(hmaccache_get(hc, "treatment", 9, m));
	hmaccache_get_stats(hc, &st);
	assert_int_equal(st.entries, 0);
	hmaccache_free(hc);
}

static void test_lru(void **state)
{
	struct hmaccache *hc;
	uint8_t m[HMACCACHE_MAC_LEN];
	char v[8];
	(void)state;

	assert_int_equal(hmaccache_new(3, &hc), KMS_OK);
	for (uint8_t i = 0; i < 3; i++) {
		snprintf(v, sizeof(v), "v%u", i);
		mac_of(i, m);
		hmaccache_put(hc, v, strlen(v), m);
	}
	assert_true(hmaccache_get(hc, "v0", 2, m)); /* v0 is now the most recent */
	mac_of(3, m);
	hmaccache_put(hc, "v3", 2, m); /* evicts v1 */
	assert_false(hmaccache_get(hc, "v1", 2, m));
	assert_true(hmaccache_get(hc, "v0", 2, m));
	assert_int_equal(m[0], 0);
	assert_true(hmaccache_get(hc, "v2", 2, m));
	assert_true(hmaccache_get(hc, "v3", 2, m));
	assert_int_equal(m[0], 3);
	hmaccache_free(hc);
}

static void test_off(void **state)
{
	struct hmaccache *hc = (struct hmaccache *)1;
	uint8_t m[HMACCACHE_MAC_LEN] = {0};
	struct hmaccache_stats st;
	(void)state;

	assert_int_equal(hmaccache_new(0, &hc), KMS_OK);
	assert_null(hc);
	hmaccache_put(hc, "x", 1, m);
	assert_false(hmaccache_get(hc, "x", 1, m));
	hmaccache_get_stats(hc, &st);
	assert_int_equal(st.entries, 0);
	hmaccache_clear(hc);
	hmaccache_free(hc);
}

/* Two processes (two caches) fingerprint with different keys; nothing observable
 * here but that each still finds its own entries. */
static void test_independent_instances(void **state)
{
	struct hmaccache *a, *b;
	uint8_t m[HMACCACHE_MAC_LEN];
	(void)state;

	assert_int_equal(hmaccache_new(4, &a), KMS_OK);
	assert_int_equal(hmaccache_new(4, &b), KMS_OK);
	mac_of(7, m);
	hmaccache_put(a, "same", 4, m);
	assert_true(hmaccache_get(a, "same", 4, m));
	assert_false(hmaccache_get(b, "same", 4, m));
	hmaccache_free(a);
	hmaccache_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hit_miss),
		cmocka_unit_test(test_lru),
		cmocka_unit_test(test_off),
		cmocka_unit_test(test_independent_instances),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
