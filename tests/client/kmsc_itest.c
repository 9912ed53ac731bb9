/* The integration driver of libkmsclient: tests/integration/test_kmsclient.py runs it
 * against a real kmsd. Settings from KMS_ADDR, KMS_CACERT, KMS_TOKEN_FILE (and
 * KMS_CLIENT_CERT, KMS_CLIENT_KEY); KMSC_CACHE=1
 * turns the data-key cache on (age 60 s, 3 messages, 1 MiB unless KMSC_CACHE_MSGS says).
 *
 *   roundtrip T K            datakey, decrypt, rewrap, decrypt again
 *   batch T K                the three batch calls, and one item failing (KMSC_ERR_PARTIAL)
 *   rewrap T K WRAPPED [k=v...]   prints the rewrapped key
 *   seal-buf T K IN OUT [k=v...]   open-buf IN OUT [T K [k=v...]] (expected tenant, key,
 *                                  context; "-" for T or K: any)
 *   seal-fd T K IN OUT [k=v...]    open-fd IN OUT
 *   err datakey|decrypt T K [WRAPPED] [k=v...]   prints "KIND STATUS MESSAGE", exit 0
 *   threads T K N M          N threads share one client, M seal/open round trips each
 *   cache T K K2 T2          the cache's age and message bounds seen from the sealed
 *                            headers; never across contexts, keys (K2) or tenants (T2)
 * Prints "ok" (or the err line) and exits 0; anything else is a failure (exit 1). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <kmsclient.h>

#define CHECK(cond)                                                                            \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "kmsc_itest:%d: %s failed (last: %ld %s)\n", __LINE__, \
				#cond, kmsc_last_status(), kmsc_last_message());               \
			exit(1);                                                               \
		}                                                                              \
	} while (0)

static uint64_t fake_ms;

static uint64_t fake_clock(void *arg)
{
	(void)arg;
	return fake_ms;
}

static struct kmsc *client(int cache, uint64_t msgs, int fake)
{
	struct kmsc_config cfg = {
		.addr = getenv("KMS_ADDR"),
		.ca_file = getenv("KMS_CACERT"),
		.token_file = getenv("KMS_TOKEN_FILE"),
		/* mTLS: a mapped client certificate may stand in for the token */
		.client_cert = getenv("KMS_CLIENT_CERT"),
		.client_key = getenv("KMS_CLIENT_KEY"),
		.cache = cache,
		.cache_max_age_ms = 60000,
		.cache_max_messages = msgs,
		.cache_max_bytes = 1 << 20,
		.clock_ms = fake ? fake_clock : NULL,
	};
	struct kmsc *c;

	CHECK(kmsc_open(&cfg, &c) == KMSC_OK);
	return c;
}

/* argv pairs "k=v" into a context (pointers into argv). */
static struct kmsc_ctx ctx_of(int argc, char **argv, struct kmsc_kv *kv)
{
	struct kmsc_ctx ctx = {kv, 0};

	for (int i = 0; i < argc; i++) {
		char *eq = strchr(argv[i], '=');

		CHECK(eq != NULL);
		*eq = '\0';
		kv[ctx.n].key = argv[i];
		kv[ctx.n].value = eq + 1;
		ctx.n++;
	}
	return ctx;
}

static uint8_t *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b = malloc(1 << 21);

	CHECK(f != NULL && b != NULL);
	*n = fread(b, 1, 1 << 21, f);
	fclose(f);
	return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
	FILE *f = fopen(path, "wb");

	CHECK(f != NULL && fwrite(b, 1, n, f) == n && fclose(f) == 0);
}

/* The wrapped DEK of a sealed buffer's header (documented layout), malloc'd. */
static char *wrapped_of(const uint8_t *b)
{
	size_t o = 24;

	for (int i = 0; i < 2; i++)
		o += 2 + ((size_t)b[o] << 8 | b[o + 1]);
	return strndup((const char *)b + o + 2, (size_t)b[o] << 8 | b[o + 1]);
}

static int roundtrip(const char *t, const char *k)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[] = {{"resourceType", "Patient"}, {"field", "name"}};
	struct kmsc_kv kv_rev[] = {{"field", "name"}, {"resourceType", "Patient"}};
	struct kmsc_ctx ctx = {kv, 2}, rev = {kv_rev, 2};
	uint8_t *dek, *dek2, *dek3;
	char *w, *w2;

	CHECK(kmsc_datakey(c, t, k, &ctx, &dek, &w) == KMSC_OK);
	CHECK(strncmp(w, "vault:v", 7) == 0);
	CHECK(kmsc_decrypt_dek(c, t, k, w, &rev, &dek2) == KMSC_OK); /* order does not matter */
	CHECK(memcmp(dek, dek2, KMSC_DEK_LEN) == 0);
	CHECK(kmsc_rewrap(c, t, k, w, &ctx, &w2) == KMSC_OK);
	CHECK(kmsc_decrypt_dek(c, t, k, w2, &ctx, &dek3) == KMSC_OK);
	CHECK(memcmp(dek, dek3, KMSC_DEK_LEN) == 0);
	printf("%s\n%s\n", w, w2);
	kmsc_free_secret(dek);
	kmsc_free_secret(dek2);
	kmsc_free_secret(dek3);
	kmsc_free(w);
	kmsc_free(w2);
	kmsc_close(c);
	return 0;
}

static int rewrap(const char *t, const char *k, const char *w, int argc, char **argv)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[64];
	struct kmsc_ctx ctx = ctx_of(argc, argv, kv);
	char *w2;

	CHECK(kmsc_rewrap(c, t, k, w, &ctx, &w2) == KMSC_OK);
	printf("%s\n", w2);
	kmsc_free(w2);
	kmsc_close(c);
	return 0;
}

static int batch(const char *t, const char *k)
{
	enum { N = 5 };
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[N][1];
	struct kmsc_ctx ctxs[N];
	struct kmsc_result dk[N], dec[N], rw[N];
	const char *wr[N];
	char mrn[N][16];

	for (int i = 0; i < N; i++) {
		snprintf(mrn[i], sizeof(mrn[i]), "mrn-%d", i);
		kv[i][0].key = "mrn";
		kv[i][0].value = mrn[i];
		ctxs[i].kv = kv[i];
		ctxs[i].n = 1;
	}
	CHECK(kmsc_datakey_batch(c, t, k, ctxs, N, dk) == KMSC_OK);
	for (int i = 0; i < N; i++) {
		CHECK(dk[i].err == KMSC_OK && dk[i].dek != NULL && dk[i].wrapped != NULL);
		CHECK(dk[i].version >= 1);
		wr[i] = dk[i].wrapped;
	}
	CHECK(kmsc_decrypt_dek_batch(c, t, k, wr, ctxs, N, dec) == KMSC_OK);
	for (int i = 0; i < N; i++)
		CHECK(dec[i].err == KMSC_OK && memcmp(dec[i].dek, dk[i].dek, KMSC_DEK_LEN) == 0);
	kmsc_results_clear(dec, N);
	CHECK(kmsc_rewrap_batch(c, t, k, wr, ctxs, N, rw) == KMSC_OK);
	for (int i = 0; i < N; i++)
		CHECK(rw[i].err == KMSC_OK && rw[i].wrapped != NULL);
	kmsc_results_clear(rw, N);
	/* item 2 under another item's context: only it fails */
	ctxs[2] = ctxs[3];
	CHECK(kmsc_decrypt_dek_batch(c, t, k, wr, ctxs, N, dec) == KMSC_ERR_PARTIAL);
	for (int i = 0; i < N; i++) {
		if (i == 2) {
			CHECK(dec[i].err == KMSC_ERR_BAD_REQUEST && dec[i].dek == NULL);
			CHECK(dec[i].message != NULL && dec[i].message[0] != '\0');
		} else {
			CHECK(dec[i].err == KMSC_OK && memcmp(dec[i].dek, dk[i].dek, KMSC_DEK_LEN) == 0);
		}
	}
	printf("item 2: %s\n", dec[2].message);
	kmsc_results_clear(dec, N);
	kmsc_results_clear(dk, N);
	/* sizes out of range are refused before anything is sent */
	CHECK(kmsc_datakey_batch(c, t, k, NULL, 0, dk) == KMSC_ERR_INVALID);
	CHECK(kmsc_datakey_batch(c, t, k, NULL, KMSC_BATCH_MAX + 1, dk) == KMSC_ERR_INVALID);
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

static int seal_buf(const char *t, const char *k, const char *in, const char *out, int argc,
		    char **argv)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[64];
	struct kmsc_ctx ctx = ctx_of(argc, argv, kv);
	size_t n, sn;
	uint8_t *pt = slurp(in, &n), *sealed;

	CHECK(kmsc_seal_buffer(c, t, k, &ctx, pt, n, &sealed, &sn) == KMSC_OK);
	spit(out, sealed, sn);
	kmsc_free(sealed);
	free(pt);
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

static int open_buf(const char *in, const char *out, int argc, char **argv)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[64];
	struct kmsc_ctx ctx = ctx_of(argc > 2 ? argc - 2 : 0, argv + 2, kv);
	struct kmsc_want want = {argc > 0 && strcmp(argv[0], "-") != 0 ? argv[0] : NULL,
				 argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL,
				 argc > 2 ? &ctx : NULL};
	size_t n, pn;
	uint8_t *sealed = slurp(in, &n), *pt;
	kmsc_err e = kmsc_open_buffer(c, sealed, n, argc > 0 ? &want : NULL, &pt, &pn);

	free(sealed);
	if (e != KMSC_OK) {
		CHECK(pt == NULL && pn == 0);
		printf("%s %ld %s\n", kmsc_err_name(e), kmsc_last_status(), kmsc_last_message());
		kmsc_close(c);
		return 0;
	}
	spit(out, pt, pn);
	kmsc_free_secret(pt);
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

static int seal_fd(const char *t, const char *k, const char *in, const char *out, int argc,
		   char **argv)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[64];
	struct kmsc_ctx ctx = ctx_of(argc, argv, kv);
	int ifd = open(in, O_RDONLY), ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	CHECK(ifd >= 0 && ofd >= 0);
	CHECK(kmsc_seal_fd(c, t, k, &ctx, 1000, ifd, ofd) == KMSC_OK);
	close(ifd);
	CHECK(close(ofd) == 0);
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

static int open_fd(const char *in, const char *out)
{
	struct kmsc *c = client(0, 1, 0);
	int ifd = open(in, O_RDONLY), ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	kmsc_err e;

	CHECK(ifd >= 0 && ofd >= 0);
	e = kmsc_open_fd(c, ifd, ofd, NULL);
	close(ifd);
	close(ofd);
	kmsc_close(c);
	if (e != KMSC_OK) {
		printf("%s %ld %s\n", kmsc_err_name(e), kmsc_last_status(), kmsc_last_message());
		return 0;
	}
	printf("ok\n");
	return 0;
}

static int err(int argc, char **argv)
{
	struct kmsc *c = client(0, 1, 0);
	struct kmsc_kv kv[64];
	struct kmsc_ctx ctx;
	uint8_t *dek = NULL;
	char *w = NULL;
	kmsc_err e;

	CHECK(argc >= 3);
	if (strcmp(argv[0], "datakey") == 0) {
		ctx = ctx_of(argc - 3, argv + 3, kv);
		e = kmsc_datakey(c, argv[1], argv[2], &ctx, &dek, &w);
	} else {
		CHECK(argc >= 4);
		ctx = ctx_of(argc - 4, argv + 4, kv);
		e = kmsc_decrypt_dek(c, argv[1], argv[2], argv[3], &ctx, &dek);
	}
	CHECK(e != KMSC_OK && dek == NULL && w == NULL);
	printf("%s %ld %s\n", kmsc_err_name(e), kmsc_last_status(), kmsc_last_message());
	kmsc_close(c);
	return 0;
}

struct job {
	struct kmsc *c;
	const char *t, *k;
	int id, rounds, ok;
};

static void *thread_main(void *arg)
{
	struct job *j = arg;
	char idtxt[16], rec[128];
	struct kmsc_kv kv[] = {{"thread", idtxt}};
	struct kmsc_ctx ctx = {kv, 1};
	struct kmsc_want want = {j->t, j->k, &ctx};

	snprintf(idtxt, sizeof(idtxt), "%d", j->id);
	for (int r = 0; r < j->rounds; r++) {
		uint8_t *sealed, *pt;
		size_t sn, pn;
		int n = snprintf(rec, sizeof(rec), "{\"thread\":%d,\"round\":%d}", j->id, r);

		if (kmsc_seal_buffer(j->c, j->t, j->k, &ctx, rec, (size_t)n, &sealed, &sn) != KMSC_OK)
			return NULL;
		if (kmsc_open_buffer(j->c, sealed, sn, &want, &pt, &pn) != KMSC_OK) {
			kmsc_free(sealed);
			return NULL;
		}
		if (pn != (size_t)n || memcmp(pt, rec, pn) != 0) {
			kmsc_free(sealed);
			kmsc_free_secret(pt);
			return NULL;
		}
		kmsc_free(sealed);
		kmsc_free_secret(pt);
	}
	j->ok = 1;
	return NULL;
}

static int threads(const char *t, const char *k, int n, int m)
{
	const char *cache = getenv("KMSC_CACHE");
	struct kmsc *c = client(cache != NULL && strcmp(cache, "1") == 0, 5, 0);
	pthread_t th[64];
	struct job jobs[64];

	CHECK(n > 0 && n <= 64);
	for (int i = 0; i < n; i++) {
		jobs[i] = (struct job){c, t, k, i % 3, m, 0}; /* threads share contexts */
		CHECK(pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0);
	}
	for (int i = 0; i < n; i++) {
		CHECK(pthread_join(th[i], NULL) == 0);
		CHECK(jobs[i].ok);
	}
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

static char *seal_one(struct kmsc *c, const char *t, const char *k, const struct kmsc_ctx *ctx,
		      const char *rec)
{
	struct kmsc_want want = {t, k, ctx};
	uint8_t *sealed, *pt;
	size_t sn, pn;
	char *w;

	CHECK(kmsc_seal_buffer(c, t, k, ctx, rec, strlen(rec), &sealed, &sn) == KMSC_OK);
	CHECK(kmsc_open_buffer(c, sealed, sn, &want, &pt, &pn) == KMSC_OK);
	CHECK(pn == strlen(rec) && memcmp(pt, rec, pn) == 0);
	w = wrapped_of(sealed);
	kmsc_free(sealed);
	kmsc_free_secret(pt);
	return w;
}

/* Seals with the cache on (3 messages, 60 s, 1 MiB; fake clock) and reads which DEK each
 * record got from its header. */
static int cache(const char *t, const char *k, const char *k2, const char *t2)
{
	struct kmsc *c = client(1, 3, 1);
	struct kmsc_kv name[] = {{"resourceType", "Patient"}, {"field", "name"}};
	struct kmsc_kv bd[] = {{"resourceType", "Patient"}, {"field", "birthDate"}};
	struct kmsc_ctx cn = {name, 2}, cb = {bd, 2};
	char *w[8], *x;

	fake_ms = 1000;
	for (int i = 0; i < 7; i++)
		w[i] = seal_one(c, t, k, &cn, "Jane Doe");
	/* three messages per DEK: records 0-2 share one, 3-5 the next, 6 a third */
	CHECK(strcmp(w[0], w[1]) == 0 && strcmp(w[1], w[2]) == 0);
	CHECK(strcmp(w[2], w[3]) != 0);
	CHECK(strcmp(w[3], w[4]) == 0 && strcmp(w[4], w[5]) == 0);
	CHECK(strcmp(w[5], w[6]) != 0 && strcmp(w[0], w[6]) != 0);
	/* another context, key or tenant never gets a cached DEK */
	x = seal_one(c, t, k, &cb, "1970-01-01");
	CHECK(strcmp(x, w[6]) != 0);
	free(x);
	x = seal_one(c, t, k2, &cn, "Jane Doe");
	CHECK(strcmp(x, w[6]) != 0);
	free(x);
	x = seal_one(c, t2, k, &cn, "Jane Doe");
	CHECK(strcmp(x, w[6]) != 0);
	free(x);
	/* age: record 7 would share record 6's DEK, but the clock passed 60 s */
	fake_ms += 60000;
	w[7] = seal_one(c, t, k, &cn, "Jane Doe");
	CHECK(strcmp(w[6], w[7]) != 0);
	/* the byte bound is covered by tests/unit/test_kmsc_cache.c */
	for (int i = 0; i < 8; i++)
		free(w[i]);
	kmsc_close(c);
	printf("ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && strcmp(argv[1], "roundtrip") == 0)
		return roundtrip(argv[2], argv[3]);
	if (argc >= 5 && strcmp(argv[1], "rewrap") == 0)
		return rewrap(argv[2], argv[3], argv[4], argc - 5, argv + 5);
	if (argc >= 4 && strcmp(argv[1], "batch") == 0)
		return batch(argv[2], argv[3]);
	if (argc >= 6 && strcmp(argv[1], "seal-buf") == 0)
		return seal_buf(argv[2], argv[3], argv[4], argv[5], argc - 6, argv + 6);
	if (argc >= 4 && strcmp(argv[1], "open-buf") == 0)
		return open_buf(argv[2], argv[3], argc - 4, argv + 4);
	if (argc >= 6 && strcmp(argv[1], "seal-fd") == 0)
		return seal_fd(argv[2], argv[3], argv[4], argv[5], argc - 6, argv + 6);
	if (argc >= 4 && strcmp(argv[1], "open-fd") == 0)
		return open_fd(argv[2], argv[3]);
	if (argc >= 3 && strcmp(argv[1], "err") == 0)
		return err(argc - 2, argv + 2);
	if (argc >= 6 && strcmp(argv[1], "threads") == 0)
		return threads(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
	if (argc >= 6 && strcmp(argv[1], "cache") == 0)
		return cache(argv[2], argv[3], argv[4], argv[5]);
	fprintf(stderr, "usage: kmsc_itest roundtrip|rewrap|batch|seal-buf|open-buf|seal-fd|open-fd|err|threads|cache ...\n");
	return 2;
}
