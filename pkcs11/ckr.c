/* CKR -> kms_err, in one table. The rule for choosing a category:
 *   - the token cannot be used right now (device, session, login state, resources,
 *     internal fault) -> KMS_ERR_TOKEN (503: retry later, page an operator);
 *   - the bytes a caller handed us are bad (a blob, a ciphertext, a length)
 *     -> KMS_ERR_INVALID / KMS_ERR_DECRYPT (400);
 *   - the PIN or the token's set-up is wrong -> KMS_ERR_CONFIG (start-up failure);
 *   - the token refused something kmsd itself built (template, mechanism, an object
 *     policy such as "not wrappable") -> KMS_ERR_INTERNAL: a kmsd bug or a token
 *     whose objects are not the ones kmsd provisioned.
 * Callers that know better (p11_gcm_decrypt's probe, p11_kek_load's blob) decide
 * themselves and do not rely on the table for that one code. */
#include "pkcs11/ckr.h"

#include <stdint.h>
#include <stdio.h>

#ifndef CKR_AEAD_DECRYPT_FAILED
#define CKR_AEAD_DECRYPT_FAILED (0x35UL) /* PKCS#11 3.0 */
#endif
#ifndef CKR_TOKEN_RESOURCE_EXCEEDED
#define CKR_TOKEN_RESOURCE_EXCEEDED (0x201UL) /* PKCS#11 3.0 */
#endif

#define E(rv, err) {rv, #rv, err}

static const struct {
	CK_RV rv;
	const char *name;
	kms_err err;
} ckr_table[] = {
	E(CKR_OK, KMS_OK),
	E(CKR_CANCEL, KMS_ERR_TOKEN),
	E(CKR_HOST_MEMORY, KMS_ERR_NOMEM),
	E(CKR_SLOT_ID_INVALID, KMS_ERR_TOKEN),
	E(CKR_GENERAL_ERROR, KMS_ERR_TOKEN),
	E(CKR_FUNCTION_FAILED, KMS_ERR_TOKEN),
	E(CKR_ARGUMENTS_BAD, KMS_ERR_INTERNAL),
	E(CKR_NO_EVENT, KMS_ERR_TOKEN),
	E(CKR_NEED_TO_CREATE_THREADS, KMS_ERR_TOKEN),
	E(CKR_CANT_LOCK, KMS_ERR_TOKEN),
	E(CKR_ATTRIBUTE_READ_ONLY, KMS_ERR_INTERNAL),
	E(CKR_ATTRIBUTE_SENSITIVE, KMS_ERR_INTERNAL),
	E(CKR_ATTRIBUTE_TYPE_INVALID, KMS_ERR_INTERNAL),
	E(CKR_ATTRIBUTE_VALUE_INVALID, KMS_ERR_INTERNAL),
	E(CKR_ACTION_PROHIBITED, KMS_ERR_INTERNAL),
	E(CKR_DATA_INVALID, KMS_ERR_INVALID),
	E(CKR_DATA_LEN_RANGE, KMS_ERR_INVALID),
	E(CKR_DEVICE_ERROR, KMS_ERR_TOKEN),
	E(CKR_DEVICE_MEMORY, KMS_ERR_TOKEN),
	E(CKR_DEVICE_REMOVED, KMS_ERR_TOKEN),
	E(CKR_ENCRYPTED_DATA_INVALID, KMS_ERR_DECRYPT),
	E(CKR_ENCRYPTED_DATA_LEN_RANGE, KMS_ERR_DECRYPT),
	E(CKR_AEAD_DECRYPT_FAILED, KMS_ERR_DECRYPT),
	E(CKR_FUNCTION_CANCELED, KMS_ERR_TOKEN),
	E(CKR_FUNCTION_NOT_PARALLEL, KMS_ERR_TOKEN),
	E(CKR_FUNCTION_NOT_SUPPORTED, KMS_ERR_CONFIG),
	E(CKR_KEY_HANDLE_INVALID, KMS_ERR_TOKEN),
	E(CKR_KEY_SIZE_RANGE, KMS_ERR_INTERNAL),
	E(CKR_KEY_TYPE_INCONSISTENT, KMS_ERR_INTERNAL),
	E(CKR_KEY_NOT_NEEDED, KMS_ERR_INTERNAL),
	E(CKR_KEY_CHANGED, KMS_ERR_TOKEN),
	E(CKR_KEY_NEEDED, KMS_ERR_INTERNAL),
	E(CKR_KEY_INDIGESTIBLE, KMS_ERR_INTERNAL),
	E(CKR_KEY_FUNCTION_NOT_PERMITTED, KMS_ERR_INTERNAL),
	E(CKR_KEY_NOT_WRAPPABLE, KMS_ERR_INTERNAL),
	E(CKR_KEY_UNEXTRACTABLE, KMS_ERR_INTERNAL),
	E(CKR_MECHANISM_INVALID, KMS_ERR_INTERNAL),
	E(CKR_MECHANISM_PARAM_INVALID, KMS_ERR_INTERNAL),
	E(CKR_OBJECT_HANDLE_INVALID, KMS_ERR_TOKEN),
	E(CKR_OPERATION_ACTIVE, KMS_ERR_INTERNAL),
	E(CKR_OPERATION_NOT_INITIALIZED, KMS_ERR_INTERNAL),
	E(CKR_PIN_INCORRECT, KMS_ERR_CONFIG),
	E(CKR_PIN_INVALID, KMS_ERR_CONFIG),
	E(CKR_PIN_LEN_RANGE, KMS_ERR_CONFIG),
	E(CKR_PIN_EXPIRED, KMS_ERR_CONFIG),
	E(CKR_PIN_LOCKED, KMS_ERR_TOKEN),
	E(CKR_SESSION_CLOSED, KMS_ERR_TOKEN),
	E(CKR_SESSION_COUNT, KMS_ERR_TOKEN),
	E(CKR_SESSION_HANDLE_INVALID, KMS_ERR_TOKEN),
	E(CKR_SESSION_PARALLEL_NOT_SUPPORTED, KMS_ERR_TOKEN),
	E(CKR_SESSION_READ_ONLY, KMS_ERR_TOKEN),
	E(CKR_SESSION_EXISTS, KMS_ERR_TOKEN),
	E(CKR_SESSION_READ_ONLY_EXISTS, KMS_ERR_TOKEN),
	E(CKR_SESSION_READ_WRITE_SO_EXISTS, KMS_ERR_TOKEN),
	E(CKR_SIGNATURE_INVALID, KMS_ERR_INVALID),
	E(CKR_SIGNATURE_LEN_RANGE, KMS_ERR_INVALID),
	E(CKR_TEMPLATE_INCOMPLETE, KMS_ERR_INTERNAL),
	E(CKR_TEMPLATE_INCONSISTENT, KMS_ERR_INTERNAL),
	E(CKR_TOKEN_NOT_PRESENT, KMS_ERR_TOKEN),
	E(CKR_TOKEN_NOT_RECOGNIZED, KMS_ERR_TOKEN),
	E(CKR_TOKEN_WRITE_PROTECTED, KMS_ERR_TOKEN),
	E(CKR_UNWRAPPING_KEY_SIZE_RANGE, KMS_ERR_INTERNAL),
	E(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, KMS_ERR_INTERNAL),
	E(CKR_USER_ALREADY_LOGGED_IN, KMS_ERR_TOKEN),
	E(CKR_USER_NOT_LOGGED_IN, KMS_ERR_TOKEN),
	E(CKR_USER_PIN_NOT_INITIALIZED, KMS_ERR_CONFIG),
	E(CKR_USER_TYPE_INVALID, KMS_ERR_INTERNAL),
	E(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, KMS_ERR_TOKEN),
	E(CKR_USER_TOO_MANY_TYPES, KMS_ERR_TOKEN),
	E(CKR_WRAPPED_KEY_INVALID, KMS_ERR_INVALID),
	E(CKR_WRAPPED_KEY_LEN_RANGE, KMS_ERR_INVALID),
	E(CKR_WRAPPING_KEY_HANDLE_INVALID, KMS_ERR_TOKEN),
	E(CKR_WRAPPING_KEY_SIZE_RANGE, KMS_ERR_INTERNAL),
	E(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, KMS_ERR_INTERNAL),
	E(CKR_RANDOM_SEED_NOT_SUPPORTED, KMS_ERR_INTERNAL),
	E(CKR_RANDOM_NO_RNG, KMS_ERR_TOKEN),
	E(CKR_DOMAIN_PARAMS_INVALID, KMS_ERR_INTERNAL),
	E(CKR_CURVE_NOT_SUPPORTED, KMS_ERR_CONFIG),
	E(CKR_BUFFER_TOO_SMALL, KMS_ERR_INTERNAL),
	E(CKR_SAVED_STATE_INVALID, KMS_ERR_INTERNAL),
	E(CKR_INFORMATION_SENSITIVE, KMS_ERR_INTERNAL),
	E(CKR_STATE_UNSAVEABLE, KMS_ERR_INTERNAL),
	E(CKR_CRYPTOKI_NOT_INITIALIZED, KMS_ERR_TOKEN),
	E(CKR_CRYPTOKI_ALREADY_INITIALIZED, KMS_ERR_TOKEN),
	E(CKR_MUTEX_BAD, KMS_ERR_TOKEN),
	E(CKR_MUTEX_NOT_LOCKED, KMS_ERR_TOKEN),
	E(CKR_NEW_PIN_MODE, KMS_ERR_CONFIG),
	E(CKR_NEXT_OTP, KMS_ERR_CONFIG),
	E(CKR_EXCEEDED_MAX_ITERATIONS, KMS_ERR_TOKEN),
	E(CKR_FIPS_SELF_TEST_FAILED, KMS_ERR_TOKEN),
	E(CKR_LIBRARY_LOAD_FAILED, KMS_ERR_TOKEN),
	E(CKR_PIN_TOO_WEAK, KMS_ERR_CONFIG),
	E(CKR_PUBLIC_KEY_INVALID, KMS_ERR_INVALID),
	E(CKR_FUNCTION_REJECTED, KMS_ERR_TOKEN),
	E(CKR_TOKEN_RESOURCE_EXCEEDED, KMS_ERR_TOKEN),
};

#undef E

const char *p11_ckr_name(CK_RV rv)
{
	static _Thread_local char unknown[32];
	size_t i;

	for (i = 0; i < sizeof(ckr_table) / sizeof(ckr_table[0]); i++)
		if (ckr_table[i].rv == rv)
			return ckr_table[i].name;
	snprintf(unknown, sizeof(unknown), "CKR_0x%08lx", (unsigned long)rv);
	return unknown;
}

kms_err p11_ckr_category(CK_RV rv)
{
	size_t i;

	for (i = 0; i < sizeof(ckr_table) / sizeof(ckr_table[0]); i++)
		if (ckr_table[i].rv == rv)
			return ckr_table[i].err;
	return KMS_ERR_TOKEN;
}

#define N_CKR (sizeof(ckr_table) / sizeof(ckr_table[0]))

/* Failed token calls by return value: one slot per table entry, the last for values
 * the table does not know. Relaxed atomic adds: a metric, not a synchronisation. */
static uint64_t ckr_counts[N_CKR + 1];

static void ckr_count(CK_RV rv)
{
	size_t i;

	for (i = 0; i < N_CKR; i++)
		if (ckr_table[i].rv == rv)
			break;
	__atomic_fetch_add(&ckr_counts[i], 1, __ATOMIC_RELAXED);
}

void p11_ckr_counts_write(FILE *f)
{
	fprintf(f, "# HELP kmsd_token_call_errors_total Failed PKCS#11 calls, by return value "
		   "(CKR_OTHER: a value kmsd does not know).\n"
		   "# TYPE kmsd_token_call_errors_total counter\n");
	for (size_t i = 0; i <= N_CKR; i++) {
		uint64_t v = __atomic_load_n(&ckr_counts[i], __ATOMIC_RELAXED);

		if (v > 0)
			fprintf(f, "kmsd_token_call_errors_total{ckr=\"%s\"} %llu\n",
				i < N_CKR ? ckr_table[i].name : "CKR_OTHER", (unsigned long long)v);
	}
}

kms_err p11_ckr_err(CK_RV rv, const char *fn)
{
	kms_err e = p11_ckr_category(rv);

	ckr_count(rv);
	if (e == KMS_OK) /* a caller bug: never report success as a failure's cause */
		e = KMS_ERR_INTERNAL;
	return kms_errf(e, "token: %s failed: %s", fn, p11_ckr_name(rv));
}
