#include "kms/base/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Each secret gets its own mapping: secrets are few and long-lived (PINs, seeds), and
 * a private mapping is the only way to mlock and MADV_DONTDUMP without touching
 * neighbouring heap data. Hot-path key material lives on the stack and is wiped. */
struct secret_hdr {
	size_t map_len;
	size_t user_len;
};

void kms_wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		OPENSSL_cleanse(p, n);
}

void *kms_secret_alloc(size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t need, map_len;
	struct secret_hdr *h;

	if (n == 0 || n > KMS_SECRET_MAX)
		return NULL;
	need = sizeof(*h) + n;
	map_len = (need + page - 1) / page * page;
	h = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h == MAP_FAILED)
		return NULL;
	(void)madvise(h, map_len, MADV_DONTDUMP);
	(void)mlock(h, map_len); /* best effort: RLIMIT_MEMLOCK may be small */
	h->map_len = map_len;
	h->user_len = n;
	return h + 1;
}

void kms_secret_free(void *p)
{
	struct secret_hdr *h;
	size_t map_len;

	if (p == NULL)
		return;
	h = (struct secret_hdr *)p - 1;
	map_len = h->map_len;
	OPENSSL_cleanse(h, map_len);
	(void)munlock(h, map_len);
	(void)munmap(h, map_len);
}

int kms_secret_read_file(const char *path, char **out, size_t *len)
{
	char buf[512];
	struct stat st;
	ssize_t n;
	size_t l;
	char *s;
	int fd, rc = -1;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0)
		goto out;
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
		errno = EPERM;
		goto out;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		goto out;
	buf[n] = '\0';
	l = strcspn(buf, "\r\n");
	if (l == 0) {
		errno = EINVAL;
		goto out;
	}
	s = kms_secret_alloc(l + 1);
	if (s == NULL) {
		errno = ENOMEM;
		goto out;
	}
	memcpy(s, buf, l);
	s[l] = '\0';
	*out = s;
	*len = l;
	rc = 0;
out:
	kms_wipe(buf, sizeof(buf));
	close(fd);
	return rc;
}

int kms_secret_from_env(const char *name, char **out, size_t *len)
{
	char *v = getenv(name);
	size_t l;
	char *s;

	if (v == NULL || (l = strlen(v)) == 0)
		return -1;
	s = kms_secret_alloc(l + 1);
	if (s == NULL)
		return -1;
	memcpy(s, v, l);
	kms_wipe(v, l);
	unsetenv(name);
	*out = s;
	*len = l;
	return 0;
}
