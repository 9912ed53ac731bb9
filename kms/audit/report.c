/* Audit report aggregation (contract in report.h). Rows live in a JSON object keyed by
 * the row's identity (a compact JSON array); members whose name starts with '_' are
 * working state that audit_report_rows turns into the documented members. */
#include "kms/audit/report.h"

#include <stdlib.h>
#include <string.h>

#include "kms/base/json.h"

struct audit_report {
	enum audit_report_kind kind;
	uint32_t version;
	json_t *rows;
};

bool audit_op_is_data(const char *op)
{
	static const char *const ops[] = {"datakey", "encrypt", "decrypt", "rewrap"};

	for (size_t i = 0; op != NULL && i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(op, ops[i]) == 0)
			return true;
	return false;
}

bool audit_released(const struct audit_view *r)
{
	if (r->outcome == NULL)
		return false;
	if (strcmp(r->outcome, "allow") == 0)
		return true;
	/* kms/core/ops_data.c: a batch with a failed item is answered 400 with every item's
	 * result, and recorded as an error; the other items' results did go out. */
	return r->batch > 0 && r->status == 400 && strcmp(r->outcome, "error") == 0;
}

kms_err audit_report_new(enum audit_report_kind kind, uint32_t version, struct audit_report **out)
{
	struct audit_report *rp = calloc(1, sizeof(*rp));

	*out = NULL;
	if (rp == NULL || (rp->rows = json_object()) == NULL) {
		free(rp);
		return kms_errf(KMS_ERR_NOMEM, "audit report: out of memory");
	}
	rp->kind = kind;
	rp->version = version;
	*out = rp;
	return KMS_OK;
}

void audit_report_free(struct audit_report *rp)
{
	if (rp == NULL)
		return;
	json_decref(rp->rows);
	free(rp);
}

/* ---------------------------------------------------------------- rows */

static json_t *text(const char *s)
{
	return s != NULL ? json_string(s) : json_null();
}

static json_t *row_new(const struct audit_report *rp, const struct audit_view *r)
{
	json_t *row;

	if (rp->kind == AUDIT_REPORT_ACCESS)
		row = json_pack("{s:o,s:o,s:o,s:i,s:i,s:i,s:i,s:i}", "tenant", text(r->tenant), "key",
				text(r->key), "version",
				r->version ? json_integer(r->version) : json_null(), "requests", 0,
				"items", 0, "allow", 0, "deny", 0, "error", 0);
	else
		row = json_pack("{s:o,s:i,s:i,s:i,s:i}", "principal", text(r->principal), "requests",
				0, "items", 0, "partial_batches", 0, "uncertain_batches", 0);
	if (row == NULL)
		return NULL;
	if (json_object_set_new(row, "operations", json_object()) != 0 ||
	    json_object_set_new(row, "first", json_null()) != 0 ||
	    json_object_set_new(row, "last", json_null()) != 0 ||
	    json_object_set_new(row, "_contexts", json_object()) != 0 ||
	    json_object_set_new(row, "_addrs", json_object()) != 0 ||
	    (rp->kind == AUDIT_REPORT_EXPOSURE &&
	     json_object_set_new(row, "_rids", json_object()) != 0)) {
		json_decref(row);
		return NULL;
	}
	return row;
}

/* The row for r, made on first use; NULL without memory. */
static json_t *row_for(struct audit_report *rp, const struct audit_view *r)
{
	json_t *id, *row;
	char *k;

	if (rp->kind == AUDIT_REPORT_ACCESS)
		id = json_pack("[o,o,o]", text(r->tenant), text(r->key),
			       r->version ? json_integer(r->version) : json_null());
	else
		id = json_pack("[o]", text(r->principal));
	k = id != NULL ? json_dumps(id, JSON_COMPACT) : NULL;
	json_decref(id);
	if (k == NULL)
		return NULL;
	row = json_object_get(rp->rows, k);
	if (row == NULL) {
		row = row_new(rp, r);
		if (row != NULL && json_object_set_new(rp->rows, k, row) != 0)
			row = NULL;
	}
	kms_json_free_str(k, 0);
	return row;
}

static int incr(json_t *obj, const char *name, json_int_t by)
{
	json_t *v = json_object_get(obj, name);

	if (v == NULL)
		return json_object_set_new(obj, name, json_integer(by));
	return json_integer_set(v, json_integer_value(v) + by);
}

/* Keeps the earliest and latest time seen. */
static int times(json_t *row, const struct audit_view *r)
{
	json_t *f = json_object_get(row, "_first_us"), *l = json_object_get(row, "_last_us");

	if (f == NULL || r->time_us < json_integer_value(f))
		if (json_object_set_new(row, "_first_us", json_integer(r->time_us)) != 0 ||
		    json_object_set_new(row, "first", json_string(r->time)) != 0)
			return -1;
	if (l == NULL || r->time_us >= json_integer_value(l))
		if (json_object_set_new(row, "_last_us", json_integer(r->time_us)) != 0 ||
		    json_object_set_new(row, "last", json_string(r->time)) != 0)
			return -1;
	return 0;
}

static int set_put(json_t *set, const char *k)
{
	if (k == NULL || json_object_get(set, k) != NULL)
		return 0;
	return json_object_set_new(set, k, json_true());
}

/* Adds one context object (not an empty one) to the row's set, keyed by its canonical
 * form (members sorted). */
static int ctx_put(json_t *set, const json_t *ctx)
{
	char *k;
	int rc = 0;

	if (!json_is_object(ctx) || json_object_size(ctx) == 0)
		return 0;
	k = json_dumps(ctx, JSON_COMPACT | JSON_SORT_KEYS);
	if (k == NULL)
		return -1;
	if (json_object_get(set, k) == NULL)
		rc = json_object_set_new(set, k, json_deep_copy(ctx));
	kms_json_free_str(k, 0);
	return rc;
}

static int ctx_put_cb(void *set, const json_t *ctx)
{
	return ctx_put(set, ctx) != 0 ? -1 : 0;
}

static int contexts(json_t *row, const struct audit_view *r)
{
	return audit_view_each_context(r, ctx_put_cb, json_object_get(row, "_contexts"));
}

/* requests, items (n, or the record's item count when n is 0), operations, first/last
 * and remote addresses. */
static int counts_n(json_t *row, const struct audit_view *r, json_int_t n)
{
	json_t *ops = json_object_get(row, "operations");

	if (incr(row, "requests", 1) != 0 ||
	    incr(row, "items", n > 0 ? n : r->batch ? (json_int_t)r->batch : 1) != 0 ||
	    incr(ops, r->operation ? r->operation : "-", 1) != 0 || times(row, r) != 0 ||
	    set_put(json_object_get(row, "_addrs"), r->remote_addr) != 0)
		return -1;
	return 0;
}

static int counts(json_t *row, const struct audit_view *r)
{
	return counts_n(row, r, 0);
}

static bool uses(const json_t *o, uint32_t v)
{
	json_t *a = json_object_get(o, "version"), *b = json_object_get(o, "from_version");

	return (json_is_integer(a) && json_integer_value(a) == (json_int_t)v) ||
	       (json_is_integer(b) && json_integer_value(b) == (json_int_t)v);
}

/* Newer records (docs/FORMATS.md "Audit record", items) say each batch item's outcome and key version (and a
 * rewrap's source version). Returns how many items of r used version v and were
 * answered, adding their contexts to ctxset when not NULL; -1 when r does not say
 * (an older record), -2 without memory. */
static long items_using(const struct audit_view *r, uint32_t v, json_t *ctxset)
{
	const json_t *first = json_array_get(r->items, 0);
	json_t *it;
	size_t i;
	long n = 0;

	if (!json_is_array(r->items) || json_object_get(first, "outcome") == NULL)
		return -1;
	json_array_foreach((json_t *)r->items, i, it) {
		const char *o = json_string_value(json_object_get(it, "outcome"));

		if (o == NULL || strcmp(o, "allow") != 0 || !uses(it, v))
			continue;
		n++;
		if (ctxset != NULL && ctx_put(ctxset, json_object_get(it, "encryption_context")) != 0)
			return -2;
	}
	return n;
}

kms_err audit_report_add(struct audit_report *rp, const struct audit_view *r)
{
	bool released = audit_released(r);
	json_t *row;
	long n;
	int bad;

	if (rp->kind == AUDIT_REPORT_EXPOSURE && audit_op_is_data(r->operation) &&
	    (n = items_using(r, rp->version, NULL)) >= 0) {
		/* per-item versions: exactly the items that used this version */
		if (n == 0)
			return KMS_OK;
		row = row_for(rp, r);
		if (row == NULL || counts_n(row, r, n) != 0 ||
		    set_put(json_object_get(row, "_rids"), r->request_id) != 0 ||
		    items_using(r, rp->version, json_object_get(row, "_contexts")) < 0)
			goto oom;
		return KMS_OK;
	}
	if (rp->kind == AUDIT_REPORT_EXPOSURE && r->batch == 0 && released &&
	    audit_op_is_data(r->operation) && r->version != rp->version && uses(r->v, rp->version)) {
		/* a single rewrap from this version (its record's version is the target) */
		row = row_for(rp, r);
		if (row == NULL || counts(row, r) != 0 ||
		    set_put(json_object_get(row, "_rids"), r->request_id) != 0 || contexts(row, r) != 0)
			goto oom;
		return KMS_OK;
	}
	if (rp->kind == AUDIT_REPORT_EXPOSURE) {
		/* version 0: no item of the request succeeded, nothing went out */
		if (!audit_op_is_data(r->operation) || !released || r->version == 0)
			return KMS_OK;
		if (r->version != rp->version && r->batch == 0)
			return KMS_OK;
	}
	row = row_for(rp, r);
	if (row == NULL)
		goto oom;
	if (rp->kind == AUDIT_REPORT_ACCESS) {
		const char *o = r->outcome;

		bad = counts(row, r) != 0 ||
		      incr(row, o && strcmp(o, "allow") == 0 ? "allow" :
				o && strcmp(o, "deny") == 0    ? "deny" :
								 "error",
			   1) != 0 ||
		      (released && contexts(row, r) != 0);
	} else if (r->version != rp->version) {
		bad = incr(row, "uncertain_batches", 1) != 0;
	} else {
		bad = counts(row, r) != 0 ||
		      (strcmp(r->outcome, "allow") != 0 && incr(row, "partial_batches", 1) != 0) ||
		      set_put(json_object_get(row, "_rids"), r->request_id) != 0 ||
		      contexts(row, r) != 0;
	}
	if (!bad)
		return KMS_OK;
oom:
	return kms_errf(KMS_ERR_NOMEM, "audit report: out of memory");
}

/* ---------------------------------------------------------------- output */

static int str_cmp(const json_t *a, const json_t *b)
{
	const char *x = json_string_value(a), *y = json_string_value(b);

	if (x == NULL || y == NULL)
		return (x != NULL) - (y != NULL); /* null first */
	return strcmp(x, y);
}

static int row_cmp(const void *pa, const void *pb)
{
	const json_t *a = *(const json_t *const *)pa, *b = *(const json_t *const *)pb;
	json_int_t va, vb;
	int c;

	if (json_object_get(a, "principal") != NULL)
		return str_cmp(json_object_get(a, "principal"), json_object_get(b, "principal"));
	if ((c = str_cmp(json_object_get(a, "tenant"), json_object_get(b, "tenant"))) != 0 ||
	    (c = str_cmp(json_object_get(a, "key"), json_object_get(b, "key"))) != 0)
		return c;
	va = json_integer_value(json_object_get(a, "version")); /* 0 for null: first */
	vb = json_integer_value(json_object_get(b, "version"));
	return (va > vb) - (va < vb);
}

static int by_str(const void *pa, const void *pb)
{
	return str_cmp(*(const json_t *const *)pa, *(const json_t *const *)pb);
}

/* The keys of a set, sorted, as an array of strings (want_objects: its values). */
static json_t *sorted_members(const json_t *set, bool want_values)
{
	size_t n = json_object_size(set), i = 0;
	json_t **keys = calloc(n ? n : 1, sizeof(*keys)), *arr = json_array(), *v;
	const char *k;
	bool ok = keys != NULL && arr != NULL;

	json_object_foreach((json_t *)set, k, v) {
		if (ok)
			keys[i] = json_string(k);
		ok = ok && keys[i++] != NULL;
	}
	if (ok)
		qsort(keys, n, sizeof(*keys), by_str);
	for (i = 0; ok && i < n; i++)
		ok = json_array_append(arr, want_values
						   ? json_object_get(set, json_string_value(keys[i]))
						   : keys[i]) == 0;
	for (i = 0; keys != NULL && i < n; i++)
		json_decref(keys[i]);
	free(keys);
	if (!ok) {
		json_decref(arr);
		return NULL;
	}
	return arr;
}

/* A copy of an internal row with the documented members. */
static json_t *row_out(const json_t *row)
{
	json_t *o = json_object(), *v, *ctx, *addrs = NULL;
	const json_t *rids;
	const char *k;
	bool ok = o != NULL;

	json_object_foreach((json_t *)row, k, v)
		if (ok && k[0] != '_')
			ok = json_object_set(o, k, v) == 0;
	ctx = sorted_members(json_object_get(row, "_contexts"), true);
	ok = ok && ctx != NULL &&
	     json_object_set_new(o, "context_count", json_integer((json_int_t)json_array_size(ctx))) == 0 &&
	     json_object_set(o, "contexts", ctx) == 0;
	json_decref(ctx);
	addrs = ok ? sorted_members(json_object_get(row, "_addrs"), false) : NULL;
	ok = ok && addrs != NULL && json_object_set(o, "remote_addrs", addrs) == 0;
	json_decref(addrs);
	rids = json_object_get(row, "_rids");
	if (ok && rids != NULL)
		ok = json_object_set_new(o, "request_ids",
					 json_integer((json_int_t)json_object_size(rids))) == 0;
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

json_t *audit_report_rows(const struct audit_report *rp)
{
	size_t n = json_object_size(rp->rows), i = 0;
	json_t **v = calloc(n ? n : 1, sizeof(*v)), *arr = json_array(), *row;
	const char *k;
	bool ok = v != NULL && arr != NULL;

	json_object_foreach(rp->rows, k, row) {
		if (ok)
			v[i] = row_out(row);
		ok = ok && v[i++] != NULL;
	}
	if (ok)
		qsort(v, n, sizeof(*v), row_cmp);
	for (i = 0; ok && i < n; i++)
		ok = json_array_append(arr, v[i]) == 0;
	for (i = 0; v != NULL && i < n; i++)
		json_decref(v[i]);
	free(v);
	if (!ok) {
		json_decref(arr);
		return NULL;
	}
	return arr;
}
