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
 * unsigned tail (checkpoint records themselves are not counted in it).
 *
 * Several nodes (audit_verify_nodes below): each kmsd node writes its own log, with its
 * own chain, seq numbers and checkpoints (signed by the one token key), and names itself
 * in every record. The segments given are grouped into one chain per node (search.h
 * audit_segs_chains), each chain is verified as above, and also:
 *   - every record of a chain names the chain's node (else: node changed);
 *   - no two logs of one node id start at the same seq with different records (else:
 *     same node: two kmsd share a node_id, or a log was copied under another's name);
 *   - with an expected set of nodes, each has a log and no other node does (else:
 *     missing, unexpected). */
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
	/* Several nodes (audit_verify_node, audit_verify_nodes): */
	AUDIT_V_NODE,	    /* a record names another node than the log it is in */
	AUDIT_V_SAME_NODE,  /* two different logs claim the same node id */
	AUDIT_V_MISSING,    /* an expected node (or the one asked for) has no log given */
	AUDIT_V_UNEXPECTED, /* a log of a node that is not among those expected */
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
	const char *file; /* one of the caller's file names; NULL when no file is at fault */
	char why[512];	  /* starts with the verdict's word: "edited: ...", "deleted: ..." */
	/* audit_verify_node: the node the log names at its end (after the changes of
	 * node_id kmsd recorded, "audit.node"); "" otherwise. */
	char last_node[65];
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

/* audit_verify_opts, and when node is not NULL, every record must name that node
 * ("" for a record whose node is null or absent): else AUDIT_V_NODE. */
KMS_WUR kms_err audit_verify_node(const char *const *files, size_t n_files,
				  const char *pubkey_path, unsigned flags, const char *node,
				  struct audit_verify_result *res);

/* "ok: N records[ from seq F], M checkpoints, last signed seq S[, unsigned tail of K records]" or
 * "FAIL: record seq S (line L of FILE): <why>" (or "FAIL: <why>" when no file is at
 * fault), without a newline. */
void audit_verify_summary(const struct audit_verify_result *res, char *buf, size_t cap);

/* ---- several nodes ------------------------------------------------------------------ */

struct audit_segs;

struct audit_nodes_opts {
	const char *pubkey; /* NULL: each log's newest SEGMENT.pub.pem, else another log's */
	unsigned flags;	    /* AUDIT_VERIFY_PARTIAL, for every log */
	/* n_only > 0: verify these nodes' logs only (a node with no log is missing); a log
	 * whose node_id changed is known by its first and its last node id. */
	const char *const *only;
	size_t n_only;
	/* n_expect > 0: exactly these nodes must have a log among the files (each one
	 * missing and each other node's log is a failure). */
	const char *const *expect;
	size_t n_expect;
};

struct audit_node_result {
	const char *node; /* the node id; "" when the records name none; NULL for a file
			   * with no well-formed record (among several nodes' logs). A log
			   * whose node_id was changed (kmsd records it: audit.h) is one log,
			   * under the node it names at its end. */
	size_t n_files;
	struct audit_verify_result res;
};

struct audit_nodes_result {
	struct audit_node_result *v; /* ordered by node id (files with no record last) */
	size_t n;
	size_t failed;			/* entries whose verdict is not AUDIT_V_OK */
	uint64_t records, checkpoints;	/* over all the logs */
	char **names;			/* owned by the result (node ids after a change) */
	size_t n_names;
};

/* Groups segs (search.h audit_segs_collect) into one log per node and verifies each,
 * one after another (memory as for one log). When only one node's log is given, the
 * files with no well-formed record belong to it (as audit_verify_opts reads them);
 * among several nodes' logs an empty file is left out and any other such file is
 * verified on its own (and fails). KMS_OK when every log ran to a verdict (out says
 * which; free it with audit_nodes_result_free); KMS_ERR_IO, KMS_ERR_INVALID (no public
 * key), KMS_ERR_NOMEM as audit_verify. out points into segs and o. */
KMS_WUR kms_err audit_verify_nodes(const struct audit_segs *segs,
				   const struct audit_nodes_opts *o,
				   struct audit_nodes_result *out);
void audit_nodes_result_free(struct audit_nodes_result *r);

/* "node ID: " then audit_verify_summary's line. */
void audit_node_summary(const struct audit_node_result *r, char *buf, size_t cap);
/* "ok: N nodes, R records, C checkpoints" or "FAIL: F of N nodes (...)". */
void audit_nodes_summary(const struct audit_nodes_result *r, char *buf, size_t cap);

#endif
