/* Audit log: one JSON object per line, appended and fdatasync'd before audit_append
 * returns, so a caller that got KMS_OK may answer its client. Concurrent appends are
 * group-committed: whichever caller finds no write in progress writes every pending
 * record and syncs once; the others wait for that sync.
 *
 * Hash chain (docs/FORMATS.md "Audit record"): every record ends in
 *   ...,"prev":"<hex SHA-256 of the previous record's hash>","hash":"<hex>"}
 * where hash = SHA-256 of the line as written with its `,"hash":"…"` member removed
 * (so the body ends in `"prev":"…"}`), and prev of the first record ever is 64 zeros.
 * seq and the chain continue across restarts and across a cut torn tail (the cut is
 * itself recorded, operation "audit.recovered").
 *
 * Signed checkpoints: with a signer (struct audit_options), a record with operation
 * "audit.checkpoint" is appended after every checkpoint_records records or when
 * checkpoint_seconds passed with records still unsigned (a background thread sees to
 * the latter when the log is idle). It carries {"seq":S,"hash":H,"sig":B64} where the
 * signature is over SHA-256 of the ASCII message "kmsd-audit-checkpoint:1:<S>:<H>",
 * S being the last record when signing began (S < the checkpoint's own seq; records
 * appended while the token signs come between). The signer runs without the log's
 * lock held, so appends go on meanwhile; the caller that triggered the checkpoint
 * waits for it to be durable too. A failed signature writes no checkpoint (logged as
 * a warning, retried after 1, 2, 4, ... up to 60 s); it never fails the caller's own
 * record.
 *
 * Fail closed: after any failed write or fsync the log is marked failed for good (a
 * failed fsync is never retried on the same file: the kernel may already have dropped
 * the dirty pages), and every later append returns KMS_ERR_AUDIT. The same happens when
 * the file is found deleted (link count 0) or its path no longer names it (renamed or
 * replaced): checked after every sync, before any waiting caller is told its record is
 * durable, and once a second by a background thread while the log is idle. Recovery is
 * an operator's: fix the cause and restart kmsd (start-up recovery below).
 *
 * Segments: when the current file reaches segment_bytes, or segment_seconds passed
 * since its first record was written, the group-commit leader rotates it after a successful sync:
 * the file is renamed to the segment name (audit_segment_name: "<path minus .log>-<seq
 * of its first record, 20 digits>.log") and a new, empty file takes the path. The chain
 * simply continues: the first record of the new file has the next seq and the last
 * hash of the old one as prev. A rotated segment is never opened for writing again.
 * Rotation is crash-safe: the new file is made as "<path>.next" first, then the two
 * renames, then the directory is synced; start-up finishes or undoes a half-done one.
 *
 * Start-up with an empty or new current file continues the chain from the newest
 * segment (its last record must match its hash) and records that with an
 * "audit.recovered" record. With segments present but no current file and no
 * "<path>.next", the current segment was deleted: audit_open refuses (KMS_ERR_IO) and
 * says how to continue knowingly; the same without segments when expect_existing.
 *
 * Node: every record names the node (node_id) that wrote it. When the log's last record
 * names another node (node_id was changed in the configuration), audit_open records the
 * change first: operation "audit.node", reason saying from and to, and "from_node": the
 * old id; the offline verifier accepts a node change only at such a record (verify.h). */
#ifndef KMS_AUDIT_AUDIT_H
#define KMS_AUDIT_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define AUDIT_HASH_LEN 32
#define AUDIT_SIG_MAX 144 /* room for any DER ECDSA signature up to P-521 */
#define AUDIT_DEFAULT_CHECKPOINT_RECORDS 1000
#define AUDIT_DEFAULT_CHECKPOINT_SECONDS 60
#define AUDIT_OP_CHECKPOINT "audit.checkpoint"
#define AUDIT_OP_RECOVERED "audit.recovered"
#define AUDIT_OP_NODE "audit.node" /* node_id changed: "from_node" names the old one */
#define AUDIT_DEFAULT_SEGMENT_BYTES (256ull << 20)
#define AUDIT_DEFAULT_SEGMENT_SECONDS 86400
#define AUDIT_HMAC_PREFIX "hmac-sha256:"
/* The signed message is this prefix, the covered seq in decimal, ':', its hash in hex. */
#define AUDIT_CHECKPOINT_PREFIX "kmsd-audit-checkpoint:1:"

struct audit;

/* Every string may be NULL (written as null). None may hold a secret. */
struct audit_record {
	const char *request_id;
	const char *principal;
	const char *auth_method; /* "token" */
	const char *remote_addr;
	const char *operation; /* kms_op_name() */
	const char *tenant;
	const char *key;
	uint32_t version; /* 0 = none */
	unsigned batch;	  /* items in a batch request, 0 for a single item */
	const char *outcome; /* "allow", "deny", "error" */
	int status;	     /* HTTP status answered */
	const char *reason;
	/* Borrowed, may be NULL: members written after reason, e.g. "encryption_context":
	 * {"k":"hmac-sha256:…"}. Only hashed values: never a plaintext context value. */
	const void *extra; /* a jansson json_t object */
	bool mfa;	   /* a TOTP or recovery code was verified for this request */
};

/* Signs a checkpoint: writes a DER ECDSA-Sig-Value over the SHA-256 digest into sig
 * (sig_cap >= AUDIT_SIG_MAX). Called from whichever thread triggered the checkpoint
 * (an appender, the timer thread or audit_checkpoint), never with the log's lock held,
 * never twice at once for one log. kmsd wires p11_audit_sign in here. */
typedef kms_err (*audit_sign_fn)(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig,
				 size_t sig_cap, size_t *sig_len);

struct audit_options {
	unsigned checkpoint_records; /* checkpoint after this many records; 0: not by count */
	unsigned checkpoint_seconds; /* ...or this long after the last one; 0: not by time */
	audit_sign_fn sign;	     /* NULL: no checkpoints (the chain is still kept) */
	void *sign_ctx;
	uint64_t segment_bytes;	  /* rotate at this size; 0: never by size */
	unsigned segment_seconds; /* ...or this long after the segment began; 0: never */
	/* A log was written here before (kmsd keeps that fact in its store): a missing file
	 * with no segment is then refused as deleted, and an empty one starts a new chain
	 * with an "audit.recovered" record saying so. */
	bool expect_existing;
	/* NULL or "": no forwarding; else records are forwarded once durable (syslog.h). */
	const char *syslog_target;
};

#define AUDIT_FSYNC_BUCKETS 10
/* Upper bounds of the fdatasync latency buckets, microseconds. */
#define AUDIT_FSYNC_BOUNDS_US {100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000}
#define AUDIT_HASH_HEX_LEN 64

struct audit_stats {
	uint64_t records;  /* records made durable since open (checkpoints included) */
	uint64_t syncs;	   /* fdatasync calls that succeeded since open */
	uint64_t segments; /* segments rotated since open */
	uint64_t seq;	   /* last durable seq */
	bool healthy;
	char why[256]; /* when not healthy: what failed */
	uint64_t syslog_sent, syslog_dropped;
	/* fdatasync latency: counts per bucket of AUDIT_FSYNC_BOUNDS_US (cumulative is the
	 * reader's job), the last one above every bound; the sum in microseconds */
	uint64_t fsync_hist[AUDIT_FSYNC_BUCKETS + 1];
	uint64_t fsync_us_sum;
	uint64_t queue_depth; /* records given a seq but not yet durable */
	char head_hash[AUDIT_HASH_HEX_LEN + 1]; /* hash of the last record given a seq */
	uint64_t head_seq;
	/* the last signed checkpoint this process wrote or found as the log's last record
	 * at open; 0 / "" when none is known */
	uint64_t ckpt_seq;	 /* the checkpoint record's own seq */
	uint64_t ckpt_covered;	 /* the seq it signs */
	char ckpt_time[40];	 /* its "time" member */
	uint64_t unsigned_records; /* non-checkpoint records given a seq since then */
	bool signer;		   /* checkpoints are configured */
};

/* Defaults (AUDIT_DEFAULT_CHECKPOINT_*, AUDIT_DEFAULT_SEGMENT_*) and no signer. */
void audit_options_init(struct audit_options *o);

/* Opens (creates 0600) path for appending. Recovery: the last complete record must
 * carry a hash that matches its content (else KMS_ERR_IO: the chain cannot be
 * continued, an operator must look at the file); seq and the chain continue after it.
 * A torn last line left by a crash is cut off, and an "audit.recovered" record saying
 * how many bytes were cut at which offset is appended (durable before this returns).
 * With a signer and checkpoint_seconds > 0 a timer thread is started.
 * opts NULL = audit_options_init defaults without a signer. */
KMS_WUR kms_err audit_open_opts(const char *path, const char *node_id,
				const struct audit_options *opts, struct audit **out);

/* audit_open_opts(path, node_id, NULL, out): chained, no checkpoints. */
KMS_WUR kms_err audit_open(const char *path, const char *node_id, struct audit **out);

/* Formats, appends and makes durable one record. KMS_ERR_AUDIT when the log has failed. */
KMS_WUR kms_err audit_append(struct audit *a, const struct audit_record *r);

/* audit_append in two halves, for a caller that can hold its answer without holding a
 * thread (kms/http/server.c): audit_enqueue formats and queues the record (and a
 * checkpoint if one is due) and gives the seq that must be durable before anything the
 * record covers leaves; audit_wait writes and syncs up to seq, leading the group commit
 * or waiting for the sync in flight, and answers KMS_OK once seq is durable (KMS_ERR_AUDIT
 * if the log failed first); audit_settled says without waiting: 1 durable, 0 not yet,
 * -1 never (the log failed first). */
KMS_WUR kms_err audit_enqueue(struct audit *a, const struct audit_record *r, uint64_t *seq);
KMS_WUR kms_err audit_wait(struct audit *a, uint64_t seq);
int audit_settled(struct audit *a, uint64_t seq);

/* Writes a checkpoint now if any record is unsigned, and makes it durable (e.g. at
 * shutdown, before the signer's token is closed). KMS_OK when nothing was unsigned;
 * KMS_ERR_INVALID without a signer; the signer's error if it failed. */
KMS_WUR kms_err audit_checkpoint(struct audit *a);

/* false once a write or sync has failed. */
bool audit_healthy(struct audit *a);

/* The last seq on disk (records, checkpoints included; for tests and metrics). */
uint64_t audit_seq(struct audit *a);

/* Counters and health, for metrics and /v1/sys/health. */
void audit_get_stats(struct audit *a, struct audit_stats *st);

/* The name a segment of the log at path gets when rotated with first_seq its first
 * record: path without a trailing ".log", "-", first_seq in 20 digits, ".log". Returns
 * the length, or 0 if cap is too small. */
size_t audit_segment_name(const char *path, uint64_t first_seq, char *out, size_t cap);

/* Stops the timer thread and closes. Accepts NULL. Writes no checkpoint itself: call
 * audit_checkpoint first while the signer still works. Not while appends run. */
void audit_close(struct audit *a);

/* The message a checkpoint signs: AUDIT_CHECKPOINT_PREFIX "<seq>:<hash_hex>" (no NUL
 * counted, none written past cap). Returns its length, or 0 if cap is too small. */
size_t audit_checkpoint_message(uint64_t seq, const char *hash_hex, char *out, size_t cap);

/* ---- backup (kms/core/backup.c) ---------------------------------------------------
 * A consistent cut of the log for a backup: every rotated segment and the current file,
 * each opened read-only with the size it had at one instant when nothing was being
 * written (no group commit in flight, no rotation), so every file ends on a whole,
 * synced record and the cut ends on record last_seq. Records queued before the call
 * (audit_enqueue) are written and synced first and are part of the cut. Appends are held only while the
 * files are opened; the caller reads them afterwards through the descriptors (a later
 * rotation renames, but never changes, the bytes up to size). */
struct audit_snap_file {
	char name[256]; /* file name in the log's directory */
	int fd;		/* read-only, CLOEXEC */
	uint64_t size;	/* bytes that belong to the cut */
	bool current;	/* the file being appended to (last in the list) */
};
struct audit_snapshot {
	struct audit_snap_file *files; /* segments in seq order, then the current file */
	size_t n, cap;
	uint64_t last_seq;
	char log_name[256]; /* the current file's name (audit_path's last component) */
	char dir[4096];
};
/* KMS_ERR_AUDIT when the log has failed; KMS_ERR_IO when a file cannot be opened. */
KMS_WUR kms_err audit_snapshot(struct audit *a, struct audit_snapshot *out);
/* Closes the descriptors; accepts a zeroed or freed snapshot. */
void audit_snapshot_free(struct audit_snapshot *s);
/* 1 if name (a directory entry) is a rotated segment of the log at log_path (see
 * audit_segment_name), with its first seq in *seq (may be NULL); else 0. */
int audit_segment_seq(const char *log_path, const char *name, uint64_t *seq);

#endif
