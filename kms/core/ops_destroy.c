/* Destruction of key versions, and the rules that hold it back: a waiting period
 * (7-30 days, cancellable), the tenant's retention class (PHI versions are kept for
 * retention_period after their last encryption), and legal holds on tenant or key.
 * The scheduler destroys what is due; a hold placed during the wait sends the version
 * back to disabled instead. docs/KEY-LIFECYCLE.md has the rules and their refusals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "kms/audit/audit.h"
#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/core/core_int.h"

#define DAY 86400LL
#define WAIT_MIN_DAYS 7
#define WAIT_MAX_DAYS 30

static void day_of(int64_t t, char *buf, size_t cap)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(buf, cap, "%Y-%m-%d", &tm);
}

kms_err core_destruction_allowed(struct core *c, const struct store_tenant *t, const struct store_key *k,
				 uint32_t v, int64_t when)
{
	if (t->legal_hold)
		return kms_errf(KMS_ERR_CONFLICT, "destruction refused: tenant \"%s\" is under legal hold", t->name);
	if (k->legal_hold)
		return kms_errf(KMS_ERR_CONFLICT, "destruction refused: key \"%s\" is under legal hold", k->name);
	if (strcmp(t->retention, "phi") == 0) {
		int64_t sup = core_superseded_at(c, t->name, k->name, v);
		int64_t until = sup + t->retention_period;
		char day[16];
		if (sup == 0)
			return kms_errf(KMS_ERR_CONFLICT, "destruction refused: version %u is still used for encryption", v);
		if (when < until) {
			day_of(until, day, sizeof(day));
			return kms_errf(KMS_ERR_CONFLICT,
					"destruction refused: tenant \"%s\" keeps PHI key versions for %lld days after "
					"their last encryption; version %u can be destroyed from %s",
					t->name, (long long)(t->retention_period / DAY), v, day);
		}
	}
	return KMS_OK;
}

kms_err op_version_schedule_destroy(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"days", "reason", NULL};
	json_t *tmp = NULL, *body = x->call->body ? x->call->body : (tmp = json_object());
	struct store_event ev;
	struct store_version sv;
	struct store_key k;
	struct keyref kr;
	long long days, min_days = (x->tenant.min_destroy_wait + DAY - 1) / DAY;
	int64_t when;
	uint32_t v = 0;
	kms_err rc;

	if (min_days < WAIT_MIN_DAYS)
		min_days = WAIT_MIN_DAYS;
	if ((rc = core_parse_version(x->call->version, &v)) != KMS_OK || (rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "days", WAIT_MAX_DAYS, 1000, &days)) != KMS_OK ||
	    (rc = core_event_for(x, body, "schedule_destroy", v, true, &ev)) != KMS_OK)
		goto out;
	x->version = v;
	if (days < min_days || days > WAIT_MAX_DAYS) {
		rc = kms_errf(KMS_ERR_INVALID, "days must be between %lld (this tenant's minimum) and %d", min_days,
			      WAIT_MAX_DAYS);
		goto out;
	}
	if ((rc = core_key_row(c, x, &k)) != KMS_OK || (rc = core_key_ref(c, x->tenant.name, x->call->key, &kr)) != KMS_OK)
		goto out;
	if (v > k.latest_version) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key version %u does not exist", v);
		goto out;
	}
	if (v == k.latest_version) {
		rc = kms_errf(KMS_ERR_CONFLICT, "key version %u is the active version: rotate the key first", v);
		goto out;
	}
	if (!k.deletion_allowed) {
		rc = kms_errf(KMS_ERR_CONFLICT, "deletion_allowed is false for key \"%s\": set it with the key's "
						"config first", k.name);
		goto out;
	}
	when = core_now() + days * DAY;
	if ((rc = core_destruction_allowed(c, &x->tenant, &k, v, when)) != KMS_OK)
		goto out;
	if ((rc = store_version_get(c->st, k.id, v, &sv)) != KMS_OK)
		goto out;
	if (strcmp(sv.state, STORE_STATE_ENABLED) != 0 && strcmp(sv.state, STORE_STATE_DISABLED) != 0) {
		rc = kms_errf(KMS_ERR_CONFLICT, "key version %u is %s", v,
			      strcmp(sv.state, STORE_STATE_PENDING) == 0 ? "already pending destruction" : "destroyed");
		goto out;
	}
	rc = store_version_transition(c->st, k.id, v, sv.state, STORE_STATE_PENDING, when, &ev);
	if (rc != KMS_OK)
		goto out;
	core_version_state_set(c, x->tenant.name, x->call->key, v, KVER_PENDING, when);
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

/* Vault's trim (drop the versions below min_available_version), with kmsd's rules for
 * destruction: every version below the floor that is not already pending destruction
 * or destroyed is scheduled for destruction, as schedule-destroy would, after the
 * same waiting period (cancellable one by one). All or nothing: if deletion_allowed,
 * a legal hold or PHI retention refuses any one of them, nothing is scheduled and the
 * 409 names the version and the rule. */
kms_err op_key_trim(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"min_available_version", "days", "reason", NULL};
	json_t *tmp = NULL, *body = x->call->body ? x->call->body : (tmp = json_object());
	struct store_version *vs = NULL;
	struct store_event ev;
	struct store_key k;
	struct keyref kr;
	long long minav, days, min_days = (x->tenant.min_destroy_wait + DAY - 1) / DAY;
	size_t nv = 0, todo = 0;
	json_t *scheduled = json_array();
	bool locked = false;
	int64_t when;
	kms_err rc;

	if (min_days < WAIT_MIN_DAYS)
		min_days = WAIT_MIN_DAYS;
	if ((rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "min_available_version", 0, UINT32_MAX, &minav)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "days", WAIT_MAX_DAYS, 1000, &days)) != KMS_OK ||
	    (rc = core_event_for(x, body, "trim", 0, true, &ev)) != KMS_OK)
		goto out;
	if (minav < 1) {
		rc = kms_errf(KMS_ERR_INVALID, "\"min_available_version\" (1 or more) is required");
		goto out;
	}
	if (days < min_days || days > WAIT_MAX_DAYS) {
		rc = kms_errf(KMS_ERR_INVALID, "days must be between %lld (this tenant's minimum) and %d", min_days,
			      WAIT_MAX_DAYS);
		goto out;
	}
	/* against a concurrent rotation or config change moving the floors */
	pthread_mutex_lock(&c->create_mu);
	locked = true;
	if ((rc = core_key_row(c, x, &k)) != KMS_OK || (rc = core_key_ref(c, x->tenant.name, x->call->key, &kr)) != KMS_OK)
		goto out;
	if (minav > k.latest_version) {
		rc = kms_errf(KMS_ERR_INVALID, "min_available_version (%lld) may not be above the latest version (%u)",
			      minav, k.latest_version);
		goto out;
	}
	if (minav > k.min_decryption_version) {
		rc = kms_errf(KMS_ERR_INVALID,
			      "min_available_version (%lld) may not be above min_decryption_version (%u): raise that "
			      "first with the key's config",
			      minav, k.min_decryption_version);
		goto out;
	}
	if (k.min_encryption_version != 0 && minav > k.min_encryption_version) {
		rc = kms_errf(KMS_ERR_INVALID, "min_available_version (%lld) may not be above min_encryption_version (%u)",
			      minav, k.min_encryption_version);
		goto out;
	}
	if ((rc = store_version_list(c->st, k.id, &vs, &nv)) != KMS_OK)
		goto out;
	when = core_now() + days * DAY;
	/* Check every version first: nothing is scheduled unless all of them may be. */
	for (size_t i = 0; i < nv && vs[i].version < (uint32_t)minav; i++) {
		if (strcmp(vs[i].state, STORE_STATE_ENABLED) != 0 && strcmp(vs[i].state, STORE_STATE_DISABLED) != 0)
			continue; /* already pending destruction or destroyed */
		if (!k.deletion_allowed) {
			rc = kms_errf(KMS_ERR_CONFLICT, "deletion_allowed is false for key \"%s\": set it with the key's "
							"config first", k.name);
			goto out;
		}
		if ((rc = core_destruction_allowed(c, &x->tenant, &k, vs[i].version, when)) != KMS_OK) {
			char why[256];
			snprintf(why, sizeof(why), "%s", kms_err_detail(rc));
			rc = kms_errf(KMS_ERR_CONFLICT, "trim refused at version %u, nothing was scheduled: %s",
				      vs[i].version, why);
			goto out;
		}
		todo++;
	}
	if (todo > 0) {
		/* all of them in one transaction: a version changed meanwhile by another call
		 * refuses the whole trim, nothing half-scheduled */
		uint32_t *vers = calloc(todo, sizeof(*vers));
		const char **from = calloc(todo, sizeof(*from));
		size_t m = 0;

		if (vers == NULL || from == NULL) {
			free(vers);
			free((void *)from);
			rc = kms_errf(KMS_ERR_NOMEM, "trim");
			goto out;
		}
		for (size_t i = 0; i < nv && vs[i].version < (uint32_t)minav && m < todo; i++) {
			if (strcmp(vs[i].state, STORE_STATE_ENABLED) != 0 &&
			    strcmp(vs[i].state, STORE_STATE_DISABLED) != 0)
				continue;
			vers[m] = vs[i].version;
			from[m++] = vs[i].state;
		}
		rc = store_versions_transition(c->st, k.id, m, vers, from, STORE_STATE_PENDING, when, &ev);
		if (rc == KMS_OK) {
			for (size_t i = 0; i < m; i++) {
				core_version_state_set(c, x->tenant.name, x->call->key, vers[i], KVER_PENDING, when);
				json_array_append_new(scheduled, json_integer(vers[i]));
			}
			x->version = vers[m - 1];
		}
		free(vers);
		free((void *)from);
		if (rc != KMS_OK)
			goto out;
	}
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
	if (rc == KMS_OK) {
		json_object_set_new(x->data, "min_available_version", json_integer(minav));
		json_object_set(x->data, "scheduled_versions", scheduled);
	}
out:
	if (locked)
		pthread_mutex_unlock(&c->create_mu);
	json_decref(scheduled);
	free(vs);
	json_decref(tmp);
	return rc;
}

kms_err op_version_cancel_destroy(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"reason", NULL};
	json_t *tmp = NULL, *body = x->call->body ? x->call->body : (tmp = json_object());
	struct store_event ev;
	struct store_key k;
	struct keyref kr;
	uint32_t v = 0;
	kms_err rc;

	if ((rc = core_parse_version(x->call->version, &v)) != KMS_OK || (rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = core_event_for(x, body, "cancel_destroy", v, true, &ev)) != KMS_OK)
		goto out;
	x->version = v;
	if ((rc = core_key_row(c, x, &k)) != KMS_OK || (rc = core_key_ref(c, x->tenant.name, x->call->key, &kr)) != KMS_OK)
		goto out;
	/* A cancelled destruction leaves the version disabled: someone thought it should
	 * go, so using it again is a decision of its own (enable). */
	rc = store_version_transition(c->st, k.id, v, STORE_STATE_PENDING, STORE_STATE_DISABLED, 0, &ev);
	if (rc != KMS_OK)
		goto out;
	core_version_state_set(c, x->tenant.name, x->call->key, v, KVER_DISABLED, 0);
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_key_legal_hold(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"hold", "reason", NULL};
	json_t *tmp = NULL, *body = x->call->body ? x->call->body : (tmp = json_object());
	struct store_event ev;
	struct store_key k;
	int hold;
	kms_err rc;

	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_bool(body, "hold", -1, &hold)) != KMS_OK)
		goto out;
	if (hold == -1) {
		rc = kms_errf(KMS_ERR_INVALID, "\"hold\" (true or false) is required");
		goto out;
	}
	if ((rc = core_event_for(x, body, hold ? "legal_hold" : "legal_hold_release", 0, true, &ev)) != KMS_OK)
		goto out;
	/* read and write under one lock: a release is decided as one (core_policy_op) */
	pthread_mutex_lock(&c->create_mu);
	if ((rc = core_key_row(c, x, &k)) == KMS_OK) {
		if (k.legal_hold && !hold && x->policy_op != KMS_OP_KEY_LEGAL_HOLD_RELEASE)
			rc = kms_errf(KMS_ERR_CONFLICT, "a legal hold was placed on this key while this request "
							"was decided; send it again");
		else
			rc = store_key_set_legal_hold(c->st, k.id, hold, &ev);
	}
	pthread_mutex_unlock(&c->create_mu);
	if (rc != KMS_OK)
		goto out;
	x->data = json_pack("{s:s,s:b}", "name", k.name, "legal_hold", hold);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_tenant_config(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"retention_days", "min_destroy_wait_days", "legal_hold", "reason", NULL};
	json_t *tmp = NULL, *body = x->call->body ? x->call->body : (tmp = json_object());
	struct store_tenant t;
	long long rdays, wdays;
	bool locked = false;
	int hold;
	kms_err rc;

	if ((rc = kms_json_only(body, allowed)) != KMS_OK)
		goto out;
	/* Read, change and write the row under one lock, from the store, so that two
	 * concurrent changes (a legal hold and a retention change) cannot undo each other. */
	pthread_mutex_lock(&c->create_mu);
	locked = true;
	if (!core_valid_tenant_name(x->call->name)) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant not found");
		goto out;
	}
	rc = store_tenant_get(c->st, x->call->name, &t);
	if (rc == KMS_ERR_NOT_FOUND)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant \"%s\" not found", x->call->name);
	if (rc != KMS_OK)
		goto out;
	if ((rc = kms_json_opt_uint(body, "retention_days", t.retention_period / DAY, 36500, &rdays)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "min_destroy_wait_days", t.min_destroy_wait / DAY, WAIT_MAX_DAYS, &wdays)) != KMS_OK ||
	    (rc = kms_json_opt_bool(body, "legal_hold", t.legal_hold, &hold)) != KMS_OK)
		goto out;
	if (strcmp(t.retention, "phi") == 0 && rdays * DAY < c->opt.phi_retention_floor) {
		rc = kms_errf(KMS_ERR_INVALID, "retention_days for a PHI tenant may not be below %lld",
			      (long long)(c->opt.phi_retention_floor / DAY));
		goto out;
	}
	if (wdays < WAIT_MIN_DAYS) {
		rc = kms_errf(KMS_ERR_INVALID, "min_destroy_wait_days must be between %d and %d", WAIT_MIN_DAYS,
			      WAIT_MAX_DAYS);
		goto out;
	}
	if (t.legal_hold && !hold && x->policy_op != KMS_OP_TENANT_LEGAL_HOLD_RELEASE) {
		/* decided as no release (core_policy_op): the hold was placed meanwhile */
		rc = kms_errf(KMS_ERR_CONFLICT, "a legal hold was placed on this tenant while this request was "
						"decided; send it again");
		goto out;
	}
	t.retention_period = rdays * DAY;
	t.min_destroy_wait = wdays * DAY;
	t.legal_hold = hold;
	if ((rc = store_tenant_config(c->st, t.id, &t)) != KMS_OK || (rc = store_tenant_get(c->st, t.name, &t)) != KMS_OK)
		goto out;
	core_tenant_insert(c, &t);
	x->data = json_pack("{s:s,s:s,s:I,s:I,s:b}", "name", t.name, "retention", t.retention, "retention_days",
			    (json_int_t)rdays, "min_destroy_wait_days", (json_int_t)wdays, "legal_hold", hold);
out:
	if (locked)
		pthread_mutex_unlock(&c->create_mu);
	json_decref(tmp);
	return rc;
}

/* ---- the scheduler ---- */

static void scheduler_audit(struct core *c, const struct store_due *d, const char *outcome, int status,
			    const char *reason)
{
	core_audit_internal(c, KMS_OP_VERSION_DESTROY, d->tenant, d->key, d->version, outcome, status, reason);
}

/* The erasure receipt: a signed statement, for the tenant to hand to a data subject,
 * of which key version was destroyed, when, at whose request and why. It names the
 * destroyed material by the SHA-256 of its wrapped form (which reveals nothing) and is
 * signed like the audit checkpoints, by the token's kmsd-audit-sign key. Made before
 * the destruction and stored in its transaction; NULL (logged) when it cannot be made,
 * and the destruction then goes ahead without one, as it did before receipts. Returns
 * the text (kms_json_free_str) with its signature in sig (P11_AUDIT_SIG_MAX). */
static char *make_receipt(struct core *c, const struct store_tenant *t, const struct store_key *k, uint32_t v,
			  const struct store_version *before, int64_t now, uint8_t *sig, size_t *sig_len)
{
	struct store_event *ev = NULL;
	const struct store_event *req = NULL;
	uint8_t h[32];
	char hx[65], when[32];
	size_t n = 0, len;
	time_t tt = (time_t)now;
	struct tm tm;
	json_t *r, *approvals;
	char *text = NULL;
	kms_err rc;

	if (store_key_events(c->st, k->id, &ev, &n) == KMS_OK)
		for (size_t i = 0; i < n; i++)
			if (ev[i].version == v &&
			    (strcmp(ev[i].event, "schedule_destroy") == 0 || strcmp(ev[i].event, "trim") == 0))
				req = &ev[i];
	SHA256(before->blob, before->blob_len, h);
	kms_hex_encode(h, sizeof(h), hx);
	gmtime_r(&tt, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	/* approvals: the approvers of the quorum request that scheduled this destruction
	 * (ops_approval.c), or [] when it ran without one */
	{
		char vtext[16], **names = NULL;
		size_t nn = 0;

		snprintf(vtext, sizeof(vtext), "%u", v);
		if (store_approval_approvers(c->st, kms_op_name(KMS_OP_VERSION_SCHEDULE_DESTROY), t->name, k->name,
					     vtext, &names, &nn) != KMS_OK)
			kms_warn("receipt for %s/%s version %u: approvals not readable", t->name, k->name, v);
		approvals = json_array();
		for (size_t i = 0; i < nn; i++) {
			json_array_append_new(approvals, kms_json_text(names[i]));
			free(names[i]);
		}
		free(names);
	}
	r = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:o*}", "format", "kmsd-erasure-receipt-v1",
		      "tenant", t->name, "key", k->name, "version", (json_int_t)v, "retention", t->retention,
		      "destroyed_at", when, "destroyed_by", CORE_SCHEDULER_PRINCIPAL, "requested_by",
		      req ? req->principal : "unknown", "reason", req ? req->reason : "", "wrapped_key_sha256", hx,
		      "approvals", approvals);
	if (r != NULL && json_object_get(r, "approvals") == NULL)
		json_decref(r), r = NULL; /* no memory for the list: no receipt that omits it */
	text = r ? json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII) : NULL;
	json_decref(r);
	if (text == NULL) {
		kms_error("receipt for %s/%s version %u: out of memory", t->name, k->name, v);
		goto out;
	}
	len = strlen(text);
	SHA256((const uint8_t *)text, len, h);
	rc = p11_audit_sign(c->p11, h, sig, P11_AUDIT_SIG_MAX, sig_len);
	if (rc != KMS_OK) {
		kms_error("receipt for %s/%s version %u not signed: %s", t->name, k->name, v, kms_err_detail(rc));
		kms_json_free_str(text, 0);
		text = NULL;
	}
out:
	free(ev);
	return text;
}

kms_err op_version_receipt(struct core *c, struct op_ctx *x)
{
	struct store_key k;
	uint8_t *sig = NULL;
	size_t sig_len = 0;
	char *text = NULL, b64[KMS_B64_ENC_LEN(256) + 1];
	json_t *doc;
	uint32_t v = 0;
	kms_err rc;

	if ((rc = core_parse_version(x->call->version, &v)) != KMS_OK || (rc = core_key_row(c, x, &k)) != KMS_OK)
		return rc;
	x->version = v;
	rc = store_receipt_get(c->st, k.id, v, &text, &sig, &sig_len);
	if (rc != KMS_OK)
		return rc;
	if (kms_b64_encode(sig, sig_len, b64, sizeof(b64)) < 0) {
		free(text);
		free(sig);
		return kms_errf(KMS_ERR_STORE, "stored receipt signature is malformed");
	}
	doc = json_loads(text, 0, NULL);
	x->data = json_pack("{s:o,s:s,s:s,s:s}", "receipt", doc ? doc : json_null(), "receipt_text", text,
			    "signature", b64, "algorithm", "ECDSA-P256-SHA256 over receipt_text, DER");
	free(text);
	free(sig);
	return KMS_OK;
}

static bool destroy_one(struct core *c, const struct store_due *d, int64_t now)
{
	struct store_tenant t;
	struct store_key k;
	struct store_event ev = {0};
	struct store_version before;
	struct store_receipt receipt = {0};
	uint8_t sig[P11_AUDIT_SIG_MAX];
	char *rtext;
	struct keyref kr;
	kms_err rc;

	ev.version = d->version;
	snprintf(ev.principal, sizeof(ev.principal), "%s", CORE_SCHEDULER_PRINCIPAL);
	ev.time = now;
	if ((rc = core_tenant_lookup(c, d->tenant, &t)) != KMS_OK || (rc = store_key_get(c->st, t.id, d->key, &k)) != KMS_OK ||
	    (rc = core_key_ref(c, d->tenant, d->key, &kr)) != KMS_OK) {
		kms_error("scheduler: %s/%s version %u: %s", d->tenant, d->key, d->version, kms_err_detail(rc));
		return false;
	}
	rc = core_destruction_allowed(c, &t, &k, d->version, now);
	if (rc != KMS_OK) {
		/* A hold or retention rule that appeared during the wait: the destruction is
		 * called off (back to disabled, recorded), not retried every pass. */
		char why[256];
		snprintf(why, sizeof(why), "%s", kms_err_detail(rc));
		snprintf(ev.event, sizeof(ev.event), "destroy_blocked");
		snprintf(ev.reason, sizeof(ev.reason), "%s", why);
		if (store_version_transition(c->st, k.id, d->version, STORE_STATE_PENDING, STORE_STATE_DISABLED, 0, &ev) == KMS_OK)
			core_version_state_set(c, d->tenant, d->key, d->version, KVER_DISABLED, 0);
		scheduler_audit(c, d, "deny", 409, why);
		return false;
	}
	snprintf(ev.event, sizeof(ev.event), "destroy");
	snprintf(ev.reason, sizeof(ev.reason), "waiting period ended");
	if ((rc = store_version_get(c->st, k.id, d->version, &before)) != KMS_OK) {
		kms_error("scheduler: %s/%s version %u: %s", d->tenant, d->key, d->version, kms_err_detail(rc));
		return false;
	}
	rtext = make_receipt(c, &t, &k, d->version, &before, now, sig, &receipt.sig_len);
	receipt.text = rtext;
	receipt.sig = sig;
	receipt.now = now;
	rc = store_version_destroy(c->st, k.id, d->version, &ev, rtext != NULL ? &receipt : NULL);
	kms_json_free_str(rtext, 0);
	kms_wipe(&before, sizeof(before));
	if (rc != KMS_OK) {
		kms_error("scheduler: destroying %s/%s version %u failed: %s", d->tenant, d->key, d->version,
			  kms_err_detail(rc));
		scheduler_audit(c, d, "error", kms_err_http_status(rc), kms_err_detail(rc));
		return false;
	}
	core_version_state_set(c, d->tenant, d->key, d->version, KVER_DESTROYED, 0);
	kms_info("scheduler: destroyed %s/%s version %u", d->tenant, d->key, d->version);
	scheduler_audit(c, d, "allow", 200, "waiting period ended");
	return true;
}

/* Keys whose auto_rotate_period has passed since their latest version was made. */
static unsigned rotate_due(struct core *c, int64_t now)
{
	struct store_rotate_due *due = NULL;
	size_t n = 0;
	unsigned done = 0;
	kms_err rc = store_rotations_due(c->st, now, &due, &n);

	if (rc != KMS_OK) {
		kms_error("scheduler: %s", kms_err_detail(rc));
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t v = 0;
		rc = core_rotate_key(c, due[i].tenant, due[i].key, due[i].latest, &v);
		if (rc != KMS_OK) {
			kms_error("scheduler: rotating %s/%s failed: %s", due[i].tenant, due[i].key, kms_err_detail(rc));
			core_audit_internal(c, KMS_OP_KEY_ROTATE, due[i].tenant, due[i].key, 0, "error",
					    kms_err_http_status(rc), kms_err_detail(rc));
			continue;
		}
		if (v == due[i].latest)
			continue; /* rotated by someone else meanwhile */
		kms_info("scheduler: rotated %s/%s to version %u (auto_rotate_period)", due[i].tenant, due[i].key, v);
		core_audit_internal(c, KMS_OP_KEY_ROTATE, due[i].tenant, due[i].key, v, "allow", 200,
				    "auto_rotate_period passed");
		done++;
	}
	free(due);
	return done;
}

unsigned core_scheduler_tick(struct core *c)
{
	struct store_due *due = NULL;
	size_t n = 0;
	unsigned done = 0;
	int64_t now = core_now();
	kms_err rc;

	core_graves_reap(c, false);
	/* Several nodes: the jobs below run on the node holding the scheduler lease
	 * (cluster.c), so that a due rotation or destruction happens once. */
	if (!core_cluster_leader(c))
		return 0;
	/* each change below and its audit record are one unit for a backup's cut */
	pthread_rwlock_rdlock(&c->quiesce);
	core_mk_relay(c);
	core_approvals_expire(c);
	done += rotate_due(c, now);
	rc = store_due_destructions(c->st, now, &due, &n);
	if (rc != KMS_OK) {
		pthread_rwlock_unlock(&c->quiesce);
		kms_error("scheduler: %s", kms_err_detail(rc));
		return done;
	}
	for (size_t i = 0; i < n; i++)
		done += destroy_one(c, &due[i], now) ? 1 : 0;
	pthread_rwlock_unlock(&c->quiesce);
	free(due);
	return done;
}
