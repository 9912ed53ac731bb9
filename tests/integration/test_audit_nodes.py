"""Audit logs of several kmsd nodes, verified and searched together (docs/AUDIT.md
"Several nodes"): two kmsd processes with different node_id, each with its own
audit_path, serving ONE SQLite store file on ONE SoftHSM2 token (several kmsd may
serve one store: kms/kmsd.c serve_lock). Requests go to both; then `kmsctl audit
verify` over both logs says ok for 2 nodes, `kmsctl audit search` prints one timeline
merged by time holding both nodes' records, and a tampered copy of one node's log
fails, naming the node and the seq.

Environment: KMSCTL_BIN (default: kmsctl beside KMSD_BIN)."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO, Kmsd, kmsd_bin, sanitizer_findings


def kmsctl_bin():
    b = os.environ.get("KMSCTL_BIN") or os.path.join(os.path.dirname(kmsd_bin()), "kmsctl")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def kmsctl(*args, want=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "VAULT_", "XDG_CONFIG"))}
    e["HOME"] = "/nonexistent"
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    e["LSAN_OPTIONS"] = "suppressions=" + os.path.join(REPO, "tests", "lsan.supp")
    r = subprocess.run([kmsctl_bin()] + [str(a) for a in args], env=e, capture_output=True,
                       text=True, timeout=120)
    found = sanitizer_findings(r.stderr)
    assert not found, "kmsctl %s: sanitizer report %s:\n%s" % (args, found, r.stderr)
    if want is not None:
        assert r.returncode == want, "kmsctl %s -> %d (want %d)\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, args)), r.returncode, want, r.stdout[-4000:], r.stderr[-4000:])
    return r


def read_log(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f.read().splitlines()]


def second_node(a, tmp, node_id):
    """Another kmsd on a's store file and token, with its own audit log and port."""
    os.makedirs(tmp)
    b = Kmsd(tmp)
    b.node_id = node_id
    b.env, b.ca, b.admin_token = a.env, a.ca, a.admin_token
    b.store_path = a.store_path
    with open(a.conf) as f:
        conf = f.read()
    for k, old, new in (("port_file", a.port_file, b.port_file),
                        ("audit_path", a.audit_path, b.audit_path),
                        ("node_id", a.node_id, b.node_id)):
        line = "%s = %s\n" % (k, old)
        assert line in conf, (k, conf)
        conf = conf.replace(line, "%s = %s\n" % (k, new))
    with open(b.conf, "w") as f:
        f.write(conf)
    os.chmod(b.conf, 0o600)
    # The store remembers that an audit log was begun (meta audit_started), so a node
    # whose audit_path has no log refuses to start a silent new chain; an empty file
    # says "begin here knowingly" (docs/AUDIT.md), and its first record says so.
    open(b.audit_path, "w").close()
    os.chmod(b.audit_path, 0o600)
    return b


def stop_clean(k):
    rc, err = k.stop()
    found = sanitizer_findings(err)
    assert not found, "sanitizer report(s) %s:\n%s" % (found, err[-20000:])
    assert rc == 0, "kmsd %s exit status %r\n%s" % (k.node_id, rc, err[-5000:])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes")
    a = Kmsd(os.path.join(str(tmp), "a"))
    os.makedirs(a.tmp)
    a.node_id = "node-a"
    b = None
    try:
        a.provision()
        a.init()
        a.start()
        b = second_node(a, os.path.join(str(tmp), "b"), "node-b")
        b.start()
        t, key, tok = a.setup_tenant_key()
        # interleaved requests: data keys made on one node decrypt on the other
        for i in range(6):
            mk, other = (a, b) if i % 2 == 0 else (b, a)
            r = mk.datakey(tok, t, key)
            assert r.status_code == 200, r.text
            d = r.json()["data"]
            r = other.decrypt(tok, t, key, ciphertext=d["ciphertext"])
            assert r.status_code == 200, r.text
            assert r.json()["data"]["plaintext"] == d["plaintext"]
        r = b.decrypt(tok, t, key, ciphertext="not-a-ciphertext")
        assert r.status_code == 400, r.text
    except BaseException:
        a.kill()
        if b is not None:
            b.kill()
        raise
    stop_clean(b)
    stop_clean(a)
    return a, b


def test_both_logs_are_their_nodes(nodes):
    a, b = nodes
    for k in (a, b):
        recs = read_log(k.audit_path)
        assert recs and all(r["node"] == k.node_id for r in recs), k.node_id
        assert recs[0]["seq"] == 1
    # each served some of the calls
    assert any(r["operation"] == "decrypt" for r in read_log(a.audit_path))
    assert any(r["operation"] == "datakey" for r in read_log(b.audit_path))


def test_verify_both_nodes(nodes):
    a, b = nodes
    r = kmsctl("audit", "verify", a.tmp, b.tmp, want=0)
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    assert lines[0].startswith("node node-a: ok: %d records, " % len(read_log(a.audit_path))), lines
    assert lines[1].startswith("node node-b: ok: %d records, " % len(read_log(b.audit_path))), lines
    total = len(read_log(a.audit_path)) + len(read_log(b.audit_path))
    assert lines[2].startswith("ok: 2 nodes, %d records, " % total), lines
    # the files themselves, in any order, with one key for both (one token)
    r = kmsctl("audit", "verify", "--pubkey", a.audit_path + ".pub.pem", b.audit_path,
               a.audit_path, want=0)
    assert r.stdout.splitlines()[-1].startswith("ok: 2 nodes, "), r.stdout
    # both expected: ok; a third expected but not given: FAIL
    kmsctl("audit", "verify", "--expect-nodes", "node-a,node-b", a.tmp, b.tmp, want=0)
    r = kmsctl("audit", "verify", "--expect-nodes", "node-a,node-b,node-c", a.tmp, b.tmp, want=1)
    assert "node node-c: FAIL: missing: no log of node node-c among the files given" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("FAIL: 1 of 3 nodes"), r.stdout
    # one node's log alone: the one-line output it always had
    r = kmsctl("audit", "verify", "--node", "node-b", a.tmp, b.tmp, want=0)
    assert r.stdout.startswith("ok: %d records, " % len(read_log(b.audit_path))), r.stdout
    assert len(r.stdout.splitlines()) == 1
    r = kmsctl("audit", "verify", b.tmp, want=0)
    assert r.stdout.startswith("ok: "), r.stdout


def test_search_is_one_timeline(nodes):
    a, b = nodes
    total = len(read_log(a.audit_path)) + len(read_log(b.audit_path))
    r = kmsctl("--format", "json", "audit", "search", b.tmp, a.tmp, want=0)
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(recs) == total
    assert {x["node"] for x in recs} == {"node-a", "node-b"}
    from datetime import datetime
    keys = [(datetime.fromisoformat(x["time"].replace("Z", "+00:00")), x["node"], x["seq"])
            for x in recs]
    assert keys == sorted(keys), "not merged by time"
    # the two nodes' records interleave (the requests alternated between them)
    changes = sum(1 for i in range(1, len(recs)) if recs[i]["node"] != recs[i - 1]["node"])
    assert changes >= 4, [x["node"] for x in recs]
    # each node's records keep their order
    for n in ("node-a", "node-b"):
        seqs = [x["seq"] for x in recs if x["node"] == n]
        assert seqs == list(range(1, len(seqs) + 1))
    # the table names each record's node; --node keeps working
    r = kmsctl("audit", "search", "--operation", "decrypt", a.tmp, b.tmp, want=0)
    out = r.stdout.splitlines()
    assert out[0].startswith("NODE") and "SEQ" in out[0], out[0]
    rows = out[1:-1]
    assert rows and all(ln.split()[0] in ("node-a", "node-b") for ln in rows), rows
    assert {ln.split()[0] for ln in rows} == {"node-a", "node-b"}
    assert out[-1].endswith("2 nodes, merged by time)"), out[-1]
    r = kmsctl("--format", "json", "audit", "search", "--node", "node-b", a.tmp, b.tmp, want=0)
    only_b = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert only_b == read_log(b.audit_path)
    # and a report over both nodes counts every node's records
    svc = next(x["principal"] for x in recs if x["operation"] == "decrypt")
    r = kmsctl("--format", "json", "audit", "report", "access", "--principal", svc, a.tmp,
               b.tmp, want=0)
    rep = json.loads(r.stdout)
    assert rep["nodes"] == 2 and rep["records"] == total, rep


def test_tampered_copy_fails(nodes, tmp_path):
    a, b = nodes
    d = tmp_path / "tampered"
    d.mkdir()
    shutil.copy(b.audit_path, d / "audit.log")
    shutil.copy(b.audit_path + ".pub.pem", d / "audit.log.pub.pem")
    with open(d / "audit.log") as f:
        lines = f.read().splitlines(keepends=True)
    victim = next(i for i, ln in enumerate(lines) if '"operation":"decrypt"' in ln)
    rec = json.loads(lines[victim])
    assert '"outcome":"deny"' not in lines[victim]
    lines[victim] = lines[victim].replace('"outcome":"%s"' % rec["outcome"], '"outcome":"deny"', 1)
    with open(d / "audit.log", "w") as f:
        f.writelines(lines)
    r = kmsctl("audit", "verify", a.tmp, str(d), want=1)
    out = r.stdout.splitlines()
    assert out[0].startswith("node node-a: ok: "), out
    assert out[1].startswith("node node-b: FAIL: record seq %d (line %d of %s): edited: " % (
        rec["seq"], victim + 1, d / "audit.log")), out
    assert out[2].startswith("FAIL: 1 of 2 nodes"), out
    # with the original too: node-b's seq 1 twice, and one copy differs
    r = kmsctl("audit", "verify", a.tmp, b.tmp, str(d), want=1)
    assert "node node-a: ok: " in r.stdout and "node node-b: FAIL: " in r.stdout, r.stdout
