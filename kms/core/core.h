/* The request path, in one place: authenticate -> resolve tenant -> policy decides ->
 * perform through the token and the store -> audit record made durable -> answer.
 * The HTTP layer hands over a parsed call and sends back what core_call produced; it
 * never checks permissions and never sees the token layer. */
#ifndef KMS_CORE_CORE_H
#define KMS_CORE_CORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "kms/base/err.h"
#include "kms/base/op.h"

#define KMS_VERSION "0.1.0"

struct core;
struct store;
struct p11;
struct audit;

struct core_call {
	enum kms_op op;
	const char *tenant;	 /* path parameter or NULL */
	const char *key;	 /* path parameter or NULL */
	const char *name;	 /* principal name path parameter or NULL */
	const char *variant;	 /* datakey: "plaintext" or "wrapped" */
	const char *version;	 /* key version path parameter or NULL */
	const char *token;	 /* presented API token or NULL (never logged) */
	const char *remote_addr; /* textual peer address */
	const char *request_id;	 /* client's X-Request-Id or NULL */
	json_t *body;		 /* parsed JSON object, or NULL for an empty body */
	const char *raw_body;	 /* the body as received (for error locations), or NULL */
	size_t raw_len;
	const char *format;	 /* ?format= query argument, or NULL */
	const char *mfa;	 /* X-Vault-MFA header ("totp:<code>" or "recovery:<code>"), or NULL (never logged) */
	const char *method;	 /* HTTP method and path as received, kept with a quorum request */
	const char *path;
	/* Set only when an approved quorum request is executed (ops_approval.c): the call
	 * then runs as its requester, without a token, with these approvals behind it. */
	const struct core_approved *approved;
	/* The client certificate, when one passed the TLS handshake's check against
	 * tls_client_ca; both NULL otherwise (docs/API.md "Client certificates"). */
	const char *cert_spki;	  /* 64 lower-case hex: SHA-256 of its SubjectPublicKeyInfo */
	const char *cert_subject; /* its subject DN as RFC 4514 text; NULL if it has none or it is too long */
	/* GET /v1/sys/health: Vault's ?activecode= and ?sealedcode= (the status when healthy,
	 * and when a check failed), or NULL */
	const char *health_activecode;
	const char *health_sealedcode;
	/* The caller can hold the answer without holding a thread: for datakey, encrypt,
	 * decrypt and rewrap, core_call then only queues the audit record and sets
	 * res->audit_seq, and the answer must not leave before core_settle says so. */
	bool defer_audit;
};

struct core_approved {
	const char *id;		 /* the approval request's id */
	int64_t requester_id;	 /* principal id of the requester */
	unsigned count;		 /* approvals recorded */
	const json_t *approvers; /* array of approver names, for the audit record */
};

struct core_result {
	int status;
	json_t *body;	      /* whole response body; owned by the caller (json_decref) */
	char *text;	      /* instead of body when set: a text/plain answer (metrics); free() */
	unsigned retry_after; /* seconds, for a Retry-After header (429); 0 = none */
	/* instead of body when has_file: a binary answer (a backup archive) read from file_fd
	 * (offset 0, file_size bytes); the caller owns and closes file_fd */
	bool has_file;
	int file_fd;
	uint64_t file_size;
	char request_id[65];
	/* Not 0: the audit record is queued, not yet durable (call->defer_audit). */
	uint64_t audit_seq;
	struct { /* core's own: the request's metrics, counted when it settles */
		int op, outcome, status, rc, authenticated;
		uint64_t t0;
	} settle_;
};

/* The core borrows store, token and audit; they outlive it. */
KMS_WUR kms_err core_new(struct store *st, struct p11 *p11, struct audit *au, struct core **out);
void core_free(struct core *c); /* accepts NULL; unloads cached KEK session objects */

/* Settings from the configuration that the core's rules need. */
struct core_options {
	int64_t phi_retention_floor; /* seconds; PHI tenants may not keep versions shorter */
	uint64_t max_encryptions;    /* per key version, before it is rotated (<= 2^32) */
	/* rate limits (docs/API.md "Rate limits"); 0 = none */
	double principal_rps, principal_burst;	   /* every call of one principal */
	const char *op_limits;			   /* "op=rate[:burst],..." per principal */
	double auth_fail_rps, auth_fail_burst;	   /* failed authentications per source */
	size_t audit_hmac_cache; /* entries of the audit-HMAC cache (hmaccache.h); 0 = off */
	unsigned mfa_max_failures;		   /* consecutive TOTP failures before lockout, 1..100; 0 = 5 */
	int64_t approval_ttl;	     /* seconds a quorum request stays pending; 0: 86400 */
	int64_t break_glass_max_ttl; /* longest break-glass grant in seconds; 0: 3600 */
	unsigned break_glass_reviews; /* admin reviews a grant needs; 0: 2 */
};
/* KMS_ERR_CONFIG for a malformed op_limits (validated with the configuration first). */
KMS_WUR kms_err core_configure(struct core *c, const struct core_options *o);

/* Installs the policy: the newest of the store's latest version and, when policy_file
 * is not empty, that file's document (which is then stored, so that the API shows it).
 * Neither: the built-in default. A file that does not compile -> KMS_ERR_CONFIG with
 * its line and reason. */
KMS_WUR kms_err core_policy_init(struct core *c, const char *policy_file);

/* Background work (scheduled destructions): one pass now, for tests and the scheduler
 * thread. Returns how many versions were destroyed. */
unsigned core_scheduler_tick(struct core *c);

/* Runs core_scheduler_tick every interval_s seconds on a thread of its own until
 * core_free. */
/* Approval requests a crash left "executing" are marked interrupted (never run again)
 * and audited as approval.interrupt (ops_approval.c). executor NULL: every such request,
 * at start before serving (one node). executor set (PostgreSQL): those of that run of
 * kmsd ("<node_id>/<run>"), which ended (cluster.c). */
void core_approvals_interrupted(struct core *c, const char *executor);
KMS_WUR kms_err core_scheduler_start(struct core *c, unsigned interval_s);

/* Several nodes on one PostgreSQL store (kms/core/cluster.c, docs/SCALE-OUT.md): follows
 * the changes other nodes make (in force here within sync_ms) and competes for the
 * scheduler lease. Nothing for a SQLite store. Stopped by core_free. */
KMS_WUR kms_err core_cluster_start(struct core *c, const char *store_uri, const char *node_id, unsigned sync_ms);
void core_cluster_stop(struct core *c);

/* Master-key rotation (kmsd master-key rotate; docs/KEY-LIFECYCLE.md). The caller made
 * the new master key in the token (p11_mk_create) and started the rotation in the store
 * (store_mk_begin), or found one in progress (store_mk_status: retiring != 0). */
typedef void (*core_mk_progress_fn)(void *ctx, uint64_t moved, uint64_t remaining);
struct core_mk_opts {
	size_t batch;		/* key versions per store transaction (0: 100) */
	const char *principal;	/* who runs it, for the recorded steps */
	unsigned test_delay_ms; /* tests only: a pause before each batch's commit */
	core_mk_progress_fn progress; /* after each batch, and once at the end; may be NULL */
	void *progress_ctx;
};
/* Rewraps every key version not destroyed from its master key onto `to`, batch by
 * batch, each batch one transaction recorded in master_key_events; then, once the
 * store shows no row under `from`, destroys `from` in the token and records it
 * (store_mk_finish). Resumable: run it again after any failure or kill. CONFLICT when
 * some rows cannot be moved (named in the log; `from` is kept). */
KMS_WUR kms_err core_mk_rotate_rows(struct store *st, struct p11 *p11, uint32_t from, uint32_t to,
				    const struct core_mk_opts *o);
/* store_mk_begin with the step recorded as o's. */
KMS_WUR kms_err core_mk_begin(struct store *st, const struct core_mk_opts *o, uint32_t from, uint32_t to);
/* Records one step (an event of master_key_events) with o's principal. */
KMS_WUR kms_err core_mk_record(struct store *st, const struct core_mk_opts *o, uint32_t version, const char *event,
			       const char *detail);

/* Always fills res (status and body), whatever happens. */
void core_call(struct core *c, const struct core_call *call, struct core_result *res);

/* For a result with audit_seq set: true once its record is durable (with wait: after
 * writing and syncing it, leading the group commit or joining the sync in flight);
 * false only without wait, while it is not. Once true, res is final and audit_seq 0:
 * the operation's answer, or, if the audit log failed first, 503 "audit log
 * unavailable" with the operation's answer (key material and all) dropped. True at
 * once for a result without audit_seq. */
bool core_settle(struct core *c, struct core_result *res, bool wait);
/* Writes and syncs the audit log up to seq: what a holder of deferred answers calls
 * before it looks at them again. KMS_ERR_AUDIT when the log failed first. */
KMS_WUR kms_err core_audit_wait(struct core *c, uint64_t seq);

/* Name rules shared with the route layer. */
int core_valid_tenant_name(const char *s);
int core_valid_name(const char *s);

/* Creates the first admin principal and its token (kmsd init). The token is written to
 * token_out (>= 90 bytes), for the caller to show once and wipe. */
KMS_WUR kms_err core_bootstrap_admin(struct store *st, const char *name, char *token_out, size_t cap);

/* The Prometheus text (version 0.0.4) of GET /v1/sys/metrics?format=prometheus, also
 * served by the separate metrics listener (metrics_listen): request, audit and token
 * counters, and the key-state gauges, which come from one store aggregate refreshed
 * at most once a second (CORE_GAUGE_REFRESH_MS), however often it is scraped. *text is
 * malloc'd (free()). Holds nothing secret: no key material, token, principal or
 * context value; tenant names appear as label values. */
#define CORE_GAUGE_REFRESH_MS 1000
KMS_WUR kms_err core_metrics_prometheus(struct core *c, char **text);

/* Authority-row MACs for a store used without a core (kmsd init): rows written through
 * st are MAC'd with the token's store MAC key. p11 must outlive the store's use; NULL
 * unwires. */
void core_rowmac_attach_p11(struct store *st, struct p11 *p11);

#endif
