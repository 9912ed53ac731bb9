"""Rotation and rewrap: POST /v1/<t>/keys/<k>/rotate, POST /v1/<t>/rewrap/<k>."""

import base64

from conftest import b64, unb64

SECRET = b"lab result 2024-05-01: HbA1c 6.1%"
CTX = {"patient": "p-9"}


def test_rotate_keeps_old_and_moves_new(kmsd):
    t, k, tok = kmsd.setup_tenant_key()

    # v1 material: a data key, an encrypted value, and one bound to a context
    dk1 = kmsd.datakey(tok, t, k).json()["data"]
    assert dk1["ciphertext"].startswith("vault:v1:") and dk1["key_version"] == 1
    e1 = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET)).json()["data"]
    assert e1["ciphertext"].startswith("vault:v1:") and e1["key_version"] == 1
    e1c = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET), encryption_context=CTX).json()["data"]

    rot = kmsd.rotate(t, k)
    assert rot["latest_version"] == 2 and rot["rotated_version"] == 2
    assert set(rot["keys"]) == {"1", "2"}

    # key read shows both versions
    r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["latest_version"] == 2
    assert set(d["keys"]) == {"1", "2"}
    assert all(isinstance(v, int) and v > 0 for v in d["keys"].values()), d["keys"]
    assert d["keys"]["2"] >= d["keys"]["1"]
    assert d["min_decryption_version"] == 1
    # a service token may read the key too (docs/API.md: admin, service)
    r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=tok)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["latest_version"] == 2

    # old v1 ciphertexts still decrypt
    r = kmsd.decrypt(tok, t, k, ciphertext=dk1["ciphertext"])
    assert r.status_code == 200, r.text
    assert r.json()["data"]["plaintext"] == dk1["plaintext"]
    r = kmsd.decrypt(tok, t, k, ciphertext=e1["ciphertext"])
    assert r.status_code == 200, r.text
    assert unb64(r.json()["data"]["plaintext"]) == SECRET

    # new ciphertexts are v2
    dk2 = kmsd.datakey(tok, t, k).json()["data"]
    assert dk2["ciphertext"].startswith("vault:v2:") and dk2["key_version"] == 2
    e2 = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET)).json()["data"]
    assert e2["ciphertext"].startswith("vault:v2:") and e2["key_version"] == 2
    w2 = kmsd.datakey(tok, t, k, kind="wrapped").json()["data"]
    assert w2["ciphertext"].startswith("vault:v2:")

    # rewrap v1 -> v2, and the v2 result decrypts to the same plaintext
    rw = kmsd.rewrap(tok, t, k, ciphertext=e1["ciphertext"])
    assert rw.status_code == 200, rw.text
    rwd = rw.json()["data"]
    assert rwd["ciphertext"].startswith("vault:v2:") and rwd["key_version"] == 2
    assert "plaintext" not in rwd
    assert rwd["ciphertext"] != e1["ciphertext"]
    r = kmsd.decrypt(tok, t, k, ciphertext=rwd["ciphertext"])
    assert r.status_code == 200, r.text
    assert unb64(r.json()["data"]["plaintext"]) == SECRET

    rw = kmsd.rewrap(tok, t, k, ciphertext=dk1["ciphertext"]).json()["data"]
    assert rw["ciphertext"].startswith("vault:v2:")
    r = kmsd.decrypt(tok, t, k, ciphertext=rw["ciphertext"])
    assert r.json()["data"]["plaintext"] == dk1["plaintext"]

    # rewrap with a context needs the context, and keeps it bound
    bad = kmsd.rewrap(tok, t, k, ciphertext=e1c["ciphertext"])
    assert bad.status_code == 400, bad.text
    rw = kmsd.rewrap(tok, t, k, ciphertext=e1c["ciphertext"], encryption_context=CTX)
    assert rw.status_code == 200, rw.text
    ct = rw.json()["data"]["ciphertext"]
    assert ct.startswith("vault:v2:")
    assert kmsd.decrypt(tok, t, k, ciphertext=ct).status_code == 400
    r = kmsd.decrypt(tok, t, k, ciphertext=ct, encryption_context=CTX)
    assert unb64(r.json()["data"]["plaintext"]) == SECRET

    # rewrap of a v2 ciphertext stays v2 and still decrypts
    rw = kmsd.rewrap(tok, t, k, ciphertext=e2["ciphertext"]).json()["data"]
    assert rw["ciphertext"].startswith("vault:v2:")
    r = kmsd.decrypt(tok, t, k, ciphertext=rw["ciphertext"])
    assert unb64(r.json()["data"]["plaintext"]) == SECRET


def test_rotate_many_times(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    cts = [kmsd.encrypt(tok, t, k, plaintext=b64(b"v1")).json()["data"]["ciphertext"]]
    for v in range(2, 6):
        d = kmsd.rotate(t, k)
        assert d["latest_version"] == v
        assert set(d["keys"]) == {str(i) for i in range(1, v + 1)}
        ct = kmsd.encrypt(tok, t, k, plaintext=b64(b"v%d" % v)).json()["data"]["ciphertext"]
        assert ct.startswith("vault:v%d:" % v)
        cts.append(ct)
    for i, ct in enumerate(cts, 1):
        r = kmsd.decrypt(tok, t, k, ciphertext=ct)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"]["plaintext"]) == b"v%d" % i


def test_encrypt_and_rewrap_with_key_version(kmsd):
    """Superseded versions are decrypt-only (docs/KEY-LIFECYCLE.md): key_version may
    pin the latest version, never an older one, and never one that does not exist."""
    t, k, tok = kmsd.setup_tenant_key()
    old = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET)).json()["data"]["ciphertext"]
    kmsd.rotate(t, k)
    kmsd.rotate(t, k)
    r = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET), key_version=1)
    assert r.status_code == 409, r.text
    assert "decrypt-only" in r.json()["errors"][0]
    d = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET), key_version=3).json()["data"]
    assert d["ciphertext"].startswith("vault:v3:") and d["key_version"] == 3
    r = kmsd.rewrap(tok, t, k, ciphertext=old, key_version=2)
    assert r.status_code == 409, r.text
    r = kmsd.rewrap(tok, t, k, ciphertext=old)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["ciphertext"].startswith("vault:v3:")
    r = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET), key_version=4)
    assert r.status_code == 400, r.text


def test_service_cannot_rotate(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    r = kmsd.post("/v1/%s/keys/%s/rotate" % (t, k), {}, token=tok)
    assert r.status_code == 403, r.text
    assert r.json()["errors"] == ["permission denied"]
    d = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token).json()["data"]
    assert d["latest_version"] == 1


def test_rotate_unknown_key_is_404(kmsd):
    t = kmsd.create_tenant()
    r = kmsd.post("/v1/%s/keys/nokey/rotate" % t, {}, token=kmsd.admin_token)
    assert r.status_code == 404, r.text
