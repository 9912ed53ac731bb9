/* Aggregations over audit records for `kmsctl audit report` (docs/KMSCTL.md):
 *
 * access (what one principal used: the blast radius of a stolen credential) - one row
 *   per (tenant, key, version) the principal's records name, all outcomes counted.
 * exposure (what a leaked KEK version exposes) - one row per principal that used one
 *   tenant/key/version through datakey, encrypt, decrypt or rewrap and got an answer
 *   with results: outcome "allow", or a batch answered 400, whose successful items
 *   still carry their results (kmsd records that as outcome "error").
 *
 * What the log can and cannot say (kms/core/ops_data.c): `version` is the version an
 * operation used: the ciphertext's for decrypt, the new ciphertext's for datakey,
 * encrypt and rewrap (so a rewrap record names the version it rewrapped *to*; the
 * version it came from is not recorded). A batch record carries one version, that of
 * its last successful item: a batch whose items used several versions is attributed to
 * that one. The exposure report therefore also counts, per principal, batch records of
 * the key whose recorded version is another one ("uncertain_batches"): they may hold
 * items under the version in question.
 *
 * Context hashes: the distinct encryption_context objects (each value an HMAC) of the
 * records that returned results (allow, or a batch answered 400), from the record and
 * its batch items (audit_view_each_context). Memory grows with the number of
 * rows, distinct contexts, remote addresses and request ids, not with the log. */
#ifndef KMS_AUDIT_REPORT_H
#define KMS_AUDIT_REPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "kms/audit/search.h"
#include "kms/base/err.h"

enum audit_report_kind {
	AUDIT_REPORT_ACCESS,
	AUDIT_REPORT_EXPOSURE,
};

struct audit_report;

/* version: the key version an exposure report is about (ignored for access). */
KMS_WUR kms_err audit_report_new(enum audit_report_kind kind, uint32_t version,
				 struct audit_report **out);

/* Counts one record that the caller's filter already selected (access: the principal
 * and time range; exposure: the tenant, key and time range). KMS_ERR_NOMEM. */
KMS_WUR kms_err audit_report_add(struct audit_report *rp, const struct audit_view *r);

/* The rows as a new JSON array, sorted (access: by tenant, key, version, nulls first;
 * exposure: by principal), or NULL without memory. Row members are in docs/KMSCTL.md. */
json_t *audit_report_rows(const struct audit_report *rp);

void audit_report_free(struct audit_report *rp);

/* Whether an operation uses a key version on data (datakey, encrypt, decrypt, rewrap). */
bool audit_op_is_data(const char *op);

/* Whether the record's answer carried results: outcome allow, or a batch answered 400. */
bool audit_released(const struct audit_view *r);

#endif
