/* The offline audit log verifier (contract in verify.h). One streaming pass; only on
 * the failure path are the files read again to tell a deletion from a reordering and
 * an insertion from a reordering. */
#include "kms/audit/verify.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "kms/audit/audit.h"
#include "kms/audit/audit_int.h"
#include "kms/base/b64.h"

/* ---------------------------------------------------------------- line reader */

struct reader {
	const char *const *files;
	size_t n_files, fi; /* current file index */
	FILE *f;
	uint64_t lineno; /* of the line just read, in files[fi] */
	char *line;	 /* without its '\n' */
	size_t cap, len;
	bool nl; /* the line ended in '\n' */
};

static void reader_init(struct reader *r, const char *const *files, size_t n)
{
	memset(r, 0, sizeof(*r));
	r->files = files;
	r->n_files = n;
}

static void reader_free(struct reader *r)
{
	if (r->f != NULL)
		fclose(r->f);
	free(r->line);
	r->f = NULL;
	r->line = NULL;
}

/* 1: a line; 0: end of the last file; -1: I/O error (detail set). */
static int reader_next(struct reader *r)
{
	ssize_t n;

	for (;;) {
		if (r->f == NULL) {
			if (r->fi >= r->n_files)
				return 0;
			r->f = fopen(r->files[r->fi], "re");
			if (r->f == NULL) {
				kms_errf(KMS_ERR_IO, "cannot open %s: %s", r->files[r->fi],
					 strerror(errno));
				return -1;
			}
			r->lineno = 0;
		}
		errno = 0;
		n = getline(&r->line, &r->cap, r->f);
		if (n >= 0) {
			r->lineno++;
			r->len = (size_t)n;
			r->nl = n > 0 && r->line[n - 1] == '\n';
			if (r->nl)
				r->line[--r->len] = '\0';
			return 1;
		}
		if (ferror(r->f)) {
			kms_errf(KMS_ERR_IO, "reading %s: %s", r->files[r->fi], strerror(errno));
			return -1;
		}
		fclose(r->f);
		r->f = NULL;
		r->fi++;
	}
}

static bool pos_before(size_t fa, uint64_t la, size_t fb, uint64_t lb)
{
	return fa < fb || (fa == fb && la < lb);
}

/* ---------------------------------------------------------------- one record */

struct rec {
	uint64_t seq;
	char hash[AUDIT_HASH_HEX + 1]; /* as stored */
	char prev[AUDIT_HASH_HEX + 1];
	json_t *v;
};

static bool is_hex64(const char *s)
{
	size_t i;

	if (s == NULL || strlen(s) != AUDIT_HASH_HEX)
		return false;
	for (i = 0; i < AUDIT_HASH_HEX; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/* Parses a line's shape; on failure returns the reason and sets *seq if one was read. */
static const char *rec_parse(const char *line, size_t len, struct rec *out)
{
	json_t *js, *jp;

	memset(out, 0, sizeof(*out));
	if (len == 0)
		return "empty line";
	out->v = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
	if (out->v == NULL || !json_is_object(out->v))
		return "not a JSON object";
	js = json_object_get(out->v, "seq");
	if (!json_is_integer(js) || json_integer_value(js) < 1)
		return "no valid seq";
	out->seq = (uint64_t)json_integer_value(js);
	jp = json_object_get(out->v, "prev");
	if (!json_is_string(jp) || !is_hex64(json_string_value(jp)))
		return "no valid prev";
	memcpy(out->prev, json_string_value(jp), AUDIT_HASH_HEX + 1);
	if (audit_line_hash_hex(line, len, out->hash) != 0)
		return "does not end in its hash member";
	return NULL;
}

/* Finds the first record with seq want in the files, between positions (after
 * (from_f, from_l), before (to_f, to_l)); returns 1 and its place and hash, 0, -1. */
static int find_seq(const char *const *files, size_t n, uint64_t want, size_t from_f,
		    uint64_t from_l, size_t to_f, uint64_t to_l, size_t *fi, uint64_t *line,
		    char hash[AUDIT_HASH_HEX + 1])
{
	struct reader r;
	struct rec x;
	int rc;

	reader_init(&r, files, n);
	while ((rc = reader_next(&r)) == 1) {
		if (!pos_before(from_f, from_l, r.fi, r.lineno))
			continue;
		if (!pos_before(r.fi, r.lineno, to_f, to_l))
			break;
		if (rec_parse(r.line, r.len, &x) == NULL && x.seq == want) {
			*fi = r.fi;
			*line = r.lineno;
			memcpy(hash, x.hash, sizeof(x.hash));
			json_decref(x.v);
			reader_free(&r);
			return 1;
		}
		json_decref(x.v);
	}
	reader_free(&r);
	return rc < 0 ? -1 : 0;
}

/* ---------------------------------------------------------------- the pass */

struct slot {
	uint64_t seq;
	uint8_t hash[AUDIT_HASH_LEN];
	uint64_t plain; /* non-checkpoint records up to and including seq */
};

struct vstate {
	const char *const *files;
	size_t n_files;
	EVP_PKEY *pub;
	const char *pubkey_path;
	struct slot *ring; /* AUDIT_VERIFY_WINDOW entries, by seq modulo */
	uint64_t plain, signed_plain;
	uint64_t first_seq; /* of the files given: 1, or more with AUDIT_VERIFY_PARTIAL */
	struct audit_verify_result *res;
};

static KMS_PRINTF(5, 6) void fail(struct vstate *s, enum audit_verdict v, uint64_t seq,
				  const struct reader *r, const char *fmt, ...)
{
	va_list ap;

	s->res->verdict = v;
	s->res->seq = seq;
	s->res->file = r->files[r->fi];
	s->res->line = r->lineno;
	va_start(ap, fmt);
	vsnprintf(s->res->why, sizeof(s->res->why), fmt, ap);
	va_end(ap);
}

/* Checks one checkpoint record; returns false after fail(). */
static bool check_checkpoint(struct vstate *s, const struct reader *r, const struct rec *x)
{
	json_t *cp = json_object_get(x->v, "checkpoint");
	json_t *js = json_object_get(cp, "seq"), *jh = json_object_get(cp, "hash"),
	       *jsig = json_object_get(cp, "sig");
	const char *hex = json_string_value(jh), *b64 = json_string_value(jsig);
	uint8_t sig[AUDIT_SIG_MAX], h[AUDIT_HASH_LEN];
	char msg[128], have[AUDIT_HASH_HEX + 1];
	EVP_MD_CTX *mc = NULL;
	const struct slot *sl;
	size_t msg_len, hl = 0;
	uint64_t cov;
	long sig_len;
	int ok;

	if (!json_is_object(cp) || !json_is_integer(js) || json_integer_value(js) < 1 ||
	    !is_hex64(hex) || b64 == NULL) {
		fail(s, AUDIT_V_CHECKPOINT, x->seq, r,
		     "bad checkpoint: no valid checkpoint {seq, hash, sig} member");
		return false;
	}
	cov = (uint64_t)json_integer_value(js);
	if (cov >= x->seq || cov <= s->res->last_signed_seq) {
		fail(s, AUDIT_V_CHECKPOINT, x->seq, r,
		     "bad checkpoint: covers seq %llu, which is not between the previous "
		     "checkpoint's seq %llu and its own seq",
		     (unsigned long long)cov, (unsigned long long)s->res->last_signed_seq);
		return false;
	}
	sl = &s->ring[cov % AUDIT_VERIFY_WINDOW];
	if (x->seq - cov > AUDIT_VERIFY_WINDOW - 1) {
		fail(s, AUDIT_V_CHECKPOINT, x->seq, r,
		     "bad checkpoint: covers seq %llu, more than %d records back",
		     (unsigned long long)cov, AUDIT_VERIFY_WINDOW - 1);
		return false;
	}
	if (cov < s->first_seq) {
		/* partial: the covered record is in a segment not given; the signature
		 * still proves the checkpoint, and the chain links the rest to it */
	} else if (sl->seq != cov) {
		fail(s, AUDIT_V_CHECKPOINT, x->seq, r,
		     "bad checkpoint: covers seq %llu, more than %d records back",
		     (unsigned long long)cov, AUDIT_VERIFY_WINDOW - 1);
		return false;
	}
	if (cov >= s->first_seq && (kms_hex_decode(hex, AUDIT_HASH_HEX, h, sizeof(h), &hl) != 0 ||
				    memcmp(h, sl->hash, sizeof(h)) != 0)) {
		kms_hex_encode(sl->hash, AUDIT_HASH_LEN, have);
		fail(s, AUDIT_V_CHECKPOINT, x->seq, r,
		     "bad checkpoint: covers seq %llu with hash %.16s..., but that record's "
		     "hash is %.16s...",
		     (unsigned long long)cov, hex, have);
		return false;
	}
	sig_len = kms_b64_decode(b64, strlen(b64), sig, sizeof(sig));
	msg_len = audit_checkpoint_message(cov, hex, msg, sizeof(msg));
	ok = sig_len > 0 && msg_len > 0 && (mc = EVP_MD_CTX_new()) != NULL &&
	     EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, s->pub) == 1 &&
	     EVP_DigestVerify(mc, sig, (size_t)sig_len, (const unsigned char *)msg, msg_len) == 1;
	EVP_MD_CTX_free(mc);
	if (!ok) {
		fail(s, AUDIT_V_SIGNATURE, x->seq, r,
		     "bad signature: the checkpoint over seq %llu does not verify with %s",
		     (unsigned long long)cov, s->pubkey_path);
		return false;
	}
	s->res->last_signed_seq = cov;
	s->signed_plain = cov < s->first_seq ? 0 : sl->plain; /* none of the given records */
	s->res->checkpoints++;
	return true;
}

/* The record at r has a valid shape and hash but seq != expect: classify. Returns
 * KMS_OK after fail(), or an I/O error. */
static kms_err misplaced(struct vstate *s, const struct reader *r, const struct rec *x,
			 uint64_t expect)
{
	char other[AUDIT_HASH_HEX + 1];
	size_t fi = 0;
	uint64_t line = 0;
	int found;

	if (x->seq > expect) {
		/* Does the expected record come later? Then these two swapped places. */
		found = find_seq(s->files, s->n_files, expect, r->fi, r->lineno, SIZE_MAX,
				 UINT64_MAX, &fi, &line, other);
		if (found < 0)
			return KMS_ERR_IO;
		if (found) {
			fail(s, AUDIT_V_REORDERED, x->seq, r,
			     "reordered: seq %llu stands where seq %llu belongs (seq %llu is at "
			     "line %llu of %s)",
			     (unsigned long long)x->seq, (unsigned long long)expect,
			     (unsigned long long)expect, (unsigned long long)line, s->files[fi]);
		} else if (expect == 1) {
			fail(s, AUDIT_V_DELETED, expect, r,
			     "deleted: the log starts at seq %llu (seq 1..%llu missing)",
			     (unsigned long long)x->seq, (unsigned long long)(x->seq - 1));
		} else if (x->seq == expect + 1) {
			fail(s, AUDIT_V_DELETED, expect, r,
			     "deleted: seq jumps from %llu to %llu", (unsigned long long)(expect - 1),
			     (unsigned long long)x->seq);
		} else {
			fail(s, AUDIT_V_DELETED, expect, r,
			     "deleted: seq jumps from %llu to %llu (%llu records missing)",
			     (unsigned long long)(expect - 1), (unsigned long long)x->seq,
			     (unsigned long long)(x->seq - expect));
		}
		return KMS_OK;
	}
	/* A seq seen before: a copy, a second version, or one that was moved back. */
	found = find_seq(s->files, s->n_files, x->seq, 0, 0, r->fi, r->lineno, &fi, &line, other);
	if (found < 0)
		return KMS_ERR_IO;
	if (found && strcmp(other, x->hash) == 0)
		fail(s, AUDIT_V_INSERTED, x->seq, r,
		     "inserted: a copy of seq %llu (line %llu of %s) after seq %llu",
		     (unsigned long long)x->seq, (unsigned long long)line, s->files[fi],
		     (unsigned long long)(expect - 1));
	else if (found)
		fail(s, AUDIT_V_INSERTED, x->seq, r,
		     "inserted: seq %llu already appeared at line %llu of %s, with other content",
		     (unsigned long long)x->seq, (unsigned long long)line, s->files[fi]);
	else
		fail(s, AUDIT_V_REORDERED, x->seq, r, "reordered: seq %llu comes after seq %llu",
		     (unsigned long long)x->seq, (unsigned long long)(expect - 1));
	return KMS_OK;
}

static kms_err load_pubkey(const char *path, EVP_PKEY **out)
{
	FILE *f = fopen(path, "re");

	*out = NULL;
	if (f == NULL)
		return kms_errf(KMS_ERR_INVALID, "cannot open public key %s: %s", path,
				strerror(errno));
	*out = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (*out == NULL)
		return kms_errf(KMS_ERR_INVALID, "%s holds no PEM public key", path);
	return KMS_OK;
}

kms_err audit_verify(const char *const *files, size_t n_files, const char *pubkey_path,
		     struct audit_verify_result *res)
{
	return audit_verify_opts(files, n_files, pubkey_path, 0, res);
}

kms_err audit_verify_opts(const char *const *files, size_t n_files, const char *pubkey_path,
			  unsigned flags, struct audit_verify_result *res)
{
	static const char zeros[AUDIT_HASH_HEX + 1] =
		"0000000000000000000000000000000000000000000000000000000000000000";
	char prev[AUDIT_HASH_HEX + 1], got[AUDIT_HASH_HEX + 1];
	uint8_t h[AUDIT_HASH_LEN];
	struct vstate s;
	struct reader r;
	struct rec x = {0};
	struct slot *sl;
	uint64_t expect = 1;
	const char *bad;
	json_t *jop;
	bool is_ckpt;
	size_t hl;
	kms_err rc;
	int more;

	memset(res, 0, sizeof(*res));
	memset(&s, 0, sizeof(s));
	reader_init(&r, files, n_files);
	if (files == NULL || n_files == 0 || pubkey_path == NULL)
		return kms_errf(KMS_ERR_INVALID, "audit verify: no files or no public key");
	s.files = files;
	s.n_files = n_files;
	s.res = res;
	s.pubkey_path = pubkey_path;
	rc = load_pubkey(pubkey_path, &s.pub);
	if (rc != KMS_OK)
		return rc;
	s.ring = calloc(AUDIT_VERIFY_WINDOW, sizeof(*s.ring));
	if (s.ring == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
		goto out;
	}
	memcpy(prev, zeros, sizeof(prev));
	s.first_seq = 1;
	while ((more = reader_next(&r)) == 1) {
		if (!r.nl) {
			fail(&s, AUDIT_V_TRUNCATED, expect, &r,
			     "truncated: the last line is incomplete (%zu bytes, no newline)", r.len);
			break;
		}
		bad = rec_parse(r.line, r.len, &x);
		if (bad != NULL) {
			fail(&s, AUDIT_V_EDITED, x.seq ? x.seq : expect, &r,
			     "edited: not a valid audit record (%s)", bad);
			break;
		}
		if (audit_line_body_hash(r.line, r.len, h) != 0) {
			rc = kms_errf(KMS_ERR_INTERNAL, "audit verify: SHA-256 failed");
			goto out;
		}
		kms_hex_encode(h, AUDIT_HASH_LEN, got);
		if (strcmp(got, x.hash) != 0) {
			if (x.seq != expect)
				fail(&s, AUDIT_V_EDITED, x.seq, &r,
				     "edited: hash mismatch (content hashes to %.16s..., the record "
				     "says %.16s...; seq %llu was expected here)",
				     got, x.hash, (unsigned long long)expect);
			else
				fail(&s, AUDIT_V_EDITED, x.seq, &r,
				     "edited: hash mismatch (content hashes to %.16s..., the record "
				     "says %.16s...)",
				     got, x.hash);
			break;
		}
		if (res->records == 0 && (flags & AUDIT_VERIFY_PARTIAL) && x.seq > 1) {
			/* the first record kept: trusted as the start, its prev as given */
			expect = s.first_seq = x.seq;
			memcpy(prev, x.prev, sizeof(prev));
		}
		res->first_seq = s.first_seq;
		if (x.seq != expect) {
			rc = misplaced(&s, &r, &x, expect);
			if (rc != KMS_OK)
				goto out;
			break;
		}
		if (strcmp(x.prev, prev) != 0) {
			if (expect == 1)
				fail(&s, AUDIT_V_CHAIN, x.seq, &r,
				     "chain broken: the first record's prev is not 64 zeros");
			else
				fail(&s, AUDIT_V_CHAIN, x.seq, &r,
				     "chain broken: prev %.16s... is not the hash of seq %llu "
				     "(%.16s...): a record before it was rewritten, or records were "
				     "removed and renumbered",
				     x.prev, (unsigned long long)(expect - 1), prev);
			break;
		}
		jop = json_object_get(x.v, "operation");
		is_ckpt = json_is_string(jop) &&
			  strcmp(json_string_value(jop), AUDIT_OP_CHECKPOINT) == 0;
		if (!is_ckpt)
			s.plain++;
		if (is_ckpt && !check_checkpoint(&s, &r, &x))
			break;
		sl = &s.ring[x.seq % AUDIT_VERIFY_WINDOW];
		sl->seq = x.seq;
		(void)kms_hex_decode(got, AUDIT_HASH_HEX, sl->hash, sizeof(sl->hash), &hl);
		sl->plain = s.plain;
		memcpy(prev, got, sizeof(prev));
		expect = x.seq + 1;
		res->records++;
		json_decref(x.v);
		x.v = NULL;
	}
	if (more < 0) {
		rc = KMS_ERR_IO;
		goto out;
	}
	res->unsigned_tail = s.plain - s.signed_plain;
	rc = KMS_OK;
out:
	json_decref(x.v);
	reader_free(&r);
	free(s.ring);
	EVP_PKEY_free(s.pub);
	return rc;
}

void audit_verify_summary(const struct audit_verify_result *res, char *buf, size_t cap)
{
	if (res->verdict != AUDIT_V_OK) {
		snprintf(buf, cap, "FAIL: record seq %llu (line %llu of %s): %s",
			 (unsigned long long)res->seq, (unsigned long long)res->line,
			 res->file ? res->file : "?", res->why);
		return;
	}
	char from[64] = "";

	if (res->first_seq > 1)
		snprintf(from, sizeof(from), " from seq %llu", (unsigned long long)res->first_seq);
	if (res->unsigned_tail > 0)
		snprintf(buf, cap,
			 "ok: %llu records%s, %llu checkpoints, last signed seq %llu, unsigned tail "
			 "of %llu records",
			 (unsigned long long)res->records, from, (unsigned long long)res->checkpoints,
			 (unsigned long long)res->last_signed_seq,
			 (unsigned long long)res->unsigned_tail);
	else
		snprintf(buf, cap, "ok: %llu records%s, %llu checkpoints, last signed seq %llu",
			 (unsigned long long)res->records, from, (unsigned long long)res->checkpoints,
			 (unsigned long long)res->last_signed_seq);
}
