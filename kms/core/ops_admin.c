/* Management operations: tenants, principals, tokens, keys. Called only from
 * core_call, after authentication and the policy decision. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/core/core_int.h"
#include "policy/authn.h"

#define MAX_TOKEN_TTL (10LL * 365 * 24 * 3600)

static json_t *body_or_empty(struct op_ctx *x, json_t **tmp)
{
	if (x->call->body != NULL)
		return x->call->body;
	*tmp = json_object();
	return *tmp;
}

static json_t *tenant_json(const struct store_tenant *t)
{
	json_t *d = json_object();

	json_object_set_new(d, "name", json_string(t->name));
	json_object_set_new(d, "retention", json_string(t->retention));
	json_object_set_new(d, "created", json_integer(t->created));
	json_object_set_new(d, "retention_days", json_integer(t->retention_period / 86400));
	json_object_set_new(d, "min_destroy_wait_days", json_integer(t->min_destroy_wait / 86400));
	json_object_set_new(d, "legal_hold", json_boolean(t->legal_hold));
	return d;
}

kms_err op_tenant_create(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"retention", NULL};
	struct store_tenant t = {0};
	json_t *tmp = NULL, *body = body_or_empty(x, &tmp);
	const char *ret;
	kms_err rc;

	if (!core_valid_tenant_name(x->call->name)) {
		rc = kms_errf(KMS_ERR_INVALID, "invalid tenant name: use 1-63 of [a-z0-9_-], starting with a letter or digit (not sys or auth)");
		goto out;
	}
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "retention", &ret)) != KMS_OK)
		goto out;
	if (ret == NULL)
		ret = "phi";
	if (strcmp(ret, "phi") != 0 && strcmp(ret, "non-phi") != 0) {
		rc = kms_errf(KMS_ERR_INVALID, "retention must be \"phi\" or \"non-phi\"");
		goto out;
	}
	t.created = core_now();
	rc = store_tenant_create(c->st, x->call->name, ret, t.created, &t.id);
	if (rc != KMS_OK)
		goto out;
	/* Cache what the store holds (its defaults for retention included), not a copy
	 * made here that could miss a column. */
	rc = store_tenant_get(c->st, x->call->name, &t);
	if (rc != KMS_OK)
		goto out;
	core_tenant_insert(c, &t);
	x->data = tenant_json(&t);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_tenant_read(struct core *c, struct op_ctx *x)
{
	struct store_tenant t;
	kms_err rc = core_tenant_lookup(c, x->call->name, &t);

	if (rc == KMS_OK)
		x->data = tenant_json(&t);
	return rc;
}

kms_err op_tenant_list(struct core *c, struct op_ctx *x)
{
	struct store_tenant *ts = NULL;
	size_t n = 0;
	json_t *keys;
	kms_err rc = store_tenant_list(c->st, &ts, &n);

	if (rc != KMS_OK)
		return rc;
	keys = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(keys, json_string(ts[i].name));
	free(ts);
	x->data = json_pack("{s:o}", "keys", keys);
	return KMS_OK;
}

static kms_err principal_json(struct core *c, const struct store_principal *p, json_t **out)
{
	int64_t *ids = NULL;
	size_t n = 0;
	struct store_tenant *ts = NULL;
	size_t nt = 0;
	json_t *tenants = json_array();
	kms_err rc;

	rc = store_principal_tenants(c->st, p->id, &ids, &n);
	if (rc == KMS_OK && n > 0)
		rc = store_tenant_list(c->st, &ts, &nt);
	if (rc != KMS_OK)
		goto out;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < nt; j++)
			if (ts[j].id == ids[i])
				json_array_append_new(tenants, json_string(ts[j].name));
	*out = json_pack("{s:s,s:s,s:O,s:I}", "name", p->name, "role", p->role, "tenants", tenants,
			 "created", (json_int_t)p->created);
out:
	json_decref(tenants);
	free(ids);
	free(ts);
	return rc;
}

kms_err op_principal_create(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"role", "tenants", NULL};
	json_t *tmp = NULL, *body = body_or_empty(x, &tmp), *tl, *v;
	struct store_principal p = {0};
	int64_t *ids = NULL;
	size_t n = 0, i;
	const char *role;
	kms_err rc;

	if (!core_valid_name(x->call->name)) {
		rc = kms_errf(KMS_ERR_INVALID, "invalid principal name: use 1-128 of [A-Za-z0-9._-]");
		goto out;
	}
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "role", &role)) != KMS_OK)
		goto out;
	if (role == NULL || policy_role_parse(role) == POLICY_ROLE_NONE) {
		rc = kms_errf(KMS_ERR_INVALID, "role must be \"admin\", \"service\" or \"auditor\"");
		goto out;
	}
	tl = json_object_get(body, "tenants");
	if (tl != NULL && !json_is_array(tl)) {
		rc = kms_errf(KMS_ERR_INVALID, "tenants must be an array of tenant names");
		goto out;
	}
	if (tl != NULL && json_array_size(tl) > 0) {
		if (json_array_size(tl) > 1024) {
			rc = kms_errf(KMS_ERR_INVALID, "at most 1024 tenants per principal");
			goto out;
		}
		ids = calloc(json_array_size(tl), sizeof(*ids));
		if (ids == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "principal");
			goto out;
		}
		json_array_foreach(tl, i, v) {
			struct store_tenant t;
			if (!json_is_string(v)) {
				rc = kms_errf(KMS_ERR_INVALID, "tenants must be an array of tenant names");
				goto out;
			}
			rc = core_tenant_lookup(c, json_string_value(v), &t);
			if (rc == KMS_ERR_NOT_FOUND)
				rc = kms_errf(KMS_ERR_INVALID, "tenant \"%.64s\" does not exist", json_string_value(v));
			if (rc != KMS_OK)
				goto out;
			ids[n++] = t.id;
		}
	}
	p.created = core_now();
	rc = store_principal_create(c->st, x->call->name, role, ids, n, p.created, &p.id);
	if (rc != KMS_OK)
		goto out;
	snprintf(p.name, sizeof(p.name), "%s", x->call->name);
	snprintf(p.role, sizeof(p.role), "%s", role);
	rc = principal_json(c, &p, &x->data);
out:
	free(ids);
	json_decref(tmp);
	return rc;
}

kms_err op_principal_read(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	kms_err rc;

	if (!core_valid_name(x->call->name))
		return kms_errf(KMS_ERR_NOT_FOUND, "principal not found");
	rc = store_principal_get(c->st, x->call->name, &p);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" not found", x->call->name);
	if (rc != KMS_OK)
		return rc;
	return principal_json(c, &p, &x->data);
}

kms_err op_principal_list(struct core *c, struct op_ctx *x)
{
	struct store_principal *ps = NULL;
	size_t n = 0;
	json_t *keys;
	kms_err rc = store_principal_list(c->st, &ps, &n);

	if (rc != KMS_OK)
		return rc;
	keys = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(keys, json_string(ps[i].name));
	free(ps);
	x->data = json_pack("{s:o}", "keys", keys);
	return KMS_OK;
}

static json_t *time_or_null(int64_t t)
{
	char buf[32];
	struct tm tm;
	time_t tt = (time_t)t;

	if (t == 0)
		return json_null();
	gmtime_r(&tt, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_string(buf);
}

kms_err op_token_create(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"ttl", NULL};
	json_t *tmp = NULL, *body = body_or_empty(x, &tmp);
	struct store_principal p;
	struct store_token t = {0};
	char token[AUTHN_TOKEN_LEN + 1] = {0};
	long long ttl;
	kms_err rc;

	if (!core_valid_name(x->call->name)) {
		rc = kms_errf(KMS_ERR_NOT_FOUND, "principal not found");
		goto out;
	}
	if ((rc = kms_json_only(body, allowed)) != KMS_OK ||
	    (rc = kms_json_opt_uint(body, "ttl", 0, MAX_TOKEN_TTL, &ttl)) != KMS_OK)
		goto out;
	rc = store_principal_get(c->st, x->call->name, &p);
	if (rc == KMS_ERR_NOT_FOUND)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" not found", x->call->name);
	if (rc != KMS_OK)
		goto out;
	rc = authn_token_new(token, t.accessor);
	if (rc != KMS_OK)
		goto out;
	authn_token_hash(token, AUTHN_TOKEN_LEN, t.hash);
	t.principal_id = p.id;
	t.created = core_now();
	t.expires = ttl ? t.created + ttl : 0;
	rc = store_token_create(c->st, &t);
	if (rc != KMS_OK)
		goto out;
	x->data = json_pack("{s:s,s:s,s:o}", "accessor", t.accessor, "principal", p.name, "expires",
			    time_or_null(t.expires));
	/* The token string lives on only inside this JSON, whose memory is wiped on free. */
	x->auth = json_pack("{s:s,s:s,s:[s],s:I}", "client_token", token, "accessor", t.accessor,
			    "policies", p.role, "lease_duration", (json_int_t)ttl);
out:
	kms_wipe(token, sizeof(token));
	json_decref(tmp);
	return rc;
}

/* The {"accessor":"…"} body of the token calls: *acc points into the body (or tmp). */
static kms_err accessor_body(struct op_ctx *x, json_t **tmp, const char **acc)
{
	static const char *const allowed[] = {"accessor", NULL};
	json_t *body = body_or_empty(x, tmp);
	kms_err rc;

	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "accessor", acc)) != KMS_OK)
		return rc;
	if (*acc == NULL || strlen(*acc) > STORE_ACCESSOR_MAX)
		return kms_errf(KMS_ERR_INVALID, "accessor is required");
	return KMS_OK;
}

kms_err op_token_revoke(struct core *c, struct op_ctx *x)
{
	json_t *tmp = NULL;
	const char *acc;
	kms_err rc;

	if ((rc = accessor_body(x, &tmp, &acc)) != KMS_OK)
		goto out;
	rc = store_token_revoke(c->st, acc);
	if (rc == KMS_ERR_NOT_FOUND)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no token with that accessor");
	if (rc == KMS_OK)
		x->data = json_pack("{s:s,s:b}", "accessor", acc, "revoked", 1);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_token_lookup_self(struct core *c, struct op_ctx *x)
{
	(void)c;
	x->data = json_pack("{s:s,s:s,s:[s],s:o,s:o}", "display_name", x->who.name, "accessor", x->accessor,
			    "policies", x->who.role, "expire_time", time_or_null(x->token_expires), "last_used",
			    time_or_null(x->token_last_used));
	return KMS_OK;
}

/* Vault's auth/token/lookup-accessor: a token's metadata by its accessor (admin). */
kms_err op_token_lookup_accessor(struct core *c, struct op_ctx *x)
{
	json_t *tmp = NULL;
	struct store_principal p;
	struct store_token t;
	const char *acc;
	kms_err rc;

	if ((rc = accessor_body(x, &tmp, &acc)) != KMS_OK)
		goto out;
	rc = store_token_get(c->st, acc, &t);
	if (rc == KMS_ERR_NOT_FOUND || (rc == KMS_ERR_INVALID))
		rc = kms_errf(KMS_ERR_NOT_FOUND, "no token with that accessor");
	if (rc == KMS_OK)
		rc = store_principal_get_id(c->st, t.principal_id, &p);
	if (rc != KMS_OK)
		goto out;
	x->data = json_pack("{s:s,s:s,s:[s],s:o,s:o,s:o,s:b}", "accessor", t.accessor, "display_name", p.name,
			    "policies", p.role, "creation_time", time_or_null(t.created), "expire_time",
			    time_or_null(t.expires), "last_used", time_or_null(t.last_used), "revoked", t.revoked);
out:
	json_decref(tmp);
	return rc;
}

/* ---- keys ---- */

static kms_err require_false(json_t *body, const char *name)
{
	int v;
	kms_err rc = kms_json_opt_bool(body, name, 0, &v);

	if (rc == KMS_OK && v)
		rc = kms_errf(KMS_ERR_INVALID, "\"%s\" is not supported: kmsd keys never leave the token", name);
	return rc;
}

kms_err op_key_create(struct core *c, struct op_ctx *x)
{
	static const char *const allowed[] = {"type", "derived", "convergent_encryption", "exportable",
					      "allow_plaintext_backup", NULL};
	json_t *tmp = NULL, *body = body_or_empty(x, &tmp);
	struct store_version v = {0};
	struct store_key meta = {0};
	const char *type;
	int64_t key_id;
	kms_err rc;

	if (!core_valid_name(x->call->key)) {
		rc = kms_errf(KMS_ERR_INVALID, "invalid key name: use 1-128 of [A-Za-z0-9._-]");
		goto out;
	}
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "type", &type)) != KMS_OK ||
	    (rc = require_false(body, "derived")) != KMS_OK ||
	    (rc = require_false(body, "convergent_encryption")) != KMS_OK ||
	    (rc = require_false(body, "exportable")) != KMS_OK ||
	    (rc = require_false(body, "allow_plaintext_backup")) != KMS_OK)
		goto out;
	if (type != NULL && strcmp(type, "aes256-gcm96") != 0) {
		rc = kms_errf(KMS_ERR_INVALID, "unsupported key type \"%.32s\": only aes256-gcm96", type);
		goto out;
	}
	pthread_mutex_lock(&c->create_mu);
	rc = store_key_get(c->st, x->tenant.id, x->call->key, &meta);
	if (rc == KMS_OK) {
		rc = kms_errf(KMS_ERR_CONFLICT, "key \"%s\" already exists in tenant \"%s\"", x->call->key,
			      x->tenant.name);
	} else if (rc == KMS_ERR_NOT_FOUND) {
		v.version = 1;
		v.created = core_now();
		for (int attempt = 0;; attempt++) {
			rc = core_kek_row_new(c, x->tenant.name, x->call->key, &v);
			if (rc == KMS_OK)
				rc = store_key_create(c->st, x->tenant.id, x->call->key, "aes256-gcm96", v.created, &v,
						      &key_id);
			if (rc != KMS_ERR_CONFLICT || attempt == 3 || !core_mk_moved(c, v.mk_version))
				break;
		}
	}
	pthread_mutex_unlock(&c->create_mu);
	if (rc != KMS_OK)
		goto out;
	x->version = 1;
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
out:
	json_decref(tmp);
	return rc;
}

kms_err op_key_read(struct core *c, struct op_ctx *x)
{
	return core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
}

kms_err op_key_list(struct core *c, struct op_ctx *x)
{
	char **names = NULL;
	size_t n = 0;
	json_t *keys;
	kms_err rc = store_key_list(c->st, x->tenant.id, &names, &n);

	if (rc != KMS_OK)
		return rc;
	if (n == 0) {
		store_names_free(names, n);
		return kms_errf(KMS_ERR_NOT_FOUND, "no keys in tenant \"%s\"", x->tenant.name);
	}
	keys = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(keys, json_string(names[i]));
	store_names_free(names, n);
	x->data = json_pack("{s:o}", "keys", keys);
	return KMS_OK;
}

kms_err op_key_rotate(struct core *c, struct op_ctx *x)
{
	uint32_t v = 0;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "rotate takes no parameters");
	rc = core_rotate_key(c, x->tenant.name, x->call->key, 0, &v);
	if (rc != KMS_OK)
		return rc;
	x->version = v;
	rc = core_key_read_json(c, x->tenant.name, x->call->key, &x->data);
	/* the version this call made: latest_version is the key's now, which another
	 * admin or node rotating at the same moment may have moved past it */
	if (rc == KMS_OK && json_object_set_new(x->data, "rotated_version", json_integer(v)) != 0)
		rc = kms_errf(KMS_ERR_NOMEM, "rotate answer");
	return rc;
}
