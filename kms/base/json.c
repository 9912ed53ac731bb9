#include "kms/base/json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/secret.h"

/* jansson's free() is not told the size, so each block carries it in a header. */
struct json_blk {
	size_t n;
	max_align_t align[];
};

static void *json_zalloc(size_t n)
{
	struct json_blk *b = malloc(sizeof(*b) + n);

	if (b == NULL)
		return NULL;
	b->n = n;
	return b->align;
}

static void json_zfree(void *p)
{
	struct json_blk *b;

	if (p == NULL)
		return;
	b = (struct json_blk *)((char *)p - offsetof(struct json_blk, align));
	kms_wipe(p, b->n);
	free(b);
}

void kms_json_init(void)
{
	json_set_alloc_funcs(json_zalloc, json_zfree);
}

static json_t *fast_parse_object(const char *buf, size_t len);

json_t *kms_json_parse_object(const char *buf, size_t len, kms_err *err)
{
	json_error_t je;
	json_t *v;

	v = fast_parse_object(buf, len);
	if (v != NULL) {
		*err = KMS_OK;
		return v;
	}
	v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (v == NULL) {
		*err = kms_errf(KMS_ERR_INVALID, "malformed JSON at line %d column %d: %s", je.line,
				je.column, je.text);
		return NULL;
	}
	if (!json_is_object(v)) {
		json_decref(v);
		*err = kms_errf(KMS_ERR_INVALID, "request body must be a JSON object");
		return NULL;
	}
	*err = KMS_OK;
	return v;
}

kms_err kms_json_only(json_t *obj, const char *const *allowed)
{
	const char *k;
	json_t *v;

	json_object_foreach(obj, k, v) {
		const char *const *a;
		(void)v;
		for (a = allowed; *a != NULL; a++)
			if (strcmp(*a, k) == 0)
				break;
		if (*a == NULL)
			return kms_errf(KMS_ERR_INVALID, "unknown field \"%.64s\"", k);
	}
	return KMS_OK;
}

kms_err kms_json_opt_string(json_t *obj, const char *name, const char **out)
{
	json_t *v = json_object_get(obj, name);

	*out = NULL;
	if (v == NULL || json_is_null(v))
		return KMS_OK;
	if (!json_is_string(v))
		return kms_errf(KMS_ERR_INVALID, "\"%s\" must be a string", name);
	*out = json_string_value(v);
	return KMS_OK;
}

kms_err kms_json_opt_uint(json_t *obj, const char *name, long long dflt, long long max,
			  long long *out)
{
	json_t *v = json_object_get(obj, name);
	long long x;

	if (v == NULL || json_is_null(v)) {
		*out = dflt;
		return KMS_OK;
	}
	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;
		/* strtoll would also skip leading whitespace (any of " \t\n\v\f\r") and
		 * take a sign: only plain decimal digits are a number here. */
		if (*s < '0' || *s > '9')
			return kms_errf(KMS_ERR_INVALID, "\"%s\" must be a non-negative integer", name);
		errno = 0;
		x = strtoll(s, &end, 10);
		if (errno != 0 || *end != '\0')
			return kms_errf(KMS_ERR_INVALID, "\"%s\" must be a non-negative integer", name);
	} else {
		return kms_errf(KMS_ERR_INVALID, "\"%s\" must be a non-negative integer", name);
	}
	if (x < 0 || x > max)
		return kms_errf(KMS_ERR_INVALID, "\"%s\" must be between 0 and %lld", name, max);
	*out = x;
	return KMS_OK;
}

kms_err kms_json_opt_bool(json_t *obj, const char *name, int dflt, int *out)
{
	json_t *v = json_object_get(obj, name);

	if (v == NULL || json_is_null(v)) {
		*out = dflt;
		return KMS_OK;
	}
	if (json_is_boolean(v)) {
		*out = json_is_true(v);
		return KMS_OK;
	}
	if (json_is_string(v) && strcmp(json_string_value(v), "true") == 0) {
		*out = 1;
		return KMS_OK;
	}
	if (json_is_string(v) && strcmp(json_string_value(v), "false") == 0) {
		*out = 0;
		return KMS_OK;
	}
	return kms_errf(KMS_ERR_INVALID, "\"%s\" must be a boolean", name);
}

char *kms_json_dump(const json_t *v, size_t *len)
{
	char stack[2048];
	struct kms_jw w;
	size_t n;
	char *s;

	/* The text may hold key material: the stack copy is wiped, and a text too long for
	 * it is written a second time straight into a block of the exact size rather than
	 * into a grown (reallocated, unwiped) one. */
	kms_jw_init(&w, stack, sizeof(stack), false);
	kms_jw_value(&w, v);
	n = w.len;
	if (!w.ok || (s = json_zalloc(n + 1)) == NULL) {
		kms_wipe(stack, n < sizeof(stack) ? n : sizeof(stack));
		return NULL;
	}
	if (n <= sizeof(stack)) {
		memcpy(s, stack, n);
		kms_wipe(stack, n);
	} else {
		kms_wipe(stack, sizeof(stack));
		kms_jw_init(&w, s, n, false);
		kms_jw_value(&w, v);
		if (!w.ok || w.len != n) {
			json_zfree(s);
			return NULL;
		}
	}
	s[n] = '\0';
	if (len != NULL)
		*len = n;
	return s;
}

/* ---------------------------------------------------------------- writer */

void kms_jw_init(struct kms_jw *w, char *buf, size_t cap, bool ascii)
{
	w->buf = buf;
	w->cap = buf != NULL ? cap : 0;
	w->len = 0;
	w->ascii = ascii;
	w->ok = true;
}

void kms_jw_raw(struct kms_jw *w, const char *s, size_t n)
{
	if (n <= w->cap && w->len <= w->cap - n)
		memcpy(w->buf + w->len, s, n);
	w->len += n;
}

static void jw_byte(struct kms_jw *w, char c)
{
	if (w->len < w->cap)
		w->buf[w->len] = c;
	w->len++;
}

/* The code point of the UTF-8 sequence at s (n bytes left) and its length, or 0 for
 * an invalid one: the rules of jansson's utf8 check (no overlong forms, no surrogates,
 * nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned c = s[0];
	size_t len, i;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c < 0xC2)
		return 0;
	if (c < 0xE0) {
		len = 2;
		v = c & 0x1F;
	} else if (c < 0xF0) {
		len = 3;
		v = c & 0x0F;
	} else if (c < 0xF5) {
		len = 4;
		v = c & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3F);
	}
	if ((len == 3 && v < 0x800) || (len == 4 && v < 0x10000) || v > 0x10FFFF ||
	    (v >= 0xD800 && v <= 0xDFFF))
		return 0;
	*cp = v;
	return len;
}

static void jw_u16(struct kms_jw *w, uint32_t u)
{
	static const char hex[] = "0123456789ABCDEF";
	char e[6] = {'\\', 'u', hex[(u >> 12) & 15], hex[(u >> 8) & 15], hex[(u >> 4) & 15], hex[u & 15]};

	kms_jw_raw(w, e, sizeof(e));
}

/* Bytes a JSON string may hold as they are: printable ASCII but '"' and '\\' (and DEL,
 * which jansson leaves alone too). */
#define P16 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
static const uint8_t plain_tab[256] = {
	[0x20] = 1, 1, 0 /* " */, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	[0x30] = P16, P16,
	[0x50] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0 /* \\ */, 1, 1, 1,
	[0x60] = P16, P16,
};
#undef P16

static inline bool plain(unsigned char c)
{
	return plain_tab[c] != 0;
}

static void jw_str_mask(struct kms_jw *w, const char *s, size_t n, bool mask)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	jw_byte(w, '"');
	while (p < end) {
		const unsigned char *run = p;
		uint32_t cp;
		size_t l;

		while (p < end && plain(*p))
			p++;
		if (p > run)
			kms_jw_raw(w, (const char *)run, (size_t)(p - run));
		if (p == end)
			break;
		if (*p >= 0x80 && mask) {
			jw_byte(w, '?');
			p++;
			continue;
		}
		l = utf8_seq(p, (size_t)(end - p), &cp);
		if (l == 0) {
			w->ok = false;
			return;
		}
		switch (cp) {
		case '"': kms_jw_raw(w, "\\\"", 2); break;
		case '\\': kms_jw_raw(w, "\\\\", 2); break;
		case '\b': kms_jw_raw(w, "\\b", 2); break;
		case '\f': kms_jw_raw(w, "\\f", 2); break;
		case '\n': kms_jw_raw(w, "\\n", 2); break;
		case '\r': kms_jw_raw(w, "\\r", 2); break;
		case '\t': kms_jw_raw(w, "\\t", 2); break;
		default:
			if (cp < 0x20) {
				jw_u16(w, cp);
			} else if (!w->ascii) {
				kms_jw_raw(w, (const char *)p, l);
			} else if (cp < 0x10000) {
				jw_u16(w, cp);
			} else {
				jw_u16(w, 0xD800 | ((cp - 0x10000) >> 10));
				jw_u16(w, 0xDC00 | ((cp - 0x10000) & 0x3FF));
			}
		}
		p += l;
	}
	jw_byte(w, '"');
}

void kms_jw_str(struct kms_jw *w, const char *s, size_t n)
{
	jw_str_mask(w, s, n, false);
}

static bool utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, l;
	uint32_t cp;

	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		l = utf8_seq(p + i, n - i, &cp);
		if (l == 0)
			return false;
		i += l;
	}
	return true;
}

void kms_jw_text(struct kms_jw *w, const char *s)
{
	size_t n;

	if (s == NULL) {
		kms_jw_raw(w, "null", 4);
		return;
	}
	n = strlen(s);
	jw_str_mask(w, s, n, !utf8_valid(s, n));
}

void kms_jw_int(struct kms_jw *w, long long v)
{
	char d[24], *p = d + sizeof(d);
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		*--p = '-';
	kms_jw_raw(w, p, (size_t)(d + sizeof(d) - p));
}

void kms_jw_value(struct kms_jw *w, const json_t *v)
{
	if (v == NULL) {
		w->ok = false;
		return;
	}
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		void *it = json_object_iter((json_t *)v);
		bool first = true;

		jw_byte(w, '{');
		for (; it != NULL && w->ok; it = json_object_iter_next((json_t *)v, it)) {
			if (!first)
				jw_byte(w, ',');
			first = false;
			kms_jw_str(w, json_object_iter_key(it), json_object_iter_key_len(it));
			jw_byte(w, ':');
			kms_jw_value(w, json_object_iter_value(it));
		}
		jw_byte(w, '}');
		break;
	}
	case JSON_ARRAY: {
		size_t i, n = json_array_size(v);

		jw_byte(w, '[');
		for (i = 0; i < n && w->ok; i++) {
			if (i > 0)
				jw_byte(w, ',');
			kms_jw_value(w, json_array_get(v, i));
		}
		jw_byte(w, ']');
		break;
	}
	case JSON_STRING:
		kms_jw_str(w, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		kms_jw_int(w, (long long)json_integer_value(v));
		break;
	case JSON_TRUE:
		kms_jw_raw(w, "true", 4);
		break;
	case JSON_FALSE:
		kms_jw_raw(w, "false", 5);
		break;
	case JSON_NULL:
		kms_jw_raw(w, "null", 4);
		break;
	default: {
		/* a real: jansson's own text for it (precision, ".0", exponent form) */
		char t[64];
		size_t n = json_dumpb(v, t, sizeof(t), JSON_COMPACT | JSON_ENCODE_ANY |
						       (w->ascii ? JSON_ENSURE_ASCII : 0));
		if (n == 0 || n > sizeof(t))
			w->ok = false;
		else
			kms_jw_raw(w, t, n);
	}
	}
}

void kms_json_free_str(char *s, size_t len)
{
	if (s == NULL)
		return;
	/* json_dumps allocated through our allocator, so json_zfree wipes it whole. */
	(void)len;
	json_zfree(s);
}

json_t *kms_json_text(const char *s)
{
	json_t *v;
	char *copy;
	size_t n;

	if (s == NULL)
		return json_null();
	v = json_string(s);
	if (v != NULL)
		return v;
	/* json_string refuses invalid UTF-8: keep ASCII, mask the rest */
	n = strlen(s);
	copy = malloc(n + 1);
	if (copy == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
	copy[n] = '\0';
	v = json_string(copy);
	free(copy);
	return v;
}

/* ---------------------------------------------------------------- fast parser */

/* Request bodies are small objects of plain strings and integers, which jansson's
 * parser reads at about 170 instructions a byte. This one reads only that common shape
 * and builds the very value json_loadb(JSON_REJECT_DUPLICATES) would: an object of
 * objects, arrays, strings without escapes (UTF-8 checked by jansson's rules), integers
 * without fraction or exponent of at most 18 digits, true, false, null. On anything else
 * (an escape, a real, a duplicate key, deep nesting, any syntax error) it gives up and
 * returns NULL, and jansson parses the body (and words the error) as before. */
struct fp {
	const unsigned char *p, *end;
	unsigned depth;
};

#define FP_MAX_DEPTH 16

static void fp_ws(struct fp *f)
{
	while (f->p < f->end && (*f->p == ' ' || *f->p == '\t' || *f->p == '\n' || *f->p == '\r'))
		f->p++;
}

static json_t *fp_value(struct fp *f);

/* A string at f->p (its opening quote); *n its length; NULL to give up. */
static const char *fp_string(struct fp *f, size_t *n)
{
	const unsigned char *start;
	uint32_t cp;

	if (f->p >= f->end || *f->p != '"')
		return NULL;
	start = ++f->p;
	while (f->p < f->end) {
		unsigned char c = *f->p;
		if (c == '"') {
			*n = (size_t)(f->p - start);
			f->p++;
			return (const char *)start;
		}
		if (c < 0x20 || c == '\\')
			return NULL;
		if (c < 0x80) {
			f->p++;
		} else {
			size_t l = utf8_seq(f->p, (size_t)(f->end - f->p), &cp);
			if (l == 0)
				return NULL;
			f->p += l;
		}
	}
	return NULL;
}

static json_t *fp_number(struct fp *f)
{
	bool neg = false;
	long long v = 0;
	unsigned digits = 0;

	if (*f->p == '-') {
		neg = true;
		f->p++;
	}
	if (f->p >= f->end || *f->p < '0' || *f->p > '9')
		return NULL;
	if (*f->p == '0') {
		f->p++;
		digits = 1;
		if (f->p < f->end && *f->p >= '0' && *f->p <= '9')
			return NULL;
	} else {
		while (f->p < f->end && *f->p >= '0' && *f->p <= '9') {
			if (++digits > 18)
				return NULL;
			v = v * 10 + (*f->p - '0');
			f->p++;
		}
	}
	if (f->p < f->end && (*f->p == '.' || *f->p == 'e' || *f->p == 'E'))
		return NULL;
	return json_integer(neg ? -v : v);
}

static bool fp_lit(struct fp *f, const char *word, size_t n)
{
	if ((size_t)(f->end - f->p) < n || memcmp(f->p, word, n) != 0)
		return false;
	f->p += n;
	/* "truex" is an error for jansson: leave it to it */
	return f->p >= f->end || !((*f->p >= 'a' && *f->p <= 'z') || (*f->p >= 'A' && *f->p <= 'Z') ||
				   (*f->p >= '0' && *f->p <= '9') || *f->p == '_');
}

static json_t *fp_object(struct fp *f)
{
	json_t *o = json_object();

	if (o == NULL)
		return NULL;
	f->p++; /* '{' */
	fp_ws(f);
	if (f->p < f->end && *f->p == '}') {
		f->p++;
		return o;
	}
	for (;;) {
		const char *k;
		size_t kl;
		json_t *v;

		fp_ws(f);
		k = fp_string(f, &kl);
		if (k == NULL || json_object_getn(o, k, kl) != NULL)
			goto fail;
		fp_ws(f);
		if (f->p >= f->end || *f->p != ':')
			goto fail;
		f->p++;
		v = fp_value(f);
		if (v == NULL || json_object_setn_new_nocheck(o, k, kl, v) != 0)
			goto fail;
		fp_ws(f);
		if (f->p < f->end && *f->p == ',') {
			f->p++;
			continue;
		}
		if (f->p < f->end && *f->p == '}') {
			f->p++;
			return o;
		}
		goto fail;
	}
fail:
	json_decref(o);
	return NULL;
}

static json_t *fp_array(struct fp *f)
{
	json_t *a = json_array();

	if (a == NULL)
		return NULL;
	f->p++; /* '[' */
	fp_ws(f);
	if (f->p < f->end && *f->p == ']') {
		f->p++;
		return a;
	}
	for (;;) {
		json_t *v = fp_value(f);

		if (v == NULL || json_array_append_new(a, v) != 0)
			goto fail;
		fp_ws(f);
		if (f->p < f->end && *f->p == ',') {
			f->p++;
			continue;
		}
		if (f->p < f->end && *f->p == ']') {
			f->p++;
			return a;
		}
		goto fail;
	}
fail:
	json_decref(a);
	return NULL;
}

static json_t *fp_value(struct fp *f)
{
	json_t *v = NULL;

	fp_ws(f);
	if (f->p >= f->end)
		return NULL;
	switch (*f->p) {
	case '{':
	case '[':
		if (f->depth >= FP_MAX_DEPTH)
			return NULL;
		f->depth++;
		v = *f->p == '{' ? fp_object(f) : fp_array(f);
		f->depth--;
		return v;
	case '"': {
		size_t n;
		const char *s = fp_string(f, &n);
		return s != NULL ? json_stringn_nocheck(s, n) : NULL;
	}
	case 't':
		return fp_lit(f, "true", 4) ? json_true() : NULL;
	case 'f':
		return fp_lit(f, "false", 5) ? json_false() : NULL;
	case 'n':
		return fp_lit(f, "null", 4) ? json_null() : NULL;
	default:
		if (*f->p == '-' || (*f->p >= '0' && *f->p <= '9'))
			return fp_number(f);
		return NULL;
	}
}

static json_t *fast_parse_object(const char *buf, size_t len)
{
	struct fp f = {(const unsigned char *)buf, (const unsigned char *)buf + len, 0};
	json_t *v;

	if (buf == NULL)
		return NULL;
	fp_ws(&f);
	if (f.p >= f.end || *f.p != '{')
		return NULL;
	v = fp_value(&f);
	if (v == NULL)
		return NULL;
	fp_ws(&f);
	if (f.p != f.end) {
		json_decref(v);
		return NULL;
	}
	return v;
}
