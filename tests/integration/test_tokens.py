"""API tokens' last-used time (kept to the minute, one store write a minute per busy
token) and Vault's lookup-accessor for admins."""

import datetime

from conftest import uniq

KMSD_TEST_CLOCK = True


def when(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def lookup(kmsd, accessor):
    return kmsd.post("/v1/auth/token/lookup-accessor", {"accessor": accessor},
                     token=kmsd.admin_token)


def test_last_used(kmsd):
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    p = kmsd.create_principal(tenants=[t])
    tok, acc = kmsd.create_token(p)
    r = lookup(kmsd, acc)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["last_used"] is None and d["display_name"] == p and d["revoked"] is False
    assert d["policies"] == ["service"] and d["accessor"] == acc and d["creation_time"]
    now0 = kmsd.get("/v1/sys/health").json()["server_time_utc"]
    assert kmsd.datakey(tok, t, k).status_code == 200
    first = lookup(kmsd, acc).json()["data"]["last_used"]
    assert first is not None and abs(when(first) - now0) <= 5
    # within the minute: not written again
    kmsd.set_clock(30)
    assert kmsd.datakey(tok, t, k).status_code == 200
    assert lookup(kmsd, acc).json()["data"]["last_used"] == first
    # a minute and more later: moved on
    kmsd.set_clock(200)
    assert kmsd.datakey(tok, t, k).status_code == 200
    later = lookup(kmsd, acc).json()["data"]["last_used"]
    assert when(later) - when(first) >= 190, (first, later)
    # the token sees it too
    r = kmsd.get("/v1/auth/token/lookup-self", token=tok)
    assert r.status_code == 200 and r.json()["data"]["last_used"] == later
    # a failed use (wrong tenant) is still a use of the token
    kmsd.set_clock(400)
    assert kmsd.datakey(tok, "nope-" + uniq("t"), k).status_code in (403, 404)
    assert when(lookup(kmsd, acc).json()["data"]["last_used"]) - when(later) >= 190
    kmsd.set_clock(0)


def test_lookup_accessor_refusals(kmsd):
    t = kmsd.create_tenant()
    p = kmsd.create_principal(tenants=[t])
    tok, acc = kmsd.create_token(p)
    # a service may not look up tokens
    r = kmsd.post("/v1/auth/token/lookup-accessor", {"accessor": acc}, token=tok)
    assert r.status_code == 403, r.text
    assert lookup(kmsd, "no-such-accessor").status_code == 404
    for body in ({}, {"accessor": 5}, {"accessor": acc, "x": 1}, {"accessor": "a" * 500}):
        r = kmsd.post("/v1/auth/token/lookup-accessor", body, token=kmsd.admin_token)
        assert r.status_code == 400, (body, r.text)
    # revoked tokens still show, marked
    kmsd.admin_post("/v1/sys/tokens/revoke", {"accessor": acc})
    d = lookup(kmsd, acc).json()["data"]
    assert d["revoked"] is True
