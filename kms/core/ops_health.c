/* GET /v1/sys/health (docs/API.md, docs/OPERATIONS.md "Health checks"): Vault's
 * status-code semantics with a JSON body naming each check.
 *
 *   audit  the audit log accepts records (in-memory state, read on every call)
 *   token  the token answers C_GetSessionInfo on the logged-in holder session
 *   store  the store takes a write: the meta row health.clock_seen is rewritten
 *   clock  the wall clock lies within [CLOCK_FLOOR, CLOCK_CEILING) and is not more than
 *          CLOCK_TOLERANCE seconds before health.clock_seen, the newest time this check
 *          ever recorded (in any run: it is in the store)
 *
 * Load balancers poll health often, so the token and store checks run at most once a
 * second (under health_mu; a caller that finds a check running waits for it) and their
 * results are cached in between; the audit and clock verdicts are live. The store
 * write goes through the store's own lock like any small change and, with
 * synchronous=FULL, costs one WAL fsync a second at most, only while someone polls. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/audit/audit.h"
#include "kms/base/clock.h"
#include "kms/base/json.h"
#include "kms/core/core_int.h"

#define HEALTH_REFRESH_MS 1000
#define CLOCK_TOLERANCE 300	      /* seconds the clock may step back (NTP slews less) */
#define CLOCK_FLOOR 1704067200LL   /* 2024-01-01: older than any kmsd build */
#define CLOCK_CEILING 4102444800LL /* 2100-01-01 */
#define SEEN_KEY "health.clock_seen"

static bool clock_in_range(int64_t now)
{
	return now >= CLOCK_FLOOR && now < CLOCK_CEILING;
}

/* The store check: read the newest recorded time, write back the larger of it and now
 * (now only when it is plausible, so that a clock in the far future never becomes the
 * reference). Called with health_mu held. */
static void check_store(struct core *c, int64_t now)
{
	char buf[32] = "", val[32];
	int64_t seen = 0;
	kms_err rc;

	rc = store_meta_get(c->st, SEEN_KEY, buf, sizeof(buf));
	if (rc == KMS_OK) {
		char *end = NULL;
		long long v = strtoll(buf, &end, 10);

		if (end != buf && *end == '\0' && v > 0)
			seen = v;
	} else if (rc != KMS_ERR_NOT_FOUND) {
		goto fail;
	}
	if (clock_in_range(now) && now > seen)
		seen = now;
	snprintf(val, sizeof(val), "%" PRId64, seen);
	rc = store_meta_set(c->st, SEEN_KEY, val);
	if (rc != KMS_OK)
		goto fail;
	c->health_store_ok = true;
	c->health_store_err[0] = '\0';
	c->health_seen = seen;
	return;
fail:
	c->health_store_ok = false;
	snprintf(c->health_store_err, sizeof(c->health_store_err), "%s (the log has the details)",
		 kms_err_detail(rc));
}

static void refresh_locked(struct core *c, int64_t now)
{
	kms_err rc = p11_health(c->p11);

	c->health_token_ok = rc == KMS_OK;
	if (rc != KMS_OK)
		snprintf(c->health_token_err, sizeof(c->health_token_err), "%s", kms_err_detail(rc));
	check_store(c, now);
	c->health_at_ms = kms_mono_ms();
}

static void utc(int64_t t, char *out, size_t cap)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, cap, "%" PRId64, t);
}

/* NULL when the clock is sane, else why not (in buf). */
static const char *clock_problem(int64_t now, int64_t seen, char *buf, size_t cap)
{
	char a[40], b[40];

	utc(now, a, sizeof(a));
	if (now < CLOCK_FLOOR) {
		snprintf(buf, cap, "the clock reads %s, before 2024-01-01", a);
		return buf;
	}
	if (now >= CLOCK_CEILING) {
		snprintf(buf, cap, "the clock reads %s, after 2100-01-01", a);
		return buf;
	}
	if (seen > 0 && now + CLOCK_TOLERANCE < seen) {
		utc(seen, b, sizeof(b));
		snprintf(buf, cap,
			 "the clock reads %s, %" PRId64 " s before %s, the newest time the store has recorded "
			 "(more than %d s back)",
			 a, seen - now, b, CLOCK_TOLERANCE);
		return buf;
	}
	return NULL;
}

/* Vault's ?activecode= / ?sealedcode= (and the others, accepted and ignored: kmsd is
 * never a standby, sealed or uninitialised while it answers). */
static int status_param(const char *v, int dflt, bool *bad)
{
	char *end = NULL;
	long n;

	if (v == NULL)
		return dflt;
	n = strtol(v, &end, 10);
	if (end == v || *end != '\0' || n < 200 || n > 599) {
		*bad = true;
		return dflt;
	}
	return (int)n;
}

void core_health(struct core *c, const struct core_call *call, struct core_result *res)
{
	struct audit_stats st;
	json_t *b = json_object(), *checks = json_object();
	char why[512], token_err[sizeof(c->health_token_err)], store_err[sizeof(c->health_store_err)];
	const char *clk;
	bool audit_ok, token_ok, store_ok, cluster_ok = true, bad = false;
	json_t *cluster;
	int64_t now = core_now(), seen;
	int active = status_param(call->health_activecode, 200, &bad);
	int failed = status_param(call->health_sealedcode, 503, &bad);

	if (b == NULL || checks == NULL) {
		json_decref(b);
		json_decref(checks);
		res->status = 500;
		return;
	}
	if (bad) {
		json_t *errs = json_array();

		json_decref(checks);
		json_array_append_new(errs, json_string("activecode and sealedcode must be HTTP status codes 200..599"));
		json_object_set_new(b, "errors", errs);
		json_object_set_new(b, "request_id", json_string(res->request_id));
		res->status = 400;
		res->body = b;
		return;
	}
	pthread_mutex_lock(&c->health_mu);
	if (c->health_at_ms == 0 || kms_mono_ms() - c->health_at_ms >= HEALTH_REFRESH_MS)
		refresh_locked(c, now);
	token_ok = c->health_token_ok;
	store_ok = c->health_store_ok;
	seen = c->health_seen;
	memcpy(token_err, c->health_token_err, sizeof(token_err));
	memcpy(store_err, c->health_store_err, sizeof(store_err));
	pthread_mutex_unlock(&c->health_mu);

	audit_get_stats(c->au, &st);
	audit_ok = st.healthy;
	clk = clock_problem(now, seen, why, sizeof(why));
	json_object_set_new(checks, "audit", json_string(audit_ok ? "ok" : "failed"));
	if (!audit_ok)
		json_object_set_new(checks, "audit_error", kms_json_text(st.why));
	json_object_set_new(checks, "token", json_string(token_ok ? "ok" : "failed"));
	if (!token_ok)
		json_object_set_new(checks, "token_error", kms_json_text(token_err));
	json_object_set_new(checks, "store", json_string(store_ok ? "ok" : "failed"));
	if (!store_ok)
		json_object_set_new(checks, "store_error", kms_json_text(store_err));
	json_object_set_new(checks, "clock", json_string(clk == NULL ? "ok" : "failed"));
	if (clk != NULL)
		json_object_set_new(checks, "clock_error", kms_json_text(clk));
	cluster = core_cluster_health(c, &cluster_ok);
	if (cluster != NULL) {
		json_object_set_new(checks, "cluster", json_string(cluster_ok ? "ok" : "failed"));
		if (!cluster_ok)
			json_object_set_new(checks, "cluster_error",
					    json_string("the change log of the other nodes has not been read lately"));
		json_object_set_new(b, "cluster", cluster);
	}
	json_object_set_new(b, "initialized", json_true());
	json_object_set_new(b, "sealed", json_false());
	json_object_set_new(b, "standby", json_false());
	json_object_set_new(b, "server_time_utc", json_integer(now));
	json_object_set_new(b, "version", json_string(KMS_VERSION));
	if (kms_clock_is_test())
		json_object_set_new(b, "test_clock", json_true());
	json_object_set_new(b, "checks", checks);
	res->status = audit_ok && token_ok && store_ok && clk == NULL && cluster_ok ? active : failed;
	res->body = b;
}
