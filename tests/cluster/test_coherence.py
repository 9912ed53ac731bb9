"""Two nodes on one store and one token (issue 10 acceptance): data keys from node A
decrypt on node B and through the balancer; a rotation, a key revocation, a version
disable, a token revocation and a policy change made on A hold on B within the coherence
bound (cluster_sync_ms); concurrent rotations on A and B give consecutive versions; a
quorum-approved operation whose last two approvals race on A and B runs exactly once."""

import threading

import requests

from conftest import BOUND, World, uniq, wait_until

CLUSTER_NODES = 2


def test_datakey_from_a_decrypts_on_b_and_through_the_balancer(cluster):
    a, b, lb = cluster.api(0), cluster.api(1), cluster.api()
    w = World(a)
    for src, dst in ((a, b), (b, a), (lb, a), (lb, b), (a, lb)):
        r = src.datakey(w.tok, w.tenant, w.key)
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        r2 = dst.decrypt(w.tok, w.tenant, w.key, d["ciphertext"])
        assert r2.status_code == 200, (src.url, dst.url, r2.text)
        assert r2.json()["data"]["plaintext"] == d["plaintext"]
    # new connections through the balancer (each a new TLS session to some node) all work
    for _ in range(6):
        s = requests.Session()
        s.trust_env = False
        r = s.post(lb.url + "/v1/%s/datakey/plaintext/%s" % (w.tenant, w.key), data="{}",
                   headers={"X-Vault-Token": w.tok, "Content-Type": "application/json"},
                   verify=cluster.ca, timeout=10)
        assert r.status_code == 200, r.text
        s.close()
    st = cluster.lb_status()
    assert sorted(st) == ["n1", "n2"] and set(st.values()) == {"UP"}, st


def _b_version(b, w):
    r = b.datakey(w.tok, w.tenant, w.key)
    assert r.status_code == 200, r.text
    return r.json()["data"]["key_version"]


def test_rotation_on_a_used_by_b_within_the_bound(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    for _ in range(3):  # B has the key (and its serving copy) in its caches
        assert _b_version(b, w) == 1
    d = a.admin("/v1/%s/keys/%s/rotate" % (w.tenant, w.key))["data"]
    assert d["latest_version"] == 2
    took = wait_until(check(lambda: _b_version(b, w), lambda v: v == 2), BOUND,
                      "B's data keys under the version A rotated to")
    print("B used version 2 after %.2f s" % took)


def _refused(r):
    return r.status_code in (400, 403, 404, 409)


def check(fn, cond):
    """A predicate for wait_until: True when cond(fn()), else what fn() gave (for the
    failure message)."""
    def p():
        v = fn()
        return True if cond(v) else v
    return p


def status_of(fn):
    return lambda: (lambda r: (r.status_code, r.text[:200]))(fn())


def test_key_revocation_on_a_refused_on_b_within_the_bound(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    r = b.datakey(w.tok, w.tenant, w.key)
    assert r.status_code == 200, r.text
    ct = r.json()["data"]["ciphertext"]
    assert b.decrypt(w.tok, w.tenant, w.key, ct).status_code == 200
    a.admin("/v1/%s/keys/%s/revoke" % (w.tenant, w.key), {"reason": "cluster test"})
    wait_until(check(status_of(lambda: b.datakey(w.tok, w.tenant, w.key)),
                     lambda v: v[0] in (400, 403, 404, 409)), BOUND,
               "B refusing data keys of the key A revoked")
    assert _refused(b.decrypt(w.tok, w.tenant, w.key, ct))


def test_version_disable_on_a_refused_on_b_within_the_bound(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    ct1 = b.datakey(w.tok, w.tenant, w.key).json()["data"]["ciphertext"]
    assert ct1.startswith("vault:v1:")
    a.admin("/v1/%s/keys/%s/rotate" % (w.tenant, w.key))
    assert b.decrypt(w.tok, w.tenant, w.key, ct1).status_code == 200  # v1 warm on B
    a.admin("/v1/%s/keys/%s/versions/1/disable" % (w.tenant, w.key), {"reason": "cluster test"})
    wait_until(check(status_of(lambda: b.decrypt(w.tok, w.tenant, w.key, ct1)),
                     lambda v: v[0] in (400, 403, 404, 409)), BOUND,
               "B refusing to decrypt under the version A disabled")


def test_token_revoked_on_a_refused_on_b_within_the_bound(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    for _ in range(3):  # the token is in B's auth cache
        assert b.datakey(w.tok, w.tenant, w.key).status_code == 200
    a.admin("/v1/sys/tokens/revoke", {"accessor": w.accessor})
    wait_until(check(status_of(lambda: b.datakey(w.tok, w.tenant, w.key)),
                     lambda v: v[0] in (401, 403)), BOUND,
               "B refusing the token A revoked")


def test_policy_change_on_a_in_force_on_b_within_the_bound(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    assert b.datakey(w.tok, w.tenant, w.key).status_code == 200
    r = a.get("/v1/sys/policy", token=a.admin_token)
    assert r.status_code == 200, r.text
    cur = r.json()["data"]
    doc = cur["document"]
    doc["version"] = int(cur["version"]) + 1
    doc["rules"].insert(0, {"name": "cluster-test-deny", "effect": "deny", "principals": [w.svc],
                            "operations": ["datakey"]})
    j = a.admin("/v1/sys/policy", doc)
    assert j["data"]["version"] == doc["version"], j
    wait_until(check(status_of(lambda: b.datakey(w.tok, w.tenant, w.key)),
                     lambda v: v[0] == 403), BOUND,
               "B enforcing the policy A installed")
    r = b.get("/v1/sys/policy", token=b.admin_token)
    assert r.json()["data"]["version"] == doc["version"]


def test_concurrent_rotations_on_a_and_b_give_consecutive_versions(cluster):
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    n = 20
    got = {"a": [], "b": []}
    errs = []
    barrier = threading.Barrier(2)

    def go(name, api):
        barrier.wait()
        for _ in range(n):
            r = api.post("/v1/%s/keys/%s/rotate" % (w.tenant, w.key), {}, token=api.admin_token)
            if r.status_code != 200:
                errs.append((name, r.status_code, r.text))
            else:
                got[name].append(r.json()["data"]["rotated_version"])
                assert r.json()["data"]["latest_version"] >= got[name][-1]

    ts = [threading.Thread(target=go, args=x) for x in (("a", a), ("b", b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs[:5]
    info = a.key_info(w.tenant, w.key)
    assert info["latest_version"] == 2 * n + 1, info["latest_version"]
    assert sorted(int(v) for v in info["versions"]) == list(range(1, 2 * n + 2))
    assert sorted(int(v) for v in info["keys"]) == list(range(1, 2 * n + 2))
    # each rotation answered a version of its own: no twins
    answered = got["a"] + got["b"]
    assert sorted(answered) == list(range(2, 2 * n + 2)), sorted(answered)
    # B's view (its key cache) has the last rotation within the bound, whichever node made it
    wait_until(lambda: b.key_info(w.tenant, w.key)["latest_version"] == 2 * n + 1, BOUND,
               "B's key read showing the last of the concurrent rotations")


def test_quorum_operation_executes_once_when_final_approvals_race_on_a_and_b(cluster):
    a, b = cluster.api(0), cluster.api(1)
    tenant = a.tenant()
    admins = {}
    for who in ("b", "c", "d"):
        p = a.principal(role="admin", name=uniq("adm-" + who))
        admins[who] = (p, a.token(p)[0])
    for _ in range(5):
        key = a.key(tenant, uniq("q-k"))
        r = a.post("/v1/%s/keys/%s/rotate" % (tenant, key), {}, token=a.admin_token)
        assert r.status_code == 202, r.text
        aid = r.json()["data"]["approval_id"]
        r = b.post("/v1/sys/approvals/%s/approve" % aid, {}, token=admins["b"][1])
        assert r.status_code == 200, r.text
        assert r.json()["data"]["approvals"] == 1
        barrier = threading.Barrier(2)
        results = {}

        def go(name, api, tok):
            barrier.wait()
            results[name] = api.post("/v1/sys/approvals/%s/approve" % aid, {}, token=tok)

        ts = [threading.Thread(target=go, args=("c", a, admins["c"][1])),
              threading.Thread(target=go, args=("d", b, admins["d"][1]))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        codes = sorted(r.status_code for r in results.values())
        assert codes == [200, 409], [(r.status_code, r.text) for r in results.values()]
        executed = [r for r in results.values() if r.status_code == 200 and r.json()["data"].get("executed")]
        assert len(executed) == 1
        # the node that ran it knows at once; the other within the bound
        ran = a if results["c"].status_code == 200 else b
        other = b if ran is a else a
        assert executed[0].json()["data"]["result"]["body"]["data"]["latest_version"] == 2
        assert ran.key_info(tenant, key)["latest_version"] == 2, "the approved rotation ran more (or less) than once"
        wait_until(check(lambda: other.key_info(tenant, key)["latest_version"], lambda v: v == 2), BOUND,
                   "the other node seeing the approved rotation")
        assert other.key_info(tenant, key)["latest_version"] == 2, "the approved rotation ran more than once"
        recs = [x for x in cluster.all_audit_records()
                if x.get("approval_id") == aid and x.get("auth_method") == "approval"]
        assert len(recs) == 1, recs
