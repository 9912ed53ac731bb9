/* Several kmsd nodes on one PostgreSQL store (docs/SCALE-OUT.md): how a node keeps its
 * caches in step with changes made by the others, and which node runs the scheduler.
 *
 * The store records every change that a cache depends on in cluster_changes (filled by
 * triggers, in the same transaction as the change) and sends a notice on commit. A
 * thread per node waits for that notice, or at most sync_ms, then reads the changes after
 * the last one it applied and applies each:
 *   keys, key_versions  the key is read again (versions added, states, revocation),
 *                       serving copies of versions no longer enabled are retired;
 *   tenants             the tenant row is read again;
 *   principals, api_tokens, principal_tenants, principal_certs
 *                       the authentication cache is emptied;
 *   policies            the newest policy version is installed;
 *   break_glass_grants  the latest grant expiry is read again.
 * A notice lost (connection drop) costs at most sync_ms: the read runs on the timer
 * too. Changes pruned before a node read them (a node stopped for an hour) make it reload
 * everything it caches. So a change made on node A is in force on node B within sync_ms
 * plus one store round trip after A's commit.
 *
 * The same thread holds (or tries for) the "scheduler" lease, a PostgreSQL session lock
 * on its own connection: the holder runs rotations by age, scheduled destructions,
 * approval expiry and the master-key relay; when it dies its connection closes, the
 * lock goes, and another node's next try (within sync_ms) takes it over.
 *
 * Each run of kmsd (a node's process, from start to stop) draws a random run id and holds
 * a lease of its own, "run:<node_id>/<run>", from before it serves until it stops: it
 * says the run is alive. An approved request names the run that runs it; a request whose
 * run's lease is free was left by a run that ended, and is marked interrupted (never run
 * again): by every node once as it starts, and by the scheduler's holder each round. A
 * run's lease is never taken again once free, since no later run has its id. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kms/base/json.h"
#include "kms/base/clock.h"
#include "kms/base/log.h"
#include "kms/core/authcache.h"
#include "kms/core/core_int.h"

#define CHANGES_BATCH 500
/* A node that has not read the change log for this many sync periods (and at least
 * STALE_MIN_MS) refuses requests: it cannot promise that a revocation made elsewhere
 * is in force here. */
#define STALE_PERIODS 3
#define STALE_MIN_MS 3000
#define PRUNE_EVERY_S 60
#define PRUNE_AGE_S 3600
/* at start, how long to wait for an earlier run of this node to let go of its lease */
#define START_KIN_TRIES 10
#define START_KIN_WAIT_MS 200

static void run_lease_name(char *buf, size_t len, const char *executor)
{
	snprintf(buf, len, "run:%s", executor);
}

/* Whether executor ("<node_id>/<run>") is a run of node. */
static bool run_of_node(const char *executor, const char *node)
{
	char of[65];

	return store_executor_split(executor, of) != NULL && strcmp(of, node) == 0;
}

/* Requests left "executing" by runs that ended. A run whose lease nobody holds has no
 * connection to the store, so it cannot be running anything; this run's own lease is
 * held here, so its requests are never touched. *kin (may be NULL): whether a run of
 * this node_id other than this one still holds its lease. */
static void interrupt_ended_runs(struct core *c, bool *kin)
{
	char(*runs)[STORE_EXECUTOR_MAX + 1] = NULL;
	size_t n = 0;
	kms_err rc = store_approvals_executors(c->st, &runs, &n);

	if (rc != KMS_OK) {
		kms_warn("cluster: reading approvals in progress: %s", kms_err_detail(rc));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char lease[STORE_EXECUTOR_MAX + 8];
		bool ended = false;

		run_lease_name(lease, sizeof(lease), runs[i]);
		if ((rc = store_watch_lease_free(c->cl_watch, lease, &ended)) != KMS_OK) {
			kms_warn("cluster: is run %s alive: %s", runs[i], kms_err_detail(rc));
			break;
		}
		if (ended)
			core_approvals_interrupted(c, runs[i]);
		else if (kin != NULL && strcmp(runs[i], c->cl_executor) != 0 && run_of_node(runs[i], c->cl_node))
			*kin = true;
	}
	free(runs);
}

static struct kent *kent_by_id_locked(struct core *c, int64_t key_id)
{
	for (struct kent *e = c->keys_by_id[(uint64_t)key_id % CORE_BUCKETS]; e; e = e->id_next)
		if (e->meta.id == key_id)
			return e;
	return NULL;
}

kms_err core_key_refresh(struct core *c, int64_t key_id)
{
	char tenant[STORE_NAME_MAX + 1], name[STORE_NAME_MAX + 1];
	kms_err rc = KMS_OK;

	/* A CONFLICT is another thread applying a newer read meanwhile (progress), so
	 * trying again is safe; the bound only stops a pathological livelock. */
	for (int attempt = 0; attempt < 32; attempt++) {
		struct store_version *vs = NULL;
		struct store_key meta;
		size_t nv = 0;
		int64_t tenant_id = 0;
		uint64_t gen = 0;
		struct kent *e;

		pthread_rwlock_rdlock(&c->lock);
		e = kent_by_id_locked(c, key_id);
		if (e != NULL) {
			snprintf(tenant, sizeof(tenant), "%s", e->tenant);
			snprintf(name, sizeof(name), "%s", e->meta.name);
			tenant_id = e->meta.tenant_id;
			gen = e->gen;
		}
		pthread_rwlock_unlock(&c->lock);
		if (e == NULL)
			return KMS_OK; /* not cached here: the first use reads the store */
		if ((rc = store_key_get(c->st, tenant_id, name, &meta)) != KMS_OK)
			break;
		if ((rc = store_version_list(c->st, key_id, &vs, &nv)) != KMS_OK)
			break;
		rc = core_key_apply(c, tenant, &meta, vs, nv, gen);
		free(vs);
		if (rc != KMS_ERR_CONFLICT)
			break;
	}
	if (rc != KMS_OK)
		__atomic_add_fetch(&c->met.cluster_refresh_errors, 1, __ATOMIC_RELAXED);
	return rc;
}

/* Every cached key and tenant read again (after a gap in the changes). */
static void refresh_all(struct core *c)
{
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;

	__atomic_add_fetch(&c->cache_epoch, 1, __ATOMIC_ACQ_REL);
	pthread_rwlock_rdlock(&c->lock);
	for (size_t b = 0; b < CORE_BUCKETS; b++)
		for (struct kent *e = c->keys[b]; e; e = e->next) {
			if (n == cap) {
				size_t nc = cap ? cap * 2 : 64;
				int64_t *g = realloc(ids, nc * sizeof(*ids));
				if (g == NULL)
					break;
				ids = g;
				cap = nc;
			}
			ids[n++] = e->meta.id;
		}
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		kms_err rc = core_key_refresh(c, ids[i]);
		if (rc != KMS_OK)
			kms_warn("cluster: key %lld not refreshed: %s", (long long)ids[i], kms_err_detail(rc));
	}
	free(ids);
	core_tenants_refresh(c, 0);
	authcache_invalidate(c->authc);
	core_breakglass_init(c);
	if (core_policy_reload(c) != KMS_OK)
		kms_error("cluster: the stored policy could not be installed here");
}

static void apply(struct core *c, const struct store_change *ch, bool *auth, bool *policy, bool *grants)
{
	kms_err rc = KMS_OK;

	if (strcmp(ch->kind, "keys") == 0 || strcmp(ch->kind, "key_versions") == 0 || strcmp(ch->kind, "tenants") == 0)
		__atomic_add_fetch(&c->cache_epoch, 1, __ATOMIC_ACQ_REL);
	if (strcmp(ch->kind, "keys") == 0 || strcmp(ch->kind, "key_versions") == 0)
		rc = core_key_refresh(c, ch->ref);
	else if (strcmp(ch->kind, "tenants") == 0)
		core_tenants_refresh(c, ch->ref);
	else if (strcmp(ch->kind, "policies") == 0)
		*policy = true;
	else if (strcmp(ch->kind, "break_glass_grants") == 0)
		*grants = true;
	else
		*auth = true; /* principals, tokens, scopes, certificates, and anything new */
	if (rc != KMS_OK)
		kms_warn("cluster: change #%lld (%s %lld) not applied: %s", (long long)ch->seq, ch->kind,
			 (long long)ch->ref, kms_err_detail(rc));
}

/* Reads and applies the changes after c->cl_seen; false on a store error. */
static bool catch_up(struct core *c)
{
	for (;;) {
		struct store_change *ch = NULL;
		bool gap = false, auth = false, policy = false, grants = false;
		size_t n = 0;
		kms_err rc = store_changes_since(c->st, c->cl_seen, CHANGES_BATCH, &ch, &n, &gap);

		if (rc != KMS_OK) {
			kms_warn("cluster: reading changes: %s", kms_err_detail(rc));
			return false;
		}
		if (gap) {
			kms_warn("cluster: changes after #%lld were pruned before this node read them: reloading every cache",
				 (long long)c->cl_seen);
			refresh_all(c);
		}
		for (size_t i = 0; i < n; i++) {
			if (strcmp(ch[i].node, c->cl_node) != 0)
				apply(c, &ch[i], &auth, &policy, &grants);
			c->cl_seen = ch[i].seq;
		}
		free(ch);
		if (auth)
			authcache_invalidate(c->authc);
		if (grants)
			core_breakglass_init(c);
		if (policy && core_policy_reload(c) != KMS_OK)
			kms_error("cluster: the policy changed on another node and could not be installed here");
		__atomic_add_fetch(&c->met.cluster_changes, n, __ATOMIC_RELAXED);
		if (n < CHANGES_BATCH) {
			__atomic_store_n(&c->cl_ok_ms, kms_mono_ms(), __ATOMIC_RELEASE);
			return true;
		}
	}
}

static void *cluster_main(void *arg)
{
	struct core *c = arg;
	int64_t pruned_at = 0;
	char lease[STORE_EXECUTOR_MAX + 8];

	run_lease_name(lease, sizeof(lease), c->cl_executor);

	for (;;) {
		bool notified = false, held = false, mine = false;
		kms_err rc;

		pthread_mutex_lock(&c->cl_mu);
		if (c->cl_stop) {
			pthread_mutex_unlock(&c->cl_mu);
			break;
		}
		pthread_mutex_unlock(&c->cl_mu);
		/* this run's own lease first: a reconnection has dropped it. Until PostgreSQL
		 * has ended the lost session, that session still holds it, which is as good:
		 * nobody takes this run for ended meanwhile. */
		rc = store_watch_lease(c->cl_watch, lease, &mine);
		if (rc == KMS_OK && mine != c->cl_alive) {
			if (mine)
				kms_info("cluster: run %s holds its lease again", c->cl_executor);
			else
				kms_warn("cluster: the lease of run %s is still held by its lost session", c->cl_executor);
			c->cl_alive = mine;
		}
		rc = store_watch_lease(c->cl_watch, "scheduler", &held);
		if (rc != KMS_OK)
			held = false;
		if (held != __atomic_load_n(&c->cl_leader, __ATOMIC_ACQUIRE)) {
			kms_info("cluster: node %s %s the scheduler lease", c->cl_node, held ? "holds" : "no longer holds");
			__atomic_store_n(&c->cl_leader, held, __ATOMIC_RELEASE);
		}
		(void)catch_up(c);
		if (held)
			interrupt_ended_runs(c, NULL);
		if (held && time(NULL) - pruned_at >= PRUNE_EVERY_S) {
			pruned_at = time(NULL);
			if ((rc = store_changes_prune(c->st, core_now() - PRUNE_AGE_S)) != KMS_OK)
				kms_warn("cluster: pruning changes: %s", kms_err_detail(rc));
		}
		rc = store_watch_wait(c->cl_watch, (int)c->cl_sync_ms, &notified);
		if (rc != KMS_OK) {
			/* connection lost: no notices, and the lease went with it */
			if (__atomic_exchange_n(&c->cl_leader, false, __ATOMIC_ACQ_REL))
				kms_warn("cluster: lost the store connection that held the scheduler lease");
			struct timespec ts = {.tv_sec = c->cl_sync_ms / 1000, .tv_nsec = (long)(c->cl_sync_ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

kms_err core_cluster_start(struct core *c, const char *store_uri, const char *node_id, unsigned sync_ms)
{
	char lease[STORE_EXECUTOR_MAX + 8];
	unsigned char run[STORE_RUN_LEN / 2];
	kms_err rc;

	if (store_backend(c->st) != STORE_BACKEND_PG)
		return KMS_OK; /* one node: its caches see every change, it runs the scheduler */
	snprintf(c->cl_node, sizeof(c->cl_node), "%s", node_id);
	c->cl_sync_ms = sync_ms ? sync_ms : 1000;
	if ((rc = store_set_node(c->st, node_id)) != KMS_OK || (rc = store_changes_head(c->st, &c->cl_seen)) != KMS_OK ||
	    (rc = store_watch_open(store_uri, &c->cl_watch)) != KMS_OK)
		return rc;
	/* This run's id and lease, before it serves; then the requests of runs that ended
	 * (this node's last run among them, once PostgreSQL has ended its session) */
	if (RAND_bytes(run, sizeof(run)) != 1) {
		rc = kms_errf(KMS_ERR_INTERNAL, "cannot draw a run id");
		goto fail;
	}
	{
		int off = snprintf(c->cl_executor, sizeof(c->cl_executor), "%s/", node_id);

		for (size_t i = 0; i < sizeof(run); i++)
			off += snprintf(c->cl_executor + off, sizeof(c->cl_executor) - (size_t)off, "%02x", run[i]);
	}
	run_lease_name(lease, sizeof(lease), c->cl_executor);
	if ((rc = store_set_executor(c->st, c->cl_executor)) != KMS_OK ||
	    (rc = store_watch_lease(c->cl_watch, lease, &c->cl_alive)) != KMS_OK)
		goto fail;
	if (!c->cl_alive) {
		rc = kms_errf(KMS_ERR_STORE, "the lease of a new run (%s) is held elsewhere", c->cl_executor);
		goto fail;
	}
	/* This node's last run, killed a moment ago, may still hold its lease until
	 * PostgreSQL ends its session: wait for that a little, so that its requests read
	 * interrupted before this run serves. */
	for (int i = 0;; i++) {
		bool kin = false;

		interrupt_ended_runs(c, &kin);
		if (!kin)
			break;
		if (i + 1 == START_KIN_TRIES) {
			kms_warn("cluster: an earlier run of node %s still holds its lease, with approved requests "
				 "executing: another kmsd with this node_id, or a run whose session PostgreSQL has not "
				 "ended yet; its requests are marked interrupted once its lease is free",
				 node_id);
			break;
		}
		struct timespec ts = {.tv_sec = 0, .tv_nsec = START_KIN_WAIT_MS * 1000000L};
		nanosleep(&ts, NULL);
	}
	__atomic_store_n(&c->cl_leader, false, __ATOMIC_RELEASE);
	__atomic_store_n(&c->cl_ok_ms, kms_mono_ms(), __ATOMIC_RELEASE);
	c->cl_on = true;
	pthread_mutex_init(&c->cl_mu, NULL);
	if (pthread_create(&c->cl_thread, NULL, cluster_main, c) != 0) {
		store_watch_close(c->cl_watch);
		c->cl_watch = NULL;
		c->cl_on = false;
		pthread_mutex_destroy(&c->cl_mu);
		return kms_errf(KMS_ERR_INTERNAL, "cannot start the cluster thread");
	}
	c->cl_running = true;
	kms_info("cluster: node %s (run %s) follows changes every %u ms at most", node_id, c->cl_executor,
		 c->cl_sync_ms);
	return KMS_OK;
fail:
	store_watch_close(c->cl_watch);
	c->cl_watch = NULL;
	return rc;
}

void core_cluster_stop(struct core *c)
{
	if (!c->cl_on)
		return;
	if (c->cl_running) {
		pthread_mutex_lock(&c->cl_mu);
		c->cl_stop = true;
		pthread_mutex_unlock(&c->cl_mu);
		pthread_join(c->cl_thread, NULL); /* within one sync_ms wait */
		c->cl_running = false;
	}
	store_watch_close(c->cl_watch);
	c->cl_watch = NULL;
	pthread_mutex_destroy(&c->cl_mu);
	c->cl_on = false;
	__atomic_store_n(&c->cl_leader, false, __ATOMIC_RELEASE);
}

bool core_cluster_leader(struct core *c)
{
	return !c->cl_on || __atomic_load_n(&c->cl_leader, __ATOMIC_ACQUIRE);
}

bool core_cluster_on(const struct core *c)
{
	return c->cl_on;
}

static int64_t stale_limit_ms(const struct core *c)
{
	int64_t lim = (int64_t)c->cl_sync_ms * STALE_PERIODS;

	return lim < STALE_MIN_MS ? STALE_MIN_MS : lim;
}

kms_err core_cluster_check(struct core *c)
{
	int64_t age;

	if (!c->cl_on)
		return KMS_OK;
	age = kms_mono_ms() - __atomic_load_n(&c->cl_ok_ms, __ATOMIC_ACQUIRE);
	if (age <= stale_limit_ms(c))
		return KMS_OK;
	return kms_errf(KMS_ERR_STORE,
			"this node has not read the changes made on other nodes for %lld ms (cluster_sync_ms %u): "
			"it refuses requests until it has, so that no revocation made elsewhere is missed",
			(long long)age, c->cl_sync_ms);
}

json_t *core_cluster_health(struct core *c, bool *ok)
{
	int64_t age;
	json_t *o;

	*ok = true;
	if (!c->cl_on)
		return NULL;
	age = kms_mono_ms() - __atomic_load_n(&c->cl_ok_ms, __ATOMIC_ACQUIRE);
	*ok = age <= stale_limit_ms(c);
	o = json_pack("{s:s,s:b,s:I,s:I,s:i}", "node", c->cl_node, "scheduler",
		      (int)__atomic_load_n(&c->cl_leader, __ATOMIC_ACQUIRE), "changes_seen", (json_int_t)c->cl_seen,
		      "changes_read_ms_ago", (json_int_t)age, "sync_ms", (int)c->cl_sync_ms);
	return o;
}
