"""Audit records name what a data-plane call was about without saying it: each
encryption_context value and the associated_data go into the record as
"hmac-sha256:<hex>" under the token's audit HMAC key (docs/FORMATS.md "Audit record"),
and POST /v1/sys/audit/hash hashes a value the same way so an investigator can search
for it. Also GET /v1/sys/metrics, whose audit counters show the group commit."""

import json
import re

import pytest

from conftest import b64, uniq

HASH_RE = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")
PATIENT = "patient-4711-must-not-appear-in-clear"


def records(kmsd):
    with open(kmsd.audit_path, "rb") as f:
        data = f.read()
    return data, [json.loads(l) for l in data.decode().splitlines()]


def by_rid(kmsd, rid):
    _, recs = records(kmsd)
    found = [r for r in recs if r.get("request_id") == rid]
    assert len(found) == 1, (rid, found)
    return found[0]


def audit_hash(kmsd, value):
    r = kmsd.post("/v1/sys/audit/hash", {"input": value}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    h = r.json()["data"]["hash"]
    assert HASH_RE.match(h), h
    return h


def test_single_call_context_hashed(kmsd, env):
    ctx = {"purpose": "treatment", "patient": PATIENT}
    aad = b64("record-77")
    r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context=ctx,
                     associated_data=aad, headers={"X-Request-Id": "ctx-single-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "ctx-single-1")
    ec = rec["encryption_context"]
    assert set(ec) == {"purpose", "patient"}
    assert ec["purpose"] == audit_hash(kmsd, "treatment")
    assert ec["patient"] == audit_hash(kmsd, PATIENT)
    assert rec["associated_data"] == audit_hash(kmsd, aad)
    assert "items" not in rec
    data, _ = records(kmsd)
    assert PATIENT.encode() not in data
    assert b"treatment" not in data


def test_no_context_is_null(kmsd, env):
    r = kmsd.datakey(env.token, env.tenant, env.key, headers={"X-Request-Id": "ctx-none-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "ctx-none-1")
    assert rec["encryption_context"] is None and rec["associated_data"] is None


def test_batch_items_hashed(kmsd, env):
    items = [{"plaintext": b64("a"), "encryption_context": {"purpose": "payment"}},
             {"plaintext": b64("b")},
             {"plaintext": b64("c"), "encryption_context": {"purpose": "operations"},
              "associated_data": b64("x")}]
    r = kmsd.encrypt(env.token, env.tenant, env.key, batch_input=items,
                     headers={"X-Request-Id": "ctx-batch-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "ctx-batch-1")
    assert rec["batch"] == 3
    assert rec["encryption_context"] is None
    it = rec["items"]
    assert len(it) == 3
    assert it[0] == {"encryption_context": {"purpose": audit_hash(kmsd, "payment")},
                     "associated_data": None, "outcome": "allow", "version": 1}
    assert it[1] == {"encryption_context": None, "associated_data": None,
                     "outcome": "allow", "version": 1}
    assert it[2] == {"encryption_context": {"purpose": audit_hash(kmsd, "operations")},
                     "associated_data": audit_hash(kmsd, b64("x")),
                     "outcome": "allow", "version": 1}


def test_batch_items_outcome_and_version(kmsd):
    """Each item says whether it was answered and under which key version, so that
    a partial batch (answered 400, its good items' results returned) and a batch
    mixing versions are on record item by item; a rewrap says where it came from."""
    t, k, tok = kmsd.setup_tenant_key()
    v1 = kmsd.encrypt(tok, t, k, plaintext=b64("one")).json()["data"]["ciphertext"]
    kmsd.rotate(t, k)
    v2 = kmsd.encrypt(tok, t, k, plaintext=b64("two")).json()["data"]["ciphertext"]
    r = kmsd.decrypt(tok, t, k, batch_input=[{"ciphertext": v1}, {"ciphertext": "vault:v1:AAAA"},
                                             {"ciphertext": v2}],
                     headers={"X-Request-Id": "items-mixed-1"})
    assert r.status_code == 400, r.text
    rec = by_rid(kmsd, "items-mixed-1")
    assert rec["outcome"] == "error" and rec["status"] == 400
    assert [(i["outcome"], i["version"]) for i in rec["items"]] == \
        [("allow", 1), ("error", None), ("allow", 2)]
    r = kmsd.rewrap(tok, t, k, batch_input=[{"ciphertext": v1}, {"ciphertext": v2}],
                    headers={"X-Request-Id": "items-rewrap-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "items-rewrap-1")
    assert [(i["outcome"], i["from_version"], i["version"]) for i in rec["items"]] == \
        [("allow", 1, 2), ("allow", 2, 2)]
    r = kmsd.rewrap(tok, t, k, ciphertext=v1, headers={"X-Request-Id": "single-rewrap-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "single-rewrap-1")
    assert rec["version"] == 2 and rec["from_version"] == 1
    r = kmsd.datakey(tok, t, k, batch_input=[{}, {}], headers={"X-Request-Id": "items-dk-1"})
    if r.status_code == 200:  # batch datakey, where the API offers it
        rec = by_rid(kmsd, "items-dk-1")
        assert [(i["outcome"], i["version"]) for i in rec["items"]] == [("allow", 2)] * 2


def test_denied_and_refused_calls_hashed_too(kmsd, env):
    # decrypt with a context the ciphertext was not made under: refused, still recorded
    r = kmsd.encrypt(env.token, env.tenant, env.key, plaintext=b64("z"),
                     encryption_context={"purpose": "treatment"})
    ct = r.json()["data"]["ciphertext"]
    r = kmsd.decrypt(env.token, env.tenant, env.key, ciphertext=ct,
                     encryption_context={"purpose": "research"},
                     headers={"X-Request-Id": "ctx-refused-1"})
    assert r.status_code == 400, r.text
    rec = by_rid(kmsd, "ctx-refused-1")
    assert rec["outcome"] == "error"
    assert rec["encryption_context"] == {"purpose": audit_hash(kmsd, "research")}


def test_non_string_context_value_refused_and_hashed_as_json(kmsd, env):
    r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context={"n": 5},
                     headers={"X-Request-Id": "ctx-nonstring-1"})
    assert r.status_code == 400, r.text
    rec = by_rid(kmsd, "ctx-nonstring-1")
    assert rec["encryption_context"] == {"n": audit_hash(kmsd, "5")}


def test_anonymous_call_not_hashed(kmsd, env):
    r = kmsd.datakey(None, env.tenant, env.key, encryption_context={"p": PATIENT},
                     headers={"X-Request-Id": "ctx-anon-1"})
    assert r.status_code in (401, 403), r.text
    rec = by_rid(kmsd, "ctx-anon-1")
    assert "encryption_context" not in rec
    data, _ = records(kmsd)
    assert PATIENT.encode() not in data


def test_hash_endpoint(kmsd, env):
    a = audit_hash(kmsd, "treatment")
    assert audit_hash(kmsd, "treatment") == a
    assert audit_hash(kmsd, "treatment ") != a
    assert audit_hash(kmsd, "") != a
    # Vault's path for the same thing
    r = kmsd.post("/v1/sys/audit-hash/file", {"input": "treatment"}, token=kmsd.admin_token)
    assert r.status_code == 200 and r.json()["data"]["hash"] == a, r.text
    # the hash call itself is audited, without its input
    r = kmsd.post("/v1/sys/audit/hash", {"input": PATIENT}, token=kmsd.admin_token,
                  headers={"X-Request-Id": "hash-call-1"})
    assert r.status_code == 200
    rec = by_rid(kmsd, "hash-call-1")
    assert rec["operation"] == "audit.hash" and rec["outcome"] == "allow"
    data, _ = records(kmsd)
    assert PATIENT.encode() not in data


@pytest.mark.parametrize("body,status", [
    (None, 400),
    ({}, 400),
    ({"input": 5}, 400),
    ({"input": None}, 400),
    ({"input": "x", "extra": 1}, 400),
])
def test_hash_endpoint_bad_input(kmsd, body, status):
    if body is None:
        r = kmsd.request("POST", "/v1/sys/audit/hash", token=kmsd.admin_token)
    else:
        r = kmsd.post("/v1/sys/audit/hash", body, token=kmsd.admin_token)
    assert r.status_code == status, r.text
    assert r.json()["errors"]


def test_hash_endpoint_needs_privilege(kmsd, env):
    r = kmsd.post("/v1/sys/audit/hash", {"input": "x"}, token=env.token)
    assert r.status_code == 403, r.text
    r = kmsd.post("/v1/sys/audit/hash", {"input": "x"})
    assert r.status_code in (401, 403), r.text


def metrics(kmsd):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "prometheus"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    vals = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, v = line.split()
        vals[name] = float(v) if "." in v else int(v)
    return r.text, vals


def test_metrics_audit_counters(kmsd, env):
    text, m0 = metrics(kmsd)
    assert "# TYPE kmsd_audit_records_total counter" in text
    assert "# TYPE kmsd_audit_syncs_total counter" in text
    assert m0["kmsd_audit_healthy"] == 1
    for _ in range(5):
        assert kmsd.datakey(env.token, env.tenant, env.key).status_code == 200
    _, m1 = metrics(kmsd)
    # 5 datakeys and the first metrics call itself, at least
    assert m1["kmsd_audit_records_total"] >= m0["kmsd_audit_records_total"] + 6
    assert 1 <= m1["kmsd_audit_syncs_total"] <= m1["kmsd_audit_records_total"]
    assert m1["kmsd_audit_last_seq"] >= m1["kmsd_audit_records_total"]
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    a = r.json()["data"]["audit"]
    assert a["healthy"] is True and a["records_total"] >= m1["kmsd_audit_records_total"]


def test_metrics_bad_format_and_privilege(kmsd, env):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "xml"})
    assert r.status_code == 400, r.text
    r = kmsd.get("/v1/sys/metrics", token=env.token, params={"format": "prometheus"})
    assert r.status_code == 403, r.text


def test_refused_batches_make_small_records(kmsd, env):
    """A batch the call refuses by its size is not hashed item by item, and a context
    over the limits is recorded as "invalid": one small request cannot make a huge
    record or many token calls."""
    body = {"batch_input": [{} for _ in range(1500)]}
    r = kmsd.encrypt(env.token, env.tenant, env.key, headers={"X-Request-Id": "big-batch-1"},
                     **body)
    assert r.status_code == 400, r.text
    rec = by_rid(kmsd, "big-batch-1")
    assert rec["items"] is None
    many = {"k%d" % i: "v" for i in range(65)}
    r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context=many,
                     headers={"X-Request-Id": "many-pairs-1"})
    assert r.status_code == 400, r.text
    assert by_rid(kmsd, "many-pairs-1")["encryption_context"] == "invalid"
    r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context={"p": "x" * 2000},
                     headers={"X-Request-Id": "long-value-1"})
    assert r.status_code == 400, r.text
    assert by_rid(kmsd, "long-value-1")["encryption_context"] == {"p": "invalid"}
    with open(kmsd.audit_path, "rb") as f:
        longest = max(len(l) for l in f)
    assert longest < 200000, longest


def test_repeated_contexts_hashed_once_per_request(kmsd, env):
    """A batch of 500 items (as many as the 64 KiB body allows) with the same context:
    every item's record carries the hash (computed once per distinct value)."""
    items = [{"plaintext": b64("x"), "encryption_context": {"purpose": "treatment"}}
             for _ in range(500)]
    r = kmsd.encrypt(env.token, env.tenant, env.key, batch_input=items,
                     headers={"X-Request-Id": "same-ctx-1"})
    assert r.status_code == 200, r.text
    rec = by_rid(kmsd, "same-ctx-1")
    want = audit_hash(kmsd, "treatment")
    assert len(rec["items"]) == 500
    assert all(i["encryption_context"] == {"purpose": want} for i in rec["items"])


def test_metrics_requests_and_latency(kmsd, env):
    _, m0 = metrics(kmsd)
    for _ in range(3):
        assert kmsd.datakey(env.token, env.tenant, env.key).status_code == 200
    assert kmsd.datakey(env.token, "no-such-" + uniq("t"), env.key).status_code in (403, 404)
    assert kmsd.datakey("bogus-token", env.tenant, env.key).status_code == 403
    text, m1 = metrics(kmsd)
    key = 'kmsd_requests_total{operation="datakey",outcome="allow"}'
    assert m1[key] - m0.get(key, 0) == 3, text
    assert m1["kmsd_auth_failures_total"] >= m0["kmsd_auth_failures_total"] + 1
    assert "# TYPE kmsd_request_duration_seconds histogram" in text
    inf = 'kmsd_request_duration_seconds_bucket{operation="datakey",le="+Inf"}'
    cnt = 'kmsd_request_duration_seconds_count{operation="datakey"}'
    assert m1[inf] == m1[cnt] >= 5
    buckets = [int(l.split()[-1]) for l in text.splitlines()
               if l.startswith('kmsd_request_duration_seconds_bucket{operation="datakey"')]
    assert buckets == sorted(buckets), buckets  # cumulative
    j = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token).json()["data"]
    assert j["requests"]["datakey"]["allow"] >= 3
