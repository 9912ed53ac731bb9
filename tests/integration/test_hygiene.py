"""Process hygiene when started as root: kmsd reads the root-only PIN files, TLS key and
config, binds its port, then becomes `user` (here `nobody`) before it opens the token,
the store and the audit log. Checked from outside: /proc/<pid>/status ids, groups,
capabilities and NoNewPrivs, ownership of every file it made (audit segments rotated
while running included), a chain that verifies, a clean stop; and the refusals (root
without `user`, an unknown user, another account started with `user` set).

Needs root (the suite runs as root in CI) and the `nobody` account; skipped otherwise.
The server's directory is made under /tmp because pytest's own is root's 0700 tree,
which `nobody` could not enter."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import Kmsd, kmsd_bin, sanitizer_findings

KMSCTL = os.path.join(os.path.dirname(kmsd_bin()), "kmsctl")

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: tests the switch from root to `user`"),
    pytest.mark.skipif(NOBODY is None, reason="no `nobody` account"),
]


def chown_tree(path, uid, gid):
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid)


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def as_nobody(argv):
    """argv run as nobody:nogroup with no capabilities at all."""
    return ["setpriv", "--reuid=%d" % NOBODY.pw_uid, "--regid=%d" % NOBODY.pw_gid,
            "--clear-groups", "--bounding-set=-all", "--inh-caps=-all"] + argv


@pytest.fixture(scope="module")
def srv():
    base = tempfile.mkdtemp(prefix="kmsd-hygiene-", dir="/tmp")
    k = Kmsd(base)
    # rotate the audit log by time so that segments are created after the switch
    k.extra_opts = [("user", "nobody"), ("audit_segment_seconds", "1")]
    try:
        k.provision()
        # nobody's: the directory (store, audit log, port file) and the token; root's
        # alone (0600): the config, both PIN files and the TLS key, which kmsd must
        # therefore read before it switches
        os.chown(base, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(base, 0o700)
        hsm = os.path.dirname(k.softhsm_conf)
        chown_tree(hsm, NOBODY.pw_uid, NOBODY.pw_gid)
        for p in (k.user_pin_file, k.so_pin_file):
            os.chown(p, 0, 0)
        for p in (k.conf, k.user_pin_file, k.so_pin_file,
                  os.path.join(base, "certs", "server.key")):
            st = os.stat(p)
            assert st.st_uid == 0 and st.st_mode & 0o077 == 0, p
        k.init()
        k.start()
    except BaseException:
        k.kill()
        raise
    yield k
    rc, err = k.stop()
    found = sanitizer_findings(err)
    assert not found, "sanitizer report(s) %s:\n%s" % (found, err[-20000:])
    assert rc == 0, "kmsd exit status after SIGTERM: %r\n%s" % (rc, err[-5000:])
    if not os.environ.get("KMSD_KEEP_TMP"):
        shutil.rmtree(base, ignore_errors=True)


def test_runs_as_user(srv):
    st = proc_status(srv.proc.pid)
    uid, gid = str(NOBODY.pw_uid), str(NOBODY.pw_gid)
    assert st["Uid"] == [uid] * 4, st["Uid"]  # real, effective, saved, filesystem
    assert st["Gid"] == [gid] * 4, st["Gid"]
    assert "0" not in st.get("Groups", []), st.get("Groups")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap][0], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == ["1"], st["NoNewPrivs"]
    assert "running as nobody (uid %s, gid %s)" % (uid, gid) in srv.stderr()


def test_not_dumpable_after_switch(srv):
    """Changing uid resets the dumpable flag to fs.suid_dumpable; kmsd sets it to 0
    again. A process of the same uid without capabilities cannot read
    /proc/<pid>/exe of a non-dumpable process, and can read it of a dumpable one."""
    ctl = subprocess.Popen(as_nobody(["sleep", "30"]))
    try:
        time.sleep(0.2)
        for pid, want in ((ctl.pid, True), (srv.proc.pid, False)):
            r = subprocess.run(as_nobody(["readlink", "/proc/%d/exe" % pid]),
                               capture_output=True, text=True, timeout=10)
            assert (r.returncode == 0) == want, (pid, r.returncode, r.stderr)
    finally:
        ctl.kill()
        ctl.wait()


def test_serves_and_rotates_audit_as_user(srv):
    t, k, tok = srv.setup_tenant_key()
    for _ in range(3):
        srv.serves(tok, t, k)
        time.sleep(1.1)
    srv.serves(tok, t, k)
    d = os.path.dirname(srv.audit_path)
    segs = sorted(os.path.join(d, n) for n in os.listdir(d)
                  if n.startswith("audit-") and n.endswith(".log"))
    assert len(segs) >= 3, segs
    # everything kmsd made, at init and while serving, is nobody's
    # (a PostgreSQL store, store_uri, has no file of kmsd's)
    store = [] if srv.store_uri else [srv.store_path]
    made = store + [srv.audit_path, srv.audit_path + ".pub.pem", srv.port_file] + segs
    made += [srv.store_path + s for s in ("-wal", "-shm") if os.path.exists(srv.store_path + s)]
    for p in made:
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), (p, st.st_uid, st.st_gid)
    for p in store + [srv.audit_path] + segs:
        assert os.stat(p).st_mode & 0o077 == 0, p
    r = subprocess.run([KMSCTL, "audit", "verify", "--pubkey", srv.audit_path + ".pub.pem"]
                       + segs + [srv.audit_path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def variant_conf(srv, name, user, mode=0o600):
    """srv's config with `user` replaced (None: no user line), as a new file."""
    with open(srv.conf) as f:
        lines = [ln for ln in f if not ln.startswith("user =")]
    if user is not None:
        lines.append("user = %s\n" % user)
    path = os.path.join(srv.tmp, name)
    with open(path, "w") as f:
        f.writelines(lines)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("cmd", [[], ["init"], ["master-key", "status"]])
def test_root_without_user_refused(srv, cmd):
    conf = variant_conf(srv, "nouser.conf", None)
    r = subprocess.run([srv.bin, "-c", conf] + cmd, env=srv.env, capture_output=True,
                       text=True, timeout=60, cwd=srv.tmp)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "kmsd was started as root and `user` is not set" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", [[], ["init"], ["master-key", "status"],
                                 ["master-key", "rotate"]])
def test_unknown_user_is_config_error(srv, cmd):
    conf = variant_conf(srv, "nosuch.conf", "kmsd-no-such-user")
    r = subprocess.run([srv.bin, "-c", conf] + cmd, env=srv.env, capture_output=True,
                       text=True, timeout=60, cwd=srv.tmp)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert 'user: no such user "kmsd-no-such-user"' in r.stderr, r.stderr


def test_other_account_cannot_switch(srv):
    """Started as nobody with user = root: kmsd cannot switch and says so; with
    user = nobody it would simply be that account already."""
    conf = variant_conf(srv, "asroot.conf", "root", mode=0o644)
    r = subprocess.run(as_nobody([srv.bin, "-c", conf]), env=srv.env, capture_output=True,
                       text=True, timeout=60, cwd=srv.tmp)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "user: kmsd runs as uid %d, not as root (uid 0)" % NOBODY.pw_uid in r.stderr, r.stderr


def test_port_cannot_be_shared(srv):
    """kmsd binds its socket itself with SO_REUSEADDR only. libmicrohttpd's address
    reuse option (used before) sets SO_REUSEPORT, which let any process of the same
    account bind the same port beside kmsd and take a share of its connections."""
    code = ("import socket, sys\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
            "s.bind(('127.0.0.1', %d))\n" % srv.port)
    r = subprocess.run(as_nobody(["/usr/bin/python3", "-c", code]), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "Address already in use" in r.stderr, r.stderr
