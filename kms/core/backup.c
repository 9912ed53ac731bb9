/* Backup archives: writer (POST /v1/sys/backup, in the serving kmsd) and reader
 * (kmsd restore, offline). Contract in backup.h; byte format in docs/FORMATS.md
 * "Backup archive". */
#include "kms/core/backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/b64.h"
#include "kms/base/fileio.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/op.h"
#include "kms/base/secret.h"
#include "kms/core/core.h"
#include "kms/store/store.h"
#include "pkcs11/p11.h"

#define AAD_PREFIX "kmsd-backup:1:"
#define AAD_PREFIX_LEN (sizeof(AAD_PREFIX) - 1)
#define AAD_LEN (AAD_PREFIX_LEN + 32 + 8 + 1)
#define FINAL_BIT 0x80000000u
#define PUBKEY_MAX 8192
#define FP_HEX 65

/* ---- small helpers ------------------------------------------------------------- */

static void be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static void dir_of(const char *path, char *out, size_t cap)
{
	const char *s = strrchr(path, '/');

	if (s == NULL)
		snprintf(out, cap, ".");
	else if (s == path)
		snprintf(out, cap, "/");
	else
		snprintf(out, cap, "%.*s", (int)(s - path), path);
}

static void hex(const uint8_t *in, size_t n, char *out)
{
	kms_hex_encode(in, n, out);
	out[2 * n] = '\0';
}

static void mk_identity(uint32_t version, const char *fp, char *out, size_t cap)
{
	snprintf(out, cap, "kmsd-mk-%u (fingerprint %.16s)", version, fp);
}

/* AAD of chunk `index`: prefix, SHA-256 of magic||length||header, index, final. */
static void chunk_aad(const uint8_t hh[32], uint64_t index, bool final, uint8_t aad[AAD_LEN])
{
	memcpy(aad, AAD_PREFIX, AAD_PREFIX_LEN);
	memcpy(aad + AAD_PREFIX_LEN, hh, 32);
	be64(aad + AAD_PREFIX_LEN + 32, index);
	aad[AAD_LEN - 1] = final ? 1 : 0;
}

static void chunk_iv(uint64_t index, uint8_t iv[P11_GCM_IV_LEN])
{
	/* the archive key is new for every archive: the chunk index is a unique nonce */
	memset(iv, 0, 4);
	be64(iv + 4, index);
}

/* ---- writer ---------------------------------------------------------------------- */

struct enc {
	struct p11 *p11;
	p11_key k;
	int fd;
	uint8_t hh[32];
	uint8_t *pt, *ct;
	size_t fill, chunk;
	uint64_t index;
	EVP_MD_CTX *md; /* SHA-256 of every byte of the archive as written */
};

static kms_err enc_out(struct enc *e, const void *p, size_t n)
{
	if (kms_write_all(e->fd, p, n) != 0)
		return kms_errf(KMS_ERR_IO, "backup: cannot write the archive: %s", strerror(errno));
	if (EVP_DigestUpdate(e->md, p, n) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "backup: SHA-256 failed");
	return KMS_OK;
}

static kms_err enc_emit(struct enc *e, bool final)
{
	uint8_t iv[P11_GCM_IV_LEN], aad[AAD_LEN], len[4];
	size_t n = e->fill + P11_GCM_TAG_LEN;
	kms_err rc;

	chunk_iv(e->index, iv);
	chunk_aad(e->hh, e->index, final, aad);
	rc = p11_gcm_encrypt(e->p11, e->k, iv, aad, sizeof(aad), e->pt, e->fill, e->ct,
			     BACKUP_CHUNK + P11_GCM_TAG_LEN);
	kms_wipe(e->pt, e->fill);
	e->fill = 0;
	if (rc != KMS_OK)
		return rc;
	be32(len, (uint32_t)n | (final ? FINAL_BIT : 0));
	if ((rc = enc_out(e, len, 4)) != KMS_OK || (rc = enc_out(e, e->ct, n)) != KMS_OK)
		return rc;
	e->index++;
	return KMS_OK;
}

static kms_err enc_write(struct enc *e, const void *data, size_t n)
{
	const uint8_t *p = data;
	kms_err rc;

	while (n > 0) {
		size_t take;

		if (e->fill == e->chunk && (rc = enc_emit(e, false)) != KMS_OK)
			return rc;
		take = e->chunk - e->fill < n ? e->chunk - e->fill : n;
		memcpy(e->pt + e->fill, p, take);
		e->fill += take;
		p += take;
		n -= take;
	}
	return KMS_OK;
}

static kms_err sha256_fd(int fd, uint64_t size, uint8_t *buf, size_t cap, uint8_t out[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint64_t off = 0;
	kms_err rc = KMS_OK;

	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return kms_errf(KMS_ERR_NOMEM, "backup: SHA-256 failed");
	}
	while (off < size) {
		size_t want = size - off < cap ? (size_t)(size - off) : cap;
		ssize_t r = pread(fd, buf, want, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = kms_errf(KMS_ERR_IO, "backup: reading an audit file failed: %s",
				      r < 0 ? strerror(errno) : "it became shorter");
			break;
		}
		EVP_DigestUpdate(md, buf, (size_t)r);
		off += (uint64_t)r;
	}
	if (rc == KMS_OK && EVP_DigestFinal_ex(md, out, NULL) != 1)
		rc = kms_errf(KMS_ERR_INTERNAL, "backup: SHA-256 failed");
	EVP_MD_CTX_free(md);
	return rc;
}

static kms_err copy_fd(struct enc *e, int fd, uint64_t size, uint8_t *buf, size_t cap)
{
	uint64_t off = 0;
	kms_err rc;

	while (off < size) {
		size_t want = size - off < cap ? (size_t)(size - off) : cap;
		ssize_t r = pread(fd, buf, want, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return kms_errf(KMS_ERR_IO, "backup: reading an audit file failed: %s",
					r < 0 ? strerror(errno) : "it became shorter");
		if ((rc = enc_write(e, buf, (size_t)r)) != KMS_OK)
			return rc;
		off += (uint64_t)r;
	}
	return KMS_OK;
}

static json_t *file_entry(const char *name, const char *kind, uint64_t size, const uint8_t sha[32])
{
	char h[65];

	hex(sha, 32, h);
	return json_pack("{s:s, s:s, s:I, s:s}", "name", name, "kind", kind, "size", (json_int_t)size,
			 "sha256", h);
}

/* Plaintext bytes per chunk: BACKUP_CHUNK, unless a test asks for small chunks (so
 * that a small archive has many). */
static size_t chunk_size(void)
{
	const char *t = getenv("KMSD_TEST_BACKUP_CHUNK");
	long v;

	if (t == NULL || *t == '\0')
		return BACKUP_CHUNK;
	v = atol(t);
	if (v < 1 || v > (long)BACKUP_CHUNK)
		return BACKUP_CHUNK;
	kms_warn("KMSD_TEST_BACKUP_CHUNK is set: backup chunks of %ld bytes. Never in production.", v);
	return (size_t)v;
}

/* The schema a manifest claims: the store's, unless a test asks for another. */
static int manifest_schema(void)
{
	const char *t = getenv("KMSD_TEST_BACKUP_SCHEMA");

	if (t != NULL && *t != '\0') {
		kms_warn("KMSD_TEST_BACKUP_SCHEMA is set: the backup manifest claims store schema %s. "
			 "Never in production.", t);
		return atoi(t);
	}
	return STORE_SCHEMA_VERSION;
}

/* An unlinked file in dir for the archive: never visible by name, gone with its fd. */
static int tmp_file(const char *dir)
{
	char path[PATH_MAX];
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd;
	if (snprintf(path, sizeof(path), "%s/.kmsd-backup-XXXXXX", dir) >= (int)sizeof(path))
		return -1;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		(void)unlink(path);
	return fd;
}

kms_err backup_write(struct p11 *p11, struct store *st, struct audit *au, pthread_rwlock_t *quiesce,
		     int *out_fd, uint64_t *size, uint8_t sha256[32], char **summary)
{
	struct audit_snapshot snap = {0};
	struct store_mk_status ms;
	struct enc e = {.p11 = p11, .fd = -1, .chunk = chunk_size()};
	uint8_t fp[32], blob[P11_KEK_BLOB_LEN], sha[32], *db = NULL, *buf = NULL;
	char fph[65], b64[80], hdr_len[4], pub_path[8192], pem[PUBKEY_MAX], when[32];
	char *hdr = NULL, *man = NULL;
	size_t db_len = 0, hdr_n = 0, man_n = 0, pem_n = 0;
	json_t *files = NULL, *h = NULL, *m = NULL;
	uint64_t total = 0;
	time_t now = time(NULL);
	struct tm tm;
	kms_err rc;
	int fd;

	*out_fd = -1;
	*size = 0;
	if (summary != NULL)
		*summary = NULL;
	if ((rc = store_mk_status(st, &ms)) != KMS_OK)
		return rc;
	if (ms.retiring != 0)
		return kms_errf(KMS_ERR_CONFLICT,
				"a master-key rotation from version %u to %u is in progress: finish it "
				"(kmsd master-key rotate) before taking a backup",
				ms.retiring, ms.active);
	if ((rc = p11_mk_fingerprint(p11, ms.active, fp)) != KMS_OK)
		return rc;
	hex(fp, 32, fph);
	/* the archive key: generated in the token, kept only wrapped under the master key */
	if ((rc = p11_kek_generate(p11, ms.active, blob)) != KMS_OK ||
	    (rc = p11_kek_load(p11, ms.active, blob, sizeof(blob), &e.k)) != KMS_OK)
		return rc;
	e.pt = malloc(BACKUP_CHUNK);
	e.ct = malloc(BACKUP_CHUNK + P11_GCM_TAG_LEN);
	buf = malloc(BACKUP_CHUNK);
	files = json_array();
	e.md = EVP_MD_CTX_new();
	if (e.pt == NULL || e.ct == NULL || buf == NULL || files == NULL || e.md == NULL ||
	    EVP_DigestInit_ex(e.md, EVP_sha256(), NULL) != 1) {
		rc = kms_errf(KMS_ERR_NOMEM, "backup: out of memory");
		goto out;
	}
	/* One cut: with no change between its start and its durable record (quiesce), the
	 * store snapshot and the audit cut describe the same instant. Held for a memory copy
	 * of the store and the opening of the audit files. */
	if (quiesce != NULL)
		pthread_rwlock_wrlock(quiesce);
	rc = store_snapshot(st, &db, &db_len);
	if (rc == KMS_OK)
		rc = audit_snapshot(au, &snap);
	if (quiesce != NULL)
		pthread_rwlock_unlock(quiesce);
	if (rc != KMS_OK)
		goto out;
	e.fd = tmp_file(snap.dir);
	if (e.fd < 0) {
		rc = kms_errf(KMS_ERR_IO, "backup: cannot make a temporary file in %.200s: %s", snap.dir,
			      strerror(errno));
		goto out;
	}
	snprintf(pub_path, sizeof(pub_path), "%s/%s.pub.pem", snap.dir, snap.log_name);
	fd = open(pub_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		rc = kms_errf(KMS_ERR_IO, "backup: cannot open the audit public key %.200s: %s", pub_path,
			      strerror(errno));
		goto out;
	}
	{
		ssize_t r = kms_read_full(fd, pem, sizeof(pem));
		close(fd);
		if (r <= 0 || (size_t)r == sizeof(pem)) {
			rc = kms_errf(KMS_ERR_IO, "backup: cannot read the audit public key %.200s", pub_path);
			goto out;
		}
		pem_n = (size_t)r;
	}

	/* the manifest: every file with its size and SHA-256 */
	EVP_Digest(db, db_len, sha, NULL, EVP_sha256(), NULL);
	json_array_append_new(files, file_entry("store.db", "store", db_len, sha));
	total += db_len;
	for (size_t i = 0; i < snap.n; i++) {
		if ((rc = sha256_fd(snap.files[i].fd, snap.files[i].size, buf, BACKUP_CHUNK, sha)) != KMS_OK)
			goto out;
		json_array_append_new(files, file_entry(snap.files[i].name,
							snap.files[i].current ? "audit_current" : "audit_segment",
							snap.files[i].size, sha));
		total += snap.files[i].size;
	}
	EVP_Digest(pem, pem_n, sha, NULL, EVP_sha256(), NULL);
	{
		char pname[300];

		snprintf(pname, sizeof(pname), "%s.pub.pem", snap.log_name);
		json_array_append_new(files, file_entry(pname, "audit_pubkey", pem_n, sha));
	}
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (json_array_size(files) != snap.n + 2) {
		rc = kms_errf(KMS_ERR_NOMEM, "backup: out of memory");
		goto out;
	}
	m = json_pack("{s:i, s:s, s:i, s:I, s:s, s:{s:i, s:s, s:s}, s:{s:s, s:I}, s:O}", "format", BACKUP_FORMAT,
		      "kmsd_version", KMS_VERSION, "schema_version", manifest_schema(), "created",
		      (json_int_t)now, "created_utc", when, "master_key", "version", (int)ms.active, "label",
		      "", "fingerprint", fph, "audit", "log_name", snap.log_name, "last_seq",
		      (json_int_t)snap.last_seq, "files", files);
	h = json_pack("{s:i, s:i, s:s, s:s, s:s, s:i, s:I}", "format", BACKUP_FORMAT, "mk_version",
		      (int)ms.active, "mk_label", "", "mk_fingerprint", fph, "key_blob", "", "chunk_size",
		      (int)e.chunk, "created", (json_int_t)now);
	if (m == NULL || h == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "backup: out of memory");
		goto out;
	}
	{
		char label[32];

		snprintf(label, sizeof(label), "kmsd-mk-%u", ms.active);
		json_object_set_new(json_object_get(m, "master_key"), "label", json_string(label));
		json_object_set_new(h, "mk_label", json_string(label));
		if (kms_b64_encode(blob, sizeof(blob), b64, sizeof(b64)) < 0) {
			rc = kms_errf(KMS_ERR_INTERNAL, "backup: base64 failed");
			goto out;
		}
		json_object_set_new(h, "key_blob", json_string(b64));
	}
	hdr = kms_json_dump(h, &hdr_n);
	man = kms_json_dump(m, &man_n);
	if (hdr == NULL || man == NULL || hdr_n > BACKUP_HEADER_MAX || man_n > BACKUP_MANIFEST_MAX) {
		rc = kms_errf(man_n > BACKUP_MANIFEST_MAX ? KMS_ERR_TOO_LARGE : KMS_ERR_NOMEM,
			      "backup: cannot build the manifest (%zu bytes)", man_n);
		goto out;
	}
	/* clear part: magic, header length, header; its hash goes into every chunk's AAD */
	be32((uint8_t *)hdr_len, (uint32_t)hdr_n);
	{
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		    EVP_DigestUpdate(md, BACKUP_MAGIC, 8) != 1 || EVP_DigestUpdate(md, hdr_len, 4) != 1 ||
		    EVP_DigestUpdate(md, hdr, hdr_n) != 1 || EVP_DigestFinal_ex(md, e.hh, NULL) != 1) {
			EVP_MD_CTX_free(md);
			rc = kms_errf(KMS_ERR_INTERNAL, "backup: SHA-256 failed");
			goto out;
		}
		EVP_MD_CTX_free(md);
	}
	if ((rc = enc_out(&e, BACKUP_MAGIC, 8)) != KMS_OK || (rc = enc_out(&e, hdr_len, 4)) != KMS_OK ||
	    (rc = enc_out(&e, hdr, hdr_n)) != KMS_OK)
		goto out;
	{
		uint8_t ml[4];

		be32(ml, (uint32_t)man_n);
		if ((rc = enc_write(&e, ml, 4)) != KMS_OK || (rc = enc_write(&e, man, man_n)) != KMS_OK ||
		    (rc = enc_write(&e, db, db_len)) != KMS_OK)
			goto out;
	}
	for (size_t i = 0; i < snap.n; i++)
		if ((rc = copy_fd(&e, snap.files[i].fd, snap.files[i].size, buf, BACKUP_CHUNK)) != KMS_OK)
			goto out;
	if ((rc = enc_write(&e, pem, pem_n)) != KMS_OK || (rc = enc_emit(&e, true)) != KMS_OK)
		goto out;
	if (EVP_DigestFinal_ex(e.md, sha256, NULL) != 1) {
		rc = kms_errf(KMS_ERR_INTERNAL, "backup: SHA-256 failed");
		goto out;
	}
	{
		off_t end = lseek(e.fd, 0, SEEK_CUR);

		if (end < 0 || lseek(e.fd, 0, SEEK_SET) != 0) {
			rc = kms_errf(KMS_ERR_IO, "backup: seek failed: %s", strerror(errno));
			goto out;
		}
		*size = (uint64_t)end;
	}
	if (summary != NULL &&
	    asprintf(summary, "backup of store schema %d, %zu audit files up to seq %llu (%llu bytes) under %s",
		     STORE_SCHEMA_VERSION, snap.n, (unsigned long long)snap.last_seq,
		     (unsigned long long)total, json_string_value(json_object_get(h, "mk_label"))) < 0)
		*summary = NULL;
	*out_fd = e.fd;
	e.fd = -1;
	rc = KMS_OK;
out:
	if (e.fd >= 0)
		close(e.fd);
	EVP_MD_CTX_free(e.md);
	p11_kek_unload(p11, e.k);
	audit_snapshot_free(&snap);
	if (db != NULL) {
		kms_wipe(db, db_len);
		free(db);
	}
	if (e.pt != NULL) {
		kms_wipe(e.pt, BACKUP_CHUNK);
		free(e.pt);
	}
	free(e.ct);
	if (buf != NULL) {
		kms_wipe(buf, BACKUP_CHUNK);
		free(buf);
	}
	if (man != NULL)
		kms_json_free_str(man, man_n);
	if (hdr != NULL)
		kms_json_free_str(hdr, hdr_n);
	json_decref(files);
	json_decref(m);
	json_decref(h);
	kms_wipe(blob, sizeof(blob));
	return rc;
}

/* ---- reader ---------------------------------------------------------------------- */

struct dec {
	struct p11 *p11;
	p11_key k;
	int fd;
	uint8_t hh[32];
	uint8_t *pt, *ct;
	size_t len, pos;
	uint64_t index;
	bool final; /* the chunk in pt was the final one */
};

static kms_err dec_next(struct dec *d)
{
	uint8_t iv[P11_GCM_IV_LEN], aad[AAD_LEN], lb[4];
	uint32_t n;
	ssize_t r;
	size_t out = 0;
	bool final;
	kms_err rc;

	if (d->final)
		return kms_errf(KMS_ERR_DECRYPT, "backup archive: its content ends early (manifest and data disagree)");
	r = kms_read_full(d->fd, lb, 4);
	if (r != 4)
		return kms_errf(KMS_ERR_DECRYPT, "backup archive is truncated: chunk %llu is missing",
				(unsigned long long)d->index);
	n = get_be32(lb);
	final = (n & FINAL_BIT) != 0;
	n &= ~FINAL_BIT;
	if (n < P11_GCM_TAG_LEN || n > BACKUP_CHUNK + P11_GCM_TAG_LEN)
		return kms_errf(KMS_ERR_DECRYPT, "backup archive is damaged: chunk %llu has a bad length",
				(unsigned long long)d->index);
	r = kms_read_full(d->fd, d->ct, n);
	if (r < 0)
		return kms_errf(KMS_ERR_IO, "backup archive: read failed: %s", strerror(errno));
	if ((size_t)r != n)
		return kms_errf(KMS_ERR_DECRYPT, "backup archive is truncated inside chunk %llu",
				(unsigned long long)d->index);
	chunk_iv(d->index, iv);
	chunk_aad(d->hh, d->index, final, aad);
	rc = p11_gcm_decrypt(d->p11, d->k, iv, aad, sizeof(aad), d->ct, n, d->pt,
			     BACKUP_CHUNK + P11_GCM_TAG_LEN, &out);
	if (rc == KMS_ERR_DECRYPT)
		return kms_errf(KMS_ERR_DECRYPT,
				"backup archive fails authentication at chunk %llu: it was altered, "
				"truncated or reordered",
				(unsigned long long)d->index);
	if (rc != KMS_OK)
		return rc;
	d->len = out;
	d->pos = 0;
	d->final = final;
	d->index++;
	return KMS_OK;
}

/* Reads exactly n bytes of the decrypted stream into buf (and, when md, hashes them);
 * with fd >= 0 writes them there instead of buf. */
static kms_err dec_read(struct dec *d, uint8_t *buf, uint64_t n, int out_fd, EVP_MD_CTX *md)
{
	kms_err rc;

	while (n > 0) {
		size_t take;

		if (d->pos == d->len && (rc = dec_next(d)) != KMS_OK)
			return rc;
		take = d->len - d->pos < n ? d->len - d->pos : (size_t)n;
		if (md != NULL)
			EVP_DigestUpdate(md, d->pt + d->pos, take);
		if (out_fd >= 0) {
			if (kms_write_all(out_fd, d->pt + d->pos, take) != 0)
				return kms_errf(KMS_ERR_IO, "restore: write failed: %s", strerror(errno));
		} else {
			memcpy(buf, d->pt + d->pos, take);
			buf += take;
		}
		d->pos += take;
		n -= take;
	}
	return KMS_OK;
}

enum fkind { F_STORE, F_SEGMENT, F_CURRENT, F_PUBKEY };

struct rfile {
	enum fkind kind;
	char name[256];
	uint64_t size;
	uint8_t sha[32];
	char dest[PATH_MAX];
	char tmp[PATH_MAX + 16];
	bool staged;
};

static int hex_decode32(const char *s, uint8_t out[32])
{
	if (s == NULL || strlen(s) != 64)
		return -1;
	for (int i = 0; i < 32; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return 0;
}

static bool plain_name(const char *s)
{
	return s != NULL && *s != '\0' && *s != '.' && strchr(s, '/') == NULL && strlen(s) < 256;
}

/* Checks the manifest and fills files (dest paths from opts). */
static kms_err manifest_check(json_t *m, const struct backup_restore_opts *o, uint32_t mk_version,
			      const char *fp, struct rfile **out, size_t *n_out, uint64_t *last_seq,
			      char *created, size_t created_cap)
{
	json_t *files = json_object_get(m, "files"), *mk = json_object_get(m, "master_key");
	json_t *au = json_object_get(m, "audit"), *v;
	const char *log_name = json_string_value(json_object_get(au, "log_name"));
	json_int_t schema;
	struct rfile *fs;
	size_t i, n, n_store = 0, n_cur = 0, n_pub = 0;

	*out = NULL;
	*n_out = 0;
	if (!json_is_integer(json_object_get(m, "format")) ||
	    json_integer_value(json_object_get(m, "format")) != BACKUP_FORMAT)
		return kms_errf(KMS_ERR_INVALID, "backup manifest: unknown format (this kmsd reads format %d)",
				BACKUP_FORMAT);
	v = json_object_get(m, "schema_version");
	if (!json_is_integer(v) || json_integer_value(v) < 1)
		return kms_errf(KMS_ERR_INVALID, "backup manifest: no valid schema_version");
	schema = json_integer_value(v);
	if (schema > STORE_SCHEMA_VERSION)
		return kms_errf(KMS_ERR_CONFLICT,
				"the backup holds a store of schema version %lld (made by kmsd %s), newer than "
				"this kmsd supports (up to %d): restore it with a kmsd at least as new as the "
				"one that made it",
				(long long)schema, json_string_value(json_object_get(m, "kmsd_version"))
							   ? json_string_value(json_object_get(m, "kmsd_version"))
							   : "?",
				STORE_SCHEMA_VERSION);
	if (!json_is_integer(json_object_get(mk, "version")) ||
	    json_integer_value(json_object_get(mk, "version")) != (json_int_t)mk_version ||
	    !json_is_string(json_object_get(mk, "fingerprint")) ||
	    strcmp(json_string_value(json_object_get(mk, "fingerprint")), fp) != 0)
		return kms_errf(KMS_ERR_INVALID, "backup manifest: its master key disagrees with the header");
	if (!plain_name(log_name) || !json_is_integer(json_object_get(au, "last_seq")))
		return kms_errf(KMS_ERR_INVALID, "backup manifest: no valid audit section");
	*last_seq = (uint64_t)json_integer_value(json_object_get(au, "last_seq"));
	snprintf(created, created_cap, "%s",
		 json_is_string(json_object_get(m, "created_utc")) ? json_string_value(json_object_get(m, "created_utc"))
								    : "?");
	n = json_array_size(files);
	if (!json_is_array(files) || n < 3 || n > BACKUP_FILES_MAX)
		return kms_errf(KMS_ERR_INVALID, "backup manifest: bad file list");
	fs = calloc(n, sizeof(*fs));
	if (fs == NULL)
		return kms_errf(KMS_ERR_NOMEM, "restore: out of memory");
	for (i = 0; i < n; i++) {
		json_t *f = json_array_get(files, i);
		const char *name = json_string_value(json_object_get(f, "name"));
		const char *kind = json_string_value(json_object_get(f, "kind"));
		json_t *size = json_object_get(f, "size");
		struct rfile *r = &fs[i];
		uint64_t seq = 0;
		int w;

		if (!plain_name(name) || kind == NULL || !json_is_integer(size) || json_integer_value(size) < 0 ||
		    hex_decode32(json_string_value(json_object_get(f, "sha256")), r->sha) != 0)
			goto bad;
		snprintf(r->name, sizeof(r->name), "%s", name);
		r->size = (uint64_t)json_integer_value(size);
		if (strcmp(kind, "store") == 0) {
			r->kind = F_STORE;
			n_store++;
			w = snprintf(r->dest, sizeof(r->dest), "%s", o->store_path);
		} else if (strcmp(kind, "audit_segment") == 0) {
			char p[PATH_MAX];

			r->kind = F_SEGMENT;
			snprintf(p, sizeof(p), "%s", log_name);
			if (!audit_segment_seq(p, name, &seq) || seq == 0)
				goto bad;
			w = audit_segment_name(o->audit_path, seq, r->dest, sizeof(r->dest)) > 0 ? 0 : -1;
		} else if (strcmp(kind, "audit_current") == 0) {
			r->kind = F_CURRENT;
			n_cur++;
			w = snprintf(r->dest, sizeof(r->dest), "%s", o->audit_path);
		} else if (strcmp(kind, "audit_pubkey") == 0) {
			r->kind = F_PUBKEY;
			n_pub++;
			w = snprintf(r->dest, sizeof(r->dest), "%s.pub.pem", o->audit_path);
		} else {
			goto bad;
		}
		if (w < 0 || (size_t)w >= sizeof(r->dest) ||
		    snprintf(r->tmp, sizeof(r->tmp), "%s.restore-tmp", r->dest) >= (int)sizeof(r->tmp))
			goto bad;
	}
	if (n_store != 1 || n_cur != 1 || n_pub != 1)
		goto bad;
	*out = fs;
	*n_out = n;
	return KMS_OK;
bad:
	free(fs);
	return kms_errf(KMS_ERR_INVALID, "backup manifest: file entry %zu is not valid", i);
}

/* What already exists at the destination: the store (and its WAL files), the audit
 * log, any segment of it, its public key, a half-done rotation's "<log>.next". */
struct existing {
	char (*paths)[PATH_MAX];
	size_t n, cap;
};

static kms_err exist_add(struct existing *x, const char *path)
{
	struct stat st;

	if (lstat(path, &st) != 0)
		return errno == ENOENT ? KMS_OK : kms_errf(KMS_ERR_IO, "restore: %.200s: %s", path, strerror(errno));
	if (x->n == x->cap) {
		size_t cap = x->cap ? x->cap * 2 : 8;
		void *np = realloc(x->paths, cap * sizeof(*x->paths));
		if (np == NULL)
			return kms_errf(KMS_ERR_NOMEM, "restore: out of memory");
		x->paths = np;
		x->cap = cap;
	}
	snprintf(x->paths[x->n++], PATH_MAX, "%s", path);
	return KMS_OK;
}

static kms_err find_existing(const struct backup_restore_opts *o, struct existing *x)
{
	static const char *const store_sfx[] = {"", "-wal", "-shm", "-journal"};
	char p[PATH_MAX + 16], dir[PATH_MAX];
	struct dirent *e;
	kms_err rc = KMS_OK;
	DIR *d;

	for (size_t i = 0; i < sizeof(store_sfx) / sizeof(store_sfx[0]) && rc == KMS_OK; i++) {
		snprintf(p, sizeof(p), "%s%s", o->store_path, store_sfx[i]);
		rc = exist_add(x, p);
	}
	if (rc == KMS_OK)
		rc = exist_add(x, o->audit_path);
	if (rc == KMS_OK) {
		snprintf(p, sizeof(p), "%s.pub.pem", o->audit_path);
		rc = exist_add(x, p);
	}
	if (rc == KMS_OK) {
		snprintf(p, sizeof(p), "%s.next", o->audit_path);
		rc = exist_add(x, p);
	}
	dir_of(o->audit_path, dir, sizeof(dir));
	d = opendir(dir);
	if (d == NULL)
		return rc != KMS_OK ? rc : errno == ENOENT ? KMS_OK
							  : kms_errf(KMS_ERR_IO, "restore: cannot read %.200s: %s",
								     dir, strerror(errno));
	while (rc == KMS_OK && (e = readdir(d)) != NULL) {
		if (!audit_segment_seq(o->audit_path, e->d_name, NULL))
			continue;
		if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= (int)sizeof(p))
			rc = kms_errf(KMS_ERR_IO, "restore: path too long in %.200s", dir);
		else
			rc = exist_add(x, p);
	}
	closedir(d);
	return rc;
}

/* Moves path into the directory <its dir>/kmsd-pre-restore-<stamp>/ (made once). */
static kms_err move_aside(const char *path, const char *stamp, char *aside_out, size_t cap)
{
	char dir[PATH_MAX], aside[PATH_MAX + 64], to[PATH_MAX * 2];
	const char *base = strrchr(path, '/');

	base = base ? base + 1 : path;
	dir_of(path, dir, sizeof(dir));
	snprintf(aside, sizeof(aside), "%s/kmsd-pre-restore-%s", dir, stamp);
	if (mkdir(aside, 0700) != 0 && errno != EEXIST)
		return kms_errf(KMS_ERR_IO, "restore: cannot make %.200s: %s", aside, strerror(errno));
	snprintf(to, sizeof(to), "%s/%s", aside, base);
	if (rename(path, to) != 0)
		return kms_errf(KMS_ERR_IO, "restore: cannot move %.200s aside: %s", path, strerror(errno));
	if (kms_fsync_dir(aside) != 0 || kms_fsync_dir(dir) != 0)
		return kms_errf(KMS_ERR_IO, "restore: cannot sync %.200s: %s", dir, strerror(errno));
	if (snprintf(aside_out, cap, "%s", aside) >= (int)cap)
		aside_out[0] = '\0';
	return KMS_OK;
}

static kms_err restore_sign(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig, size_t cap,
			    size_t *len)
{
	return p11_audit_sign(ctx, digest, sig, cap, len);
}

/* Lists the master keys the token holds, for the refusal message. */
static void token_mks(struct p11 *p11, char *out, size_t cap)
{
	size_t used = 0;
	uint8_t fp[32];
	char fph[65], id[96];

	out[0] = '\0';
	for (uint32_t v = 1; v <= 64; v++) {
		if (p11_mk_fingerprint(p11, v, fp) != KMS_OK)
			continue;
		hex(fp, 32, fph);
		mk_identity(v, fph, id, sizeof(id));
		used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "%s%s", used ? ", " : "", id);
		if (used >= cap)
			break;
	}
	if (out[0] == '\0')
		snprintf(out, cap, "no master key");
}

kms_err backup_restore(struct p11 *p11, const struct backup_restore_opts *o)
{
	struct dec d = {.p11 = p11, .fd = -1};
	struct existing ex = {0};
	struct rfile *fs = NULL;
	size_t n_fs = 0, hdr_n;
	uint8_t lb[4], blob[P11_KEK_BLOB_LEN + 4], fp[32];
	char magic[8], *hdr = NULL, fph[65], want_fp[65] = "", idb[96], idt[96], created[40];
	char aside[PATH_MAX] = "", stamp[32], mks[1024];
	json_t *h = NULL, *m = NULL;
	uint8_t *man = NULL;
	uint32_t mk_version, man_n;
	uint64_t last_seq = 0;
	struct audit *au = NULL;
	kms_err rc, err;
	time_t now = time(NULL);
	struct tm tm;
	long bl;

	d.fd = open(o->archive, O_RDONLY | O_CLOEXEC);
	if (d.fd < 0)
		return kms_errf(KMS_ERR_IO, "cannot open %.200s: %s", o->archive, strerror(errno));
	/* the clear header */
	if (kms_read_full(d.fd, magic, 8) != 8 || memcmp(magic, BACKUP_MAGIC, 8) != 0) {
		rc = kms_errf(KMS_ERR_INVALID, "%.200s is not a kmsd backup archive (bad magic)", o->archive);
		goto out;
	}
	if (kms_read_full(d.fd, lb, 4) != 4 || (hdr_n = get_be32(lb)) == 0 || hdr_n > BACKUP_HEADER_MAX) {
		rc = kms_errf(KMS_ERR_INVALID, "%.200s: the backup header is damaged", o->archive);
		goto out;
	}
	hdr = malloc(hdr_n);
	if (hdr == NULL || kms_read_full(d.fd, hdr, hdr_n) != (ssize_t)hdr_n ||
	    (h = kms_json_parse_object(hdr, hdr_n, &err)) == NULL) {
		rc = kms_errf(KMS_ERR_INVALID, "%.200s: the backup header is damaged", o->archive);
		goto out;
	}
	{
		json_t *f = json_object_get(h, "format"), *v = json_object_get(h, "mk_version");
		const char *fps = json_string_value(json_object_get(h, "mk_fingerprint"));
		const char *kb = json_string_value(json_object_get(h, "key_blob"));

		if (!json_is_integer(f)) {
			rc = kms_errf(KMS_ERR_INVALID, "%.200s: the backup header is damaged", o->archive);
			goto out;
		}
		if (json_integer_value(f) != BACKUP_FORMAT) {
			rc = kms_errf(KMS_ERR_INVALID, "%.200s: backup format %lld is not one this kmsd reads (%d)",
				      o->archive, (long long)json_integer_value(f), BACKUP_FORMAT);
			goto out;
		}
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > UINT32_MAX ||
		    fps == NULL || strlen(fps) != 64 || kb == NULL ||
		    (bl = kms_b64_decode(kb, strlen(kb), blob, sizeof(blob))) != P11_KEK_BLOB_LEN) {
			rc = kms_errf(KMS_ERR_INVALID, "%.200s: the backup header is damaged", o->archive);
			goto out;
		}
		mk_version = (uint32_t)json_integer_value(v);
		snprintf(want_fp, sizeof(want_fp), "%s", fps);
	}
	{
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		    EVP_DigestUpdate(md, magic, 8) != 1 || EVP_DigestUpdate(md, lb, 4) != 1 ||
		    EVP_DigestUpdate(md, hdr, hdr_n) != 1 || EVP_DigestFinal_ex(md, d.hh, NULL) != 1) {
			EVP_MD_CTX_free(md);
			rc = kms_errf(KMS_ERR_INTERNAL, "restore: SHA-256 failed");
			goto out;
		}
		EVP_MD_CTX_free(md);
	}
	/* the master key: the same version with the same value, or a clear refusal */
	mk_identity(mk_version, want_fp, idb, sizeof(idb));
	rc = p11_mk_fingerprint(p11, mk_version, fp);
	if (rc == KMS_ERR_NOT_FOUND) {
		token_mks(p11, mks, sizeof(mks));
		kms_error("restore: this token holds %s", mks);
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "the backup was made under master key %s; this token does not hold it (its "
			      "master keys are listed above): restore on the backup's token or a copy of it",
			      idb);
		goto out;
	}
	if (rc != KMS_OK)
		goto out;
	hex(fp, 32, fph);
	if (CRYPTO_memcmp(fph, want_fp, 64) != 0) {
		mk_identity(mk_version, fph, idt, sizeof(idt));
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "the backup was made under master key %s, but this token's master key is %s: "
			      "another master key (another token?); refusing to restore",
			      idb, idt);
		goto out;
	}
	/* nothing is overwritten unless told */
	if ((rc = find_existing(o, &ex)) != KMS_OK)
		goto out;
	if (ex.n > 0 && !o->force) {
		char list[1024];
		size_t used = 0;

		for (size_t i = 0; i < ex.n && used < sizeof(list); i++)
			used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", ex.paths[i]);
		kms_error("restore: the target holds %zu files: %s", ex.n, list);
		rc = kms_errf(KMS_ERR_CONFLICT,
			      "the target is not empty (%zu files, listed above); nothing was changed. Stop kmsd, "
			      "then use --force to move them into kmsd-pre-restore-<time>/ beside them (nothing "
			      "is deleted)",
			      ex.n);
		goto out;
	}
	/* the archive key, unwrapped in the token */
	if ((rc = p11_mk_check(p11, mk_version)) != KMS_OK ||
	    (rc = p11_kek_load(p11, mk_version, blob, P11_KEK_BLOB_LEN, &d.k)) != KMS_OK) {
		if (rc == KMS_ERR_INVALID)
			rc = kms_errf(KMS_ERR_DECRYPT, "the backup's archive key does not unwrap under %s: the "
						       "header was altered",
				      idb);
		goto out;
	}
	d.pt = malloc(BACKUP_CHUNK + P11_GCM_TAG_LEN);
	d.ct = malloc(BACKUP_CHUNK + P11_GCM_TAG_LEN);
	if (d.pt == NULL || d.ct == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "restore: out of memory");
		goto out;
	}
	/* the manifest */
	if ((rc = dec_read(&d, lb, 4, -1, NULL)) != KMS_OK)
		goto out;
	man_n = get_be32(lb);
	if (man_n == 0 || man_n > BACKUP_MANIFEST_MAX) {
		rc = kms_errf(KMS_ERR_INVALID, "backup manifest: bad length %u", man_n);
		goto out;
	}
	man = malloc(man_n);
	if (man == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "restore: out of memory");
		goto out;
	}
	if ((rc = dec_read(&d, man, man_n, -1, NULL)) != KMS_OK)
		goto out;
	m = kms_json_parse_object((const char *)man, man_n, &err);
	if (m == NULL) {
		rc = kms_errf(KMS_ERR_INVALID, "backup manifest is not valid JSON");
		goto out;
	}
	if ((rc = manifest_check(m, o, mk_version, want_fp, &fs, &n_fs, &last_seq, created, sizeof(created))) !=
	    KMS_OK)
		goto out;
	/* every file to a temporary name beside its destination, checked as it comes */
	for (size_t i = 0; i < n_fs; i++) {
		struct rfile *r = &fs[i];
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		uint8_t got[32];
		int fd;

		(void)unlink(r->tmp); /* ours, left by an interrupted restore */
		fd = open(r->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
			  r->kind == F_PUBKEY ? 0644 : 0600);
		if (fd < 0 || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
			rc = kms_errf(KMS_ERR_IO, "restore: cannot create %.200s: %s", r->tmp, strerror(errno));
			if (fd >= 0)
				close(fd);
			EVP_MD_CTX_free(md);
			goto out;
		}
		r->staged = true;
		rc = dec_read(&d, NULL, r->size, fd, md);
		if (rc == KMS_OK && EVP_DigestFinal_ex(md, got, NULL) != 1)
			rc = kms_errf(KMS_ERR_INTERNAL, "restore: SHA-256 failed");
		EVP_MD_CTX_free(md);
		if (rc == KMS_OK && CRYPTO_memcmp(got, r->sha, 32) != 0)
			rc = kms_errf(KMS_ERR_DECRYPT, "backup archive: %s does not match its SHA-256 in the manifest",
				      r->name);
		if (rc == KMS_OK && (fchmod(fd, r->kind == F_PUBKEY ? 0644 : 0600) != 0 || fsync(fd) != 0))
			rc = kms_errf(KMS_ERR_IO, "restore: cannot sync %.200s: %s", r->tmp, strerror(errno));
		if (close(fd) != 0 && rc == KMS_OK)
			rc = kms_errf(KMS_ERR_IO, "restore: cannot write %.200s: %s", r->tmp, strerror(errno));
		if (rc != KMS_OK)
			goto out;
	}
	/* the end: the last chunk read is the final one, wholly used, and nothing follows */
	if (d.pos != d.len || !d.final) {
		rc = kms_errf(KMS_ERR_DECRYPT, "backup archive: data after the files the manifest lists");
		goto out;
	}
	if (kms_read_full(d.fd, lb, 1) != 0) {
		rc = kms_errf(KMS_ERR_DECRYPT, "backup archive: bytes after its final chunk");
		goto out;
	}
	/* everything checked: move the old files aside, put the new ones in place */
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	for (size_t i = 0; i < ex.n; i++)
		if ((rc = move_aside(ex.paths[i], stamp, aside, sizeof(aside))) != KMS_OK)
			goto out;
	for (size_t i = 0; i < n_fs; i++) {
		if (rename(fs[i].tmp, fs[i].dest) != 0) {
			rc = kms_errf(KMS_ERR_IO, "restore: cannot rename %.200s: %s", fs[i].tmp, strerror(errno));
			goto out;
		}
		fs[i].staged = false;
		if (kms_fsync_parent(fs[i].dest) != 0) {
			rc = kms_errf(KMS_ERR_IO, "restore: cannot sync the directory of %.200s: %s", fs[i].dest,
				      strerror(errno));
			goto out;
		}
	}
	/* the restore itself, chained onto the restored log and signed */
	{
		struct audit_options ao;
		struct audit_record ar = {0};
		char reason[1024];

		audit_options_init(&ao);
		ao.sign = restore_sign;
		ao.sign_ctx = p11;
		ao.checkpoint_seconds = 0;
		ao.expect_existing = true;
		if ((rc = audit_open_opts(o->audit_path, o->node_id, &ao, &au)) != KMS_OK)
			goto out;
		snprintf(reason, sizeof(reason),
			 "restored from a backup made %.40s (store schema %lld, audit log up to seq %llu); %s%.700s",
			 created, (long long)json_integer_value(json_object_get(m, "schema_version")),
			 (unsigned long long)last_seq,
			 aside[0] ? "the files found at the target were moved to " : "the target was empty",
			 aside);
		ar.principal = o->principal;
		ar.auth_method = "os";
		ar.operation = kms_op_name(KMS_OP_SYS_RESTORE);
		ar.outcome = "allow";
		ar.status = 200;
		ar.reason = reason;
		if ((rc = audit_append(au, &ar)) != KMS_OK || (rc = audit_checkpoint(au)) != KMS_OK)
			goto out;
	}
	kms_info("restore: %zu files from %s (backup of %s, audit up to seq %llu) are in place%s%s", n_fs,
		 o->archive, created, (unsigned long long)last_seq, aside[0] ? "; previous files kept in " : "",
		 aside);
	rc = KMS_OK;
out:
	audit_close(au);
	if (fs != NULL) {
		for (size_t i = 0; i < n_fs; i++)
			if (fs[i].staged)
				(void)unlink(fs[i].tmp);
		free(fs);
	}
	if (d.k != 0)
		p11_kek_unload(p11, d.k);
	if (d.pt != NULL) {
		kms_wipe(d.pt, BACKUP_CHUNK + P11_GCM_TAG_LEN);
		free(d.pt);
	}
	free(d.ct);
	if (man != NULL) {
		kms_wipe(man, man_n);
		free(man);
	}
	if (d.fd >= 0)
		close(d.fd);
	free(ex.paths);
	free(hdr);
	json_decref(h);
	json_decref(m);
	return rc;
}
