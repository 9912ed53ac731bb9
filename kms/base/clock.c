#include "kms/base/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

static pthread_mutex_t clock_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t clock_offset;
static struct timespec clock_mtime;
static off_t clock_size = -1;
static ino_t clock_ino;

bool kms_clock_is_test(void)
{
	const char *f = getenv("KMSD_TEST_CLOCK_FILE");

	return f != NULL && *f != '\0';
}

int64_t kms_now(void)
{
	const char *f = getenv("KMSD_TEST_CLOCK_FILE");
	int64_t now = (int64_t)time(NULL), off;
	struct stat st;

	if (f == NULL || *f == '\0')
		return now;
	pthread_mutex_lock(&clock_mu);
	if (stat(f, &st) == 0 && (st.st_mtim.tv_sec != clock_mtime.tv_sec ||
				  st.st_mtim.tv_nsec != clock_mtime.tv_nsec || st.st_size != clock_size ||
				  st.st_ino != clock_ino)) {
		FILE *fp = fopen(f, "r");
		long long v;
		if (fp != NULL) {
			if (fscanf(fp, "%lld", &v) == 1)
				clock_offset = v;
			fclose(fp);
		}
		clock_mtime = st.st_mtim;
		clock_size = st.st_size;
		clock_ino = st.st_ino;
	}
	off = clock_offset;
	pthread_mutex_unlock(&clock_mu);
	return now + off;
}

int64_t kms_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
