"""The authentication cache (kms/core/authcache.c, docs/PERFORMANCE.md): a busy token
costs no store read, and nothing it caches outlives a change. A revoked token is refused
on the very next request, an expired one at its expiry second (test clock), a scope or
role changed in the database by another process on the next request, a new policy at
once. The counters in /v1/sys/metrics show that the cache was in play."""

import json
import sqlite3

from conftest import sqlite_only

KMSD_TEST_CLOCK = True


def cache_stats(kmsd):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]["auth_cache"]


def hits_during(kmsd, fn):
    before = cache_stats(kmsd)["hits_total"]
    fn()
    # the metrics request itself is an admin hit once warm: at most one of those
    return cache_stats(kmsd)["hits_total"] - before


def test_busy_token_served_from_cache(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    assert kmsd.datakey(tok, t, k).status_code == 200

    def ten():
        for _ in range(10):
            assert kmsd.datakey(tok, t, k).status_code == 200
    assert hits_during(kmsd, ten) >= 10
    text = kmsd.get("/v1/sys/metrics?format=prometheus", token=kmsd.admin_token).text
    assert "kmsd_auth_cache_hits_total " in text and "kmsd_auth_cache_flushes_total " in text


def test_health_polling_keeps_the_cache(kmsd):
    """A load balancer polling /v1/sys/health makes the store check rewrite a meta row
    (at most once a second); that bookkeeping must not empty the auth cache."""
    import time
    t, k, tok = kmsd.setup_tenant_key()
    for _ in range(2):
        assert kmsd.datakey(tok, t, k).status_code == 200
    f0 = cache_stats(kmsd)["flushes_total"]
    for _ in range(3):
        r = kmsd.get("/v1/sys/health")
        assert r.status_code == 200 and r.json()["checks"]["store"] == "ok", r.text
        time.sleep(1.1)  # past the check's one-second cache: the next poll writes again
    assert hits_during(kmsd, lambda: kmsd.datakey(tok, t, k)) >= 1
    assert cache_stats(kmsd)["flushes_total"] == f0


def test_revoked_token_refused_on_next_request(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    acc = None
    for _ in range(3):
        assert kmsd.datakey(tok, t, k).status_code == 200
    r = kmsd.get("/v1/auth/token/lookup-self", token=tok)
    assert r.status_code == 200, r.text
    acc = r.json()["data"]["accessor"]
    assert hits_during(kmsd, lambda: kmsd.datakey(tok, t, k)) >= 1  # cached
    r = kmsd.post("/v1/sys/tokens/revoke", {"accessor": acc}, token=kmsd.admin_token)
    assert r.status_code in (200, 204), r.text
    r = kmsd.datakey(tok, t, k)
    assert r.status_code == 403, r.text
    assert kmsd.get("/v1/auth/token/lookup-self", token=tok).status_code == 403


def test_expired_token_refused_at_expiry(kmsd):
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    p = kmsd.create_principal(tenants=[t])
    tok, _ = kmsd.create_token(p, ttl=120)
    exp = kmsd.get("/v1/auth/token/lookup-self", token=tok).json()["data"]["expire_time"]
    assert exp is not None
    try:
        for _ in range(3):
            assert kmsd.datakey(tok, t, k).status_code == 200
        # still cached and good one second before (slack for the seconds the setup took)
        kmsd.set_clock(110)
        assert kmsd.datakey(tok, t, k).status_code == 200
        kmsd.set_clock(125)
        r = kmsd.datakey(tok, t, k)
        assert r.status_code == 403, r.text
        # and it stays refused
        assert kmsd.datakey(tok, t, k).status_code == 403
    finally:
        kmsd.set_clock(0)


def test_scope_removed_by_another_process_applies_at_once(kmsd):
    sqlite_only(kmsd, "edits the SQLite file as another process")
    t, k, tok = kmsd.setup_tenant_key()
    t2 = kmsd.create_tenant()
    k2 = kmsd.create_key(t2)
    p = kmsd.create_principal(tenants=[t, t2])
    tok2, _ = kmsd.create_token(p)
    for _ in range(3):
        assert kmsd.datakey(tok2, t2, k2).status_code == 200
    assert hits_during(kmsd, lambda: kmsd.datakey(tok2, t2, k2)) >= 1
    # Another connection (a second process) drops tenant t2 from the principal's scope.
    db = sqlite3.connect(kmsd.store_path, timeout=10)
    try:
        with db:
            db.execute("DELETE FROM principal_tenants WHERE principal_id = "
                       "(SELECT id FROM principals WHERE name = ?) AND tenant_id = "
                       "(SELECT id FROM tenants WHERE name = ?)", (p, t2))
    finally:
        db.close()
    r = kmsd.datakey(tok2, t2, k2)
    assert r.status_code == 403, r.text
    assert kmsd.datakey(tok2, t, k).status_code == 200  # the rest of the scope stays


def test_role_changed_by_another_process_applies_at_once(kmsd):
    sqlite_only(kmsd, "edits the SQLite file as another process")
    t, k, _ = kmsd.setup_tenant_key()
    p = kmsd.create_principal(role="admin")
    tok, _ = kmsd.create_token(p)
    assert kmsd.get("/v1/sys/policy", token=tok).status_code == 200
    assert kmsd.get("/v1/sys/policy", token=tok).status_code == 200
    db = sqlite3.connect(kmsd.store_path, timeout=10)
    try:
        with db:
            db.execute("UPDATE principals SET role = 'service' WHERE name = ?", (p,))
    finally:
        db.close()
    r = kmsd.get("/v1/sys/policy", token=tok)
    assert r.status_code == 403, r.text


def test_new_token_and_principal_writes_do_not_leave_stale_entries(kmsd):
    """Writes through this process (tenant, key, principal, token creation) empty the
    cache; a cached token keeps working and is cached again."""
    t, k, tok = kmsd.setup_tenant_key()
    for _ in range(2):
        assert kmsd.datakey(tok, t, k).status_code == 200
    f0 = cache_stats(kmsd)["flushes_total"]
    kmsd.create_principal(tenants=[t])
    assert kmsd.datakey(tok, t, k).status_code == 200
    assert cache_stats(kmsd)["flushes_total"] > f0
    assert hits_during(kmsd, lambda: kmsd.datakey(tok, t, k)) >= 1


def test_policy_change_applies_at_once(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    for _ in range(3):
        assert kmsd.datakey(tok, t, k).status_code == 200
    cur = kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]
    doc = cur["document"]
    doc["version"] = cur["version"] + 1
    doc["rules"] = [{"name": "deny-datakey", "effect": "deny", "principals": ["role:service"],
                     "operations": ["datakey"]}] + doc["rules"]
    r = kmsd.request("POST", "/v1/sys/policy", token=kmsd.admin_token, data=json.dumps(doc))
    assert r.status_code == 200, r.text
    r = kmsd.datakey(tok, t, k)
    assert r.status_code == 403, r.text

