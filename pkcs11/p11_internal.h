/* Internals of the token layer that tests need to reach the raw PKCS#11 module
 * (extraction-path tests, Wycheproof vectors through SoftHSM2). Never include this
 * from kms/: the rest of the server speaks only p11.h. */
#ifndef KMS_PKCS11_P11_INTERNAL_H
#define KMS_PKCS11_P11_INTERNAL_H

#include <p11-kit/pkcs11.h>

#include "pkcs11/p11.h"

#define P11_LABEL_MK_FMT "kmsd-mk-%u" /* master key version N */
#define P11_LABEL_MK "kmsd-mk-1"       /* the one kmsd init makes */
#define P11_LABEL_MK_STAGING "kmsd-mk-staging"
#define P11_LABEL_STORE_MAC "kmsd-store-mac"
#define P11_LABEL_AUDIT_HMAC "kmsd-audit-hmac"
#define P11_LABEL_AUDIT_SIGN "kmsd-audit-sign" /* both halves of the key pair */
#define P11_LABEL_MFA_SEAL "kmsd-mfa-seal"     /* seals TOTP seeds (p11_mfa_seal) */

/* The module's function list; valid until p11_close. */
CK_FUNCTION_LIST_PTR p11_internal_functions(struct p11 *p);

/* The slot p was opened on. */
CK_SLOT_ID p11_internal_slot(struct p11 *p);

/* The holder session (R/W, user logged in). Tests only: kmsd itself uses it only
 * under the object lock. */
CK_SESSION_HANDLE p11_internal_holder(struct p11 *p);

/* The handle of one of the token objects found at p11_open (P11_LABEL_STORE_MAC,
 * P11_LABEL_AUDIT_HMAC; P11_LABEL_AUDIT_SIGN gives the private key) or of master key
 * version 1 (P11_LABEL_MK, looked up and checked on first use), or CK_INVALID_HANDLE. */
CK_OBJECT_HANDLE p11_internal_object(struct p11 *p, const char *label);

/* The public key object of P11_LABEL_AUDIT_SIGN. */
CK_OBJECT_HANDLE p11_internal_audit_pubkey(struct p11 *p);

#endif
