"""Quorum (M-of-N) approvals (docs/API.md "Approvals"): with a policy that requires 2
approvals for key.rotate and key.version.disable on q-* keys, the first call makes a
pending request (202) instead of running; other admins list, read, approve or deny it;
the requester cannot approve it, nobody votes twice, a service cannot vote; an expired
request cannot run (test clock); the request runs exactly once when the quorum is met,
also when the last two approvals race; the policy is evaluated again when it runs; every
step is audited, the executed operation with its approvers."""

import json
import os
import tempfile
import threading
import time

import requests

from conftest import uniq

APPROVAL_TTL = 600

POLICY = {
    "version": 2,
    "description": "test_quorum: the built-in rules plus quorum 2 on q-* key changes",
    "rules": [
        {"name": "health-is-public", "effect": "allow", "principals": ["*"], "operations": ["sys.health"]},
        {"name": "lookup-own-token", "effect": "allow", "principals": ["role:admin", "role:service"],
         "operations": ["token.lookup_self"]},
        {"name": "admin-no-key-material", "effect": "deny", "principals": ["role:admin"],
         "operations": ["datakey", "encrypt", "decrypt", "rewrap", "breakglass.activate"]},
        {"name": "admin-management", "effect": "allow", "principals": ["role:admin"], "operations": ["*"]},
        {"name": "q-keys-need-two", "effect": "allow", "principals": ["role:admin"], "keys": ["q-*"],
         "operations": ["key.rotate", "key.version.disable"], "require_quorum": 2},
        {"name": "qd-destruction-needs-two", "effect": "allow", "principals": ["role:admin"],
         "keys": ["qd-*"], "operations": ["key.version.schedule_destroy"], "require_quorum": 2},
        {"name": "service-data-plane", "effect": "allow", "principals": ["role:service"],
         "tenants": ["@scope"], "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "service-datakey-q-needs-one", "effect": "allow", "principals": ["role:service"],
         "tenants": ["@scope"], "keys": ["q-*"], "operations": ["datakey"], "require_quorum": 1},
        {"name": "service-read", "effect": "allow", "principals": ["role:service"], "tenants": ["@scope"],
         "operations": ["key.read", "key.list"]},
    ],
}

_DIR = tempfile.mkdtemp(prefix="kmsd-quorum-")
POLICY_FILE = os.path.join(_DIR, "policy.json")
with open(POLICY_FILE, "w") as _f:
    json.dump(POLICY, _f, indent=2)

KMSD_EXTRA_OPTS = [("policy_file", POLICY_FILE), ("approval_ttl", str(APPROVAL_TTL)),
                   ("scheduler_interval", "1")]
KMSD_TEST_CLOCK = True


class World:
    pass


_world = {}


def world(kmsd):
    """Three more admins (b, c, d) besides the bootstrap admin (a), a tenant, a service."""
    if "w" in _world:
        return _world["w"]
    w = World()
    w.a = kmsd.admin_token
    w.names = {}
    for who in ("b", "c", "d"):
        name = uniq("adm-" + who)
        kmsd.create_principal(name, role="admin")
        setattr(w, who, kmsd.create_token(name)[0])
        w.names[who] = name
    w.tenant = kmsd.create_tenant()
    w.svc = kmsd.service([w.tenant])
    _world["w"] = w
    return w


def qkey(kmsd, w):
    return kmsd.create_key(w.tenant, uniq("q-k"))


def latest(kmsd, w, key):
    r = kmsd.get("/v1/%s/keys/%s" % (w.tenant, key), token=w.a)
    assert r.status_code == 200, r.text
    return r.json()["data"]["latest_version"]


def request_rotate(kmsd, w, key, token=None):
    r = kmsd.post("/v1/%s/keys/%s/rotate" % (w.tenant, key), {}, token=token or w.a)
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert d["state"] == "pending" and d["required_approvals"] == 2 and d["approvals"] == 0
    assert len(d["approval_id"]) == 32
    return d["approval_id"]


def approve(kmsd, token, aid):
    return kmsd.post("/v1/sys/approvals/%s/approve" % aid, {}, token=token)


def show(kmsd, token, aid):
    r = kmsd.get("/v1/sys/approvals/" + aid, token=token)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def audit_records(kmsd):
    out = []
    with open(kmsd.audit_path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def test_pending_then_executed_by_two_others(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    aid = request_rotate(kmsd, w, key)
    assert latest(kmsd, w, key) == 1, "the request ran before its approvals"

    r = kmsd.get("/v1/sys/approvals", token=w.b)
    assert r.status_code == 200, r.text
    assert aid in r.json()["data"]["keys"]
    d = show(kmsd, w.b, aid)
    assert d["state"] == "pending" and d["operation"] == "key.rotate"
    assert d["request"]["path"] == "/v1/%s/keys/%s/rotate" % (w.tenant, key)
    assert d["request"]["method"] == "POST" and d["tenant"] == w.tenant and d["key"] == key

    # the requester cannot approve its own request
    r = approve(kmsd, w.a, aid)
    assert r.status_code == 403, r.text
    assert "own request" in r.text
    # a service cannot vote (policy: approval.* is for admins)
    r = approve(kmsd, w.svc, aid)
    assert r.status_code == 403, r.text

    r = approve(kmsd, w.b, aid)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["state"] == "pending" and r.json()["data"]["approvals"] == 1
    assert "result" not in r.json()["data"]
    # the same admin twice
    r = approve(kmsd, w.b, aid)
    assert r.status_code == 409, r.text
    assert latest(kmsd, w, key) == 1

    r = approve(kmsd, w.c, aid)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["executed"] is True and d["state"] == "approved-executed"
    assert d["result"]["status"] == 200
    assert d["result"]["body"]["data"]["latest_version"] == 2
    assert latest(kmsd, w, key) == 2
    assert [x["principal"] for x in d["approved_by"]] == [w.names["b"], w.names["c"]]

    # the requester fetches the result
    d = show(kmsd, w.a, aid)
    assert d["state"] == "approved-executed" and d["result"]["status"] == 200
    # nothing more happens to a finished request
    r = approve(kmsd, w.d, aid)
    assert r.status_code == 409, r.text
    assert latest(kmsd, w, key) == 2

    recs = [x for x in audit_records(kmsd) if x.get("approval_id") == aid]
    created = [x for x in recs if x.get("approval_event") == "created"]
    assert len(created) == 1
    assert created[0]["operation"] == "key.rotate" and created[0]["outcome"] == "pending"
    assert created[0]["status"] == 202 and created[0]["principal"]
    executed = [x for x in recs if x.get("auth_method") == "approval"]
    assert len(executed) == 1, executed
    ex = executed[0]
    assert ex["operation"] == "key.rotate" and ex["outcome"] == "allow" and ex["status"] == 200
    assert ex["principal"] == created[0]["principal"]
    assert ex["approvers"] == [w.names["b"], w.names["c"]]
    votes = [x for x in recs if x["operation"] == "approval.approve"]
    assert {x["principal"] for x in votes if x["outcome"] == "allow"} == {w.names["b"], w.names["c"]}
    assert any(x["status"] == 409 and x["principal"] == w.names["b"] for x in votes)
    assert any(x["status"] == 403 and x["principal"] == created[0]["principal"] for x in votes)


def test_disable_version_needs_quorum_too(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    r = kmsd.post("/v1/%s/keys/%s/versions/1/disable" % (w.tenant, key), {"reason": "test"}, token=w.b)
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]
    assert approve(kmsd, w.c, aid).status_code == 200
    r = approve(kmsd, w.d, aid)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["result"]["status"] == 200, r.text
    r = kmsd.get("/v1/%s/keys/%s" % (w.tenant, key), token=w.a)
    assert r.json()["data"]["versions"]["1"]["state"] == "disabled"


def test_deny(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    aid = request_rotate(kmsd, w, key)
    r = kmsd.post("/v1/sys/approvals/%s/deny" % aid, {"note": "not now"}, token=w.b)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["state"] == "denied"
    assert [x["principal"] for x in r.json()["data"]["denied_by"]] == [w.names["b"]]
    for tok in (w.c, w.d):
        assert approve(kmsd, tok, aid).status_code == 409
    assert latest(kmsd, w, key) == 1
    recs = [x for x in audit_records(kmsd) if x.get("approval_id") == aid]
    assert any(x["operation"] == "approval.deny" and x.get("approval_event") == "denied" for x in recs)


def test_bad_ids_and_service_listing(kmsd):
    w = world(kmsd)
    assert kmsd.get("/v1/sys/approvals/nonsense", token=w.a).status_code == 404
    assert approve(kmsd, w.b, "0" * 32).status_code == 404
    assert kmsd.get("/v1/sys/approvals", token=w.svc).status_code == 403
    assert kmsd.get("/v1/sys/approvals").status_code in (401, 403)
    r = kmsd.post("/v1/sys/approvals/%s/approve" % ("0" * 32), {"bogus": 1}, token=w.b)
    assert r.status_code == 400, r.text


def test_data_plane_cannot_wait_for_approvals(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    r = kmsd.datakey(w.svc, w.tenant, key)
    assert r.status_code == 403, r.text
    assert "cannot wait for approvals" in r.text
    assert "plaintext" not in r.text
    r = kmsd.get("/v1/sys/approvals", token=w.a)
    for req in r.json()["data"]["requests"]:
        assert req["operation"] != "datakey"


def test_expired_request_cannot_run(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    aid = request_rotate(kmsd, w, key)
    assert approve(kmsd, w.b, aid).status_code == 200
    try:
        kmsd.set_clock(APPROVAL_TTL + 5)
        r = approve(kmsd, w.c, aid)
        assert r.status_code == 409, r.text
        assert "expired" in r.text
        d = show(kmsd, w.a, aid)
        assert d["state"] == "expired"
    finally:
        kmsd.set_clock(0)
    # expired stays expired when the clock comes back
    assert approve(kmsd, w.d, aid).status_code == 409
    assert latest(kmsd, w, key) == 1
    recs = [x for x in audit_records(kmsd) if x.get("approval_id") == aid]
    assert any(x["operation"] == "approval.expire" and x.get("approval_event") == "expired" for x in recs)


def test_exactly_once_under_racing_final_approvals(kmsd):
    w = world(kmsd)
    for _ in range(5):
        key = qkey(kmsd, w)
        aid = request_rotate(kmsd, w, key)
        assert approve(kmsd, w.b, aid).status_code == 200
        barrier = threading.Barrier(2)
        results = {}
        # separate sessions: requests.Session is not for concurrent use
        sess = {}
        for n in ("c", "d"):
            s = requests.Session()
            s.trust_env = False
            sess[n] = s

        def go2(name, tok):
            barrier.wait()
            results[name] = sess[name].post(kmsd.url + "/v1/sys/approvals/%s/approve" % aid, data="{}",
                                            headers={"X-Vault-Token": tok,
                                                     "Content-Type": "application/json"},
                                            verify=kmsd.ca, timeout=30)

        ts = [threading.Thread(target=go2, args=(n, getattr(w, n))) for n in ("c", "d")]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for s in sess.values():
            s.close()
        codes = sorted(r.status_code for r in results.values())
        assert codes == [200, 409], [(r.status_code, r.text) for r in results.values()]
        executed = [r for r in results.values() if r.status_code == 200 and r.json()["data"].get("executed")]
        assert len(executed) == 1
        assert latest(kmsd, w, key) == 2, "the approved rotation ran more (or less) than once"
        recs = [x for x in audit_records(kmsd)
                if x.get("approval_id") == aid and x.get("auth_method") == "approval"]
        assert len(recs) == 1


def test_policy_evaluated_again_at_execution(kmsd):
    w = world(kmsd)
    key = qkey(kmsd, w)
    requester = uniq("adm-req")
    kmsd.create_principal(requester, role="admin")
    tok = kmsd.create_token(requester)[0]
    aid = request_rotate(kmsd, w, key, token=tok)
    assert approve(kmsd, w.b, aid).status_code == 200

    cur = kmsd.get("/v1/sys/policy", token=w.a).json()["data"]
    doc = dict(POLICY)
    doc["version"] = cur["version"] + 1
    doc["rules"] = [{"name": "no-more-rotation-for-" + requester, "effect": "deny",
                     "principals": [requester], "operations": ["key.rotate"]}] + POLICY["rules"]
    r = kmsd.request("POST", "/v1/sys/policy", token=w.a, data=json.dumps(doc))
    assert r.status_code == 200, r.text
    try:
        r = approve(kmsd, w.c, aid)
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        assert d["state"] == "failed"
        assert d["result"]["status"] == 403
        assert latest(kmsd, w, key) == 1
        recs = [x for x in audit_records(kmsd)
                if x.get("approval_id") == aid and x.get("auth_method") == "approval"]
        assert len(recs) == 1 and recs[0]["outcome"] == "deny" and recs[0]["principal"] == requester
        assert "no-more-rotation" in recs[0]["reason"]
    finally:
        doc = dict(POLICY)
        doc["version"] = cur["version"] + 2
        r = kmsd.request("POST", "/v1/sys/policy", token=w.a, data=json.dumps(doc))
        assert r.status_code == 200, r.text


def test_kmsctl_approval(kmsd, tmp_path):
    from test_kmsctl import Ctl, fails, write_secret
    w = world(kmsd)
    ctl = Ctl(kmsd, tmp_path)
    tb = write_secret(tmp_path / "b.token", w.b)
    tc = write_secret(tmp_path / "c.token", w.c)
    key = qkey(kmsd, w)

    d = ctl.json("key", "rotate", w.tenant, key, token=ctl.admin)
    aid = d["approval_id"]
    assert d["state"] == "pending" and d["required_approvals"] == 2
    r = ctl.ok("approval", "list", token=tb)
    assert aid in r.stdout and "key.rotate" in r.stdout and "0 of 2" in r.stdout
    assert aid in [x["id"] for x in ctl.json("approval", "list", token=tb)["requests"]]

    r = ctl.run("approval", "approve", aid, token=ctl.admin, want=1)
    fails(r, 403, "own request")
    ctl.ok("approval", "approve", aid, "--note", "looks right", token=tb)
    r = ctl.run("approval", "approve", aid, token=tb, want=1)
    fails(r, 409, "already voted")
    r = ctl.ok("approval", "approve", aid, token=tc)
    assert "approved-executed" in r.stdout and "result status       200" in r.stdout
    d = ctl.json("approval", "show", aid, token=ctl.admin)
    assert d["state"] == "approved-executed" and d["result"]["status"] == 200
    assert latest(kmsd, w, key) == 2

    d = ctl.json("key", "rotate", w.tenant, key, token=ctl.admin)
    d = ctl.json("approval", "deny", d["approval_id"], "--note", "no ticket", token=tb)
    assert d["state"] == "denied"
    ctl.run("approval", "approve", token=tb, want=2)
    ctl.run("approval", "frobnicate", token=tb, want=2)
    r = ctl.run("approval", "show", "0" * 32, token=tb, want=1)
    fails(r, 404)


def test_erasure_receipt_lists_the_approvers(kmsd):
    """Destruction scheduled through a quorum: the signed receipt names the approvers."""
    w = world(kmsd)
    t = kmsd.create_tenant(uniq("er"), retention="non-phi")
    k = kmsd.create_key(t, uniq("qd-k"))
    kmsd.rotate(t, k)
    r = kmsd.post("/v1/%s/keys/%s/config" % (t, k), {"deletion_allowed": True}, token=w.a)
    assert r.status_code == 200, r.text
    r = kmsd.post("/v1/%s/keys/%s/versions/1/schedule-destroy" % (t, k),
                  {"days": 7, "reason": "erasure request 7"}, token=w.a)
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]
    assert approve(kmsd, w.c, aid).status_code == 200
    r = approve(kmsd, w.b, aid)
    assert r.status_code == 200 and r.json()["data"]["result"]["status"] == 200, r.text
    try:
        kmsd.set_clock(8 * 86400)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = kmsd.get("/v1/%s/keys/%s" % (t, k), token=w.a).json()["data"]
            if d["versions"]["1"]["state"] == "destroyed":
                break
            time.sleep(0.2)
        assert d["versions"]["1"]["state"] == "destroyed", d
        r = kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (t, k), token=w.a)
        assert r.status_code == 200, r.text
        rc = r.json()["data"]["receipt"]
        assert sorted(rc["approvals"]) == sorted([w.names["c"], w.names["b"]])  # by time, then name
        assert rc["reason"] == "erasure request 7"
    finally:
        kmsd.set_clock(0)
