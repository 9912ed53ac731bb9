"""kmsctl seal / open (docs/KMSCTL.md "Sealed files", docs/FORMATS.md "Sealed files")
against a real kmsd on a fresh SoftHSM2 token: round trips (0 B, 1 B, one chunk,
chunk + 1, many chunks, 200 MiB through pipes in constant memory), every tamper case
(exit 1, no partial plaintext), a context edited in the header (the server refuses),
a token of another tenant (403), usage errors (exit 2).

Environment: KMSCTL_BIN as for test_kmsctl.py; SEAL_BIG_MIB (default 200)."""

import hashlib
import os
import struct
import subprocess
import threading

import pytest

from conftest import sanitizer_findings, uniq
from test_kmsctl import Ctl, base_env, fails, kmsctl_bin

TAG = 16
TIME = "/usr/bin/time"


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("seal"))


@pytest.fixture(scope="module")
def tk(ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    return t, k, ctl.service_token([t])


def data(n, seed=b"seal"):
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


def parse_header(b):
    """(header_len, chunk_size, fields) of a sealed file, by the documented layout."""
    assert b[:8] == b"KMSSEAL\x01"
    hl, cs = struct.unpack(">II", b[8:16])
    o, f = 24, []
    for wide in (0, 0, 0, 1):
        n = struct.unpack(">I" if wide else ">H", b[o:o + (4 if wide else 2)])[0]
        o += 4 if wide else 2
        f.append(b[o:o + n].decode())
        o += n
    assert o == hl
    return hl, cs, f


class Sealer:
    def __init__(self, ctl, tk):
        self.ctl, (self.t, self.k, self.svc) = ctl, tk

    def path(self, name):
        return str(self.ctl.tmp / uniq(name))

    def seal(self, pt, *extra, want=0):
        src, dst = self.path("pt"), self.path("sealed")
        with open(src, "wb") as f:
            f.write(pt)
        self.ctl.run("seal", "--tenant", self.t, "--key", self.k, *extra, src, dst,
                     token=self.svc, want=want)
        if want != 0:
            return None
        with open(dst, "rb") as f:
            return f.read()

    def open(self, sealed, want=0, token=None):
        """Opens bytes to a file; returns (result, plaintext or None)."""
        src, dst = self.path("in"), self.path("out")
        with open(src, "wb") as f:
            f.write(sealed)
        r = self.ctl.run("open", src, dst, token=token or self.svc, want=want, text=False)
        leftovers = [n for n in os.listdir(os.path.dirname(dst))
                     if n.startswith(os.path.basename(dst))]
        if want != 0:
            assert not os.path.exists(dst), "open failed but left %s" % dst
            assert leftovers == [], leftovers
            return r, None
        with open(dst, "rb") as f:
            return r, f.read()


@pytest.fixture(scope="module")
def s(ctl, tk):
    return Sealer(ctl, tk)


def test_help(ctl):
    for cmd in ("seal", "open"):
        r = ctl.ok(cmd, "--help")
        assert r.stdout.startswith("usage: kmsctl %s" % cmd)
        assert "examples:" in r.stdout
    assert "seal" in ctl.ok("--help").stdout


@pytest.mark.parametrize("n,cs", [(0, None), (1, None), (16, 16), (17, 16), (65536, None),
                                  (65537, None), (300000, None), (1000, 100)])
def test_round_trip(s, n, cs):
    pt = data(n, b"rt%d" % n)
    extra = ["--chunk-size", str(cs)] if cs else []
    sealed = s.seal(pt, "--context", "purpose=treatment", "--context", "mrn=0042", *extra)
    hl, chunk, (t, k, wrapped, ctx) = parse_header(sealed)
    assert (t, k) == (s.t, s.k) and wrapped.startswith("vault:v1:")
    assert ctx == '{"mrn":"0042","purpose":"treatment"}'
    assert chunk == (cs or 65536)
    nchunks = max(1, -(-n // chunk))
    assert len(sealed) == hl + n + TAG * nchunks
    assert pt[:32] not in sealed or n < 32
    _, out = s.open(sealed)
    assert out == pt


def test_no_context_and_stdio(s, ctl):
    pt = data(5000, b"stdio")
    r = ctl.run("seal", "--tenant", s.t, "--key", s.k, "-", "-", token=s.svc, stdin=pt,
                text=False, want=0)
    sealed = r.stdout
    assert parse_header(sealed)[2][3] == "{}"
    r = ctl.run("open", "-", "-", token=s.svc, stdin=sealed, text=False, want=0)
    assert r.stdout == pt
    # IN from stdin while the token comes from stdin too: usage error
    tokfile = open(s.svc).read()
    r = ctl.run("seal", "--tenant", s.t, "--key", s.k, "-", s.path("x"), "--token-file", "-",
                stdin=tokfile, want=2)


def test_overwrites_only_on_success(s):
    pt = data(100, b"ow")
    sealed = s.seal(pt)
    src, dst = s.path("in"), s.path("existing")
    with open(src, "wb") as f:
        f.write(sealed[:-1])
    with open(dst, "wb") as f:
        f.write(b"keep me")
    s.ctl.run("open", src, dst, token=s.svc, want=1)
    assert open(dst, "rb").read() == b"keep me"
    with open(src, "wb") as f:
        f.write(sealed)
    s.ctl.run("open", src, dst, token=s.svc, want=0)
    assert open(dst, "rb").read() == pt
    assert oct(os.stat(dst).st_mode & 0o777) == "0o600"


def tampered_cases(s):
    """(name, bytes) for every tamper case on a 4-chunk file of chunk size 64."""
    cs = 64
    pt = data(3 * cs + 10, b"tamper")
    a = s.seal(pt, "--chunk-size", str(cs), "--context", "purpose=treatment")
    b = s.seal(pt, "--chunk-size", str(cs), "--context", "purpose=treatment")  # same key, other DEK
    hl = parse_header(a)[0]
    hb = parse_header(b)[0]
    rec = cs + TAG
    ch = [a[hl + i * rec:hl + (i + 1) * rec] for i in range(4)]
    chb = [b[hb + i * rec:hb + (i + 1) * rec] for i in range(4)]
    cases = []

    def flip(buf, i):
        x = bytearray(buf)
        x[i] ^= 0x01
        return bytes(x)

    # header: magic, version, header length, chunk size, prefix, flags, tenant, key,
    # wrapped DEK, context
    t_off = 26
    k_off = t_off + len(s.t) + 2
    w_off = k_off + len(s.k) + 2
    c_off = hl - 5  # inside the context's last value
    for name, i in [("magic", 0), ("version", 7), ("header length", 11), ("chunk size", 14),
                    ("nonce prefix", 18), ("flags", 23), ("tenant", t_off), ("key", k_off),
                    ("wrapped DEK", w_off + 12), ("context value", c_off)]:
        cases.append(("header " + name, flip(a, i)))
    for i in range(4):
        cases.append(("chunk %d first byte" % i, flip(a, hl + i * rec)))
    cases.append(("final tag", flip(a, len(a) - 1)))
    cases.append(("chunks 0 and 1 swapped", a[:hl] + ch[1] + ch[0] + ch[2] + ch[3]))
    cases.append(("chunk 1 from another file", a[:hl] + ch[0] + chb[1] + ch[2] + ch[3]))
    cases.append(("final chunk from another file", a[:hl] + ch[0] + ch[1] + ch[2] + chb[3]))
    cases.append(("another file's header", b[:hb] + a[hl:]))
    cases.append(("truncated mid-chunk", a[:hl + rec + 5]))
    cases.append(("truncated at a chunk boundary", a[:hl + 2 * rec]))
    cases.append(("truncated inside the final tag", a[:-1]))
    cases.append(("header only", a[:hl]))
    cases.append(("truncated header", a[:hl - 1]))
    cases.append(("empty file", b""))
    cases.append(("1 byte appended", a + b"\x00"))
    cases.append(("a record appended", a + ch[0]))
    cases.append(("the final record repeated", a + ch[3]))
    return pt, cs, a, cases


def test_tamper_detected(s):
    pt, cs, a, cases = tampered_cases(s)
    assert s.open(a)[1] == pt
    for name, buf in cases:
        r, _ = s.open(buf, want=1)
        err = r.stderr.decode()
        assert err.startswith("kmsctl"), (name, err)
        assert r.stdout == b"", name


def test_stdout_gets_only_authenticated_chunks(s, ctl):
    pt, cs, a, _ = tampered_cases(s)
    hl, rec = parse_header(a)[0], cs + TAG
    bad = bytearray(a)
    bad[hl + 2 * rec + 3] ^= 0x80  # chunk 2
    r = ctl.run("open", "-", "-", token=s.svc, stdin=bytes(bad), text=False, want=1)
    assert r.stdout == pt[:2 * cs]
    assert b"chunk 2 failed authentication" in r.stderr
    r = ctl.run("open", "-", "-", token=s.svc, stdin=a[:hl + 2 * rec], text=False, want=1)
    assert r.stdout == pt[:cs]  # chunk 1, read as final, does not authenticate


def test_context_edit_refused_by_server(s):
    sealed = s.seal(b"phi", "--context", "purpose=treatment")
    edited = sealed.replace(b'"treatment"', b'"treatmenx"')
    assert edited != sealed
    r, _ = s.open(edited, want=1)
    fails(type("R", (), {"stderr": r.stderr.decode()}), 400)


def test_other_tenant_token_403(s, ctl):
    t2 = ctl.kmsd.create_tenant()
    other = ctl.service_token([t2])
    sealed = s.seal(b"phi")
    r, _ = s.open(sealed, want=1, token=other)
    fails(type("R", (), {"stderr": r.stderr.decode()}), 403)
    dst = s.path("never")
    r = ctl.run("seal", "--tenant", s.t, "--key", s.k, os.devnull, dst, token=other, want=1)
    fails(r, 403)
    assert not os.path.exists(dst)


def test_usage_errors(s, ctl):
    src = s.path("pt")
    with open(src, "wb") as f:
        f.write(b"x")
    out = s.path("o")
    cases = [
        ["seal"],
        ["seal", src, out],                                   # no --tenant/--key
        ["seal", "--tenant", s.t, src, out],                  # no --key
        ["seal", "--tenant", s.t, "--key", s.k, src],         # no OUT
        ["seal", "--tenant", s.t, "--key", s.k, src, out, "extra"],
        ["seal", "--tenant", s.t, "--key", s.k, "--chunk-size", "15", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, "--chunk-size", "4194305", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, "--chunk-size", "big", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, "--context", "novalue", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, "--context", "a=1", "--context", "a=2", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, "--bogus", src, out],
        ["seal", "--tenant", s.t, "--key", s.k, src + ".missing", out],
        ["open"],
        ["open", src],
        ["open", src, out, "extra"],
        ["open", "--context", "a=b", src, out],
        ["open", src + ".missing", out],
    ]
    for argv in cases:
        r = ctl.run(*argv, token=s.svc, want=2)
        assert r.stderr.startswith("kmsctl"), (argv, r.stderr)
        assert not os.path.exists(out), argv


def run_measured(argv, env, stdin_feed, stdout_sink, rss_file):
    """Runs argv under /usr/bin/time with pipes; feed() writes stdin, sink(chunk) reads
    stdout. Returns (exit status, max RSS in KiB, stderr). (Not os.wait4's rusage: a
    child forked from this Python keeps Python's RSS as its maximum across exec.)"""
    assert os.access(TIME, os.X_OK), "%s (GNU time) is needed to measure max RSS" % TIME
    p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file] + argv, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errs = []
    te = threading.Thread(target=lambda: errs.append(p.stderr.read()))
    te.start()

    def feed():
        try:
            stdin_feed(p.stdin)
        finally:
            p.stdin.close()
    tf = threading.Thread(target=feed)
    tf.start()
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        stdout_sink(b)
    tf.join()
    te.join()
    p.wait()
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return p.returncode, rss, errs[0].decode("utf-8", "replace")


def test_big_file_through_pipes_constant_memory(s, ctl):
    mib = int(os.environ.get("SEAL_BIG_MIB", "200"))
    env = base_env(ctl.home)
    env.update({"KMS_ADDR": ctl.kmsd.url, "KMS_CACERT": ctl.kmsd.ca})
    # Under ASan, freed blocks wait in a quarantine (256 MiB by default) before reuse, so
    # OpenSSL's small per-chunk allocations (the GCM context made at each chunk's init)
    # would show up as RSS growing with the file (~25 KiB per MiB). A 1 MiB quarantine
    # keeps use-after-free detection and measures the memory kmsctl actually holds.
    env["ASAN_OPTIONS"] += ":quarantine_size_mb=1"
    block = data(1 << 20, b"big")

    def gen(n):
        def feed(w):
            for i in range(n):
                w.write(bytes([i & 0xFF]) + block[1:])
        return feed

    want = hashlib.sha256()
    for i in range(mib):
        want.update(bytes([i & 0xFF]) + block[1:])
    results = {}
    for label, n in (("small", 1), ("big", mib)):
        sealed_path = s.path("big.sealed")
        with open(sealed_path, "wb") as f:
            rc, rss_seal, err = run_measured(
                [kmsctl_bin(), "seal", "--tenant", s.t, "--key", s.k, "--token-file", s.svc,
                 "-", "-"], env, gen(n), f.write, s.path("rss"))
        assert rc == 0 and not sanitizer_findings(err), err
        assert os.path.getsize(sealed_path) > n << 20
        got = hashlib.sha256()
        count = [0]

        def sink(b):
            got.update(b)
            count[0] += len(b)

        def feed_file(w):
            with open(sealed_path, "rb") as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    w.write(b)
        rc, rss_open, err = run_measured(
            [kmsctl_bin(), "open", "--token-file", s.svc, "-", "-"], env, feed_file, sink, s.path("rss"))
        assert rc == 0 and not sanitizer_findings(err), err
        assert count[0] == n << 20
        if label == "big":
            assert got.hexdigest() == want.hexdigest()
        os.unlink(sealed_path)
        results[label] = (rss_seal, rss_open)
    print("\nmax RSS KiB (seal, open): 1 MiB %s, %d MiB %s" % (results["small"], mib, results["big"]))
    # Constant memory: the big file costs at most 4 MiB more than a 1 MiB one (two
    # 64 KiB chunk buffers are the design), and (without sanitizers, whose shadow
    # memory and quarantine dominate) less than half its size.
    for i in (0, 1):
        assert results["big"][i] - results["small"][i] < 4 * 1024, results
        if "/asan/" not in kmsctl_bin():
            assert results["big"][i] < (mib << 10) // 2, results


def test_sealed_under_v1_opens_after_rotation(ctl):
    """A file sealed under version 1 opens after the key rotated (its header names the
    version its DEK was wrapped under), and one sealed after the rotation is under v2;
    with version 1 disabled, the old file is refused (409) and nothing is written."""
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    svc = ctl.service_token([t])
    s = Sealer(ctl, (t, k, svc))
    pt = data(200000, b"rotation")
    old = s.seal(pt, "--context", "purpose=treatment")
    assert b"vault:v1:" in old[:4096]
    ctl.kmsd.rotate(t, k)
    ctl.kmsd.rotate(t, k)
    _, got = s.open(old)
    assert got == pt
    new = s.seal(pt, "--context", "purpose=treatment")
    assert b"vault:v3:" in new[:4096]
    assert s.open(new)[1] == pt
    r = ctl.kmsd.post("/v1/%s/keys/%s/versions/1/disable" % (t, k), {"reason": "test"},
                      token=ctl.kmsd.admin_token)
    assert r.status_code == 200, r.text
    r, _ = s.open(old, want=1)
    assert b"409" in r.stderr
    assert s.open(new)[1] == pt


def test_largest_chunk_size(s):
    """The format's largest chunk (4 MiB) seals and opens: the plaintext buffer of that
    size comes from secret memory too."""
    pt = data((4 << 20) + 123, b"big-chunks")
    sealed = s.seal(pt, "--chunk-size", str(4 << 20))
    assert parse_header(sealed)[1] == 4 << 20
    assert s.open(sealed)[1] == pt
