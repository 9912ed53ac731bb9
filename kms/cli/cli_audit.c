/* kmsctl audit: offline tools over audit log files: verify (verify.h), search and
 * report (search.h, report.h). They need no server and no token, except search's
 * --context, which asks the server to hash a context value. */
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/audit/report.h"
#include "kms/audit/search.h"
#include "kms/audit/verify.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"

void cli_audit_usage(FILE *f)
{
	fprintf(f, "usage: kmsctl audit SUBCOMMAND [ARGS...]\n"
		   "\n"
		   "subcommands:\n"
		   "  verify     check order, hash chain and checkpoint signatures of a log\n"
		   "  search     find records by principal, tenant, key, operation, outcome,\n"
		   "             time or context\n"
		   "  report     access (what a principal used) and exposure (who used a key\n"
		   "             version) reports\n"
		   "  hash       hash a value as the log hashes context values (server)\n"
		   "\n"
		   "`kmsctl audit SUBCOMMAND --help` describes a subcommand.\n");
}

static void verify_usage(FILE *f)
{
	fprintf(f,
		"usage: kmsctl audit verify [--pubkey FILE] [--partial] SEGMENT|DIR...\n"
		"\n"
		"Verifies the audit log made of the SEGMENT files (in any order: they are\n"
		"read in the order of their first records; a DIR stands for every audit*.log\n"
		"in it), without a server or token: every record's hash, seq order and prev\n"
		"link, and every checkpoint's ECDSA P-256 signature. The log must start at\n"
		"seq 1 unless --partial. The logs of several nodes (a cluster) may be given at\n"
		"once: files are grouped by the node of their first record and each node's\n"
		"chain is verified on its own, one \"NODE: ok: ...\" or \"NODE: FAIL: ...\" line\n"
		"each.\n"
		"\n"
		"  --pubkey FILE  the PEM public key kmsd exported (default: the first\n"
		"                 SEGMENT.pub.pem that exists; kmsd writes audit.log.pub.pem\n"
		"                 beside audit.log)\n"
		"  --partial      the oldest segments were removed (retention): start at the\n"
		"                 first record given, trusting its prev; checkpoints over\n"
		"                 records before it are checked by their signature alone\n"
		"\n"
		"Prints `ok: N records, M checkpoints, last signed seq S` (and the size of the\n"
		"unsigned tail: records after the last checkpoint, which are not an error),\n"
		"or the first bad record:\n"
		"  FAIL: record seq S (line L of FILE): edited|deleted|inserted|reordered|\n"
		"        chain broken|truncated|bad checkpoint|bad signature: details\n"
		"Exit status: 0 ok, 1 FAIL, 2 usage error or unreadable input.\n"
		"\n"
		"Examples:\n"
		"  kmsctl audit verify /var/lib/kmsd/audit*.log\n"
		"  kmsctl audit verify --pubkey kmsd-audit.pub.pem /archive/kmsd/\n"
		"  kmsctl audit verify --partial /archive/kmsd/2031/\n"
		"  kmsctl audit verify /archive/kmsd/node-1/ /archive/kmsd/node-2/\n");
}

/* The default public key: the last of files[0..n) that has a readable FILE.pub.pem
 * beside it (audit.log is usually last). *out is malloc'd, NULL when none. */
static int default_pubkey(const char *const *files, size_t n, char **out)
{
	*out = NULL;
	for (size_t i = n; i > 0; i--) {
		char *p;
		if (asprintf(&p, "%s.pub.pem", files[i - 1]) < 0)
			return -1;
		if (access(p, R_OK) == 0) {
			*out = p;
			return 0;
		}
		free(p);
	}
	return 0;
}

static int node_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Files from several nodes (a cluster, docs/SCALE-OUT.md): each node's log is its own
 * chain, so each is verified on its own, nodes in name order, one line each:
 * "NODE: ok: ..." or "NODE: FAIL: ...". A non-empty file without a well-formed record
 * names no node and fails. Returns the exit status. */
static int verify_by_node(const struct audit_segs *segs, const char *pubkey, unsigned flags)
{
	struct audit_verify_result res;
	const char **nodes = NULL, **files = NULL;
	char line[1024], *dflt = NULL;
	size_t nn = 0, nf, i, j;
	int rc = CLI_OK;
	kms_err err;

	nodes = calloc(segs->n, sizeof(*nodes));
	files = calloc(segs->n, sizeof(*files));
	if (nodes == NULL || files == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_FAIL;
		goto out;
	}
	for (i = 0; i < segs->n; i++) {
		if (segs->v[i].node == NULL) {
			if (segs->v[i].size > 0) {
				printf("FAIL: %s: no well-formed record names the node whose log it is\n",
				       segs->v[i].path);
				rc = CLI_FAIL;
			}
			continue;
		}
		for (j = 0; j < nn && strcmp(nodes[j], segs->v[i].node) != 0; j++)
			;
		if (j == nn)
			nodes[nn++] = segs->v[i].node;
	}
	qsort(nodes, nn, sizeof(*nodes), node_cmp);
	for (j = 0; j < nn; j++) {
		nf = 0;
		for (i = 0; i < segs->n; i++) /* segs are in first-seq order already */
			if (segs->v[i].node != NULL && strcmp(segs->v[i].node, nodes[j]) == 0)
				files[nf++] = segs->v[i].path;
		free(dflt);
		dflt = NULL;
		if (pubkey == NULL && default_pubkey(files, nf, &dflt) != 0) {
			fprintf(stderr, "kmsctl: out of memory\n");
			rc = CLI_FAIL;
			goto out;
		}
		if (pubkey == NULL && dflt == NULL) {
			fprintf(stderr,
				"kmsctl audit verify: node %s: no --pubkey given and no SEGMENT.pub.pem "
				"beside its files is readable\n",
				nodes[j]);
			rc = CLI_USAGE;
			goto out;
		}
		err = audit_verify_opts(files, nf, pubkey ? pubkey : dflt, flags, &res);
		if (err != KMS_OK) {
			fprintf(stderr, "kmsctl audit verify: node %s: %s\n", nodes[j], kms_err_detail(err));
			rc = CLI_USAGE;
			goto out;
		}
		audit_verify_summary(&res, line, sizeof(line));
		printf("%s: %s\n", nodes[j], line);
		if (res.verdict != AUDIT_V_OK)
			rc = CLI_FAIL;
	}
out:
	free(dflt);
	free(nodes);
	free(files);
	return rc;
}

static int audit_verify_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
		{"pubkey", required_argument, NULL, 'k'},
		{"partial", no_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct audit_verify_result res;
	struct audit_segs segs = {0};
	const char *pubkey = NULL;
	const char **files = NULL;
	char *dflt = NULL, line[1024];
	unsigned flags = 0;
	kms_err err;
	size_t i;
	int c, rc = CLI_USAGE;

	while ((c = getopt_long(argc, argv, "k:ph", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			pubkey = optarg;
			break;
		case 'p':
			flags |= AUDIT_VERIFY_PARTIAL;
			break;
		case 'h':
			verify_usage(stdout);
			return CLI_OK;
		default:
			verify_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "kmsctl audit verify: no SEGMENT given\n\n");
		verify_usage(stderr);
		return CLI_USAGE;
	}
	err = audit_segs_collect((const char *const *)(argv + optind), (size_t)(argc - optind), &segs);
	if (err != KMS_OK) {
		fprintf(stderr, "kmsctl audit verify: %s\n", kms_err_detail(err));
		return CLI_USAGE;
	}
	if (audit_segs_multi_node(&segs)) { /* the logs of several nodes */
		rc = verify_by_node(&segs, pubkey, flags);
		goto out;
	}
	files = calloc(segs.n, sizeof(*files));
	if (files == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_FAIL;
		goto out;
	}
	for (i = 0; i < segs.n; i++)
		files[i] = segs.v[i].path;
	if (pubkey == NULL) {
		if (default_pubkey(files, segs.n, &dflt) != 0) {
			fprintf(stderr, "kmsctl: out of memory\n");
			rc = CLI_FAIL;
			goto out;
		}
		pubkey = dflt;
	}
	if (pubkey == NULL) {
		fprintf(stderr,
			"kmsctl audit verify: no --pubkey given and no SEGMENT.pub.pem beside the "
			"files is readable\n");
		goto out;
	}
	err = audit_verify_opts(files, segs.n, pubkey, flags, &res);
	if (err != KMS_OK) {
		fprintf(stderr, "kmsctl audit verify: %s\n", kms_err_detail(err));
		rc = CLI_USAGE;
	} else {
		audit_verify_summary(&res, line, sizeof(line));
		printf("%s\n", line);
		rc = res.verdict == AUDIT_V_OK ? CLI_OK : CLI_FAIL;
	}
out:
	free(files);
	free(dflt);
	audit_segs_free(&segs);
	return rc;
}

/* ---- search and reports ---------------------------------------------------------- */

enum {
	O_PRINCIPAL = 1000,
	O_TENANT,
	O_KEY,
	O_VERSION,
	O_OPERATION,
	O_OUTCOME,
	O_STATUS,
	O_REQUEST_ID,
	O_FROM,
	O_TO,
	O_NODE,
	O_CONTEXT,
	O_CONTEXT_HASH,
	O_LENIENT,
};

#define MAX_CTX 32
#define HASH_PATH "/v1/sys/audit/hash"

/* What the command line asked for. */
struct query {
	struct audit_filter f;
	struct audit_ctx_pair ctx[MAX_CTX];
	const char *ctx_value[MAX_CTX]; /* --context: the value to hash; NULL for --context-hash */
	char *ctx_key[MAX_CTX];		/* malloc'd */
	const char *from, *to;		/* as given */
	int lenient, json;
};

static void query_free(struct query *q)
{
	for (size_t i = 0; i < q->f.n_ctx; i++)
		free(q->ctx_key[i]);
	q->f.n_ctx = 0;
}

/* A string option that may be given once. */
static int once(const char **slot, const char *opt, const char *arg)
{
	if (*slot != NULL)
		return cli_usage_error("%s given twice", opt);
	if (arg[0] == '\0')
		return cli_usage_error("%s wants a value", opt);
	*slot = arg;
	return CLI_OK;
}

static int time_opt(const char *opt, const char *arg, const char **given, bool *has, int64_t *us)
{
	if (*given != NULL)
		return cli_usage_error("%s given twice", opt);
	if (audit_time_parse(arg, us) != 0)
		return cli_usage_error("%s \"%s\": use an RFC 3339 time (2026-03-01T10:00:00Z, "
				       "2026-03-01T11:00:00+01:00) or a date (2026-03-01)",
				       opt, arg);
	*given = arg;
	*has = true;
	return CLI_OK;
}

/* --context KEY=VALUE or --context-hash KEY=hmac-sha256:HEX. */
static int ctx_opt(struct query *q, int c, const char *arg)
{
	const char *opt = c == O_CONTEXT ? "--context" : "--context-hash", *eq = strchr(arg, '=');
	size_t n = q->f.n_ctx;
	char *k;

	if (eq == NULL || eq == arg)
		return cli_usage_error("%s wants KEY=%s, not \"%s\"", opt,
				       c == O_CONTEXT ? "VALUE" : AUDIT_HMAC_PREFIX "<64 hex>", arg);
	if (n == MAX_CTX)
		return cli_usage_error("more than %d context pairs", MAX_CTX);
	k = strndup(arg, (size_t)(eq - arg));
	if (k == NULL)
		return cli_usage_error("out of memory");
	for (size_t i = 0; i < n; i++)
		if (strcmp(q->ctx_key[i], k) == 0) {
			cli_usage_error("context key \"%s\" given twice", k);
			free(k);
			return CLI_USAGE;
		}
	if (c == O_CONTEXT_HASH && audit_hmac_normalize(eq + 1, q->ctx[n].hash) != 0) {
		cli_usage_error("--context-hash %s: \"%s\" is not %s<64 hex digits>", k, eq + 1,
				AUDIT_HMAC_PREFIX);
		free(k);
		return CLI_USAGE;
	}
	q->ctx_key[n] = k;
	q->ctx[n].key = k;
	q->ctx_value[n] = c == O_CONTEXT ? eq + 1 : NULL;
	q->f.n_ctx = n + 1;
	q->f.ctx = q->ctx;
	return CLI_OK;
}

/* Handles the options search and the reports share; 1 if c was not one of them. */
static int query_opt(struct query *q, int c, const char *arg)
{
	struct audit_filter *f = &q->f;
	long long v;

	switch (c) {
	case O_PRINCIPAL:
		return once(&f->principal, "--principal", arg);
	case O_TENANT:
		return once(&f->tenant, "--tenant", arg);
	case O_KEY:
		return once(&f->key, "--key", arg);
	case O_OPERATION:
		return once(&f->operation, "--operation", arg);
	case O_REQUEST_ID:
		return once(&f->request_id, "--request-id", arg);
	case O_NODE:
		return once(&f->node, "--node", arg);
	case O_OUTCOME:
		if (strcmp(arg, "allow") != 0 && strcmp(arg, "deny") != 0 && strcmp(arg, "error") != 0)
			return cli_usage_error("--outcome \"%s\": use allow, deny or error", arg);
		return once(&f->outcome, "--outcome", arg);
	case O_VERSION:
		if (f->has_version)
			return cli_usage_error("--version given twice");
		if (cli_parse_uint("--version", arg, 4294967295LL, &v) != 0)
			return CLI_USAGE;
		if (v == 0)
			return cli_usage_error("--version: key versions start at 1");
		f->version = (uint32_t)v;
		f->has_version = true;
		return CLI_OK;
	case O_STATUS:
		if (f->status != 0)
			return cli_usage_error("--status given twice");
		if (cli_parse_uint("--status", arg, 599, &v) != 0)
			return CLI_USAGE;
		if (v < 100)
			return cli_usage_error("--status: \"%s\" is not an HTTP status (100-599)", arg);
		f->status = (int)v;
		return CLI_OK;
	case O_FROM:
		return time_opt("--from", arg, &q->from, &f->has_from, &f->from_us);
	case O_TO:
		return time_opt("--to", arg, &q->to, &f->has_to, &f->to_us);
	case O_CONTEXT:
	case O_CONTEXT_HASH:
		return ctx_opt(q, c, arg);
	case O_LENIENT:
		q->lenient = 1;
		return CLI_OK;
	default:
		return 1;
	}
}

/* After the options: the time range, FILES present, the output format. */
static int query_check(struct query *q, int argc)
{
	if (q->f.has_from && q->f.has_to && q->f.from_us >= q->f.to_us)
		return cli_usage_error("--from %s is not before --to %s (--to is exclusive)", q->from,
				       q->to);
	if (optind >= argc)
		return cli_usage_error("no audit log FILE or DIRECTORY given");
	return cli_output_json(&q->json);
}

/* Turns --context values into hashes with the server's audit HMAC key. */
static int hash_contexts(struct query *q)
{
	struct cli_client c;
	json_t *body = NULL, *ans = NULL;
	const char *h;
	long status = 0;
	size_t i;
	int rc = CLI_OK, connected = 0;

	for (i = 0; i < q->f.n_ctx && rc == CLI_OK; i++) {
		if (q->ctx_value[i] == NULL)
			continue;
		if (!connected) {
			rc = cli_connect(&c, 1);
			if (rc != CLI_OK)
				return rc;
			connected = 1;
		}
		body = json_pack("{s:s}", "input", q->ctx_value[i]);
		if (body == NULL) {
			fprintf(stderr, "kmsctl: out of memory\n");
			rc = CLI_SERVER;
			break;
		}
		rc = cli_call_status(&c, "POST", HASH_PATH, body, &ans, &status);
		if (status != 0 && (status < 200 || status >= 300)) {
			cli_print_http_error(status, ans);
			if (status == 404 || status == 405)
				fprintf(stderr,
					"kmsctl %s: the server has no POST %s (an older kmsd?); give "
					"the value's HMAC instead: --context-hash %s=%s<hex>\n",
					cli_cmd, HASH_PATH, q->ctx_key[i], AUDIT_HMAC_PREFIX);
		}
		if (rc == CLI_OK) {
			h = json_string_value(json_object_get(cli_data(ans), "hash"));
			if (audit_hmac_normalize(h, q->ctx[i].hash) != 0) {
				fprintf(stderr, "kmsctl: %ld the answer carries no %s<64 hex> hash\n",
					status, AUDIT_HMAC_PREFIX);
				rc = CLI_SERVER;
			}
		}
		json_decref(body);
		json_decref(ans);
		body = ans = NULL;
	}
	if (connected)
		cli_disconnect(&c);
	return rc;
}

static void note(void *ctx, const char *file, uint64_t line, const char *what)
{
	(void)ctx;
	fprintf(stderr, "kmsctl %s: %s:%llu: %s\n", cli_cmd, file, (unsigned long long)line, what);
}

/* Writes s with control bytes replaced (a record's text cannot drive the terminal),
 * then padding to width (plus the two spaces between columns) unless it is the last. */
static void put_cell(const char *s, int width, bool last)
{
	int n = 0;

	if (s == NULL || s[0] == '\0')
		s = "-";
	for (; *s; s++, n++)
		fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, stdout);
	if (!last)
		printf("%*s", width > n ? width - n + 2 : 2, "");
}

static const struct {
	const char *name;
	int width;
} search_cols[] = {
	{"SEQ", 6},	    {"TIME", 27},    {"PRINCIPAL", 14}, {"REMOTE_ADDR", 15},
	{"OPERATION", 18}, {"TENANT", 14},  {"KEY", 14},	{"VERSION", 7},
	{"OUTCOME", 7},	    {"STATUS", 6},   {"REQUEST_ID", 24}, {"REASON", 0},
};
#define N_SEARCH_COLS (sizeof(search_cols) / sizeof(search_cols[0]))

static void search_header(void)
{
	for (size_t i = 0; i < N_SEARCH_COLS; i++)
		put_cell(search_cols[i].name, search_cols[i].width, i + 1 == N_SEARCH_COLS);
	fputc('\n', stdout);
}

static kms_err search_print(void *ctx, const struct audit_view *r, const char *line, size_t len)
{
	const struct query *q = ctx;
	char seq[24], ver[16], st[16];
	const char *cells[N_SEARCH_COLS];

	if (q->json) {
		fwrite(line, 1, len, stdout);
		fputc('\n', stdout);
		return ferror(stdout) ? kms_errf(KMS_ERR_IO, "writing the output failed") : KMS_OK;
	}
	snprintf(seq, sizeof(seq), "%llu", (unsigned long long)r->seq);
	snprintf(ver, sizeof(ver), r->version ? "%u" : "-", r->version);
	snprintf(st, sizeof(st), r->status ? "%d" : "-", r->status);
	cells[0] = seq;
	cells[1] = r->time;
	cells[2] = r->principal;
	cells[3] = r->remote_addr;
	cells[4] = r->operation;
	cells[5] = r->tenant;
	cells[6] = r->key;
	cells[7] = ver;
	cells[8] = r->outcome;
	cells[9] = st;
	cells[10] = r->request_id;
	cells[11] = r->reason;
	for (size_t i = 0; i < N_SEARCH_COLS; i++)
		put_cell(cells[i], search_cols[i].width, i + 1 == N_SEARCH_COLS);
	fputc('\n', stdout);
	return ferror(stdout) ? kms_errf(KMS_ERR_IO, "writing the output failed") : KMS_OK;
}

/* The exit status after a scan: 2 when a file could not be read, 1 when lines were
 * skipped or seq went back (unless --lenient), else 0. */
static int scan_status(const struct query *q, kms_err rc, const struct audit_scan_stats *st)
{
	if (rc != KMS_OK) {
		fprintf(stderr, "kmsctl %s: %s\n", cli_cmd, kms_err_detail(rc));
		return rc == KMS_ERR_IO ? CLI_USAGE : CLI_FAIL;
	}
	if ((st->malformed > 0 || st->disorder > 0) && !q->lenient) {
		fprintf(stderr, "kmsctl %s: ", cli_cmd);
		if (st->malformed > 0)
			fprintf(stderr, "%llu malformed line%s skipped%s",
				(unsigned long long)st->malformed, st->malformed == 1 ? "" : "s",
				st->disorder > 0 ? ", " : "");
		if (st->disorder > 0)
			fprintf(stderr, "%llu record%s out of seq order",
				(unsigned long long)st->disorder, st->disorder == 1 ? "" : "s");
		fprintf(stderr, " (exit status 1; with --lenient 0)\n");
		return CLI_FAIL;
	}
	return CLI_OK;
}

/* Segments from the positional arguments; CLI_OK or an exit status after a message. */
static int collect(int argc, char **argv, struct audit_segs *segs)
{
	kms_err rc = audit_segs_collect((const char *const *)(argv + optind),
					(size_t)(argc - optind), segs);

	if (rc == KMS_OK)
		return CLI_OK;
	fprintf(stderr, "kmsctl %s: %s\n", cli_cmd, kms_err_detail(rc));
	return rc == KMS_ERR_NOMEM ? CLI_FAIL : CLI_USAGE;
}

#define QUERY_OPTIONS                                                                     \
	{"from", required_argument, NULL, O_FROM}, {"to", required_argument, NULL, O_TO},  \
	{"lenient", no_argument, NULL, O_LENIENT}

static int audit_search(int argc, char **argv)
{
	static const struct option opts[] = {
		{"principal", required_argument, NULL, O_PRINCIPAL},
		{"tenant", required_argument, NULL, O_TENANT},
		{"key", required_argument, NULL, O_KEY},
		{"version", required_argument, NULL, O_VERSION},
		{"operation", required_argument, NULL, O_OPERATION},
		{"outcome", required_argument, NULL, O_OUTCOME},
		{"status", required_argument, NULL, O_STATUS},
		{"request-id", required_argument, NULL, O_REQUEST_ID},
		{"node", required_argument, NULL, O_NODE},
		{"context", required_argument, NULL, O_CONTEXT},
		{"context-hash", required_argument, NULL, O_CONTEXT_HASH},
		QUERY_OPTIONS,
		{NULL, 0, NULL, 0},
	};
	struct query q = {0};
	struct audit_segs segs = {0};
	struct audit_scan_stats st;
	kms_err err;
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == -2 || query_opt(&q, c, optarg) != CLI_OK)
			goto out;
	}
	if ((rc = query_check(&q, argc)) != CLI_OK || (rc = collect(argc, argv, &segs)) != CLI_OK ||
	    (rc = hash_contexts(&q)) != CLI_OK)
		goto out;
	if (!q.json)
		search_header();
	err = audit_scan(&segs, &q.f, search_print, note, &q, &st);
	if (!q.json && err == KMS_OK)
		printf("-- %llu of %llu records matched (%llu file%s)\n",
		       (unsigned long long)st.matched, (unsigned long long)st.records,
		       (unsigned long long)st.files, st.files == 1 ? "" : "s");
	fflush(stdout);
	rc = scan_status(&q, err, &st);
out:
	audit_segs_free(&segs);
	query_free(&q);
	return rc;
}

/* ---- reports --------------------------------------------------------------------- */

struct report_run {
	struct audit_report *rp;
};

static kms_err report_add(void *ctx, const struct audit_view *r, const char *line, size_t len)
{
	struct report_run *run = ctx;

	(void)line;
	(void)len;
	return audit_report_add(run->rp, r);
}

/* A JSON value as table text: strings as they are, numbers in decimal, null "-",
 * objects of counts as "name=n name=n" (sorted), arrays joined by ",". */
static char *cell_text(const json_t *v)
{
	char *s = NULL, *t;
	const char *k;
	json_t *e;
	size_t i;

	switch (json_typeof(v)) {
	case JSON_STRING:
		return strdup(json_string_value(v));
	case JSON_INTEGER:
		return asprintf(&s, "%lld", (long long)json_integer_value(v)) < 0 ? NULL : s;
	case JSON_ARRAY:
		s = strdup("");
		json_array_foreach(v, i, e) {
			t = s;
			if (t == NULL || asprintf(&s, "%s%s%s", t, i ? "," : "",
						  json_is_string(e) ? json_string_value(e) : "?") < 0)
				s = NULL;
			free(t);
		}
		return s;
	case JSON_OBJECT: {
		json_t *keys = json_array();

		json_object_foreach((json_t *)v, k, e)
			json_array_append_new(keys, json_string(k));
		/* few operations: an insertion sort is plenty */
		for (i = 1; i < json_array_size(keys); i++)
			for (size_t j = i; j > 0 && strcmp(json_string_value(json_array_get(keys, j - 1)),
							   json_string_value(json_array_get(keys, j))) > 0;
			     j--) {
				json_t *a = json_incref(json_array_get(keys, j - 1));

				json_array_set(keys, j - 1, json_array_get(keys, j));
				json_array_set_new(keys, j, a);
			}
		s = strdup("");
		json_array_foreach(keys, i, e) {
			t = s;
			k = json_string_value(e);
			if (t == NULL ||
			    asprintf(&s, "%s%s%s=%lld", t, i ? " " : "", k,
				     (long long)json_integer_value(json_object_get(v, k))) < 0)
				s = NULL;
			free(t);
		}
		json_decref(keys);
		return s;
	}
	default:
		return strdup("-");
	}
}

/* Prints rows (objects) under a header, columns aligned; cols[i] names the member. */
static int print_table(const json_t *rows, const char *const *heads, const char *const *cols,
		       size_t n_cols)
{
	size_t n_rows = json_array_size(rows), i, j;
	char **cells = calloc(n_rows * n_cols + 1, sizeof(*cells));
	int width[16] = {0}, rc = CLI_OK;

	if (cells == NULL || n_cols > 16)
		goto oom;
	for (j = 0; j < n_cols; j++)
		width[j] = (int)strlen(heads[j]);
	for (i = 0; i < n_rows; i++)
		for (j = 0; j < n_cols; j++) {
			const json_t *v = json_object_get(json_array_get(rows, i), cols[j]);

			cells[i * n_cols + j] = cell_text(v ? v : json_null());
			if (cells[i * n_cols + j] == NULL)
				goto oom;
			if ((int)strlen(cells[i * n_cols + j]) > width[j])
				width[j] = (int)strlen(cells[i * n_cols + j]);
		}
	for (j = 0; j < n_cols; j++)
		put_cell(heads[j], width[j], j + 1 == n_cols);
	fputc('\n', stdout);
	for (i = 0; i < n_rows; i++) {
		for (j = 0; j < n_cols; j++)
			put_cell(cells[i * n_cols + j], width[j], j + 1 == n_cols);
		fputc('\n', stdout);
	}
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_FAIL;
out:
	for (i = 0; cells != NULL && i < n_rows * n_cols; i++)
		free(cells[i]);
	free(cells);
	return rc;
}

static json_t *opt_text(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* Scans, then prints the report in the chosen format. */
static int run_report(struct query *q, enum audit_report_kind kind, int argc, char **argv)
{
	static const char *const acc_heads[] = {"TENANT", "KEY", "VERSION", "REQUESTS", "ITEMS",
						"ALLOW", "DENY", "ERROR", "CONTEXTS", "FIRST",
						"LAST", "REMOTE_ADDRS", "OPERATIONS"};
	static const char *const acc_cols[] = {"tenant", "key", "version", "requests", "items",
					       "allow", "deny", "error", "context_count", "first",
					       "last", "remote_addrs", "operations"};
	static const char *const exp_heads[] = {"PRINCIPAL", "REQUESTS", "ITEMS", "PARTIAL",
						"UNCERTAIN", "CONTEXTS", "REQUEST_IDS", "FIRST",
						"LAST", "REMOTE_ADDRS", "OPERATIONS"};
	static const char *const exp_cols[] = {"principal", "requests", "items", "partial_batches",
					       "uncertain_batches", "context_count", "request_ids",
					       "first", "last", "remote_addrs", "operations"};
	struct report_run run = {0};
	struct audit_segs segs = {0};
	struct audit_scan_stats st;
	json_t *rows = NULL, *doc = NULL, *files = NULL;
	kms_err err;
	int rc;

	if ((rc = query_check(q, argc)) != CLI_OK || (rc = collect(argc, argv, &segs)) != CLI_OK)
		goto out;
	err = audit_report_new(kind, q->f.version, &run.rp);
	if (err == KMS_OK)
		err = audit_scan(&segs, &q->f, report_add, note, &run, &st);
	if (err == KMS_OK && (rows = audit_report_rows(run.rp)) == NULL)
		err = kms_errf(KMS_ERR_NOMEM, "out of memory");
	rc = scan_status(q, err, &st);
	if (err != KMS_OK)
		goto out;
	files = json_array();
	for (size_t i = 0; files != NULL && i < segs.n; i++)
		json_array_append_new(files, json_string(segs.v[i].path));
	if (kind == AUDIT_REPORT_ACCESS)
		doc = json_pack("{s:s,s:o}", "report", "access", "principal", opt_text(q->f.principal));
	else
		doc = json_pack("{s:s,s:o,s:o,s:I}", "report", "exposure", "tenant",
				opt_text(q->f.tenant), "key", opt_text(q->f.key), "version",
				(json_int_t)q->f.version);
	if (doc == NULL || files == NULL ||
	    json_object_set_new(doc, "from", opt_text(q->from)) != 0 ||
	    json_object_set_new(doc, "to", opt_text(q->to)) != 0 ||
	    json_object_set_new(doc, "files", files) != 0 ||
	    json_object_set_new(doc, "records", json_integer((json_int_t)st.records)) != 0 ||
	    json_object_set_new(doc, "matched", json_integer((json_int_t)st.matched)) != 0 ||
	    json_object_set_new(doc, "malformed", json_integer((json_int_t)st.malformed)) != 0 ||
	    json_object_set(doc, "rows", rows) != 0) {
		if (doc == NULL || files == NULL)
			json_decref(files);
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_FAIL;
		goto out;
	}
	if (q->json) {
		cli_print_json(doc);
	} else {
		if (kind == AUDIT_REPORT_ACCESS)
			printf("access report: principal %s", q->f.principal);
		else
			printf("exposure report: tenant %s, key %s, version %u", q->f.tenant,
			       q->f.key, q->f.version);
		printf(", from %s to %s; %llu records in %zu file%s, %llu selected\n\n",
		       q->from ? q->from : "the start", q->to ? q->to : "the end",
		       (unsigned long long)st.records, segs.n, segs.n == 1 ? "" : "s",
		       (unsigned long long)st.matched);
		if (json_array_size(rows) == 0) {
			printf("(no %s)\n", kind == AUDIT_REPORT_ACCESS
						    ? "record of this principal"
						    : "principal used this key version");
		} else {
			int trc = kind == AUDIT_REPORT_ACCESS
					  ? print_table(rows, acc_heads, acc_cols, 13)
					  : print_table(rows, exp_heads, exp_cols, 11);
			if (trc != CLI_OK)
				rc = trc;
		}
	}
	fflush(stdout);
out:
	json_decref(doc);
	json_decref(rows);
	audit_report_free(run.rp);
	audit_segs_free(&segs);
	return rc;
}

static int report_access(int argc, char **argv)
{
	static const struct option opts[] = {
		{"principal", required_argument, NULL, O_PRINCIPAL},
		QUERY_OPTIONS,
		{NULL, 0, NULL, 0},
	};
	struct query q = {0};
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1)
		if (c == -2 || query_opt(&q, c, optarg) != CLI_OK)
			goto out;
	if (q.f.principal == NULL) {
		rc = cli_usage_error("--principal is required");
		goto out;
	}
	rc = run_report(&q, AUDIT_REPORT_ACCESS, argc, argv);
out:
	query_free(&q);
	return rc;
}

static int report_exposure(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tenant", required_argument, NULL, O_TENANT},
		{"key", required_argument, NULL, O_KEY},
		{"version", required_argument, NULL, O_VERSION},
		QUERY_OPTIONS,
		{NULL, 0, NULL, 0},
	};
	struct query q = {0};
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1)
		if (c == -2 || query_opt(&q, c, optarg) != CLI_OK)
			goto out;
	if (q.f.tenant == NULL || q.f.key == NULL || !q.f.has_version) {
		rc = cli_usage_error("--tenant, --key and --version are required");
		goto out;
	}
	/* The report looks at every version of the key: a batch record names one version
	 * only, so batches under other versions are reported as uncertain. */
	q.f.has_version = false;
	rc = run_report(&q, AUDIT_REPORT_EXPOSURE, argc, argv);
out:
	query_free(&q);
	return rc;
}

#define FILES_HELP                                                                        \
	"FILES: audit log files and directories, in any order; a directory stands for\n"   \
	"every audit*.log in it (the current audit.log and rotated audit-<seq>.log\n"      \
	"segments). They are read in the order of their first record's seq; a file\n"      \
	"named twice is read once. The logs of several nodes (a cluster) are read each\n"    \
	"in its seq order and merged by time. No server or token is needed (except for\n"   \
	"--context).\n"

#define LINES_HELP                                                                        \
	"A malformed line (not one JSON object of the audit record's shape, or longer\n"   \
	"than 1 MiB) is reported on stderr as FILE:LINE and skipped; so is a seq that\n"   \
	"goes back (overlapping segments). Either makes the exit status 1 after the\n"     \
	"output, unless --lenient. Nothing here checks hashes or signatures: run\n"        \
	"`kmsctl audit verify` for that.\n"

#define TIME_HELP                                                                         \
	"  --from TIME            records at or after TIME (RFC 3339, e.g.\n"                \
	"                         2026-03-01T10:00:00Z, or a date: its 00:00Z)\n"            \
	"  --to TIME              records before TIME (exclusive)\n"                         \
	"  --lenient              exit 0 even if malformed lines were skipped\n"

static const struct cli_leaf search_leaf = {
	"search", "find records by who, what, when, outcome or context",
	"[FILTERS] FILE|DIR...",
	"Prints the records that match every filter given: a table (default), or with\n"
	"--format json the matching lines as they are in the log (JSON Lines).\n"
	"\n"
	"  --principal NAME       who (exact)\n"
	"  --tenant NAME          --key NAME    --version N\n"
	"  --operation PATTERN    exact name or glob: decrypt, 'key.*', 'key.version.*'\n"
	"  --outcome allow|deny|error            --status HTTP-STATUS\n"
	"  --request-id ID        --node NODE-ID\n"
	TIME_HELP
	"  --context KEY=VALUE    records whose encryption context has KEY = VALUE:\n"
	"                         VALUE is hashed by the server (POST /v1/sys/audit/hash,\n"
	"                         admin or auditor token; KMS_ADDR, KMS_TOKEN, KMS_CACERT\n"
	"                         as for every call). Repeat: all pairs in one context.\n"
	"  --context-hash KEY=hmac-sha256:HEX   the same with the hash given (offline)\n"
	"\n"
	FILES_HELP
	LINES_HELP
	"\n"
	"Exit status: 0 it ran (also when nothing matched), 1 lines skipped (see above)\n"
	"or the server refused --context, 2 usage error or unreadable file, 3/4 as for\n"
	"every server call (--context only).\n"
	"\n"
	"examples:\n"
	"  kmsctl audit search --principal lab-pipeline --from 2026-03-01 /var/lib/kmsd\n"
	"  kmsctl audit search --operation 'key.version.*' --outcome allow audit*.log\n"
	"  kmsctl audit search --tenant cardiology --context patient=MRN-0042 /var/lib/kmsd\n"
	"  kmsctl --format json audit search --outcome deny /var/lib/kmsd | jq .remote_addr\n",
	audit_search, NULL};

static const struct cli_leaf report_leaves[] = {
	{"access", "what one principal used: the blast radius of a stolen credential",
	 "--principal NAME [--from TIME] [--to TIME] FILE|DIR...",
	 "One row per tenant, key and version the principal's records name (nulls as -):\n"
	 "requests and batch items, allow/deny/error counts, first and last time, remote\n"
	 "addresses, counts per operation, and the distinct encryption contexts (their\n"
	 "HMACs) of the requests that returned results; --format json lists them.\n"
	 "\n"
	 "  --principal NAME       the principal (required)\n"
	 TIME_HELP
	 "\n"
	 FILES_HELP
	 LINES_HELP
	 "\n"
	 "example:\n"
	 "  kmsctl audit report access --principal lab-pipeline --from 2026-03-01 \\\n"
	 "      --to 2026-03-08 /var/lib/kmsd\n",
	 report_access, NULL},
	{"exposure", "who used one key version: what a leaked KEK version exposes",
	 "--tenant NAME --key NAME --version N [--from TIME] [--to TIME] FILE|DIR...",
	 "One row per principal that used VERSION of the key through datakey, encrypt,\n"
	 "decrypt or rewrap and got results (outcome allow, or a batch answered 400:\n"
	 "its successful items went out): requests and items, partial batches, first\n"
	 "and last time, remote addresses, distinct request ids, counts per operation\n"
	 "and the distinct encryption contexts (HMACs; listed with --format json).\n"
	 "\n"
	 "What the log records: decrypt names the ciphertext's version; datakey, encrypt\n"
	 "and rewrap the version of the new ciphertext (a rewrap's source version is not\n"
	 "recorded). A batch record names one version, that of its last successful item;\n"
	 "UNCERTAIN counts the principal's batches on the key recorded under another\n"
	 "version, which may hold items under VERSION.\n"
	 "\n"
	 "  --tenant NAME --key NAME --version N   the key version (all required)\n"
	 TIME_HELP
	 "\n"
	 FILES_HELP
	 LINES_HELP
	 "\n"
	 "example:\n"
	 "  kmsctl audit report exposure --tenant cardiology --key patient-records \\\n"
	 "      --version 3 --format json /var/lib/kmsd\n",
	 report_exposure, NULL},
};

static const struct cli_group report_group = {
	"audit report",
	"Reports over audit logs, offline (no server, no token): what a principal used,\n"
	"and who used a key version. Table by default, or --format json.\n",
	report_leaves, sizeof(report_leaves) / sizeof(report_leaves[0])};

static int audit_search_cmd(int argc, char **argv)
{
	return cli_leaf_run(&search_leaf, "audit search", argc, argv);
}

static int audit_report_cmd(int argc, char **argv)
{
	return cli_group_run(&report_group, argc, argv);
}

static void search_usage(FILE *f)
{
	cli_leaf_usage(&search_leaf, "audit search", f);
}

static void report_usage(FILE *f)
{
	cli_group_usage(&report_group, f);
}

static void hash_usage(FILE *f)
{
	fprintf(f,
		"usage: kmsctl audit hash [FILE|-]\n"
		"\n"
		"Hashes a value the way audit records hash encryption_context values and\n"
		"associated data (HMAC-SHA256 under the token's audit key: POST\n"
		"/v1/sys/audit/hash, admin), and prints hmac-sha256:<hex> to search the log\n"
		"for. The value is read from FILE or standard input (default), never from the\n"
		"command line, since it may be a patient identifier; one trailing newline is\n"
		"dropped.\n"
		"\n"
		"examples:\n"
		"  printf %%s treatment | kmsctl audit hash\n"
		"  grep \"$(printf %%s MRN-0042 | kmsctl audit hash)\" /var/lib/kmsd/audit*.log\n"
		"Exit status: 0, 1 refused (4xx), 2 usage, 3 unreachable, 4 server error.\n");
}

static void hash_table(const json_t *data)
{
	const char *h = json_string_value(json_object_get(data, "hash"));

	printf("%s\n", h ? h : "");
}

static int audit_hash_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	unsigned char *buf = NULL;
	size_t len = 0;
	json_t *body;
	int c, rc;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			hash_usage(stdout);
			return CLI_OK;
		}
		hash_usage(stderr);
		return CLI_USAGE;
	}
	if (argc - optind > 1) {
		hash_usage(stderr);
		return CLI_USAGE;
	}
	rc = cli_read_input(optind < argc ? argv[optind] : "-", 4096, &buf, &len);
	if (rc != CLI_OK)
		return rc;
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	body = json_object();
	if (body == NULL || json_object_set_new(body, "input", json_stringn((const char *)buf, len)) != 0 ||
	    json_object_get(body, "input") == NULL) {
		fprintf(stderr, "kmsctl audit hash: the value is not UTF-8 text\n");
		json_decref(body);
		kms_wipe(buf, len);
		free(buf);
		return CLI_USAGE;
	}
	kms_wipe(buf, len);
	free(buf);
	return cli_simple_call("POST", strdup(HASH_PATH), body, hash_table);
}

static const struct cli_command subcommands[] = {
	{"verify", "check a log offline", audit_verify_cmd, verify_usage},
	{"hash", "hash a value as the log does (server)", audit_hash_cmd, hash_usage},
	{"search", "find records", audit_search_cmd, search_usage},
	{"report", "access and exposure reports", audit_report_cmd, report_usage},
};

int cli_audit(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		cli_audit_usage(stderr);
		return CLI_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		cli_audit_usage(stdout);
		return CLI_OK;
	}
	for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
		if (strcmp(argv[1], subcommands[i].name) == 0) {
			optind = 0;
			return subcommands[i].run(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "kmsctl audit: unknown subcommand \"%s\"\n\n", argv[1]);
	cli_audit_usage(stderr);
	return CLI_USAGE;
}
