"""Data keys: POST /v1/<t>/datakey/{plaintext|wrapped}/<k> (docs/API.md, Data plane)."""

import re

import pytest

from conftest import unb64

CT_RE = re.compile(r"^vault:v(\d+):[A-Za-z0-9+/]+={0,2}$")


@pytest.mark.parametrize("bits,nbytes", [(128, 16), (256, 32), (512, 64)])
def test_datakey_plaintext_roundtrip(kmsd, env, bits, nbytes):
    r = kmsd.datakey(env.token, env.tenant, env.key, bits=bits)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    dek = unb64(d["plaintext"])
    assert len(dek) == nbytes
    assert dek != bytes(nbytes), "an all-zero DEK is not random"
    assert CT_RE.match(d["ciphertext"]), d["ciphertext"]
    assert d["ciphertext"].startswith("vault:v1:")
    assert d["key_version"] == 1

    r2 = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=d["ciphertext"])
    assert r2.status_code == 200, r2.text
    assert unb64(r2.json()["data"]["plaintext"]) == dek


def test_datakey_default_is_256_bits(kmsd, env):
    r = kmsd.datakey(env.token, env.tenant, env.key)
    assert r.status_code == 200, r.text
    assert len(unb64(r.json()["data"]["plaintext"])) == 32


def test_datakeys_differ(kmsd, env):
    seen = set()
    cts = set()
    for _ in range(5):
        d = kmsd.datakey(env.token, env.tenant, env.key).json()["data"]
        seen.add(d["plaintext"])
        cts.add(d["ciphertext"])
    assert len(seen) == 5 and len(cts) == 5


def test_datakey_wrapped_has_no_plaintext(kmsd, env):
    r = kmsd.datakey(env.token, env.tenant, env.key, kind="wrapped", bits=512)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert "plaintext" not in d, d
    assert set(d) == {"ciphertext", "key_version"}, d
    assert CT_RE.match(d["ciphertext"])
    assert d["key_version"] == 1
    # the wrapped key unwraps to a 64-byte DEK
    r2 = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=d["ciphertext"])
    assert r2.status_code == 200, r2.text
    assert len(unb64(r2.json()["data"]["plaintext"])) == 64


def test_datakey_answer_shape(kmsd, env):
    r = kmsd.datakey(env.token, env.tenant, env.key, headers={"X-Request-Id": "dk-shape-1"})
    assert r.status_code == 200
    j = r.json()
    assert j["request_id"] == "dk-shape-1"
    assert r.headers.get("X-Request-Id") == "dk-shape-1"
    assert set(j["data"]) == {"plaintext", "ciphertext", "key_version"}, j


@pytest.mark.parametrize("bits", [0, 1, 64, 192, 255, 257, 1024, -256])
def test_datakey_bad_bits(kmsd, env, bits):
    r = kmsd.datakey(env.token, env.tenant, env.key, bits=bits)
    assert r.status_code == 400, r.text
    assert r.json()["errors"], r.text
    assert "data" not in r.json()


@pytest.mark.parametrize("bits", [256.5, True, [256], {"n": 256}, "abc", "-1"])
def test_datakey_bits_wrong_type(kmsd, env, bits):
    r = kmsd.datakey(env.token, env.tenant, env.key, bits=bits)
    assert r.status_code == 400, r.text
    assert r.json()["errors"]


def test_datakey_bad_kind(kmsd, env):
    r = kmsd.post("/v1/%s/datakey/raw/%s" % (env.tenant, env.key), {}, token=env.token)
    assert r.status_code in (400, 404), r.text


def test_datakey_unknown_key(kmsd, env):
    # the service principal is scoped to the tenant; the key does not exist
    r = kmsd.datakey(env.token, env.tenant, "no-such-key")
    assert r.status_code in (400, 404), r.text
    assert "plaintext" not in r.text


def test_datakey_with_context_and_ad(kmsd, env):
    ctx = {"patient": "p-123", "table": "notes"}
    ad = "YWQtdmFsdWU="
    d = kmsd.datakey(env.token, env.tenant, env.key, encryption_context=ctx,
                     associated_data=ad).json()["data"]
    r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=d["ciphertext"],
                     encryption_context=ctx, associated_data=ad)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["plaintext"] == d["plaintext"]
    r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=d["ciphertext"])
    assert r.status_code == 400, r.text
