/* Unit tests for the quorum and break-glass store rules (kms/store/store.h, schema step
 * 9): votes (no self-approval, one vote per principal, deny ends a request, expiry, the
 * quorum's compare-and-set under racing threads: exactly one caller executes), finish
 * only from "executing", requests left "executing" marked interrupted (all of them on
 * one node, a named run's on PostgreSQL), the approvers behind an executed request,
 * break-glass grants
 * (scope by tenant and key glob, time window) and their reviews (not by the grantee, one
 * per reviewer). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "kms/store/store.h"
#include "tests/common/pgtest.h"

#define NOW 1700000000

/* true while the tests run again on PostgreSQL (KMS_TEST_PG_URI): setup opens that */
static bool on_pg;

struct fx {
	char dir[64];
	char path[128];
	struct store *s;
	int64_t p[6]; /* principals: p[0] requester, p[1..4] admins, p[5] a service */
};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char name[16];

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/kmsd-test-appr-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	if (pgtest_store_path(on_pg, f->dir, f->path, sizeof(f->path)) != 0)
		return -1;
	if (store_open(f->path, &f->s) != KMS_OK) {
		free(f);
		return -1;
	}
	for (int i = 0; i < 6; i++) {
		snprintf(name, sizeof(name), "p%d", i);
		if (store_principal_create(f->s, name, i == 5 ? "service" : "admin", NULL, 0, NOW, &f->p[i]) != KMS_OK)
			return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	store_close(f->s);
	nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void make_request(struct fx *f, const char *id, unsigned required, int64_t expires)
{
	struct store_approval a = {0};

	snprintf(a.id, sizeof(a.id), "%s", id);
	a.requester_id = f->p[0];
	snprintf(a.requester, sizeof(a.requester), "p0");
	snprintf(a.operation, sizeof(a.operation), "key.version.schedule_destroy");
	snprintf(a.tenant, sizeof(a.tenant), "t1");
	snprintf(a.key, sizeof(a.key), "k1");
	snprintf(a.version, sizeof(a.version), "2");
	a.request = (char *)"{\"operation\":\"key.version.schedule_destroy\"}";
	a.required = required;
	a.created = NOW;
	a.expires = expires;
	assert_int_equal(store_approval_create(f->s, &a), KMS_OK);
}

#define ID1 "0123456789abcdef0123456789abcdef"
#define ID2 "fedcba9876543210fedcba9876543210"

static void test_votes(void **state)
{
	struct fx *f = *state;
	enum store_vote_result r;
	unsigned n;
	struct store_approval a;
	struct store_vote *v = NULL;
	size_t nv = 0;
	char **names = NULL;

	make_request(f, ID1, 2, NOW + 100);
	/* the requester cannot approve; nobody votes on an unknown request */
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[0], "p0", "approve", NOW, 2, &r, &n), KMS_ERR_DENIED);
	assert_int_equal(store_approval_vote(f->s, ID2, f->p[1], "p1", "approve", NOW, 2, &r, &n), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[1], "p1", "maybe", NOW, 2, &r, &n), KMS_ERR_INVALID);
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[1], "p1", "approve", NOW, 2, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_RECORDED);
	assert_int_equal(n, 1);
	/* the same principal twice */
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[1], "p1", "approve", NOW, 2, &r, &n), KMS_ERR_CONFLICT);
	/* a caller asking for fewer than stored does not lower the quorum */
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[2], "p2", "approve", NOW, 1, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_EXECUTE);
	assert_int_equal(n, 2);
	/* executing: no more votes; finish only once */
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[3], "p3", "approve", NOW, 2, &r, &n), KMS_ERR_CONFLICT);
	assert_int_equal(store_approval_approvers(f->s, "key.version.schedule_destroy", "t1", "k1", "2", &names, &nv),
			 KMS_OK);
	assert_int_equal(nv, 0); /* not executed yet */
	free(names);
	assert_int_equal(store_approval_finish(f->s, ID1, "approved-executed", "{\"status\":200}", NOW + 1), KMS_OK);
	assert_int_equal(store_approval_finish(f->s, ID1, "failed", NULL, NOW + 1), KMS_ERR_CONFLICT);
	assert_int_equal(store_approval_get(f->s, ID1, &a, &v, &nv), KMS_OK);
	assert_string_equal(a.state, "approved-executed");
	assert_string_equal(a.result, "{\"status\":200}");
	assert_int_equal(nv, 2);
	assert_string_equal(v[0].principal, "p1");
	assert_string_equal(v[1].verdict, "approve");
	store_approval_clear(&a);
	free(v);
	assert_int_equal(store_approval_approvers(f->s, "key.version.schedule_destroy", "t1", "k1", "2", &names, &nv),
			 KMS_OK);
	assert_int_equal(nv, 2);
	assert_string_equal(names[0], "p1");
	assert_string_equal(names[1], "p2");
	free(names[0]);
	free(names[1]);
	free(names);
}

static void test_deny_and_expiry(void **state)
{
	struct fx *f = *state;
	enum store_vote_result r;
	unsigned n;
	struct store_approval a, *ex = NULL;
	size_t nex = 0;

	make_request(f, ID1, 2, NOW + 100);
	/* the requester may withdraw (deny) its own request */
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[0], "p0", "deny", NOW, 2, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_DENIED);
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[1], "p1", "approve", NOW, 2, &r, &n), KMS_ERR_CONFLICT);

	make_request(f, ID2, 1, NOW + 100);
	assert_int_equal(store_approval_vote(f->s, ID2, f->p[1], "p1", "approve", NOW + 100, 1, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_EXPIRED);
	assert_int_equal(store_approval_get(f->s, ID2, &a, NULL, NULL), KMS_OK);
	assert_string_equal(a.state, "expired");
	store_approval_clear(&a);
	assert_int_equal(store_approval_vote(f->s, ID2, f->p[2], "p2", "approve", NOW, 1, &r, &n), KMS_ERR_CONFLICT);

	make_request(f, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1, NOW + 50);
	assert_int_equal(store_approvals_expire(f->s, NOW + 49, &ex, &nex), KMS_OK);
	assert_int_equal(nex, 0);
	free(ex);
	assert_int_equal(store_approvals_expire(f->s, NOW + 50, &ex, &nex), KMS_OK);
	assert_int_equal(nex, 1);
	assert_string_equal(ex[0].id, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	free(ex);
	assert_int_equal(store_approvals_expire(f->s, NOW + 50, &ex, &nex), KMS_OK);
	assert_int_equal(nex, 0);
	free(ex);
}

struct racer {
	struct store *s;
	const char *id;
	int64_t pid;
	char name[16];
	pthread_barrier_t *bar;
	enum store_vote_result r;
	kms_err rc;
};

static void *race(void *arg)
{
	struct racer *x = arg;
	unsigned n;

	pthread_barrier_wait(x->bar);
	x->rc = store_approval_vote(x->s, x->id, x->pid, x->name, "approve", NOW, 2, &x->r, &n);
	return NULL;
}

/* Four admins approve a quorum-2 request at once, on one handle and on a second handle
 * to the same file: exactly one of them is told to execute. */
static void test_race(void **state)
{
	struct fx *f = *state;
	struct store *s2 = NULL;
	pthread_barrier_t bar;
	pthread_t th[4];
	struct racer rs[4];

	assert_int_equal(store_open(f->path, &s2), KMS_OK);
	for (int round = 0; round < 20; round++) {
		char id[33];
		int exec = 0, recorded = 0, conflict = 0;

		snprintf(id, sizeof(id), "%032d", round);
		make_request(f, id, 2, NOW + 100);
		pthread_barrier_init(&bar, NULL, 4);
		for (int i = 0; i < 4; i++) {
			rs[i] = (struct racer){.s = i % 2 ? s2 : f->s, .id = id, .pid = f->p[i + 1], .bar = &bar};
			snprintf(rs[i].name, sizeof(rs[i].name), "p%d", i + 1);
		}
		for (int i = 0; i < 4; i++)
			assert_int_equal(pthread_create(&th[i], NULL, race, &rs[i]), 0);
		for (int i = 0; i < 4; i++)
			pthread_join(th[i], NULL);
		pthread_barrier_destroy(&bar);
		for (int i = 0; i < 4; i++) {
			if (rs[i].rc == KMS_OK && rs[i].r == STORE_VOTE_EXECUTE)
				exec++;
			else if (rs[i].rc == KMS_OK && rs[i].r == STORE_VOTE_RECORDED)
				recorded++;
			else if (rs[i].rc == KMS_ERR_CONFLICT)
				conflict++;
		}
		assert_int_equal(exec, 1);
		assert_int_equal(recorded, 1);
		assert_int_equal(conflict, 2);
	}
	store_close(s2);
}

static const char *state_of(struct fx *f, const char *id, char *buf, size_t len)
{
	struct store_approval a;

	assert_int_equal(store_approval_get(f->s, id, &a, NULL, NULL), KMS_OK);
	snprintf(buf, len, "%s", a.state);
	store_approval_clear(&a);
	return buf;
}

/* Requests left "executing": on one node all are marked at start; on PostgreSQL each
 * names the run of kmsd that runs it, and only a named run's are marked (the cluster
 * marks those of a run that ended). A request finished after all loses its mark. */
#define RUN_A "node-a/00000000000000a1"
#define RUN_B "node-b/00000000000000b1"

static void test_interrupt_by_run(void **state)
{
	struct fx *f = *state;
	struct store_approval *ex = NULL;
	enum store_vote_result r;
	char(*runs)[STORE_EXECUTOR_MAX + 1] = NULL;
	char st[24];
	unsigned n;
	size_t cnt = 9;

	/* what a run may be called */
	assert_true(store_executor_valid(RUN_A));
	assert_false(store_executor_valid("node-a"));
	assert_false(store_executor_valid("node-a/00000000000000A1"));
	assert_false(store_executor_valid("node-a/00000000000000a"));
	assert_false(store_executor_valid("node a/00000000000000a1"));
	assert_false(store_executor_valid("/00000000000000a1"));
	assert_false(store_executor_valid(NULL));
	assert_int_equal(store_set_executor(f->s, "node-a"), KMS_ERR_INVALID);
	/* split at the '/': the node id, and the run after it */
	{
		char node[65], long_id[80];

		assert_string_equal(store_executor_split(RUN_A, node), "00000000000000a1");
		assert_string_equal(node, "node-a");
		assert_null(store_executor_split("node-a", node));
		assert_string_equal(node, "");
		assert_null(store_executor_split(NULL, node));
		assert_string_equal(store_executor_split("/x", node), "x");
		assert_string_equal(node, "");
		memset(long_id, 'n', 64);
		snprintf(long_id + 64, sizeof(long_id) - 64, "/r");
		assert_string_equal(store_executor_split(long_id, node), "r");
		assert_int_equal(strlen(node), 64);
		long_id[64] = 'n';
		snprintf(long_id + 65, sizeof(long_id) - 65, "/r");
		assert_null(store_executor_split(long_id, node));
		assert_string_equal(node, "");
	}

	assert_int_equal(store_set_executor(f->s, RUN_A), KMS_OK);
	make_request(f, ID1, 1, NOW + 100);
	assert_int_equal(store_approval_vote(f->s, ID1, f->p[1], "p1", "approve", NOW, 1, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_EXECUTE);
	assert_int_equal(store_set_executor(f->s, RUN_B), KMS_OK);
	make_request(f, ID2, 1, NOW + 100);
	assert_int_equal(store_approval_vote(f->s, ID2, f->p[1], "p1", "approve", NOW, 1, &r, &n), KMS_OK);
	assert_int_equal(r, STORE_VOTE_EXECUTE);

	if (!on_pg) {
		/* one node: nothing runs elsewhere; a named run is refused; at start all */
		assert_int_equal(store_approvals_executors(f->s, &runs, &cnt), KMS_OK);
		assert_int_equal(cnt, 0);
		assert_null(runs);
		assert_int_equal(store_approvals_interrupt(f->s, RUN_A, NOW + 1, &ex, &cnt), KMS_ERR_INVALID);
		assert_int_equal(store_approvals_interrupt(f->s, NULL, NOW + 1, &ex, &cnt), KMS_OK);
		assert_int_equal(cnt, 2);
		free(ex);
		assert_string_equal(state_of(f, ID1, st, sizeof(st)), "interrupted");
		assert_string_equal(state_of(f, ID2, st, sizeof(st)), "interrupted");
		return;
	}
	/* the runs with something running */
	assert_int_equal(store_approvals_executors(f->s, &runs, &cnt), KMS_OK);
	assert_int_equal(cnt, 2);
	assert_string_equal(runs[0], RUN_A);
	assert_string_equal(runs[1], RUN_B);
	free(runs);
	/* a run with nothing running marks nothing */
	assert_int_equal(store_approvals_interrupt(f->s, "node-a/00000000000000a2", NOW + 1, &ex, &cnt), KMS_OK);
	assert_int_equal(cnt, 0);
	free(ex);
	/* run A ended: its request only */
	assert_int_equal(store_approvals_interrupt(f->s, RUN_A, NOW + 1, &ex, &cnt), KMS_OK);
	assert_int_equal(cnt, 1);
	assert_string_equal(ex[0].id, ID1);
	free(ex);
	assert_string_equal(state_of(f, ID1, st, sizeof(st)), "interrupted");
	assert_string_equal(state_of(f, ID2, st, sizeof(st)), "executing");
	/* marked once */
	assert_int_equal(store_approvals_interrupt(f->s, RUN_A, NOW + 2, &ex, &cnt), KMS_OK);
	assert_int_equal(cnt, 0);
	free(ex);
	assert_int_equal(store_approvals_executors(f->s, &runs, &cnt), KMS_OK);
	assert_int_equal(cnt, 1);
	assert_string_equal(runs[0], RUN_B);
	free(runs);
	/* run A was alive after all and finishes: the row says what happened */
	assert_int_equal(store_approval_finish(f->s, ID1, "approved-executed", "{\"status\":200}", NOW + 3), KMS_OK);
	assert_string_equal(state_of(f, ID1, st, sizeof(st)), "approved-executed");
	assert_int_equal(store_approval_finish(f->s, ID2, "failed", NULL, NOW + 3), KMS_OK);
	assert_int_equal(store_approvals_executors(f->s, &runs, &cnt), KMS_OK);
	assert_int_equal(cnt, 0);
}

static void test_grants(void **state)
{
	struct fx *f = *state;
	struct store_grant g = {0}, out, *list = NULL;
	struct store_review rv = {0}, *rl = NULL;
	size_t n = 0;
	int64_t until = 1;

	assert_int_equal(store_grant_max_expiry(f->s, &until), KMS_OK);
	assert_int_equal(until, 0);
	snprintf(g.id, sizeof(g.id), ID1);
	g.principal_id = f->p[5];
	snprintf(g.principal, sizeof(g.principal), "p5");
	snprintf(g.reason, sizeof(g.reason), "EHR down");
	snprintf(g.tenant, sizeof(g.tenant), "hosp");
	snprintf(g.key, sizeof(g.key), "phi-*");
	g.granted = NOW;
	g.expires = NOW + 60;
	assert_int_equal(store_grant_create(f->s, &g), KMS_OK);
	g.reason[0] = '\0';
	assert_int_equal(store_grant_create(f->s, &g), KMS_ERR_INVALID);
	assert_int_equal(store_grant_max_expiry(f->s, &until), KMS_OK);
	assert_int_equal(until, NOW + 60);

	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp", "phi-1", NOW, &out), KMS_OK);
	assert_string_equal(out.id, ID1);
	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp", "phi-1", NOW + 59, &out), KMS_OK);
	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp", "phi-1", NOW + 60, &out), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp", "phi-1", NOW - 1, &out), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp", "lab-1", NOW, &out), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_grant_active(f->s, f->p[5], "hosp2", "phi-1", NOW, &out), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_grant_active(f->s, f->p[4], "hosp", "phi-1", NOW, &out), KMS_ERR_NOT_FOUND);

	snprintf(rv.grant_id, sizeof(rv.grant_id), ID1);
	rv.principal_id = f->p[5];
	snprintf(rv.principal, sizeof(rv.principal), "p5");
	snprintf(rv.verdict, sizeof(rv.verdict), "justified");
	snprintf(rv.note, sizeof(rv.note), "mine");
	rv.time = NOW + 100;
	assert_int_equal(store_grant_review(f->s, &rv), KMS_ERR_DENIED);
	rv.principal_id = f->p[1];
	snprintf(rv.principal, sizeof(rv.principal), "p1");
	assert_int_equal(store_grant_review(f->s, &rv), KMS_OK);
	assert_int_equal(store_grant_review(f->s, &rv), KMS_ERR_CONFLICT);
	snprintf(rv.grant_id, sizeof(rv.grant_id), ID2);
	assert_int_equal(store_grant_review(f->s, &rv), KMS_ERR_NOT_FOUND);
	assert_int_equal(store_review_list(f->s, ID1, &rl, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(rl[0].principal, "p1");
	free(rl);
	assert_int_equal(store_grant_list(f->s, 10, &list, &n), KMS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(list[0].reason, "EHR down");
	free(list);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_votes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deny_and_expiry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_race, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grants, setup, teardown),
		cmocka_unit_test_setup_teardown(test_interrupt_by_run, setup, teardown),
	};

	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (pgtest_uri() != NULL) {
		on_pg = true;
		failed += cmocka_run_group_tests_name("approval on PostgreSQL", tests, NULL, NULL);
	}
	return failed;
}
