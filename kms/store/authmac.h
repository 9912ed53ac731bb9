/* Canonical encoding of the store rows that grant authority (principals, API tokens,
 * tenant scopes, policy versions, certificate mappings, MFA enrolments), which the
 * store MACs with a token-held key (docs/THREAT-MODEL.md "Authority rows").
 *
 * The encoding is injective: a fixed prefix "kmsd.authrow.v1\0", the table's tag,
 * the number of fields, then each field as a type byte and either an 8-byte big-endian
 * integer or a 4-byte big-endian length and the bytes. Parsing it back is unambiguous,
 * so two distinct rows (of one table or of two) never share an encoding. The prefix
 * differs from the key_versions row encoding ("kmsd.row.v1"), so the two never collide
 * under the one store MAC key. Every encoding includes the row's primary key, so a MAC
 * copied from one row to another does not verify. */
#ifndef KMS_STORE_AUTHMAC_H
#define KMS_STORE_AUTHMAC_H

#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define STORE_AM_PREFIX "kmsd.authrow.v1" /* followed by its NUL in the encoding */
#define STORE_AM_FIELDS_MAX 8

enum store_am_table {
	STORE_AM_PRINCIPAL = 1, /* id, name, role */
	STORE_AM_TOKEN = 2,	/* accessor, principal_id, hash, expires, revoked */
	STORE_AM_TENANT = 3,	/* principal_id, tenant_id (principal_tenants) */
	STORE_AM_POLICY = 4,	/* version, text */
	STORE_AM_CERT = 5,	/* id, principal_id, kind, value */
	/* principal_id, state, sealed_seed, recovery, has_pending, pending_seed,
	 * pending_recovery (principal_mfa; not the counters last_step, failures, locked,
	 * mfa_at, which change on every check) */
	STORE_AM_MFA = 6,
};

enum store_am_kind { STORE_AM_INT = 1, STORE_AM_BYTES = 2 };

struct store_am_field {
	enum store_am_kind kind;
	int64_t i;     /* STORE_AM_INT */
	const void *b; /* STORE_AM_BYTES: n bytes (may be NULL when n is 0) */
	size_t n;
};

/* Table name for logs ("principals", "api_tokens", ...); never NULL. */
const char *store_am_table_name(enum store_am_table t);

/* *out: malloc'd encoding of n fields of a row of table t (free()). INVALID for an
 * unknown table, n above STORE_AM_FIELDS_MAX or a field over 2^31 bytes. */
KMS_WUR kms_err store_am_encode(enum store_am_table t, const struct store_am_field *f, size_t n, uint8_t **out,
				size_t *len);

#endif
