/* Reading audit logs offline, for `kmsctl audit search` and `kmsctl audit report`
 * (docs/KMSCTL.md "Audit search and reports"). Nothing here checks the chain: that is
 * audit_verify's job (verify.h); these functions read what the files say.
 *
 * Segments: the log may be several files, the current audit.log and rotated segments
 * audit-<first seq, 20 digits>.log beside it, the chain continuing across them.
 * audit_segs_collect takes files and directories in any order (a directory stands for
 * every regular audit*.log file in it), drops a file named twice (same device and inode)
 * and orders them by the seq of their first record.
 *
 * Lines: one record per line, at most AUDIT_SEARCH_LINE_MAX bytes without the newline.
 * A line that is longer, empty, not one JSON object (duplicate members are refused), or
 * whose members have the wrong types, is malformed: it is reported through the note
 * callback with its file and line, and skipped. Members a record lacks are treated as
 * null, so records from before a member existed (encryption_context, items,
 * associated_data, batch) are read as well as newer ones.
 *
 * Contexts (docs/FORMATS.md "Audit record"): a single call's encryption_context is an
 * object whose values are HMACs, or null (or, when the caller sent something that is
 * not an object, that value's HMAC as a string, which names no key); a batch record
 * has encryption_context null and an "items" array with one {"encryption_context",
 * "associated_data"} object per item. A "contexts" array of context objects (one per
 * item) is read too. The scan holds one line and
 * one parsed record at a time: memory does not grow with the log. */
#ifndef KMS_AUDIT_SEARCH_H
#define KMS_AUDIT_SEARCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kms/audit/audit.h"
#include "kms/base/err.h"

#define AUDIT_SEARCH_LINE_MAX (8u << 20) /* above the writer's largest record (ops_audit.c) */
/* An HMAC'd value as kmsd writes it: AUDIT_HMAC_PREFIX and 64 lower-case hex digits. */
#define AUDIT_HMAC_LEN (sizeof(AUDIT_HMAC_PREFIX) - 1 + 64)

/* ---- segments -------------------------------------------------------------------- */

struct audit_seg {
	char *path;
	uint64_t first_seq; /* of the first well-formed record; 0 when the file has none */
	char *node;	    /* that record's node id (malloc'd); NULL when none or null */
	off_t size;	    /* bytes, when collected */
	dev_t dev;	    /* to drop a file named twice */
	ino_t ino;
};

struct audit_segs {
	struct audit_seg *v;
	size_t n;
};

/* Expands args (files and directories) into out, ordered by first_seq (files without a
 * record last), ties by path. KMS_ERR_IO when a path cannot be opened or read (the
 * detail names it); KMS_ERR_INVALID when a directory holds no audit*.log file or no
 * argument is given; KMS_ERR_NOMEM. On error out is empty. */
KMS_WUR kms_err audit_segs_collect(const char *const *args, size_t n_args, struct audit_segs *out);
void audit_segs_free(struct audit_segs *s);
/* Whether the segments' first records name more than one node (the logs of a cluster). */
bool audit_segs_multi_node(const struct audit_segs *s);

/* ---- one record ------------------------------------------------------------------ */

/* A parsed record. Strings point into v and are NULL when the member is null or
 * absent; numbers are 0 then. */
struct audit_view {
	json_t *v; /* owned: json_decref it (audit_view_clear) */
	uint64_t seq;
	const char *time;
	int64_t time_us; /* time as microseconds since the epoch */
	const char *node, *request_id, *principal, *auth_method, *remote_addr, *operation;
	const char *tenant, *key, *outcome, *reason;
	uint32_t version;
	unsigned batch;
	int status;
	const json_t *context;	     /* encryption_context: object of strings, or NULL */
	const json_t *items;	     /* batch: array of {encryption_context, associated_data} */
	const json_t *contexts;	     /* per batch item: array of context objects (or null) */
	const char *associated_data; /* its HMAC, or NULL */
};

/* Calls fn on each context object of r (encryption_context, then each item's, then
 * each of contexts) until fn returns non-zero; returns that, or 0. */
int audit_view_each_context(const struct audit_view *r, int (*fn)(void *arg, const json_t *ctx),
			    void *arg);

/* Parses one line (len bytes, no newline). Returns NULL and fills out, or why (the
 * reason for a malformed line, written there, cap >= 160 recommended; out is then
 * cleared). */
const char *audit_view_parse(const char *line, size_t len, struct audit_view *out, char *why,
			     size_t cap);
void audit_view_clear(struct audit_view *r);

/* RFC 3339 ("2026-03-01T10:00:00Z", "...T10:00:00.123456+01:00"; seconds required, 'T'
 * or 't' or a space between date and time, fractions beyond microseconds truncated) or
 * a bare date ("2026-03-01", its 00:00:00Z), years 0000-9999. Returns 0 and the
 * microseconds since the epoch, or -1. */
int audit_time_parse(const char *s, int64_t *us);

/* Checks "hmac-sha256:<64 hex>" and writes it with lower-case hex into out (NUL
 * terminated). Returns 0 or -1. */
int audit_hmac_normalize(const char *s, char out[AUDIT_HMAC_LEN + 1]);

/* ---- filters --------------------------------------------------------------------- */

struct audit_ctx_pair {
	const char *key;		/* a context key */
	char hash[AUDIT_HMAC_LEN + 1];	/* its value's HMAC, normalised */
};

/* Every set criterion must hold (NULL / false / 0 = any). String criteria compare
 * exactly; operation is an fnmatch(3) pattern (exact when it has no * ? [). */
struct audit_filter {
	const char *principal, *tenant, *key, *operation, *outcome, *request_id, *node;
	bool has_version;
	uint32_t version;
	int status;
	bool has_from, has_to;
	int64_t from_us; /* time >= from */
	int64_t to_us;	 /* time < to */
	/* All pairs must be found in one context object (audit_view_each_context). */
	const struct audit_ctx_pair *ctx;
	size_t n_ctx;
};

bool audit_filter_match(const struct audit_filter *f, const struct audit_view *r);

/* ---- the scan -------------------------------------------------------------------- */

struct audit_scan_stats {
	uint64_t files, lines, records, matched;
	uint64_t malformed; /* lines skipped */
	uint64_t disorder;  /* records whose seq is not above the one before (overlapping or
			     * repeated segments: counts may include records twice) */
};

/* Called for each matching record in file order, with the line it came from (len
 * bytes, no newline). An error stops the scan, which returns it. */
typedef kms_err (*audit_match_fn)(void *ctx, const struct audit_view *r, const char *line,
				  size_t len);
/* Called for each malformed line and each seq going back ("file:line: what"). */
typedef void (*audit_note_fn)(void *ctx, const char *file, uint64_t line, const char *what);

/* Reads the segments in order and calls on_match for every record that f matches.
 * Segments of several nodes (a cluster: their first records name different nodes) are
 * read as one chain per node, each in seq order, and the nodes' records are merged by
 * time (equal times: by node id); disorder then counts seq going back within a node.
 * KMS_OK when every file was read to its end (malformed lines do not make it fail: see
 * st); KMS_ERR_IO when one could not be read; the callback's failure. */
KMS_WUR kms_err audit_scan(const struct audit_segs *s, const struct audit_filter *f,
			   audit_match_fn on_match, audit_note_fn on_note, void *ctx,
			   struct audit_scan_stats *st);

#endif
