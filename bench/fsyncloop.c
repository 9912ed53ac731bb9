/* fsyncloop — the durable-append ceiling for `make bench`.
 *
 * Appends RECORD-byte lines to a new file (O_APPEND, as the audit log is opened) and
 * calls fdatasync after every PER_SYNC of them, for S seconds, on one thread: what the
 * audit writer could do at best on this file system, with one record per fsync (no
 * group commit) and with PER_SYNC records per fsync (group commit). The file grows like
 * the audit log does (no preallocation), so each fdatasync also carries the size change.
 * Prints one JSON object on stdout:
 *   {"per_sync":K,"record":B,"seconds":S,"records":N,"syncs":M,
 *    "records_per_s":R,"syncs_per_s":F}
 * The file is removed at the end.
 *
 * Usage: fsyncloop --file PATH [--per-sync K] [--record B] [--seconds S]
 * Exit status 0 on success, 1 on an I/O error, 2 on bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RECORD 65536

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	unsigned long per_sync = 1, i;
	size_t record = 300;
	double seconds = 3, t0, t;
	unsigned long long records = 0, syncs = 0;
	char *line = NULL;
	int fd = -1, rc = 1;

	for (int a = 1; a < argc; a += 2) {
		const char *v = a + 1 < argc ? argv[a + 1] : NULL;

		if (v == NULL)
			goto usage;
		if (strcmp(argv[a], "--file") == 0)
			path = v;
		else if (strcmp(argv[a], "--per-sync") == 0)
			per_sync = strtoul(v, NULL, 10);
		else if (strcmp(argv[a], "--record") == 0)
			record = strtoul(v, NULL, 10);
		else if (strcmp(argv[a], "--seconds") == 0)
			seconds = strtod(v, NULL);
		else
			goto usage;
	}
	if (path == NULL || per_sync < 1 || per_sync > 100000 || record < 2 ||
	    record > MAX_RECORD || !(seconds > 0))
		goto usage;

	if ((line = malloc(record)) == NULL)
		goto out;
	/* a JSON-ish line of the right length; its content does not matter to the disk */
	memset(line, 'x', record);
	line[0] = '{';
	line[record - 2] = '}';
	line[record - 1] = '\n';

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "fsyncloop: %s: %s\n", path, strerror(errno));
		goto out;
	}
	t0 = now_s();
	do {
		for (i = 0; i < per_sync; i++) {
			if (write_all(fd, line, record) != 0) {
				fprintf(stderr, "fsyncloop: write: %s\n", strerror(errno));
				goto out;
			}
		}
		if (fdatasync(fd) != 0) {
			fprintf(stderr, "fsyncloop: fdatasync: %s\n", strerror(errno));
			goto out;
		}
		records += per_sync;
		syncs++;
		t = now_s() - t0;
	} while (t < seconds);
	printf("{\"per_sync\":%lu,\"record\":%zu,\"seconds\":%.3f,\"records\":%llu,\"syncs\":%llu,"
	       "\"records_per_s\":%.1f,\"syncs_per_s\":%.1f}\n",
	       per_sync, record, t, records, syncs, (double)records / t, (double)syncs / t);
	rc = 0;
out:
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	free(line);
	return rc;
usage:
	fprintf(stderr, "usage: fsyncloop --file PATH [--per-sync K] [--record B] [--seconds S]\n");
	return 2;
}
