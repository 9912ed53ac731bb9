/* The offline audit verifier (kms/audit/verify.c, `kmsctl audit verify`) on hostile log
 * files, and the writer and verifier against each other.
 *
 * Part 1: the input is a log file. audit_verify must run to a verdict (KMS_OK), the
 * verdict is one of the enum, a failure names a record and gives a reason starting
 * with its verdict's word, the counts are consistent, and the summary fits.
 *
 * Part 2 (a quarter of the inputs): the input's bytes become the reasons of 1..8 records written by the real
 * writer (audit.c) with signed checkpoints every 1..4 records (an in-process P-256
 * key); the log must verify with no unsigned tail, and after flipping any one byte of
 * it (position and bit from the input) it must not.
 *
 * Part 3: the input cut in two (where its first byte says) is the logs of two nodes in
 * two directories; audit_verify_nodes (the files grouped by node, each log verified,
 * an expected node list) must run to a verdict per node, consistent counts, and a
 * summary that fits. */
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/audit/search.h"
#include "kms/audit/verify.h"
#include "kms/base/json.h"
#include "tests/fuzz/fuzz.h"

static char dir[64], log_path[96], raw_path[96], pub_path[96], node_dir[2][96], node_log[2][128];
static EVP_PKEY *key;

static kms_err sign(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig, size_t cap, size_t *len)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(key, NULL);
	int ok;

	(void)ctx;
	*len = cap;
	ok = c != NULL && EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
	     EVP_PKEY_sign(c, sig, len, digest, AUDIT_HASH_LEN) == 1;
	EVP_PKEY_CTX_free(c);
	return ok ? KMS_OK : kms_errf(KMS_ERR_INTERNAL, "sign");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	FILE *f;

	(void)argc;
	(void)argv;
	kms_json_init();
	snprintf(dir, sizeof(dir), "/dev/shm/kmsd-fuzz-verify-%d", (int)getpid());
	if (mkdir(dir, 0700) != 0 && access(dir, W_OK) != 0) {
		snprintf(dir, sizeof(dir), "/tmp/kmsd-fuzz-verify-%d", (int)getpid());
		CHECK(mkdir(dir, 0700) == 0 || access(dir, W_OK) == 0);
	}
	snprintf(log_path, sizeof(log_path), "%s/audit.log", dir);
	snprintf(raw_path, sizeof(raw_path), "%s/raw.log", dir);
	snprintf(pub_path, sizeof(pub_path), "%s/pub.pem", dir);
	for (int i = 0; i < 2; i++) {
		snprintf(node_dir[i], sizeof(node_dir[i]), "%s/node%d", dir, i);
		CHECK(mkdir(node_dir[i], 0700) == 0 || access(node_dir[i], W_OK) == 0);
		snprintf(node_log[i], sizeof(node_log[i]), "%s/audit.log", node_dir[i]);
	}
	key = EVP_EC_gen("P-256");
	CHECK(key != NULL);
	f = fopen(pub_path, "w");
	CHECK(f != NULL && PEM_write_PUBKEY(f, key) == 1);
	fclose(f);
	return 0;
}

static void write_file(const char *path, const uint8_t *d, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	CHECK(fd >= 0);
	CHECK(n == 0 || write(fd, d, n) == (ssize_t)n);
	close(fd);
}

static void raw_log(const uint8_t *d, size_t n)
{
	static const char *const words[] = {"ok", "edited", "deleted", "inserted", "reordered",
					    "chain broken", "truncated", "bad checkpoint", "bad signature"};
	const char *files[1] = {raw_path};
	struct audit_verify_result res;
	char line[1024];

	write_file(raw_path, d, n);
	for (unsigned flags = 0; flags <= AUDIT_VERIFY_PARTIAL; flags += AUDIT_VERIFY_PARTIAL) {
		CHECK(audit_verify_opts(files, 1, pub_path, flags, &res) == KMS_OK);
		CHECK((unsigned)res.verdict <= AUDIT_V_SIGNATURE);
		CHECK(memchr(res.why, '\0', sizeof(res.why)) != NULL);
		CHECK(res.checkpoints <= res.records);
		CHECK(res.last_signed_seq == 0 || res.checkpoints > 0);
		if (res.verdict != AUDIT_V_OK) {
			CHECK(strncmp(res.why, words[res.verdict], strlen(words[res.verdict])) == 0);
			CHECK(res.file == raw_path && res.line >= 1);
		}
		audit_verify_summary(&res, line, sizeof(line));
		CHECK(memchr(line, '\0', sizeof(line)) != NULL);
	}
}

static void round_trip(const uint8_t *d, size_t n)
{
	struct audit_options o;
	struct audit_record r = {.request_id = "fz", .principal = "p", .auth_method = "token",
				 .remote_addr = "127.0.0.1", .operation = "datakey", .tenant = "t",
				 .key = "k", .version = 1, .outcome = "allow", .status = 200};
	const char *files[1] = {log_path};
	struct audit_verify_result res;
	unsigned nrec = 1 + d[0] % 8;
	size_t per = (n - 2) / nrec, size;
	struct audit *a = NULL;
	char reason[512];
	uint8_t *all;
	FILE *f;
	long off;

	unlink(log_path);
	audit_options_init(&o);
	o.checkpoint_records = 1 + d[1] % 4;
	o.checkpoint_seconds = 0;
	o.sign = sign;
	CHECK(audit_open_opts(log_path, "fuzz", &o, &a) == KMS_OK);
	for (unsigned i = 0; i < nrec; i++) {
		size_t len = per < sizeof(reason) - 1 ? per : sizeof(reason) - 1;
		memcpy(reason, d + 2 + i * per, len);
		reason[len] = '\0';
		r.reason = reason; /* arbitrary bytes: written as JSON text, lossily if not UTF-8 */
		CHECK(audit_append(a, &r) == KMS_OK);
	}
	CHECK(audit_checkpoint(a) == KMS_OK);
	audit_close(a);
	CHECK(audit_verify(files, 1, pub_path, &res) == KMS_OK);
	CHECK(res.verdict == AUDIT_V_OK && res.unsigned_tail == 0 && res.checkpoints >= 1);

	f = fopen(log_path, "rb");
	CHECK(f != NULL && fseek(f, 0, SEEK_END) == 0 && (off = ftell(f)) > 0);
	size = (size_t)off;
	all = malloc(size);
	CHECK(all != NULL);
	rewind(f);
	CHECK(fread(all, 1, size, f) == size);
	fclose(f);
	{
		size_t pos = ((size_t)d[n - 1] << 8 | d[n - 2]) % size;
		all[pos] ^= (uint8_t)(1u << (d[n - 1] % 8));
	}
	write_file(log_path, all, size);
	free(all);
	CHECK(audit_verify(files, 1, pub_path, &res) == KMS_OK);
	CHECK(res.verdict != AUDIT_V_OK);
}

static void two_nodes(const uint8_t *d, size_t n)
{
	static const char *const expect[] = {"fuzz", "kmsd-1"};
	const char *dirs[2] = {node_dir[0], node_dir[1]};
	struct audit_nodes_opts o = {.pubkey = pub_path, .expect = expect, .n_expect = d[0] % 3};
	struct audit_nodes_result res;
	struct audit_segs segs;
	size_t cut = n > 1 ? d[0] % n : 0, failed = 0;
	uint64_t records = 0;
	char line[1400];

	write_file(node_log[0], d, cut);
	write_file(node_log[1], d + cut, n - cut);
	o.flags = d[0] & 0x80 ? AUDIT_VERIFY_PARTIAL : 0;
	CHECK(audit_segs_collect(dirs, 2, &segs) == KMS_OK);
	CHECK(audit_verify_nodes(&segs, &o, &res) == KMS_OK);
	CHECK(res.n >= 1 && res.n <= 2 + o.n_expect);
	for (size_t i = 0; i < res.n; i++) {
		CHECK((unsigned)res.v[i].res.verdict <= AUDIT_V_UNEXPECTED);
		CHECK(memchr(res.v[i].res.why, '\0', sizeof(res.v[i].res.why)) != NULL);
		failed += res.v[i].res.verdict != AUDIT_V_OK;
		records += res.v[i].res.records;
		audit_node_summary(&res.v[i], line, sizeof(line));
		CHECK(memchr(line, '\0', sizeof(line)) != NULL);
	}
	CHECK(failed == res.failed && records == res.records);
	audit_nodes_summary(&res, line, sizeof(line));
	CHECK(strncmp(line, failed ? "FAIL: " : "ok: ", failed ? 6 : 4) == 0);
	audit_nodes_result_free(&res);
	audit_segs_free(&segs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 65536)
		return 0;
	raw_log(data, size);
	if (size >= 1)
		two_nodes(data, size);
	if (size >= 4 && data[0] % 4 == 3) /* the writer is slow (it syncs and signs) */
		round_trip(data, size);
	return 0;
}
