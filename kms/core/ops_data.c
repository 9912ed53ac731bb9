/* The data plane: datakey, encrypt, decrypt, rewrap, each for one item or a batch.
 * Plaintext (DEKs and caller data) lives in stack buffers or wiped heap blocks and in
 * jansson strings, whose memory the JSON allocator wipes on free. */
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/core/ciphertext.h"
#include "kms/core/core_int.h"
#include "kms/core/rndpool.h"


struct item_in {
	const uint8_t *ad;
	size_t ad_len;
	const json_t *ctx;
};

typedef kms_err (*item_fn)(struct core *c, struct op_ctx *x, const struct keyref *k, json_t *item,
			   json_t **out);

static void *wiped_alloc(size_t n)
{
	return calloc(1, n ? n : 1);
}

static void wiped_free(void *p, size_t n)
{
	if (p != NULL) {
		kms_wipe(p, n);
		free(p);
	}
}

/* Decodes an optional base64 member into a new wiped block (*len 0 and *out NULL when absent). */
static kms_err b64_member(json_t *item, const char *name, bool required, uint8_t **out, size_t *len)
{
	const char *s;
	size_t sl;
	long n;
	kms_err rc;

	*out = NULL;
	*len = 0;
	rc = kms_json_opt_string(item, name, &s);
	if (rc != KMS_OK)
		return rc;
	if (s == NULL)
		return required ? kms_errf(KMS_ERR_INVALID, "\"%s\" is required", name) : KMS_OK;
	sl = json_string_length(json_object_get(item, name));
	*out = wiped_alloc(KMS_B64_DEC_MAX(sl));
	if (*out == NULL)
		return kms_errf(KMS_ERR_NOMEM, "%s", name);
	n = kms_b64_decode(s, sl, *out, KMS_B64_DEC_MAX(sl));
	if (n < 0) {
		wiped_free(*out, KMS_B64_DEC_MAX(sl));
		*out = NULL;
		return kms_errf(KMS_ERR_INVALID, "\"%s\" is not valid base64", name);
	}
	*len = (size_t)n;
	return KMS_OK;
}

static kms_err common_in(json_t *item, uint8_t **ad, size_t *ad_len, const json_t **ctx)
{
	json_t *cx = json_object_get(item, "encryption_context");
	const char *legacy;
	kms_err rc;

	rc = kms_json_opt_string(item, "context", &legacy);
	if (rc != KMS_OK)
		return rc;
	if (legacy != NULL && *legacy != '\0')
		return kms_errf(KMS_ERR_INVALID, "\"context\" (key derivation) is not supported; bind "
						 "data with \"encryption_context\" or \"associated_data\"");
	if (cx != NULL && !json_is_null(cx) && !json_is_object(cx))
		return kms_errf(KMS_ERR_INVALID, "encryption_context must be an object of strings");
	*ctx = cx;
	return b64_member(item, "associated_data", false, ad, ad_len);
}

/* Encrypts pt under version *ver of k, writing the wire ciphertext into a new JSON
 * string. Each encryption takes a counter slot of its version; when the version has
 * reached its usage limit and the caller did not pin it (may_rotate), the key is
 * rotated on the spot and *ver becomes the new version. */
static kms_err seal(struct core *c, const struct keyref *k, uint32_t *ver, bool may_rotate, const uint8_t *iv,
		    const uint8_t *pt, size_t pt_len, const uint8_t *ad, size_t ad_len,
		    const json_t *ctx, json_t **ct_out)
{
	uint8_t *raw = NULL, *aad = NULL;
	size_t raw_len = CT_IV_LEN + pt_len + CT_TAG_LEN, aad_len = 0, wl;
	char *wire = NULL;
	struct keyref cur = *k;
	p11_key h;
	kms_err rc;

	bool exhausted = false;

	rc = core_kek(c, &cur, *ver, &h);
	if (rc == KMS_OK) {
		rc = core_take_slot(c, &cur, *ver);
		exhausted = rc == KMS_ERR_CONFLICT; /* only this refusal rotates the key */
	}
	for (int tries = 0; exhausted && may_rotate && tries < 3; tries++) {
		uint32_t old = *ver, nv = 0;
		char why[96];
		/* Exhausted (or the cache moved on): use, or make, the next version. */
		if (core_key_ref(c, k->tenant, k->name, &cur) != KMS_OK)
			break;
		if (cur.latest == old) {
			if (core_rotate_key(c, k->tenant, k->name, old, &nv) != KMS_OK)
				break;
			if (nv != old) {
				snprintf(why, sizeof(why), "usage limit of version %u reached", old);
				core_audit_internal(c, KMS_OP_KEY_ROTATE, k->tenant, k->name, nv, "allow", 200, why);
			}
			if (core_key_ref(c, k->tenant, k->name, &cur) != KMS_OK)
				break;
		}
		*ver = cur.latest;
		exhausted = false;
		rc = core_kek(c, &cur, *ver, &h);
		if (rc == KMS_OK) {
			rc = core_take_slot(c, &cur, *ver);
			exhausted = rc == KMS_ERR_CONFLICT;
		}
	}
	if (rc != KMS_OK)
		return rc;
	rc = ct_aad_build(k->tenant, k->name, *ver, ad, ad_len, ctx, &aad, &aad_len);
	if (rc != KMS_OK)
		return rc;
	raw = malloc(raw_len);
	wl = ct_wire_len(*ver, raw_len) + 1;
	wire = malloc(wl);
	if (raw == NULL || wire == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "encrypt");
		goto out;
	}
	memcpy(raw, iv, CT_IV_LEN);
	rc = p11_gcm_encrypt(c->p11, h, iv, aad, aad_len, pt, pt_len, raw + CT_IV_LEN, raw_len - CT_IV_LEN);
	if (rc == KMS_OK)
		rc = ct_format(*ver, raw, raw_len, wire, wl);
	if (rc == KMS_OK && (*ct_out = json_string(wire)) == NULL)
		rc = kms_errf(KMS_ERR_NOMEM, "encrypt");
out:
	free(raw);
	free(wire);
	ct_aad_free(aad, aad_len);
	return rc;
}

/* Parses and decrypts a wire ciphertext of k. *pt is a new wiped block of *pt_cap bytes. */
static kms_err open_ct(struct core *c, const struct keyref *k, const char *wire, size_t wl,
		       const uint8_t *ad, size_t ad_len, const json_t *ctx, uint32_t *ver,
		       uint8_t **pt, size_t *pt_len, size_t *pt_cap)
{
	size_t raw_cap = KMS_B64_DEC_MAX(wl), raw_len, aad_len = 0;
	uint8_t *raw = malloc(raw_cap ? raw_cap : 1), *aad = NULL;
	p11_key h;
	kms_err rc;

	*pt = NULL;
	if (raw == NULL)
		return kms_errf(KMS_ERR_NOMEM, "decrypt");
	rc = ct_parse(wire, wl, ver, raw, raw_cap, &raw_len);
	if (rc != KMS_OK)
		goto out;
	if (*ver > k->latest) {
		rc = kms_errf(KMS_ERR_INVALID, "invalid ciphertext: key version %u does not exist", *ver);
		goto out;
	}
	if (*ver < k->min_dec) {
		rc = kms_errf(KMS_ERR_INVALID, "ciphertext key version %u is below min_decryption_version %u",
			      *ver, k->min_dec);
		goto out;
	}
	rc = core_kek(c, k, *ver, &h);
	if (rc != KMS_OK)
		goto out;
	rc = ct_aad_build(k->tenant, k->name, *ver, ad, ad_len, ctx, &aad, &aad_len);
	if (rc != KMS_OK)
		goto out;
	*pt_cap = raw_len - CT_IV_LEN;
	*pt = wiped_alloc(*pt_cap);
	if (*pt == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "decrypt");
		goto out;
	}
	rc = p11_gcm_decrypt(c->p11, h, raw, aad, aad_len, raw + CT_IV_LEN, raw_len - CT_IV_LEN, *pt,
			     *pt_cap, pt_len);
	if (rc == KMS_ERR_DECRYPT)
		rc = kms_errf(KMS_ERR_DECRYPT,
			      "ciphertext could not be decrypted: authentication failed (wrong tenant, key, "
			      "version, encryption_context or associated_data, or an altered ciphertext)");
	if (rc != KMS_OK) {
		wiped_free(*pt, *pt_cap);
		*pt = NULL;
	}
out:
	free(raw);
	ct_aad_free(aad, aad_len);
	return rc;
}

/* Whether the caller named the version to encrypt under (then it is not replaced). */
static bool pinned(json_t *item)
{
	json_t *v = json_object_get(item, "key_version");

	return v != NULL && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 0);
}

static kms_err pick_version(json_t *item, const struct keyref *k, uint32_t *ver)
{
	long long v;
	kms_err rc = kms_json_opt_uint(item, "key_version", 0, UINT32_MAX, &v);

	if (rc != KMS_OK)
		return rc;
	if (v == 0) {
		*ver = k->latest;
		return KMS_OK;
	}
	if ((uint32_t)v > k->latest)
		return kms_errf(KMS_ERR_INVALID, "key_version %lld does not exist", v);
	/* Superseded versions are decrypt-only (docs/KEY-LIFECYCLE.md): no new
	 * ciphertext under an old KEK version, so retiring one bounds its exposure. */
	if ((uint32_t)v < k->latest)
		return kms_errf(KMS_ERR_CONFLICT,
				"key version %lld is decrypt-only (superseded by version %u); encryption uses the latest version",
				v, k->latest);
	*ver = (uint32_t)v;
	return KMS_OK;
}

static kms_err item_datakey(struct core *c, struct op_ctx *x, const struct keyref *k, json_t *item,
			    json_t **out)
{
	static const char *const allowed[] = {"bits", "associated_data", "encryption_context", "context", "nonce", NULL};
	uint8_t rnd[64 + CT_IV_LEN], *ad = NULL;
	char dek_b64[KMS_B64_ENC_LEN(64) + 1];
	size_t ad_len = 0, dek_len;
	const json_t *ctx = NULL;
	json_t *ct = NULL;
	long long bits;
	uint32_t ver;
	kms_err rc;

	if ((rc = kms_json_only(item, allowed)) != KMS_OK || (rc = kms_json_opt_uint(item, "bits", 256, 512, &bits)) != KMS_OK ||
	    (rc = common_in(item, &ad, &ad_len, &ctx)) != KMS_OK)
		goto out;
	if (json_object_get(item, "nonce") != NULL) {
		rc = kms_errf(KMS_ERR_INVALID, "\"nonce\" is not supported: IVs are always random");
		goto out;
	}
	if (bits != 128 && bits != 256 && bits != 512) {
		rc = kms_errf(KMS_ERR_INVALID, "bits must be 128, 256 or 512");
		goto out;
	}
	dek_len = (size_t)bits / 8;
	/* DEK and IV: token random bytes, from the pool (rndpool.h) */
	rc = rndpool_get(c->rnd, rnd, dek_len + CT_IV_LEN);
	if (rc != KMS_OK)
		goto out;
	ver = k->latest;
	rc = seal(c, k, &ver, true, rnd + dek_len, rnd, dek_len, ad, ad_len, ctx, &ct);
	if (rc != KMS_OK)
		goto out;
	*out = json_object();
	if (strcmp(x->call->variant, "plaintext") == 0) {
		(void)kms_b64_encode(rnd, dek_len, dek_b64, sizeof(dek_b64));
		json_object_set_new(*out, "plaintext", json_string(dek_b64));
	}
	json_object_set_new(*out, "ciphertext", ct);
	json_object_set_new(*out, "key_version", json_integer(ver));
	x->version = ver;
out:
	kms_wipe(rnd, sizeof(rnd));
	kms_wipe(dek_b64, sizeof(dek_b64));
	wiped_free(ad, ad_len);
	return rc;
}

static kms_err item_encrypt(struct core *c, struct op_ctx *x, const struct keyref *k, json_t *item,
			    json_t **out)
{
	static const char *const allowed[] = {"plaintext", "key_version", "associated_data",
					      "encryption_context", "context", "type", NULL};
	uint8_t *pt = NULL, *ad = NULL, iv[CT_IV_LEN];
	size_t pt_len = 0, ad_len = 0;
	const json_t *ctx = NULL;
	json_t *ct = NULL;
	uint32_t ver;
	kms_err rc;

	if ((rc = kms_json_only(item, allowed)) != KMS_OK || (rc = pick_version(item, k, &ver)) != KMS_OK ||
	    (rc = common_in(item, &ad, &ad_len, &ctx)) != KMS_OK ||
	    (rc = b64_member(item, "plaintext", true, &pt, &pt_len)) != KMS_OK)
		goto out;
	rc = rndpool_get(c->rnd, iv, sizeof(iv));
	if (rc == KMS_OK)
		rc = seal(c, k, &ver, !pinned(item), iv, pt, pt_len, ad, ad_len, ctx, &ct);
	if (rc != KMS_OK)
		goto out;
	*out = json_pack("{s:o,s:I}", "ciphertext", ct, "key_version", (json_int_t)ver);
	x->version = ver;
out:
	wiped_free(pt, pt_len);
	wiped_free(ad, ad_len);
	return rc;
}

static kms_err decrypt_common(struct core *c, const struct keyref *k, json_t *item, uint8_t **pt,
			      size_t *pt_len, size_t *pt_cap, uint32_t *ver, uint8_t **ad,
			      size_t *ad_len, const json_t **ctx)
{
	const char *wire;
	kms_err rc;

	if ((rc = common_in(item, ad, ad_len, ctx)) != KMS_OK ||
	    (rc = kms_json_opt_string(item, "ciphertext", &wire)) != KMS_OK)
		return rc;
	if (wire == NULL)
		return kms_errf(KMS_ERR_INVALID, "\"ciphertext\" is required");
	return open_ct(c, k, wire, json_string_length(json_object_get(item, "ciphertext")), *ad, *ad_len,
		       *ctx, ver, pt, pt_len, pt_cap);
}

static kms_err item_decrypt(struct core *c, struct op_ctx *x, const struct keyref *k, json_t *item,
			    json_t **out)
{
	static const char *const allowed[] = {"ciphertext", "associated_data", "encryption_context", "context", NULL};
	uint8_t *pt = NULL, *ad = NULL;
	size_t pt_len = 0, pt_cap = 0, ad_len = 0, bl;
	const json_t *ctx = NULL;
	char *b64 = NULL;
	uint32_t ver = 0;
	kms_err rc;

	if ((rc = kms_json_only(item, allowed)) != KMS_OK ||
	    (rc = decrypt_common(c, k, item, &pt, &pt_len, &pt_cap, &ver, &ad, &ad_len, &ctx)) != KMS_OK)
		goto out;
	bl = KMS_B64_ENC_LEN(pt_len) + 1;
	b64 = wiped_alloc(bl);
	if (b64 == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "decrypt");
		goto out;
	}
	(void)kms_b64_encode(pt, pt_len, b64, bl);
	*out = json_pack("{s:s}", "plaintext", b64);
	x->version = ver;
	wiped_free(b64, bl);
out:
	wiped_free(pt, pt_cap);
	wiped_free(ad, ad_len);
	return rc;
}

static kms_err item_rewrap(struct core *c, struct op_ctx *x, const struct keyref *k, json_t *item,
			   json_t **out)
{
	static const char *const allowed[] = {"ciphertext", "key_version", "associated_data",
					      "encryption_context", "context", NULL};
	uint8_t *pt = NULL, *ad = NULL, iv[CT_IV_LEN];
	size_t pt_len = 0, pt_cap = 0, ad_len = 0;
	const json_t *ctx = NULL;
	json_t *ct = NULL;
	uint32_t old_ver = 0, ver;
	kms_err rc;

	if ((rc = kms_json_only(item, allowed)) != KMS_OK || (rc = pick_version(item, k, &ver)) != KMS_OK ||
	    (rc = decrypt_common(c, k, item, &pt, &pt_len, &pt_cap, &old_ver, &ad, &ad_len, &ctx)) != KMS_OK)
		goto out;
	rc = rndpool_get(c->rnd, iv, sizeof(iv));
	if (rc == KMS_OK)
		rc = seal(c, k, &ver, !pinned(item), iv, pt, pt_len, ad, ad_len, ctx, &ct);
	if (rc != KMS_OK)
		goto out;
	*out = json_pack("{s:o,s:I}", "ciphertext", ct, "key_version", (json_int_t)ver);
	x->version = ver;
out:
	wiped_free(pt, pt_cap);
	wiped_free(ad, ad_len);
	return rc;
}

/* Errors that concern one item are reported in its slot; anything else (token,
 * store, memory) fails the whole request, so that a batch never half-answers a fault. */
static bool item_level(kms_err rc)
{
	return rc == KMS_ERR_INVALID || rc == KMS_ERR_DECRYPT;
}

static kms_err run(struct core *c, struct op_ctx *x, item_fn fn)
{
	json_t *tmp = NULL, *body = x->call->body, *batch, *results, *it;
	struct keyref k;
	size_t i, failed = 0, denied = 0;
	kms_err rc;

	if (body == NULL)
		body = tmp = json_object();
	rc = core_key_ref(c, x->tenant.name, x->call->key, &k);
	if (rc != KMS_OK)
		goto out;
	batch = json_object_get(body, "batch_input");
	if (batch == NULL) {
		rc = fn(c, x, &k, body, &x->data);
		goto out;
	}
	if (!json_is_array(batch) || json_array_size(batch) == 0 || json_array_size(batch) > CORE_BATCH_MAX) {
		rc = kms_errf(KMS_ERR_INVALID, "batch_input must be an array of 1 to %d items", CORE_BATCH_MAX);
		goto out;
	}
	{
		/* Vault clients (hvac) send the single-item fields as null beside batch_input:
		 * null counts as absent; anything else at the top level is a caller error. */
		const char *name;
		json_t *v;
		json_object_foreach(body, name, v) {
			if (strcmp(name, "batch_input") != 0 && !json_is_null(v)) {
				rc = kms_errf(KMS_ERR_INVALID, "with batch_input, give \"%.32s\" inside the items", name);
				goto out;
			}
		}
	}
	results = json_array();
	x->batch = (unsigned)json_array_size(batch);
	json_array_foreach(batch, i, it) {
		json_t *r = NULL;
		if (!json_is_object(it)) {
			rc = kms_errf(KMS_ERR_INVALID, "batch item %zu is not an object", i);
		} else if (json_object_get(it, "batch_input") != NULL) {
			rc = kms_errf(KMS_ERR_INVALID, "batch items cannot nest batch_input");
		} else if ((rc = core_policy_item(x, it)) != KMS_OK) {
			/* this item's context is not allowed: the item fails, not the batch */
			denied++;
			rc = kms_errf(KMS_ERR_INVALID, "permission denied");
		} else {
			rc = fn(c, x, &k, it, &r);
		}
		if (rc != KMS_OK && !item_level(rc)) {
			json_decref(results);
			goto out;
		}
		if (rc != KMS_OK) {
			r = json_object();
			if (r != NULL)
				json_object_set_new(r, "error", kms_json_text(kms_err_detail(rc)));
			failed++;
		}
		/* One slot per item, always: a missing one would shift every later result
		 * onto the wrong item. */
		if (r == NULL || json_array_append_new(results, r) != 0) {
			json_decref(results);
			rc = kms_errf(KMS_ERR_NOMEM, "batch results");
			goto out;
		}
	}
	if (denied == json_array_size(batch)) {
		json_decref(results);
		rc = kms_errf(KMS_ERR_DENIED, "permission denied");
		goto out;
	}
	x->data = json_pack("{s:o}", "batch_results", results);
	rc = KMS_OK;
	if (failed > 0) {
		x->status = 400;
		(void)kms_errf(KMS_ERR_INVALID, "%zu of %zu batch items failed", failed, json_array_size(batch));
	}
out:
	json_decref(tmp);
	return rc;
}

kms_err op_datakey(struct core *c, struct op_ctx *x)
{
	const char *v = x->call->variant;

	if (v == NULL || (strcmp(v, "plaintext") != 0 && strcmp(v, "wrapped") != 0))
		return kms_errf(KMS_ERR_INVALID, "datakey type must be \"plaintext\" or \"wrapped\"");
	return run(c, x, item_datakey);
}

kms_err op_encrypt(struct core *c, struct op_ctx *x)
{
	return run(c, x, item_encrypt);
}

kms_err op_decrypt(struct core *c, struct op_ctx *x)
{
	return run(c, x, item_decrypt);
}

kms_err op_rewrap(struct core *c, struct op_ctx *x)
{
	return run(c, x, item_rewrap);
}
