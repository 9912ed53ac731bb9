"""kmsctl audit search and audit report access|exposure (docs/KMSCTL.md "Audit search
and reports").

Part 1 drives a real kmsd with known principals, keys, versions and batches, then
checks the two reports against exact expected counts and every search filter against
an independent Python filter over the same log. Part 2 runs the tools on hand-made
logs: rotated segments given out of order, a malformed and an over-long line, an empty
file, overlapping segments, records with and without the context members (which the
server may or may not write yet), --context through a fake hash endpoint, and the
usage errors (exit 2).

Environment: KMSCTL_BIN (default build/kmsctl, relative to the repo root)."""

import fnmatch
import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading

import pytest

from conftest import REPO, b64, sanitizer_findings, uniq

H = {n: "hmac-sha256:" + hashlib.sha256(n.encode()).hexdigest() for n in
     ("p1", "p2", "p3", "treat", "pay", "aad")}


def kmsctl_bin():
    b = os.environ.get("KMSCTL_BIN", "build/kmsctl")
    if not os.path.isabs(b):
        b = os.path.join(REPO, b)
    return b


def run(*args, want=None, env=None, home=None):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("KMS_", "VAULT_", "XDG_CONFIG"))}
    e["HOME"] = str(home or "/nonexistent")
    e["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    e["LSAN_OPTIONS"] = "suppressions=" + os.path.join(REPO, "tests", "lsan.supp")
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    e.update(env or {})
    r = subprocess.run([kmsctl_bin()] + [str(a) for a in args], env=e, capture_output=True,
                       text=True, timeout=120)
    found = sanitizer_findings(r.stderr)
    assert not found, "kmsctl %s: sanitizer report %s:\n%s" % (args, found, r.stderr)
    if want is not None:
        assert r.returncode == want, "kmsctl %s -> %d (want %d)\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, args)), r.returncode, want, r.stdout[-3000:], r.stderr[-3000:])
    return r


def search(*args, want=0, **kw):
    """Matching records of `--format json audit search` as parsed objects."""
    r = run("--format", "json", "audit", "search", *args, want=want, **kw)
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def report(kind, *args, want=0, **kw):
    r = run("--format", "json", "audit", "report", kind, *args, want=want, **kw)
    return json.loads(r.stdout)


def read_log(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f.read().splitlines()]


# ---- part 1: a real kmsd ---------------------------------------------------------

class Traffic:
    pass


@pytest.fixture(scope="module")
def traffic(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    x = Traffic()
    x.t, x.t2 = uniq("srch"), uniq("srch2")
    kmsd.create_tenant(x.t)
    kmsd.create_tenant(x.t2)
    x.k = kmsd.create_key(x.t, "records")
    kmsd.create_key(x.t2, "other")
    x.alice = kmsd.create_principal(uniq("alice"), tenants=[x.t])
    x.bob = kmsd.create_principal(uniq("bob"), tenants=[x.t])
    ta, tb = kmsd.create_token(x.alice)[0], kmsd.create_token(x.bob)[0]
    x.rids = {x.alice: [], x.bob: []}
    n = [0]

    def call(who, tok, path, body, want):
        n[0] += 1
        rid = "srch-%s-%03d" % (who.split("-")[0], n[0])
        r = kmsd.post(path, body, token=tok, headers={"X-Request-Id": rid})
        assert r.status_code == want, (path, r.status_code, r.text)
        x.rids[who].append(rid)
        return r.json()

    t, k = x.t, x.k
    ctx = lambda p: {"encryption_context": {"patient": p, "purpose": "treat"}}  # noqa: E731
    # alice under version 1: three data keys (patients p1, p2, p1), two decrypts
    cts = []
    for p in ("p1", "p2", "p1"):
        d = call(x.alice, ta, "/v1/%s/datakey/wrapped/%s" % (t, k), ctx(p), 200)
        cts.append((d["data"]["ciphertext"], p))
    for ct, p in cts[:2]:
        call(x.alice, ta, "/v1/%s/decrypt/%s" % (t, k), dict(ctx(p), ciphertext=ct), 200)
    # a batch with one bad item: answered 400, the good item's plaintext goes out
    call(x.alice, ta, "/v1/%s/decrypt/%s" % (t, k),
         {"batch_input": [dict(ctx("p1"), ciphertext=cts[0][0]),
                          dict(ctx("p1"), ciphertext="vault:v1:AAAA")]}, 400)
    # denied: a tenant alice has no scope in
    call(x.alice, ta, "/v1/%s/datakey/plaintext/other" % x.t2, {}, 403)
    x.t_before_rotate = read_log(kmsd.audit_path)[-1]["time"]
    kmsd.rotate(t, k)
    # alice rewraps a v1 ciphertext: recorded under version 2, from_version 1
    call(x.alice, ta, "/v1/%s/rewrap/%s" % (t, k), dict(ctx("p1"), ciphertext=cts[0][0]), 200)
    # bob: two encrypts under v2, a decrypt of a v1 ciphertext, a bad ciphertext (no
    # version), and a batch of a v1 and a v2 ciphertext (each item's version recorded)
    v2 = []
    for p in ("p3", "p3"):
        d = call(x.bob, tb, "/v1/%s/encrypt/%s" % (t, k), dict(ctx(p), plaintext=b64("hi")), 200)
        v2.append(d["data"]["ciphertext"])
    call(x.bob, tb, "/v1/%s/decrypt/%s" % (t, k), dict(ctx("p2"), ciphertext=cts[1][0]), 200)
    call(x.bob, tb, "/v1/%s/decrypt/%s" % (t, k), dict(ctx("p2"), ciphertext="vault:v1:AAAA"), 400)
    call(x.bob, tb, "/v1/%s/decrypt/%s" % (t, k),
         {"batch_input": [dict(ctx("p2"), ciphertext=cts[1][0]),
                          dict(ctx("p3"), ciphertext=v2[0])]}, 200)
    # A snapshot: the server's timer may append a checkpoint at any moment.
    with open(kmsd.audit_path, "rb") as f:
        data = f.read()
    x.dir = str(tmp_path_factory.mktemp("snapshot"))
    x.path = os.path.join(x.dir, "audit.log")
    with open(x.path, "wb") as f:
        f.write(data[:data.rindex(b"\n") + 1])
    x.log = read_log(x.path)
    # Whether this server writes the context members (another branch adds them).
    x.has_ctx = any("encryption_context" in r or "contexts" in r for r in x.log)
    return x


def test_report_exposure_version_1(kmsd, traffic):
    x = traffic
    rep = report("exposure", "--tenant", x.t, "--key", x.k, "--version", "1", x.dir)
    assert rep["report"] == "exposure" and rep["version"] == 1 and rep["malformed"] == 0
    assert rep["files"] == [x.path]
    rows = {r["principal"]: r for r in rep["rows"]}
    assert set(rows) == {x.alice, x.bob}, rep["rows"]
    a, b = rows[x.alice], rows[x.bob]
    # The records say each batch item's outcome and version, and a rewrap's source
    # version: alice: 3 datakeys, 2 decrypts, the one good item of the partial batch,
    # and the rewrap away from v1
    assert a["requests"] == 7 and a["items"] == 7, a
    assert a["operations"] == {"datakey": 3, "decrypt": 3, "rewrap": 1}, a
    assert a["partial_batches"] == 0 and a["uncertain_batches"] == 0, a
    assert a["request_ids"] == 7 and a["remote_addrs"] == ["127.0.0.1"], a
    # bob: one decrypt of a v1 ciphertext and the v1 item of his mixed batch
    assert b["requests"] == 2 and b["items"] == 2 and b["operations"] == {"decrypt": 2}, b
    assert b["uncertain_batches"] == 0, b
    if x.has_ctx:
        assert a["context_count"] == 2, a
        assert all(c["patient"].startswith("hmac-sha256:") for c in a["contexts"]), a
    else:
        assert a["context_count"] == 0 and a["contexts"] == [], a
    # first/last are the times of alice's first and last counted record
    mine = [r for r in x.log if r.get("principal") == x.alice and r["operation"] in
            ("datakey", "decrypt", "rewrap") and 1 in (r.get("version"), r.get("from_version"))]
    assert a["first"] == mine[0]["time"] and a["last"] == mine[-1]["time"], (a, mine)


def test_report_exposure_version_2_and_time_range(kmsd, traffic):
    x = traffic
    rep = report("exposure", "--tenant", x.t, "--key", x.k, "--version", "2", x.dir)
    rows = {r["principal"]: r for r in rep["rows"]}
    assert set(rows) == {x.alice, x.bob}, rep["rows"]  # the admin's rotate is no use
    assert rows[x.alice]["operations"] == {"rewrap": 1}
    b = rows[x.bob]
    assert b["requests"] == 3 and b["items"] == 3 and b["operations"] == {"encrypt": 2, "decrypt": 1}
    assert b["partial_batches"] == 0 and b["uncertain_batches"] == 0
    # --to before the rotation: no version 2 yet; --from after it: no version 1 use by alice
    rep = report("exposure", "--tenant", x.t, "--key", x.k, "--version", "2",
                 "--to", x.t_before_rotate, x.dir)
    assert rep["to"] == x.t_before_rotate
    # (alice's partial batch says its good item used v1)
    assert rep["rows"] == [], rep["rows"]
    rep = report("exposure", "--tenant", x.t, "--key", x.k, "--version", "1",
                 "--from", x.t_before_rotate, x.dir)
    # after the rotation, v1 was still used: bob's decrypts and alice's rewrap from it
    assert sorted(r["principal"] for r in rep["rows"] if r["requests"]) == \
        sorted([x.alice, x.bob])
    # a key version nobody used
    rep = report("exposure", "--tenant", x.t, "--key", x.k, "--version", "9", x.dir)
    assert all(r["requests"] == 0 for r in rep["rows"]), rep
    # table form
    r = run("audit", "report", "exposure", "--tenant", x.t, "--key", x.k, "--version", "1",
            x.path, want=0)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("exposure report: tenant %s, key %s, version 1" % (x.t, x.k))
    assert lines[2].split()[:5] == ["PRINCIPAL", "REQUESTS", "ITEMS", "PARTIAL", "UNCERTAIN"]
    row = [ln.split() for ln in lines[3:] if ln.startswith(x.alice)][0]
    assert row[1:5] == ["7", "7", "0", "0"], row
    assert "datakey=3" in lines[3 + [ln.startswith(x.alice) for ln in lines[3:]].index(True)]


def test_report_access(kmsd, traffic):
    x = traffic
    rep = report("access", "--principal", x.alice, x.dir)
    assert rep["report"] == "access" and rep["principal"] == x.alice
    rows = {(r["tenant"], r["key"], r["version"]): r for r in rep["rows"]}
    assert set(rows) == {(x.t, x.k, 1), (x.t, x.k, 2), (x.t2, "other", None)}, rows.keys()
    v1 = rows[(x.t, x.k, 1)]
    assert (v1["requests"], v1["items"], v1["allow"], v1["deny"], v1["error"]) == (6, 7, 5, 0, 1)
    assert v1["operations"] == {"datakey": 3, "decrypt": 3}
    assert v1["context_count"] == (2 if x.has_ctx else 0), v1
    d = rows[(x.t2, "other", None)]
    assert (d["requests"], d["allow"], d["deny"]) == (1, 0, 1) and d["operations"] == {"datakey": 1}
    assert rows[(x.t, x.k, 2)]["operations"] == {"rewrap": 1}
    assert rep["matched"] == len(x.rids[x.alice])
    # rows sorted by tenant, key, version
    keys = [(r["tenant"], r["key"], r["version"] or 0) for r in rep["rows"]]
    assert keys == sorted(keys)
    rep = report("access", "--principal", x.bob, x.dir)
    rows = {(r["tenant"], r["key"], r["version"]): r for r in rep["rows"]}
    assert set(rows) == {(x.t, x.k, 1), (x.t, x.k, 2), (x.t, x.k, None)}, rows.keys()
    assert rows[(x.t, x.k, None)]["error"] == 1  # the bad ciphertext: no version
    assert rows[(x.t, x.k, 2)]["requests"] == 3 and rows[(x.t, x.k, 2)]["items"] == 4
    # nobody of that name; table form says so
    r = run("audit", "report", "access", "--principal", "nobody-at-all", x.dir, want=0)
    assert "(no record of this principal)" in r.stdout
    r = run("audit", "report", "access", "--principal", x.alice, x.dir, want=0)
    assert r.stdout.startswith("access report: principal %s, from the start to the end" % x.alice)
    assert "ALLOW" in r.stdout and "datakey=3 decrypt=3" in r.stdout


def py_filter(log, **f):
    out = []
    for r in log:
        ok = True
        for k, v in f.items():
            if k == "operation":
                ok = ok and r.get("operation") is not None and fnmatch.fnmatchcase(r["operation"], v)
            elif k == "from":
                ok = ok and r["time"] >= v
            elif k == "to":
                ok = ok and r["time"] < v
            else:
                ok = ok and r.get(k) == v
        if ok:
            out.append(r["seq"])
    return out


def test_search_every_filter_against_the_log(kmsd, traffic):
    x = traffic
    log = x.log
    mid = log[len(log) // 2]["time"]
    cases = [
        (["--principal", x.alice], dict(principal=x.alice)),
        (["--tenant", x.t], dict(tenant=x.t)),
        (["--key", x.k], dict(key=x.k)),
        (["--tenant", x.t, "--key", x.k, "--version", "1"], dict(tenant=x.t, key=x.k, version=1)),
        (["--operation", "decrypt"], dict(operation="decrypt")),
        (["--operation", "key.*"], dict(operation="key.*")),
        (["--operation", "*.create"], dict(operation="*.create")),
        (["--outcome", "deny"], dict(outcome="deny")),
        (["--outcome", "error", "--status", "400"], dict(outcome="error", status=400)),
        (["--status", "403"], dict(status=403)),
        (["--request-id", x.rids[x.bob][0]], dict(request_id=x.rids[x.bob][0])),
        (["--node", kmsd.node_id], dict(node=kmsd.node_id)),
        (["--node", "elsewhere"], dict(node="elsewhere")),
        (["--from", mid], {"from": mid}),
        (["--to", mid], {"to": mid}),
        (["--from", log[0]["time"][:10]], {"from": log[0]["time"][:10]}),
        (["--principal", x.bob, "--operation", "decrypt", "--outcome", "allow"],
         dict(principal=x.bob, operation="decrypt", outcome="allow")),
    ]
    for args, f in cases:
        got = [r["seq"] for r in search(*args, x.dir)]
        want = py_filter(log, **f)
        assert got == want, (args, got, want)
    # exact counts for the traffic this module made
    assert len(search("--principal", x.alice, x.dir)) == len(x.rids[x.alice]) == 8
    assert {r["request_id"] for r in search("--principal", x.bob, x.dir)} == set(x.rids[x.bob])
    assert len(search("--principal", x.alice, "--outcome", "deny", x.dir)) == 1
    assert len(search("--tenant", x.t, "--key", x.k, "--version", "2", "--principal", x.bob,
                      x.dir)) == 3
    # the lines come out exactly as they are in the log
    with open(x.path) as f:
        raw = f.read().splitlines()
    r = run("--format", "json", "audit", "search", "--principal", x.bob, x.path, want=0)
    assert all(ln in raw for ln in r.stdout.splitlines())
    # table: header, one line per record, footer
    r = run("audit", "search", "--principal", x.alice, x.path, want=0)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "PRINCIPAL", "REMOTE_ADDR", "OPERATION", "TENANT",
                                "KEY", "VERSION", "OUTCOME", "STATUS", "REQUEST_ID", "REASON"]
    assert len(lines) == 1 + 8 + 1
    assert lines[-1] == "-- 8 of %d records matched (1 file)" % len(log)
    # no match: exit 0, just the header and footer
    r = run("audit", "search", "--principal", "nobody-at-all", x.dir, want=0)
    assert r.stdout.splitlines()[-1].startswith("-- 0 of ")


def test_search_context_on_this_server(kmsd, traffic, tmp_path):
    """--context asks the server to hash the value: without the endpoint the error
    names --context-hash; with it, the search runs."""
    x = traffic
    tok = tmp_path / "admin.token"
    shutil.copy(kmsd.admin_token_file, tok)
    os.chmod(tok, 0o600)
    env = {"KMS_ADDR": kmsd.url, "KMS_CACERT": kmsd.ca}
    r = run("audit", "search", "--context", "patient=p1", "--token-file", tok, x.dir, env=env)
    print("kmsctl audit search --context on this server: exit %d\n%s" % (r.returncode, r.stderr))
    if r.returncode == 1:
        assert "/v1/sys/audit/hash" in r.stderr and "--context-hash" in r.stderr, r.stderr
        assert r.stdout == ""
        return
    assert r.returncode == 0, r.stderr
    assert x.has_ctx, "the server hashes values but writes no contexts"
    # alice's two datakeys, one decrypt, the partial batch and the rewrap carried p1
    got = search("--context", "patient=p1", "--token-file", tok, x.dir, env=env)
    assert sorted(g["request_id"] for g in got) == sorted(
        x.rids[x.alice][i] for i in (0, 2, 3, 5, 7)), got
    # purpose=treat was in every data-plane call's context
    got = search("--context", "patient=p2", "--context", "purpose=treat", "--token-file", tok,
                 x.dir, env=env)
    assert {g["principal"] for g in got} == {x.alice, x.bob}


# ---- part 2: hand-made logs --------------------------------------------------------

def rec(seq, principal="alice", op="decrypt", tenant="t1", key="k1", version=1,
        outcome="allow", status=200, **extra):
    r = {"seq": seq, "time": "2026-03-01T10:%02d:%02d.000000Z" % (seq // 60, seq % 60),
         "node": "n1", "request_id": "rid-%d" % seq, "principal": principal,
         "auth_method": "token", "mfa": False, "remote_addr": "10.0.0.%d" % (seq % 2),
         "operation": op, "tenant": tenant, "key": key, "version": version}
    if "batch" in extra:
        r["batch"] = extra.pop("batch")
    r.update(outcome=outcome, status=status, reason="r")
    r.update(extra)
    r.update(prev="0" * 64, hash="0" * 64)
    return json.dumps(r, separators=(",", ":"))


def write(path, lines, newline=True):
    with open(path, "w") as f:
        f.write("\n".join(lines) + ("\n" if newline and lines else ""))
    return str(path)


@pytest.fixture
def segs(tmp_path):
    """Three segments and an empty file: seq 1-4, 5-8 (with a malformed line), 9-11.
    Batch contexts in both shapes: kmsd's items[] (seq 8) and a contexts[] array (seq 7);
    seq 9 has a context that was hashed whole (a string: it names no key)."""
    d = tmp_path / "log"
    d.mkdir()
    ec = lambda p: {"encryption_context": {"patient": H[p], "purpose": H["treat"]},  # noqa: E731
                    "associated_data": H["aad"]}
    s1 = write(d / "audit-00000000000000000001.log", [
        rec(1, op="tenant.create", principal="admin", key=None, version=None),
        rec(2, op="datakey", **ec("p1")),
        rec(3, **ec("p1")),
        rec(4, **ec("p2")),
    ])
    s5 = write(d / "audit-00000000000000000005.log", [
        rec(5, principal="bob", **ec("p2")),
        '{"seq":6,"time":"2026-03-01T10:00:06Z","tenant":5}',
        rec(7, principal="bob", version=2, batch=3,
            contexts=[{"patient": H["p1"]}, None, {"patient": H["p3"], "purpose": H["pay"]}]),
        rec(8, principal="bob", outcome="error", status=400, batch=2, encryption_context=None,
            associated_data=None,
            items=[{"encryption_context": {"patient": H["p3"]}, "associated_data": None},
                   {"encryption_context": {"patient": H["p2"]}, "associated_data": H["aad"]}]),
    ])
    cur = write(d / "audit.log", [
        rec(9, op="key.rotate", principal="admin", version=2, encryption_context=H["p1"]),
        rec(10, principal="alice", outcome="deny", status=403, version=None, **ec("p3")),
        rec(11, principal="alice", op="audit.checkpoint", tenant=None, key=None, version=None),
    ])
    empty = write(d / "audit-99999999999999999999.log", [])
    return {"dir": str(d), "s1": s1, "s5": s5, "cur": cur, "empty": empty}


def test_segments_out_of_order_and_malformed_line(segs):
    r = run("--format", "json", "audit", "search", segs["cur"], segs["empty"], segs["s5"],
            segs["s1"], segs["cur"], want=1)
    assert [json.loads(ln)["seq"] for ln in r.stdout.splitlines()] == \
        [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert "audit-00000000000000000005.log:2: malformed line skipped: \"tenant\" is not a " \
           "string or null" in r.stderr, r.stderr
    assert "1 malformed line skipped" in r.stderr
    # --lenient: the same output, the message, exit 0
    r2 = run("--format", "json", "audit", "search", "--lenient", segs["dir"], want=0)
    assert r2.stdout == r.stdout and "malformed line skipped" in r2.stderr
    # the directory alone finds the same files (not the .pub.pem, not other names)
    with open(os.path.join(segs["dir"], "audit.log.pub.pem"), "w") as f:
        f.write("-----BEGIN PUBLIC KEY-----\n")
    with open(os.path.join(segs["dir"], "notes.txt"), "w") as f:
        f.write("hello\n")
    r3 = run("--format", "json", "audit", "search", segs["dir"], "--lenient", want=0)
    assert r3.stdout == r.stdout
    # only the empty file: nothing, exit 0
    r = run("audit", "search", segs["empty"], want=0)
    assert r.stdout.splitlines()[-1] == "-- 0 of 0 records matched (1 file)"


def test_torn_and_overlong_lines_and_overlap(segs, tmp_path):
    write(segs["cur"], [rec(9), rec(10)[:40]], newline=False)  # a torn last line
    r = run("--format", "json", "audit", "search", segs["cur"], want=1)
    assert [json.loads(ln)["seq"] for ln in r.stdout.splitlines()] == [9]
    assert "audit.log:2: malformed line skipped" in r.stderr and "no newline" in r.stderr
    big = "{" + "x" * (8 << 20) + "}"
    write(segs["cur"], [rec(9), big, rec(10)])
    r = run("--format", "json", "audit", "search", segs["cur"], want=1)
    assert [json.loads(ln)["seq"] for ln in r.stdout.splitlines()] == [9, 10]
    assert "audit.log:2: malformed line skipped: longer than 8388608 bytes" in r.stderr
    # a copy of a segment under another name: records counted twice, said so
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(segs["s1"], other / "audit-old.log")
    write(segs["s5"], [rec(5)])
    r = run("--format", "json", "audit", "search", segs["s1"], segs["s5"], str(other), want=1)
    assert "follows seq" in r.stderr and "out of seq order" in r.stderr, r.stderr
    assert r.stderr.count("follows seq") == 1  # once per file
    run("--format", "json", "audit", "search", "--lenient", segs["s1"], str(other), want=0)


def test_context_hash_filters(segs):
    d = segs["dir"]
    seqs = lambda *a: [r["seq"] for r in search("--lenient", *a, d)]  # noqa: E731
    assert seqs("--context-hash", "patient=" + H["p1"]) == [2, 3, 7]
    assert seqs("--context-hash", "patient=" + H["p1"].upper().replace("HMAC-SHA256", "hmac-sha256")) \
        == [2, 3, 7]
    # all pairs in one context: p3+pay is in one batch item of seq 7, p3+treat in seq 10
    assert seqs("--context-hash", "patient=" + H["p3"], "--context-hash", "purpose=" + H["pay"]) == [7]
    assert seqs("--context-hash", "patient=" + H["p3"], "--context-hash", "purpose=" + H["treat"]) == [10]
    assert seqs("--context-hash", "patient=" + H["p3"]) == [7, 8, 10]
    assert seqs("--context-hash", "patient=" + H["p2"], "--principal", "bob") == [5, 8]
    assert seqs("--context-hash", "nosuchkey=" + H["p1"]) == []


def test_reports_on_handmade_segments(segs):
    rep = report("access", "--principal", "bob", "--lenient", segs["dir"])
    assert rep["malformed"] == 1 and rep["records"] == 10 and rep["matched"] == 3
    rows = {(r["tenant"], r["key"], r["version"]): r for r in rep["rows"]}
    v1, v2 = rows[("t1", "k1", 1)], rows[("t1", "k1", 2)]
    # seq 5 (allow) and 8 (a batch answered 400: its contexts count)
    assert (v1["requests"], v1["items"], v1["allow"], v1["error"]) == (2, 3, 1, 1)
    # contexts are whole objects: {p2, treat} from seq 5, {p3} and {p2} from seq 8
    assert v1["context_count"] == 3
    assert sorted(v1["contexts"], key=json.dumps) == sorted(
        [{"patient": H["p2"], "purpose": H["treat"]}, {"patient": H["p3"]},
         {"patient": H["p2"]}], key=json.dumps)
    assert v2["items"] == 3 and v2["context_count"] == 2
    assert v1["remote_addrs"] == ["10.0.0.0", "10.0.0.1"]


def test_exposure_on_handmade_segments(segs):
    rep = report("exposure", "--tenant", "t1", "--key", "k1", "--version", "1", "--lenient",
                 segs["dir"])
    rows = {r["principal"]: r for r in rep["rows"]}
    # alice: seq 2 (datakey) and 3, 4 (decrypt); seq 10 denied. bob: seq 5, and seq 8
    # (a partial batch under v1); his seq 7 batch names v2: uncertain for v1
    assert set(rows) == {"alice", "bob"}
    a, b = rows["alice"], rows["bob"]
    assert a["requests"] == 3 and a["operations"] == {"datakey": 1, "decrypt": 2}
    assert a["context_count"] == 2 and a["request_ids"] == 3
    assert b["requests"] == 2 and b["items"] == 3 and b["partial_batches"] == 1
    assert b["uncertain_batches"] == 1
    assert rep["files"][0].endswith("audit-00000000000000000001.log")
    rep = report("exposure", "--tenant", "t1", "--key", "k1", "--version", "2", "--lenient",
                 segs["dir"])
    assert [(r["principal"], r["requests"], r["items"], r["context_count"]) for r in rep["rows"]] \
        == [("bob", 1, 3, 2)]


# ---- --context through a fake hash endpoint ----------------------------------------

class _Hash(http.server.BaseHTTPRequestHandler):
    seen = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        _Hash.seen.append((self.path, self.headers.get("X-Vault-Token"), body))
        if body.get("input") == "boom":
            out, status = {"errors": ["internal error"]}, 500
        elif body.get("input") == "weird":
            out, status = {"hash": "md5:abc"}, 200
        elif self.path == "/v1/sys/audit/hash":
            out, status = {"hash": H.get(body["input"], H["p3"])}, 200
        else:
            out, status = {"errors": ["unsupported path"]}, 404
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def hash_server(kmsd):
    certs = os.path.dirname(kmsd.ca)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hash)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certs, "server.pem"), os.path.join(certs, "server.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield "https://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_context_value_hashed_by_the_server(kmsd, hash_server, segs):
    env = {"KMS_ADDR": hash_server, "KMS_CACERT": kmsd.ca, "KMS_TOKEN": "kms.test-token"}
    _Hash.seen.clear()
    got = search("--lenient", "--context", "patient=p1", segs["dir"], env=env)
    assert [r["seq"] for r in got] == [2, 3, 7]
    assert _Hash.seen == [("/v1/sys/audit/hash", "kms.test-token", {"input": "p1"})]
    # one value hashed, one given: both must hold in one context
    got = search("--lenient", "--context", "patient=p3", "--context-hash",
                 "purpose=" + H["pay"], segs["dir"], env=env)
    assert [r["seq"] for r in got] == [7]
    # failures of the hash call: 5xx -> 4, an answer without a hash -> 4, unreachable -> 3
    r = run("audit", "search", "--context", "patient=boom", segs["dir"], env=env, want=4)
    assert "500" in r.stderr and r.stdout == ""
    r = run("audit", "search", "--context", "patient=weird", segs["dir"], env=env, want=4)
    assert "no hmac-sha256" in r.stderr
    run("audit", "search", "--context", "patient=p1", segs["dir"],
        env=dict(env, KMS_ADDR="https://127.0.0.1:1"), want=3)
    # no token anywhere (and no terminal to prompt on): a usage error
    e2 = dict(env)
    del e2["KMS_TOKEN"]
    r = subprocess.run([kmsctl_bin(), "audit", "search", "--context", "patient=p1", segs["dir"]],
                       env=dict({k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "VAULT_"))},
                                HOME="/nonexistent", **e2),
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2, r.stderr


# ---- usage errors ------------------------------------------------------------------

def test_usage_errors(segs, tmp_path):
    d = segs["dir"]
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    cases = [
        ["audit", "search"],
        ["audit", "search", "--principal", "a"],
        ["audit", "search", "--version", "0", d],
        ["audit", "search", "--version", "x", d],
        ["audit", "search", "--status", "99", d],
        ["audit", "search", "--status", "600", d],
        ["audit", "search", "--outcome", "maybe", d],
        ["audit", "search", "--from", "yesterday", d],
        ["audit", "search", "--to", "2026-03-01T10:00:00", d],
        ["audit", "search", "--from", "2026-03-02", "--to", "2026-03-01", d],
        ["audit", "search", "--from", "2026-03-01", "--to", "2026-03-01", d],
        ["audit", "search", "--principal", "a", "--principal", "b", d],
        ["audit", "search", "--principal", "", d],
        ["audit", "search", "--context", "novalue", d],
        ["audit", "search", "--context", "=v", d],
        ["audit", "search", "--context-hash", "k=hmac-sha256:zz", d],
        ["audit", "search", "--context-hash", "k=" + H["p1"], "--context", "k=v", d],
        ["audit", "search", "--bogus", d],
        ["audit", "search", "--tenant", d],  # the directory taken as the value: no files
        ["audit", "search", str(tmp_path / "does-not-exist")],
        ["audit", "search", str(empty_dir)],
        ["audit", "search", "/dev/null"],
        ["audit", "search", "--format", "xml", d],
        ["audit", "report"],
        ["audit", "report", "nosuch", d],
        ["audit", "report", "access", d],
        ["audit", "report", "access", "--principal", "p"],
        ["audit", "report", "access", "--principal", "p", "--tenant", "t", d],
        ["audit", "report", "exposure", "--tenant", "t", "--key", "k", d],
        ["audit", "report", "exposure", "--tenant", "t", "--version", "1", d],
        ["audit", "report", "exposure", "--tenant", "t", "--key", "k", "--version", "-1", d],
        ["audit", "report", "exposure", "--tenant", "t", "--key", "k", "--version", "1",
         "--from", "2026-13-01", d],
    ]
    for argv in cases:
        r = run(*argv, want=2)
        assert r.stderr.startswith("kmsctl"), (argv, r.stderr)
        assert r.stdout == "", (argv, r.stdout)
    r = run("audit", "search", "--version", "0", d, want=2)
    assert "--version" in r.stderr
    r = run("audit", "search", str(empty_dir), want=2)
    assert "no audit*.log file in directory" in r.stderr
    r = run("audit", "report", "exposure", "--tenant", "t", "--key", "k", d, want=2)
    assert "--tenant, --key and --version are required" in r.stderr


def test_help(segs):
    for p in (["audit"], ["audit", "search"], ["audit", "report"], ["audit", "report", "access"],
              ["audit", "report", "exposure"]):
        r = run(*(p + ["--help"]), want=0)
        assert r.stdout.startswith("usage: kmsctl " + " ".join(p)), (p, r.stdout[:200])
    r = run("audit", "search", "--help", want=0)
    for opt in ("--principal", "--tenant", "--key", "--version", "--operation", "--outcome",
                "--status", "--request-id", "--node", "--from", "--to", "--context ",
                "--context-hash", "--lenient", "example"):
        assert opt in r.stdout, opt
