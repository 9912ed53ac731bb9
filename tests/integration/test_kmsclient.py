"""libkmsclient (docs/CLIENT.md) against a real kmsd on a fresh SoftHSM2 token, through
its driver build/tests/kmsc_itest (tests/client/kmsc_itest.c): datakey/decrypt/rewrap,
the batch calls, sealed buffers and streams, files interoperating both ways with
`kmsctl seal/open`, errors mapped to the documented kinds, one client shared by threads,
and the data-key cache's bounds seen from the sealed headers.

Environment: KMSD_BIN (the driver is taken from beside it, KMSCTL_BIN as for
test_kmsctl.py); KMSC_ITEST_BIN overrides the driver (e.g. an ASan build of it against
the normal kmsd)."""

import json
import os
import subprocess

import pytest

from conftest import kmsd_bin, sanitizer_findings, uniq
from test_kmsctl import Ctl, kmsctl_bin
from test_seal import data, parse_header


def itest_bin():
    if os.environ.get("KMSC_ITEST_BIN"):
        return os.path.abspath(os.environ["KMSC_ITEST_BIN"])
    return os.path.join(os.path.dirname(kmsd_bin()), "tests", "kmsc_itest")


class Driver:
    def __init__(self, kmsd, tmp, token_file):
        self.kmsd, self.tmp, self.token_file = kmsd, tmp, token_file

    def path(self, name):
        return str(self.tmp / uniq(name))

    def run(self, *args, token_file=None, env=None, want=0):
        e = dict(os.environ)
        e.update({"KMS_ADDR": self.kmsd.url, "KMS_CACERT": self.kmsd.ca,
                  "KMS_TOKEN_FILE": token_file or self.token_file})
        e.update(env or {})
        r = subprocess.run([itest_bin()] + [str(a) for a in args], env=e,
                           capture_output=True, text=True, timeout=300)
        found = sanitizer_findings(r.stderr)
        assert not found, "kmsc_itest %s: sanitizer report %s:\n%s" % (args, found, r.stderr)
        assert r.stderr == "" or r.returncode != 0, "the library printed: %s" % r.stderr
        assert r.returncode == want, "kmsc_itest %s -> %d\n%s%s" % (args, r.returncode,
                                                                    r.stdout, r.stderr)
        return r.stdout


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    for b in (itest_bin(), kmsctl_bin()):
        if not os.access(b, os.X_OK):
            pytest.fail("%s does not exist (make tests)" % b)
    return Ctl(kmsd, tmp_path_factory.mktemp("kmsc"))


@pytest.fixture(scope="module")
def tk(ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    return t, k, ctl.service_token([t])


@pytest.fixture(scope="module")
def d(ctl, tk):
    return Driver(ctl.kmsd, ctl.tmp, tk[2])


def test_roundtrip_and_rewrap(d, tk):
    t, k, _ = tk
    w1, w2 = d.run("roundtrip", t, k).split()
    assert w1.startswith("vault:v1:") and w2.startswith("vault:v1:")
    d.kmsd.rotate(t, k)
    # a v1 key rewraps to v2 (the roundtrip's context, in another order)
    w3 = d.run("rewrap", t, k, w1, "field=name", "resourceType=Patient").strip()
    assert w3.startswith("vault:v2:")
    w1, w2 = d.run("roundtrip", t, k).split()
    assert w1.startswith("vault:v2:") and w2.startswith("vault:v2:")


def test_batch(d, tk):
    out = d.run("batch", tk[0], tk[1])
    assert out.endswith("ok\n")
    assert "item 2: " in out and len(out.split("item 2: ")[1].split("\n")[0]) > 0


def write(path, b):
    with open(path, "wb") as f:
        f.write(b)


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("n", [0, 1, 65536, 65537, 300000])
def test_buffers_interop_with_kmsctl(d, ctl, tk, n):
    t, k, tok = tk
    pt = data(n, b"buf%d" % n)
    src, sealed, back = d.path("pt"), d.path("sealed"), d.path("back")
    write(src, pt)
    # library seals, kmsctl opens
    assert d.run("seal-buf", t, k, src, sealed, "field=name", "resourceType=Patient") == "ok\n"
    hl, cs, (ht, hk, wrapped, ctx) = parse_header(read(sealed))
    assert (ht, hk, cs) == (t, k, 65536) and ctx == '{"field":"name","resourceType":"Patient"}'
    ctl.ok("open", sealed, back, token=tok)
    assert read(back) == pt
    # kmsctl seals, library opens (with and without the expected context)
    sealed2, back2 = d.path("sealed"), d.path("back")
    ctl.ok("seal", "--tenant", t, "--key", k, "--context", "field=name", src, sealed2, token=tok)
    assert d.run("open-buf", sealed2, back2, t, k, "field=name") == "ok\n"
    assert read(back2) == pt
    assert d.run("open-buf", sealed2, back2) == "ok\n"
    assert d.run("open-buf", sealed2, back2, "-", "-") == "ok\n"
    # what the caller expects is checked before anything is sent
    for want in ([t, k, "field=birthDate"], [t, k], ["other", "-"], ["-", "other"],
                 [t, k, "field=name", "x=y"]):
        out = d.run("open-buf", sealed2, back2, *want)
        if want == [t, k]:
            assert out == "ok\n"
        else:
            assert out.startswith("KMSC_ERR_MISMATCH 0 "), (want, out)


@pytest.mark.parametrize("n", [0, 999, 1000, 1001, 250000])
def test_streams_interop_with_kmsctl(d, ctl, tk, n):
    t, k, tok = tk
    pt = data(n, b"fd%d" % n)
    src, sealed, back = d.path("pt"), d.path("sealed"), d.path("back")
    write(src, pt)
    assert d.run("seal-fd", t, k, src, sealed, "mrn=0042") == "ok\n"
    hl, cs, f = parse_header(read(sealed))
    assert cs == 1000 and f[3] == '{"mrn":"0042"}'
    ctl.ok("open", sealed, back, token=tok)
    assert read(back) == pt
    sealed2, back2 = d.path("sealed"), d.path("back")
    ctl.ok("seal", "--tenant", t, "--key", k, "--chunk-size", "4096", src, sealed2, token=tok)
    assert d.run("open-fd", sealed2, back2) == "ok\n"
    assert read(back2) == pt


def test_tampered_sealed_data(d, tk):
    t, k, _ = tk
    pt = data(5000, b"tamper")
    src, sealed = d.path("pt"), d.path("sealed")
    write(src, pt)
    d.run("seal-fd", t, k, src, sealed)
    b = bytearray(read(sealed))
    hl = parse_header(bytes(b))[0]
    cases = {
        "flip": bytes(b[:hl + 10]) + bytes([b[hl + 10] ^ 1]) + bytes(b[hl + 11:]),
        "truncate": bytes(b[:-1]),
        "drop-chunk": bytes(b[:hl]) + bytes(b[hl + 1016:]),
        "append": bytes(b) + b"x",
    }
    for name, bad in cases.items():
        p = d.path(name)
        write(p, bad)
        assert d.run("open-buf", p, d.path("out")).startswith("KMSC_ERR_DECRYPT 0 "), name
        assert d.run("open-fd", p, d.path("out")).startswith("KMSC_ERR_DECRYPT 0 "), name
    p = d.path("garbage")
    write(p, b"not sealed at all")
    assert d.run("open-buf", p, d.path("out")).startswith("KMSC_ERR_FORMAT 0 ")


def test_errors_map_to_kinds(d, ctl, tk):
    t, k, tok = tk
    bad = str(ctl.tmp / uniq("bad.token"))
    with open(bad, "w") as f:
        f.write("not-a-real-token\n")
    os.chmod(bad, 0o600)
    out = d.run("err", "datakey", t, k, token_file=bad)
    assert out.startswith("KMSC_ERR_DENIED 403 permission denied"), out
    # a tenant that does not exist: the same 403 (no existence oracle)
    out = d.run("err", "datakey", uniq("nosuch"), k)
    assert out.startswith("KMSC_ERR_DENIED 403 "), out
    # a wrapped key under another context: 400 with the server's message
    w = d.run("roundtrip", t, k).split()[0]
    out = d.run("err", "decrypt", t, k, w, "resourceType=Observation")
    assert out.startswith("KMSC_ERR_BAD_REQUEST 400 ") and len(out.split(" ", 2)[2].strip()) > 0, out
    # nothing listening: no status
    env = {"KMS_ADDR": "https://127.0.0.1:1"}
    out = d.run("err", "datakey", t, k, env=env)
    assert out.startswith("KMSC_ERR_TRANSPORT 0 "), out


@pytest.mark.parametrize("cache", ["0", "1"])
def test_threads_share_one_client(d, tk, cache):
    assert d.run("threads", tk[0], tk[1], 8, 25, env={"KMSC_CACHE": cache}) == "ok\n"


def audit_ops(kmsd, tenant):
    """Counts of allowed data-plane records for tenant in the audit log."""
    counts = {}
    with open(kmsd.audit_path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("tenant") == tenant and r.get("outcome") == "allow":
                counts[r["operation"]] = counts.get(r["operation"], 0) + 1
    return counts


def test_cache_bounds_and_isolation(d, ctl):
    t = ctl.kmsd.create_tenant()
    k = ctl.kmsd.create_key(t)
    k2 = ctl.kmsd.create_key(t)
    t2 = ctl.kmsd.create_tenant()
    ctl.kmsd.create_key(t2, k)
    # a token for both tenants
    tok = ctl.service_token([t, t2])
    assert d.run("cache", t, k, k2, t2, token_file=tok) == "ok\n"
    # what the server saw: 11 records sealed and opened, but (t, k, name) took one data
    # key per 3 records and one after the age bound (4), the other context and key one
    # each; opening unwrapped each of those DEKs once
    a = audit_ops(ctl.kmsd, t)
    assert a.get("datakey") == 6 and a.get("decrypt") == 6, a
    a = audit_ops(ctl.kmsd, t2)
    assert a.get("datakey") == 1 and a.get("decrypt") == 1, a
