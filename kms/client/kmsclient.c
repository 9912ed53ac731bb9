/* libkmsclient (include/kmsclient.h, docs/CLIENT.md): kmsd's data plane for PHI
 * services, and the sealed format of kmsctl seal/open (kms/base/seal.c) for buffers
 * and streams.
 *
 * Threads: the client is read-only after kmsc_open except for the handle pool and the
 * cache, each under its own mutex. Each request takes an idle libcurl handle from the
 * pool (or makes one) so that connections are reused, and gives it back after.
 *
 * Secrets: the token, the X-Vault-Token header line, plaintext DEKs and opened
 * plaintext live in kms_secret memory; request and answer bodies are wiped before they
 * are freed, and so is the base64 DEK inside a parsed answer. The library does not
 * touch jansson's global allocator (that is the application's), nor print anything. */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "include/kmsclient.h"
#include "kms/base/b64.h"
#include "kms/base/secret.h"
#include "kms/base/seal.h"
#include "kms/client/dkcache.h"

#define MAX_ANSWER (8u << 20)
#define MAX_TOKEN 1024
#define TOKEN_HDR "X-Vault-Token: "
#define POOL_MAX 16

struct kmsc {
	char *addr;
	char *ca_file, *client_cert, *client_key;
	char *token; /* secret memory */
	size_t token_len;
	long timeout;
	pthread_mutex_t mu; /* guards pool */
	CURL *pool[POOL_MAX];
	size_t npool;
	struct kmsc_cache *cache; /* NULL when off */
};

/* ---- errors ------------------------------------------------------------------------ */

static _Thread_local long last_status;
static _Thread_local char last_msg[512];

static const struct {
	const char *name, *text;
} err_table[KMSC_ERR__COUNT] = {
	[KMSC_OK] = {"KMSC_OK", "ok"},
	[KMSC_ERR_INVALID] = {"KMSC_ERR_INVALID", "invalid argument or configuration"},
	[KMSC_ERR_BAD_REQUEST] = {"KMSC_ERR_BAD_REQUEST", "the server refused the input (400)"},
	[KMSC_ERR_UNAUTHENTICATED] = {"KMSC_ERR_UNAUTHENTICATED", "no token (401)"},
	[KMSC_ERR_DENIED] = {"KMSC_ERR_DENIED", "permission denied (403)"},
	[KMSC_ERR_NOT_FOUND] = {"KMSC_ERR_NOT_FOUND", "not found (404)"},
	[KMSC_ERR_CONFLICT] = {"KMSC_ERR_CONFLICT", "conflict with the key's state (409)"},
	[KMSC_ERR_TOO_LARGE] = {"KMSC_ERR_TOO_LARGE", "request too large (413)"},
	[KMSC_ERR_RATE_LIMITED] = {"KMSC_ERR_RATE_LIMITED", "rate limited (429)"},
	[KMSC_ERR_UNAVAILABLE] = {"KMSC_ERR_UNAVAILABLE", "server unavailable (503)"},
	[KMSC_ERR_SERVER] = {"KMSC_ERR_SERVER", "unexpected answer from the server"},
	[KMSC_ERR_TRANSPORT] = {"KMSC_ERR_TRANSPORT", "cannot reach the server"},
	[KMSC_ERR_DECRYPT] = {"KMSC_ERR_DECRYPT", "sealed data failed authentication"},
	[KMSC_ERR_FORMAT] = {"KMSC_ERR_FORMAT", "not sealed data, or a header refused"},
	[KMSC_ERR_MISMATCH] = {"KMSC_ERR_MISMATCH",
			       "the sealed data's tenant, key or context is not the one expected"},
	[KMSC_ERR_PARTIAL] = {"KMSC_ERR_PARTIAL", "some batch items failed"},
	[KMSC_ERR_IO] = {"KMSC_ERR_IO", "I/O error"},
	[KMSC_ERR_NOMEM] = {"KMSC_ERR_NOMEM", "out of memory"},
};

const char *kmsc_strerror(kmsc_err e)
{
	return (unsigned)e < KMSC_ERR__COUNT ? err_table[e].text : "unknown error";
}

const char *kmsc_err_name(kmsc_err e)
{
	return (unsigned)e < KMSC_ERR__COUNT ? err_table[e].name : "KMSC_ERR_UNKNOWN";
}

long kmsc_last_status(void)
{
	return last_status;
}

const char *kmsc_last_message(void)
{
	return last_msg;
}

static kmsc_err fail(kmsc_err e, long status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static kmsc_err fail(kmsc_err e, long status, const char *fmt, ...)
{
	va_list ap;

	last_status = status;
	va_start(ap, fmt);
	vsnprintf(last_msg, sizeof(last_msg), fmt, ap);
	va_end(ap);
	return e;
}

static kmsc_err oom(void)
{
	return fail(KMSC_ERR_NOMEM, 0, "out of memory");
}

static void clear_last(void)
{
	last_status = 0;
	last_msg[0] = '\0';
}

static kmsc_err kind_of_status(long st)
{
	switch (st) {
	case 400: return KMSC_ERR_BAD_REQUEST;
	case 401: return KMSC_ERR_UNAUTHENTICATED;
	case 403: return KMSC_ERR_DENIED;
	case 404: return KMSC_ERR_NOT_FOUND;
	case 409: return KMSC_ERR_CONFLICT;
	case 413: return KMSC_ERR_TOO_LARGE;
	case 429: return KMSC_ERR_RATE_LIMITED;
	case 503: return KMSC_ERR_UNAVAILABLE;
	default: return KMSC_ERR_SERVER;
	}
}

void kmsc_free_secret(void *p)
{
	kms_secret_free(p);
}

void kmsc_free(void *p)
{
	free(p);
}

/* ---- open / close ------------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int dup_opt(const char *s, char **out)
{
	*out = NULL;
	if (s == NULL)
		return 0;
	*out = strdup(s);
	return *out == NULL ? -1 : 0;
}

kmsc_err kmsc_open(const struct kmsc_config *cfg, struct kmsc **out)
{
	struct kmsc *c = NULL;
	kmsc_err e = KMSC_ERR_INVALID;
	size_t n;

	clear_last();
	if (out == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_open: out is NULL");
	*out = NULL;
	if (cfg == NULL || cfg->addr == NULL)
		return fail(KMSC_ERR_INVALID, 0, "config: addr is required");
	if (strncasecmp(cfg->addr, "https://", 8) != 0 || cfg->addr[8] == '\0' ||
	    strpbrk(cfg->addr, "?# \t\r\n") != NULL)
		return fail(KMSC_ERR_INVALID, 0, "config: addr must be https://host[:port], no query");
	if (cfg->token_file != NULL && cfg->token != NULL)
		return fail(KMSC_ERR_INVALID, 0, "config: give exactly one of token_file and token");
	if ((cfg->client_cert != NULL) != (cfg->client_key != NULL))
		return fail(KMSC_ERR_INVALID, 0, "config: client_cert and client_key go together");
	/* A client certificate mapped to a principal authenticates alone (mTLS). */
	if (cfg->token_file == NULL && cfg->token == NULL && cfg->client_cert == NULL)
		return fail(KMSC_ERR_INVALID, 0, "config: give token_file or token, or client_cert and client_key");
	if (cfg->client_key != NULL) {
		struct stat st;

		if (stat(cfg->client_key, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) != 0 ||
		    access(cfg->client_key, R_OK) != 0 || access(cfg->client_cert, R_OK) != 0)
			return fail(KMSC_ERR_INVALID, 0,
				    "config: client_key %s must be a readable regular file that group and others "
				    "cannot read (chmod 600), and client_cert readable",
				    cfg->client_key);
	}
	if (cfg->timeout_seconds < 0 || cfg->timeout_seconds > 3600)
		return fail(KMSC_ERR_INVALID, 0, "config: timeout_seconds is not in 0..3600");
	if (cfg->cache && (cfg->cache_max_age_ms == 0 || cfg->cache_max_messages == 0 ||
			   cfg->cache_max_bytes == 0))
		return fail(KMSC_ERR_INVALID, 0,
			    "config: the cache needs all three bounds (max age, messages, bytes)");
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return fail(KMSC_ERR_TRANSPORT, 0, "libcurl initialisation failed");
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return oom();
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return oom();
	}
	if (dup_opt(cfg->addr, &c->addr) != 0 || dup_opt(cfg->ca_file, &c->ca_file) != 0 ||
	    dup_opt(cfg->client_cert, &c->client_cert) != 0 ||
	    dup_opt(cfg->client_key, &c->client_key) != 0) {
		e = oom();
		goto out;
	}
	n = strlen(c->addr);
	while (n > 8 && c->addr[n - 1] == '/')
		c->addr[--n] = '\0';
	c->timeout = cfg->timeout_seconds ? cfg->timeout_seconds : 30;
	if (cfg->token_file != NULL) {
		if (kms_secret_read_file(cfg->token_file, &c->token, &c->token_len) != 0) {
			e = fail(KMSC_ERR_INVALID, 0, "token file %s: %s", cfg->token_file,
				 errno == EPERM ? "not a regular file, or readable by group or others"
				 : errno == EINVAL ? "the first line is empty" : strerror(errno));
			goto out;
		}
	} else if (cfg->token != NULL) {
		if (cfg->token_len == 0 || cfg->token_len > MAX_TOKEN) {
			e = fail(KMSC_ERR_INVALID, 0, "config: token length is not in 1..%d", MAX_TOKEN);
			goto out;
		}
		c->token = kms_secret_alloc(cfg->token_len + 1);
		if (c->token == NULL) {
			e = oom();
			goto out;
		}
		memcpy(c->token, cfg->token, cfg->token_len);
		c->token_len = cfg->token_len;
	}
	for (size_t i = 0; i < c->token_len; i++)
		if ((unsigned char)c->token[i] <= 0x20 || (unsigned char)c->token[i] >= 0x7f) {
			e = fail(KMSC_ERR_INVALID, 0, "the token has a byte that cannot go into a header");
			goto out;
		}
	if (cfg->cache) {
		struct kmsc_cache_limits lim = {
			.max_age_ms = cfg->cache_max_age_ms,
			.max_messages = cfg->cache_max_messages,
			.max_bytes = cfg->cache_max_bytes,
			.max_entries = cfg->cache_max_entries ? cfg->cache_max_entries : 1024,
			.now_ms = cfg->clock_ms,
			.clock_arg = cfg->clock_arg,
		};
		if (kmsc_cache_new(&lim, &c->cache) != 0) {
			e = oom();
			goto out;
		}
	}
	*out = c;
	c = NULL;
	e = KMSC_OK;
out:
	kmsc_close(c);
	return e;
}

void kmsc_close(struct kmsc *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->npool; i++)
		curl_easy_cleanup(c->pool[i]);
	kmsc_cache_free(c->cache);
	kms_secret_free(c->token);
	free(c->addr);
	free(c->ca_file);
	free(c->client_cert);
	free(c->client_key);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* ---- HTTP -------------------------------------------------------------------------- */

static CURL *handle_get(struct kmsc *c)
{
	CURL *h = NULL;

	pthread_mutex_lock(&c->mu);
	if (c->npool > 0)
		h = c->pool[--c->npool];
	pthread_mutex_unlock(&c->mu);
	if (h != NULL) {
		curl_easy_reset(h); /* keeps the connection cache */
		return h;
	}
	return curl_easy_init();
}

static void handle_put(struct kmsc *c, CURL *h)
{
	if (h == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	if (c->npool < POOL_MAX) {
		c->pool[c->npool++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	if (h != NULL)
		curl_easy_cleanup(h);
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

/* "/v1/<a>/<b>/..." with each segment percent-encoded; malloc'd. */
static char *path_of(const char *first, ...)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t cap = 4;
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
	o = p + 3;
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

/* The server's "errors" text, joined, control bytes replaced. */
static void message_of(const json_t *ans, char *buf, size_t cap)
{
	const json_t *errs = ans ? json_object_get(ans, "errors") : NULL, *v;
	size_t i, o = 0;

	buf[0] = '\0';
	json_array_foreach(errs, i, v) {
		const char *s = json_string_value(v);

		if (s == NULL)
			continue;
		if (o > 0 && o + 2 < cap) {
			memcpy(buf + o, "; ", 2);
			o += 2;
		}
		for (; *s && o + 1 < cap; s++)
			buf[o++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
		buf[o] = '\0';
	}
}

/* POSTs body to path. KMSC_OK with *ans (a JSON object) on 2xx. A 400 whose answer
 * carries data.batch_results is given back too (*ans set, KMSC_ERR_BAD_REQUEST), for
 * the batch calls. Otherwise the error kind, with status and message recorded. */
static kmsc_err post(struct kmsc *c, const char *path, const json_t *body, json_t **ans)
{
	char errbuf[CURL_ERROR_SIZE] = "", msg[400];
	struct curl_slist *hdrs = NULL, tok_node;
	struct rbuf rb = {0};
	char *url = NULL, *req = NULL, *tok_hdr = NULL;
	json_free_t jfree;
	json_error_t jerr;
	size_t req_len = 0;
	long code = 0;
	CURLcode cc;
	CURL *h = NULL;
	kmsc_err e;

	*ans = NULL;
	if (asprintf(&url, "%s%s", c->addr, path) < 0) {
		url = NULL;
		e = oom();
		goto out;
	}
	req = json_dumps(body, JSON_COMPACT);
	h = handle_get(c);
	if (c->token != NULL)
		tok_hdr = kms_secret_alloc(sizeof(TOKEN_HDR) + c->token_len);
	if (req == NULL || h == NULL || (c->token != NULL && tok_hdr == NULL)) {
		e = oom();
		goto out;
	}
	req_len = strlen(req);
	if ((hdrs = curl_slist_append(hdrs, "Accept: application/json")) == NULL ||
	    (hdrs = curl_slist_append(hdrs, "Content-Type: application/json")) == NULL ||
	    (hdrs = curl_slist_append(hdrs, "Expect:")) == NULL) {
		e = oom();
		goto out;
	}
	/* Our own list node, so that the header line lives in wiped memory. */
	if (tok_hdr != NULL) {
		memcpy(tok_hdr, TOKEN_HDR, sizeof(TOKEN_HDR) - 1);
		memcpy(tok_hdr + sizeof(TOKEN_HDR) - 1, c->token, c->token_len);
		tok_node.data = tok_hdr;
		tok_node.next = hdrs;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (c->ca_file != NULL)
		curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
	if (c->client_cert != NULL) {
		curl_easy_setopt(h, CURLOPT_SSLCERT, c->client_cert);
		curl_easy_setopt(h, CURLOPT_SSLKEY, c->client_key);
	}
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->timeout < 10 ? c->timeout : 10L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "libkmsclient/" KMSC_VERSION);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &rb);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, tok_hdr != NULL ? &tok_node : hdrs);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, req);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)req_len);
	cc = curl_easy_perform(h);
	if (cc != CURLE_OK) {
		if (rb.too_big)
			e = fail(KMSC_ERR_SERVER, 0, "the answer from %s is larger than %u bytes", c->addr,
				 MAX_ANSWER);
		else
			e = fail(KMSC_ERR_TRANSPORT, 0, "%s: %s", c->addr,
				 errbuf[0] ? errbuf : curl_easy_strerror(cc));
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
	if (rb.len > 0)
		*ans = json_loadb(rb.p, rb.len, JSON_REJECT_DUPLICATES, &jerr);
	if (*ans != NULL && !json_is_object(*ans)) {
		json_decref(*ans);
		*ans = NULL;
	}
	if (code >= 200 && code < 300) {
		e = *ans != NULL ? KMSC_OK
				 : fail(KMSC_ERR_SERVER, code, "the answer (%ld) is not a JSON object", code);
		goto out;
	}
	message_of(*ans, msg, sizeof(msg));
	e = fail(kind_of_status(code), code, "%s", msg[0] ? msg : "(the answer carries no message)");
	if (code != 400 || json_object_get(json_object_get(*ans, "data"), "batch_results") == NULL) {
		json_decref(*ans);
		*ans = NULL;
	}
out:
	if (rb.p != NULL) {
		kms_wipe(rb.p, rb.cap);
		free(rb.p);
	}
	if (req != NULL) {
		kms_wipe(req, req_len);
		json_get_alloc_funcs(NULL, &jfree);
		jfree(req);
	}
	kms_secret_free(tok_hdr);
	curl_slist_free_all(hdrs);
	if (h != NULL) {
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
		handle_put(c, h);
	}
	free(url);
	return e;
}

/* Wipes a string member in place (a base64 DEK) before the answer is freed. */
static void wipe_member(json_t *obj, const char *name)
{
	json_t *v = json_object_get(obj, name);

	if (json_is_string(v))
		kms_wipe((char *)json_string_value(v), json_string_length(v));
}

/* ---- contexts ---------------------------------------------------------------------- */

/* The context as a JSON object (NULL when empty) and, if canon is not NULL, its
 * canonical text (malloc'd; "{}" when empty) as the sealed header holds it. */
static kmsc_err ctx_json(const struct kmsc_ctx *ctx, json_t **obj, char **canon)
{
	json_t *o = NULL;
	kmsc_err e = KMSC_ERR_INVALID;

	*obj = NULL;
	if (canon != NULL)
		*canon = NULL;
	if (ctx != NULL && ctx->n > 0) {
		if (ctx->kv == NULL)
			return fail(KMSC_ERR_INVALID, 0, "context: n > 0 but no pairs");
		o = json_object();
		if (o == NULL)
			return oom();
		for (size_t i = 0; i < ctx->n; i++) {
			const struct kmsc_kv *kv = &ctx->kv[i];

			if (kv->key == NULL || kv->value == NULL || kv->key[0] == '\0') {
				e = fail(KMSC_ERR_INVALID, 0, "context pair %zu: empty key or NULL value", i);
				goto out;
			}
			if (json_object_get(o, kv->key) != NULL) {
				e = fail(KMSC_ERR_INVALID, 0, "context: key \"%.64s\" given twice", kv->key);
				goto out;
			}
			if (json_object_set_new(o, kv->key, json_string(kv->value)) != 0) {
				e = fail(KMSC_ERR_INVALID, 0, "context: \"%.64s\" is not valid UTF-8", kv->key);
				goto out;
			}
		}
	}
	if (canon != NULL && kms_seal_context_canonical(o, canon) != KMS_OK) {
		e = fail(KMSC_ERR_INVALID, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	*obj = o;
	o = NULL;
	e = KMSC_OK;
out:
	json_decref(o);
	return e;
}

static kmsc_err check_names(const char *tenant, const char *key)
{
	if (tenant == NULL || key == NULL || tenant[0] == '\0' || key[0] == '\0')
		return fail(KMSC_ERR_INVALID, 0, "tenant and key are required");
	if (strlen(tenant) > KMS_SEAL_NAME_MAX || strlen(key) > KMS_SEAL_NAME_MAX)
		return fail(KMSC_ERR_INVALID, 0, "tenant or key longer than %d bytes", KMS_SEAL_NAME_MAX);
	return KMSC_OK;
}

/* ---- datakey, decrypt, rewrap (single and batch) ----------------------------------- */

enum op { OP_DATAKEY, OP_DECRYPT, OP_REWRAP };

/* A 32-byte DEK out of member "plaintext" (base64) into fresh secret memory. */
static kmsc_err dek_from(json_t *item, uint8_t **dek)
{
	const char *b64 = json_string_value(json_object_get(item, "plaintext"));
	size_t n = b64 ? strlen(b64) : 0;
	uint8_t tmp[KMS_B64_DEC_MAX(64)];
	long got;

	*dek = NULL;
	if (b64 == NULL || n > 64 ||
	    (got = kms_b64_decode(b64, n, tmp, sizeof(tmp))) != KMSC_DEK_LEN) {
		kms_wipe(tmp, sizeof(tmp));
		return fail(KMSC_ERR_SERVER, 200, "the answer holds no 256-bit data key");
	}
	*dek = kms_secret_alloc(KMSC_DEK_LEN);
	if (*dek == NULL) {
		kms_wipe(tmp, sizeof(tmp));
		return oom();
	}
	memcpy(*dek, tmp, KMSC_DEK_LEN);
	kms_wipe(tmp, sizeof(tmp));
	return KMSC_OK;
}

/* Fills r from one answer item. */
static kmsc_err result_from(enum op op, json_t *item, struct kmsc_result *r)
{
	const char *w, *err = json_string_value(json_object_get(item, "error"));
	json_int_t v;
	kmsc_err e;

	memset(r, 0, sizeof(*r));
	if (!json_is_object(item))
		return r->err = fail(KMSC_ERR_SERVER, 200, "an answer item is not an object");
	if (err != NULL) {
		r->message = strdup(err);
		r->err = KMSC_ERR_BAD_REQUEST;
		return r->err;
	}
	if (op != OP_REWRAP && (e = dek_from(item, &r->dek)) != KMSC_OK)
		return r->err = e;
	if (op != OP_DECRYPT) {
		w = json_string_value(json_object_get(item, "ciphertext"));
		v = json_integer_value(json_object_get(item, "key_version"));
		if (w == NULL || strncmp(w, "vault:v", 7) != 0 || strlen(w) > KMS_SEAL_WRAPPED_MAX) {
			kms_secret_free(r->dek);
			r->dek = NULL;
			return r->err = fail(KMSC_ERR_SERVER, 200, "the answer holds no wrapped key");
		}
		r->wrapped = strdup(w);
		if (r->wrapped == NULL) {
			kms_secret_free(r->dek);
			r->dek = NULL;
			return r->err = oom();
		}
		r->version = v > 0 && v <= UINT32_MAX ? (unsigned)v : 0;
	}
	return r->err = KMSC_OK;
}

void kmsc_results_clear(struct kmsc_result *r, size_t n)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		kms_secret_free(r[i].dek);
		free(r[i].wrapped);
		free(r[i].message);
		memset(&r[i], 0, sizeof(r[i]));
	}
}

/* One request for n items (single when batch is 0: item fields at the top level). */
static kmsc_err call(struct kmsc *c, enum op op, const char *tenant, const char *key,
		     const char *const *wrapped, const struct kmsc_ctx *ctxs, size_t n, int batch,
		     struct kmsc_result *out)
{
	static const char *const opname[] = {"datakey", "decrypt", "rewrap"};
	json_t *body = NULL, *arr = NULL, *ans = NULL, *data, *res = NULL, *it, *ctx;
	char *path = NULL;
	size_t i, bad = 0;
	kmsc_err e;

	clear_last();
	if (out == NULL || n == 0 || n > KMSC_BATCH_MAX)
		return fail(KMSC_ERR_INVALID, 0, "batch size %zu is not in 1..%d", n, KMSC_BATCH_MAX);
	memset(out, 0, n * sizeof(*out));
	if ((e = check_names(tenant, key)) != KMSC_OK)
		return e;
	if (op != OP_DATAKEY && wrapped == NULL)
		return fail(KMSC_ERR_INVALID, 0, "no wrapped keys given");
	path = op == OP_DATAKEY ? path_of(tenant, "datakey", "plaintext", key, NULL)
				: path_of(tenant, opname[op], key, NULL);
	arr = json_array();
	if (path == NULL || arr == NULL) {
		e = oom();
		goto out;
	}
	for (i = 0; i < n; i++) {
		it = op == OP_DATAKEY ? json_pack("{s:i}", "bits", 256) : json_object();
		if (it == NULL || json_array_append_new(arr, it) != 0) {
			e = oom();
			goto out;
		}
		if (op != OP_DATAKEY) {
			if (wrapped[i] == NULL) {
				e = fail(KMSC_ERR_INVALID, 0, "wrapped key %zu is NULL", i);
				goto out;
			}
			if (json_object_set_new(it, "ciphertext", json_string(wrapped[i])) != 0) {
				e = fail(KMSC_ERR_INVALID, 0, "wrapped key %zu is not text", i);
				goto out;
			}
		}
		if ((e = ctx_json(ctxs != NULL ? &ctxs[i] : NULL, &ctx, NULL)) != KMSC_OK)
			goto out;
		if (ctx != NULL && json_object_set_new(it, "encryption_context", ctx) != 0) {
			e = oom();
			goto out;
		}
	}
	if (batch) {
		body = json_pack("{s:O}", "batch_input", arr);
	} else {
		body = json_array_get(arr, 0);
		json_incref(body);
	}
	if (body == NULL) {
		e = oom();
		goto out;
	}
	e = post(c, path, body, &ans);
	if (ans == NULL)
		goto out;
	data = json_object_get(ans, "data");
	if (!batch) {
		e = result_from(op, data, &out[0]);
		if (e == KMSC_OK)
			clear_last();
		goto wipe;
	}
	res = json_object_get(data, "batch_results");
	if (json_array_size(res) != n) {
		e = fail(KMSC_ERR_SERVER, 200, "the answer has %zu results for %zu items",
			 json_array_size(res), n);
		goto wipe;
	}
	for (i = 0; i < n; i++) {
		if (result_from(op, json_array_get(res, i), &out[i]) != KMSC_OK)
			bad++;
	}
	if (bad > 0)
		e = fail(KMSC_ERR_PARTIAL, e == KMSC_OK ? 200 : 400, "%zu of %zu batch items failed", bad, n);
	else
		e = KMSC_OK;
wipe:
	if (batch) {
		json_array_foreach(res, i, it)
			wipe_member(it, "plaintext");
	} else {
		wipe_member(data, "plaintext");
	}
out:
	if (e != KMSC_OK && e != KMSC_ERR_PARTIAL)
		kmsc_results_clear(out, n);
	json_decref(ans);
	json_decref(body);
	json_decref(arr);
	free(path);
	return e;
}

kmsc_err kmsc_datakey(struct kmsc *c, const char *tenant, const char *key, const struct kmsc_ctx *ctx,
		      uint8_t **dek, char **wrapped)
{
	struct kmsc_result r;
	kmsc_err e;

	if (dek == NULL || wrapped == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_datakey: NULL output");
	*dek = NULL;
	*wrapped = NULL;
	e = call(c, OP_DATAKEY, tenant, key, NULL, ctx, 1, 0, &r);
	if (e == KMSC_OK) {
		*dek = r.dek;
		*wrapped = r.wrapped;
	}
	return e;
}

kmsc_err kmsc_decrypt_dek(struct kmsc *c, const char *tenant, const char *key, const char *wrapped,
			  const struct kmsc_ctx *ctx, uint8_t **dek)
{
	struct kmsc_result r;
	kmsc_err e;

	if (dek == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_decrypt_dek: NULL output");
	*dek = NULL;
	e = call(c, OP_DECRYPT, tenant, key, &wrapped, ctx, 1, 0, &r);
	if (e == KMSC_OK)
		*dek = r.dek;
	return e;
}

kmsc_err kmsc_rewrap(struct kmsc *c, const char *tenant, const char *key, const char *wrapped,
		     const struct kmsc_ctx *ctx, char **new_wrapped)
{
	struct kmsc_result r;
	kmsc_err e;

	if (new_wrapped == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_rewrap: NULL output");
	*new_wrapped = NULL;
	e = call(c, OP_REWRAP, tenant, key, &wrapped, ctx, 1, 0, &r);
	if (e == KMSC_OK)
		*new_wrapped = r.wrapped;
	return e;
}

kmsc_err kmsc_datakey_batch(struct kmsc *c, const char *tenant, const char *key,
			    const struct kmsc_ctx *ctxs, size_t n, struct kmsc_result *out)
{
	return call(c, OP_DATAKEY, tenant, key, NULL, ctxs, n, 1, out);
}

kmsc_err kmsc_decrypt_dek_batch(struct kmsc *c, const char *tenant, const char *key,
				const char *const *wrapped, const struct kmsc_ctx *ctxs, size_t n,
				struct kmsc_result *out)
{
	return call(c, OP_DECRYPT, tenant, key, wrapped, ctxs, n, 1, out);
}

kmsc_err kmsc_rewrap_batch(struct kmsc *c, const char *tenant, const char *key,
			   const char *const *wrapped, const struct kmsc_ctx *ctxs, size_t n,
			   struct kmsc_result *out)
{
	return call(c, OP_REWRAP, tenant, key, wrapped, ctxs, n, 1, out);
}

/* ---- sealing ----------------------------------------------------------------------- */

/* The cache id: kind, tenant NUL key NUL canonical context [NUL wrapped]. */
static char *cache_id(char kind, const char *tenant, const char *key, const char *canon,
		      const char *wrapped, size_t *len)
{
	size_t tl = strlen(tenant), kl = strlen(key), cl = strlen(canon),
	       wl = wrapped ? strlen(wrapped) : 0;
	size_t n = 1 + tl + 1 + kl + 1 + cl + (wrapped ? 1 + wl : 0);
	char *id = malloc(n), *o = id;

	if (id == NULL)
		return NULL;
	*o++ = kind;
	memcpy(o, tenant, tl + 1);
	o += tl + 1;
	memcpy(o, key, kl + 1);
	o += kl + 1;
	memcpy(o, canon, cl);
	o += cl;
	if (wrapped != NULL) {
		*o++ = '\0';
		memcpy(o, wrapped, wl);
	}
	*len = n;
	return id;
}

/* A DEK to seal n bytes under (tenant, key, ctx): from the cache when it may take
 * them, else a new one from the server (then cached). dek is secret memory. */
static kmsc_err seal_dek(struct kmsc *c, const char *tenant, const char *key,
			 const struct kmsc_ctx *ctx, const char *canon, uint64_t n, int use_cache,
			 uint8_t *dek, char **wrapped)
{
	uint8_t *fresh = NULL;
	char *id = NULL;
	size_t id_len = 0;
	kmsc_err e;
	int hit;

	*wrapped = NULL;
	if (use_cache && c->cache != NULL) {
		id = cache_id('E', tenant, key, canon, NULL, &id_len);
		if (id == NULL)
			return oom();
		hit = kmsc_cache_take(c->cache, id, id_len, n, dek, wrapped);
		if (hit != 0) {
			free(id);
			return hit == 1 ? KMSC_OK : oom();
		}
	}
	e = kmsc_datakey(c, tenant, key, ctx, &fresh, wrapped);
	if (e == KMSC_OK) {
		memcpy(dek, fresh, KMSC_DEK_LEN);
		/* A cache without memory only costs a server call next time. */
		if (id != NULL)
			(void)kmsc_cache_put(c->cache, id, id_len, fresh, *wrapped, n);
	}
	kms_secret_free(fresh);
	free(id);
	return e;
}

/* Unwraps the DEK of a parsed header, through the cache when on. */
static kmsc_err open_dek(struct kmsc *c, const struct kms_seal_header *h, uint64_t n, int use_cache,
			 uint8_t *dek)
{
	json_error_t jerr;
	json_t *ctx = NULL, *body = NULL, *ans = NULL;
	uint8_t *fresh = NULL;
	char *id = NULL, *path = NULL;
	size_t id_len = 0;
	kmsc_err e;
	int hit;

	if (use_cache && c->cache != NULL) {
		id = cache_id('D', h->tenant, h->key, h->context, h->wrapped, &id_len);
		if (id == NULL)
			return oom();
		hit = kmsc_cache_take(c->cache, id, id_len, n, dek, NULL);
		if (hit != 0) {
			free(id);
			return hit == 1 ? KMSC_OK : oom();
		}
	}
	ctx = json_loads(h->context, JSON_REJECT_DUPLICATES, &jerr);
	body = json_pack("{s:s}", "ciphertext", h->wrapped);
	path = path_of(h->tenant, "decrypt", h->key, NULL);
	if (ctx == NULL || body == NULL || path == NULL) {
		e = oom();
		goto out;
	}
	if (json_object_size(ctx) > 0 && json_object_set(body, "encryption_context", ctx) != 0) {
		e = oom();
		goto out;
	}
	if ((e = post(c, path, body, &ans)) != KMSC_OK)
		goto out;
	e = dek_from(json_object_get(ans, "data"), &fresh);
	wipe_member(json_object_get(ans, "data"), "plaintext");
	if (e != KMSC_OK)
		goto out;
	memcpy(dek, fresh, KMSC_DEK_LEN);
	if (id != NULL)
		(void)kmsc_cache_put(c->cache, id, id_len, fresh, h->wrapped, n);
out:
	kms_secret_free(fresh);
	json_decref(ans);
	json_decref(body);
	json_decref(ctx);
	free(path);
	free(id);
	return e;
}

/* A header for a new sealed stream. */
static kmsc_err make_header(const char *tenant, const char *key, const char *wrapped, char *canon,
			    uint32_t chunk, uint8_t **hdr, size_t *hdr_len)
{
	struct kms_seal_header h = {0};

	h.chunk_size = chunk;
	h.tenant = (char *)tenant;
	h.key = (char *)key;
	h.wrapped = (char *)wrapped;
	h.context = canon;
	if (RAND_bytes(h.prefix, sizeof(h.prefix)) != 1)
		return fail(KMSC_ERR_NOMEM, 0, "no randomness for the nonce prefix");
	if (kms_seal_header_encode(&h, hdr, hdr_len) != KMS_OK)
		return fail(KMSC_ERR_INVALID, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
	return KMSC_OK;
}

kmsc_err kmsc_seal_buffer(struct kmsc *c, const char *tenant, const char *key,
			  const struct kmsc_ctx *ctx, const void *in, size_t n, uint8_t **out,
			  size_t *out_len)
{
	struct kms_seal_stream st = {0};
	const uint8_t *p = in;
	uint8_t *dek = NULL, *hdr = NULL, *buf = NULL;
	json_t *cj = NULL;
	char *canon = NULL, *wrapped = NULL;
	size_t hdr_len = 0, chunks, o, left;
	uint32_t cs = KMS_SEAL_CHUNK_DEFAULT;
	kmsc_err e;

	clear_last();
	if (out == NULL || out_len == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_seal_buffer: NULL output");
	*out = NULL;
	*out_len = 0;
	if (in == NULL && n > 0)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_seal_buffer: NULL input");
	if (n > KMSC_BUFFER_MAX)
		return fail(KMSC_ERR_INVALID, 0, "buffer of %zu bytes: over %u, use kmsc_seal_fd", n,
			    KMSC_BUFFER_MAX);
	if ((e = check_names(tenant, key)) != KMSC_OK || (e = ctx_json(ctx, &cj, &canon)) != KMSC_OK)
		goto out;
	dek = kms_secret_alloc(KMSC_DEK_LEN);
	if (dek == NULL) {
		e = oom();
		goto out;
	}
	if ((e = seal_dek(c, tenant, key, ctx, canon, n, 1, dek, &wrapped)) != KMSC_OK)
		goto out;
	if ((e = make_header(tenant, key, wrapped, canon, cs, &hdr, &hdr_len)) != KMSC_OK)
		goto out;
	chunks = n == 0 ? 1 : (n + cs - 1) / cs;
	buf = malloc(hdr_len + n + chunks * KMS_SEAL_TAG_LEN);
	if (buf == NULL) {
		e = oom();
		goto out;
	}
	if (kms_seal_stream_init(&st, dek, hdr, hdr_len) != KMS_OK) {
		e = oom();
		goto out;
	}
	memcpy(buf, hdr, hdr_len);
	o = hdr_len;
	left = n;
	do {
		size_t m = left < cs ? left : cs;
		int last = left <= cs;

		if (kms_seal_stream_seal(&st, last, p, m, buf + o) != KMS_OK) {
			e = fail(KMSC_ERR_INVALID, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
			goto out;
		}
		o += m + KMS_SEAL_TAG_LEN;
		p += m;
		left -= m;
		if (last)
			break;
	} while (1);
	*out = buf;
	*out_len = o;
	buf = NULL;
	e = KMSC_OK;
out:
	kms_seal_stream_clear(&st);
	free(buf);
	free(hdr);
	free(wrapped);
	free(canon);
	json_decref(cj);
	kms_secret_free(dek);
	return e;
}

/* Checks the header against want (NULL, or NULL members: anything). */
static kmsc_err check_want(const struct kms_seal_header *h, const struct kmsc_want *want)
{
	json_t *cj = NULL;
	char *canon = NULL;
	kmsc_err e;

	if (want == NULL)
		return KMSC_OK;
	if (want->tenant != NULL && strcmp(want->tenant, h->tenant) != 0)
		return fail(KMSC_ERR_MISMATCH, 0, "sealed under tenant %.64s, not the one expected",
			    h->tenant);
	if (want->key != NULL && strcmp(want->key, h->key) != 0)
		return fail(KMSC_ERR_MISMATCH, 0, "sealed under key %.64s, not the one expected", h->key);
	if (want->ctx == NULL)
		return KMSC_OK;
	if ((e = ctx_json(want->ctx, &cj, &canon)) != KMSC_OK)
		return e;
	e = strcmp(canon, h->context) == 0
		    ? KMSC_OK
		    : fail(KMSC_ERR_MISMATCH, 0, "sealed under context %.200s, not the one expected",
			   h->context);
	free(canon);
	json_decref(cj);
	return e;
}

kmsc_err kmsc_open_buffer(struct kmsc *c, const void *in, size_t n, const struct kmsc_want *want,
			  uint8_t **pt, size_t *pt_len)
{
	struct kms_seal_header h = {0};
	struct kms_seal_stream st = {0};
	const uint8_t *p = in;
	uint8_t *dek = NULL, *buf = NULL;
	size_t hdr_len = 0, o, po = 0, rec, chunks, max_pt;
	kmsc_err e;

	clear_last();
	if (pt == NULL || pt_len == NULL)
		return fail(KMSC_ERR_INVALID, 0, "kmsc_open_buffer: NULL output");
	*pt = NULL;
	*pt_len = 0;
	if (in == NULL || n < KMS_SEAL_FIXED_LEN)
		return fail(KMSC_ERR_FORMAT, 0, "not a sealed buffer (too short)");
	if (kms_seal_header_len(p, &hdr_len) != KMS_OK || hdr_len > n ||
	    kms_seal_header_parse(p, hdr_len, &h) != KMS_OK) {
		e = fail(KMSC_ERR_FORMAT, 0, "%s",
			 hdr_len > n ? "sealed buffer: truncated header" : kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if ((e = check_want(&h, want)) != KMSC_OK)
		goto out;
	rec = (size_t)h.chunk_size + KMS_SEAL_TAG_LEN;
	chunks = n - hdr_len == 0 ? 0 : (n - hdr_len + rec - 1) / rec;
	if (chunks == 0) {
		e = fail(KMSC_ERR_DECRYPT, 0, "sealed buffer: truncated: no final chunk");
		goto out;
	}
	if (n - hdr_len < chunks * KMS_SEAL_TAG_LEN)
		max_pt = 0;
	else
		max_pt = n - hdr_len - chunks * KMS_SEAL_TAG_LEN;
	if (max_pt > KMSC_BUFFER_MAX) {
		e = fail(KMSC_ERR_INVALID, 0, "sealed buffer holds over %u bytes: use kmsc_open_fd",
			 KMSC_BUFFER_MAX);
		goto out;
	}
	dek = kms_secret_alloc(KMSC_DEK_LEN);
	buf = kms_secret_alloc(max_pt > 0 ? max_pt : 1);
	if (dek == NULL || buf == NULL) {
		e = oom();
		goto out;
	}
	if ((e = open_dek(c, &h, max_pt, 1, dek)) != KMSC_OK)
		goto out;
	if (kms_seal_stream_init(&st, dek, p, hdr_len) != KMS_OK) {
		e = oom();
		goto out;
	}
	for (o = hdr_len; o < n;) {
		size_t m = n - o < rec ? n - o : rec;
		int last = o + m == n;

		if (kms_seal_stream_open(&st, last, p + o, m, buf + po) != KMS_OK) {
			e = fail(KMSC_ERR_DECRYPT, 0, "%s", kms_err_detail(KMS_ERR_DECRYPT));
			goto out;
		}
		o += m;
		po += m - KMS_SEAL_TAG_LEN;
	}
	*pt = buf;
	*pt_len = po;
	buf = NULL;
	e = KMSC_OK;
out:
	kms_seal_stream_clear(&st);
	kms_secret_free(buf);
	kms_secret_free(dek);
	kms_seal_header_free(&h);
	return e;
}

/* ---- streams ----------------------------------------------------------------------- */

static ssize_t read_full(int fd, uint8_t *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int write_full(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

kmsc_err kmsc_seal_fd(struct kmsc *c, const char *tenant, const char *key, const struct kmsc_ctx *ctx,
		      uint32_t chunk_size, int in_fd, int out_fd)
{
	struct kms_seal_stream st = {0};
	uint8_t *dek = NULL, *hdr = NULL, *pt = NULL, *ct = NULL;
	json_t *cj = NULL;
	char *canon = NULL, *wrapped = NULL;
	size_t hdr_len = 0, have = 0, rec = 0;
	int last = 0;
	kmsc_err e;

	clear_last();
	if (chunk_size == 0)
		chunk_size = KMS_SEAL_CHUNK_DEFAULT;
	if (chunk_size < KMS_SEAL_CHUNK_MIN || chunk_size > KMS_SEAL_CHUNK_MAX)
		return fail(KMSC_ERR_INVALID, 0, "chunk size %u is not in %u..%u", chunk_size,
			    KMS_SEAL_CHUNK_MIN, KMS_SEAL_CHUNK_MAX);
	if ((e = check_names(tenant, key)) != KMSC_OK || (e = ctx_json(ctx, &cj, &canon)) != KMSC_OK)
		goto out;
	rec = chunk_size;
	dek = kms_secret_alloc(KMSC_DEK_LEN);
	pt = malloc(rec + 1); /* up to 4 MiB: beyond secret memory; wiped before free */
	ct = malloc(rec + KMS_SEAL_TAG_LEN);
	if (dek == NULL || pt == NULL || ct == NULL) {
		e = oom();
		goto out;
	}
	if ((e = seal_dek(c, tenant, key, ctx, canon, 0, 0, dek, &wrapped)) != KMSC_OK ||
	    (e = make_header(tenant, key, wrapped, canon, chunk_size, &hdr, &hdr_len)) != KMSC_OK)
		goto out;
	if (kms_seal_stream_init(&st, dek, hdr, hdr_len) != KMS_OK) {
		e = oom();
		goto out;
	}
	if (write_full(out_fd, hdr, hdr_len) != 0) {
		e = fail(KMSC_ERR_IO, 0, "writing: %s", strerror(errno));
		goto out;
	}
	/* One byte of look-ahead tells whether a chunk is the last. */
	while (!last) {
		ssize_t got = read_full(in_fd, pt + have, rec + 1 - have);
		size_t m;

		if (got < 0) {
			e = fail(KMSC_ERR_IO, 0, "reading: %s", strerror(errno));
			goto out;
		}
		have += (size_t)got;
		last = have <= rec;
		m = last ? have : rec;
		if (kms_seal_stream_seal(&st, last, pt, m, ct) != KMS_OK) {
			e = fail(KMSC_ERR_INVALID, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
			goto out;
		}
		if (write_full(out_fd, ct, m + KMS_SEAL_TAG_LEN) != 0) {
			e = fail(KMSC_ERR_IO, 0, "writing: %s", strerror(errno));
			goto out;
		}
		if (!last) {
			pt[0] = pt[rec];
			have = 1;
		}
	}
	e = KMSC_OK;
out:
	kms_seal_stream_clear(&st);
	if (pt != NULL) {
		kms_wipe(pt, rec + 1);
		free(pt);
	}
	free(ct);
	free(hdr);
	free(wrapped);
	free(canon);
	json_decref(cj);
	kms_secret_free(dek);
	return e;
}

kmsc_err kmsc_open_fd(struct kmsc *c, int in_fd, int out_fd, const struct kmsc_want *want)
{
	struct kms_seal_header h = {0};
	struct kms_seal_stream st = {0};
	uint8_t fixed[KMS_SEAL_FIXED_LEN], *hdr = NULL, *dek = NULL, *rbuf = NULL, *pt = NULL;
	size_t hdr_len = 0, have = 0, rec = 0;
	ssize_t got;
	int last = 0;
	kmsc_err e;

	clear_last();
	got = read_full(in_fd, fixed, sizeof(fixed));
	if (got < 0)
		return fail(KMSC_ERR_IO, 0, "reading: %s", strerror(errno));
	if ((size_t)got < sizeof(fixed))
		return fail(KMSC_ERR_FORMAT, 0, "not a sealed stream (too short)");
	if (kms_seal_header_len(fixed, &hdr_len) != KMS_OK)
		return fail(KMSC_ERR_FORMAT, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
	if ((hdr = malloc(hdr_len)) == NULL)
		return oom();
	memcpy(hdr, fixed, sizeof(fixed));
	got = read_full(in_fd, hdr + sizeof(fixed), hdr_len - sizeof(fixed));
	if (got < 0) {
		e = fail(KMSC_ERR_IO, 0, "reading: %s", strerror(errno));
		goto out;
	}
	if ((size_t)got != hdr_len - sizeof(fixed)) {
		e = fail(KMSC_ERR_FORMAT, 0, "sealed stream: truncated header");
		goto out;
	}
	if (kms_seal_header_parse(hdr, hdr_len, &h) != KMS_OK) {
		e = fail(KMSC_ERR_FORMAT, 0, "%s", kms_err_detail(KMS_ERR_INVALID));
		goto out;
	}
	if ((e = check_want(&h, want)) != KMSC_OK)
		goto out;
	rec = (size_t)h.chunk_size + KMS_SEAL_TAG_LEN;
	dek = kms_secret_alloc(KMSC_DEK_LEN);
	rbuf = malloc(rec + 1);
	pt = malloc(h.chunk_size); /* up to 4 MiB: beyond secret memory; wiped before free */
	if (dek == NULL || rbuf == NULL || pt == NULL) {
		e = oom();
		goto out;
	}
	if ((e = open_dek(c, &h, 0, 0, dek)) != KMSC_OK)
		goto out;
	if (kms_seal_stream_init(&st, dek, hdr, hdr_len) != KMS_OK) {
		e = oom();
		goto out;
	}
	while (!last) {
		size_t m;

		got = read_full(in_fd, rbuf + have, rec + 1 - have);
		if (got < 0) {
			e = fail(KMSC_ERR_IO, 0, "reading: %s", strerror(errno));
			goto out;
		}
		have += (size_t)got;
		last = have <= rec;
		m = last ? have : rec;
		if (kms_seal_stream_open(&st, last, rbuf, m, pt) != KMS_OK) {
			e = fail(KMSC_ERR_DECRYPT, 0, "%s", kms_err_detail(KMS_ERR_DECRYPT));
			goto out;
		}
		if (write_full(out_fd, pt, m - KMS_SEAL_TAG_LEN) != 0) {
			e = fail(KMSC_ERR_IO, 0, "writing: %s", strerror(errno));
			goto out;
		}
		if (!last) {
			rbuf[0] = rbuf[rec];
			have = 1;
		}
	}
	e = KMSC_OK;
out:
	kms_seal_stream_clear(&st);
	if (pt != NULL) {
		kms_wipe(pt, h.chunk_size);
		free(pt);
	}
	free(rbuf);
	kms_secret_free(dek);
	free(hdr);
	kms_seal_header_free(&h);
	return e;
}
