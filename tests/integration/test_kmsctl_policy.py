"""kmsctl policy read | write | check | default (docs/KMSCTL.md) against a real kmsd:
the table and JSON forms of read, a write from a file and from stdin, an invalid
document refused with the server's line, column and path printed as is (and the same
place from the offline check), a version that is not newer (409), usage errors (exit 2,
before any connection), an unreachable server (exit 3), a service token refused (403)
and an auditor who may read but not write. Every refusal leaves the policy unchanged.

Environment: KMSCTL_BIN as for test_kmsctl.py."""

import json
import os
import socket
import subprocess

import pytest

from test_kmsctl import Ctl, fails, kmsctl_bin, write_secret


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("kmsctl-policy"))


def server_policy(kmsd):
    r = kmsd.get("/v1/sys/policy", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def write_doc(ctl, name, doc):
    p = str(ctl.tmp / name)
    with open(p, "w") as f:
        if isinstance(doc, str):
            f.write(doc)
        else:
            json.dump(doc, f, indent=1)
    return p


def test_read_table_and_json(ctl):
    cur = server_policy(ctl.kmsd)
    r = ctl.ok("policy", "read", token=ctl.admin)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["version", str(cur["version"])]
    assert ("rules        %d" % len(cur["document"]["rules"])) in lines
    for i, rule in enumerate(cur["document"]["rules"]):
        assert ("  [%d] %s %s" % (i, rule["effect"], rule["name"])) in lines, rule["name"]
    assert any(ln.strip().startswith("operations") and "sys.health" in ln for ln in lines)
    d = ctl.json("policy", "read", token=ctl.admin)
    assert d == cur


def test_write_file_and_stdin(ctl):
    k = ctl.kmsd
    cur = server_policy(k)
    doc = cur["document"]
    doc["version"] = cur["version"] + 1
    doc["description"] = "written by kmsctl policy write (file)"
    p = write_doc(ctl, "v2.json", doc)
    r = ctl.ok("policy", "write", p, token=ctl.admin)
    assert r.stdout.strip() == "installed policy version %d (was %d)" % (cur["version"] + 1, cur["version"])
    now = server_policy(k)
    assert now["version"] == cur["version"] + 1
    assert now["document"]["description"] == "written by kmsctl policy write (file)"
    # from stdin, and --format json gives the server's data
    doc["version"] += 1
    doc["description"] = "written by kmsctl policy write (stdin)"
    r = ctl.run("policy", "write", "-", "--format", "json", token=ctl.admin, stdin=json.dumps(doc), want=0)
    assert json.loads(r.stdout) == {"version": cur["version"] + 2, "previous_version": cur["version"] + 1}
    assert server_policy(k)["document"]["description"] == "written by kmsctl policy write (stdin)"
    # the file is sent as it is: the stored text keeps its layout (the one-space indent)
    assert ctl.json("policy", "read", token=ctl.admin)["document"] == doc


def test_invalid_document_prints_the_server_location(ctl):
    k = ctl.kmsd
    before = server_policy(k)
    doc = json.loads(json.dumps(before["document"]))
    # line 6 column 12 holds the bad effect (the layout is fixed here on purpose)
    text = ('{\n "version": %d,\n "rules": [\n  {\n   "name": "x",\n   "effect": "perhaps",\n'
            '   "principals": ["*"], "operations": ["sys.health"]\n  }\n ]\n}\n' % (before["version"] + 1))
    p = write_doc(ctl, "bad.json", text)
    r = ctl.run("policy", "write", p, token=ctl.admin, want=1)
    fails(r, 400, "policy line 6", "rules[0].effect")
    server_line = [ln for ln in r.stderr.splitlines() if ln.startswith("kmsctl: 400 ")][0]
    # the offline check finds the same place with the same words
    c = ctl.run("policy", "check", p, addr=False, want=1)
    assert c.stderr.strip() == "kmsctl: %s: %s" % (p, server_line[len("kmsctl: 400 "):]), (c.stderr, server_line)
    # a JSON syntax error: its line too
    p2 = write_doc(ctl, "syntax.json", '{\n "version": 9,\n "rules": [\n  {,}\n ]\n}\n')
    r = ctl.run("policy", "write", p2, token=ctl.admin, want=1)
    fails(r, 400, "malformed JSON at line 4 column 4")
    c = ctl.run("policy", "check", p2, addr=False, want=1)
    assert c.stderr.startswith("kmsctl: %s: policy line 4 column 4" % p2), c.stderr
    # not newer than the one in force: 409
    doc["description"] = "same version"
    r = ctl.run("policy", "write", write_doc(ctl, "old.json", doc), token=ctl.admin, want=1)
    fails(r, 409, "not newer than the current version %d" % before["version"])
    assert server_policy(k) == before


def test_usage_errors_and_unreachable(ctl):
    before = server_policy(ctl.kmsd)
    r = ctl.run("policy", "write", token=ctl.admin, want=2)
    r = ctl.run("policy", "write", "a", "b", token=ctl.admin, want=2)
    r = ctl.run("policy", "write", str(ctl.tmp / "missing.json"), token=ctl.admin, want=2)
    assert "missing.json" in r.stderr
    r = ctl.run("policy", "write", write_doc(ctl, "empty.json", ""), token=ctl.admin, want=2)
    assert "empty" in r.stderr
    big = write_doc(ctl, "big.json", " " * (1024 * 1024 + 1))
    ctl.run("policy", "write", big, token=ctl.admin, want=2)
    ctl.run("policy", "read", "extra", token=ctl.admin, want=2)
    ctl.run("policy", "frobnicate", token=ctl.admin, want=2)
    # stdin cannot carry both the token and the document
    doc = dict(before["document"], version=before["version"] + 1)
    r = ctl.run("policy", "write", "-", "--token-file", "-", stdin="x\n" + json.dumps(doc), want=2)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = ctl.run("policy", "read", token=ctl.admin, env={"KMS_ADDR": "https://127.0.0.1:%d" % port}, want=3)
    assert "cannot reach" in r.stderr
    assert server_policy(ctl.kmsd) == before


def test_service_refused_auditor_reads(ctl):
    k = ctl.kmsd
    t = k.create_tenant()
    svc = ctl.service_token([t])
    before = server_policy(k)
    r = ctl.run("policy", "read", token=svc, want=1)
    fails(r, 403, "permission denied")
    doc = dict(before["document"], version=before["version"] + 1)
    p = write_doc(ctl, "svc.json", doc)
    r = ctl.run("policy", "write", p, token=svc, want=1)
    fails(r, 403, "permission denied")
    aud = k.create_principal(role="auditor")
    aud_tok = write_secret(ctl.tmp / "auditor.token", k.create_token(aud)[0])
    assert ctl.json("policy", "read", token=aud_tok) == before
    r = ctl.run("policy", "write", p, token=aud_tok, want=1)
    fails(r, 403, "permission denied")
    bad = write_secret(ctl.tmp / "bad.token", "kms.0000000000000000.not-a-real-token")
    r = ctl.run("policy", "write", p, token=bad, want=1)
    fails(r, 403)
    assert server_policy(k) == before


def test_default_is_the_builtin_document(ctl):
    r = ctl.ok("policy", "default", addr=False)
    k = subprocess.run([ctl.kmsd.bin, "default-policy"], capture_output=True, text=True, timeout=60)
    assert k.returncode == 0 and r.stdout == k.stdout
    doc = json.loads(r.stdout)
    assert any(rule.get("require_mfa") for rule in doc["rules"])
    p = write_doc(ctl, "default.json", r.stdout)
    c = ctl.ok("policy", "check", p, addr=False)
    assert c.stdout.strip() == "%s: policy version %d, %d rules: valid" % (p, doc["version"], len(doc["rules"]))
    ctl.run("policy", "default", "x", addr=False, want=2)
