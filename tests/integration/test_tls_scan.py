"""The TLS configuration as an outside scanner grades it: sslscan (Debian package
sslscan) against a running kmsd. No SSLv2/SSLv3, no TLS 1.0/1.1; every accepted cipher
is an AEAD (AES-GCM or ChaCha20-Poly1305), none RC4, 3DES, CBC, NULL, EXPORT or
anonymous; TLS 1.2 suites use ECDHE; the key exchange groups offered are elliptic
curves only (no finite-field DHE, which TLS 1.3 would otherwise negotiate by group);
no renegotiation, no compression, not vulnerable to Heartbleed. Skipped when sslscan is
not installed (scripts/deps.sh installs it). The summary is in docs/SECURITY.md."""

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

SSLSCAN = shutil.which("sslscan")
pytestmark = pytest.mark.skipif(SSLSCAN is None, reason="sslscan not installed (scripts/deps.sh)")

WEAK = ("RC4", "3DES", "DES", "CBC", "NULL", "EXP", "ADH", "AECDH", "ANON", "MD5",
        "CAMELLIA", "ARIA", "SEED", "IDEA", "PSK", "SRP", "CCM")
AEAD = ("GCM", "CHACHA20-POLY1305", "CHACHA20_POLY1305")


@pytest.fixture(scope="module")
def scan(kmsd):
    r = subprocess.run([SSLSCAN, "--no-colour", "--xml=-", "127.0.0.1:%d" % kmsd.port],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)
    test = root.find("ssltest")
    assert test is not None, r.stdout
    return test


def test_protocols(scan):
    got = {(p.get("type"), p.get("version")): p.get("enabled") for p in scan.findall("protocol")}
    assert got == {("ssl", "2"): "0", ("ssl", "3"): "0", ("tls", "1.0"): "0",
                   ("tls", "1.1"): "0", ("tls", "1.2"): "1", ("tls", "1.3"): "1"}, got


def test_ciphers(scan):
    ciphers = scan.findall("cipher")
    assert ciphers
    seen = set()
    for c in ciphers:
        name, ver = c.get("cipher"), c.get("sslversion")
        seen.add((ver, name))
        assert ver in ("TLSv1.2", "TLSv1.3"), (ver, name)
        up = name.upper()
        assert any(a in up for a in AEAD), name
        assert not any(w in up for w in WEAK), name
        assert int(c.get("bits")) >= 128, (name, c.get("bits"))
        # sslscan's grades: weak, medium, acceptable (it gives every TLS 1.3 suite
        # this), strong
        assert c.get("strength") in ("strong", "acceptable"), (name, c.get("strength"))
        if ver == "TLSv1.2":
            assert name.startswith("ECDHE-"), name
        assert c.get("curve") is not None and c.get("dhebits") is None, c.attrib
    # the control: the three AEADs on both versions
    assert ("TLSv1.3", "TLS_AES_256_GCM_SHA384") in seen
    assert ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256") in seen
    assert ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384") in seen


def test_key_exchange_groups_are_curves(scan):
    groups = [g.get("name") for g in scan.findall("group")]
    assert groups, "sslscan listed no key exchange group"
    for g in groups:
        assert "ffdhe" not in g.lower(), groups
    assert any("x25519" in g or "secp256r1" in g for g in groups), groups


def test_no_renegotiation_compression_heartbleed(scan):
    reneg = scan.find("renegotiation")
    assert reneg is not None and reneg.get("supported") == "0", reneg.attrib
    comp = scan.find("compression")
    assert comp is None or comp.get("supported") == "0", comp.attrib
    for hb in scan.findall("heartbleed"):
        assert hb.get("vulnerable") == "0", hb.attrib
