/* What the audit log needs from the request path: the HMAC'd encryption context and
 * associated data of a data-plane call (docs/FORMATS.md "Audit record"), the endpoint
 * that hashes a value the same way so an investigator can search the log for it, and
 * the log's counters in /v1/sys/metrics. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/audit/audit.h"
#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/core/authcache.h"
#include "kms/core/ciphertext.h"
#include "kms/core/hmaccache.h"
#include "kms/core/core_int.h"

#define HASH_TEXT_LEN (sizeof(AUDIT_HMAC_PREFIX) - 1 + 2 * P11_HMAC_LEN)

/* "hmac-sha256:<hex>" of the bytes under the token's audit HMAC key. */
static kms_err hmac_text(struct core *c, const void *data, size_t len, char out[HASH_TEXT_LEN + 1])
{
	uint8_t mac[P11_HMAC_LEN];
	kms_err rc;

	_Static_assert(P11_HMAC_LEN == HMACCACHE_MAC_LEN, "the cache holds one audit HMAC");
	if (!hmaccache_get(c->hmacc, data, len, mac)) {
		rc = p11_hmac(c->p11, P11_MAC_AUDIT, data, len, mac);
		if (rc != KMS_OK)
			return rc;
		hmaccache_put(c->hmacc, data, len, mac);
	}
	memcpy(out, AUDIT_HMAC_PREFIX, sizeof(AUDIT_HMAC_PREFIX) - 1);
	kms_hex_encode(mac, sizeof(mac), out + sizeof(AUDIT_HMAC_PREFIX) - 1);
	return KMS_OK;
}

/* One request's hashing: values already hashed in this request are not sent to the
 * token again (batches often repeat a context), and the hashes written are counted
 * against AUDIT_EXTRA_MAX so that one request cannot make an oversized record. */
#define AUDIT_EXTRA_MAX (4u << 20) /* bytes of hashed members in one record */
#define INVALID_TEXT "invalid"	   /* in place of a value the call refuses anyway */

struct hasher {
	struct core *c;
	json_t *memo; /* value -> hash text, for values without NUL bytes */
	size_t used;  /* bytes of record the hashes and keys take so far */
};

/* A string is hashed as its UTF-8 bytes; anything else (which the operation refuses
 * anyway) as its compact JSON text, so that the record still says what was sent. A
 * value over CT_CTX_MAX_LEN bytes (refused as well) is recorded as "invalid". */
static kms_err hash_value(struct hasher *hs, const json_t *v, json_t **out)
{
	char h[HASH_TEXT_LEN + 1];
	const char *in;
	char *text = NULL;
	size_t len;
	json_t *m;
	kms_err rc;

	*out = NULL;
	if (json_is_string(v)) {
		in = json_string_value(v);
		len = json_string_length(v);
	} else {
		text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
		if (text == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit context");
		in = text;
		len = strlen(text);
	}
	if (len > CT_CTX_MAX_LEN) {
		*out = json_string(INVALID_TEXT);
		rc = *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "audit context");
		goto out;
	}
	if (strlen(in) == len && (m = json_object_get(hs->memo, in)) != NULL) {
		*out = json_incref(m);
		rc = KMS_OK;
		goto out;
	}
	rc = hmac_text(hs->c, in, len, h);
	if (rc != KMS_OK)
		goto out;
	*out = json_string(h);
	if (*out == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "audit context");
		goto out;
	}
	if (strlen(in) == len)
		(void)json_object_set(hs->memo, in, *out);
	rc = KMS_OK;
out:
	if (text != NULL)
		kms_json_free_str(text, 0); /* jansson allocated it through our allocator */
	return rc;
}

/* Sets "encryption_context" (an object of hashed values, "invalid" for one the call
 * refuses by its size, or null) and "associated_data" (a hash, or null) of one item
 * on dst. */
static kms_err hash_item(struct hasher *hs, const json_t *item, json_t *dst)
{
	const json_t *ctx = json_is_object(item) ? json_object_get(item, "encryption_context") : NULL;
	const json_t *ad = json_is_object(item) ? json_object_get(item, "associated_data") : NULL;
	json_t *hc = NULL, *hv = NULL;
	const char *k;
	json_t *v;
	kms_err rc;

	if (ctx != NULL && !json_is_null(ctx)) {
		if (json_is_object(ctx) && json_object_size(ctx) > CT_CTX_MAX_PAIRS) {
			hc = json_string(INVALID_TEXT);
			if (hc == NULL)
				return kms_errf(KMS_ERR_NOMEM, "audit context");
		} else if (json_is_object(ctx)) {
			hc = json_object();
			if (hc == NULL)
				return kms_errf(KMS_ERR_NOMEM, "audit context");
			json_object_foreach((json_t *)ctx, k, v) {
				const char *key = strlen(k) > CT_CTX_MAX_LEN ? INVALID_TEXT : k;

				if ((rc = hash_value(hs, v, &hv)) != KMS_OK) {
					json_decref(hc);
					return rc;
				}
				hs->used += strlen(key) + HASH_TEXT_LEN + 6;
				if (json_object_set_new(hc, key, hv) != 0) {
					json_decref(hc);
					return kms_errf(KMS_ERR_NOMEM, "audit context");
				}
			}
		} else if ((rc = hash_value(hs, ctx, &hc)) != KMS_OK) {
			return rc;
		}
	}
	if (json_object_set_new(dst, "encryption_context", hc ? hc : json_null()) != 0)
		return kms_errf(KMS_ERR_NOMEM, "audit context");
	hv = NULL;
	if (ad != NULL && !json_is_null(ad) && (rc = hash_value(hs, ad, &hv)) != KMS_OK)
		return rc;
	hs->used += HASH_TEXT_LEN + 64;
	if (json_object_set_new(dst, "associated_data", hv ? hv : json_null()) != 0)
		return kms_errf(KMS_ERR_NOMEM, "audit context");
	return KMS_OK;
}

kms_err core_audit_hashes(struct core *c, const json_t *body, json_t **extra)
{
	const json_t *batch = json_is_object(body) ? json_object_get(body, "batch_input") : NULL;
	struct hasher hs = {.c = c};
	json_t *e, *items = NULL, *it;
	size_t i, n;
	kms_err rc;

	*extra = NULL;
	e = json_object();
	hs.memo = json_object();
	if (e == NULL || hs.memo == NULL) {
		json_decref(e);
		json_decref(hs.memo);
		return kms_errf(KMS_ERR_NOMEM, "audit context");
	}
	if (json_is_array(batch)) {
		n = json_array_size(batch);
		rc = json_object_set_new(e, "encryption_context", json_null()) == 0 &&
				     json_object_set_new(e, "associated_data", json_null()) == 0
			     ? KMS_OK
			     : kms_errf(KMS_ERR_NOMEM, "audit context");
		/* a batch the call refuses by its size is not hashed item by item */
		if (rc == KMS_OK && (n == 0 || n > CORE_BATCH_MAX)) {
			if (json_object_set_new(e, "items", json_null()) != 0)
				rc = kms_errf(KMS_ERR_NOMEM, "audit context");
			goto done;
		}
		if (rc == KMS_OK && (items = json_array()) == NULL)
			rc = kms_errf(KMS_ERR_NOMEM, "audit context");
		for (i = 0; rc == KMS_OK && i < n && hs.used <= AUDIT_EXTRA_MAX; i++) {
			it = json_object();
			if (it == NULL || json_array_append_new(items, it) != 0) {
				rc = kms_errf(KMS_ERR_NOMEM, "audit context");
				break;
			}
			rc = hash_item(&hs, json_array_get(batch, i), it);
		}
		if (rc == KMS_OK && hs.used > AUDIT_EXTRA_MAX) {
			/* too much to record item by item: say so rather than write it */
			json_decref(items);
			items = NULL;
			if (json_object_set_new(e, "items", json_null()) != 0 ||
			    json_object_set_new(e, "items_omitted", json_string("over the audit record size limit")) != 0)
				rc = kms_errf(KMS_ERR_NOMEM, "audit context");
		} else if (rc == KMS_OK && json_object_set_new(e, "items", items) != 0) {
			rc = kms_errf(KMS_ERR_NOMEM, "audit context");
		} else if (rc != KMS_OK) {
			json_decref(items);
		}
	} else {
		rc = hash_item(&hs, body, e);
	}
done:
	json_decref(hs.memo);
	if (rc != KMS_OK) {
		json_decref(e);
		return rc;
	}
	*extra = e;
	return KMS_OK;
}

/* N of a "vault:vN:..." string, 0 for anything else. */
static uint32_t ct_version(const json_t *ct)
{
	const char *s = json_string_value(ct);
	unsigned long v;
	char *end;

	if (s == NULL || strncmp(s, "vault:v", 7) != 0 || s[7] < '1' || s[7] > '9')
		return 0;
	v = strtoul(s + 7, &end, 10);
	return *end == ':' && v <= UINT32_MAX ? (uint32_t)v : 0;
}

static int set_version(json_t *dst, const char *name, uint32_t v)
{
	return json_object_set_new(dst, name, v ? json_integer(v) : json_null());
}

kms_err core_audit_results(enum kms_op op, const json_t *body, const json_t *data, json_t *extra)
{
	const json_t *items = json_object_get(extra, "items");
	const json_t *res = json_object_get(data, "batch_results");
	const json_t *in = json_object_get(body, "batch_input");
	size_t i;

	if (op == KMS_OP_REWRAP && items == NULL &&
	    set_version(extra, "from_version", ct_version(json_object_get(body, "ciphertext"))) != 0)
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	if (!json_is_array(items))
		return KMS_OK;
	for (i = 0; i < json_array_size(items); i++) {
		json_t *it = json_array_get(items, i);
		const json_t *r = json_array_get(res, i);
		const json_t *src = json_object_get(json_array_get(in, i), "ciphertext");
		const char *err = json_string_value(json_object_get(r, "error"));
		const char *outcome = "allow";
		uint32_t v = 0;

		if (r == NULL)
			outcome = "none"; /* the batch failed as a whole */
		else if (err != NULL)
			outcome = strcmp(err, "permission denied") == 0 ? "deny" : "error";
		else if (op == KMS_OP_DECRYPT)
			v = ct_version(src);
		else
			v = ct_version(json_object_get(r, "ciphertext"));
		if (json_object_set_new(it, "outcome", json_string(outcome)) != 0 ||
		    set_version(it, "version", v) != 0 ||
		    (op == KMS_OP_REWRAP && set_version(it, "from_version", ct_version(src)) != 0))
			return kms_errf(KMS_ERR_NOMEM, "audit record");
	}
	return KMS_OK;
}

kms_err op_audit_hash(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"input", NULL};
	json_t *body = x->call->body;
	const json_t *in;
	char h[HASH_TEXT_LEN + 1];
	kms_err rc;

	if (body == NULL)
		return kms_errf(KMS_ERR_INVALID, "\"input\" (a string) is required");
	if ((rc = kms_json_only(body, allowed)) != KMS_OK)
		return rc;
	in = json_object_get(body, "input");
	if (!json_is_string(in))
		return kms_errf(KMS_ERR_INVALID, "\"input\" (a string) is required");
	rc = hmac_text(c, json_string_value(in), json_string_length(in), h);
	if (rc != KMS_OK)
		return rc;
	x->data = json_pack("{s:s}", "hash", h);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "audit hash");
}

/* Prometheus text format 0.0.4; the JSON form carries the audit figures and the
 * request counts. */
kms_err op_metrics(struct core *c, struct op_ctx *x)
{
	struct authcache_stats ac;
	struct hmaccache_stats hs;
	struct audit_stats st;
	const char *fmt = x->call->format;
	char *text = NULL;

	audit_get_stats(c->au, &st);
	if (fmt != NULL && strcmp(fmt, "prometheus") == 0) {
		kms_err rc = core_metrics_prometheus(c, &text);

		if (rc != KMS_OK)
			return rc;
		x->text = text;
		return KMS_OK;
	}
	if (fmt != NULL && strcmp(fmt, "json") != 0)
		return kms_errf(KMS_ERR_INVALID, "format must be \"prometheus\" or \"json\"");
	x->data = json_pack("{s:{s:I,s:I,s:I,s:I,s:b,s:I,s:I}}", "audit", "records_total",
			    (json_int_t)st.records, "syncs_total", (json_int_t)st.syncs,
			    "segments_rotated_total", (json_int_t)st.segments, "last_seq", (json_int_t)st.seq,
			    "healthy", st.healthy, "syslog_sent_total", (json_int_t)st.syslog_sent,
			    "syslog_dropped_total", (json_int_t)st.syslog_dropped);
	if (x->data != NULL) {
		json_t *req = json_object();

		for (int op = 1; req != NULL && op < KMS_OP__COUNT; op++) {
			uint64_t al = __atomic_load_n(&c->met.requests[op][METRICS_ALLOW], __ATOMIC_RELAXED);
			uint64_t de = __atomic_load_n(&c->met.requests[op][METRICS_DENY], __ATOMIC_RELAXED);
			uint64_t er = __atomic_load_n(&c->met.requests[op][METRICS_ERROR], __ATOMIC_RELAXED);

			if (al + de + er > 0)
				json_object_set_new(req, kms_op_name((enum kms_op)op),
						    json_pack("{s:I,s:I,s:I}", "allow", (json_int_t)al, "deny",
							      (json_int_t)de, "error", (json_int_t)er));
		}
		if (req == NULL || json_object_set_new(x->data, "requests", req) != 0)
			return kms_errf(KMS_ERR_NOMEM, "metrics");
		authcache_get_stats(c->authc, &ac);
		if (json_object_set_new(x->data, "auth_cache",
					json_pack("{s:I,s:I,s:I,s:I}", "hits_total", (json_int_t)ac.hits,
						  "misses_total", (json_int_t)ac.misses, "flushes_total",
						  (json_int_t)ac.flushes, "entries", (json_int_t)ac.entries)) != 0)
			return kms_errf(KMS_ERR_NOMEM, "metrics");
		hmaccache_get_stats(c->hmacc, &hs);
		if (json_object_set_new(x->data, "audit_hmac_cache",
					json_pack("{s:I,s:I,s:I}", "hits_total", (json_int_t)hs.hits, "misses_total",
						  (json_int_t)hs.misses, "entries", (json_int_t)hs.entries)) != 0)
			return kms_errf(KMS_ERR_NOMEM, "metrics");
	}
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "metrics");
}
