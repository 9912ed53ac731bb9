/* The policy language: a JSON document compiled into an immutable struct policy_doc that
 * policy_eval() (policy_eval.h) decides on. docs/POLICY.md is the reference; in short:
 *
 *   {"version": 3, "description": "...",
 *    "rules": [{"name": "ehr-data-plane", "effect": "allow",
 *               "principals": ["ehr-*", "role:service"], "tenants": ["@scope"],
 *               "keys": ["phi-*"], "operations": ["datakey", "decrypt", "key.*"],
 *               "conditions": {"context": {"purpose": ["treatment", "payment"]},
 *                              "time": {"start": "07:00", "end": "19:00",
 *                                       "weekdays": ["mon", "tue"], "overnight": false},
 *                              "source_cidr": ["10.0.0.0/8", "fd00::/8"],
 *                              "mfa_max_age": 300},
 *               "require_mfa": true, "require_quorum": 2}]}
 *
 * Parsing is strict: unknown fields, duplicate keys, bad globs, unknown operations, bad
 * CIDRs, inverted time windows and the like refuse the whole document with the first error,
 * its JSON path (rules[2].operations[1]) and, when the document came as text, its line and
 * column. jansson does not record where values sit, so on an error the text is scanned
 * once more to find the line of the offending value (or key, for an unknown field).
 *
 * A compiled document is immutable apart from its reference count: the core may swap the
 * current document under a lock and keep evaluating on the old one until its last
 * reference is dropped. */
#ifndef KMS_POLICY_POLICY_DOC_H
#define KMS_POLICY_POLICY_DOC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define POLICY_DOC_MAX_BYTES (1024 * 1024) /* text size accepted by parse / load_file */
#define POLICY_DOC_MAX_RULES 1024
#define POLICY_NAME_MAX 64	/* rule names */
#define POLICY_GLOB_MAX 128	/* principal, role, tenant and key globs */
#define POLICY_CTX_KEY_MAX 128	/* encryption_context keys in conditions */
#define POLICY_CTX_VAL_MAX 256	/* encryption_context values in conditions */
#define POLICY_LIST_MAX 256	/* entries in any one list */
#define POLICY_MFA_MAX_AGE 86400
#define POLICY_QUORUM_MAX 16

struct policy_doc;

/* Where and why a document was refused. line/column are 1-based, 0 when unknown (a
 * document given as json_t, or a location the scan could not find). path is "" for
 * syntax errors and errors about the document as a whole. */
struct policy_doc_error {
	unsigned line;
	unsigned column;
	char path[96];
	char reason[160];
};

/* Compiles len bytes of JSON text. On error returns KMS_ERR_INVALID (KMS_ERR_NOMEM for
 * memory), fills *err (may be NULL) and sets the error detail to
 * "policy line L column C at <path>: <reason>"; *out is left NULL. */
KMS_WUR kms_err policy_doc_parse(const char *text, size_t len, struct policy_doc **out,
				 struct policy_doc_error *err);

/* Same, from an already parsed object (e.g. the body of a policy-replace request). Errors
 * carry the path only. */
KMS_WUR kms_err policy_doc_from_json(const json_t *root, struct policy_doc **out,
				     struct policy_doc_error *err);

/* Reads and compiles a file (at most POLICY_DOC_MAX_BYTES). I/O errors -> KMS_ERR_IO. */
KMS_WUR kms_err policy_doc_load_file(const char *path, struct policy_doc **out,
				     struct policy_doc_error *err);

/* The built-in document: today's two roles (admin manages and never gets key material;
 * service uses keys and reads metadata on the tenants it is scoped to; health is public;
 * any admin or service principal may look up its own token). Evaluating it gives the same
 * allow/deny as policy_decide() in policy.h. */
extern const char policy_doc_default_json[];
KMS_WUR kms_err policy_doc_default(struct policy_doc **out);

/* Reference counting (atomic). policy_doc_free drops one reference; accepts NULL. */
struct policy_doc *policy_doc_ref(struct policy_doc *doc);
void policy_doc_free(struct policy_doc *doc);

int64_t policy_doc_version(const struct policy_doc *doc);
size_t policy_doc_rule_count(const struct policy_doc *doc);
const char *policy_doc_rule_name(const struct policy_doc *doc, size_t i); /* NULL if out of range */

/* What the document looks at, so the core can skip gathering inputs nobody reads. */
#define POLICY_USES_CONTEXT 0x1u /* some rule has a context condition: evaluate per batch item */
#define POLICY_USES_TIME 0x2u
#define POLICY_USES_SOURCE 0x4u
#define POLICY_USES_MFA_AGE 0x8u
#define POLICY_USES_REQUIRE_MFA 0x10u
#define POLICY_USES_QUORUM 0x20u
#define POLICY_USES_KEYS 0x40u
unsigned policy_doc_uses(const struct policy_doc *doc);

#endif
