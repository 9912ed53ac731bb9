/* The token layer: the only code that speaks PKCS#11. Message-shaped on purpose (each
 * call is one whole operation), so that it could later move into a process of its own.
 *
 * Objects in the token (labels fixed here, see docs/ARCHITECTURE.md):
 *   kmsd-mk-<N>      master wrapping key version N (kmsd init makes kmsd-mk-1, each
 *                    master-key rotation the next): AES-256, token, private, sensitive,
 *                    not extractable, WRAP/UNWRAP only, ALLOWED_MECHANISMS={AES_KEY_WRAP_PAD},
 *                    UNWRAP_TEMPLATE={SENSITIVE, WRAP_WITH_TRUSTED}, TRUSTED (set by the SO
 *                    on a session staging key, then copied to a token object by the user).
 *                    Which versions exist is the store's to say (master_keys); a struct
 *                    p11 looks each up by label on first use, checks its attributes, and
 *                    looks it up again when its handle goes stale (another process made
 *                    or destroyed one).
 *   kmsd-store-mac   HMAC-SHA256 key binding store rows (tenant, key, version, blob).
 *   kmsd-audit-hmac  HMAC-SHA256 key for hashing context values in audit records.
 *   kmsd-audit-sign  ECDSA P-256 key pair signing audit checkpoints. Private key: token,
 *                    private, sensitive, not extractable, SIGN only,
 *                    ALLOWED_MECHANISMS={CKM_ECDSA} (SoftHSM2 2.6.1 has no
 *                    CKM_ECDSA_SHA256, so the SHA-256 is computed by the caller).
 *                    Public key: token, public, VERIFY only, same label.
 * Tenant KEK versions never become token objects: they are generated as session
 * objects, wrapped with KWP under a master key into a P11_KEK_BLOB_LEN blob, and
 * destroyed; serving copies are unwrapped on demand as sensitive, non-extractable
 * session objects owned by a holder session that stays open for the process's life.
 *
 * Thread safety: every function may be called from any thread once p11_open returned,
 * except p11_close. Object creation is serialised inside (SoftHSM2 2.6.1 races on
 * parallel create); crypto operations run on a pool of sessions, one per caller at a time.
 */
#ifndef KMS_PKCS11_P11_H
#define KMS_PKCS11_P11_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kms/base/err.h"

#define P11_KEK_BLOB_LEN 40 /* KWP of a 32-byte key */
#define P11_GCM_IV_LEN 12
#define P11_GCM_TAG_LEN 16
#define P11_HMAC_LEN 32
#define P11_SHA256_LEN 32
#define P11_AUDIT_SIG_MAX 72 /* DER ECDSA-Sig-Value for P-256: at most 72 bytes */
#define P11_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

typedef uint64_t p11_key; /* handle of a loaded serving copy; 0 is never valid */

struct p11;

struct p11_config {
	const char *module;	 /* path of the PKCS#11 module (.so) */
	const char *token_label; /* slot is chosen by token label */
	unsigned sessions;	 /* size of the crypto session pool (>= 1) */
};

enum p11_mac_key { P11_MAC_STORE, P11_MAC_AUDIT };

/* Creates the objects above that the token lacks (the audit signing key pair is
 * generated in the token when neither half exists; one half without the other is
 * refused with KMS_ERR_TOKEN, because a lost public key cannot be recreated and a new
 * pair would silently orphan the signatures already made). The master key needs the SO PIN
 * (the SO marks it trusted); the other objects need only the user PIN. Returns
 * KMS_ERR_CONFLICT if the master key already exists (the other objects are still
 * created if missing). Initialises and finalises the module itself: call it before
 * p11_open, not while a struct p11 is open. PINs are not kept. */
KMS_WUR kms_err p11_provision(const struct p11_config *cfg, const char *so_pin, size_t so_pin_len,
			      const char *user_pin, size_t user_pin_len);

/* Creates master key version `version` (kmsd-mk-<version>) by the same ceremony as
 * p11_provision (needs the SO PIN; the SO is logged out again whatever happens).
 * KMS_ERR_CONFLICT if it exists already and passes the master-key checks (a run that
 * stopped before recording it left it: reuse it); KMS_ERR_TOKEN if it exists and fails
 * them; a wrong SO PIN -> the CKR mapping (KMS_ERR_CONFIG for CKR_PIN_INCORRECT), and
 * nothing is created. Like p11_provision, initialises and finalises the module itself,
 * and logs out this process's user on the way: call it before p11_open, never in a
 * process that serves (a logout destroys every session object of the process). */
KMS_WUR kms_err p11_mk_create(const struct p11_config *cfg, uint32_t version, const char *so_pin,
			      size_t so_pin_len, const char *user_pin, size_t user_pin_len);

/* Loads the module (C_GetInterface, else C_GetFunctionList), C_Initialize with
 * CKF_OS_LOCKING_OK, finds the slot by token label, opens the holder session, logs in
 * as user, opens the session pool and finds the objects above by label (all but the
 * master keys must exist: KMS_ERR_TOKEN "token not provisioned" otherwise; master keys
 * are looked up by version, see p11_mk_check). The PIN is not kept; the caller wipes
 * its copy. On success *out is owned by the caller (p11_close). */
KMS_WUR kms_err p11_open(const struct p11_config *cfg, const char *pin, size_t pin_len,
			 struct p11 **out);

/* Closes every session and finalises the module. Accepts NULL. Not while other
 * threads use p. */
void p11_close(struct p11 *p);

/* Fills out with n bytes from the token's RNG. */
KMS_WUR kms_err p11_random(struct p11 *p, uint8_t *out, size_t n);

/* Finds master key version `version` by label and checks its attributes (a key that
 * lost one is refused loudly, KMS_ERR_TOKEN); KMS_ERR_NOT_FOUND when the token has no
 * such key. The handle is remembered for the calls below. */
KMS_WUR kms_err p11_mk_check(struct p11 *p, uint32_t version);

/* Destroys master key version `version` in the token. KMS_ERR_NOT_FOUND when it is not
 * there (already destroyed). Irreversible: every blob still wrapped under it is lost,
 * so the caller proves none is left first. */
KMS_WUR kms_err p11_mk_destroy(struct p11 *p, uint32_t version);

/* In the functions below, a master key version the token does not hold ->
 * KMS_ERR_NOT_FOUND. */

/* Generates a new AES-256 tenant KEK inside the token and returns it only as a KWP
 * blob under master key version mk_version. */
KMS_WUR kms_err p11_kek_generate(struct p11 *p, uint32_t mk_version, uint8_t blob[P11_KEK_BLOB_LEN]);

/* Unwraps a KEK blob (wrapped under master key version mk_version) into a serving
 * session object (sensitive, not extractable, ENCRYPT/DECRYPT). The handle stays valid
 * until p11_kek_unload or p11_close, whatever happens to the master key meanwhile.
 * A blob that does not unwrap under the master key -> KMS_ERR_INVALID (SoftHSM2 says
 * CKR_GENERAL_ERROR for it, so a known-answer probe rules out a token fault first). */
KMS_WUR kms_err p11_kek_load(struct p11 *p, uint32_t mk_version, const uint8_t *blob,
			     size_t blob_len, p11_key *out);

/* Master-key rotation of one KEK, entirely inside the token: unwraps blob under
 * master key from_mk as a transit session object (SENSITIVE, WRAP_WITH_TRUSTED, and
 * EXTRACTABLE so that it can be wrapped again; no ENCRYPT/DECRYPT), wraps it with KWP
 * under to_mk into out, destroys the transit copy, and checks that out unwraps under
 * to_mk. Errors as p11_kek_load; out is wiped on failure. The KEK's value never
 * leaves the token. */
KMS_WUR kms_err p11_kek_rewrap(struct p11 *p, uint32_t from_mk, const uint8_t *blob,
			       size_t blob_len, uint32_t to_mk, uint8_t out[P11_KEK_BLOB_LEN]);

/* Whether a serving copy is still alive: false once the holder session that owned it
 * was lost and reopened (the token destroyed it then). The caller loads it again. */
bool p11_kek_current(struct p11 *p, p11_key k);

/* Destroys a serving copy. Accepts 0. */
void p11_kek_unload(struct p11 *p, p11_key k);

/* AES-256-GCM with a 96-bit IV and a 128-bit tag, inside the token.
 * encrypt: out receives ct || tag (out_cap >= pt_len + P11_GCM_TAG_LEN).
 * decrypt: in is ct || tag; out receives pt (*out_len = in_len - tag);
 * a tag mismatch -> KMS_ERR_DECRYPT, told apart from a token fault (KMS_ERR_TOKEN)
 * by a known-answer probe, because SoftHSM2 reports both as CKR_GENERAL_ERROR.
 * decrypt: out_cap >= in_len lets the token write straight into out (SoftHSM2 wants
 * room for ct || tag); a pt-sized out goes through a wiped scratch buffer (stack up
 * to 4 KiB, heap beyond). On failure out is wiped. */
KMS_WUR kms_err p11_gcm_encrypt(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
				const uint8_t *aad, size_t aad_len, const uint8_t *pt,
				size_t pt_len, uint8_t *out, size_t out_cap);
KMS_WUR kms_err p11_gcm_decrypt(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
				const uint8_t *aad, size_t aad_len, const uint8_t *in,
				size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len);

/* HMAC-SHA256 under one of the token-held MAC keys. */
KMS_WUR kms_err p11_hmac(struct p11 *p, enum p11_mac_key which, const uint8_t *data, size_t len,
			 uint8_t out[P11_HMAC_LEN]);

/* ECDSA P-256 signature by kmsd-audit-sign over a SHA-256 digest the caller computed
 * (CKM_ECDSA signs the digest as given). The token's raw r||s (2 x 32 bytes) is
 * converted to a DER ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }, at most
 * P11_AUDIT_SIG_MAX bytes), the form `openssl dgst -sha256 -verify` and
 * EVP_DigestVerify take. sig_cap < P11_AUDIT_SIG_MAX -> KMS_ERR_INTERNAL. */
KMS_WUR kms_err p11_audit_sign(struct p11 *p, const uint8_t digest[P11_SHA256_LEN], uint8_t *sig,
			       size_t sig_cap, size_t *sig_len);

/* The public half of kmsd-audit-sign as a PEM SubjectPublicKeyInfo ("-----BEGIN PUBLIC
 * KEY-----", NUL-terminated), built from CKA_EC_PARAMS (must name P-256) and
 * CKA_EC_POINT (DER OCTET STRING or raw, uncompressed) and checked to be on the curve.
 * *pem is malloc'd; the caller frees it (it is public, no wipe needed). */
KMS_WUR kms_err p11_audit_pubkey_pem(struct p11 *p, char **pem);

/* TOTP seeds, sealed with AES-256-GCM inside the token under kmsd-mfa-seal (AES-256,
 * private, sensitive, not extractable, ENCRYPT/DECRYPT with CKM_AES_GCM only; made on
 * first use by p11_mfa_seal, since only the user PIN is needed). aad binds the sealed
 * seed to its principal. Output: iv || ct || tag, P11_MFA_SEAL_OVERHEAD bytes longer than
 * the seed. unseal: a blob that does not verify (edited, moved to another principal) ->
 * KMS_ERR_DECRYPT; no seal key in the token -> KMS_ERR_TOKEN. seed is wiped on failure;
 * the caller wipes it after use. */
#define P11_MFA_SEAL_OVERHEAD (P11_GCM_IV_LEN + P11_GCM_TAG_LEN)
KMS_WUR kms_err p11_mfa_seal(struct p11 *p, const uint8_t *aad, size_t aad_len, const uint8_t *seed,
			     size_t seed_len, uint8_t *out, size_t out_cap, size_t *out_len);
KMS_WUR kms_err p11_mfa_unseal(struct p11 *p, const uint8_t *aad, size_t aad_len, const uint8_t *in,
			       size_t in_len, uint8_t *seed, size_t seed_cap, size_t *seed_len);

/* Token call metrics (Prometheus text 0.0.4), process-wide since start:
 * kmsd_token_call_duration_seconds{call} for p11_random, p11_kek_generate, p11_kek_load,
 * p11_gcm_encrypt, p11_gcm_decrypt, p11_hmac and p11_audit_sign (failed calls included),
 * and kmsd_token_call_errors_total{ckr}: every failed PKCS#11 call reported as a token
 * error, by CKR value. A GCM tag mismatch (a forged or damaged ciphertext, answered
 * 400) is not a token error and is not counted there. Lock-free (relaxed atomics). */
enum p11_call {
	P11_CALL_RANDOM,
	P11_CALL_KEK_GENERATE,
	P11_CALL_KEK_LOAD,
	P11_CALL_GCM_ENCRYPT,
	P11_CALL_GCM_DECRYPT,
	P11_CALL_HMAC,
	P11_CALL_AUDIT_SIGN,
	P11_CALL__N
};
#define P11_CALL_BUCKETS 10
struct p11_call_stats {
	uint64_t hist[P11_CALL_BUCKETS + 1];
	uint64_t ns_sum;
};
void p11_metrics_write(FILE *f);
/* A fingerprint of master key version `version` that does not reveal it: SHA-256 over
 * a fixed prefix and the (deterministic) KWP wrap, by that key, of a fixed public key.
 * The same key value gives the same fingerprint in any token; backups record it to
 * refuse a restore under another master key. KMS_ERR_NOT_FOUND when the token has no
 * such key. */
KMS_WUR kms_err p11_mk_fingerprint(struct p11 *p, uint32_t version, uint8_t out[P11_SHA256_LEN]);

/* For /v1/sys/health: KMS_OK when the token answers C_GetSessionInfo on the holder
 * session and the user is logged in on it; KMS_ERR_TOKEN (with the CKR name or the
 * state in the detail) otherwise. Takes obj_lock briefly; no crypto, no allocation. */
KMS_WUR kms_err p11_health(struct p11 *p);

#endif
