/* kmsctl's HTTP client: settings from flags, environment and config file; one libcurl
 * request per call, HTTPS only with verification always on; JSON in and out.
 *
 * The token lives in secret memory (kms_secret_alloc) and in the X-Vault-Token header
 * line built in secret memory too; request and answer bodies, which may carry key
 * material, are wiped before they are freed. (libcurl's own buffers are outside our
 * reach.) */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"
#include "kms/core/core.h" /* KMS_VERSION */

#define DEFAULT_ADDR "https://127.0.0.1:8200"
#define MAX_ANSWER (8u << 20) /* a 1000-item batch answer is well below 1 MiB */
#define MAX_CONFIG (64u << 10)
#define MAX_TOKEN 1024
#define TOKEN_HDR "X-Vault-Token: "
#define MFA_HDR "X-Vault-MFA: "
#define MAX_MFA 64

struct cli_opts cli_opts;
int cli_stdin_taken;

/* ---- config file ----------------------------------------------------------------- */

static struct {
	int loaded;
	char path[4096];
	char *addr, *ca_cert, *token_file, *format, *timeout;
	char *client_cert, *client_key;
	char *token; /* secret memory */
	size_t token_len;
} conf;

static int gen_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int gen_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kmsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_USAGE;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/* "~/x" -> "$HOME/x"; anything else copied. */
static char *expand_path(const char *v)
{
	const char *home = getenv("HOME");
	char *s = NULL;

	if (v[0] == '~' && v[1] == '/' && home != NULL && home[0] != '\0') {
		if (asprintf(&s, "%s%s", home, v + 1) < 0)
			return NULL;
		return s;
	}
	return strdup(v);
}

static int conf_set(const char *key, const char *val, int lineno, int private_file)
{
	char **slot = NULL;

	if (strcmp(key, "addr") == 0)
		slot = &conf.addr;
	else if (strcmp(key, "ca_cert") == 0)
		slot = &conf.ca_cert;
	else if (strcmp(key, "token_file") == 0)
		slot = &conf.token_file;
	else if (strcmp(key, "format") == 0)
		slot = &conf.format;
	else if (strcmp(key, "timeout") == 0)
		slot = &conf.timeout;
	else if (strcmp(key, "client_cert") == 0)
		slot = &conf.client_cert;
	else if (strcmp(key, "client_key") == 0)
		slot = &conf.client_key;
	else if (strcmp(key, "token") == 0) {
		size_t n = strlen(val);

		if (!private_file)
			return gen_error("%s:%d: refusing a token in a config file that group or others "
					 "may read (chmod 600 %s)", conf.path, lineno, conf.path);
		if (n == 0)
			return gen_error("%s:%d: empty token", conf.path, lineno);
		kms_secret_free(conf.token);
		conf.token = kms_secret_alloc(n + 1);
		if (conf.token == NULL)
			return gen_error("out of memory");
		memcpy(conf.token, val, n);
		conf.token_len = n;
		return CLI_OK;
	} else
		return gen_error("%s:%d: unknown setting \"%s\" (known: addr, ca_cert, token_file, "
				 "token, format, timeout, client_cert, client_key)", conf.path, lineno, key);
	free(*slot);
	*slot = (slot == &conf.ca_cert || slot == &conf.token_file || slot == &conf.client_cert ||
		 slot == &conf.client_key)
			? expand_path(val)
			: strdup(val);
	if (*slot == NULL)
		return gen_error("out of memory");
	return CLI_OK;
}

/* Loads --config FILE, or $XDG_CONFIG_HOME/kmsctl.conf, or ~/.config/kmsctl.conf (the
 * default one only if it exists). Lines `name = value`; # starts a comment line. */
static int conf_load(void)
{
	const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
	char *buf = NULL, *line, *next;
	struct stat st;
	ssize_t n;
	size_t got = 0;
	int fd = -1, rc = CLI_USAGE, lineno = 0, explicit = cli_opts.config != NULL;

	if (conf.loaded)
		return CLI_OK;
	conf.loaded = 1;
	if (explicit)
		snprintf(conf.path, sizeof(conf.path), "%s", cli_opts.config);
	else if (xdg != NULL && xdg[0] == '/')
		snprintf(conf.path, sizeof(conf.path), "%s/kmsctl.conf", xdg);
	else if (home != NULL && home[0] != '\0')
		snprintf(conf.path, sizeof(conf.path), "%s/.config/kmsctl.conf", home);
	else
		return CLI_OK;
	fd = open(conf.path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (!explicit && errno == ENOENT)
			return CLI_OK;
		return gen_error("config file %s: %s", conf.path, strerror(errno));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		gen_error("config file %s: not a regular file", conf.path);
		goto out;
	}
	if ((size_t)st.st_size > MAX_CONFIG) {
		gen_error("config file %s: larger than %u bytes", conf.path, MAX_CONFIG);
		goto out;
	}
	buf = malloc(MAX_CONFIG + 1);
	if (buf == NULL) {
		gen_error("out of memory");
		goto out;
	}
	while (got < MAX_CONFIG && (n = read(fd, buf + got, MAX_CONFIG - got)) > 0)
		got += (size_t)n;
	buf[got] = '\0';
	for (line = buf; line != NULL; line = next) {
		char *eq, *k;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		lineno++;
		k = trim(line);
		if (*k == '\0' || *k == '#')
			continue;
		eq = strchr(k, '=');
		if (eq == NULL) {
			gen_error("%s:%d: expected `name = value`", conf.path, lineno);
			goto out;
		}
		*eq = '\0';
		if (conf_set(trim(k), trim(eq + 1), lineno, (st.st_mode & 077) == 0) != CLI_OK)
			goto out;
	}
	rc = CLI_OK;
out:
	if (buf != NULL) {
		kms_wipe(buf, MAX_CONFIG + 1);
		free(buf);
	}
	close(fd);
	return rc;
}

static void conf_free(void)
{
	free(conf.addr);
	free(conf.ca_cert);
	free(conf.token_file);
	free(conf.format);
	free(conf.timeout);
	free(conf.client_cert);
	free(conf.client_key);
	kms_secret_free(conf.token);
	memset(&conf, 0, sizeof(conf));
}

static const char *first_set(const char *a, const char *b, const char *c, const char *d)
{
	if (a != NULL && a[0] != '\0')
		return a;
	if (b != NULL && b[0] != '\0')
		return b;
	if (c != NULL && c[0] != '\0')
		return c;
	if (d != NULL && d[0] != '\0')
		return d;
	return NULL;
}

int cli_output_json(int *json)
{
	const char *fmt;
	int rc = conf_load();

	if (rc != CLI_OK)
		goto out;
	fmt = first_set(cli_opts.format, conf.format, NULL, NULL);
	*json = fmt != NULL && strcmp(fmt, "json") == 0;
	if (fmt != NULL && !*json && strcmp(fmt, "table") != 0)
		rc = gen_error("format \"%s\": use table or json", fmt);
out:
	conf_free();
	return rc;
}

/* ---- the token ------------------------------------------------------------------- */

/* One line from fd into secret memory, without the line end. Returns the length, or -1. */
static long read_line_secret(int fd, char **out)
{
	char *s = kms_secret_alloc(MAX_TOKEN + 2);
	size_t n = 0;
	char ch;

	if (s == NULL)
		return -1;
	for (;;) {
		ssize_t r = read(fd, &ch, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || ch == '\n')
			break;
		if (n > MAX_TOKEN) {
			kms_secret_free(s);
			errno = EMSGSIZE;
			return -1;
		}
		s[n++] = ch;
	}
	if (n > 0 && s[n - 1] == '\r')
		s[--n] = '\0';
	*out = s;
	return (long)n;
}

/* Asks on the terminal, echo off. Returns the length, or -1 (no terminal). */
static long prompt_secret(const char *prompt, char **out)
{
	struct termios old, quiet;
	long n;
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return -1;
	if (tcgetattr(fd, &old) != 0) {
		close(fd);
		return -1;
	}
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	(void)!write(fd, prompt, strlen(prompt));
	(void)tcsetattr(fd, TCSAFLUSH, &quiet);
	n = read_line_secret(fd, out);
	(void)tcsetattr(fd, TCSAFLUSH, &old);
	(void)!write(fd, "\n", 1);
	close(fd);
	return n;
}

static int token_from_file(const char *path, char **tok, size_t *len)
{
	long n;

	if (strcmp(path, "-") == 0) {
		n = read_line_secret(STDIN_FILENO, tok);
		if (n < 0)
			return gen_error("--token-file -: cannot read a token from stdin: %s",
					 strerror(errno));
		cli_stdin_taken = 1;
		*len = (size_t)n;
		return CLI_OK;
	}
	if (kms_secret_read_file(path, tok, len) == 0)
		return CLI_OK;
	if (errno == EPERM)
		return gen_error("token file %s: refused: not a regular file, or readable by group "
				 "or others (chmod 600 %s)", path, path);
	if (errno == EINVAL)
		return gen_error("token file %s: the first line is empty", path);
	return gen_error("token file %s: %s", path, strerror(errno));
}

static int resolve_token(struct cli_client *c)
{
	const char *tf = cli_opts.token_file;
	int rc;

	if (tf != NULL) {
		rc = token_from_file(tf, &c->token, &c->token_len);
		if (rc != CLI_OK)
			return rc;
	} else if (kms_secret_from_env("KMS_TOKEN", &c->token, &c->token_len) == 0 ||
		   kms_secret_from_env("VAULT_TOKEN", &c->token, &c->token_len) == 0) {
		/* taken, and the environment's copy wiped */
	} else if (conf.token_file != NULL) {
		rc = token_from_file(conf.token_file, &c->token, &c->token_len);
		if (rc != CLI_OK)
			return rc;
	} else if (conf.token != NULL) {
		c->token = kms_secret_alloc(conf.token_len + 1);
		if (c->token == NULL)
			return gen_error("out of memory");
		memcpy(c->token, conf.token, conf.token_len);
		c->token_len = conf.token_len;
	} else if (c->client_cert != NULL) {
		return CLI_OK; /* no token anywhere: the client certificate authenticates */
	} else {
		long n = isatty(STDIN_FILENO) ? prompt_secret("kmsctl: token: ", &c->token) : -1;

		if (n < 0)
			return gen_error("no token: give --token-file FILE (or - for stdin), set "
					 "KMS_TOKEN or VAULT_TOKEN, or put token_file in the config "
					 "file (see `kmsctl --help`)");
		c->token_len = (size_t)n;
	}
	if (c->token_len == 0)
		return gen_error("the token is empty");
	for (size_t i = 0; i < c->token_len; i++)
		if ((unsigned char)c->token[i] <= 0x20 || (unsigned char)c->token[i] >= 0x7f)
			return gen_error("the token has a character that cannot go into a header");
	return CLI_OK;
}

/* ---- MFA code ------------------------------------------------------------------- */

/* Takes a code (secret memory, owned) into c->mfa as an X-Vault-MFA value. */
static int mfa_set(struct cli_client *c, char *code, size_t n, const char *from)
{
	int has_prefix = (n > 5 && strncmp(code, "totp:", 5) == 0) || (n > 9 && strncmp(code, "recovery:", 9) == 0);
	size_t len = has_prefix ? n : n + 5;
	char *v;

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)code[i] <= 0x20 || (unsigned char)code[i] >= 0x7f) {
			kms_secret_free(code);
			return gen_error("%s: the MFA code has a character that cannot go into a header", from);
		}
	if (n == 0 || len > MAX_MFA) {
		kms_secret_free(code);
		return gen_error("%s: the MFA code is empty or too long", from);
	}
	v = kms_secret_alloc(len + 1);
	if (v == NULL) {
		kms_secret_free(code);
		return gen_error("out of memory");
	}
	if (!has_prefix)
		memcpy(v, "totp:", 5);
	memcpy(v + (has_prefix ? 0 : 5), code, n);
	kms_secret_free(code);
	kms_secret_free(c->mfa);
	c->mfa = v;
	c->mfa_len = len;
	return CLI_OK;
}

int cli_mfa_prompt(struct cli_client *c)
{
	char *code = NULL;
	long n = isatty(STDIN_FILENO) ? prompt_secret("kmsctl: TOTP code (or recovery:CODE): ", &code) : -1;

	if (n < 0)
		return gen_error("an MFA code is needed and there is no terminal to ask on: set KMS_MFA "
				 "(e.g. KMS_MFA=$(oathtool --totp -b \"$SECRET\"))");
	return mfa_set(c, code, (size_t)n, "prompt");
}

/* ---- client ---------------------------------------------------------------------- */

/* The client certificate and key (mTLS): --client-cert/--client-key, then
 * KMS_CLIENT_CERT/KMS_CLIENT_KEY, then VAULT_CLIENT_CERT/VAULT_CLIENT_KEY (as Vault's
 * CLI), then the config file. A key alone is an error; a certificate alone means the
 * key is in the same PEM file. The key file must be a regular file nobody but its
 * owner may read, as for token files. */
static int resolve_client_cert(struct cli_client *c)
{
	const char *cert = first_set(cli_opts.client_cert, getenv("KMS_CLIENT_CERT"), getenv("VAULT_CLIENT_CERT"),
				     conf.client_cert);
	const char *key = first_set(cli_opts.client_key, getenv("KMS_CLIENT_KEY"), getenv("VAULT_CLIENT_KEY"),
				    conf.client_key);
	struct stat st;

	if (cert == NULL && key == NULL)
		return CLI_OK;
	if (cert == NULL)
		return gen_error("a client key needs its certificate: give --client-cert FILE "
				 "(or KMS_CLIENT_CERT)");
	if (key == NULL)
		key = cert;
	if (access(cert, R_OK) != 0)
		return gen_error("client certificate %s: %s", cert, strerror(errno));
	if (stat(key, &st) != 0)
		return gen_error("client key %s: %s", key, strerror(errno));
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0)
		return gen_error("client key %s: refused: not a regular file, or readable by group or "
				 "others (chmod 600 %s)", key, key);
	if (access(key, R_OK) != 0)
		return gen_error("client key %s: %s", key, strerror(errno));
	c->client_cert = strdup(cert);
	c->client_key = strdup(key);
	if (c->client_cert == NULL || c->client_key == NULL)
		return gen_error("out of memory");
	return CLI_OK;
}

int cli_connect(struct cli_client *c, int need_token)
{
	const char *addr, *ca, *fmt, *to;
	long long timeout;
	size_t n;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = conf_load();
	if (rc != CLI_OK)
		goto out;
	rc = CLI_USAGE;
	addr = first_set(cli_opts.addr, getenv("KMS_ADDR"), getenv("VAULT_ADDR"), conf.addr);
	if (addr == NULL)
		addr = DEFAULT_ADDR;
	if (strncasecmp(addr, "https://", 8) != 0 || addr[8] == '\0') {
		gen_error("address \"%s\": kmsctl speaks only https:// (the token and key material "
			  "must not cross the network in clear)", addr);
		goto out;
	}
	if (strpbrk(addr, "?# \t\r\n") != NULL) {
		gen_error("address \"%s\": no query, fragment or spaces allowed", addr);
		goto out;
	}
	c->addr = strdup(addr);
	if (c->addr == NULL)
		goto oom;
	n = strlen(c->addr);
	while (n > 8 && c->addr[n - 1] == '/')
		c->addr[--n] = '\0';

	ca = first_set(cli_opts.ca_cert, getenv("KMS_CACERT"), getenv("VAULT_CACERT"), conf.ca_cert);
	if (ca != NULL) {
		if (access(ca, R_OK) != 0) {
			gen_error("CA file %s: %s", ca, strerror(errno));
			goto out;
		}
		c->ca_cert = strdup(ca);
		if (c->ca_cert == NULL)
			goto oom;
	}

	if ((rc = resolve_client_cert(c)) != CLI_OK)
		goto out;
	rc = CLI_USAGE;

	fmt = first_set(cli_opts.format, conf.format, NULL, NULL);
	if (fmt == NULL || strcmp(fmt, "table") == 0)
		c->json = 0;
	else if (strcmp(fmt, "json") == 0)
		c->json = 1;
	else {
		gen_error("format \"%s\": use table or json", fmt);
		goto out;
	}

	to = first_set(cli_opts.timeout, conf.timeout, NULL, NULL);
	timeout = 30;
	if (to != NULL) {
		char *end;

		errno = 0;
		timeout = strtoll(to, &end, 10);
		if (errno != 0 || end == to || *end != '\0' || timeout < 1 || timeout > 3600) {
			gen_error("timeout \"%s\": use whole seconds from 1 to 3600", to);
			goto out;
		}
	}
	c->timeout = (long)timeout;

	if (need_token) {
		char *code = NULL;
		size_t code_len = 0;

		rc = resolve_token(c);
		if (rc != CLI_OK)
			goto out;
		if (kms_secret_from_env("KMS_MFA", &code, &code_len) == 0)
			rc = mfa_set(c, code, code_len, "KMS_MFA");
		else if (cli_opts.mfa_prompt)
			rc = cli_mfa_prompt(c);
		if (rc != CLI_OK)
			goto out;
	}
	rc = CLI_OK;
	goto out;
oom:
	rc = gen_error("out of memory");
out:
	if (rc != CLI_OK)
		cli_disconnect(c);
	return rc;
}

void cli_disconnect(struct cli_client *c)
{
	free(c->addr);
	free(c->ca_cert);
	free(c->client_cert);
	free(c->client_key);
	kms_secret_free(c->token);
	kms_secret_free(c->mfa);
	c->mfa = NULL;
	memset(c, 0, sizeof(*c));
	conf_free();
}

char *cli_path(const char *first, ...)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t cap = 4, len = 3;
	const char *seg;
	char *p, *o;
	va_list ap;

	va_start(ap, first);
	for (seg = first; seg != NULL; seg = va_arg(ap, const char *))
		cap += 1 + 3 * strlen(seg);
	va_end(ap);
	p = malloc(cap);
	if (p == NULL)
		return NULL;
	memcpy(p, "/v1", 3);
	o = p + len;
	va_start(ap, first);
	for (seg = first; seg != NULL; seg = va_arg(ap, const char *)) {
		*o++ = '/';
		for (const unsigned char *s = (const unsigned char *)seg; *s; s++) {
			if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
			    (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.' || *s == '~') {
				*o++ = (char)*s;
			} else {
				*o++ = '%';
				*o++ = hex[*s >> 4];
				*o++ = hex[*s & 15];
			}
		}
	}
	va_end(ap);
	*o = '\0';
	return p;
}

struct rbuf {
	char *p;
	size_t len, cap;
	int too_big;
};

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct rbuf *b = ud;
	size_t n = size * nmemb;

	if (n > MAX_ANSWER - b->len) {
		b->too_big = 1;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *q;

		while (cap < b->len + n + 1)
			cap *= 2;
		q = malloc(cap);
		if (q == NULL)
			return 0;
		if (b->p != NULL) {
			memcpy(q, b->p, b->len);
			kms_wipe(b->p, b->cap);
			free(b->p);
		}
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return n;
}

static int is_tls_error(CURLcode cc)
{
	return cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CONNECT_ERROR ||
	       cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_CERTPROBLEM ||
	       cc == CURLE_SSL_CIPHER || cc == CURLE_SSL_ISSUER_ERROR ||
	       cc == CURLE_SSL_PINNEDPUBKEYNOTMATCH || cc == CURLE_SSL_INVALIDCERTSTATUS;
}

int cli_req_open(struct cli_client *c, struct cli_req *r, const char *url, const char *accept)
{
	memset(r, 0, sizeof(*r));
	r->h = curl_easy_init();
	if (r->h == NULL || (r->hdrs = curl_slist_append(r->hdrs, accept)) == NULL ||
	    (r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json")) == NULL ||
	    (r->hdrs = curl_slist_append(r->hdrs, "Expect:")) == NULL)
		goto oom;
	r->head = r->hdrs;
	if (c->token != NULL) {
		/* Our own list node, so that the header line lives in wiped memory. */
		r->tok_hdr = kms_secret_alloc(sizeof(TOKEN_HDR) + c->token_len);
		if (r->tok_hdr == NULL)
			goto oom;
		memcpy(r->tok_hdr, TOKEN_HDR, sizeof(TOKEN_HDR) - 1);
		memcpy(r->tok_hdr + sizeof(TOKEN_HDR) - 1, c->token, c->token_len);
		r->tok_node.data = r->tok_hdr;
		r->tok_node.next = r->head;
		r->head = &r->tok_node;
	}
	if (c->mfa != NULL && r->tok_hdr != NULL) {
		/* the step-up code: wiped memory too, sent with the token */
		r->mfa_hdr = kms_secret_alloc(sizeof(MFA_HDR) + c->mfa_len);
		if (r->mfa_hdr == NULL)
			goto oom;
		memcpy(r->mfa_hdr, MFA_HDR, sizeof(MFA_HDR) - 1);
		memcpy(r->mfa_hdr + sizeof(MFA_HDR) - 1, c->mfa, c->mfa_len);
		r->mfa_node.data = r->mfa_hdr;
		r->mfa_node.next = r->head;
		r->head = &r->mfa_node;
	}
	curl_easy_setopt(r->h, CURLOPT_URL, url);
	curl_easy_setopt(r->h, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(r->h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(r->h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (c->ca_cert != NULL)
		curl_easy_setopt(r->h, CURLOPT_CAINFO, c->ca_cert);
	if (c->client_cert != NULL) {
		curl_easy_setopt(r->h, CURLOPT_SSLCERT, c->client_cert);
		curl_easy_setopt(r->h, CURLOPT_SSLCERTTYPE, "PEM");
		curl_easy_setopt(r->h, CURLOPT_SSLKEY, c->client_key);
		curl_easy_setopt(r->h, CURLOPT_SSLKEYTYPE, "PEM");
	}
	curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT, c->timeout < 10 ? c->timeout : 10L);
	curl_easy_setopt(r->h, CURLOPT_TIMEOUT, c->timeout);
	curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(r->h, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(r->h, CURLOPT_USERAGENT, "kmsctl/" KMS_VERSION);
	curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, r->head);
	return CLI_OK;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	cli_req_close(r);
	return CLI_SERVER;
}

void cli_req_close(struct cli_req *r)
{
	kms_secret_free(r->tok_hdr);
	kms_secret_free(r->mfa_hdr);
	curl_slist_free_all(r->hdrs);
	if (r->h != NULL)
		curl_easy_cleanup(r->h);
	memset(r, 0, sizeof(*r));
}

int cli_req_failed(const struct cli_client *c, const struct cli_req *r, CURLcode cc)
{
	const char *why = r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc);

	if (cc == CURLE_OPERATION_TIMEDOUT) {
		fprintf(stderr, "kmsctl: no answer from %s within %ld s: %s\n", c->addr, c->timeout, why);
	} else if (is_tls_error(cc)) {
		fprintf(stderr, "kmsctl: TLS with %s failed: %s\n", c->addr, why);
	} else {
		fprintf(stderr, "kmsctl: cannot reach %s: %s\n", c->addr, why);
	}
	return CLI_UNREACHABLE;
}

static int call_once(struct cli_client *c, const char *method, const char *path, const json_t *body,
		     json_t **out, long *status)
{
	struct cli_req r = {0};
	struct rbuf rb = {0};
	char *url = NULL, *req = NULL;
	size_t req_len = 0;
	int is_list = strcmp(method, "LIST") == 0, is_post = strcmp(method, "POST") == 0;
	int rc = CLI_SERVER;
	long code = 0;
	CURLcode cc;
	kms_err jerr;

	*out = NULL;
	*status = 0;
	if (asprintf(&url, "%s%s%s", c->addr, path, is_list ? "?list=true" : "") < 0) {
		url = NULL;
		goto oom;
	}
	if (body != NULL) {
		req = kms_json_dump(body, &req_len);
		if (req == NULL)
			goto oom;
	}
	if ((rc = cli_req_open(c, &r, url, "Accept: application/json")) != CLI_OK)
		goto out;
	curl_easy_setopt(r.h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(r.h, CURLOPT_WRITEDATA, &rb);
	if (is_post) {
		curl_easy_setopt(r.h, CURLOPT_POST, 1L);
		if (req == NULL && c->raw_body != NULL) { /* sent as is (kmsctl policy write) */
			curl_easy_setopt(r.h, CURLOPT_POSTFIELDS, c->raw_body);
			curl_easy_setopt(r.h, CURLOPT_POSTFIELDSIZE, (long)c->raw_len);
		} else {
			curl_easy_setopt(r.h, CURLOPT_POSTFIELDS, req != NULL ? req : "");
			curl_easy_setopt(r.h, CURLOPT_POSTFIELDSIZE, (long)req_len);
		}
	} else {
		curl_easy_setopt(r.h, CURLOPT_HTTPGET, 1L);
	}
	cc = curl_easy_perform(r.h);
	if (cc != CURLE_OK) {
		if (rb.too_big) {
			fprintf(stderr, "kmsctl: the answer from %s is larger than %u bytes\n", c->addr,
				MAX_ANSWER);
			rc = CLI_SERVER;
		} else {
			rc = cli_req_failed(c, &r, cc);
		}
		goto out;
	}
	curl_easy_getinfo(r.h, CURLINFO_RESPONSE_CODE, &code);
	*status = code;
	if (rb.len > 0)
		*out = kms_json_parse_object(rb.p, rb.len, &jerr);
	if (code >= 200 && code < 300) {
		if (*out == NULL) {
			fprintf(stderr, "kmsctl: %ld the answer is not a JSON object\n", code);
			rc = CLI_SERVER;
		} else {
			rc = CLI_OK;
		}
	} else {
		rc = code >= 400 && code < 500 ? CLI_FAIL : CLI_SERVER;
	}
	goto out;
oom:
	fprintf(stderr, "kmsctl: out of memory\n");
	rc = CLI_SERVER;
out:
	if (rb.p != NULL) {
		kms_wipe(rb.p, rb.cap);
		free(rb.p);
	}
	if (req != NULL)
		kms_json_free_str(req, req_len);
	cli_req_close(&r);
	free(url);
	return rc;
}

/* A 401 that asks for a step-up the call did not carry: kmsd's message starts so. */
static int wants_mfa_code(long status, const json_t *ans)
{
	const char *m = json_string_value(json_array_get(json_object_get(ans, "errors"), 0));

	return status == 401 && m != NULL && strncmp(m, "MFA required: send", 18) == 0;
}

int cli_call_status(struct cli_client *c, const char *method, const char *path,
		    const json_t *body, json_t **out, long *status)
{
	int rc = call_once(c, method, path, body, out, status);

	/* Asked for a code and none was sent: ask on the terminal and send the call again. */
	if (c->mfa == NULL && c->token != NULL && wants_mfa_code(*status, *out) && isatty(STDIN_FILENO) &&
	    !cli_stdin_taken) {
		if (cli_mfa_prompt(c) != CLI_OK)
			return rc;
		json_decref(*out);
		*out = NULL;
		rc = call_once(c, method, path, body, out, status);
	}
	return rc;
}

/* Prints "kmsctl: <status> <message>", the message from the answer's errors list. */
void cli_print_http_error(long status, const json_t *answer)
{
	const json_t *errs = answer ? json_object_get(answer, "errors") : NULL;
	size_t i, shown = 0;
	const json_t *e;

	fprintf(stderr, "kmsctl: %ld ", status);
	json_array_foreach(errs, i, e) {
		const char *s = json_string_value(e);

		if (s == NULL)
			continue;
		if (shown++ > 0)
			fputs("; ", stderr);
		for (; *s; s++)
			fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, stderr);
	}
	if (shown == 0)
		fputs("(the answer carries no message)", stderr);
	fputc('\n', stderr);
}

int cli_call(struct cli_client *c, const char *method, const char *path, const json_t *body,
	     json_t **out)
{
	long status;
	int rc = cli_call_status(c, method, path, body, out, &status);

	if (status != 0 && (status < 200 || status >= 300))
		cli_print_http_error(status, *out);
	return rc;
}

int cli_read_input(const char *path, size_t max, unsigned char **out, size_t *len)
{
	unsigned char *buf = NULL;
	size_t cap = 0, n = 0;
	int fd, rc = CLI_USAGE, is_stdin = strcmp(path, "-") == 0;

	if (is_stdin) {
		static int stdin_used;

		if (cli_stdin_taken || stdin_used ||
		    (cli_opts.token_file != NULL && strcmp(cli_opts.token_file, "-") == 0)) {
			fprintf(stderr, "kmsctl %s: stdin carries %s; give this input as a file\n",
				cli_cmd, stdin_used ? "another input" : "the token (--token-file -)");
			return CLI_USAGE;
		}
		stdin_used = 1;
		fd = STDIN_FILENO;
	} else {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, path, strerror(errno));
			return CLI_USAGE;
		}
	}
	for (;;) {
		ssize_t r;

		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 4096;
			unsigned char *q;

			q = malloc(ncap + 1);
			if (q == NULL) {
				fprintf(stderr, "kmsctl: out of memory\n");
				goto out;
			}
			if (buf != NULL) {
				memcpy(q, buf, n);
				kms_wipe(buf, cap + 1);
				free(buf);
			}
			buf = q;
			cap = ncap;
		}
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			fprintf(stderr, "kmsctl %s: %s: %s\n", cli_cmd, is_stdin ? "stdin" : path,
				strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			fprintf(stderr, "kmsctl %s: %s is larger than %zu bytes\n", cli_cmd,
				is_stdin ? "stdin" : path, max);
			goto out;
		}
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL;
	rc = CLI_OK;
out:
	if (buf != NULL) {
		kms_wipe(buf, cap + 1);
		free(buf);
	}
	if (!is_stdin)
		close(fd);
	return rc;
}
