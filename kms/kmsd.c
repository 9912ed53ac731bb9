/* kmsd: the key management server. `kmsd -c FILE [serve]`, `kmsd -c FILE init`, or
 * `kmsd -c FILE master-key rotate|status`. */
#include <errno.h>
#include <pwd.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/audit.h"
#include "kms/base/clock.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/config.h"
#include "kms/core/backup.h"
#include "kms/core/core.h"
#include "kms/http/server.h"
#include "kms/http/metrics_listen.h"
#include "kms/proc.h"
#include "kms/store/store.h"
#include "pkcs11/p11.h"
#include "policy/policy_doc.h"

/* The store as logs may name it: store_path, or store_uri without its password. */
static const char *store_label(const struct kms_config *cfg)
{
	static char buf[KMS_CONFIG_PATH_MAX];

	store_display_name(kms_config_store(cfg), buf, sizeof(buf));
	return buf;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kmsd [-c CONFIG] [serve]\n"
		   "       kmsd [-c CONFIG] init [--admin NAME] [--admin-token-file PATH]\n"
		   "       kmsd [-c CONFIG] master-key rotate [--so-pin-file PATH] [--batch N]\n"
		   "       kmsd [-c CONFIG] master-key status\n"
		   "       kmsd default-policy\n"
		   "       kmsd [-c CONFIG] restore --from FILE [--force]\n"
		   "       kmsd --version\n"
		   "\n"
		   "serve  start the HTTPS server (default)\n"
		   "init   create the master key in the token (needs so_pin_file), the store,\n"
		   "       and the first admin principal; its token is written to PATH\n"
		   "       (created 0600) or printed once on stdout\n"
		   "master-key rotate  make the next master key in the token (SO PIN from\n"
		   "       --so-pin-file or so_pin_file, a 0600 file), rewrap every tenant KEK\n"
		   "       under it in batches of N (default 100), destroy the old one; runs\n"
		   "       beside a serving kmsd; run it again to resume an interrupted rotation\n"
		   "master-key status  the active master key, rows per master key, and which\n"
		   "       master keys the token holds, as JSON\n"
		   "default-policy  print the built-in policy document (docs/POLICY.md), a\n"
		   "       starting point for a policy_file\n"
		   "restore  put a backup archive (kmsctl backup) back: the store, the audit\n"
		   "       segments and the audit public key, checked against the token's master\n"
		   "       key and every checksum; offline (stop kmsd first). Existing files are\n"
		   "       refused unless --force, which moves them into kmsd-pre-restore-<time>/\n"
		   "       beside them (nothing is deleted)\n"
		   "CONFIG defaults to ./kmsd.conf. Exit status: 0 ok, 1 error, 2 usage.\n");
}

/* No core dumps: they would hold DEKs, PINs and tokens. */
static void harden_process(void)
{
	struct rlimit rl = {0, 0};

	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static int read_pin(const struct kms_config *cfg, char **pin, size_t *len)
{
	if (cfg->pin_file[0]) {
		if (kms_secret_read_file(cfg->pin_file, pin, len) != 0) {
			kms_error("cannot read pin_file %s: %s (it must be a regular file of mode 0600)",
				  cfg->pin_file, strerror(errno));
			return -1;
		}
		return 0;
	}
	if (kms_secret_from_env(cfg->pin_env, pin, len) != 0) {
		kms_error("environment variable %s (pin_env) is not set", cfg->pin_env);
		return -1;
	}
	return 0;
}

/* Every command reads what may be root's alone (PIN files, the TLS key, a port below
 * 1024) first, then leaves root here, before it opens the token, the store or the audit
 * log: all of those are then the configured account's (docs/SECURITY.md). */
static int drop_root(const struct kms_config *cfg)
{
	kms_err err = kms_proc_drop(cfg->user);

	if (err != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		return -1;
	}
	return 0;
}

static struct p11_config p11cfg(const struct kms_config *cfg, unsigned sessions)
{
	struct p11_config pc = {cfg->pkcs11_module, cfg->token_label, sessions};
	return pc;
}

/* ---- audit signing (issue 5) ------------------------------------------------------
 * The token's kmsd-audit-sign key signs the log's checkpoints; its public key is kept
 * next to the log as <audit_path>.pub.pem (0644) for `kmsctl audit verify`. */
static kms_err audit_sign_p11(void *ctx, const uint8_t digest[AUDIT_HASH_LEN], uint8_t *sig,
			      size_t cap, size_t *len)
{
	return p11_audit_sign(ctx, digest, sig, cap, len);
}

/* Writes the public key unless the file already holds it. A file holding another key
 * is replaced only while the log is empty: otherwise it is what verifies the log. */
static int write_audit_pubkey(const struct kms_config *cfg, struct p11 *p11)
{
	char path[KMS_CONFIG_PATH_MAX + 16], tmp[KMS_CONFIG_PATH_MAX + 24], old[4096];
	char *pem = NULL;
	struct stat st;
	size_t n, len;
	int fd = -1, rc = -1;
	FILE *f;
	kms_err err;

	snprintf(path, sizeof(path), "%s.pub.pem", cfg->audit_path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	err = p11_audit_pubkey_pem(p11, &pem);
	if (err != KMS_OK) {
		kms_error("audit public key: %s", kms_err_detail(err));
		return -1;
	}
	len = strlen(pem);
	f = fopen(path, "re");
	if (f != NULL) {
		n = fread(old, 1, sizeof(old), f);
		fclose(f);
		if (n == len && memcmp(old, pem, len) == 0) {
			rc = 0;
			goto out;
		}
		if (stat(cfg->audit_path, &st) == 0 && st.st_size > 0) {
			kms_error("%s holds another public key than the token's %s, and it verifies "
				  "the existing log %s: archive the log and its key before using "
				  "another audit key",
				  path, "kmsd-audit-sign", cfg->audit_path);
			goto out;
		}
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0 || fchmod(fd, 0644) != 0 || write(fd, pem, len) != (ssize_t)len ||
	    fsync(fd) != 0 || close(fd) != 0) {
		kms_error("cannot write %s: %s", tmp, strerror(errno));
		if (fd >= 0)
			(void)close(fd);
		(void)unlink(tmp);
		goto out;
	}
	if (rename(tmp, path) != 0) {
		kms_error("cannot rename %s to %s: %s", tmp, path, strerror(errno));
		(void)unlink(tmp);
		goto out;
	}
	kms_info("audit public key written to %s", path);
	rc = 0;
out:
	free(pem);
	return rc;
}
/* ---- end audit signing ------------------------------------------------------------ */

static int cmd_init(const struct kms_config *cfg, const char *admin, const char *token_file)
{
	struct p11_config pc = p11cfg(cfg, 1);
	struct store *st = NULL;
	struct p11 *p11 = NULL;
	char *pin = NULL, *so_pin = NULL, token[128] = {0}, flag[8];
	size_t pin_len = 0, so_len = 0;
	int rc = 1, fd = -1;
	kms_err err;

	if (cfg->so_pin_file[0] == '\0') {
		kms_error("init needs so_pin_file in the configuration (the SO marks the master key trusted)");
		return 1;
	}
	if (read_pin(cfg, &pin, &pin_len) != 0)
		goto out;
	if (kms_secret_read_file(cfg->so_pin_file, &so_pin, &so_len) != 0) {
		kms_error("cannot read so_pin_file %s: %s", cfg->so_pin_file, strerror(errno));
		goto out;
	}
	if (drop_root(cfg) != 0)
		goto out;
	err = store_open(kms_config_store(cfg), &st);
	if (err != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	err = store_meta_get(st, "initialized", flag, sizeof(flag));
	if (err == KMS_OK) {
		fprintf(stderr, "kmsd: store already initialized (%s)\n", store_label(cfg));
		goto out;
	}
	if (err != KMS_ERR_NOT_FOUND) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	err = p11_provision(&pc, so_pin, so_len, pin, pin_len);
	if (err == KMS_ERR_CONFLICT) {
		kms_warn("the token already holds a master key; using it");
	} else if (err != KMS_OK) {
		kms_error("provisioning the token failed: %s", kms_err_detail(err));
		goto out;
	}
	/* audit signing (issue 5): export the checkpoint key's public half */
	err = p11_open(&pc, pin, pin_len, &p11);
	if (err != KMS_OK) {
		kms_error("token: %s", kms_err_detail(err));
		goto out;
	}
	if (write_audit_pubkey(cfg, p11) != 0)
		goto out;
	/* the admin's principal and token rows are MAC'd as they are written */
	core_rowmac_attach_p11(st, p11);
	if (token_file != NULL) {
		fd = open(token_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0) {
			kms_error("cannot create %s: %s", token_file, strerror(errno));
			goto out;
		}
	}
	err = core_bootstrap_admin(st, admin, token, sizeof(token));
	if (err != KMS_OK) {
		kms_error("creating admin principal \"%s\" failed: %s", admin, kms_err_detail(err));
		goto out;
	}
	/* The token reaches its file (or stdout) before the store says "initialized": if it
	 * cannot be handed over, init fails and can be run again (it then gives the same
	 * admin principal a new token). */
	if (fd >= 0) {
		size_t n = strlen(token);
		if (write(fd, token, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
			kms_error("writing %s failed: %s", token_file, strerror(errno));
			goto out;
		}
	} else if (printf("%s\n", token) < 0 || fflush(stdout) != 0) {
		kms_error("could not print the admin token: %s", strerror(errno));
		goto out;
	}
	{
		size_t sealed = 0;
		bool first = false;

		/* every authority row has its MAC from the start: no trust on first use later */
		err = store_authmac_init(st, &sealed, &first);
		if (err != KMS_OK) {
			kms_error("store: %s", kms_err_detail(err));
			goto out;
		}
	}
	err = store_meta_set(st, "initialized", "1");
	if (err != KMS_OK) {
		kms_error("store: %s", kms_err_detail(err));
		goto out;
	}
	if (fd >= 0)
		printf("kmsd: initialized; admin token for \"%s\" written to %s\n", admin, token_file);
	else
		fprintf(stderr, "kmsd: initialized; the admin token above is shown once: store it now\n");
	rc = 0;
out:
	if (fd >= 0) {
		close(fd);
		if (rc != 0)
			(void)unlink(token_file); /* ours, incomplete: let init run again */
	}
	kms_wipe(token, sizeof(token));
	kms_secret_free(pin);
	kms_secret_free(so_pin);
	core_rowmac_attach_p11(st, NULL);
	store_close(st);
	p11_close(p11);
	return rc;
}

/* ---- master-key rotation (issue 3) --------------------------------------------------
 * A process of its own, beside the serving kmsd: the SO ceremony logs this process's
 * user out, which in kmsd would destroy every serving copy (session objects), and the
 * SO PIN never has to be given to the server. The steps are recorded in the store
 * (master_key_events), which kmsd relays into its audit log: the audit file has one
 * writer, the server. docs/KEY-LIFECYCLE.md "Master-key rotation". */

/* "os:<login>" of whoever runs the command, for the recorded steps. */
static void os_principal(char *buf, size_t cap)
{
	struct passwd pw, *res = NULL;
	char tmp[1024];

	if (getpwuid_r(getuid(), &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
		snprintf(buf, cap, "os:%.100s", res->pw_name);
	else
		snprintf(buf, cap, "os:uid-%u", (unsigned)getuid());
}

static void mk_progress(void *ctx, uint64_t moved, uint64_t remaining)
{
	(void)ctx;
	printf("kmsd: master-key rotation: %llu key versions rewrapped, %llu to go\n",
	       (unsigned long long)moved, (unsigned long long)remaining);
	fflush(stdout);
}

static int open_initialized_store(const struct kms_config *cfg, struct store **st)
{
	char flag[8];
	kms_err err = store_open(kms_config_store(cfg), st);

	if (err == KMS_OK) {
		err = store_meta_get(*st, "initialized", flag, sizeof(flag));
		if (err == KMS_ERR_NOT_FOUND) {
			kms_error("store %s is not initialized: run `kmsd -c CONFIG init` first", store_label(cfg));
			return -1;
		}
	}
	if (err != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		return -1;
	}
	return 0;
}

static int cmd_mk_rotate(const struct kms_config *cfg, const char *so_pin_path, long batch)
{
	struct p11_config pc = p11cfg(cfg, 1);
	struct core_mk_opts o = {0};
	struct store_mk_status ms;
	struct store *st = NULL;
	struct p11 *p11 = NULL;
	char who[128], detail[STORE_REASON_MAX + 1];
	char *pin = NULL, *so_pin = NULL;
	size_t pin_len = 0, so_len = 0;
	const char *delay = getenv("KMSD_TEST_MK_BATCH_DELAY_MS");
	uint32_t from, to;
	int rc = 1, so_errno = ENOENT, lock_fd = -1;
	struct store_watch *mk_lease = NULL;
	kms_err err;

	os_principal(who, sizeof(who));
	o.batch = (size_t)batch;
	o.principal = who;
	o.progress = mk_progress;
	if (delay != NULL && *delay != '\0') {
		o.test_delay_ms = (unsigned)strtoul(delay, NULL, 10);
		kms_warn("KMSD_TEST_MK_BATCH_DELAY_MS is set: each batch waits %u ms before its commit. "
			 "Never in production.", o.test_delay_ms);
	}
	/* Both PINs before leaving root; the SO PIN is needed only when not resuming, so
	 * a failure to read it is reported then. */
	if (read_pin(cfg, &pin, &pin_len) != 0)
		goto out;
	if (so_pin_path != NULL && *so_pin_path != '\0' &&
	    kms_secret_read_file(so_pin_path, &so_pin, &so_len) != 0)
		so_errno = errno;
	if (drop_root(cfg) != 0)
		goto out;
	if (open_initialized_store(cfg, &st) != 0)
		goto out;
	/* One rotation at a time: two would each make a new master key in the token. The
	 * lock lives beside the store and goes with the process, however it ends. On a
	 * PostgreSQL store (several nodes, no shared file) it is a cluster-wide lease, a
	 * session advisory lock that ends with this process's connection. */
	if (cfg->store_uri[0] != '\0') {
		bool held = false;

		if ((err = store_watch_open(cfg->store_uri, &mk_lease)) != KMS_OK ||
		    (err = store_watch_lease(mk_lease, "kmsd master-key rotate", &held)) != KMS_OK) {
			kms_error("master-key rotate: store %s: %s", store_label(cfg), kms_err_detail(err));
			goto out;
		}
		if (!held) {
			kms_error("master-key rotate: another master-key rotation is running");
			goto out;
		}
	} else {
		char lpath[sizeof(cfg->store_path) + 16];

		snprintf(lpath, sizeof(lpath), "%s.mkrotate.lock", cfg->store_path);
		lock_fd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
			kms_error("master-key rotate: %s: %s", lpath,
				  lock_fd >= 0 && errno == EWOULDBLOCK ? "another master-key rotation is running"
								       : strerror(errno));
			goto out;
		}
	}
	if ((err = store_mk_status(st, &ms)) != KMS_OK) {
		kms_error("store: %s", kms_err_detail(err));
		goto out;
	}
	if (ms.retiring != 0) {
		kms_secret_free(so_pin);
		so_pin = NULL;
		/* Resuming needs no SO: the new key exists and the store says which it is. */
		from = ms.retiring;
		to = ms.active;
		printf("kmsd: resuming the master-key rotation from version %u to %u\n", from, to);
	} else {
		from = ms.active;
		to = ms.highest + 1;
		if (to == 0) {
			kms_error("no master key version is left above %u", ms.highest);
			goto out;
		}
		if (so_pin_path == NULL || *so_pin_path == '\0') {
			kms_error("master-key rotate needs the SO PIN (the SO marks the new master key trusted): "
				  "--so-pin-file PATH or so_pin_file in the configuration");
			goto out;
		}
		if (so_pin == NULL) {
			kms_error("cannot read the SO PIN file %s: %s (it must be a regular file of mode 0600)",
				  so_pin_path, strerror(so_errno));
			goto out;
		}
		printf("kmsd: rotating the master key from version %u to %u\n", from, to);
		err = p11_mk_create(&pc, to, so_pin, so_len, pin, pin_len);
		kms_secret_free(so_pin);
		so_pin = NULL;
		if (err == KMS_ERR_CONFLICT) {
			kms_warn("master key version %u is already in the token (left by an interrupted run); "
				 "using it", to);
			err = KMS_OK;
		} else if (err == KMS_OK) {
			snprintf(detail, sizeof(detail), "master key version %u created in the token (SO ceremony)", to);
			if (core_mk_record(st, &o, to, "mk_created", detail) != KMS_OK)
				kms_warn("could not record the step in the store");
		}
		if (err != KMS_OK) {
			snprintf(detail, sizeof(detail), "creating master key version %u failed: %s", to,
				 kms_err_detail(err));
			kms_error("%s; nothing was changed", detail);
			if (core_mk_record(st, &o, to, "rotate_refused", detail) != KMS_OK)
				kms_warn("could not record the refusal in the store");
			goto out;
		}
	}
	err = p11_open(&pc, pin, pin_len, &p11);
	kms_secret_free(pin);
	pin = NULL;
	if (err != KMS_OK) {
		kms_error("token: %s", kms_err_detail(err));
		goto out;
	}
	if ((err = p11_mk_check(p11, to)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if (ms.retiring == 0) {
		if ((err = p11_mk_check(p11, from)) != KMS_OK) {
			kms_error("the active master key: %s", kms_err_detail(err));
			goto out;
		}
		/* From here on the serving kmsd wraps new KEKs under `to`. */
		if ((err = core_mk_begin(st, &o, from, to)) != KMS_OK) {
			kms_error("store: %s", kms_err_detail(err));
			goto out;
		}
	}
	err = core_mk_rotate_rows(st, p11, from, to, &o);
	if (err != KMS_OK) {
		kms_error("master-key rotation stopped: %s; run `kmsd master-key rotate` again to resume",
			  kms_err_detail(err));
		goto out;
	}
	printf("kmsd: master-key rotation complete: every key version is wrapped under master key version %u; "
	       "version %u is destroyed\n",
	       to, from);
	rc = 0;
out:
	p11_close(p11);
	store_close(st);
	if (lock_fd >= 0)
		close(lock_fd); /* releases the lock */
	store_watch_close(mk_lease); /* releases the lease */
	kms_secret_free(pin);
	kms_secret_free(so_pin);
	return rc;
}

static int cmd_mk_status(const struct kms_config *cfg)
{
	struct p11_config pc = p11cfg(cfg, 1);
	struct store_mk_status ms;
	struct store *st = NULL;
	struct p11 *p11 = NULL;
	json_t *out = NULL, *rows, *tok;
	char *pin = NULL, *text = NULL, num[16];
	size_t pin_len = 0;
	int rc = 1;
	kms_err err;

	if (read_pin(cfg, &pin, &pin_len) != 0 || drop_root(cfg) != 0)
		goto out;
	if (open_initialized_store(cfg, &st) != 0)
		goto out;
	if ((err = store_mk_status(st, &ms)) != KMS_OK) {
		kms_error("store: %s", kms_err_detail(err));
		goto out;
	}
	err = p11_open(&pc, pin, pin_len, &p11);
	kms_secret_free(pin);
	pin = NULL;
	if (err != KMS_OK) {
		kms_error("token: %s", kms_err_detail(err));
		goto out;
	}
	out = json_object();
	rows = json_object();
	tok = json_object();
	if (out == NULL || rows == NULL || tok == NULL) {
		json_decref(rows);
		json_decref(tok);
		goto out;
	}
	for (size_t i = 0; i < ms.n_counts; i++) {
		snprintf(num, sizeof(num), "%u", ms.counts[i].mk_version);
		json_object_set_new(rows, num, json_integer((json_int_t)ms.counts[i].rows));
	}
	/* One past the highest: a key left in the token by a rotation that stopped before
	 * the store recorded it. */
	for (uint32_t v = 1; v <= ms.highest + 1 && v != 0; v++) {
		err = p11_mk_check(p11, v);
		snprintf(num, sizeof(num), "%u", v);
		json_object_set_new(tok, num, err == KMS_OK ? json_string("present")
					      : err == KMS_ERR_NOT_FOUND ? json_string("absent")
									 : json_string(kms_err_detail(err)));
	}
	json_object_set_new(out, "active", json_integer(ms.active));
	json_object_set_new(out, "rotation_in_progress", json_boolean(ms.retiring != 0));
	json_object_set_new(out, "retiring", ms.retiring ? json_integer(ms.retiring) : json_null());
	json_object_set_new(out, "key_versions_by_master_key", rows);
	json_object_set_new(out, "destroyed_key_versions", json_integer((json_int_t)ms.destroyed_rows));
	json_object_set_new(out, "token_master_keys", tok);
	text = json_dumps(out, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (text == NULL || printf("%s\n", text) < 0 || fflush(stdout) != 0)
		goto out;
	rc = 0;
out:
	kms_json_free_str(text, 0);
	json_decref(out);
	p11_close(p11);
	store_close(st);
	kms_secret_free(pin);
	return rc;
}
/* ---- end master-key rotation ------------------------------------------------------- */

/* ---- restore (issue 9) -------------------------------------------------------------
 * Offline: the archive is checked whole before anything is put in place
 * (kms/core/backup.c, docs/OPERATIONS.md "Backup and restore").
 *
 * "<store_path>.serve.lock": every serving kmsd holds a shared flock on it for its life;
 * restore takes it exclusively, so it refuses while any kmsd serves on the store (and a
 * kmsd started during a restore waits for nothing: it refuses to start). */
static int serve_lock(const struct kms_config *cfg, bool exclusive)
{
	char path[sizeof(cfg->store_path) + 16];
	int fd;

	snprintf(path, sizeof(path), "%s.serve.lock", cfg->store_path);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		kms_error("cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK)
			kms_error("%s", exclusive ? "kmsd is serving on this store: stop it before a restore"
						  : "a restore is running on this store: start kmsd when it is done");
		else
			kms_error("cannot lock %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd; /* the lock lasts until the process exits */
}

static int cmd_restore(const struct kms_config *cfg, const char *from, bool force)
{
	struct p11_config pc = p11cfg(cfg, 1);
	struct backup_restore_opts o = {0};
	struct p11 *p11 = NULL;
	char who[128], *pin = NULL;
	size_t pin_len = 0;
	kms_err err;
	int rc = 1, lock_fd = -1;

	if (from == NULL || *from == '\0') {
		fprintf(stderr, "kmsd: restore needs --from FILE (an archive made by kmsctl backup)\n");
		return 2;
	}
	if (cfg->store_uri[0] != '\0') {
		fprintf(stderr, "kmsd: restore is for the SQLite store (store_path); a PostgreSQL store "
				"(store_uri) is restored with PostgreSQL's own tools (pg_restore, PITR), see "
				"docs/OPERATIONS.md \"PostgreSQL store\"\n");
		return 1;
	}
	os_principal(who, sizeof(who));
	if (read_pin(cfg, &pin, &pin_len) != 0 || drop_root(cfg) != 0)
		goto out;
	if ((lock_fd = serve_lock(cfg, true)) < 0) {
		fprintf(stderr, "kmsd: restore refused: kmsd must not serve on %s during a restore\n",
			cfg->store_path);
		goto out;
	}
	err = p11_open(&pc, pin, pin_len, &p11);
	kms_secret_free(pin);
	pin = NULL;
	if (err != KMS_OK) {
		kms_error("token: %s", kms_err_detail(err));
		goto out;
	}
	o.archive = from;
	o.store_path = cfg->store_path;
	o.audit_path = cfg->audit_path;
	o.node_id = cfg->node_id;
	o.principal = who;
	o.force = force;
	err = backup_restore(p11, &o);
	if (err != KMS_OK) {
		fprintf(stderr, "kmsd: restore refused: %s\n", kms_err_detail(err));
		goto out;
	}
	printf("kmsd: restored %s into %s and %s; start kmsd, then check the log with kmsctl audit verify\n",
	       from, cfg->store_path, cfg->audit_path);
	rc = 0;
out:
	p11_close(p11);
	kms_secret_free(pin);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}
/* ---- end restore ------------------------------------------------------------------- */

static int write_port_file(const char *path, int port)
{
	char tmp[KMS_CONFIG_PATH_MAX + 8];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "%d\n", port);
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, path);
}

static int cmd_serve(const struct kms_config *cfg)
{
	unsigned workers = kms_config_workers(cfg);
	struct p11_config pc = p11cfg(cfg, workers + 2);
	struct store *st = NULL;
	struct audit *au = NULL;
	struct audit_options aopt;
	struct p11 *p11 = NULL;
	struct core *core = NULL;
	struct http_server *http = NULL;
	struct metrics_listener *mlisten = NULL;
	int mport = 0;
	char *pin = NULL, flag[96], started_key[96];
	bool legacy = false;
	size_t pin_len = 0;
	sigset_t set;
	int port = 0, sig = 0, rc = 1;
	kms_err err;

	/* Signals are taken by sigwait below; block them before any thread starts. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* As whoever started kmsd: the PIN, the TLS key and the socket. Connections wait in
	 * the listen backlog until http_start. */
	if (read_pin(cfg, &pin, &pin_len) != 0)
		goto out;
	if ((err = http_prepare(cfg, &http, &port)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if (cfg->metrics_listen[0] && (err = metrics_listen_prepare(cfg, &mlisten, &mport)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if (drop_root(cfg) != 0)
		goto out;
	/* held for the process's life: a restore refuses while any kmsd serves (issue 9);
	 * not for a PostgreSQL store, which kmsd restore does not handle */
	if (cfg->store_uri[0] == '\0' && serve_lock(cfg, false) < 0)
		goto out;
	if ((err = store_open(kms_config_store(cfg), &st)) != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	/* this node's id goes with its changes into a shared store's change log */
	if ((err = store_set_node(st, cfg->node_id)) != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	err = store_meta_get(st, "initialized", flag, sizeof(flag));
	if (err == KMS_ERR_NOT_FOUND) {
		kms_error("store %s is not initialized: run `kmsd -c CONFIG init` first", store_label(cfg));
		goto out;
	}
	if (err != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	err = p11_open(&pc, pin, pin_len, &p11);
	kms_secret_free(pin);
	pin = NULL;
	if (err != KMS_OK) {
		kms_error("token: %s", kms_err_detail(err));
		goto out;
	}
	/* The master key new KEKs are wrapped under must be in the token; the one a
	 * rotation is retiring should be, while rows still need it. */
	{
		struct store_mk_status ms;

		if ((err = store_mk_status(st, &ms)) != KMS_OK) {
			kms_error("store: %s", kms_err_detail(err));
			goto out;
		}
		if ((err = p11_mk_check(p11, ms.active)) != KMS_OK) {
			kms_error("token: the active master key (version %u): %s (run kmsd init?)", ms.active,
				  kms_err_detail(err));
			goto out;
		}
		if (ms.retiring != 0) {
			kms_warn("a master-key rotation from version %u to %u is in progress: run `kmsd master-key "
				 "rotate` to finish it (kmsd serves meanwhile)",
				 ms.retiring, ms.active);
			if (p11_mk_check(p11, ms.retiring) != KMS_OK)
				kms_warn("master key version %u: %s", ms.retiring, kms_err_detail(KMS_ERR_NOT_FOUND));
		}
	}
	/* The log is opened after the token, whose key signs its checkpoints. */
	if (write_audit_pubkey(cfg, p11) != 0)
		goto out;
	audit_options_init(&aopt);
	aopt.sign = audit_sign_p11;
	aopt.sign_ctx = p11;
	aopt.checkpoint_records = (unsigned)cfg->audit_checkpoint_records;
	aopt.checkpoint_seconds = (unsigned)cfg->audit_checkpoint_seconds;
	aopt.segment_bytes = (uint64_t)cfg->audit_segment_mb << 20;
	aopt.segment_seconds = (unsigned)cfg->audit_segment_seconds;
	aopt.syslog_target = cfg->audit_syslog;
	/* Whether this node has written an audit log before: "audit_started:<node_id>" in
	 * the store (nodes sharing a store each keep a log of their own). A store from before
	 * the per-node key has "audit_started" = "1": the first node to start on it claims
	 * that log (and marks the old key claimed), so a node added later starts a new chain. */
	snprintf(started_key, sizeof(started_key), "audit_started:%s", cfg->node_id);
	err = store_meta_get(st, started_key, flag, sizeof(flag));
	if (err == KMS_ERR_NOT_FOUND) {
		err = store_meta_get(st, "audit_started", flag, sizeof(flag));
		if (err == KMS_OK && strcmp(flag, "1") != 0)
			err = KMS_ERR_NOT_FOUND; /* claimed by another node */
		legacy = err == KMS_OK;
	}
	if (err != KMS_OK && err != KMS_ERR_NOT_FOUND) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	aopt.expect_existing = err == KMS_OK;
	if ((err = audit_open_opts(cfg->audit_path, cfg->node_id, &aopt, &au)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if ((!aopt.expect_existing || legacy) && (err = store_meta_set(st, started_key, "1")) != KMS_OK) {
		kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
		goto out;
	}
	if (legacy) {
		snprintf(flag, sizeof(flag), "claimed by %s", cfg->node_id);
		if ((err = store_meta_set(st, "audit_started", flag)) != KMS_OK) {
			kms_error("store %s: %s", store_label(cfg), kms_err_detail(err));
			goto out;
		}
	}
	if ((err = core_new(st, p11, au, &core)) != KMS_OK)
		goto out;
	{
		struct core_options copt = {
			.phi_retention_floor = (int64_t)cfg->phi_retention_floor_days * 86400,
			.max_encryptions = (uint64_t)cfg->max_encryptions_per_version,
			.principal_rps = cfg->rate_limit_rps,
			.principal_burst = cfg->rate_limit_burst,
			.op_limits = cfg->rate_limit_ops,
			.auth_fail_rps = cfg->auth_fail_rps,
			.auth_fail_burst = cfg->auth_fail_burst,
			.audit_hmac_cache = (size_t)cfg->audit_hmac_cache,
			.mfa_max_failures = (unsigned)cfg->mfa_max_failures,
			.approval_ttl = cfg->approval_ttl,
			.break_glass_max_ttl = cfg->break_glass_max_ttl,
			.break_glass_reviews = (unsigned)cfg->break_glass_reviews,
		};
		if ((err = core_configure(core, &copt)) != KMS_OK) {
			kms_error("%s", kms_err_detail(err));
			goto out;
		}
	}
	if ((err = core_policy_init(core, cfg->policy_file)) != KMS_OK) {
		kms_error("policy: %s", kms_err_detail(err));
		goto out;
	}
	/* One node: a request a crash left executing is marked interrupted. Several nodes
	 * (PostgreSQL): another node may be executing it right now, so only those of runs
	 * that ended are marked: by core_cluster_start, and by the scheduler's holder each
	 * round (docs/SCALE-OUT.md "Approvals left executing"). */
	if (store_backend(st) == STORE_BACKEND_SQLITE)
		core_approvals_interrupted(core, NULL);
	if ((err = core_cluster_start(core, kms_config_store(cfg), cfg->node_id, (unsigned)cfg->cluster_sync_ms)) != KMS_OK) {
		kms_error("cluster: %s", kms_err_detail(err));
		goto out;
	}
	if ((err = core_scheduler_start(core, (unsigned)cfg->scheduler_interval)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if (kms_clock_is_test())
		kms_warn("KMSD_TEST_CLOCK_FILE is set: time is shifted by a test file. Never in production.");
	if ((err = http_start(http, cfg, core)) != KMS_OK) {
		kms_error("%s", kms_err_detail(err));
		goto out;
	}
	if (cfg->port_file[0] && write_port_file(cfg->port_file, port) != 0) {
		kms_error("cannot write port_file %s: %s", cfg->port_file, strerror(errno));
		goto out;
	}
	kms_info("listening on %s://%s:%d (%u workers, node %s)", cfg->tls ? "https" : "http",
		 cfg->listen_address, port, workers, cfg->node_id);
	if (mlisten != NULL) {
		if ((err = metrics_listen_start(mlisten, core)) != KMS_OK) {
			kms_error("%s", kms_err_detail(err));
			goto out;
		}
		if (cfg->metrics_port_file[0] && write_port_file(cfg->metrics_port_file, mport) != 0) {
			kms_error("cannot write metrics_port_file %s: %s", cfg->metrics_port_file, strerror(errno));
			goto out;
		}
		kms_info("metrics on http://%s (GET /metrics, port %d, no token)", cfg->metrics_listen, mport);
	}
	kms_proc_notify("READY=1\nSTATUS=serving");
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			kms_info("SIGHUP: nothing to reload yet");
			continue;
		}
		break;
	}
	kms_info("signal %d: shutting down", sig);
	kms_proc_notify("STOPPING=1");
	rc = 0;
out:
	metrics_listen_stop(mlisten);
	http_stop(http);
	core_free(core);
	/* audit signing (issue 5): sign the tail while the token is still open */
	if (au != NULL && audit_healthy(au) && (err = audit_checkpoint(au)) != KMS_OK)
		kms_warn("audit: final checkpoint: %s", kms_err_detail(err));
	audit_close(au);
	p11_close(p11);
	store_close(st);
	kms_secret_free(pin);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"admin", required_argument, NULL, 'a'},
		{"admin-token-file", required_argument, NULL, 't'},
		{"so-pin-file", required_argument, NULL, 's'},
		{"batch", required_argument, NULL, 'b'},
		{"from", required_argument, NULL, 'f'},
		{"force", no_argument, NULL, 'F'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = "kmsd.conf", *admin = "admin", *token_file = NULL, *cmd = "serve";
	const char *so_pin_file = NULL, *sub = NULL, *from = NULL;
	bool force = false;
	long batch = 100;
	char *end;
	struct kms_config cfg;
	kms_err err;
	int c;

	harden_process();
	kms_json_init();
	while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config = optarg; break;
		case 'a': admin = optarg; break;
		case 't': token_file = optarg; break;
		case 's': so_pin_file = optarg; break;
		case 'f': from = optarg; break;
		case 'F': force = true; break;
		case 'b':
			errno = 0;
			batch = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || batch < 1 || batch > 10000) {
				fprintf(stderr, "kmsd: --batch must be 1..10000\n");
				return 2;
			}
			break;
		case 'V': printf("kmsd %s\n", KMS_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc)
		cmd = argv[optind++];
	if (strcmp(cmd, "default-policy") == 0 && optind == argc) {
		fputs(policy_doc_default_json, stdout);
		return fflush(stdout) == 0 ? 0 : 1;
	}
	if (strcmp(cmd, "master-key") == 0 && optind < argc)
		sub = argv[optind++];
	if (optind < argc ||
	    (strcmp(cmd, "serve") != 0 && strcmp(cmd, "init") != 0 && strcmp(cmd, "master-key") != 0 &&
	     strcmp(cmd, "restore") != 0) ||
	    (strcmp(cmd, "master-key") == 0 &&
	     (sub == NULL || (strcmp(sub, "rotate") != 0 && strcmp(sub, "status") != 0)))) {
		usage(stderr);
		return 2;
	}
	err = kms_config_load(config, &cfg);
	if (err == KMS_OK)
		err = kms_config_validate(&cfg);
	if (err == KMS_OK)
		err = kms_proc_check(cfg.user);
	if (err != KMS_OK) {
		fprintf(stderr, "kmsd: %s\n", kms_err_detail(err));
		return 1;
	}
	kms_log_set_level(strcmp(cfg.log_level, "debug") == 0   ? KMS_LOG_DEBUG
			  : strcmp(cfg.log_level, "warn") == 0  ? KMS_LOG_WARN
			  : strcmp(cfg.log_level, "error") == 0 ? KMS_LOG_ERROR
								: KMS_LOG_INFO);
	if (strcmp(cmd, "init") == 0)
		return cmd_init(&cfg, admin, token_file);
	if (strcmp(cmd, "restore") == 0)
		return cmd_restore(&cfg, from, force);
	if (strcmp(cmd, "master-key") == 0 && strcmp(sub, "rotate") == 0)
		return cmd_mk_rotate(&cfg, so_pin_file != NULL ? so_pin_file : cfg.so_pin_file, batch);
	if (strcmp(cmd, "master-key") == 0)
		return cmd_mk_status(&cfg);
	return cmd_serve(&cfg);
}
