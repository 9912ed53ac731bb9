/* Internals shared by the core's files. Not for other modules. */
#ifndef KMS_CORE_CORE_INT_H
#define KMS_CORE_CORE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "kms/core/core.h"
#include "kms/store/store.h"
#include "kms/core/metrics.h"
#include "kms/core/ratelimit.h"
#include "pkcs11/p11.h"
#include "policy/policy.h"
#include "policy/policy_doc.h"
#include "policy/policy_eval.h"

enum kver_state { KVER_ENABLED, KVER_DISABLED, KVER_PENDING, KVER_DESTROYED };

struct kver {
	uint32_t version;
	int64_t created;
	enum kver_state state;
	int64_t destroy_after;
	p11_key handle; /* 0 until first use */
	/* usage counting: slots taken and durably reserved, both absolute counts; read and
	 * updated atomically under the cache's read lock */
	uint64_t used, reserved;
};

struct kent {
	struct kent *next;
	struct kent *id_next; /* the chain of keys_by_id (meta.id never changes) */
	char *id; /* "tenant\x1fkey" */
	struct store_key meta;
	char tenant[STORE_NAME_MAX + 1];
	struct kver *vers; /* vers[i].version == i + 1 */
	size_t nvers;
	/* bumped by every change made here under the write lock, so that a refresh read
	 * from the store before such a change does not overwrite it (cluster.c) */
	uint64_t gen;
};

struct tent {
	struct tent *next;
	struct store_tenant t;
};

#define CORE_BUCKETS 4096

struct core {
	struct store *st;
	struct p11 *p11;
	struct audit *au;
	pthread_rwlock_t lock; /* guards the caches below */
	struct kent *keys[CORE_BUCKETS];
	struct kent *keys_by_id[CORE_BUCKETS]; /* the same entries, by meta.id (cluster.c) */
	struct tent *tenants[CORE_BUCKETS];
	pthread_mutex_t create_mu; /* one key creation or rotation at a time */
	pthread_mutex_t reserve_mu; /* one counter-block reservation at a time */
	/* Serving copies taken out of the cache, destroyed in the token only after a grace
	 * period, so that a request that fetched the handle just before finishes with it. */
	pthread_mutex_t grave_mu;
	struct grave { p11_key h; int64_t since; } *graves;
	size_t n_graves, cap_graves;
	struct core_options opt;
	/* rate limits: buckets by principal (and principal + operation), by source address */
	struct ratelimit *rl_principal, *rl_source;
	struct core_metrics met;
	double op_rps[KMS_OP__COUNT], op_burst[KMS_OP__COUNT];
	/* the policy in force: swapped whole under policy_mu, used through a reference */
	pthread_mutex_t policy_mu;
	struct policy_doc *policy;
	char *policy_text;
	/* scheduler thread */
	pthread_t sched;
	bool sched_running, sched_stop;
	unsigned sched_interval;
	pthread_mutex_t sched_mu;
	pthread_cond_t sched_cv;
	/* token hash -> principal, role, scope (authcache.h) */
	struct authcache *authc;
	/* token random bytes for DEKs and IVs, fetched a chunk at a time (rndpool.h) */
	struct rndpool *rnd;
	/* value fingerprint -> audit HMAC (hmaccache.h); NULL = off */
	struct hmaccache *hmacc;
	/* latest expiry of any break-glass grant: decrypts skip the store lookup after it */
	int64_t bg_until;
	/* key-state gauges for metrics, refreshed at most once a second (ops_report.c) */
	pthread_mutex_t gauge_mu;
	int64_t gauge_at_ms;
	struct store_tenant_states *gauge_tenants;
	size_t gauge_n;
	struct store_usage gauge_usage;
	/* Read-held from a change's start until its audit record is durable (core_call, the
	 * scheduler tick); write-held by a backup while it takes the store snapshot and the
	 * audit cut, so that every change in the one has its record in the other. Writers
	 * are preferred: a waiting backup is not starved by a steady stream of requests. */
	pthread_rwlock_t quiesce;
	/* /v1/sys/health (ops_health.c): the token and store checks' last results, run at
	 * most once a second; health_seen is the newest time the store has recorded */
	pthread_mutex_t health_mu;
	int64_t health_at_ms; /* monotonic ms of the last run; 0 = never */
	bool health_token_ok, health_store_ok;
	char health_token_err[256], health_store_err[256];
	int64_t health_seen;
	/* several nodes on one PostgreSQL store (cluster.c); cl_on false = a single node */
	bool cl_on, cl_running, cl_stop;
	bool cl_leader; /* holds the scheduler lease (atomic) */
	bool cl_alive; /* holds its run's lease (cluster thread, after start) */
	char cl_node[65];
	char cl_executor[STORE_EXECUTOR_MAX + 1]; /* this run: "<node_id>/<run>" (store_set_executor) */
	unsigned cl_sync_ms;
	int64_t cl_seen; /* the newest change applied (cluster thread only; read racily by health) */
	/* bumped (atomic) before another node's key or tenant change is applied: a key or
	 * tenant read from the store across a bump is not cached (core.c) */
	uint64_t cache_epoch;
	int64_t cl_ok_ms; /* monotonic ms of the last complete read of the change log (atomic) */
	struct store_watch *cl_watch;
	pthread_t cl_thread;
	pthread_mutex_t cl_mu;
};

/* What an operation sees: the authenticated principal and the resolved tenant. */
struct op_ctx {
	const struct core_call *call;
	struct store_principal who;
	enum policy_role role;
	int64_t *scope; /* tenant ids of a service */
	size_t n_scope;
	char accessor[STORE_ACCESSOR_MAX + 1];
	int64_t token_expires;
	int64_t token_last_used;
	bool have_tenant;
	struct store_tenant tenant;
	/* outputs */
	json_t *data;	   /* "data" of the answer */
	json_t *auth;	   /* "auth" of the answer (token creation only) */
	char *text;	   /* a text/plain answer instead of data (metrics); malloc'd */
	bool has_file;	   /* a binary answer instead of data (backup): file_fd, file_size */
	int file_fd;
	uint64_t file_size;
	int status;	   /* 0 = from the error, else forced (batch partial failure) */
	uint32_t version;  /* for the audit record */
	unsigned batch;
	/* policy decided per batch item (the document has context conditions) */
	struct policy_doc *item_policy;
	struct policy_input *pin;
	char reason[384];
	/* MFA step-up (ops_mfa.c) */
	struct core *core;  /* for a step-up asked by a batch item's verdict */
	bool mfa_verified;  /* a code was verified (and its step persisted) for this request */
	bool mfa_tried;	    /* a check ran (once per request, success or not) */
	char mfa_detail[192]; /* why the step-up failed, for the answer */
	/* quorum and break-glass (ops_approval.c, ops_breakglass.c) */
	bool deferred;	     /* a pending approval request was made instead of running the op */
	json_t *audit_more;  /* members added to the audit record (owned) */
	char bg_grant[33];   /* the caller's break-glass grant in force here, or "" */
	bool bg_used;	     /* the grant allowed what the policy refused */
	bool deny_detail;    /* a DENIED from the operation may say why (self-approval) */
	/* how the caller authenticated ("token", "cert", "cert+token"), and for a refused
	 * client certificate the message its answer carries */
	const char *auth_method;
	char auth_detail[128];
	/* the operation the policy decided on: the call's, or a refinement of it
	 * (core_policy_op); an operation that re-checks its body under its lock compares */
	enum kms_op policy_op;
};

/* A snapshot of a key's serving state, taken under the cache lock. */
struct keyref {
	int64_t key_id;
	uint32_t latest, min_dec, min_enc;
	const char *tenant, *name; /* point into the call's path */
};

int64_t core_now(void);
/* GET /v1/sys/health (ops_health.c): fills res (status and body); needs no principal. */
void core_health(struct core *c, const struct core_call *call, struct core_result *res);
KMS_WUR kms_err core_tenant_lookup(struct core *c, const char *name, struct store_tenant *out);
KMS_WUR kms_err core_key_ref(struct core *c, const char *tenant, const char *key, struct keyref *out);
KMS_WUR kms_err core_kek(struct core *c, const struct keyref *k, uint32_t version, p11_key *out);
KMS_WUR kms_err core_key_read_json(struct core *c, const char *tenant, const char *key, json_t **out);
KMS_WUR kms_err core_key_insert(struct core *c, const char *tenant, const struct store_key *meta);
KMS_WUR kms_err core_key_add_version(struct core *c, const char *tenant, const char *key,
				     uint32_t version, int64_t created);
void core_tenant_insert(struct core *c, const struct store_tenant *t); /* insert or replace */
/* Replaces the cached metadata of a key after a store update. */
void core_key_meta_set(struct core *c, const char *tenant, const struct store_key *meta);
/* Puts a key's store row and versions (read by the caller) into the cache, as a new
 * entry or over the cached one: versions added, states and metadata replaced, serving
 * copies of versions no longer enabled retired; usage counters kept. gen: the entry's
 * generation when the caller started reading (KMS_ERR_CONFLICT when it moved since:
 * read again); UINT64_MAX: any. */
KMS_WUR kms_err core_key_apply(struct core *c, const char *tenant, const struct store_key *meta,
			       const struct store_version *vs, size_t nv, uint64_t gen);
/* Reads a cached key again from the store (nothing when not cached). */
KMS_WUR kms_err core_key_refresh(struct core *c, int64_t key_id);
/* Reads cached tenants again: the one with tenant_id, or all when 0. */
void core_tenants_refresh(struct core *c, int64_t tenant_id);
/* Installs the newest stored policy version (another node wrote it). */
KMS_WUR kms_err core_policy_reload(struct core *c);
/* cluster.c: whether this node runs the scheduler's cluster-wide jobs (always true for
 * a single node), and whether it is one of several. */
bool core_cluster_leader(struct core *c);
bool core_cluster_on(const struct core *c);
/* KMS_ERR_STORE when this node has not read the change log lately (fail closed). */
KMS_WUR kms_err core_cluster_check(struct core *c);
/* The "cluster" member of the health answer (NULL for one node); *ok false when stale. */
json_t *core_cluster_health(struct core *c, bool *ok);
/* Records a version's new state in the cache; unloads its KEK unless enabled. */
void core_version_state_set(struct core *c, const char *tenant, const char *key, uint32_t version,
			    enum kver_state st, int64_t destroy_after);
enum kver_state core_state_parse(const char *s);
const char *core_state_name(enum kver_state st);
/* A new tenant KEK for a version row: v's blob (generated in the token, wrapped under
 * the store's active master key), blob_len, mk_version and MAC; v->version must be set. */
KMS_WUR kms_err core_kek_row_new(struct core *c, const char *tenant, const char *key, struct store_version *v);
/* After a CONFLICT from inserting a row wrapped under master key `used`: whether a
 * master-key rotation made another version active meanwhile (then wrap again, retry). */
bool core_mk_moved(struct core *c, uint32_t used);
KMS_WUR kms_err core_row_mac(struct core *c, const char *tenant, const char *key,
			     const struct store_version *v, uint8_t mac[STORE_MAC_LEN]);
KMS_WUR kms_err core_row_mac_p11(struct p11 *p11, const char *tenant, const char *key,
				 const struct store_version *v, uint8_t mac[STORE_MAC_LEN]);
/* Relays master-key rotation steps recorded in the store (by kmsd master-key rotate,
 * another process) into the audit log; called by the scheduler. */
void core_mk_relay(struct core *c);

/* operations */
KMS_WUR kms_err op_tenant_create(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_tenant_read(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_tenant_list(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_principal_create(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_principal_read(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_principal_list(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_token_create(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_token_revoke(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_token_lookup_self(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_token_lookup_accessor(struct core *c, struct op_ctx *x);
#define CORE_TOKEN_TOUCH_SECONDS 60
#define CORE_BATCH_MAX 1000 /* items in one batch_input */
KMS_WUR kms_err op_key_create(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_read(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_list(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_rotate(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_datakey(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_encrypt(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_decrypt(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_rewrap(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_config(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_revoke(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_restore(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_version_disable(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_version_enable(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_history(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_version_schedule_destroy(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_version_cancel_destroy(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_legal_hold(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_key_trim(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_sys_backup(struct core *c, struct op_ctx *x); /* ops_backup.c */
KMS_WUR kms_err op_tenant_config(struct core *c, struct op_ctx *x);
/* Created time of version v+1 (when v stopped being used for encryption), or 0. */
int64_t core_superseded_at(struct core *c, const char *tenant, const char *key, uint32_t v);
/* Whether destroying version v of key k at time `when` is allowed; CONFLICT names the
 * rule that refuses and, for retention, the date it becomes possible. */
KMS_WUR kms_err core_destruction_allowed(struct core *c, const struct store_tenant *t,
					 const struct store_key *k, uint32_t v, int64_t when);
#define CORE_SCHEDULER_PRINCIPAL "kmsd-scheduler"
/* The store row of the key named by the call in its tenant (NOT_FOUND names both). */
KMS_WUR kms_err core_key_row(struct core *c, struct op_ctx *x, struct store_key *out);
/* A key version from the path: decimal 1..2^32-1, no sign, no leading zero. */
KMS_WUR kms_err core_parse_version(const char *s, uint32_t *out);
/* Fills ev with the principal, the time, and the body's "reason" (required when need). */
KMS_WUR kms_err core_event_for(struct op_ctx *x, json_t *body, const char *event, uint32_t version, bool need,
			       struct store_event *ev);
#define CORE_HANDLE_GRACE 10 /* seconds a retired serving copy lives on */
/* Destroys retired serving copies older than the grace period (all when force). */
void core_graves_reap(struct core *c, bool force);

/* Adds a version to a key (the one rotation routine: API, schedule by age, usage limit).
 * expect_latest != 0: only if that is still the latest version, else nothing is done and
 * *newv is the current latest. Serialised; durable before the cache uses it. */
KMS_WUR kms_err core_rotate_key(struct core *c, const char *tenant, const char *key, uint32_t expect_latest,
				uint32_t *newv);
/* Takes one encryption slot of a version, reserving a counter block in the store first
 * when needed. CONFLICT when the version has reached its usage limit. */
KMS_WUR kms_err core_take_slot(struct core *c, const struct keyref *k, uint32_t version);
/* An audit record for something kmsd did by itself (scheduler, usage limit). */
void core_audit_internal(struct core *c, enum kms_op op, const char *tenant, const char *key, uint32_t version,
			 const char *outcome, int status, const char *reason);
/* Per batch item policy check (x->item_policy set): KMS_OK or KMS_ERR_DENIED. */
KMS_WUR kms_err core_policy_item(struct op_ctx *x, json_t *item);
KMS_WUR kms_err op_policy_read(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_audit_hash(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_metrics(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_compliance(struct core *c, struct op_ctx *x); /* ops_report.c */
/* The audit record's hashed "encryption_context" and "associated_data" (and "items"
 * for a batch) of a data-plane request body, in a new object for audit_record.extra. */
KMS_WUR kms_err core_audit_hashes(struct core *c, const json_t *body, json_t **extra);
/* Adds what the call's answer says to extra: each batch item's "outcome" (allow, deny,
 * error, or none when the batch failed whole), "version" (the key version the item
 * used, null if it failed) and, for rewrap, "from_version"; a single rewrap's
 * "from_version". */
KMS_WUR kms_err core_audit_results(enum kms_op op, const json_t *body, const json_t *data,
				   json_t *extra);
KMS_WUR kms_err op_version_receipt(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_policy_write(struct core *c, struct op_ctx *x);
/* API token authentication: fills x->who, role, scope, accessor. */
KMS_WUR kms_err core_authenticate_token(struct core *c, const char *token, struct op_ctx *x);
/* The caller's identity from its client certificate and/or token (ops_certs.c; the
 * rules are in docs/API.md "Client certificates"). */
KMS_WUR kms_err core_authenticate(struct core *c, const struct core_call *call, struct op_ctx *x);
KMS_WUR kms_err op_principal_cert_add(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_principal_cert_list(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_principal_cert_revoke(struct core *c, struct op_ctx *x);

/* ---- MFA step-up (ops_mfa.c) */
#define CORE_MFA_MAX_FAILURES_DEFAULT 5
/* The principal's last successful TOTP check (unix seconds), 0 when never or not
 * active; for the policy's mfa_max_age. A store error gives 0 (the condition fails). */
int64_t core_mfa_at(struct core *c, int64_t principal_id);
/* Checks the request's X-Vault-MFA code for x's principal, once per request: KMS_OK
 * (the step, or the used recovery code, is persisted before this returns) or
 * KMS_ERR_DENIED with the reason in x->mfa_detail; store/token errors as they come. */
KMS_WUR kms_err core_mfa_stepup(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_enroll(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_confirm(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_status(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_verify(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_unlock(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_mfa_reset(struct core *c, struct op_ctx *x);
/* ---- quorum approvals (ops_approval.c) and break-glass (ops_breakglass.c) ---- */
/* The requester of an approved request as the caller of call->approved's execution. */
KMS_WUR kms_err core_approval_identity(struct core *c, struct op_ctx *x);
/* The verdict allows with require_quorum > 0: for an approved execution, KMS_OK when the
 * approvals behind it still suffice; otherwise records a pending request (x->deferred,
 * 202 with its id in x->data) or refuses an operation that cannot wait for approvals. */
KMS_WUR kms_err core_quorum_gate(struct core *c, struct op_ctx *x, const struct policy_verdict *v);
/* Marks pending requests past their expiry expired, each audited. */
void core_approvals_expire(struct core *c);
/* An audit record for an approval or break-glass event (not a request's own record). */
void core_audit_event(struct core *c, const char *operation, const char *principal, const char *tenant,
		      const char *key, const char *outcome, int status, const char *reason, json_t *extra);
/* Whether x's principal holds a break-glass grant in force for the call's tenant and
 * key (a decrypt or rewrap); fills x->bg_grant. A store failure counts as none. */
bool core_breakglass_grant(struct core *c, struct op_ctx *x);
/* Loads the latest grant expiry at start. */
void core_breakglass_init(struct core *c);
KMS_WUR kms_err op_approval_list(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_approval_read(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_approval_approve(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_approval_deny(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_breakglass_activate(struct core *c, struct op_ctx *x);
KMS_WUR kms_err op_breakglass_list(struct core *c, struct op_ctx *x);
/* Grants newest first (at most 1000) as GET /v1/sys/break-glass shows them: *ids their
 * ids, *grants the objects (both new arrays, the caller's); with unreviewed_only, only
 * those with fewer reviews than break_glass_reviews. */
KMS_WUR kms_err core_breakglass_grants(struct core *c, bool unreviewed_only, json_t **ids, json_t **grants);
KMS_WUR kms_err op_breakglass_review(struct core *c, struct op_ctx *x);

/* Authority-row MACs (rowmac.c): start wires the store's MAC and integrity callbacks
 * to this core and MACs older rows once (trust on first use, audited); stop unwires
 * them (core_free). */
KMS_WUR kms_err core_rowmac_start(struct core *c);
void core_rowmac_stop(struct core *c);
/* The operation the policy decides on for this call (kms/core/policy_op.c): the route's
 * operation, or its refinement when the body does something that needs more care
 * (lowering min_decryption_version, releasing a legal hold). Pure lookups, no change. */
enum kms_op core_policy_op(struct core *c, const struct op_ctx *x);

/* After policy_eval refused a request: if only a stale TOTP session (mfa_max_age) refused
 * it, checks the request's X-Vault-MFA code (a new session) and on success replaces
 * *verdict with the fresh decision; without a code returns 401 with x->mfa_detail saying
 * how to start a session. KMS_OK and *verdict unchanged when it does not apply. */
KMS_WUR kms_err core_mfa_session(struct core *c, struct op_ctx *x, const struct policy_doc *doc,
				 struct policy_input *pin, struct policy_verdict *verdict);

#endif
