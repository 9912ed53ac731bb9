/* p11loop — the raw PKCS#11 ceiling for `make bench`.
 *
 * Provisions the token named by SOFTHSM2_CONF and --label the way `kmsd init` does
 * (p11_provision), opens it through the project's token layer (p11_open), generates one
 * tenant KEK and loads its serving copy with p11_kek_load, i.e. the exact session-object
 * template kmsd serves with (sensitive, not extractable, WRAP_WITH_TRUSTED, ENCRYPT,
 * DECRYPT). Then N threads call p11_gcm_encrypt on 32-byte plaintexts for S seconds and
 * the total is printed as one JSON object on stdout:
 *   {"threads":N,"seconds":S,"ops":K,"ops_per_s":R,"per_thread":[...]}
 *
 * This goes through p11_gcm_encrypt (session pool lock included) and not through bare
 * C_EncryptInit/C_Encrypt: the pool's mutex costs well under a microsecond against
 * SoftHSM2's tens, and it keeps the ceiling to the template and call kmsd really makes.
 *
 * Usage: p11loop --so-pin-file F --pin-file F [--module M] [--label L] [--threads N]
 *                [--seconds S] [--size B] [--aad B]
 * Exit status 0 on success, 1 on a token error, 2 on bad usage. Bench-only: the token
 * must be a throwaway one (it gets a master key and a fresh KEK). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "pkcs11/p11.h"

#define MAX_THREADS 64
#define MAX_SIZE 4096

struct worker {
	pthread_t tid;
	struct p11 *p;
	p11_key key;
	size_t size;
	size_t aad;
	unsigned long long ops;
	kms_err err;
};

static atomic_bool stop_flag;
static pthread_barrier_t start_barrier;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint8_t iv[P11_GCM_IV_LEN] = {0};
	uint8_t pt[MAX_SIZE];
	uint8_t aad[MAX_SIZE];
	uint8_t out[MAX_SIZE + P11_GCM_TAG_LEN];

	memset(pt, 0x5a, w->size);
	memset(aad, 0xa5, w->aad);
	pthread_barrier_wait(&start_barrier);
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
		/* A counter IV: never repeats under this throwaway key, costs nothing. */
		memcpy(iv, &w->ops, sizeof(w->ops));
		w->err = p11_gcm_encrypt(w->p, w->key, iv, aad, w->aad, pt, w->size, out, sizeof(out));
		if (w->err != KMS_OK)
			break;
		w->ops++;
	}
	return NULL;
}

static int read_pin(const char *path, char *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (f == NULL) {
		fprintf(stderr, "p11loop: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (fgets(buf, (int)cap, f) == NULL) {
		fclose(f);
		fprintf(stderr, "p11loop: %s: empty\n", path);
		return -1;
	}
	fclose(f);
	n = strcspn(buf, "\r\n");
	buf[n] = '\0';
	*len = n;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: p11loop --so-pin-file F --pin-file F [--module M] [--label L]\n"
			"               [--threads N] [--seconds S] [--size B] [--aad B]\n");
}

int main(int argc, char **argv)
{
	const char *so_file = NULL, *pin_file = NULL, *label = "kmsd";
	const char *module = P11_DEFAULT_MODULE;
	unsigned threads = 1;
	double seconds = 3;
	size_t size = 32, aad = 0;
	char so_pin[256], pin[256];
	size_t so_len = 0, pin_len = 0;
	struct p11 *p = NULL;
	struct worker w[MAX_THREADS];
	uint8_t blob[P11_KEK_BLOB_LEN];
	p11_key key = 0;
	unsigned started = 0, i;
	unsigned long long total = 0;
	double t0, t1;
	kms_err err;
	int rc = 1;

	for (int a = 1; a < argc; a++) {
		const char *v = a + 1 < argc ? argv[a + 1] : NULL;

		if (v == NULL) {
			usage();
			return 2;
		}
		if (strcmp(argv[a], "--so-pin-file") == 0)
			so_file = v;
		else if (strcmp(argv[a], "--pin-file") == 0)
			pin_file = v;
		else if (strcmp(argv[a], "--module") == 0)
			module = v;
		else if (strcmp(argv[a], "--label") == 0)
			label = v;
		else if (strcmp(argv[a], "--threads") == 0)
			threads = (unsigned)strtoul(v, NULL, 10);
		else if (strcmp(argv[a], "--seconds") == 0)
			seconds = strtod(v, NULL);
		else if (strcmp(argv[a], "--size") == 0)
			size = strtoul(v, NULL, 10);
		else if (strcmp(argv[a], "--aad") == 0)
			aad = strtoul(v, NULL, 10);
		else {
			usage();
			return 2;
		}
		a++;
	}
	if (so_file == NULL || pin_file == NULL || threads < 1 || threads > MAX_THREADS ||
	    !(seconds > 0) || size > MAX_SIZE || aad > MAX_SIZE) {
		usage();
		return 2;
	}
	if (read_pin(so_file, so_pin, sizeof(so_pin), &so_len) != 0 ||
	    read_pin(pin_file, pin, sizeof(pin), &pin_len) != 0)
		goto out;

	struct p11_config pc = {module, label, threads};

	err = p11_provision(&pc, so_pin, so_len, pin, pin_len);
	if (err != KMS_OK && err != KMS_ERR_CONFLICT) {
		fprintf(stderr, "p11loop: provision: %s\n", kms_err_detail(err));
		goto out;
	}
	err = p11_open(&pc, pin, pin_len, &p);
	if (err != KMS_OK) {
		fprintf(stderr, "p11loop: open: %s\n", kms_err_detail(err));
		goto out;
	}
	if ((err = p11_kek_generate(p, 1, blob)) != KMS_OK || /* a fresh token: master key 1 */
	    (err = p11_kek_load(p, 1, blob, sizeof(blob), &key)) != KMS_OK) {
		fprintf(stderr, "p11loop: KEK: %s\n", kms_err_detail(err));
		goto out;
	}

	if (pthread_barrier_init(&start_barrier, NULL, threads + 1) != 0)
		goto out;
	for (i = 0; i < threads; i++) {
		w[i] = (struct worker){.p = p, .key = key, .size = size, .aad = aad};
		if (pthread_create(&w[i].tid, NULL, worker_main, &w[i]) != 0) {
			fprintf(stderr, "p11loop: pthread_create failed\n");
			/* the barrier can never open now: nothing sensible to clean up */
			_exit(1);
		}
		started++;
	}
	pthread_barrier_wait(&start_barrier);
	t0 = now_s();
	while (now_s() - t0 < seconds)
		usleep(10000);
	atomic_store(&stop_flag, true);
	for (i = 0; i < started; i++)
		pthread_join(w[i].tid, NULL);
	t1 = now_s();
	pthread_barrier_destroy(&start_barrier);

	for (i = 0; i < started; i++) {
		if (w[i].err != KMS_OK) {
			fprintf(stderr, "p11loop: encrypt: %s\n", kms_strerror(w[i].err));
			goto out;
		}
		total += w[i].ops;
	}
	printf("{\"threads\":%u,\"seconds\":%.3f,\"size\":%zu,\"aad\":%zu,\"ops\":%llu,"
	       "\"ops_per_s\":%.1f,\"per_thread\":[",
	       threads, t1 - t0, size, aad, total, (double)total / (t1 - t0));
	for (i = 0; i < started; i++)
		printf("%s%llu", i ? "," : "", w[i].ops);
	printf("]}\n");
	rc = 0;
out:
	p11_kek_unload(p, key);
	p11_close(p);
	explicit_bzero(so_pin, sizeof(so_pin));
	explicit_bzero(pin, sizeof(pin));
	return rc;
}
