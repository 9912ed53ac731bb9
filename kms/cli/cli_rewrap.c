/* kmsctl rewrap --tenant T --key K (--in FILE | --sealed FILE...): bulk rewrap
 * (docs/KMSCTL.md "Bulk rewrap").
 *
 * List mode reads ciphertexts one per line (optionally `ciphertext<TAB>context-json`),
 * sends those below the key's latest version in batch_input calls, and writes every
 * line, in order, to --out: the new ciphertext, or the line as it was (blank, already
 * at the latest version, or failed). Sealed mode moves the wrapped DEK in the header
 * of sealed files to the latest version; since the header is every chunk's AAD, the
 * file is re-encrypted chunk by chunk under the same DEK and a fresh nonce prefix into
 * a temporary file beside it, which is fsync'd and renamed over the original.
 *
 * Durability (--state FILE): list mode appends each batch's lines to OUT.kmsctl-partial,
 * fsyncs it, then records in the state file (written to a temporary name, fsync'd and
 * renamed) how many input lines and output bytes are done. A resumed run cuts the
 * partial output back to the recorded length and reads on from the recorded input
 * offset, so no line is lost or written twice. The partial file is renamed to OUT when
 * the input is done. Sealed mode appends `done PATH` to the state file (fsync'd) after
 * each file's rename. The state file is removed when a run ends with nothing left.
 *
 * Every HTTP call takes a token from a bucket that refills at --rate per second
 * (capacity 1: no bursts); 429 and 503 answers are retried with a growing pause. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/fileio.h"
#include "kms/base/secret.h"
#include "kms/base/seal.h"
#include "kms/cli/cli.h"

#define BATCH_DEFAULT 100
#define BATCH_MAX 1000         /* the server's batch_input limit */
#define LINE_MAX_BYTES (1u << 20)
#define LINES_PER_ROUND 4096   /* lines read per round, however many are sent */
#define STATE_MAX (64u << 20)  /* a state file of sealed mode lists paths */
#define RETRIES 6
#define STATE_MAGIC "kmsctl-rewrap-state 1"
#define PARTIAL_SUFFIX ".kmsctl-partial"
#define SEAL_TMP_SUFFIX ".kmsctl-rewrap"

enum {
	O_TENANT = 1000,
	O_KEY,
	O_CONTEXT,
	O_IN,
	O_SEALED,
	O_OUT,
	O_BATCH,
	O_RATE,
	O_STATE,
	O_FAIL_FAST,
};

/* ---- the run -------------------------------------------------------------------- */

struct bulk {
	struct cli_client c;
	const char *tenant, *key;
	json_t *context; /* --context pairs, or NULL */
	long long batch;
	double rate;     /* requests per second; 0 = unlimited */
	double tokens;   /* the bucket */
	struct timespec last;
	int fail_fast;
	long long latest;
	char *rewrap_path, *decrypt_path;
	/* counters, cumulative over resumed runs (list mode keeps them in the state) */
	long long rewrapped, skipped, failed, requests;
	/* progress */
	int tty;
	long long total, done, done_at_start;
	double t0, last_draw;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Takes one token from the bucket (capacity 1), sleeping until there is one. */
static void rate_wait(struct bulk *b)
{
	double t, have;

	if (b->rate <= 0)
		return;
	t = now_s();
	have = b->tokens + (t - b->last.tv_sec - b->last.tv_nsec / 1e9) * b->rate;
	if (have > 1)
		have = 1;
	if (have < 1) {
		sleep_s((1 - have) / b->rate);
		have = 1;
	}
	b->tokens = have - 1;
	clock_gettime(CLOCK_MONOTONIC, &b->last);
}

static void progress(struct bulk *b, int final)
{
	double t = now_s(), el = t - b->t0, rate;
	long long this_run = b->done - b->done_at_start;

	if (!b->tty || (!final && t - b->last_draw < 0.2))
		return;
	b->last_draw = t;
	rate = el > 0 ? (double)this_run / el : 0;
	fprintf(stderr, "\r\033[Krewrap: %lld", b->done);
	if (b->total > 0) {
		fprintf(stderr, "/%lld %5.1f%%", b->total, 100.0 * (double)b->done / (double)b->total);
	}
	fprintf(stderr, "  %.0f/s", rate);
	if (b->total > 0 && rate > 0 && b->done < b->total) {
		long long eta = (long long)((double)(b->total - b->done) / rate);

		fprintf(stderr, "  ETA %lld:%02lld:%02lld", eta / 3600, eta / 60 % 60, eta % 60);
	}
	fprintf(stderr, "  (%lld rewrapped, %lld at v%lld, %lld failed)", b->rewrapped, b->skipped,
		b->latest, b->failed);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

/* Prints a server message with control characters replaced. */
static void put_clean(FILE *f, const char *s)
{
	for (; s != NULL && *s; s++)
		fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, f);
}

/* One POST, retried on 429 and 503 (rate limited, or the token or audit log briefly
 * unavailable): a rewrap changes nothing on the server, so sending it again is safe. */
static int post(struct bulk *b, const char *path, const json_t *body, json_t **ans, long *status)
{
	int rc;

	for (int attempt = 0;; attempt++) {
		rate_wait(b);
		b->requests++;
		rc = cli_call_status(&b->c, "POST", path, body, ans, status);
		if ((*status == 429 || *status == 503) && attempt < RETRIES) {
			double pause = attempt < 5 ? (double)(1 << attempt) : 30;

			if (b->tty)
				fputc('\n', stderr);
			fprintf(stderr, "kmsctl %s: %ld from the server, again in %.0f s\n", cli_cmd,
				*status, pause);
			json_decref(*ans);
			*ans = NULL;
			sleep_s(pause);
			continue;
		}
		return rc;
	}
}

/* N of "vault:vN:...", or -1. */
static long long ct_version(const char *s)
{
	long long v = 0;
	int digits = 0;

	if (strncmp(s, "vault:v", 7) != 0)
		return -1;
	for (s += 7; *s >= '0' && *s <= '9'; s++) {
		if (++digits > 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	if (digits == 0 || *s != ':' || v == 0)
		return -1;
	return v;
}

static int latest_version(struct bulk *b)
{
	json_t *ans = NULL;
	char *path = cli_path(b->tenant, "keys", b->key, NULL);
	json_int_t v;
	int rc;

	if (path == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return CLI_SERVER;
	}
	rc = cli_call(&b->c, "GET", path, NULL, &ans);
	b->requests++;
	if (rc == CLI_OK) {
		v = json_integer_value(json_object_get(cli_data(ans), "latest_version"));
		if (v < 1) {
			fprintf(stderr, "kmsctl %s: the key's answer names no latest_version\n", cli_cmd);
			rc = CLI_SERVER;
		}
		b->latest = v;
	}
	json_decref(ans);
	free(path);
	return rc;
}

/* ---- files ---------------------------------------------------------------------- */

static int write_all(int fd, const char *what, const void *p, size_t n)
{
	if (kms_write_all(fd, p, n) != 0) {
		fprintf(stderr, "kmsctl %s: writing %s: %s\n", cli_cmd, what, strerror(errno));
		return CLI_USAGE;
	}
	return CLI_OK;
}

/* A file kmsctl opened to write over (O_CREAT without O_EXCL, to take over a crashed
 * run's leftover): it must be a regular file of ours with no other name, or a hard link
 * planted in a shared directory would make us truncate someone else's file. */
static int own_file(int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) != 0) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid()) {
		fprintf(stderr, "kmsctl %s: %s exists and is not a file of ours with one name; "
				"refusing to write over it\n", cli_cmd, path);
		return -1;
	}
	return 0;
}

/* ---- the state file ------------------------------------------------------------- */

/* name value lines after the magic line; value = the rest of the line. */
struct state {
	const char *path; /* NULL: no --state */
	char *buf;        /* the file's text, or NULL when there was none */
	size_t len;
};

static int state_load(struct state *s)
{
	unsigned char *buf = NULL;
	size_t len = 0;
	struct stat st;

	if (s->path == NULL)
		return CLI_OK;
	if (stat(s->path, &st) != 0) {
		if (errno == ENOENT)
			return CLI_OK;
		fprintf(stderr, "kmsctl %s: state file %s: %s\n", cli_cmd, s->path, strerror(errno));
		return CLI_USAGE;
	}
	if (cli_read_input(s->path, STATE_MAX, &buf, &len) != CLI_OK)
		return CLI_USAGE;
	if (len < sizeof(STATE_MAGIC) || memcmp(buf, STATE_MAGIC "\n", sizeof(STATE_MAGIC)) != 0) {
		free(buf);
		fprintf(stderr, "kmsctl %s: %s is not a kmsctl rewrap state file\n", cli_cmd, s->path);
		return CLI_USAGE;
	}
	s->buf = (char *)buf;
	s->len = len;
	return CLI_OK;
}

/* The value of `name` (first occurrence), copied into a malloc'd string; NULL if absent. */
static char *state_get(const struct state *s, const char *name)
{
	size_t n = strlen(name);
	const char *p, *e;

	for (p = s->buf; p != NULL && p < s->buf + s->len; p = e + 1) {
		e = memchr(p, '\n', (size_t)(s->buf + s->len - p));
		if (e == NULL)
			e = s->buf + s->len;
		if ((size_t)(e - p) > n && memcmp(p, name, n) == 0 && p[n] == ' ')
			return strndup(p + n + 1, (size_t)(e - p - (ptrdiff_t)n - 1));
	}
	return NULL;
}

static int state_num(const struct state *s, const char *name, long long *out)
{
	char *v = state_get(s, name), *end;
	int ok;

	if (v == NULL)
		return -1;
	errno = 0;
	*out = strtoll(v, &end, 10);
	ok = errno == 0 && end != v && *end == '\0' && *out >= 0;
	free(v);
	return ok ? 0 : -1;
}

/* Replaces the state file with text: temporary file, fsync, rename, fsync of the dir. */
static int state_replace(const struct state *s, const char *text, size_t n)
{
	char *tmp = NULL;
	int fd = -1, rc = CLI_USAGE;

	if (asprintf(&tmp, "%s.tmp", s->path) < 0) {
		tmp = NULL;
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto err;
	if (own_file(fd, tmp) != 0)
		goto out;
	if (ftruncate(fd, 0) != 0)
		goto err;
	if (write_all(fd, tmp, text, n) != CLI_OK)
		goto out;
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		goto err;
	}
	fd = -1;
	if (rename(tmp, s->path) != 0 || kms_fsync_parent(s->path) != 0)
		goto err;
	rc = CLI_OK;
	goto out;
err:
	fprintf(stderr, "kmsctl %s: state file %s: %s\n", cli_cmd, s->path, strerror(errno));
out:
	if (fd >= 0)
		close(fd);
	if (rc != CLI_OK && tmp != NULL)
		unlink(tmp);
	free(tmp);
	return rc;
}

static void state_remove(const struct state *s)
{
	if (s->path != NULL && unlink(s->path) == 0)
		(void)kms_fsync_parent(s->path);
}

/* A state value must stay on one line. */
static int one_line(const char *what, const char *v)
{
	if (strchr(v, '\n') != NULL || strchr(v, '\r') != NULL)
		return cli_usage_error("%s \"%s\" has a line break: not with --state", what, v);
	return CLI_OK;
}

/* ---- list mode ------------------------------------------------------------------ */

enum { L_PASS, L_SEND, L_BAD };

struct line {
	char *text;       /* the line without its line end */
	size_t len;
	const char *tail; /* "\t..." after the ciphertext, or "" */
	int kind;
	long long no;     /* 1-based line number */
	json_t *item;     /* the batch item (L_SEND) */
	char *result;     /* the new ciphertext */
	char *error;      /* why not */
};

static void line_clear(struct line *l)
{
	free(l->text);
	json_decref(l->item);
	free(l->result);
	free(l->error);
	memset(l, 0, sizeof(*l));
}

/* A line of at most LINE_MAX_BYTES from f into a malloc'd string (no line end).
 * Returns 1, 0 at end of input, -1 on an error (message printed). *used = bytes read. */
static int read_line(FILE *f, const char *name, long long no, char **out, size_t *len, size_t *used)
{
	size_t cap = 256, n = 0;
	char *s = malloc(cap);
	int ch;

	*used = 0;
	if (s == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return -1;
	}
	while ((ch = getc_unlocked(f)) != EOF) {
		(*used)++;
		if (ch == '\n')
			break;
		if (n + 1 >= cap) {
			char *q;

			if (cap >= LINE_MAX_BYTES) {
				fprintf(stderr, "kmsctl %s: %s: line %lld is longer than %u bytes\n", cli_cmd,
					name, no, LINE_MAX_BYTES);
				free(s);
				return -1;
			}
			q = realloc(s, cap * 2);
			if (q == NULL) {
				fprintf(stderr, "kmsctl: out of memory\n");
				free(s);
				return -1;
			}
			s = q;
			cap *= 2;
		}
		s[n++] = (char)ch;
	}
	if (ferror(f)) {
		fprintf(stderr, "kmsctl %s: reading %s: %s\n", cli_cmd, name, strerror(errno));
		free(s);
		return -1;
	}
	if (*used == 0) {
		free(s);
		return 0;
	}
	s[n] = '\0';
	*out = s;
	*len = n;
	return 1;
}

/* Classifies a line: blank or at the latest version (pass), to send, or bad. */
static int line_classify(struct bulk *b, struct line *l)
{
	char *tab, *ct, *end;
	json_t *ctx = NULL;
	json_error_t jerr;
	long long v;
	const char *k;
	json_t *val;

	l->kind = L_PASS;
	l->tail = "";
	for (ct = l->text; *ct == ' '; ct++)
		;
	end = l->text + l->len;
	if (end > ct && end[-1] == '\r') {
		end--;
		l->tail = "\r"; /* kept after a new ciphertext, as a tab part keeps its own */
	}
	if (ct == end)
		return CLI_OK;
	tab = memchr(ct, '\t', (size_t)(end - ct));
	if (tab != NULL) {
		l->tail = tab;
		ctx = json_loadb(tab + 1, (size_t)(end - tab - 1), JSON_REJECT_DUPLICATES, &jerr);
		if (!json_is_object(ctx))
			goto bad_ctx;
		json_object_foreach(ctx, k, val) {
			if (!json_is_string(val))
				goto bad_ctx;
		}
	}
	ct = strndup(ct, (size_t)((tab != NULL ? tab : end) - ct));
	if (ct == NULL)
		goto oom;
	while (ct[0] != '\0' && ct[strlen(ct) - 1] == ' ')
		ct[strlen(ct) - 1] = '\0';
	v = ct_version(ct);
	if (v < 0) {
		l->kind = L_BAD;
		l->error = strdup("not a vault:vN: ciphertext");
		free(ct);
		json_decref(ctx);
		return l->error != NULL ? CLI_OK : CLI_SERVER;
	}
	if (v == b->latest) {
		free(ct);
		json_decref(ctx);
		return CLI_OK;
	}
	l->item = json_pack("{s:s}", "ciphertext", ct);
	free(ct);
	if (l->item == NULL) {
		l->kind = L_BAD;
		l->error = strdup("not valid UTF-8");
		json_decref(ctx);
		return l->error != NULL ? CLI_OK : CLI_SERVER;
	}
	if (ctx == NULL && b->context != NULL)
		ctx = json_incref(b->context);
	if (ctx != NULL && json_object_size(ctx) > 0)
		json_object_set(l->item, "encryption_context", ctx);
	json_decref(ctx);
	l->kind = L_SEND;
	return CLI_OK;
bad_ctx:
	json_decref(ctx);
	l->kind = L_BAD;
	l->error = strdup("the text after the tab is not a JSON object of strings");
	return l->error != NULL ? CLI_OK : CLI_SERVER;
oom:
	json_decref(ctx);
	fprintf(stderr, "kmsctl: out of memory\n");
	return CLI_SERVER;
}

/* "<status> <the errors list joined with "; ">", malloc'd, or NULL. */
static char *answer_message(long status, const json_t *ans)
{
	const json_t *errs = json_object_get(ans, "errors"), *e;
	char *msg = NULL, *next;
	size_t i;

	if (asprintf(&msg, "%ld", status) < 0)
		return NULL;
	json_array_foreach(errs, i, e) {
		if (!json_is_string(e))
			continue;
		if (asprintf(&next, "%s%s%s", msg, i == 0 ? " " : "; ", json_string_value(e)) < 0) {
			free(msg);
			return NULL;
		}
		free(msg);
		msg = next;
	}
	return msg;
}

/* Sends the lines ls[0..n) (all L_SEND) in one call, halving on 413. Per-item results go
 * to the lines; returns an exit status only when the call as a whole failed. */
static int send_items(struct bulk *b, struct line **ls, size_t n)
{
	json_t *items = json_array(), *body = NULL, *ans = NULL, *results, *r;
	long status = 0;
	int rc = CLI_SERVER;
	size_t i;

	if (items == NULL)
		goto oom;
	for (i = 0; i < n; i++)
		if (json_array_append(items, ls[i]->item) != 0)
			goto oom;
	body = json_pack("{s:O}", "batch_input", items);
	if (body == NULL)
		goto oom;
	rc = post(b, b->rewrap_path, body, &ans, &status);
	results = json_object_get(cli_data(ans), "batch_results");
	if (status >= 400 && status < 500 && status != 401 && status != 403 && status != 404 &&
	    status != 429 && json_array_size(results) != n) {
		/* The call as a whole was refused (413 too large; or one item's state, such as
		 * a disabled version, refused the batch: 409): halve it until the item that
		 * is refused stands alone, and report that item with the server's answer. */
		if (n > 1) {
			json_decref(ans);
			ans = NULL;
			rc = send_items(b, ls, n / 2);
			if (rc == CLI_OK)
				rc = send_items(b, ls + n / 2, n - n / 2);
			goto out;
		}
		ls[0]->error = answer_message(status, ans);
		rc = ls[0]->error != NULL ? CLI_OK : CLI_SERVER;
		goto out;
	}
	if ((status == 200 || status == 400) && json_array_size(results) == n) {
		rc = CLI_OK;
		json_array_foreach(results, i, r) {
			const char *ct = json_string_value(json_object_get(r, "ciphertext"));
			const char *e = json_string_value(json_object_get(r, "error"));

			if (e == NULL && ct != NULL && ct_version(ct) > 0) {
				ls[i]->result = strdup(ct);
				if (ls[i]->result == NULL)
					goto oom;
			} else {
				ls[i]->error = strdup(e != NULL ? e : "the answer holds no ciphertext");
				if (ls[i]->error == NULL)
					goto oom;
			}
		}
		goto out;
	}
	if (status != 0)
		cli_print_http_error(status, ans);
	if (rc == CLI_OK) { /* 2xx with a malformed answer */
		fprintf(stderr, "kmsctl %s: the answer holds no batch_results for %zu items\n", cli_cmd, n);
		rc = CLI_SERVER;
	}
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
out:
	json_decref(ans);
	json_decref(body);
	json_decref(items);
	return rc;
}

struct outbuf {
	char *p;
	size_t len, cap;
};

static int out_add(struct outbuf *o, const char *s, size_t n)
{
	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 65536;
		char *q;

		while (cap < o->len + n)
			cap *= 2;
		q = realloc(o->p, cap);
		if (q == NULL)
			return -1;
		o->p = q;
		o->cap = cap;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
	return 0;
}

struct list_run {
	const char *in_path, *out_path;
	char *partial;
	FILE *in;
	int out_fd;
	int owned; /* the partial file is ours (checked and locked): ours to remove */
	struct stat in_st;
	long long lines_done, in_offset, out_bytes;
};

static int list_state_save(struct bulk *b, struct state *s, struct list_run *r)
{
	char *text = NULL;
	int n, rc;

	n = asprintf(&text,
		     STATE_MAGIC "\nmode lines\ntenant %s\nkey %s\ninput %s\ninput_size %lld\n"
				 "input_mtime_ns %lld\noutput %s\nlines_done %lld\ninput_offset %lld\n"
				 "output_bytes %lld\nrewrapped %lld\nalready_latest %lld\nfailed %lld\n",
		     b->tenant, b->key, r->in_path, (long long)r->in_st.st_size,
		     (long long)r->in_st.st_mtim.tv_sec * 1000000000LL + r->in_st.st_mtim.tv_nsec,
		     r->out_path, r->lines_done, r->in_offset, r->out_bytes, b->rewrapped, b->skipped,
		     b->failed);
	if (n < 0) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return CLI_SERVER;
	}
	rc = state_replace(s, text, (size_t)n);
	free(text);
	return rc;
}

/* Checks that the state belongs to this run and takes its position and counters. */
static int list_state_resume(struct bulk *b, struct state *s, struct list_run *r)
{
	static const char *const names[] = {"mode", "tenant", "key", "input", "output"};
	const char *want[5] = {"lines", b->tenant, b->key, r->in_path, r->out_path};
	long long size, mtime;

	for (size_t i = 0; i < 5; i++) {
		char *v = state_get(s, names[i]);
		int same = v != NULL && strcmp(v, want[i]) == 0;

		if (!same) {
			fprintf(stderr,
				"kmsctl %s: state file %s belongs to another run (its %s is \"%s\", "
				"this run's \"%s\"); remove it to start over\n",
				cli_cmd, s->path, names[i], v ? v : "(none)", want[i]);
			free(v);
			return CLI_USAGE;
		}
		free(v);
	}
	if (state_num(s, "input_size", &size) != 0 || state_num(s, "input_mtime_ns", &mtime) != 0 ||
	    state_num(s, "lines_done", &r->lines_done) != 0 ||
	    state_num(s, "input_offset", &r->in_offset) != 0 ||
	    state_num(s, "output_bytes", &r->out_bytes) != 0 ||
	    state_num(s, "rewrapped", &b->rewrapped) != 0 ||
	    state_num(s, "already_latest", &b->skipped) != 0 || state_num(s, "failed", &b->failed) != 0) {
		fprintf(stderr, "kmsctl %s: state file %s: a value is missing or malformed\n", cli_cmd,
			s->path);
		return CLI_USAGE;
	}
	if (size != (long long)r->in_st.st_size ||
	    mtime != (long long)r->in_st.st_mtim.tv_sec * 1000000000LL + r->in_st.st_mtim.tv_nsec ||
	    r->in_offset > size) {
		fprintf(stderr,
			"kmsctl %s: %s changed since the run that wrote state file %s began; "
			"remove the state file to start over\n",
			cli_cmd, r->in_path, s->path);
		return CLI_USAGE;
	}
	return CLI_OK;
}

/* Lines in the input (a regular file), for the progress bar. */
static long long count_lines(const char *path)
{
	char buf[65536];
	long long n = 0;
	ssize_t got;
	int fd = open(path, O_RDONLY | O_CLOEXEC), last = '\n';

	if (fd < 0)
		return 0;
	while ((got = read(fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + got - p))) != NULL; p++)
			n++;
		last = buf[got - 1];
	}
	close(fd);
	return n + (last != '\n');
}

/* Opens the output: stdout, or the partial file (cut back to the recorded length when
 * resuming). A partial file is locked: two runs must not write it at once. */
static int list_open_out(struct list_run *r, int resuming)
{
	struct stat st;

	if (r->out_path == NULL) {
		r->out_fd = STDOUT_FILENO;
		return CLI_OK;
	}
	if (asprintf(&r->partial, "%s" PARTIAL_SUFFIX, r->out_path) < 0) {
		r->partial = NULL;
		fprintf(stderr, "kmsctl: out of memory\n");
		return CLI_SERVER;
	}
	r->out_fd = open(r->partial, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (r->out_fd < 0)
		goto err;
	if (own_file(r->out_fd, r->partial) != 0)
		return CLI_USAGE;
	if (flock(r->out_fd, LOCK_EX | LOCK_NB) != 0) {
		fprintf(stderr, "kmsctl %s: %s is being written by another kmsctl rewrap\n", cli_cmd,
			r->partial);
		close(r->out_fd);
		r->out_fd = -1;
		return CLI_USAGE;
	}
	r->owned = 1;
	if (resuming) {
		if (fstat(r->out_fd, &st) != 0)
			goto err;
		if (st.st_size < r->out_bytes) {
			fprintf(stderr,
				"kmsctl %s: %s holds %lld bytes, the state file %lld: it is not this "
				"run's output; remove the state file to start over\n",
				cli_cmd, r->partial, (long long)st.st_size, r->out_bytes);
			return CLI_USAGE;
		}
	}
	if (ftruncate(r->out_fd, resuming ? r->out_bytes : 0) != 0 ||
	    lseek(r->out_fd, 0, SEEK_END) < 0)
		goto err;
	return CLI_OK;
err:
	fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, r->partial, strerror(errno));
	return CLI_USAGE;
}

static void report_line(struct bulk *b, const struct list_run *r, const struct line *l)
{
	if (b->tty)
		fputs("\r\033[K", stderr);
	fprintf(stderr, "kmsctl %s: %s: line %lld: ", cli_cmd, r->in_path, l->no);
	put_clean(stderr, l->error);
	fputc('\n', stderr);
}

static int list_mode(struct bulk *b, struct state *s, const char *in_path, const char *out_path)
{
	struct list_run r = {.in_path = in_path, .out_path = out_path, .out_fd = -1};
	struct line *lines = NULL, **send = NULL;
	struct outbuf ob = {0};
	size_t nl = 0, ns, i;
	int rc = CLI_USAGE, resuming = s->buf != NULL, eof = 0, stop = 0;

	if (strcmp(in_path, "-") == 0) {
		if (s->path != NULL)
			return cli_usage_error("--state needs --in FILE, not stdin");
		if (cli_stdin_taken || (cli_opts.token_file != NULL && strcmp(cli_opts.token_file, "-") == 0))
			return cli_usage_error("stdin carries the token (--token-file -); give --in FILE");
		r.in = stdin;
	} else {
		r.in = fopen(in_path, "re");
		if (r.in == NULL) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in_path, strerror(errno));
			return CLI_USAGE;
		}
		if (fstat(fileno(r.in), &r.in_st) != 0 || !S_ISREG(r.in_st.st_mode)) {
			if (s->path != NULL) {
				rc = cli_usage_error("--state needs --in to be a regular file");
				goto out;
			}
		}
	}
	if (resuming && (rc = list_state_resume(b, s, &r)) != CLI_OK)
		goto out;
	if (resuming && out_path != NULL) {
		/* A run that ended between the rename and the removal of the state file. */
		struct stat st;
		char *partial = NULL;
		int gone;

		if (asprintf(&partial, "%s" PARTIAL_SUFFIX, out_path) < 0)
			goto oom;
		gone = stat(partial, &st) != 0 && errno == ENOENT;
		free(partial);
		if (gone && r.in_offset == (long long)r.in_st.st_size && stat(out_path, &st) == 0 &&
		    (long long)st.st_size == r.out_bytes) {
			fprintf(stderr, "kmsctl %s: the run of state file %s had completed\n", cli_cmd,
				s->path);
			state_remove(s);
			b->done = r.lines_done;
			rc = CLI_OK;
			goto out;
		}
	}
	if (b->tty && r.in_st.st_size > 0 && S_ISREG(r.in_st.st_mode))
		b->total = count_lines(in_path); /* a second pass over the input: for the bar only */
	if (r.in_offset > 0 && fseeko(r.in, (off_t)r.in_offset, SEEK_SET) != 0) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in_path, strerror(errno));
		goto out;
	}
	if ((rc = list_open_out(&r, resuming)) != CLI_OK)
		goto out;
	b->done = b->done_at_start = r.lines_done;
	if (resuming)
		fprintf(stderr, "kmsctl %s: resuming at line %lld of %s (state file %s)\n", cli_cmd,
			r.lines_done + 1, in_path, s->path);
	lines = calloc(LINES_PER_ROUND, sizeof(*lines));
	send = calloc(LINES_PER_ROUND, sizeof(*send));
	if (lines == NULL || send == NULL)
		goto oom;

	while (!eof && !stop) {
		long long consumed = 0;

		/* read up to `batch` lines to send, or LINES_PER_ROUND lines */
		for (nl = 0, ns = 0; nl < LINES_PER_ROUND && ns < (size_t)b->batch;) {
			struct line *l = &lines[nl];
			size_t used;
			int got = read_line(r.in, in_path, r.lines_done + (long long)nl + 1, &l->text, &l->len, &used);

			if (got < 0) {
				rc = CLI_USAGE;
				goto out;
			}
			if (got == 0) {
				eof = 1;
				break;
			}
			l->no = r.lines_done + (long long)nl + 1;
			consumed += (long long)used;
			nl++;
			if ((rc = line_classify(b, l)) != CLI_OK)
				goto out;
			if (l->kind == L_SEND)
				send[ns++] = l;
		}
		if (nl == 0)
			break;
		if (ns > 0 && (rc = send_items(b, send, ns)) != CLI_OK)
			goto out;
		/* the round's output, in input order */
		ob.len = 0;
		for (i = 0; i < nl; i++) {
			struct line *l = &lines[i];

			if (l->result != NULL) {
				if (out_add(&ob, l->result, strlen(l->result)) != 0 ||
				    out_add(&ob, l->tail, strlen(l->tail)) != 0)
					goto oom;
			} else if (out_add(&ob, l->text, l->len) != 0) {
				goto oom;
			}
			if (out_add(&ob, "\n", 1) != 0)
				goto oom;
		}
		for (i = 0; i < nl; i++) {
			if (lines[i].error != NULL) {
				report_line(b, &r, &lines[i]);
				stop |= b->fail_fast;
			}
		}
		if (stop) {
			/* --fail-fast: nothing of this round is written; a resumed run retries it */
			for (i = 0; i < nl; i++)
				b->failed += lines[i].error != NULL;
			break;
		}
		if ((rc = write_all(r.out_fd, out_path ? r.partial : "stdout", ob.p, ob.len)) != CLI_OK)
			goto out;
		for (i = 0; i < nl; i++) {
			b->rewrapped += lines[i].result != NULL;
			b->failed += lines[i].error != NULL;
			b->skipped += lines[i].kind == L_PASS && lines[i].text[strspn(lines[i].text, " \r")] != '\0';
		}
		r.lines_done += (long long)nl;
		r.in_offset += consumed;
		r.out_bytes += (long long)ob.len;
		if (s->path != NULL) {
			if (fsync(r.out_fd) != 0) {
				fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, r.partial, strerror(errno));
				rc = CLI_USAGE;
				goto out;
			}
			if ((rc = list_state_save(b, s, &r)) != CLI_OK)
				goto out;
		}
		for (i = 0; i < nl; i++)
			line_clear(&lines[i]);
		nl = 0;
		b->done = r.lines_done;
		progress(b, 0);
	}
	if (stop) {
		rc = CLI_PARTIAL;
		goto out;
	}
	if (out_path != NULL) {
		if (fsync(r.out_fd) != 0 || rename(r.partial, out_path) != 0 || kms_fsync_parent(out_path) != 0) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, out_path, strerror(errno));
			rc = CLI_USAGE;
			goto out;
		}
	}
	state_remove(s);
	rc = b->failed > 0 ? CLI_PARTIAL : CLI_OK;
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
out:
	progress(b, 1);
	for (i = 0; lines != NULL && i < LINES_PER_ROUND; i++)
		line_clear(&lines[i]);
	free(lines);
	free(send);
	free(ob.p);
	if (r.out_fd > STDERR_FILENO) {
		/* Without a state file a partial output is of no use to anyone (a run that
		 * failed, or stopped at --fail-fast). */
		int drop = rc == CLI_PARTIAL ? b->fail_fast : rc != CLI_OK;

		close(r.out_fd);
		if (r.owned && s->path == NULL && drop)
			unlink(r.partial);
	}
	free(r.partial);
	if (r.in != NULL && r.in != stdin)
		fclose(r.in);
	if (rc == CLI_OK || rc == CLI_PARTIAL)
		fprintf(stderr, "kmsctl %s: %lld lines: %lld rewrapped to v%lld, %lld already at v%lld, "
				"%lld failed; %lld requests in this run\n",
			cli_cmd, b->done, b->rewrapped, b->latest, b->skipped, b->latest, b->failed,
			b->requests);
	return rc;
}

/* ---- sealed mode ---------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* data.plaintext of a decrypt answer: exactly 32 bytes, into dek. */
static int dek_of(const json_t *ans, uint8_t *dek)
{
	const char *b64 = json_string_value(json_object_get(cli_data(ans), "plaintext"));
	size_t n = b64 ? strlen(b64) : 0;
	uint8_t *tmp = kms_secret_alloc(KMS_B64_DEC_MAX(n) + 1);
	long got = tmp && b64 ? kms_b64_decode(b64, n, tmp, KMS_B64_DEC_MAX(n) + 1) : -1;

	if (got == KMS_SEAL_DEK_LEN)
		memcpy(dek, tmp, KMS_SEAL_DEK_LEN);
	kms_secret_free(tmp);
	return got == KMS_SEAL_DEK_LEN ? 0 : -1;
}

/* Outcome of one file: done (rewrapped), skipped (already latest), failed (a message
 * printed; the file untouched), or a fatal exit status for the whole run. */
enum { F_DONE, F_SKIPPED, F_FAILED };

static int file_error(struct bulk *b, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int file_error(struct bulk *b, const char *path, const char *fmt, ...)
{
	va_list ap;

	if (b->tty)
		fputs("\r\033[K", stderr);
	fprintf(stderr, "kmsctl %s: %s: ", cli_cmd, path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return F_FAILED;
}

/* Runs one server call for a file; a refusal of the item (4xx) fails the file, anything
 * else stops the run. */
static int file_call(struct bulk *b, const char *file, const char *path, const json_t *body,
		     json_t **ans, int *fatal)
{
	long status = 0;
	int rc = post(b, path, body, ans, &status);

	if (rc == CLI_OK)
		return 0;
	if (status != 0)
		cli_print_http_error(status, *ans);
	if (rc == CLI_FAIL && status != 401 && status != 403) {
		file_error(b, file, "refused by the server (%ld)", status);
		return -1;
	}
	*fatal = rc;
	return -1;
}

static int rewrap_file(struct bulk *b, const char *path, int *fatal)
{
	struct kms_seal_header h = {0};
	struct kms_seal_stream old = {0}, neu = {0};
	struct stat st, st2;
	json_t *ctx = NULL, *body = NULL, *ans = NULL;
	json_error_t jerr;
	uint8_t fixed[KMS_SEAL_FIXED_LEN], *hdr = NULL, *hdr2 = NULL, *dek = NULL, *rbuf = NULL,
						       *pt = NULL, *cbuf = NULL;
	size_t hdr_len = 0, hdr2_len = 0, have = 0, rec;
	const char *nw;
	char *orig_wrapped, *tmp = NULL;
	long long v, v2;
	ssize_t got;
	int fd = -1, tfd = -1, out = F_FAILED, last = 0;

	if (lstat(path, &st) != 0) {
		file_error(b, path, "%s", strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		file_error(b, path, "not a regular file (a symbolic link: give the file it names)");
		goto out;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fstat(fd, &st) != 0) {
		file_error(b, path, "%s", strerror(errno));
		goto out;
	}
	got = kms_read_full(fd, fixed, sizeof(fixed));
	if (got != (ssize_t)sizeof(fixed)) {
		file_error(b, path, "not a sealed file (too short)");
		goto out;
	}
	if (kms_seal_header_len(fixed, &hdr_len) != KMS_OK) {
		file_error(b, path, "%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if ((hdr = malloc(hdr_len)) == NULL)
		goto oom;
	memcpy(hdr, fixed, sizeof(fixed));
	got = kms_read_full(fd, hdr + sizeof(fixed), hdr_len - sizeof(fixed));
	if (got != (ssize_t)(hdr_len - sizeof(fixed))) {
		file_error(b, path, "sealed file: truncated header");
		goto out;
	}
	if (kms_seal_header_parse(hdr, hdr_len, &h) != KMS_OK) {
		file_error(b, path, "%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if (strcmp(h.tenant, b->tenant) != 0 || strcmp(h.key, b->key) != 0) {
		file_error(b, path, "sealed under tenant %s key %s, not %s %s", h.tenant, h.key,
			   b->tenant, b->key);
		goto out;
	}
	v = ct_version(h.wrapped);
	if (v < 0) {
		file_error(b, path, "the header's wrapped key is not a vault:vN: ciphertext");
		goto out;
	}
	if (v == b->latest) {
		out = F_SKIPPED;
		goto out;
	}
	/* The DEK, then the wrapped DEK under the latest version: two calls. */
	ctx = json_loads(h.context, JSON_REJECT_DUPLICATES, &jerr);
	body = json_pack("{s:s}", "ciphertext", h.wrapped);
	dek = kms_secret_alloc(KMS_SEAL_DEK_LEN);
	if (ctx == NULL || body == NULL || dek == NULL)
		goto oom;
	if (json_object_size(ctx) > 0)
		json_object_set(body, "encryption_context", ctx);
	if (file_call(b, path, b->decrypt_path, body, &ans, fatal) != 0)
		goto out;
	if (dek_of(ans, dek) != 0) {
		fprintf(stderr, "kmsctl %s: %s: the server's answer holds no 256-bit data key\n",
			cli_cmd, path);
		*fatal = CLI_SERVER;
		goto out;
	}
	json_decref(ans);
	ans = NULL;
	if (file_call(b, path, b->rewrap_path, body, &ans, fatal) != 0)
		goto out;
	nw = json_string_value(json_object_get(cli_data(ans), "ciphertext"));
	v2 = nw != NULL ? ct_version(nw) : -1;
	if (v2 <= v) {
		fprintf(stderr, "kmsctl %s: %s: the server's rewrap answer holds no newer ciphertext\n",
			cli_cmd, path);
		*fatal = CLI_SERVER;
		goto out;
	}
	/* The new header: same fields, the new wrapped DEK, a fresh nonce prefix (the DEK
	 * is kept, so the old prefix would repeat nonces under it with another AAD). */
	orig_wrapped = h.wrapped;
	h.wrapped = (char *)nw;
	if (RAND_bytes(h.prefix, sizeof(h.prefix)) != 1) {
		h.wrapped = orig_wrapped;
		fprintf(stderr, "kmsctl %s: no randomness for the nonce prefix\n", cli_cmd);
		*fatal = CLI_SERVER;
		goto out;
	}
	if (kms_seal_header_encode(&h, &hdr2, &hdr2_len) != KMS_OK) {
		h.wrapped = orig_wrapped;
		file_error(b, path, "the new header: %s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	h.wrapped = orig_wrapped;
	if (kms_seal_stream_init(&old, dek, hdr, hdr_len) != KMS_OK ||
	    kms_seal_stream_init(&neu, dek, hdr2, hdr2_len) != KMS_OK)
		goto oom;
	kms_wipe(dek, KMS_SEAL_DEK_LEN);
	rec = (size_t)h.chunk_size + KMS_SEAL_TAG_LEN;
	rbuf = malloc(rec + 1);
	cbuf = malloc(rec);
	pt = kms_secret_alloc(h.chunk_size);
	if (rbuf == NULL || cbuf == NULL || pt == NULL)
		goto oom;

	/* A fixed temporary name beside the file: a crashed run's leftover is reused (and
	 * so removed) by the next run; the lock keeps two runs off the same file. */
	if (asprintf(&tmp, "%s" SEAL_TMP_SUFFIX, path) < 0) {
		tmp = NULL;
		goto oom;
	}
	tfd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (tfd < 0) {
		file_error(b, path, "%s: %s", tmp, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (flock(tfd, LOCK_EX | LOCK_NB) != 0) {
		file_error(b, path, "%s is being written by another kmsctl rewrap", tmp);
		close(tfd);
		tfd = -1;
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (own_file(tfd, tmp) != 0) {
		/* not ours: leave it */
		close(tfd);
		tfd = -1;
		free(tmp);
		tmp = NULL;
		file_error(b, path, "left as it was");
		goto out;
	}
	if (ftruncate(tfd, 0) != 0) {
		file_error(b, path, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	(void)!fchown(tfd, st.st_uid, st.st_gid); /* best effort: only root may give files away */
	if (fchmod(tfd, st.st_mode & 07777) != 0) {
		file_error(b, path, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (write_all(tfd, tmp, hdr2, hdr2_len) != CLI_OK)
		goto out;
	while (!last) {
		size_t n;

		got = kms_read_full(fd, rbuf + have, rec + 1 - have);
		if (got < 0) {
			file_error(b, path, "%s", strerror(errno));
			goto out;
		}
		have += (size_t)got;
		last = have <= rec;
		n = last ? have : rec;
		if (kms_seal_stream_open(&old, last, rbuf, n, pt) != KMS_OK) {
			file_error(b, path, "%s (the file is left as it was)", kms_err_detail(KMS_ERR_DECRYPT));
			goto out;
		}
		if (kms_seal_stream_seal(&neu, last, pt, n - KMS_SEAL_TAG_LEN, cbuf) != KMS_OK) {
			file_error(b, path, "%s", kms_err_detail(KMS_ERR_INVALID));
			goto out;
		}
		if (write_all(tfd, tmp, cbuf, n) != CLI_OK)
			goto out;
		if (!last) {
			rbuf[0] = rbuf[rec];
			have = 1;
		}
	}
	if (fsync(tfd) != 0) {
		file_error(b, path, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	/* Refuse to replace a file that someone changed while it was being read. */
	if (stat(path, &st2) != 0 || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev ||
	    st2.st_size != st.st_size || st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
	    st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
		file_error(b, path, "changed while it was being rewrapped; left as it is");
		goto out;
	}
	if (rename(tmp, path) != 0 || kms_fsync_parent(path) != 0) {
		file_error(b, path, "%s", strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	out = F_DONE;
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	*fatal = CLI_SERVER;
out:
	if (tfd >= 0)
		close(tfd);
	if (tmp != NULL) {
		unlink(tmp);
		free(tmp);
	}
	if (fd >= 0)
		close(fd);
	kms_seal_stream_clear(&old);
	kms_seal_stream_clear(&neu);
	kms_secret_free(pt);
	kms_secret_free(dek);
	free(rbuf);
	free(cbuf);
	free(hdr);
	free(hdr2);
	kms_seal_header_free(&h);
	json_decref(ans);
	json_decref(body);
	json_decref(ctx);
	return out;
}

/* Appends `done PATH` to the state file and makes it durable. */
static int state_append_done(const struct state *s, const char *path)
{
	int fd = open(s->path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW), rc = CLI_USAGE;

	if (fd < 0)
		goto err;
	if (write_all(fd, s->path, "done ", 5) != CLI_OK || write_all(fd, s->path, path, strlen(path)) != CLI_OK ||
	    write_all(fd, s->path, "\n", 1) != CLI_OK)
		goto out;
	if (fsync(fd) != 0)
		goto err;
	rc = CLI_OK;
	goto out;
err:
	fprintf(stderr, "kmsctl %s: state file %s: %s\n", cli_cmd, s->path, strerror(errno));
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

static int sealed_mode(struct bulk *b, struct state *s, int nfiles, char **files)
{
	char **done = NULL, **abs = NULL, *text = NULL;
	size_t ndone = 0;
	int rc = CLI_USAGE, fatal = CLI_OK;

	abs = calloc((size_t)nfiles + 1, sizeof(*abs));
	if (abs == NULL)
		goto oom;
	/* The state names files by absolute path: a resumed run may start elsewhere. */
	for (int i = 0; i < nfiles; i++) {
		abs[i] = realpath(files[i], NULL);
		if (abs[i] == NULL) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, files[i], strerror(errno));
			goto out;
		}
		if (s->path != NULL && (rc = one_line("file name", abs[i])) != CLI_OK)
			goto out;
		rc = CLI_USAGE;
	}
	if (s->buf != NULL) {
		char *mode = state_get(s, "mode"), *t = state_get(s, "tenant"), *k = state_get(s, "key");
		int same = mode && t && k && strcmp(mode, "sealed") == 0 && strcmp(t, b->tenant) == 0 &&
			   strcmp(k, b->key) == 0;

		free(mode);
		free(t);
		free(k);
		if (!same) {
			fprintf(stderr, "kmsctl %s: state file %s belongs to another run (not sealed "
					"files of %s %s); remove it to start over\n",
				cli_cmd, s->path, b->tenant, b->key);
			goto out;
		}
		/* A torn last line (a crash inside an append) is cut off before more lines
		 * are appended after it; that file was not recorded and is looked at again. */
		if (s->buf[s->len - 1] != '\n') {
			char *nl = memrchr(s->buf, '\n', s->len);

			s->len = nl != NULL ? (size_t)(nl - s->buf) + 1 : 0;
			if ((rc = state_replace(s, s->buf, s->len)) != CLI_OK)
				goto out;
			rc = CLI_USAGE;
		}
		/* the `done PATH` lines, sorted for lookup */
		done = calloc(s->len / 6 + 1, sizeof(*done));
		if (done == NULL)
			goto oom;
		for (char *p = s->buf, *e; p < s->buf + s->len; p = e + 1) {
			e = memchr(p, '\n', (size_t)(s->buf + s->len - p));
			if (e == NULL)
				break; /* a torn last line: that file was not recorded */
			*e = '\0';
			if (strncmp(p, "done ", 5) == 0)
				done[ndone++] = p + 5;
		}
		qsort(done, ndone, sizeof(*done), cmp_str);
		fprintf(stderr, "kmsctl %s: resuming: %zu files done before (state file %s)\n", cli_cmd,
			ndone, s->path);
	} else if (s->path != NULL) {
		if (asprintf(&text, STATE_MAGIC "\nmode sealed\ntenant %s\nkey %s\n", b->tenant, b->key) < 0) {
			text = NULL;
			goto oom;
		}
		if ((rc = state_replace(s, text, strlen(text))) != CLI_OK)
			goto out;
		rc = CLI_USAGE;
	}
	b->total = nfiles;
	for (int i = 0; i < nfiles && fatal == CLI_OK; i++) {
		int o;

		if (ndone > 0 && bsearch(&abs[i], done, ndone, sizeof(*done), cmp_str) != NULL) {
			b->skipped++;
			b->done++;
			continue;
		}
		o = rewrap_file(b, files[i], &fatal);
		if (fatal != CLI_OK)
			break;
		if (o == F_FAILED) {
			b->failed++;
			if (b->fail_fast)
				break;
		} else {
			b->rewrapped += o == F_DONE;
			b->skipped += o == F_SKIPPED;
			if (s->path != NULL && (rc = state_append_done(s, abs[i])) != CLI_OK) {
				fatal = rc;
				break;
			}
		}
		b->done++;
		progress(b, 0);
	}
	progress(b, 1);
	if (fatal != CLI_OK) {
		rc = fatal;
		goto out;
	}
	if (b->failed == 0 && b->done == nfiles)
		state_remove(s);
	rc = b->failed > 0 ? CLI_PARTIAL : CLI_OK;
	fprintf(stderr, "kmsctl %s: %d files: %lld rewrapped to v%lld, %lld already at v%lld or done "
			"before, %lld failed; %lld requests\n",
		cli_cmd, nfiles, b->rewrapped, b->latest, b->skipped, b->latest, b->failed, b->requests);
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
out:
	for (int i = 0; abs != NULL && i < nfiles; i++)
		free(abs[i]);
	free(abs);
	free(done);
	free(text);
	return rc;
}

/* ---- entry ---------------------------------------------------------------------- */

int cli_rewrap_is_bulk(int argc, char **argv)
{
	static const char *const names[] = {"--tenant", "--in", "--sealed", "--state"};

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return 0;
		for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
			size_t n = strlen(names[k]);

			if (strncmp(argv[i], names[k], n) == 0 && (argv[i][n] == '\0' || argv[i][n] == '='))
				return 1;
		}
	}
	return 0;
}

int cli_rewrap_bulk(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tenant", required_argument, NULL, O_TENANT},
		{"key", required_argument, NULL, O_KEY},
		{"context", required_argument, NULL, O_CONTEXT},
		{"in", required_argument, NULL, O_IN},
		{"sealed", no_argument, NULL, O_SEALED},
		{"out", required_argument, NULL, O_OUT},
		{"batch", required_argument, NULL, O_BATCH},
		{"rate", required_argument, NULL, O_RATE},
		{"state", required_argument, NULL, O_STATE},
		{"fail-fast", no_argument, NULL, O_FAIL_FAST},
		{NULL, 0, NULL, 0},
	};
	struct bulk b = {.batch = BATCH_DEFAULT};
	struct state s = {0};
	const char *in = NULL, *out_path = NULL, *eq;
	char *end, *k;
	int ch, sealed = 0, connected = 0, rc = CLI_USAGE;

	while ((ch = cli_getopt(argc, argv, opts)) != -1) {
		switch (ch) {
		case O_TENANT:
			b.tenant = optarg;
			break;
		case O_KEY:
			b.key = optarg;
			break;
		case O_IN:
			in = optarg;
			break;
		case O_SEALED:
			sealed = 1;
			break;
		case O_OUT:
			out_path = optarg;
			break;
		case O_STATE:
			s.path = optarg;
			break;
		case O_FAIL_FAST:
			b.fail_fast = 1;
			break;
		case O_BATCH:
			if (cli_parse_uint("--batch", optarg, BATCH_MAX, &b.batch) != 0)
				goto out;
			if (b.batch < 1) {
				cli_usage_error("--batch: 0 is below 1");
				goto out;
			}
			break;
		case O_RATE:
			errno = 0;
			b.rate = strtod(optarg, &end);
			if (errno != 0 || end == optarg || *end != '\0' || !(b.rate > 0) || b.rate > 1e6) {
				cli_usage_error("--rate: \"%s\" is not a number of requests per second "
						"above 0 (e.g. 50 or 0.5)", optarg);
				goto out;
			}
			break;
		case O_CONTEXT:
			eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg) {
				cli_usage_error("--context wants NAME=VALUE, not \"%s\"", optarg);
				goto out;
			}
			if (b.context == NULL && (b.context = json_object()) == NULL)
				goto oom;
			if ((k = strndup(optarg, (size_t)(eq - optarg))) == NULL)
				goto oom;
			if (json_object_get(b.context, k) != NULL) {
				cli_usage_error("--context %s given twice", k);
				free(k);
				goto out;
			}
			if (json_object_set_new(b.context, k, json_string(eq + 1)) != 0) {
				cli_usage_error("--context %s: the value is not valid UTF-8", k);
				free(k);
				goto out;
			}
			free(k);
			break;
		default:
			goto out;
		}
	}
	if (b.tenant == NULL || b.key == NULL) {
		cli_usage_error("--tenant and --key are required");
		goto out;
	}
	if ((in != NULL) == sealed) {
		cli_usage_error("give either --in FILE (ciphertexts, one per line) or --sealed FILE...");
		goto out;
	}
	if (sealed) {
		if (optind >= argc) {
			cli_usage_error("--sealed wants one or more sealed files");
			goto out;
		}
		if (out_path != NULL || b.context != NULL) {
			cli_usage_error("--out and --context are for --in: sealed files are rewrapped in "
					"place, with the context from their headers");
			goto out;
		}
	} else {
		if ((rc = cli_positionals(argc, argv, 0, 0)) != CLI_OK)
			goto out;
		rc = CLI_USAGE;
		if (s.path != NULL && out_path == NULL) {
			cli_usage_error("--state needs --out FILE (stdout cannot be resumed)");
			goto out;
		}
		if (s.path != NULL && ((rc = one_line("--in", in)) != CLI_OK ||
				       (rc = one_line("--out", out_path)) != CLI_OK))
			goto out;
		rc = CLI_USAGE;
		if (out_path != NULL && strcmp(out_path, "-") == 0)
			out_path = NULL;
	}
	if ((rc = one_line("--tenant", b.tenant)) != CLI_OK || (rc = one_line("--key", b.key)) != CLI_OK)
		goto out;
	/* Inputs that cannot be read are usage errors, found before any call. */
	if (sealed) {
		for (int i = optind; i < argc; i++) {
			if (access(argv[i], R_OK | W_OK) != 0) {
				fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, argv[i], strerror(errno));
				rc = CLI_USAGE;
				goto out;
			}
		}
	} else if (strcmp(in, "-") == 0 && s.path != NULL) {
		rc = cli_usage_error("--state needs --in FILE, not stdin");
		goto out;
	} else if (strcmp(in, "-") != 0 && access(in, R_OK) != 0) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in, strerror(errno));
		rc = CLI_USAGE;
		goto out;
	}
	if ((rc = state_load(&s)) != CLI_OK)
		goto out;
	b.rewrap_path = cli_path(b.tenant, "rewrap", b.key, NULL);
	b.decrypt_path = cli_path(b.tenant, "decrypt", b.key, NULL);
	if (b.rewrap_path == NULL || b.decrypt_path == NULL)
		goto oom;
	if ((rc = cli_connect(&b.c, 1)) != CLI_OK)
		goto out;
	connected = 1;
	b.tty = isatty(STDERR_FILENO);
	b.t0 = now_s();
	b.tokens = 1;
	clock_gettime(CLOCK_MONOTONIC, &b.last);
	if ((rc = latest_version(&b)) != CLI_OK)
		goto out;
	rc = sealed ? sealed_mode(&b, &s, argc - optind, argv + optind) : list_mode(&b, &s, in, out_path);
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
out:
	if (connected)
		cli_disconnect(&b.c);
	free(b.rewrap_path);
	free(b.decrypt_path);
	json_decref(b.context);
	free(s.buf);
	return rc;
}
