/* The logs of several kmsd nodes, verified and searched together (verify.h
 * audit_verify_nodes, search.h audit_segs_chains and the merged audit_scan): each node's
 * log written by the real writer (audit_open_opts) with checkpoints signed by one
 * in-process P-256 key, as every node's are by the one token key. The end-to-end run of
 * two kmsd and kmsctl is tests/integration/test_audit_nodes.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/audit/search.h"
#include "kms/audit/verify.h"

struct fx {
	char dir[64], pub[128];
	EVP_PKEY *key;
};

static kms_err sign(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig, size_t cap,
		    size_t *len)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(ctx, NULL);
	int ok;

	*len = cap;
	ok = c != NULL && EVP_PKEY_sign_init(c) == 1 &&
	     EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
	     EVP_PKEY_sign(c, sig, len, digest, AUDIT_HASH_LEN) == 1;
	EVP_PKEY_CTX_free(c);
	return ok ? KMS_OK : kms_errf(KMS_ERR_INTERNAL, "test signer: OpenSSL failed");
}

static int setup(void **state)
{
	struct fx *x = calloc(1, sizeof(*x));
	FILE *f;

	if (x == NULL)
		return -1;
	snprintf(x->dir, sizeof(x->dir), "/tmp/kms-audit-nodes-XXXXXX");
	if (mkdtemp(x->dir) == NULL)
		return -1;
	snprintf(x->pub, sizeof(x->pub), "%s/pub.pem", x->dir);
	x->key = EVP_EC_gen("P-256");
	f = fopen(x->pub, "w");
	if (x->key == NULL || f == NULL || PEM_write_PUBKEY(f, x->key) != 1)
		return -1;
	fclose(f);
	*state = x;
	return 0;
}

static int teardown(void **state)
{
	struct fx *x = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", x->dir);
	if (system(cmd) != 0)
		return -1;
	EVP_PKEY_free(x->key);
	free(x);
	return 0;
}

/* <dir>/<sub>/audit.log: n records written as node, a checkpoint every 4. */
static void write_log(const struct fx *x, const char *sub, const char *node, int n, char *path,
		      size_t cap)
{
	const struct audit_record r = {
		.request_id = "rid", .principal = "svc", .auth_method = "token",
		.remote_addr = "127.0.0.1", .operation = "datakey", .tenant = "t", .key = "k",
		.version = 1, .outcome = "allow", .status = 200, .reason = "test",
	};
	struct audit_options o;
	struct audit *a;
	char d[128];

	snprintf(d, sizeof(d), "%s/%s", x->dir, sub);
	(void)mkdir(d, 0700);
	snprintf(path, cap, "%s/audit.log", d);
	audit_options_init(&o);
	o.checkpoint_records = 4;
	o.sign = sign;
	o.sign_ctx = x->key;
	assert_int_equal(audit_open_opts(path, node, &o, &a), KMS_OK);
	for (int i = 0; i < n; i++)
		assert_int_equal(audit_append(a, &r), KMS_OK);
	audit_close(a);
}

/* Collects and verifies the paths; checks the call ran. */
static void verify(const struct fx *x, const char *const *paths, size_t n,
		   const struct audit_nodes_opts *given, struct audit_segs *segs,
		   struct audit_nodes_result *res)
{
	struct audit_nodes_opts o = {0};
	char line[1400];

	if (given != NULL)
		o = *given;
	o.pubkey = x->pub;
	assert_int_equal(audit_segs_collect(paths, n, segs), KMS_OK);
	assert_int_equal(audit_verify_nodes(segs, &o, res), KMS_OK);
	for (size_t i = 0; i < res->n; i++) {
		audit_node_summary(&res->v[i], line, sizeof(line));
		printf("    %s\n", line);
	}
	audit_nodes_summary(res, line, sizeof(line));
	printf("    %s\n", line);
}

/* Two nodes, then three: each chain verified on its own, one total. */
static void test_two_and_three_nodes(void **state)
{
	struct fx *x = *state;
	char a[160], b[160], c[160], line[1400];
	const char *paths[3] = {a, b, c};
	struct audit_segs segs;
	struct audit_nodes_result res;

	write_log(x, "a", "node-a", 10, a, sizeof(a)); /* 10 records + 2 checkpoints */
	write_log(x, "b", "node-b", 5, b, sizeof(b));  /* 5 + 1 */
	write_log(x, "c", "node-c", 3, c, sizeof(c));  /* 3, unsigned */
	verify(x, paths, 2, NULL, &segs, &res);
	assert_int_equal(res.n, 2);
	assert_int_equal(res.failed, 0);
	assert_string_equal(res.v[0].node, "node-a");
	assert_string_equal(res.v[1].node, "node-b");
	assert_int_equal(res.v[0].res.records, 12);
	assert_int_equal(res.v[0].res.checkpoints, 2);
	assert_int_equal(res.v[1].res.records, 6);
	assert_int_equal(res.records, 18);
	assert_int_equal(res.checkpoints, 3);
	audit_nodes_summary(&res, line, sizeof(line));
	assert_string_equal(line, "ok: 2 nodes, 18 records, 3 checkpoints");
	audit_node_summary(&res.v[1], line, sizeof(line));
	assert_string_equal(line, "node node-b: ok: 6 records, 1 checkpoints, last signed seq 4, "
				  "unsigned tail of 1 records");
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);

	/* three, given as their directories in any order */
	{
		char da[128], db[128], dc[128];
		const char *dirs[3] = {dc, da, db};

		snprintf(da, sizeof(da), "%s/a", x->dir);
		snprintf(db, sizeof(db), "%s/b", x->dir);
		snprintf(dc, sizeof(dc), "%s/c", x->dir);
		verify(x, dirs, 3, NULL, &segs, &res);
	}
	assert_int_equal(res.n, 3);
	assert_int_equal(res.failed, 0);
	assert_string_equal(res.v[2].node, "node-c");
	assert_int_equal(res.v[2].res.unsigned_tail, 3);
	audit_nodes_summary(&res, line, sizeof(line));
	assert_string_equal(line, "ok: 3 nodes, 21 records, 3 checkpoints");
	audit_nodes_result_free(&res);

	/* --node restricts; a node with no log is missing */
	{
		const char *only[] = {"node-c", "node-z"};
		struct audit_nodes_opts o = {.only = only, .n_only = 2};
		struct audit_nodes_result r2;

		assert_int_equal(audit_verify_nodes(&segs, &(struct audit_nodes_opts){
						      .pubkey = x->pub, .only = only, .n_only = 1},
						    &r2),
				 KMS_OK);
		assert_int_equal(r2.n, 1);
		assert_int_equal(r2.failed, 0);
		assert_string_equal(r2.v[0].node, "node-c");
		audit_nodes_result_free(&r2);
		o.pubkey = x->pub;
		assert_int_equal(audit_verify_nodes(&segs, &o, &r2), KMS_OK);
		assert_int_equal(r2.n, 2);
		assert_int_equal(r2.failed, 1);
		assert_string_equal(r2.v[1].node, "node-z");
		assert_int_equal(r2.v[1].res.verdict, AUDIT_V_MISSING);
		audit_verify_summary(&r2.v[1].res, line, sizeof(line));
		assert_string_equal(line, "FAIL: missing: no log of node node-z among the files given");
		audit_nodes_result_free(&r2);
	}
	audit_segs_free(&segs);
}

/* Replaces the first occurrence of from in line n (1-based) of path with to (same length). */
static void edit_line(const char *path, int n, const char *from, const char *to)
{
	char buf[64][4096], *p;
	int lines = 0;
	FILE *f = fopen(path, "r");

	assert_non_null(f);
	while (lines < 64 && fgets(buf[lines], sizeof(buf[0]), f) != NULL)
		lines++;
	fclose(f);
	assert_true(n <= lines);
	p = strstr(buf[n - 1], from);
	assert_non_null(p);
	assert_int_equal(strlen(from), strlen(to));
	memcpy(p, to, strlen(to));
	f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < lines; i++)
		fputs(buf[i], f);
	fclose(f);
}

/* A record edited in one node's log: that node fails, naming its seq and file; the
 * others still verify. */
static void test_edited_record_in_one_node(void **state)
{
	struct fx *x = *state;
	char a[160], b[160], c[160], line[1400], want[400];
	const char *paths[3] = {a, b, c};
	struct audit_segs segs;
	struct audit_nodes_result res;

	write_log(x, "a", "node-a", 6, a, sizeof(a));
	write_log(x, "b", "node-b", 6, b, sizeof(b));
	write_log(x, "c", "node-c", 6, c, sizeof(c));
	edit_line(b, 3, "\"principal\":\"svc\"", "\"principal\":\"eve\"");
	verify(x, paths, 3, NULL, &segs, &res);
	assert_int_equal(res.n, 3);
	assert_int_equal(res.failed, 1);
	assert_int_equal(res.v[0].res.verdict, AUDIT_V_OK);
	assert_int_equal(res.v[2].res.verdict, AUDIT_V_OK);
	assert_int_equal(res.v[1].res.verdict, AUDIT_V_EDITED);
	assert_int_equal(res.v[1].res.seq, 3);
	assert_int_equal(res.v[1].res.line, 3);
	assert_string_equal(res.v[1].res.file, b);
	audit_node_summary(&res.v[1], line, sizeof(line));
	snprintf(want, sizeof(want), "node node-b: FAIL: record seq 3 (line 3 of %s): edited: ", b);
	assert_memory_equal(line, want, strlen(want));
	audit_nodes_summary(&res, line, sizeof(line));
	assert_memory_equal(line, "FAIL: 1 of 3 nodes", 18);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
}

/* --expect-nodes: a node's log not given is a FAIL; so is one of a node not expected. */
static void test_expected_nodes(void **state)
{
	struct fx *x = *state;
	char a[160], b[160], line[1400];
	const char *paths[2] = {a, b};
	const char *abc[] = {"node-a", "node-b", "node-c"}, *ab[] = {"node-a", "node-b"},
		   *just_a[] = {"node-a"};
	struct audit_nodes_opts o = {.expect = abc, .n_expect = 3};
	struct audit_segs segs;
	struct audit_nodes_result res;

	write_log(x, "a", "node-a", 5, a, sizeof(a));
	write_log(x, "b", "node-b", 5, b, sizeof(b));
	verify(x, paths, 2, &o, &segs, &res);
	assert_int_equal(res.n, 3);
	assert_int_equal(res.failed, 1);
	assert_string_equal(res.v[2].node, "node-c");
	assert_int_equal(res.v[2].res.verdict, AUDIT_V_MISSING);
	audit_node_summary(&res.v[2], line, sizeof(line));
	assert_string_equal(line,
			    "node node-c: FAIL: missing: no log of node node-c among the files given");
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);

	o.expect = ab;
	o.n_expect = 2;
	verify(x, paths, 2, &o, &segs, &res);
	assert_int_equal(res.failed, 0);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);

	o.expect = just_a;
	o.n_expect = 1;
	verify(x, paths, 2, &o, &segs, &res);
	assert_int_equal(res.n, 2);
	assert_int_equal(res.failed, 1);
	assert_int_equal(res.v[1].res.verdict, AUDIT_V_UNEXPECTED);
	assert_non_null(strstr(res.v[1].res.why, "node node-b"));
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
}

/* Two different logs that both call themselves node-a: two seq-1 starts. */
static void test_two_logs_one_node_id(void **state)
{
	struct fx *x = *state;
	char a[160], a2[160], b[160], line[1400];
	const char *paths[3] = {a, a2, b};
	struct audit_segs segs;
	struct audit_nodes_result res;

	write_log(x, "a", "node-a", 5, a, sizeof(a));
	write_log(x, "a2", "node-a", 7, a2, sizeof(a2));
	write_log(x, "b", "node-b", 5, b, sizeof(b));
	verify(x, paths, 3, NULL, &segs, &res);
	assert_int_equal(res.n, 2);
	assert_int_equal(res.failed, 1);
	assert_string_equal(res.v[0].node, "node-a");
	assert_int_equal(res.v[0].res.verdict, AUDIT_V_SAME_NODE);
	audit_node_summary(&res.v[0], line, sizeof(line));
	assert_memory_equal(line, "node node-a: FAIL: same node: ", 30);
	assert_non_null(strstr(line, "both start at seq 1"));
	assert_non_null(strstr(line, "/a/audit.log"));
	assert_non_null(strstr(line, "/a2/audit.log"));
	assert_int_equal(res.v[1].res.verdict, AUDIT_V_OK);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);

	/* the same file given twice under two names is a copy, not a second node:
	 * the chain check names it (as it always did) */
	{
		char cp[200], cmd[512];
		const char *two[2] = {a, cp};

		snprintf(cp, sizeof(cp), "%s/a/audit-copy.log", x->dir);
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", a, cp);
		assert_int_equal(system(cmd), 0);
		verify(x, two, 2, NULL, &segs, &res);
		assert_int_equal(res.n, 1);
		assert_int_equal(res.v[0].res.verdict, AUDIT_V_INSERTED);
		audit_nodes_result_free(&res);
		audit_segs_free(&segs);
	}
}

/* Rewrites the last line of path to name node to, with its hash recomputed (as someone
 * who can write the file could, in the unsigned tail). */
static void forge_last_node(const char *path, const char *from, const char *to)
{
	char buf[16][4096], *p, *h, hex[65];
	unsigned char md[32];
	unsigned len = 0;
	int lines = 0;
	FILE *f = fopen(path, "r");

	assert_non_null(f);
	while (lines < 16 && fgets(buf[lines], sizeof(buf[0]), f) != NULL)
		lines++;
	fclose(f);
	p = strstr(buf[lines - 1], from);
	assert_non_null(p);
	assert_int_equal(strlen(from), strlen(to));
	memcpy(p, to, strlen(to));
	h = strstr(buf[lines - 1], ",\"hash\":\"");
	assert_non_null(h);
	h[0] = '}';
	assert_int_equal(EVP_Digest(buf[lines - 1], (size_t)(h - buf[lines - 1]) + 1, md, &len,
				    EVP_sha256(), NULL),
			 1);
	for (unsigned i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	snprintf(h, sizeof(buf[0]) - (size_t)(h - buf[lines - 1]), ",\"hash\":\"%s\"}\n", hex);
	f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < lines; i++)
		fputs(buf[i], f);
	fclose(f);
}

/* Moves the last n lines of dir/a/audit.log into dir/sub/audit.log. */
static void split_tail(const struct fx *x, const char *from, const char *sub, int keep, int n)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && mkdir -p %s && tail -n %d %s/audit.log > %s/audit.log && "
		 "head -n %d %s/audit.log > t && mv t %s/audit.log",
		 x->dir, sub, n, from, sub, keep, from, from);
	assert_int_equal(system(cmd), 0);
}

/* node_id changed in the configuration: kmsd records it (audit.node), and the log is
 * one log, the new node's, whether the change is inside a file or between files. */
static void test_node_id_change_recorded(void **state)
{
	struct fx *x = *state;
	char a[160], da[128], dx[128], line[1400];
	const char *paths[1] = {a}, *dirs[2] = {dx, da}, *expect[] = {"node-x"};
	struct audit_segs segs;
	struct audit_nodes_result res;
	struct audit_verify_result old;
	FILE *f;

	write_log(x, "a", "node-a", 5, a, sizeof(a)); /* seq 1-4, 5 checkpoint over 4, 6 */
	write_log(x, "a", "node-x", 2, a, sizeof(a)); /* 7 audit.node, 8, 9, 10 checkpoint */
	f = fopen(a, "r");
	assert_non_null(f);
	for (int i = 0; i < 7; i++)
		assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	assert_non_null(strstr(line, "\"seq\":7,"));
	assert_non_null(strstr(line, "\"node\":\"node-x\""));
	assert_non_null(strstr(line, "\"operation\":\"" AUDIT_OP_NODE "\""));
	assert_non_null(strstr(line, "\"from_node\":\"node-a\""));
	verify(x, paths, 1, NULL, &segs, &res);
	assert_int_equal(res.n, 1);
	assert_int_equal(res.failed, 0);
	assert_string_equal(res.v[0].node, "node-x");
	assert_int_equal(res.v[0].res.records, 10);
	assert_int_equal(res.v[0].res.checkpoints, 2);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
	assert_int_equal(audit_verify(paths, 1, x->pub, &old), KMS_OK);
	assert_int_equal(old.verdict, AUDIT_V_OK);
	/* --node and --expect-nodes know it by its new id */
	{
		struct audit_nodes_opts o = {.only = expect, .n_only = 1, .expect = expect, .n_expect = 1};

		verify(x, paths, 1, &o, &segs, &res);
		assert_int_equal(res.n, 1);
		assert_int_equal(res.failed, 0);
		assert_string_equal(res.v[0].node, "node-x");
		audit_nodes_result_free(&res);
		audit_segs_free(&segs);
	}

	/* the change between two files (as when a rotation follows it): still one log */
	snprintf(da, sizeof(da), "%s/a", x->dir);
	snprintf(dx, sizeof(dx), "%s/x", x->dir);
	split_tail(x, "a", "x", 7, 3); /* a: seq 1-7, x: seq 8-10 */
	for (unsigned flags = 0; flags <= AUDIT_VERIFY_PARTIAL; flags += AUDIT_VERIFY_PARTIAL) {
		struct audit_nodes_opts o = {.flags = flags, .expect = expect, .n_expect = 1};

		verify(x, dirs, 2, &o, &segs, &res);
		assert_int_equal(res.n, 1);
		assert_int_equal(res.failed, 0);
		assert_string_equal(res.v[0].node, "node-x");
		assert_int_equal(res.v[0].n_files, 2);
		assert_int_equal(res.v[0].res.records, 10);
		assert_int_equal(res.v[0].res.first_seq, 1);
		audit_nodes_result_free(&res);
		audit_segs_free(&segs);
	}
}

/* A record naming another node without kmsd's audit.node record fails, within a file
 * or across files. */
static void test_node_changes_mid_way(void **state)
{
	struct fx *x = *state;
	char a[160], da[128], db[128], line[1400];
	const char *paths[1] = {a}, *dirs[2] = {da, db};
	struct audit_segs segs;
	struct audit_nodes_result res;

	write_log(x, "a", "node-a", 5, a, sizeof(a)); /* seq 1-4, 5 checkpoint, 6 unsigned */
	forge_last_node(a, "\"node\":\"node-a\"", "\"node\":\"node-x\"");
	verify(x, paths, 1, NULL, &segs, &res);
	assert_int_equal(res.n, 1);
	assert_int_equal(res.v[0].res.verdict, AUDIT_V_NODE);
	assert_int_equal(res.v[0].res.seq, 6);
	audit_verify_summary(&res.v[0].res, line, sizeof(line));
	assert_non_null(strstr(line, "FAIL: record seq 6 (line 6 of "));
	assert_non_null(strstr(line, "node changed: the record names node \"node-x\" in node "
				     "\"node-a\"'s log without an audit.node record"));
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);

	/* cut in two files, seq 1-5 and 6: the second names node-x and goes on from
	 * node-a's chain: read as one log, it fails at seq 6; with --partial too */
	snprintf(da, sizeof(da), "%s/a", x->dir);
	snprintf(db, sizeof(db), "%s/x", x->dir);
	split_tail(x, "a", "x", 5, 1);
	for (unsigned flags = 0; flags <= AUDIT_VERIFY_PARTIAL; flags += AUDIT_VERIFY_PARTIAL) {
		struct audit_nodes_opts o = {.flags = flags};

		verify(x, dirs, 2, &o, &segs, &res);
		assert_int_equal(res.n, 1);
		assert_int_equal(res.failed, 1);
		assert_string_equal(res.v[0].node, "node-a");
		assert_int_equal(res.v[0].res.verdict, AUDIT_V_NODE);
		assert_int_equal(res.v[0].res.seq, 6);
		assert_non_null(strstr(res.v[0].res.file, "/x/audit.log"));
		audit_nodes_result_free(&res);
		audit_segs_free(&segs);
	}
}

/* One node's log with files that hold no record: read with it, as always; among
 * several nodes an empty file is left out. */
static void test_files_without_records(void **state)
{
	struct fx *x = *state;
	char a[160], b[160], e[200];
	const char *paths[3] = {a, e, b};
	struct audit_segs segs;
	struct audit_nodes_result res;
	FILE *f;

	write_log(x, "a", "node-a", 5, a, sizeof(a));
	write_log(x, "b", "node-b", 5, b, sizeof(b));
	snprintf(e, sizeof(e), "%s/a/audit-empty.log", x->dir);
	f = fopen(e, "w");
	assert_non_null(f);
	fclose(f);
	verify(x, paths, 2, NULL, &segs, &res);
	assert_int_equal(res.n, 1);
	assert_int_equal(res.v[0].n_files, 2);
	assert_int_equal(res.failed, 0);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
	verify(x, paths, 3, NULL, &segs, &res);
	assert_int_equal(res.n, 2);
	assert_int_equal(res.failed, 0);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
	/* a file of garbage among several nodes is no node's: it fails on its own */
	f = fopen(e, "w");
	assert_non_null(f);
	fputs("not a record\n", f);
	fclose(f);
	verify(x, paths, 3, NULL, &segs, &res);
	assert_int_equal(res.n, 3);
	assert_int_equal(res.failed, 1);
	assert_null(res.v[2].node);
	assert_int_equal(res.v[2].res.verdict, AUDIT_V_EDITED);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
}

/* ---------------------------------------------------------------- merged search */

/* A search-shaped record (no valid hash: search does not check them). */
static void put_rec(FILE *f, const char *node, unsigned seq, const char *time)
{
	fprintf(f,
		"{\"seq\":%u,\"time\":\"%s\",\"node\":\"%s\",\"request_id\":\"r\",\"principal\":\"p\","
		"\"auth_method\":\"token\",\"mfa\":false,\"remote_addr\":\"127.0.0.1\","
		"\"operation\":\"decrypt\",\"tenant\":\"t\",\"key\":\"k\",\"version\":1,"
		"\"outcome\":\"allow\",\"status\":200,\"reason\":\"r\",\"prev\":\"%064d\","
		"\"hash\":\"%064d\"}\n",
		seq, time, node, 0, 0);
}

struct got {
	char node[16][16];
	uint64_t seq[16];
	size_t n;
};

static kms_err collect(void *ctx, const struct audit_view *r, const char *line, size_t len)
{
	struct got *g = ctx;

	assert_true(len > 0 && line[len - 1] == '}');
	assert_true(g->n < 16);
	snprintf(g->node[g->n], sizeof(g->node[0]), "%s", r->node);
	g->seq[g->n++] = r->seq;
	return KMS_OK;
}

static void test_search_merges_by_time(void **state)
{
	struct fx *x = *state;
	char p[4][200], da[128], db[128], dc[128];
	const char *dirs[3] = {dc, db, da};
	struct audit_filter flt = {0};
	struct audit_scan_stats st;
	struct audit_segs segs;
	struct got g = {0};
	FILE *f;
	/* the expected timeline: time, then node, then seq */
	static const char *const want_node[] = {"n1", "n2", "n1", "n3", "n2", "n1", "n2", "n2", "n1", "n3"};
	static const uint64_t want_seq[] = {1, 1, 2, 1, 2, 3, 3, 4, 4, 2};

	snprintf(da, sizeof(da), "%s/n1", x->dir);
	snprintf(db, sizeof(db), "%s/n2", x->dir);
	snprintf(dc, sizeof(dc), "%s/n3", x->dir);
	assert_int_equal(mkdir(da, 0700), 0);
	assert_int_equal(mkdir(db, 0700), 0);
	assert_int_equal(mkdir(dc, 0700), 0);
	/* n1: a rotated segment (seq 1-2) and the current file (3-4) */
	snprintf(p[0], sizeof(p[0]), "%s/audit-00000000000000000001.log", da);
	f = fopen(p[0], "w");
	put_rec(f, "n1", 1, "2026-03-01T10:00:00.000001Z");
	put_rec(f, "n1", 2, "2026-03-01T10:00:02Z");
	fclose(f);
	snprintf(p[1], sizeof(p[1]), "%s/audit.log", da);
	f = fopen(p[1], "w");
	put_rec(f, "n1", 3, "2026-03-01T10:00:04Z"); /* the same time as n2's seq 3 */
	put_rec(f, "n1", 4, "2026-03-01T11:00:06+01:00"); /* 10:00:06Z */
	fclose(f);
	snprintf(p[2], sizeof(p[2]), "%s/audit.log", db);
	f = fopen(p[2], "w");
	put_rec(f, "n2", 1, "2026-03-01T10:00:01Z");
	put_rec(f, "n2", 2, "2026-03-01T10:00:03Z");
	put_rec(f, "n2", 3, "2026-03-01T10:00:04Z");
	put_rec(f, "n2", 4, "2026-03-01T10:00:05Z");
	fclose(f);
	snprintf(p[3], sizeof(p[3]), "%s/audit.log", dc);
	f = fopen(p[3], "w");
	put_rec(f, "n3", 1, "2026-03-01T10:00:02.5Z");
	put_rec(f, "n3", 2, "2026-03-01T10:00:09Z");
	fclose(f);
	assert_int_equal(audit_segs_collect(dirs, 3, &segs), KMS_OK);
	assert_int_equal(audit_scan(&segs, &flt, collect, NULL, &g, &st), KMS_OK);
	assert_int_equal(st.nodes, 3);
	assert_int_equal(st.files, 4);
	assert_int_equal(st.records, 10);
	assert_int_equal(st.disorder, 0);
	assert_int_equal(g.n, 10);
	for (size_t i = 0; i < g.n; i++) {
		assert_string_equal(g.node[i], want_node[i]);
		assert_int_equal(g.seq[i], want_seq[i]);
	}
	/* the node filter keeps working over the merged logs */
	memset(&g, 0, sizeof(g));
	flt.node = "n2";
	assert_int_equal(audit_scan(&segs, &flt, collect, NULL, &g, &st), KMS_OK);
	assert_int_equal(g.n, 4);
	assert_int_equal(st.matched, 4);
	for (size_t i = 0; i < g.n; i++) {
		assert_string_equal(g.node[i], "n2");
		assert_int_equal(g.seq[i], i + 1);
	}
	audit_segs_free(&segs);

	/* a clock that went back in one node: its records keep their own order */
	f = fopen(p[1], "w");
	put_rec(f, "n1", 3, "2026-03-01T10:00:04Z");
	put_rec(f, "n1", 4, "2026-03-01T09:00:00Z");
	fclose(f);
	memset(&g, 0, sizeof(g));
	flt.node = "n1";
	assert_int_equal(audit_segs_collect(dirs, 3, &segs), KMS_OK);
	assert_int_equal(audit_scan(&segs, &flt, collect, NULL, &g, &st), KMS_OK);
	assert_int_equal(g.n, 4);
	for (size_t i = 0; i < g.n; i++)
		assert_int_equal(g.seq[i], i + 1);
	audit_segs_free(&segs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_two_and_three_nodes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_edited_record_in_one_node, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expected_nodes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_logs_one_node_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_node_id_change_recorded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_node_changes_mid_way, setup, teardown),
		cmocka_unit_test_setup_teardown(test_files_without_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_search_merges_by_time, setup, teardown),
	};

	return cmocka_run_group_tests_name("audit_nodes", tests, NULL, NULL);
}
