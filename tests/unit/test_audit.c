/* Audit log: durable append, seq continuity across reopen, torn-tail recovery, group
 * commit under concurrency, fail closed on a write error; the hash chain (recomputed
 * here with OpenSSL from the bytes on disk, as docs/FORMATS.md defines it) across
 * reopen and a cut, and signed checkpoints with an in-process OpenSSL signer, checked by
 * the offline verifier. Real token signatures: test_audit_verify.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/audit/syslog.h"
#include "kms/audit/verify.h"
#include "kms/base/json.h"

static char dir[64], path[128], pub_path[160];

/* The wall clock the audit code reads for segment ages (time()). It is the real clock
 * unless a test steps it: then every call returns one second more than the last, so a
 * second boundary can fall between any two reads the code makes. */
static int clock_stepped;
static time_t clock_step;

time_t time(time_t *out)
{
	struct timespec ts;
	time_t v;

	if (clock_stepped) {
		v = clock_step++;
	} else {
		clock_gettime(CLOCK_REALTIME, &ts);
		v = ts.tv_sec;
	}
	if (out != NULL)
		*out = v;
	return v;
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kms-audit-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	snprintf(pub_path, sizeof(pub_path), "%s/pub.pem", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	unlink(pub_path);
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

/* ------------------------------------------------------------------ chain helpers */

#define ZEROS "0000000000000000000000000000000000000000000000000000000000000000"

static void sha256_hex(const char *p, size_t n, char out[65])
{
	static const char hx[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned len = 0;

	assert_int_equal(EVP_Digest(p, n, md, &len, EVP_sha256(), NULL), 1);
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hx[md[i] >> 4];
		out[2 * i + 1] = hx[md[i] & 15];
	}
	out[64] = '\0';
}

/* Recomputes the chain from the file's bytes exactly as docs/FORMATS.md says: the line
 * must end in ,"hash":"<64 hex>"}; hash = SHA-256(line minus that member, i.e. the
 * bytes before it followed by "}"); prev = previous hash (64 zeros first). Checks seq
 * runs 1..n; returns n and, if ops is given, each record's operation (caller frees). */
static size_t check_chain(char ops[][32], size_t max_ops)
{
	FILE *f = fopen(path, "r");
	char line[8192], body[8192], want[65], prev[65] = ZEROS;
	size_t n = 0, len;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		json_t *v;
		len = strlen(line);
		assert_true(len > 76 && line[len - 1] == '\n');
		line[--len] = '\0';
		assert_memory_equal(line + len - 75, ",\"hash\":\"", 9);
		assert_string_equal(line + len - 2, "\"}");
		memcpy(body, line, len - 75);
		strcpy(body + len - 75, "}");
		sha256_hex(body, strlen(body), want);
		v = json_loads(line, JSON_REJECT_DUPLICATES, NULL);
		assert_non_null(v);
		assert_int_equal(json_integer_value(json_object_get(v, "seq")), (json_int_t)(n + 1));
		assert_string_equal(json_string_value(json_object_get(v, "hash")), want);
		assert_string_equal(json_string_value(json_object_get(v, "prev")), prev);
		if (ops != NULL && n < max_ops)
			snprintf(ops[n], 32, "%s",
				 json_is_string(json_object_get(v, "operation"))
					 ? json_string_value(json_object_get(v, "operation"))
					 : "");
		json_decref(v);
		memcpy(prev, want, sizeof(prev));
		n++;
	}
	fclose(f);
	return n;
}

static json_t *read_record(size_t seq)
{
	FILE *f = fopen(path, "r");
	char line[8192];
	json_t *v = NULL;

	assert_non_null(f);
	for (size_t i = 0; i < seq; i++)
		assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	v = json_loads(line, 0, NULL);
	assert_non_null(v);
	return v;
}

static void test_chain_fields(void **state)
{
	struct audit *a;
	json_t *v;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(check_chain(NULL, 0), 3);
	v = read_record(1);
	assert_string_equal(json_string_value(json_object_get(v, "prev")), ZEROS);
	json_decref(v);
}

static void test_chain_continues_across_reopen(void **state)
{
	struct audit *a;
	(void)state;

	for (int round = 0; round < 3; round++) {
		assert_int_equal(audit_open(path, "n", &a), KMS_OK);
		assert_int_equal(audit_seq(a), (uint64_t)(round * 2));
		for (int i = 0; i < 2; i++)
			assert_int_equal(audit_append(a, &rec), KMS_OK);
		audit_close(a);
	}
	assert_int_equal(check_chain(NULL, 0), 6);
}

static void test_reopen_continues_and_cuts_torn_tail(void **state)
{
	char ops[8][32];
	struct audit *a;
	json_t *v;
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
	/* the cut is itself recorded, durably, before audit_open returns */
	assert_int_equal(audit_seq(a), 6);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(check_chain(ops, 8), 7);
	assert_string_equal(ops[5], AUDIT_OP_RECOVERED);
	assert_string_equal(ops[6], "datakey");
	v = read_record(6);
	assert_non_null(strstr(json_string_value(json_object_get(v, "reason")), "22 bytes"));
	assert_true(json_is_null(json_object_get(v, "request_id")));
	assert_true(json_is_null(json_object_get(v, "status")));
	json_decref(v);
}

static void test_torn_only_line(void **state)
{
	char ops[2][32];
	struct audit *a;
	FILE *f;
	(void)state;

	f = fopen(path, "w");
	fputs("{\"seq\":1,\"ti", f);
	fclose(f);
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_seq(a), 1);
	audit_close(a);
	assert_int_equal(check_chain(ops, 2), 1);
	assert_string_equal(ops[0], AUDIT_OP_RECOVERED);
}

/* The chain cannot be continued from a last record that is not what it says. */
static void test_refuses_bad_last_record(void **state)
{
	struct audit *a = NULL;
	char buf[8192];
	size_t n;
	FILE *f;
	char *p;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	f = fopen(path, "r+");
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	p = strrchr(buf, '\n');
	*p = '\0';
	p = strstr(strrchr(buf, '\n'), "\"svc\"");
	p[1] = 'S'; /* "svc" -> "Svc" in record 2 */
	buf[strlen(buf)] = '\n';
	rewind(f);
	fwrite(buf, 1, n, f);
	fclose(f);
	a = NULL;
	assert_int_equal(audit_open(path, "n", &a), KMS_ERR_IO);
	assert_null(a);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_IO), "does not match its hash"));

	/* a log from before the chain */
	f = fopen(path, "w");
	fputs("{\"seq\":1,\"operation\":\"datakey\"}\n", f);
	fclose(f);
	assert_int_equal(audit_open(path, "n", &a), KMS_ERR_IO);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_IO), "not a chained audit record"));
}

/* ------------------------------------------------------------------ checkpoints */

/* A stand-in for the token: an in-process P-256 key signing the digest it is given
 * (DER out, like p11_audit_sign). */
struct signer {
	EVP_PKEY *key;
	pthread_mutex_t mu;
	int calls;
	int fail;	  /* answer KMS_ERR_TOKEN */
	unsigned delay_us; /* make signing slow, to let appends overtake it */
};

static kms_err fake_sign(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig,
			 size_t cap, size_t *len)
{
	struct signer *s = ctx;
	EVP_PKEY_CTX *c;
	int ok;

	pthread_mutex_lock(&s->mu);
	s->calls++;
	pthread_mutex_unlock(&s->mu);
	if (s->delay_us)
		usleep(s->delay_us);
	if (s->fail)
		return kms_errf(KMS_ERR_TOKEN, "token: fake signer says no");
	c = EVP_PKEY_CTX_new(s->key, NULL);
	*len = cap;
	ok = c != NULL && EVP_PKEY_sign_init(c) == 1 &&
	     EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
	     EVP_PKEY_sign(c, sig, len, digest, AUDIT_HASH_LEN) == 1;
	EVP_PKEY_CTX_free(c);
	return ok ? KMS_OK : kms_errf(KMS_ERR_INTERNAL, "fake signer: OpenSSL failed");
}

static void signer_init(struct signer *s)
{
	FILE *f;

	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	s->key = EVP_EC_gen("P-256");
	assert_non_null(s->key);
	f = fopen(pub_path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PUBKEY(f, s->key), 1);
	fclose(f);
}

static void signer_free(struct signer *s)
{
	EVP_PKEY_free(s->key);
	pthread_mutex_destroy(&s->mu);
}

static void opts_for(struct audit_options *o, struct signer *s, unsigned n, unsigned t)
{
	audit_options_init(o);
	o->checkpoint_records = n;
	o->checkpoint_seconds = t;
	o->sign = fake_sign;
	o->sign_ctx = s;
}

static void verify_ok(uint64_t records, uint64_t ckpts, uint64_t last_signed, uint64_t tail)
{
	const char *files[] = {path};
	struct audit_verify_result res;
	char line[1024];

	assert_int_equal(audit_verify(files, 1, pub_path, &res), KMS_OK);
	audit_verify_summary(&res, line, sizeof(line));
	printf("    %s\n", line);
	assert_int_equal(res.verdict, AUDIT_V_OK);
	assert_int_equal(res.records, records);
	assert_int_equal(res.checkpoints, ckpts);
	assert_int_equal(res.last_signed_seq, last_signed);
	assert_int_equal(res.unsigned_tail, tail);
}

static void test_checkpoint_every_n(void **state)
{
	struct audit_options o;
	struct signer s;
	struct audit *a;
	char ops[40][32];
	json_t *v, *cp;
	(void)state;

	signer_init(&s);
	opts_for(&o, &s, 10, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (int i = 0; i < 25; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	/* 10 records, checkpoint 11 over seq 10; 10 more, checkpoint 22 over seq 21; 5 */
	assert_int_equal(audit_seq(a), 27);
	assert_int_equal(s.calls, 2);
	audit_close(a);
	assert_int_equal(check_chain(ops, 40), 27);
	for (int i = 0; i < 27; i++)
		assert_string_equal(ops[i], i == 10 || i == 21 ? AUDIT_OP_CHECKPOINT : "datakey");
	v = read_record(22);
	cp = json_object_get(v, "checkpoint");
	assert_int_equal(json_integer_value(json_object_get(cp, "seq")), 21);
	assert_string_equal(json_string_value(json_object_get(cp, "hash")),
			    json_string_value(json_object_get(v, "prev")));
	assert_string_equal(json_string_value(json_object_get(v, "reason")), "records");
	json_decref(v);
	verify_ok(27, 2, 21, 5);

	/* Reopen: the chain goes on; audit_checkpoint signs the tail. */
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(audit_checkpoint(a), KMS_OK);
	assert_int_equal(audit_seq(a), 29);
	assert_int_equal(audit_checkpoint(a), KMS_OK); /* nothing unsigned: no record */
	assert_int_equal(audit_seq(a), 29);
	audit_close(a);
	assert_int_equal(check_chain(NULL, 0), 29);
	verify_ok(29, 3, 28, 0);
	signer_free(&s);
}

static void test_checkpoint_by_time(void **state)
{
	struct audit_options o;
	struct signer s;
	struct audit *a;
	char ops[4][32];
	(void)state;

	signer_init(&s);
	opts_for(&o, &s, 0, 1);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	/* the log is idle: the timer thread signs the tail within a second or so */
	for (int i = 0; i < 40 && audit_seq(a) < 2; i++)
		usleep(100 * 1000);
	assert_int_equal(audit_seq(a), 2);
	usleep(1500 * 1000); /* and does not sign its own checkpoint again */
	assert_int_equal(audit_seq(a), 2);
	audit_close(a);
	assert_int_equal(check_chain(ops, 4), 2);
	assert_string_equal(ops[1], AUDIT_OP_CHECKPOINT);
	verify_ok(2, 1, 1, 0);
	signer_free(&s);
}

/* A failing signer delays checkpoints; it never fails or blocks the records. */
static void test_signer_failure_keeps_records(void **state)
{
	struct audit_options o;
	struct signer s;
	struct audit *a;
	(void)state;

	signer_init(&s);
	s.fail = 1;
	opts_for(&o, &s, 2, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (int i = 0; i < 6; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_true(audit_healthy(a));
	assert_int_equal(audit_seq(a), 6);
	assert_int_equal(s.calls, 1); /* and it is not hammered: backs off from 1 s */
	assert_int_equal(audit_checkpoint(a), KMS_ERR_TOKEN);
	s.fail = 0;
	assert_int_equal(audit_checkpoint(a), KMS_OK);
	audit_close(a);
	assert_int_equal(check_chain(NULL, 0), 7);
	verify_ok(7, 1, 6, 0);
	signer_free(&s);
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

/* Group commit with checkpoints, and a slow signer that appends overtake: each
 * checkpoint then covers a seq a few records back; the verifier accepts that. */
static void test_concurrent_with_checkpoints(void **state)
{
	pthread_t t[THREADS];
	struct audit_options o;
	struct signer s;
	struct audit *a;
	const char *files[] = {path};
	struct audit_verify_result res;
	char line[1024];
	void *r;
	(void)state;

	signer_init(&s);
	s.delay_us = 2000;
	opts_for(&o, &s, 50, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, a), 0);
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(t[i], &r), 0);
		assert_null(r);
	}
	assert_int_equal(audit_checkpoint(a), KMS_OK);
	assert_int_equal(audit_seq(a), THREADS * PER_THREAD + (uint64_t)s.calls);
	audit_close(a);
	assert_int_equal(check_chain(NULL, 0), THREADS * PER_THREAD + (size_t)s.calls);
	assert_int_equal(audit_verify(files, 1, pub_path, &res), KMS_OK);
	audit_verify_summary(&res, line, sizeof(line));
	printf("    %s (signer called %d times)\n", line, s.calls);
	assert_int_equal(res.verdict, AUDIT_V_OK);
	assert_int_equal(res.checkpoints, (uint64_t)s.calls);
	assert_true(s.calls >= THREADS * PER_THREAD / 50 / 2);
	assert_int_equal(res.unsigned_tail, 0);
	signer_free(&s);
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

/* The same with a signer due on every record: still refused, at most the one
 * checkpoint of the failing batch is signed, and nothing after the failure. */
static void test_fail_closed_with_signer(void **state)
{
	struct audit_options o;
	struct signer s;
	struct audit *a;
	(void)state;

	if (access("/dev/full", W_OK) != 0)
		skip();
	signer_init(&s);
	opts_for(&o, &s, 1, 0);
	assert_int_equal(audit_open_opts("/dev/full", "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	assert_false(audit_healthy(a));
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	assert_int_equal(audit_checkpoint(a), KMS_ERR_AUDIT);
	assert_true(s.calls <= 1);
	audit_close(a);
	signer_free(&s);
}

static void test_open_error(void **state)
{
	struct audit *a = NULL;
	(void)state;

	assert_int_equal(audit_open("/nonexistent-dir/audit.log", "n", &a), KMS_ERR_IO);
	assert_null(a);
	audit_close(NULL);
}

/* ------------------------------------------------------------------ segments, file checks */

/* The figures behind metrics and the compliance report: fsync histogram, queue depth,
 * chain head and the last checkpoint, also when it is found at open. */
static void test_stats_for_metrics(void **state)
{
	struct audit_options o;
	struct audit_stats st;
	struct signer s;
	struct audit *a;
	uint64_t n = 0;
	json_t *v;
	(void)state;

	signer_init(&s);
	opts_for(&o, &s, 10, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	audit_get_stats(a, &st);
	assert_int_equal(st.ckpt_seq, 0);
	assert_true(st.signer);
	for (int i = 0; i < 12; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_get_stats(a, &st);
	for (int b = 0; b <= AUDIT_FSYNC_BUCKETS; b++)
		n += st.fsync_hist[b];
	assert_int_equal(n, st.syncs);
	assert_true(st.syncs >= 1);
	assert_int_equal(st.queue_depth, 0);
	assert_int_equal(st.head_seq, 13); /* 10 records, checkpoint 11, 2 more */
	assert_int_equal(st.ckpt_seq, 11);
	assert_int_equal(st.ckpt_covered, 10);
	assert_int_equal(st.unsigned_records, 2);
	v = read_record(11);
	assert_string_equal(st.ckpt_time, json_string_value(json_object_get(v, "time")));
	json_decref(v);
	v = read_record(13);
	assert_string_equal(st.head_hash, json_string_value(json_object_get(v, "hash")));
	json_decref(v);
	assert_int_equal(audit_checkpoint(a), KMS_OK);
	audit_close(a);
	/* reopened: the last record is a checkpoint, so the last signature is known */
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	audit_get_stats(a, &st);
	assert_int_equal(st.ckpt_seq, 14);
	assert_int_equal(st.ckpt_covered, 13);
	assert_int_equal(st.unsigned_records, 0);
	assert_int_equal(st.head_seq, 14);
	audit_close(a);
	/* without a signer nothing is claimed */
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_get_stats(a, &st);
	assert_false(st.signer);
	assert_int_equal(st.ckpt_seq, 14); /* still the last one found at open */
	audit_close(a);
	signer_free(&s);
}

static int teardown_all(void **state)
{
	char cmd[160];
	(void)state;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* The rotated segments of dir in seq order (their 20-digit names sort as numbers). */
static size_t list_segments(char names[][192], size_t cap)
{
	char cmd[192];
	FILE *p;
	size_t n = 0;

	snprintf(cmd, sizeof(cmd), "ls '%s' | grep -E '^audit-[0-9]{20}\\.log$' | sort", dir);
	p = popen(cmd, "r");
	assert_non_null(p);
	while (n < cap && fgets(cmd, sizeof(cmd), p) != NULL) {
		cmd[strcspn(cmd, "\n")] = '\0';
		snprintf(names[n++], 192, "%s/%.100s", dir, cmd);
	}
	pclose(p);
	return n;
}

/* The segments then the current file verify as one log of `records` records. */
static void verify_files_ok(char names[][192], size_t n, uint64_t records)
{
	const char *files[65];
	struct audit_verify_result res;
	char line[1024];
	size_t i;

	assert_true(n <= 64);
	for (i = 0; i < n; i++)
		files[i] = names[i];
	files[n] = path;
	assert_int_equal(audit_verify(files, n + 1, pub_path, &res), KMS_OK);
	audit_verify_summary(&res, line, sizeof(line));
	printf("    %s\n", line);
	assert_int_equal(res.verdict, AUDIT_V_OK);
	assert_int_equal(res.records, records);
}

static json_t *first_record(const char *file)
{
	char line[4096];
	json_t *j;
	FILE *f = fopen(file, "r");

	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	j = json_loads(line, 0, NULL);
	assert_non_null(j);
	return j;
}

static void seg_opts(struct audit_options *o, struct signer *s, uint64_t bytes, unsigned seconds)
{
	opts_for(o, s, 10, 0);
	o->segment_bytes = bytes;
	o->segment_seconds = seconds;
}

/* Rotation by size: each segment is named after its first record, the chain runs on
 * across the files (verified), and a reopen goes on from where it stopped. */
static void test_segments_by_size(void **state)
{
	char names[64][192], want[192];
	struct audit_options o;
	struct audit_stats st;
	struct signer s;
	struct audit *a;
	size_t n, i;
	json_t *j;
	(void)state;

	signer_init(&s);
	seg_opts(&o, &s, 2000, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (i = 0; i < 40; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_get_stats(a, &st);
	assert_true(st.healthy);
	assert_true(st.segments >= 5);
	assert_true(st.syncs >= 1 && st.syncs <= st.records);
	assert_int_equal(st.records, st.seq); /* a new log: every record was made here */
	audit_close(a);
	n = list_segments(names, 64);
	assert_int_equal(n, st.segments);
	for (i = 0; i < n; i++) {
		j = first_record(names[i]);
		assert_true(audit_segment_name(path, (uint64_t)json_integer_value(json_object_get(j, "seq")),
					       want, sizeof(want)) > 0);
		json_decref(j);
		assert_string_equal(names[i], want);
	}
	verify_files_ok(names, n, st.seq);

	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (i = 0; i < 5; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(audit_checkpoint(a), KMS_OK);
	audit_get_stats(a, &st);
	audit_close(a);
	n = list_segments(names, 64);
	verify_files_ok(names, n, st.seq);

	/* retention removed the two oldest segments: a plain verify calls that deletion,
	 * a partial one verifies what is left, checkpoints by signature */
	{
		const char *files[65];
		struct audit_verify_result res;
		char line[512];
		uint64_t first;

		j = first_record(names[2]);
		first = (uint64_t)json_integer_value(json_object_get(j, "seq"));
		json_decref(j);
		for (i = 2; i < n; i++)
			files[i - 2] = names[i];
		files[n - 2] = path;
		assert_int_equal(audit_verify(files, n - 1, pub_path, &res), KMS_OK);
		assert_int_equal(res.verdict, AUDIT_V_DELETED);
		assert_int_equal(audit_verify_opts(files, n - 1, pub_path, AUDIT_VERIFY_PARTIAL, &res),
				 KMS_OK);
		audit_verify_summary(&res, line, sizeof(line));
		printf("    %s\n", line);
		assert_int_equal(res.verdict, AUDIT_V_OK);
		assert_int_equal(res.first_seq, first);
		assert_int_equal(res.records, st.seq - first + 1);
		assert_true(res.checkpoints >= 1);
		assert_non_null(strstr(line, "from seq"));
		/* partial still catches an edit after the start */
		files[0] = names[3];
		files[1] = names[2];
		assert_int_equal(audit_verify_opts(files, 2, pub_path, AUDIT_VERIFY_PARTIAL, &res), KMS_OK);
		assert_int_not_equal(res.verdict, AUDIT_V_OK);
	}
	signer_free(&s);
}

/* A segment's age crossing segment_seconds between the commit's check and the end of
 * the commit is no failed rotation: the next commit rotates. (A commit once checked the
 * age again after the sync; when the second had turned in between, it postponed
 * rotation by a minute without having tried it.) */
static void test_segment_age_turning_mid_commit(void **state)
{
	struct audit_options o;
	struct audit_stats st;
	struct signer s;
	struct audit *a;
	int i;
	(void)state;

	signer_init(&s);
	seg_opts(&o, &s, 0, 2);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	clock_step = time(NULL);
	clock_stepped = 1;
	/* the first record starts the segment's age (t), its check reads t+1: not due; a
	 * read after the sync would see t+2 */
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	for (i = 0; i < 3; i++) {
		audit_get_stats(a, &st);
		if (st.segments > 0)
			break;
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	}
	clock_stepped = 0;
	audit_get_stats(a, &st);
	assert_int_equal(st.segments, 1);
	assert_true(st.healthy);
	audit_close(a);
	signer_free(&s);
}

/* Rotation by age (segment_seconds), and an empty current file at start: the chain
 * continues from the newest segment and the start says so. */
static void test_segments_by_time_and_resume(void **state)
{
	char names[8][192];
	struct audit_options o;
	struct audit_stats st;
	struct signer s;
	struct audit *a;
	struct stat sb;
	size_t n;
	json_t *j;
	(void)state;

	signer_init(&s);
	seg_opts(&o, &s, 0, 1);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(list_segments(names, 8), 0);
	sleep(2); /* the segment is now older than segment_seconds */
	assert_int_equal(audit_append(a, &rec), KMS_OK); /* written, then rotated */
	audit_get_stats(a, &st);
	assert_int_equal(st.segments, 1);
	audit_close(a);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 0);

	o.segment_seconds = 0;
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	audit_close(a);
	j = first_record(path);
	assert_string_equal(json_string_value(json_object_get(j, "operation")), AUDIT_OP_RECOVERED);
	assert_int_equal(json_integer_value(json_object_get(j, "seq")), 3);
	assert_non_null(strstr(json_string_value(json_object_get(j, "reason")), "continues from"));
	json_decref(j);
	n = list_segments(names, 8);
	assert_int_equal(n, 1);
	verify_files_ok(names, n, 3);
	signer_free(&s);
}

/* A missing current file next to segments was deleted: refused, with the way out. */
static void test_missing_current_segment_refused(void **state)
{
	char names[64][192];
	size_t n;
	struct audit_options o;
	struct signer s;
	struct audit *a = NULL;
	int i;
	(void)state;

	signer_init(&s);
	seg_opts(&o, &s, 1500, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	for (i = 0; i < 20; i++)
		assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(unlink(path), 0);
	a = NULL;
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_ERR_IO);
	assert_null(a);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_IO), "deleted or moved"));

	/* without segments, refused only when a log is known to have existed */
	o.segment_bytes = 0;
	n = list_segments(names, 64);
	assert_true(n > 0);
	while (n > 0)
		assert_int_equal(unlink(names[--n]), 0);
	o.expect_existing = true;
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_ERR_IO);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_IO), "written an audit log here before"));
	/* an operator's empty file: a new chain, recorded */
	fclose(fopen(path, "w"));
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	audit_close(a);
	{
		json_t *j = first_record(path);
		assert_string_equal(json_string_value(json_object_get(j, "operation")), AUDIT_OP_RECOVERED);
		assert_non_null(strstr(json_string_value(json_object_get(j, "reason")), "new chain"));
		json_decref(j);
	}
	signer_free(&s);
}

/* A rotation cut by a crash: before the segment was linked (undone) and after
 * (completed). Either way nothing is lost and the chain verifies. */
static void test_interrupted_rotation(void **state)
{
	char next[192], seg[192], names[8][192];
	struct audit_options o;
	struct signer s;
	struct audit *a;
	json_t *j;
	FILE *f;
	(void)state;

	signer_init(&s);
	seg_opts(&o, &s, 0, 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	snprintf(next, sizeof(next), "%s.next", path);

	/* crash before link: .next exists, no segment */
	f = fopen(next, "w");
	fclose(f);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(access(next, F_OK), -1);
	assert_int_equal(list_segments(names, 8), 0);
	verify_files_ok(names, 0, 3);

	/* crash after link, before the rename: both names are the old file */
	f = fopen(next, "w");
	fclose(f);
	assert_true(audit_segment_name(path, 1, seg, sizeof(seg)) > 0);
	assert_int_equal(link(path, seg), 0);
	assert_int_equal(audit_open_opts(path, "n", &o, &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	audit_close(a);
	assert_int_equal(access(next, F_OK), -1);
	assert_int_equal(list_segments(names, 8), 1);
	j = first_record(path); /* the resumption record, then seq 5 */
	assert_int_equal(json_integer_value(json_object_get(j, "seq")), 4);
	json_decref(j);
	verify_files_ok(names, 1, 5);
	signer_free(&s);
}

/* The file deleted or replaced under a running log: the next append is refused (its
 * record went to a file nobody will read), and an idle log notices within seconds. */
static void test_deleted_or_replaced_file(void **state)
{
	struct audit_stats st;
	struct audit *a;
	char moved[192];
	int i;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	audit_get_stats(a, &st);
	assert_false(st.healthy);
	assert_non_null(strstr(st.why, "deleted"));
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	audit_close(a);

	/* idle: renamed away and replaced, noticed by the timer */
	unlink(path);
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	snprintf(moved, sizeof(moved), "%s.moved", path);
	assert_int_equal(rename(path, moved), 0);
	fclose(fopen(path, "w"));
	for (i = 0; i < 50 && audit_healthy(a); i++)
		usleep(100000);
	audit_get_stats(a, &st);
	assert_false(st.healthy);
	assert_non_null(strstr(st.why, "replaced"));
	assert_int_equal(audit_append(a, &rec), KMS_ERR_AUDIT);
	audit_close(a);
}

/* audit_enqueue queues without writing; audit_settled says 0 until a sync covers the
 * seq; audit_wait writes and syncs everything queued (one group); a snapshot taken
 * with records queued writes them first and ends its cut on the last one. */
static void test_enqueue_wait_settled_and_snapshot(void **state)
{
	struct audit_snapshot snap;
	struct audit_stats st;
	struct audit *a;
	uint64_t s1 = 0, s2 = 0, s3 = 0;
	struct stat sb;
	(void)state;

	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_enqueue(a, &rec, &s1), KMS_OK);
	assert_int_equal(audit_enqueue(a, &rec, &s2), KMS_OK);
	assert_true(s1 >= 1 && s2 == s1 + 1);
	assert_int_equal(audit_settled(a, s1), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 0); /* nothing written yet */
	assert_int_equal(audit_wait(a, s1), KMS_OK);
	/* one group: the sync that covered s1 covered s2, queued before it */
	assert_int_equal(audit_settled(a, s1), 1);
	assert_int_equal(audit_settled(a, s2), 1);
	assert_int_equal(check_lines(1), 2);
	audit_get_stats(a, &st);
	assert_int_equal(st.syncs, 1);

	/* queued, then a snapshot: written, synced and part of the cut */
	assert_int_equal(audit_enqueue(a, &rec, &s3), KMS_OK);
	assert_int_equal(audit_settled(a, s3), 0);
	assert_int_equal(audit_snapshot(a, &snap), KMS_OK);
	assert_int_equal(snap.last_seq, s3);
	assert_int_equal(audit_settled(a, s3), 1);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(snap.n, 1);
	assert_int_equal(snap.files[0].size, (uint64_t)sb.st_size);
	audit_snapshot_free(&snap);
	assert_int_equal(check_lines(1), 3);
	audit_close(a);
}

/* A queued record whose write fails: audit_wait refuses and audit_settled says never
 * (-1), and an enqueue after the failure is refused at once. */
static void test_enqueue_fail_closed(void **state)
{
	struct audit *a;
	uint64_t s1 = 0, s2 = 0;
	(void)state;

	if (access("/dev/full", W_OK) != 0)
		skip();
	assert_int_equal(audit_open("/dev/full", "n", &a), KMS_OK);
	assert_int_equal(audit_enqueue(a, &rec, &s1), KMS_OK);
	assert_int_equal(audit_settled(a, s1), 0);
	assert_int_equal(audit_wait(a, s1), KMS_ERR_AUDIT);
	assert_int_equal(audit_settled(a, s1), -1);
	assert_int_equal(audit_enqueue(a, &rec, &s2), KMS_ERR_AUDIT);
	assert_int_equal(s2, 0);
	audit_close(a);
}

/* Extra members (the hashed context) are written after reason; one that would
 * override a standard member refuses the record. */
static void test_extra_members(void **state)
{
	struct audit_record r = rec;
	struct audit *a;
	json_t *x, *j;
	(void)state;

	x = json_pack("{s:{s:s},s:n}", "encryption_context", "purpose", "hmac-sha256:00",
		      "associated_data");
	r.extra = x;
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &r), KMS_OK);
	json_decref(x);
	x = json_pack("{s:s}", "principal", "mallory");
	r.extra = x;
	assert_int_not_equal(audit_append(a, &r), KMS_OK);
	assert_true(audit_healthy(a)); /* refused, not failed */
	json_decref(x);
	audit_close(a);
	j = first_record(path);
	assert_string_equal(
		json_string_value(json_object_get(json_object_get(j, "encryption_context"), "purpose")),
		"hmac-sha256:00");
	assert_true(json_is_null(json_object_get(j, "associated_data")));
	assert_string_equal(json_string_value(json_object_get(j, "principal")), "svc");
	json_decref(j);
	assert_int_equal(check_lines(1), 1);
}

/* The request path writes records without jansson: its bytes must be those of the
 * jansson object record_object builds (members in order, compact, ASCII escapes), for
 * awkward text too, and a long record must take the second, sized pass. */
static void test_record_bytes_as_jansson(void **state)
{
	static const char *const texts[] = {"q\"uo\\te", "ctl\n\t\x01\x7f", "caf\xc3\xa9 \xf0\x9f\x98\x80",
					    "bad \xc3 utf8 \xe9", "", NULL};
	char *longtext = malloc(5000);
	struct audit *a;
	FILE *f;
	static char line[65536];
	size_t i, nrec = 0;
	json_t *want[16];
	(void)state;

	memset(longtext, 'L', 4999);
	longtext[4999] = '\0';
	assert_int_equal(audit_open(path, "n\xc3\xa9", &a), KMS_OK);
	for (i = 0; i < sizeof(texts) / sizeof(texts[0]) + 1; i++) {
		struct audit_record r = rec;
		const char *t = i < sizeof(texts) / sizeof(texts[0]) ? texts[i] : longtext;
		json_t *x = json_pack("{s:{s:s,s:o},s:n,s:[i,b]}", "encryption_context", t, "hmac-sha256:00",
				      "n", json_integer(-7), "associated_data", "list", 3, 1);
		json_t *o;

		r.principal = t;
		r.reason = t;
		r.key = i % 2 ? NULL : t;
		r.version = (uint32_t)i;
		r.batch = (unsigned)(i % 3);
		r.status = i == 2 ? 0 : 400 + (int)i;
		r.mfa = i % 2;
		r.extra = x;
		assert_int_equal(audit_append(a, &r), KMS_OK);
		/* the same record as a jansson object, in record_object's order */
		o = json_object();
		json_object_set_new(o, "node", kms_json_text("n\xc3\xa9"));
		json_object_set_new(o, "request_id", kms_json_text(r.request_id));
		json_object_set_new(o, "principal", kms_json_text(r.principal));
		json_object_set_new(o, "auth_method", kms_json_text(r.auth_method));
		json_object_set_new(o, "mfa", json_boolean(r.mfa));
		json_object_set_new(o, "remote_addr", kms_json_text(r.remote_addr));
		json_object_set_new(o, "operation", kms_json_text(r.operation));
		json_object_set_new(o, "tenant", kms_json_text(r.tenant));
		json_object_set_new(o, "key", kms_json_text(r.key));
		json_object_set_new(o, "version", r.version ? json_integer(r.version) : json_null());
		if (r.batch)
			json_object_set_new(o, "batch", json_integer(r.batch));
		json_object_set_new(o, "outcome", kms_json_text(r.outcome));
		json_object_set_new(o, "status", r.status ? json_integer(r.status) : json_null());
		json_object_set_new(o, "reason", kms_json_text(r.reason));
		json_object_update(o, x);
		want[nrec++] = o;
		json_decref(x);
	}
	audit_close(a);
	free(longtext);
	f = fopen(path, "r");
	assert_non_null(f);
	for (i = 0; i < nrec; i++) {
		char *mid, *end, *exp;
		size_t n;

		assert_non_null(fgets(line, sizeof(line), f));
		{
			json_t *v = json_loads(line, 0, NULL);
			assert_non_null(v);
			assert_int_equal(json_integer_value(json_object_get(v, "seq")), (json_int_t)(i + 1));
			json_decref(v);
		}
		/* {"seq":N,"time":"…"<middle>,"prev":"…","hash":"…"}\n */
		mid = strstr(line, "Z\",\"node\":");
		assert_non_null(mid);
		mid += 2;
		end = strstr(line, ",\"prev\":\"");
		assert_non_null(end);
		exp = json_dumps(want[i], JSON_COMPACT | JSON_ENSURE_ASCII);
		assert_non_null(exp);
		n = strlen(exp);
		exp[0] = ',';
		assert_int_equal((size_t)(end - mid), n - 1); /* without the closing brace */
		assert_memory_equal(mid, exp, n - 1);
		kms_json_free_str(exp, 0);
		json_decref(want[i]);
	}
	assert_null(fgets(line, sizeof(line), f));
	fclose(f);
}

static void test_syslog_targets(void **state)
{
	static const char *const good[] = {"udp:127.0.0.1:514", "udp:[::1]:6514", "unix:/dev/log"};
	static const char *const bad[] = {"", "tcp:127.0.0.1:514", "udp:127.0.0.1", "udp:127.0.0.1:0",
					  "udp:127.0.0.1:65536", "udp:localhost:514", "udp:::1:514",
					  "udp:[::1]514", "udp::514", "unix:dev/log", "udp:1.2.3.4:5x"};
	struct audit_syslog *s = NULL;
	size_t i;
	(void)state;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_null(audit_syslog_target_problem(good[i]));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (audit_syslog_target_problem(bad[i]) == NULL)
			fail_msg("accepted %s", bad[i]);
		assert_int_equal(audit_syslog_open(bad[i], &s), KMS_ERR_CONFIG);
		assert_null(s);
	}
	assert_int_equal(audit_syslog_open("udp:127.0.0.1:9", &s), KMS_OK);
	{
		static const char two[] = "{\"time\":\"t\"}\n{\"x\":1}\n";
		uint64_t sent = 0, dropped = 0;

		audit_syslog_send(s, two, sizeof(two) - 1);
		audit_syslog_counts(s, &sent, &dropped);
		assert_int_equal(sent + dropped, 2);
	}
	audit_syslog_close(s);
}

/* A last record far over the first 64 KiB recovery reads (a large batch record) is
 * found by widening the window, whole or torn after it. */
static void test_long_last_record_recovered(void **state)
{
	struct audit_record r = rec;
	struct audit *a;
	size_t big = 300000;
	char *reason = malloc(big + 1);
	FILE *f;
	(void)state;

	assert_non_null(reason);
	memset(reason, 'r', big);
	reason[big] = '\0';
	r.reason = reason;
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_append(a, &rec), KMS_OK);
	assert_int_equal(audit_append(a, &r), KMS_OK);
	audit_close(a);
	assert_int_equal(audit_open(path, "n", &a), KMS_OK); /* the big record is the last */
	assert_int_equal(audit_seq(a), 2);
	assert_int_equal(audit_append(a, &r), KMS_OK);
	audit_close(a);
	f = fopen(path, "a"); /* a torn copy of it after: cut, and the chain goes on */
	assert_non_null(f);
	fwrite("{\"seq\":4,", 1, 9, f);
	fwrite(reason, 1, 100000, f);
	fclose(f);
	assert_int_equal(audit_open(path, "n", &a), KMS_OK);
	assert_int_equal(audit_seq(a), 4); /* 3, then the recovery record */
	audit_close(a);
	{
		/* four lines, the last the recovery record (check_lines reads short lines only) */
		FILE *g = fopen(path, "r");
		size_t lines = 0, len = 0;
		char *all, *last;
		json_t *j;
		long sz;

		assert_non_null(g);
		fseek(g, 0, SEEK_END);
		sz = ftell(g);
		rewind(g);
		all = malloc((size_t)sz + 1);
		assert_non_null(all);
		len = fread(all, 1, (size_t)sz, g);
		fclose(g);
		all[len] = '\0';
		for (size_t i = 0; i < len; i++)
			lines += all[i] == '\n';
		assert_int_equal(lines, 4);
		all[len - 1] = '\0';
		last = strrchr(all, '\n') + 1;
		j = json_loads(last, 0, NULL);
		assert_non_null(j);
		assert_int_equal(json_integer_value(json_object_get(j, "seq")), 4);
		assert_string_equal(json_string_value(json_object_get(j, "operation")), AUDIT_OP_RECOVERED);
		json_decref(j);
		free(all);
	}
	free(reason);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_fields_and_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chain_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chain_continues_across_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_continues_and_cuts_torn_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_only_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refuses_bad_last_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_every_n, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stats_for_metrics, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_by_time, setup, teardown),
		cmocka_unit_test_setup_teardown(test_signer_failure_keeps_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_group_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_with_checkpoints, setup, teardown),
		cmocka_unit_test(test_fail_closed),
		cmocka_unit_test_setup_teardown(test_enqueue_wait_settled_and_snapshot, setup, teardown),
		cmocka_unit_test(test_enqueue_fail_closed),
		cmocka_unit_test_setup_teardown(test_fail_closed_with_signer, setup, teardown),
		cmocka_unit_test(test_open_error),
		cmocka_unit_test_setup_teardown(test_segments_by_size, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_segments_by_time_and_resume, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_segment_age_turning_mid_commit, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_missing_current_segment_refused, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_interrupted_rotation, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_deleted_or_replaced_file, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_extra_members, setup, teardown_all),
		cmocka_unit_test_setup_teardown(test_record_bytes_as_jansson, setup, teardown_all),
		cmocka_unit_test(test_syslog_targets),
		cmocka_unit_test_setup_teardown(test_long_last_record_recovered, setup, teardown_all),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("audit", tests, NULL, NULL);
}
