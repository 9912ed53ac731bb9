/* The audit log writer (contract in audit.h, byte format in docs/FORMATS.md).
 *
 * Everything that decides a record's bytes (seq, prev, hash) happens under mu, in seq
 * order, into the pending buffer; the leader of a group commit writes and syncs that
 * buffer without the lock. A checkpoint signature is the one slow step: the thread that
 * makes it notes (seq, hash) under the lock, signs without it, and appends the
 * checkpoint record under it again, so appends and commits continue meanwhile. */
#include "kms/audit/audit.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/audit/audit_int.h"
#include "kms/audit/syslog.h"
#include "kms/base/b64.h"
#include "kms/base/fileio.h"
#include "kms/base/json.h"
#include "kms/base/log.h"

#define AUDIT_TAIL_FIRST 65536	   /* recovery reads this much of the tail first... */
#define AUDIT_TAIL_MAX (64 << 20) /* ...and up to this much for a long last record */
#define ROTATE_RETRY_SECONDS 60 /* after a rotation that could not start */

struct audit {
	pthread_mutex_t mu;
	pthread_cond_t cv;	/* a leader finished, or a signature ended */
	pthread_cond_t tick_cv; /* CLOCK_MONOTONIC; wakes the timer thread at close */
	int fd;
	char path[PATH_MAX]; /* the current segment */
	char dir[PATH_MAX];  /* its directory, synced after renames */
	dev_t dev;	     /* fd's file, to notice it deleted, renamed or replaced */
	ino_t ino;
	uint64_t seg_first;	    /* seq of the current file's first record, 0 while empty */
	uint64_t seg_bytes;	    /* its size */
	time_t seg_start;	    /* wall clock: the time of the current file's first record */
	struct timespec rotate_try; /* monotonic: no rotation attempt before this */
	uint64_t n_records, n_syncs, n_segments;
	struct audit_syslog *slog; /* used by the leader only */
	char why[256]; /* what failed, once failed */
	char node[65];
	char last_node[65]; /* the node the last record found at open names, "" if none */
	EVP_MD *sha256;
	EVP_MD_CTX *md; /* under mu */
	uint64_t seq;	      /* last seq assigned */
	uint64_t durable_seq; /* last seq known to be on disk */
	uint8_t last_hash[AUDIT_HASH_LEN]; /* hash of record seq */
	bool writing;	      /* a leader is writing the pending buffer */
	bool failed;
	char *pend;	      /* records formatted but not yet written */
	size_t pend_len, pend_cap;
	char *spare; /* a written-out pend buffer kept for the next one (no malloc per sync) */
	size_t spare_cap;

	struct audit_options opt;
	uint64_t plain_total;  /* non-checkpoint records assigned (1 stands for "some" at open) */
	uint64_t plain_signed; /* plain_total when the last checkpoint's signature began */
	struct timespec last_ckpt; /* monotonic: last checkpoint written (or open) */
	struct timespec next_try;  /* monotonic: no signature before this (after a failure) */
	unsigned sign_failures;	   /* in a row: the retry delay doubles, up to a minute */
	bool signing;
	bool ticker, stopping;
	pthread_t ticker_th;
	/* metrics and the compliance report, under mu */
	uint64_t fsync_hist[AUDIT_FSYNC_BUCKETS + 1];
	uint64_t fsync_us_sum;
	uint64_t ckpt_seq, ckpt_covered;
	char ckpt_time[40];
	/* chain_time's calendar text for tm_sec, under mu */
	bool tm_valid;
	time_t tm_sec;
	char tm_text[64];
	size_t tm_len;
};

static const uint64_t fsync_bounds_us[AUDIT_FSYNC_BUCKETS] = AUDIT_FSYNC_BOUNDS_US;

/* ---------------------------------------------------------------- line format */

int audit_line_hash_hex(const char *line, size_t len, char hash_hex[AUDIT_HASH_HEX + 1])
{
	const size_t mlen = sizeof(AUDIT_HASH_MEMBER) - 1;
	const char *h;
	size_t i;

	if (len <= AUDIT_HASH_SUFFIX_LEN || line[0] != '{')
		return -1;
	h = line + len - AUDIT_HASH_SUFFIX_LEN;
	if (memcmp(h, AUDIT_HASH_MEMBER, mlen) != 0 || h[mlen + AUDIT_HASH_HEX] != '"' ||
	    h[mlen + AUDIT_HASH_HEX + 1] != '}')
		return -1;
	h += mlen;
	for (i = 0; i < AUDIT_HASH_HEX; i++) {
		if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
			return -1;
		hash_hex[i] = h[i];
	}
	hash_hex[AUDIT_HASH_HEX] = '\0';
	return 0;
}

int audit_line_body_hash(const char *line, size_t len, uint8_t out[AUDIT_HASH_LEN])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned n = 0;
	int ok;

	if (len <= AUDIT_HASH_SUFFIX_LEN)
		return -1;
	ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(c, line, len - AUDIT_HASH_SUFFIX_LEN) == 1 &&
	     EVP_DigestUpdate(c, "}", 1) == 1 && EVP_DigestFinal_ex(c, out, &n) == 1 &&
	     n == AUDIT_HASH_LEN;
	EVP_MD_CTX_free(c);
	return ok ? 0 : -1;
}

size_t audit_checkpoint_message(uint64_t seq, const char *hash_hex, char *out, size_t cap)
{
	int n = snprintf(out, cap, AUDIT_CHECKPOINT_PREFIX "%llu:%s", (unsigned long long)seq,
			 hash_hex);

	return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

/* ---------------------------------------------------------------- time */

static struct timespec mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts;
}

static struct timespec ts_add(struct timespec t, unsigned seconds)
{
	t.tv_sec += (time_t)seconds;
	return t;
}

static bool ts_before(struct timespec a, struct timespec b)
{
	return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static void fmt_time(char *buf, size_t cap)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
}

/* ---------------------------------------------------------------- formatting */

/* A buffer is kept as the spare only up to this size: a burst of long records does not
 * pin its memory for the process's life. */
#define SPARE_MAX (1u << 20)

static kms_err pend_reserve(struct audit *a, size_t n)
{
	if (a->pend == NULL && a->spare != NULL) {
		a->pend = a->spare;
		a->pend_cap = a->spare_cap;
		a->spare = NULL;
		a->spare_cap = 0;
	}
	if (a->pend_len + n > a->pend_cap) {
		size_t cap = a->pend_cap ? a->pend_cap : 16384;
		char *p;
		while (cap < a->pend_len + n)
			cap *= 2;
		p = realloc(a->pend, cap); /* audit records hold no secret */
		if (p == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit buffer");
		a->pend = p;
		a->pend_cap = cap;
	}
	return KMS_OK;
}

static json_t *str_or_null(const char *s)
{
	return kms_json_text(s);
}

/* The record's members up to reason, in the documented order. status 0 = null (records
 * kmsd writes about the log itself answer no request). */
static json_t *record_object(struct audit *a, uint64_t seq, const struct audit_record *r)
{
	char when[96];
	json_t *o;

	fmt_time(when, sizeof(when));
	o = json_object();
	if (o == NULL)
		return NULL;
	/* Every member must make it: a record missing one is refused (no record, no answer)
	 * rather than written incomplete. */
	if (json_object_set_new(o, "seq", json_integer((json_int_t)seq)) != 0 ||
	    json_object_set_new(o, "time", json_string(when)) != 0 ||
	    json_object_set_new(o, "node", str_or_null(a->node)) != 0 ||
	    json_object_set_new(o, "request_id", str_or_null(r->request_id)) != 0 ||
	    json_object_set_new(o, "principal", str_or_null(r->principal)) != 0 ||
	    json_object_set_new(o, "auth_method", str_or_null(r->auth_method)) != 0 ||
	    json_object_set_new(o, "mfa", json_boolean(r->mfa)) != 0 ||
	    json_object_set_new(o, "remote_addr", str_or_null(r->remote_addr)) != 0 ||
	    json_object_set_new(o, "operation", str_or_null(r->operation)) != 0 ||
	    json_object_set_new(o, "tenant", str_or_null(r->tenant)) != 0 ||
	    json_object_set_new(o, "key", str_or_null(r->key)) != 0 ||
	    json_object_set_new(o, "version", r->version ? json_integer(r->version) : json_null()) != 0 ||
	    (r->batch && json_object_set_new(o, "batch", json_integer(r->batch)) != 0) ||
	    json_object_set_new(o, "outcome", str_or_null(r->outcome)) != 0 ||
	    json_object_set_new(o, "status", r->status ? json_integer(r->status) : json_null()) != 0 ||
	    json_object_set_new(o, "reason", str_or_null(r->reason)) != 0) {
		json_decref(o);
		return NULL;
	}
	if (r->extra != NULL) {
		const char *k;
		json_t *v;

		json_object_foreach((json_t *)r->extra, k, v) {
			if (json_object_get(o, k) != NULL || json_object_set(o, k, v) != 0) {
				json_decref(o); /* a member may not override a standard one */
				return NULL;
			}
		}
	}
	return o;
}

/* Adds prev, serialises o straight into the pending buffer, hashes the body and turns
 * its closing brace into ,"hash":"…"}\n. o must have been made for seq a->seq + 1.
 * On success the record is pending and the chain advanced; on failure nothing changed. */
static kms_err emit_locked(struct audit *a, json_t *o, bool plain)
{
	const size_t mlen = sizeof(AUDIT_HASH_MEMBER) - 1;
	char prev[AUDIT_HASH_HEX + 1];
	uint8_t h[AUDIT_HASH_LEN];
	unsigned hn = 0;
	size_t n, avail;
	char *body;
	kms_err rc;

	kms_hex_encode(a->last_hash, AUDIT_HASH_LEN, prev);
	if (json_object_set_new(o, "prev", json_string(prev)) != 0)
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	rc = pend_reserve(a, 1024);
	if (rc != KMS_OK)
		return rc;
	for (;;) {
		avail = a->pend_cap - a->pend_len;
		n = json_dumpb(o, a->pend + a->pend_len, avail,
			       JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
		if (n == 0)
			return kms_errf(KMS_ERR_NOMEM, "audit record");
		if (n + AUDIT_HASH_SUFFIX_LEN + 1 <= avail)
			break;
		rc = pend_reserve(a, n + AUDIT_HASH_SUFFIX_LEN + 1);
		if (rc != KMS_OK)
			return rc;
	}
	body = a->pend + a->pend_len;
	if (body[n - 1] != '}' || EVP_DigestInit_ex(a->md, a->sha256, NULL) != 1 ||
	    EVP_DigestUpdate(a->md, body, n) != 1 || EVP_DigestFinal_ex(a->md, h, &hn) != 1 ||
	    hn != AUDIT_HASH_LEN)
		return kms_errf(KMS_ERR_INTERNAL, "audit: hashing a record failed");
	memcpy(body + n - 1, AUDIT_HASH_MEMBER, mlen);
	kms_hex_encode(h, AUDIT_HASH_LEN, body + n - 1 + mlen); /* writes a NUL we overwrite */
	memcpy(body + n - 1 + mlen + AUDIT_HASH_HEX, "\"}\n", 3);
	a->pend_len += n - 1 + AUDIT_HASH_SUFFIX_LEN + 1;
	a->seq++;
	memcpy(a->last_hash, h, sizeof(h));
	if (plain)
		a->plain_total++;
	return KMS_OK;
}

static kms_err emit_record_locked(struct audit *a, const struct audit_record *r)
{
	json_t *o = record_object(a, a->seq + 1, r);
	kms_err rc;

	if (o == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	rc = emit_locked(a, o, true);
	json_decref(o);
	return rc;
}

/* The request path's records are serialised before the log's lock is taken: only what
 * depends on the chain (seq, time, prev, hash) is added under it. The bytes are the
 * same as emit_record_locked's: record_object's members in order, compact, ASCII, as
 * jansson's json_dumpb would write them (kms_jw, without building a jansson object).
 * *mid is ',"node":…,"reason":…' plus the extra members; it is buf when it fits in
 * cap bytes, else malloc'd (free() it when it is not buf). */
#define MIDDLE_GUESS 2048

/* The members record_object writes, and the two the chain adds. */
static const char *const std_members[] = {"seq", "time", "node", "request_id", "principal",
					  "auth_method", "mfa", "remote_addr", "operation",
					  "tenant", "key", "version", "outcome", "status",
					  "reason", "prev", "hash", NULL};

static bool extra_name_ok(const struct audit_record *r, const char *k, size_t kl)
{
	for (size_t i = 0; std_members[i] != NULL; i++)
		if (strlen(std_members[i]) == kl && memcmp(std_members[i], k, kl) == 0)
			return false;
	return !(r->batch && kl == 5 && memcmp(k, "batch", 5) == 0);
}

#define JW_LIT(w, s) kms_jw_raw((w), (s), sizeof(s) - 1)

static void middle_write(struct audit *a, const struct audit_record *r, struct kms_jw *w)
{
	JW_LIT(w, ",\"node\":");
	kms_jw_text(w, a->node);
	JW_LIT(w, ",\"request_id\":");
	kms_jw_text(w, r->request_id);
	JW_LIT(w, ",\"principal\":");
	kms_jw_text(w, r->principal);
	JW_LIT(w, ",\"auth_method\":");
	kms_jw_text(w, r->auth_method);
	if (r->mfa)
		JW_LIT(w, ",\"mfa\":true");
	else
		JW_LIT(w, ",\"mfa\":false");
	JW_LIT(w, ",\"remote_addr\":");
	kms_jw_text(w, r->remote_addr);
	JW_LIT(w, ",\"operation\":");
	kms_jw_text(w, r->operation);
	JW_LIT(w, ",\"tenant\":");
	kms_jw_text(w, r->tenant);
	JW_LIT(w, ",\"key\":");
	kms_jw_text(w, r->key);
	JW_LIT(w, ",\"version\":");
	if (r->version)
		kms_jw_int(w, (long long)r->version);
	else
		JW_LIT(w, "null");
	if (r->batch) {
		JW_LIT(w, ",\"batch\":");
		kms_jw_int(w, (long long)r->batch);
	}
	JW_LIT(w, ",\"outcome\":");
	kms_jw_text(w, r->outcome);
	JW_LIT(w, ",\"status\":");
	if (r->status)
		kms_jw_int(w, (long long)r->status);
	else
		JW_LIT(w, "null");
	JW_LIT(w, ",\"reason\":");
	kms_jw_text(w, r->reason);
	if (r->extra != NULL) {
		json_t *x = (json_t *)r->extra;

		for (void *it = json_object_iter(x); it != NULL; it = json_object_iter_next(x, it)) {
			const char *k = json_object_iter_key(it);
			size_t kl = json_object_iter_key_len(it);

			if (!extra_name_ok(r, k, kl)) {
				w->ok = false; /* a member may not override a standard one */
				return;
			}
			kms_jw_raw(w, ",", 1);
			kms_jw_str(w, k, kl);
			kms_jw_raw(w, ":", 1);
			kms_jw_value(w, json_object_iter_value(it));
		}
	}
}

static kms_err record_middle(struct audit *a, const struct audit_record *r, char *buf, size_t cap,
			     char **mid, size_t *len)
{
	struct kms_jw w;
	char *text = buf;

	*mid = NULL;
	if (r->extra != NULL && !json_is_object((const json_t *)r->extra))
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	kms_jw_init(&w, buf, cap, true);
	middle_write(a, r, &w);
	if (w.ok && w.len > cap) {
		/* one pass for the usual record; a second one, sized, for a long one */
		size_t need = w.len;
		text = malloc(need); /* audit records hold no secret */
		if (text == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit record");
		kms_jw_init(&w, text, need, true);
		middle_write(a, r, &w);
		if (w.len != need)
			w.ok = false;
	}
	if (!w.ok) {
		if (text != buf)
			free(text);
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	}
	*mid = text;
	*len = w.len;
	return KMS_OK;
}

/* "YYYY-MM-DDTHH:MM:SS.uuuuuuZ" as fmt_time writes it, for the record being chained
 * now (under mu): the calendar part is worked out once per second. */
static size_t chain_time(struct audit *a, char out[96])
{
	struct timespec ts;
	long us;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (!a->tm_valid || ts.tv_sec != a->tm_sec) {
		struct tm tm;

		gmtime_r(&ts.tv_sec, &tm);
		snprintf(a->tm_text, sizeof(a->tm_text), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		a->tm_len = strlen(a->tm_text);
		a->tm_sec = ts.tv_sec;
		a->tm_valid = true;
	}
	memcpy(out, a->tm_text, a->tm_len);
	us = ts.tv_nsec / 1000;
	out[a->tm_len] = '.';
	for (int i = 6; i >= 1; i--) {
		out[a->tm_len + (size_t)i] = (char)('0' + us % 10);
		us /= 10;
	}
	out[a->tm_len + 7] = 'Z';
	return a->tm_len + 8;
}

/* emit_locked for a record whose middle record_middle made. */
static kms_err emit_middle_locked(struct audit *a, const char *mid, size_t mid_len)
{
	const size_t mlen = sizeof(AUDIT_HASH_MEMBER) - 1;
	char when[96], head[160];
	uint8_t h[AUDIT_HASH_LEN];
	unsigned hn = 0;
	struct kms_jw w;
	size_t hl, n;
	char *body, *p;
	kms_err rc;

	kms_jw_init(&w, head, sizeof(head), true);
	JW_LIT(&w, "{\"seq\":");
	kms_jw_int(&w, (long long)(a->seq + 1));
	JW_LIT(&w, ",\"time\":\"");
	kms_jw_raw(&w, when, chain_time(a, when));
	JW_LIT(&w, "\"");
	if (w.len > sizeof(head))
		return kms_errf(KMS_ERR_INTERNAL, "audit: record head");
	hl = w.len;
	/* head + mid + ,"prev":"<hex>"} */
	n = hl + mid_len + sizeof(",\"prev\":\"") - 1 + AUDIT_HASH_HEX + 2;
	rc = pend_reserve(a, n + AUDIT_HASH_SUFFIX_LEN + 1);
	if (rc != KMS_OK)
		return rc;
	body = p = a->pend + a->pend_len;
	memcpy(p, head, hl);
	p += hl;
	memcpy(p, mid, mid_len);
	p += mid_len;
	memcpy(p, ",\"prev\":\"", sizeof(",\"prev\":\"") - 1);
	p += sizeof(",\"prev\":\"") - 1;
	kms_hex_encode(a->last_hash, AUDIT_HASH_LEN, p); /* writes a NUL we overwrite */
	p += AUDIT_HASH_HEX;
	memcpy(p, "\"}", 2);
	if (EVP_DigestInit_ex(a->md, a->sha256, NULL) != 1 || EVP_DigestUpdate(a->md, body, n) != 1 ||
	    EVP_DigestFinal_ex(a->md, h, &hn) != 1 || hn != AUDIT_HASH_LEN)
		return kms_errf(KMS_ERR_INTERNAL, "audit: hashing a record failed");
	memcpy(body + n - 1, AUDIT_HASH_MEMBER, mlen);
	kms_hex_encode(h, AUDIT_HASH_LEN, body + n - 1 + mlen);
	memcpy(body + n - 1 + mlen + AUDIT_HASH_HEX, "\"}\n", 3);
	a->pend_len += n - 1 + AUDIT_HASH_SUFFIX_LEN + 1;
	a->seq++;
	memcpy(a->last_hash, h, sizeof(h));
	a->plain_total++;
	return KMS_OK;
}

/* ---------------------------------------------------------------- group commit */

size_t audit_segment_name(const char *path, uint64_t first_seq, char *out, size_t cap)
{
	size_t len = strlen(path);
	int n;

	if (len >= 4 && strcmp(path + len - 4, ".log") == 0)
		len -= 4;
	n = snprintf(out, cap, "%.*s-%020llu.log", (int)len, path, (unsigned long long)first_seq);
	return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

/* Whether fd is still the file at path: not deleted, not renamed, not replaced. Fills
 * why otherwise. Called by the leader (no lock; it owns fd) or with mu held and no
 * leader. */
static bool file_intact(struct audit *a, char *why, size_t cap)
{
	struct stat fs, ps;

	if (fstat(a->fd, &fs) != 0) {
		snprintf(why, cap, "cannot stat the audit log: %s", strerror(errno));
		return false;
	}
	if (fs.st_nlink == 0) {
		snprintf(why, cap, "the audit log %.160s was deleted while in use", a->path);
		return false;
	}
	if (stat(a->path, &ps) != 0) {
		snprintf(why, cap, "the audit log %.160s is gone (renamed?): %s", a->path, strerror(errno));
		return false;
	}
	if (ps.st_dev != fs.st_dev || ps.st_ino != fs.st_ino || fs.st_dev != a->dev ||
	    fs.st_ino != a->ino) {
		snprintf(why, cap, "the audit log %.160s was replaced by another file", a->path);
		return false;
	}
	return true;
}

static void mark_failed_locked(struct audit *a, const char *why)
{
	if (a->failed)
		return;
	a->failed = true;
	snprintf(a->why, sizeof(a->why), "%s", why);
	kms_error("audit: %s; audit log marked failed, key operations are refused until an "
		  "operator fixes the cause and restarts kmsd",
		  why);
}

static bool rotation_due(struct audit *a, struct timespec now)
{
	if (a->seg_first == 0 || ts_before(now, a->rotate_try))
		return false;
	if (a->opt.segment_bytes > 0 && a->seg_bytes >= a->opt.segment_bytes)
		return true;
	return a->opt.segment_seconds > 0 &&
	       time(NULL) - a->seg_start >= (time_t)a->opt.segment_seconds;
}

/* Rotates the current file (see audit.h "Segments"). Run by the leader after a sync,
 * without the lock. Returns 0 when rotated, 1 when it did not start (the current file
 * goes on; retried later), -1 when the log can no longer be trusted (why filled). */
static int rotate_file(struct audit *a, char *why, size_t cap)
{
	char next[PATH_MAX + 8], seg[PATH_MAX + 32];
	struct stat st;
	int nfd;

	if (snprintf(next, sizeof(next), "%s.next", a->path) >= (int)sizeof(next) ||
	    audit_segment_name(a->path, a->seg_first, seg, sizeof(seg)) == 0) {
		kms_warn("audit: segment names for %s are too long; not rotating", a->path);
		return 1;
	}
	nfd = open(next, O_RDWR | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (nfd < 0) {
		kms_warn("audit: cannot create %s: %s; rotation postponed", next, strerror(errno));
		return 1;
	}
	/* link, not rename: never overwrites an existing segment of the same name; the
	 * link is made durable before the rename can replace the current name */
	if (fstat(nfd, &st) != 0 || kms_fsync_dir(a->dir) != 0 || link(a->path, seg) != 0 ||
	    kms_fsync_dir(a->dir) != 0) {
		kms_warn("audit: cannot rotate %s to %s: %s; rotation postponed", a->path, seg,
			 strerror(errno));
		close(nfd);
		if (access(seg, F_OK) == 0 && unlink(seg) != 0) {
			snprintf(why, cap, "rotating %.100s: cannot undo the link %.100s: %s", a->path, seg,
				 strerror(errno));
			(void)unlink(next);
			return -1;
		}
		(void)unlink(next);
		return 1;
	}
	if (rename(next, a->path) != 0) {
		/* undo: the segment name is only a second link to the current file */
		kms_warn("audit: cannot rename %s to %s: %s; rotation postponed", next, a->path,
			 strerror(errno));
		close(nfd);
		if (unlink(seg) == 0 && unlink(next) == 0 && kms_fsync_dir(a->dir) == 0)
			return 1;
		snprintf(why, cap, "rotating %.100s failed half-way and could not be undone: %s",
			 a->path, strerror(errno));
		return -1;
	}
	if (kms_fsync_dir(a->dir) != 0) {
		snprintf(why, cap, "rotating %.100s: syncing its directory failed: %s", a->path,
			 strerror(errno));
		close(nfd);
		return -1;
	}
	close(a->fd);
	a->fd = nfd;
	a->dev = st.st_dev;
	a->ino = st.st_ino;
	kms_info("audit: rotated segment %s (seq %llu to %llu, %llu bytes)", seg,
		 (unsigned long long)a->seg_first, (unsigned long long)a->durable_seq,
		 (unsigned long long)a->seg_bytes);
	a->seg_first = 0; /* the next record starts the new file's age */
	a->seg_bytes = 0;
	return 0;
}

/* Returns once record target is durable or the log has failed. Whoever finds no write
 * in flight leads: takes everything pending, writes and syncs it without the lock so
 * that others can queue the next batch meanwhile. A record counts as durable only once
 * the sync succeeded and the file is still the one at the log's path. */
static void commit_locked(struct audit *a, uint64_t target)
{
	while (!a->failed && a->durable_seq < target) {
		if (a->writing) {
			pthread_cond_wait(&a->cv, &a->mu);
			continue;
		}
		char *buf = a->pend;
		size_t len = a->pend_len, cap = a->pend_cap;
		uint64_t first = a->durable_seq + 1, upto = a->seq;
		char why[sizeof(a->why)] = "";
		bool ok;
		int rot = 2; /* 2: no rotation was due; else what rotate_file returned */
		struct timespec f0 = {0}, f1 = {0};
		uint64_t fsync_us = 0;
		a->pend = NULL;
		a->pend_len = a->pend_cap = 0;
		a->writing = true;
		pthread_mutex_unlock(&a->mu);
		if (kms_write_all(a->fd, buf, len) != 0) {
			snprintf(why, sizeof(why), "write to %.160s failed: %s", a->path, strerror(errno));
		} else {
			clock_gettime(CLOCK_MONOTONIC, &f0);
			if (fdatasync(a->fd) != 0) {
				snprintf(why, sizeof(why), "fdatasync of %.160s failed: %s", a->path,
					 strerror(errno));
			} else {
				clock_gettime(CLOCK_MONOTONIC, &f1);
				fsync_us = (uint64_t)((f1.tv_sec - f0.tv_sec) * 1000000LL +
						      (f1.tv_nsec - f0.tv_nsec) / 1000);
				(void)file_intact(a, why, sizeof(why));
			}
		}
		ok = why[0] == '\0';
		if (ok && a->slog != NULL)
			audit_syslog_send(a->slog, buf, len);
		if (ok) {
			if (a->seg_first == 0) {
				a->seg_first = first;
				a->seg_start = time(NULL);
			}
			a->seg_bytes += len;
			if (rotation_due(a, mono_now()))
				rot = rotate_file(a, why, sizeof(why));
		}
		pthread_mutex_lock(&a->mu);
		a->writing = false;
		if (a->spare == NULL && cap <= SPARE_MAX) {
			a->spare = buf;
			a->spare_cap = cap;
		} else {
			free(buf);
		}
		if (ok) {
			a->durable_seq = upto;
			a->n_records += upto - first + 1;
			a->n_syncs++;
			{
				unsigned b = 0;

				while (b < AUDIT_FSYNC_BUCKETS && fsync_us > fsync_bounds_us[b])
					b++;
				a->fsync_hist[b]++;
				a->fsync_us_sum += fsync_us;
			}
			if (rot == 0)
				a->n_segments++;
			else if (rot < 0)
				mark_failed_locked(a, why);
			else if (rot == 1) /* tried and could not start: not again for a while */
				a->rotate_try = ts_add(mono_now(), ROTATE_RETRY_SECONDS);
		} else {
			mark_failed_locked(a, why);
		}
		pthread_cond_broadcast(&a->cv);
	}
}

/* ---------------------------------------------------------------- checkpoints */

/* Why a checkpoint is due now, or NULL. */
static const char *ckpt_due_locked(struct audit *a, struct timespec now)
{
	uint64_t unsigned_n = a->plain_total - a->plain_signed;

	if (a->opt.sign == NULL || a->signing || a->failed || unsigned_n == 0 ||
	    ts_before(now, a->next_try))
		return NULL;
	if (a->opt.checkpoint_records > 0 && unsigned_n >= a->opt.checkpoint_records)
		return "records";
	if (a->opt.checkpoint_seconds > 0 &&
	    !ts_before(now, ts_add(a->last_ckpt, a->opt.checkpoint_seconds)))
		return "time";
	return NULL;
}

/* Signs (seq, hash) of the current last record without holding the lock, then appends
 * the checkpoint record (pending, not yet durable: *cseq says which seq to commit).
 * Entered and left with mu held and no signature in progress. */
static kms_err checkpoint_locked(struct audit *a, const char *why, uint64_t *cseq)
{
	const struct audit_record sys = {.operation = AUDIT_OP_CHECKPOINT, .reason = why};
	char hex[AUDIT_HASH_HEX + 1], msg[128], b64[KMS_B64_ENC_LEN(AUDIT_SIG_MAX) + 1];
	uint8_t digest[AUDIT_HASH_LEN], sig[AUDIT_SIG_MAX];
	uint64_t covered = a->seq, plain_at = a->plain_total;
	size_t msg_len, sig_len = 0;
	unsigned dn = 0;
	json_t *o = NULL, *cp;
	kms_err rc;

	kms_hex_encode(a->last_hash, AUDIT_HASH_LEN, hex);
	a->signing = true;
	pthread_mutex_unlock(&a->mu);

	msg_len = audit_checkpoint_message(covered, hex, msg, sizeof(msg));
	if (msg_len == 0 || EVP_Digest(msg, msg_len, digest, &dn, a->sha256, NULL) != 1 ||
	    dn != AUDIT_HASH_LEN)
		rc = kms_errf(KMS_ERR_INTERNAL, "audit: hashing a checkpoint failed");
	else
		rc = a->opt.sign(a->opt.sign_ctx, digest, sig, sizeof(sig), &sig_len);
	if (rc == KMS_OK && (sig_len == 0 || sig_len > sizeof(sig)))
		rc = kms_errf(KMS_ERR_INTERNAL, "audit: signer returned %zu bytes", sig_len);

	pthread_mutex_lock(&a->mu);
	a->signing = false;
	pthread_cond_broadcast(&a->cv);
	if (rc != KMS_OK) {
		unsigned delay = a->sign_failures < 6 ? 1u << a->sign_failures : 60;

		a->sign_failures++;
		kms_warn("audit: checkpoint over seq %llu not written, signing failed: %s; "
			 "retrying in %u s",
			 (unsigned long long)covered, kms_err_detail(rc), delay);
		a->next_try = ts_add(mono_now(), delay);
		return rc;
	}
	a->sign_failures = 0;
	if (a->failed)
		return kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	if (kms_b64_encode(sig, sig_len, b64, sizeof(b64)) < 0)
		return kms_errf(KMS_ERR_INTERNAL, "audit: encoding a signature failed");
	o = record_object(a, a->seq + 1, &sys);
	cp = json_object();
	if (o == NULL || cp == NULL ||
	    json_object_set_new(cp, "seq", json_integer((json_int_t)covered)) != 0 ||
	    json_object_set_new(cp, "hash", json_string(hex)) != 0 ||
	    json_object_set_new(cp, "sig", json_string(b64)) != 0 ||
	    json_object_set_new(o, "checkpoint", cp) != 0) {
		if (o == NULL)
			json_decref(cp);
		json_decref(o);
		return kms_errf(KMS_ERR_NOMEM, "audit checkpoint");
	}
	{
		const char *t = json_string_value(json_object_get(o, "time"));

		snprintf(a->ckpt_time, sizeof(a->ckpt_time), "%s", t ? t : "");
	}
	rc = emit_locked(a, o, false);
	json_decref(o);
	if (rc != KMS_OK)
		return rc;
	a->ckpt_seq = a->seq;
	a->ckpt_covered = covered;
	a->plain_signed = plain_at;
	a->last_ckpt = mono_now();
	*cseq = a->seq;
	return KMS_OK;
}

/* Once a second: notices a log file deleted or replaced while idle (a busy log notices
 * it on the next sync), and signs by time. */
static void *ticker_main(void *arg)
{
	struct audit *a = arg;
	struct timespec deadline;
	char why[sizeof(a->why)];
	uint64_t cseq;

	pthread_mutex_lock(&a->mu);
	while (!a->stopping) {
		deadline = ts_add(mono_now(), 1);
		(void)pthread_cond_timedwait(&a->tick_cv, &a->mu, &deadline);
		if (a->stopping)
			break;
		if (!a->failed && !a->writing && !file_intact(a, why, sizeof(why)))
			mark_failed_locked(a, why);
		if (ckpt_due_locked(a, mono_now()) == NULL)
			continue;
		if (checkpoint_locked(a, "time", &cseq) == KMS_OK)
			commit_locked(a, cseq);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* ---------------------------------------------------------------- recovery */

/* Reads the last complete record of fd (the file at path): seq and hash continue from
 * it. Cuts a torn tail if may_cut (*cut_bytes, *cut_at say what was cut), else refuses
 * it. Leaves a->seq at 0 for a file with no complete record. */
static kms_err audit_recover(struct audit *a, int fd, const char *path, bool may_cut,
			     uint64_t *cut_bytes, uint64_t *cut_at)
{
	char hex[AUDIT_HASH_HEX + 1];
	uint8_t h[AUDIT_HASH_LEN];
	struct stat st;
	off_t size, start, keep;
	char *buf = NULL, *nl, *last;
	size_t last_len, hlen = 0;
	json_t *v = NULL, *jseq, *jop;
	ssize_t n;
	kms_err rc = KMS_ERR_IO;

	*cut_bytes = *cut_at = 0;
	if (fstat(fd, &st) != 0)
		return kms_errf(KMS_ERR_IO, "audit: stat %s: %s", path, strerror(errno));
	size = st.st_size;
	if (size == 0)
		return KMS_OK;
	/* Read enough of the tail to hold the last complete line whole: start with
	 * AUDIT_TAIL_FIRST and widen (a batch record can be large) up to AUDIT_TAIL_MAX. */
	for (off_t win = AUDIT_TAIL_FIRST;; win *= 4) {
		char *prev_nl;

		if (win > AUDIT_TAIL_MAX)
			win = AUDIT_TAIL_MAX;
		start = size > win ? size - win : 0;
		free(buf);
		buf = malloc((size_t)(size - start) + 1);
		if (buf == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit recover");
		n = pread(fd, buf, (size_t)(size - start), start);
		if (n != size - start) {
			rc = kms_errf(KMS_ERR_IO, "audit: read %s failed", path);
			goto out;
		}
		buf[n] = '\0';
		nl = memrchr(buf, '\n', (size_t)n);
		prev_nl = nl ? memrchr(buf, '\n', (size_t)(nl - buf)) : NULL;
		/* enough: the whole file, or a last line with the newline before it */
		if (start == 0 || prev_nl != NULL || win == AUDIT_TAIL_MAX)
			break;
	}
	if (buf[n - 1] != '\n') {
		if (nl == NULL && start > 0) {
			rc = kms_errf(KMS_ERR_IO,
				      "audit: %s ends in over %d bytes without a newline; refusing "
				      "to cut that much",
				      path, AUDIT_TAIL_MAX);
			goto out;
		}
		keep = nl ? start + (nl - buf) + 1 : start;
		if (!may_cut) {
			rc = kms_errf(KMS_ERR_IO, "audit: segment %s ends in a torn record", path);
			goto out;
		}
		kms_warn("audit: %s ends in a torn record (%lld bytes); cutting it", path,
			 (long long)(size - keep));
		if (ftruncate(fd, keep) != 0 || fdatasync(fd) != 0) {
			rc = kms_errf(KMS_ERR_IO, "audit: cannot cut torn tail of %s", path);
			a->failed = true; /* a failed fsync is never retried */
			goto out;
		}
		*cut_bytes = (uint64_t)(size - keep);
		*cut_at = (uint64_t)keep;
		if (nl == NULL) { /* nothing complete was left */
			rc = KMS_OK;
			goto out;
		}
	}
	*nl = '\0'; /* the last complete line ends here */
	last = memrchr(buf, '\n', (size_t)(nl - buf));
	if (last == NULL && start > 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: the last record of %s is over %d bytes", path,
			      AUDIT_TAIL_MAX);
		goto out;
	}
	last = last ? last + 1 : buf;
	last_len = (size_t)(nl - last);
	v = json_loadb(last, last_len, JSON_REJECT_DUPLICATES, NULL);
	jseq = json_object_get(v, "seq");
	jop = json_object_get(v, "operation");
	if (!json_is_integer(jseq) || json_integer_value(jseq) < 1 ||
	    audit_line_hash_hex(last, last_len, hex) != 0 ||
	    kms_hex_decode(hex, AUDIT_HASH_HEX, a->last_hash, sizeof(a->last_hash), &hlen) != 0 ||
	    hlen != AUDIT_HASH_LEN) {
		rc = kms_errf(KMS_ERR_IO,
			      "audit: the last record of %s is not a chained audit record; "
			      "refusing to continue it (check it with `kmsctl audit verify`, "
			      "move it aside to start a new log)",
			      path);
		goto out;
	}
	if (audit_line_body_hash(last, last_len, h) != 0 || memcmp(h, a->last_hash, sizeof(h)) != 0) {
		rc = kms_errf(KMS_ERR_IO,
			      "audit: the last record of %s does not match its hash; refusing to "
			      "continue the chain (check it with `kmsctl audit verify`)",
			      path);
		goto out;
	}
	a->seq = a->durable_seq = (uint64_t)json_integer_value(jseq);
	snprintf(a->last_node, sizeof(a->last_node), "%s",
		 json_is_string(json_object_get(v, "node"))
			 ? json_string_value(json_object_get(v, "node"))
			 : "");
	/* Whether records before it are signed is not known without a scan; if the last one
	 * is not a checkpoint, count "some" as unsigned so the timer signs them. */
	a->plain_total = json_is_string(jop) && strcmp(json_string_value(jop), AUDIT_OP_CHECKPOINT) == 0
				 ? 0
				 : 1;
	if (a->plain_total == 0) { /* a checkpoint: the last signature is known */
		json_t *cp = json_object_get(v, "checkpoint");
		const char *t = json_string_value(json_object_get(v, "time"));
		json_t *cs = json_object_get(cp, "seq");

		a->ckpt_seq = a->seq;
		a->ckpt_covered = json_is_integer(cs) && json_integer_value(cs) > 0 ? (uint64_t)json_integer_value(cs) : 0;
		snprintf(a->ckpt_time, sizeof(a->ckpt_time), "%s", t ? t : "");
	}
	rc = KMS_OK;
out:
	json_decref(v);
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- open, close */

void audit_options_init(struct audit_options *o)
{
	memset(o, 0, sizeof(*o));
	o->checkpoint_records = AUDIT_DEFAULT_CHECKPOINT_RECORDS;
	o->checkpoint_seconds = AUDIT_DEFAULT_CHECKPOINT_SECONDS;
	o->segment_bytes = AUDIT_DEFAULT_SEGMENT_BYTES;
	o->segment_seconds = AUDIT_DEFAULT_SEGMENT_SECONDS;
}

/* The seq of fd's first record (records begin {"seq":N,), 0 if it cannot be read. */
static uint64_t first_seq_of(int fd)
{
	static const char lead[] = "{\"seq\":";
	char buf[48];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	unsigned long long v;
	char *end;

	if (n <= (ssize_t)(sizeof(lead) - 1))
		return 0;
	buf[n] = '\0';
	if (memcmp(buf, lead, sizeof(lead) - 1) != 0)
		return 0;
	errno = 0;
	v = strtoull(buf + sizeof(lead) - 1, &end, 10);
	return errno != 0 || *end != ',' ? 0 : (uint64_t)v;
}

/* The time of fd's first record (its "time" member, UTC), or now if it cannot be read:
 * a segment's age for rotation counts from its first record, across restarts. */
static time_t first_time_of(int fd)
{
	static const char key[] = "\"time\":\"";
	char buf[512], *p;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	struct tm tm;

	if (n <= 0)
		return time(NULL);
	buf[n] = '\0';
	p = strstr(buf, key);
	memset(&tm, 0, sizeof(tm));
	if (p == NULL || strptime(p + sizeof(key) - 1, "%Y-%m-%dT%H:%M:%S", &tm) == NULL)
		return time(NULL);
	return timegm(&tm);
}

/* The newest rotated segment of the log at a->path, by the seq in its name: 1 and its
 * path in out, 0 if there is none, -1 if the directory cannot be read. */
static int newest_segment(const struct audit *a, char *out, size_t cap)
{
	char stem[PATH_MAX];
	const char *base = strrchr(a->path, '/');
	size_t blen;
	unsigned long long best = 0;
	struct dirent *e;
	DIR *d;

	base = base ? base + 1 : a->path;
	blen = strlen(base);
	if (blen >= 4 && strcmp(base + blen - 4, ".log") == 0)
		blen -= 4;
	snprintf(stem, sizeof(stem), "%.*s-", (int)blen, base);
	blen = strlen(stem);
	d = opendir(a->dir);
	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		const char *n = e->d_name;
		unsigned long long v;
		size_t i;

		if (strlen(n) != blen + 20 + 4 || strncmp(n, stem, blen) != 0 ||
		    strcmp(n + blen + 20, ".log") != 0)
			continue;
		for (i = 0; i < 20; i++)
			if (n[blen + i] < '0' || n[blen + i] > '9')
				break;
		if (i < 20)
			continue;
		v = strtoull(n + blen, NULL, 10);
		if (v > best)
			best = v;
	}
	closedir(d);
	if (best == 0)
		return 0;
	return audit_segment_name(a->path, best, out, cap) > 0 ? 1 : -1;
}

/* Finishes or undoes a rotation that a crash interrupted (audit.h "Segments"). */
static kms_err settle_rotation(struct audit *a)
{
	char next[PATH_MAX + 8], seg[PATH_MAX + 32];
	struct stat ns, ps, ss;
	uint64_t first = 0;
	int fd;

	snprintf(next, sizeof(next), "%s.next", a->path);
	if (stat(next, &ns) != 0)
		return KMS_OK;
	/* Rotation keeps the current name in place until the rename that completes it,
	 * so a crash never leaves .next without the current file: that is a deletion. */
	if (stat(a->path, &ps) != 0)
		return kms_errf(KMS_ERR_IO,
				"audit: %s is missing and %s exists: the current segment was "
				"deleted or moved, not left by a rotation. Restore it; or, to go "
				"on knowingly, remove %s and create an empty %s",
				a->path, next, next, a->path);
	{
		fd = open(a->path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			first = first_seq_of(fd);
			close(fd);
		}
		if (first == 0 || audit_segment_name(a->path, first, seg, sizeof(seg)) == 0 ||
		    stat(seg, &ss) != 0 || ss.st_ino != ps.st_ino || ss.st_dev != ps.st_dev) {
			/* the rotation had not linked the segment yet: undo it */
			kms_warn("audit: removing %s left by an interrupted rotation", next);
			if (unlink(next) != 0)
				return kms_errf(KMS_ERR_IO, "audit: cannot remove %s: %s", next,
						strerror(errno));
			return kms_fsync_dir(a->dir) == 0 ? KMS_OK
						       : kms_errf(KMS_ERR_IO, "audit: sync %s", a->dir);
		}
	}
	/* the segment is linked: complete the rotation */
	kms_warn("audit: completing a rotation interrupted after the segment was written");
	if (rename(next, a->path) != 0 || kms_fsync_dir(a->dir) != 0)
		return kms_errf(KMS_ERR_IO, "audit: cannot complete the rotation of %s: %s", a->path,
				strerror(errno));
	return KMS_OK;
}

kms_err audit_open_opts(const char *path, const char *node_id, const struct audit_options *opts,
			struct audit **out)
{
	pthread_condattr_t ca;
	uint64_t cut_bytes = 0, cut_at = 0;
	char seg[PATH_MAX + 32], resumed[PATH_MAX + 160] = "";
	struct stat st;
	struct audit *a;
	char *slash;
	int have_seg, sfd;
	kms_err rc;

	*out = NULL;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit");
	a->fd = -1;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->tick_cv, &ca);
	pthread_condattr_destroy(&ca);
	if (opts != NULL)
		a->opt = *opts;
	else
		audit_options_init(&a->opt);
	snprintf(a->node, sizeof(a->node), "%s", node_id);
	a->last_ckpt = mono_now();
	a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	a->md = EVP_MD_CTX_new();
	if (a->sha256 == NULL || a->md == NULL) {
		rc = kms_errf(KMS_ERR_INTERNAL, "audit: SHA-256 unavailable");
		goto fail;
	}
	if (strlen(path) >= sizeof(a->path) - 64) {
		rc = kms_errf(KMS_ERR_INVALID, "audit: path too long");
		goto fail;
	}
	snprintf(a->path, sizeof(a->path), "%s", path);
	snprintf(a->dir, sizeof(a->dir), "%s", path);
	slash = strrchr(a->dir, '/');
	if (slash == NULL)
		snprintf(a->dir, sizeof(a->dir), ".");
	else if (slash == a->dir)
		slash[1] = '\0';
	else
		*slash = '\0';

	if (a->opt.syslog_target != NULL && a->opt.syslog_target[0] != '\0') {
		rc = audit_syslog_open(a->opt.syslog_target, &a->slog);
		if (rc != KMS_OK)
			goto fail;
	}
	a->opt.syslog_target = NULL; /* the caller's string is not kept */
	rc = settle_rotation(a);
	if (rc != KMS_OK)
		goto fail;
	have_seg = newest_segment(a, seg, sizeof(seg));
	if (have_seg < 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: cannot read the directory %s: %s", a->dir,
			      strerror(errno));
		goto fail;
	}
	if (have_seg > 0 && stat(path, &st) != 0 && errno == ENOENT) {
		rc = kms_errf(KMS_ERR_IO,
			      "audit: %s is missing but rotated segments exist (newest %s): the "
			      "current segment was deleted or moved. Restore it; or, to go on "
			      "knowingly, create an empty %s and kmsd continues the chain from %s "
			      "and records that it did",
			      path, seg, path, seg);
		goto fail;
	}
	if (have_seg == 0 && a->opt.expect_existing && stat(path, &st) != 0 && errno == ENOENT) {
		rc = kms_errf(KMS_ERR_IO,
			      "audit: %s is missing, but kmsd has written an audit log here before: "
			      "it was deleted or moved. Restore it; or, to start a new chain "
			      "knowingly, create an empty %s and kmsd records that it did",
			      path, path);
		goto fail;
	}
	a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (a->fd < 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: cannot open %s: %s", path, strerror(errno));
		goto fail;
	}
	if (kms_fsync_dir(a->dir) != 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: cannot sync %s: %s", a->dir, strerror(errno));
		goto fail;
	}
	rc = audit_recover(a, a->fd, path, true, &cut_bytes, &cut_at);
	if (rc != KMS_OK)
		goto fail;
	if (a->seq == 0 && have_seg > 0) {
		/* an empty current file after a rotation: the chain goes on from the segment */
		sfd = open(seg, O_RDONLY | O_CLOEXEC);
		if (sfd < 0) {
			rc = kms_errf(KMS_ERR_IO, "audit: cannot open %s: %s", seg, strerror(errno));
			goto fail;
		}
		rc = audit_recover(a, sfd, seg, false, &(uint64_t){0}, &(uint64_t){0});
		close(sfd);
		if (rc == KMS_OK && a->seq == 0)
			rc = kms_errf(KMS_ERR_IO, "audit: segment %s holds no record", seg);
		if (rc != KMS_OK)
			goto fail;
		snprintf(resumed, sizeof(resumed),
			 "the current segment was empty; the chain continues from %s (seq %llu)",
			 seg, (unsigned long long)a->seq);
	} else if (a->seq == 0 && a->opt.expect_existing) {
		snprintf(resumed, sizeof(resumed),
			 "the audit log was empty although kmsd had written one here before; a new "
			 "chain begins");
	} else if (a->seq > 0) {
		a->seg_first = first_seq_of(a->fd);
		if (a->seg_first == 0)
			a->seg_first = a->seq; /* names the segment; the records say the rest */
		a->seg_start = first_time_of(a->fd);
	}
	if (fstat(a->fd, &st) != 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: stat %s: %s", path, strerror(errno));
		goto fail;
	}
	a->dev = st.st_dev;
	a->ino = st.st_ino;
	a->seg_bytes = (uint64_t)st.st_size;
	if (a->seq > 0 && strcmp(a->last_node, a->node) != 0) {
		/* node_id changed: say so in the chain, so that it stays one node's log */
		char why[200];
		json_t *extra = json_pack("{s:s}", "from_node", a->last_node);
		struct audit_record r = {.operation = AUDIT_OP_NODE, .reason = why, .extra = extra};

		snprintf(why, sizeof(why), "node_id changed from \"%s\" to \"%s\"", a->last_node,
			 a->node);
		pthread_mutex_lock(&a->mu);
		rc = extra != NULL ? emit_record_locked(a, &r)
				   : kms_errf(KMS_ERR_NOMEM, "audit: out of memory");
		if (rc == KMS_OK) {
			commit_locked(a, a->seq);
			if (a->failed)
				rc = kms_errf(KMS_ERR_AUDIT, "audit: cannot record the node change in %s: %s",
					      path, a->why);
		}
		pthread_mutex_unlock(&a->mu);
		json_decref(extra);
		if (rc != KMS_OK)
			goto fail;
	}
	if (cut_bytes > 0 || resumed[0] != '\0') {
		char why[128];
		struct audit_record r = {.operation = AUDIT_OP_RECOVERED, .reason = why};

		snprintf(why, sizeof(why), "cut a torn tail of %llu bytes at offset %llu",
			 (unsigned long long)cut_bytes, (unsigned long long)cut_at);
		pthread_mutex_lock(&a->mu);
		rc = cut_bytes > 0 ? emit_record_locked(a, &r) : KMS_OK;
		if (rc == KMS_OK && resumed[0] != '\0') {
			r.reason = resumed;
			rc = emit_record_locked(a, &r);
		}
		if (rc == KMS_OK) {
			commit_locked(a, a->seq);
			if (a->failed)
				rc = kms_errf(KMS_ERR_AUDIT, "audit: cannot record the recovery in %s: %s",
					      path, a->why);
		}
		pthread_mutex_unlock(&a->mu);
		if (rc != KMS_OK)
			goto fail;
	}
	if (pthread_create(&a->ticker_th, NULL, ticker_main, a) != 0) {
		rc = kms_errf(KMS_ERR_INTERNAL, "audit: cannot start the audit timer");
		goto fail;
	}
	a->ticker = true;
	*out = a;
	return KMS_OK;
fail:
	audit_close(a);
	return rc;
}

kms_err audit_open(const char *path, const char *node_id, struct audit **out)
{
	return audit_open_opts(path, node_id, NULL, out);
}

void audit_close(struct audit *a)
{
	if (a == NULL)
		return;
	if (a->ticker) {
		pthread_mutex_lock(&a->mu);
		a->stopping = true;
		pthread_cond_signal(&a->tick_cv);
		pthread_mutex_unlock(&a->mu);
		pthread_join(a->ticker_th, NULL);
	}
	if (a->fd >= 0)
		close(a->fd);
	audit_syslog_close(a->slog);
	free(a->pend);
	free(a->spare);
	EVP_MD_CTX_free(a->md);
	EVP_MD_free(a->sha256);
	pthread_cond_destroy(&a->tick_cv);
	pthread_cond_destroy(&a->cv);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---------------------------------------------------------------- append */

kms_err audit_enqueue(struct audit *a, const struct audit_record *r, uint64_t *seq)
{
	uint64_t target, cseq;
	const char *why;
	char buf[MIDDLE_GUESS], *mid;
	size_t mid_len = 0;
	kms_err rc;

	*seq = 0;
	rc = record_middle(a, r, buf, sizeof(buf), &mid, &mid_len);
	if (rc != KMS_OK)
		return rc;
	pthread_mutex_lock(&a->mu);
	if (a->failed) {
		pthread_mutex_unlock(&a->mu);
		if (mid != buf)
			free(mid);
		return kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	}
	rc = emit_middle_locked(a, mid, mid_len);
	if (mid != buf)
		free(mid);
	if (rc != KMS_OK) {
		pthread_mutex_unlock(&a->mu);
		return rc;
	}
	target = a->seq;
	why = ckpt_due_locked(a, mono_now());
	if (why != NULL && checkpoint_locked(a, why, &cseq) == KMS_OK)
		target = cseq; /* whoever triggers a checkpoint waits for it too */
	pthread_mutex_unlock(&a->mu);
	*seq = target;
	return KMS_OK;
}

kms_err audit_wait(struct audit *a, uint64_t seq)
{
	kms_err rc;

	pthread_mutex_lock(&a->mu);
	commit_locked(a, seq);
	rc = a->durable_seq >= seq ? KMS_OK : kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	pthread_mutex_unlock(&a->mu);
	return rc;
}

int audit_settled(struct audit *a, uint64_t seq)
{
	int v;

	pthread_mutex_lock(&a->mu);
	v = a->durable_seq >= seq ? 1 : a->failed ? -1 : 0;
	pthread_mutex_unlock(&a->mu);
	return v;
}

kms_err audit_append(struct audit *a, const struct audit_record *r)
{
	uint64_t seq;
	kms_err rc = audit_enqueue(a, r, &seq);

	return rc != KMS_OK ? rc : audit_wait(a, seq);
}

kms_err audit_checkpoint(struct audit *a)
{
	uint64_t cseq;
	kms_err rc;

	pthread_mutex_lock(&a->mu);
	while (a->signing && !a->failed)
		pthread_cond_wait(&a->cv, &a->mu);
	if (a->opt.sign == NULL)
		rc = kms_errf(KMS_ERR_INVALID, "audit: no checkpoint signer");
	else if (a->failed)
		rc = kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	else if (a->plain_total == a->plain_signed)
		rc = KMS_OK;
	else
		rc = checkpoint_locked(a, "requested", &cseq);
	if (rc == KMS_OK && a->durable_seq < a->seq) {
		commit_locked(a, a->seq);
		if (a->durable_seq < a->seq)
			rc = kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	}
	pthread_mutex_unlock(&a->mu);
	return rc;
}

bool audit_healthy(struct audit *a)
{
	bool ok;

	pthread_mutex_lock(&a->mu);
	ok = !a->failed;
	pthread_mutex_unlock(&a->mu);
	return ok;
}

void audit_get_stats(struct audit *a, struct audit_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&a->mu);
	st->records = a->n_records;
	st->syncs = a->n_syncs;
	st->segments = a->n_segments;
	st->seq = a->durable_seq;
	st->healthy = !a->failed;
	snprintf(st->why, sizeof(st->why), "%s", a->failed ? a->why : "");
	memcpy(st->fsync_hist, a->fsync_hist, sizeof(st->fsync_hist));
	st->fsync_us_sum = a->fsync_us_sum;
	st->queue_depth = a->seq - a->durable_seq;
	st->head_seq = a->seq;
	kms_hex_encode(a->last_hash, AUDIT_HASH_LEN, st->head_hash);
	st->ckpt_seq = a->ckpt_seq;
	st->ckpt_covered = a->ckpt_covered;
	snprintf(st->ckpt_time, sizeof(st->ckpt_time), "%s", a->ckpt_time);
	st->unsigned_records = a->plain_total - a->plain_signed;
	st->signer = a->opt.sign != NULL;
	pthread_mutex_unlock(&a->mu);
	if (a->slog != NULL)
		audit_syslog_counts(a->slog, &st->syslog_sent, &st->syslog_dropped);
}

uint64_t audit_seq(struct audit *a)
{
	uint64_t s;

	pthread_mutex_lock(&a->mu);
	s = a->durable_seq;
	pthread_mutex_unlock(&a->mu);
	return s;
}

/* ---------------------------------------------------------------- backup snapshot */

int audit_segment_seq(const char *log_path, const char *name, uint64_t *seq)
{
	const char *base = strrchr(log_path, '/');
	size_t blen, i;

	base = base ? base + 1 : log_path;
	blen = strlen(base);
	if (blen >= 4 && strcmp(base + blen - 4, ".log") == 0)
		blen -= 4;
	if (strlen(name) != blen + 1 + 20 + 4 || strncmp(name, base, blen) != 0 || name[blen] != '-' ||
	    strcmp(name + blen + 21, ".log") != 0)
		return 0;
	for (i = 0; i < 20; i++)
		if (name[blen + 1 + i] < '0' || name[blen + 1 + i] > '9')
			return 0;
	if (seq != NULL)
		*seq = strtoull(name + blen + 1, NULL, 10);
	return 1;
}

static int snap_cmp(const void *x, const void *y)
{
	const struct audit_snap_file *a = x, *b = y;

	/* segments by name (20-digit seq: name order is seq order), the current file last */
	if (a->current != b->current)
		return a->current ? 1 : -1;
	return strcmp(a->name, b->name);
}

static kms_err snap_add(struct audit_snapshot *s, const char *dir, const char *name, bool current)
{
	struct audit_snap_file *f;
	struct stat st;
	char path[PATH_MAX];

	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct audit_snap_file *nf = realloc(s->files, cap * sizeof(*nf));

		if (nf == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit snapshot: out of memory");
		s->files = nf;
		s->cap = cap;
	}
	f = &s->files[s->n];
	memset(f, 0, sizeof(*f));
	if (snprintf(f->name, sizeof(f->name), "%s", name) >= (int)sizeof(f->name) ||
	    snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		return kms_errf(KMS_ERR_IO, "audit snapshot: file name too long: %.100s", name);
	f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (f->fd < 0)
		return kms_errf(KMS_ERR_IO, "audit snapshot: cannot open %.200s: %s", path, strerror(errno));
	if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(f->fd);
		return kms_errf(KMS_ERR_IO, "audit snapshot: %.200s is not a regular file", path);
	}
	f->size = (uint64_t)st.st_size;
	f->current = current;
	s->n++;
	return KMS_OK;
}

kms_err audit_snapshot(struct audit *a, struct audit_snapshot *out)
{
	const char *base = strrchr(a->path, '/');
	struct dirent *e;
	kms_err rc = KMS_OK;
	DIR *d = NULL;

	memset(out, 0, sizeof(*out));
	base = base ? base + 1 : a->path;
	if (strlen(base) >= sizeof(out->log_name))
		return kms_errf(KMS_ERR_IO, "audit snapshot: the log's file name is too long");
	memcpy(out->log_name, base, strlen(base) + 1);
	pthread_mutex_lock(&a->mu);
	/* Records queued but not yet synced (answers held for them: kms/http/server.c)
	 * belong to operations before the cut: they go in, durable, first. */
	commit_locked(a, a->seq);
	while (a->writing && !a->failed)
		pthread_cond_wait(&a->cv, &a->mu);
	if (a->failed) {
		pthread_mutex_unlock(&a->mu);
		return kms_errf(KMS_ERR_AUDIT, "audit log failed: %s", a->why);
	}
	/* Lead an empty commit: while we hold `writing`, nothing is written to the current
	 * file and no segment is rotated, and everything written so far was synced (a
	 * leader syncs before it lets go). Records keep being formatted into the pending
	 * buffer meanwhile; only their commit waits for these few opens. */
	a->writing = true;
	out->last_seq = a->durable_seq;
	pthread_mutex_unlock(&a->mu);

	d = opendir(a->dir);
	if (d == NULL) {
		rc = kms_errf(KMS_ERR_IO, "audit snapshot: cannot read %.200s: %s", a->dir, strerror(errno));
		goto out;
	}
	while (rc == KMS_OK && (e = readdir(d)) != NULL)
		if (audit_segment_seq(a->path, e->d_name, NULL))
			rc = snap_add(out, a->dir, e->d_name, false);
	if (rc == KMS_OK)
		rc = snap_add(out, a->dir, base, true);
out:
	if (d != NULL)
		closedir(d);
	pthread_mutex_lock(&a->mu);
	a->writing = false;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	if (rc != KMS_OK) {
		audit_snapshot_free(out);
		return rc;
	}
	qsort(out->files, out->n, sizeof(out->files[0]), snap_cmp);
	memcpy(out->dir, a->dir, sizeof(out->dir) < sizeof(a->dir) ? sizeof(out->dir) : sizeof(a->dir));
	out->dir[sizeof(out->dir) - 1] = '\0';
	return KMS_OK;
}

void audit_snapshot_free(struct audit_snapshot *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++)
		if (s->files[i].fd >= 0)
			close(s->files[i].fd);
	free(s->files);
	memset(s, 0, sizeof(*s));
}
