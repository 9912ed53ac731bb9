/* Metadata store: SQLite (WAL, synchronous=FULL, foreign keys on) or, for several
 * nodes, PostgreSQL (store_open on a postgresql:// URI; docs/ARCHITECTURE.md "The store
 * and its two backends"), versioned schema migrated forward at open. Holds no secret in the clear: KEK versions are KWP blobs
 * under the token's master key, API tokens are SHA-256 hashes.
 *
 * Thread safety: one struct store may be used from any number of threads; calls are
 * serialised inside. Every function returns KMS_OK or an error with the detail set;
 * KMS_ERR_STORE for database failures (the database's message is logged, not returned).
 * Names are passed as NUL-terminated strings; output structs are filled by value. */
#ifndef KMS_STORE_STORE_H
#define KMS_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define STORE_SCHEMA_VERSION 13
#define STORE_NAME_MAX 128  /* tenant, key and principal names, excluding the NUL */
#define STORE_BLOB_MAX 64
#define STORE_MAC_LEN 32
#define STORE_HASH_LEN 32
#define STORE_ACCESSOR_MAX 64

struct store;

struct store_tenant {
	int64_t id;
	char name[STORE_NAME_MAX + 1];
	char retention[16]; /* "phi" or "non-phi" */
	int64_t created;    /* unix seconds */
	int64_t retention_period; /* seconds a superseded version is kept (phi) */
	int64_t min_destroy_wait; /* shortest waiting period before destruction, seconds */
	int legal_hold;		  /* blocks every destruction in the tenant */
};

struct store_key {
	int64_t id;
	int64_t tenant_id;
	char name[STORE_NAME_MAX + 1];
	char type[32]; /* "aes256-gcm96" */
	int64_t created;
	uint32_t latest_version;
	uint32_t min_decryption_version;
	uint32_t min_encryption_version; /* 0 = latest */
	int deletion_allowed;
	int64_t auto_rotate_period; /* seconds, 0 = off */
	int revoked;		    /* every version unusable until restored */
	int legal_hold;		    /* blocks destruction of any version */
};

struct store_version {
	uint32_t version;
	uint32_t mk_version; /* master key version that wrapped blob */
	uint8_t blob[STORE_BLOB_MAX];
	size_t blob_len;
	uint8_t mac[STORE_MAC_LEN]; /* HMAC over the row, from the token */
	int64_t created;
	char state[24];	      /* STORE_STATE_*; "enabled" for a new row */
	int64_t destroy_after; /* unix seconds, pending_destruction only */
	uint64_t enc_reserved; /* encryptions reserved so far (counter blocks) */
};

/* Stored state of a key version. "active" and "decrypt-only" are not stored: they
 * follow from the version number against latest_version and min_encryption_version. */
#define STORE_STATE_ENABLED "enabled"
#define STORE_STATE_DISABLED "disabled"
#define STORE_STATE_PENDING "pending_destruction"
#define STORE_STATE_DESTROYED "destroyed"
#define STORE_REASON_MAX 512

/* One entry of a key's history: every transition, with who, when and why. */
struct store_event {
	uint32_t version; /* 0 = the key as a whole */
	char event[32];	  /* "config", "disable", "enable", "revoke", "restore", ... */
	char principal[STORE_NAME_MAX + 1];
	char reason[STORE_REASON_MAX + 1];
	int64_t time;
};

struct store_principal {
	int64_t id;
	char name[STORE_NAME_MAX + 1];
	char role[16]; /* "admin", "service" or "auditor" */
	int64_t created;
};

struct store_token {
	char accessor[STORE_ACCESSOR_MAX + 1];
	int64_t principal_id;
	uint8_t hash[STORE_HASH_LEN];
	int64_t created;
	int64_t expires; /* 0 = never */
	int revoked;
	int64_t last_used; /* unix seconds, kept to the minute; 0 = never */
};

/* Opens (creating if absent, mode 0600) and migrates. A store whose schema is newer
 * than STORE_SCHEMA_VERSION -> KMS_ERR_CONFIG.
 *
 * A path starting with postgresql:// or postgres:// is a libpq connection URI instead:
 * the store is then that database's current schema (search_path), migrated to its own
 * PostgreSQL schema (kms/store/schema_pg.h) under an advisory lock, so several nodes
 * may open it at once. A schema holding other tables is refused (KMS_ERR_CONFIG), an
 * unreachable server is KMS_ERR_STORE. Writer transactions take one cluster-wide
 * advisory lock (as BEGIN IMMEDIATE on SQLite); a lost connection fails that call with
 * KMS_ERR_STORE and is re-established by the next. */
KMS_WUR kms_err store_open(const char *path, struct store **out);
void store_close(struct store *s); /* accepts NULL */

enum store_backend { STORE_BACKEND_SQLITE, STORE_BACKEND_PG };
/* path_or_uri as a log line may show it: a URI without its password or parameters. */
void store_display_name(const char *path_or_uri, char *out, size_t cap);
enum store_backend store_backend(const struct store *s);

/* meta: small key/value facts such as "initialized" */
KMS_WUR kms_err store_meta_get(struct store *s, const char *k, char *out, size_t cap); /* NOT_FOUND */
KMS_WUR kms_err store_meta_set(struct store *s, const char *k, const char *v);

/* tenants: create -> CONFLICT if the name exists */
KMS_WUR kms_err store_tenant_create(struct store *s, const char *name, const char *retention,
				    int64_t now, int64_t *id_out);
KMS_WUR kms_err store_tenant_get(struct store *s, const char *name, struct store_tenant *out);
/* *out is a malloc'd array of *n tenants (free()), sorted by name. */
KMS_WUR kms_err store_tenant_list(struct store *s, struct store_tenant **out, size_t *n);

/* keys: create inserts the key row (latest_version 1) and version 1 atomically;
 * CONFLICT if (tenant, name) exists, NOT_FOUND if the tenant does not, INVALID unless
 * v1->version is 1. Version rows keep v->created as given (here and in rotate). */
KMS_WUR kms_err store_key_create(struct store *s, int64_t tenant_id, const char *name,
				 const char *type, int64_t now, const struct store_version *v1,
				 int64_t *key_id_out);
/* latest_version as committed now (no cache, no transaction). */
KMS_WUR kms_err store_key_latest(struct store *s, int64_t key_id, uint32_t *latest);
KMS_WUR kms_err store_key_get(struct store *s, int64_t tenant_id, const char *name,
			      struct store_key *out); /* NOT_FOUND */
/* *names: malloc'd array of *n malloc'd strings, sorted; free with store_names_free.
 * A tenant without keys gives *n 0 and *names NULL; an unknown tenant NOT_FOUND. */
KMS_WUR kms_err store_key_list(struct store *s, int64_t tenant_id, char ***names, size_t *n);
void store_names_free(char **names, size_t n);

/* Adds version v->version, which must be the key's latest_version + 1 (else CONFLICT,
 * nothing written), and moves latest_version to it, in one transaction. */
KMS_WUR kms_err store_key_rotate(struct store *s, int64_t key_id, const struct store_version *v);
KMS_WUR kms_err store_version_get(struct store *s, int64_t key_id, uint32_t version,
				  struct store_version *out); /* NOT_FOUND */
/* All versions of a key, ascending (malloc'd, free()); NOT_FOUND for an unknown key. */
KMS_WUR kms_err store_version_list(struct store *s, int64_t key_id, struct store_version **out,
				   size_t *n);

/* Key lifecycle. Each call changes the row and appends ev to the key's history in one
 * transaction, or changes nothing. */

/* Sets min_decryption_version, min_encryption_version, deletion_allowed and
 * auto_rotate_period from cfg. */
KMS_WUR kms_err store_key_config(struct store *s, int64_t key_id, const struct store_key *cfg,
				 const struct store_event *ev);
/* Sets revoked (0/1); CONFLICT if the key already is in that state. */
KMS_WUR kms_err store_key_set_revoked(struct store *s, int64_t key_id, int revoked,
				      const struct store_event *ev);
/* Moves a version from state `from` to `to` (compare-and-set: CONFLICT, naming the
 * current state, when it is not in `from`). destroy_after is stored with it. */
/* Moves versions[0..n) from from[i] to `to` (with destroy_after), one event each (ev
 * with its version set per row), all in one transaction: every version changes, or
 * none (KMS_ERR_CONFLICT naming the first that was no longer in its state). */
KMS_WUR kms_err store_versions_transition(struct store *s, int64_t key_id, size_t n, const uint32_t *versions,
					  const char *const *from, const char *to, int64_t destroy_after,
					  const struct store_event *ev);
KMS_WUR kms_err store_version_transition(struct store *s, int64_t key_id, uint32_t version,
					 const char *from, const char *to, int64_t destroy_after,
					 const struct store_event *ev);
/* Sets a key's legal hold (0/1); CONFLICT if it already is in that state. */
KMS_WUR kms_err store_key_set_legal_hold(struct store *s, int64_t key_id, int hold,
					 const struct store_event *ev);
/* Sets a tenant's retention_period, min_destroy_wait and legal_hold. */
KMS_WUR kms_err store_tenant_config(struct store *s, int64_t tenant_id, const struct store_tenant *cfg);
/* An erasure receipt (store_receipt_put): the signed statement, its signature, when. */
struct store_receipt {
	const char *text;
	const uint8_t *sig;
	size_t sig_len;
	int64_t now;
};
/* Destroys a version that is pending destruction: state destroyed, the wrapped KEK and
 * its MAC overwritten (secure_delete zeroes the old cell), and, when receipt is not
 * NULL, its erasure receipt stored, all in one transaction (nobody sees the version
 * destroyed without its receipt); then the WAL is checkpointed and truncated so that no
 * older page image keeps the blob. CONFLICT if the version is not pending destruction
 * (or already has a receipt); nothing is changed then. */
KMS_WUR kms_err store_version_destroy(struct store *s, int64_t key_id, uint32_t version,
				      const struct store_event *ev, const struct store_receipt *receipt);

struct store_due {
	int64_t key_id;
	uint32_t version;
	int64_t destroy_after;
	char tenant[STORE_NAME_MAX + 1];
	char key[STORE_NAME_MAX + 1];
};
/* Versions pending destruction whose destroy_after <= now (malloc'd, free()). */
KMS_WUR kms_err store_due_destructions(struct store *s, int64_t now, struct store_due **out, size_t *n);

/* Reserves the next `block` encryptions of a version: enc_reserved grows by block,
 * durably, unless that would pass `limit` (then CONFLICT "usage limit", nothing
 * written). *upto receives the new enc_reserved. A crash may skip reserved counts but
 * never hands them out twice. */
KMS_WUR kms_err store_version_reserve(struct store *s, int64_t key_id, uint32_t version, uint64_t block,
				      uint64_t limit, uint64_t *upto);

struct store_rotate_due {
	char tenant[STORE_NAME_MAX + 1];
	char key[STORE_NAME_MAX + 1];
	uint32_t latest;
};
/* Keys with auto_rotate_period > 0 whose latest version is older than that at `now`,
 * not revoked (malloc'd, free()). */
KMS_WUR kms_err store_rotations_due(struct store *s, int64_t now, struct store_rotate_due **out, size_t *n);

/* Erasure receipts: one per destroyed key version, the signed statement of what was
 * destroyed (text is JSON). get: NOT_FOUND when none; *text and *sig malloc'd (free()). */
KMS_WUR kms_err store_receipt_put(struct store *s, int64_t key_id, uint32_t version, const char *text,
				  const uint8_t *sig, size_t sig_len, int64_t now);
KMS_WUR kms_err store_receipt_get(struct store *s, int64_t key_id, uint32_t version, char **text,
				  uint8_t **sig, size_t *sig_len);

/* Policy documents, one row per version. put: CONFLICT unless version is greater than
 * every stored one. latest: NOT_FOUND when none was ever stored; *text is malloc'd
 * (free()). */
KMS_WUR kms_err store_policy_put(struct store *s, int64_t version, const char *text,
				 const char *principal, int64_t now);
KMS_WUR kms_err store_policy_latest(struct store *s, int64_t *version, char **text);

/* The key's history, oldest first (malloc'd, free()). */
KMS_WUR kms_err store_key_events(struct store *s, int64_t key_id, struct store_event **out,
				 size_t *n);

/* Master keys (schema 7). Every key_versions row names the master key version that
 * wrapped its blob (mk_version). The table master_keys says which version new blobs
 * are wrapped under (active) and which one a rotation is moving blobs away from
 * (retiring); no row at all means a store that never saw a rotation, whose active
 * version is 1. Once a rotation began, a version row whose mk_version is not the active
 * one cannot be added (store_key_create and store_key_rotate answer CONFLICT "key
 * versions are now wrapped under master key version N": wrap again and retry). */
#define STORE_MK_ACTIVE "active"
#define STORE_MK_RETIRING "retiring"
#define STORE_MK_DESTROYED "destroyed"
#define STORE_MK_COUNTS_MAX 16

/* One step of a master-key rotation, kept in master_key_events (kmsd relays them into
 * the audit log). */
struct store_mk_event {
	int64_t id; /* set by the store */
	int64_t time;
	uint32_t mk_version;
	char event[32];
	char principal[STORE_NAME_MAX + 1];
	char detail[STORE_REASON_MAX + 1];
};

struct store_mk_status {
	uint32_t active;   /* new blobs are wrapped under this version */
	uint32_t retiring; /* 0, or the version a rotation in progress moves blobs away from */
	uint32_t highest;  /* the highest version ever recorded (or active) */
	struct {
		uint32_t mk_version;
		uint64_t rows; /* key versions not destroyed, wrapped under mk_version */
	} counts[STORE_MK_COUNTS_MAX];
	size_t n_counts;	 /* ascending by mk_version */
	uint64_t destroyed_rows; /* destroyed key versions (no blob, under no master key) */
};

/* A key version row with its place, for rewrapping. */
struct store_mk_row {
	int64_t key_id;
	char tenant[STORE_NAME_MAX + 1];
	char key[STORE_NAME_MAX + 1];
	struct store_version v;
};

KMS_WUR kms_err store_mk_active(struct store *s, uint32_t *out);
KMS_WUR kms_err store_mk_status(struct store *s, struct store_mk_status *out);
/* Starts a rotation to `version` in one transaction: the active version becomes
 * retiring, `version` active, ev is appended. CONFLICT if a rotation is in progress
 * (a retiring version exists) or version is not above every known version; nothing is
 * written then. */
KMS_WUR kms_err store_mk_begin(struct store *s, uint32_t version, const struct store_mk_event *ev);
/* Up to max key versions, not destroyed, whose mk_version is not `to`, after the row
 * (after_key, after_version) in (key_id, version) order; out has room for max. */
KMS_WUR kms_err store_mk_pending(struct store *s, uint32_t to, int64_t after_key, uint32_t after_version,
				 size_t max, struct store_mk_row *out, size_t *n);
/* One transaction: rows[i] gets nv[i]'s blob, mac and mk_version if it still has the
 * mk_version and blob it was read with and is not destroyed (compare-and-set: a row
 * changed meanwhile is left alone and not counted); ev is appended. *done: rows changed. */
KMS_WUR kms_err store_mk_rewrap(struct store *s, const struct store_mk_row *rows, const struct store_version *nv,
				size_t n, const struct store_mk_event *ev, size_t *done);
/* Key versions, not destroyed, not wrapped under `to`. */
KMS_WUR kms_err store_mk_pending_count(struct store *s, uint32_t to, uint64_t *n);
/* Key versions, not destroyed, wrapped under `version`. */
KMS_WUR kms_err store_mk_rows(struct store *s, uint32_t version, uint64_t *n);
/* Ends a rotation: the retiring `version` becomes destroyed, ev is appended. CONFLICT if
 * any key version not destroyed is still wrapped under it, or it is not retiring. */
KMS_WUR kms_err store_mk_finish(struct store *s, uint32_t version, const struct store_mk_event *ev);
KMS_WUR kms_err store_mk_event_add(struct store *s, const struct store_mk_event *ev);
/* Events with id > after_id, oldest first, at most max (malloc'd, free()). */
KMS_WUR kms_err store_mk_events_since(struct store *s, int64_t after_id, size_t max,
				      struct store_mk_event **out, size_t *n);

/* principals: role "admin" or "service"; tenant_ids are the tenants a service may
 * use (ignored for admins). CONFLICT if the name exists, NOT_FOUND for an unknown
 * tenant id, INVALID for one listed twice; nothing is written on any error. */
KMS_WUR kms_err store_principal_create(struct store *s, const char *name, const char *role,
				       const int64_t *tenant_ids, size_t n_tenants, int64_t now,
				       int64_t *id_out);
KMS_WUR kms_err store_principal_get(struct store *s, const char *name, struct store_principal *out);
KMS_WUR kms_err store_principal_get_id(struct store *s, int64_t id, struct store_principal *out);
/* Tenant ids of a principal, ascending (malloc'd, free(); *n may be 0 with *out NULL). */
KMS_WUR kms_err store_principal_tenants(struct store *s, int64_t principal_id, int64_t **out,
					size_t *n);
/* Principals, sorted by name (malloc'd, free()). */
KMS_WUR kms_err store_principal_list(struct store *s, struct store_principal **out, size_t *n);

/* API tokens: looked up by accessor (public part); CONFLICT on a duplicate accessor,
 * NOT_FOUND for an unknown principal. Revoking twice is not an error. */
KMS_WUR kms_err store_token_create(struct store *s, const struct store_token *t);
KMS_WUR kms_err store_token_get(struct store *s, const char *accessor, struct store_token *out);
KMS_WUR kms_err store_token_revoke(struct store *s, const char *accessor); /* NOT_FOUND */
/* Sets last_used to when if it is older (no row changed is not an error). */
KMS_WUR kms_err store_token_touch(struct store *s, const char *accessor, int64_t when);

/* Changes to the store as seen from this process, for caches of its rows: `local`
 * counts rows this connection inserted, updated or deleted (any table, any store_*
 * call, bookkeeping excepted: store_token_touch and store_meta_set), `external` is SQLite's
 * data_version, which moves when another connection (kmsctl, a second kmsd) commits.
 * A cache that tags what it read with the stamp taken *before* reading it, and drops
 * everything when the stamp differs, never serves a row older than the last write. */
struct store_stamp {
	int64_t local;
	int64_t external;
};
KMS_WUR kms_err store_change_stamp(struct store *s, struct store_stamp *out);
/* PRAGMA data_version statements store_change_stamp has run (SQLite): only after a
 * commit somewhere, since the wal-index header says when there was none. For tests. */
uint64_t store_change_stamp_queries(struct store *s);

/* MFA (TOTP) state of a principal, one row each (docs/API.md "MFA"). The seed is only
 * ever here sealed by the token (p11_mfa_seal); recovery is the text form of
 * totp_recovery_encode. */
#define STORE_MFA_SEALED_MAX 128
#define STORE_MFA_RECOVERY_MAX 1023
struct store_mfa {
	int64_t principal_id;
	char state[16]; /* "pending" until confirmed with a first code, then "active" */
	uint8_t sealed_seed[STORE_MFA_SEALED_MAX];
	size_t sealed_len;
	uint64_t last_step; /* last accepted TOTP step; 0 = none */
	uint32_t failures;  /* consecutive failed checks */
	bool locked;
	char recovery[STORE_MFA_RECOVERY_MAX + 1];
	int64_t mfa_at; /* last successful check, unix seconds; 0 = never */
	int64_t created;
	/* a re-enrolment of an active enrolment, waiting for its first code; pending_len 0 = none */
	uint8_t pending_seed[STORE_MFA_SEALED_MAX];
	size_t pending_len;
	char pending_recovery[STORE_MFA_RECOVERY_MAX + 1];
};
KMS_WUR kms_err store_mfa_get(struct store *s, int64_t principal_id, struct store_mfa *out); /* NOT_FOUND */
/* Creates or replaces the principal's enrolment (failures and lock cleared; the stored
 * last_step is kept if greater). NOT_FOUND for an unknown principal. */
KMS_WUR kms_err store_mfa_put(struct store *s, const struct store_mfa *m, int64_t now);
/* Stores a re-enrolment beside an active, unlocked enrolment (which stays in force until
 * the new seed is confirmed). CONFLICT otherwise. */
KMS_WUR kms_err store_mfa_put_pending(struct store *s, int64_t principal_id, const uint8_t *sealed,
				      size_t sealed_len, const char *recovery, int64_t now);
/* Records an accepted step: only if step > the stored last_step and the principal is
 * not locked (and, unless activate, the enrolment is active), atomically; clears the
 * failures and sets mfa_at = now. activate: a pending enrolment becomes active, or a
 * pending re-enrolment replaces the active seed and recovery codes. CONFLICT when the
 * step was not greater (replay, or a race with another request). */
KMS_WUR kms_err store_mfa_accept_step(struct store *s, int64_t principal_id, uint64_t step, bool activate,
				      int64_t now);
/* Replaces the recovery set old_set by new_set (one code marked used) if the row still
 * holds old_set, is active and not locked; clears failures, sets mfa_at. CONFLICT otherwise. */
KMS_WUR kms_err store_mfa_use_recovery(struct store *s, int64_t principal_id, const char *old_set,
				       const char *new_set, int64_t now);
/* One more consecutive failure; locks when failures reach limit. Returns both after. */
KMS_WUR kms_err store_mfa_fail(struct store *s, int64_t principal_id, unsigned limit, int64_t now,
			       uint32_t *failures, bool *locked);
KMS_WUR kms_err store_mfa_unlock(struct store *s, int64_t principal_id, int64_t now); /* NOT_FOUND */
KMS_WUR kms_err store_mfa_delete(struct store *s, int64_t principal_id);	   /* NOT_FOUND */
/* ---- quorum approvals and break-glass (schema step 9) ---- */

#define STORE_APPROVAL_ID_LEN 32 /* hex */
#define STORE_NOTE_MAX 1024

/* Request states: pending -> executing -> approved-executed | failed; pending -> denied
 * | expired. "executing" is held by exactly one caller (compare-and-set in the store). */
struct store_approval {
	char id[STORE_APPROVAL_ID_LEN + 1];
	int64_t requester_id;
	char requester[STORE_NAME_MAX + 1];
	char operation[64];
	char tenant[STORE_NAME_MAX + 1]; /* "" when the request names none */
	char key[STORE_NAME_MAX + 1];
	char version[16];
	char *request; /* JSON text to execute; malloc'd (NULL from store_approval_list) */
	unsigned required;
	char state[24];
	int64_t created, expires, finished;
	char *result; /* JSON text of the executed call's answer, or NULL; malloc'd */
};

struct store_vote {
	char request_id[STORE_APPROVAL_ID_LEN + 1];
	int64_t principal_id;
	char principal[STORE_NAME_MAX + 1];
	char verdict[16]; /* "approve" or "deny" */
	int64_t time;
};

enum store_vote_result {
	STORE_VOTE_RECORDED, /* approval recorded, quorum not reached yet */
	STORE_VOTE_EXECUTE,  /* this vote completed the quorum: the caller now holds the
			      * request in state "executing" and must run it, then finish it */
	STORE_VOTE_DENIED,   /* a deny vote: the request is denied */
	STORE_VOTE_EXPIRED,  /* the request had expired: now marked so, no vote recorded */
};

/* Frees request and result (the struct itself is the caller's). Accepts NULL. */
void store_approval_clear(struct store_approval *a);
/* Inserts a new request in state pending. CONFLICT on a duplicate id. */
KMS_WUR kms_err store_approval_create(struct store *s, const struct store_approval *a);
/* One request with its votes (oldest first; malloc'd, free()). NOT_FOUND. */
KMS_WUR kms_err store_approval_get(struct store *s, const char *id, struct store_approval *out,
				   struct store_vote **votes, size_t *n_votes);
/* Requests, newest first, at most max, without request/result text (malloc'd array,
 * free()). */
KMS_WUR kms_err store_approval_list(struct store *s, size_t max, struct store_approval **out, size_t *n);
/* Records principal's vote ("approve"/"deny") on a pending request, in one transaction:
 * NOT_FOUND; CONFLICT naming the state when it is not pending; DENIED when an approver is
 * the requester; CONFLICT when this principal voted already. An approve vote that
 * brings the approvals to `need` (>= the stored required count) moves the request to
 * "executing" with a compare-and-set on its state, so of two concurrent final votes
 * only one gets STORE_VOTE_EXECUTE. *approvals: approve votes after this one. */
KMS_WUR kms_err store_approval_vote(struct store *s, const char *id, int64_t principal_id, const char *principal,
				    const char *verdict, int64_t now, unsigned need, enum store_vote_result *res,
				    unsigned *approvals);
/* executing -> state ("approved-executed" or "failed") with the answer's text. */
KMS_WUR kms_err store_approval_finish(struct store *s, const char *id, const char *state, const char *result,
				      int64_t now);
/* Marks every pending request with expires <= now expired; their ids (malloc'd array,
 * free()) for the audit log. */
KMS_WUR kms_err store_approvals_expire(struct store *s, int64_t now, struct store_approval **out, size_t *n);
/* Marks requests left "executing" (a crash between the final vote and the end of the
 * run) interrupted, so that they are never run again and read as state "interrupted";
 * the marked requests (malloc'd array, free()) for the audit log. executor NULL: every
 * such request (one node, at start). executor set (PostgreSQL only): those that run of
 * kmsd moved to "executing" (store_set_executor), for a run known to have ended.
 * store_approval_finish clears the mark of a request finished after all. */
KMS_WUR kms_err store_approvals_interrupt(struct store *s, const char *executor, int64_t now,
					  struct store_approval **out, size_t *n);
/* A run of kmsd on PostgreSQL: "<node_id>/<run>", run being STORE_RUN_LEN lower-case hex
 * digits drawn at start. */
#define STORE_RUN_LEN 16
#define STORE_EXECUTOR_MAX (64 + 1 + STORE_RUN_LEN)
bool store_executor_valid(const char *executor);
/* Splits an executor at its '/': copies the node id into node and returns the run after
 * it, or NULL (node "") when executor has no '/' or a node id longer than 64 bytes. */
const char *store_executor_split(const char *executor, char node[65]);
/* This process's run, written by the compare-and-set into the requests it runs
 * (PostgreSQL). INVALID unless store_executor_valid. */
KMS_WUR kms_err store_set_executor(struct store *s, const char *executor);
/* PostgreSQL: the runs that have requests "executing" and not interrupted, sorted;
 * *out malloc'd (free()), NULL when *n is 0. SQLite: none. */
KMS_WUR kms_err store_approvals_executors(struct store *s, char (**out)[STORE_EXECUTOR_MAX + 1], size_t *n);
/* Names of the approvers of the latest executed request for (operation, tenant, key,
 * version); *n 0 when there is none. Each name and the array malloc'd. */
KMS_WUR kms_err store_approval_approvers(struct store *s, const char *operation, const char *tenant,
					 const char *key, const char *version, char ***names, size_t *n);

struct store_grant {
	char id[STORE_APPROVAL_ID_LEN + 1];
	int64_t principal_id;
	char principal[STORE_NAME_MAX + 1];
	char reason[STORE_NOTE_MAX + 1];
	char tenant[STORE_NAME_MAX + 1];
	char key[STORE_NAME_MAX + 1]; /* a glob of [A-Za-z0-9._-*?] */
	int64_t granted, expires;
};

struct store_review {
	char grant_id[STORE_APPROVAL_ID_LEN + 1];
	int64_t principal_id;
	char principal[STORE_NAME_MAX + 1];
	char verdict[16]; /* "justified" or "unjustified" */
	char note[STORE_NOTE_MAX + 1];
	int64_t time;
};

KMS_WUR kms_err store_grant_create(struct store *s, const struct store_grant *g);
/* The grant of principal_id in force at now for tenant/key (the one that lasts longest),
 * or NOT_FOUND. */
KMS_WUR kms_err store_grant_active(struct store *s, int64_t principal_id, const char *tenant, const char *key,
				   int64_t now, struct store_grant *out);
/* The latest expiry of any grant (0 when none). */
KMS_WUR kms_err store_grant_max_expiry(struct store *s, int64_t *out);
/* Grants newest first, at most max (malloc'd, free()). */
KMS_WUR kms_err store_grant_list(struct store *s, size_t max, struct store_grant **out, size_t *n);
/* Reviews of one grant (grant_id) or of all (NULL), oldest first (malloc'd, free()). */
KMS_WUR kms_err store_review_list(struct store *s, const char *grant_id, struct store_review **out, size_t *n);
/* NOT_FOUND for an unknown grant, DENIED when the reviewer is the grantee, CONFLICT for
 * a second review by the same principal. */
KMS_WUR kms_err store_grant_review(struct store *s, const struct store_review *r);
/* ---- metrics gauges and the compliance report: read-only aggregates, one query
 * each, for a scrape or a report (never per request) ---- */

/* Key versions of one tenant by stored state: [0] enabled, [1] disabled,
 * [2] pending_destruction, [3] destroyed. */
struct store_tenant_states {
	char tenant[STORE_NAME_MAX + 1];
	uint64_t versions[4];
};
/* Over versions not destroyed: the largest enc_reserved, how many have reserved at
 * least half and at least 90% of limit, and the earliest destroy_after of a version
 * pending destruction (0 = none). */
struct store_usage {
	uint64_t max_reserved, over_half, over_90;
	int64_t next_destroy;
};
/* *out: malloc'd (free()), one entry per tenant that has a version, sorted by name.
 * limit: 1 .. INT64_MAX / 10. */
KMS_WUR kms_err store_version_gauges(struct store *s, uint64_t limit, struct store_tenant_states **out,
				     size_t *n, struct store_usage *u);

/* One row per (tenant, key, version), sorted so; a tenant without keys gives one row
 * with key "" and a key without versions (never, by construction) one with version 0. */
struct store_crow {
	char tenant[STORE_NAME_MAX + 1];
	char retention[16];
	int tenant_hold;
	char key[STORE_NAME_MAX + 1];
	int64_t key_created;
	uint32_t latest;
	int64_t auto_rotate_period;
	int revoked, key_hold;
	uint32_t version;
	int64_t created;
	char state[24];
	int64_t destroy_after;
	uint64_t enc_reserved;
};
KMS_WUR kms_err store_compliance_rows(struct store *s, struct store_crow **out, size_t *n);

/* Live (not revoked) API tokens that never expire, with their owner; malloc'd. */
struct store_token_owner {
	char accessor[STORE_ACCESSOR_MAX + 1];
	char principal[STORE_NAME_MAX + 1];
	char role[16];
	int64_t created, last_used;
};
KMS_WUR kms_err store_tokens_without_expiry(struct store *s, struct store_token_owner **out, size_t *n);
/* On PostgreSQL: KMS_ERR_UNSUPPORTED (501); that store is backed up with pg_dump or
 * PITR (docs/SCALE-OUT.md). An online snapshot for backups: the whole store as of one commit, copied with
 * SQLite's online backup API (sqlite3_backup_*) into memory and returned as the bytes
 * of a database file (*out malloc'd; the caller wipes and frees it). Other store calls
 * wait while the pages are copied (memory speed). */
KMS_WUR kms_err store_snapshot(struct store *s, uint8_t **out, size_t *len);
/* Client certificates mapped to principals (table principal_certs). kind is
 * STORE_CERT_SPKI (value: 64 lower-case hex, SHA-256 of the SubjectPublicKeyInfo) or
 * STORE_CERT_SUBJECT (value: the subject DN as RFC 4514 text, 1..STORE_CERT_VALUE_MAX
 * bytes, compared exactly). */
#define STORE_CERT_VALUE_MAX 1024
enum store_cert_kind { STORE_CERT_SPKI = 1, STORE_CERT_SUBJECT = 2 };
struct store_cert {
	int64_t id;
	enum store_cert_kind kind;
	char value[STORE_CERT_VALUE_MAX + 1];
	int64_t created;
};
/* "spki" / "subject" <-> kind; unknown -> 0 / "unknown". */
enum store_cert_kind store_cert_kind_parse(const char *s);
const char *store_cert_kind_name(enum store_cert_kind k);
/* CONFLICT when the value is mapped already (to any principal), NOT_FOUND for an
 * unknown principal, INVALID for a bad kind or value length. */
KMS_WUR kms_err store_cert_add(struct store *s, int64_t principal_id, enum store_cert_kind kind, const char *value,
			       int64_t now, int64_t *id_out);
/* A principal's mappings in creation order (malloc'd, free(); *n may be 0). */
KMS_WUR kms_err store_cert_list(struct store *s, int64_t principal_id, struct store_cert **out, size_t *n);
/* NOT_FOUND when the principal has no such mapping. */
KMS_WUR kms_err store_cert_delete(struct store *s, int64_t principal_id, enum store_cert_kind kind,
				  const char *value);
/* The principal a value maps to; NOT_FOUND when none. Read on every request: a
 * deleted mapping stops working at once. */
KMS_WUR kms_err store_cert_lookup(struct store *s, enum store_cert_kind kind, const char *value,
				  int64_t *principal_id);


/* ---- MACs on the rows that grant authority (schema step 12; kms/store/authmac.h,
 * docs/THREAT-MODEL.md "Authority rows"). principals, api_tokens, principal_tenants,
 * policies, principal_certs and principal_mfa each carry a MAC by a token-held key over a canonical
 * encoding of their authority-bearing columns and primary key. The store computes it
 * on every write and checks it on the reads used to authenticate and authorise
 * (store_principal_get/_get_id, store_principal_tenants, store_token_get,
 * store_token_revoke, store_policy_latest, store_cert_lookup, store_mfa_get and the MFA
 * changes but fail/unlock/delete), once a MAC function is
 * set. A row whose MAC is missing or wrong is refused: the call logs an error naming
 * the table and the row (never a token), calls `bad` (with the store's lock held: it
 * must not call back into the store) and returns KMS_ERR_DENIED "permission denied".
 * Without a MAC function (offline tools, unit tests) rows are written with a NULL MAC
 * and not checked.
 *
 * A row that verified (or that the store MAC'd itself) is remembered in memory by the
 * SHA-256 of its encoding and its MAC, so that the next read of the same, unchanged row
 * needs no call to the token; a row changed in any authority column or MAC misses and
 * is checked by the token again. The memory is cleared when the MAC function or its
 * context changes to another non-NULL one. */
#define STORE_META_AUTHMAC "authority_macs" /* meta key: set once every row carries a MAC */
typedef kms_err (*store_mac_fn)(void *ctx, const uint8_t *msg, size_t len, uint8_t mac[STORE_MAC_LEN]);
typedef void (*store_integrity_fn)(void *ctx, const char *table, const char *row);
/* Not thread-safe against concurrent store calls: set it before the store is shared. */
void store_set_authmac(struct store *s, store_mac_fn mac, void *mac_ctx, store_integrity_fn bad, void *bad_ctx);
/* Trust on first use, for a store written before authority rows had MACs: unless meta
 * STORE_META_AUTHMAC is set, MACs every authority row that has none and sets it, in one
 * transaction. *sealed: rows MAC'd; *first: true when this call did it (false when the
 * store was initialised before). INVALID without a MAC function. */
KMS_WUR kms_err store_authmac_init(struct store *s, size_t *sealed, bool *first);

/* ---- Cluster (several kmsd nodes on one PostgreSQL store) ----
 *
 * On PostgreSQL, triggers record every change to a row a node may cache (keys,
 * key_versions except enc_reserved, tenants, principals, principal_tenants,
 * api_tokens except last_used, principal_certs, policies, master_keys,
 * break_glass_grants) in a change log, in the changing transaction, and NOTIFY
 * kmsd_changes. The log's seq order is commit order (each logging transaction holds the
 * writer lock until it commits). On SQLite these behave as a single node: no changes,
 * the lease always held, the watch a sleep. */
struct store_change {
	int64_t seq;
	char kind[32];	/* the table's name */
	int64_t ref;	/* key id (keys, key_versions), tenant id (tenants), else 0 */
	char node[65];	/* the writing node's id ("" if it set none) */
	int64_t time;	/* unix seconds */
};
/* Sets this node's id, recorded with its changes (SET kmsd.node on the connection):
 * 1 to 64 bytes of [A-Za-z0-9._:-]. */
KMS_WUR kms_err store_set_node(struct store *s, const char *node_id);
/* Changes with seq > after, oldest first, at most max; *gap = true when changes after
 * `after` were pruned (the caller must then reload everything it caches). *out is
 * malloc'd (free()), NULL when *n is 0. */
KMS_WUR kms_err store_changes_since(struct store *s, int64_t after, size_t max, struct store_change **out,
				    size_t *n, bool *gap);
KMS_WUR kms_err store_changes_head(struct store *s, int64_t *seq); /* 0 if none */
/* Deletes changes older than older_than_time (unix seconds). */
KMS_WUR kms_err store_changes_prune(struct store *s, int64_t older_than_time);
/* A second connection for LISTEN and leases (PG); on SQLite a stub that only sleeps. */
struct store_watch;
KMS_WUR kms_err store_watch_open(const char *path_or_uri, struct store_watch **out);
void store_watch_close(struct store_watch *w); /* accepts NULL */
/* Waits up to timeout_ms for a notice on kmsd_changes; *notified says whether one came.
 * KMS_OK on timeout; an error when the connection is lost (it reconnects next call). */
KMS_WUR kms_err store_watch_wait(struct store_watch *w, int timeout_ms, bool *notified);
/* Tries to hold the named cluster-wide lease (pg_try_advisory_lock on the watch
 * connection, key from a hash of name); *held = whether this node holds it now. It is
 * released when this connection ends (node death): another node's next try wins. */
KMS_WUR kms_err store_watch_lease(struct store_watch *w, const char *name, bool *held);
/* Whether nobody holds the named lease: tried and given back at once (on the watch
 * connection). False for a lease this connection holds, and on SQLite. A run's lease
 * "run:<node_id>/<run>" is free only when no live connection holds it: the run ended. */
KMS_WUR kms_err store_watch_lease_free(struct store_watch *w, const char *name, bool *is_free);

#endif
