/* TOTP step-up (docs/API.md "MFA"): enrolment, confirmation, status, verification, and
 * the admin unlock / reset of another principal; and core_mfa_stepup, which the request
 * path calls when the policy's verdict says require_mfa.
 *
 * The seed lives in the store only sealed by the token's kmsd-mfa-seal key
 * (p11_mfa_seal), bound to the principal by the AAD; it is unsealed into a stack buffer
 * for one check and wiped. A step is accepted once per principal: the store's
 * compare-and-set (store_mfa_accept_step) writes it before the operation runs, so a
 * replay, a restart or a clock stepping back never reopens it. */
#include "kms/core/core_int.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "policy/totp.h"

#define MFA_HEADER_MAX 64
#define MFA_AAD_MAX (24 + 8 + STORE_NAME_MAX)
#define MFA_URI_MAX 512

static unsigned max_failures(const struct core *c)
{
	unsigned n = c->opt.mfa_max_failures;

	return totp_lockout_valid_limit(n) ? n : CORE_MFA_MAX_FAILURES_DEFAULT;
}

/* "kmsd.mfa.seed.v1" NUL, principal id (8 bytes, big-endian), principal name: a sealed
 * seed copied to another principal's row does not unseal. */
static size_t seed_aad(const struct store_principal *p, uint8_t out[MFA_AAD_MAX])
{
	static const char tag[] = "kmsd.mfa.seed.v1";
	size_t n = sizeof(tag), nl = strnlen(p->name, STORE_NAME_MAX);

	memcpy(out, tag, sizeof(tag));
	for (int i = 0; i < 8; i++)
		out[n++] = (uint8_t)((uint64_t)p->id >> (56 - 8 * i));
	memcpy(out + n, p->name, nl);
	return n + nl;
}

static kms_err unseal(struct core *c, const struct store_principal *p, const uint8_t *sealed, size_t sealed_len,
		      uint8_t seed[TOTP_SEED_MAX], size_t *seed_len)
{
	uint8_t aad[MFA_AAD_MAX];
	size_t an = seed_aad(p, aad);
	kms_err rc = p11_mfa_unseal(c->p11, aad, an, sealed, sealed_len, seed, TOTP_SEED_MAX, seed_len);

	if (rc == KMS_ERR_DECRYPT) {
		/* the row was edited or moved: not the caller's fault, and never "wrong code" */
		kms_error("mfa: the sealed seed of principal %s does not unseal: row edited or moved?", p->name);
		return kms_errf(KMS_ERR_INTERNAL, "the MFA enrolment record failed its integrity check");
	}
	if (rc == KMS_OK && (*seed_len < TOTP_SEED_MIN || *seed_len > TOTP_SEED_MAX)) {
		kms_wipe(seed, TOTP_SEED_MAX);
		return kms_errf(KMS_ERR_INTERNAL, "the MFA enrolment record has a bad seed length");
	}
	return rc;
}

static void set_detail(struct op_ctx *x, const char *msg)
{
	snprintf(x->mfa_detail, sizeof(x->mfa_detail), "%s", msg);
}

/* One failed code: counted (and the lock set at the limit) before answering. */
static kms_err record_failure(struct core *c, struct op_ctx *x, const char *what)
{
	uint32_t failures = 0;
	bool locked = false;
	unsigned limit = max_failures(c);
	kms_err rc = store_mfa_fail(c->st, x->who.id, limit, core_now(), &failures, &locked);

	if (rc != KMS_OK)
		return rc;
	__atomic_fetch_add(&c->met.mfa_failed, 1, __ATOMIC_RELAXED);
	if (locked && failures == limit)
		__atomic_fetch_add(&c->met.mfa_lockouts, 1, __ATOMIC_RELAXED);
	if (locked) {
		kms_warn("mfa: principal %s locked after %u consecutive failed codes", x->who.name, failures);
		snprintf(x->mfa_detail, sizeof(x->mfa_detail),
			 "MFA %s; principal locked after %u consecutive failures: ask another admin to unlock "
			 "(POST /v1/sys/mfa/unlock/%.64s)",
			 what, failures, x->who.name);
	} else {
		snprintf(x->mfa_detail, sizeof(x->mfa_detail), "MFA %s (%u of %u consecutive failures before lockout)",
			 what, failures, limit);
	}
	return kms_errf(KMS_ERR_DENIED, "%s", x->mfa_detail);
}

static kms_err refuse_locked(struct core *c, struct op_ctx *x)
{
	__atomic_fetch_add(&c->met.mfa_locked, 1, __ATOMIC_RELAXED);
	snprintf(x->mfa_detail, sizeof(x->mfa_detail),
		 "MFA locked after too many failed codes: ask another admin to unlock (POST /v1/sys/mfa/unlock/%.64s)",
		 x->who.name);
	return kms_errf(KMS_ERR_DENIED, "%s", x->mfa_detail);
}

/* Checks code (digits only, 6 characters) against the sealed seed; on success the
 * step is persisted (activate: the enrolment or re-enrolment becomes active). */
static kms_err check_totp(struct core *c, struct op_ctx *x, const uint8_t *sealed, size_t sealed_len,
			  uint64_t last_step, const char *code, bool activate)
{
	const struct totp_params tp = TOTP_PARAMS_DEFAULT;
	uint8_t seed[TOTP_SEED_MAX];
	size_t seed_len = 0;
	uint64_t step = 0;
	kms_err rc, vrc;

	rc = unseal(c, &x->who, sealed, sealed_len, seed, &seed_len);
	if (rc != KMS_OK)
		return rc;
	vrc = totp_verify(seed, seed_len, &tp, core_now(), code, last_step, &step);
	kms_wipe(seed, sizeof(seed));
	if (vrc == KMS_ERR_DENIED)
		return record_failure(c, x, "code invalid or already used");
	if (vrc != KMS_OK)
		return vrc;
	rc = store_mfa_accept_step(c->st, x->who.id, step, activate, core_now());
	if (rc == KMS_ERR_CONFLICT) /* another request took this step (or the lock) first */
		return record_failure(c, x, "code invalid or already used");
	return rc;
}

static kms_err check_recovery(struct core *c, struct op_ctx *x, const struct store_mfa *m, const char *code)
{
	struct totp_recovery set;
	char enc[TOTP_RECOVERY_ENC_MAX];
	unsigned left;
	kms_err rc;

	if (totp_recovery_decode(m->recovery, &set) != KMS_OK) {
		kms_error("mfa: the recovery codes of principal %s do not decode", x->who.name);
		return kms_errf(KMS_ERR_INTERNAL, "the MFA enrolment record is damaged");
	}
	if (totp_recovery_use(&set, code) != KMS_OK) {
		kms_wipe(&set, sizeof(set));
		return record_failure(c, x, "recovery code invalid or already used");
	}
	left = totp_recovery_left(&set);
	if (totp_recovery_encode(&set, enc, sizeof(enc)) < 0) {
		kms_wipe(&set, sizeof(set));
		return kms_errf(KMS_ERR_INTERNAL, "recovery code set does not encode");
	}
	kms_wipe(&set, sizeof(set));
	rc = store_mfa_use_recovery(c->st, x->who.id, m->recovery, enc, core_now());
	kms_wipe(enc, sizeof(enc));
	if (rc == KMS_ERR_CONFLICT)
		return record_failure(c, x, "recovery code invalid or already used");
	if (rc == KMS_OK)
		kms_warn("mfa: principal %s used a recovery code (%u left)", x->who.name, left);
	return rc;
}

kms_err core_mfa_stepup(struct core *c, struct op_ctx *x)
{
	const char *h = x->call->mfa;
	char code[MFA_HEADER_MAX + 1];
	struct store_mfa *m = NULL;
	size_t hl;
	kms_err rc;

	if (x->mfa_verified)
		return KMS_OK;
	if (x->mfa_tried) /* one check per request; a failed one stays failed */
		return kms_errf(KMS_ERR_DENIED, "%s", x->mfa_detail[0] ? x->mfa_detail : "MFA check failed");
	x->mfa_tried = true;
	m = kms_secret_alloc(sizeof(*m));
	if (m == NULL)
		return kms_errf(KMS_ERR_NOMEM, "mfa");
	rc = store_mfa_get(c->st, x->who.id, m);
	if (rc == KMS_ERR_NOT_FOUND || (rc == KMS_OK && strcmp(m->state, "active") != 0)) {
		__atomic_fetch_add(&c->met.mfa_missing, 1, __ATOMIC_RELAXED);
		set_detail(x, "MFA required, but this principal has no active TOTP enrolment "
			      "(POST /v1/sys/mfa/enroll, then /v1/sys/mfa/confirm)");
		/* without a second factor the caller is not yet authenticated for this call: 401 */
		rc = kms_errf(KMS_ERR_UNAUTHENTICATED, "%s", x->mfa_detail);
		goto out;
	}
	if (rc != KMS_OK)
		goto out;
	if (m->locked) {
		rc = refuse_locked(c, x);
		goto out;
	}
	if (h == NULL || *h == '\0') {
		__atomic_fetch_add(&c->met.mfa_missing, 1, __ATOMIC_RELAXED);
		set_detail(x, "MFA required: send a current TOTP code in the X-Vault-MFA header (totp:<code>)");
		rc = kms_errf(KMS_ERR_UNAUTHENTICATED, "%s", x->mfa_detail);
		goto out;
	}
	hl = strnlen(h, MFA_HEADER_MAX + 1);
	if (hl > MFA_HEADER_MAX ||
	    (strncmp(h, "totp:", 5) != 0 && strncmp(h, "recovery:", 9) != 0)) {
		__atomic_fetch_add(&c->met.mfa_failed, 1, __ATOMIC_RELAXED);
		set_detail(x, "malformed X-Vault-MFA header: expected totp:<code> or recovery:<code>");
		rc = kms_errf(KMS_ERR_DENIED, "%s", x->mfa_detail);
		goto out;
	}
	if (strncmp(h, "totp:", 5) == 0) {
		snprintf(code, sizeof(code), "%s", h + 5);
		rc = check_totp(c, x, m->sealed_seed, m->sealed_len, m->last_step, code, false);
	} else {
		snprintf(code, sizeof(code), "%s", h + 9);
		rc = check_recovery(c, x, m, code);
	}
	kms_wipe(code, sizeof(code));
	if (rc == KMS_OK) {
		x->mfa_verified = true;
		__atomic_fetch_add(&c->met.mfa_verified, 1, __ATOMIC_RELAXED);
	}
out:
	kms_secret_free(m);
	return rc;
}

int64_t core_mfa_at(struct core *c, int64_t principal_id)
{
	struct store_mfa *m = kms_secret_alloc(sizeof(struct store_mfa));
	int64_t at = 0;

	if (m == NULL)
		return 0;
	if (store_mfa_get(c->st, principal_id, m) == KMS_OK && strcmp(m->state, "active") == 0)
		at = m->mfa_at;
	kms_secret_free(m);
	return at;
}

/* ---- operations ------------------------------------------------------------------- */

kms_err op_mfa_enroll(struct core *c, struct op_ctx *x)
{
	const struct totp_params tp = TOTP_PARAMS_DEFAULT;
	struct store_mfa *m = NULL;
	uint8_t seed[TOTP_SEED_DEFAULT], aad[MFA_AAD_MAX];
	char secret[TOTP_B32_ENC_LEN(TOTP_SEED_DEFAULT) + 1], uri[MFA_URI_MAX];
	char codes[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1];
	char enc[TOTP_RECOVERY_ENC_MAX];
	struct totp_recovery set;
	uint8_t sealed[TOTP_SEED_DEFAULT + P11_MFA_SEAL_OVERHEAD];
	size_t sealed_len = 0, an;
	bool reenrol = false;
	json_t *d = NULL, *arr = NULL;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "mfa enroll takes no parameters");
	m = kms_secret_alloc(sizeof(*m));
	if (m == NULL)
		return kms_errf(KMS_ERR_NOMEM, "mfa");
	rc = store_mfa_get(c->st, x->who.id, m);
	if (rc == KMS_ERR_NOT_FOUND) {
		memset(m, 0, sizeof(*m));
		rc = KMS_OK;
	} else if (rc == KMS_OK && strcmp(m->state, "active") == 0) {
		/* Replacing an active enrolment needs a current code of it: a stolen token
		 * alone must not be enough to move the second factor to another device. */
		reenrol = true;
		if (m->locked)
			rc = refuse_locked(c, x);
		else
			rc = core_mfa_stepup(c, x);
	}
	if (rc != KMS_OK)
		goto out;
	if ((rc = totp_seed_new(seed, sizeof(seed))) != KMS_OK ||
	    (rc = totp_recovery_new(codes, 0, &set)) != KMS_OK)
		goto out;
	if (totp_recovery_encode(&set, enc, sizeof(enc)) < 0 ||
	    totp_base32_encode(seed, sizeof(seed), false, secret, sizeof(secret)) < 0 ||
	    totp_uri(x->who.name, seed, sizeof(seed), &tp, uri, sizeof(uri)) < 0) {
		rc = kms_errf(KMS_ERR_INTERNAL, "mfa enrolment encoding failed");
		goto out;
	}
	an = seed_aad(&x->who, aad);
	rc = p11_mfa_seal(c->p11, aad, an, seed, sizeof(seed), sealed, sizeof(sealed), &sealed_len);
	if (rc != KMS_OK)
		goto out;
	if (reenrol) {
		rc = store_mfa_put_pending(c->st, x->who.id, sealed, sealed_len, enc, core_now());
	} else {
		m->principal_id = x->who.id;
		snprintf(m->state, sizeof(m->state), "pending");
		memcpy(m->sealed_seed, sealed, sealed_len);
		m->sealed_len = sealed_len;
		snprintf(m->recovery, sizeof(m->recovery), "%s", enc);
		m->mfa_at = 0;
		m->failures = 0;
		m->locked = false;
		rc = store_mfa_put(c->st, m, core_now());
	}
	if (rc != KMS_OK)
		goto out;
	d = json_object();
	arr = json_array();
	if (d == NULL || arr == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "mfa enroll");
		goto out;
	}
	for (size_t i = 0; i < TOTP_RECOVERY_N; i++)
		json_array_append_new(arr, json_string(codes[i]));
	json_object_set_new(d, "principal", json_string(x->who.name));
	json_object_set_new(d, "state", json_string("pending"));
	json_object_set_new(d, "replaces_active", json_boolean(reenrol));
	json_object_set_new(d, "otpauth_uri", json_string(uri));
	json_object_set_new(d, "secret", json_string(secret));
	json_object_set_new(d, "algorithm", json_string(totp_alg_name(tp.alg)));
	json_object_set_new(d, "digits", json_integer(tp.digits));
	json_object_set_new(d, "period", json_integer(tp.period));
	json_object_set_new(d, "recovery_codes", arr);
	arr = NULL;
	x->data = d;
	d = NULL;
	kms_info("mfa: principal %s %s", x->who.name, reenrol ? "started a re-enrolment" : "enrolled (pending)");
out:
	json_decref(d);
	json_decref(arr);
	kms_wipe(seed, sizeof(seed));
	kms_wipe(secret, sizeof(secret));
	kms_wipe(uri, sizeof(uri));
	kms_wipe(codes, sizeof(codes));
	kms_wipe(&set, sizeof(set));
	kms_wipe(enc, sizeof(enc));
	kms_secret_free(m);
	return rc;
}

kms_err op_mfa_confirm(struct core *c, struct op_ctx *x)
{
	struct store_mfa *m = NULL;
	json_t *jc = x->call->body ? json_object_get(x->call->body, "code") : NULL;
	char code[16];
	const char *cs;
	kms_err rc;

	if (x->call->body == NULL || !json_is_string(jc) || json_object_size(x->call->body) != 1)
		return kms_errf(KMS_ERR_INVALID, "mfa confirm takes {\"code\": \"<6 digits>\"}");
	cs = json_string_value(jc);
	if (strlen(cs) >= sizeof(code))
		return kms_errf(KMS_ERR_INVALID, "code too long");
	snprintf(code, sizeof(code), "%s", cs);
	m = kms_secret_alloc(sizeof(*m));
	if (m == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "mfa");
		goto out;
	}
	rc = store_mfa_get(c->st, x->who.id, m);
	if (rc == KMS_ERR_NOT_FOUND) {
		rc = kms_errf(KMS_ERR_CONFLICT, "no MFA enrolment to confirm: POST /v1/sys/mfa/enroll first");
		goto out;
	}
	if (rc != KMS_OK)
		goto out;
	if (m->locked) {
		rc = refuse_locked(c, x);
		goto out;
	}
	x->mfa_tried = true;
	if (strcmp(m->state, "pending") == 0)
		rc = check_totp(c, x, m->sealed_seed, m->sealed_len, m->last_step, code, true);
	else if (m->pending_len > 0)
		rc = check_totp(c, x, m->pending_seed, m->pending_len, m->last_step, code, true);
	else
		rc = kms_errf(KMS_ERR_CONFLICT, "the MFA enrolment is already active and no re-enrolment is pending");
	if (rc != KMS_OK)
		goto out;
	x->mfa_verified = true;
	__atomic_fetch_add(&c->met.mfa_verified, 1, __ATOMIC_RELAXED);
	x->data = json_pack("{s:s,s:s}", "principal", x->who.name, "state", "active");
	if (x->data == NULL)
		rc = kms_errf(KMS_ERR_NOMEM, "mfa confirm");
	kms_info("mfa: principal %s confirmed its enrolment", x->who.name);
out:
	kms_wipe(code, sizeof(code));
	kms_secret_free(m);
	return rc;
}

/* The principal a call names (":n"), or the caller. */
static kms_err target(struct core *c, struct op_ctx *x, struct store_principal *out)
{
	kms_err rc;

	if (x->call->name == NULL) {
		*out = x->who;
		return KMS_OK;
	}
	if (!core_valid_name(x->call->name))
		return kms_errf(KMS_ERR_INVALID, "invalid principal name");
	rc = store_principal_get(c->st, x->call->name, out);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" not found", x->call->name);
	return rc;
}

kms_err op_mfa_status(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	struct store_mfa *m = NULL;
	struct totp_recovery set;
	bool enrolled;
	kms_err rc;

	/* another principal's state is an admin's business (an auditor reads its own); the
	 * same 403 whether the name exists or not */
	if (x->role != POLICY_ROLE_ADMIN && x->call->name != NULL && strcmp(x->call->name, x->who.name) != 0)
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	if ((rc = target(c, x, &p)) != KMS_OK)
		return rc;
	m = kms_secret_alloc(sizeof(*m));
	if (m == NULL)
		return kms_errf(KMS_ERR_NOMEM, "mfa");
	rc = store_mfa_get(c->st, p.id, m);
	enrolled = rc == KMS_OK;
	if (rc == KMS_ERR_NOT_FOUND)
		rc = KMS_OK;
	if (rc != KMS_OK)
		goto out;
	x->data = json_pack("{s:s,s:b,s:s,s:b,s:I,s:I,s:I,s:b}", "principal", p.name, "enrolled", enrolled, "state",
			    enrolled ? m->state : "none", "locked", enrolled && m->locked, "failures",
			    (json_int_t)(enrolled ? m->failures : 0), "max_failures", (json_int_t)max_failures(c),
			    "last_verified", (json_int_t)(enrolled ? m->mfa_at : 0), "reenrolment_pending",
			    enrolled && m->pending_len > 0);
	if (x->data == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "mfa status");
		goto out;
	}
	if (enrolled && totp_recovery_decode(m->recovery, &set) == KMS_OK)
		json_object_set_new(x->data, "recovery_codes_left", json_integer(totp_recovery_left(&set)));
	kms_wipe(&set, sizeof(set));
out:
	kms_secret_free(m);
	return rc;
}

kms_err op_mfa_verify(struct core *c, struct op_ctx *x)
{
	kms_err rc = core_mfa_stepup(c, x);

	if (rc != KMS_OK)
		return rc;
	x->data = json_pack("{s:s,s:b,s:I}", "principal", x->who.name, "verified", 1, "verified_at",
			    (json_int_t)core_now());
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "mfa verify");
}

/* unlock and reset act on another principal: an admin who could clear its own lockout
 * would make the lockout worthless against a stolen admin token. */
static kms_err other_principal(struct core *c, struct op_ctx *x, const char *what, struct store_principal *p)
{
	kms_err rc;

	if (x->call->name == NULL)
		return kms_errf(KMS_ERR_INVALID, "name the principal to %s", what);
	if ((rc = target(c, x, p)) != KMS_OK)
		return rc;
	if (p->id == x->who.id) {
		snprintf(x->mfa_detail, sizeof(x->mfa_detail),
			 "a principal cannot %s its own MFA: ask another admin", what);
		return kms_errf(KMS_ERR_DENIED, "%s", x->mfa_detail);
	}
	return KMS_OK;
}

kms_err op_mfa_unlock(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "mfa unlock takes no parameters");
	if ((rc = other_principal(c, x, "unlock", &p)) != KMS_OK)
		return rc;
	rc = store_mfa_unlock(c->st, p.id, core_now());
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" has no MFA enrolment", p.name);
	if (rc != KMS_OK)
		return rc;
	kms_warn("mfa: %s unlocked principal %s", x->who.name, p.name);
	x->data = json_pack("{s:s,s:b,s:I}", "principal", p.name, "locked", 0, "failures", (json_int_t)0);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "mfa unlock");
}

kms_err op_mfa_reset(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "mfa reset takes no parameters");
	if ((rc = other_principal(c, x, "reset", &p)) != KMS_OK)
		return rc;
	rc = store_mfa_delete(c->st, p.id);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" has no MFA enrolment", p.name);
	if (rc != KMS_OK)
		return rc;
	kms_warn("mfa: %s reset the MFA enrolment of principal %s", x->who.name, p.name);
	x->data = json_pack("{s:s,s:b}", "principal", p.name, "enrolled", 0);
	return x->data ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "mfa reset");
}
