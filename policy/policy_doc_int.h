/* Internal to policy/: the compiled form of a policy document, shared by the parser
 * (policy_doc.c) and the evaluator (policy_eval.c). Everything hangs off the document's
 * arena and lives as long as the document. */
#ifndef KMS_POLICY_POLICY_DOC_INT_H
#define KMS_POLICY_POLICY_DOC_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/op.h"

_Static_assert(KMS_OP__COUNT <= 64, "operation sets are 64-bit masks");

struct pd_strs {
	const char **v;
	size_t n;
};

struct pd_ctx_cond {
	const char *key;
	struct pd_strs values; /* exact strings */
};

struct pd_cidr {
	uint8_t family; /* 4 or 6 */
	uint8_t prefix;
	uint8_t a[16]; /* network, host bits zero; IPv4 in a[0..3] */
};

struct pd_rule {
	const char *name;
	const char *reason; /* "policy v3 rule 2 \"name\": allow", ready for the audit record */
	bool deny;
	uint64_t ops; /* bit per enum kms_op */

	bool any_principal;    /* "*" */
	struct pd_strs names;  /* principal name globs */
	struct pd_strs roles;  /* "role:" globs, without the prefix */

	bool has_tenants; /* absent: any request, with or without a tenant */
	bool tenant_scope; /* "@scope" */
	struct pd_strs tenants;
	bool has_keys;
	struct pd_strs keys;

	struct pd_ctx_cond *ctx;
	size_t n_ctx;
	bool has_time;
	bool overnight;
	uint16_t t_start, t_end; /* minutes of the UTC day; end exclusive, may be 1440 */
	uint8_t weekdays;	 /* bit 0 = Monday ... bit 6 = Sunday */
	struct pd_cidr *cidrs;
	size_t n_cidrs;
	int64_t mfa_max_age; /* 0: no condition */

	bool require_mfa;
	unsigned quorum; /* 0: none */
};

struct pd_blk;

struct policy_doc {
	atomic_int refs;
	int64_t version;
	unsigned uses;
	struct pd_rule *rules;
	size_t n_rules;
	const char *default_reason;
	struct pd_blk *arena;
};

#endif
