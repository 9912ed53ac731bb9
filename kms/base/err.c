#include "kms/base/err.h"

#include <stdarg.h>
#include <stdio.h>

static const struct {
	const char *msg;
	int status;
} err_table[KMS_ERR__COUNT] = {
	[KMS_OK] = {"ok", 200},
	[KMS_ERR_INVALID] = {"invalid request", 400},
	[KMS_ERR_DECRYPT] = {"ciphertext could not be decrypted", 400},
	[KMS_ERR_UNAUTHENTICATED] = {"missing or invalid token", 401},
	[KMS_ERR_DENIED] = {"permission denied", 403},
	[KMS_ERR_NOT_FOUND] = {"not found", 404},
	[KMS_ERR_METHOD] = {"method not allowed", 405},
	[KMS_ERR_CONFLICT] = {"conflict with the current state", 409},
	[KMS_ERR_TOO_LARGE] = {"request too large", 413},
	[KMS_ERR_RATE_LIMITED] = {"rate limited", 429},
	[KMS_ERR_NOMEM] = {"out of memory", 500},
	[KMS_ERR_INTERNAL] = {"internal error", 500},
	[KMS_ERR_CONFIG] = {"configuration error", 500},
	[KMS_ERR_IO] = {"I/O error", 503},
	[KMS_ERR_TOKEN] = {"key token unavailable", 503},
	[KMS_ERR_STORE] = {"metadata store unavailable", 503},
	[KMS_ERR_AUDIT] = {"audit log unavailable", 503},
	[KMS_ERR_UNSUPPORTED] = {"not supported by this configuration", 501},
};

static _Thread_local char err_detail[256];

const char *kms_strerror(kms_err e)
{
	if ((unsigned)e >= KMS_ERR__COUNT)
		return "unknown error";
	return err_table[e].msg;
}

int kms_err_http_status(kms_err e)
{
	if ((unsigned)e >= KMS_ERR__COUNT)
		return 500;
	return err_table[e].status;
}

kms_err kms_errf(kms_err e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
	va_end(ap);
	return e;
}

const char *kms_err_detail(kms_err e)
{
	return err_detail[0] ? err_detail : kms_strerror(e);
}

void kms_err_clear(void)
{
	err_detail[0] = '\0';
}
