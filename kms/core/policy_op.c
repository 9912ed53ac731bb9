/* Refined operations (docs/POLICY.md "Operations"): a few calls change something that
 * needs more care than the rest of their route, depending on their body. The policy
 * decides on the refined operation, so that a rule can ask for approvals on exactly
 * that (the built-in policy does: the two-person rule); the audit record keeps the
 * route's operation and names the refined one ("policy_operation").
 *
 *   key.config with a min_decryption_version below the key's current one
 *       -> key.config.lower_min_decryption (old ciphertexts become readable again)
 *   key.legal_hold with "hold": false on a key under a legal hold -> key.legal_hold.release
 *   tenant.config with "legal_hold": false on a tenant under a legal hold
 *       -> tenant.config.legal_hold_release
 *
 * A body the operation will refuse (a bad value) is not refined: the operation answers
 * 400 on its own. The operations check again under their lock that a lowering or a
 * release was decided as one (409 if the state changed between the decision and the
 * change: a concurrent raise or hold). */
#include <stdio.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/core/core_int.h"

enum kms_op core_policy_op(struct core *c, const struct op_ctx *x)
{
	const struct core_call *call = x->call;
	json_t *body = call->body;
	long long v;
	int b;
	enum kms_op refined = call->op;

	if (body == NULL || !json_is_object(body))
		return call->op;
	switch (call->op) {
	case KMS_OP_KEY_CONFIG: {
		struct keyref kr;
		if (!x->have_tenant || json_object_get(body, "min_decryption_version") == NULL ||
		    kms_json_opt_uint(body, "min_decryption_version", 0, UINT32_MAX, &v) != KMS_OK)
			break;
		if (core_key_ref(c, x->tenant.name, call->key, &kr) != KMS_OK)
			break;
		if (v >= 1 && v < (long long)kr.min_dec) /* 0 is refused by the operation */
			refined = KMS_OP_KEY_CONFIG_LOWER_MIN_DEC;
		break;
	}
	case KMS_OP_KEY_LEGAL_HOLD: {
		struct store_key k;
		if (!x->have_tenant || kms_json_opt_bool(body, "hold", -1, &b) != KMS_OK || b != 0 ||
		    !core_valid_name(call->key))
			break;
		if (store_key_get(c->st, x->tenant.id, call->key, &k) == KMS_OK && k.legal_hold)
			refined = KMS_OP_KEY_LEGAL_HOLD_RELEASE;
		break;
	}
	case KMS_OP_TENANT_CONFIG: {
		struct store_tenant t;
		if (kms_json_opt_bool(body, "legal_hold", -1, &b) != KMS_OK || b != 0 ||
		    !core_valid_tenant_name(call->name))
			break;
		if (core_tenant_lookup(c, call->name, &t) == KMS_OK && t.legal_hold)
			refined = KMS_OP_TENANT_LEGAL_HOLD_RELEASE;
		break;
	}
	default:
		break;
	}
	kms_err_clear(); /* a failed look-up above leaves no detail for this request */
	return refined;
}

/* A request refused only because the caller's TOTP session is stale (an mfa_max_age
 * condition: the built-in auditor-read rule) is a request for a second factor, not a
 * plain refusal: with a code in X-Vault-MFA it is checked here (which also starts a new
 * session, like POST /v1/sys/mfa/verify) and the request is decided again as fresh;
 * without one the answer is 401 saying how to start a session. */
kms_err core_mfa_session(struct core *c, struct op_ctx *x, const struct policy_doc *doc,
			 struct policy_input *pin, struct policy_verdict *verdict)
{
	struct policy_verdict fresh;
	int64_t at = pin->mfa_at;
	kms_err rc;

	if (verdict->allow || x->call->approved != NULL || !(policy_doc_uses(doc) & POLICY_USES_MFA_AGE) ||
	    !policy_mfa_age_may_apply(doc, pin))
		return KMS_OK;
	pin->mfa_at = pin->now;
	policy_eval(doc, pin, &fresh);
	pin->mfa_at = at;
	if (!fresh.allow)
		return KMS_OK; /* refused for another reason: a plain refusal */
	rc = core_mfa_stepup(c, x);
	if (rc == KMS_ERR_UNAUTHENTICATED && strncmp(x->mfa_detail, "MFA required: send", 18) == 0) {
		/* enrolled, no code sent (not enrolled keeps the step-up's own message) */
		snprintf(x->mfa_detail, sizeof(x->mfa_detail), "%s",
			 at > 0 ? "MFA required: send a TOTP code in X-Vault-MFA (totp:<code>) or POST "
				  "/v1/sys/mfa/verify; the TOTP session has expired"
				: "MFA required: send a TOTP code in X-Vault-MFA (totp:<code>) or POST "
				  "/v1/sys/mfa/verify; no TOTP session");
		rc = kms_errf(KMS_ERR_UNAUTHENTICATED, "%s", x->mfa_detail);
	}
	if (rc != KMS_OK)
		return rc;
	/* the code just checked is a fresh session */
	*verdict = fresh;
	return KMS_OK;
}
