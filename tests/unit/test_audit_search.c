/* Offline audit reading (kms/audit/search.c, report.c): time and hash parsing, the
 * record shape (old records without the context members, malformed lines), every
 * filter, segment discovery and ordering, the bounded line reader, and the two
 * report aggregations. The end-to-end runs of kmsctl are in
 * tests/integration/test_audit_search.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/report.h"
#include "kms/audit/search.h"
#include "kms/base/json.h"

#define H_A "hmac-sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define H_B "hmac-sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define H_C "hmac-sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

/* A record line as kmsd writes it (members in order), with overrides: extra is
 * inserted before prev (",\"batch\":3" ...), each % field replaced. */
static char *rec(unsigned seq, const char *principal, const char *op, const char *tenant,
		 const char *key, unsigned version, const char *outcome, int status,
		 const char *extra)
{
	char ver[16], *s = NULL;

	snprintf(ver, sizeof(ver), version ? "%u" : "null", version);
	if (asprintf(&s,
		     "{\"seq\":%u,\"time\":\"2026-03-01T10:%02u:%02u.000000Z\",\"node\":\"n1\","
		     "\"request_id\":\"rid-%u\",\"principal\":\"%s\",\"auth_method\":\"token\","
		     "\"mfa\":false,\"remote_addr\":\"10.0.0.%u\",\"operation\":\"%s\","
		     "\"tenant\":\"%s\",\"key\":\"%s\",\"version\":%s,\"outcome\":\"%s\","
		     "\"status\":%d,\"reason\":\"r\"%s,\"prev\":\"%064d\",\"hash\":\"%064d\"}",
		     seq, seq / 60, seq % 60, seq, principal, seq % 3, op, tenant, key, ver, outcome,
		     status, extra ? extra : "", 0, 0) < 0)
		return NULL;
	return s;
}

static const char *parse(const char *line, struct audit_view *v)
{
	static char why[256];

	return audit_view_parse(line, strlen(line), v, why, sizeof(why));
}

/* ---------------------------------------------------------------- parsing */

static void test_time_parse(void **state)
{
	int64_t t, u;

	(void)state;
	assert_int_equal(audit_time_parse("1970-01-01T00:00:00Z", &t), 0);
	assert_int_equal(t, 0);
	assert_int_equal(audit_time_parse("2026-03-01", &t), 0);
	assert_int_equal(t, 1772323200LL * 1000000);
	assert_int_equal(audit_time_parse("2026-03-01T10:00:00.123456Z", &t), 0);
	assert_int_equal(t, (1772323200LL + 36000) * 1000000 + 123456);
	/* fractions beyond microseconds are cut; offsets move to UTC */
	assert_int_equal(audit_time_parse("2026-03-01T10:00:00.1234569z", &u), 0);
	assert_int_equal(u, t);
	assert_int_equal(audit_time_parse("2026-03-01T11:00:00+01:00", &u), 0);
	assert_int_equal(u, (1772323200LL + 36000) * 1000000);
	assert_int_equal(audit_time_parse("2026-03-01 09:30:00-00:30", &u), 0);
	assert_int_equal(u, (1772323200LL + 36000) * 1000000);
	assert_int_equal(audit_time_parse("2024-02-29", &t), 0);
	assert_int_equal(audit_time_parse("1969-12-31T23:59:59Z", &t), 0);
	assert_int_equal(t, -1000000);

	const char *bad[] = {"",
			     "2026",
			     "2026-3-01",
			     "2026-13-01",
			     "2026-02-29",
			     "2026-04-31",
			     "2026-03-01T",
			     "2026-03-01T10:00Z",
			     "2026-03-01T10:00:00",
			     "2026-03-01T24:00:00Z",
			     "2026-03-01T10:60:00Z",
			     "2026-03-01T10:00:00.Z",
			     "2026-03-01T10:00:00+1:00",
			     "2026-03-01T10:00:00Zjunk",
			     "2026-03-01x",
			     "yesterday",
			     NULL};
	for (size_t i = 0; bad[i] != NULL; i++)
		assert_int_not_equal(audit_time_parse(bad[i], &t), 0);
}

static void test_hmac_normalize(void **state)
{
	char out[AUDIT_HMAC_LEN + 1];

	(void)state;
	assert_int_equal(audit_hmac_normalize(H_A, out), 0);
	assert_string_equal(out, H_A);
	assert_int_equal(audit_hmac_normalize("hmac-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
					      "AAAAAAAAAAAAAAAAAAAAAAAA",
					      out),
			 0);
	assert_string_equal(out, H_A);
	assert_int_not_equal(audit_hmac_normalize("hmac-sha256:aa", out), 0);
	assert_int_not_equal(audit_hmac_normalize("sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
						  "aaaaaaaaaaaaaaaaaaaaaaaaaa",
						  out),
			     0);
	assert_int_not_equal(audit_hmac_normalize("hmac-sha256:gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
						  "aaaaaaaaaaaaaaaaaaaaaaa",
						  out),
			     0);
	assert_int_not_equal(audit_hmac_normalize(NULL, out), 0);
}

static void test_view_full_and_minimal(void **state)
{
	struct audit_view v;
	char *line = rec(7, "alice", "decrypt", "t1", "k1", 2, "allow", 200,
			 ",\"batch\":2,\"encryption_context\":{\"patient\":\"" H_A "\"},"
			 "\"associated_data\":\"" H_B "\",\"contexts\":[{\"patient\":\"" H_A
			 "\"},null]");

	(void)state;
	assert_non_null(line);
	assert_null(parse(line, &v));
	assert_int_equal(v.seq, 7);
	assert_string_equal(v.principal, "alice");
	assert_string_equal(v.operation, "decrypt");
	assert_string_equal(v.tenant, "t1");
	assert_string_equal(v.key, "k1");
	assert_string_equal(v.remote_addr, "10.0.0.1");
	assert_string_equal(v.request_id, "rid-7");
	assert_string_equal(v.node, "n1");
	assert_int_equal(v.version, 2);
	assert_int_equal(v.batch, 2);
	assert_int_equal(v.status, 200);
	assert_string_equal(v.associated_data, H_B);
	assert_non_null(v.context);
	assert_int_equal(json_array_size(v.contexts), 2);
	audit_view_clear(&v);
	free(line);

	/* A batch record as kmsd writes it: items; a context that was not an object is
	 * hashed whole (a string): accepted, names no key. */
	assert_null(parse("{\"seq\":2,\"time\":\"2026-03-01T00:00:00Z\",\"batch\":2,"
			  "\"encryption_context\":null,\"associated_data\":null,\"items\":["
			  "{\"encryption_context\":{\"patient\":\"" H_A "\"},\"associated_data\":null},"
			  "{\"encryption_context\":\"" H_B "\",\"associated_data\":\"" H_C "\"}]}",
			  &v));
	assert_null(v.context);
	assert_int_equal(json_array_size(v.items), 2);
	audit_view_clear(&v);

	/* A record from before the context members, and the log's own records: nulls. */
	assert_null(parse("{\"seq\":1,\"time\":\"2026-03-01T00:00:00.000000Z\",\"principal\":null,"
			  "\"version\":null,\"status\":null,\"outcome\":null}",
			  &v));
	assert_null(v.principal);
	assert_null(v.context);
	assert_null(v.contexts);
	assert_int_equal(v.version, 0);
	assert_int_equal(v.status, 0);
	assert_int_equal(v.batch, 0);
	audit_view_clear(&v);
}

static void test_view_malformed(void **state)
{
	static const char *const bad[] = {
		"",
		"garbage",
		"[1,2]",
		"{\"seq\":1,\"seq\":2,\"time\":\"2026-03-01\"}", /* duplicate member */
		"{\"time\":\"2026-03-01\"}",
		"{\"seq\":0,\"time\":\"2026-03-01\"}",
		"{\"seq\":\"1\",\"time\":\"2026-03-01\"}",
		"{\"seq\":1}",
		"{\"seq\":1,\"time\":\"March\"}",
		"{\"seq\":1,\"time\":5}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"tenant\":5}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"principal\":{}}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"version\":-1}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"version\":\"1\"}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"batch\":true}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"status\":1000}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"encryption_context\":5}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"encryption_context\":[]}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"items\":{}}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"items\":[5]}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"items\":[{\"encryption_context\":{\"a\":1}}]}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"items\":[{\"associated_data\":5}]}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"encryption_context\":{\"a\":1}}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"contexts\":{}}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"contexts\":[5]}",
		"{\"seq\":1,\"time\":\"2026-03-01\",\"associated_data\":[]}",
		"{\"seq\":1,\"time\":\"2026-03-01\"} trailing",
		NULL,
	};
	struct audit_view v;

	(void)state;
	for (size_t i = 0; bad[i] != NULL; i++) {
		const char *why = parse(bad[i], &v);

		if (why == NULL)
			fail_msg("accepted: %s", bad[i]);
		assert_true(strlen(why) > 0);
		assert_null(v.v);
	}
	assert_non_null(strstr(parse("{\"seq\":1,\"time\":\"2026-03-01\",\"tenant\":5}", &v),
			       "tenant"));
}

/* ---------------------------------------------------------------- filters */

static bool match(const struct audit_filter *f, const char *line)
{
	struct audit_view v;
	bool m;

	assert_null(parse(line, &v));
	m = audit_filter_match(f, &v);
	audit_view_clear(&v);
	return m;
}

static void test_filters(void **state)
{
	char *l = rec(90, "alice", "key.version.disable", "t1", "k1", 3, "deny", 403,
		      ",\"encryption_context\":{\"patient\":\"" H_A "\",\"purpose\":\"" H_B "\"}");
	char *b = rec(91, "bob", "decrypt", "t1", "k1", 1, "allow", 200,
		      ",\"batch\":2,\"contexts\":[null,{\"patient\":\"" H_C "\",\"purpose\":\"" H_B
		      "\"}]");
	struct audit_filter f;
	struct audit_ctx_pair pa[2] = {{"patient", H_A}, {"purpose", H_B}};
	struct audit_ctx_pair pc[2] = {{"patient", H_C}, {"purpose", H_B}};
	struct audit_ctx_pair mixed[2] = {{"patient", H_A}, {"purpose", H_C}};
	int64_t t;

	(void)state;
	memset(&f, 0, sizeof(f));
	assert_true(match(&f, l)); /* no criterion: everything */
#define ONE(field, yes, no)                                                                 \
	do {                                                                                \
		memset(&f, 0, sizeof(f));                                                   \
		f.field = yes;                                                              \
		assert_true(match(&f, l));                                                  \
		f.field = no;                                                               \
		assert_false(match(&f, l));                                                 \
	} while (0)
	ONE(principal, "alice", "alic");
	ONE(tenant, "t1", "t2");
	ONE(key, "k1", "K1");
	ONE(outcome, "deny", "allow");
	ONE(request_id, "rid-90", "rid-9");
	ONE(node, "n1", "n2");
	ONE(operation, "key.version.disable", "key.version");
	ONE(operation, "key.*", "key.version.?");
	ONE(operation, "*.disable", "decrypt");
	ONE(status, 403, 200);
	memset(&f, 0, sizeof(f));
	f.has_version = true;
	f.version = 3;
	assert_true(match(&f, l));
	f.version = 1;
	assert_false(match(&f, l));

	/* time: from inclusive, to exclusive (seq 90 is at 10:01:30) */
	memset(&f, 0, sizeof(f));
	assert_int_equal(audit_time_parse("2026-03-01T10:01:30Z", &t), 0);
	f.has_from = true;
	f.from_us = t;
	assert_true(match(&f, l));
	f.from_us = t + 1;
	assert_false(match(&f, l));
	memset(&f, 0, sizeof(f));
	f.has_to = true;
	f.to_us = t;
	assert_false(match(&f, l));
	f.to_us = t + 1;
	assert_true(match(&f, l));

	/* contexts: every pair in one object, from encryption_context or a batch item */
	memset(&f, 0, sizeof(f));
	f.ctx = pa;
	f.n_ctx = 1;
	assert_true(match(&f, l));
	assert_false(match(&f, b));
	f.n_ctx = 2;
	assert_true(match(&f, l));
	f.ctx = pc;
	assert_false(match(&f, l));
	assert_true(match(&f, b));
	f.ctx = mixed;
	assert_false(match(&f, l));
	f.ctx = &pa[1];
	f.n_ctx = 1;
	assert_true(match(&f, l));
	assert_true(match(&f, b));
	/* kmsd's batch form: items[].encryption_context */
	{
		char *it = rec(92, "bob", "decrypt", "t1", "k1", 1, "allow", 200,
			       ",\"batch\":3,\"encryption_context\":null,\"items\":[{\"encryption_context\":"
			       "null,\"associated_data\":null},{\"encryption_context\":{\"patient\":\"" H_C
			       "\",\"purpose\":\"" H_B "\"},\"associated_data\":null},{\"encryption_context\":\""
			       H_A "\",\"associated_data\":\"" H_A "\"}]");

		f.ctx = pc;
		f.n_ctx = 2;
		assert_true(match(&f, it));
		f.ctx = pa;
		assert_false(match(&f, it));
		f.n_ctx = 1; /* patient=H_A: only as a whole-value hash, which names no key */
		assert_false(match(&f, it));
		free(it);
	}
	f.ctx = &pa[1];
	f.n_ctx = 1;
	/* a record without contexts never matches a context filter */
	assert_false(match(&f, "{\"seq\":1,\"time\":\"2026-03-01\"}"));

	/* several criteria: all must hold; a null member matches no string criterion */
	memset(&f, 0, sizeof(f));
	f.principal = "bob";
	f.operation = "decrypt";
	f.tenant = "t1";
	assert_true(match(&f, b));
	f.key = "k2";
	assert_false(match(&f, b));
	memset(&f, 0, sizeof(f));
	f.principal = "alice";
	assert_false(match(&f, "{\"seq\":1,\"time\":\"2026-03-01\",\"principal\":null}"));
	free(l);
	free(b);
}

/* ---------------------------------------------------------------- segments, scan */

struct dirfx {
	char dir[64];
};

static void put(const struct dirfx *d, const char *name, const char *text)
{
	char p[256];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", d->dir, name);
	f = fopen(p, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
}

/* Lines seq first..last of principal p, one per line. */
static char *lines(unsigned first, unsigned last, const char *p)
{
	size_t cap = 1, len = 0;
	char *out = calloc(1, 1);

	for (unsigned s = first; s <= last; s++) {
		char *l = rec(s, p, "decrypt", "t1", "k1", 1, "allow", 200, NULL);
		size_t n = strlen(l);

		out = realloc(out, cap += n + 1);
		memcpy(out + len, l, n);
		out[len + n] = '\n';
		len += n + 1;
		out[len] = '\0';
		free(l);
	}
	return out;
}

static int dir_setup(void **state)
{
	struct dirfx *d = calloc(1, sizeof(*d));

	snprintf(d->dir, sizeof(d->dir), "/tmp/kms-audit-search-XXXXXX");
	if (d == NULL || mkdtemp(d->dir) == NULL)
		return -1;
	*state = d;
	return 0;
}

static int dir_teardown(void **state)
{
	struct dirfx *d = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
	if (system(cmd) != 0)
		return -1;
	free(d);
	return 0;
}

struct collected {
	uint64_t seq[64];
	size_t n;
	unsigned notes;
	char last_note[512];
};

static kms_err collect_seq(void *ctx, const struct audit_view *r, const char *line, size_t len)
{
	struct collected *c = ctx;

	assert_true(len > 0 && line[0] == '{' && line[len] == '\0');
	if (c->n < 64)
		c->seq[c->n++] = r->seq;
	return KMS_OK;
}

static void collect_note(void *ctx, const char *file, uint64_t line, const char *what)
{
	struct collected *c = ctx;

	c->notes++;
	snprintf(c->last_note, sizeof(c->last_note), "%s:%llu: %s", strrchr(file, '/') + 1,
		 (unsigned long long)line, what);
}

struct by_node {
	char got[16][8]; /* "n1:1", "n2:1", ... */
	size_t n;
};

static kms_err collect_node_seq(void *ctx, const struct audit_view *r, const char *line, size_t len)
{
	struct by_node *c = ctx;

	assert_true(len > 0 && line[0] == '{');
	if (c->n < 16)
		snprintf(c->got[c->n++], sizeof(c->got[0]), "%s:%llu", r->node ? r->node : "-",
			 (unsigned long long)r->seq);
	return KMS_OK;
}

/* The logs of two nodes (a cluster): each its own chain from seq 1, merged by time. */
static void test_scan_merges_nodes_by_time(void **state)
{
	struct dirfx *d = *state;
	static const char *const want[] = {"n1:1", "n2:1", "n1:2", "n2:2", "n1:3", "n2:3", "n2:4"};
	struct audit_segs s;
	struct audit_filter f = {0};
	struct audit_scan_stats st;
	struct by_node c = {0};
	char *a = lines(1, 3, "p"), *b = lines(1, 4, "p"), *q;
	const char *args[1] = {d->dir};

	for (q = b; (q = strstr(q, "\"node\":\"n1\"")) != NULL; q++)
		q[9] = '2'; /* the same records (same times), node n2 */
	put(d, "audit-a.log", a);
	put(d, "audit-b.log", b);
	assert_int_equal(audit_segs_collect(args, 1, &s), KMS_OK);
	assert_int_equal(s.n, 2);
	assert_true(audit_segs_multi_node(&s));
	assert_int_equal(audit_scan(&s, &f, collect_node_seq, NULL, &c, &st), KMS_OK);
	assert_int_equal(c.n, 7);
	for (size_t i = 0; i < 7; i++)
		assert_string_equal(c.got[i], want[i]);
	assert_int_equal(st.records, 7);
	assert_int_equal(st.files, 2);
	assert_int_equal(st.disorder, 0); /* seq goes back only across nodes: not disorder */
	audit_segs_free(&s);
	free(a);
	free(b);
}

static void test_segments_in_seq_order(void **state)
{
	struct dirfx *d = *state;
	struct audit_segs s;
	struct audit_filter f = {0};
	struct audit_scan_stats st;
	struct collected c = {0};
	char *a = lines(1, 3, "p"), *b = lines(4, 6, "p"), *cur = lines(7, 9, "p"), p[256];
	const char *args[3];

	put(d, "audit-00000000000000000004.log", b);
	put(d, "audit.log", cur);
	put(d, "audit-00000000000000000001.log", a);
	put(d, "audit-empty.log", "");
	put(d, "notes.txt", "not a segment\n");
	put(d, "audit.log.pub.pem", "not a segment either\n");
	/* the directory and one of its files again: read once */
	snprintf(p, sizeof(p), "%s/audit.log", d->dir);
	args[0] = p;
	args[1] = d->dir;
	assert_int_equal(audit_segs_collect(args, 2, &s), KMS_OK);
	assert_int_equal(s.n, 4);
	assert_int_equal(s.v[0].first_seq, 1);
	assert_int_equal(s.v[1].first_seq, 4);
	assert_int_equal(s.v[2].first_seq, 7);
	assert_int_equal(s.v[3].first_seq, 0); /* the empty file last */
	assert_non_null(strstr(s.v[3].path, "audit-empty.log"));
	/* each file knows the node of its first record (kmsctl audit verify groups by it) */
	assert_string_equal(s.v[0].node, "n1");
	assert_string_equal(s.v[2].node, "n1");
	assert_null(s.v[3].node);
	assert_int_equal(s.v[3].size, 0);
	assert_int_equal(s.v[0].size, (off_t)strlen(a));
	assert_int_equal(audit_scan(&s, &f, collect_seq, collect_note, &c, &st), KMS_OK);
	assert_int_equal(c.n, 9);
	for (size_t i = 0; i < 9; i++)
		assert_int_equal(c.seq[i], i + 1);
	assert_int_equal(st.files, 4);
	assert_int_equal(st.records, 9);
	assert_int_equal(st.matched, 9);
	assert_int_equal(st.malformed, 0);
	assert_int_equal(st.disorder, 0);
	assert_int_equal(c.notes, 0);
	audit_segs_free(&s);

	/* explicit files in any order sort the same way */
	snprintf(p, sizeof(p), "%s/audit-00000000000000000001.log", d->dir);
	{
		char q[256], r[256];
		const char *three[3] = {q, r, p};

		snprintf(q, sizeof(q), "%s/audit.log", d->dir);
		snprintf(r, sizeof(r), "%s/audit-00000000000000000004.log", d->dir);
		assert_int_equal(audit_segs_collect(three, 3, &s), KMS_OK);
		assert_int_equal(s.n, 3);
		assert_string_equal(s.v[0].path, p);
		assert_string_equal(s.v[1].path, r);
		assert_string_equal(s.v[2].path, q);
		audit_segs_free(&s);
	}

	/* errors: no argument, a missing file, a directory without segments */
	assert_int_equal(audit_segs_collect(args, 0, &s), KMS_ERR_INVALID);
	args[0] = "/nonexistent/audit.log";
	assert_int_equal(audit_segs_collect(args, 1, &s), KMS_ERR_IO);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_IO), "/nonexistent/audit.log"));
	snprintf(p, sizeof(p), "%s/sub", d->dir);
	assert_int_equal(mkdir(p, 0700), 0);
	args[0] = p;
	assert_int_equal(audit_segs_collect(args, 1, &s), KMS_ERR_INVALID);
	assert_int_equal(s.n, 0);
	free(a);
	free(b);
	free(cur);
}

static void test_scan_malformed_long_and_disorder(void **state)
{
	struct dirfx *d = *state;
	struct audit_segs s;
	struct audit_filter f = {0};
	struct audit_scan_stats st;
	struct collected c = {0};
	char *good = lines(1, 2, "p"), *again = lines(2, 3, "p"), *tail, *big, *text;
	size_t n = AUDIT_SEARCH_LINE_MAX + 10;
	const char *args[1] = {d->dir};

	/* a line over the limit, then a good record; a torn last line */
	big = malloc(n + 2);
	memset(big, 'x', n);
	big[0] = '{';
	big[n] = '\n';
	big[n + 1] = '\0';
	tail = rec(4, "p", "decrypt", "t1", "k1", 1, "allow", 200, NULL);
	tail[strlen(tail) / 2] = '\0';
	assert_true(asprintf(&text, "%s%s\n%s", good, "not json", big) > 0);
	put(d, "audit-00000000000000000001.log", text);
	free(text);
	assert_true(asprintf(&text, "%s%s", again, tail) > 0);
	put(d, "audit.log", text);
	free(text);
	assert_int_equal(audit_segs_collect(args, 1, &s), KMS_OK);
	assert_int_equal(s.n, 2);
	assert_int_equal(audit_scan(&s, &f, collect_seq, collect_note, &c, &st), KMS_OK);
	assert_int_equal(st.lines, 7);
	assert_int_equal(st.records, 4);
	assert_int_equal(st.malformed, 3);
	assert_int_equal(st.disorder, 1); /* seq 2 again */
	assert_int_equal(c.n, 4);
	assert_int_equal(c.notes, 4);
	assert_non_null(strstr(c.last_note, "audit.log:3: malformed line skipped"));
	assert_non_null(strstr(c.last_note, "no newline"));
	audit_segs_free(&s);

	/* the long line is reported as such, with its line number */
	{
		char p[256];
		const char *one[1] = {p};
		struct collected c2 = {0};

		snprintf(p, sizeof(p), "%s/audit-00000000000000000001.log", d->dir);
		assert_int_equal(audit_segs_collect(one, 1, &s), KMS_OK);
		assert_int_equal(audit_scan(&s, &f, collect_seq, collect_note, &c2, &st), KMS_OK);
		assert_int_equal(st.malformed, 2);
		assert_non_null(strstr(c2.last_note, ":4: malformed line skipped: longer than"));
		audit_segs_free(&s);
	}
	free(good);
	free(again);
	free(tail);
	free(big);
}

/* ---------------------------------------------------------------- reports */

static void add(struct audit_report *rp, const char *line)
{
	struct audit_view v;

	assert_null(parse(line, &v));
	assert_int_equal(audit_report_add(rp, &v), KMS_OK);
	audit_view_clear(&v);
}

static void add_rec(struct audit_report *rp, unsigned seq, const char *p, const char *op,
		    const char *key, unsigned ver, const char *outcome, int status,
		    const char *extra)
{
	char *l = rec(seq, p, op, "t1", key, ver, outcome, status, extra);

	add(rp, l);
	free(l);
}

static json_int_t ival(const json_t *o, const char *k)
{
	const json_t *v = json_object_get(o, k);

	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

static void test_report_access(void **state)
{
	struct audit_report *rp;
	json_t *rows, *r;

	(void)state;
	assert_int_equal(audit_report_new(AUDIT_REPORT_ACCESS, 0, &rp), KMS_OK);
	add_rec(rp, 1, "alice", "datakey", "k1", 1, "allow", 200,
		",\"encryption_context\":{\"patient\":\"" H_A "\"}");
	add_rec(rp, 2, "alice", "decrypt", "k1", 1, "allow", 200,
		",\"encryption_context\":{\"patient\":\"" H_A "\"}");
	add_rec(rp, 3, "alice", "decrypt", "k1", 1, "allow", 200,
		",\"encryption_context\":{\"patient\":\"" H_B "\"}");
	/* denied: counted, its context not (nothing was returned) */
	add_rec(rp, 4, "alice", "decrypt", "k1", 1, "deny", 403,
		",\"encryption_context\":{\"patient\":\"" H_C "\"}");
	/* a batch answered 400 returned its good items: contexts counted */
	add_rec(rp, 5, "alice", "decrypt", "k1", 1, "error", 400,
		",\"batch\":3,\"contexts\":[{\"patient\":\"" H_C "\"},null,{}]");
	add_rec(rp, 6, "alice", "key.rotate", "k1", 2, "allow", 200, NULL);
	add_rec(rp, 7, "alice", "decrypt", "k0", 0, "error", 400, NULL);
	/* kmsd's batch form, under version 2: one new context, one repeated */
	add_rec(rp, 8, "alice", "decrypt", "k1", 2, "allow", 200,
		",\"batch\":2,\"items\":[{\"encryption_context\":{\"patient\":\"" H_B
		"\"},\"associated_data\":null},{\"encryption_context\":{\"patient\":\"" H_B
		"\"},\"associated_data\":null}]");
	rows = audit_report_rows(rp);
	assert_non_null(rows);
	assert_int_equal(json_array_size(rows), 3);
	/* sorted by tenant, key, version (null first) */
	r = json_array_get(rows, 0);
	assert_string_equal(json_string_value(json_object_get(r, "key")), "k0");
	assert_true(json_is_null(json_object_get(r, "version")));
	assert_int_equal(ival(r, "error"), 1);
	r = json_array_get(rows, 1);
	assert_string_equal(json_string_value(json_object_get(r, "key")), "k1");
	assert_int_equal(ival(r, "version"), 1);
	assert_int_equal(ival(r, "requests"), 5);
	assert_int_equal(ival(r, "items"), 7);
	assert_int_equal(ival(r, "allow"), 3);
	assert_int_equal(ival(r, "deny"), 1);
	assert_int_equal(ival(r, "error"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "decrypt"), 4);
	assert_int_equal(ival(json_object_get(r, "operations"), "datakey"), 1);
	assert_int_equal(ival(r, "context_count"), 3);
	assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(r, "contexts"), 0),
							      "patient")),
			    H_A);
	assert_string_equal(json_string_value(json_object_get(r, "first")), "2026-03-01T10:00:01.000000Z");
	assert_string_equal(json_string_value(json_object_get(r, "last")), "2026-03-01T10:00:05.000000Z");
	assert_int_equal(json_array_size(json_object_get(r, "remote_addrs")), 3);
	assert_null(json_object_get(r, "_contexts"));
	r = json_array_get(rows, 2);
	assert_int_equal(ival(r, "version"), 2);
	assert_int_equal(ival(json_object_get(r, "operations"), "key.rotate"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "decrypt"), 1);
	assert_int_equal(ival(r, "items"), 3);
	assert_int_equal(ival(r, "context_count"), 1);
	json_decref(rows);
	audit_report_free(rp);
}

static void test_report_exposure(void **state)
{
	struct audit_report *rp;
	json_t *rows, *r;

	(void)state;
	assert_int_equal(audit_report_new(AUDIT_REPORT_EXPOSURE, 2, &rp), KMS_OK);
	add_rec(rp, 1, "bob", "decrypt", "k1", 2, "allow", 200,
		",\"encryption_context\":{\"patient\":\"" H_A "\"}");
	add_rec(rp, 2, "bob", "datakey", "k1", 2, "allow", 200, NULL);
	add_rec(rp, 3, "bob", "rewrap", "k1", 2, "allow", 200, NULL);
	add_rec(rp, 4, "bob", "encrypt", "k1", 2, "allow", 200, ",\"batch\":4");
	add_rec(rp, 5, "alice", "decrypt", "k1", 2, "error", 400,
		",\"batch\":2,\"contexts\":[{\"patient\":\"" H_B "\"},null]");
	/* not counted: another version (single item), denied, errors that returned nothing,
	 * a version-less failure, a lifecycle operation on the version */
	add_rec(rp, 6, "bob", "decrypt", "k1", 1, "allow", 200, NULL);
	add_rec(rp, 7, "carol", "decrypt", "k1", 2, "deny", 403, NULL);
	add_rec(rp, 8, "carol", "decrypt", "k1", 2, "error", 400, NULL);
	add_rec(rp, 9, "carol", "decrypt", "k1", 0, "error", 400, ",\"batch\":2");
	add_rec(rp, 10, "dave", "key.version.disable", "k1", 2, "allow", 200, NULL);
	/* a batch recorded under another version: uncertain */
	add_rec(rp, 11, "erin", "decrypt", "k1", 3, "allow", 200, ",\"batch\":5");
	rows = audit_report_rows(rp);
	assert_non_null(rows);
	assert_int_equal(json_array_size(rows), 3);
	r = json_array_get(rows, 0);
	assert_string_equal(json_string_value(json_object_get(r, "principal")), "alice");
	assert_int_equal(ival(r, "requests"), 1);
	assert_int_equal(ival(r, "items"), 2);
	assert_int_equal(ival(r, "partial_batches"), 1);
	assert_int_equal(ival(r, "context_count"), 1);
	r = json_array_get(rows, 1);
	assert_string_equal(json_string_value(json_object_get(r, "principal")), "bob");
	assert_int_equal(ival(r, "requests"), 4);
	assert_int_equal(ival(r, "items"), 7);
	assert_int_equal(ival(r, "partial_batches"), 0);
	assert_int_equal(ival(r, "uncertain_batches"), 0);
	assert_int_equal(ival(r, "request_ids"), 4);
	assert_int_equal(ival(r, "context_count"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "decrypt"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "datakey"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "rewrap"), 1);
	assert_int_equal(ival(json_object_get(r, "operations"), "encrypt"), 1);
	assert_int_equal(json_array_size(json_object_get(r, "remote_addrs")), 3);
	r = json_array_get(rows, 2);
	assert_string_equal(json_string_value(json_object_get(r, "principal")), "erin");
	assert_int_equal(ival(r, "requests"), 0);
	assert_int_equal(ival(r, "uncertain_batches"), 1);
	assert_true(json_is_null(json_object_get(r, "first")));
	json_decref(rows);
	audit_report_free(rp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_time_parse),
		cmocka_unit_test(test_hmac_normalize),
		cmocka_unit_test(test_view_full_and_minimal),
		cmocka_unit_test(test_view_malformed),
		cmocka_unit_test(test_filters),
		cmocka_unit_test_setup_teardown(test_segments_in_seq_order, dir_setup, dir_teardown),
		cmocka_unit_test_setup_teardown(test_scan_merges_nodes_by_time, dir_setup, dir_teardown),
		cmocka_unit_test_setup_teardown(test_scan_malformed_long_and_disorder, dir_setup,
						dir_teardown),
		cmocka_unit_test(test_report_access),
		cmocka_unit_test(test_report_exposure),
	};

	kms_json_init();
	return cmocka_run_group_tests_name("audit_search", tests, NULL, NULL);
}
