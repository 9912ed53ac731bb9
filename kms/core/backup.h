/* Backup archives (docs/FORMATS.md "Backup archive", docs/OPERATIONS.md "Backup and
 * restore"): one file holding a consistent snapshot of the store, the audit segments
 * and the audit public key, with a manifest, encrypted and authenticated in the token.
 *
 * The archive key is an AES-256 key generated inside the token and kept only as a KWP
 * blob under the active master key (like a tenant KEK); the archive is AES-256-GCM in
 * chunks, each encrypted by the token (C_Encrypt) with that key, so the key never exists
 * outside the token. The clear header names the master key (version, label and a
 * fingerprint, p11_mk_fingerprint) so that a restore under another master key is refused
 * with both identities before anything is decrypted. */
#ifndef KMS_CORE_BACKUP_H
#define KMS_CORE_BACKUP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "kms/base/err.h"

#define BACKUP_MAGIC "KMSDBAK1"
#define BACKUP_FORMAT 1
#define BACKUP_CHUNK (1u << 20)		/* plaintext bytes per chunk */
#define BACKUP_HEADER_MAX 4096		/* clear header, bytes */
#define BACKUP_MANIFEST_MAX (4u << 20)	/* manifest, bytes */
#define BACKUP_FILES_MAX 100000		/* files in one archive */

struct p11;
struct store;
struct audit;

/* quiesce (may be NULL) is held for writing while the store snapshot and the audit cut
 * are taken: the serving core read-holds it from each change to its durable audit
 * record, so the cut has the record of every change in the snapshot.
 * Writes an archive of the serving store and audit log into a new, unlinked file in the
 * audit log's directory (O_TMPFILE, 0600): on success *out_fd (read/write, CLOEXEC,
 * owned by the caller) holds *size bytes of archive, whose SHA-256 is in sha256. The audit public key is read from
 * audit_path + ".pub.pem" beside the log. CONFLICT while a master-key rotation is in progress (key versions are then wrapped
 * under two master keys; finish it first). On success *summary (may be NULL) is a
 * malloc'd one-line description for the log. */
KMS_WUR kms_err backup_write(struct p11 *p11, struct store *st, struct audit *au,
			     pthread_rwlock_t *quiesce, int *out_fd, uint64_t *size, uint8_t sha256[32],
			     char **summary);

struct backup_restore_opts {
	const char *archive;	/* the archive file */
	const char *store_path; /* where the store goes (configuration's store_path) */
	const char *audit_path; /* where the current audit file goes (audit_path) */
	const char *node_id;	/* for the restore's own audit record */
	const char *principal;	/* who runs it ("os:<login>") */
	bool force;		/* move existing files aside instead of refusing */
};

/* Restores an archive (offline: kmsd must not serve on these paths). Checks the header,
 * the master key (KMS_ERR_CONFLICT naming both identities if the token's differs or is
 * missing), every chunk's authentication (KMS_ERR_DECRYPT for a tampered or truncated
 * archive), the manifest (KMS_ERR_CONFLICT for a newer store schema than this kmsd) and
 * every file's size and SHA-256 before anything is put in place; existing files are
 * refused (KMS_ERR_CONFLICT, naming them) unless opts->force, which moves them aside
 * into a directory named in the log, never deleting them. Files are written to
 * temporary names, synced, renamed and their directories synced. Finally a
 * "sys.restore" record is appended to the restored audit log (chained to it, then a
 * signed checkpoint), so `kmsctl audit verify` passes across the restore. */
KMS_WUR kms_err backup_restore(struct p11 *p11, const struct backup_restore_opts *opts);

#endif
