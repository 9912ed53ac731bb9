/* One error type for the whole server, with categories that map to HTTP status in
 * one table (err.c). Fallible functions return kms_err and are marked KMS_WUR, so an
 * ignored error is a compiler warning (and -Werror makes it a build failure). */
#ifndef KMS_BASE_ERR_H
#define KMS_BASE_ERR_H

#define KMS_WUR __attribute__((warn_unused_result))
#define KMS_PRINTF(a, b) __attribute__((format(printf, a, b)))

typedef enum kms_err {
	KMS_OK = 0,
	KMS_ERR_INVALID,	 /* 400: malformed or out-of-range input */
	KMS_ERR_DECRYPT,	 /* 400: ciphertext failed authentication */
	KMS_ERR_UNAUTHENTICATED, /* 401: no or unknown credential */
	KMS_ERR_DENIED,		 /* 403: credential valid, operation not allowed */
	KMS_ERR_NOT_FOUND,	 /* 404 */
	KMS_ERR_METHOD,		 /* 405 */
	KMS_ERR_CONFLICT,	 /* 409: state conflict (exists, wrong state) */
	KMS_ERR_TOO_LARGE,	 /* 413 */
	KMS_ERR_RATE_LIMITED,	 /* 429 */
	KMS_ERR_NOMEM,		 /* 500 */
	KMS_ERR_INTERNAL,	 /* 500: a bug or an impossible state */
	KMS_ERR_CONFIG,		 /* start-up: bad configuration */
	KMS_ERR_IO,		 /* 503: file or socket I/O failed */
	KMS_ERR_TOKEN,		 /* 503: PKCS#11 token unavailable or failed */
	KMS_ERR_STORE,		 /* 503: metadata store failed */
	KMS_ERR_AUDIT,		 /* 503: audit record could not be made durable */
	KMS_ERR_UNSUPPORTED,	 /* 501: not available with this configuration (e.g. store backend) */
	KMS_ERR__COUNT
} kms_err;

/* Static, never NULL. */
const char *kms_strerror(kms_err e);

/* HTTP status for an error category (200 for KMS_OK). */
int kms_err_http_status(kms_err e);

/* Sets this thread's error detail (a message fit for the client: no secrets) and
 * returns e, so that `return kms_errf(KMS_ERR_INVALID, "bits must be ...");` reads
 * naturally. The detail lives until the next kms_errf on the same thread. */
kms_err kms_errf(kms_err e, const char *fmt, ...) KMS_PRINTF(2, 3);

/* This thread's last detail, or kms_strerror(e) when none was set since
 * kms_err_clear(). Never NULL. */
const char *kms_err_detail(kms_err e);
void kms_err_clear(void);

#endif
