#include "kms/core/core_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/b64.h"
#include "kms/base/clock.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "policy/authn.h"
#include "kms/core/authcache.h"
#include "kms/core/hmaccache.h"
#include "kms/core/rndpool.h"

int64_t core_now(void)
{
	return kms_now();
}

int core_valid_tenant_name(const char *s)
{
	size_t n = 0;

	if (s == NULL || !((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
		return 0;
	for (const char *p = s; *p; p++, n++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
			return 0;
	return n <= 63 && strcmp(s, "sys") != 0 && strcmp(s, "auth") != 0;
}

int core_valid_name(const char *s)
{
	size_t n = 0;

	if (s == NULL || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
		return 0;
	for (const char *p = s; *p; p++, n++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '-' || *p == '.'))
			return 0;
	return n <= STORE_NAME_MAX;
}

static uint64_t hash_str(const char *a, const char *b)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *a; a++)
		h = (h ^ (uint8_t)*a) * 1099511628211ULL;
	h = (h ^ 0x1f) * 1099511628211ULL;
	for (; b && *b; b++)
		h = (h ^ (uint8_t)*b) * 1099511628211ULL;
	return h;
}

/* ---- caches ------------------------------------------------------------------ */

static struct tent *tent_find_locked(struct core *c, const char *name)
{
	for (struct tent *t = c->tenants[hash_str(name, NULL) % CORE_BUCKETS]; t; t = t->next)
		if (strcmp(t->t.name, name) == 0)
			return t;
	return NULL;
}

void core_tenant_insert(struct core *c, const struct store_tenant *t)
{
	struct tent *e;
	size_t b = hash_str(t->name, NULL) % CORE_BUCKETS;

	pthread_rwlock_wrlock(&c->lock);
	e = tent_find_locked(c, t->name);
	if (e != NULL) {
		e->t = *t;
	} else if ((e = calloc(1, sizeof(*e))) != NULL) {
		e->t = *t;
		e->next = c->tenants[b];
		c->tenants[b] = e;
	}
	pthread_rwlock_unlock(&c->lock);
}


kms_err core_tenant_lookup(struct core *c, const char *name, struct store_tenant *out)
{
	struct tent *e;
	uint64_t ep;
	kms_err rc;

	if (!core_valid_tenant_name(name))
		return kms_errf(KMS_ERR_NOT_FOUND, "tenant not found");
	pthread_rwlock_rdlock(&c->lock);
	e = tent_find_locked(c, name);
	if (e != NULL)
		*out = e->t;
	pthread_rwlock_unlock(&c->lock);
	if (e != NULL)
		return KMS_OK;
	ep = __atomic_load_n(&c->cache_epoch, __ATOMIC_ACQUIRE);
	rc = store_tenant_get(c->st, name, out);
	/* not cached if another node's change was applied meanwhile: it may be newer */
	if (rc == KMS_OK && __atomic_load_n(&c->cache_epoch, __ATOMIC_ACQUIRE) == ep)
		core_tenant_insert(c, out);
	else if (rc == KMS_ERR_NOT_FOUND)
		rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant \"%s\" not found", name);
	return rc;
}

static struct kent *kent_find_locked(struct core *c, const char *tenant, const char *key)
{
	for (struct kent *e = c->keys[hash_str(tenant, key) % CORE_BUCKETS]; e; e = e->next)
		if (strcmp(e->tenant, tenant) == 0 && strcmp(e->meta.name, key) == 0)
			return e;
	return NULL;
}

int64_t core_superseded_at(struct core *c, const char *tenant, const char *key, uint32_t v)
{
	struct kent *e;
	int64_t t = 0;

	pthread_rwlock_rdlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e != NULL && v >= 1 && v < e->nvers)
		t = e->vers[v].created;
	pthread_rwlock_unlock(&c->lock);
	return t;
}

static kms_err kent_load(struct core *c, const char *tenant, const char *key, struct kent **out)
{
	struct store_tenant t;
	struct store_key meta;
	struct store_version *vs = NULL;
	size_t nv = 0;
	struct kent *e = NULL;
	kms_err rc;

	uint64_t ep;
	int attempt = 0;

again:
	ep = __atomic_load_n(&c->cache_epoch, __ATOMIC_ACQUIRE);
	rc = core_tenant_lookup(c, tenant, &t);
	if (rc != KMS_OK)
		return rc;
	rc = store_key_get(c->st, t.id, key, &meta);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "key \"%s\" not found in tenant \"%s\"", key, tenant);
	if (rc != KMS_OK)
		return rc;
	rc = store_version_list(c->st, meta.id, &vs, &nv);
	if (rc != KMS_OK)
		return rc;
	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e == NULL && __atomic_load_n(&c->cache_epoch, __ATOMIC_ACQUIRE) != ep) {
		/* Another node's change was applied while this was read (cluster.c): what was
		 * read may predate it, and once cached nothing would read it again. */
		pthread_rwlock_unlock(&c->lock);
		free(vs);
		vs = NULL;
		if (++attempt < 5)
			goto again;
		return kms_errf(KMS_ERR_STORE, "key \"%s\" keeps changing on other nodes: retry", key);
	}
	if (e == NULL) {
		size_t b = hash_str(tenant, key) % CORE_BUCKETS;
		e = calloc(1, sizeof(*e));
		if (e == NULL || (nv > 0 && (e->vers = calloc(nv, sizeof(*e->vers))) == NULL)) {
			free(e);
			pthread_rwlock_unlock(&c->lock);
			free(vs);
			return kms_errf(KMS_ERR_NOMEM, "key cache");
		}
		e->meta = meta;
		snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
		for (size_t i = 0; i < nv; i++) {
			e->vers[i].version = vs[i].version;
			e->vers[i].created = vs[i].created;
			e->vers[i].state = core_state_parse(vs[i].state);
			e->vers[i].destroy_after = vs[i].destroy_after;
			/* what an earlier process reserved is spent, used or not */
			e->vers[i].used = e->vers[i].reserved = vs[i].enc_reserved;
		}
		e->nvers = nv;
		e->next = c->keys[b];
		c->keys[b] = e;
		b = (uint64_t)meta.id % CORE_BUCKETS;
		e->id_next = c->keys_by_id[b];
		c->keys_by_id[b] = e;
	}
	pthread_rwlock_unlock(&c->lock);
	free(vs);
	*out = e;
	return KMS_OK;
}

/* A serving copy taken out of the cache: destroyed in the token after the grace
 * period (core_graves_reap), so that a request that fetched it just before finishes. */
static void core_retire_handle(struct core *c, p11_key drop)
{
	struct grave *g;

	if (drop == 0)
		return;
	pthread_mutex_lock(&c->grave_mu);
	if (c->n_graves == c->cap_graves) {
		size_t cap = c->cap_graves ? c->cap_graves * 2 : 16;
		g = realloc(c->graves, cap * sizeof(*g)); /* handles, not secrets */
		if (g != NULL) {
			c->graves = g;
			c->cap_graves = cap;
		}
	}
	if (c->n_graves < c->cap_graves) {
		c->graves[c->n_graves].h = drop;
		c->graves[c->n_graves].since = (int64_t)time(NULL);
		c->n_graves++;
		drop = 0;
	}
	pthread_mutex_unlock(&c->grave_mu);
	/* no memory for the list: destroy now (a racing request gets a 503) */
	p11_kek_unload(c->p11, drop);
}

kms_err core_key_insert(struct core *c, const char *tenant, const struct store_key *meta)
{
	struct kent *e;

	(void)meta;
	return kent_load(c, tenant, meta->name, &e);
}

kms_err core_key_add_version(struct core *c, const char *tenant, const char *key, uint32_t version,
			     int64_t created)
{
	struct kent *e;
	struct kver *nv;
	kms_err rc = KMS_OK;

	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e == NULL) {
		pthread_rwlock_unlock(&c->lock);
		return kent_load(c, tenant, key, &e);
	}
	if (version != e->nvers + 1) {
		/* another node (or process) added versions meanwhile: read them all */
		int64_t id = e->meta.id;

		pthread_rwlock_unlock(&c->lock);
		return core_key_refresh(c, id);
	}
	nv = realloc(e->vers, (e->nvers + 1) * sizeof(*nv)); /* handles, not secrets */
	if (nv == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "key cache");
		goto out;
	}
	e->vers = nv;
	e->vers[e->nvers] = (struct kver){.version = version, .created = created, .handle = 0};
	e->nvers++;
	e->meta.latest_version = version;
	e->gen++;
out:
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

kms_err core_key_apply(struct core *c, const char *tenant, const struct store_key *meta,
		       const struct store_version *vs, size_t nv, uint64_t gen)
{
	p11_key *drop = NULL;
	size_t ndrop = 0;
	struct kent *e;
	kms_err rc = KMS_OK;

	for (size_t i = 0; i < nv; i++)
		if (vs[i].version != i + 1)
			return kms_errf(KMS_ERR_INTERNAL, "key %lld: versions not 1..%zu", (long long)meta->id, nv);
	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, tenant, meta->name);
	if (e == NULL)
		goto out; /* not cached: the first use reads the store */
	if (gen != UINT64_MAX && e->gen != gen) {
		rc = KMS_ERR_CONFLICT; /* changed here while the caller read: read again */
		goto out;
	}
	if (nv > e->nvers) {
		struct kver *g = realloc(e->vers, nv * sizeof(*g)); /* handles, not secrets */
		if (g == NULL) {
			rc = kms_errf(KMS_ERR_NOMEM, "key cache");
			goto out;
		}
		e->vers = g;
		for (size_t i = e->nvers; i < nv; i++) {
			/* what other nodes reserved is theirs: this node reserves its own blocks */
			e->vers[i] = (struct kver){.version = vs[i].version, .created = vs[i].created,
						   .used = vs[i].enc_reserved, .reserved = vs[i].enc_reserved};
		}
		e->nvers = nv;
	}
	if ((drop = calloc(nv ? nv : 1, sizeof(*drop))) == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "key cache");
		goto out;
	}
	for (size_t i = 0; i < nv; i++) {
		struct kver *v = &e->vers[i];
		v->state = core_state_parse(vs[i].state);
		v->destroy_after = vs[i].destroy_after;
		if (v->state != KVER_ENABLED && v->handle != 0) {
			drop[ndrop++] = v->handle;
			v->handle = 0;
		}
	}
	e->meta = *meta;
	/* versions were read after the key row: a version added in between is the latest */
	if (e->meta.latest_version < nv)
		e->meta.latest_version = (uint32_t)nv;
	e->gen++;
out:
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < ndrop; i++)
		core_retire_handle(c, drop[i]);
	free(drop);
	return rc;
}

void core_tenants_refresh(struct core *c, int64_t tenant_id)
{
	char (*names)[STORE_NAME_MAX + 1] = NULL;
	size_t n = 0, cap = 0;

	pthread_rwlock_rdlock(&c->lock);
	for (size_t b = 0; b < CORE_BUCKETS; b++)
		for (struct tent *t = c->tenants[b]; t; t = t->next) {
			if (tenant_id != 0 && t->t.id != tenant_id)
				continue;
			if (n == cap) {
				size_t nc = cap ? cap * 2 : 16;
				void *g = realloc(names, nc * sizeof(*names));
				if (g == NULL)
					goto done;
				names = g;
				cap = nc;
			}
			snprintf(names[n++], sizeof(*names), "%s", t->t.name);
		}
done:
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		struct store_tenant t;
		kms_err rc = store_tenant_get(c->st, names[i], &t);

		if (rc == KMS_OK)
			core_tenant_insert(c, &t);
		else
			kms_warn("cluster: tenant %s not read again: %s", names[i], kms_err_detail(rc));
	}
	free(names);
}

enum kver_state core_state_parse(const char *s)
{
	if (strcmp(s, STORE_STATE_DISABLED) == 0)
		return KVER_DISABLED;
	if (strcmp(s, STORE_STATE_PENDING) == 0)
		return KVER_PENDING;
	if (strcmp(s, STORE_STATE_DESTROYED) == 0)
		return KVER_DESTROYED;
	return KVER_ENABLED;
}

const char *core_state_name(enum kver_state st)
{
	switch (st) {
	case KVER_DISABLED: return STORE_STATE_DISABLED;
	case KVER_PENDING: return STORE_STATE_PENDING;
	case KVER_DESTROYED: return STORE_STATE_DESTROYED;
	default: return STORE_STATE_ENABLED;
	}
}

void core_key_meta_set(struct core *c, const char *tenant, const struct store_key *meta)
{
	struct kent *e;

	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, tenant, meta->name);
	if (e != NULL) {
		/* latest_version moves only through core_key_add_version */
		uint32_t latest = e->meta.latest_version;
		e->meta = *meta;
		e->meta.latest_version = latest;
		e->gen++;
	}
	pthread_rwlock_unlock(&c->lock);
}

void core_version_state_set(struct core *c, const char *tenant, const char *key, uint32_t version,
			    enum kver_state st, int64_t destroy_after)
{
	struct kent *e;
	p11_key drop = 0;

	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e != NULL && version >= 1 && version <= e->nvers) {
		struct kver *v = &e->vers[version - 1];
		v->state = st;
		v->destroy_after = destroy_after;
		e->gen++;
		/* A version that may not be used has no business being loaded. */
		if (st != KVER_ENABLED) {
			drop = v->handle;
			v->handle = 0;
		}
	}
	pthread_rwlock_unlock(&c->lock);
	core_retire_handle(c, drop);
}

void core_graves_reap(struct core *c, bool force)
{
	int64_t now = (int64_t)time(NULL);
	size_t i = 0;

	pthread_mutex_lock(&c->grave_mu);
	while (i < c->n_graves) {
		if (force || now - c->graves[i].since >= CORE_HANDLE_GRACE) {
			p11_kek_unload(c->p11, c->graves[i].h);
			c->graves[i] = c->graves[--c->n_graves];
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&c->grave_mu);
}

kms_err core_key_ref(struct core *c, const char *tenant, const char *key, struct keyref *out)
{
	struct kent *e;
	kms_err rc;

	if (!core_valid_name(key))
		return kms_errf(KMS_ERR_INVALID, "invalid key name");
	pthread_rwlock_rdlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e != NULL) {
		out->key_id = e->meta.id;
		out->latest = e->meta.latest_version;
		out->min_dec = e->meta.min_decryption_version;
		out->min_enc = e->meta.min_encryption_version;
	}
	pthread_rwlock_unlock(&c->lock);
	if (e == NULL) {
		rc = kent_load(c, tenant, key, &e);
		if (rc != KMS_OK)
			return rc;
		return core_key_ref(c, tenant, key, out);
	}
	out->tenant = tenant;
	out->name = key;
	return KMS_OK;
}

/* The row MAC binds a wrapped KEK to its place, so that a blob copied to another
 * tenant, key or version in the database is refused before it is unwrapped. */
kms_err core_row_mac(struct core *c, const char *tenant, const char *key, const struct store_version *v,
		     uint8_t mac[STORE_MAC_LEN])
{
	return core_row_mac_p11(c->p11, tenant, key, v, mac);
}

kms_err core_row_mac_p11(struct p11 *p11, const char *tenant, const char *key, const struct store_version *v,
			 uint8_t mac[STORE_MAC_LEN])
{
	uint8_t buf[16 + 4 + STORE_NAME_MAX + 4 + STORE_NAME_MAX + 8 + 4 + STORE_BLOB_MAX], *p = buf;
	size_t tl = strlen(tenant), kl = strlen(key);

	if (tl > STORE_NAME_MAX || kl > STORE_NAME_MAX || v->blob_len > STORE_BLOB_MAX)
		return kms_errf(KMS_ERR_INTERNAL, "row too large");
	memcpy(p, "kmsd.row.v1", 12);
	p += 12;
	p[0] = (uint8_t)(tl >> 24), p[1] = (uint8_t)(tl >> 16), p[2] = (uint8_t)(tl >> 8), p[3] = (uint8_t)tl;
	memcpy(p + 4, tenant, tl);
	p += 4 + tl;
	p[0] = (uint8_t)(kl >> 24), p[1] = (uint8_t)(kl >> 16), p[2] = (uint8_t)(kl >> 8), p[3] = (uint8_t)kl;
	memcpy(p + 4, key, kl);
	p += 4 + kl;
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(v->version >> (24 - 8 * i));
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(v->mk_version >> (24 - 8 * i));
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(v->blob_len >> (24 - 8 * i));
	memcpy(p, v->blob, v->blob_len);
	p += v->blob_len;
	return p11_hmac(p11, P11_MAC_STORE, buf, (size_t)(p - buf), mac);
}

kms_err core_kek_row_new(struct core *c, const char *tenant, const char *key, struct store_version *v)
{
	kms_err rc = store_mk_active(c->st, &v->mk_version);

	v->blob_len = P11_KEK_BLOB_LEN;
	if (rc == KMS_OK)
		rc = p11_kek_generate(c->p11, v->mk_version, v->blob);
	if (rc == KMS_ERR_NOT_FOUND) {
		kms_error("token: master key version %u, which the store says is active, is not in the token",
			  v->mk_version);
		rc = kms_errf(KMS_ERR_TOKEN, "token: the active master key is not in the token");
	}
	if (rc == KMS_OK)
		rc = core_row_mac(c, tenant, key, v, v->mac);
	return rc;
}

bool core_mk_moved(struct core *c, uint32_t used)
{
	uint32_t now = 0;

	return store_mk_active(c->st, &now) == KMS_OK && now != used;
}

kms_err core_kek(struct core *c, const struct keyref *k, uint32_t version, p11_key *out)
{
	struct store_version v = {0};
	uint8_t mac[STORE_MAC_LEN];
	struct kent *e;
	p11_key h = 0;
	kms_err rc;

	/* Every use of a KEK passes here: the one place that refuses by state. */
	pthread_rwlock_rdlock(&c->lock);
	e = kent_find_locked(c, k->tenant, k->name);
	if (e != NULL && e->meta.revoked) {
		pthread_rwlock_unlock(&c->lock);
		return kms_errf(KMS_ERR_CONFLICT, "key \"%s\" is revoked: no version may be used until it is restored",
				k->name);
	}
	if (e != NULL && version >= 1 && version <= e->nvers) {
		enum kver_state st = e->vers[version - 1].state;
		if (st != KVER_ENABLED) {
			pthread_rwlock_unlock(&c->lock);
			if (st == KVER_DESTROYED)
				return kms_errf(KMS_ERR_CONFLICT, "key version %u destroyed", version);
			return kms_errf(KMS_ERR_CONFLICT, "key version %u is %s", version,
					st == KVER_DISABLED ? "disabled" : "pending destruction");
		}
		h = e->vers[version - 1].handle;
	}
	pthread_rwlock_unlock(&c->lock);
	if (h != 0 && p11_kek_current(c->p11, h)) {
		*out = h;
		return KMS_OK;
	}
	h = 0; /* not loaded, or died with a lost token session: load it (again) */
	/* First use of this version in this process: check the row, unwrap it once.
	 * Serialised so that two threads do not both unwrap the same blob. */
	pthread_mutex_lock(&c->create_mu);
	pthread_rwlock_rdlock(&c->lock);
	e = kent_find_locked(c, k->tenant, k->name);
	if (e != NULL && version >= 1 && version <= e->nvers) {
		/* the state may have changed while this thread waited for the lock */
		if (e->meta.revoked || e->vers[version - 1].state != KVER_ENABLED) {
			pthread_rwlock_unlock(&c->lock);
			rc = kms_errf(KMS_ERR_CONFLICT, "key version %u is not usable now (revoked, disabled or destroyed)",
				      version);
			goto out;
		}
		h = e->vers[version - 1].handle;
	}
	pthread_rwlock_unlock(&c->lock);
	if (h != 0 && p11_kek_current(c->p11, h)) {
		rc = KMS_OK;
		goto out;
	}
	h = 0;
	/* Twice at most: a master-key rotation running in another process may rewrap the
	 * row (and then destroy the old master key) between our read and the unwrap; the
	 * row read again names the master key that wraps it now. */
	for (int attempt = 0;; attempt++) {
		uint32_t tried_mk = v.mk_version;

		rc = store_version_get(c->st, k->key_id, version, &v);
		if (rc == KMS_ERR_NOT_FOUND)
			rc = kms_errf(KMS_ERR_INVALID, "key version %u does not exist", version);
		if (rc != KMS_OK)
			goto out;
		if (attempt > 0 && v.mk_version == tried_mk) {
			/* The row passed its MAC, so the blob is what kmsd stored: if its master
			 * key is gone or will not unwrap it, the token is not the one (or not in
			 * the state) it should be. Not the caller's fault. */
			kms_error("token: master key version %u does not unwrap %s/%s version %u", v.mk_version,
				  k->tenant, k->name, version);
			rc = kms_errf(KMS_ERR_TOKEN, "token: the master key does not unwrap key version %u", version);
			goto out;
		}
		rc = core_row_mac(c, k->tenant, k->name, &v, mac);
		if (rc != KMS_OK)
			goto out;
		if (CRYPTO_memcmp(mac, v.mac, STORE_MAC_LEN) != 0) {
			kms_error("store row for %s/%s version %u fails its integrity check: refusing to unwrap",
				  k->tenant, k->name, version);
			rc = kms_errf(KMS_ERR_INTERNAL, "key version record failed its integrity check");
			goto out;
		}
		rc = p11_kek_load(c->p11, v.mk_version, v.blob, v.blob_len, &h);
		if ((rc == KMS_ERR_INVALID || rc == KMS_ERR_NOT_FOUND) && attempt == 0)
			continue;
		if (rc == KMS_ERR_INVALID || rc == KMS_ERR_NOT_FOUND) {
			kms_error("token: master key version %u does not unwrap %s/%s version %u (%s)",
				  v.mk_version, k->tenant, k->name, version, kms_err_detail(rc));
			rc = kms_errf(KMS_ERR_TOKEN, "token: the master key does not unwrap key version %u", version);
		}
		break;
	}
	if (rc != KMS_OK)
		goto out;
	pthread_rwlock_wrlock(&c->lock);
	e = kent_find_locked(c, k->tenant, k->name);
	if (e != NULL && version >= 1 && version <= e->nvers) {
		e->vers[version - 1].handle = h;
	} else {
		p11_kek_unload(c->p11, h);
		h = 0;
		rc = kms_errf(KMS_ERR_INTERNAL, "key cache out of step");
	}
	pthread_rwlock_unlock(&c->lock);
out:
	pthread_mutex_unlock(&c->create_mu);
	if (rc == KMS_OK)
		*out = h;
	return rc;
}

kms_err core_key_read_json(struct core *c, const char *tenant, const char *key, json_t **out)
{
	struct kent *e;
	json_t *d, *vers;
	kms_err rc;
	struct keyref k;

	rc = core_key_ref(c, tenant, key, &k);
	if (rc != KMS_OK)
		return rc;
	d = json_object();
	vers = json_object();
	if (d == NULL || vers == NULL) {
		json_decref(d);
		json_decref(vers);
		return kms_errf(KMS_ERR_NOMEM, "key read");
	}
	pthread_rwlock_rdlock(&c->lock);
	e = kent_find_locked(c, tenant, key);
	if (e == NULL) {
		pthread_rwlock_unlock(&c->lock);
		json_decref(d);
		json_decref(vers);
		return kms_errf(KMS_ERR_NOT_FOUND, "key not found");
	}
	json_t *states = json_object();
	for (size_t i = 0; i < e->nvers; i++) {
		const struct kver *v = &e->vers[i];
		const char *st;
		char num[16];
		snprintf(num, sizeof(num), "%u", v->version);
		json_object_set_new(vers, num, json_integer(v->created));
		if (v->state != KVER_ENABLED)
			st = v->state == KVER_DISABLED ? "disabled" : v->state == KVER_PENDING ? "pending-destruction" : "destroyed";
		else if (v->version < e->meta.min_decryption_version)
			st = "below-min-decryption";
		else if (v->version == e->meta.latest_version)
			st = "active";
		else
			st = "decrypt-only";
		json_object_set_new(states, num, json_pack("{s:s,s:I}", "state", st, "created", (json_int_t)v->created));
		if (v->state == KVER_PENDING)
			json_object_set_new(json_object_get(states, num), "destroy_after",
					    json_integer(v->destroy_after));
	}
	json_object_set_new(d, "versions", states);
	json_object_set_new(d, "revoked", json_boolean(e->meta.revoked));
	json_object_set_new(d, "name", json_string(e->meta.name));
	json_object_set_new(d, "type", json_string(e->meta.type));
	json_object_set_new(d, "latest_version", json_integer(e->meta.latest_version));
	json_object_set_new(d, "min_decryption_version", json_integer(e->meta.min_decryption_version));
	json_object_set_new(d, "min_encryption_version", json_integer(e->meta.min_encryption_version));
	json_object_set_new(d, "keys", vers);
	json_object_set_new(d, "deletion_allowed", json_boolean(e->meta.deletion_allowed));
	json_object_set_new(d, "exportable", json_false());
	json_object_set_new(d, "allow_plaintext_backup", json_false());
	json_object_set_new(d, "derived", json_false());
	json_object_set_new(d, "convergent_encryption", json_false());
	json_object_set_new(d, "supports_encryption", json_true());
	json_object_set_new(d, "supports_decryption", json_true());
	json_object_set_new(d, "supports_derivation", json_false());
	json_object_set_new(d, "supports_signing", json_false());
	json_object_set_new(d, "auto_rotate_period", json_integer(e->meta.auto_rotate_period));
	json_object_set_new(d, "tenant", json_string(tenant));
	pthread_rwlock_unlock(&c->lock);
	*out = d;
	return KMS_OK;
}

/* ---- lifecycle ----------------------------------------------------------------- */

static kms_err token_random(void *ctx, uint8_t *out, size_t n)
{
	struct core *c = ctx;

	return p11_random(c->p11, out, n);
}

kms_err core_new(struct store *st, struct p11 *p11, struct audit *au, struct core **out)
{
	struct core *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return kms_errf(KMS_ERR_NOMEM, "core");
	c->st = st;
	c->p11 = p11;
	c->au = au;
	pthread_rwlock_init(&c->lock, NULL);
	{
		pthread_rwlockattr_t ra;

		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&c->quiesce, &ra);
		pthread_rwlockattr_destroy(&ra);
	}
	pthread_mutex_init(&c->create_mu, NULL);
	pthread_mutex_init(&c->sched_mu, NULL);
	pthread_mutex_init(&c->gauge_mu, NULL);
	pthread_mutex_init(&c->health_mu, NULL);
	pthread_cond_init(&c->sched_cv, NULL);
	pthread_mutex_init(&c->policy_mu, NULL);
	pthread_mutex_init(&c->reserve_mu, NULL);
	pthread_mutex_init(&c->grave_mu, NULL);
	c->opt.phi_retention_floor = 6LL * 365 * 86400;
	c->opt.max_encryptions = 1ULL << 30;
	if (policy_doc_default(&c->policy) != KMS_OK || (c->policy_text = strdup(policy_doc_default_json)) == NULL) {
		core_free(c);
		return kms_errf(KMS_ERR_INTERNAL, "the built-in policy does not compile");
	}
	if (authcache_new(0, &c->authc) != KMS_OK || hmaccache_new(HMACCACHE_DEFAULT_MAX, &c->hmacc) != KMS_OK ||
	    rndpool_new(token_random, c, &c->rnd) != KMS_OK) {
		core_free(c);
		return kms_errf(KMS_ERR_NOMEM, "auth cache");
	}
	{
		kms_err rc = core_rowmac_start(c);

		if (rc != KMS_OK) {
			core_free(c);
			return rc;
		}
	}
	*out = c;
	return KMS_OK;
}

#define RL_MAX_PRINCIPALS 100000
#define RL_MAX_SOURCES 65536

kms_err core_configure(struct core *c, const struct core_options *o)
{
	const char *why;
	kms_err rc;
	bool any_op = false;

	c->opt = *o;
	c->opt.op_limits = NULL; /* parsed below; the caller's string is not kept */
	/* before any request: the cache is replaced, not resized */
	hmaccache_free(c->hmacc);
	c->hmacc = NULL;
	if ((rc = hmaccache_new(o->audit_hmac_cache, &c->hmacc)) != KMS_OK)
		return rc;
	/* NIST SP 800-38D: at most 2^32 GCM encryptions with random IVs per key */
	if (c->opt.max_encryptions == 0 || c->opt.max_encryptions > (1ULL << 32))
		c->opt.max_encryptions = 1ULL << 30;
	if (c->opt.principal_rps > 0 && c->opt.principal_burst < 1)
		c->opt.principal_burst = 2 * c->opt.principal_rps;
	if (c->opt.auth_fail_rps > 0 && c->opt.auth_fail_burst < 1)
		c->opt.auth_fail_burst = 2 * c->opt.auth_fail_rps;
	why = ratelimit_parse_ops(o->op_limits ? o->op_limits : "", c->op_rps, c->op_burst, KMS_OP__COUNT);
	if (why != NULL)
		return kms_errf(KMS_ERR_CONFIG, "rate_limit_ops: %s", why);
	for (size_t i = 0; i < KMS_OP__COUNT; i++)
		any_op = any_op || c->op_rps[i] > 0;
	if ((c->opt.principal_rps > 0 || any_op) && c->rl_principal == NULL &&
	    (rc = ratelimit_new(RL_MAX_PRINCIPALS, &c->rl_principal)) != KMS_OK)
		return rc;
	if (c->opt.auth_fail_rps > 0 && c->rl_source == NULL &&
	    (rc = ratelimit_new(RL_MAX_SOURCES, &c->rl_source)) != KMS_OK)
		return rc;
	core_breakglass_init(c);
	return KMS_OK;
}

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The failed-authentication bucket's name for a source: the address, or for IPv6 its
 * /64 (one host usually holds a whole /64, and could otherwise rotate through it). */
static void source_name(const char *addr, char *out, size_t cap)
{
	struct in6_addr a6;

	if (strchr(addr, ':') != NULL && inet_pton(AF_INET6, addr, &a6) == 1 &&
	    !IN6_IS_ADDR_V4MAPPED(&a6)) {
		memset(a6.s6_addr + 8, 0, 8);
		if (inet_ntop(AF_INET6, &a6, out, (socklen_t)cap) != NULL) {
			strncat(out, "/64", cap - strlen(out) - 1);
			return;
		}
	}
	snprintf(out, cap, "%s", addr);
}

/* The principal's buckets: all its calls, and this operation's. Returns the seconds to
 * wait, 0 when the call may go on. */
static unsigned principal_limited(struct core *c, const char *who, enum kms_op op)
{
	char name[STORE_NAME_MAX + 80];
	int64_t now = kms_mono_ms();
	unsigned w = 0, w2;

	if (c->rl_principal == NULL)
		return 0;
	if (c->opt.principal_rps > 0)
		w = ratelimit_take(c->rl_principal, who, c->opt.principal_rps, c->opt.principal_burst, now);
	if (w == 0 && c->op_rps[op] > 0) {
		snprintf(name, sizeof(name), "%s\x1f%s", who, kms_op_name(op));
		w2 = ratelimit_take(c->rl_principal, name, c->op_rps[op], c->op_burst[op], now);
		w = w2;
	}
	return w;
}

void core_audit_internal(struct core *c, enum kms_op op, const char *tenant, const char *key, uint32_t version,
			 const char *outcome, int status, const char *reason)
{
	struct audit_record ar = {0};
	kms_err rc;

	ar.principal = CORE_SCHEDULER_PRINCIPAL;
	ar.auth_method = "internal";
	ar.operation = kms_op_name(op);
	ar.tenant = tenant;
	ar.key = key;
	ar.version = version;
	ar.outcome = outcome;
	ar.status = status;
	ar.reason = reason;
	rc = audit_append(c->au, &ar);
	if (rc != KMS_OK)
		kms_error("audit record for %s %s/%s failed: %s", ar.operation, tenant, key, kms_err_detail(rc));
}

kms_err core_rotate_key(struct core *c, const char *tenant, const char *key, uint32_t expect_latest, uint32_t *newv)
{
	struct store_version v = {0};
	struct keyref k;
	kms_err rc;

	/* One rotation at a time in this process; the store's compare-and-set on the
	 * latest version refuses a twin from anywhere else. The new version is durable
	 * before the cache lets anything encrypt with it. */
	pthread_mutex_lock(&c->create_mu);
	rc = core_key_ref(c, tenant, key, &k);
	if (rc == KMS_OK && expect_latest != 0 && k.latest != expect_latest) {
		*newv = k.latest; /* someone rotated meanwhile */
		goto out;
	}
	if (rc == KMS_OK) {
		v.version = k.latest + 1;
		v.created = core_now();
		bool fresh = true;

		/* Each CONFLICT below means another rotation committed meanwhile: progress
		 * elsewhere, so many attempts are safe; a retry reuses the wrapped KEK and
		 * only MACs it for its new place, which keeps the window short. */
		for (int attempt = 0;; attempt++) {
			rc = fresh ? core_kek_row_new(c, tenant, key, &v) : core_row_mac(c, tenant, key, &v, v.mac);
			fresh = false;
			if (rc == KMS_OK)
				rc = store_key_rotate(c->st, k.key_id, &v);
			if (rc != KMS_ERR_CONFLICT || attempt == 64)
				break;
			if (core_mk_moved(c, v.mk_version)) {
				fresh = true;
				continue; /* wrap again under the master key now active */
			}
			/* Another node (or process) rotated first: read the latest version
			 * as committed, then either that was the rotation asked for or this
			 * one follows it. The store decides, not the cache: a cache refresh
			 * can lose to this node's change follower applying the same rows. */
			uint32_t latest = 0;
			kms_err lrc = store_key_latest(c->st, k.key_id, &latest);

			if (lrc != KMS_OK) {
				rc = lrc; /* the store could not say: its error (503), nothing written */
				break;
			}
			if (latest < v.version)
				break; /* the conflict was something else: answer it */
			if (core_key_refresh(c, k.key_id) != KMS_OK)
				kms_warn("rotate %s/%s: key cache not read again yet; the change follower will",
					 tenant, key);
			if (expect_latest != 0) {
				*newv = latest;
				goto out;
			}
			v.version = latest + 1;
			v.created = core_now();
		}
	}
	if (rc == KMS_OK)
		rc = core_key_add_version(c, tenant, key, v.version, v.created);
	if (rc == KMS_OK)
		*newv = v.version;
out:
	pthread_mutex_unlock(&c->create_mu);
	return rc;
}

kms_err core_take_slot(struct core *c, const struct keyref *k, uint32_t version)
{
	uint64_t limit = c->opt.max_encryptions;
	uint64_t block = limit / 16 > 65536 ? 65536 : limit / 16 ? limit / 16 : 1;

	for (;;) {
		struct kent *e;
		uint64_t used = 0, reserved = 0, upto = 0;
		bool found = false, ok = false;
		kms_err rc;

		pthread_rwlock_rdlock(&c->lock);
		e = kent_find_locked(c, k->tenant, k->name);
		if (e != NULL && version >= 1 && version <= e->nvers) {
			struct kver *v = &e->vers[version - 1];
			found = true;
			if (__atomic_add_fetch(&v->used, 1, __ATOMIC_ACQ_REL) <= __atomic_load_n(&v->reserved, __ATOMIC_ACQUIRE))
				ok = true;
			else
				__atomic_sub_fetch(&v->used, 1, __ATOMIC_ACQ_REL);
		}
		pthread_rwlock_unlock(&c->lock);
		if (!found)
			return kms_errf(KMS_ERR_INTERNAL, "key cache out of step");
		if (ok)
			return KMS_OK;
		/* The block is spent: reserve the next one durably before using it. */
		pthread_mutex_lock(&c->reserve_mu);
		pthread_rwlock_rdlock(&c->lock);
		e = kent_find_locked(c, k->tenant, k->name);
		if (e != NULL && version <= e->nvers) {
			used = __atomic_load_n(&e->vers[version - 1].used, __ATOMIC_ACQUIRE);
			reserved = __atomic_load_n(&e->vers[version - 1].reserved, __ATOMIC_ACQUIRE);
		}
		pthread_rwlock_unlock(&c->lock);
		if (used < reserved) { /* another thread reserved meanwhile */
			pthread_mutex_unlock(&c->reserve_mu);
			continue;
		}
		if (reserved + block > limit)
			block = limit > reserved ? limit - reserved : 1;
		rc = store_version_reserve(c->st, k->key_id, version, block, limit, &upto);
		if (rc == KMS_OK) {
			pthread_rwlock_rdlock(&c->lock);
			e = kent_find_locked(c, k->tenant, k->name);
			if (e != NULL && version <= e->nvers) {
				struct kver *v = &e->vers[version - 1];
				/* This node's block is [upto - block, upto): what lies between its
				 * last block and this one other nodes (or earlier processes)
				 * reserved, and is theirs. Threads that overshot take their own
				 * increments back, so the skip is added, never stored. */
				if (upto - block > reserved)
					__atomic_add_fetch(&v->used, upto - block - reserved, __ATOMIC_ACQ_REL);
				__atomic_store_n(&v->reserved, upto, __ATOMIC_RELEASE);
			}
			pthread_rwlock_unlock(&c->lock);
		}
		pthread_mutex_unlock(&c->reserve_mu);
		if (rc == KMS_ERR_CONFLICT)
			return kms_errf(KMS_ERR_CONFLICT, "key version %u has reached its usage limit of %llu encryptions",
					version, (unsigned long long)limit);
		if (rc != KMS_OK)
			return rc;
	}
}

static void *scheduler_main(void *arg)
{
	struct core *c = arg;

	pthread_mutex_lock(&c->sched_mu);
	while (!c->sched_stop) {
		struct timespec until;
		pthread_mutex_unlock(&c->sched_mu);
		(void)core_scheduler_tick(c);
		pthread_mutex_lock(&c->sched_mu);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += c->sched_interval;
		while (!c->sched_stop && pthread_cond_timedwait(&c->sched_cv, &c->sched_mu, &until) == 0)
			;
	}
	pthread_mutex_unlock(&c->sched_mu);
	return NULL;
}

kms_err core_scheduler_start(struct core *c, unsigned interval_s)
{
	c->sched_interval = interval_s ? interval_s : 60;
	if (pthread_create(&c->sched, NULL, scheduler_main, c) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "cannot start the scheduler thread");
	c->sched_running = true;
	return KMS_OK;
}

void core_free(struct core *c)
{
	if (c == NULL)
		return;
	if (c->sched_running) {
		pthread_mutex_lock(&c->sched_mu);
		c->sched_stop = true;
		pthread_cond_broadcast(&c->sched_cv);
		pthread_mutex_unlock(&c->sched_mu);
		pthread_join(c->sched, NULL);
	}
	core_cluster_stop(c);
	core_graves_reap(c, true);
	ratelimit_free(c->rl_principal);
	ratelimit_free(c->rl_source);
	free(c->graves);
	pthread_mutex_destroy(&c->grave_mu);
	for (size_t b = 0; b < CORE_BUCKETS; b++) {
		struct kent *e = c->keys[b];
		while (e != NULL) {
			struct kent *n = e->next;
			for (size_t i = 0; i < e->nvers; i++)
				p11_kek_unload(c->p11, e->vers[i].handle);
			free(e->vers);
			free(e);
			e = n;
		}
		struct tent *t = c->tenants[b];
		while (t != NULL) {
			struct tent *n = t->next;
			free(t);
			t = n;
		}
	}
	pthread_rwlock_destroy(&c->lock);
	pthread_rwlock_destroy(&c->quiesce);
	pthread_mutex_destroy(&c->create_mu);
	pthread_mutex_destroy(&c->sched_mu);
	pthread_mutex_destroy(&c->gauge_mu);
	pthread_mutex_destroy(&c->health_mu);
	free(c->gauge_tenants);
	pthread_cond_destroy(&c->sched_cv);
	policy_doc_free(c->policy);
	free(c->policy_text);
	pthread_mutex_destroy(&c->policy_mu);
	pthread_mutex_destroy(&c->reserve_mu);
	authcache_free(c->authc);
	hmaccache_free(c->hmacc);
	rndpool_free(c->rnd);
	/* last: the scheduler has stopped, nothing reads the store through this core now */
	core_rowmac_stop(c);
	free(c);
}

kms_err core_bootstrap_admin(struct store *st, const char *name, char *token_out, size_t cap)
{
	struct store_token t = {0};
	char token[AUTHN_TOKEN_LEN + 1];
	int64_t pid;
	kms_err rc;

	if (cap < sizeof(token) || !core_valid_name(name))
		return kms_errf(KMS_ERR_INVALID, "invalid admin name");
	rc = store_principal_create(st, name, "admin", NULL, 0, core_now(), &pid);
	if (rc == KMS_ERR_CONFLICT) {
		/* an init that failed after this point left the principal: give it a token */
		struct store_principal p;
		rc = store_principal_get(st, name, &p);
		if (rc == KMS_OK && strcmp(p.role, "admin") != 0)
			rc = kms_errf(KMS_ERR_CONFLICT, "principal \"%s\" exists and is not an admin", name);
		pid = p.id;
	}
	if (rc == KMS_OK)
		rc = authn_token_new(token, t.accessor);
	if (rc == KMS_OK) {
		authn_token_hash(token, AUTHN_TOKEN_LEN, t.hash);
		t.principal_id = pid;
		t.created = core_now();
		rc = store_token_create(st, &t);
	}
	if (rc == KMS_OK)
		memcpy(token_out, token, sizeof(token));
	kms_wipe(token, sizeof(token));
	return rc;
}

/* ---- the request path ------------------------------------------------------------- */

static bool op_has_tenant(enum kms_op op)
{
	switch (op) {
	case KMS_OP_KEY_CREATE: case KMS_OP_KEY_READ: case KMS_OP_KEY_LIST: case KMS_OP_KEY_ROTATE:
	case KMS_OP_DATAKEY: case KMS_OP_ENCRYPT: case KMS_OP_DECRYPT: case KMS_OP_REWRAP:
	case KMS_OP_KEY_CONFIG: case KMS_OP_KEY_REVOKE: case KMS_OP_KEY_RESTORE:
	case KMS_OP_VERSION_DISABLE: case KMS_OP_VERSION_ENABLE: case KMS_OP_KEY_HISTORY:
	case KMS_OP_VERSION_SCHEDULE_DESTROY: case KMS_OP_VERSION_CANCEL_DESTROY:
	case KMS_OP_KEY_LEGAL_HOLD: case KMS_OP_VERSION_RECEIPT: case KMS_OP_KEY_TRIM:
		return true;
	default:
		return false;
	}
}

/* A cached token (authcache.h): no store read; the expiry is checked here, now. */
static kms_err authenticate_cached(struct core *c, const struct authcache_entry *e, struct op_ctx *x)
{
	int64_t now = core_now();

	if (e->expires != 0 && now >= e->expires) {
		free(e->scope);
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	}
	x->who = e->who;
	x->role = policy_role_parse(x->who.role);
	snprintf(x->accessor, sizeof(x->accessor), "%s", e->accessor);
	x->token_expires = e->expires;
	x->token_last_used = e->last_used;
	if (authcache_claim_touch(c->authc, e->hash, now, CORE_TOKEN_TOUCH_SECONDS)) {
		kms_err trc = store_token_touch(c->st, e->accessor, now);

		if (trc != KMS_OK)
			kms_warn("token %s: last-used time not recorded: %s", e->accessor, kms_err_detail(trc));
		else
			x->token_last_used = now;
	}
	if (x->role == POLICY_ROLE_SERVICE) {
		x->scope = e->scope;
		x->n_scope = e->n_scope;
	} else {
		free(e->scope);
	}
	return KMS_OK;
}

kms_err core_authenticate_token(struct core *c, const char *token, struct op_ctx *x)
{
	struct store_token t;
	struct store_stamp stamp;
	struct authcache_entry ce;
	uint8_t h[AUTHN_HASH_LEN];
	char acc[AUTHN_ACCESSOR_LEN + 1];
	uint64_t ticket = 0;
	bool cacheable;
	size_t len;
	int ok;
	kms_err rc;

	if (token == NULL || *token == '\0')
		return kms_errf(KMS_ERR_UNAUTHENTICATED, "missing client token");
	len = strnlen(token, 256);
	rc = authn_token_parse(token, len, acc);
	if (rc != KMS_OK)
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	authn_token_hash(token, len, h);
	/* The stamp is taken before anything is read: see authcache.h. Without one, the
	 * store is asked as if there were no cache. */
	cacheable = store_change_stamp(c->st, &stamp) == KMS_OK;
	if (cacheable && authcache_get(c->authc, &stamp, h, &ce, &ticket)) {
		rc = authenticate_cached(c, &ce, x);
		kms_wipe(&ce, sizeof(ce));
		return rc;
	}
	rc = store_token_get(c->st, acc, &t);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	if (rc != KMS_OK)
		return rc;
	ok = authn_hash_equal(h, t.hash);
	if (!ok || t.revoked || (t.expires != 0 && core_now() >= t.expires))
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	rc = store_principal_get_id(c->st, t.principal_id, &x->who);
	if (rc != KMS_OK)
		return rc == KMS_ERR_NOT_FOUND ? kms_errf(KMS_ERR_DENIED, "permission denied") : rc;
	x->role = policy_role_parse(x->who.role);
	snprintf(x->accessor, sizeof(x->accessor), "%s", acc);
	x->token_expires = t.expires;
	x->token_last_used = t.last_used;
	/* last used, kept to the minute: one store write a minute per busy token, not one
	 * per request. It is bookkeeping: a failed write is logged, not fatal. */
	{
		int64_t now = core_now();

		if (now - t.last_used >= CORE_TOKEN_TOUCH_SECONDS) {
			kms_err trc = store_token_touch(c->st, acc, now);

			if (trc != KMS_OK)
				kms_warn("token %s: last-used time not recorded: %s", acc, kms_err_detail(trc));
			else
				x->token_last_used = now;
		}
	}
	if (x->role == POLICY_ROLE_SERVICE)
		rc = store_principal_tenants(c->st, x->who.id, &x->scope, &x->n_scope);
	if (rc == KMS_OK && cacheable) {
		memset(&ce, 0, sizeof(ce));
		memcpy(ce.hash, h, sizeof(ce.hash));
		snprintf(ce.accessor, sizeof(ce.accessor), "%s", acc);
		ce.expires = t.expires;
		ce.last_used = x->token_last_used;
		ce.who = x->who;
		ce.scope = x->scope;
		ce.n_scope = x->n_scope;
		authcache_put(c->authc, ticket, &ce);
		kms_wipe(&ce, sizeof(ce));
	}
	kms_wipe(h, sizeof(h));
	kms_wipe(&t, sizeof(t));
	return rc;
}

typedef kms_err (*op_fn)(struct core *, struct op_ctx *);

static const op_fn op_table[KMS_OP__COUNT] = {
	[KMS_OP_TENANT_CREATE] = op_tenant_create,
	[KMS_OP_TENANT_READ] = op_tenant_read,
	[KMS_OP_TENANT_LIST] = op_tenant_list,
	[KMS_OP_PRINCIPAL_CREATE] = op_principal_create,
	[KMS_OP_PRINCIPAL_READ] = op_principal_read,
	[KMS_OP_PRINCIPAL_LIST] = op_principal_list,
	[KMS_OP_TOKEN_CREATE] = op_token_create,
	[KMS_OP_TOKEN_REVOKE] = op_token_revoke,
	[KMS_OP_TOKEN_LOOKUP_SELF] = op_token_lookup_self,
	[KMS_OP_KEY_CREATE] = op_key_create,
	[KMS_OP_KEY_READ] = op_key_read,
	[KMS_OP_KEY_LIST] = op_key_list,
	[KMS_OP_KEY_ROTATE] = op_key_rotate,
	[KMS_OP_DATAKEY] = op_datakey,
	[KMS_OP_ENCRYPT] = op_encrypt,
	[KMS_OP_DECRYPT] = op_decrypt,
	[KMS_OP_REWRAP] = op_rewrap,
	[KMS_OP_KEY_CONFIG] = op_key_config,
	[KMS_OP_KEY_REVOKE] = op_key_revoke,
	[KMS_OP_KEY_RESTORE] = op_key_restore,
	[KMS_OP_VERSION_DISABLE] = op_version_disable,
	[KMS_OP_VERSION_ENABLE] = op_version_enable,
	[KMS_OP_KEY_HISTORY] = op_key_history,
	[KMS_OP_VERSION_SCHEDULE_DESTROY] = op_version_schedule_destroy,
	[KMS_OP_VERSION_CANCEL_DESTROY] = op_version_cancel_destroy,
	[KMS_OP_KEY_LEGAL_HOLD] = op_key_legal_hold,
	[KMS_OP_TENANT_CONFIG] = op_tenant_config,
	[KMS_OP_VERSION_RECEIPT] = op_version_receipt,
	[KMS_OP_POLICY_READ] = op_policy_read,
	[KMS_OP_POLICY_WRITE] = op_policy_write,
	[KMS_OP_TOKEN_LOOKUP_ACCESSOR] = op_token_lookup_accessor,
	[KMS_OP_AUDIT_HASH] = op_audit_hash,
	[KMS_OP_METRICS] = op_metrics,
	[KMS_OP_COMPLIANCE] = op_compliance,
	[KMS_OP_KEY_TRIM] = op_key_trim,
	[KMS_OP_APPROVAL_LIST] = op_approval_list,
	[KMS_OP_APPROVAL_READ] = op_approval_read,
	[KMS_OP_APPROVAL_APPROVE] = op_approval_approve,
	[KMS_OP_APPROVAL_DENY] = op_approval_deny,
	[KMS_OP_BREAKGLASS_ACTIVATE] = op_breakglass_activate,
	[KMS_OP_BREAKGLASS_LIST] = op_breakglass_list,
	[KMS_OP_BREAKGLASS_REVIEW] = op_breakglass_review,
	[KMS_OP_MFA_ENROLL] = op_mfa_enroll,
	[KMS_OP_MFA_CONFIRM] = op_mfa_confirm,
	[KMS_OP_MFA_STATUS] = op_mfa_status,
	[KMS_OP_MFA_VERIFY] = op_mfa_verify,
	[KMS_OP_MFA_UNLOCK] = op_mfa_unlock,
	[KMS_OP_MFA_RESET] = op_mfa_reset,
	[KMS_OP_SYS_BACKUP] = op_sys_backup,
	[KMS_OP_PRINCIPAL_CERT_ADD] = op_principal_cert_add,
	[KMS_OP_PRINCIPAL_CERT_LIST] = op_principal_cert_list,
	[KMS_OP_PRINCIPAL_CERT_REVOKE] = op_principal_cert_revoke,
};

static int valid_request_id(const char *s)
{
	size_t n = 0;

	if (s == NULL)
		return 0;
	for (; s[n]; n++)
		if (n >= 64 || !((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
				 (s[n] >= '0' && s[n] <= '9') || s[n] == '-' || s[n] == '_' || s[n] == '.'))
			return 0;
	return n > 0;
}

static json_t *error_body(const char *request_id, const char *msg)
{
	json_t *b = json_object(), *errs = json_array();

	json_t *m = kms_json_text(msg);

	json_array_append_new(errs, m ? m : json_string("error"));
	json_object_set_new(b, "errors", errs);
	json_object_set_new(b, "request_id", json_string(request_id));
	return b;
}

#define CTX_PAIRS_MAX 64

/* encryption_context string pairs of one item, for policy conditions; non-string values
 * are left out (the operation refuses them itself). */
static size_t context_pairs(const json_t *item, struct policy_kv *kv)
{
	json_t *ctx = item ? json_object_get(item, "encryption_context") : NULL;
	const char *k;
	json_t *v;
	size_t n = 0;

	if (!json_is_object(ctx))
		return 0;
	json_object_foreach(ctx, k, v) {
		if (n == CTX_PAIRS_MAX)
			break;
		if (json_is_string(v)) {
			kv[n].key = k;
			kv[n].value = json_string_value(v);
			n++;
		}
	}
	return n;
}

static struct policy_doc *policy_current(struct core *c)
{
	struct policy_doc *d;

	pthread_mutex_lock(&c->policy_mu);
	d = policy_doc_ref(c->policy);
	pthread_mutex_unlock(&c->policy_mu);
	return d;
}

/* Applies the verdict's outputs: require_mfa is a TOTP step-up (ops_mfa.c), checked
 * here before the operation runs (and before a quorum request is recorded). With
 * defer_quorum the caller handles require_quorum itself (core_quorum_gate). */
static kms_err verdict_err(struct op_ctx *x, const struct policy_verdict *v, bool defer_quorum)
{
	if (!v->allow)
		return kms_errf(KMS_ERR_DENIED, "permission denied");
	if (v->require_quorum > 0 && !defer_quorum)
		return kms_errf(KMS_ERR_DENIED, "the policy requires %u approvals; approvals are not available yet",
				v->require_quorum);
	if (v->require_mfa && x->core != NULL)
		return core_mfa_stepup(x->core, x);
	if (v->require_mfa)
		return kms_errf(KMS_ERR_DENIED, "MFA step-up required by the policy");
	return KMS_OK;
}

kms_err core_policy_item(struct op_ctx *x, json_t *item)
{
	struct policy_kv kv[CTX_PAIRS_MAX];
	struct policy_verdict v;

	if (x->item_policy == NULL)
		return KMS_OK;
	x->pin->context = kv;
	x->pin->n_context = context_pairs(item, kv);
	policy_eval(x->item_policy, x->pin, &v);
	x->pin->context = NULL;
	x->pin->n_context = 0;
	if (!v.allow && x->bg_grant[0] != '\0') {
		/* break-glass: the grant allows what the rules refuse (ops_breakglass.c) */
		v.allow = true;
		v.require_mfa = false;
		v.require_quorum = 0;
		snprintf(v.reason, sizeof(v.reason), "break-glass grant %s", x->bg_grant);
		x->bg_used = true;
	}
	if (x->reason[0] == '\0' || !v.allow)
		snprintf(x->reason, sizeof(x->reason), "%s", v.reason);
	return verdict_err(x, &v, false);
}

/* 12 random bytes for a request id. Ids are public and need only be unique, so each
 * worker draws them from OpenSSL's generator 16 at a time: RAND_bytes costs about the
 * same for 12 bytes as for 192. */
static void request_id_bytes(uint8_t r[12])
{
	static __thread uint8_t pool[16 * 12];
	static __thread unsigned left;

	if (left == 0) {
		if (RAND_bytes(pool, sizeof(pool)) != 1) {
			memset(r, 0, 12);
			return;
		}
		left = 16;
	}
	left--;
	memcpy(r, pool + left * 12, 12);
}

kms_err core_audit_wait(struct core *c, uint64_t seq)
{
	return audit_wait(c->au, seq);
}

/* The answer of a call whose record did not become durable, and its count. */
static void audit_refused(struct core *c, struct core_result *res, enum kms_op op, bool authenticated, uint64_t t0)
{
	res->status = 503;
	res->body = error_body(res->request_id, "audit log unavailable: operation refused");
	metrics_observe(&c->met, op, METRICS_ERROR, 503, KMS_ERR_AUDIT, authenticated, mono_us() - t0);
}

bool core_settle(struct core *c, struct core_result *res, bool wait)
{
	int v;

	if (res->audit_seq == 0)
		return true;
	if (wait)
		v = audit_wait(c->au, res->audit_seq) == KMS_OK ? 1 : -1;
	else if ((v = audit_settled(c->au, res->audit_seq)) == 0)
		return false;
	res->audit_seq = 0;
	if (v < 0) { /* the record never became durable: nothing of the answer leaves */
		json_decref(res->body);
		free(res->text);
		res->text = NULL;
		if (res->has_file)
			close(res->file_fd);
		res->has_file = false;
		res->retry_after = 0;
		audit_refused(c, res, (enum kms_op)res->settle_.op, res->settle_.authenticated, res->settle_.t0);
		return true;
	}
	metrics_observe(&c->met, (enum kms_op)res->settle_.op, (enum metrics_outcome)res->settle_.outcome,
			res->settle_.status, (kms_err)res->settle_.rc, res->settle_.authenticated,
			mono_us() - res->settle_.t0);
	return true;
}

void core_call(struct core *c, const struct core_call *call, struct core_result *res)
{
	struct op_ctx x = {.call = call, .core = c};
	struct policy_decision d = {false, "not evaluated"};
	struct policy_input pin = {0};
	struct policy_verdict verdict;
	struct policy_kv kv[CTX_PAIRS_MAX];
	struct policy_doc *doc = NULL;
	char sname[256] = "", detail[256] = "";
	struct audit_record ar = {0};
	json_t *extra = NULL;
	uint64_t t0;
	char src[INET6_ADDRSTRLEN + 8] = "";
	const char *outcome;
	kms_err rc, arc, rc2, session_rc = KMS_OK;
	bool quiesced;
	int status;

	memset(res, 0, sizeof(*res));
	t0 = mono_us();
	kms_err_clear();
	if (valid_request_id(call->request_id)) {
		snprintf(res->request_id, sizeof(res->request_id), "%s", call->request_id);
	} else {
		uint8_t r[12];
		request_id_bytes(r);
		kms_hex_encode(r, sizeof(r), res->request_id);
	}
	if (call->op == KMS_OP_HEALTH) {
		core_health(c, call, res);
		return;
	}
	if ((unsigned)call->op >= KMS_OP__COUNT || op_table[call->op] == NULL) {
		res->status = 404;
		res->body = error_body(res->request_id, "unsupported path");
		return;
	}

	/* A source that keeps failing to authenticate is refused before its token is
	 * looked at (no oracle for guessing); only failures take from its bucket. */
	if (c->rl_source != NULL && call->remote_addr != NULL)
		source_name(call->remote_addr, src, sizeof(src));
	if ((rc = core_cluster_check(c)) != KMS_OK) {
		/* several nodes: this one is behind on the others' changes (cluster.c) */
	} else if (call->approved != NULL) {
		/* an approved request runs as its requester (ops_approval.c) */
		rc = core_approval_identity(c, &x);
	} else if (c->rl_source != NULL && call->remote_addr != NULL &&
	    (res->retry_after = ratelimit_peek(c->rl_source, src, c->opt.auth_fail_rps,
					       c->opt.auth_fail_burst, kms_mono_ms())) > 0) {
		rc = kms_errf(KMS_ERR_RATE_LIMITED,
			      "too many failed authentications from this address; retry after %u s",
			      res->retry_after);
	} else {
		rc = core_authenticate(c, call, &x);
		if (rc != KMS_OK && x.who.name[0] == '\0' && c->rl_source != NULL &&
		    call->remote_addr != NULL &&
		    (rc == KMS_ERR_UNAUTHENTICATED || rc == KMS_ERR_DENIED))
			(void)ratelimit_take(c->rl_source, src, c->opt.auth_fail_rps, c->opt.auth_fail_burst,
					     kms_mono_ms());
		if (rc == KMS_OK && (res->retry_after = principal_limited(c, x.who.name, call->op)) > 0)
			rc = kms_errf(KMS_ERR_RATE_LIMITED, "rate limit exceeded; retry after %u s",
				      res->retry_after);
	}
	if (rc == KMS_OK) {
		pin.principal = x.who.name;
		pin.role = x.who.role;
		pin.scope_ids = x.scope;
		pin.n_scope_ids = x.n_scope;
		pin.op = call->op;
		pin.key = call->key;
		pin.now = core_now();
		(void)policy_addr_from_text(call->remote_addr ? call->remote_addr : "", &pin.source);
		if (op_has_tenant(call->op)) {
			kms_err trc = core_tenant_lookup(c, call->tenant, &x.tenant);
			pin.tenant = call->tenant;
			if (trc == KMS_OK) {
				x.have_tenant = true;
				pin.tenant_id = x.tenant.id;
			} else if (trc == KMS_ERR_NOT_FOUND) {
				pin.tenant_id = -1;
			} else {
				rc = trc;
			}
		} else if (call->op == KMS_OP_TENANT_CREATE || call->op == KMS_OP_TENANT_READ ||
			   call->op == KMS_OP_TENANT_CONFIG) {
			pin.tenant = call->name;
		} else if (call->op == KMS_OP_BREAKGLASS_ACTIVATE && call->body != NULL &&
			   json_is_string(json_object_get(call->body, "tenant"))) {
			/* the grant's scope, so that rules can limit who may break glass where */
			struct store_tenant bt;
			pin.tenant = json_string_value(json_object_get(call->body, "tenant"));
			pin.tenant_id = core_tenant_lookup(c, pin.tenant, &bt) == KMS_OK ? bt.id : -1;
			/* the grant's key pattern; absent means every key ("*") */
			pin.key = json_is_string(json_object_get(call->body, "key"))
					  ? json_string_value(json_object_get(call->body, "key"))
					  : "*";
		}
		if (rc == KMS_OK) {
			x.policy_op = core_policy_op(c, &x);
			pin.op = x.policy_op;
			doc = policy_current(c);
			if ((policy_doc_uses(doc) & POLICY_USES_MFA_AGE) && policy_mfa_age_may_apply(doc, &pin))
				pin.mfa_at = core_mfa_at(c, x.who.id);
			if ((policy_doc_uses(doc) & POLICY_USES_CONTEXT) && call->body != NULL &&
			    json_object_get(call->body, "batch_input") != NULL) {
				/* Decided per item, on each item's own context. */
				x.item_policy = doc;
				x.pin = &pin;
				d.allow = true;
				if (call->op == KMS_OP_DECRYPT || call->op == KMS_OP_REWRAP)
					(void)core_breakglass_grant(c, &x);
			} else {
				pin.n_context = context_pairs(call->body, kv);
				pin.context = kv;
				policy_eval(doc, &pin, &verdict);
				/* refused only for a stale TOTP session: a request for a code (policy_op.c) */
				session_rc = core_mfa_session(c, &x, doc, &pin, &verdict);
				pin.context = NULL;
				if (!verdict.allow && (call->op == KMS_OP_DECRYPT || call->op == KMS_OP_REWRAP) &&
				    core_breakglass_grant(c, &x)) {
					/* break-glass: the grant allows what the rules refuse */
					verdict.allow = true;
					verdict.require_mfa = false;
					verdict.require_quorum = 0;
					snprintf(verdict.reason, sizeof(verdict.reason), "break-glass grant %s", x.bg_grant);
					x.bg_used = true;
				}
				/* An approved request's step-up was the requester's, when it was made
				 * (and each approver passes its own on the vote): not asked again. */
				if (call->approved != NULL)
					verdict.require_mfa = false;
				snprintf(x.reason, sizeof(x.reason), "%s", verdict.reason);
				rc = verdict_err(&x, &verdict, true);
				if (rc == KMS_OK && verdict.require_quorum > 0)
					rc = core_quorum_gate(c, &x, &verdict);
				d.allow = verdict.allow;
				if (session_rc != KMS_OK) {
					rc = session_rc;
					d.allow = true; /* allowed with a fresh session: the answer says how */
				}
				if (rc != KMS_OK)
					snprintf(sname, sizeof(sname), "%s", kms_err_detail(rc));
				if ((rc == KMS_ERR_DENIED || rc == KMS_ERR_UNAUTHENTICATED) && x.mfa_detail[0] != '\0')
					snprintf(sname, sizeof(sname), "%s", x.mfa_detail);
			}
			d.reason = x.reason;
		}
	}
	/* Context values go into the record hashed; a call whose record could not say what
	 * it was about does not run. Only for authenticated callers: an anonymous one gets
	 * no token work done. */
	if (rc == KMS_OK && call->body != NULL &&
	    (call->op == KMS_OP_DATAKEY || call->op == KMS_OP_ENCRYPT || call->op == KMS_OP_DECRYPT ||
	     call->op == KMS_OP_REWRAP)) {
		rc = core_audit_hashes(c, call->body, &extra);
		if (rc != KMS_OK) {
			char why[160];

			snprintf(why, sizeof(why), "%s", kms_err_detail(rc));
			rc = kms_errf(rc == KMS_ERR_NOMEM ? rc : KMS_ERR_TOKEN,
				      "cannot hash the encryption context for the audit record: %s", why);
		}
	}
	/* From the change to its durable record: one unit for a backup's cut (the backup
	 * itself takes the lock for writing). An approved execution runs inside the final
	 * approval's core_call, which holds the lock already: taking it again would deadlock
	 * behind a waiting backup (writers are preferred). */
	quiesced = call->op != KMS_OP_SYS_BACKUP && call->approved == NULL;
	if (quiesced)
		pthread_rwlock_rdlock(&c->quiesce);
	if (rc == KMS_OK) {
		if (x.deferred)
			; /* waits for approvals: nothing runs now (ops_approval.c) */
		else if (op_has_tenant(call->op) && !x.have_tenant)
			rc = kms_errf(KMS_ERR_NOT_FOUND, "tenant \"%.64s\" not found", call->tenant);
		else
			rc = op_table[call->op](c, &x);
	}
	if (x.bg_used) {
		if (x.audit_more == NULL)
			x.audit_more = json_object();
		json_object_set_new(x.audit_more, "break_glass", json_true());
		json_object_set_new(x.audit_more, "break_glass_grant", json_string(x.bg_grant));
		__atomic_add_fetch(&c->met.break_glass_decrypts, 1, __ATOMIC_RELAXED);
	}
	if (call->approved != NULL && x.who.name[0] != '\0') {
		if (x.audit_more == NULL)
			x.audit_more = json_object();
		json_object_set_new(x.audit_more, "approval_id", json_string(call->approved->id));
		json_object_set_new(x.audit_more, "approvers", json_deep_copy(call->approved->approvers));
	}
	if (x.policy_op != KMS_OP_NONE && x.policy_op != call->op) {
		/* the record keeps the route's operation and names the one the policy decided on */
		if (x.audit_more == NULL)
			x.audit_more = json_object();
		json_object_set_new(x.audit_more, "policy_operation", json_string(kms_op_name(x.policy_op)));
	}
	if (x.audit_more != NULL) {
		/* a record that cannot say this does not go out, and neither does the answer */
		if (extra == NULL)
			extra = json_object();
		if (extra == NULL || json_object_update(extra, x.audit_more) != 0) {
			json_decref(x.data);
			x.data = NULL;
			x.status = 0;
			x.deferred = false;
			rc = kms_errf(KMS_ERR_NOMEM, "audit record incomplete: operation refused");
		}
	}

	/* What the answer says about each batch item goes into the record; if that cannot
	 * be written down (memory), no result leaves and the refusal is what is recorded. */
	if (extra != NULL && (rc2 = core_audit_results(call->op, call->body, x.data, extra)) != KMS_OK) {
		json_decref(x.data);
		x.data = NULL;
		x.status = 0;
		rc = kms_errf(rc2, "audit record incomplete: operation refused");
	}

	/* Which client certificate was presented, whatever became of the request. */
	if (call->cert_spki != NULL && (extra != NULL || (extra = json_object()) != NULL)) {
		json_object_set_new(extra, "client_cert_spki", json_string(call->cert_spki));
		if (call->cert_subject != NULL)
			json_object_set_new(extra, "client_cert_subject", kms_json_text(call->cert_subject));
	}

	/* The detail as the operation left it: audit_append may set its own (a checkpoint
	 * whose signature fails), which must not reach this request's answer. */
	snprintf(detail, sizeof(detail), "%s", kms_err_detail(rc == KMS_OK ? KMS_ERR_INVALID : rc));
	status = x.status ? x.status : kms_err_http_status(rc);
	outcome = rc == KMS_OK && x.deferred ? "pending"
		  : rc == KMS_OK && status < 400 ? "allow"
		  : (rc == KMS_ERR_DENIED || rc == KMS_ERR_UNAUTHENTICATED || rc == KMS_ERR_RATE_LIMITED) ? "deny"
											     : "error";
	ar.request_id = res->request_id;
	ar.principal = x.who.name[0] ? x.who.name : NULL;
	ar.auth_method = !x.who.name[0]	 ? (call->cert_spki ? "cert" : NULL)
			 : call->approved != NULL ? "approval"
			 : x.auth_method	 ? x.auth_method
						 : "token";
	ar.remote_addr = call->remote_addr;
	ar.operation = kms_op_name(call->op);
	if (call->op == KMS_OP_TENANT_CREATE || call->op == KMS_OP_TENANT_READ || call->op == KMS_OP_TENANT_CONFIG) {
		ar.tenant = call->name;
		ar.key = NULL;
	} else {
		ar.tenant = call->tenant;
		ar.key = call->key ? call->key : call->name;
	}
	ar.version = x.version;
	ar.batch = x.batch;
	ar.outcome = outcome;
	ar.status = status;
	ar.reason = rc == KMS_OK ? d.reason : (rc == KMS_ERR_DENIED && x.who.name[0] && x.reason[0]) ? x.reason : detail;
	ar.extra = extra;
	ar.mfa = x.mfa_verified;
	if (rc == KMS_ERR_DENIED && x.mfa_detail[0] != '\0' && x.who.name[0] && x.reason[0]) {
		/* the record says why the step-up (or the MFA operation) refused */
		size_t n = strnlen(x.reason, sizeof(x.reason) - 1);
		snprintf(x.reason + n, sizeof(x.reason) - n, "; %s", x.mfa_detail);
	}

	/* Fail closed: nothing leaves before its record is durable. A caller that can hold
	 * the answer gets it with the record only queued, and core_settle decides later
	 * (the data plane only: nothing else there changes state on the strength of the
	 * record). A backup's cut still holds: its own records come after these in the
	 * log, and the log is made durable in order. */
	if (call->defer_audit && call->approved == NULL &&
	    (call->op == KMS_OP_DATAKEY || call->op == KMS_OP_ENCRYPT || call->op == KMS_OP_DECRYPT ||
	     call->op == KMS_OP_REWRAP))
		arc = audit_enqueue(c->au, &ar, &res->audit_seq);
	else
		arc = audit_append(c->au, &ar);
	if (quiesced)
		pthread_rwlock_unlock(&c->quiesce);
	if (arc != KMS_OK) {
		json_decref(x.data);
		json_decref(x.auth);
		x.data = x.auth = NULL;
		free(x.text);
		x.text = NULL;
		audit_refused(c, res, call->op, x.who.name[0] != '\0', t0);
		goto out;
	}
	res->status = status;
	{
		enum metrics_outcome mo = outcome[0] == 'a' || outcome[0] == 'p' ? METRICS_ALLOW
					  : outcome[0] == 'd'			    ? METRICS_DENY
										    : METRICS_ERROR;

		if (res->audit_seq != 0) { /* counted when it settles */
			res->settle_.op = (int)call->op;
			res->settle_.outcome = (int)mo;
			res->settle_.status = status;
			res->settle_.rc = (int)rc;
			res->settle_.authenticated = x.who.name[0] != '\0';
			res->settle_.t0 = t0;
		} else {
			metrics_observe(&c->met, call->op, mo, status, rc, x.who.name[0] != '\0', mono_us() - t0);
		}
	}
	if (rc != KMS_OK) {
		const char *msg = detail;
		if (rc == KMS_ERR_DENIED && sname[0] != '\0' && d.allow)
			msg = sname; /* allowed, but the policy asks for MFA or approvals */
		else if (rc == KMS_ERR_DENIED && x.mfa_detail[0] != '\0' && d.allow)
			msg = x.mfa_detail; /* an MFA operation's own refusal (code, lockout, self-unlock) */
		else if (rc == KMS_ERR_DENIED && x.deny_detail && d.allow)
			msg = detail; /* allowed, refused by the operation's own rule (self-approval) */
		else if (rc == KMS_ERR_DENIED && x.auth_detail[0] != '\0')
			msg = x.auth_detail; /* a client certificate refused: say why */
		else if (rc == KMS_ERR_DENIED)
			msg = "permission denied"; /* same body whether absent or not yours */
		else if (rc == KMS_ERR_UNAUTHENTICATED && x.mfa_detail[0] != '\0' && d.allow)
			msg = x.mfa_detail; /* allowed with a second factor, and none was sent: 401 */
		else if (rc == KMS_ERR_UNAUTHENTICATED)
			msg = "missing client token";
		else if (status >= 500 && rc != KMS_ERR_TOKEN && rc != KMS_ERR_AUDIT && rc != KMS_ERR_STORE &&
			 rc != KMS_ERR_UNSUPPORTED)
			msg = kms_strerror(rc);
		json_decref(x.data);
		x.data = NULL;
		res->body = error_body(res->request_id, msg);
		goto out;
	}
	if (x.text != NULL) {
		res->text = x.text;
		x.text = NULL;
	}
	if (x.has_file) { /* the archive leaves only now, its record durable */
		res->has_file = true;
		res->file_fd = x.file_fd;
		res->file_size = x.file_size;
		x.has_file = false;
	}
	res->body = json_object();
	json_object_set_new(res->body, "request_id", json_string(res->request_id));
	if (x.status >= 400) {
		json_t *errs = json_array();
		json_array_append_new(errs, kms_json_text(detail));
		json_object_set_new(res->body, "errors", errs);
	}
	if (x.auth != NULL)
		json_object_set_new(res->body, "auth", x.auth);
	x.auth = NULL;
	json_object_set_new(res->body, "data", x.data ? x.data : json_object());
	x.data = NULL;
out:
	if (x.has_file)
		close(x.file_fd);
	json_decref(x.auth);
	json_decref(x.audit_more);
	json_decref(extra);
	free(x.text);
	free(x.scope);
	policy_doc_free(doc);
}
