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
#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"
#include "kms/core/core.h" /* KMS_VERSION */

#define TOKEN_HDR "X-Vault-Token: "
#define MFA_HDR "X-Vault-MFA: "
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

static int fsync_parent(const char *path)
{
	char dir[4096];
	const char *sl = strrchr(path, '/');
	int fd, rc;

	if (sl == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (sl == path)
		snprintf(dir, sizeof(dir), "/");
	else if (snprintf(dir, sizeof(dir), "%.*s", (int)(sl - path), path) >= (int)sizeof(dir))
		return -1;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
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

/* The X-Vault-MFA header line for c's code, in wiped memory, or NULL (none, or no memory:
 * *oom says which). */
static char *mfa_header(const struct cli_client *c, int *oom)
{
	char *hdr;

	*oom = 0;
	if (c->mfa == NULL)
		return NULL;
	hdr = kms_secret_alloc(sizeof(MFA_HDR) + c->mfa_len);
	if (hdr == NULL) {
		*oom = 1;
		return NULL;
	}
	memcpy(hdr, MFA_HDR, sizeof(MFA_HDR) - 1);
	memcpy(hdr + sizeof(MFA_HDR) - 1, c->mfa, c->mfa_len);
	return hdr;
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
	struct curl_slist *hdrs = NULL, tok_node, mfa_node;
	char errbuf[CURL_ERROR_SIZE] = "", *url = NULL, *tok_hdr = NULL, *mfa_hdr = NULL, tmp[4200], shah[65];
	const char *out = NULL;
	unsigned char sha[32];
	int opt, rc, created = 0, oom, asked = 0;
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
	h = curl_easy_init();
	if (h == NULL || (hdrs = curl_slist_append(NULL, "Accept: application/octet-stream")) == NULL ||
	    (hdrs = curl_slist_append(hdrs, "Content-Type: application/json")) == NULL ||
	    (hdrs = curl_slist_append(hdrs, "Expect:")) == NULL)
		goto oom;
	tok_hdr = kms_secret_alloc(sizeof(TOKEN_HDR) + c.token_len);
	if (tok_hdr == NULL)
		goto oom;
	memcpy(tok_hdr, TOKEN_HDR, sizeof(TOKEN_HDR) - 1);
	memcpy(tok_hdr + sizeof(TOKEN_HDR) - 1, c.token, c.token_len);
	tok_node.data = tok_hdr;
	tok_node.next = hdrs;
	s->h = h;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (c.ca_cert != NULL)
		curl_easy_setopt(h, CURLOPT_CAINFO, c.ca_cert);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c.timeout < 10 ? c.timeout : 10L);
	/* an archive may take long to make and send: the timeout applies to stalls */
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c.timeout);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "kmsctl/" KMS_VERSION);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{}");
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 2L);
again:
	/* the step-up code (KMS_MFA, --mfa, or asked below), sent with the token */
	mfa_hdr = mfa_header(&c, &oom);
	if (oom)
		goto oom;
	if (mfa_hdr != NULL) {
		mfa_node.data = mfa_hdr;
		mfa_node.next = &tok_node;
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, mfa_hdr != NULL ? &mfa_node : &tok_node);
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK && !s->io_failed && !asked && c.mfa == NULL && wants_mfa(s) && isatty(STDIN_FILENO) &&
	    !cli_stdin_taken) {
		/* Nothing was written for a refusal: ask for a code on the terminal, send again. */
		asked = 1;
		if (cli_mfa_prompt(&c) != CLI_OK) {
			rc = CLI_USAGE;
			goto out;
		}
		s->status = 0;
		s->err_len = 0;
		goto again;
	}
	if (cc != CURLE_OK && !s->io_failed) {
		/* the same words as every other command's transport errors (cli_http.c) */
		const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);

		if (cc == CURLE_OPERATION_TIMEDOUT)
			fprintf(stderr, "kmsctl: no answer from %s within %ld s: %s\n", c.addr, c.timeout, why);
		else if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CONNECT_ERROR ||
			 cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CIPHER ||
			 cc == CURLE_SSL_ISSUER_ERROR || cc == CURLE_SSL_PINNEDPUBKEYNOTMATCH ||
			 cc == CURLE_SSL_INVALIDCERTSTATUS)
			fprintf(stderr, "kmsctl: TLS with %s failed: %s\n", c.addr, why);
		else
			fprintf(stderr, "kmsctl: cannot reach %s: backup failed: %s\n", c.addr, why);
		rc = CLI_UNREACHABLE;
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
	if (rename(tmp, out) != 0 || fsync_parent(out) != 0) {
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
	kms_secret_free(tok_hdr);
	kms_secret_free(mfa_hdr);
	curl_slist_free_all(hdrs);
	if (h != NULL)
		curl_easy_cleanup(h);
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
