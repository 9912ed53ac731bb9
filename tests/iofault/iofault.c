/* iofault.so: an LD_PRELOAD library that fails file I/O on command, for tests of the
 * audit log and the store under ENOSPC, EIO and friends (issues 5 and 8).
 *
 * Off unless IOFAULT_CTL names a control file. The file holds one rule, re-read whenever
 * the file changes (rewrite it to re-arm; make it empty to disarm):
 *
 *   <call> <errno> <mode> <path substring>
 *
 *   call       write (write, pwrite, writev), sync (fsync, fdatasync), open (an open
 *              for writing or creating), rename (either name), truncate (ftruncate),
 *              or any
 *   errno      ENOSPC, EIO, EDQUOT, EROFS, EFBIG or a number; or SLOW: the call is not
 *              failed but delayed by 50 ms, then done (a slow disk)
 *   mode       once (the first matching call fails, then the rule is spent), always,
 *              after:N (matching calls 1..N pass, every later one fails), or nth:N
 *              (only matching call N fails; 1-based)
 *   substring  the rule applies to files whose path contains it (the path of an fd is
 *              read from /proc/self/fd)
 *
 * Every failure it injects is appended as a line "<call> <errno> <path>" to
 * "<IOFAULT_CTL>.log", so a test can tell that the fault was hit (a delay is logged
 * with errno -2). A failed write writes nothing. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum call { C_WRITE, C_SYNC, C_OPEN, C_RENAME, C_TRUNCATE, C_ANY, C__N };

static const char *const call_names[C__N] = {"write", "sync", "open", "rename", "truncate", "any"};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct rule {
	bool armed;
	enum call call;
	int err;
	int mode; /* 0 once, 1 always, 2 after, 3 nth */
	unsigned long after, seen;
	char sub[PATH_MAX];
	/* the control file version this rule came from */
	ino_t ino;
	struct timespec mtim;
	off_t size;
} rule;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_ftruncate)(int, off_t);

/* The next definition of a symbol (libc's), looked up once. */
static void *resolve(void **slot, const char *name)
{
	if (*slot == NULL)
		*slot = dlsym(RTLD_NEXT, name);
	return slot;
}

#define REAL(name) (*(__typeof__(real_##name) *)resolve((void **)&real_##name, #name))

#define IOFAULT_SLOW (-2) /* not an errno: delay the call, then do it */
#define IOFAULT_SLOW_NS 50000000L

static int errno_from(const char *s)
{
	static const struct { const char *n; int e; } t[] = {
		{"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}, {"EFBIG", EFBIG}};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(s, t[i].n) == 0)
			return t[i].e;
	if (strcmp(s, "SLOW") == 0)
		return IOFAULT_SLOW;
	return atoi(s);
}

/* Re-reads the control file if it changed. Called with mu held. */
static void refresh_locked(const char *ctl)
{
	char line[PATH_MAX + 64], call[16], err[16], mode[32], sub[PATH_MAX];
	struct stat st;
	FILE *f;
	int i;

	if (stat(ctl, &st) != 0) {
		rule.armed = false;
		return;
	}
	if (st.st_ino == rule.ino && st.st_size == rule.size && st.st_mtim.tv_sec == rule.mtim.tv_sec &&
	    st.st_mtim.tv_nsec == rule.mtim.tv_nsec)
		return;
	memset(&rule, 0, sizeof(rule));
	rule.ino = st.st_ino;
	rule.size = st.st_size;
	rule.mtim = st.st_mtim;
	f = fopen(ctl, "re");
	if (f == NULL)
		return;
	if (fgets(line, sizeof(line), f) != NULL &&
	    sscanf(line, "%15s %15s %31s %4095s", call, err, mode, sub) == 4) {
		for (i = 0; i < C__N; i++)
			if (strcmp(call, call_names[i]) == 0)
				break;
		if (i < C__N) {
			rule.call = (enum call)i;
			rule.err = errno_from(err);
			if (strcmp(mode, "always") == 0)
				rule.mode = 1;
			else if (strncmp(mode, "after:", 6) == 0) {
				rule.mode = 2;
				rule.after = strtoul(mode + 6, NULL, 10);
			} else if (strncmp(mode, "nth:", 4) == 0) {
				rule.mode = 3;
				rule.after = strtoul(mode + 4, NULL, 10);
			}
			snprintf(rule.sub, sizeof(rule.sub), "%s", sub);
			rule.armed = rule.err > 0 || rule.err == IOFAULT_SLOW;
		}
	}
	fclose(f);
}

static void note(const char *ctl, enum call c, int err, const char *path)
{
	char log[PATH_MAX + 8], line[PATH_MAX + 64];
	int fd, n;

	snprintf(log, sizeof(log), "%s.log", ctl);
	fd = REAL(open)(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%s %d %s\n", call_names[c], err, path);
	if (n > 0)
		(void)!REAL(write)(fd, line, (size_t)n);
	close(fd);
}

/* Whether this call on this path must fail; sets errno when it must. */
static bool should_fail(enum call c, const char *path)
{
	const char *ctl = getenv("IOFAULT_CTL");
	bool fail = false;
	int err = 0;

	if (ctl == NULL || *ctl == '\0' || path == NULL)
		return false;
	pthread_mutex_lock(&mu);
	refresh_locked(ctl);
	if (rule.armed && (rule.call == C_ANY || rule.call == c) && strstr(path, rule.sub) != NULL &&
	    strstr(path, ctl) == NULL) {
		rule.seen++;
		if (rule.mode == 0) {
			fail = true;
			rule.armed = false;
		} else if (rule.mode == 3) {
			fail = rule.seen == rule.after;
		} else if (rule.mode == 1 || rule.seen > rule.after) {
			fail = true;
		}
		err = rule.err;
	}
	pthread_mutex_unlock(&mu);
	if (fail && err == IOFAULT_SLOW) {
		struct timespec ts = {0, IOFAULT_SLOW_NS};

		note(ctl, c, err, path);
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
		return false;
	}
	if (fail) {
		note(ctl, c, err, path);
		errno = err;
	}
	return fail;
}

static bool fd_should_fail(enum call c, int fd)
{
	char link[64], path[PATH_MAX];
	ssize_t n;
	const char *ctl = getenv("IOFAULT_CTL");

	if (ctl == NULL || *ctl == '\0')
		return false;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0 || path[0] != '/')
		return false; /* sockets, pipes */
	path[n] = '\0';
	return should_fail(c, path);
}

int open(const char *path, int flags, ...)
{
	mode_t m = 0;
	va_list ap;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_start(ap, flags);
		m = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	if ((flags & (O_WRONLY | O_RDWR | O_CREAT)) && should_fail(C_OPEN, path))
		return -1;
	return REAL(open)(path, flags, m);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t m = 0;
	va_list ap;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_start(ap, flags);
		m = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	if ((flags & (O_WRONLY | O_RDWR | O_CREAT)) && should_fail(C_OPEN, path))
		return -1;
	return REAL(openat)(dirfd, path, flags, m);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

ssize_t write(int fd, const void *buf, size_t n)
{
	if (fd > 2 && fd_should_fail(C_WRITE, fd))
		return -1;
	return REAL(write)(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (fd_should_fail(C_WRITE, fd))
		return -1;
	return REAL(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) __attribute__((alias("pwrite")));

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	if (fd > 2 && fd_should_fail(C_WRITE, fd))
		return -1;
	return REAL(writev)(fd, iov, cnt);
}

int fsync(int fd)
{
	if (fd_should_fail(C_SYNC, fd))
		return -1;
	return REAL(fsync)(fd);
}

int fdatasync(int fd)
{
	if (fd_should_fail(C_SYNC, fd))
		return -1;
	return REAL(fdatasync)(fd);
}

int rename(const char *from, const char *to)
{
	if (should_fail(C_RENAME, from) || should_fail(C_RENAME, to))
		return -1;
	return REAL(rename)(from, to);
}

int ftruncate(int fd, off_t len)
{
	if (fd_should_fail(C_TRUNCATE, fd))
		return -1;
	return REAL(ftruncate)(fd, len);
}

int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));
