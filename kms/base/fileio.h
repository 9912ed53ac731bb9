/* Small POSIX file helpers shared by kmsd (audit log, backups) and kmsctl (backup,
 * bulk rewrap, seal/open), so that "make a rename durable" and "read to the end" are
 * written once. */
#ifndef KMS_BASE_FILEIO_H
#define KMS_BASE_FILEIO_H

#include <stddef.h>
#include <sys/types.h>

/* fsync of directory dir, so that a create, rename, link or unlink in it is durable.
 * 0, or -1 with errno set. */
int kms_fsync_dir(const char *dir);

/* kms_fsync_dir of the directory that holds path ("." for a bare name, "/" for a name
 * in the root). 0, or -1 with errno set (ENAMETOOLONG for a path over PATH_MAX). */
int kms_fsync_parent(const char *path);

/* Writes all n bytes, retrying EINTR and short writes: 0, or -1 with errno set. */
int kms_write_all(int fd, const void *buf, size_t n);

/* Reads until n bytes or end of file, retrying EINTR: the count (less than n only at
 * end of file), or -1 with errno set. */
ssize_t kms_read_full(int fd, void *buf, size_t n);

#endif
