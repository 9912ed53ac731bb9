"""kmsctl, the command-line client (docs/KMSCTL.md), against a real kmsd on a fresh
SoftHSM2 token: every subcommand, its output in table and json format, and its exit
status on the error paths (0 ok, 1 the server said no, 2 usage, 3 unreachable/TLS,
4 server error). The 5xx, timeout and oversized-answer paths use a small fake HTTPS
server with kmsd's certificate.

Environment: KMSCTL_BIN (default build/kmsctl, relative to the repo root)."""

import base64
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import REPO, sanitizer_findings, uniq

SECRET = b"kmsctl PHI: MRN 0042, encounter 7\x00\xff binary tail"


def kmsctl_bin():
    b = os.environ.get("KMSCTL_BIN", "build/kmsctl")
    if not os.path.isabs(b):
        b = os.path.join(REPO, b)
    return b


def base_env(home):
    """The environment without any KMS_/VAULT_ setting of the caller's, and a HOME
    without a config file (unless a test writes one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KMS_", "VAULT_", "XDG_CONFIG"))}
    env["HOME"] = str(home)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(REPO, "tests", "lsan.supp")
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def write_secret(path, text, mode=0o600):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(str(path), mode)
    return str(path)


class Ctl:
    """Runs kmsctl against the module's kmsd."""

    def __init__(self, kmsd, tmp):
        self.kmsd = kmsd
        self.tmp = tmp
        self.bin = kmsctl_bin()
        self.admin = kmsd.admin_token_file  # mode 0600, written by kmsd init
        self.home = tmp / "home"
        self.home.mkdir()

    def run(self, *args, token=None, env=None, stdin=None, addr=True, want=None, text=True):
        e = base_env(self.home)
        if addr:
            e["KMS_ADDR"] = self.kmsd.url
            e["KMS_CACERT"] = self.kmsd.ca
        e.update(env or {})
        argv = [self.bin] + list(args)
        if token is not None:
            argv += ["--token-file", token]
        r = subprocess.run(argv, env=e, input=stdin, capture_output=True, text=text,
                           timeout=60)
        err = r.stderr if text else r.stderr.decode("utf-8", "replace")
        found = sanitizer_findings(err)
        assert not found, "kmsctl %s: sanitizer report %s:\n%s" % (args, found, err)
        if want is not None:
            assert r.returncode == want, "kmsctl %s -> %d (want %d)\nstdout: %s\nstderr: %s" % (
                " ".join(args), r.returncode, want, r.stdout, err)
        return r

    def ok(self, *args, **kw):
        return self.run(*args, want=0, **kw)

    def json(self, *args, **kw):
        return json.loads(self.ok(*args, "--format", "json", **kw).stdout)

    def service_token(self, tenants):
        """A new service principal scoped to tenants; its token in a 0600 file."""
        tok = self.kmsd.service(tenants)
        return write_secret(self.tmp / (uniq("svc") + ".token"), tok)


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("kmsctl"))


@pytest.fixture(scope="module")
def tk(ctl):
    """A tenant, a key in it, and a service token file for the tenant."""
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    return t, k, ctl.service_token([t])


def fails(r, status, *fragments):
    """The error line `kmsctl: <status> <message>` with every fragment in it."""
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("kmsctl: %d " % status)]
    assert line, "no 'kmsctl: %d ...' line in stderr: %r" % (status, r.stderr)
    for f in fragments:
        assert f in line[0], (f, line[0])


def table(stdout):
    """`name  value` lines of a table as a dict."""
    out = {}
    for ln in stdout.splitlines():
        if not ln.strip():
            break
        k, _, v = ln.partition(" ")
        out[k] = v.strip()
    return out


# ---- help and usage --------------------------------------------------------------

LEAVES = {
    "tenant": ["create", "read", "list", "config"],
    "principal": ["create", "read", "list", "cert-add", "cert-list", "cert-revoke"],
    "token": ["create", "revoke", "lookup"],
    "key": ["create", "read", "list", "rotate", "config", "revoke", "restore", "history",
            "legal-hold", "trim", "version"],
    "key version": ["disable", "enable", "schedule-destroy", "cancel-destroy"],
    "audit": ["verify", "search", "report", "hash"],
    "audit report": ["access", "exposure"],
    "policy": ["read", "write", "check", "default"],
}
TOP = ["status", "tenant", "principal", "token", "key", "datakey", "encrypt", "decrypt",
       "rewrap", "audit", "seal", "open", "policy"]


def test_help_at_every_level(ctl):
    r = ctl.ok("--help", addr=False)
    assert "exit status" in r.stdout and "KMS_TOKEN" in r.stdout and "VAULT_ADDR" in r.stdout
    for n in range(5):
        assert "  %d  " % n in r.stdout, "exit status %d not documented" % n
    paths = [[c] for c in TOP]
    for group, leaves in LEAVES.items():
        paths += [group.split() + [leaf] for leaf in leaves]
    for p in paths:
        for h in ("--help", "-h") if len(p) == 1 else ("--help",):
            r = ctl.ok(*(p + [h]), addr=False)
            assert r.stdout.startswith("usage: kmsctl " + " ".join(p)), (p, r.stdout[:200])
            if p[0] != "audit":
                assert "example" in r.stdout, p
    # --help wins over missing arguments, and works after them
    ctl.ok("key", "read", "t", "--help", addr=False)
    assert ctl.ok("--version", addr=False).stdout.startswith("kmsctl ")


def test_usage_errors(ctl, tk):
    t, k, svc = tk
    cases = [
        [],
        ["nosuch"],
        ["key"],
        ["key", "frob"],
        ["key", "version"],
        ["key", "read", t],
        ["key", "read", t, k, "extra"],
        ["key", "read", t, k, "--bogus"],
        ["tenant", "config", t, "--legal-hold", "maybe"],
        ["tenant", "config", t, "--retention-days", "-3"],
        ["datakey", t, k, "--bits", "many"],
        ["datakey", t, k, "--context", "novalue"],
        ["encrypt", t, k, "--in", str(ctl.tmp / "does-not-exist")],
        ["principal", "create", uniq("p")],  # no --role
        ["token", "create", "p", "--ttl", "soon"],
        ["status", "--format", "xml"],
        ["status", "--timeout", "0"],
        ["status", "--addr"],
    ]
    for argv in cases:
        r = ctl.run(*argv, token=ctl.admin, want=2)
        assert r.stderr.startswith("kmsctl"), (argv, r.stderr)
        assert r.stdout == "", (argv, r.stdout)


# ---- status ----------------------------------------------------------------------

def test_status(ctl):
    r = ctl.ok("status")  # no token anywhere
    row = table(r.stdout)
    assert row["initialized"] == "true" and row["sealed"] == "false", r.stdout
    assert "audit" in r.stdout and "ok" in r.stdout
    for check in ("audit", "token", "store", "clock"):
        assert ("check %-10s ok" % check) in r.stdout.splitlines(), r.stdout
    j = ctl.json("status")
    assert j["initialized"] is True, j
    assert j["checks"] == {"audit": "ok", "token": "ok", "store": "ok", "clock": "ok"}, j


# ---- tenants ---------------------------------------------------------------------

def test_tenant_lifecycle(ctl):
    t = uniq("ct")
    r = ctl.ok("tenant", "create", t, "--retention", "non-phi", token=ctl.admin)
    row = table(r.stdout)
    assert row["name"] == t and row["retention"] == "non-phi", r.stdout
    r = ctl.run("tenant", "create", t, token=ctl.admin, want=1)
    fails(r, 409, "already exists")
    j = ctl.json("tenant", "read", t, token=ctl.admin)
    assert j["name"] == t and j["legal_hold"] is False and "retention_days" in j
    assert t in ctl.ok("tenant", "list", token=ctl.admin).stdout.split()
    assert t in ctl.json("tenant", "list", token=ctl.admin)["keys"]
    j = ctl.json("tenant", "config", t, "--legal-hold", "true", "--min-destroy-wait-days", "9",
                 token=ctl.admin)
    assert j["legal_hold"] is True and j["min_destroy_wait_days"] == 9, j
    j = ctl.json("tenant", "config", t, "--legal-hold", "off", token=ctl.admin)
    assert j["legal_hold"] is False
    fails(ctl.run("tenant", "read", uniq("nope"), token=ctl.admin, want=1), 404)
    fails(ctl.run("tenant", "create", "Bad Name", token=ctl.admin, want=1), 400, "invalid tenant name")
    fails(ctl.run("tenant", "create", uniq("x"), "--retention", "forever", token=ctl.admin, want=1),
          400, "retention")


# ---- principals and tokens -------------------------------------------------------

def test_principal_and_token_lifecycle(ctl, tk):
    t, k, _ = tk
    p = uniq("cp")
    r = ctl.ok("principal", "create", p, "--role", "service", "--tenant", t, token=ctl.admin)
    assert table(r.stdout)["role"] == "service"
    fails(ctl.run("principal", "create", p, "--role", "service", token=ctl.admin, want=1), 409)
    fails(ctl.run("principal", "create", uniq("cp"), "--role", "service", "--tenant",
                  uniq("nosuch"), token=ctl.admin, want=1), 400, "does not exist")
    fails(ctl.run("principal", "create", uniq("cp"), "--role", "root", token=ctl.admin, want=1),
          400, "role")
    j = ctl.json("principal", "read", p, token=ctl.admin)
    assert j["name"] == p and j["tenants"] == [t], j
    assert p in ctl.ok("principal", "list", token=ctl.admin).stdout.split()
    fails(ctl.run("principal", "read", uniq("nope"), token=ctl.admin, want=1), 404)

    # token create, table: the token line and the accessor, and a note on stderr
    r = ctl.ok("token", "create", p, "--ttl", "1h", token=ctl.admin)
    row = table(r.stdout)
    tok, acc = row["token"], row["accessor"]
    assert tok and acc and acc in tok, r.stdout
    assert row["principal"] == p and row["expires"].endswith("Z"), r.stdout
    assert "only" in r.stderr
    # json: the server's whole answer
    j = ctl.json("token", "create", p, token=ctl.admin)
    assert j["auth"]["client_token"] and j["data"]["accessor"] == j["auth"]["accessor"]
    assert j["data"]["expires"] is None and "request_id" in j

    tf = write_secret(ctl.tmp / (p + ".token"), tok)
    r = ctl.ok("token", "lookup", token=tf)
    assert table(r.stdout)["display_name"] == p and tok not in r.stdout + r.stderr
    lk = ctl.json("token", "lookup", token=tf)
    assert lk["accessor"] == acc and lk["policies"] == ["service"] and tok not in json.dumps(lk)
    # the new token works on the data plane
    ctl.ok("datakey", t, k, token=tf)

    j = ctl.json("token", "revoke", acc, token=ctl.admin)
    assert j == {"accessor": acc, "revoked": True}, j
    fails(ctl.run("token", "lookup", token=tf, want=1), 403, "permission denied")
    fails(ctl.run("token", "revoke", "0000000000000000", token=ctl.admin, want=1), 404)


# ---- keys ------------------------------------------------------------------------

def test_key_commands(ctl):
    t = ctl.kmsd.create_tenant(retention="non-phi")
    svc = ctl.service_token([t])
    k = uniq("ck")
    r = ctl.ok("key", "create", t, k, token=ctl.admin)
    row = table(r.stdout)
    assert row["name"] == k and row["tenant"] == t and row["latest_version"] == "1", r.stdout
    assert "VERSION" in r.stdout and "active" in r.stdout
    fails(ctl.run("key", "create", t, k, token=ctl.admin, want=1), 409)
    fails(ctl.run("key", "create", t, uniq("ck"), "--type", "rsa-4096", token=ctl.admin, want=1), 400)
    j = ctl.json("key", "read", t, k, token=svc)  # a service token may read its tenant's keys
    assert j["name"] == k and j["versions"]["1"]["state"] == "active", j
    assert k in ctl.ok("key", "list", t, token=svc).stdout.split()
    assert ctl.json("key", "list", t, token=ctl.admin)["keys"] == [k]

    j = ctl.json("key", "rotate", t, k, token=ctl.admin)
    assert j["latest_version"] == 2 and j["versions"]["1"]["state"] == "decrypt-only", j
    fails(ctl.run("key", "rotate", t, k, token=svc, want=1), 403, "permission denied")

    j = ctl.json("key", "config", t, k, "--deletion-allowed", "true", "--auto-rotate-period", "2h",
                 "--reason", "test", token=ctl.admin)
    assert j["deletion_allowed"] is True and j["auto_rotate_period"] == 7200, j
    fails(ctl.run("key", "config", t, k, "--min-decryption-version", "9", token=ctl.admin, want=1),
          400)

    # revoke: every use refused with the 409 message; restore undoes it
    fails(ctl.run("key", "revoke", t, k, token=ctl.admin, want=1), 400, "reason")
    assert ctl.json("key", "revoke", t, k, "--reason", "INC-1", token=ctl.admin)["revoked"] is True
    fails(ctl.run("datakey", t, k, token=svc, want=1), 409, "revoked")
    fails(ctl.run("key", "revoke", t, k, "--reason", "again", token=ctl.admin, want=1), 409)
    assert ctl.json("key", "restore", t, k, "--reason", "INC-1 closed", token=ctl.admin)["revoked"] is False
    ctl.ok("datakey", t, k, token=svc)

    # legal hold blocks schedule-destroy
    j = ctl.json("key", "legal-hold", t, k, "on", "--reason", "litigation", token=ctl.admin)
    assert j["legal_hold"] is True, j
    fails(ctl.run("key", "version", "schedule-destroy", t, k, "1", "--days", "7", "--reason", "x",
                  token=ctl.admin, want=1), 409, "legal hold")
    ctl.ok("key", "legal-hold", t, k, "off", "--reason", "settled", token=ctl.admin)

    # trim: the floor is required, and may not pass min_decryption_version
    ctl.run("key", "trim", t, k, "--reason", "x", token=ctl.admin, want=2)
    fails(ctl.run("key", "trim", t, k, "--min-available-version", "2", "--reason", "x",
                  token=ctl.admin, want=1), 400, "min_decryption_version")
    j = ctl.json("key", "trim", t, k, "--min-available-version", "1", "--reason", "noop",
                 token=ctl.admin)
    assert j["versions"]["1"]["state"] == "decrypt-only", j

    # version states
    j = ctl.json("key", "version", "disable", t, k, "1", "--reason", "INC-2", token=ctl.admin)
    assert j["versions"]["1"]["state"] == "disabled", j
    fails(ctl.run("key", "version", "disable", t, k, "1", "--reason", "again", token=ctl.admin,
                  want=1), 409)
    j = ctl.json("key", "version", "enable", t, k, "1", token=ctl.admin)
    assert j["versions"]["1"]["state"] == "decrypt-only", j
    fails(ctl.run("key", "version", "disable", t, k, "99", "--reason", "x", token=ctl.admin,
                  want=1), 404)
    fails(ctl.run("key", "version", "schedule-destroy", t, k, "2", "--reason", "x", token=ctl.admin,
                  want=1), 409, "rotate the key first")
    j = ctl.json("key", "version", "schedule-destroy", t, k, "1", "--days", "7", "--reason",
                 "erasure", token=ctl.admin)
    assert j["versions"]["1"]["state"] == "pending-destruction", j
    j = ctl.json("key", "version", "cancel-destroy", t, k, "1", "--reason", "withdrawn",
                 token=ctl.admin)
    assert j["versions"]["1"]["state"] == "disabled", j

    r = ctl.ok("key", "history", t, k, token=ctl.admin)
    assert r.stdout.startswith("TIME") and "INC-2" in r.stdout and "withdrawn" in r.stdout
    events = [e["event"] for e in ctl.json("key", "history", t, k, token=ctl.admin)["events"]]
    for ev in ("disable", "enable", "revoke", "restore"):
        assert ev in events, (ev, events)


def test_unknown_tenant_and_key(ctl, tk):
    t, k, svc = tk
    nt = uniq("nosuch")
    fails(ctl.run("key", "list", nt, token=ctl.admin, want=1), 404, "not found")
    fails(ctl.run("key", "read", t, uniq("nokey"), token=ctl.admin, want=1), 404)
    fails(ctl.run("key", "create", nt, "k", token=ctl.admin, want=1), 404)
    # a service token learns nothing about tenants it is not scoped to
    fails(ctl.run("datakey", nt, k, token=svc, want=1), 403, "permission denied")
    # a tenant without keys answers 404, as Vault
    empty = ctl.kmsd.create_tenant()
    fails(ctl.run("key", "list", empty, token=ctl.admin, want=1), 404, "no keys")


# ---- data plane ------------------------------------------------------------------

def test_datakey_then_decrypt(ctl, tk):
    t, k, svc = tk
    ctx = ["--context", "purpose=treatment", "--context", "record=mrn-0001"]
    r = ctl.ok("datakey", t, k, *ctx, token=svc)
    row = table(r.stdout)
    assert row["ciphertext"].startswith("vault:v") and len(base64.b64decode(row["plaintext"])) == 32
    d = ctl.json("datakey", t, k, *ctx, token=svc)
    # the ciphertext as an argument, then from stdin
    back = ctl.json("decrypt", t, k, d["ciphertext"], *ctx, token=svc)
    assert back == {"plaintext": d["plaintext"]}
    r = ctl.ok("decrypt", t, k, *ctx, token=svc, stdin=d["ciphertext"] + "\n")
    assert table(r.stdout)["plaintext"] == d["plaintext"]
    # another context does not decrypt
    fails(ctl.run("decrypt", t, k, d["ciphertext"], "--context", "purpose=billing", token=svc,
                  want=1), 400, "authentication failed")
    w = ctl.json("datakey", t, k, "--wrapped", "--bits", "512", token=svc)
    assert "plaintext" not in w and w["ciphertext"].startswith("vault:v")
    raw = ctl.run("decrypt", t, k, w["ciphertext"], "--out", "-", token=svc, want=0, text=False)
    assert len(raw.stdout) == 64
    fails(ctl.run("datakey", t, k, "--bits", "100", token=svc, want=1), 400)
    # an admin never receives key material
    fails(ctl.run("datakey", t, k, token=ctl.admin, want=1), 403)


def test_encrypt_decrypt_file_bytes(ctl, tk):
    t, k, svc = tk
    src = ctl.tmp / "note.bin"
    src.write_bytes(SECRET + os.urandom(3000))
    aad = ctl.tmp / "aad.bin"
    aad.write_bytes(b"fhir\x00Observation/17")
    r = ctl.ok("encrypt", t, k, "--in", str(src), "--aad-file", str(aad), token=svc)
    ct = table(r.stdout)["ciphertext"]
    assert ct.startswith("vault:v")
    out = ctl.tmp / "note.out"
    ctl.ok("decrypt", t, k, "--out", str(out), "--aad-file", str(aad), token=svc, stdin=ct)
    assert out.read_bytes() == src.read_bytes()
    assert (os.stat(out).st_mode & 0o777) == 0o600
    # without the associated data it does not decrypt
    fails(ctl.run("decrypt", t, k, ct, token=svc, want=1), 400)
    # plaintext from stdin, plaintext bytes to stdout
    enc = subprocess.run([ctl.bin, "encrypt", t, k, "--format", "json", "--token-file", svc],
                         input=SECRET, capture_output=True,
                         env=dict(base_env(ctl.home), KMS_ADDR=ctl.kmsd.url, KMS_CACERT=ctl.kmsd.ca))
    assert enc.returncode == 0, enc.stderr
    ct2 = json.loads(enc.stdout)["ciphertext"]
    raw = ctl.run("decrypt", t, k, ct2, "--out", "-", token=svc, want=0, text=False)
    assert raw.stdout == SECRET
    # too large for the server's max_body_bytes: 413, exit 1
    big = ctl.tmp / "big.bin"
    big.write_bytes(b"x" * 70000)
    fails(ctl.run("encrypt", t, k, "--in", str(big), token=svc, want=1), 413)


def test_rotate_then_rewrap(ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    svc = ctl.service_token([t])
    src = ctl.tmp / "rw.bin"
    src.write_bytes(SECRET)
    cts = [table(ctl.ok("encrypt", t, k, "--in", str(src), "--context", "a=b",
                        token=svc).stdout)["ciphertext"] for _ in range(2)]
    assert all(c.startswith("vault:v1:") for c in cts)
    ctl.ok("key", "rotate", t, k, token=ctl.admin)
    r = ctl.ok("rewrap", t, k, cts[0], "--context", "a=b", token=svc)
    new = table(r.stdout)
    assert new["ciphertext"].startswith("vault:v2:") and new["key_version"] == "2", r.stdout
    out = ctl.tmp / "rw.out"
    ctl.ok("decrypt", t, k, new["ciphertext"], "--context", "a=b", "--out", str(out), token=svc)
    assert out.read_bytes() == SECRET
    fails(ctl.run("rewrap", t, k, cts[0], "--context", "a=b", "--key-version", "1", token=svc,
                  want=1), 409, "decrypt-only")
    # batch: one line per ciphertext; a bad line fails alone, exit 1
    batch = ctl.tmp / "batch.txt"
    batch.write_text("%s\n\n%s\nvault:v1:AAAA\n" % (cts[0], cts[1]))
    r = ctl.run("rewrap", t, k, "--batch", str(batch), "--context", "a=b", token=svc, want=1)
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("vault:v2:") and lines[1].startswith("vault:v2:")
    assert lines[2].startswith("error: "), lines
    fails(r, 400, "1 of 3")
    batch.write_text("\n".join(lines[:2]) + "\n")
    j = ctl.json("decrypt", t, k, "--batch", str(batch), "--context", "a=b", token=svc)
    assert [base64.b64decode(x["plaintext"]) for x in j["batch_results"]] == [SECRET, SECRET]
    r = ctl.ok("decrypt", t, k, "--batch", "-", "--context", "a=b", token=svc,
               stdin=batch.read_text())
    assert [base64.b64decode(x) for x in r.stdout.split()] == [SECRET, SECRET]


def test_version_disable_refuses_decrypt(ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    svc = ctl.service_token([t])
    d = ctl.json("datakey", t, k, token=svc)
    ctl.ok("key", "version", "disable", t, k, "1", "--reason", "INC-9", token=ctl.admin)
    r = ctl.run("decrypt", t, k, d["ciphertext"], token=svc, want=1)
    fails(r, 409, "key version 1 is disabled")
    assert r.stdout == ""
    ctl.ok("key", "version", "enable", t, k, "1", "--reason", "INC-9 closed", token=ctl.admin)
    assert ctl.json("decrypt", t, k, d["ciphertext"], token=svc)["plaintext"] == d["plaintext"]


# ---- tokens and where they come from ---------------------------------------------

def test_bad_token_and_no_token(ctl, tk):
    t, k, svc = tk
    bad = write_secret(ctl.tmp / "bad.token", "kms.0000000000000000.not-a-real-token")
    for argv in (["tenant", "list"], ["key", "read", t, k], ["datakey", t, k], ["token", "lookup"]):
        fails(ctl.run(*argv, token=bad, want=1), 403, "permission denied")
    # no token at all: a usage error naming the ways to give one
    r = ctl.run("tenant", "list", want=2, stdin="")
    assert "--token-file" in r.stderr and "KMS_TOKEN" in r.stderr
    # a token file others may read is refused
    loose = write_secret(ctl.tmp / "loose.token", open(ctl.admin).read().strip(), mode=0o644)
    r = ctl.run("tenant", "list", token=loose, want=2)
    assert "chmod 600" in r.stderr
    # a service token on an admin call
    fails(ctl.run("tenant", "list", token=svc, want=1), 403)


def test_token_on_argv_refused(ctl):
    for argv in (["--token", "s3cr3t-value", "tenant", "list"], ["tenant", "list", "--token=s3cr3t-value"]):
        r = ctl.run(*argv, want=2)
        assert "--token-file" in r.stderr and "s3cr3t-value" not in r.stderr + r.stdout


def test_token_from_stdin_and_env(ctl, tk):
    t, k, svc = tk
    tok = open(svc).read().strip()
    r = ctl.ok("token", "lookup", "--token-file", "-", stdin=tok + "\n")
    assert table(r.stdout)["policies"] == "service"
    # stdin cannot carry both the token and the plaintext
    ctl.run("encrypt", t, k, "--token-file", "-", stdin=tok + "\nplaintext", want=2)
    j = ctl.json("token", "lookup", env={"KMS_TOKEN": tok})
    assert j["policies"] == ["service"]
    # KMS_TOKEN wins over VAULT_TOKEN; --token-file over both
    admin_tok = open(ctl.admin).read().strip()
    assert ctl.json("token", "lookup", env={"KMS_TOKEN": tok, "VAULT_TOKEN": admin_tok})["policies"] == ["service"]
    assert ctl.json("token", "lookup", token=ctl.admin, env={"KMS_TOKEN": tok})["policies"] == ["admin"]


def test_vault_env_honoured(ctl, tk):
    t, k, svc = tk
    tok = open(svc).read().strip()
    env = {"VAULT_ADDR": ctl.kmsd.url, "VAULT_TOKEN": tok, "VAULT_CACERT": ctl.kmsd.ca}
    d = ctl.json("datakey", t, k, addr=False, env=env)
    assert ctl.json("decrypt", t, k, d["ciphertext"], addr=False, env=env)["plaintext"] == d["plaintext"]
    # KMS_ADDR wins over VAULT_ADDR
    env2 = dict(env, VAULT_ADDR="https://127.0.0.1:1", KMS_ADDR=ctl.kmsd.url)
    ctl.ok("token", "lookup", addr=False, env=env2)


def test_config_file(ctl, tk):
    t, k, svc = tk
    conf = ctl.tmp / "kmsctl.conf"
    conf.write_text("# kmsctl test\naddr = %s\nca_cert = %s\ntoken_file = %s\nformat = json\n"
                    % (ctl.kmsd.url, ctl.kmsd.ca, svc))
    r = ctl.ok("--config", str(conf), "key", "list", t, addr=False)
    assert json.loads(r.stdout)["keys"] == [k]
    # flags override the file
    r = ctl.ok("key", "list", t, "--config", str(conf), "--format", "table", addr=False)
    assert r.stdout.split() == [k]
    # an inline token needs a private file
    tok = open(svc).read().strip()
    conf2 = ctl.tmp / "inline.conf"
    conf2.write_text("addr = %s\nca_cert = %s\ntoken = %s\n" % (ctl.kmsd.url, ctl.kmsd.ca, tok))
    os.chmod(str(conf2), 0o644)
    r = ctl.run("--config", str(conf2), "token", "lookup", addr=False, want=2)
    assert "chmod 600" in r.stderr and tok not in r.stderr
    os.chmod(str(conf2), 0o600)
    ctl.ok("--config", str(conf2), "token", "lookup", addr=False)
    # the default place: ~/.config/kmsctl.conf
    cfg = ctl.home / ".config"
    cfg.mkdir(exist_ok=True)
    (cfg / "kmsctl.conf").write_text(conf.read_text())
    try:
        assert json.loads(ctl.ok("key", "list", t, addr=False).stdout)["keys"] == [k]
    finally:
        os.unlink(str(cfg / "kmsctl.conf"))
    # mistakes in the file are usage errors naming the line
    bad = ctl.tmp / "bad.conf"
    bad.write_text("addr = %s\nnonsense = 1\n" % ctl.kmsd.url)
    r = ctl.run("--config", str(bad), "status", addr=False, want=2)
    assert "bad.conf:2" in r.stderr
    ctl.run("--config", str(ctl.tmp / "missing.conf"), "status", addr=False, want=2)


# ---- transport errors ------------------------------------------------------------

def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_and_tls_errors(ctl, tk):
    t, k, svc = tk
    r = ctl.run("status", "--addr", "https://127.0.0.1:%d" % closed_port(), want=3)
    assert "cannot reach" in r.stderr
    ctl.run("datakey", t, k, "--addr", "https://127.0.0.1:%d" % closed_port(), token=svc, want=3)
    # a CA that did not sign the server's certificate
    other = ctl.tmp / "other-ca"
    other.mkdir()
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(other / "ca.key"),
                        "-out", str(other / "ca.pem"), "-subj", "/CN=other CA", "-days", "2"],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    r = ctl.run("status", "--ca-cert", str(other / "ca.pem"), want=3)
    assert "TLS" in r.stderr and "certificate" in r.stderr
    ctl.run("key", "list", t, "--ca-cert", str(other / "ca.pem"), token=ctl.admin, want=3)
    # no CA given and the system store does not know the dev CA
    ctl.run("status", env={"KMS_CACERT": ""}, want=3)
    # the certificate names localhost too
    url = ctl.kmsd.url.replace("127.0.0.1", "localhost")
    ctl.ok("status", "--addr", url)
    # an unreadable CA file, and plain http, are usage errors
    ctl.run("status", "--ca-cert", str(ctl.tmp / "nope.pem"), want=2)
    r = ctl.run("status", "--addr", ctl.kmsd.url.replace("https", "http"), want=2)
    assert "https" in r.stderr


class _Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status, body, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/v1/sys/health":
            self._send(503, {"initialized": True, "sealed": False, "checks": {"audit": "failed"}})
        elif path.endswith("/notjson"):
            self._send(200, "<html>hello</html>", "text/html")
        elif path.endswith("/huge"):
            self._send(200, b"{\"data\":\"" + b"x" * (9 << 20) + b"\"}")
        elif path.endswith("/slow"):
            time.sleep(3)
            self._send(200, {"data": {}})
        elif path.endswith("/teapot"):
            self._send(418, "no json here", "text/plain")
        else:
            self._send(503, {"errors": ["audit log unavailable"]})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self._send(500, {"errors": ["internal error"]})


@pytest.fixture(scope="module")
def fake(kmsd):
    certs = os.path.dirname(kmsd.ca)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certs, "server.pem"), os.path.join(certs, "server.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield "https://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_server_errors_exit_4(ctl, fake):
    a = ["--addr", fake]
    r = ctl.run("status", *a, want=4)
    assert "failed" in r.stdout and "503" in r.stderr
    fails(ctl.run("tenant", "list", *a, token=ctl.admin, want=4), 503, "audit log unavailable")
    fails(ctl.run("key", "rotate", "t", "k", *a, token=ctl.admin, want=4), 500, "internal error")
    r = ctl.run("tenant", "read", "notjson", *a, token=ctl.admin, want=4)
    assert "not a JSON" in r.stderr
    r = ctl.run("tenant", "read", "huge", *a, token=ctl.admin, want=4)
    assert "larger than" in r.stderr
    # a 4xx without kmsd's JSON is still the server saying no
    fails(ctl.run("tenant", "read", "teapot", *a, token=ctl.admin, want=1), 418)
    # no answer within --timeout: unreachable
    t0 = time.monotonic()
    r = ctl.run("tenant", "read", "slow", *a, "--timeout", "1", token=ctl.admin, want=3)
    assert time.monotonic() - t0 < 2.5 and "within 1 s" in r.stderr


def test_token_lookup_by_accessor(ctl, tk):
    t, k, svc = tk
    p = ctl.kmsd.create_principal(tenants=[t])
    tok, acc = ctl.kmsd.create_token(p)
    assert ctl.kmsd.datakey(tok, t, k).status_code == 200
    j = ctl.json("token", "lookup", acc, token=ctl.admin)
    assert j["accessor"] == acc and j["display_name"] == p and j["revoked"] is False
    assert j["last_used"] is not None
    r = ctl.run("token", "lookup", "no-such-accessor", token=ctl.admin, want=1)
    assert "404" in r.stderr
    ctl.run("token", "lookup", acc, token=svc, want=1)  # a service may not
    ctl.run("token", "lookup", acc, "extra", token=ctl.admin, want=2)


def test_audit_hash(ctl, tk):
    want = ctl.kmsd.post("/v1/sys/audit/hash", {"input": "MRN-0042"},
                         token=ctl.kmsd.admin_token).json()["data"]["hash"]
    r = ctl.ok("audit", "hash", token=ctl.admin, stdin="MRN-0042\n")
    assert r.stdout.strip() == want
    f = ctl.tmp / "value.txt"
    f.write_text("MRN-0042")
    assert ctl.ok("audit", "hash", str(f), token=ctl.admin).stdout.strip() == want
    assert ctl.json("audit", "hash", token=ctl.admin, stdin="MRN-0042")["hash"] == want
    # the value never goes on the command line: a second argument is a usage error
    ctl.run("audit", "hash", str(f), "MRN-0042", token=ctl.admin, want=2)
    # a service token may not hash
    ctl.run("audit", "hash", token=tk[2], stdin="x", want=1)
    assert "hash" in ctl.ok("audit", "hash", "--help").stdout
