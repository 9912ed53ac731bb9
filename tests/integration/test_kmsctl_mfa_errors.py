"""kmsctl's missing-MFA error path (issue 6: "every kmsctl subcommand ... including error
paths (bad token, missing MFA, unknown tenant) with their exit codes"), against kmsd
running the real built-in policy, which asks for a TOTP step-up on every admin change.

Every admin-changing kmsctl subcommand, run by an enrolled admin with no code (no
KMS_MFA, no --mfa) and no terminal to ask on, exits 1 and prints
`kmsctl: 401 MFA required: send ...`, and changes nothing; the list is checked against
the subcommands kmsctl's own --help lists, so a new command must be classified here.
With a valid code in KMS_MFA (a fresh 30 s step each time, through the test clock) the
same commands succeed. Other step-up refusals keep their documented statuses: a wrong
code 403 (exit 1), --mfa without a terminal (exit 2), a reused code 403 (exit 1).

Environment: KMSCTL_BIN as for test_kmsctl.py."""

import json
import os
import re

import pytest

from conftest import sqlite_only, uniq
from test_kmsctl import Ctl, kmsctl_bin, write_secret
from test_mfa import Admin, Clock, totp

KMSD_BUILTIN_POLICY = True
KMSD_TEST_CLOCK = True
MFA_LINE = "kmsctl: 401 MFA required: send a current TOTP code in the X-Vault-MFA header"

# Every kmsctl leaf that talks to the server, by whether the built-in policy asks for a
# step-up. Offline commands (audit verify/search/report, seal/open need a service,
# policy check/default) are listed as "other".
READS = {"status", "tenant read", "tenant list", "principal read", "principal list",
         "principal cert-list", "token lookup", "key read", "key list", "key history",
         "approval list", "approval show", "break-glass list", "report compliance",
         "policy read", "mfa status", "audit hash"}
OWN_MFA = {"mfa enroll", "mfa confirm"}  # the step-up's own set-up: no code asked
SERVICE = {"datakey", "encrypt", "decrypt", "rewrap", "seal", "open", "break-glass activate"}
OTHER = {"audit verify", "audit search", "audit report access", "audit report exposure", "policy check",
         "policy default"}
MUTATING = {"tenant create", "tenant config", "principal create", "principal cert-add",
            "principal cert-revoke", "token create", "token revoke", "key create", "key rotate",
            "key config", "key revoke", "key restore", "key legal-hold", "key trim",
            "key version disable", "key version enable", "key version schedule-destroy",
            "key version cancel-destroy", "policy write", "mfa verify", "mfa unlock", "mfa reset",
            "approval approve", "approval deny", "break-glass review", "backup"}


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("kmsctl-mfa"))


class World:
    pass


@pytest.fixture(scope="module")
def w(kmsd, ctl):
    """An enrolled admin, and a tenant, key, service principal with a token, and a
    second admin made with step-ups through the API."""
    x = World()
    x.clock = Clock(kmsd)
    x.admin = Admin(kmsd, "admin", kmsd.admin_token)
    x.admin.enroll_confirm(x.clock)

    def post(path, body=None):
        r = x.admin.call("POST", path, body, mfa=x.admin.code(x.clock.next()))
        assert r.status_code == 200, (path, r.text)
        return r.json()

    x.post = post
    x.t = uniq("t")
    post("/v1/sys/tenants/" + x.t, {"retention": "non-phi"})
    x.k = uniq("k")
    post("/v1/%s/keys/%s" % (x.t, x.k))
    x.svc = uniq("svc")
    post("/v1/sys/principals/" + x.svc, {"role": "service", "tenants": [x.t]})
    x.accessor = post("/v1/sys/principals/%s/tokens" % x.svc)["auth"]["accessor"]
    x.b = uniq("admin-b")
    post("/v1/sys/principals/" + x.b, {"role": "admin", "tenants": []})
    r = kmsd.get("/v1/sys/policy", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    x.policy = r.json()["data"]
    doc = dict(x.policy["document"], version=x.policy["version"] + 1)
    x.policy_file = str(ctl.tmp / "policy.json")
    with open(x.policy_file, "w") as f:
        json.dump(doc, f, indent=1)
    return x


def leaves(ctl, path=()):
    """Every leaf kmsctl's --help lists, as "group sub ..." strings."""
    r = ctl.ok(*(list(path) + ["--help"]), addr=False)
    out = r.stdout
    section = "commands:" if not path else "subcommands:"
    if section not in out:
        return [" ".join(path)]
    names = []
    for ln in out.split(section, 1)[1].splitlines()[1:]:
        m = re.match(r"^  (\S+)\s", ln)
        if m:
            names.append(m.group(1))
        elif ln.strip() == "" and names:
            break
    found = []
    for n in names:
        found += leaves(ctl, tuple(path) + (n,))
    return found


def test_every_leaf_is_classified(ctl):
    all_leaves = set(leaves(ctl))
    known = READS | OWN_MFA | SERVICE | OTHER | MUTATING
    assert all_leaves - known == set(), "classify these kmsctl commands here"
    assert MUTATING <= all_leaves, MUTATING - all_leaves


def commands(w, ctl):
    """One invocation of every admin-changing leaf, as (leaf, argv)."""
    z = "0" * 32
    spki = "ab" * 32
    return [
        ("tenant create", ["tenant", "create", uniq("t")]),
        ("tenant config", ["tenant", "config", w.t, "--legal-hold", "true"]),
        ("principal create", ["principal", "create", uniq("p"), "--role", "service", "--tenant", w.t]),
        ("principal cert-add", ["principal", "cert-add", w.svc, "--spki", spki]),
        ("principal cert-revoke", ["principal", "cert-revoke", w.svc, "--spki", spki]),
        ("token create", ["token", "create", w.svc]),
        ("token revoke", ["token", "revoke", w.accessor]),
        ("key create", ["key", "create", w.t, uniq("k")]),
        ("key rotate", ["key", "rotate", w.t, w.k]),
        ("key config", ["key", "config", w.t, w.k, "--deletion-allowed", "true"]),
        ("key revoke", ["key", "revoke", w.t, w.k, "--reason", "drill"]),
        ("key restore", ["key", "restore", w.t, w.k, "--reason", "drill"]),
        ("key legal-hold", ["key", "legal-hold", w.t, w.k, "on", "--reason", "drill"]),
        ("key trim", ["key", "trim", w.t, w.k, "--min-available-version", "2", "--reason", "drill"]),
        ("key version disable", ["key", "version", "disable", w.t, w.k, "1", "--reason", "drill"]),
        ("key version enable", ["key", "version", "enable", w.t, w.k, "1", "--reason", "drill"]),
        ("key version schedule-destroy",
         ["key", "version", "schedule-destroy", w.t, w.k, "1", "--reason", "drill"]),
        ("key version cancel-destroy", ["key", "version", "cancel-destroy", w.t, w.k, "1", "--reason", "drill"]),
        ("policy write", ["policy", "write", w.policy_file]),
        ("mfa verify", ["mfa", "verify"]),
        ("mfa unlock", ["mfa", "unlock", w.b]),
        ("mfa reset", ["mfa", "reset", w.b]),
        ("approval approve", ["approval", "approve", z]),
        ("approval deny", ["approval", "deny", z]),
        ("break-glass review", ["break-glass", "review", z, "--verdict", "justified", "--note", "drill"]),
        ("backup", ["backup", "--out", str(ctl.tmp / ("backup-%s.kmsbak" % uniq("b")))]),
    ]


def snapshot(kmsd, w):
    """What the refused calls could have changed."""
    def get(path):
        r = kmsd.get(path, token=kmsd.admin_token)
        return r.status_code, r.json().get("data") if r.status_code == 200 else None

    tenants = kmsd.request("LIST", "/v1/sys/tenants", token=kmsd.admin_token).json()["data"]["keys"]
    principals = kmsd.request("LIST", "/v1/sys/principals", token=kmsd.admin_token).json()["data"]["keys"]
    return {"tenants": sorted(tenants), "principals": sorted(principals),
            "tenant": get("/v1/sys/tenants/" + w.t), "key": get("/v1/%s/keys/%s" % (w.t, w.k)),
            "keys": get("/v1/%s/keys?list=true" % w.t), "policy": get("/v1/sys/policy"),
            "certs": get("/v1/sys/principals/%s/certs" % w.svc)}


def test_missing_mfa_every_admin_change(kmsd, ctl, w):
    cmds = commands(w, ctl)
    assert {c for c, _ in cmds} == MUTATING
    before = snapshot(kmsd, w)
    for leaf, argv in cmds:
        # stdin is a pipe (not a terminal): kmsctl cannot ask, and must not hang
        r = ctl.run(*argv, token=ctl.admin, stdin="")
        assert r.returncode == 1, "%s -> %d (want 1)\n%s" % (leaf, r.returncode, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("kmsctl: ")]
        assert lines and lines[0].startswith(MFA_LINE), (leaf, r.stderr)
        assert r.stdout == "", (leaf, r.stdout)
    assert snapshot(kmsd, w) == before
    # backup wrote no file
    assert not [n for n in os.listdir(str(ctl.tmp)) if n.startswith("backup-")]


def test_other_step_up_refusals(kmsd, ctl, w):
    t = uniq("t")
    # --mfa with no terminal to ask on: usage error, nothing sent
    r = ctl.run("--mfa", "tenant", "create", t, token=ctl.admin, stdin="")
    assert r.returncode == 2, r.stderr
    # a wrong code: 403, exit 1
    good = totp(w.admin.secret, w.clock.next())
    wrong = "%06d" % ((int(good) + 1) % 1000000)
    r = ctl.run("tenant", "create", t, token=ctl.admin, env={"KMS_MFA": wrong}, stdin="", want=1)
    assert re.search(r"^kmsctl: 403 ", r.stderr, re.M), r.stderr
    # a malformed KMS_MFA
    r = ctl.run("tenant", "create", t, token=ctl.admin, env={"KMS_MFA": "totp:12"}, stdin="")
    assert r.returncode in (1, 2) and r.returncode != 0, r.stderr
    assert kmsd.get("/v1/sys/tenants/" + t, token=kmsd.admin_token).status_code == 404
    # the good code works once; the same code again is refused (403)
    s = w.clock.next()
    ctl.run("tenant", "create", t, token=ctl.admin, env={"KMS_MFA": totp(w.admin.secret, s)}, stdin="", want=0)
    r = ctl.run("tenant", "create", uniq("t"), token=ctl.admin, env={"KMS_MFA": totp(w.admin.secret, s)},
                stdin="", want=1)
    assert "already used" in r.stderr, r.stderr
    # a bad token with a code: 403 before any step-up
    bad = write_secret(ctl.tmp / "bad.token", "kms.0000000000000000.not-a-real-token")
    r = ctl.run("tenant", "create", uniq("t"), token=bad, env={"KMS_MFA": totp(w.admin.secret, w.clock.next())},
                stdin="", want=1)
    assert re.search(r"^kmsctl: 403 ", r.stderr, re.M), r.stderr


def test_with_a_code_they_succeed(kmsd, ctl, w):
    sqlite_only(kmsd, "includes kmsctl backup, which a PostgreSQL store answers with 501")
    def run(*argv):
        s = w.clock.next()
        return ctl.run(*argv, token=ctl.admin, env={"KMS_MFA": "totp:" + totp(w.admin.secret, s)}, stdin="",
                       want=0)

    t = uniq("t")
    run("tenant", "create", t)
    assert kmsd.get("/v1/sys/tenants/" + t, token=kmsd.admin_token).status_code == 200
    run("tenant", "config", t, "--retention-days", "3000")
    k = uniq("k")
    run("key", "create", t, k)
    run("key", "rotate", t, k)
    key = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token).json()["data"]
    assert key["latest_version"] == 2
    run("key", "config", t, k, "--deletion-allowed", "true")
    run("key", "version", "disable", t, k, "1", "--reason", "drill")
    run("key", "version", "enable", t, k, "1", "--reason", "drill")
    p = uniq("p")
    run("principal", "create", p, "--role", "service", "--tenant", t)
    r = run("--format", "json", "token", "create", p)
    acc = json.loads(r.stdout)["auth"]["accessor"]
    run("token", "revoke", acc)
    # policy.write is under the built-in two-person rule: the code makes a pending
    # request (202), which a second admin's approval (with its own code) runs
    r = run("--format", "json", "policy", "write", w.policy_file)
    pend = json.loads(r.stdout)
    assert pend["state"] == "pending" and pend["approval_id"], pend
    assert kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]["version"] == w.policy["version"]
    tok_b = w.post("/v1/sys/principals/%s/tokens" % w.b)["auth"]["client_token"]
    b = Admin(kmsd, w.b, tok_b)
    b.enroll_confirm(w.clock)
    r = b.call("POST", "/v1/sys/approvals/%s/approve" % pend["approval_id"], {}, mfa=b.code(w.clock.next()))
    assert r.status_code == 200 and r.json()["data"]["executed"] is True, r.text
    assert kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]["version"] == w.policy["version"] + 1
    run("mfa", "verify")
    out = str(ctl.tmp / "ok.kmsbak")
    run("backup", "--out", out)
    assert os.path.getsize(out) > 0
