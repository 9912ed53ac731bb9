/* The offline verifier against a log signed by a real SoftHSM2 key (fresh token per
 * test: p11_provision, p11_open, p11_audit_sign as the checkpoint signer, the public key
 * exported with p11_audit_pubkey_pem). Each test damages the log one way and checks that
 * both audit_verify() and the built kmsctl binary name the exact seq, line and reason.
 *
 * The log (checkpoint every 5 records, no timer): 27 lines
 *   seq 1-5 records, 6 checkpoint over 5, 7-11, 12 over 11, 13-17, 18 over 17,
 *   19-23, 24 over 23, 25-27 records (the unsigned tail). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/audit/verify.h"
#include "kms/base/json.h"
#include "pkcs11/p11.h"
#include "tests/common/softhsm.h"

#define LINES 27
#define MAXLINE 4096

struct fx {
	struct softhsm_token t;
	struct p11 *p;
	char log[160], pub[192];
	char *lines[LINES + 2]; /* the log as written, one line each with its '\n' */
	size_t n;
};

static char kmsctl[PATH_MAX + 16];

static kms_err sign_p11(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig,
			size_t cap, size_t *len)
{
	return p11_audit_sign(ctx, digest, sig, cap, len);
}

static int write_file(const char *path, const char *data, size_t n)
{
	FILE *f = fopen(path, "w");
	int rc;

	if (f == NULL)
		return -1;
	rc = fwrite(data, 1, n, f) == n ? 0 : -1;
	if (fclose(f) != 0)
		rc = -1;
	return rc;
}

static int load_lines(struct fx *x)
{
	FILE *f = fopen(x->log, "r");
	char buf[MAXLINE];

	if (f == NULL)
		return -1;
	x->n = 0;
	while (x->n < LINES + 1 && fgets(buf, sizeof(buf), f) != NULL)
		x->lines[x->n++] = strdup(buf);
	fclose(f);
	return x->n == LINES ? 0 : -1;
}

static int setup(void **state)
{
	struct p11_config cfg = {SOFTHSM_MODULE, SOFTHSM_LABEL, 2};
	struct audit_options o;
	struct audit *a = NULL;
	char *pem = NULL, rid[32];
	struct fx *x = calloc(1, sizeof(*x));
	struct audit_record r = {
		.request_id = rid, .principal = "svc", .auth_method = "token",
		.remote_addr = "127.0.0.1", .operation = "datakey", .tenant = "demo", .key = "k1",
		.version = 1, .outcome = "allow", .status = 200, .reason = "scoped",
	};
	int rc = -1;

	if (x == NULL)
		return -1;
	*state = x;
	if (softhsm_token_create(&x->t) != 0)
		return -1;
	if (p11_provision(&cfg, x->t.so_pin, x->t.so_pin_len, x->t.user_pin, x->t.user_pin_len) !=
		    KMS_OK ||
	    p11_open(&cfg, x->t.user_pin, x->t.user_pin_len, &x->p) != KMS_OK ||
	    p11_audit_pubkey_pem(x->p, &pem) != KMS_OK)
		return -1;
	snprintf(x->log, sizeof(x->log), "%s/audit.log", x->t.dir);
	snprintf(x->pub, sizeof(x->pub), "%s/audit.log.pub.pem", x->t.dir);
	if (write_file(x->pub, pem, strlen(pem)) != 0)
		goto out;
	audit_options_init(&o);
	o.checkpoint_records = 5;
	o.checkpoint_seconds = 0;
	o.sign = sign_p11;
	o.sign_ctx = x->p;
	if (audit_open_opts(x->log, "node-v", &o, &a) != KMS_OK)
		goto out;
	for (int i = 1; i <= 23; i++) {
		snprintf(rid, sizeof(rid), "req-%d", i);
		if (audit_append(a, &r) != KMS_OK)
			goto out;
	}
	audit_close(a);
	a = NULL;
	rc = load_lines(x);
out:
	audit_close(a);
	free(pem);
	return rc;
}

static int teardown(void **state)
{
	struct fx *x = *state;

	if (x == NULL)
		return 0;
	for (size_t i = 0; i < x->n; i++)
		free(x->lines[i]);
	p11_close(x->p);
	softhsm_token_destroy(&x->t);
	free(x);
	return 0;
}

/* Writes lines[0..n) back to the log. */
static void store(struct fx *x)
{
	FILE *f = fopen(x->log, "w");

	assert_non_null(f);
	for (size_t i = 0; i < x->n; i++)
		assert_int_equal(fputs(x->lines[i], f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[b[i] >> 4];
		out[2 * i + 1] = hx[b[i] & 15];
	}
	out[2 * n] = '\0';
}

/* What a forger would do after changing line i: recompute its hash and every later
 * prev/hash so the chain is consistent again. A line ends in
 *   "prev":"<64>"},"hash":"<64>"}\n  i.e. prev at len-1-75-65, hash at len-1-66. */
static void rechain_from(struct fx *x, size_t i)
{
	char body[MAXLINE], h[65];
	uint8_t md[32];
	unsigned mdn;

	for (; i < x->n; i++) {
		char *l = x->lines[i];
		size_t len = strlen(l) - 1; /* without '\n' */

		if (i > 0) {
			const char *pl = x->lines[i - 1];
			memcpy(l + len - 75 - 65, pl + strlen(pl) - 1 - 66, 64);
		}
		memcpy(body, l, len - 75);
		body[len - 75] = '}';
		assert_int_equal(EVP_Digest(body, len - 74, md, &mdn, EVP_sha256(), NULL), 1);
		hex(md, 32, h);
		memcpy(l + len - 66, h, 64);
	}
}

/* Runs build/.../kmsctl audit verify --pubkey PUB LOG; returns its exit status and
 * its stdout (first line) in out. */
static int run_kmsctl(struct fx *x, char *out, size_t cap)
{
	int pfd[2], status;
	ssize_t n;
	size_t got = 0;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(pfd[1], STDOUT_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		execl(kmsctl, "kmsctl", "audit", "verify", "--pubkey", x->pub, x->log, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	while (got + 1 < cap && (n = read(pfd[0], out + got, cap - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (got > 0 && out[got - 1] == '\n')
		out[got - 1] = '\0';
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Both the library and the binary must say exactly this. */
static void expect(struct fx *x, enum audit_verdict v, uint64_t seq, uint64_t line,
		   const char *word)
{
	const char *files[] = {x->log};
	struct audit_verify_result res;
	char sum[1024], prefix[512], out[2048];

	assert_int_equal(audit_verify(files, 1, x->pub, &res), KMS_OK);
	audit_verify_summary(&res, sum, sizeof(sum));
	printf("    %s\n", sum);
	assert_int_equal(res.verdict, v);
	assert_int_equal(res.seq, seq);
	assert_int_equal(res.line, line);
	assert_string_equal(res.file, x->log);
	assert_int_equal(strncmp(res.why, word, strlen(word)), 0);
	snprintf(prefix, sizeof(prefix), "FAIL: record seq %llu (line %llu of %s): %s",
		 (unsigned long long)seq, (unsigned long long)line, x->log, word);
	assert_int_equal(strncmp(sum, prefix, strlen(prefix)), 0);

	assert_int_equal(run_kmsctl(x, out, sizeof(out)), 1);
	assert_string_equal(out, sum);
}

static void test_untouched_ok(void **state)
{
	struct fx *x = *state;
	const char *files[] = {x->log};
	struct audit_verify_result res;
	char sum[1024], out[2048];
	const char *want = "ok: 27 records, 4 checkpoints, last signed seq 23, unsigned tail "
			   "of 3 records";

	assert_int_equal(audit_verify(files, 1, x->pub, &res), KMS_OK);
	audit_verify_summary(&res, sum, sizeof(sum));
	printf("    %s\n", sum);
	assert_int_equal(res.verdict, AUDIT_V_OK);
	assert_string_equal(sum, want);
	assert_int_equal(run_kmsctl(x, out, sizeof(out)), 0);
	assert_string_equal(out, want);
}

static void test_edit_one_byte(void **state)
{
	struct fx *x = *state;
	char *p = strstr(x->lines[8], "\"svc\""); /* seq 9 */

	assert_non_null(p);
	p[3] = 'd'; /* "svc" -> "svd" */
	store(x);
	expect(x, AUDIT_V_EDITED, 9, 9, "edited: hash mismatch");
}

static void test_delete_record(void **state)
{
	struct fx *x = *state;

	free(x->lines[8]); /* seq 9 */
	memmove(&x->lines[8], &x->lines[9], (x->n - 9) * sizeof(char *));
	x->n--;
	store(x);
	expect(x, AUDIT_V_DELETED, 9, 9, "deleted: seq jumps from 8 to 10");
}

static void test_insert_copy(void **state)
{
	struct fx *x = *state;

	/* a copy of seq 3 after seq 9 */
	memmove(&x->lines[10], &x->lines[9], (x->n - 9) * sizeof(char *));
	x->lines[9] = strdup(x->lines[2]);
	x->n++;
	store(x);
	expect(x, AUDIT_V_INSERTED, 3, 10, "inserted: a copy of seq 3 (line 3");
}

static void test_swap_records(void **state)
{
	struct fx *x = *state;
	char *t = x->lines[8];

	x->lines[8] = x->lines[9]; /* seq 10 now on line 9, seq 9 on line 10 */
	x->lines[9] = t;
	store(x);
	expect(x, AUDIT_V_REORDERED, 10, 9, "reordered: seq 10 stands where seq 9 belongs");
}

static void test_truncate_mid_line(void **state)
{
	struct fx *x = *state;
	size_t off = 0;

	for (size_t i = 0; i < 19; i++)
		off += strlen(x->lines[i]);
	off += strlen(x->lines[19]) / 2; /* half of seq 20 */
	assert_int_equal(truncate(x->log, (off_t)off), 0);
	expect(x, AUDIT_V_TRUNCATED, 20, 20, "truncated");
}

/* Checkpoint seq 12 gets the (valid DER, other message) signature of checkpoint seq 6.
 * Without re-chaining that is an edit; with the chain recomputed by the forger only the
 * signature gives it away. */
static void test_swap_checkpoint_signature(void **state)
{
	struct fx *x = *state;
	char *s6 = strstr(x->lines[5], "\"sig\":\""), *s12 = strstr(x->lines[11], "\"sig\":\"");
	char *e6, *e12, line[MAXLINE];

	assert_non_null(s6);
	assert_non_null(s12);
	s6 += 7;
	s12 += 7;
	e6 = strchr(s6, '"');
	e12 = strchr(s12, '"');
	snprintf(line, sizeof(line), "%.*s%.*s%s", (int)(s12 - x->lines[11]), x->lines[11],
		 (int)(e6 - s6), s6, e12);
	assert_string_not_equal(line, x->lines[11]);
	free(x->lines[11]);
	x->lines[11] = strdup(line);
	store(x);
	expect(x, AUDIT_V_EDITED, 12, 12, "edited: hash mismatch");
	rechain_from(x, 11);
	store(x);
	expect(x, AUDIT_V_SIGNATURE, 12, 12, "bad signature");
}

/* A record edited and the whole chain recomputed: the next checkpoint's signed hash no
 * longer matches. */
static void test_rechained_edit_caught_by_checkpoint(void **state)
{
	struct fx *x = *state;
	char *p = strstr(x->lines[8], "\"svc\""); /* seq 9 */

	p[1] = 'S';
	rechain_from(x, 8);
	store(x);
	expect(x, AUDIT_V_CHECKPOINT, 12, 12, "bad checkpoint: covers seq 11");
}

/* Usage errors exit 2; --help exits 0 at every level. */
static void test_kmsctl_usage(void **state)
{
	struct fx *x = *state;
	char cmd[2 * PATH_MAX + 512];

	(void)x;
	snprintf(cmd, sizeof(cmd), "%s >/dev/null 2>&1", kmsctl);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2);
	snprintf(cmd, sizeof(cmd), "%s audit verify >/dev/null 2>&1", kmsctl);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2);
	snprintf(cmd, sizeof(cmd), "%s audit frobnicate >/dev/null 2>&1", kmsctl);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2);
	snprintf(cmd, sizeof(cmd), "%s audit verify --pubkey %s/nope.pem %s >/dev/null 2>&1",
		 kmsctl, x->t.dir, x->log);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2);
	for (int i = 0; i < 3; i++) {
		static const char *const lv[] = {"--help", "audit --help", "audit verify --help"};
		snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>&1", kmsctl, lv[i]);
		assert_int_equal(WEXITSTATUS(system(cmd)), 0);
	}
	/* the default public key is <SEGMENT>.pub.pem */
	snprintf(cmd, sizeof(cmd), "%s audit verify %s >/dev/null 2>&1", kmsctl, x->log);
	assert_int_equal(WEXITSTATUS(system(cmd)), 0);
}

/* kmsctl sits next to the tests directory of this build (build/ or build/asan/). */
static int find_kmsctl(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0)
		return -1;
	self[n] = '\0';
	for (int i = 0; i < 2; i++) {
		slash = strrchr(self, '/');
		if (slash == NULL)
			return -1;
		*slash = '\0';
	}
	snprintf(kmsctl, sizeof(kmsctl), "%s/kmsctl", self);
	if (access(kmsctl, X_OK) != 0) {
		fprintf(stderr, "test_audit_verify: %s not built (make tests builds it)\n", kmsctl);
		return -1;
	}
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_untouched_ok, setup, teardown),
		cmocka_unit_test_setup_teardown(test_edit_one_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_insert_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncate_mid_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_swap_checkpoint_signature, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rechained_edit_caught_by_checkpoint, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_kmsctl_usage, setup, teardown),
	};

	kms_json_init();
	if (find_kmsctl() != 0)
		return 1;
	return cmocka_run_group_tests_name("audit_verify", tests, NULL, NULL);
}
