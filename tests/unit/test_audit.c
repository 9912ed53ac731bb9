/* Audit log: durable append, seq continuity across reopen, torn-tail recovery, group
 * commit under concurrency, fail closed on a write error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/json.h"

static char dir[64], path[128];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kms-audit-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	rmdir(dir);
	return 0;
}

static const struct audit_record rec = {
	.request_id = "req-1", .principal = "svc", .auth_method = "token", .remote_addr = "127.0.0.1",
	.operation = "datakey", .tenant = "demo", .key = "k1", .version = 3, .outcome = "allow",
	.status = 200, .reason = "role service: data plane on scoped tenant",
};

/* Reads every line as JSON; returns the count and checks seqs run 1..n. */
static size_t check_lines(size_t expect_from)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	size_t n = 0;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		json_t *v = json_loads(line, 0, NULL);
		assert_non_null(v);
		assert_int_equal(json_integer_value(json_object_get(v, "seq")), (json_int_t)(expect_from + n));
		json_decref(v);
		n++;
	}
	fclose(f);
	return n;
}

static void test_append_fields_and_mode(void **state)
{
	struct audit *a;
	struct stat st;
	FILE *f;
	char line[4096];
	json_t *v;
	(void)state;

	assert_int_equal(audit_open(path, "node-a", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_true(audit_healthy(a));
	assert_int_equal(audit_seq(a), 1);
	audit_close(a);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	f = fopen(path, "r");
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	v = json_loads(line, 0, NULL);
	assert_non_null(v);
	assert_string_equal(json_string_value(json_object_get(v, "node")), "node-a");
	assert_string_equal(json_string_value(json_object_get(v, "principal")), "svc");
	assert_string_equal(json_string_value(json_object_get(v, "operation")), "datakey");
	assert_string_equal(json_string_value(json_object_get(v, "tenant")), "demo");
	assert_int_equal(json_integer_value(json_object_get(v, "version")), 3);
	assert_int_equal(json_integer_value(json_object_get(v, "status")), 200);
	assert_string_equal(json_string_value(json_object_get(v, "outcome")), "allow");
	assert_non_null(json_object_get(v, "time"));
	json_decref(v);
}

static void test_reopen_continues_and_cuts_torn_tail(void **state)
{
	struct audit *a;
	FILE *f;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	for (int i = 0; i < 5; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	/* a crash mid-write leaves half a record */
	f = fopen(path, "a");
	fputs("{\"seq\":6,\"time\":\"2026-", f);
	fclose(f);
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_seq(a), 5);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(check_lines(1), 6);
}

#define THREADS 8
#define PER_THREAD 200

static void *hammer(void *arg)
{
	struct audit *a = arg;

	for (int i = 0; i < PER_THREAD; i++)
		if (audit_append(a, &rec) != KMS_OK)
			return (void *)1;
	return NULL;
}

static void test_concurrent_group_commit(void **state)
{
	pthread_t t[THREADS];
	struct audit *a;
	void *r;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, a), 0);
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(t[i], &r), 0);
		assert_null(r);
	}
	assert_int_equal(audit_seq(a), THREADS * PER_THREAD);
	audit_close(a);
	assert_int_equal(check_lines(1), THREADS * PER_THREAD);
}

static void test_fail_closed(void **state)
{
	struct audit *a;
	(void)state;

	/* /dev/full fails every write with ENOSPC */
	if (access("/dev/full", W_OK) != 0)
		skip();
	assert_int_equal(audit_open("/dev/full", "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	assert_false(audit_healthy(a));
	/* never retried: the next append fails at once */
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	audit_close(a);
}

static void test_open_error(void **state)
{
	struct audit *a = NULL;
	(void)state;

	assert_int_equal(audit_open("/nonexistent-dir/audit.log", "n", &a), KMS_ERR_IO);
	assert_null(a);
	audit_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_fields_and_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_continues_and_cuts_torn_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_group_commit, setup, teardown),
		cmocka_unit_test(test_fail_closed),
		cmocka_unit_test(test_open_error),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
