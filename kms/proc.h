/* Leaving root. kmsd reads what only root may read (PIN file, TLS key) and binds its
 * port as whoever started it, then becomes the configured `user` before it opens the
 * token, the store or the audit log, so that everything it creates belongs to that
 * account and nothing it serves runs as root. docs/SECURITY.md "Process hygiene".
 * Also the readiness notice for systemd (contrib/systemd/kmsd.service). */
#ifndef KMS_PROC_H
#define KMS_PROC_H

#include "kms/base/err.h"

/* Becomes `user` (the config option) for good.
 *   - started as root, user set: initgroups, setresgid, setresuid to the account;
 *     then checks that every uid and gid (real, effective, saved), the supplementary
 *     groups and the capability sets hold nothing of root and that setuid(0) fails,
 *     sets PR_SET_DUMPABLE 0 again (a credential change resets it to fs.suid_dumpable)
 *     and PR_SET_NO_NEW_PRIVS 1.
 *   - started as root, user "" : KMS_ERR_CONFIG (kmsd never runs as root by accident).
 *   - user names a uid 0 account ("root"): stays root, with a warning.
 *   - started as another account: KMS_ERR_CONFIG unless it is `user` (or user is "").
 * An unknown account, or one whose primary or supplementary groups include gid 0, is
 * KMS_ERR_CONFIG; a failed system call is KMS_ERR_INTERNAL. Call it before any thread
 * starts. The detail is fit for the operator. */
KMS_WUR kms_err kms_proc_drop(const char *user);

/* The checks of kms_proc_drop that need no change of ids (the account exists, this
 * process can become it, the root rules above), so that a bad `user` is reported
 * before anything else is read. Same errors. */
KMS_WUR kms_err kms_proc_check(const char *user);

/* Tells systemd (Type=notify) about a state change, e.g. "READY=1" once serving,
 * "STOPPING=1" at shutdown: one datagram to the unix socket named by NOTIFY_SOCKET
 * (a path, or "@name" in the abstract namespace), as sd_notify(3) does, without
 * libsystemd. Does nothing when NOTIFY_SOCKET is unset; a failure is logged, never
 * fatal (systemd then times the start out and says so). */
void kms_proc_notify(const char *state);

#endif
