/* POST /v1/sys/backup: an encrypted, authenticated archive of the store and the audit
 * log (kms/core/backup.c; docs/OPERATIONS.md "Backup and restore"). Admin-only in the
 * built-in policy (rule admin-management). The answer is the archive itself,
 * application/octet-stream; core_call sends it only after this call's audit record is
 * durable. The record's reason names the archive's SHA-256 and size, so an archive found
 * later can be tied to the call that made it (`kmsctl backup` prints the same hash). */
#include "kms/core/core_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/log.h"
#include "kms/core/backup.h"

kms_err op_sys_backup(struct core *c, struct op_ctx *x)
{
	uint8_t sha[32];
	char *summary = NULL, hex[65];
	uint64_t size = 0;
	size_t used;
	int fd = -1;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "sys/backup takes no parameters");
	rc = backup_write(c->p11, c->st, c->au, &c->quiesce, &fd, &size, sha, &summary);
	if (rc != KMS_OK)
		return rc;
	kms_hex_encode(sha, sizeof(sha), hex);
	hex[64] = '\0';
	kms_info("%s by %s: %llu bytes, sha256 %s", summary ? summary : "backup", x->who.name,
		 (unsigned long long)size, hex);
	free(summary);
	/* the policy's reason, then the archive: one line in the audit record */
	used = strnlen(x->reason, sizeof(x->reason));
	snprintf(x->reason + used, sizeof(x->reason) - used, "; archive sha256 %s, %llu bytes", hex,
		 (unsigned long long)size);
	x->has_file = true;
	x->file_fd = fd;
	x->file_size = size;
	return KMS_OK;
}
