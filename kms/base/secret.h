/* Memory for secrets (PINs, plaintext keys held longer than one call).
 * Pages are mlock'd (best effort) and excluded from core dumps; memory is wiped before
 * it is returned to the system. Never realloc a secret: allocate, copy, free. */
#ifndef KMS_BASE_SECRET_H
#define KMS_BASE_SECRET_H

#include <stddef.h>

/* The largest secret allocation: room for a sealed file's largest chunk (4 MiB) of
 * plaintext. */
#define KMS_SECRET_MAX (8u << 20)

/* Returns zeroed memory of n bytes (0 < n <= KMS_SECRET_MAX), or NULL. Free with
 * kms_secret_free. */
void *kms_secret_alloc(size_t n);

/* Wipes and frees. Accepts NULL. */
void kms_secret_free(void *p);

/* Wipes n bytes in a way the compiler cannot elide (OPENSSL_cleanse). */
void kms_wipe(void *p, size_t n);

/* Reads a secret such as a PIN from a file (first line, trailing CR/LF removed) into
 * secret memory. *out is NUL-terminated; *len excludes the NUL. Refuses a file that is
 * group- or world-readable. Returns 0 or -1 (errno set; *out untouched). */
int kms_secret_read_file(const char *path, char **out, size_t *len);

/* Reads a secret from environment variable name into secret memory and wipes the
 * environment's copy. Returns 0 or -1 when unset or empty. */
int kms_secret_from_env(const char *name, char **out, size_t *len);

#endif
