/* Policy documents: strict JSON -> compiled struct policy_doc. See policy_doc.h and
 * docs/POLICY.md. */
#include "policy/policy_doc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policy/policy_doc_int.h"

/* ---------------------------------------------------------------- arena */

struct pd_blk {
	struct pd_blk *next;
	size_t used, cap;
	max_align_t data[];
};

static void *pd_alloc(struct policy_doc *doc, size_t n)
{
	struct pd_blk *b = doc->arena;
	size_t need = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);

	if (need == 0)
		need = sizeof(max_align_t);
	if (b == NULL || b->cap - b->used < need) {
		size_t cap = need > 8192 ? need : 8192;
		b = calloc(1, sizeof(*b) + cap);
		if (b == NULL)
			return NULL;
		b->cap = cap;
		b->next = doc->arena;
		doc->arena = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += need;
	return p;
}

static char *pd_strdup(struct policy_doc *doc, const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = pd_alloc(doc, n);

	if (p != NULL)
		memcpy(p, s, n);
	return p;
}

static void pd_destroy(struct policy_doc *doc)
{
	struct pd_blk *b = doc->arena, *next;

	for (; b != NULL; b = next) {
		next = b->next;
		free(b);
	}
	free(doc);
}

struct policy_doc *policy_doc_ref(struct policy_doc *doc)
{
	if (doc != NULL)
		atomic_fetch_add_explicit(&doc->refs, 1, memory_order_relaxed);
	return doc;
}

void policy_doc_free(struct policy_doc *doc)
{
	if (doc != NULL && atomic_fetch_sub_explicit(&doc->refs, 1, memory_order_acq_rel) == 1)
		pd_destroy(doc);
}

int64_t policy_doc_version(const struct policy_doc *doc)
{
	return doc ? doc->version : 0;
}

size_t policy_doc_rule_count(const struct policy_doc *doc)
{
	return doc ? doc->n_rules : 0;
}

const char *policy_doc_rule_name(const struct policy_doc *doc, size_t i)
{
	return doc && i < doc->n_rules ? doc->rules[i].name : NULL;
}

unsigned policy_doc_uses(const struct policy_doc *doc)
{
	return doc ? doc->uses : 0;
}

/* ------------------------------------------------- where an error sits in the text */

struct pcomp {
	const char *key; /* NULL: array index */
	size_t idx;
};

#define PATH_MAX_DEPTH 8

struct scan {
	const char *p, *end;
	unsigned line, col;
};

static void sc_adv(struct scan *s)
{
	if (*s->p == '\n') {
		s->line++;
		s->col = 1;
	} else if (((unsigned char)*s->p & 0xC0) != 0x80) {
		s->col++; /* jansson counts characters, not bytes */
	}
	s->p++;
}

static void sc_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		sc_adv(s);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static long sc_hex4(struct scan *s)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		if (s->p >= s->end || hexval(*s->p) < 0)
			return -1;
		v = v * 16 + hexval(*s->p);
		sc_adv(s);
	}
	return v;
}

static size_t utf8_put(char *o, unsigned long cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* At a '"': decodes the string into buf (NUL-terminated) when it fits, else sets *fits 0.
 * Returns 0, or -1 on malformed input. */
static int sc_string(struct scan *s, char *buf, size_t cap, int *fits)
{
	size_t n = 0;

	*fits = 1;
	sc_adv(s); /* opening quote */
	while (s->p < s->end && *s->p != '"') {
		char tmp[4];
		size_t k = 1;
		if (*s->p == '\\') {
			sc_adv(s);
			if (s->p >= s->end)
				return -1;
			char e = *s->p;
			sc_adv(s);
			switch (e) {
			case 'b': tmp[0] = '\b'; break;
			case 'f': tmp[0] = '\f'; break;
			case 'n': tmp[0] = '\n'; break;
			case 'r': tmp[0] = '\r'; break;
			case 't': tmp[0] = '\t'; break;
			case 'u': {
				long cp = sc_hex4(s);
				if (cp < 0)
					return -1;
				if (cp >= 0xD800 && cp <= 0xDBFF && s->end - s->p >= 6 && s->p[0] == '\\' &&
				    s->p[1] == 'u') {
					sc_adv(s);
					sc_adv(s);
					long lo = sc_hex4(s);
					if (lo < 0xDC00 || lo > 0xDFFF)
						return -1;
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				}
				k = utf8_put(tmp, (unsigned long)cp);
				break;
			}
			default: tmp[0] = e; break; /* \" \\ \/ */
			}
		} else {
			tmp[0] = *s->p;
			sc_adv(s);
		}
		if (n + k < cap) {
			memcpy(buf + n, tmp, k);
			n += k;
		} else {
			*fits = 0;
		}
	}
	if (s->p >= s->end)
		return -1;
	sc_adv(s); /* closing quote */
	if (cap > 0)
		buf[n < cap ? n : cap - 1] = '\0';
	return 0;
}

/* Skips one value (the text was accepted by jansson already). */
static int sc_skip(struct scan *s)
{
	int depth = 0;

	do {
		if (s->p >= s->end)
			return -1;
		if (*s->p == '"') {
			char dummy[1];
			int fits;
			if (sc_string(s, dummy, sizeof(dummy), &fits) != 0)
				return -1;
		} else if (*s->p == '{' || *s->p == '[') {
			depth++;
			sc_adv(s);
		} else if (*s->p == '}' || *s->p == ']') {
			depth--;
			sc_adv(s);
		} else if (depth == 0) {
			/* a scalar at the top: number or literal */
			while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && *s->p != ' ' &&
			       *s->p != '\t' && *s->p != '\n' && *s->p != '\r')
				sc_adv(s);
		} else {
			sc_adv(s);
		}
	} while (depth > 0);
	return 0;
}

/* At the start of a value: finds comps[depth..n). For a key as the last component the
 * position is that of the key. Returns 1 found, 0 not. */
static int sc_find(struct scan *s, const struct pcomp *comps, size_t n, size_t depth, unsigned *line,
		   unsigned *col)
{
	sc_ws(s);
	if (depth == n) {
		*line = s->line;
		*col = s->col;
		return 1;
	}
	if (s->p >= s->end)
		return 0;
	if (comps[depth].key != NULL && *s->p == '{') {
		sc_adv(s);
		for (;;) {
			char key[512];
			int fits;
			unsigned kl, kc;
			sc_ws(s);
			if (s->p >= s->end || *s->p != '"')
				return 0;
			kl = s->line;
			kc = s->col;
			if (sc_string(s, key, sizeof(key), &fits) != 0)
				return 0;
			sc_ws(s);
			if (s->p >= s->end || *s->p != ':')
				return 0;
			sc_adv(s);
			if (fits && strcmp(key, comps[depth].key) == 0) {
				if (depth + 1 == n) {
					*line = kl;
					*col = kc;
					return 1;
				}
				return sc_find(s, comps, n, depth + 1, line, col);
			}
			sc_ws(s);
			if (sc_skip(s) != 0)
				return 0;
			sc_ws(s);
			if (s->p >= s->end || *s->p != ',')
				return 0;
			sc_adv(s);
		}
	}
	if (comps[depth].key == NULL && *s->p == '[') {
		sc_adv(s);
		for (size_t i = 0;; i++) {
			sc_ws(s);
			if (s->p >= s->end || *s->p == ']')
				return 0;
			if (i == comps[depth].idx)
				return sc_find(s, comps, n, depth + 1, line, col);
			if (sc_skip(s) != 0)
				return 0;
			sc_ws(s);
			if (s->p >= s->end || *s->p != ',')
				return 0;
			sc_adv(s);
		}
	}
	return 0;
}

/* ------------------------------------------------------------- compile context */

struct pctx {
	const char *text; /* NULL when compiling from json_t */
	size_t len;
	struct policy_doc_error *err;
	struct pcomp path[PATH_MAX_DEPTH];
	size_t depth;
	struct policy_doc *doc;
	kms_err rc;
};

static void push_key(struct pctx *c, const char *key)
{
	if (c->depth < PATH_MAX_DEPTH)
		c->path[c->depth] = (struct pcomp){key, 0};
	c->depth++;
}

static void push_idx(struct pctx *c, size_t i)
{
	if (c->depth < PATH_MAX_DEPTH)
		c->path[c->depth] = (struct pcomp){NULL, i};
	c->depth++;
}

static void pop(struct pctx *c)
{
	c->depth--;
}

static bool is_ident(const char *k)
{
	if (*k == '\0' || (*k >= '0' && *k <= '9'))
		return false;
	for (; *k; k++)
		if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') ||
		      *k == '_' || *k == '-'))
			return false;
	return true;
}

static void render_path(const struct pctx *c, char *out, size_t cap)
{
	size_t n = 0, d = c->depth < PATH_MAX_DEPTH ? c->depth : PATH_MAX_DEPTH;

	out[0] = '\0';
	for (size_t i = 0; i < d && n < cap; i++) {
		int w;
		if (c->path[i].key == NULL)
			w = snprintf(out + n, cap - n, "[%zu]", c->path[i].idx);
		else if (is_ident(c->path[i].key))
			w = snprintf(out + n, cap - n, "%s%.40s", i ? "." : "", c->path[i].key);
		else
			w = snprintf(out + n, cap - n, "[\"%.32s\"]", c->path[i].key);
		if (w < 0)
			break;
		n += (size_t)w;
	}
}

/* Records the first error; returns -1 so that callers can `return perr(...)`. */
static int perr(struct pctx *c, const char *fmt, ...) KMS_PRINTF(2, 3);
static int perr(struct pctx *c, const char *fmt, ...)
{
	va_list ap;
	struct policy_doc_error *e = c->err;

	if (c->rc != KMS_OK)
		return -1;
	c->rc = KMS_ERR_INVALID;
	va_start(ap, fmt);
	vsnprintf(e->reason, sizeof(e->reason), fmt, ap);
	va_end(ap);
	render_path(c, e->path, sizeof(e->path));
	e->line = e->column = 0;
	if (c->text != NULL && c->depth <= PATH_MAX_DEPTH) {
		struct scan s = {c->text, c->text + c->len, 1, 1};
		if (!sc_find(&s, c->path, c->depth, 0, &e->line, &e->column))
			e->line = e->column = 0;
	}
	return -1;
}

static int pnomem(struct pctx *c)
{
	if (c->rc == KMS_OK) {
		c->rc = KMS_ERR_NOMEM;
		snprintf(c->err->reason, sizeof(c->err->reason), "out of memory");
		c->err->path[0] = '\0';
		c->err->line = c->err->column = 0;
	}
	return -1;
}

/* ------------------------------------------------------------------ checks */

static int only_fields(struct pctx *c, const json_t *obj, const char *const *allowed)
{
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)obj, k, v) {
		const char *const *a;
		(void)v;
		for (a = allowed; *a != NULL; a++)
			if (strcmp(*a, k) == 0)
				break;
		if (*a == NULL) {
			push_key(c, k);
			perr(c, "unknown field \"%.48s\"", k);
			pop(c);
			return -1;
		}
	}
	return 0;
}

static const char *glob_problem(const char *g)
{
	size_t n = strlen(g);

	if (n == 0)
		return "empty pattern";
	if (n > POLICY_GLOB_MAX)
		return "pattern longer than 128 characters";
	for (size_t i = 0; i < n; i++) {
		char ch = g[i];
		if (ch == '*' && g[i + 1] == '*')
			return "\"**\" is not a pattern (use one \"*\")";
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '-' || ch == '.' || ch == '*' || ch == '?'))
			return "patterns use letters, digits, '_', '-', '.', '*' and '?' only";
	}
	return NULL;
}

typedef int (*item_fn)(struct pctx *c, const char *s, void *arg);

/* A non-empty array of distinct strings; fn checks and records each. */
static int str_list(struct pctx *c, const json_t *arr, item_fn fn, void *arg)
{
	size_t i, j;
	json_t *v;

	if (!json_is_array(arr))
		return perr(c, "must be an array of strings");
	if (json_array_size(arr) == 0)
		return perr(c, "must not be empty");
	if (json_array_size(arr) > POLICY_LIST_MAX)
		return perr(c, "more than %d entries", POLICY_LIST_MAX);
	json_array_foreach(arr, i, v) {
		int rc;
		push_idx(c, i);
		if (!json_is_string(v)) {
			perr(c, "must be a string");
			pop(c);
			return -1;
		}
		for (j = 0; j < i; j++)
			if (strcmp(json_string_value(json_array_get(arr, j)), json_string_value(v)) == 0) {
				perr(c, "duplicate entry \"%.64s\"", json_string_value(v));
				pop(c);
				return -1;
			}
		rc = fn(c, json_string_value(v), arg);
		pop(c);
		if (rc != 0)
			return -1;
	}
	return 0;
}

static int strs_add(struct pctx *c, struct pd_strs *l, size_t cap, const char *s)
{
	if (l->v == NULL) {
		l->v = pd_alloc(c->doc, cap * sizeof(*l->v));
		if (l->v == NULL)
			return pnomem(c);
	}
	if ((l->v[l->n] = pd_strdup(c->doc, s)) == NULL)
		return pnomem(c);
	l->n++;
	return 0;
}

struct rule_build {
	struct pd_rule *r;
	size_t cap;
};

static int principal_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	const char *why;

	if (strcmp(s, "*") == 0) {
		b->r->any_principal = true;
		return 0;
	}
	if (strncmp(s, "role:", 5) == 0) {
		if ((why = glob_problem(s + 5)) != NULL)
			return perr(c, "bad role pattern \"%.64s\": %s", s, why);
		return strs_add(c, &b->r->roles, b->cap, s + 5);
	}
	if (s[0] == '@' || strchr(s, ':') != NULL)
		return perr(c, "bad principal \"%.64s\": use a name pattern, \"role:<pattern>\" or \"*\"", s);
	if ((why = glob_problem(s)) != NULL)
		return perr(c, "bad principal pattern \"%.64s\": %s", s, why);
	return strs_add(c, &b->r->names, b->cap, s);
}

static int tenant_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	const char *why;

	if (strcmp(s, "@scope") == 0) {
		b->r->tenant_scope = true;
		return 0;
	}
	if (s[0] == '@')
		return perr(c, "unknown tenant set \"%.64s\" (only \"@scope\")", s);
	if ((why = glob_problem(s)) != NULL)
		return perr(c, "bad tenant pattern \"%.64s\": %s", s, why);
	return strs_add(c, &b->r->tenants, b->cap, s);
}

static int key_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	const char *why;

	if ((why = glob_problem(s)) != NULL)
		return perr(c, "bad key pattern \"%.64s\": %s", s, why);
	return strs_add(c, &b->r->keys, b->cap, s);
}

static int op_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	size_t n = strlen(s);
	uint64_t add = 0;

	if (strcmp(s, "*") == 0) {
		for (int i = 1; i < KMS_OP__COUNT; i++)
			add |= 1ull << i;
	} else if (n >= 3 && s[n - 1] == '*' && s[n - 2] == '.' && memchr(s, '*', n - 1) == NULL) {
		for (int i = 1; i < KMS_OP__COUNT; i++)
			if (strncmp(kms_op_name((enum kms_op)i), s, n - 1) == 0)
				add |= 1ull << i;
		if (add == 0)
			return perr(c, "no operation matches \"%.64s\"", s);
	} else if (strchr(s, '*') != NULL || strchr(s, '?') != NULL) {
		return perr(c, "bad operation pattern \"%.64s\": use \"*\" or \"<group>.*\"", s);
	} else {
		/* an operation's name covers its refinements ("key.config" covers
		 * "key.config.lower_min_decryption"), so that a rule naming the route's
		 * operation keeps deciding every call of that route */
		for (int i = 1; i < KMS_OP__COUNT; i++) {
			const char *name = kms_op_name((enum kms_op)i);
			if (strcmp(name, s) == 0 || (strncmp(name, s, n) == 0 && name[n] == '.'))
				add |= 1ull << i;
		}
		if (add == 0)
			return perr(c, "unknown operation \"%.64s\"", s);
	}
	b->r->ops |= add;
	return 0;
}

static int ctx_value_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	struct pd_ctx_cond *cc = &b->r->ctx[b->r->n_ctx];

	if (*s == '\0')
		return perr(c, "empty context value");
	if (strlen(s) > POLICY_CTX_VAL_MAX)
		return perr(c, "context value longer than %d bytes", POLICY_CTX_VAL_MAX);
	return strs_add(c, &cc->values, b->cap, s);
}

static const char *const weekday_names[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};

static int weekday_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;

	for (int i = 0; i < 7; i++)
		if (strcmp(s, weekday_names[i]) == 0) {
			b->r->weekdays |= (uint8_t)(1u << i);
			return 0;
		}
	return perr(c, "unknown weekday \"%.16s\" (mon, tue, wed, thu, fri, sat, sun)", s);
}

/* "HH:MM" -> minutes; end may be "24:00". */
static int parse_hhmm(const char *s, bool is_end)
{
	int h, m;

	if (strlen(s) != 5 || s[2] != ':')
		return -1;
	for (int i = 0; i < 5; i++)
		if (i != 2 && (s[i] < '0' || s[i] > '9'))
			return -1;
	h = (s[0] - '0') * 10 + (s[1] - '0');
	m = (s[3] - '0') * 10 + (s[4] - '0');
	if (m > 59)
		return -1;
	if (h == 24 && m == 0 && is_end)
		return 1440;
	if (h > 23)
		return -1;
	return h * 60 + m;
}

static int parse_cidr(const char *s, struct pd_cidr *out, const char **why)
{
	char addr[64];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	unsigned maxp, prefix;

	*why = "not an IPv4 or IPv6 address";
	if (alen == 0 || alen >= sizeof(addr))
		return -1;
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	memset(out, 0, sizeof(*out));
	if (strchr(addr, ':') != NULL) {
		if (inet_pton(AF_INET6, addr, out->a) != 1)
			return -1;
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (memcmp(out->a, mapped, 12) == 0) {
			*why = "write IPv4-mapped addresses as IPv4";
			return -1;
		}
		out->family = 6;
		maxp = 128;
	} else {
		/* inet_pton accepts only dotted quads, no shorthand or leading-zero octal */
		if (inet_pton(AF_INET, addr, out->a) != 1)
			return -1;
		out->family = 4;
		maxp = 32;
	}
	prefix = maxp;
	if (slash != NULL) {
		const char *p = slash + 1;
		*why = "bad prefix length";
		if (*p == '\0' || strlen(p) > 3 || (p[0] == '0' && p[1] != '\0'))
			return -1;
		prefix = 0;
		for (; *p; p++) {
			if (*p < '0' || *p > '9')
				return -1;
			prefix = prefix * 10 + (unsigned)(*p - '0');
		}
		if (prefix > maxp) {
			*why = out->family == 4 ? "prefix longer than 32" : "prefix longer than 128";
			return -1;
		}
	}
	out->prefix = (uint8_t)prefix;
	for (unsigned bit = prefix; bit < maxp; bit++)
		if (out->a[bit / 8] & (0x80u >> (bit % 8))) {
			*why = "host bits set after the prefix";
			return -1;
		}
	return 0;
}

static int cidr_item(struct pctx *c, const char *s, void *arg)
{
	struct rule_build *b = arg;
	const char *why;

	if (parse_cidr(s, &b->r->cidrs[b->r->n_cidrs], &why) != 0)
		return perr(c, "bad CIDR \"%.64s\": %s", s, why);
	b->r->n_cidrs++;
	return 0;
}

static int get_int(struct pctx *c, const json_t *v, long long lo, long long hi, long long *out)
{
	if (!json_is_integer(v))
		return perr(c, "must be an integer");
	*out = json_integer_value(v);
	if (*out < lo || *out > hi)
		return perr(c, "must be between %lld and %lld", lo, hi);
	return 0;
}

static int time_cond(struct pctx *c, const json_t *t, struct pd_rule *r, struct rule_build *b)
{
	static const char *const fields[] = {"start", "end", "weekdays", "overnight", NULL};
	const json_t *start = json_object_get(t, "start"), *end = json_object_get(t, "end");
	const json_t *wd = json_object_get(t, "weekdays"), *on = json_object_get(t, "overnight");
	int ms, me;

	if (!json_is_object(t))
		return perr(c, "must be an object {\"start\": \"HH:MM\", \"end\": \"HH:MM\", ...}");
	if (only_fields(c, t, fields) != 0)
		return -1;
	if (start == NULL)
		return perr(c, "missing \"start\" (\"HH:MM\", UTC)");
	if (end == NULL)
		return perr(c, "missing \"end\" (\"HH:MM\", UTC)");
	push_key(c, "start");
	ms = json_is_string(start) ? parse_hhmm(json_string_value(start), false) : -1;
	if (ms < 0) {
		perr(c, "must be a time \"HH:MM\" from 00:00 to 23:59 (UTC)");
		pop(c);
		return -1;
	}
	pop(c);
	push_key(c, "end");
	me = json_is_string(end) ? parse_hhmm(json_string_value(end), true) : -1;
	if (me < 0) {
		perr(c, "must be a time \"HH:MM\" from 00:00 to 24:00 (UTC)");
		pop(c);
		return -1;
	}
	pop(c);
	if (on != NULL && !json_is_boolean(on)) {
		push_key(c, "overnight");
		perr(c, "must be true or false");
		pop(c);
		return -1;
	}
	r->overnight = on != NULL && json_is_true(on);
	if (ms == me || (ms == 0 && me == 1440))
		return perr(c, "empty or all-day window (start %s, end %s): drop the time condition instead",
			    json_string_value(start), json_string_value(end));
	if (ms > me && !r->overnight)
		return perr(c, "inverted window: start %s is after end %s (set \"overnight\": true for a "
			       "window across midnight)",
			    json_string_value(start), json_string_value(end));
	if (ms < me && r->overnight)
		return perr(c, "\"overnight\" is true but start %s is before end %s", json_string_value(start),
			    json_string_value(end));
	r->t_start = (uint16_t)ms;
	r->t_end = (uint16_t)me;
	r->weekdays = 0x7F;
	if (wd != NULL) {
		r->weekdays = 0;
		push_key(c, "weekdays");
		int rc = str_list(c, wd, weekday_item, b);
		pop(c);
		if (rc != 0)
			return -1;
	}
	r->has_time = true;
	return 0;
}

static int conditions(struct pctx *c, const json_t *cond, struct pd_rule *r)
{
	static const char *const fields[] = {"context", "time", "source_cidr", "mfa_max_age", NULL};
	struct rule_build b = {r, 0};
	const json_t *v;
	int rc;

	if (!json_is_object(cond))
		return perr(c, "must be an object");
	if (only_fields(c, cond, fields) != 0)
		return -1;
	if ((v = json_object_get(cond, "context")) != NULL) {
		const char *k;
		json_t *vals;
		push_key(c, "context");
		if (!json_is_object(v) || json_object_size(v) == 0) {
			perr(c, "must be a non-empty object {\"<context key>\": [\"<value>\", ...]}");
			pop(c);
			return -1;
		}
		if (json_object_size(v) > POLICY_LIST_MAX) {
			perr(c, "more than %d entries", POLICY_LIST_MAX);
			pop(c);
			return -1;
		}
		r->ctx = pd_alloc(c->doc, json_object_size(v) * sizeof(*r->ctx));
		if (r->ctx == NULL) {
			pop(c);
			return pnomem(c);
		}
		json_object_foreach((json_t *)v, k, vals) {
			push_key(c, k);
			if (*k == '\0' || strlen(k) > POLICY_CTX_KEY_MAX) {
				perr(c, "context keys are 1 to %d bytes", POLICY_CTX_KEY_MAX);
				rc = -1;
			} else if ((r->ctx[r->n_ctx].key = pd_strdup(c->doc, k)) == NULL) {
				rc = pnomem(c);
			} else {
				b.cap = json_is_array(vals) ? json_array_size(vals) : 0;
				rc = str_list(c, vals, ctx_value_item, &b);
			}
			pop(c);
			if (rc != 0) {
				pop(c);
				return -1;
			}
			r->n_ctx++;
		}
		pop(c);
		c->doc->uses |= POLICY_USES_CONTEXT;
	}
	if ((v = json_object_get(cond, "time")) != NULL) {
		push_key(c, "time");
		rc = time_cond(c, v, r, &b);
		pop(c);
		if (rc != 0)
			return -1;
		c->doc->uses |= POLICY_USES_TIME;
	}
	if ((v = json_object_get(cond, "source_cidr")) != NULL) {
		push_key(c, "source_cidr");
		if (json_is_array(v) && json_array_size(v) > 0 && json_array_size(v) <= POLICY_LIST_MAX &&
		    (r->cidrs = pd_alloc(c->doc, json_array_size(v) * sizeof(*r->cidrs))) == NULL) {
			pop(c);
			return pnomem(c);
		}
		rc = str_list(c, v, cidr_item, &b);
		pop(c);
		if (rc != 0)
			return -1;
		c->doc->uses |= POLICY_USES_SOURCE;
	}
	if ((v = json_object_get(cond, "mfa_max_age")) != NULL) {
		long long n;
		push_key(c, "mfa_max_age");
		rc = get_int(c, v, 1, POLICY_MFA_MAX_AGE, &n);
		pop(c);
		if (rc != 0)
			return -1;
		r->mfa_max_age = n;
		c->doc->uses |= POLICY_USES_MFA_AGE;
	}
	return 0;
}

static bool valid_rule_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > POLICY_NAME_MAX)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

/* A list field of a rule: optional or required, compiled by fn. */
static int rule_list(struct pctx *c, const json_t *rule, const char *field, bool required, item_fn fn,
		     struct rule_build *b, bool *present)
{
	const json_t *v = json_object_get(rule, field);
	int rc;

	if (present)
		*present = v != NULL;
	if (v == NULL)
		return required ? perr(c, "missing \"%s\"", field) : 0;
	push_key(c, field);
	b->cap = json_is_array(v) ? json_array_size(v) : 0;
	rc = str_list(c, v, fn, b);
	pop(c);
	return rc;
}

static int compile_rule(struct pctx *c, const json_t *rule, size_t idx, struct pd_rule *r)
{
	static const char *const fields[] = {"name",	   "description", "effect",	"principals",
					     "tenants",	   "keys",	  "operations", "conditions",
					     "require_mfa", "require_quorum", NULL};
	struct rule_build b = {r, 0};
	const json_t *v;
	const char *effect;
	char reason[POLICY_NAME_MAX + 64];

	if (!json_is_object(rule))
		return perr(c, "a rule must be an object");
	if (only_fields(c, rule, fields) != 0)
		return -1;

	v = json_object_get(rule, "name");
	if (v == NULL)
		return perr(c, "missing \"name\"");
	push_key(c, "name");
	if (!json_is_string(v) || !valid_rule_name(json_string_value(v))) {
		perr(c, "must be 1 to %d letters, digits, '_', '-' or '.'", POLICY_NAME_MAX);
		pop(c);
		return -1;
	}
	for (size_t j = 0; j < idx; j++)
		if (strcmp(c->doc->rules[j].name, json_string_value(v)) == 0) {
			perr(c, "duplicate rule name \"%s\" (also rules[%zu])", json_string_value(v), j);
			pop(c);
			return -1;
		}
	pop(c);
	if ((r->name = pd_strdup(c->doc, json_string_value(v))) == NULL)
		return pnomem(c);

	if ((v = json_object_get(rule, "description")) != NULL && !json_is_string(v)) {
		push_key(c, "description");
		perr(c, "must be a string");
		pop(c);
		return -1;
	}

	v = json_object_get(rule, "effect");
	if (v == NULL)
		return perr(c, "missing \"effect\" (\"allow\" or \"deny\")");
	effect = json_string_value(v);
	if (effect == NULL || (strcmp(effect, "allow") != 0 && strcmp(effect, "deny") != 0)) {
		push_key(c, "effect");
		perr(c, "must be \"allow\" or \"deny\"");
		pop(c);
		return -1;
	}
	r->deny = strcmp(effect, "deny") == 0;

	if (rule_list(c, rule, "principals", true, principal_item, &b, NULL) != 0 ||
	    rule_list(c, rule, "tenants", false, tenant_item, &b, &r->has_tenants) != 0 ||
	    rule_list(c, rule, "keys", false, key_item, &b, &r->has_keys) != 0 ||
	    rule_list(c, rule, "operations", true, op_item, &b, NULL) != 0)
		return -1;
	if (r->has_keys)
		c->doc->uses |= POLICY_USES_KEYS;

	if ((v = json_object_get(rule, "conditions")) != NULL) {
		int rc;
		push_key(c, "conditions");
		rc = conditions(c, v, r);
		pop(c);
		if (rc != 0)
			return -1;
	}

	if ((v = json_object_get(rule, "require_mfa")) != NULL) {
		push_key(c, "require_mfa");
		if (!json_is_boolean(v)) {
			perr(c, "must be true or false");
			pop(c);
			return -1;
		}
		if (r->deny) {
			perr(c, "only an allow rule can require MFA");
			pop(c);
			return -1;
		}
		pop(c);
		r->require_mfa = json_is_true(v);
		if (r->require_mfa)
			c->doc->uses |= POLICY_USES_REQUIRE_MFA;
	}
	if ((v = json_object_get(rule, "require_quorum")) != NULL) {
		long long n;
		push_key(c, "require_quorum");
		if (get_int(c, v, 1, POLICY_QUORUM_MAX, &n) != 0) {
			pop(c);
			return -1;
		}
		if (r->deny) {
			perr(c, "only an allow rule can require a quorum");
			pop(c);
			return -1;
		}
		pop(c);
		r->quorum = (unsigned)n;
		c->doc->uses |= POLICY_USES_QUORUM;
	}

	snprintf(reason, sizeof(reason), "policy v%lld rules[%zu] \"%s\": %s", (long long)c->doc->version,
		 idx, r->name, r->deny ? "deny" : "allow");
	if ((r->reason = pd_strdup(c->doc, reason)) == NULL)
		return pnomem(c);
	return 0;
}

static int compile_doc(struct pctx *c, const json_t *root)
{
	static const char *const fields[] = {"version", "description", "rules", NULL};
	const json_t *v, *rules;
	long long ver;
	char reason[64];
	size_t i;

	if (!json_is_object(root))
		return perr(c, "a policy document must be a JSON object");
	if (only_fields(c, root, fields) != 0)
		return -1;
	v = json_object_get(root, "version");
	if (v == NULL)
		return perr(c, "missing \"version\"");
	push_key(c, "version");
	if (get_int(c, v, 1, (1ll << 53), &ver) != 0) {
		pop(c);
		return -1;
	}
	pop(c);
	c->doc->version = ver;
	if ((v = json_object_get(root, "description")) != NULL && !json_is_string(v)) {
		push_key(c, "description");
		perr(c, "must be a string");
		pop(c);
		return -1;
	}
	rules = json_object_get(root, "rules");
	if (rules == NULL)
		return perr(c, "missing \"rules\"");
	push_key(c, "rules");
	if (!json_is_array(rules) || json_array_size(rules) == 0) {
		perr(c, "must be a non-empty array of rules");
		pop(c);
		return -1;
	}
	if (json_array_size(rules) > POLICY_DOC_MAX_RULES) {
		perr(c, "more than %d rules", POLICY_DOC_MAX_RULES);
		pop(c);
		return -1;
	}
	c->doc->rules = pd_alloc(c->doc, json_array_size(rules) * sizeof(*c->doc->rules));
	if (c->doc->rules == NULL) {
		pop(c);
		return pnomem(c);
	}
	json_array_foreach(rules, i, v) {
		int rc;
		memset(&c->doc->rules[i], 0, sizeof(c->doc->rules[i]));
		push_idx(c, i);
		rc = compile_rule(c, v, i, &c->doc->rules[i]);
		pop(c);
		if (rc != 0) {
			pop(c);
			return -1;
		}
		c->doc->n_rules++;
	}
	pop(c);
	snprintf(reason, sizeof(reason), "policy v%lld: default deny (no rule matched)", ver);
	if ((c->doc->default_reason = pd_strdup(c->doc, reason)) == NULL)
		return pnomem(c);
	return 0;
}

static kms_err finish(struct pctx *c, struct policy_doc **out)
{
	struct policy_doc_error *e = c->err;

	if (c->rc == KMS_OK) {
		*out = c->doc;
		return KMS_OK;
	}
	pd_destroy(c->doc);
	if (e->line > 0)
		return kms_errf(c->rc, "policy line %u column %u%s%s: %s", e->line, e->column,
				e->path[0] ? " at " : "", e->path, e->reason);
	if (e->path[0])
		return kms_errf(c->rc, "policy at %s: %s", e->path, e->reason);
	return kms_errf(c->rc, "policy: %s", e->reason);
}

static kms_err start(struct pctx *c, struct policy_doc_error *err, struct policy_doc_error *local)
{
	memset(c, 0, sizeof(*c));
	c->err = err != NULL ? err : local;
	memset(c->err, 0, sizeof(*c->err));
	c->doc = calloc(1, sizeof(*c->doc));
	if (c->doc == NULL) {
		snprintf(c->err->reason, sizeof(c->err->reason), "out of memory");
		return kms_errf(KMS_ERR_NOMEM, "policy: out of memory");
	}
	atomic_init(&c->doc->refs, 1);
	return KMS_OK;
}

kms_err policy_doc_from_json(const json_t *root, struct policy_doc **out, struct policy_doc_error *err)
{
	struct policy_doc_error local;
	struct pctx c;
	kms_err rc;

	*out = NULL;
	if ((rc = start(&c, err, &local)) != KMS_OK)
		return rc;
	(void)compile_doc(&c, root);
	return finish(&c, out);
}

kms_err policy_doc_parse(const char *text, size_t len, struct policy_doc **out, struct policy_doc_error *err)
{
	struct policy_doc_error local;
	struct pctx c;
	json_error_t je;
	json_t *root;
	kms_err rc;

	*out = NULL;
	if ((rc = start(&c, err, &local)) != KMS_OK)
		return rc;
	if (text == NULL || len > POLICY_DOC_MAX_BYTES) {
		c.rc = KMS_ERR_INVALID;
		snprintf(c.err->reason, sizeof(c.err->reason), "document larger than %d bytes",
			 POLICY_DOC_MAX_BYTES);
		return finish(&c, out);
	}
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (root == NULL) {
		c.rc = KMS_ERR_INVALID;
		c.err->line = je.line > 0 ? (unsigned)je.line : 0;
		c.err->column = je.column > 0 ? (unsigned)je.column : 0;
		snprintf(c.err->reason, sizeof(c.err->reason), "malformed JSON: %.140s", je.text);
		return finish(&c, out);
	}
	c.text = text;
	c.len = len;
	(void)compile_doc(&c, root);
	json_decref(root);
	return finish(&c, out);
}

kms_err policy_doc_load_file(const char *path, struct policy_doc **out, struct policy_doc_error *err)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd;
	kms_err rc;

	*out = NULL;
	if (err != NULL)
		memset(err, 0, sizeof(*err));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kms_errf(KMS_ERR_IO, "policy file %.128s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > POLICY_DOC_MAX_BYTES) {
		close(fd);
		return kms_errf(KMS_ERR_IO, "policy file %.128s: not a regular file of at most %d bytes", path,
				POLICY_DOC_MAX_BYTES);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return kms_errf(KMS_ERR_NOMEM, "policy file: out of memory");
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (got != (size_t)st.st_size) {
		free(buf);
		return kms_errf(KMS_ERR_IO, "policy file %.128s: short read", path);
	}
	rc = policy_doc_parse(buf, got, out, err);
	free(buf);
	return rc;
}

/* ------------------------------------------------------------ built-in document */

const char policy_doc_default_json[] =
	"{\n"
	"  \"version\": 1,\n"
	"  \"description\": \"built-in: admin manages with a TOTP step-up on every change, a second admin's approval for destruction, policy changes, lowering min_decryption_version and legal-hold release, and never receives key material; service uses keys and reads metadata on its scoped tenants; auditor reads within 8 hours of a TOTP check\",\n"
	"  \"rules\": [\n"
	"    {\"name\": \"health-is-public\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"*\"], \"operations\": [\"sys.health\"]},\n"
	"    {\"name\": \"lookup-own-token\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:admin\", \"role:service\", \"role:auditor\"], \"operations\": [\"token.lookup_self\"]},\n"
	"    {\"name\": \"admin-no-key-material\", \"effect\": \"deny\",\n"
	"     \"description\": \"a stolen admin token must not be enough to read PHI\",\n"
	"     \"principals\": [\"role:admin\"], \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\",\n"
	"                    \"breakglass.activate\"]},\n"
	"    {\"name\": \"admin-read\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:admin\"],\n"
	"     \"operations\": [\"tenant.read\", \"tenant.list\", \"principal.read\", \"principal.list\",\n"
	"                    \"token.lookup_accessor\", \"key.read\", \"key.list\", \"key.history\",\n"
	"                    \"key.version.receipt\", \"policy.read\", \"audit.hash\", \"sys.metrics\", \"mfa.status\",\n"
	"                    \"approval.list\", \"approval.read\", \"breakglass.list\", \"sys.compliance\",\n"
	"                    \"principal.cert.list\"]},\n"
	"    {\"name\": \"admin-own-mfa\", \"effect\": \"allow\",\n"
	"     \"description\": \"enrolling oneself; re-enrolling an active enrolment needs a current code (checked by the operation)\",\n"
	"     \"principals\": [\"role:admin\"], \"operations\": [\"mfa.enroll\", \"mfa.confirm\"]},\n"
	"    {\"name\": \"admin-two-person\", \"effect\": \"allow\",\n"
	"     \"description\": \"the two-person rule: these wait for one approval by another admin (POST /v1/sys/approvals/<id>/approve)\",\n"
	"     \"principals\": [\"role:admin\"],\n"
	"     \"operations\": [\"key.version.schedule_destroy\", \"policy.write\", \"key.config.lower_min_decryption\",\n"
	"                    \"key.legal_hold.release\", \"tenant.config.legal_hold_release\"],\n"
	"     \"require_mfa\": true, \"require_quorum\": 1},\n"
	"    {\"name\": \"admin-management\", \"effect\": \"allow\",\n"
	"     \"description\": \"every change by an admin carries X-Vault-MFA\",\n"
	"     \"principals\": [\"role:admin\"],\n"
	"     \"operations\": [\"tenant.create\", \"tenant.config\", \"principal.create\", \"token.create\",\n"
	"                    \"token.revoke\", \"key.create\", \"key.rotate\", \"key.config\", \"key.revoke\",\n"
	"                    \"key.restore\", \"key.version.disable\", \"key.version.enable\",\n"
	"                    \"key.version.schedule_destroy\", \"key.version.cancel_destroy\",\n"
	"                    \"key.version.destroy\", \"key.legal_hold\", \"key.trim\", \"policy.write\",\n"
	"                    \"sys.master_key.rotate\", \"mfa.verify\", \"mfa.unlock\", \"mfa.reset\",\n"
	"                    \"approval.approve\", \"approval.deny\", \"breakglass.review\",\n"
	"                    \"principal.cert.add\", \"principal.cert.revoke\", \"sys.backup\", \"sys.restore\"],\n"
	"     \"require_mfa\": true},\n"
	"    {\"name\": \"service-data-plane\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:service\"], \"tenants\": [\"@scope\"],\n"
	"     \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\"]},\n"
	"    {\"name\": \"service-read\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:service\"], \"tenants\": [\"@scope\"],\n"
	"     \"operations\": [\"key.read\", \"key.list\"]},\n"
	"    {\"name\": \"auditor-own-mfa\", \"effect\": \"allow\",\n"
	"     \"description\": \"an auditor enrols in TOTP and reads its own state (mfa.status names no other principal for a non-admin)\",\n"
	"     \"principals\": [\"role:auditor\"], \"operations\": [\"mfa.enroll\", \"mfa.confirm\", \"mfa.status\"]},\n"
	"    {\"name\": \"auditor-session\", \"effect\": \"allow\",\n"
	"     \"description\": \"POST /v1/sys/mfa/verify with a code starts the auditor's 8-hour session\",\n"
	"     \"principals\": [\"role:auditor\"], \"operations\": [\"mfa.verify\"], \"require_mfa\": true},\n"
	"    {\"name\": \"auditor-read\", \"effect\": \"allow\",\n"
	"     \"description\": \"audit: metadata, receipts, metrics and the policy on every tenant, within 8 hours of a TOTP check; no change, no key material\",\n"
	"     \"principals\": [\"role:auditor\"],\n"
	"     \"operations\": [\"audit.hash\", \"sys.metrics\", \"key.read\", \"key.list\", \"key.history\",\n"
	"                    \"tenant.read\", \"tenant.list\", \"key.version.receipt\", \"policy.read\",\n"
	"                    \"sys.compliance\", \"approval.list\", \"approval.read\", \"breakglass.list\"],\n"
	"     \"conditions\": {\"mfa_max_age\": 28800}}\n"
	"  ]\n"
	"}\n";

kms_err policy_doc_default(struct policy_doc **out)
{
	return policy_doc_parse(policy_doc_default_json, sizeof(policy_doc_default_json) - 1, out, NULL);
}
