/* Audit log: one JSON object per line, appended and fdatasync'd before audit_append
 * returns, so a caller that got KMS_OK may answer its client. Concurrent appends are
 * group-committed: whichever caller finds no write in progress writes every pending
 * record and syncs once; the others wait for that sync.
 *
 * Fail closed: after any failed write or fsync the log is marked failed for good (a
 * failed fsync is never retried on the same file: the kernel may already have dropped
 * the dirty pages), and every later append returns KMS_ERR_AUDIT.
 *
 * The hash chain, signed checkpoints, segments and the offline verifier extend this
 * module without changing audit_append's contract. */
#ifndef KMS_AUDIT_AUDIT_H
#define KMS_AUDIT_AUDIT_H

#include <stdbool.h>
#include <stdint.h>

#include "kms/base/err.h"

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

/* Opens (creates 0600) path for appending. A torn last line left by a crash is cut
 * off (and said in the log); seq continues after the last complete record. */
KMS_WUR kms_err audit_open(const char *path, const char *node_id, struct audit **out);

/* Formats, appends and makes durable one record. KMS_ERR_AUDIT when the log has failed. */
KMS_WUR kms_err audit_append(struct audit *a, const struct audit_record *r);

/* false once a write or sync has failed. */
bool audit_healthy(struct audit *a);

/* Records written since open (for tests and metrics). */
uint64_t audit_seq(struct audit *a);

void audit_close(struct audit *a); /* accepts NULL */

#endif
