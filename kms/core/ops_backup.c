/* POST /v1/sys/backup: an encrypted, authenticated archive of the store and the audit
 * log (kms/core/backup.c; docs/OPERATIONS.md "Backup and restore"). Admin-only in the
 * built-in policy (rule admin-management). The answer is the archive itself,
 * application/octet-stream; core_call sends it only after this call's audit record is
 * durable. */
#include "kms/core/core_int.h"

#include <stdlib.h>

#include "kms/base/log.h"
#include "kms/core/backup.h"

kms_err op_sys_backup(struct core *c, struct op_ctx *x)
{
	char *summary = NULL;
	uint64_t size = 0;
	int fd = -1;
	kms_err rc;

	if (x->call->body != NULL && json_object_size(x->call->body) != 0)
		return kms_errf(KMS_ERR_INVALID, "sys/backup takes no parameters");
	rc = backup_write(c->p11, c->st, c->au, &c->quiesce, &fd, &size, &summary);
	if (rc != KMS_OK)
		return rc;
	kms_info("%s by %s: %llu bytes", summary ? summary : "backup", x->who.name, (unsigned long long)size);
	free(summary);
	x->has_file = true;
	x->file_fd = fd;
	x->file_size = size;
	return KMS_OK;
}
