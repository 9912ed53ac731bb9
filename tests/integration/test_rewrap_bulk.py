"""kmsctl rewrap --tenant T --key K (--in FILE | --sealed FILE...): bulk rewrap
(docs/KMSCTL.md "Bulk rewrap") against a real kmsd on a fresh SoftHSM2 token.

List mode: 1,000 ciphertexts made under versions 1..3 (some with a per-line context)
move to the latest version in order and all decrypt to the datakey plaintexts; lines
already at the latest version are passed through without a call (counted in the audit
log); kill -9 mid-run and a rerun with the same state file loses and duplicates no line;
bad lines are named with their line numbers (exit 5) and copied unchanged; --fail-fast
stops and resumes at the failing batch; --rate is a lower bound on the run's duration.
Sealed mode: files sealed under v1 are re-encrypted in place under the latest version
and open; a kill -9 during the in-place rewrap leaves the original openable and a rerun
completes.

Environment: KMSCTL_BIN as for test_kmsctl.py."""

import json
import os
import signal
import struct
import subprocess
import time

import pytest

from conftest import b64, sanitizer_findings, uniq
from test_kmsctl import Ctl, base_env, kmsctl_bin

N_LINES = 1000


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("rewrap"))


def audit_rewraps(kmsd, tenant):
    """(requests, items) of the rewrap calls in the audit log for tenant."""
    reqs = items = 0
    with open(kmsd.audit_path, "rb") as f:
        for ln in f.read().decode().splitlines():
            r = json.loads(ln)
            if r.get("operation") != "rewrap" or r.get("tenant") != tenant:
                continue
            reqs += 1
            items += len(r["items"]) if isinstance(r.get("items"), list) else 1
    return reqs, items


def version_of(ct):
    assert ct.startswith("vault:v"), ct
    return int(ct.split(":")[1][1:])


def make_datakeys(kmsd, svc, t, k, n, ctx_every=7):
    """n wrapped datakeys under the key's current version: [(ciphertext, ctx, plaintext)];
    every ctx_every-th one with its own encryption context."""
    out = []
    for start in range(0, n, 200):
        items = []
        for i in range(start, min(n, start + 200)):
            it = {}
            if ctx_every and i % ctx_every == 0:
                it["encryption_context"] = {"mrn": "%06d" % i, "purpose": "treatment"}
            items.append(it)
        r = kmsd.datakey(svc, t, k, batch_input=items)
        assert r.status_code == 200, r.text
        for it, res in zip(items, r.json()["data"]["batch_results"]):
            out.append((res["ciphertext"], it.get("encryption_context"), res["plaintext"]))
    return out


def line_of(ct, ctx):
    return ct if ctx is None else ct + "\t" + json.dumps(ctx, separators=(",", ":"))


def split_line(ln):
    if "\t" in ln:
        ct, c = ln.split("\t", 1)
        return ct, json.loads(c)
    return ln, None


def decrypt_all(kmsd, svc, t, k, pairs):
    """Plaintexts (base64) of [(ciphertext, ctx)], in batches the body limit admits."""
    out = []
    for start in range(0, len(pairs), 200):
        items = []
        for ct, ctx in pairs[start:start + 200]:
            it = {"ciphertext": ct}
            if ctx is not None:
                it["encryption_context"] = ctx
            items.append(it)
        r = kmsd.decrypt(svc, t, k, batch_input=items)
        assert r.status_code == 200, r.text
        out += [x["plaintext"] for x in r.json()["data"]["batch_results"]]
    return out


@pytest.fixture(scope="module")
def corpus(ctl):
    """A tenant and key at version 3, a service token, and 1,000 datakeys made under
    versions 1, 2 and 3 (in that order in the list)."""
    kmsd = ctl.kmsd
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    svc_tok = kmsd.service([t])
    svc = ctl.service_token([t])
    rows = make_datakeys(kmsd, svc_tok, t, k, 334)
    kmsd.rotate(t, k)
    rows += make_datakeys(kmsd, svc_tok, t, k, 333)
    kmsd.rotate(t, k)
    rows += make_datakeys(kmsd, svc_tok, t, k, N_LINES - 667)
    assert [version_of(r[0]) for r in rows].count(1) == 334
    assert version_of(rows[-1][0]) == 3

    class C:
        pass

    c = C()
    c.t, c.k, c.svc, c.svc_tok, c.rows = t, k, svc, svc_tok, rows
    return c


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(ln + "\n" for ln in lines))


def read_lines(path):
    with open(path) as f:
        data = f.read()
    assert data.endswith("\n")
    return data[:-1].split("\n")


def bulk(ctl, c, *extra, want=0):
    return ctl.run("rewrap", "--tenant", c.t, "--key", c.k, *extra, token=c.svc, want=want)


def check_output(ctl, c, inp, out, latest=3):
    """Every line at the latest version, in order, decrypting to the datakey plaintext;
    lines that were at the latest version byte for byte the same."""
    got = read_lines(out)
    assert len(got) == len(c.rows)
    pairs = []
    for (ct, ctx, _), old, new in zip(c.rows, inp, got):
        nct, nctx = split_line(new)
        assert version_of(nct) == latest, new
        assert nctx == ctx
        if version_of(ct) == latest:
            assert new == old
        else:
            assert nct != ct
        pairs.append((nct, nctx))
    pts = decrypt_all(ctl.kmsd, c.svc_tok, c.t, c.k, pairs)
    assert pts == [r[2] for r in c.rows]


def test_help_names_bulk_mode(ctl):
    out = ctl.ok("rewrap", "--help").stdout
    for w in ("--sealed", "--state", "--rate", "--fail-fast", "Exit status 5"):
        assert w in out, w


def test_list_mode_1000_lines(ctl, corpus):
    c = corpus
    inp = [line_of(ct, ctx) for ct, ctx, _ in c.rows]
    src, dst = str(ctl.tmp / "in.txt"), str(ctl.tmp / "out.txt")
    write_lines(src, inp)
    before = audit_rewraps(ctl.kmsd, c.t)
    r = bulk(ctl, c, "--in", src, "--out", dst)
    after = audit_rewraps(ctl.kmsd, c.t)
    check_output(ctl, c, inp, dst)
    # 667 lines below v3 in batches of 100: 7 calls, 667 items; the 333 at v3 never sent
    assert (after[0] - before[0], after[1] - before[1]) == (7, 667), (before, after)
    assert "667 rewrapped to v3, 333 already at v3, 0 failed" in r.stderr, r.stderr
    assert r.stderr.count("\r") == 0  # no progress bar: stderr is not a terminal
    assert not os.path.exists(dst + ".kmsctl-partial")
    # A second pass over the output has nothing to do: no rewrap call at all.
    dst2 = str(ctl.tmp / "out2.txt")
    r = bulk(ctl, c, "--in", dst, "--out", dst2, "--batch", "1000")
    assert audit_rewraps(ctl.kmsd, c.t) == after
    assert read_lines(dst2) == read_lines(dst)
    assert "0 rewrapped" in r.stderr


def test_stdin_to_stdout_with_global_context(ctl):
    kmsd = ctl.kmsd
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    svc_tok = kmsd.service([t])
    svc = ctl.service_token([t])
    r = kmsd.datakey(svc_tok, t, k, batch_input=[{"encryption_context": {"a": "b"}}] * 5)
    rows = r.json()["data"]["batch_results"]
    kmsd.rotate(t, k)
    data = "".join(x["ciphertext"] + "\n" for x in rows[:3]) + "\n" + rows[3]["ciphertext"] + "\n"
    r = ctl.run("rewrap", "--tenant", t, "--key", k, "--in", "-", "--context", "a=b",
                "--batch", "2", token=svc, stdin=data, want=0)
    out = r.stdout.split("\n")
    assert out[3] == "" and len(out) == 6 and out[5] == ""
    news = [out[0], out[1], out[2], out[4]]
    assert all(version_of(x) == 2 for x in news)
    pts = decrypt_all(kmsd, svc_tok, t, k, [(x, {"a": "b"}) for x in news])
    assert pts == [x["plaintext"] for x in rows[:4]]


def test_bad_lines_reported_with_line_numbers(ctl, corpus):
    c = corpus
    other_k = ctl.kmsd.create_key(c.t)
    foreign = ctl.kmsd.datakey(c.svc_tok, c.t, other_k, kind="wrapped").json()["data"]["ciphertext"]
    v1 = [r for r in c.rows if version_of(r[0]) == 1 and r[1] is None][:20]
    inp = [line_of(ct, None) for ct, _, _ in v1]
    bad = {3: foreign,                                    # another key's ciphertext
           7: "hello, not a ciphertext",
           11: v1[10][0] + "\t{\"mrn\":1}",               # context value not a string
           15: line_of(v1[14][0], {"mrn": "wrong"})}      # a context it was not made with
    for no, text in bad.items():
        inp[no - 1] = text
    src, dst = str(ctl.tmp / "bad.txt"), str(ctl.tmp / "bad.out")
    write_lines(src, inp)
    r = bulk(ctl, c, "--in", src, "--out", dst, "--batch", "4", want=5)
    for no in bad:
        assert ("line %d: " % no) in r.stderr, (no, r.stderr)
    assert r.stderr.count(": line ") == 4, r.stderr
    assert "16 rewrapped to v3" in r.stderr and "4 failed" in r.stderr, r.stderr
    got = read_lines(dst)
    assert len(got) == 20
    for i, ln in enumerate(got):
        if i + 1 in bad:
            assert ln == inp[i]  # copied unchanged
        else:
            assert version_of(ln) == 3
            assert decrypt_all(ctl.kmsd, c.svc_tok, c.t, c.k, [(ln, None)]) == [v1[i][2]]


def test_fail_fast_stops_and_resumes_at_the_failing_batch(ctl, corpus):
    c = corpus
    v1 = [r for r in c.rows if version_of(r[0]) == 1 and r[1] is None][:30]
    inp = [r[0] for r in v1]
    inp[24] = "garbage"
    src, dst, st = (str(ctl.tmp / n) for n in ("ff.txt", "ff.out", "ff.state"))
    write_lines(src, inp)
    r = bulk(ctl, c, "--in", src, "--out", dst, "--batch", "10", "--state", st, "--fail-fast", want=5)
    assert "line 25: " in r.stderr
    assert not os.path.exists(dst)
    state = open(st).read()
    assert "\nlines_done 20\n" in state, state
    assert os.path.getsize(dst + ".kmsctl-partial") == int(state.split("output_bytes ")[1].split()[0])
    # fix the line, run again with the same state: continues at line 21
    inp[24] = v1[24][0]
    os.utime(src, None)
    write_lines(src, inp)
    r = bulk(ctl, c, "--in", src, "--out", dst, "--state", st, want=2)
    assert "changed since" in r.stderr  # the state guards against another input
    os.unlink(st)
    os.unlink(dst + ".kmsctl-partial")
    r = bulk(ctl, c, "--in", src, "--out", dst, "--state", st)
    assert not os.path.exists(st)
    got = read_lines(dst)
    assert len(got) == 30 and all(version_of(x) == 3 for x in got)
    assert decrypt_all(ctl.kmsd, c.svc_tok, c.t, c.k, [(x, None) for x in got]) == [r[2] for r in v1]


def test_kill_9_mid_run_then_resume(ctl, corpus):
    c = corpus
    inp = [line_of(ct, ctx) for ct, ctx, _ in c.rows]
    src, dst, st = (str(ctl.tmp / n) for n in ("k.txt", "k.out", "k.state"))
    write_lines(src, inp)
    env = base_env(ctl.home)
    env.update({"KMS_ADDR": ctl.kmsd.url, "KMS_CACERT": ctl.kmsd.ca})
    before = audit_rewraps(ctl.kmsd, c.t)
    # 667 items in batches of 10 at 20 requests/s: about 3.4 s; killed after 200 lines
    p = subprocess.Popen([kmsctl_bin(), "rewrap", "--tenant", c.t, "--key", c.k, "--in", src,
                          "--out", dst, "--batch", "10", "--rate", "20", "--state", st,
                          "--token-file", c.svc], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and p.poll() is None:
        try:
            s = open(st).read()
            done = int(s.split("lines_done ")[1].split()[0])
        except (OSError, IndexError, ValueError):
            done = 0
        if done >= 200:
            break
        time.sleep(0.02)
    assert p.poll() is None, "kmsctl ended before it could be killed: %r" % (p.communicate(),)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    state = open(st).read()
    done = int(state.split("lines_done ")[1].split()[0])
    assert 200 <= done < N_LINES, state
    assert not os.path.exists(dst)
    # Whatever reached the partial file after the last state record is cut off on resume.
    with open(dst + ".kmsctl-partial", "a") as f:
        f.write("torn tail of a batch that was never recorded")
    mid = audit_rewraps(ctl.kmsd, c.t)
    r = bulk(ctl, c, "--in", src, "--out", dst, "--state", st)
    assert "resuming at line %d" % (done + 1) in r.stderr, r.stderr
    assert not os.path.exists(st) and not os.path.exists(dst + ".kmsctl-partial")
    check_output(ctl, c, inp, dst)
    after = audit_rewraps(ctl.kmsd, c.t)
    # Each item was sent once, apart from the batch in flight when the process died
    # (its answer was never written, so it is sent again): at most 10 more.
    assert 667 <= after[1] - before[1] <= 667 + 10, (before, mid, after)
    assert "667 rewrapped to v3, 333 already at v3" in r.stderr, r.stderr
    # Rerunning with a state file that is gone starts over; output identical in content.


def test_resume_after_completion_between_rename_and_state_removal(ctl, corpus):
    c = corpus
    rows = [r for r in c.rows if r[1] is None][:50]
    src, dst, st = (str(ctl.tmp / n) for n in ("cr.txt", "cr.out", "cr.state"))
    write_lines(src, [r[0] for r in rows])
    bulk(ctl, c, "--in", src, "--out", dst, "--state", st)
    assert not os.path.exists(st)
    # Forge the window: the state as the last batch left it, the output renamed.
    size = os.path.getsize(dst)
    ist = os.stat(src)
    with open(st, "w") as f:
        f.write("kmsctl-rewrap-state 1\nmode lines\ntenant %s\nkey %s\ninput %s\ninput_size %d\n"
                "input_mtime_ns %d\noutput %s\nlines_done 50\ninput_offset %d\noutput_bytes %d\n"
                "rewrapped 40\nalready_latest 10\nfailed 0\n" % (
                    c.t, c.k, src, ist.st_size, ist.st_mtime_ns, dst, ist.st_size, size))
    before = audit_rewraps(ctl.kmsd, c.t)
    r = bulk(ctl, c, "--in", src, "--out", dst, "--state", st)
    assert "had completed" in r.stderr
    assert audit_rewraps(ctl.kmsd, c.t) == before
    assert not os.path.exists(st)


def test_rate_is_a_lower_bound_on_duration(ctl, corpus):
    c = corpus
    rows = [r for r in c.rows if version_of(r[0]) == 1 and r[1] is None][:30]
    src, dst = str(ctl.tmp / "rate.txt"), str(ctl.tmp / "rate.out")
    write_lines(src, [r[0] for r in rows])
    before = audit_rewraps(ctl.kmsd, c.t)
    t0 = time.monotonic()
    bulk(ctl, c, "--in", src, "--out", dst, "--batch", "5", "--rate", "4")
    took = time.monotonic() - t0
    after = audit_rewraps(ctl.kmsd, c.t)
    assert after[0] - before[0] == 6
    # 6 calls at 4/s from a bucket of one: at least 5 intervals of 0.25 s
    assert took >= 1.25, took


def test_usage_errors(ctl, corpus):
    c = corpus
    src = str(ctl.tmp / "u.txt")
    write_lines(src, [c.rows[0][0]])
    for argv in (["--key", c.k, "--in", src],                     # no --tenant
                 ["--tenant", c.t, "--in", src],                  # no --key
                 ["--tenant", c.t, "--key", c.k],                 # neither --in nor --sealed
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--sealed", src],
                 ["--tenant", c.t, "--key", c.k, "--sealed"],     # no files
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--batch", "0"],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--batch", "1001"],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--rate", "0"],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--rate", "fast"],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--state", str(ctl.tmp / "s")],
                 ["--tenant", c.t, "--key", c.k, "--in", "-", "--out", str(ctl.tmp / "o"),
                  "--state", str(ctl.tmp / "s")],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "extra"],
                 ["--tenant", c.t, "--key", c.k, "--in", str(ctl.tmp / "missing")],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--context", "novalue"],
                 ["--tenant", c.t, "--key", c.k, "--sealed", src, "--out", "x"],
                 ["--tenant", c.t, "--key", c.k, "--in", src, "--bogus"]):
        r = ctl.run("rewrap", *argv, token=c.svc, want=2)
        assert r.stderr.startswith("kmsctl"), (argv, r.stderr)
    junk = ctl.tmp / "junk.state"
    junk.write_text("not a state file\n")
    r = bulk(ctl, c, "--in", src, "--out", str(ctl.tmp / "o"), "--state", str(junk), want=2)
    assert "not a kmsctl rewrap state file" in r.stderr


def test_whole_run_refusals(ctl, corpus):
    c = corpus
    src = str(ctl.tmp / "w.txt")
    write_lines(src, [c.rows[0][0]])
    other = ctl.service_token([ctl.kmsd.create_tenant()])
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--in", src, token=other, want=1)
    assert "kmsctl: 403 " in r.stderr
    r = ctl.run("rewrap", "--tenant", c.t, "--key", uniq("nokey"), "--in", src, token=c.svc, want=1)
    assert "kmsctl: 404 " in r.stderr


# ---- sealed files ------------------------------------------------------------------

def header_fields(path):
    with open(path, "rb") as f:
        b = f.read(65536)
    assert b[:8] == b"KMSSEAL\x01"
    hl = struct.unpack(">I", b[8:12])[0]
    o, f = 24, []
    for wide in (0, 0, 0, 1):
        n = struct.unpack(">I" if wide else ">H", b[o:o + (4 if wide else 2)])[0]
        o += 4 if wide else 2
        f.append(b[o:o + n].decode())
        o += n
    return b[16:23], f  # nonce prefix, (tenant, key, wrapped, context)


def blob(n, seed):
    import hashlib
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


@pytest.fixture(scope="module")
def sk(ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)

    class C:
        pass

    c = C()
    c.t, c.k, c.svc = t, k, ctl.service_token([t])
    return c


def latest_of(kmsd, c):
    r = kmsd.get("/v1/%s/keys/%s" % (c.t, c.k), token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]["latest_version"]


def seal(ctl, c, pt, *extra):
    src, dst = str(ctl.tmp / uniq("pt")), str(ctl.tmp / uniq("sealed"))
    with open(src, "wb") as f:
        f.write(pt)
    ctl.run("seal", "--tenant", c.t, "--key", c.k, *extra, src, dst, token=c.svc, want=0)
    os.unlink(src)
    return dst


def open_file(ctl, c, path, want=0):
    dst = str(ctl.tmp / uniq("opened"))
    ctl.run("open", path, dst, token=c.svc, want=want, text=False)
    if want != 0:
        return None
    with open(dst, "rb") as f:
        return f.read()


def test_sealed_files_rewrapped_in_place(ctl, sk):
    c = sk
    pts = [blob(n, b"s%d" % n) for n in (0, 1, 65536, 200001)]
    files = [seal(ctl, c, pts[0]), seal(ctl, c, pts[1], "--context", "mrn=0042"),
             seal(ctl, c, pts[2], "--chunk-size", "1000"),
             seal(ctl, c, pts[3], "--context", "purpose=treatment", "--context", "z=1")]
    os.chmod(files[1], 0o640)
    before = [header_fields(f) for f in files]
    assert all(version_of(h[1][2]) == 1 for h in before)
    ctl.kmsd.rotate(c.t, c.k)
    ctl.kmsd.rotate(c.t, c.k)
    # sealed before the rotation, opened after it (and before the rewrap)
    assert open_file(ctl, c, files[3]) == pts[3]
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--sealed", *files, token=c.svc, want=0)
    assert "4 rewrapped to v3" in r.stderr, r.stderr
    for f, pt, (prefix, (t, k, w, cx)) in zip(files, pts, before):
        nprefix, (nt, nk, nw, ncx) = header_fields(f)
        assert (nt, nk, ncx) == (t, k, cx)
        assert version_of(nw) == 3 and nw != w
        assert nprefix != prefix  # a fresh nonce prefix under the same DEK
        assert open_file(ctl, c, f) == pt
        assert not os.path.exists(f + ".kmsctl-rewrap")
    assert (os.stat(files[1]).st_mode & 0o777) == 0o640
    # already at the latest version: skipped, nothing rewritten
    mt = [os.stat(f).st_mtime_ns for f in files]
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--sealed", *files, token=c.svc, want=0)
    assert "0 rewrapped" in r.stderr and "4 already" in r.stderr
    assert [os.stat(f).st_mtime_ns for f in files] == mt


def test_sealed_bad_files_reported(ctl, sk):
    c = sk
    good = seal(ctl, c, b"good")
    tampered = seal(ctl, c, blob(5000, b"t"))
    other_t = ctl.kmsd.create_tenant()
    oc = type("C", (), {})()
    oc.t, oc.k, oc.svc = other_t, ctl.kmsd.create_key(other_t), ctl.service_token([other_t])
    foreign = seal(ctl, oc, b"foreign")
    junk = str(ctl.tmp / uniq("junk"))
    with open(junk, "wb") as f:
        f.write(b"not sealed at all")
    ctl.kmsd.rotate(c.t, c.k)
    with open(tampered, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    orig = open(tampered, "rb").read()
    st = str(ctl.tmp / "sealed.state")
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--state", st, "--sealed", good,
                tampered, foreign, junk, token=c.svc, want=5)
    assert "%s: " % tampered in r.stderr and "left as it was" in r.stderr, r.stderr
    assert "%s: sealed under tenant %s" % (foreign, other_t) in r.stderr
    assert "%s: not a sealed file" % junk in r.stderr
    assert "3 failed" in r.stderr
    assert open(tampered, "rb").read() == orig
    assert not os.path.exists(tampered + ".kmsctl-rewrap")
    # the state keeps the done file; a rerun does not touch it again
    assert ("done %s\n" % os.path.realpath(good)) in open(st).read()
    assert version_of(header_fields(good)[1][2]) == latest_of(ctl.kmsd, c)
    mt = os.stat(good).st_mtime_ns
    with open(st, "a") as f:
        f.write("done /torn/by/a/cra")  # a crash inside an append
    good2 = seal(ctl, c, b"good too")
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--state", st, "--sealed", good,
                tampered, good2, token=c.svc, want=5)
    assert "resuming: 1 files done before" in r.stderr
    assert os.stat(good).st_mtime_ns == mt
    lines = open(st).read().split("\n")
    assert lines[-1] == "" and "done /torn/by/a/cra" not in lines, lines
    assert ("done %s" % os.path.realpath(good2)) in lines, lines


def test_kill_9_during_in_place_rewrap(ctl, sk):
    c = sk
    mib = 96
    big = str(ctl.tmp / uniq("big.sealed"))
    block = blob(1 << 20, b"big")
    ctl.run("seal", "--tenant", c.t, "--key", c.k, "-", big, token=c.svc,
            stdin=b"".join(bytes([i]) + block[1:] for i in range(mib)), text=False, want=0)
    small = seal(ctl, c, b"small file, done before the big one")
    v0 = version_of(header_fields(big)[1][2])
    ctl.kmsd.rotate(c.t, c.k)
    latest = v0 + 1
    orig = open(big, "rb").read()
    st, tmp = str(ctl.tmp / "kill.state"), big + ".kmsctl-rewrap"
    env = base_env(ctl.home)
    env.update({"KMS_ADDR": ctl.kmsd.url, "KMS_CACERT": ctl.kmsd.ca})
    caught = None
    for attempt in range(3):
        p = subprocess.Popen([kmsctl_bin(), "rewrap", "--tenant", c.t, "--key", c.k, "--state",
                              st, "--sealed", small, big, "--token-file", c.svc], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if os.path.getsize(tmp) > (4 << 20):
                    p.send_signal(signal.SIGKILL)
                    caught = os.path.getsize(tmp)
                    break
            except OSError:
                pass
        p.communicate()
        if caught is not None and p.returncode == -signal.SIGKILL:
            break
        caught = None
        # finished first: put the original back and try again
        with open(big, "wb") as f:
            f.write(orig)
    assert caught is not None, "could not kill kmsctl during the rewrap of a %d MiB file" % mib
    # the original is untouched and opens; the leftover temporary file is partial
    assert open(big, "rb").read() == orig
    assert os.path.getsize(tmp) < len(orig)
    assert version_of(header_fields(big)[1][2]) == v0
    assert ("done %s\n" % os.path.realpath(small)) in open(st).read()
    out = open_file(ctl, c, big)
    assert len(out) == mib << 20 and out[(5 << 20) + 1:6 << 20] == block[1:]
    del out
    # the rerun with the same state completes and leaves no temporary file
    r = ctl.run("rewrap", "--tenant", c.t, "--key", c.k, "--state", st, "--sealed", small, big,
                token=c.svc, want=0)
    assert "resuming: 1 files done before" in r.stderr
    assert not os.path.exists(tmp) and not os.path.exists(st)
    assert version_of(header_fields(big)[1][2]) == latest
    out = open_file(ctl, c, big)
    assert len(out) == mib << 20
    assert all(out[i << 20] == i for i in range(mib))
    assert open_file(ctl, c, small) == b"small file, done before the big one"


def test_progress_bar_on_a_terminal(ctl, corpus):
    """With stderr on a terminal: a line redrawn in place with count, rate and ETA."""
    import pty
    c = corpus
    rows = [r for r in c.rows if version_of(r[0]) == 1 and r[1] is None][:40]
    src, dst = str(ctl.tmp / "tty.txt"), str(ctl.tmp / "tty.out")
    write_lines(src, [r[0] for r in rows])
    env = base_env(ctl.home)
    env.update({"KMS_ADDR": ctl.kmsd.url, "KMS_CACERT": ctl.kmsd.ca})
    master, slave = pty.openpty()
    p = subprocess.Popen([kmsctl_bin(), "rewrap", "--tenant", c.t, "--key", c.k, "--in", src,
                          "--out", dst, "--batch", "5", "--rate", "10", "--token-file", c.svc],
                         env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    buf = b""
    while True:
        try:
            b = os.read(master, 4096)
        except OSError:
            break
        if not b:
            break
        buf += b
    p.wait()
    os.close(master)
    text = buf.decode("utf-8", "replace")
    assert p.returncode == 0, text
    assert not sanitizer_findings(text), text
    assert "\r" in text and "rewrap: 40/40 100.0%" in text, text
    assert "ETA " in text and "/s" in text, text
    assert len(read_lines(dst)) == 40


def test_disabled_version_is_a_per_item_error(ctl):
    """A line under a disabled version fails alone (exit 5); the others go through, and
    the same holds for a sealed file whose DEK is wrapped under that version."""
    kmsd = ctl.kmsd
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    tok = kmsd.service([t])
    svc = ctl.service_token([t])
    c = type("C", (), {})()
    c.t, c.k, c.svc = t, k, svc
    v1 = kmsd.datakey(tok, t, k, kind="wrapped").json()["data"]["ciphertext"]
    sealed_v1 = seal(ctl, c, b"sealed under v1")
    kmsd.rotate(t, k)
    v2 = kmsd.datakey(tok, t, k, kind="wrapped").json()["data"]["ciphertext"]
    sealed_v2 = seal(ctl, c, b"sealed under v2")
    kmsd.rotate(t, k)
    r = kmsd.post("/v1/%s/keys/%s/versions/1/disable" % (t, k), {"reason": "test"},
                  token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    src, dst = str(ctl.tmp / "dis.txt"), str(ctl.tmp / "dis.out")
    write_lines(src, [v2, v1, v2])
    r = ctl.run("rewrap", "--tenant", t, "--key", k, "--in", src, "--out", dst, token=svc, want=5)
    assert "line 2: " in r.stderr and "disabled" in r.stderr, r.stderr
    got = read_lines(dst)
    assert got[1] == v1 and version_of(got[0]) == 3 and version_of(got[2]) == 3
    before = open(sealed_v1, "rb").read()
    r = ctl.run("rewrap", "--tenant", t, "--key", k, "--sealed", sealed_v1, sealed_v2, token=svc,
                want=5)
    assert "kmsctl: 409 " in r.stderr and "disabled" in r.stderr, r.stderr
    assert "%s: refused by the server (409)" % sealed_v1 in r.stderr
    assert open(sealed_v1, "rb").read() == before
    assert version_of(header_fields(sealed_v2)[1][2]) == 3
    assert open_file(ctl, c, sealed_v2) == b"sealed under v2"


def test_planted_hard_link_is_not_written_through(ctl, corpus):
    """A name kmsctl writes over (the partial output, a sealed file's temporary file)
    that is a second name of another file is refused, and that file is left alone."""
    c = corpus
    victim = ctl.tmp / "victim.txt"
    victim.write_text("precious\n")
    src, dst = str(ctl.tmp / "hl.txt"), str(ctl.tmp / "hl.out")
    write_lines(src, [c.rows[1][0]])
    os.link(str(victim), dst + ".kmsctl-partial")
    r = bulk(ctl, c, "--in", src, "--out", dst, want=2)
    assert "refusing to write over it" in r.stderr, r.stderr
    assert victim.read_text() == "precious\n"
    os.unlink(dst + ".kmsctl-partial")


def test_crlf_lines_keep_their_line_end(ctl, corpus):
    c = corpus
    row = [r for r in c.rows if version_of(r[0]) == 1 and r[1] is None][0]
    src, dst = str(ctl.tmp / "crlf.txt"), str(ctl.tmp / "crlf.out")
    with open(src, "w", newline="") as f:
        f.write(row[0] + "\r\n")
    bulk(ctl, c, "--in", src, "--out", dst)
    with open(dst, newline="") as f:
        out = f.read()
    assert out.endswith("\r\n") and version_of(out) == 3
    assert decrypt_all(ctl.kmsd, c.svc_tok, c.t, c.k, [(out[:-2], None)]) == [row[2]]
