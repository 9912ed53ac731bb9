/* Request metrics (contract in metrics.h). */
#include "kms/core/metrics.h"

#include <inttypes.h>

static const double bounds_s[METRICS_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
						  0.05,	  0.1,	 0.25,	 0.5,	1,    2.5};
static const char *const outcome_names[METRICS__N] = {"allow", "deny", "error"};

#define ADD(p, n) __atomic_fetch_add((p), (n), __ATOMIC_RELAXED)
#define GET(p) __atomic_load_n((p), __ATOMIC_RELAXED)

void metrics_observe(struct core_metrics *m, enum kms_op op, enum metrics_outcome o, int status,
		     kms_err rc, int authenticated, uint64_t duration_us)
{
	double s = (double)duration_us / 1e6;
	unsigned b = 0;

	if ((unsigned)op >= KMS_OP__COUNT || (unsigned)o >= METRICS__N)
		return;
	ADD(&m->requests[op][o], 1);
	while (b < METRICS_BUCKETS && s > bounds_s[b])
		b++;
	ADD(&m->latency[op][b], 1);
	ADD(&m->latency_us[op], duration_us);
	if (status == 429)
		ADD(&m->rate_limited, 1);
	else if (o == METRICS_DENY && authenticated)
		ADD(&m->policy_denied, 1);
	else if (o == METRICS_DENY)
		ADD(&m->auth_failed, 1);
	if (rc == KMS_ERR_TOKEN)
		ADD(&m->token_errors, 1);
	else if (rc == KMS_ERR_STORE)
		ADD(&m->store_errors, 1);
	else if (rc == KMS_ERR_AUDIT)
		ADD(&m->audit_refused, 1);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name, v);
}

void metrics_write_prometheus(const struct core_metrics *m, FILE *f)
{
	fprintf(f, "# HELP kmsd_requests_total Requests answered, by operation and outcome.\n"
		   "# TYPE kmsd_requests_total counter\n");
	for (int op = 1; op < KMS_OP__COUNT; op++)
		for (int o = 0; o < METRICS__N; o++) {
			uint64_t v = GET(&m->requests[op][o]);
			if (v > 0)
				fprintf(f, "kmsd_requests_total{operation=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
					kms_op_name((enum kms_op)op), outcome_names[o], v);
		}
	fprintf(f, "# HELP kmsd_request_duration_seconds Time from a request's dispatch to its "
		   "answer, audit record included.\n"
		   "# TYPE kmsd_request_duration_seconds histogram\n");
	for (int op = 1; op < KMS_OP__COUNT; op++) {
		uint64_t cum = 0, n = 0;

		for (int b = 0; b <= METRICS_BUCKETS; b++)
			n += GET(&m->latency[op][b]);
		if (n == 0)
			continue;
		for (int b = 0; b <= METRICS_BUCKETS; b++) {
			cum += GET(&m->latency[op][b]);
			if (b < METRICS_BUCKETS)
				fprintf(f, "kmsd_request_duration_seconds_bucket{operation=\"%s\",le=\"%g\"} %" PRIu64 "\n",
					kms_op_name((enum kms_op)op), bounds_s[b], cum);
			else
				fprintf(f, "kmsd_request_duration_seconds_bucket{operation=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
					kms_op_name((enum kms_op)op), cum);
		}
		fprintf(f, "kmsd_request_duration_seconds_sum{operation=\"%s\"} %.6f\n",
			kms_op_name((enum kms_op)op), (double)GET(&m->latency_us[op]) / 1e6);
		fprintf(f, "kmsd_request_duration_seconds_count{operation=\"%s\"} %" PRIu64 "\n",
			kms_op_name((enum kms_op)op), cum);
	}
	counter(f, "kmsd_rate_limited_total", "Requests answered 429 (rate limits).", GET(&m->rate_limited));
	counter(f, "kmsd_policy_denials_total", "Requests of authenticated principals the policy denied.",
		GET(&m->policy_denied));
	counter(f, "kmsd_auth_failures_total", "Requests without a valid token.", GET(&m->auth_failed));
	counter(f, "kmsd_token_errors_total", "Requests failed by the PKCS#11 token.", GET(&m->token_errors));
	counter(f, "kmsd_store_errors_total", "Requests failed by the metadata store.", GET(&m->store_errors));
	counter(f, "kmsd_audit_refusals_total",
		"Requests refused because their audit record could not be written.", GET(&m->audit_refused));
	counter(f, "kmsd_mfa_verified_total", "TOTP or recovery codes accepted.", GET(&m->mfa_verified));
	counter(f, "kmsd_mfa_failures_total", "MFA codes refused (wrong, already used, malformed).",
		GET(&m->mfa_failed));
	counter(f, "kmsd_mfa_missing_total", "Requests that needed an MFA step-up and carried no usable code.",
		GET(&m->mfa_missing));
	counter(f, "kmsd_mfa_lockouts_total", "Principals locked out by consecutive MFA failures.",
		GET(&m->mfa_lockouts));
	counter(f, "kmsd_mfa_locked_refusals_total", "MFA checks refused because the principal is locked.",
		GET(&m->mfa_locked));
	counter(f, "kmsd_break_glass_activations_total", "Break-glass grants made.",
		GET(&m->break_glass_activations));
	counter(f, "kmsd_break_glass_decrypts_total",
		"Decrypt and rewrap calls the policy refused and a break-glass grant allowed.",
		GET(&m->break_glass_decrypts));
	counter(f, "kmsd_store_integrity_failures_total",
		"Store rows that grant authority refused for a missing or wrong MAC (edited outside kmsd).",
		GET(&m->integrity_failed));
	counter(f, "kmsd_cluster_changes_total",
		"Changes read from the shared store's change log (several nodes on PostgreSQL).",
		GET(&m->cluster_changes));
	counter(f, "kmsd_cluster_refresh_errors_total",
		"Cached keys that could not be read again after another node changed them.",
		GET(&m->cluster_refresh_errors));
}

