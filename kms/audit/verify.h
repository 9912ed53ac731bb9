/* Offline verification of an audit log (`kmsctl audit verify`): needs no token, only
 * the exported public key (<audit_path>.pub.pem). Reads the files in the order given as
 * one log, which must start at seq 1, and checks, record by record:
 *   - shape: a JSON object ending in ,"hash":"<64 hex>"} with an integer seq and a
 *     64-hex prev (a line that is not is reported as edited);
 *   - hash: SHA-256 of the line without its hash member equals hash (else: edited);
 *   - order: seq is the previous seq + 1 and prev the previous record's hash (else:
 *     deleted, inserted, reordered or chain broken, told apart by looking for the
 *     expected or the repeated seq elsewhere in the files);
 *   - checkpoints: the covered seq is after the previous checkpoint's and before the
 *     checkpoint itself (at most AUDIT_VERIFY_WINDOW records back), its hash is that
 *     record's hash, and the ECDSA signature over SHA-256 of the checkpoint message
 *     verifies with the public key (else: bad checkpoint / bad signature);
 *   - a last line without a newline: truncated.
 * Records after the last valid checkpoint are not an error: they are counted as the
 * unsigned tail (checkpoint records themselves are not counted in it). */
#ifndef KMS_AUDIT_VERIFY_H
#define KMS_AUDIT_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include "kms/base/err.h"

#define AUDIT_VERIFY_WINDOW 65536

enum audit_verdict {
	AUDIT_V_OK = 0,
	AUDIT_V_EDITED,	    /* hash mismatch, or not a well-formed record */
	AUDIT_V_DELETED,    /* seq skips ahead and the missing seq is nowhere later */
	AUDIT_V_INSERTED,   /* a seq that already appeared (a copy, or a second version) */
	AUDIT_V_REORDERED,  /* a seq out of place that does appear elsewhere */
	AUDIT_V_CHAIN,	    /* seq right but prev is not the previous record's hash */
	AUDIT_V_TRUNCATED,  /* the last line has no newline */
	AUDIT_V_CHECKPOINT, /* a checkpoint that covers the wrong seq or hash */
	AUDIT_V_SIGNATURE,  /* a checkpoint signature that does not verify */
};

struct audit_verify_result {
	enum audit_verdict verdict;
	uint64_t records;	  /* records read and found good (checkpoints included) */
	uint64_t checkpoints;	  /* valid checkpoints */
	uint64_t last_signed_seq; /* seq covered by the last valid checkpoint, 0 if none */
	uint64_t unsigned_tail;	  /* non-checkpoint records after last_signed_seq */
	uint64_t first_seq;	  /* the first record's seq: 1, or more when partial */
	/* When verdict != AUDIT_V_OK: the first bad record. */
	uint64_t seq;	  /* the seq at fault (for deleted: the first missing one) */
	uint64_t line;	  /* 1-based line in file */
	const char *file; /* one of the caller's file names */
	char why[512];	  /* starts with the verdict's word: "edited: ...", "deleted: ..." */
};

/* Verifies files[0..n_files) as one log against the PEM public key in pubkey_path.
 * KMS_OK when the check ran to a verdict (res->verdict says which); KMS_ERR_IO when a
 * file cannot be read; KMS_ERR_INVALID when the public key cannot be loaded;
 * KMS_ERR_NOMEM. */
KMS_WUR kms_err audit_verify(const char *const *files, size_t n_files, const char *pubkey_path,
			     struct audit_verify_result *res);

/* AUDIT_VERIFY_PARTIAL: the files may start after seq 1 (older segments were removed
 * under the retention policy). Their first record is then taken as the start, with its
 * prev as given, and a checkpoint that covers a record before it is checked by its
 * signature alone. Nothing before the first record given is verified, of course. */
#define AUDIT_VERIFY_PARTIAL 1u
KMS_WUR kms_err audit_verify_opts(const char *const *files, size_t n_files,
				  const char *pubkey_path, unsigned flags,
				  struct audit_verify_result *res);

/* "ok: N records[ from seq F], M checkpoints, last signed seq S[, unsigned tail of K records]" or
 * "FAIL: record seq S (line L of FILE): <why>", without a newline. */
void audit_verify_summary(const struct audit_verify_result *res, char *buf, size_t cap);

#endif
