/* See authmac.h. Pure functions: no token, no SQLite, so that the encoding has its own
 * unit test (tests/unit/test_authmac.c). */
#include "kms/store/authmac.h"

#include <stdlib.h>
#include <string.h>

const char *store_am_table_name(enum store_am_table t)
{
	switch (t) {
	case STORE_AM_PRINCIPAL: return "principals";
	case STORE_AM_TOKEN: return "api_tokens";
	case STORE_AM_TENANT: return "principal_tenants";
	case STORE_AM_POLICY: return "policies";
	case STORE_AM_CERT: return "principal_certs";
	case STORE_AM_MFA: return "principal_mfa";
	}
	return "unknown";
}

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

kms_err store_am_encode(enum store_am_table t, const struct store_am_field *f, size_t n, uint8_t **out,
			size_t *len)
{
	size_t total = sizeof(STORE_AM_PREFIX) + 2, off;
	uint8_t *buf;

	if (out == NULL || len == NULL || (f == NULL && n > 0))
		return kms_errf(KMS_ERR_INVALID, "authority row encoding: no output");
	*out = NULL;
	*len = 0;
	if (t < STORE_AM_PRINCIPAL || t > STORE_AM_MFA || n > STORE_AM_FIELDS_MAX)
		return kms_errf(KMS_ERR_INVALID, "authority row encoding: bad table or field count");
	for (size_t i = 0; i < n; i++) {
		if (f[i].kind == STORE_AM_INT)
			total += 1 + 8;
		else if (f[i].kind == STORE_AM_BYTES && f[i].n <= 0x7fffffffu && (f[i].b != NULL || f[i].n == 0))
			total += 1 + 4 + f[i].n;
		else
			return kms_errf(KMS_ERR_INVALID, "authority row encoding: bad field %zu", i);
	}
	if ((buf = malloc(total)) == NULL)
		return kms_errf(KMS_ERR_NOMEM, "authority row encoding");
	memcpy(buf, STORE_AM_PREFIX, sizeof(STORE_AM_PREFIX)); /* with its NUL */
	off = sizeof(STORE_AM_PREFIX);
	buf[off++] = (uint8_t)t;
	buf[off++] = (uint8_t)n;
	for (size_t i = 0; i < n; i++) {
		buf[off++] = (uint8_t)f[i].kind;
		if (f[i].kind == STORE_AM_INT) {
			put_be(buf + off, (uint64_t)f[i].i, 8);
			off += 8;
		} else {
			put_be(buf + off, (uint64_t)f[i].n, 4);
			off += 4;
			if (f[i].n > 0)
				memcpy(buf + off, f[i].b, f[i].n);
			off += f[i].n;
		}
	}
	*out = buf;
	*len = off;
	return KMS_OK;
}
