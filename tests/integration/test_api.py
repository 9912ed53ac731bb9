"""System and key management endpoints, response conventions, and concurrency."""

import concurrent.futures
import re
import os
import time

import pytest

from conftest import b64, unb64, uniq

KEY_FIELDS = {"name", "type", "latest_version", "min_decryption_version",
              "min_encryption_version", "keys", "deletion_allowed", "exportable", "derived",
              "supports_encryption", "supports_decryption", "supports_derivation",
              "supports_signing", "auto_rotate_period", "revoked", "versions"}


def test_health(kmsd):
    r = kmsd.get("/v1/sys/health")
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    # Vault answers health at the top level (no "data"); Vault clients read it there.
    d = r.json()
    assert "data" not in d
    want = {"audit": "ok", "token": "ok", "store": "ok", "clock": "ok"}
    if os.environ.get("KMS_TEST_PG_URI"):
        # a node on PostgreSQL also checks that it follows the other nodes' changes
        want["cluster"] = "ok"
        assert d["cluster"]["changes_read_ms_ago"] <= 3000
        assert isinstance(d["cluster"]["scheduler"], bool)
    assert d["checks"] == want
    assert d["initialized"] is True
    assert d["sealed"] is False
    assert d["standby"] is False
    assert isinstance(d["server_time_utc"], int)
    assert abs(d["server_time_utc"] - time.time()) < 120
    assert isinstance(d["version"], str) and d["version"]


def test_health_needs_no_token_and_ignores_bad_one(kmsd):
    r = kmsd.get("/v1/sys/health", token="bogus")
    assert r.status_code == 200, r.text


def _list_tenants(kmsd, **kw):
    return kmsd.get("/v1/sys/tenants", token=kmsd.admin_token, params={"list": "true"}, **kw)


def test_request_id_echoed(kmsd):
    for rid in ("req.ID_1-x", "a" * 64, "Z"):
        r = _list_tenants(kmsd, headers={"X-Request-Id": rid})
        assert r.status_code == 200, r.text
        assert r.headers.get("X-Request-Id") == rid
        assert r.json()["request_id"] == rid
    r = kmsd.get("/v1/sys/health", headers={"X-Request-Id": "health-1"})
    assert r.headers.get("X-Request-Id") == "health-1"


def test_request_id_generated(kmsd):
    ids = set()
    for _ in range(3):
        r = _list_tenants(kmsd)
        rid = r.headers.get("X-Request-Id")
        assert rid and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid), rid
        assert r.json()["request_id"] == rid
        ids.add(rid)
    assert len(ids) == 3


@pytest.mark.parametrize("bad", ["a" * 65, "has space", "semi;colon", "quote\""])
def test_bad_request_id_not_echoed(kmsd, bad):
    r = _list_tenants(kmsd, headers={"X-Request-Id": bad})
    assert r.status_code in (200, 400), r.text
    assert r.headers.get("X-Request-Id") != bad
    assert r.json().get("request_id") != bad


def test_error_request_id_header(kmsd):
    r = kmsd.post("/v1/sys/tenants/" + uniq("x"), {}, headers={"X-Request-Id": "err-1"})
    assert r.status_code == 401
    assert r.headers.get("X-Request-Id") == "err-1"


def test_tenant_crud(kmsd):
    t = uniq("crud")
    r = kmsd.post("/v1/sys/tenants/" + t, {"retention": "non-phi"}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["name"] == t and d["retention"] == "non-phi" and isinstance(d["created"], int)
    r = kmsd.get("/v1/sys/tenants/" + t, token=kmsd.admin_token)
    assert r.status_code == 200
    assert r.json()["data"]["retention"] == "non-phi"
    assert r.json()["data"]["created"] == d["created"]
    # default retention is phi
    t2 = uniq("crud")
    r = kmsd.post("/v1/sys/tenants/" + t2, {}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["retention"] == "phi"
    r = kmsd.get("/v1/sys/tenants/" + uniq("none"), token=kmsd.admin_token)
    assert r.status_code == 404, r.text
    # LIST and GET ?list=true are the same call
    r1 = kmsd.request("LIST", "/v1/sys/tenants", token=kmsd.admin_token)
    r2 = kmsd.get("/v1/sys/tenants", token=kmsd.admin_token, params={"list": "true"})
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert r1.json()["data"] == r2.json()["data"]
    assert {t, t2} <= set(r1.json()["data"]["keys"])


def test_principal_crud(kmsd):
    t = kmsd.create_tenant()
    p = uniq("svc")
    r = kmsd.post("/v1/sys/principals/" + p, {"role": "service", "tenants": [t]},
                  token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["name"] == p and d["role"] == "service" and d["tenants"] == [t]
    assert isinstance(d["created"], int)
    r = kmsd.get("/v1/sys/principals/" + p, token=kmsd.admin_token)
    assert r.status_code == 200
    assert r.json()["data"]["tenants"] == [t]
    r = kmsd.get("/v1/sys/principals/" + uniq("none"), token=kmsd.admin_token)
    assert r.status_code == 404
    r = kmsd.request("LIST", "/v1/sys/principals", token=kmsd.admin_token)
    assert r.status_code == 200
    assert {p, "admin"} <= set(r.json()["data"]["keys"])


def test_second_admin(kmsd):
    a = uniq("adm")
    kmsd.create_principal(a, role="admin")
    tok, _ = kmsd.create_token(a)
    t = uniq("byadm")
    r = kmsd.post("/v1/sys/tenants/" + t, {}, token=tok)
    assert r.status_code == 200, r.text
    r = kmsd.post("/v1/%s/keys/k" % t, {}, token=tok)
    assert r.status_code == 200, r.text
    r = kmsd.datakey(tok, t, "k")
    assert r.status_code == 403, r.text


def test_key_create_read_shape(kmsd):
    t = kmsd.create_tenant()
    k = uniq("shape")
    r = kmsd.post("/v1/%s/keys/%s" % (t, k), {}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    created = r.json()["data"]
    assert KEY_FIELDS <= set(created), KEY_FIELDS - set(created)
    # versions: per version only its state and creation time (docs/KEY-LIFECYCLE.md)
    assert created["revoked"] is False
    assert list(created["versions"]) == ["1"]
    assert created["versions"]["1"] == {"state": "active", "created": created["keys"]["1"]}
    # anything beyond the documented fields is plain metadata, never material
    for extra in set(created) - KEY_FIELDS:
        assert isinstance(created[extra], (bool, int)) or created[extra] in (t, k), \
            (extra, created[extra])
    r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token)
    assert r.status_code == 200
    d = r.json()["data"]
    assert d == created
    assert d["name"] == k and d["type"] == "aes256-gcm96"
    assert d["latest_version"] == 1
    assert d["min_decryption_version"] == 1 and d["min_encryption_version"] == 0
    assert list(d["keys"]) == ["1"] and isinstance(d["keys"]["1"], int)
    assert abs(d["keys"]["1"] - time.time()) < 300
    assert d["deletion_allowed"] is False and d["exportable"] is False
    assert d["derived"] is False and d["supports_derivation"] is False
    assert d["supports_encryption"] is True and d["supports_decryption"] is True
    assert d["supports_signing"] is False and d["auto_rotate_period"] == 0
    rot = kmsd.post("/v1/%s/keys/%s/rotate" % (t, k), {}, token=kmsd.admin_token)
    assert rot.status_code == 200
    assert KEY_FIELDS <= set(rot.json()["data"])
    assert rot.json()["data"]["latest_version"] == 2


def test_key_read_missing_is_404(kmsd):
    t = kmsd.create_tenant()
    r = kmsd.get("/v1/%s/keys/missing" % t, token=kmsd.admin_token)
    assert r.status_code == 404, r.text


def test_key_list(kmsd):
    t = kmsd.create_tenant()
    tok = kmsd.service([t])
    # no key yet: 404, as Vault
    r = kmsd.request("LIST", "/v1/%s/keys" % t, token=kmsd.admin_token)
    assert r.status_code == 404, r.text
    names = sorted(uniq("L") for _ in range(3))
    for n in names:
        kmsd.create_key(t, n)
    for token in (kmsd.admin_token, tok):
        r1 = kmsd.request("LIST", "/v1/%s/keys" % t, token=token)
        r2 = kmsd.get("/v1/%s/keys" % t, token=token, params={"list": "true"})
        assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
        assert sorted(r1.json()["data"]["keys"]) == names
        assert r1.json()["data"] == r2.json()["data"]


def test_key_material_never_in_answers(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token)
    text = r.text.lower()
    for word in ("\"key\":", "material", "kek", "blob", "wrapped"):
        assert word not in text, (word, r.text)


def test_concurrent_datakey_and_decrypt(kmsd):
    import requests
    t, k, tok = kmsd.setup_tenant_key()

    def work(i):
        # one session per thread: requests.Session is not thread safe
        s = requests.Session()
        s.trust_env = False
        h = {"X-Vault-Token": tok}
        out = []
        try:
            for j in range(10):
                ctx = {"worker": str(i), "n": str(j)}
                d = s.post(kmsd.url + "/v1/%s/datakey/plaintext/%s" % (t, k),
                           json={"bits": 256, "encryption_context": ctx}, headers=h,
                           verify=kmsd.ca, timeout=60)
                assert d.status_code == 200, d.text
                dd = d.json()["data"]
                r = s.post(kmsd.url + "/v1/%s/decrypt/%s" % (t, k),
                           json={"ciphertext": dd["ciphertext"], "encryption_context": ctx},
                           headers=h, verify=kmsd.ca, timeout=60)
                assert r.status_code == 200, r.text
                assert r.json()["data"]["plaintext"] == dd["plaintext"]
                out.append(dd["plaintext"])
        finally:
            s.close()
        return out

    results = []
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for out in ex.map(work, range(8)):
            results += out
    assert len(results) == 80 and len(set(results)) == 80
    assert all(len(unb64(x)) == 32 for x in results)
    kmsd.serves(tok, t, k)


def test_concurrent_rotate_and_encrypt(kmsd):
    import requests
    t, k, tok = kmsd.setup_tenant_key()
    stop = time.monotonic() + 3

    def enc(i):
        s = requests.Session()
        s.trust_env = False
        cts = []
        while time.monotonic() < stop:
            r = s.post(kmsd.url + "/v1/%s/encrypt/%s" % (t, k),
                       json={"plaintext": b64("c%d" % i)}, headers={"X-Vault-Token": tok},
                       verify=kmsd.ca, timeout=60)
            assert r.status_code == 200, r.text
            cts.append(r.json()["data"]["ciphertext"])
        s.close()
        return i, cts

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(enc, i) for i in range(3)]
        for _ in range(4):
            kmsd.rotate(t, k)
            time.sleep(0.3)
        done = [f.result() for f in futs]
    d = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token).json()["data"]
    assert d["latest_version"] == 5
    for i, cts in done:
        for ct in cts[:: max(1, len(cts) // 10)]:
            r = kmsd.decrypt(tok, t, k, ciphertext=ct)
            assert r.status_code == 200, r.text
            assert unb64(r.json()["data"]["plaintext"]) == b"c%d" % i


def test_key_read_in_missing_tenant_is_404_for_admin(kmsd):
    r = kmsd.get("/v1/%s/keys/k" % uniq("ghost"), token=kmsd.admin_token)
    assert r.status_code == 404, r.text


def test_plain_http_is_refused(kmsd):
    import requests
    try:
        r = requests.get("http://127.0.0.1:%d/v1/sys/health" % kmsd.port, timeout=10)
    except requests.RequestException:
        return  # the TLS server dropped the plaintext request: refused
    assert r.status_code != 200 or "initialized" not in r.text, r.text
    kmsd.health()


@pytest.mark.parametrize("version,ok", [("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)])
def test_tls_versions(kmsd, version, ok):
    """HTTPS only, TLS 1.2+ (docs/API.md). SECLEVEL=0 lets the client offer TLS 1.1."""
    import subprocess
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % kmsd.port, version,
                        "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", kmsd.ca,
                        "-verify_return_error", "-servername", "localhost"],
                       input=b"", capture_output=True, timeout=30)
    out = r.stdout.decode("utf-8", "replace")
    negotiated = "Cipher is (NONE)" not in out and r.returncode == 0
    assert negotiated == ok, out[-1500:] + r.stderr.decode("utf-8", "replace")[-500:]


@pytest.mark.skipif(not os.environ.get("KMS_TEST_PG_URI"), reason="the PostgreSQL store only (make check-pg)")
def test_backup_on_postgresql_says_how(kmsd):
    # The archive is made from a SQLite snapshot; on PostgreSQL the answer is 501 and
    # says what to use instead, and nothing else happens.
    r = kmsd.post("/v1/sys/backup", {}, token=kmsd.admin_token)
    assert r.status_code == 501, r.text
    msg = r.json()["errors"][0]
    assert "pg_dump" in msg and "SCALE-OUT" in msg, msg
