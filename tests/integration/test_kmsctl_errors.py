"""kmsctl's error paths with the exit statuses of docs/KMSCTL.md "Exit status", for
every subcommand that talks to the server: a bad token (403 permission denied, exit 1),
an unknown tenant (a service token gets the same 403 as for a tenant that exists but is
not its own: no existence oracle; an admin gets 404), invalid arguments (exit 2, decided
before any connection). Transport errors take one code path whatever the command, so
one command of each group (and each bulk rewrap mode) stands for its group: an
unreachable server (exit 3), a bad CA file (not PEM or another CA's: exit 3; missing:
exit 2). Each server refusal prints `kmsctl: <status> <the server's message>`. Every command group
of `kmsctl --help` is covered (policy, mfa, approval, break-glass, report and backup too);
the missing-MFA path is in test_kmsctl_mfa_errors.py.

Environment: KMSCTL_BIN as for test_kmsctl.py."""

import json
import os
import socket
import struct
import subprocess

import pytest

from conftest import uniq
from test_kmsctl import Ctl, fails, kmsctl_bin, write_secret

# ~40 calls with a bad token from one address: more than the default failed-auth burst
KMSD_EXTRA_OPTS = [("auth_fail_burst", "1000")]


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("kmsctl-errors"))


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def retarget_tenant(sealed, tenant):
    """A sealed file's bytes with the header's tenant replaced (re-encoded canonically:
    the lengths are fixed up, so only the server can tell)."""
    hl = struct.unpack(">I", sealed[8:12])[0]
    n = struct.unpack(">H", sealed[24:26])[0]
    new = tenant.encode()
    hdr = sealed[:24] + struct.pack(">H", len(new)) + new + sealed[26 + n:hl]
    hdr = hdr[:8] + struct.pack(">I", len(hdr)) + hdr[12:]
    return hdr + sealed[hl:]


class World:
    pass


@pytest.fixture(scope="module")
def w(ctl):
    """A tenant with a key, a service token for it, a principal, and the input files
    every command needs."""
    k = ctl.kmsd
    x = World()
    x.t = k.create_tenant()
    x.k = k.create_key(x.t)
    x.svc = ctl.service_token([x.t])
    x.other_t = k.create_tenant()              # exists, not the service's
    k.create_key(x.other_t, x.k)
    x.ghost_t = uniq("ghost")                  # does not exist
    x.p = k.create_principal(tenants=[x.t])
    x.bad = write_secret(ctl.tmp / "bad.token", "kms.0000000000000000.not-a-real-token")
    d = ctl.json("datakey", x.t, x.k, "--wrapped", token=x.svc)
    x.ct = d["ciphertext"]
    x.plain = str(ctl.tmp / "plain.txt")
    with open(x.plain, "w") as f:
        f.write("note\n")
    x.lines = str(ctl.tmp / "cts.txt")
    with open(x.lines, "w") as f:
        f.write(x.ct + "\n")
    x.sealed = str(ctl.tmp / "f.sealed")
    ctl.ok("seal", "--tenant", x.t, "--key", x.k, x.plain, x.sealed, token=x.svc)
    with open(x.sealed, "rb") as f:
        sealed = f.read()
    x.sealed_other = str(ctl.tmp / "other.sealed")
    with open(x.sealed_other, "wb") as f:
        f.write(retarget_tenant(sealed, x.other_t))
    x.sealed_ghost = str(ctl.tmp / "ghost.sealed")
    with open(x.sealed_ghost, "wb") as f:
        f.write(retarget_tenant(sealed, x.ghost_t))
    x.hashin = str(ctl.tmp / "hash.in")
    with open(x.hashin, "w") as f:
        f.write("MRN-0042")
    x.auditdir = os.path.dirname(k.audit_path)
    x.out = str(ctl.tmp / "out")
    x.tmp = str(ctl.tmp)
    # a valid document, newer than the one in force
    x.policy = str(ctl.tmp / "policy.json")
    doc = k.get("/v1/sys/policy", token=k.admin_token).json()["data"]["document"]
    with open(x.policy, "w") as f:
        json.dump(dict(doc, version=99), f)
    return x


# (name, role, argv builder(world, tenant)): every subcommand that calls the server.
# role: admin, service, or None (no token). The tenant is substituted for the
# unknown-tenant case; sealed-file commands use f(w, t) to pick a file naming t.
def _sealed_for(x, t):
    return {x.t: x.sealed, x.other_t: x.sealed_other, x.ghost_t: x.sealed_ghost}[t]


COMMANDS = [
    ("status", None, lambda x, t: ["status"]),
    ("tenant create", "admin", lambda x, t: ["tenant", "create", uniq("nt")]),
    ("tenant read", "admin", lambda x, t: ["tenant", "read", t]),
    ("tenant list", "admin", lambda x, t: ["tenant", "list"]),
    ("tenant config", "admin", lambda x, t: ["tenant", "config", t, "--legal-hold", "false"]),
    ("principal create", "admin", lambda x, t: ["principal", "create", uniq("np"), "--role",
                                                "service", "--tenant", t]),
    ("principal read", "admin", lambda x, t: ["principal", "read", x.p]),
    ("principal list", "admin", lambda x, t: ["principal", "list"]),
    ("token create", "admin", lambda x, t: ["token", "create", x.p]),
    ("token revoke", "admin", lambda x, t: ["token", "revoke", "0000000000000000"]),
    ("token lookup", "service", lambda x, t: ["token", "lookup"]),
    ("key create", "admin", lambda x, t: ["key", "create", t, uniq("nk")]),
    ("key read", "admin", lambda x, t: ["key", "read", t, x.k]),
    ("key list", "admin", lambda x, t: ["key", "list", t]),
    ("key rotate", "admin", lambda x, t: ["key", "rotate", t, x.k]),
    ("key config", "admin", lambda x, t: ["key", "config", t, x.k, "--deletion-allowed", "false"]),
    ("key revoke", "admin", lambda x, t: ["key", "revoke", t, x.k, "--reason", "test"]),
    ("key restore", "admin", lambda x, t: ["key", "restore", t, x.k, "--reason", "test"]),
    ("key history", "admin", lambda x, t: ["key", "history", t, x.k]),
    ("key legal-hold", "admin", lambda x, t: ["key", "legal-hold", t, x.k, "off", "--reason", "t"]),
    ("key trim", "admin", lambda x, t: ["key", "trim", t, x.k, "--min-available-version", "1",
                                        "--reason", "test"]),
    ("key version disable", "admin", lambda x, t: ["key", "version", "disable", t, x.k, "9",
                                                   "--reason", "test"]),
    ("key version enable", "admin", lambda x, t: ["key", "version", "enable", t, x.k, "9"]),
    ("key version schedule-destroy", "admin", lambda x, t: ["key", "version", "schedule-destroy",
                                                            t, x.k, "9", "--reason", "test"]),
    ("key version cancel-destroy", "admin", lambda x, t: ["key", "version", "cancel-destroy", t,
                                                          x.k, "9", "--reason", "test"]),
    ("datakey", "service", lambda x, t: ["datakey", t, x.k]),
    ("encrypt", "service", lambda x, t: ["encrypt", t, x.k, "--in", x.plain]),
    ("decrypt", "service", lambda x, t: ["decrypt", t, x.k, x.ct]),
    ("decrypt --batch", "service", lambda x, t: ["decrypt", t, x.k, "--batch", x.lines]),
    ("rewrap", "service", lambda x, t: ["rewrap", t, x.k, x.ct]),
    ("rewrap --batch", "service", lambda x, t: ["rewrap", t, x.k, "--batch", x.lines]),
    ("rewrap --in", "service", lambda x, t: ["rewrap", "--tenant", t, "--key", x.k, "--in",
                                             x.lines]),
    ("rewrap --sealed", "service", lambda x, t: ["rewrap", "--tenant", t, "--key", x.k,
                                                 "--sealed", _sealed_for(x, t)]),
    ("seal", "service", lambda x, t: ["seal", "--tenant", t, "--key", x.k, x.plain, x.out]),
    ("open", "service", lambda x, t: ["open", _sealed_for(x, t), x.out]),
    ("audit hash", "admin", lambda x, t: ["audit", "hash", x.hashin]),
    ("audit search --context", "admin", lambda x, t: ["audit", "search", "--context",
                                                      "mrn=MRN-0042", x.auditdir]),
    ("policy read", "admin", lambda x, t: ["policy", "read"]),
    ("policy write", "admin", lambda x, t: ["policy", "write", x.policy]),
    ("mfa enroll", "admin", lambda x, t: ["mfa", "enroll"]),
    ("mfa status", "admin", lambda x, t: ["mfa", "status"]),
    ("mfa unlock", "admin", lambda x, t: ["mfa", "unlock", x.p]),
    ("mfa reset", "admin", lambda x, t: ["mfa", "reset", x.p]),
    ("approval list", "admin", lambda x, t: ["approval", "list"]),
    ("approval show", "admin", lambda x, t: ["approval", "show", "0" * 32]),
    ("approval approve", "admin", lambda x, t: ["approval", "approve", "0" * 32]),
    ("approval deny", "admin", lambda x, t: ["approval", "deny", "0" * 32]),
    ("break-glass list", "admin", lambda x, t: ["break-glass", "list"]),
    ("break-glass review", "admin", lambda x, t: ["break-glass", "review", "0" * 32, "--verdict",
                                                  "justified", "--note", "n"]),
    ("report compliance", "admin", lambda x, t: ["report", "compliance"]),
    ("backup", "admin", lambda x, t: ["backup", "--out", os.path.join(x.tmp, uniq("bak"))]),
]

WITH_TENANT = [c for c in COMMANDS if c[0] not in (
    "status", "tenant create", "tenant list", "principal read", "principal list", "token create",
    "token revoke", "token lookup", "audit hash", "audit search --context", "policy read",
    "policy write", "mfa enroll", "mfa status", "mfa unlock", "mfa reset", "approval list",
    "approval show", "approval approve", "approval deny", "break-glass list",
    "break-glass review", "report compliance", "backup")]


# Transport errors (no connection, TLS) take one path in kmsctl (cli_http.c) whatever
# the command: one command of each group, and each of rewrap's bulk modes, stand for it.
REPS = [c for c in COMMANDS if c[0] in (
    "status", "tenant read", "principal list", "token lookup", "key read",
    "key version enable", "datakey", "encrypt", "decrypt --batch", "rewrap", "rewrap --in",
    "rewrap --sealed", "seal", "open", "audit hash", "audit search --context", "policy read",
    "mfa status", "approval list", "break-glass list", "report compliance", "backup")]


def token_of(ctl, x, role):
    return {"admin": ctl.admin, "service": x.svc, None: None}[role]


def ids(cmds):
    return [c[0] for c in cmds]


@pytest.mark.parametrize("name,role,argv", [c for c in COMMANDS if c[1]], ids=ids([c for c in COMMANDS if c[1]]))
def test_bad_token_403_exit_1(ctl, w, name, role, argv):
    r = ctl.run(*argv(w, w.t), token=w.bad, want=1)
    fails(r, 403, "permission denied")
    assert r.stdout == "", r.stdout


def test_bad_token_does_not_touch_sealed_files(ctl, w):
    before = open(w.sealed, "rb").read()
    ctl.run("rewrap", "--tenant", w.t, "--key", w.k, "--sealed", w.sealed, token=w.bad, want=1)
    assert open(w.sealed, "rb").read() == before
    assert not os.path.exists(w.sealed + ".kmsctl-rewrap")


SERVICE_WITH_TENANT = [c for c in WITH_TENANT if c[1] == "service"]
ADMIN_WITH_TENANT = [c for c in WITH_TENANT if c[1] == "admin"]


@pytest.mark.parametrize("name,role,argv", SERVICE_WITH_TENANT, ids=ids(SERVICE_WITH_TENANT))
def test_unknown_tenant_service_403_like_a_foreign_one(ctl, w, name, role, argv):
    """A tenant that does not exist and one that is not the caller's answer alike."""
    ghost = ctl.run(*argv(w, w.ghost_t), token=w.svc, want=1)
    other = ctl.run(*argv(w, w.other_t), token=w.svc, want=1)
    fails(ghost, 403, "permission denied")
    norm = lambda s: s.replace(w.ghost_t, "T").replace(w.other_t, "T").replace(
        w.sealed_ghost, "F").replace(w.sealed_other, "F")
    assert norm(ghost.stderr) == norm(other.stderr), (ghost.stderr, other.stderr)
    assert ghost.stdout == other.stdout == ""


@pytest.mark.parametrize("name,role,argv", ADMIN_WITH_TENANT, ids=ids(ADMIN_WITH_TENANT))
def test_unknown_tenant_admin_404(ctl, w, name, role, argv):
    """An admin manages every tenant, so it may learn which exist: 404 naming it (400
    where the tenant is a value in the body, as for `principal create --tenant`)."""
    r = ctl.run(*argv(w, w.ghost_t), token=ctl.admin, want=1)
    if name == "principal create":
        fails(r, 400, 'tenant "%s" does not exist' % w.ghost_t)
    else:
        fails(r, 404)


@pytest.mark.parametrize("name,role,argv", REPS, ids=ids(REPS))
def test_unreachable_exit_3(ctl, w, name, role, argv):
    addr = "https://127.0.0.1:%d" % closed_port()
    r = ctl.run(*argv(w, w.t), "--addr", addr, token=token_of(ctl, w, role), want=3)
    assert "kmsctl: cannot reach %s" % addr in r.stderr, r.stderr


@pytest.fixture(scope="module")
def cas(ctl):
    d = ctl.tmp / "cas"
    d.mkdir()
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "other.key"),
                        "-out", str(d / "other.pem"), "-subj", "/CN=other CA", "-days", "2"],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    (d / "garbage.pem").write_text("this is not a certificate\n")
    return {"other": str(d / "other.pem"), "garbage": str(d / "garbage.pem"),
            "missing": str(d / "missing.pem")}


@pytest.mark.parametrize("name,role,argv", REPS, ids=ids(REPS))
def test_bad_ca_file(ctl, w, cas, name, role, argv):
    tok = token_of(ctl, w, role)
    r = ctl.run(*argv(w, w.t), "--ca-cert", cas["other"], token=tok, want=3)
    assert "kmsctl: TLS with https://127.0.0.1:%d failed" % ctl.kmsd.port in r.stderr, r.stderr
    r = ctl.run(*argv(w, w.t), "--ca-cert", cas["garbage"], token=tok, want=3)
    assert "TLS with" in r.stderr, r.stderr
    r = ctl.run(*argv(w, w.t), "--ca-cert", cas["missing"], token=tok, want=2)
    assert "CA file %s" % cas["missing"] in r.stderr, r.stderr
    # the same through the environment
    r = ctl.run(*argv(w, w.t), token=tok, env={"KMS_CACERT": cas["garbage"]}, want=3)


# Invalid arguments: exit 2 before any connection (the address is a closed port, which
# would be exit 3 if kmsctl tried).
INVALID = [
    ["status", "extra"],
    ["tenant", "create"], ["tenant", "read"], ["tenant", "list", "extra"],
    ["tenant", "config", "T", "--legal-hold", "maybe"], ["tenant", "nosuch"],
    ["principal", "create", "P"],
    ["principal", "read"], ["principal", "list", "--bogus"],
    ["token", "create"], ["token", "create", "P", "--ttl", "forever"], ["token", "revoke"],
    ["token", "lookup", "a", "b"],
    ["key", "create", "T"], ["key", "read", "T"], ["key", "list"], ["key", "rotate", "T"],
    ["key", "config", "T", "K", "--min-decryption-version", "x"], ["key", "revoke", "T"],
    ["key", "restore", "T"], ["key", "history", "T"], ["key", "legal-hold", "T", "K", "maybe"],
    ["key", "trim", "T", "K", "--reason", "x"], ["key", "nosuch"],
    ["key", "version", "disable", "T", "K", "one", "--reason", "x"],
    ["key", "version", "enable", "T", "K", "0"],
    ["key", "version", "enable", "T", "K"], ["key", "version", "schedule-destroy", "T", "K"],
    ["key", "version", "cancel-destroy", "T", "K", "1", "--days"], ["key", "version", "nosuch"],
    ["datakey", "T"], ["datakey", "T", "K", "--bits", "x"], ["datakey", "T", "K", "--bogus"],
    ["encrypt", "T"], ["encrypt", "T", "K", "--in", "/nonexistent/file"],
    ["encrypt", "T", "K", "--context", "novalue"],
    ["decrypt", "T"], ["decrypt", "T", "K", "--batch", "/nonexistent/file"],
    ["decrypt", "T", "K", "vault:v1:x", "--key-version", "2"],
    ["rewrap", "T"], ["rewrap", "T", "K", "vault:v1:x", "--out", "f"],
    ["rewrap", "--tenant", "T", "--in", "f"], ["rewrap", "--tenant", "T", "--key", "K"],
    ["rewrap", "--tenant", "T", "--key", "K", "--in", "/nonexistent/file"],
    ["rewrap", "--tenant", "T", "--key", "K", "--sealed", "/nonexistent/file"],
    ["seal", "--tenant", "T", "in"], ["seal", "--key", "K", "in", "out"],
    ["seal", "--tenant", "T", "--key", "K", "--chunk-size", "8", "in", "out"],
    ["open", "in"], ["open", "/nonexistent/file", "out"],
    ["audit", "hash", "a", "b"], ["audit", "search", "--context", "novalue", "."],
    ["audit", "nosuch"],
    ["nosuch"], ["--format", "yaml", "status"], ["--timeout", "0", "status"],
    ["policy", "write"], ["policy", "write", "/nonexistent/file"], ["policy", "read", "x"],
    ["policy", "nosuch"], ["backup"], ["backup", "--out", ""], ["mfa", "unlock"],
    ["mfa", "nosuch"], ["approval", "approve"], ["approval", "nosuch"], ["break-glass", "review"],
    ["report", "nosuch"], ["report", "compliance", "--format", "yaml"],
]


@pytest.mark.parametrize("argv", INVALID, ids=[" ".join(a) for a in INVALID])
def test_invalid_arguments_exit_2_before_connecting(ctl, w, argv):
    r = ctl.run(*argv, "--addr", "https://127.0.0.1:%d" % closed_port(), token=ctl.admin,
                want=2)
    assert "kmsctl" in r.stderr.split("\n")[0], r.stderr
    assert "cannot reach" not in r.stderr


def test_every_command_group_is_covered():
    """The table above names every command of `kmsctl --help` that calls the server."""
    out = subprocess.run([kmsctl_bin(), "--help"], capture_output=True, text=True).stdout
    groups = set()
    take = False
    for ln in out.splitlines():
        if ln.startswith("commands:"):
            take = True
            continue
        if take:
            if not ln.strip():
                break
            if ln.startswith("  ") and not ln.startswith("    "):
                groups.add(ln.split()[0])
    assert groups, out
    covered = {c[0].split()[0] for c in COMMANDS}
    assert groups <= covered, groups - covered
    assert groups <= {c[0].split()[0] for c in REPS}, groups
