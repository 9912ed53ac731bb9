/* The catalogue of operations: routes map to one, policy decides on one, audit records
 * name one. Leaf header so that http, policy and core agree without including each other. */
#ifndef KMS_BASE_OP_H
#define KMS_BASE_OP_H

enum kms_op {
	KMS_OP_NONE = 0,
	KMS_OP_HEALTH,
	KMS_OP_TENANT_CREATE,
	KMS_OP_TENANT_READ,
	KMS_OP_TENANT_LIST,
	KMS_OP_PRINCIPAL_CREATE,
	KMS_OP_PRINCIPAL_READ,
	KMS_OP_PRINCIPAL_LIST,
	KMS_OP_TOKEN_CREATE,
	KMS_OP_TOKEN_REVOKE,
	KMS_OP_TOKEN_LOOKUP_SELF,
	KMS_OP_KEY_CREATE,
	KMS_OP_KEY_READ,
	KMS_OP_KEY_LIST,
	KMS_OP_KEY_ROTATE,
	KMS_OP_DATAKEY,
	KMS_OP_ENCRYPT,
	KMS_OP_DECRYPT,
	KMS_OP_REWRAP,
	/* key lifecycle */
	KMS_OP_KEY_CONFIG,
	KMS_OP_KEY_REVOKE,
	KMS_OP_KEY_RESTORE,
	KMS_OP_VERSION_DISABLE,
	KMS_OP_VERSION_ENABLE,
	KMS_OP_KEY_HISTORY,
	KMS_OP_VERSION_SCHEDULE_DESTROY,
	KMS_OP_VERSION_CANCEL_DESTROY,
	KMS_OP_KEY_LEGAL_HOLD,
	KMS_OP_TENANT_CONFIG,	   /* names a tenant through the sys path, not a mount */
	KMS_OP_VERSION_DESTROY,	   /* performed by the scheduler only; no route */
	KMS_OP_VERSION_RECEIPT,
	KMS_OP_POLICY_READ,
	KMS_OP_POLICY_WRITE,
	KMS_OP_AUDIT_HASH, /* HMAC a value the way audit records hash context values */
	KMS_OP_METRICS,
	KMS_OP_TOKEN_LOOKUP_ACCESSOR,
	KMS_OP_KEY_TRIM,
	KMS_OP_MASTER_KEY_ROTATE, /* steps of kmsd master-key rotate, relayed; no route */
	/* TOTP step-up (kms/core/ops_mfa.c) */
	KMS_OP_MFA_ENROLL,  /* the caller enrols itself */
	KMS_OP_MFA_CONFIRM, /* the caller confirms its pending enrolment with a first code */
	KMS_OP_MFA_STATUS,  /* the caller's own state, or a named principal's */
	KMS_OP_MFA_VERIFY,  /* checks a code (refreshes mfa_max_age) and does nothing else */
	KMS_OP_MFA_UNLOCK,  /* clears another principal's lockout */
	KMS_OP_MFA_RESET,   /* deletes another principal's enrolment (lost device) */
	/* quorum approvals and break-glass (docs/API.md "Approvals", "Break-glass") */
	KMS_OP_APPROVAL_LIST,
	KMS_OP_APPROVAL_READ,
	KMS_OP_APPROVAL_APPROVE,
	KMS_OP_APPROVAL_DENY,
	KMS_OP_BREAKGLASS_ACTIVATE,
	KMS_OP_BREAKGLASS_LIST,
	KMS_OP_BREAKGLASS_REVIEW,
	KMS_OP_COMPLIANCE, /* GET /v1/sys/compliance: the data of kmsctl report compliance */
	KMS_OP_SYS_BACKUP,  /* POST /v1/sys/backup: an encrypted archive (docs/OPERATIONS.md) */
	KMS_OP_SYS_RESTORE, /* kmsd restore, recorded in the restored log; no route */
	/* client certificates mapped to a principal (mTLS) */
	KMS_OP_PRINCIPAL_CERT_ADD,
	KMS_OP_PRINCIPAL_CERT_LIST,
	KMS_OP_PRINCIPAL_CERT_REVOKE,
	KMS_OP_STORE_INTEGRITY, /* an authority row failed its MAC, or rows were first MAC'd; no route */
	/* Refined operations: no route of their own. The core decides on one of these instead
	 * of the route's operation when the body does something that needs more care
	 * (core_policy_op); the audit record keeps the route's operation and names the refined
	 * one. A policy rule naming the route's operation ("key.config") covers them too. */
	KMS_OP_KEY_CONFIG_LOWER_MIN_DEC,   /* key.config lowering min_decryption_version */
	KMS_OP_KEY_LEGAL_HOLD_RELEASE,	   /* key.legal_hold with "hold": false */
	KMS_OP_TENANT_LEGAL_HOLD_RELEASE,  /* tenant.config with "legal_hold": false */
	KMS_OP__COUNT
};

/* Stable name used in audit records and policy ("key.rotate"); never NULL. */
const char *kms_op_name(enum kms_op op);

#endif
