/* The policy decision: a pure function of who asks, for what, on which tenant. No I/O,
 * no globals, so it is tested as a table. Default deny; the reason string (static) goes
 * into the audit record. The full policy language (rules, conditions, MFA and quorum
 * as outputs) replaces the role rules here without changing the call. */
#ifndef KMS_POLICY_POLICY_H
#define KMS_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/op.h"

enum policy_role { POLICY_ROLE_NONE = 0, POLICY_ROLE_ADMIN, POLICY_ROLE_SERVICE, POLICY_ROLE_AUDITOR };

struct policy_subject {
	enum policy_role role;
	const int64_t *tenant_ids; /* tenants a service is scoped to, ascending */
	size_t n_tenants;
};

struct policy_request {
	enum kms_op op;
	int64_t tenant_id; /* 0 when the operation names no tenant, -1 when the named tenant does not exist */
};

struct policy_decision {
	bool allow;
	const char *reason; /* static string */
};

/* Auditors read what an audit needs, on every tenant, and nothing else: no state
 * change, no key material (policy_auditor_may). */
bool policy_auditor_may(enum kms_op op);

struct policy_decision policy_decide(const struct policy_subject *who, const struct policy_request *req);

/* "admin" / "service" / "auditor" <-> role; unknown -> POLICY_ROLE_NONE / "none". */
enum policy_role policy_role_parse(const char *s);
const char *policy_role_name(enum policy_role r);

#endif
