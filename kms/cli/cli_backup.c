/* kmsctl backup --out FILE: asks the server for an archive (POST /v1/sys/backup, admin)
 * and writes it to FILE atomically (FILE.tmp, fsync, rename, directory fsync). The
 * archive is encrypted under a key that only the token can unwrap: the file may be
 * copied anywhere. docs/OPERATIONS.md "Backup and restore". */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/fileio.h"
#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"
#include "kms/core/core.h" /* KMS_VERSION */

#define ERR_MAX (64u << 10) /* an error answer (JSON) is kept up to this much */
#define MAGIC "KMSDBAK1"

struct sink {
	int fd;		  /* the archive's temporary file */
	long status;	  /* set from the first body byte on */
	CURL *h;
	char err[ERR_MAX]; /* a non-2xx answer's body */
	size_t err_len;
	unsigned long long bytes;
	EVP_MD_CTX *md;
	int io_failed;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
	struct sink *s = ud;
	size_t n = size * nmemb;

	if (s->status == 0)
		curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
	if (s->status < 200 || s->status >= 300) {
		size_t take = n < ERR_MAX - 1 - s->err_len ? n : ERR_MAX - 1 - s->err_len;
		memcpy(s->err + s->err_len, data, take);
		s->err_len += take;
		return n;
	}
	for (size_t off = 0; off < n;) {
		ssize_t w = write(s->fd, data + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			s->io_failed = errno ? errno : EIO;
			return 0;
		}
		off += (size_t)w;
	}
	EVP_DigestUpdate(s->md, data, n);
	s->bytes += n;
	return n;
}

/* The clear header of the archive just written, for the summary. */
static void print_header(const char *path, const char *sha_hex, unsigned long long bytes, int json_out)
{
	unsigned char head[12], *hb = NULL;
	json_t *h = NULL, *o;
	kms_err err;
	FILE *f = fopen(path, "rbe");
	uint32_t n;

	if (f != NULL && fread(head, 1, 12, f) == 12 && memcmp(head, MAGIC, 8) == 0) {
		n = (uint32_t)head[8] << 24 | (uint32_t)head[9] << 16 | (uint32_t)head[10] << 8 | head[11];
		if (n > 0 && n <= 4096 && (hb = malloc(n)) != NULL && fread(hb, 1, n, f) == n)
			h = kms_json_parse_object((const char *)hb, n, &err);
	}
	if (f != NULL)
		fclose(f);
	free(hb);
	o = json_pack("{s:s, s:I, s:s}", "file", path, "bytes", (json_int_t)bytes, "sha256", sha_hex);
	if (o != NULL && h != NULL) {
		json_object_set(o, "master_key", json_object_get(h, "mk_label"));
		json_object_set(o, "master_key_fingerprint", json_object_get(h, "mk_fingerprint"));
		json_object_set(o, "created", json_object_get(h, "created"));
	}
	if (o != NULL) {
		if (json_out)
			cli_print_json(o);
		else
			cli_print_kv_ordered(o, (const char *const[]){"file", "bytes", "sha256", NULL}, NULL);
	}
	json_decref(o);
	json_decref(h);
}

/* A 401 asking for the step-up code this call did not carry (as cli_http.c tells it). */
static int wants_mfa(const struct sink *s)
{
	kms_err jerr;
	json_t *ans;
	const char *m;
	int yes;

	if (s->status != 401 || s->err_len == 0)
		return 0;
	ans = kms_json_parse_object(s->err, s->err_len, &jerr);
	m = json_string_value(json_array_get(json_object_get(ans, "errors"), 0));
	yes = m != NULL && strncmp(m, "MFA required: send", 18) == 0;
	json_decref(ans);
	return yes;
}

static int backup_run(int argc, char **argv)
{
	static const struct option opts[] = {{"out", required_argument, NULL, 'o'}, {NULL, 0, NULL, 0}};
	struct cli_client c = {0};
	struct sink *s = NULL;
	struct cli_req r = {0};
	char *url = NULL, tmp[4200], shah[65];
	const char *out = NULL;
	unsigned char sha[32];
	int opt, rc, created = 0, asked = 0;
	CURLcode cc;
	CURL *h = NULL;

	while ((opt = cli_getopt(argc, argv, opts)) != -1) {
		if (opt == 'o')
			out = optarg;
		else
			return CLI_USAGE;
	}
	if ((rc = cli_positionals(argc, argv, 0, 0)) != CLI_OK)
		return rc;
	if (out == NULL || *out == '\0')
		return cli_usage_error("--out FILE is required");
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", out) >= (int)sizeof(tmp))
		return cli_usage_error("--out: path too long");
	if (access(out, F_OK) == 0)
		return cli_usage_error("%s exists: choose a new file name (backups are never overwritten)", out);
	if ((rc = cli_connect(&c, 1)) != CLI_OK)
		return rc;
	rc = CLI_SERVER;
	s = calloc(1, sizeof(*s));
	if (s == NULL || (s->md = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) != 1)
		goto oom;
	s->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->fd < 0) {
		fprintf(stderr, "kmsctl: cannot create %s: %s\n", tmp, strerror(errno));
		rc = CLI_FAIL;
		goto out;
	}
	created = 1;
	if (asprintf(&url, "%s/v1/sys/backup", c.addr) < 0) {
		url = NULL;
		goto oom;
	}
again:
	if ((rc = cli_req_open(&c, &r, url, "Accept: application/octet-stream")) != CLI_OK)
		goto out;
	rc = CLI_SERVER;
	h = r.h;
	s->h = h;
	/* an archive may take long to make and send: the timeout applies to stalls */
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 0L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c.timeout);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{}");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 2L);
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK && !s->io_failed && !asked && c.mfa == NULL && c.token != NULL && wants_mfa(s) &&
	    isatty(STDIN_FILENO) && !cli_stdin_taken) {
		/* Nothing was written for a refusal: ask for a code on the terminal, send again
		 * (the headers change, so the request is made anew). */
		asked = 1;
		if (cli_mfa_prompt(&c) != CLI_OK) {
			rc = CLI_USAGE;
			goto out;
		}
		s->status = 0;
		s->err_len = 0;
		cli_req_close(&r);
		h = NULL;
		goto again;
	}
	if (cc != CURLE_OK && !s->io_failed) {
		rc = cli_req_failed(&c, &r, cc);
		goto out;
	}
	if (s->io_failed) {
		fprintf(stderr, "kmsctl: writing %s failed: %s\n", tmp, strerror(s->io_failed));
		rc = CLI_FAIL;
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s->status);
	if (s->status < 200 || s->status >= 300) {
		kms_err jerr;
		json_t *ans = s->err_len ? kms_json_parse_object(s->err, s->err_len, &jerr) : NULL;

		cli_print_http_error(s->status, ans);
		json_decref(ans);
		rc = s->status < 500 ? CLI_FAIL : CLI_SERVER;
		goto out;
	}
	if (s->bytes < 12) {
		fprintf(stderr, "kmsctl: the server's answer is not a backup archive\n");
		goto out;
	}
	if (fsync(s->fd) != 0 || close(s->fd) != 0) {
		s->fd = -1;
		fprintf(stderr, "kmsctl: writing %s failed: %s\n", tmp, strerror(errno));
		rc = CLI_FAIL;
		goto out;
	}
	s->fd = -1;
	if (rename(tmp, out) != 0 || kms_fsync_parent(out) != 0) {
		fprintf(stderr, "kmsctl: cannot rename %s to %s: %s\n", tmp, out, strerror(errno));
		rc = CLI_FAIL;
		goto out;
	}
	created = 0;
	EVP_DigestFinal_ex(s->md, sha, NULL);
	kms_hex_encode(sha, 32, shah);
	shah[64] = '\0';
	print_header(out, shah, s->bytes, c.json);
	rc = CLI_OK;
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
out:
	if (s != NULL) {
		if (s->fd >= 0 && created)
			close(s->fd);
		EVP_MD_CTX_free(s->md);
		free(s);
	}
	if (created)
		(void)unlink(tmp);
	cli_req_close(&r);
	free(url);
	cli_disconnect(&c);
	return rc;
}

static const struct cli_leaf backup_leaf = {
	"backup", "an encrypted backup archive of the store and the audit log (admin)", "--out FILE",
	"Asks the server for a consistent online backup (POST /v1/sys/backup): a snapshot of\n"
	"the store (SQLite online backup), every audit segment up to one whole record, and\n"
	"the audit public key, with a manifest of sizes and SHA-256s, encrypted and\n"
	"authenticated under an archive key that only the server's token can unwrap. kmsd\n"
	"serves meanwhile; the backup is audited (sys.backup). FILE must not exist; it is\n"
	"written as FILE.tmp, synced and renamed, mode 0600. Restore it with\n"
	"`kmsd restore --from FILE` (offline). The token is backed up separately, with the\n"
	"HSM vendor's tools (docs/OPERATIONS.md).\n"
	"\n"
	"options:\n"
	"  --out FILE   where the archive goes\n"
	"\n"
	"The global --timeout bounds a stall (no byte for that long), not the whole\n"
	"transfer: the server builds the archive before the first byte, so raise it for\n"
	"a large store or audit log.\n"
	"\n"
	"examples:\n"
	"  kmsctl backup --out /backup/kmsd-$(date -u +%Y%m%dT%H%M%SZ).kmsbak\n",
	backup_run, NULL,
};

int cli_backup(int argc, char **argv)
{
	return cli_leaf_run(&backup_leaf, "backup", argc, argv);
}

void cli_backup_usage(FILE *f)
{
	cli_leaf_usage(&backup_leaf, "backup", f);
}
