#include "kms/base/op.h"

static const char *const op_names[KMS_OP__COUNT] = {
	[KMS_OP_NONE] = "none",
	[KMS_OP_HEALTH] = "sys.health",
	[KMS_OP_TENANT_CREATE] = "tenant.create",
	[KMS_OP_TENANT_READ] = "tenant.read",
	[KMS_OP_TENANT_LIST] = "tenant.list",
	[KMS_OP_PRINCIPAL_CREATE] = "principal.create",
	[KMS_OP_PRINCIPAL_READ] = "principal.read",
	[KMS_OP_PRINCIPAL_LIST] = "principal.list",
	[KMS_OP_TOKEN_CREATE] = "token.create",
	[KMS_OP_TOKEN_REVOKE] = "token.revoke",
	[KMS_OP_TOKEN_LOOKUP_SELF] = "token.lookup_self",
	[KMS_OP_KEY_CREATE] = "key.create",
	[KMS_OP_KEY_READ] = "key.read",
	[KMS_OP_KEY_LIST] = "key.list",
	[KMS_OP_KEY_ROTATE] = "key.rotate",
	[KMS_OP_DATAKEY] = "datakey",
	[KMS_OP_ENCRYPT] = "encrypt",
	[KMS_OP_DECRYPT] = "decrypt",
	[KMS_OP_REWRAP] = "rewrap",
	[KMS_OP_KEY_CONFIG] = "key.config",
	[KMS_OP_KEY_REVOKE] = "key.revoke",
	[KMS_OP_KEY_RESTORE] = "key.restore",
	[KMS_OP_VERSION_DISABLE] = "key.version.disable",
	[KMS_OP_VERSION_ENABLE] = "key.version.enable",
	[KMS_OP_KEY_HISTORY] = "key.history",
	[KMS_OP_VERSION_SCHEDULE_DESTROY] = "key.version.schedule_destroy",
	[KMS_OP_VERSION_CANCEL_DESTROY] = "key.version.cancel_destroy",
	[KMS_OP_KEY_LEGAL_HOLD] = "key.legal_hold",
	[KMS_OP_TENANT_CONFIG] = "tenant.config",
	[KMS_OP_VERSION_DESTROY] = "key.version.destroy",
	[KMS_OP_VERSION_RECEIPT] = "key.version.receipt",
	[KMS_OP_POLICY_READ] = "policy.read",
	[KMS_OP_POLICY_WRITE] = "policy.write",
	[KMS_OP_AUDIT_HASH] = "audit.hash",
	[KMS_OP_METRICS] = "sys.metrics",
	[KMS_OP_TOKEN_LOOKUP_ACCESSOR] = "token.lookup_accessor",
	[KMS_OP_KEY_TRIM] = "key.trim",
	[KMS_OP_MASTER_KEY_ROTATE] = "sys.master_key.rotate",
	[KMS_OP_MFA_ENROLL] = "mfa.enroll",
	[KMS_OP_MFA_CONFIRM] = "mfa.confirm",
	[KMS_OP_MFA_STATUS] = "mfa.status",
	[KMS_OP_MFA_VERIFY] = "mfa.verify",
	[KMS_OP_MFA_UNLOCK] = "mfa.unlock",
	[KMS_OP_MFA_RESET] = "mfa.reset",
};

const char *kms_op_name(enum kms_op op)
{
	if ((unsigned)op >= KMS_OP__COUNT || op_names[op] == 0)
		return "unknown";
	return op_names[op];
}
