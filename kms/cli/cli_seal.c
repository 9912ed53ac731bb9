/* kmsctl seal / open: envelope encryption of files (docs/FORMATS.md "Sealed files").
 *
 * seal asks the server for a data key (datakey/plaintext), writes the header and then
 * the input in AES-256-GCM chunks (kms/base/seal.c); open reads the header, has the
 * server unwrap the DEK (decrypt, with the context from the header) and writes the
 * plaintext one authenticated chunk at a time. Memory is two chunk buffers, whatever
 * the file's size. The plaintext DEK lives in secret memory and is wiped on every path.
 *
 * Output to a path is written under a temporary name beside it and renamed over the
 * path only when everything went well; on failure the temporary file is removed, so a
 * path never holds a partial or unauthenticated result. Output to stdout (or a FIFO or
 * device) carries only authenticated chunks; after a failure it stops and the exit
 * status is 1. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/fileio.h"
#include "kms/base/secret.h"
#include "kms/base/seal.h"
#include "kms/cli/cli.h"

enum {
	O_TENANT = 1000,
	O_KEY,
	O_CONTEXT,
	O_CHUNK_SIZE,
};

/* ---- output: a temporary file renamed into place, or a stream -------------------- */

struct sink {
	int fd;
	const char *path; /* as given; "-" for stdout */
	char *tmp;        /* the temporary name, or NULL when writing straight to fd */
};

static int sink_open(struct sink *k, const char *path)
{
	struct stat st;
	size_t n;

	k->fd = -1;
	k->path = path;
	k->tmp = NULL;
	if (strcmp(path, "-") == 0) {
		k->fd = STDOUT_FILENO;
		return CLI_OK;
	}
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		/* A FIFO or device (/dev/null): cannot be replaced, so it is a stream. */
		k->fd = open(path, O_WRONLY | O_CLOEXEC);
		if (k->fd < 0) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, path, strerror(errno));
			return CLI_USAGE;
		}
		return CLI_OK;
	}
	n = strlen(path) + sizeof(".kmsctl-XXXXXX");
	k->tmp = malloc(n);
	if (k->tmp == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return CLI_USAGE;
	}
	snprintf(k->tmp, n, "%s.kmsctl-XXXXXX", path);
	k->fd = mkostemp(k->tmp, O_CLOEXEC); /* mode 0600 */
	if (k->fd < 0) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, path, strerror(errno));
		free(k->tmp);
		k->tmp = NULL;
		return CLI_USAGE;
	}
	return CLI_OK;
}

static int sink_write(struct sink *k, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(k->fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			fprintf(stderr, "kmsctl %s: writing %s: %s\n", cli_cmd,
				strcmp(k->path, "-") == 0 ? "stdout" : k->path, strerror(errno));
			return CLI_USAGE;
		}
		p += w;
		n -= (size_t)w;
	}
	return CLI_OK;
}

/* ok: sync and rename into place; else: remove the temporary file. */
static int sink_close(struct sink *k, int ok)
{
	int rc = CLI_OK;

	if (k->tmp == NULL) {
		if (k->fd > STDERR_FILENO && close(k->fd) != 0 && ok) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, k->path, strerror(errno));
			rc = CLI_USAGE;
		}
		k->fd = -1;
		return rc;
	}
	if (ok && (fsync(k->fd) != 0 || close(k->fd) != 0 || rename(k->tmp, k->path) != 0)) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, k->path, strerror(errno));
		rc = CLI_USAGE;
		ok = 0;
		k->fd = -1;
	}
	if (!ok) {
		if (k->fd >= 0)
			close(k->fd);
		unlink(k->tmp);
	}
	k->fd = -1;
	free(k->tmp);
	k->tmp = NULL;
	return rc;
}

/* ---- input ---------------------------------------------------------------------- */

static int in_open(const char *path, int *fd)
{
	if (strcmp(path, "-") == 0) {
		if (cli_opts.token_file != NULL && strcmp(cli_opts.token_file, "-") == 0)
			return cli_usage_error("stdin carries the token (--token-file -); give IN as a file");
		*fd = STDIN_FILENO;
		return CLI_OK;
	}
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, path, strerror(errno));
		return CLI_USAGE;
	}
	return CLI_OK;
}

/* kms_read_full, with the message printed on an error. */
static ssize_t read_full(int fd, const char *path, uint8_t *p, size_t n)
{
	ssize_t got = kms_read_full(fd, p, n);

	if (got < 0)
		fprintf(stderr, "kmsctl %s: reading %s: %s\n", cli_cmd, path, strerror(errno));
	return got;
}

/* ---- the DEK from an answer ------------------------------------------------------ */

/* data.plaintext (base64) of a datakey or decrypt answer: exactly 32 bytes, into dek. */
static int dek_of(const json_t *ans, uint8_t *dek)
{
	const char *b64 = json_string_value(json_object_get(cli_data(ans), "plaintext"));
	size_t n = b64 ? strlen(b64) : 0;
	uint8_t *tmp = kms_secret_alloc(KMS_B64_DEC_MAX(n) + 1);
	long got = tmp && b64 ? kms_b64_decode(b64, n, tmp, KMS_B64_DEC_MAX(n) + 1) : -1;
	int rc = CLI_OK;

	if (got != KMS_SEAL_DEK_LEN) {
		fprintf(stderr, "kmsctl %s: the server's answer holds no 256-bit data key\n", cli_cmd);
		rc = got < 0 ? CLI_SERVER : CLI_FAIL;
	} else {
		memcpy(dek, tmp, KMS_SEAL_DEK_LEN);
	}
	kms_secret_free(tmp);
	return rc;
}

/* ---- seal ----------------------------------------------------------------------- */

static int seal_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tenant", required_argument, NULL, O_TENANT},
		{"key", required_argument, NULL, O_KEY},
		{"context", required_argument, NULL, O_CONTEXT},
		{"chunk-size", required_argument, NULL, O_CHUNK_SIZE},
		{NULL, 0, NULL, 0},
	};
	struct kms_seal_header h = {0};
	struct kms_seal_stream st = {0};
	struct cli_client c;
	struct sink out = {.fd = -1};
	const char *tenant = NULL, *key = NULL, *in_path, *eq;
	json_t *ctx = NULL, *body = NULL, *ans = NULL;
	uint8_t *dek = NULL, *hdr = NULL, *pt = NULL, *ct = NULL;
	size_t hdr_len = 0, have = 0, rec;
	long long cs = KMS_SEAL_CHUNK_DEFAULT;
	char *path = NULL, *canon = NULL, *k;
	int ch, in_fd = -1, connected = 0, rc = CLI_USAGE, last = 0;

	while ((ch = cli_getopt(argc, argv, opts)) != -1) {
		if (ch == O_TENANT) {
			tenant = optarg;
		} else if (ch == O_KEY) {
			key = optarg;
		} else if (ch == O_CHUNK_SIZE) {
			if (cli_parse_uint("--chunk-size", optarg, KMS_SEAL_CHUNK_MAX, &cs) != 0)
				goto out;
			if (cs < KMS_SEAL_CHUNK_MIN) {
				cli_usage_error("--chunk-size: %lld is below %d", cs, KMS_SEAL_CHUNK_MIN);
				goto out;
			}
		} else if (ch == O_CONTEXT) {
			eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg) {
				cli_usage_error("--context wants NAME=VALUE, not \"%s\"", optarg);
				goto out;
			}
			if (ctx == NULL && (ctx = json_object()) == NULL)
				goto oom;
			if ((k = strndup(optarg, (size_t)(eq - optarg))) == NULL)
				goto oom;
			if (json_object_get(ctx, k) != NULL) {
				cli_usage_error("--context %s given twice", k);
				free(k);
				goto out;
			}
			if (json_object_set_new(ctx, k, json_string(eq + 1)) != 0) {
				cli_usage_error("--context %s: the value is not valid UTF-8", k);
				free(k);
				goto out;
			}
			free(k);
		} else {
			goto out;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto out;
	rc = CLI_USAGE;
	if (tenant == NULL || key == NULL) {
		cli_usage_error("--tenant and --key are required");
		goto out;
	}
	if (kms_seal_context_canonical(ctx, &canon) != KMS_OK) {
		cli_usage_error("%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	in_path = argv[optind];
	if ((rc = in_open(in_path, &in_fd)) != CLI_OK)
		goto out;
	if ((rc = cli_connect(&c, 1)) != CLI_OK)
		goto out;
	connected = 1;
	body = json_pack("{s:i}", "bits", 256);
	path = cli_path(tenant, "datakey", "plaintext", key, NULL);
	dek = kms_secret_alloc(KMS_SEAL_DEK_LEN);
	if (body == NULL || path == NULL || dek == NULL)
		goto oom;
	if (ctx != NULL && json_object_size(ctx) > 0)
		json_object_set(body, "encryption_context", ctx);
	if ((rc = cli_call(&c, "POST", path, body, &ans)) != CLI_OK)
		goto out;
	if ((rc = dek_of(ans, dek)) != CLI_OK)
		goto out;
	h.chunk_size = (uint32_t)cs;
	h.tenant = (char *)tenant;
	h.key = (char *)key;
	h.wrapped = (char *)json_string_value(json_object_get(cli_data(ans), "ciphertext"));
	h.context = canon;
	if (h.wrapped == NULL) {
		fprintf(stderr, "kmsctl %s: the server's answer holds no wrapped key\n", cli_cmd);
		rc = CLI_SERVER;
		goto out;
	}
	if (RAND_bytes(h.prefix, sizeof(h.prefix)) != 1) {
		fprintf(stderr, "kmsctl %s: no randomness for the nonce prefix\n", cli_cmd);
		rc = CLI_SERVER;
		goto out;
	}
	if (kms_seal_header_encode(&h, &hdr, &hdr_len) != KMS_OK) {
		rc = cli_usage_error("%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if (kms_seal_stream_init(&st, dek, hdr, hdr_len) != KMS_OK)
		goto oom;
	rec = (size_t)cs;
	pt = kms_secret_alloc(rec + 1);
	ct = malloc(rec + KMS_SEAL_TAG_LEN);
	if (pt == NULL || ct == NULL)
		goto oom;
	if ((rc = sink_open(&out, argv[optind + 1])) != CLI_OK)
		goto out;
	if ((rc = sink_write(&out, hdr, hdr_len)) != CLI_OK)
		goto out;
	/* One byte of look-ahead tells whether a chunk is the last. */
	while (!last) {
		ssize_t got = read_full(in_fd, in_path, pt + have, rec + 1 - have);
		size_t n;

		if (got < 0) {
			rc = CLI_USAGE;
			goto out;
		}
		have += (size_t)got;
		last = have <= rec;
		n = last ? have : rec;
		if (kms_seal_stream_seal(&st, last, pt, n, ct) != KMS_OK) {
			fprintf(stderr, "kmsctl %s: %s\n", cli_cmd, kms_err_detail(KMS_ERR_INVALID));
			rc = CLI_FAIL;
			goto out;
		}
		if ((rc = sink_write(&out, ct, n + KMS_SEAL_TAG_LEN)) != CLI_OK)
			goto out;
		if (!last) {
			pt[0] = pt[rec];
			have = 1;
		}
	}
	rc = CLI_OK;
out:
	if (out.fd >= 0) {
		int r = sink_close(&out, rc == CLI_OK);

		if (rc == CLI_OK)
			rc = r;
	}
	kms_seal_stream_clear(&st);
	kms_secret_free(pt);
	free(ct);
	free(hdr);
	kms_secret_free(dek);
	free(canon);
	free(path);
	json_decref(ans);
	json_decref(body);
	json_decref(ctx);
	if (in_fd > STDERR_FILENO)
		close(in_fd);
	if (connected)
		cli_disconnect(&c);
	return rc;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
	goto out;
}

/* ---- open ----------------------------------------------------------------------- */

static int open_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{NULL, 0, NULL, 0},
	};
	struct kms_seal_header h = {0};
	struct kms_seal_stream st = {0};
	struct cli_client c;
	struct sink out = {.fd = -1};
	const char *in_path;
	json_t *body = NULL, *ans = NULL, *ctx = NULL;
	json_error_t jerr;
	uint8_t fixed[KMS_SEAL_FIXED_LEN], *hdr = NULL, *dek = NULL, *rbuf = NULL, *pt = NULL;
	size_t hdr_len = 0, have = 0, rec;
	ssize_t got;
	char *path = NULL;
	int ch, in_fd = -1, connected = 0, rc = CLI_USAGE, last = 0;

	while ((ch = cli_getopt(argc, argv, opts)) != -1)
		goto out;
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto out;
	in_path = argv[optind];
	if ((rc = in_open(in_path, &in_fd)) != CLI_OK)
		goto out;
	rc = CLI_FAIL;
	got = read_full(in_fd, in_path, fixed, sizeof(fixed));
	if (got < 0) {
		rc = CLI_USAGE;
		goto out;
	}
	if ((size_t)got < sizeof(fixed)) {
		fprintf(stderr, "kmsctl %s: %s: not a sealed file (too short)\n", cli_cmd, in_path);
		goto out;
	}
	if (kms_seal_header_len(fixed, &hdr_len) != KMS_OK) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in_path, kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if ((hdr = malloc(hdr_len)) == NULL)
		goto oom;
	memcpy(hdr, fixed, sizeof(fixed));
	got = read_full(in_fd, in_path, hdr + sizeof(fixed), hdr_len - sizeof(fixed));
	if (got < 0) {
		rc = CLI_USAGE;
		goto out;
	}
	if ((size_t)got != hdr_len - sizeof(fixed)) {
		fprintf(stderr, "kmsctl %s: %s: sealed file: truncated header\n", cli_cmd, in_path);
		goto out;
	}
	if (kms_seal_header_parse(hdr, hdr_len, &h) != KMS_OK) {
		fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in_path, kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	ctx = json_loads(h.context, JSON_REJECT_DUPLICATES, &jerr);
	body = json_pack("{s:s}", "ciphertext", h.wrapped);
	path = cli_path(h.tenant, "decrypt", h.key, NULL);
	dek = kms_secret_alloc(KMS_SEAL_DEK_LEN);
	if (ctx == NULL || body == NULL || path == NULL || dek == NULL)
		goto oom;
	if (json_object_size(ctx) > 0)
		json_object_set(body, "encryption_context", ctx);
	if ((rc = cli_connect(&c, 1)) != CLI_OK)
		goto out;
	connected = 1;
	if ((rc = cli_call(&c, "POST", path, body, &ans)) != CLI_OK)
		goto out;
	if ((rc = dek_of(ans, dek)) != CLI_OK)
		goto out;
	if (kms_seal_stream_init(&st, dek, hdr, hdr_len) != KMS_OK)
		goto oom;
	rec = (size_t)h.chunk_size + KMS_SEAL_TAG_LEN;
	rbuf = malloc(rec + 1);
	pt = kms_secret_alloc(h.chunk_size);
	if (rbuf == NULL || pt == NULL)
		goto oom;
	if ((rc = sink_open(&out, argv[optind + 1])) != CLI_OK)
		goto out;
	while (!last) {
		size_t n;

		got = read_full(in_fd, in_path, rbuf + have, rec + 1 - have);
		if (got < 0) {
			rc = CLI_USAGE;
			goto out;
		}
		have += (size_t)got;
		last = have <= rec;
		n = last ? have : rec;
		if (kms_seal_stream_open(&st, last, rbuf, n, pt) != KMS_OK) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, in_path, kms_err_detail(KMS_ERR_DECRYPT));
			rc = CLI_FAIL;
			goto out;
		}
		if ((rc = sink_write(&out, pt, n - KMS_SEAL_TAG_LEN)) != CLI_OK)
			goto out;
		if (!last) {
			rbuf[0] = rbuf[rec];
			have = 1;
		}
	}
	rc = CLI_OK;
out:
	if (out.fd >= 0) {
		int r = sink_close(&out, rc == CLI_OK);

		if (rc == CLI_OK)
			rc = r;
	}
	kms_seal_stream_clear(&st);
	kms_secret_free(pt);
	free(rbuf);
	kms_secret_free(dek);
	free(hdr);
	free(path);
	kms_seal_header_free(&h);
	json_decref(ans);
	json_decref(body);
	json_decref(ctx);
	if (in_fd > STDERR_FILENO)
		close(in_fd);
	if (connected)
		cli_disconnect(&c);
	return rc;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
	goto out;
}

static const struct cli_leaf seal_leaf = {
	"seal", "envelope-encrypt a file of any size under a fresh data key",
	"--tenant T --key K [--context NAME=VALUE]... [--chunk-size BYTES] IN|- OUT|-",
	"Asks the server for a new 256-bit data key under KEY (POST\n"
	"/v1/T/datakey/plaintext/K, with the context), then writes OUT: a header that\n"
	"holds the tenant, key, wrapped data key and context, and IN encrypted with\n"
	"AES-256-GCM in authenticated chunks (docs/FORMATS.md \"Sealed files\"). Files of\n"
	"any size stream in constant memory. The plaintext data key is never written.\n"
	"OUT (a path) is written under a temporary name and renamed into place when done;\n"
	"`-` is stdin/stdout.\n"
	"\n"
	"  --tenant T, --key K    the key that wraps the data key (required)\n"
	"  --context NAME=VALUE   encryption context pair, stored in the header and bound\n"
	"                         into the wrapped key (repeat for more)\n"
	"  --chunk-size BYTES     plaintext bytes per chunk, 16..4194304 (default 65536)\n"
	"\n"
	"examples:\n"
	"  kmsctl seal --tenant cardiology --key patient-records --context mrn=0042 \\\n"
	"      scan.dcm scan.dcm.sealed\n"
	"  pg_dump ehr | kmsctl seal --tenant cardiology --key backups - - > ehr.sql.sealed\n",
	seal_run, NULL,
};

static const struct cli_leaf open_leaf = {
	"open", "decrypt a sealed file (the server unwraps its data key)",
	"IN|- OUT|-",
	"Reads the header of IN, has the server unwrap its data key (POST\n"
	"/v1/T/decrypt/K with the tenant, key and context from the header: the token\n"
	"must be allowed to decrypt there) and writes the plaintext, one authenticated\n"
	"chunk at a time. An edited header or chunk, chunks reordered or taken from\n"
	"another file, a truncated or extended file: exit status 1. OUT (a path) is\n"
	"written under a temporary name and renamed into place only when the whole file\n"
	"authenticated; on failure it is removed and an existing OUT is left as it was.\n"
	"To stdout (`-`) only authenticated chunks are written, and a failure stops the\n"
	"output with exit status 1: check it before using the data.\n"
	"\n"
	"examples:\n"
	"  kmsctl open scan.dcm.sealed scan.dcm\n"
	"  kmsctl open ehr.sql.sealed - | psql ehr_restore\n",
	open_run, NULL,
};

int cli_seal(int argc, char **argv)
{
	return cli_leaf_run(&seal_leaf, "seal", argc, argv);
}

void cli_seal_usage(FILE *f)
{
	cli_leaf_usage(&seal_leaf, "seal", f);
}

int cli_open(int argc, char **argv)
{
	return cli_leaf_run(&open_leaf, "open", argc, argv);
}

void cli_open_usage(FILE *f)
{
	cli_leaf_usage(&open_leaf, "open", f);
}
