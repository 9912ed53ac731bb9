/* The one table from PKCS#11 return values to kmsd error categories (ckr.c).
 * Internal to pkcs11/: nothing outside the token layer sees a CK_RV. */
#ifndef KMS_PKCS11_CKR_H
#define KMS_PKCS11_CKR_H

#include <p11-kit/pkcs11.h>
#include <stdio.h>

#include "kms/base/err.h"

/* The constant's name ("CKR_DEVICE_ERROR"), or "CKR_0x…" style text for an unknown
 * value written into a static per-thread buffer. Never NULL. */
const char *p11_ckr_name(CK_RV rv);

/* The category rv maps to (KMS_OK for CKR_OK). Unknown values -> KMS_ERR_TOKEN. */
kms_err p11_ckr_category(CK_RV rv);

/* Sets the detail "token: <fn> failed: <CKR name>" and returns p11_ckr_category(rv).
 * rv must not be CKR_OK. */
kms_err p11_ckr_err(CK_RV rv, const char *fn);

/* Writes kmsd_token_call_errors_total{ckr} (Prometheus text): every failure reported
 * through p11_ckr_err since start, by CKR value. Lock-free. */
void p11_ckr_counts_write(FILE *f);

#endif
