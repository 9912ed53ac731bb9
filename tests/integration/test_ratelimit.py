"""Rate limits (docs/API.md "Rate limits"): per principal, per principal and operation,
and on failed authentication per source address. Over the limit: 429 with Retry-After
and a clear message, audited as denied; other principals are not affected; the bucket
refills."""

import json
import time

from conftest import uniq

KMSD_EXTRA_OPTS = [("rate_limit_rps", "4"), ("rate_limit_burst", "6"),
                   ("rate_limit_ops", "key.rotate=0.5:2"),
                   ("auth_fail_rps", "1"), ("auth_fail_burst", "4")]


def records(kmsd):
    with open(kmsd.audit_path) as f:
        return [json.loads(l) for l in f]


def burst(kmsd, tok, t, k, n):
    out = []
    for i in range(n):
        rid = uniq("rl")
        r = kmsd.datakey(tok, t, k, headers={"X-Request-Id": rid})
        out.append((rid, r))
    return out


def test_principal_limit(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    time.sleep(1.5)  # the admin's set-up calls stay within its own burst
    other = kmsd.service([t])
    res = burst(kmsd, tok, t, k, 12)
    codes = [r.status_code for _, r in res]
    assert codes[:6] == [200] * 6, codes  # the burst
    limited = [(rid, r) for rid, r in res if r.status_code == 429]
    assert len(limited) >= 4, codes
    rid, r = limited[0]
    assert int(r.headers["Retry-After"]) >= 1
    assert "rate limit" in r.json()["errors"][0]
    assert "data" not in r.json()
    rec = [x for x in records(kmsd) if x.get("request_id") == rid][0]
    assert rec["outcome"] == "deny" and rec["status"] == 429, rec
    # another principal has its own bucket
    assert kmsd.datakey(other, t, k).status_code == 200
    # after Retry-After, the first one may go on
    time.sleep(int(r.headers["Retry-After"]) + 0.1)
    assert kmsd.datakey(tok, t, k).status_code == 200


def test_operation_limit(kmsd):
    t = kmsd.create_tenant()
    keys = [kmsd.create_key(t) for _ in range(3)]
    time.sleep(2)  # the admin's general bucket refills after the set-up calls
    codes = [kmsd.post("/v1/%s/keys/%s/rotate" % (t, k), {}, token=kmsd.admin_token).status_code
             for k in keys]
    assert codes == [200, 200, 429], codes
    # other operations of the same principal are not held by the rotate bucket
    r = kmsd.get("/v1/%s/keys/%s" % (t, keys[0]), token=kmsd.admin_token)
    assert r.status_code == 200, r.text


def test_failed_auth_per_source(kmsd):
    time.sleep(2)  # the admin's bucket (6, 4/s) refills after the earlier tests
    t, k, tok = kmsd.setup_tenant_key()
    time.sleep(1)
    codes = [kmsd.datakey("not-a-real-token-%d" % i, t, k).status_code for i in range(6)]
    assert codes[:4] == [403] * 4, codes
    assert codes[4:] == [429, 429], codes
    # the source is now refused before its token is looked at, even a good one
    r = kmsd.datakey(tok, t, k)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
    assert "failed authentications" in r.json()["errors"][0]
    # health stays open for load balancers
    assert kmsd.get("/v1/sys/health").status_code == 200
    time.sleep(int(r.headers["Retry-After"]) + 0.2)
    assert kmsd.datakey(tok, t, k).status_code == 200
    # successes do not drain the source's bucket
    for _ in range(3):
        assert kmsd.datakey(tok, t, k).status_code in (200, 429)
    assert kmsd.datakey("still-not-a-token", t, k).status_code == 403
