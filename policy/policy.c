#include "policy/policy.h"

#include <string.h>

static bool op_is_crypto(enum kms_op op)
{
	return op == KMS_OP_DATAKEY || op == KMS_OP_ENCRYPT || op == KMS_OP_DECRYPT ||
	       op == KMS_OP_REWRAP;
}

static bool op_is_tenant_read(enum kms_op op)
{
	return op == KMS_OP_KEY_READ || op == KMS_OP_KEY_LIST;
}

static bool in_scope(const struct policy_subject *who, int64_t tenant_id)
{
	if (tenant_id <= 0)
		return false;
	for (size_t i = 0; i < who->n_tenants; i++)
		if (who->tenant_ids[i] == tenant_id)
			return true;
	return false;
}

bool policy_auditor_may(enum kms_op op)
{
	switch (op) {
	case KMS_OP_AUDIT_HASH:
	case KMS_OP_METRICS:
	case KMS_OP_KEY_READ:
	case KMS_OP_KEY_LIST:
	case KMS_OP_KEY_HISTORY:
	case KMS_OP_TENANT_READ:
	case KMS_OP_TENANT_LIST:
	case KMS_OP_VERSION_RECEIPT:
	case KMS_OP_POLICY_READ:
	case KMS_OP_COMPLIANCE:
	case KMS_OP_APPROVAL_LIST:
	case KMS_OP_APPROVAL_READ:
	case KMS_OP_BREAKGLASS_LIST:
		return true;
	default:
		return false;
	}
}

struct policy_decision policy_decide(const struct policy_subject *who, const struct policy_request *req)
{
	struct policy_decision d = {false, "default deny"};

	if (who == NULL || req == NULL || (unsigned)req->op >= KMS_OP__COUNT || req->op == KMS_OP_NONE)
		return d;
	/* kmsd's own record of a store integrity event: never a caller's request */
	if (req->op == KMS_OP_STORE_INTEGRITY)
		return d;
	if (req->op == KMS_OP_HEALTH) {
		d.allow = true;
		d.reason = "health is public";
		return d;
	}
	if (req->op == KMS_OP_TOKEN_LOOKUP_SELF && who->role != POLICY_ROLE_NONE) {
		d.allow = true;
		d.reason = "any principal may look up its own token";
		return d;
	}
	switch (who->role) {
	case POLICY_ROLE_ADMIN:
		/* Admins manage keys but never receive key material: a stolen admin token
		 * must not be enough to read PHI. */
		if (op_is_crypto(req->op) || req->op == KMS_OP_BREAKGLASS_ACTIVATE) {
			d.reason = "role admin: key material is for service principals only";
			return d;
		}
		d.allow = true;
		d.reason = "role admin: management";
		return d;
	case POLICY_ROLE_SERVICE:
		if (!op_is_crypto(req->op) && !op_is_tenant_read(req->op)) {
			d.reason = "role service: operation not permitted";
			return d;
		}
		if (!in_scope(who, req->tenant_id)) {
			d.reason = "role service: tenant not in scope";
			return d;
		}
		d.allow = true;
		d.reason = op_is_crypto(req->op) ? "role service: data plane on scoped tenant"
						 : "role service: read on scoped tenant";
		return d;
	case POLICY_ROLE_AUDITOR:
		/* An auditor manages its own second factor: the audit reads below need a TOTP
		 * session (the built-in document's mfa_max_age). */
		if (req->op == KMS_OP_MFA_ENROLL || req->op == KMS_OP_MFA_CONFIRM || req->op == KMS_OP_MFA_STATUS ||
		    req->op == KMS_OP_MFA_VERIFY) {
			d.allow = true;
			d.reason = "role auditor: its own second factor";
			return d;
		}
		/* Reading metadata, receipts, metrics and the policy is what an audit needs;
		 * audit.hash answers an HMAC of a value the caller already holds. */
		if (!policy_auditor_may(req->op)) {
			d.reason = "role auditor: read-only";
			return d;
		}
		d.allow = true;
		d.reason = "role auditor: audit read";
		return d;
	case POLICY_ROLE_NONE:
	default:
		return d;
	}
}

enum policy_role policy_role_parse(const char *s)
{
	if (s == NULL)
		return POLICY_ROLE_NONE;
	if (strcmp(s, "admin") == 0)
		return POLICY_ROLE_ADMIN;
	if (strcmp(s, "service") == 0)
		return POLICY_ROLE_SERVICE;
	if (strcmp(s, "auditor") == 0)
		return POLICY_ROLE_AUDITOR;
	return POLICY_ROLE_NONE;
}

const char *policy_role_name(enum policy_role r)
{
	switch (r) {
	case POLICY_ROLE_ADMIN:
		return "admin";
	case POLICY_ROLE_SERVICE:
		return "service";
	case POLICY_ROLE_AUDITOR:
		return "auditor";
	default:
		return "none";
	}
}
