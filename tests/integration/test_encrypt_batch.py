"""Encrypt/decrypt round trips and batch_input on datakey, encrypt, decrypt and rewrap."""

import json

import pytest

from conftest import b64, unb64

AD = b64(b"row-17")


@pytest.mark.parametrize("plaintext", [b"x", b"hello PHI", bytes(range(256)) * 16, b"\x00" * 33],
                         ids=["1-byte", "text", "4k-binary", "zeros"])
def test_encrypt_decrypt_plain(kmsd, env, plaintext):
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64(plaintext))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert set(d) == {"ciphertext", "key_version"}, d
    assert d["ciphertext"].startswith("vault:v1:") and d["key_version"] == 1
    raw = unb64(d["ciphertext"][len("vault:v1:"):])
    assert len(raw) == 12 + len(plaintext) + 16  # iv || ct || tag (docs/FORMATS.md)
    assert plaintext not in raw or len(plaintext) < 2
    r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=d["ciphertext"])
    assert r.status_code == 200, r.text
    assert set(r.json()["data"]) == {"plaintext"}
    assert unb64(r.json()["data"]["plaintext"]) == plaintext


def test_encrypt_same_plaintext_twice_differs(kmsd, env):
    a = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64("same")).json()["data"]
    b = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64("same")).json()["data"]
    assert a["ciphertext"] != b["ciphertext"]


@pytest.mark.parametrize("ctx,ad", [
    ({"patient": "p-1"}, None),
    (None, AD),
    ({"patient": "p-1", "field": "dx", "unicode": "\u00e9\u4e2d"}, AD),
    ({}, None),
], ids=["context", "ad", "both", "empty-context"])
def test_encrypt_decrypt_with_context_and_ad(kmsd, env, ctx, ad):
    body = {"plaintext": b64("diagnosis: J45.909")}
    if ctx is not None:
        body["encryption_context"] = ctx
    if ad is not None:
        body["associated_data"] = ad
    r = kmsd.encrypt(env.token, env.tenant, env.key, **body)
    assert r.status_code == 200, r.text
    ct = r.json()["data"]["ciphertext"]
    dbody = {k: v for k, v in body.items() if k != "plaintext"}
    r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=ct, **dbody)
    assert r.status_code == 200, r.text
    assert unb64(r.json()["data"]["plaintext"]) == b"diagnosis: J45.909"


def test_encrypt_empty_plaintext(kmsd, env):
    # "" is valid base64 of zero bytes; either it round-trips or it is refused with 400
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext="")
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        ct = r.json()["data"]["ciphertext"]
        r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=ct)
        assert r.status_code == 200 and r.json()["data"]["plaintext"] == ""


@pytest.mark.parametrize("pt", ["not base64!", "AAA", "QQ", "QQ==QQ==", 5, None, ["QQ=="]])
def test_encrypt_bad_plaintext(kmsd, env, pt):
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=pt)
    assert r.status_code == 400, r.text
    assert r.json()["errors"]


@pytest.mark.parametrize("ctx", [{"a": 1}, {"a": None}, ["a", "b"], "a=b", {"a": {"b": "c"}}])
def test_bad_encryption_context_type(kmsd, env, ctx):
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64("x"), encryption_context=ctx)
    assert r.status_code == 400, r.text


def test_bad_associated_data(kmsd, env):
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64("x"), associated_data="%%%")
    assert r.status_code == 400, r.text


# -- batches ---------------------------------------------------------------------------

def batch(kmsd, env, op, items, kind=None):
    path = "/v1/%s/%s/%s" % (env.tenant, op if kind is None else "datakey/" + kind, env.key)
    return kmsd.post(path, {"batch_input": items}, token=env.token)


def test_batch_datakey(kmsd, env):
    items = [{"bits": 128}, {"bits": 512, "encryption_context": {"i": "1"}}, {"bits": 256}]
    r = batch(kmsd, env, None, items, kind="plaintext")
    assert r.status_code == 200, r.text
    res = r.json()["data"]["batch_results"]
    assert len(res) == 3
    # order is visible through the sizes
    assert [len(unb64(x["plaintext"])) for x in res] == [16, 64, 32]
    assert all(x["ciphertext"].startswith("vault:v1:") and x["key_version"] == 1 for x in res)
    assert len({x["plaintext"] for x in res}) == 3
    # each unwraps to its own DEK (the second one only with its context)
    for it, x in zip(items, res):
        body = {"ciphertext": x["ciphertext"]}
        if "encryption_context" in it:
            body["encryption_context"] = it["encryption_context"]
        d = kmsd.decrypt(env.token, env.tenant, env.key, **body)
        assert d.status_code == 200, d.text
        assert d.json()["data"]["plaintext"] == x["plaintext"]


def test_batch_datakey_wrapped(kmsd, env):
    r = batch(kmsd, env, None, [{}, {"bits": 128}, {}], kind="wrapped")
    assert r.status_code == 200, r.text
    res = r.json()["data"]["batch_results"]
    assert len(res) == 3
    assert all("plaintext" not in x and x["ciphertext"].startswith("vault:v1:") for x in res)


def test_batch_encrypt_decrypt_in_order(kmsd, env):
    pts = [b"first", b"second item", b"third \x00\xff"]
    items = [{"plaintext": b64(pts[0])},
             {"plaintext": b64(pts[1]), "encryption_context": {"patient": "p-2"}},
             {"plaintext": b64(pts[2]), "associated_data": AD}]
    r = batch(kmsd, env, "encrypt", items)
    assert r.status_code == 200, r.text
    res = r.json()["data"]["batch_results"]
    assert len(res) == 3
    assert all(x["ciphertext"].startswith("vault:v1:") and x["key_version"] == 1 for x in res)
    # ciphertext lengths follow plaintext lengths, so order is checked here too
    assert [len(unb64(x["ciphertext"][9:])) - 28 for x in res] == [len(p) for p in pts]

    ditems = [{"ciphertext": res[0]["ciphertext"]},
              {"ciphertext": res[1]["ciphertext"], "encryption_context": {"patient": "p-2"}},
              {"ciphertext": res[2]["ciphertext"], "associated_data": AD}]
    r = batch(kmsd, env, "decrypt", ditems)
    assert r.status_code == 200, r.text
    out = r.json()["data"]["batch_results"]
    assert [unb64(x["plaintext"]) for x in out] == pts


def test_batch_rewrap_in_order(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    pts = [b"a", b"bb", b"ccc"]
    cts = [kmsd.encrypt(tok, t, k, plaintext=b64(p)).json()["data"]["ciphertext"] for p in pts]
    kmsd.rotate(t, k)
    r = kmsd.post("/v1/%s/rewrap/%s" % (t, k), {"batch_input": [{"ciphertext": c} for c in cts]},
                  token=tok)
    assert r.status_code == 200, r.text
    res = r.json()["data"]["batch_results"]
    assert len(res) == 3
    assert all(x["ciphertext"].startswith("vault:v2:") and x["key_version"] == 2 for x in res)
    r = kmsd.post("/v1/%s/decrypt/%s" % (t, k),
                  {"batch_input": [{"ciphertext": x["ciphertext"]} for x in res]}, token=tok)
    assert r.status_code == 200, r.text
    assert [unb64(x["plaintext"]) for x in r.json()["data"]["batch_results"]] == pts


def _check_one_bad(r, bad_index, n=3):
    assert r.status_code == 400, r.text
    j = r.json()
    assert j.get("errors"), j
    # "errors says how many" (docs/API.md): one of three failed
    assert any("1" in e for e in j["errors"]), j["errors"]
    res = j["data"]["batch_results"]
    assert len(res) == n
    for i, x in enumerate(res):
        if i == bad_index:
            assert isinstance(x.get("error"), str) and x["error"], x
            assert "plaintext" not in x and "ciphertext" not in x
        else:
            assert "error" not in x or not x["error"], x
    return res


def test_batch_decrypt_one_bad_item(kmsd, env):
    pts = [b"one", b"two", b"three"]
    cts = [kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64(p)).json()["data"]
           ["ciphertext"] for p in pts]
    body = cts[1][:-6] + ("AAAAAA" if not cts[1].endswith("AAAAAA") else "BBBBBB")
    items = [{"ciphertext": cts[0]}, {"ciphertext": body}, {"ciphertext": cts[2]}]
    res = _check_one_bad(batch(kmsd, env, "decrypt", items), 1)
    assert unb64(res[0]["plaintext"]) == b"one"
    assert unb64(res[2]["plaintext"]) == b"three"


def test_batch_encrypt_one_bad_item(kmsd, env):
    items = [{"plaintext": b64("ok-0")}, {"plaintext": b64("ok-1")}, {"plaintext": "%%bad%%"}]
    res = _check_one_bad(batch(kmsd, env, "encrypt", items), 2)
    for i in (0, 1):
        d = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=res[i]["ciphertext"])
        assert unb64(d.json()["data"]["plaintext"]) == b"ok-%d" % i


def test_batch_rewrap_one_bad_item(kmsd, env):
    cts = [kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64(p)).json()["data"]
           ["ciphertext"] for p in ("r0", "r2")]
    items = [{"ciphertext": "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
             {"ciphertext": cts[0]}, {"ciphertext": cts[1]}]
    res = _check_one_bad(batch(kmsd, env, "rewrap", items), 0)
    d = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=res[2]["ciphertext"])
    assert unb64(d.json()["data"]["plaintext"]) == b"r2"


def test_batch_with_top_level_item_field_is_400(kmsd, env):
    r = kmsd.post("/v1/%s/encrypt/%s" % (env.tenant, env.key),
                  {"plaintext": b64("x"), "batch_input": [{"plaintext": b64("y")}]},
                  token=env.token)
    assert r.status_code == 400, r.text
    r = kmsd.post("/v1/%s/datakey/plaintext/%s" % (env.tenant, env.key),
                  {"bits": 128, "batch_input": [{"bits": 128}]}, token=env.token)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("bi", [[], "x", {"plaintext": "eA=="}, [1, 2], [None]],
                         ids=["empty", "string", "object", "ints", "null-item"])
def test_batch_input_bad_shape(kmsd, env, bi):
    r = kmsd.post("/v1/%s/encrypt/%s" % (env.tenant, env.key), {"batch_input": bi},
                  token=env.token)
    assert r.status_code == 400, r.text


def test_batch_limits(kmsd, env):
    ok = [{"plaintext": "eA=="}] * 1000
    r = batch(kmsd, env, "encrypt", ok)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["data"]["batch_results"]) == 1000
    r = batch(kmsd, env, "encrypt", ok + [{"plaintext": "eA=="}])
    assert r.status_code == 400, r.text[:500]
    kmsd.serves(env.token, env.tenant, env.key)


def test_batch_error_with_cut_multibyte_keeps_every_slot(kmsd, env):
    """Error details are cut at 64 bytes; a cut through a multibyte character once made
    the item's error vanish and shifted later results onto the wrong items."""
    t, k, tok = env.tenant, env.key, env.token
    bad_field = "f" * 63 + "\u00e9"
    items = [{"plaintext": b64(b"one"), bad_field: 1}, {"plaintext": b64(b"two")}]
    r = kmsd.post("/v1/%s/encrypt/%s" % (t, k), {"batch_input": items}, token=tok)
    assert r.status_code == 400, r.text
    res = r.json()["data"]["batch_results"]
    assert len(res) == 2
    assert "error" in res[0] and "unknown field" in res[0]["error"]
    assert "ciphertext" in res[1]
    d = kmsd.decrypt(tok, t, k, ciphertext=res[1]["ciphertext"]).json()["data"]
    assert d["plaintext"] == b64(b"two")


def test_invalid_utf8_in_path_is_audited_whole(kmsd, env):
    t, tok = env.tenant, env.token
    r = kmsd.post("/v1/%s/encrypt/x%%C3" % t, {"plaintext": b64(b"x")}, token=tok)
    assert r.status_code in (400, 404), r.text
    with open(kmsd.audit_path) as f:
        last = [json.loads(line) for line in f if '"encrypt"' in line][-1]
    assert last["key"] is not None and last["key"].startswith("x") and last["reason"]
