/* kms/core/authcache: hits and misses, emptying on a store change, the insert that
 * raced an emptying, the bound, the once-a-minute touch claim. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/core/authcache.h"

static void entry(struct authcache_entry *e, uint8_t tag, int64_t *scope, size_t n)
{
	memset(e, 0, sizeof(*e));
	memset(e->hash, tag, sizeof(e->hash));
	snprintf(e->accessor, sizeof(e->accessor), "%016x", tag);
	snprintf(e->who.name, sizeof(e->who.name), "p%u", tag);
	snprintf(e->who.role, sizeof(e->who.role), "service");
	e->who.id = tag;
	e->expires = 1000 + tag;
	e->last_used = 5;
	e->scope = scope;
	e->n_scope = n;
}

static void test_hit_miss_and_copy(void **state)
{
	struct authcache *ac;
	struct authcache_entry e, out;
	struct store_stamp s0 = {1, 1};
	int64_t scope[2] = {7, 9};
	uint64_t t;
	(void)state;

	assert_int_equal(authcache_new(0, &ac), KMS_OK);
	entry(&e, 3, scope, 2);
	assert_false(authcache_get(ac, &s0, e.hash, &out, &t));
	authcache_put(ac, t, &e);
	memset(&out, 0, sizeof(out));
	assert_true(authcache_get(ac, &s0, e.hash, &out, &t));
	assert_string_equal(out.who.name, "p3");
	assert_int_equal(out.expires, 1003);
	assert_int_equal(out.n_scope, 2);
	assert_non_null(out.scope);
	assert_true(out.scope != scope); /* the caller's own copy */
	assert_int_equal(out.scope[1], 9);
	free(out.scope);
	/* a hash that differs only in its last byte is another token */
	e.hash[AUTHN_HASH_LEN - 1] ^= 1;
	assert_false(authcache_get(ac, &s0, e.hash, &out, &t));
	authcache_free(ac);
}

static void test_store_change_empties(void **state)
{
	struct authcache *ac;
	struct authcache_entry e, out;
	struct store_stamp s0 = {1, 1}, local = {2, 1}, ext = {2, 2};
	uint64_t t;
	(void)state;

	assert_int_equal(authcache_new(0, &ac), KMS_OK);
	entry(&e, 1, NULL, 0);
	assert_false(authcache_get(ac, &s0, e.hash, &out, &t));
	authcache_put(ac, t, &e);
	assert_true(authcache_get(ac, &s0, e.hash, &out, &t));
	/* a write by this process */
	assert_false(authcache_get(ac, &local, e.hash, &out, &t));
	authcache_put(ac, t, &e);
	assert_true(authcache_get(ac, &local, e.hash, &out, &t));
	/* a commit by another process */
	assert_false(authcache_get(ac, &ext, e.hash, &out, &t));
	authcache_put(ac, t, &e);
	assert_true(authcache_get(ac, &ext, e.hash, &out, &t));
	/* the hook for other nodes */
	authcache_invalidate(ac);
	assert_false(authcache_get(ac, &ext, e.hash, &out, &t));
	authcache_free(ac);
}

/* A thread read the rows before a write; the write emptied the cache before that
 * thread inserted: its (stale) entry must not go in. */
static void test_raced_insert_refused(void **state)
{
	struct authcache *ac;
	struct authcache_entry e, out;
	struct store_stamp s0 = {1, 1}, s1 = {2, 1};
	uint64_t stale, fresh;
	(void)state;

	assert_int_equal(authcache_new(0, &ac), KMS_OK);
	entry(&e, 9, NULL, 0);
	assert_false(authcache_get(ac, &s0, e.hash, &out, &stale));
	/* another request sees the write */
	assert_false(authcache_get(ac, &s1, e.hash, &out, &fresh));
	authcache_put(ac, stale, &e);
	assert_false(authcache_get(ac, &s1, e.hash, &out, &fresh));
	/* and an invalidation between lookup and insert does the same */
	authcache_invalidate(ac);
	authcache_put(ac, fresh, &e);
	assert_false(authcache_get(ac, &s1, e.hash, &out, &fresh));
	authcache_free(ac);
}

static void test_bounded(void **state)
{
	struct authcache *ac;
	struct authcache_entry e, out;
	struct authcache_stats st;
	struct store_stamp s0 = {1, 1};
	uint64_t t;
	(void)state;

	assert_int_equal(authcache_new(4, &ac), KMS_OK);
	for (uint8_t i = 1; i <= 20; i++) {
		entry(&e, i, NULL, 0);
		(void)authcache_get(ac, &s0, e.hash, &out, &t);
		authcache_put(ac, t, &e);
		authcache_get_stats(ac, &st);
		assert_true(st.entries <= 4);
	}
	/* the newest is in */
	assert_true(authcache_get(ac, &s0, e.hash, &out, &t));
	authcache_free(ac);
}

static void test_touch_claimed_once_a_minute(void **state)
{
	struct authcache *ac;
	struct authcache_entry e, out;
	struct store_stamp s0 = {1, 1};
	uint64_t t;
	(void)state;

	assert_int_equal(authcache_new(0, &ac), KMS_OK);
	entry(&e, 4, NULL, 0); /* last_used 5 */
	(void)authcache_get(ac, &s0, e.hash, &out, &t);
	authcache_put(ac, t, &e);
	assert_false(authcache_claim_touch(ac, e.hash, 64, 60));
	assert_true(authcache_claim_touch(ac, e.hash, 65, 60));
	assert_false(authcache_claim_touch(ac, e.hash, 65, 60)); /* the next caller */
	assert_false(authcache_claim_touch(ac, e.hash, 124, 60));
	assert_true(authcache_claim_touch(ac, e.hash, 125, 60));
	assert_true(authcache_get(ac, &s0, e.hash, &out, &t));
	assert_int_equal(out.last_used, 125);
	/* an unknown token claims nothing (its caller writes from the store path) */
	e.hash[0] ^= 0xff;
	assert_false(authcache_claim_touch(ac, e.hash, 1000, 60));
	authcache_free(ac);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hit_miss_and_copy),
		cmocka_unit_test(test_store_change_empties),
		cmocka_unit_test(test_raced_insert_refused),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_touch_claimed_once_a_minute),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
