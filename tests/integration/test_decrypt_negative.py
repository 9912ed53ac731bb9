"""Ciphertexts that must not decrypt (docs/API.md: "A ciphertext that is malformed, names a
version that does not exist or is below min_decryption_version, or does not authenticate
(wrong tenant, key, version, associated_data or encryption_context, or altered) is a 400")."""

import base64

import pytest

from conftest import b64, uniq

CTX = {"patient": "p-42", "record": "r-7"}
AD = b64(b"associated-data-1")
SECRET = b"PHI: blood type AB-, do not leak"


@pytest.fixture(scope="module")
def two(kmsd):
    """Tenants A and B, each with a key named the same, plus a second key in A (k2),
    and one service principal scoped to both tenants."""
    ta, tb = kmsd.create_tenant(uniq("ta")), kmsd.create_tenant(uniq("tb"))
    name = uniq("same")
    kmsd.create_key(ta, name)
    kmsd.create_key(tb, name)
    k2 = kmsd.create_key(ta, uniq("other"))
    krot = kmsd.create_key(ta, uniq("rot"))
    tok = kmsd.service([ta, tb])

    class T:
        pass

    t = T()
    t.ta, t.tb, t.key, t.k2, t.krot, t.tok = ta, tb, name, k2, krot, tok
    return t


def enc(kmsd, t, tenant, key, **extra):
    r = kmsd.encrypt(t.tok, tenant, key, plaintext=b64(SECRET), **extra)
    assert r.status_code == 200, r.text
    return r.json()["data"]["ciphertext"]


def assert_refused(r, ciphertext=None):
    assert r.status_code == 400, "want 400, got %d: %s" % (r.status_code, r.text)
    j = r.json()
    assert isinstance(j.get("errors"), list) and j["errors"] and all(
        isinstance(e, str) and e for e in j["errors"]), j
    assert "data" not in j, j
    assert b64(SECRET) not in r.text


def test_control_same_key_decrypts(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    r = kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct)
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"]["plaintext"]) == SECRET


def test_wrong_tenant(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    assert_refused(kmsd.decrypt(two.tok, two.tb, two.key, ciphertext=ct))


def test_wrong_tenant_datakey(kmsd, two):
    d = kmsd.datakey(two.tok, two.ta, two.key).json()["data"]
    assert_refused(kmsd.decrypt(two.tok, two.tb, two.key, ciphertext=d["ciphertext"]))


def test_wrong_key(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.k2, ciphertext=ct))


def test_wrong_key_version(kmsd, two):
    ct1 = enc(kmsd, two, two.ta, two.krot)
    assert ct1.startswith("vault:v1:")
    kmsd.rotate(two.ta, two.krot)
    # v1 still decrypts as v1 ...
    r = kmsd.decrypt(two.tok, two.ta, two.krot, ciphertext=ct1)
    assert r.status_code == 200, r.text
    # ... but not when relabelled as v2, which exists now
    forged = "vault:v2:" + ct1[len("vault:v1:"):]
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.krot, ciphertext=forged))


def test_nonexistent_version(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    forged = "vault:v99:" + ct[len("vault:v1:"):]
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=forged))


@pytest.mark.parametrize("ctx2", [
    {"patient": "p-43", "record": "r-7"},                    # value changed
    {"patient": "p-42", "record": "r-7", "extra": "x"},      # key added
    {"patient": "p-42"},                                     # key removed
    {"Patient": "p-42", "record": "r-7"},                    # key renamed (case)
    {},                                                      # all removed
], ids=["value-changed", "key-added", "key-removed", "key-renamed", "empty"])
def test_changed_encryption_context(kmsd, two, ctx2):
    ct = enc(kmsd, two, two.ta, two.key, encryption_context=CTX)
    ok = kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct, encryption_context=dict(CTX))
    assert ok.status_code == 200, ok.text
    assert base64.b64decode(ok.json()["data"]["plaintext"]) == SECRET
    body = {"ciphertext": ct}
    if ctx2:
        body["encryption_context"] = ctx2
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, **body))


def test_context_order_does_not_matter(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key, encryption_context={"a": "1", "b": "2"})
    r = kmsd.post("/v1/%s/decrypt/%s" % (two.ta, two.key), token=two.tok,
                  data='{"encryption_context":{"b":"2","a":"1"},"ciphertext":"%s"}' % ct)
    assert r.status_code == 200, r.text


def test_context_given_but_not_bound(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct,
                                encryption_context={"patient": "p-42"}))


def test_changed_associated_data(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key, associated_data=AD)
    ok = kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct, associated_data=AD)
    assert ok.status_code == 200, ok.text
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct,
                                associated_data=b64(b"associated-data-2")))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct))


def test_ad_and_context_not_interchangeable(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key, associated_data=AD, encryption_context=CTX)
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct, associated_data=AD))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct,
                                encryption_context=CTX))


def _split(ct):
    prefix, _, body = ct.rpartition(":")
    return prefix + ":", base64.b64decode(body)


@pytest.mark.parametrize("cut", [1, 16, 17])
def test_truncated_ciphertext(kmsd, two, cut):
    ct = enc(kmsd, two, two.ta, two.key)
    prefix, raw = _split(ct)
    assert len(raw) == 12 + len(SECRET) + 16
    short = prefix + base64.b64encode(raw[:-cut]).decode()
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=short))


@pytest.mark.parametrize("n", [0, 1, 11, 12, 27, 28])
def test_too_short_ciphertext(kmsd, two, n):
    ct = enc(kmsd, two, two.ta, two.key)
    prefix, raw = _split(ct)
    short = prefix + base64.b64encode(raw[:n]).decode()
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=short))


def test_truncated_base64_text(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct[:-4]))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=ct[:-1]))


@pytest.mark.parametrize("where", ["iv", "body", "tag"])
def test_one_altered_base64_character(kmsd, two, where):
    ct = enc(kmsd, two, two.ta, two.key)
    prefix, _, body = ct.rpartition(":")
    # positions well inside the text so only real data bits change (not padding bits)
    pos = {"iv": 3, "body": len(body) // 2, "tag": len(body) - 8}[where]
    c = body[pos]
    repl = "A" if c != "A" else "B"
    altered = prefix + ":" + body[:pos] + repl + body[pos + 1:]
    assert altered != ct and len(altered) == len(ct)
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=altered))


def test_altered_byte_everywhere(kmsd, two):
    """Flipping any single byte of iv||ct||tag must fail (sampled every 5th byte)."""
    ct = enc(kmsd, two, two.ta, two.key)
    prefix, raw = _split(ct)
    for i in range(0, len(raw), 5):
        b = bytearray(raw)
        b[i] ^= 0x01
        bad = prefix + base64.b64encode(bytes(b)).decode()
        assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=bad))


@pytest.mark.parametrize("body", [
    "!!!!notbase64!!!!",
    "AAAA AAAA",
    "AAA",                 # bad length
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=A",  # padding in the middle
    "",
], ids=["symbols", "space", "bad-length", "inner-padding", "empty"])
def test_bad_base64(kmsd, two, body):
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext="vault:v1:" + body))


def test_missing_vault_prefix(kmsd, two):
    ct = enc(kmsd, two, two.ta, two.key)
    body = ct[len("vault:v1:"):]
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=body))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext="v1:" + body))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext="vault:" + body))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext="VAULT:v1:" + body))
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext="kms:v1:" + body))


@pytest.mark.parametrize("version", ["v0", "vX", "v", "v-1", "v1a", "v+1", "v 1", "v01x",
                                     "v99999999999999999999", "1", "vv1"])
def test_bad_version_field(kmsd, two, version):
    ct = enc(kmsd, two, two.ta, two.key)
    body = ct[len("vault:v1:"):]
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key,
                                ciphertext="vault:%s:%s" % (version, body)))


@pytest.mark.parametrize("value", [None, 123, ["vault:v1:AAAA"], {"c": "x"}])
def test_ciphertext_wrong_type(kmsd, two, value):
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key, ciphertext=value))


def test_missing_ciphertext(kmsd, two):
    assert_refused(kmsd.decrypt(two.tok, two.ta, two.key))


def test_server_still_serves(kmsd, two):
    kmsd.serves(two.tok, two.ta, two.key)
