/* Master-key rotation: every tenant KEK blob moved from the retiring master key to the
 * new one inside the token, in batches of one store transaction each, then the retiring
 * key destroyed once no row needs it. Run by `kmsd master-key rotate` (kms/kmsd.c), a
 * process of its own beside the serving kmsd; docs/KEY-LIFECYCLE.md "Master-key
 * rotation" says why and how it resumes.
 *
 * What makes it safe to kill at any moment:
 *   - a row's blob and mk_version change together, in one UPDATE, guarded by the blob
 *     and mk_version it was read with (a row destroyed or changed meanwhile is left
 *     alone): a row never names a master key that did not wrap its blob;
 *   - a batch is one transaction: a kill before the commit leaves its rows as they
 *     were, and the transit copies in the token die with the process's session;
 *   - the retiring key is destroyed only after the store shows no row under it, and
 *     recorded destroyed only after that, so a kill in between is finished by the next
 *     run (the key is already gone, no row needs it).
 * Every row's MAC is checked before its blob is rewrapped: a row edited in the
 * database is reported and left under the old key, never laundered into a valid row. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "kms/audit/audit.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/core/core_int.h"

#define MK_PASSES 8 /* a pass that moves nothing new twice in a row is a stuck row */
#define MK_RELAY_BATCH 256
#define MK_RELAY_CURSOR "mk_events_audited"

static void mk_event(struct store_mk_event *ev, const struct core_mk_opts *o, uint32_t version, const char *event,
		     const char *fmt, ...) KMS_PRINTF(5, 6);

static void mk_event(struct store_mk_event *ev, const struct core_mk_opts *o, uint32_t version, const char *event,
		     const char *fmt, ...)
{
	va_list ap;

	memset(ev, 0, sizeof(*ev));
	ev->time = core_now();
	ev->mk_version = version;
	snprintf(ev->event, sizeof(ev->event), "%s", event);
	snprintf(ev->principal, sizeof(ev->principal), "%s", o->principal ? o->principal : "unknown");
	va_start(ap, fmt);
	vsnprintf(ev->detail, sizeof(ev->detail), fmt, ap);
	va_end(ap);
}

kms_err core_mk_record(struct store *st, const struct core_mk_opts *o, uint32_t version, const char *event,
		       const char *detail)
{
	struct store_mk_event ev;

	mk_event(&ev, o, version, event, "%s", detail ? detail : "");
	return store_mk_event_add(st, &ev);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* One pass over the rows not yet under `to`, in (key, version) order. *moved: rows
 * committed under `to`; *failed: rows that could not be moved (bad MAC, blob that does
 * not unwrap); those are logged by name and left as they are. */
static kms_err mk_pass(struct store *st, struct p11 *p11, uint32_t to, const struct core_mk_opts *o,
		       uint64_t *moved, uint64_t *failed, uint64_t *total_moved)
{
	struct store_mk_row *rows = NULL, *ok_rows = NULL;
	struct store_version *nv = NULL;
	struct store_mk_event ev;
	int64_t after_key = 0;
	uint32_t after_version = 0;
	size_t batch = o->batch ? o->batch : 100;
	uint64_t left = 0;
	kms_err rc = KMS_OK;

	*moved = *failed = 0;
	rows = calloc(batch, sizeof(*rows));
	ok_rows = calloc(batch, sizeof(*ok_rows));
	nv = calloc(batch, sizeof(*nv));
	if (rows == NULL || ok_rows == NULL || nv == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "master-key rotation: out of memory");
		goto out;
	}
	for (;;) {
		size_t n = 0, k = 0, done = 0;

		rc = store_mk_pending(st, to, after_key, after_version, batch, rows, &n);
		if (rc != KMS_OK || n == 0)
			break;
		after_key = rows[n - 1].key_id;
		after_version = rows[n - 1].v.version;
		for (size_t i = 0; i < n; i++) {
			const struct store_mk_row *r = &rows[i];
			uint8_t mac[STORE_MAC_LEN];

			rc = core_row_mac_p11(p11, r->tenant, r->key, &r->v, mac);
			if (rc != KMS_OK)
				goto out;
			if (CRYPTO_memcmp(mac, r->v.mac, STORE_MAC_LEN) != 0) {
				kms_error("master-key rotation: %s/%s version %u fails its row MAC; left under master "
					  "key version %u",
					  r->tenant, r->key, r->v.version, r->v.mk_version);
				(*failed)++;
				continue;
			}
			memset(&nv[k], 0, sizeof(nv[k]));
			nv[k].version = r->v.version;
			nv[k].mk_version = to;
			nv[k].blob_len = P11_KEK_BLOB_LEN;
			rc = p11_kek_rewrap(p11, r->v.mk_version, r->v.blob, r->v.blob_len, to, nv[k].blob);
			if (rc == KMS_ERR_INVALID || rc == KMS_ERR_NOT_FOUND) {
				kms_error("master-key rotation: %s/%s version %u: %s; left under master key version %u",
					  r->tenant, r->key, r->v.version, kms_err_detail(rc), r->v.mk_version);
				(*failed)++;
				continue;
			}
			if (rc != KMS_OK)
				goto out; /* the token failed: stop, a later run resumes */
			rc = core_row_mac_p11(p11, r->tenant, r->key, &nv[k], nv[k].mac);
			if (rc != KMS_OK)
				goto out;
			ok_rows[k] = *r;
			k++;
		}
		if (k == 0)
			continue;
		if (o->test_delay_ms)
			sleep_ms(o->test_delay_ms); /* tests kill the process here, before the commit */
		mk_event(&ev, o, to, "rewrap", "%zu key versions rewrapped under master key version %u", k, to);
		rc = store_mk_rewrap(st, ok_rows, nv, k, &ev, &done);
		if (rc != KMS_OK)
			goto out;
		*moved += done;
		*total_moved += done;
		if (store_mk_pending_count(st, to, &left) != KMS_OK)
			left = 0;
		if (o->progress != NULL)
			o->progress(o->progress_ctx, *total_moved, left);
	}
out:
	free(rows);
	free(ok_rows);
	free(nv);
	return rc;
}

kms_err core_mk_rotate_rows(struct store *st, struct p11 *p11, uint32_t from, uint32_t to,
			    const struct core_mk_opts *o)
{
	struct store_mk_event ev;
	uint64_t moved = 0, failed = 0, total = 0, left = 0;
	unsigned idle = 0;
	kms_err rc;

	if (from == 0 || to == 0 || from == to)
		return kms_errf(KMS_ERR_INTERNAL, "master-key rotation: bad versions %u -> %u", from, to);
	/* Passes until no row is left under any other key. Rows the serving kmsd adds
	 * meanwhile are already under `to` (the store refuses anything else); a row skipped
	 * by the compare-and-set is picked up by the next pass. */
	for (unsigned pass = 0; pass < MK_PASSES; pass++) {
		rc = mk_pass(st, p11, to, o, &moved, &failed, &total);
		if (rc != KMS_OK) {
			struct store_mk_event fe;
			char why[256];
			snprintf(why, sizeof(why), "%s", kms_err_detail(rc));
			mk_event(&fe, o, to, "rotate_interrupted", "stopped after %llu key versions: %s",
				 (unsigned long long)total, why);
			if (store_mk_event_add(st, &fe) != KMS_OK)
				kms_warn("master-key rotation: could not record the interruption");
			return kms_errf(rc, "%s", why);
		}
		if ((rc = store_mk_pending_count(st, to, &left)) != KMS_OK)
			return rc;
		if (left == 0)
			break;
		if (left <= failed || ++idle >= 3) {
			mk_event(&ev, o, to, "rotate_incomplete",
				 "%llu key versions could not be rewrapped (row MAC or unwrap failed, see the "
				 "kmsd log); master key version %u kept",
				 (unsigned long long)left, from);
			if (store_mk_event_add(st, &ev) != KMS_OK)
				kms_warn("master-key rotation: could not record the failure");
			return kms_errf(KMS_ERR_CONFLICT,
					"%llu key versions could not be rewrapped; master key version %u is kept "
					"(see the log for which and why)",
					(unsigned long long)left, from);
		}
		if (moved > 0)
			idle = 0;
	}
	if (left != 0)
		return kms_errf(KMS_ERR_CONFLICT, "master-key rotation: %llu key versions still to move",
				(unsigned long long)left);
	/* No row needs `from` any more (and none can be added under it: `to` is active).
	 * Destroy it in the token first, record it after: a kill in between leaves a key
	 * the next run finds gone, which it then records. */
	rc = p11_mk_destroy(p11, from);
	if (rc == KMS_ERR_NOT_FOUND)
		kms_info("master-key rotation: master key version %u was already destroyed", from);
	else if (rc != KMS_OK)
		return rc;
	mk_event(&ev, o, from, "mk_destroyed",
		 "master key version %u destroyed in the token; every key version is under version %u", from, to);
	rc = store_mk_finish(st, from, &ev);
	if (rc == KMS_OK && o->progress != NULL)
		o->progress(o->progress_ctx, total, 0);
	return rc;
}

/* ---- relay into the audit log (the serving kmsd) ---- */

void core_mk_relay(struct core *c)
{
	struct store_mk_event *ev = NULL;
	char cur[32], reason[STORE_REASON_MAX + 96];
	int64_t after = 0;
	size_t n = 0;
	kms_err rc;

	rc = store_meta_get(c->st, MK_RELAY_CURSOR, cur, sizeof(cur));
	if (rc == KMS_OK) {
		after = strtoll(cur, NULL, 10);
	} else if (rc != KMS_ERR_NOT_FOUND) {
		kms_error("audit: master-key events: %s", kms_err_detail(rc));
		return;
	}
	rc = store_mk_events_since(c->st, after, MK_RELAY_BATCH, &ev, &n);
	if (rc != KMS_OK) {
		kms_error("audit: master-key events: %s", kms_err_detail(rc));
		return;
	}
	kms_debug("audit: %zu master-key events to relay after #%lld", n, (long long)after);
	for (size_t i = 0; i < n; i++) {
		struct audit_record ar = {0};
		bool bad = strcmp(ev[i].event, "rotate_refused") == 0 || strcmp(ev[i].event, "rotate_interrupted") == 0 ||
			   strcmp(ev[i].event, "rotate_incomplete") == 0;

		snprintf(reason, sizeof(reason), "%s: %s (master_key_events #%lld, time %lld)", ev[i].event,
			 ev[i].detail, (long long)ev[i].id, (long long)ev[i].time);
		ar.principal = ev[i].principal;
		/* The command runs on the host with the token's PINs (the SO PIN only when it
		 * makes a new master key); the principal is the OS account that ran it, as
		 * the OS reported it, not a kmsd-authenticated identity. */
		ar.auth_method = "local command (kmsd master-key rotate)";
		ar.operation = kms_op_name(KMS_OP_MASTER_KEY_ROTATE);
		ar.version = ev[i].mk_version;
		ar.outcome = bad ? "error" : "allow";
		ar.status = bad ? 409 : 200;
		ar.reason = reason;
		/* At least once: the cursor moves after the record is durable, so a crash in
		 * between relays the event again (the id in the reason tells duplicates). */
		if (audit_append(c->au, &ar) != KMS_OK) {
			kms_error("audit: relaying master-key event #%lld failed", (long long)ev[i].id);
			break;
		}
		snprintf(cur, sizeof(cur), "%lld", (long long)ev[i].id);
		if (store_meta_set(c->st, MK_RELAY_CURSOR, cur) != KMS_OK)
			break;
	}
	free(ev);
}

kms_err core_mk_begin(struct store *st, const struct core_mk_opts *o, uint32_t from, uint32_t to)
{
	struct store_mk_event ev;

	mk_event(&ev, o, to, "rotate_start", "rotation from master key version %u to %u started", from, to);
	return store_mk_begin(st, to, &ev);
}
