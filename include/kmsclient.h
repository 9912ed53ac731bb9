/* libkmsclient: envelope encryption against kmsd for PHI services (docs/CLIENT.md).
 *
 * One `struct kmsc` is made by kmsc_open and may be shared by any number of threads:
 * every call except kmsc_close is safe to make concurrently on the same client
 * (requests use their own libcurl handle from a locked pool; the data-key cache has
 * its own lock). kmsc_close must be called once, after every other call returned.
 *
 * Ownership of returned buffers:
 *   - plaintext data keys and opened plaintext: secret memory (locked, not dumped),
 *     owned by the caller, released with kmsc_free_secret(), which wipes them;
 *   - wrapped data keys, sealed buffers and other strings: malloc'd, owned by the
 *     caller, released with kmsc_free() (or free());
 *   - batch results: filled into an array the caller provides; release the buffers
 *     in it with kmsc_results_clear().
 * On failure every output pointer is set to NULL (lengths to 0).
 *
 * Errors: every fallible call returns a kmsc_err; kmsc_last_status() and
 * kmsc_last_message() tell this thread's HTTP status (0 when no answer came) and the
 * server's or library's message for the last call that failed. The library never
 * prints anything. */
#ifndef KMSCLIENT_H
#define KMSCLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KMSC_API __attribute__((visibility("default")))
#define KMSC_WUR __attribute__((warn_unused_result))

#define KMSC_VERSION "0.1.0"
#define KMSC_DEK_LEN 32            /* data keys are AES-256 */
#define KMSC_BUFFER_MAX (1u << 20) /* kmsc_seal_buffer / kmsc_open_buffer plaintext limit */
#define KMSC_BATCH_MAX 1000        /* items per batch call (the server's limit) */

typedef enum kmsc_err {
	KMSC_OK = 0,
	KMSC_ERR_INVALID,         /* bad argument or configuration (nothing was sent) */
	KMSC_ERR_BAD_REQUEST,     /* 400: refused input, e.g. wrong encryption context */
	KMSC_ERR_UNAUTHENTICATED, /* 401: no token */
	KMSC_ERR_DENIED,          /* 403: token unknown, expired, or not allowed here
				   * (also an unknown tenant: the server does not say) */
	KMSC_ERR_NOT_FOUND,       /* 404 */
	KMSC_ERR_CONFLICT,        /* 409: key state, e.g. version decrypt-only */
	KMSC_ERR_TOO_LARGE,       /* 413 */
	KMSC_ERR_RATE_LIMITED,    /* 429 */
	KMSC_ERR_UNAVAILABLE,     /* 503: the server's token, store or audit log */
	KMSC_ERR_SERVER,          /* any other status, or an answer we cannot read */
	KMSC_ERR_TRANSPORT,       /* no answer: connect, TLS or timeout */
	KMSC_ERR_DECRYPT,         /* a sealed buffer or stream failed authentication */
	KMSC_ERR_FORMAT,          /* not a sealed buffer/stream, or a header we refuse */
	KMSC_ERR_MISMATCH,        /* kmsc_open_*: the header's tenant, key or context is not
				   * the one the caller expected (struct kmsc_want) */
	KMSC_ERR_PARTIAL,         /* batch: the call went through, some items failed */
	KMSC_ERR_IO,              /* reading or writing a file descriptor */
	KMSC_ERR_NOMEM,
	KMSC_ERR__COUNT
} kmsc_err;

/* One encryption-context pair (UTF-8, no NUL). The context is bound into the wrapped
 * key: give the same pairs again (any order) to unwrap. */
struct kmsc_kv {
	const char *key;
	const char *value;
};

/* An encryption context: n pairs, keys distinct. A NULL context or n == 0 is none. */
struct kmsc_ctx {
	const struct kmsc_kv *kv;
	size_t n;
};

/* What kmsc_open_buffer / kmsc_open_fd insist on before anything is unwrapped: each
 * non-NULL member must equal the sealed header's (ctx compared in canonical form; an empty
 * ctx means "no context"). Sealed data names its own tenant and key, so whoever can write
 * it can point the client at any key the token may use: say what you expect. */
struct kmsc_want {
	const char *tenant;
	const char *key;
	const struct kmsc_ctx *ctx;
};

struct kmsc_config {
	const char *addr;        /* "https://host:port" (https only) */
	const char *ca_file;     /* PEM bundle to verify the server; NULL: system store */
	const char *token_file;  /* a file (mode 0600) whose first line is the token, or: */
	const char *token;       /* the token bytes, copied into wiped memory by kmsc_open */
	size_t token_len;
	/* A client certificate (PEM) and its key (PEM, a regular file of mode 0600), both
	 * or neither (mTLS: kmsd's tls_client_ca). When it is mapped to a principal on the
	 * server, no token is needed: token_file and token may then both be NULL. With a
	 * token too, the token must belong to the same principal. */
	const char *client_cert;
	const char *client_key;
	long timeout_seconds;    /* per request; 0: 30 */

	/* The data-key cache (docs/CLIENT.md "Data-key cache"). Off unless cache is 1;
	 * when on, all three bounds must be > 0. */
	int cache;
	uint64_t cache_max_age_ms;   /* a DEK is used for at most this long after issue */
	uint64_t cache_max_messages; /* ... for at most this many seals (or opens) */
	uint64_t cache_max_bytes;    /* ... over at most this many plaintext bytes */
	size_t cache_max_entries;    /* distinct DEKs held; 0: 1024 */
	/* Milliseconds of a monotonic clock; NULL: CLOCK_MONOTONIC. For tests. */
	uint64_t (*clock_ms)(void *arg);
	void *clock_arg;
};

struct kmsc;

/* Makes a client: checks the config, reads the token. Nothing is sent to the server.
 * KMSC_ERR_INVALID for a bad config (message says which field). */
KMSC_API KMSC_WUR kmsc_err kmsc_open(const struct kmsc_config *cfg, struct kmsc **out);

/* Wipes the token and every cached DEK, frees the client. Accepts NULL. */
KMSC_API void kmsc_close(struct kmsc *c);

/* A new 256-bit data key under tenant/key, bound to ctx: *dek (KMSC_DEK_LEN bytes,
 * kmsc_free_secret) and *wrapped ("vault:vN:...", kmsc_free). Never cached. */
KMSC_API KMSC_WUR kmsc_err kmsc_datakey(struct kmsc *c, const char *tenant, const char *key,
					const struct kmsc_ctx *ctx, uint8_t **dek, char **wrapped);

/* Unwraps a wrapped data key (the same ctx as at issue): *dek as above. */
KMSC_API KMSC_WUR kmsc_err kmsc_decrypt_dek(struct kmsc *c, const char *tenant, const char *key,
					    const char *wrapped, const struct kmsc_ctx *ctx,
					    uint8_t **dek);

/* Rewraps to the key's latest version: *new_wrapped (kmsc_free). */
KMSC_API KMSC_WUR kmsc_err kmsc_rewrap(struct kmsc *c, const char *tenant, const char *key,
				       const char *wrapped, const struct kmsc_ctx *ctx,
				       char **new_wrapped);

/* One item of a batch answer. */
struct kmsc_result {
	kmsc_err err;     /* KMSC_OK, or why this item failed */
	char *message;    /* the server's message for a failed item (kmsc_free), or NULL */
	uint8_t *dek;     /* datakey, decrypt: KMSC_DEK_LEN bytes (kmsc_free_secret) */
	char *wrapped;    /* datakey, rewrap: the (new) wrapped key (kmsc_free) */
	unsigned version; /* datakey, rewrap: the key version that wrapped it */
};

/* Batch calls: n items (1..KMSC_BATCH_MAX) in one request; ctxs is NULL (no context
 * for any item) or n contexts. out[0..n-1] is overwritten. Returns KMSC_OK when every
 * item succeeded, KMSC_ERR_PARTIAL when the server answered per item and some failed
 * (each out[i].err says which), or the call's error (then every out[i] is empty). */
KMSC_API KMSC_WUR kmsc_err kmsc_datakey_batch(struct kmsc *c, const char *tenant, const char *key,
					      const struct kmsc_ctx *ctxs, size_t n,
					      struct kmsc_result *out);
KMSC_API KMSC_WUR kmsc_err kmsc_decrypt_dek_batch(struct kmsc *c, const char *tenant,
						  const char *key, const char *const *wrapped,
						  const struct kmsc_ctx *ctxs, size_t n,
						  struct kmsc_result *out);
KMSC_API KMSC_WUR kmsc_err kmsc_rewrap_batch(struct kmsc *c, const char *tenant, const char *key,
					     const char *const *wrapped, const struct kmsc_ctx *ctxs,
					     size_t n, struct kmsc_result *out);

/* Frees the buffers of n results and zeroes them. Accepts NULL. */
KMSC_API void kmsc_results_clear(struct kmsc_result *r, size_t n);

/* Seals n bytes (n <= KMSC_BUFFER_MAX) into the sealed-file format of `kmsctl seal`
 * (docs/FORMATS.md "Sealed files"): *out, *out_len (kmsc_free). Uses the data-key
 * cache when it is on. */
KMSC_API KMSC_WUR kmsc_err kmsc_seal_buffer(struct kmsc *c, const char *tenant, const char *key,
					    const struct kmsc_ctx *ctx, const void *in, size_t n,
					    uint8_t **out, size_t *out_len);

/* Opens a sealed buffer: *pt, *pt_len (kmsc_free_secret; *pt is non-NULL even when
 * *pt_len is 0). want: NULL accepts whatever the header names; else KMSC_ERR_MISMATCH
 * unless the header matches it. Uses the cache of unwrapped DEKs when on. */
KMSC_API KMSC_WUR kmsc_err kmsc_open_buffer(struct kmsc *c, const void *in, size_t n,
					    const struct kmsc_want *want, uint8_t **pt,
					    size_t *pt_len);

/* Streams in_fd to out_fd, sealed (chunk_size 0: 65536) or opened, in constant memory.
 * A stream gets a fresh data key: the cache is not used. kmsc_open_fd writes only
 * authenticated chunks, but on failure what was written before it stays written:
 * the caller must discard the output unless KMSC_OK came back. */
KMSC_API KMSC_WUR kmsc_err kmsc_seal_fd(struct kmsc *c, const char *tenant, const char *key,
					const struct kmsc_ctx *ctx, uint32_t chunk_size, int in_fd,
					int out_fd);
KMSC_API KMSC_WUR kmsc_err kmsc_open_fd(struct kmsc *c, int in_fd, int out_fd,
					const struct kmsc_want *want);

/* Wipes and frees a secret buffer returned by this library. Accepts NULL. */
KMSC_API void kmsc_free_secret(void *p);
/* Frees a non-secret buffer returned by this library. Accepts NULL. */
KMSC_API void kmsc_free(void *p);

/* Static text for an error kind; never NULL. */
KMSC_API const char *kmsc_strerror(kmsc_err e);
/* The enum's name ("KMSC_ERR_DENIED"); never NULL. */
KMSC_API const char *kmsc_err_name(kmsc_err e);
/* This thread's last failure: the HTTP status (0 when no answer) and a message (the
 * server's "errors" text, or the library's); valid until the thread's next call. */
KMSC_API long kmsc_last_status(void);
KMSC_API const char *kmsc_last_message(void);

#ifdef __cplusplus
}
#endif
#endif
