"""The audit-HMAC cache (kms/core/hmaccache.c, docs/PERFORMANCE.md): a context value
sent again is not sent to the token again, and what the record says is the same HMAC
the token gives (POST /v1/sys/audit/hash, and a kmsd with the cache off). The value
itself appears nowhere. audit_hmac_cache = 0 turns it off."""

import json

from conftest import Kmsd, sanitizer_findings, uniq

KMSD_EXTRA_OPTS = [("audit_hmac_cache", "4")]


def stats(kmsd):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]["audit_hmac_cache"]


def record(kmsd, rid):
    with open(kmsd.audit_path) as f:
        recs = [json.loads(l) for l in f if rid in l]
    assert len(recs) == 1, recs
    return recs[0]


def audit_hash(kmsd, value):
    r = kmsd.post("/v1/sys/audit/hash", {"input": value}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]["hash"]


def test_repeated_value_hashed_once_same_hash(kmsd, env):
    value = "patient-" + uniq("mrn")
    tag = uniq("rep")
    s0 = stats(kmsd)
    hashes = []
    for i in range(5):
        rid = "hc-%d-%s" % (i, tag)
        r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context={"patient": value},
                         headers={"X-Request-Id": rid})
        assert r.status_code == 200, r.text
        hashes.append(record(kmsd, rid)["encryption_context"]["patient"])
    s1 = stats(kmsd)
    assert s1["misses_total"] - s0["misses_total"] == 1, (s0, s1)
    assert s1["hits_total"] - s0["hits_total"] == 4, (s0, s1)
    assert len(set(hashes)) == 1 and hashes[0].startswith("hmac-sha256:")
    assert audit_hash(kmsd, value) == hashes[0]
    with open(kmsd.audit_path, "rb") as f:
        assert value.encode() not in f.read()


def test_bounded_and_evicts_least_recent(kmsd, env):
    vals = ["v-%d-%s" % (i, uniq("x")) for i in range(6)]
    for v in vals:  # 6 values through a 4-entry cache
        r = kmsd.datakey(env.token, env.tenant, env.key, encryption_context={"k": v})
        assert r.status_code == 200, r.text
    assert stats(kmsd)["entries"] == 4
    s0 = stats(kmsd)
    # the two oldest were evicted: a miss each; the newest is still there: a hit
    for v in (vals[0], vals[5]):
        assert kmsd.datakey(env.token, env.tenant, env.key,
                            encryption_context={"k": v}).status_code == 200
    s1 = stats(kmsd)
    assert s1["misses_total"] - s0["misses_total"] == 1, (s0, s1)
    assert s1["hits_total"] - s0["hits_total"] == 1, (s0, s1)


def test_batch_items_share_entries(kmsd, env):
    v = uniq("batchctx")
    s0 = stats(kmsd)
    items = [{"encryption_context": {"purpose": v}} for _ in range(10)]
    r = kmsd.datakey(env.token, env.tenant, env.key, batch_input=items)
    assert r.status_code == 200, r.text
    r = kmsd.datakey(env.token, env.tenant, env.key, batch_input=items)
    assert r.status_code == 200, r.text
    s1 = stats(kmsd)
    # the request's own memo answers repeats within a batch; the cache the next request
    assert s1["misses_total"] - s0["misses_total"] == 1, (s0, s1)
    assert s1["hits_total"] - s0["hits_total"] >= 1, (s0, s1)


def test_off_gives_the_same_hashes(kmsd, env, tmp_path):
    """A second kmsd on its own token with the cache off: every use asks the token;
    its hashes are its own token's (another key), so compare within each server."""
    off = Kmsd(tmp_path)
    off.extra_opts = [("audit_hmac_cache", "0")]
    try:
        off.provision()
        off.init()
        off.start()
        t, k, tok = off.setup_tenant_key()
        v = uniq("offctx")
        hs = []
        for i in range(3):
            rid = "hc-off-%d" % i
            r = off.datakey(tok, t, k, encryption_context={"p": v}, headers={"X-Request-Id": rid})
            assert r.status_code == 200, r.text
            hs.append(record(off, rid)["encryption_context"]["p"])
        assert len(set(hs)) == 1
        assert audit_hash(off, v) == hs[0]
        s = stats(off)
        assert s["hits_total"] == 0 and s["entries"] == 0
    finally:
        rc, err = off.stop()
    assert not sanitizer_findings(err), err[-5000:]
    assert rc == 0, err[-5000:]
