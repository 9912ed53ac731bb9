/* Key lifecycle: configuration, revocation, version disable/enable, history. Every
 * change is one store transaction that also appends to the key's history (who, when,
 * why), then the cache follows; the audit record is written by core_call as for any
 * operation. States and refusals: docs/KEY-LIFECYCLE.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/core/core_int.h"

#define MIN_AUTO_ROTATE 3600LL
#define MAX_AUTO_ROTATE (100LL * 365 * 24 * 3600)

static json_t *body_of(struct op_ctx *x, json_t **tmp)
{
	if (x->call->body != NULL)
		return x->call->body;
	*tmp = json_object();
	return *tmp;
}

kms_err core_event_for(struct op_ctx *x, json_t *body, const char *event, uint32_t version, bool need,
		       struct store_event *ev)
{
	const char *reason;
	kms_err rc = kms_json_opt_string(body, "reason", &reason);

	if (rc != KMS_OK)
		return rc;
	if (need && (reason == NULL || *reason == '\0'))
		return kms_errf(KMS_ERR_INVALID, "\"reason\" is required: it is kept in the key's history");
	if (reason != NULL && strlen(reason) > STORE_REASON_MAX)
		return kms_errf(KMS_ERR_INVALID, "\"reason\" is longer than %d bytes", STORE_REASON_MAX);
	memset(ev, 0, sizeof(*ev));
	ev->version = version;
	snprintf(ev->event, sizeof(ev->event), "%s", event);
	snprintf(ev->principal, sizeof(ev->principal), "%s", x->who.name);
	snprintf(ev->reason, sizeof(ev->reason), "%s", reason ? reason : "");
	ev->time = core_now();
	return KMS_OK;
}

kms_err core_key_row(struct core *c, struct op_ctx *x, struct store_key *out)
{
	kms_err rc = store_key_get(c->st, x->tenant.id, x->call->key, out);

	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "key \"%s\" not found in tenant \"%s\"", x->call->key,
				x->tenant.name);
	return rc;
}

kms_err op_key_config(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"min_decryption_version", "min_encryption_version",
					      "deletion_allowed", "auto_rotate_period", "reason",
					      /* Vault fields accepted only with their safe value */
					      "exportable", "allow_plaintext_backup", NULL};
	json_t *tmp = NULL, *body = body_of(x, &tmp);
	struct store_key k, nk;
	struct store_event ev;
	long long mind, mine, arp;
	int del, flag;
	kms_err rc;

	if (!core_valid_name(x->call->key)) {
		rc = kms_errf(KMS_ERR_INVALID, "invalid key name");
		goto out;
	}
	if ((rc = kms_json_only(body, allowed)) != KMS_OK)
		goto out;
	if ((rc = kms_json_opt_bool(body, "exportable", 0, &flag)) != KMS_OK || flag ||
	    (rc = kms_json_opt_bool(body, "allow_plaintext_backup", 0, &flag)) != KMS_OK || flag) {
		if (rc == KMS_OK)
			rc = kms_errf(KMS_ERR_INVALID, "keys never leave the token: exportable and "
						       "allow_plaintext_backup stay false");
		goto out;
	}
	pthread_mutex_lock(&c->create_mu); /* against a concurrent rotation moving latest */
	rc = core_key_row(c, x, &k);
	if (rc != KMS_OK)
		goto unlock;
	nk = k;
	if ((rc = kms_json_opt_uint(body, "min_decryption_version", k.min_decryption_version, UINT32_MAX, &mind)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "min_encryption_version", k.min_encryption_version, UINT32_MAX, &mine)) != KMS_OK ||
	    (rc = kms_json_opt_bool(body, "deletion_allowed", k.deletion_allowed, &del)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "auto_rotate_period", k.auto_rotate_period, MAX_AUTO_ROTATE, &arp)) != KMS_OK)
		goto unlock;
	if (mind < 1 || mind > k.latest_version) {
		rc = kms_errf(KMS_ERR_INVALID, "min_decryption_version must be between 1 and the latest version (%u)",
			      k.latest_version);
		goto unlock;
	}
	if (mine != 0 && (mine < mind || mine > k.latest_version)) {
		rc = kms_errf(KMS_ERR_INVALID,
			      "min_encryption_version must be 0, or between min_decryption_version (%lld) and the latest version (%u)",
			      mind, k.latest_version);
		goto unlock;
	}
	if (mind < k.min_decryption_version && x->policy_op != KMS_OP_KEY_CONFIG_LOWER_MIN_DEC) {
		/* decided as no lowering: a concurrent change raised it meanwhile */
		rc = kms_errf(KMS_ERR_CONFLICT, "min_decryption_version changed while this request was decided "
						"(now %u); send it again", k.min_decryption_version);
		goto unlock;
	}
	if (arp != 0 && arp < MIN_AUTO_ROTATE) {
		rc = kms_errf(KMS_ERR_INVALID, "auto_rotate_period must be 0 (off) or at least %lld seconds",
			      MIN_AUTO_ROTATE);
		goto unlock;
	}
	nk.min_decryption_version = (uint32_t)mind;
	nk.min_encryption_version = (uint32_t)mine;
	nk.deletion_allowed = del;
	nk.auto_rotate_period = arp;
	if ((rc = core_event_for(x, body, "config", 0, false, &ev)) != KMS_OK)
		goto unlock;
	rc = store_key_config(c->st, k.id, &nk, &ev);
	/* the cache follows the row as stored, not a copy read before the write */
	if (rc == KMS_OK && (rc = core_key_row(c, x, &nk)) == KMS_OK)
		core_key_meta_set(c, x->tenant.name, &nk);
unlock:
	pthread_mutex_unlock(&c->create_mu);
	if (rc == KMS_OK)
		rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

static kms_err set_revoked(struct core *c, struct op_ctx *x, int revoked)
{
	static const char *const allowed[] = {"reason", NULL};
	json_t *tmp = NULL, *body = body_of(x, &tmp);
	struct store_key k;
	struct store_event ev;
	kms_err rc;

	if ((rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = core_event_for(x, body, revoked ? "revoke" : "restore", 0, true, &ev)) != KMS_OK)
		goto out;
	/* Serialised with config and rotation, which rewrite the cached row too. */
	pthread_mutex_lock(&c->create_mu);
	if ((rc = core_key_row(c, x, &k)) == KMS_OK && (rc = store_key_set_revoked(c->st, k.id, revoked, &ev)) == KMS_OK &&
	    (rc = core_key_row(c, x, &k)) == KMS_OK)
		core_key_meta_set(c, x->tenant.name, &k);
	pthread_mutex_unlock(&c->create_mu);
	if (rc == KMS_OK)
		rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_key_revoke(struct core *c, struct op_ctx *x)
{
	return set_revoked(c, x, 1);
}

kms_err op_key_restore(struct core *c, struct op_ctx *x)
{
	return set_revoked(c, x, 0);
}

kms_err core_parse_version(const char *s, uint32_t *out)
{
	unsigned long long v = 0;

	if (s == NULL || *s == '\0' || *s == '0' || strlen(s) > 10)
		return kms_errf(KMS_ERR_INVALID, "key version must be a number from 1");
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return kms_errf(KMS_ERR_INVALID, "key version must be a number from 1");
		v = v * 10 + (unsigned)(*p - '0');
	}
	if (v > UINT32_MAX)
		return kms_errf(KMS_ERR_INVALID, "key version out of range");
	*out = (uint32_t)v;
	return KMS_OK;
}

static kms_err version_move(struct core *c, struct op_ctx *x, const char *from, const char *to,
			    const char *event)
{
	static const char *const allowed[] = {"reason", NULL};
	json_t *tmp = NULL, *body = body_of(x, &tmp);
	struct store_key k;
	struct store_event ev;
	uint32_t v = 0;
	kms_err rc;

	if ((rc = core_parse_version(x->call->version, &v)) != KMS_OK || (rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = core_event_for(x, body, event, v, strcmp(event, "disable") == 0, &ev)) != KMS_OK ||
	    (rc = core_key_row(c, x, &k)) != KMS_OK)
		goto out;
	x->version = v;
	if (v > k.latest_version) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "key version %u does not exist", v);
		goto out;
	}
	rc = store_version_transition(c->st, k.id, v, from, to, 0, &ev);
	if (rc != KMS_OK)
		goto out;
	/* make sure the key is cached before changing its cached state */
	{
		struct keyref kr;
		rc = core_key_ref(c, x->tenant.name, x->call->key, &kr);
		if (rc != KMS_OK)
			goto out;
	}
	core_version_state_set(c, x->tenant.name, x->call->key, v, core_state_parse(to), 0);
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_version_disable(struct core *c, struct op_ctx *x)
{
	return version_move(c, x, STORE_STATE_ENABLED, STORE_STATE_DISABLED, "disable");
}

kms_err op_version_enable(struct core *c, struct op_ctx *x)
{
	return version_move(c, x, STORE_STATE_DISABLED, STORE_STATE_ENABLED, "enable");
}

kms_err op_key_history(struct core *c, struct op_ctx *x)
{
	struct store_event *ev = NULL;
	struct store_key k;
	size_t n = 0;
	json_t *arr;
	kms_err rc;

	if ((rc = core_key_row(c, x, &k)) != KMS_OK || (rc = store_key_events(c->st, k.id, &ev, &n)) != KMS_OK)
		return rc;
	arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_pack("{s:s,s:s,s:s,s:I}", "event", ev[i].event, "principal", ev[i].principal,
				      "reason", ev[i].reason, "time", (json_int_t)ev[i].time);
		if (ev[i].version)
			json_object_set_new(e, "version", json_integer(ev[i].version));
		json_array_append_new(arr, e);
	}
	free(ev);
	x->data = json_pack("{s:s,s:o}", "name", k.name, "events", arr);
	return KMS_OK;
}
