/* MACs on the store rows that grant authority (docs/THREAT-MODEL.md "Authority rows"):
 * the store computes and checks them (kms/store/store.c, kms/store/authmac.h) with the
 * token's store MAC key (kmsd-store-mac, the key that already binds key_versions rows;
 * the encodings are domain-separated), through the function wired here. A row that
 * fails its MAC is counted (kmsd_store_integrity_failures_total) and audited as
 * operation "store.integrity" by the callback below; the request that read it is
 * refused like one with an unknown credential. */
#include <stdio.h>
#include <string.h>

#include "kms/base/log.h"
#include "kms/audit/audit.h"
#include "kms/core/core.h"
#include "kms/core/core_int.h"

static kms_err rowmac_p11(void *ctx, const uint8_t *msg, size_t len, uint8_t mac[STORE_MAC_LEN])
{
	return p11_hmac((struct p11 *)ctx, P11_MAC_STORE, msg, len, mac);
}

/* Called by the store with its lock held: touches only the metrics and the audit log. */
static void rowmac_bad(void *ctx, const char *table, const char *row)
{
	struct core *c = ctx;
	struct audit_record ar = {0};
	char reason[256];
	kms_err rc;

	__atomic_fetch_add(&c->met.integrity_failed, 1, __ATOMIC_RELAXED);
	snprintf(reason, sizeof(reason), "%s row %s has a missing or wrong integrity MAC: refused", table, row);
	ar.principal = "kmsd";
	ar.auth_method = "internal";
	ar.operation = kms_op_name(KMS_OP_STORE_INTEGRITY);
	ar.outcome = "deny";
	ar.status = 403;
	ar.reason = reason;
	rc = audit_append(c->au, &ar);
	if (rc != KMS_OK)
		kms_error("audit record for a store integrity failure (%s) failed: %s", reason, kms_err_detail(rc));
}

void core_rowmac_attach_p11(struct store *st, struct p11 *p11)
{
	store_set_authmac(st, p11 != NULL ? rowmac_p11 : NULL, p11, NULL, NULL);
}

kms_err core_rowmac_start(struct core *c)
{
	size_t sealed = 0;
	bool first = false;
	kms_err rc;

	store_set_authmac(c->st, rowmac_p11, c->p11, rowmac_bad, c);
	rc = store_authmac_init(c->st, &sealed, &first);
	if (rc != KMS_OK) {
		kms_error("store: authority rows could not be MAC'd: %s", kms_err_detail(rc));
		return rc;
	}
	if (first) {
		char reason[160];
		struct audit_record ar = {0};

		/* Trust on first use: rows written before this version had no MAC, and are
		 * taken as they are now (docs/THREAT-MODEL.md). From here on a row without a
		 * MAC is refused. */
		snprintf(reason, sizeof(reason),
			 "authority rows MAC'd for the first time (trust on first use): %zu rows", sealed);
		kms_warn("store: %s", reason);
		ar.principal = "kmsd";
		ar.auth_method = "internal";
		ar.operation = kms_op_name(KMS_OP_STORE_INTEGRITY);
		ar.outcome = "allow";
		ar.status = 200;
		ar.reason = reason;
		rc = audit_append(c->au, &ar);
		if (rc != KMS_OK) {
			kms_error("audit record for the first MACs of authority rows failed: %s", kms_err_detail(rc));
			return rc;
		}
	}
	return KMS_OK;
}

void core_rowmac_stop(struct core *c)
{
	store_set_authmac(c->st, NULL, NULL, NULL, NULL);
}
