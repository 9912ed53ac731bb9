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
 * the dirty pages), and every later append returns KMS_ERR_AUDIT.
 *
 * Segments (rotation) extend this module without changing audit_append's contract. */
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
};

/* Defaults (AUDIT_DEFAULT_CHECKPOINT_*) and no signer. */
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

/* Writes a checkpoint now if any record is unsigned, and makes it durable (e.g. at
 * shutdown, before the signer's token is closed). KMS_OK when nothing was unsigned;
 * KMS_ERR_INVALID without a signer; the signer's error if it failed. */
KMS_WUR kms_err audit_checkpoint(struct audit *a);

/* false once a write or sync has failed. */
bool audit_healthy(struct audit *a);

/* The last seq on disk (records, checkpoints included; for tests and metrics). */
uint64_t audit_seq(struct audit *a);

/* Stops the timer thread and closes. Accepts NULL. Writes no checkpoint itself: call
 * audit_checkpoint first while the signer still works. Not while appends run. */
void audit_close(struct audit *a);

/* The message a checkpoint signs: AUDIT_CHECKPOINT_PREFIX "<seq>:<hash_hex>" (no NUL
 * counted, none written past cap). Returns its length, or 0 if cap is too small. */
size_t audit_checkpoint_message(uint64_t seq, const char *hash_hex, char *out, size_t cap);

#endif
