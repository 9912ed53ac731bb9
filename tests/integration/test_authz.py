"""Authentication and authorization (docs/API.md, Conventions: Auth, Roles)."""

import time

import pytest

from conftest import b64, uniq

DENIED = {"errors": ["permission denied"]}
MISSING = {"errors": ["missing client token"]}


def body_wo_request_id(r):
    j = r.json()
    j.pop("request_id", None)
    return j


@pytest.fixture(scope="module")
def ab(kmsd):
    """Tenants A and B, each with key k; a service token scoped to A only."""
    ta, tb = kmsd.create_tenant(uniq("a")), kmsd.create_tenant(uniq("b"))
    kmsd.create_key(ta, "k")
    kmsd.create_key(tb, "k")
    tok_a = kmsd.service([ta])
    tok_b = kmsd.service([tb])
    ct_b = kmsd.encrypt(tok_b, tb, "k", plaintext=b64("b-secret")).json()["data"]["ciphertext"]

    class AB:
        pass

    x = AB()
    x.ta, x.tb, x.tok_a, x.tok_b, x.ct_b = ta, tb, tok_a, tok_b, ct_b
    return x


DATA_CALLS = [
    ("POST", "/v1/{t}/datakey/plaintext/k", {}),
    ("POST", "/v1/{t}/datakey/wrapped/k", {}),
    ("POST", "/v1/{t}/encrypt/k", {"plaintext": "aGk="}),
    ("POST", "/v1/{t}/decrypt/k", {"ciphertext": "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    ("POST", "/v1/{t}/rewrap/k", {"ciphertext": "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    ("GET", "/v1/{t}/keys/k", None),
]


@pytest.mark.parametrize("method,path,body", DATA_CALLS + [
    ("POST", "/v1/sys/tenants/x1", {}),
    ("GET", "/v1/sys/tenants?list=true", None),
    ("POST", "/v1/{t}/keys/newkey", {}),
    ("GET", "/v1/auth/token/lookup-self", None),
])
def test_no_token_is_401(kmsd, ab, method, path, body):
    r = kmsd.request(method, path.format(t=ab.ta), json_body=body)
    assert r.status_code == 401, r.text
    assert body_wo_request_id(r) == MISSING


@pytest.mark.parametrize("method,path,body", DATA_CALLS)
def test_empty_token_is_401(kmsd, ab, method, path, body):
    r = kmsd.request(method, path.format(t=ab.ta), json_body=body,
                     headers={"X-Vault-Token": ""})
    assert r.status_code == 401, r.text
    assert body_wo_request_id(r) == MISSING


@pytest.mark.parametrize("tok", ["s.bogus", "x" * 40, "hvs.AAAAAAAAAAAAAAAAAAAAAAAA",
                                 "a" * 2000, "tok\u00e9n"])
def test_bad_token_is_403(kmsd, ab, tok):
    for method, path, body in DATA_CALLS:
        r = kmsd.request(method, path.format(t=ab.ta), json_body=body,
                         headers={"X-Vault-Token": tok.encode("utf-8")})
        assert r.status_code == 403, (path, r.text)
        assert body_wo_request_id(r) == DENIED


def test_bad_bearer_is_403(kmsd, ab):
    r = kmsd.datakey("not-a-token", ab.ta, "k", bearer=True)
    assert r.status_code == 403, r.text
    assert body_wo_request_id(r) == DENIED


def test_bearer_header_works(kmsd, ab):
    r = kmsd.datakey(ab.tok_a, ab.ta, "k", bearer=True)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]["ciphertext"]) > 9


def test_other_tenant_is_403_same_body(kmsd, ab):
    # existing tenant and key, not mine
    r1 = kmsd.datakey(ab.tok_a, ab.tb, "k")
    assert r1.status_code == 403, r1.text
    # existing tenant, nonexistent key
    r2 = kmsd.datakey(ab.tok_a, ab.tb, "nope")
    # nonexistent tenant
    r3 = kmsd.datakey(ab.tok_a, uniq("ghost"), "k")
    assert r2.status_code == 403, r2.text
    assert r3.status_code == 403, r3.text
    assert body_wo_request_id(r1) == body_wo_request_id(r2) == body_wo_request_id(r3) == DENIED
    assert r1.headers.get("Content-Type") == r3.headers.get("Content-Type")
    # decrypt of B's real ciphertext with A's token
    r4 = kmsd.decrypt(ab.tok_a, ab.tb, "k", ciphertext=ab.ct_b)
    assert r4.status_code == 403, r4.text
    assert body_wo_request_id(r4) == DENIED
    assert "b-secret" not in r4.text and b64("b-secret") not in r4.text
    # key read and list too
    for path in ("/v1/%s/keys/k" % ab.tb, "/v1/%s/keys/k" % uniq("ghost")):
        r = kmsd.get(path, token=ab.tok_a)
        assert r.status_code == 403, r.text
        assert body_wo_request_id(r) == DENIED
    r5 = kmsd.get("/v1/%s/keys" % ab.tb, token=ab.tok_a, params={"list": "true"})
    r6 = kmsd.get("/v1/%s/keys" % uniq("ghost"), token=ab.tok_a, params={"list": "true"})
    assert r5.status_code == r6.status_code == 403, (r5.text, r6.text)
    assert body_wo_request_id(r5) == body_wo_request_id(r6) == DENIED


def test_own_tenant_still_works(kmsd, ab):
    r = kmsd.datakey(ab.tok_a, ab.ta, "k")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method,path,body", DATA_CALLS[:5])
def test_admin_gets_no_key_material(kmsd, ab, method, path, body):
    r = kmsd.request(method, path.format(t=ab.ta), token=kmsd.admin_token, json_body=body)
    assert r.status_code == 403, r.text
    assert body_wo_request_id(r) == DENIED


def test_admin_cannot_decrypt_real_ciphertext(kmsd, ab):
    r = kmsd.decrypt(kmsd.admin_token, ab.tb, "k", ciphertext=ab.ct_b)
    assert r.status_code == 403, r.text
    assert "b-secret" not in r.text and b64("b-secret") not in r.text


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/sys/tenants/{new}", {"retention": "phi"}),
    ("POST", "/v1/{t}/keys/{new}", {}),
    ("POST", "/v1/{t}/keys/k/rotate", {}),
    ("POST", "/v1/sys/principals/{new}", {"role": "admin", "tenants": []}),
    ("POST", "/v1/sys/principals/{new}", {"role": "service", "tenants": ["{t}"]}),
    ("GET", "/v1/sys/tenants?list=true", None),
    ("LIST", "/v1/sys/tenants", None),
    ("GET", "/v1/sys/principals?list=true", None),
    ("GET", "/v1/sys/tenants/{t}", None),
    ("POST", "/v1/sys/tokens/revoke", {"accessor": "x"}),
])
def test_service_cannot_administer(kmsd, ab, method, path, body):
    new = uniq("n")
    p = path.format(t=ab.ta, new=new)
    if body is not None and "tenants" in body:
        body = dict(body, tenants=[x.format(t=ab.ta) for x in body["tenants"]])
    r = kmsd.request(method, p, token=ab.tok_a, json_body=body)
    assert r.status_code == 403, (p, r.text)
    assert body_wo_request_id(r) == DENIED
    # nothing was created
    if method == "POST" and "{new}" in path:
        if "tenants" in p:
            chk = kmsd.get("/v1/sys/tenants/" + new, token=kmsd.admin_token)
        elif "principals" in p:
            chk = kmsd.get("/v1/sys/principals/" + new, token=kmsd.admin_token)
        else:
            chk = kmsd.get("/v1/%s/keys/%s" % (ab.ta, new), token=kmsd.admin_token)
        assert chk.status_code == 404, chk.text


def test_service_cannot_mint_tokens(kmsd, ab):
    p = kmsd.create_principal(tenants=[ab.ta])
    r = kmsd.post("/v1/sys/principals/%s/tokens" % p, {}, token=ab.tok_a)
    assert r.status_code == 403, r.text
    assert "client_token" not in r.text


def test_revoked_token_is_403(kmsd, ab):
    p = kmsd.create_principal(tenants=[ab.ta])
    tok, accessor = kmsd.create_token(p)
    assert tok != accessor
    r = kmsd.datakey(tok, ab.ta, "k")
    assert r.status_code == 200, r.text
    r = kmsd.post("/v1/sys/tokens/revoke", {"accessor": accessor}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"accessor": accessor, "revoked": True}
    r = kmsd.datakey(tok, ab.ta, "k")
    assert r.status_code == 403, r.text
    assert body_wo_request_id(r) == DENIED
    r = kmsd.get("/v1/auth/token/lookup-self", token=tok)
    assert r.status_code == 403, r.text
    # another token of the same principal is unaffected
    tok2, _ = kmsd.create_token(p)
    assert kmsd.datakey(tok2, ab.ta, "k").status_code == 200


def test_revoke_unknown_accessor(kmsd):
    r = kmsd.post("/v1/sys/tokens/revoke", {"accessor": "no-such-accessor"},
                  token=kmsd.admin_token)
    assert r.status_code in (400, 404), r.text


def test_expired_token_is_403(kmsd, ab):
    p = kmsd.create_principal(tenants=[ab.ta])
    r = kmsd.post("/v1/sys/principals/%s/tokens" % p, {"ttl": 1}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    j = r.json()
    tok = j["auth"]["client_token"]
    assert j["data"]["principal"] == p
    assert j["data"]["expires"]
    time.sleep(2.2)
    r = kmsd.datakey(tok, ab.ta, "k")
    assert r.status_code == 403, r.text
    assert body_wo_request_id(r) == DENIED


def test_token_create_answer(kmsd, ab):
    p = kmsd.create_principal(tenants=[ab.ta])
    r = kmsd.post("/v1/sys/principals/%s/tokens" % p, {}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["data"]["principal"] == p
    assert j["data"]["accessor"] == j["auth"]["accessor"]
    assert r.text.count(j["auth"]["client_token"]) == 1, "the token is shown exactly once"
    assert j["auth"]["client_token"] != j["auth"]["accessor"]


def test_lookup_self(kmsd, ab):
    r = kmsd.get("/v1/auth/token/lookup-self", token=ab.tok_a)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["policies"] == ["service"]
    assert isinstance(d["display_name"], str) and d["display_name"]
    assert isinstance(d["accessor"], str) and d["accessor"] and d["accessor"] != ab.tok_a
    assert "expire_time" in d
    r = kmsd.get("/v1/auth/token/lookup-self", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["policies"] == ["admin"]
    assert "admin" in r.json()["data"]["display_name"]


def test_token_hash_not_prefix_match(kmsd, ab):
    # a token with one character changed, or with a suffix, is not the token
    t = ab.tok_a
    for bad in (t[:-1] + ("A" if t[-1] != "A" else "B"), t + "x", t[:-1], t.upper() + "Q"):
        r = kmsd.datakey(bad, ab.ta, "k")
        assert r.status_code == 403, r.text
        assert body_wo_request_id(r) == DENIED
