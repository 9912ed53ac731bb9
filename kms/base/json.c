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

json_t *kms_json_parse_object(const char *buf, size_t len, kms_err *err)
{
	json_error_t je;
	json_t *v;

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
	char *s = json_dumps(v, JSON_COMPACT);

	if (s != NULL && len != NULL)
		*len = strlen(s);
	return s;
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
