/* Operations evidence: the Prometheus text (core_metrics_prometheus, shared by
 * GET /v1/sys/metrics and the metrics listener) with its key-state gauges, and
 * GET /v1/sys/compliance, the data behind `kmsctl report compliance` (docs/API.md,
 * docs/HIPAA-GDPR.md). Both only read: the store through one aggregate query each, the
 * audit log through its in-memory state. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/audit/audit.h"
#include "kms/base/json.h"
#include "kms/base/clock.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/core/authcache.h"
#include "kms/core/core_int.h"
#include "kms/core/hmaccache.h"

/* ---- metrics ------------------------------------------------------------------- */

/* Refreshes the cached gauges when older than CORE_GAUGE_REFRESH_MS. Caller holds
 * gauge_mu. A failed refresh keeps the previous figures and says so in the log. */
static void gauges_refresh_locked(struct core *c)
{
	struct store_tenant_states *t = NULL;
	struct store_usage u;
	size_t n = 0;
	int64_t now = kms_mono_ms();
	kms_err rc;

	if (c->gauge_at_ms != 0 && now - c->gauge_at_ms < CORE_GAUGE_REFRESH_MS)
		return;
	rc = store_version_gauges(c->st, c->opt.max_encryptions, &t, &n, &u);
	if (rc != KMS_OK) {
		kms_warn("metrics: key-state gauges not refreshed: %s", kms_err_detail(rc));
		return;
	}
	free(c->gauge_tenants);
	c->gauge_tenants = t;
	c->gauge_n = n;
	c->gauge_usage = u;
	c->gauge_at_ms = now;
}

/* A label value as the exposition format wants it: backslash, quote and newline
 * escaped. Tenant names cannot hold them (the API checks names), but the store is a
 * file that could have been edited. */
static void put_label(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void gauges_write(struct core *c, FILE *f)
{
	static const char *const states[4] = {"enabled", "disabled", "pending_destruction", "destroyed"};
	uint64_t limit = c->opt.max_encryptions;
	int64_t now = core_now();

	pthread_mutex_lock(&c->gauge_mu);
	gauges_refresh_locked(c);
	fprintf(f, "# HELP kmsd_key_versions Key versions by tenant and stored state.\n"
		   "# TYPE kmsd_key_versions gauge\n");
	for (size_t i = 0; i < c->gauge_n; i++)
		for (int s = 0; s < 4; s++) {
			fputs("kmsd_key_versions{tenant=\"", f);
			put_label(f, c->gauge_tenants[i].tenant);
			fprintf(f, "\",state=\"%s\"} %" PRIu64 "\n", states[s], c->gauge_tenants[i].versions[s]);
		}
	fprintf(f,
		"# HELP kmsd_key_version_encryption_limit Encryptions allowed per key version "
		"(max_encryptions_per_version).\n"
		"# TYPE kmsd_key_version_encryption_limit gauge\n"
		"kmsd_key_version_encryption_limit %" PRIu64 "\n"
		"# HELP kmsd_key_version_encryptions_reserved_max The most encryptions reserved by "
		"any key version not destroyed (counted in reserved blocks, so at most one block "
		"above the encryptions made).\n"
		"# TYPE kmsd_key_version_encryptions_reserved_max gauge\n"
		"kmsd_key_version_encryptions_reserved_max %" PRIu64 "\n"
		"# HELP kmsd_key_version_usage_ratio_max kmsd_key_version_encryptions_reserved_max "
		"over the limit.\n"
		"# TYPE kmsd_key_version_usage_ratio_max gauge\n"
		"kmsd_key_version_usage_ratio_max %.6f\n"
		"# HELP kmsd_key_versions_usage_over_ratio Key versions not destroyed that reserved "
		"at least this share of the limit.\n"
		"# TYPE kmsd_key_versions_usage_over_ratio gauge\n"
		"kmsd_key_versions_usage_over_ratio{ratio=\"0.5\"} %" PRIu64 "\n"
		"kmsd_key_versions_usage_over_ratio{ratio=\"0.9\"} %" PRIu64 "\n",
		limit, c->gauge_usage.max_reserved,
		limit ? (double)c->gauge_usage.max_reserved / (double)limit : 0.0, c->gauge_usage.over_half,
		c->gauge_usage.over_90);
	fprintf(f, "# HELP kmsd_next_destruction_seconds Seconds until the earliest scheduled key "
		   "version destruction is due (negative: overdue, the scheduler runs it next); "
		   "absent when none is scheduled.\n"
		   "# TYPE kmsd_next_destruction_seconds gauge\n");
	if (c->gauge_usage.next_destroy != 0)
		fprintf(f, "kmsd_next_destruction_seconds %" PRId64 "\n", c->gauge_usage.next_destroy - now);
	pthread_mutex_unlock(&c->gauge_mu);
}

static void audit_write(struct core *c, FILE *f)
{
	static const uint64_t bounds_us[AUDIT_FSYNC_BUCKETS] = AUDIT_FSYNC_BOUNDS_US;
	struct audit_stats st;
	uint64_t cum = 0;

	audit_get_stats(c->au, &st);
	fprintf(f,
		"# HELP kmsd_audit_records_total Audit records made durable since start.\n"
		"# TYPE kmsd_audit_records_total counter\n"
		"kmsd_audit_records_total %" PRIu64 "\n"
		"# HELP kmsd_audit_syncs_total fdatasync calls on the audit log since start "
		"(one per group commit).\n"
		"# TYPE kmsd_audit_syncs_total counter\n"
		"kmsd_audit_syncs_total %" PRIu64 "\n"
		"# HELP kmsd_audit_segments_rotated_total Audit segments rotated since start.\n"
		"# TYPE kmsd_audit_segments_rotated_total counter\n"
		"kmsd_audit_segments_rotated_total %" PRIu64 "\n"
		"# HELP kmsd_audit_last_seq Sequence number of the last durable audit record.\n"
		"# TYPE kmsd_audit_last_seq gauge\n"
		"kmsd_audit_last_seq %" PRIu64 "\n"
		"# HELP kmsd_audit_healthy 1 while the audit log accepts records, 0 once it failed.\n"
		"# TYPE kmsd_audit_healthy gauge\n"
		"kmsd_audit_healthy %d\n"
		"# HELP kmsd_audit_syslog_sent_total Records forwarded to syslog (audit_syslog).\n"
		"# TYPE kmsd_audit_syslog_sent_total counter\n"
		"kmsd_audit_syslog_sent_total %" PRIu64 "\n"
		"# HELP kmsd_audit_syslog_dropped_total Records that could not be forwarded to syslog.\n"
		"# TYPE kmsd_audit_syslog_dropped_total counter\n"
		"kmsd_audit_syslog_dropped_total %" PRIu64 "\n"
		"# HELP kmsd_audit_queue_depth Audit records given a sequence number but not yet "
		"durable (waiting for or in a group commit).\n"
		"# TYPE kmsd_audit_queue_depth gauge\n"
		"kmsd_audit_queue_depth %" PRIu64 "\n"
		"# HELP kmsd_audit_unsigned_records Records after the last signed checkpoint.\n"
		"# TYPE kmsd_audit_unsigned_records gauge\n"
		"kmsd_audit_unsigned_records %" PRIu64 "\n",
		st.records, st.syncs, st.segments, st.seq, st.healthy ? 1 : 0, st.syslog_sent, st.syslog_dropped,
		st.queue_depth, st.unsigned_records);
	fprintf(f, "# HELP kmsd_audit_fsync_duration_seconds fdatasync latency of the audit log "
		   "(successful syncs).\n"
		   "# TYPE kmsd_audit_fsync_duration_seconds histogram\n");
	for (int b = 0; b <= AUDIT_FSYNC_BUCKETS; b++) {
		cum += st.fsync_hist[b];
		if (b < AUDIT_FSYNC_BUCKETS)
			fprintf(f, "kmsd_audit_fsync_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
				(double)bounds_us[b] / 1e6, cum);
		else
			fprintf(f, "kmsd_audit_fsync_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
	}
	fprintf(f, "kmsd_audit_fsync_duration_seconds_sum %.6f\nkmsd_audit_fsync_duration_seconds_count %" PRIu64 "\n",
		(double)st.fsync_us_sum / 1e6, cum);
}

/* The authentication and audit-HMAC caches (authcache.h, hmaccache.h). */
static void caches_write(struct core *c, FILE *f)
{
	struct authcache_stats ac;
	struct hmaccache_stats hs;

	authcache_get_stats(c->authc, &ac);
	hmaccache_get_stats(c->hmacc, &hs);
	fprintf(f,
		"# HELP kmsd_auth_cache_hits_total Authentications answered from the auth cache.\n"
		"# TYPE kmsd_auth_cache_hits_total counter\n"
		"kmsd_auth_cache_hits_total %" PRIu64 "\n"
		"# HELP kmsd_auth_cache_misses_total Authentications that read the store.\n"
		"# TYPE kmsd_auth_cache_misses_total counter\n"
		"kmsd_auth_cache_misses_total %" PRIu64 "\n"
		"# HELP kmsd_auth_cache_flushes_total Times the auth cache was emptied (a store write).\n"
		"# TYPE kmsd_auth_cache_flushes_total counter\n"
		"kmsd_auth_cache_flushes_total %" PRIu64 "\n"
		"# HELP kmsd_audit_hmac_cache_hits_total Context values whose audit HMAC came from the cache.\n"
		"# TYPE kmsd_audit_hmac_cache_hits_total counter\n"
		"kmsd_audit_hmac_cache_hits_total %" PRIu64 "\n"
		"# HELP kmsd_audit_hmac_cache_misses_total Context values sent to the token for their audit HMAC.\n"
		"# TYPE kmsd_audit_hmac_cache_misses_total counter\n"
		"kmsd_audit_hmac_cache_misses_total %" PRIu64 "\n",
		ac.hits, ac.misses, ac.flushes, hs.hits, hs.misses);
}

kms_err core_metrics_prometheus(struct core *c, char **text)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return kms_errf(KMS_ERR_NOMEM, "metrics");
	audit_write(c, f);
	metrics_write_prometheus(&c->met, f);
	p11_metrics_write(f);
	gauges_write(c, f);
	caches_write(c, f);
	if (fclose(f) != 0 || buf == NULL) {
		free(buf);
		return kms_errf(KMS_ERR_NOMEM, "metrics");
	}
	*text = buf;
	return KMS_OK;
}

/* ---- compliance ---------------------------------------------------------------- */

/* HIPAA Security Rule citations used by the report, with their titles. */
#define C_AUDIT "164.312(b)"
#define C_REVIEW "164.308(a)(1)(ii)(D)"
#define C_ENCRYPT "164.312(a)(2)(iv)"
#define C_INTEGRITY "164.312(c)(1)"
#define C_AUTHN "164.312(d)"
#define C_ACCESS "164.312(a)(1)"
#define C_AUTHZ "164.308(a)(4)(ii)(B)"
#define C_EMERGENCY "164.312(a)(2)(ii)"

static json_t *controls_table(void)
{
	return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "§" C_AUDIT, "Audit controls", "§" C_REVIEW,
			 "Information system activity review", "§" C_ENCRYPT, "Encryption and decryption",
			 "§" C_INTEGRITY, "Integrity (protection from improper alteration or destruction)",
			 "§" C_AUTHN, "Person or entity authentication", "§" C_ACCESS, "Access control",
			 "§" C_AUTHZ, "Access authorization", "§" C_EMERGENCY, "Emergency access procedure");
}

/* A section: {"controls": [...], ...members of body}. Takes body. */
static json_t *section(json_t *body, const char *c1, const char *c2)
{
	json_t *ctl = json_array();

	if (body == NULL || ctl == NULL) {
		json_decref(body);
		json_decref(ctl);
		return NULL;
	}
	json_array_append_new(ctl, json_string(c1));
	if (c2 != NULL)
		json_array_append_new(ctl, json_string(c2));
	if (json_object_set_new(body, "controls", ctl) != 0) {
		json_decref(body);
		return NULL;
	}
	return body;
}

/* "§"-prefixed control ids: written as UTF-8 in the JSON, the same text as the table. */
#define S(id) "§" id

/* Admins without MFA: every admin and auditor with its TOTP enrolment state ("none",
 * "pending" until confirmed by a first code, "active") and whether it is locked out;
 * "admins" lists those without an active enrolment. One store_mfa_get per human
 * principal (there are few); the sealed seeds it reads are wiped at once. */
static kms_err compliance_admins_mfa(struct core *c, json_t **out)
{
	struct store_principal *p = NULL;
	struct store_mfa *m = NULL;
	size_t n = 0;
	json_t *sec = NULL, *admins, *all;
	kms_err rc;

	if ((rc = store_principal_list(c->st, &p, &n)) != KMS_OK)
		return rc;
	m = calloc(1, sizeof(*m));
	sec = json_pack("{s:s,s:[],s:[]}", "mfa_enrolment", "totp", "admins", "principals");
	if (m == NULL || sec == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "compliance");
		goto out;
	}
	admins = json_object_get(sec, "admins");
	all = json_object_get(sec, "principals");
	for (size_t i = 0; i < n; i++) {
		const char *state = "none";
		bool locked = false;
		int64_t mfa_at = 0;
		json_t *row;

		if (strcmp(p[i].role, "admin") != 0 && strcmp(p[i].role, "auditor") != 0)
			continue;
		rc = store_mfa_get(c->st, p[i].id, m);
		if (rc == KMS_OK) {
			state = strcmp(m->state, "active") == 0 ? "active" : "pending";
			locked = m->locked;
			mfa_at = m->mfa_at;
		} else if (rc != KMS_ERR_NOT_FOUND) {
			goto out;
		}
		kms_wipe(m, sizeof(*m));
		rc = KMS_OK;
		row = json_pack("{s:o,s:s,s:I,s:s,s:b,s:o}", "name", kms_json_text(p[i].name), "role",
				p[i].role, "created", (json_int_t)p[i].created, "mfa", state, "locked",
				locked, "last_mfa", mfa_at ? json_integer(mfa_at) : json_null());
		if (row == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "compliance");
			goto out;
		}
		if (strcmp(state, "active") != 0)
			json_array_append(admins, row);
		json_array_append_new(all, row);
	}
	*out = section(sec, S(C_AUTHN), S(C_ACCESS));
	sec = NULL;
	rc = *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "compliance");
out:
	if (m != NULL)
		kms_wipe(m, sizeof(*m));
	free(m);
	free(p);
	json_decref(sec);
	return rc;
}

/* Break-glass grants that have fewer admin reviews than break_glass_reviews, each as
 * GET /v1/sys/break-glass shows it. */
static kms_err compliance_breakglass_unreviewed(struct core *c, json_t **out)
{
	json_t *ids, *grants;
	kms_err rc;

	if ((rc = core_breakglass_grants(c, true, &ids, &grants)) != KMS_OK)
		return rc;
	json_decref(ids);
	*out = section(json_pack("{s:o}", "grants", grants), S(C_EMERGENCY), S(C_REVIEW));
	return *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "compliance");
}

static kms_err compliance_principals(struct core *c, json_t **out)
{
	struct store_principal *p = NULL;
	size_t n = 0;
	json_t *roles = json_object();
	kms_err rc;

	if (roles == NULL)
		return kms_errf(KMS_ERR_NOMEM, "compliance");
	if ((rc = store_principal_list(c->st, &p, &n)) != KMS_OK) {
		json_decref(roles);
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *arr = json_object_get(roles, p[i].role);

		if (arr == NULL) {
			arr = json_array();
			json_object_set_new(roles, p[i].role, arr);
		}
		json_array_append_new(arr, json_pack("{s:o,s:I}", "name", kms_json_text(p[i].name), "created",
						     (json_int_t)p[i].created));
	}
	free(p);
	*out = section(json_pack("{s:o}", "roles", roles), S(C_ACCESS), S(C_AUTHZ));
	return *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "compliance");
}

static kms_err compliance_tokens(struct core *c, json_t **out)
{
	struct store_token_owner *t = NULL;
	size_t n = 0;
	json_t *arr = json_array();
	kms_err rc;

	if (arr == NULL)
		return kms_errf(KMS_ERR_NOMEM, "compliance");
	if ((rc = store_tokens_without_expiry(c->st, &t, &n)) != KMS_OK) {
		json_decref(arr);
		return rc;
	}
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, json_pack("{s:s,s:o,s:s,s:I,s:I}", "accessor", t[i].accessor, "principal",
						     kms_json_text(t[i].principal), "role", t[i].role, "created",
						     (json_int_t)t[i].created, "last_used", (json_int_t)t[i].last_used));
	free(t);
	*out = section(json_pack("{s:o}", "tokens", arr), S(C_AUTHN), S(C_ACCESS));
	return *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "compliance");
}

static kms_err compliance_audit(struct core *c, json_t **out)
{
	struct audit_stats st;
	json_t *ck = NULL, *sec;
	const char *status;

	audit_get_stats(c->au, &st);
	if (st.ckpt_seq != 0)
		ck = json_pack("{s:I,s:I,s:s}", "seq", (json_int_t)st.ckpt_seq, "covered_seq",
			       (json_int_t)st.ckpt_covered, "time", st.ckpt_time);
	else
		ck = json_null();
	if (!st.healthy)
		status = "failed";
	else if (!st.signer)
		status = "unsigned: no checkpoint signer configured";
	else if (st.ckpt_seq == 0)
		status = "ok: chain continuous; no signed checkpoint since kmsd started";
	else
		status = "ok";
	sec = json_pack("{s:s,s:b,s:o,s:I,s:s,s:o,s:I,s:I,s:s}", "status", status, "healthy", st.healthy,
			"error", st.healthy ? json_null() : kms_json_text(st.why), "head_seq",
			(json_int_t)st.head_seq, "head_hash", st.head_hash, "last_checkpoint", ck,
			"unsigned_records", (json_int_t)st.unsigned_records, "records_since_start",
			(json_int_t)st.records, "offline_verification",
			"kmsctl audit verify --pubkey <audit_path>.pub.pem <segments...> <audit_path>");
	*out = section(sec, S(C_AUDIT), S(C_REVIEW));
	return *out ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "compliance");
}

/* Tenants, keys, versions and their ages against each key's rotation policy, keys past
 * their rotation date, the destruction queue and legal holds: one store query. */
static kms_err compliance_keys(struct core *c, int64_t now, json_t *doc)
{
	struct store_crow *r = NULL;
	size_t n = 0;
	json_t *tenants = json_array(), *past = json_array(), *queue = json_array(), *holds_t = json_array(),
	       *holds_k = json_array();
	json_t *tenant = NULL, *keys = NULL, *key = NULL, *vers = NULL;
	kms_err rc;

	if (tenants == NULL || past == NULL || queue == NULL || holds_t == NULL || holds_k == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "compliance");
		goto out;
	}
	if ((rc = store_compliance_rows(c->st, &r, &n)) != KMS_OK)
		goto out;
	for (size_t i = 0; i < n; i++) {
		bool new_tenant = i == 0 || strcmp(r[i].tenant, r[i - 1].tenant) != 0;
		bool new_key = new_tenant || strcmp(r[i].key, r[i - 1].key) != 0;

		if (new_tenant) {
			keys = json_array();
			tenant = json_pack("{s:s,s:s,s:b,s:o}", "name", r[i].tenant, "retention", r[i].retention,
					   "legal_hold", r[i].tenant_hold, "keys", keys);
			json_array_append_new(tenants, tenant);
			if (r[i].tenant_hold)
				json_array_append_new(holds_t, json_string(r[i].tenant));
		}
		if (r[i].key[0] == '\0')
			continue;
		if (new_key) {
			json_t *due = json_null();
			bool overdue = false;

			vers = json_array();
			key = json_pack("{s:s,s:I,s:I,s:I,s:b,s:b,s:o}", "name", r[i].key, "created",
					(json_int_t)r[i].key_created, "latest_version", (json_int_t)r[i].latest,
					"auto_rotate_period", (json_int_t)r[i].auto_rotate_period, "revoked",
					r[i].revoked, "legal_hold", r[i].key_hold, "versions", vers);
			json_array_append_new(keys, key);
			if (r[i].key_hold)
				json_array_append_new(holds_k, json_pack("{s:s,s:s}", "tenant", r[i].tenant, "key",
									  r[i].key));
			/* rotation due: filled in when the latest version's row comes by */
			json_object_set_new(key, "rotation_due", due);
			json_object_set_new(key, "past_rotation_date", json_boolean(overdue));
		}
		if (r[i].version == 0)
			continue;
		json_array_append_new(
			vers, json_pack("{s:I,s:s,s:I,s:I,s:o,s:I}", "version", (json_int_t)r[i].version, "state",
					r[i].state, "created", (json_int_t)r[i].created, "age_seconds",
					(json_int_t)(now - r[i].created), "destroy_after",
					strcmp(r[i].state, STORE_STATE_PENDING) == 0
						? json_integer((json_int_t)r[i].destroy_after)
						: json_null(),
					"encryptions_reserved", (json_int_t)r[i].enc_reserved));
		if (strcmp(r[i].state, STORE_STATE_PENDING) == 0)
			json_array_append_new(queue, json_pack("{s:s,s:s,s:I,s:I,s:b}", "tenant", r[i].tenant, "key",
							       r[i].key, "version", (json_int_t)r[i].version,
							       "destroy_after", (json_int_t)r[i].destroy_after,
							       "blocked_by_legal_hold",
							       r[i].tenant_hold || r[i].key_hold));
		if (r[i].version == r[i].latest && r[i].auto_rotate_period > 0 && !r[i].revoked) {
			int64_t due = r[i].created + r[i].auto_rotate_period;

			json_object_set_new(key, "rotation_due", json_integer((json_int_t)due));
			json_object_set_new(key, "latest_version_age_seconds", json_integer((json_int_t)(now - r[i].created)));
			if (now > due) {
				json_object_set_new(key, "past_rotation_date", json_true());
				json_array_append_new(past, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "tenant", r[i].tenant,
								      "key", r[i].key, "latest_version",
								      (json_int_t)r[i].latest, "auto_rotate_period",
								      (json_int_t)r[i].auto_rotate_period, "rotation_due",
								      (json_int_t)due, "overdue_seconds",
								      (json_int_t)(now - due)));
			}
		}
	}
	if (json_object_set_new(doc, "key_inventory", section(json_pack("{s:O}", "tenants", tenants), S(C_ENCRYPT), NULL)) != 0 ||
	    json_object_set_new(doc, "rotation", section(json_pack("{s:O}", "keys_past_rotation_date", past), S(C_ENCRYPT), NULL)) != 0 ||
	    json_object_set_new(doc, "destruction_queue", section(json_pack("{s:O}", "versions", queue), S(C_INTEGRITY), S(C_ENCRYPT))) != 0 ||
	    json_object_set_new(doc, "legal_holds", section(json_pack("{s:O,s:O}", "tenants", holds_t, "keys", holds_k), S(C_INTEGRITY), NULL)) != 0)
		rc = kms_errf(KMS_ERR_NOMEM, "compliance");
	else
		rc = KMS_OK;
out:
	free(r);
	json_decref(tenants);
	json_decref(past);
	json_decref(queue);
	json_decref(holds_t);
	json_decref(holds_k);
	return rc;
}

kms_err op_compliance(struct core *c, struct op_ctx *x)
{
	int64_t now = core_now();
	json_t *doc, *sec = NULL;
	kms_err rc;

	doc = json_pack("{s:s,s:i,s:I,s:s,s:I,s:o}", "report", "kmsd compliance report", "format_version", 1,
			"generated_at", (json_int_t)now, "kmsd_version", KMS_VERSION, "max_encryptions_per_version",
			(json_int_t)c->opt.max_encryptions, "controls", controls_table());
	if (doc == NULL)
		return kms_errf(KMS_ERR_NOMEM, "compliance");
	if ((rc = compliance_keys(c, now, doc)) != KMS_OK)
		goto fail;
#define ADD(name, fn)                                                                     \
	do {                                                                              \
		if ((rc = fn(c, &sec)) != KMS_OK)                                         \
			goto fail;                                                        \
		if (json_object_set_new(doc, name, sec) != 0) {                           \
			rc = kms_errf(KMS_ERR_NOMEM, "compliance");                       \
			goto fail;                                                        \
		}                                                                         \
	} while (0)
	ADD("admins_without_mfa", compliance_admins_mfa);
	ADD("tokens_without_expiry", compliance_tokens);
	ADD("principals_by_role", compliance_principals);
	ADD("break_glass_without_review", compliance_breakglass_unreviewed);
	ADD("audit_chain", compliance_audit);
#undef ADD
	x->data = doc;
	return KMS_OK;
fail:
	json_decref(doc);
	return rc;
}
