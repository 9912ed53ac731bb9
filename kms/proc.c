/* Leaving root for the configured account, and sd_notify; see proc.h. */
#include "kms/proc.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "kms/base/log.h"

#define MAX_GROUPS 256

/* Non-zero when the process holds any capability in its permitted, effective or
 * inheritable set. Raw capget: one call does not justify libcap. */
static int holds_capabilities(void)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	memset(data, 0, sizeof(data));
	if (syscall(SYS_capget, &hdr, data) != 0)
		return 1; /* cannot tell: treat as held */
	for (size_t i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
		if (data[i].permitted != 0 || data[i].effective != 0 || data[i].inheritable != 0)
			return 1;
	return 0;
}

/* What the drop must have achieved, checked rather than assumed. */
static kms_err check_dropped(const struct passwd *pw)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg, groups[MAX_GROUPS];
	int n;

	if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: cannot read the process ids: %s", strerror(errno));
	if (ru != pw->pw_uid || eu != pw->pw_uid || su != pw->pw_uid || rg != pw->pw_gid ||
	    eg != pw->pw_gid || sg != pw->pw_gid)
		return kms_errf(KMS_ERR_INTERNAL, "user: the process ids are not all %s's after the switch",
				pw->pw_name);
	n = getgroups(MAX_GROUPS, groups);
	if (n < 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: cannot read the groups: %s", strerror(errno));
	for (int i = 0; i < n; i++)
		if (groups[i] == 0)
			return kms_errf(KMS_ERR_CONFIG, "user: %s is a member of group 0 (root); "
					"kmsd will not run with it", pw->pw_name);
	/* Both must fail with EPERM: nothing of root is left to go back to. */
	if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0 || setegid(0) == 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: the process could become root again after the switch");
	if (holds_capabilities())
		return kms_errf(KMS_ERR_INTERNAL, "user: the process still holds capabilities after the switch "
				"(securebits keep them?)");
	return KMS_OK;
}

/* What kms_proc_drop will do: *do_switch = 1 to become pw, 0 to stay as we are. */
static kms_err plan(const char *user, struct passwd *pw, char *buf, size_t cap, int *do_switch)
{
	struct passwd *res = NULL;
	uid_t euid = geteuid();
	int rc;

	*do_switch = 0;
	if (user == NULL || user[0] == '\0') {
		if (euid == 0 || getuid() == 0)
			return kms_errf(KMS_ERR_CONFIG,
					"user: kmsd was started as root and `user` is not set: set it to the "
					"account kmsd should run as (e.g. user = kmsd), or start kmsd as "
					"that account (user = root keeps root; not recommended)");
		return KMS_OK;
	}
	rc = getpwnam_r(user, pw, buf, cap, &res);
	if (rc != 0)
		return kms_errf(KMS_ERR_CONFIG, "user: cannot look up \"%s\": %s", user, strerror(rc));
	if (res == NULL)
		return kms_errf(KMS_ERR_CONFIG, "user: no such user \"%s\"", user);
	if (euid != 0 || getuid() != 0) {
		if (pw->pw_uid == euid && pw->pw_uid == getuid())
			return KMS_OK; /* already that account (systemd User=, sudo -u) */
		return kms_errf(KMS_ERR_CONFIG,
				"user: kmsd runs as uid %u, not as %s (uid %u), and only root can switch: "
				"start it as root or as %s",
				(unsigned)euid, user, (unsigned)pw->pw_uid, user);
	}
	if (pw->pw_uid == 0)
		return KMS_OK;
	if (pw->pw_gid == 0)
		return kms_errf(KMS_ERR_CONFIG, "user: %s has group 0 (root) as its primary group; give it a "
				"group of its own", user);
	*do_switch = 1;
	return KMS_OK;
}

kms_err kms_proc_check(const char *user)
{
	struct passwd pw;
	char buf[4096];
	int do_switch;

	return plan(user, &pw, buf, sizeof(buf), &do_switch);
}

kms_err kms_proc_drop(const char *user)
{
	struct passwd pw;
	char buf[4096];
	int do_switch;
	kms_err err;

	if ((err = plan(user, &pw, buf, sizeof(buf), &do_switch)) != KMS_OK)
		return err;
	if (!do_switch) {
		if (geteuid() == 0)
			kms_warn("user = %s: kmsd keeps running as root. The token, the store and every "
				 "request are then handled with root's rights; use an account of its own.",
				 user);
		return KMS_OK;
	}
	/* Groups first: setgroups and setresgid need the root that setresuid gives up. */
	if (initgroups(pw.pw_name, pw.pw_gid) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: initgroups(%s): %s", user, strerror(errno));
	if (setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: setresgid(%u): %s", (unsigned)pw.pw_gid,
				strerror(errno));
	if (setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: setresuid(%u): %s", (unsigned)pw.pw_uid,
				strerror(errno));
	if ((err = check_dropped(&pw)) != KMS_OK)
		return err;
	/* Changing the effective ids resets the dumpable flag to fs.suid_dumpable. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: PR_SET_DUMPABLE: %s", strerror(errno));
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "user: PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
	kms_info("running as %s (uid %u, gid %u)", user, (unsigned)pw.pw_uid, (unsigned)pw.pw_gid);
	return KMS_OK;
}

void kms_proc_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t plen, slen = strlen(state);
	socklen_t alen;
	ssize_t n;
	int fd;

	if (path == NULL || path[0] == '\0')
		return;
	plen = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sa.sun_path)) {
		kms_warn("NOTIFY_SOCKET is not a unix socket path; systemd is not told \"%s\"", state);
		return;
	}
	memcpy(sa.sun_path, path, plen);
	if (path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract: the length below delimits the name */
	alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '/'));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		kms_warn("sd_notify: socket: %s", strerror(errno));
		return;
	}
	n = sendto(fd, state, slen, MSG_NOSIGNAL, (struct sockaddr *)&sa, alen);
	if (n != (ssize_t)slen)
		kms_warn("sd_notify %s: %s", path, n < 0 ? strerror(errno) : "short send");
	(void)close(fd);
}
