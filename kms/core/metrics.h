/* Request metrics for GET /v1/sys/metrics (docs/API.md): counters by operation and
 * outcome, a latency histogram per operation, and counts of the refusals operators
 * alert on. Lock-free: relaxed atomic adds, read without a snapshot (a scrape may see
 * one request's counter before its histogram entry; Prometheus tolerates that). */
#ifndef KMS_CORE_METRICS_H
#define KMS_CORE_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "kms/base/err.h"
#include "kms/base/op.h"

#define METRICS_BUCKETS 12

enum metrics_outcome { METRICS_ALLOW, METRICS_DENY, METRICS_ERROR, METRICS__N };

struct core_metrics {
	uint64_t requests[KMS_OP__COUNT][METRICS__N];
	uint64_t latency[KMS_OP__COUNT][METRICS_BUCKETS + 1]; /* per bucket, the last is +Inf */
	uint64_t latency_us[KMS_OP__COUNT];
	uint64_t rate_limited;	  /* 429 answers */
	uint64_t policy_denied;	  /* 403 to an authenticated principal */
	uint64_t auth_failed;	  /* 401/403 without a valid token */
	uint64_t token_errors;	  /* calls failed by the PKCS#11 token */
	uint64_t store_errors;	  /* ... by the metadata store */
	uint64_t audit_refused;	  /* answered 503 because the record could not be written */
	/* TOTP step-up (kms/core/ops_mfa.c) */
	uint64_t mfa_verified;	  /* codes accepted (TOTP or recovery) */
	uint64_t mfa_failed;	  /* codes refused: wrong, replayed, malformed */
	uint64_t mfa_missing;	  /* step-up required, no code sent or not enrolled */
	uint64_t mfa_lockouts;	  /* principals locked by their last failure */
	uint64_t mfa_locked;	  /* checks refused because the principal is locked */
	uint64_t break_glass_activations; /* break-glass grants made */
	uint64_t break_glass_decrypts;	  /* decrypt/rewrap calls allowed only by a grant */
	uint64_t integrity_failed;	  /* authority rows refused: missing or wrong MAC */
	uint64_t cluster_changes;	  /* changes read from the store's change log (cluster.c) */
	uint64_t cluster_refresh_errors;  /* cached entries that could not be read again */
};

/* Counts one answered request: its operation, outcome, status, duration and, for a
 * failure, its error. */
void metrics_observe(struct core_metrics *m, enum kms_op op, enum metrics_outcome o, int status,
		     kms_err rc, int authenticated, uint64_t duration_us);

/* Writes the Prometheus text (version 0.0.4) of m to f. */
void metrics_write_prometheus(const struct core_metrics *m, FILE *f);

#endif
