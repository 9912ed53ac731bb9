/* The pieces of a backup (kms/core/backup.c): the store's online snapshot, the audit
 * log's consistent cut (every file ending on a whole record, also while another thread
 * appends and segments rotate), segment-name parsing, and the master-key fingerprint on
 * real SoftHSM2 tokens (stable for one key, different for another token's key, absent
 * version refused). The archive itself, tampering and restore: tests/integration/
 * test_backup.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/json.h"
#include "kms/store/store.h"
#include "pkcs11/p11.h"
#include "tests/common/softhsm.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kms-backup-XXXXXX");
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	char p[512];
	struct dirent *e;
	DIR *d = opendir(dir);

	(void)state;
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	if (d != NULL)
		closedir(d);
	rmdir(dir);
	return 0;
}

static void test_segment_seq(void **state)
{
	uint64_t seq = 0;
	(void)state;

	assert_int_equal(audit_segment_seq("/var/log/kmsd/audit.log", "audit-00000000000000000042.log", &seq), 1);
	assert_int_equal(seq, 42);
	assert_int_equal(audit_segment_seq("x/audit", "audit-00000000000000000007.log", &seq), 1);
	assert_int_equal(seq, 7);
	assert_int_equal(audit_segment_seq("audit.log", "audit.log", NULL), 0);
	assert_int_equal(audit_segment_seq("audit.log", "audit-0000000000000000004.log", NULL), 0);  /* 19 digits */
	assert_int_equal(audit_segment_seq("audit.log", "audit-0000000000000000004x.log", NULL), 0);
	assert_int_equal(audit_segment_seq("audit.log", "audit_00000000000000000042.log", NULL), 0);
	assert_int_equal(audit_segment_seq("audit.log", "other-00000000000000000042.log", NULL), 0);
	assert_int_equal(audit_segment_seq("audit.log", "audit-00000000000000000042.log.tmp", NULL), 0);
	assert_int_equal(audit_segment_seq("audit.log", "audit.log.pub.pem", NULL), 0);
}

static void test_store_snapshot(void **state)
{
	char path[128], copy[128];
	struct store *st = NULL, *back = NULL;
	struct store_tenant t;
	uint8_t *buf = NULL;
	size_t len = 0;
	int64_t id;
	int fd;
	(void)state;

	snprintf(path, sizeof(path), "%s/kmsd.db", dir);
	snprintf(copy, sizeof(copy), "%s/copy.db", dir);
	assert_int_equal(store_open(path, &st), KMS_OK);
	assert_int_equal(store_tenant_create(st, "cardiology", "phi", 1000, &id), KMS_OK);
	assert_int_equal(store_meta_set(st, "initialized", "1"), KMS_OK);
	assert_int_equal(store_snapshot(st, &buf, &len), KMS_OK);
	assert_true(len >= 4096 && len % 512 == 0);
	assert_memory_equal(buf, "SQLite format 3", 16);
	/* a change after the snapshot is not in it */
	assert_int_equal(store_tenant_create(st, "radiology", "phi", 1001, &id), KMS_OK);
	fd = open(copy, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	free(buf);
	assert_int_equal(store_open(copy, &back), KMS_OK);
	assert_int_equal(store_tenant_get(back, "cardiology", &t), KMS_OK);
	assert_string_equal(t.retention, "phi");
	assert_int_equal(store_tenant_get(back, "radiology", &t), KMS_ERR_NOT_FOUND);
	store_close(back);
	store_close(st);
}

static const struct audit_record rec = {
	.request_id = "req-1", .principal = "svc", .auth_method = "token", .remote_addr = "127.0.0.1",
	.operation = "datakey", .tenant = "demo", .key = "k1", .version = 1, .outcome = "allow",
	.status = 200, .reason = "test",
};

struct appender {
	struct audit *a;
	volatile int stop;
	unsigned n;
};

static void *append_loop(void *arg)
{
	struct appender *ap = arg;

	while (!ap->stop) {
		if (audit_append(ap->a, &rec) != KMS_OK)
			break;
		ap->n++;
	}
	return NULL;
}

/* Every file of the cut ends on a newline, the records run 1..last_seq in order across
 * the files, and each file's first record is the seq its name says. */
static void check_cut(const struct audit_snapshot *s)
{
	uint64_t next = 1;

	assert_true(s->n >= 1);
	assert_true(s->files[s->n - 1].current);
	assert_string_equal(s->files[s->n - 1].name, "audit.log");
	for (size_t i = 0; i < s->n; i++) {
		const struct audit_snap_file *f = &s->files[i];
		char *b = malloc(f->size + 1);
		uint64_t first = 0;
		size_t off = 0;

		assert_non_null(b);
		assert_int_equal(pread(f->fd, b, f->size, 0), (ssize_t)f->size);
		b[f->size] = '\0';
		assert_true(f->size == 0 || b[f->size - 1] == '\n');
		if (!f->current) {
			assert_int_equal(audit_segment_seq("audit.log", f->name, &first), 1);
			assert_int_equal(first, next);
		}
		while (off < f->size) {
			char *nl = strchr(b + off, '\n');
			json_error_t je;
			json_t *v;

			assert_non_null(nl);
			*nl = '\0';
			v = json_loads(b + off, 0, &je);
			assert_non_null(v);
			assert_int_equal(json_integer_value(json_object_get(v, "seq")), (json_int_t)next);
			json_decref(v);
			next++;
			off = (size_t)(nl - b) + 1;
		}
		free(b);
	}
	assert_int_equal(next - 1, s->last_seq);
}

static void test_audit_snapshot(void **state)
{
	struct audit_options o;
	struct audit_snapshot s;
	struct appender ap = {0};
	char path[128];
	pthread_t th;
	(void)state;

	snprintf(path, sizeof(path), "%s/audit.log", dir);
	audit_options_init(&o);
	o.segment_bytes = 2048; /* a new segment every few records */
	assert_int_equal(audit_open_opts(path, "node-1", &o, &ap.a), KMS_OK);
	for (int i = 0; i < 20; i++)
		assert_int_equal(audit_append(ap.a, &rec), KMS_OK);
	assert_int_equal(audit_snapshot(ap.a, &s), KMS_OK);
	assert_true(s.n > 3);
	assert_string_equal(s.log_name, "audit.log");
	assert_string_equal(s.dir, dir);
	check_cut(&s);
	/* appends after the cut leave it unchanged: the descriptors still read the cut */
	for (int i = 0; i < 20; i++)
		assert_int_equal(audit_append(ap.a, &rec), KMS_OK);
	check_cut(&s);
	audit_snapshot_free(&s);
	audit_snapshot_free(&s); /* a freed snapshot may be freed again */

	/* while another thread appends and segments rotate */
	assert_int_equal(pthread_create(&th, NULL, append_loop, &ap), 0);
	for (int i = 0; i < 25; i++) {
		usleep(2000);
		assert_int_equal(audit_snapshot(ap.a, &s), KMS_OK);
		check_cut(&s);
		audit_snapshot_free(&s);
	}
	ap.stop = 1;
	pthread_join(th, NULL);
	assert_true(ap.n > 0);
	audit_close(ap.a);
}

static void test_mk_fingerprint(void **state)
{
	struct softhsm_token t;
	struct p11_config cfg;
	struct p11 *p = NULL;
	uint8_t a[P11_SHA256_LEN], b[P11_SHA256_LEN], other[P11_SHA256_LEN];
	(void)state;

	for (int round = 0; round < 2; round++) {
		assert_int_equal(softhsm_token_create(&t), 0);
		cfg.module = t.module;
		cfg.token_label = t.label;
		cfg.sessions = 1;
		assert_int_equal(p11_provision(&cfg, t.so_pin, t.so_pin_len, t.user_pin, t.user_pin_len), KMS_OK);
		assert_int_equal(p11_open(&cfg, t.user_pin, t.user_pin_len, &p), KMS_OK);
		assert_int_equal(p11_mk_fingerprint(p, 1, round == 0 ? a : other), KMS_OK);
		if (round == 0) {
			/* stable, and not the master key's absence */
			assert_int_equal(p11_mk_fingerprint(p, 1, b), KMS_OK);
			assert_memory_equal(a, b, sizeof(a));
			assert_int_equal(p11_mk_fingerprint(p, 2, b), KMS_ERR_NOT_FOUND);
		}
		p11_close(p);
		p = NULL;
		softhsm_token_destroy(&t);
	}
	/* another token's master key (another value under the same label) */
	assert_memory_not_equal(a, other, sizeof(a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_segment_seq),
		cmocka_unit_test_setup_teardown(test_store_snapshot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_audit_snapshot, setup, teardown),
		cmocka_unit_test(test_mk_fingerprint),
	};

	kms_json_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
