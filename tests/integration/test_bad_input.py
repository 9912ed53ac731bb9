"""Bad input: each case is followed by a health check and a datakey round trip that prove
the server still serves (docs/API.md, Conventions: Errors, Names)."""

import json

import pytest

from conftest import b64, uniq


def errors_of(r):
    j = r.json()
    assert isinstance(j.get("errors"), list) and j["errors"], j
    assert all(isinstance(e, str) and e for e in j["errors"]), j
    # a batch may answer per-item errors in data.batch_results; nothing else has data
    assert "data" not in j or set(j["data"]) == {"batch_results"}, j
    return j["errors"]


def raw(kmsd, env, path, data, token=None):
    return kmsd.request("POST", path, token=token or env.token, data=data,
                        headers={"Content-Type": "application/json"})


def dk_path(env):
    return "/v1/%s/datakey/plaintext/%s" % (env.tenant, env.key)


@pytest.mark.parametrize("data", [
    "{", "}", "not json", '{"bits": }', '{"bits": 256,}', "[]", '"string"', "256", "null",
    '{"bits": 256} trailing', "{'bits': 256}", "\x00", '{"bits": 256', b"\xff\xfe{}",
    '{"plaintext":"\\ud800"}',
], ids=lambda d: repr(d)[:20])
def test_malformed_json(kmsd, env, data):
    r = raw(kmsd, env, dk_path(env), data)
    assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


def test_empty_body_is_defaults_or_400(kmsd, env):
    # an empty body on datakey: either {} semantics (200, 256 bits) or 400; never 5xx
    r = raw(kmsd, env, dk_path(env), "")
    assert r.status_code in (200, 400), r.text
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("path,data", [
    ("datakey", '{"bits": 256, "bits": 128}'),
    ("encrypt", '{"plaintext": "aGk=", "plaintext": "aGk="}'),
    ("decrypt", '{"ciphertext": "vault:v1:AAAA", "ciphertext": "vault:v1:BBBB"}'),
    ("encrypt", '{"plaintext": "aGk=", "encryption_context": {"a": "1", "a": "2"}}'),
    ("encrypt", '{"batch_input": [{"plaintext": "aGk=", "plaintext": "aGk="}]}'),
])
def test_duplicate_json_keys(kmsd, env, path, data):
    p = dk_path(env) if path == "datakey" else "/v1/%s/%s/%s" % (env.tenant, path, env.key)
    r = raw(kmsd, env, p, data)
    assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


def test_duplicate_keys_admin(kmsd, env):
    r = kmsd.request("POST", "/v1/sys/tenants/" + uniq("dup"), token=kmsd.admin_token,
                     data='{"retention": "phi", "retention": "non-phi"}')
    assert r.status_code == 400, r.text
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("op,body", [
    ("datakey", {"bitz": 256}),
    ("datakey", {"bits": 256, "plaintext": "aGk="}),
    ("encrypt", {"plaintext": "aGk=", "context": "eA==", "nonce": "AAAAAAAAAAAAAAAA"}),
    ("encrypt", {"plaintext": "aGk=", "extra": 1}),
    ("decrypt", {"ciphertext": "vault:v1:AAAA", "bits": 256}),
    ("rewrap", {"ciphertext": "vault:v1:AAAA", "plaintext": "aGk="}),
    ("encrypt", {"batch_input": [{"plaintext": "aGk=", "foo": "bar"}]}),
], ids=["bitz", "datakey+plaintext", "vault-derivation-fields", "extra", "decrypt+bits",
        "rewrap+plaintext", "batch-item"])
def test_unknown_field(kmsd, env, op, body):
    p = dk_path(env) if op == "datakey" else "/v1/%s/%s/%s" % (env.tenant, op, env.key)
    r = kmsd.post(p, body, token=env.token)
    assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


def test_unknown_field_admin(kmsd, env):
    r = kmsd.post("/v1/sys/tenants/" + uniq("uf"), {"retention": "phi", "color": "red"},
                  token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, uniq("uf")), {"colour": 1},
                  token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("op,body", [
    ("datakey", {"bits": [256]}),
    ("datakey", {"bits": {"v": 256}}),
    ("datakey", {"bits": 256.5}),
    ("encrypt", {"plaintext": 12345}),
    ("encrypt", {"plaintext": ["aGk="]}),
    ("encrypt", {"plaintext": "aGk=", "encryption_context": "patient=1"}),
    ("encrypt", {"plaintext": "aGk=", "encryption_context": {"patient": 1}}),
    ("encrypt", {"plaintext": "aGk=", "associated_data": 7}),
    ("encrypt", {"plaintext": "aGk=", "key_version": "latest"}),
    ("decrypt", {"ciphertext": 1}),
    ("decrypt", {"ciphertext": {"v": 1}}),
    ("encrypt", {"batch_input": {"plaintext": "aGk="}}),
    ("encrypt", {"batch_input": ["aGk="]}),
])
def test_wrong_type(kmsd, env, op, body):
    p = dk_path(env) if op == "datakey" else "/v1/%s/%s/%s" % (env.tenant, op, env.key)
    r = kmsd.post(p, body, token=env.token)
    assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("body", [
    {"retention": 1}, {"retention": "forever"}, {"retention": ["phi"]},
])
def test_wrong_type_admin(kmsd, env, body):
    r = kmsd.post("/v1/sys/tenants/" + uniq("wt"), body, token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    kmsd.serves(env.token, env.tenant, env.key)


def test_body_of_1mib_is_413(kmsd, env):
    body = json.dumps({"plaintext": b64(b"\x00" * (786 * 1024))}).encode()
    assert len(body) > 1024 * 1024
    status, _, resp = kmsd.raw_post("/v1/%s/encrypt/%s" % (env.tenant, env.key), body,
                                    headers={"X-Vault-Token": env.token})
    assert status == 413, (status, resp[:300])
    kmsd.serves(env.token, env.tenant, env.key)


def test_body_just_over_limit_is_413(kmsd, env):
    body = b'{"plaintext":"' + b"A" * (65536 - 15) + b'"}'
    assert len(body) == 65537
    status, _, resp = kmsd.raw_post("/v1/%s/encrypt/%s" % (env.tenant, env.key), body,
                                    headers={"X-Vault-Token": env.token})
    assert status == 413, (status, resp[:300])
    kmsd.serves(env.token, env.tenant, env.key)


def test_body_at_limit_is_not_413(kmsd, env):
    n = (65536 - 20) // 4 * 3
    body = json.dumps({"plaintext": b64(b"\x01" * n)}).encode()
    assert len(body) <= 65536
    r = kmsd.request("POST", "/v1/%s/encrypt/%s" % (env.tenant, env.key), token=env.token,
                     data=body)
    assert r.status_code == 200, r.text[:300]
    kmsd.serves(env.token, env.tenant, env.key)


def test_413_with_requests(kmsd, env):
    """The same through requests: a 1 MiB body is answered 413 (or the connection is cut
    after the answer); either way the server keeps serving."""
    import requests
    try:
        r = kmsd.request("POST", "/v1/%s/encrypt/%s" % (env.tenant, env.key), token=env.token,
                         data=b"{" + b" " * (1024 * 1024) + b"}")
        assert r.status_code == 413, r.text[:300]
    except requests.ConnectionError:
        pass
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("method,path", [
    ("GET", "/"),
    ("GET", "/v1"),
    ("GET", "/v1/"),
    ("GET", "/v2/sys/health"),
    ("GET", "/v1/sys/nothing"),
    ("POST", "/v1/{t}/nothing/{k}"),
    ("POST", "/v1/{t}/datakey/{k}"),
    ("POST", "/v1/{t}/encrypt/{k}/extra"),
    ("POST", "/v1/{t}/encrypt"),
    ("GET", "/v1/sys/health/x"),
    ("POST", "/v1/{t}/transit/encrypt/{k}"),
])
def test_unknown_route_is_404(kmsd, env, method, path):
    r = kmsd.request(method, path.format(t=env.tenant, k=env.key), token=env.token,
                     json_body={} if method == "POST" else None)
    assert r.status_code == 404, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/{t}/encrypt/{k}"),
    ("GET", "/v1/{t}/decrypt/{k}"),
    ("GET", "/v1/{t}/datakey/plaintext/{k}"),
    ("DELETE", "/v1/{t}/encrypt/{k}"),
    ("POST", "/v1/sys/health"),
    ("DELETE", "/v1/sys/health"),
    ("PATCH", "/v1/{t}/keys/{k}"),
    ("GET", "/v1/{t}/keys/{k}/rotate"),
])
def test_wrong_method_is_405(kmsd, env, method, path):
    r = kmsd.request(method, path.format(t=env.tenant, k=env.key), token=env.token,
                     json_body={} if method in ("POST", "PATCH", "DELETE") else None)
    assert r.status_code == 405, r.text
    kmsd.serves(env.token, env.tenant, env.key)


BAD_TENANTS = ["Upper", "-lead", "_lead", "a" * 64, "a.b", "a%20b", "sys", "auth",
               "caf%C3%A9", "a%2Fb", "a%00b"]
BAD_KEYS = ["-lead", ".lead", "_lead", "a" * 129, "a%20b", "a%2Fb", "a%00b", "caf%C3%A9",
            "a:b", "a@b"]


@pytest.mark.parametrize("name", BAD_TENANTS)
def test_invalid_tenant_name_create(kmsd, env, name):
    r = kmsd.post("/v1/sys/tenants/" + name, {"retention": "phi"}, token=kmsd.admin_token)
    # an invalid name is bad input (400); a name that cannot even form a route may be 404
    assert r.status_code in (400, 404), r.text
    if name in ("sys", "auth", "Upper", "-lead", "a" * 64, "a.b"):
        assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


def test_valid_tenant_name_bounds(kmsd, env):
    for name in ("z", "0", "z" * 63, "z_b-c9"):
        r = kmsd.post("/v1/sys/tenants/" + name, {"retention": "non-phi"}, token=kmsd.admin_token)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["data"]["name"] == name


@pytest.mark.parametrize("name", BAD_KEYS)
def test_invalid_key_name_create(kmsd, env, name):
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, name), {}, token=kmsd.admin_token)
    assert r.status_code in (400, 404), r.text
    if name in ("-lead", ".lead", "_lead", "a" * 129, "a:b", "a@b"):
        assert r.status_code == 400, r.text
    errors_of(r)
    kmsd.serves(env.token, env.tenant, env.key)


def test_valid_key_name_bounds(kmsd, env):
    for name in ("K", "9", "a" * 128, "Ab.c_d-e"):
        r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, name), {}, token=kmsd.admin_token)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["data"]["name"] == name


@pytest.mark.parametrize("name", ["-p", "a" * 129, "a b", "a/b"])
def test_invalid_principal_name(kmsd, env, name):
    r = kmsd.post("/v1/sys/principals/" + name.replace(" ", "%20").replace("/", "%2F"),
                  {"role": "service", "tenants": [env.tenant]}, token=kmsd.admin_token)
    assert r.status_code in (400, 404), r.text
    if name in ("-p", "a" * 129):
        assert r.status_code == 400, r.text
    kmsd.serves(env.token, env.tenant, env.key)


def test_invalid_names_on_data_plane(kmsd, env):
    for t, k in (("Upper", env.key), (env.tenant, "-k"), ("a" * 64, env.key),
                 (env.tenant, "a" * 129)):
        r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token)
        assert r.status_code in (400, 404), r.text
    kmsd.serves(env.token, env.tenant, env.key)


def test_create_existing_key_is_409(kmsd, env):
    k = uniq("k")
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, k), {}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    ct = kmsd.encrypt(env.token, env.tenant, k, plaintext=b64("keep")).json()["data"]["ciphertext"]
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, k), {}, token=kmsd.admin_token)
    assert r.status_code == 409, r.text
    errors_of(r)
    # and the existing key was not replaced
    d = kmsd.decrypt(env.token, env.tenant, k, ciphertext=ct)
    assert d.status_code == 200 and d.json()["data"]["plaintext"] == b64("keep")
    kmsd.serves(env.token, env.tenant, env.key)


def test_create_key_in_missing_tenant_is_404(kmsd, env):
    r = kmsd.post("/v1/%s/keys/k" % uniq("nothere"), {}, token=kmsd.admin_token)
    assert r.status_code == 404, r.text
    kmsd.serves(env.token, env.tenant, env.key)


def test_create_tenant_twice_is_409(kmsd, env):
    t = uniq("twice")
    r = kmsd.post("/v1/sys/tenants/" + t, {"retention": "phi"}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    r = kmsd.post("/v1/sys/tenants/" + t, {"retention": "non-phi"}, token=kmsd.admin_token)
    assert r.status_code == 409, r.text
    errors_of(r)
    r = kmsd.get("/v1/sys/tenants/" + t, token=kmsd.admin_token)
    assert r.json()["data"]["retention"] == "phi"
    kmsd.serves(env.token, env.tenant, env.key)


def test_create_principal_twice_is_409(kmsd, env):
    p = kmsd.create_principal(tenants=[env.tenant])
    r = kmsd.post("/v1/sys/principals/" + p, {"role": "service", "tenants": [env.tenant]},
                  token=kmsd.admin_token)
    assert r.status_code == 409, r.text
    kmsd.serves(env.token, env.tenant, env.key)


def test_principal_bad_role_or_tenant(kmsd, env):
    r = kmsd.post("/v1/sys/principals/" + uniq("p"), {"role": "root", "tenants": []},
                  token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    r = kmsd.post("/v1/sys/principals/" + uniq("p"),
                  {"role": "service", "tenants": [uniq("missing")]}, token=kmsd.admin_token)
    assert r.status_code in (400, 404), r.text
    kmsd.serves(env.token, env.tenant, env.key)


@pytest.mark.parametrize("body", [
    {"type": "rsa-2048"}, {"type": "chacha20-poly1305"}, {"derived": True},
    {"convergent_encryption": True}, {"exportable": True}, {"allow_plaintext_backup": True},
])
def test_key_create_unsupported_options(kmsd, env, body):
    k = uniq("opt")
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, k), body, token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    assert kmsd.get("/v1/%s/keys/%s" % (env.tenant, k),
                    token=kmsd.admin_token).status_code == 404
    kmsd.serves(env.token, env.tenant, env.key)


def test_key_create_vault_false_options_accepted(kmsd, env):
    k = uniq("vf")
    r = kmsd.post("/v1/%s/keys/%s" % (env.tenant, k),
                  {"type": "aes256-gcm96", "derived": False, "convergent_encryption": False,
                   "exportable": False, "allow_plaintext_backup": False},
                  token=kmsd.admin_token)
    assert r.status_code == 200, r.text


def test_many_bad_requests_then_serves(kmsd, env):
    for i in range(50):
        raw(kmsd, env, dk_path(env), "{" * (i + 1))
    kmsd.serves(env.token, env.tenant, env.key)


def test_deeply_nested_json(kmsd, env):
    data = '{"encryption_context":' + "[" * 5000 + "]" * 5000 + ',"plaintext":"aGk="}'
    r = raw(kmsd, env, "/v1/%s/encrypt/%s" % (env.tenant, env.key), data)
    assert r.status_code == 400, r.text
    kmsd.serves(env.token, env.tenant, env.key)
