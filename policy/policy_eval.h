/* The policy evaluator: a pure function of a compiled document (policy_doc.h) and one
 * request. No I/O, no globals, no allocation; safe to call from any number of threads on
 * the same document.
 *
 * Order (docs/POLICY.md):
 *   1. An input that names no valid operation is denied ("invalid request").
 *   2. A rule matches when every field it has matches: principals, tenants, keys,
 *      operations, and every condition. Absent tenants/keys/conditions match anything.
 *   3. If any matching rule has effect "deny", the answer is deny, and the reason is the
 *      first such rule in document order. Explicit deny wins over every allow.
 *   4. Otherwise, if any allow rule matches, the answer is allow; the reason is the first
 *      matching allow rule. require_mfa is true if any matching allow rule requires MFA,
 *      require_quorum is the largest over the matching allow rules (the strictest wins, so
 *      adding an allow rule never weakens another's requirements).
 *   5. Otherwise deny: default deny.
 *
 * Outputs are instructions to the caller: require_mfa means this request must carry a
 * valid TOTP code (step-up) before it is performed; require_quorum M means M approvals by
 * principals other than the requester must exist before it is performed. */
#ifndef KMS_POLICY_POLICY_EVAL_H
#define KMS_POLICY_POLICY_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "kms/base/op.h"
#include "policy/policy_doc.h"

#define POLICY_REASON_MAX 192

struct policy_kv {
	const char *key;
	const char *value;
};

/* A source address; family 0 = unknown (every source_cidr condition then fails).
 * IPv4-mapped IPv6 addresses are stored as IPv4. */
struct policy_addr {
	uint8_t family; /* 0, 4 or 6 */
	uint8_t a[16];
};

/* Both return 0 or -1 (and family 0). Text is a bare address ("10.1.2.3", "2001:db8::1",
 * "::ffff:10.1.2.3"); no brackets, port or zone. */
int policy_addr_from_text(const char *s, struct policy_addr *out);
int policy_addr_from_sockaddr(const struct sockaddr *sa, struct policy_addr *out);

struct policy_input {
	const char *principal; /* authenticated principal name; NULL = anonymous */
	const char *role;      /* its role string ("admin", "service"); NULL = none */
	/* Tenants the principal is scoped to ("@scope"), by id and/or by name. */
	const int64_t *scope_ids;
	size_t n_scope_ids;
	const char *const *scope_names;
	size_t n_scope_names;

	enum kms_op op;
	const char *tenant; /* tenant named by the request; NULL when it names none */
	int64_t tenant_id;  /* >0 the tenant exists, 0 unknown or none, -1 named but absent */
	const char *key;    /* key named by the request; NULL when none */
	const struct policy_kv *context; /* encryption_context pairs (one batch item) */
	size_t n_context;

	int64_t now;	   /* unix seconds */
	struct policy_addr source;
	int64_t mfa_at;	   /* unix time of the principal's last successful TOTP check; 0 none */
};

struct policy_verdict {
	bool allow;
	bool require_mfa;
	unsigned require_quorum;
	int rule;	  /* index of the deciding rule, -1 for default deny / invalid request */
	int mfa_rule;	  /* rule that imposed require_mfa, or -1 */
	int quorum_rule;  /* rule that imposed require_quorum, or -1 */
	char reason[POLICY_REASON_MAX]; /* for the audit record */
};

/* Always fills *out. doc NULL or in NULL -> deny. */
void policy_eval(const struct policy_doc *doc, const struct policy_input *in, struct policy_verdict *out);

/* Whether a rule with an mfa_max_age condition could decide this request (its operation
 * and principal match; other conditions not looked at): the caller then fills
 * in->mfa_at, which costs a store read, and not otherwise. */
bool policy_mfa_age_may_apply(const struct policy_doc *doc, const struct policy_input *in);

/* Glob as used in policies: '*' any run (also empty), '?' one character. */
bool policy_glob_match(const char *glob, const char *s);

#endif
