"""contrib/systemd/kmsd.service and kmsd's readiness notice.

The unit is checked offline, since systemd does not run as PID 1 here:
`systemd-analyze verify` must print nothing at all (it exits 0 even for an unknown or
misspelt setting, which it only reports and ignores), and `systemd-analyze security
--offline=yes` must rate its exposure at most 2.0 (the scale is 0 to 10). Both are
skipped when systemd-analyze is not installed. The sandbox settings the project relies
on are read from the file itself, without systemd. Type=notify is checked against a
real kmsd: READY=1 reaches NOTIFY_SOCKET once it serves, STOPPING=1 at SIGTERM."""

import os
import shutil
import socket
import subprocess

import pytest

from conftest import REPO, Kmsd, kmsd_bin

UNIT = os.path.join(REPO, "contrib", "systemd", "kmsd.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None,
                                   reason="systemd-analyze not installed (Debian package systemd)")


def unit_for_build(tmp_path):
    """The unit with ExecStart on the built kmsd: verify checks that it exists."""
    with open(UNIT) as f:
        text = f.read()
    assert "ExecStart=/usr/local/sbin/kmsd " in text
    path = tmp_path / "kmsd.service"
    path.write_text(text.replace("/usr/local/sbin/kmsd", kmsd_bin()))
    return str(path)


def settings():
    out = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                k, _, v = line.partition("=")
                out.setdefault(k, []).append(v)
    return out


@needs_analyze
def test_unit_verifies(tmp_path):
    r = subprocess.run([ANALYZE, "verify", unit_for_build(tmp_path)], capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


@needs_analyze
def test_unit_verify_catches_a_typo(tmp_path):
    """The check above can fail: a misspelt setting is reported."""
    path = unit_for_build(tmp_path)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("ProtectSystem=strict", "ProtectSytem=strict"))
    r = subprocess.run([ANALYZE, "verify", path], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert "Unknown key 'ProtectSytem'" in r.stdout + r.stderr, r.stdout + r.stderr


@needs_analyze
def test_unit_security_exposure(tmp_path):
    path = unit_for_build(tmp_path)
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", path],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    if "--offline" in r.stderr and ("unrecognized" in r.stderr or "Unknown" in r.stderr):
        pytest.skip("systemd-analyze security has no --offline (systemd < 250)")
    lines = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln]
    assert lines, r.stdout + r.stderr
    level = float(lines[0].split(":")[1].split()[0])
    assert level <= 2.0, r.stdout
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager",
                        path], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_sandbox_settings():
    s = settings()
    want = {
        "Type": "notify", "User": "kmsd", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectHome": "yes",
        "MemoryDenyWriteExecute": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "LockPersonality": "yes",
        "RestrictRealtime": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
        "LimitCORE": "0", "UMask": "0077", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for k, v in want.items():
        assert s.get(k) == [v], (k, s.get(k))
    assert s["SystemCallFilter"][0] == "@system-service"
    denied = s["SystemCallFilter"][1]
    assert denied.startswith("~")
    for g in ("@privileged", "@mount", "@debug", "@module", "@raw-io", "@reboot", "@swap",
              "@obsolete", "@clock"):
        assert g in denied[1:].split(), g
    rw = s["ReadWritePaths"][0].split()
    assert "/var/lib/kmsd" in rw and "/var/log/kmsd" in rw


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_sd_notify(tmp_path, kind):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
        env_value = addr
    else:
        name = "kmsd-test-notify-%d" % os.getpid()
        sock.bind("\0" + name)
        env_value = "@" + name
    sock.settimeout(30)
    k = Kmsd(tmp_path / "srv")
    os.makedirs(k.tmp)
    try:
        k.provision()
        k.init()
        k.env["NOTIFY_SOCKET"] = env_value
        k.start()
        msg = sock.recv(4096).decode()
        assert msg.split("\n")[0] == "READY=1", msg
        k.health()
        rc, err = k.stop()
        assert rc == 0, err
        msg = sock.recv(4096).decode()
        assert msg == "STOPPING=1", msg
    finally:
        k.kill()
        sock.close()
