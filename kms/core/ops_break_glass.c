/* Break-glass (docs/API.md "Break-glass"): a principal the policy allows
 * breakglass.activate may take a time-limited grant, with a mandatory reason, scoped to
 * one tenant and a key glob. While it lasts, a decrypt or rewrap that the policy refuses
 * to that principal is allowed instead (core.c asks core_breakglass_grant), audited with
 * the grant's id and break_glass: true. The grant itself is audited as an alert (syslog
 * severity 1), counted in metrics, listed, and reviewed afterwards by admins other than
 * the grantee. Expiry is checked on every use against the clock: nothing to revoke. */
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/core/core_int.h"

#define DEFAULT_MAX_TTL 3600
#define DEFAULT_REVIEWS 2
#define GRANT_LIST_MAX 1000

void core_breakglass_init(struct core *c)
{
	int64_t until = 0;

	if (store_grant_max_expiry(c->st, &until) != KMS_OK)
		until = INT64_MAX; /* unknown: look every grant up rather than miss one */
	__atomic_store_n(&c->bg_until, until, __ATOMIC_RELEASE);
}

bool core_breakglass_grant(struct core *c, struct op_ctx *x)
{
	struct store_grant g;
	int64_t now = core_now();

	x->bg_grant[0] = '\0';
	if (now >= __atomic_load_n(&c->bg_until, __ATOMIC_ACQUIRE) || !x->have_tenant || x->call->key == NULL ||
	    x->who.id <= 0 || x->call->approved != NULL)
		return false;
	if (store_grant_active(c->st, x->who.id, x->tenant.name, x->call->key, now, &g) != KMS_OK)
		return false;
	snprintf(x->bg_grant, sizeof(x->bg_grant), "%s", g.id);
	return true;
}

/* A key pattern for a grant: a name or a glob of name characters, '*' and '?'. */
static bool valid_key_glob(const char *s)
{
	size_t n = 0;

	for (; s[n]; n++)
		if (n >= STORE_NAME_MAX ||
		    !((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9') ||
		      s[n] == '_' || s[n] == '-' || s[n] == '.' || s[n] == '*' || s[n] == '?'))
			return false;
	return n > 0;
}

static bool blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
			return false;
	return true;
}

kms_err op_breakglass_activate(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"reason", "tenant", "key", "ttl", NULL};
	int64_t max_ttl = c->opt.break_glass_max_ttl > 0 ? c->opt.break_glass_max_ttl : DEFAULT_MAX_TTL;
	json_t *body = x->call->body;
	const char *reason = NULL, *tenant = NULL, *key = NULL;
	struct store_tenant t;
	struct store_grant g = {0};
	uint8_t r[STORE_APPROVAL_ID_LEN / 2];
	long long ttl;
	int64_t until;
	kms_err rc;

	if (body == NULL)
		return kms_errf(KMS_ERR_INVALID, "a body with \"reason\" and \"tenant\" is required");
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "reason", &reason)) != KMS_OK ||
	    (rc = kms_json_opt_string(body, "tenant", &tenant)) != KMS_OK ||
	    (rc = kms_json_opt_string(body, "key", &key)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "ttl", max_ttl, INT32_MAX, &ttl)) != KMS_OK)
		return rc;
	if (reason == NULL || blank(reason))
		return kms_errf(KMS_ERR_INVALID, "\"reason\" is required and must not be empty: it is reviewed afterwards");
	if (strlen(reason) > STORE_NOTE_MAX)
		return kms_errf(KMS_ERR_INVALID, "\"reason\" is longer than %d bytes", STORE_NOTE_MAX);
	if (tenant == NULL)
		return kms_errf(KMS_ERR_INVALID, "\"tenant\" is required: a grant covers one tenant");
	if (key == NULL)
		key = "*";
	if (!valid_key_glob(key))
		return kms_errf(KMS_ERR_INVALID, "\"key\" must be a key name or a glob of name characters, '*' and '?'");
	if (ttl < 1 || ttl > max_ttl)
		return kms_errf(KMS_ERR_INVALID, "\"ttl\" must be 1..%lld seconds (break_glass_max_ttl)", (long long)max_ttl);
	if ((rc = core_tenant_lookup(c, tenant, &t)) != KMS_OK)
		return rc;
	if (RAND_bytes(r, sizeof(r)) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "no random bytes for an id");
	kms_hex_encode(r, sizeof(r), g.id);
	g.principal_id = x->who.id;
	snprintf(g.principal, sizeof(g.principal), "%s", x->who.name);
	snprintf(g.reason, sizeof(g.reason), "%s", reason);
	snprintf(g.tenant, sizeof(g.tenant), "%s", t.name);
	snprintf(g.key, sizeof(g.key), "%s", key);
	g.granted = core_now();
	g.expires = g.granted + ttl;
	/* Recorded as an alert before it can be used: the audit record of this call (made
	 * durable by core_call before the answer leaves) carries these members. */
	x->audit_more = json_pack("{s:b,s:s,s:b,s:s,s:s,s:s,s:I}", "alert", 1, "severity", "alert", "break_glass", 1,
				  "break_glass_grant", g.id, "grant_tenant", g.tenant, "grant_key", g.key, "grant_expires",
				  (json_int_t)g.expires);
	if (x->audit_more == NULL)
		return kms_errf(KMS_ERR_NOMEM, "break-glass");
	if ((rc = store_grant_create(c->st, &g)) != KMS_OK)
		return rc;
	do {
		until = __atomic_load_n(&c->bg_until, __ATOMIC_ACQUIRE);
	} while (until < g.expires &&
		 !__atomic_compare_exchange_n(&c->bg_until, &until, g.expires, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
	__atomic_add_fetch(&c->met.break_glass_activations, 1, __ATOMIC_RELAXED);
	kms_warn("break-glass grant %s to %s on %s/%s until %lld: %s", g.id, g.principal, g.tenant, g.key,
		 (long long)g.expires, "see GET /v1/sys/break-glass; it needs review");
	x->data = json_pack("{s:s,s:o,s:o,s:s,s:s,s:I,s:I,s:I}", "id", g.id, "principal", kms_json_text(g.principal),
			    "reason", kms_json_text(g.reason), "tenant", g.tenant, "key", g.key, "granted",
			    (json_int_t)g.granted, "expires", (json_int_t)g.expires, "ttl", (json_int_t)ttl);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "break-glass");
}

static json_t *grant_json(struct core *c, const struct store_grant *g, const struct store_review *rv, size_t nr,
			  int64_t now)
{
	unsigned need = c->opt.break_glass_reviews > 0 ? c->opt.break_glass_reviews : DEFAULT_REVIEWS;
	json_t *o, *reviews = json_array();
	size_t n = 0;

	for (size_t i = 0; i < nr; i++) {
		if (strcmp(rv[i].grant_id, g->id) != 0)
			continue;
		json_array_append_new(reviews, json_pack("{s:o,s:s,s:o,s:I}", "principal", kms_json_text(rv[i].principal),
							 "verdict", rv[i].verdict, "note", kms_json_text(rv[i].note),
							 "time", (json_int_t)rv[i].time));
		n++;
	}
	o = json_pack("{s:s,s:o,s:o,s:s,s:s,s:I,s:I,s:b,s:o,s:i,s:b}", "id", g->id, "principal",
		      kms_json_text(g->principal), "reason", kms_json_text(g->reason), "tenant", g->tenant, "key",
		      g->key, "granted", (json_int_t)g->granted, "expires", (json_int_t)g->expires, "active",
		      g->granted <= now && now < g->expires, "reviews", reviews, "reviews_required", (int)need,
		      "reviewed", n >= need);
	return o;
}

kms_err op_breakglass_list(struct core *c, struct op_ctx *x)
{
	struct store_grant *gs = NULL;
	struct store_review *rv = NULL;
	size_t ng = 0, nr = 0;
	int64_t now = core_now();
	json_t *list, *keys;
	kms_err rc;

	if ((rc = store_grant_list(c->st, GRANT_LIST_MAX, &gs, &ng)) != KMS_OK)
		return rc;
	if ((rc = store_review_list(c->st, NULL, &rv, &nr)) != KMS_OK) {
		free(gs);
		return rc;
	}
	list = json_array();
	keys = json_array();
	for (size_t i = 0; i < ng; i++) {
		json_array_append_new(keys, json_string(gs[i].id));
		json_array_append_new(list, grant_json(c, &gs[i], rv, nr, now));
	}
	free(gs);
	free(rv);
	x->data = json_pack("{s:o,s:o}", "keys", keys, "grants", list);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "break-glass list");
}

kms_err op_breakglass_review(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"verdict", "note", NULL};
	json_t *body = x->call->body;
	const char *id = x->call->name, *verdict = NULL, *note = NULL;
	struct store_review r = {0};
	struct store_grant *gs = NULL;
	struct store_review *rv = NULL;
	size_t ng = 0, nr = 0;
	kms_err rc;

	if (body == NULL)
		return kms_errf(KMS_ERR_INVALID, "a body with \"verdict\" and \"note\" is required");
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "verdict", &verdict)) != KMS_OK ||
	    (rc = kms_json_opt_string(body, "note", &note)) != KMS_OK)
		return rc;
	if (verdict == NULL || (strcmp(verdict, "justified") != 0 && strcmp(verdict, "unjustified") != 0))
		return kms_errf(KMS_ERR_INVALID, "\"verdict\" must be \"justified\" or \"unjustified\"");
	if (note == NULL || blank(note))
		return kms_errf(KMS_ERR_INVALID, "\"note\" is required and must not be empty");
	if (strlen(note) > STORE_NOTE_MAX)
		return kms_errf(KMS_ERR_INVALID, "\"note\" is longer than %d bytes", STORE_NOTE_MAX);
	if (id == NULL || strlen(id) != STORE_APPROVAL_ID_LEN || strspn(id, "0123456789abcdef") != STORE_APPROVAL_ID_LEN)
		return kms_errf(KMS_ERR_NOT_FOUND, "break-glass grant not found");
	snprintf(r.grant_id, sizeof(r.grant_id), "%s", id);
	r.principal_id = x->who.id;
	snprintf(r.principal, sizeof(r.principal), "%s", x->who.name);
	snprintf(r.verdict, sizeof(r.verdict), "%s", verdict);
	snprintf(r.note, sizeof(r.note), "%s", note);
	r.time = core_now();
	x->audit_more = json_pack("{s:s,s:s}", "break_glass_grant", id, "review_verdict", verdict);
	x->deny_detail = true;
	if ((rc = store_grant_review(c->st, &r)) != KMS_OK)
		return rc;
	if ((rc = store_grant_list(c->st, GRANT_LIST_MAX, &gs, &ng)) != KMS_OK)
		return rc;
	if ((rc = store_review_list(c->st, id, &rv, &nr)) != KMS_OK) {
		free(gs);
		return rc;
	}
	for (size_t i = 0; i < ng && x->data == NULL; i++)
		if (strcmp(gs[i].id, id) == 0)
			x->data = grant_json(c, &gs[i], rv, nr, core_now());
	free(gs);
	free(rv);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "break-glass review");
}
