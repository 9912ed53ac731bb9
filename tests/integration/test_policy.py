"""The policy document in the request path (docs/POLICY.md): the built-in default,
replacing it through the API (versioned, stored, audited; a bad document refused whole
with its line and reason, the old one kept), context conditions for a PHI service, per
item in batches, persistence across restart, and a bad policy_file refusing start-up."""

import copy
import json
import os
import subprocess

from conftest import b64

HOSPITAL = {
    "version": 2,
    "description": "EHR may use PHI keys only for treatment, payment or operations",
    "rules": [
        {"name": "health-is-public", "effect": "allow", "principals": ["*"], "operations": ["sys.health"]},
        {"name": "lookup-own-token", "effect": "allow", "principals": ["role:admin", "role:service"],
         "operations": ["token.lookup_self"]},
        {"name": "admin-no-key-material", "effect": "deny", "principals": ["role:admin"],
         "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "admin-management", "effect": "allow", "principals": ["role:admin"], "operations": ["*"]},
        {"name": "ehr-tpo", "effect": "allow", "principals": ["role:service"], "tenants": ["@scope"],
         "operations": ["datakey", "encrypt", "decrypt", "rewrap"],
         "conditions": {"context": {"purpose": ["treatment", "payment", "operations"]}}},
        {"name": "service-read", "effect": "allow", "principals": ["role:service"], "tenants": ["@scope"],
         "operations": ["key.read", "key.list"]},
    ],
}


def put_policy(kmsd, doc, token=None, raw=None):
    body = raw if raw is not None else json.dumps(doc, indent=2)
    return kmsd.request("POST", "/v1/sys/policy", token=token or kmsd.admin_token, data=body)


def get_policy(kmsd):
    r = kmsd.get("/v1/sys/policy", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_default_policy_in_force(kmsd):
    d = get_policy(kmsd)
    assert d["version"] == 1
    assert [r["name"] for r in d["document"]["rules"]][:2] == ["health-is-public", "lookup-own-token"]
    t, k, tok = kmsd.setup_tenant_key()
    assert kmsd.get("/v1/sys/policy", token=tok).status_code == 403
    assert put_policy(kmsd, HOSPITAL, token=tok).status_code == 403
    assert get_policy(kmsd)["version"] == 1


def test_bad_documents_refused_whole(kmsd):
    bad = copy.deepcopy(HOSPITAL)
    bad["rules"][4]["operations"] = ["datakey", "decrypt-everything"]
    r = put_policy(kmsd, bad)
    assert r.status_code == 400, r.text
    msg = r.json()["errors"][0]
    assert "line " in msg and "rules[4].operations[1]" in msg and "decrypt-everything" in msg, msg
    r = put_policy(kmsd, None, raw='{"version": 2,\n "rules": [\n  {"name": "x", "effect": "maybe"}\n ]\n}')
    assert r.status_code == 400 and "line 3" in r.json()["errors"][0], r.text
    r = put_policy(kmsd, None, raw='{"version": 2, "rules": [')
    assert r.status_code == 400 and "line 1" in r.json()["errors"][0], r.text
    old = copy.deepcopy(HOSPITAL)
    old["version"] = 1
    r = put_policy(kmsd, old)
    assert r.status_code == 409 and "not newer" in r.json()["errors"][0], r.text
    assert get_policy(kmsd)["version"] == 1


def test_context_conditions(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    r = put_policy(kmsd, HOSPITAL)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"version": 2, "previous_version": 1}
    assert get_policy(kmsd)["document"] == HOSPITAL
    ok = kmsd.datakey(tok, t, k, encryption_context={"purpose": "treatment", "mrn": "0042"})
    assert ok.status_code == 200, ok.text
    ct = ok.json()["data"]["ciphertext"]
    for ctx in ({"purpose": "marketing"}, {}, None):
        body = {} if ctx is None else {"encryption_context": ctx}
        r = kmsd.datakey(tok, t, k, **body)
        assert r.status_code == 403 and r.json()["errors"] == ["permission denied"], (ctx, r.text)
    r = kmsd.decrypt(tok, t, k, ciphertext=ct, encryption_context={"purpose": "treatment", "mrn": "0042"})
    assert r.status_code == 200, r.text
    # batch: decided per item, on each item's own context
    items = [{"encryption_context": {"purpose": "payment"}}, {"encryption_context": {"purpose": "research"}}]
    r = kmsd.post("/v1/%s/datakey/plaintext/%s" % (t, k), {"batch_input": items}, token=tok)
    assert r.status_code == 400, r.text
    res = r.json()["data"]["batch_results"]
    assert "ciphertext" in res[0] and res[1] == {"error": "permission denied"}
    r = kmsd.post("/v1/%s/datakey/plaintext/%s" % (t, k), {"batch_input": items[1:]}, token=tok)
    assert r.status_code == 403 and "data" not in r.json(), r.text
    # the audit record names the deciding rule
    with open(kmsd.audit_path) as f:
        recs = [json.loads(line) for line in f]
    dk = [x for x in recs if x["operation"] == "datakey" and x["key"] == k]
    assert dk[0]["outcome"] == "allow" and 'rules[4] "ehr-tpo"' in dk[0]["reason"], dk[0]
    assert dk[1]["outcome"] == "deny" and "default deny" in dk[1]["reason"], dk[1]
    pw = [x for x in recs if x["operation"] == "policy.write"]
    assert [x["status"] for x in pw][-1] == 200 and "version 2" in pw[-1]["reason"]


def test_policy_survives_restart(kmsd):
    assert get_policy(kmsd)["version"] == 2
    kmsd.stop()
    kmsd.start()
    assert get_policy(kmsd)["version"] == 2


def test_bad_policy_file_refuses_start(kmsd, tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text('{"version": 9,\n "rules": [\n  {"name": "r", "effect": "allow", "principals": ["*"], "operations": ["nope"]}\n ]\n}\n')
    conf = tmp_path / "kmsd.conf"
    with open(kmsd.conf) as f:
        lines = [ln for ln in f if not ln.startswith(("port_file", "port =", "policy_file"))]
    lines += ["port = 0\n", "policy_file = %s\n" % bad]
    conf.write_text("".join(lines))
    r = subprocess.run([kmsd.bin, "-c", str(conf)], env=kmsd.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "line 3" in r.stderr and "nope" in r.stderr, r.stderr
    # a good, newer file is installed and stored
    good = copy.deepcopy(HOSPITAL)
    good["version"] = 3
    (tmp_path / "good.json").write_text(json.dumps(good))
    kmsd.stop()
    # the harness's own policy_file line (conftest.py, built-in without MFA) is replaced
    with open(kmsd.conf) as f:
        lines = [ln for ln in f if not ln.startswith("policy_file")]
    lines.append("policy_file = %s\n" % (tmp_path / "good.json"))
    with open(kmsd.conf, "w") as f:
        f.write("".join(lines))
    kmsd.start()
    assert get_policy(kmsd)["version"] == 3
