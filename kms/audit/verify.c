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
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/audit/audit_int.h"
#include "kms/audit/search.h"
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
	return audit_verify_node(files, n_files, pubkey_path, flags, NULL, res);
}

kms_err audit_verify_node(const char *const *files, size_t n_files, const char *pubkey_path,
			  unsigned flags, const char *node, struct audit_verify_result *res)
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
	json_t *jop, *jn;
	const char *have;
	char *node_owned = NULL; /* the node after a recorded change of node_id */
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
		jn = json_object_get(x.v, "node");
		have = json_is_string(jn) ? json_string_value(jn) : "";
		if (node != NULL && strcmp(have, node) != 0) {
			const char *from = json_string_value(json_object_get(x.v, "from_node"));

			if (!json_is_string(jop) || strcmp(json_string_value(jop), AUDIT_OP_NODE) != 0 ||
			    from == NULL || strcmp(from, node) != 0) {
				fail(&s, AUDIT_V_NODE, x.seq, &r,
				     "node changed: the record names node \"%.64s\" in node \"%.64s\"'s "
				     "log without an %s record saying so (a node's log names it in "
				     "every record: records spliced in from another log?)",
				     json_is_string(jn) ? have : "(none)", node[0] ? node : "(none)",
				     AUDIT_OP_NODE);
				break;
			}
			/* kmsd recorded the change of node_id: the log goes on as the new node's */
			free(node_owned);
			node = node_owned = strdup(have);
			if (node == NULL) {
				rc = kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
				goto out;
			}
		}
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
	if (node != NULL)
		snprintf(res->last_node, sizeof(res->last_node), "%s", node);
	rc = KMS_OK;
out:
	json_decref(x.v);
	reader_free(&r);
	free(s.ring);
	free(node_owned);
	EVP_PKEY_free(s.pub);
	return rc;
}

void audit_verify_summary(const struct audit_verify_result *res, char *buf, size_t cap)
{
	if (res->verdict != AUDIT_V_OK && res->file == NULL) {
		snprintf(buf, cap, "FAIL: %s", res->why);
		return;
	}
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

/* ---------------------------------------------------------------- several nodes */

static const char *node_label(const char *node)
{
	if (node == NULL)
		return "(a file with no record)";
	return node[0] != '\0' ? node : "(none)";
}

static bool in_list(const char *const *v, size_t n, const char *s)
{
	for (size_t i = 0; s != NULL && i < n; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

/* The stored hash and prev of the first record in path ("" when it has none). 0 or -1
 * (I/O). */
static int first_rec(const char *path, char hash[AUDIT_HASH_HEX + 1], char prev[AUDIT_HASH_HEX + 1])
{
	const char *files[1] = {path};
	struct reader r;
	struct rec x;
	int rc;

	hash[0] = prev[0] = '\0';
	reader_init(&r, files, 1);
	while ((rc = reader_next(&r)) == 1) {
		const char *bad = rec_parse(r.line, r.len, &x);

		json_decref(x.v);
		if (bad == NULL) {
			memcpy(hash, x.hash, AUDIT_HASH_HEX + 1);
			memcpy(prev, x.prev, AUDIT_HASH_HEX + 1);
			break;
		}
	}
	reader_free(&r);
	return rc < 0 ? -1 : 0;
}

/* The stored hash of the last complete line of path ("" when it has none) and, when
 * node is not NULL, the node it names (NUL-terminated, "" when none or too long): read
 * from the end, a larger piece until the line fits. 0 or -1 (I/O). */
static int last_line(const char *path, char out[AUDIT_HASH_HEX + 1], char node[65])
{
	FILE *f = fopen(path, "re");
	size_t cap, n;
	char *buf = NULL, *end, *start;
	off_t size, from;
	int rc = -1;

	out[0] = '\0';
	if (node != NULL)
		node[0] = '\0';
	if (f == NULL || fseeko(f, 0, SEEK_END) != 0 || (size = ftello(f)) < 0)
		goto out;
	for (cap = 65536;; cap *= 4) {
		from = size > (off_t)cap ? size - (off_t)cap : 0;
		free(buf);
		buf = malloc(cap);
		if (buf == NULL || fseeko(f, from, SEEK_SET) != 0)
			goto out;
		n = fread(buf, 1, cap, f);
		if (ferror(f))
			goto out;
		end = memrchr(buf, '\n', n);
		start = end ? memrchr(buf, '\n', (size_t)(end - buf)) : NULL;
		if (end == NULL && from == 0)
			break; /* no complete line */
		if (start == NULL && from > 0)
			continue; /* the line begins before this piece */
		start = start ? start + 1 : buf;
		if (audit_line_hash_hex(start, (size_t)(end - start), out) != 0)
			out[0] = '\0';
		if (node != NULL) {
			json_t *v = json_loadb(start, (size_t)(end - start), JSON_REJECT_DUPLICATES, NULL);
			const char *nm = json_string_value(json_object_get(v, "node"));

			node[0] = '\0';
			if (nm != NULL && strlen(nm) < 65)
				memcpy(node, nm, strlen(nm) + 1);
			json_decref(v);
		}
		break;
	}
	rc = 0;
out:
	free(buf);
	if (f != NULL)
		fclose(f);
	return rc;
}

/* The newest SEGMENT.pub.pem among the files (malloc'd), or NULL. */
static char *pub_beside(const char *const *files, size_t n)
{
	char *p;

	for (size_t i = n; i > 0; i--) { /* audit.log is usually last */
		if (asprintf(&p, "%s.pub.pem", files[i - 1]) < 0)
			return NULL;
		if (access(p, R_OK) == 0)
			return p;
		free(p);
	}
	return NULL;
}

/* One log to verify: its files in order, the node its first record names, and the
 * node it names at its end (after node_id changes kmsd recorded). */
struct work {
	const char *node, *last_node;
	bool check_node; /* false for files with no record */
	bool merged;	 /* appended to the log it continues */
	const char **files;
	size_t *seg; /* indexes into segs */
	size_t n;
	char *pub;    /* beside its files, malloc'd, or NULL */
	size_t entry; /* its entry in the result + 1, 0 before it has one */
};

static kms_err work_add(struct work *t, const struct audit_segs *segs, const size_t *seg, size_t n)
{
	size_t *v = realloc(t->seg, (t->n + n) * sizeof(*v));
	const char **f;

	if (v == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
	t->seg = v;
	f = realloc(t->files, (t->n + n) * sizeof(*f));
	if (f == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
	t->files = f;
	for (size_t j = 0; j < n; j++) {
		t->seg[t->n] = seg[j];
		t->files[t->n++] = segs->v[seg[j]].path;
	}
	return KMS_OK;
}

static struct audit_node_result *entry_new(struct audit_nodes_result *out, const char *node)
{
	struct audit_node_result *e = &out->v[out->n++];

	memset(e, 0, sizeof(*e));
	e->node = node;
	return e;
}

static KMS_PRINTF(3, 4) void entry_fail(struct audit_node_result *e, enum audit_verdict v,
					const char *fmt, ...)
{
	va_list ap;

	e->res.verdict = v;
	e->res.file = NULL;
	e->res.seq = 0;
	e->res.line = 0;
	va_start(ap, fmt);
	vsnprintf(e->res.why, sizeof(e->res.why), fmt, ap);
	va_end(ap);
}

static int entry_cmp(const void *a, const void *b)
{
	const struct audit_node_result *x = a, *y = b;

	if (x->node == NULL || y->node == NULL)
		return (x->node == NULL) - (y->node == NULL);
	return strcmp(x->node, y->node);
}

/* Two logs of one node that start at the same seq with different records. Returns 1
 * (after entry_fail), 0, or -1 (I/O). */
static int same_node(const struct work *w, const struct audit_segs *segs,
		     struct audit_node_result *e)
{
	char h1[AUDIT_HASH_HEX + 1], h2[AUDIT_HASH_HEX + 1], p[AUDIT_HASH_HEX + 1];

	for (size_t i = 1; w->check_node && i < w->n; i++) {
		const struct audit_seg *a = &segs->v[w->seg[i - 1]], *b = &segs->v[w->seg[i]];

		if (a->first_seq == 0 || a->first_seq != b->first_seq)
			continue;
		if (first_rec(a->path, h1, p) != 0 || first_rec(b->path, h2, p) != 0)
			return -1;
		if (strcmp(h1, h2) == 0)
			continue; /* a copy: the chain check says so */
		entry_fail(e, AUDIT_V_SAME_NODE,
			   "same node: %s and %s both start at seq %llu, with different records, "
			   "and both name node \"%s\": two logs claim one node id (two kmsd "
			   "nodes with the same node_id, or a log copied under another's name)",
			   a->path, b->path, (unsigned long long)a->first_seq, node_label(w->node));
		e->res.seq = a->first_seq;
		return 1;
	}
	return 0;
}

/* Appends each log whose first record continues another log's last record (kmsd wrote
 * it after node_id was changed: its later segments name the new node) to that log. */
static kms_err link_renamed(struct work *w, size_t n_w, const struct audit_segs *segs)
{
	char (*last)[AUDIT_HASH_HEX + 1] = NULL, h[AUDIT_HASH_HEX + 1], prev[AUDIT_HASH_HEX + 1];
	size_t *next = NULL, i, j, k;
	kms_err rc = KMS_OK;
	bool any = false;

	for (i = 0; i < n_w && !any; i++)
		any = w[i].check_node && segs->v[w[i].seg[0]].first_seq > 1;
	if (!any)
		return KMS_OK;
	last = calloc(n_w, sizeof(*last));
	next = calloc(n_w, sizeof(*next)); /* the log that continues i, + 1 */
	if (last == NULL || next == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
		goto out;
	}
	for (i = 0; i < n_w; i++)
		if (w[i].check_node && last_line(w[i].files[w[i].n - 1], last[i], NULL) != 0) {
			rc = kms_errf(KMS_ERR_IO, "cannot read %s", w[i].files[w[i].n - 1]);
			goto out;
		}
	for (j = 0; j < n_w; j++) {
		if (!w[j].check_node || segs->v[w[j].seg[0]].first_seq <= 1)
			continue;
		if (first_rec(w[j].files[0], h, prev) != 0) {
			rc = kms_errf(KMS_ERR_IO, "cannot read %s", w[j].files[0]);
			goto out;
		}
		for (i = 0; i < n_w && prev[0] != '\0'; i++)
			if (i != j && w[i].check_node && next[i] == 0 && strcmp(last[i], prev) == 0) {
				next[i] = j + 1;
				w[j].merged = true;
				break;
			}
	}
	/* each head takes its followers, in order (a hash chain has no cycle; the count
	 * bounds it anyway) */
	for (i = 0; i < n_w; i++) {
		if (w[i].merged)
			continue;
		for (j = next[i], k = 0; j != 0 && k < n_w; j = next[j - 1], k++) {
			rc = work_add(&w[i], segs, w[j - 1].seg, w[j - 1].n);
			if (rc != KMS_OK)
				goto out;
			w[i].last_node = w[j - 1].node;
		}
	}
out:
	free(last);
	free(next);
	return rc;
}

void audit_nodes_result_free(struct audit_nodes_result *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n_names; i++)
		free(r->names[i]);
	free(r->names);
	free(r->v);
	memset(r, 0, sizeof(*r));
}

kms_err audit_verify_nodes(const struct audit_segs *segs, const struct audit_nodes_opts *o,
			   struct audit_nodes_result *out)
{
	struct audit_chains ch = {0};
	struct work *w = NULL;
	size_t n_w = 0, n_nodes = 0, i, j, cap;
	const char *pub, *any_pub = NULL;
	struct audit_node_result *e;
	kms_err rc;
	int k;

	memset(out, 0, sizeof(*out));
	rc = audit_segs_chains(segs, &ch);
	if (rc != KMS_OK)
		return rc;
	for (i = 0; i < ch.n; i++)
		n_nodes += ch.v[i].node != NULL;
	cap = ch.n + o->n_expect + o->n_only + 1;
	w = calloc(cap, sizeof(*w));
	out->v = calloc(cap, sizeof(*out->v));
	out->names = calloc(2 * cap, sizeof(*out->names)); /* one per log, twice at most */
	if (w == NULL || out->v == NULL || out->names == NULL)
		goto oom;
	/* The logs: one per node; the files with no record join a lone node's log (as one
	 * log is read today), else an empty one is dropped and any other stands alone;
	 * with no node at all, they are one log, as audit_verify reads them. */
	for (i = 0; i < ch.n; i++) {
		const struct audit_chain *c = &ch.v[i];
		struct work *t;

		if (c->node == NULL && n_nodes <= 1 && n_w > 0) {
			t = &w[0]; /* the lone node sorts first */
		} else if (c->node == NULL && n_nodes > 1 && segs->v[c->seg[0]].size == 0) {
			continue;
		} else {
			t = &w[n_w++];
			t->node = t->last_node = c->node;
			t->check_node = c->node != NULL;
		}
		if ((rc = work_add(t, segs, c->seg, c->n)) != KMS_OK)
			goto out;
	}
	if ((rc = link_renamed(w, n_w, segs)) != KMS_OK)
		goto out;
	/* --node: a log may name another node at its end than at its start (a change of
	 * node_id recorded inside a file): select by that one too */
	for (i = 0; o->n_only > 0 && i < n_w; i++) {
		char h[AUDIT_HASH_HEX + 1], nm[65];

		if (w[i].merged || !w[i].check_node)
			continue;
		if (last_line(w[i].files[w[i].n - 1], h, nm) != 0) {
			rc = kms_errf(KMS_ERR_IO, "cannot read %s", w[i].files[w[i].n - 1]);
			goto out;
		}
		if (nm[0] != '\0' && strcmp(nm, w[i].last_node) != 0) {
			if ((out->names[out->n_names] = strdup(nm)) == NULL)
				goto oom;
			w[i].last_node = out->names[out->n_names++];
		}
	}
	/* The public key: given, or beside each log's files, or beside another log's. */
	for (i = 0; o->pubkey == NULL && i < n_w; i++) {
		if (w[i].merged)
			continue;
		w[i].pub = pub_beside(w[i].files, w[i].n);
		if (any_pub == NULL)
			any_pub = w[i].pub;
	}
	if (o->pubkey == NULL && any_pub == NULL && n_w > 0) {
		rc = kms_errf(KMS_ERR_INVALID, "no --pubkey given and no SEGMENT.pub.pem beside the "
					       "files is readable");
		goto out;
	}
	for (i = 0; i < n_w; i++) {
		if (w[i].merged || (o->n_only > 0 && !in_list(o->only, o->n_only, w[i].last_node) &&
				    !in_list(o->only, o->n_only, w[i].node)))
			continue;
		e = entry_new(out, w[i].last_node);
		e->n_files = w[i].n;
		w[i].entry = out->n;
		k = same_node(&w[i], segs, e);
		if (k == 1)
			continue;
		if (k != 0) {
			rc = kms_errf(KMS_ERR_IO, "reading the first records of node %s's log failed",
				      node_label(w[i].node));
			goto out;
		}
		pub = o->pubkey ? o->pubkey : w[i].pub ? w[i].pub : any_pub;
		rc = audit_verify_node(w[i].files, w[i].n, pub, o->flags,
				       w[i].check_node ? w[i].node : NULL, &e->res);
		if (rc != KMS_OK)
			goto out;
		if (e->res.last_node[0] != '\0' && strcmp(e->res.last_node, e->node) != 0) {
			/* node_id changed within the files: the log is the new node's */
			char *nm = strdup(e->res.last_node);

			if (nm == NULL)
				goto oom;
			out->names[out->n_names++] = nm;
			e->node = nm;
		}
	}
	/* The nodes asked for or expected that have no log; the logs not expected. */
	for (i = 0; i < o->n_only + o->n_expect; i++) {
		const char *want = i < o->n_only ? o->only[i] : o->expect[i - o->n_only];
		bool found = false;

		for (j = 0; j < n_w && !found; j++)
			found = !w[j].merged && w[j].entry == 0 && w[j].last_node != NULL &&
				strcmp(w[j].last_node, want) == 0;
		for (j = 0; j < out->n && !found; j++)
			found = out->v[j].node != NULL && strcmp(out->v[j].node, want) == 0;
		if (!found)
			entry_fail(entry_new(out, want), AUDIT_V_MISSING,
				   "missing: no log of node %s among the files given", want);
	}
	for (i = 0; o->n_expect > 0 && i < n_w; i++) {
		const char *nm = w[i].entry ? out->v[w[i].entry - 1].node : w[i].last_node;

		if (w[i].merged || in_list(o->expect, o->n_expect, nm))
			continue;
		e = w[i].entry ? &out->v[w[i].entry - 1] : entry_new(out, nm);
		if (e->res.verdict == AUDIT_V_OK)
			entry_fail(e, AUDIT_V_UNEXPECTED,
				   "unexpected: a log of node %s is among the files, but that node "
				   "is not one of those expected",
				   node_label(nm));
	}
	qsort(out->v, out->n, sizeof(out->v[0]), entry_cmp);
	for (i = 0; i < out->n; i++) {
		out->failed += out->v[i].res.verdict != AUDIT_V_OK;
		out->records += out->v[i].res.records;
		out->checkpoints += out->v[i].res.checkpoints;
	}
	rc = KMS_OK;
	goto out;
oom:
	rc = kms_errf(KMS_ERR_NOMEM, "audit verify: out of memory");
out:
	for (i = 0; w != NULL && i < cap; i++) {
		free(w[i].files);
		free(w[i].seg);
		free(w[i].pub);
	}
	free(w);
	audit_chains_free(&ch);
	if (rc != KMS_OK)
		audit_nodes_result_free(out);
	return rc;
}

void audit_node_summary(const struct audit_node_result *r, char *buf, size_t cap)
{
	char line[1024];

	audit_verify_summary(&r->res, line, sizeof(line));
	snprintf(buf, cap, "node %s: %s", node_label(r->node), line);
}

void audit_nodes_summary(const struct audit_nodes_result *r, char *buf, size_t cap)
{
	if (r->failed == 0)
		snprintf(buf, cap, "ok: %zu node%s, %llu records, %llu checkpoints", r->n,
			 r->n == 1 ? "" : "s", (unsigned long long)r->records,
			 (unsigned long long)r->checkpoints);
	else
		snprintf(buf, cap, "FAIL: %zu of %zu node%s (%llu records, %llu checkpoints verified)",
			 r->failed, r->n, r->n == 1 ? "" : "s", (unsigned long long)r->records,
			 (unsigned long long)r->checkpoints);
}
