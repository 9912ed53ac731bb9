/* Offline reading of audit logs (contract in search.h). */
#include "kms/audit/search.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define SEG_GLOB "audit*.log"

/* ---------------------------------------------------------------- bounded lines */

/* One line at a time into a fixed buffer: a longer line is read to its end and
 * flagged, never stored, so memory stays at AUDIT_SEARCH_LINE_MAX whatever the file. */
struct lreader {
	FILE *f;
	const char *path;
	char *buf; /* AUDIT_SEARCH_LINE_MAX + 1 */
	size_t len;
	uint64_t lineno;
	bool nl, too_long;
};

static kms_err lr_init(struct lreader *r)
{
	memset(r, 0, sizeof(*r));
	r->buf = malloc(AUDIT_SEARCH_LINE_MAX + 1);
	if (r->buf == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit search: out of memory");
	return KMS_OK;
}

static kms_err lr_open(struct lreader *r, const char *path)
{
	r->f = fopen(path, "re");
	if (r->f == NULL)
		return kms_errf(KMS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
	r->path = path;
	r->lineno = 0;
	return KMS_OK;
}

static void lr_close(struct lreader *r)
{
	if (r->f != NULL)
		fclose(r->f);
	r->f = NULL;
}

static void lr_free(struct lreader *r)
{
	lr_close(r);
	free(r->buf);
	r->buf = NULL;
}

/* 1: a line (possibly flagged too_long); 0: end of file; -1: read error (detail set). */
static int lr_next(struct lreader *r)
{
	int c = EOF;
	bool any = false;

	r->len = 0;
	r->nl = r->too_long = false;
	while ((c = getc_unlocked(r->f)) != EOF) {
		any = true;
		if (c == '\n') {
			r->nl = true;
			break;
		}
		if (r->len < AUDIT_SEARCH_LINE_MAX)
			r->buf[r->len++] = (char)c;
		else
			r->too_long = true;
	}
	if (c == EOF && ferror(r->f)) {
		kms_errf(KMS_ERR_IO, "reading %s: %s", r->path, strerror(errno));
		return -1;
	}
	if (!any)
		return 0;
	r->buf[r->len] = '\0';
	r->lineno++;
	return 1;
}

/* ---------------------------------------------------------------- time, hashes */

static int num(const char *s, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

static int month_days(int y, int m)
{
	static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : d[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

int audit_time_parse(const char *s, int64_t *us)
{
	int y, mo, d, h = 0, mi = 0, sec = 0, oh, om, off = 0, n = 0;
	int64_t frac = 0;
	const char *p = s;

	if (s == NULL || num(p, 4, &y) != 0 || p[4] != '-' || num(p + 5, 2, &mo) != 0 ||
	    p[7] != '-' || num(p + 8, 2, &d) != 0)
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo))
		return -1;
	p += 10;
	if (*p != '\0') {
		if (*p != 'T' && *p != 't' && *p != ' ')
			return -1;
		p++;
		if (num(p, 2, &h) != 0 || p[2] != ':' || num(p + 3, 2, &mi) != 0 || p[5] != ':' ||
		    num(p + 6, 2, &sec) != 0 || h > 23 || mi > 59 || sec > 60)
			return -1;
		p += 8;
		if (*p == '.') {
			p++;
			if (*p < '0' || *p > '9')
				return -1;
			for (; *p >= '0' && *p <= '9'; p++)
				if (n < 6) {
					frac = frac * 10 + (*p - '0');
					n++;
				}
			for (; n < 6; n++)
				frac *= 10;
		}
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			if (num(p + 1, 2, &oh) != 0 || p[3] != ':' || num(p + 4, 2, &om) != 0 ||
			    oh > 23 || om > 59)
				return -1;
			off = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
			p += 6;
		} else {
			return -1;
		}
		if (*p != '\0')
			return -1;
	}
	*us = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) - off) * 1000000 +
	      frac;
	return 0;
}

int audit_hmac_normalize(const char *s, char out[AUDIT_HMAC_LEN + 1])
{
	const size_t pl = sizeof(AUDIT_HMAC_PREFIX) - 1;
	size_t i;

	if (s == NULL || strlen(s) != AUDIT_HMAC_LEN || strncmp(s, AUDIT_HMAC_PREFIX, pl) != 0)
		return -1;
	for (i = 0; i < AUDIT_HMAC_LEN; i++) {
		char c = s[i];

		if (i >= pl) {
			if (c >= 'A' && c <= 'F')
				c = (char)(c - 'A' + 'a');
			else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
				return -1;
		}
		out[i] = c;
	}
	out[AUDIT_HMAC_LEN] = '\0';
	return 0;
}

/* ---------------------------------------------------------------- one record */

static const struct {
	const char *name;
	size_t off;
} str_members[] = {
	{"node", offsetof(struct audit_view, node)},
	{"request_id", offsetof(struct audit_view, request_id)},
	{"principal", offsetof(struct audit_view, principal)},
	{"auth_method", offsetof(struct audit_view, auth_method)},
	{"remote_addr", offsetof(struct audit_view, remote_addr)},
	{"operation", offsetof(struct audit_view, operation)},
	{"tenant", offsetof(struct audit_view, tenant)},
	{"key", offsetof(struct audit_view, key)},
	{"outcome", offsetof(struct audit_view, outcome)},
	{"reason", offsetof(struct audit_view, reason)},
	{"associated_data", offsetof(struct audit_view, associated_data)},
};

static bool absent(const json_t *v)
{
	return v == NULL || json_is_null(v);
}

/* An object whose members are all strings. */
static bool string_map(const json_t *o)
{
	const char *k;
	json_t *v;

	if (!json_is_object(o))
		return false;
	json_object_foreach((json_t *)o, k, v)
		if (!json_is_string(v))
			return false;
	return true;
}

/* An encryption_context as kmsd writes it: null, an object of HMACs, or the HMAC of a
 * value that was not an object. */
static bool ctx_member(const json_t *m)
{
	return absent(m) || json_is_string(m) || string_map(m);
}

/* An integer member in [lo, hi], or null/absent (0). */
static bool int_member(json_t *o, const char *name, json_int_t lo, json_int_t hi, json_int_t *out)
{
	json_t *v = json_object_get(o, name);

	*out = 0;
	if (absent(v))
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return false;
	*out = json_integer_value(v);
	return true;
}

static KMS_PRINTF(3, 4) const char *bad(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
	return why;
}

const char *audit_view_parse(const char *line, size_t len, struct audit_view *out, char *why,
			     size_t cap)
{
	json_error_t je;
	json_int_t n;
	json_t *v, *m;
	size_t i;

	memset(out, 0, sizeof(*out));
	if (len == 0)
		return bad(why, cap, "empty line");
	v = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	if (v == NULL)
		return bad(why, cap, "not JSON: %s", je.text);
	out->v = v;
	if (!json_is_object(v)) {
		bad(why, cap, "not a JSON object");
		goto fail;
	}
	if (!int_member(v, "seq", 1, INT64_MAX, &n) || n == 0) {
		bad(why, cap, "no valid seq");
		goto fail;
	}
	out->seq = (uint64_t)n;
	m = json_object_get(v, "time");
	if (!json_is_string(m) || audit_time_parse(json_string_value(m), &out->time_us) != 0) {
		bad(why, cap, "no valid time (RFC 3339)");
		goto fail;
	}
	out->time = json_string_value(m);
	for (i = 0; i < sizeof(str_members) / sizeof(str_members[0]); i++) {
		m = json_object_get(v, str_members[i].name);
		if (absent(m))
			continue;
		if (!json_is_string(m)) {
			bad(why, cap, "\"%s\" is not a string or null", str_members[i].name);
			goto fail;
		}
		*(const char **)((char *)out + str_members[i].off) = json_string_value(m);
	}
	if (!int_member(v, "version", 0, UINT32_MAX, &n)) {
		bad(why, cap, "\"version\" is not a key version or null");
		goto fail;
	}
	out->version = (uint32_t)n;
	if (!int_member(v, "batch", 0, UINT32_MAX, &n)) {
		bad(why, cap, "\"batch\" is not an item count");
		goto fail;
	}
	out->batch = (unsigned)n;
	if (!int_member(v, "status", 0, 999, &n)) {
		bad(why, cap, "\"status\" is not an HTTP status or null");
		goto fail;
	}
	out->status = (int)n;
	m = json_object_get(v, "encryption_context");
	if (!ctx_member(m)) {
		bad(why, cap, "\"encryption_context\" is not an object of strings, a string or null");
		goto fail;
	}
	out->context = json_is_object(m) ? m : NULL;
	m = json_object_get(v, "items");
	if (!absent(m)) {
		json_t *e;

		if (!json_is_array(m)) {
			bad(why, cap, "\"items\" is not an array");
			goto fail;
		}
		json_array_foreach(m, i, e) {
			json_t *ad = json_object_get(e, "associated_data");

			if (absent(e))
				continue;
			if (!json_is_object(e) || !ctx_member(json_object_get(e, "encryption_context")) ||
			    !(absent(ad) || json_is_string(ad))) {
				bad(why, cap, "\"items\" holds an item that is not "
					      "{\"encryption_context\", \"associated_data\"}");
				goto fail;
			}
		}
		out->items = m;
	}
	m = json_object_get(v, "contexts");
	if (!absent(m)) {
		json_t *e;

		if (!json_is_array(m)) {
			bad(why, cap, "\"contexts\" is not an array");
			goto fail;
		}
		json_array_foreach(m, i, e) {
			if (!absent(e) && !string_map(e)) {
				bad(why, cap, "\"contexts\" holds an item that is not an object "
					      "of strings");
				goto fail;
			}
		}
		out->contexts = m;
	}
	return NULL;
fail:
	audit_view_clear(out);
	return why;
}

void audit_view_clear(struct audit_view *r)
{
	json_decref(r->v);
	memset(r, 0, sizeof(*r));
}

/* ---------------------------------------------------------------- filters */

static bool same(const char *want, const char *have)
{
	return want == NULL || (have != NULL && strcmp(want, have) == 0);
}

int audit_view_each_context(const struct audit_view *r, int (*fn)(void *arg, const json_t *ctx),
			    void *arg)
{
	const json_t *e, *c;
	size_t i;
	int rc;

	if (r->context != NULL && (rc = fn(arg, r->context)) != 0)
		return rc;
	json_array_foreach(r->items, i, e) {
		c = json_object_get(e, "encryption_context");
		if (json_is_object(c) && (rc = fn(arg, c)) != 0)
			return rc;
	}
	json_array_foreach(r->contexts, i, e)
		if (json_is_object(e) && (rc = fn(arg, e)) != 0)
			return rc;
	return 0;
}

/* 1 when every pair of the filter is in the context object o. */
static int ctx_has(void *arg, const json_t *o)
{
	const struct audit_filter *f = arg;

	for (size_t i = 0; i < f->n_ctx; i++) {
		const char *h = json_string_value(json_object_get(o, f->ctx[i].key));

		/* the filter's hex is lower case; so is kmsd's, but do not depend on it */
		if (h == NULL || strcasecmp(h, f->ctx[i].hash) != 0)
			return 0;
	}
	return 1;
}

bool audit_filter_match(const struct audit_filter *f, const struct audit_view *r)
{
	if (!same(f->principal, r->principal) || !same(f->tenant, r->tenant) ||
	    !same(f->key, r->key) || !same(f->outcome, r->outcome) ||
	    !same(f->request_id, r->request_id) || !same(f->node, r->node))
		return false;
	if (f->operation != NULL &&
	    (r->operation == NULL || fnmatch(f->operation, r->operation, 0) != 0))
		return false;
	if (f->has_version && r->version != f->version)
		return false;
	if (f->status != 0 && r->status != f->status)
		return false;
	if (f->has_from && r->time_us < f->from_us)
		return false;
	if (f->has_to && r->time_us >= f->to_us)
		return false;
	return f->n_ctx == 0 || audit_view_each_context(r, ctx_has, (void *)f) == 1;
}

/* ---------------------------------------------------------------- segments */

void audit_segs_free(struct audit_segs *s)
{
	for (size_t i = 0; s != NULL && i < s->n; i++) {
		free(s->v[i].path);
		free(s->v[i].node);
	}
	if (s != NULL) {
		free(s->v);
		s->v = NULL;
		s->n = 0;
	}
}

struct seg_build {
	struct audit_segs *out;
	size_t cap;
};

/* Adds a regular file unless the same inode is there already. path is taken over. */
static kms_err seg_add(struct seg_build *b, char *path, const struct stat *st)
{
	struct audit_segs *o = b->out;

	for (size_t i = 0; i < o->n; i++)
		if (o->v[i].dev == st->st_dev && o->v[i].ino == st->st_ino) {
			free(path);
			return KMS_OK;
		}
	if (o->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16;
		struct audit_seg *v = realloc(o->v, cap * sizeof(*v)); /* file names: no secret */

		if (v == NULL) {
			free(path);
			return kms_errf(KMS_ERR_NOMEM, "audit search: out of memory");
		}
		o->v = v;
		b->cap = cap;
	}
	o->v[o->n] = (struct audit_seg){.path = path, .dev = st->st_dev, .ino = st->st_ino, .size = st->st_size};
	o->n++;
	return KMS_OK;
}

static kms_err add_dir(struct seg_build *b, const char *dir)
{
	size_t before = b->out->n;
	struct dirent *de;
	struct stat st;
	kms_err rc = KMS_OK;
	char *p;
	DIR *d;

	d = opendir(dir);
	if (d == NULL)
		return kms_errf(KMS_ERR_IO, "cannot open directory %s: %s", dir, strerror(errno));
	errno = 0;
	while (rc == KMS_OK && (de = readdir(d)) != NULL) {
		if (fnmatch(SEG_GLOB, de->d_name, 0) != 0)
			continue;
		if (asprintf(&p, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", de->d_name) < 0) {
			rc = kms_errf(KMS_ERR_NOMEM, "audit search: out of memory");
			break;
		}
		if (stat(p, &st) != 0) {
			rc = kms_errf(KMS_ERR_IO, "cannot stat %s: %s", p, strerror(errno));
			free(p);
			break;
		}
		if (!S_ISREG(st.st_mode)) {
			free(p);
			continue;
		}
		rc = seg_add(b, p, &st);
		errno = 0;
	}
	if (rc == KMS_OK && errno != 0)
		rc = kms_errf(KMS_ERR_IO, "reading directory %s: %s", dir, strerror(errno));
	closedir(d);
	if (rc == KMS_OK && b->out->n == before)
		rc = kms_errf(KMS_ERR_INVALID, "no %s file in directory %s", SEG_GLOB, dir);
	return rc;
}

/* The seq of the file's first well-formed record (0 if none). */
static kms_err first_seq(struct lreader *r, struct audit_seg *s)
{
	struct audit_view v;
	char why[160];
	kms_err rc;
	int m;

	rc = lr_open(r, s->path);
	if (rc != KMS_OK)
		return rc;
	while ((m = lr_next(r)) == 1) {
		if (r->too_long || audit_view_parse(r->buf, r->len, &v, why, sizeof(why)) != NULL)
			continue;
		s->first_seq = v.seq;
		if (v.node != NULL && (s->node = strdup(v.node)) == NULL) {
			audit_view_clear(&v);
			lr_close(r);
			return kms_errf(KMS_ERR_NOMEM, "out of memory");
		}
		audit_view_clear(&v);
		break;
	}
	lr_close(r);
	return m < 0 ? KMS_ERR_IO : KMS_OK;
}

static int seg_cmp(const void *a, const void *b)
{
	const struct audit_seg *x = a, *y = b;

	if (x->first_seq != y->first_seq) {
		if (x->first_seq == 0 || y->first_seq == 0)
			return x->first_seq == 0 ? 1 : -1;
		return x->first_seq < y->first_seq ? -1 : 1;
	}
	return strcmp(x->path, y->path);
}

kms_err audit_segs_collect(const char *const *args, size_t n_args, struct audit_segs *out)
{
	struct seg_build b = {.out = out};
	struct lreader r;
	struct stat st;
	kms_err rc;
	char *p;

	memset(out, 0, sizeof(*out));
	memset(&r, 0, sizeof(r));
	if (n_args == 0)
		return kms_errf(KMS_ERR_INVALID, "no audit log file or directory given");
	for (size_t i = 0; i < n_args; i++) {
		if (stat(args[i], &st) != 0) {
			rc = kms_errf(KMS_ERR_IO, "cannot open %s: %s", args[i], strerror(errno));
			goto out;
		}
		if (S_ISDIR(st.st_mode)) {
			rc = add_dir(&b, args[i]);
		} else if (S_ISREG(st.st_mode)) {
			p = strdup(args[i]);
			rc = p ? seg_add(&b, p, &st) : kms_errf(KMS_ERR_NOMEM, "out of memory");
		} else {
			rc = kms_errf(KMS_ERR_IO, "%s is not a regular file or a directory", args[i]);
		}
		if (rc != KMS_OK)
			goto out;
	}
	rc = lr_init(&r);
	for (size_t i = 0; rc == KMS_OK && i < out->n; i++)
		rc = first_seq(&r, &out->v[i]);
	if (rc != KMS_OK)
		goto out;
	qsort(out->v, out->n, sizeof(out->v[0]), seg_cmp);
out:
	lr_free(&r);
	if (rc != KMS_OK)
		audit_segs_free(out);
	return rc;
}

/* ---------------------------------------------------------------- the scan */

/* ---- several nodes' logs, merged by time ------------------------------------------ */

bool audit_segs_multi_node(const struct audit_segs *s)
{
	const char *first = NULL;

	for (size_t i = 0; i < s->n; i++) {
		if (s->v[i].node == NULL)
			continue;
		if (first == NULL)
			first = s->v[i].node;
		else if (strcmp(first, s->v[i].node) != 0)
			return true;
	}
	return false;
}

/* One node's chain of segments, read one record ahead. */
struct ncur {
	const char *node;	/* NULL: files whose first record names no node */
	size_t *idx, n, next;	/* its segments (indices into s->v, in seq order) */
	struct lreader r;
	struct audit_view rec;
	bool have, told;
	uint64_t last;
};

static bool same_node(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Moves c to its next well-formed record (c->have false at the end of its files). */
static kms_err ncur_advance(struct ncur *c, audit_note_fn on_note, void *ctx,
			    struct audit_scan_stats *st, const struct audit_segs *s)
{
	char why[256], what[512];
	kms_err rc;
	int m;

	c->have = false;
	for (;;) {
		if (c->r.f == NULL) {
			if (c->next == c->n)
				return KMS_OK;
			rc = lr_open(&c->r, s->v[c->idx[c->next++]].path);
			if (rc != KMS_OK)
				return rc;
			st->files++;
			c->told = false;
		}
		m = lr_next(&c->r);
		if (m < 0)
			return KMS_ERR_IO;
		if (m == 0) {
			lr_close(&c->r);
			continue;
		}
		st->lines++;
		if (c->r.too_long) {
			snprintf(what, sizeof(what), "malformed line skipped: longer than %u bytes",
				 AUDIT_SEARCH_LINE_MAX);
		} else if (audit_view_parse(c->r.buf, c->r.len, &c->rec, why, sizeof(why)) != NULL) {
			snprintf(what, sizeof(what), "malformed line skipped: %s%s", why,
				 c->r.nl ? "" : " (the last line has no newline: torn, or still being written)");
		} else {
			st->records++;
			if (c->last != 0 && c->rec.seq <= c->last) {
				st->disorder++;
				if (!c->told && on_note != NULL) {
					snprintf(what, sizeof(what),
						 "seq %llu follows seq %llu in node %s's log: segments overlap, "
						 "repeat or are out of order, so records may be counted twice "
						 "(further ones in this file not shown; check with "
						 "`kmsctl audit verify`)",
						 (unsigned long long)c->rec.seq, (unsigned long long)c->last,
						 c->node ? c->node : "(none)");
					on_note(ctx, c->r.path, c->r.lineno, what);
				}
				c->told = true;
			}
			c->last = c->rec.seq;
			c->have = true;
			return KMS_OK;
		}
		st->malformed++;
		if (on_note != NULL)
			on_note(ctx, c->r.path, c->r.lineno, what);
	}
}

/* The logs of several nodes: each node's segments in seq order, the nodes' records
 * merged by time (ties: by node id, then as read). */
static kms_err scan_merged(const struct audit_segs *s, const struct audit_filter *f,
			   audit_match_fn on_match, audit_note_fn on_note, void *ctx,
			   struct audit_scan_stats *st)
{
	struct ncur *c = calloc(s->n, sizeof(*c));
	size_t nc = 0, i, j;
	kms_err rc = KMS_OK;

	if (c == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit search: out of memory");
	for (i = 0; i < s->n; i++) {
		for (j = 0; j < nc && !same_node(c[j].node, s->v[i].node); j++)
			;
		if (j == nc) {
			c[nc].node = s->v[i].node;
			c[nc].idx = calloc(s->n, sizeof(*c[nc].idx));
			if (c[nc].idx == NULL) {
				rc = kms_errf(KMS_ERR_NOMEM, "audit search: out of memory");
				goto out;
			}
			nc++;
		}
		c[j].idx[c[j].n++] = i;
	}
	for (j = 0; j < nc; j++) {
		if ((rc = lr_init(&c[j].r)) != KMS_OK)
			goto out;
		if ((rc = ncur_advance(&c[j], on_note, ctx, st, s)) != KMS_OK)
			goto out;
	}
	for (;;) {
		struct ncur *best = NULL;

		for (j = 0; j < nc; j++) {
			if (!c[j].have)
				continue;
			if (best == NULL || c[j].rec.time_us < best->rec.time_us ||
			    (c[j].rec.time_us == best->rec.time_us && best->node != NULL &&
			     (c[j].node == NULL || strcmp(c[j].node, best->node) < 0)))
				best = &c[j];
		}
		if (best == NULL)
			break;
		if (audit_filter_match(f, &best->rec)) {
			st->matched++;
			rc = on_match(ctx, &best->rec, best->r.buf, best->r.len);
			if (rc != KMS_OK)
				goto out;
		}
		audit_view_clear(&best->rec);
		if ((rc = ncur_advance(best, on_note, ctx, st, s)) != KMS_OK)
			goto out;
	}
out:
	for (j = 0; j < nc; j++) {
		audit_view_clear(&c[j].rec);
		lr_free(&c[j].r);
		free(c[j].idx);
	}
	free(c);
	return rc;
}

kms_err audit_scan(const struct audit_segs *s, const struct audit_filter *f,
		   audit_match_fn on_match, audit_note_fn on_note, void *ctx,
		   struct audit_scan_stats *st)
{
	struct audit_view rec = {0};
	struct lreader r;
	uint64_t last = 0;
	char why[256], what[512];
	bool told;
	kms_err rc;
	int m = 0;

	memset(st, 0, sizeof(*st));
	if (audit_segs_multi_node(s))
		return scan_merged(s, f, on_match, on_note, ctx, st);
	rc = lr_init(&r);
	if (rc != KMS_OK)
		return rc;
	for (size_t i = 0; i < s->n; i++) {
		rc = lr_open(&r, s->v[i].path);
		if (rc != KMS_OK)
			goto out;
		st->files++;
		told = false;
		while ((m = lr_next(&r)) == 1) {
			st->lines++;
			if (r.too_long) {
				snprintf(what, sizeof(what),
					 "malformed line skipped: longer than %u bytes",
					 AUDIT_SEARCH_LINE_MAX);
				goto note_bad;
			}
			if (audit_view_parse(r.buf, r.len, &rec, why, sizeof(why)) != NULL) {
				snprintf(what, sizeof(what), "malformed line skipped: %s%s", why,
					 r.nl ? "" : " (the last line has no newline: torn, or "
						     "still being written)");
				goto note_bad;
			}
			st->records++;
			if (last != 0 && rec.seq <= last) {
				st->disorder++;
				if (!told && on_note != NULL) {
					snprintf(what, sizeof(what),
						 "seq %llu follows seq %llu: segments overlap, repeat "
						 "or are out of order, so records may be counted twice "
						 "(further ones in this file not shown; check with "
						 "`kmsctl audit verify`)",
						 (unsigned long long)rec.seq, (unsigned long long)last);
					on_note(ctx, r.path, r.lineno, what);
				}
				told = true;
			}
			last = rec.seq;
			if (audit_filter_match(f, &rec)) {
				st->matched++;
				rc = on_match(ctx, &rec, r.buf, r.len);
				if (rc != KMS_OK)
					goto out;
			}
			audit_view_clear(&rec);
			continue;
note_bad:
			st->malformed++;
			if (on_note != NULL)
				on_note(ctx, r.path, r.lineno, what);
		}
		lr_close(&r);
		if (m < 0) {
			rc = KMS_ERR_IO;
			goto out;
		}
	}
	rc = KMS_OK;
out:
	audit_view_clear(&rec);
	lr_free(&r);
	return rc;
}
