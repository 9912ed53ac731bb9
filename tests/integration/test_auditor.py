"""The auditor role (built-in policy, docs/POLICY.md): reads what an audit needs on every
tenant (key and tenant metadata, key histories, erasure receipts, metrics, the policy,
audit hashes) and nothing that changes state or returns key material."""
import json
import os
import subprocess

import pytest

from conftest import REPO, uniq


@pytest.fixture(scope="module")
def aud(kmsd):
    t, k, svc = kmsd.setup_tenant_key()
    name = uniq("auditor")
    r = kmsd.post("/v1/sys/principals/" + name, {"role": "auditor"}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["role"] == "auditor"
    tok = kmsd.create_token(name)[0]
    ct = kmsd.encrypt(svc, t, k, plaintext="aGVsbG8=").json()["data"]["ciphertext"]
    return {"tenant": t, "key": k, "svc": svc, "name": name, "token": tok, "ct": ct}


def audit_record(kmsd, rid):
    with open(kmsd.audit_path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    return [r for r in recs if r.get("request_id") == rid][0]


def test_auditor_reads(kmsd, aud):
    t, k, tok = aud["tenant"], aud["key"], aud["token"]
    for method, path, body in [
        ("GET", "/v1/sys/tenants/" + t, None),
        ("LIST", "/v1/sys/tenants", None),
        ("GET", "/v1/%s/keys/%s" % (t, k), None),
        ("LIST", "/v1/%s/keys" % t, None),
        ("GET", "/v1/%s/keys/%s/history" % (t, k), None),
        ("GET", "/v1/sys/policy", None),
        ("GET", "/v1/sys/metrics", None),
        ("GET", "/v1/sys/metrics?format=prometheus", None),
        ("POST", "/v1/sys/audit/hash", {"input": "treatment"}),
        ("GET", "/v1/auth/token/lookup-self", None),
        ("GET", "/v1/sys/compliance", None),
        ("LIST", "/v1/sys/approvals", None),
        ("LIST", "/v1/sys/break-glass", None),
    ]:
        r = kmsd.request(method, path, token=tok, json_body=body)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
    r = kmsd.get("/v1/auth/token/lookup-self", token=tok)
    assert r.json()["data"]["policies"] == ["auditor"]


def test_auditor_reads_receipts(kmsd, aud):
    """The receipt route is open to auditors: a version that is not destroyed has no
    receipt (404), which is not a refusal."""
    r = kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (aud["tenant"], aud["key"]),
                 token=aud["token"])
    assert r.status_code == 404, r.text
    r = kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (aud["tenant"], aud["key"]),
                 token=aud["svc"])
    assert r.status_code == 403, r.text


def test_auditor_reads_every_tenant(kmsd, aud):
    t2, k2, _ = kmsd.setup_tenant_key()
    r = kmsd.get("/v1/%s/keys/%s" % (t2, k2), token=aud["token"])
    assert r.status_code == 200, r.text
    assert '"plaintext"' not in r.text and '"ciphertext"' not in r.text


DENIED = [
    ("POST", "/v1/{t}/datakey/plaintext/{k}", {}),
    ("POST", "/v1/{t}/datakey/wrapped/{k}", {}),
    ("POST", "/v1/{t}/encrypt/{k}", {"plaintext": "aGVsbG8="}),
    ("POST", "/v1/{t}/decrypt/{k}", {"ciphertext": "{ct}"}),
    ("POST", "/v1/{t}/rewrap/{k}", {"ciphertext": "{ct}"}),
    ("POST", "/v1/{t}/keys/new-{u}", {}),
    ("POST", "/v1/{t}/keys/{k}/rotate", {}),
    ("POST", "/v1/{t}/keys/{k}/config", {"min_decryption_version": 1}),
    ("POST", "/v1/{t}/keys/{k}/revoke", {"reason": "audit"}),
    ("POST", "/v1/{t}/keys/{k}/legal-hold", {"hold": True, "reason": "audit"}),
    ("POST", "/v1/{t}/keys/{k}/versions/1/disable", {"reason": "audit"}),
    ("POST", "/v1/{t}/keys/{k}/versions/1/schedule-destroy", {"reason": "audit"}),
    ("POST", "/v1/{t}/keys/{k}/trim", {"min_available_version": 1}),
    ("POST", "/v1/sys/tenants/new-{u}", {}),
    ("POST", "/v1/sys/tenants/{t}/config", {"legal_hold": True}),
    ("POST", "/v1/sys/principals/p-{u}", {"role": "auditor"}),
    ("GET", "/v1/sys/principals/{n}", None),
    ("LIST", "/v1/sys/principals", None),
    ("POST", "/v1/sys/principals/{n}/tokens", {}),
    ("POST", "/v1/sys/tokens/revoke", {"accessor": "0000000000000000"}),
    ("POST", "/v1/auth/token/lookup-accessor", {"accessor": "0000000000000000"}),
    ("POST", "/v1/sys/policy", {"version": 99, "rules": [
        {"name": "all", "effect": "allow", "principals": ["*"], "operations": ["*"]}]}),
    ("POST", "/v1/sys/principals/{n}/certs", {"spki_sha256": "a" * 64}),
    ("GET", "/v1/sys/principals/{n}/certs", None),
    ("POST", "/v1/sys/backup", None),
    ("POST", "/v1/sys/approvals/{u}/approve", {}),
    ("POST", "/v1/sys/approvals/{u}/deny", {}),
    ("POST", "/v1/sys/break-glass", {"tenant": "{t}", "reason": "audit"}),
    ("POST", "/v1/sys/break-glass/{u}/review", {"verdict": "justified", "note": "x"}),
]


@pytest.mark.parametrize("method,path,body", DENIED)
def test_auditor_changes_nothing(kmsd, aud, method, path, body):
    u = uniq("x")
    p = path.format(t=aud["tenant"], k=aud["key"], n=aud["name"], u=u)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{ct}", aud["ct"]).replace("{t}", aud["tenant"]))
    r = kmsd.request(method, p, token=aud["token"], json_body=body,
                     headers={"X-Request-Id": "aud-" + u})
    assert r.status_code == 403, (method, p, r.status_code, r.text)
    assert r.json()["errors"] == ["permission denied"]
    assert '"plaintext"' not in r.text and '"ciphertext"' not in r.text
    rec = audit_record(kmsd, "aud-" + u)
    assert rec["outcome"] == "deny" and rec["principal"] == aud["name"], rec


def test_nothing_changed(kmsd, aud):
    r = kmsd.get("/v1/%s/keys/%s" % (aud["tenant"], aud["key"]), token=kmsd.admin_token)
    d = r.json()["data"]
    assert d["latest_version"] == 1
    r = kmsd.get("/v1/sys/policy", token=kmsd.admin_token)
    assert r.json()["data"]["version"] != 99


def test_bad_role_refused(kmsd):
    r = kmsd.post("/v1/sys/principals/" + uniq("p"), {"role": "superuser"}, token=kmsd.admin_token)
    assert r.status_code == 400, r.text
    assert "auditor" in r.json()["errors"][0]


def test_kmsctl_creates_an_auditor(kmsd, tmp_path):
    kmsctl = os.environ.get("KMSCTL_BIN", os.path.join(REPO, "build", "kmsctl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "VAULT_"))}
    env.update(HOME=str(tmp_path), KMS_ADDR=kmsd.url, KMS_CACERT=kmsd.ca)
    name = uniq("aud")
    r = subprocess.run([kmsctl, "principal", "create", name, "--role", "auditor",
                        "--token-file", kmsd.admin_token_file, "--format", "json"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["role"] == "auditor", r.stdout
    r = subprocess.run([kmsctl, "principal", "create", "--help"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert "auditor" in r.stdout + r.stderr
