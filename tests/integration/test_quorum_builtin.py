"""The built-in policy's two-person rule (docs/POLICY.md "Built-in policy"), against kmsd
running the REAL built-in policy (TOTP step-up on every admin change, as in test_mfa.py):
scheduling a destruction, a policy change, lowering min_decryption_version and releasing
a legal hold (key or tenant) wait for one approval by another admin. Admin A's call is
202 pending, A cannot approve it, B's vote needs B's own code, and the change runs
exactly once on B's approval. Raising min_decryption_version and placing a hold do not
wait. The audit record keeps the route's operation and names the refined one."""

import json

from conftest import uniq
from test_mfa import Admin, Clock, err, new_principal

KMSD_BUILTIN_POLICY = True
KMSD_TEST_CLOCK = True


class St:
    pass


_st = {}


def st_of(kmsd):
    """Two enrolled admins: a1 (the bootstrap admin) and a2, a tenant."""
    if "s" in _st:
        return _st["s"]
    s = St()
    s.clock = Clock(kmsd)
    s.clock.next()
    s.a1 = Admin(kmsd, "admin", kmsd.admin_token)
    s.a1.enroll_confirm(s.clock)
    s.a2 = new_principal(kmsd, s.a1, s.clock, "admin", "admin-b")
    s.a2.enroll_confirm(s.clock)
    s.tenant = uniq("t2p")
    r = s.a1.call("POST", "/v1/sys/tenants/" + s.tenant, {"retention": "non-phi"}, mfa=s.a1.code(s.clock.next()))
    assert r.status_code == 200, r.text
    _st["s"] = s
    return s


def a1(s, method, path, body=None):
    """a1 with a fresh code."""
    return s.a1.call(method, path, body if body is not None else {}, mfa=s.a1.code(s.clock.next()))


def new_key(s, versions=1):
    key = uniq("k2p")
    r = a1(s, "POST", "/v1/%s/keys/%s" % (s.tenant, key))
    assert r.status_code == 200, r.text
    for _ in range(versions - 1):
        r = a1(s, "POST", "/v1/%s/keys/%s/rotate" % (s.tenant, key))
        assert r.status_code == 200, r.text
    return key


def key_read(s, key):
    r = s.a1.call("GET", "/v1/%s/keys/%s" % (s.tenant, key))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def audit_records(kmsd):
    with open(kmsd.audit_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pending(r, operation):
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert d["state"] == "pending" and d["operation"] == operation and d["required_approvals"] == 1, d
    return d["approval_id"]


def approve_by_b(kmsd, s, aid):
    """A cannot approve its own request; B's vote needs B's code; B's approval runs it."""
    r = s.a1.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=s.a1.code(s.clock.next()))
    assert r.status_code == 403 and "own request" in r.text, r.text
    r = s.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {})
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    r = s.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=s.a2.code(s.clock.next()))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["executed"] is True and d["state"] == "approved-executed", d
    assert [x["principal"] for x in d["approved_by"]] == [s.a2.name], d
    assert d["result"]["status"] == 200, d
    # nothing more happens to a finished request
    r = s.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=s.a2.code(s.clock.next()))
    assert r.status_code == 409, r.text
    ran = [x for x in audit_records(kmsd) if x.get("approval_id") == aid and x.get("auth_method") == "approval"]
    assert len(ran) == 1, ran  # exactly once
    assert ran[0]["principal"] == "admin" and ran[0]["approvers"] == [s.a2.name], ran[0]
    return d, ran[0]


def created_record(kmsd, aid):
    recs = [x for x in audit_records(kmsd) if x.get("approval_id") == aid and x.get("approval_event") == "created"]
    assert len(recs) == 1, recs
    return recs[0]


def test_destroy_needs_a_second_admin(kmsd):
    s = st_of(kmsd)
    key = new_key(s, versions=2)
    r = a1(s, "POST", "/v1/%s/keys/%s/config" % (s.tenant, key), {"deletion_allowed": True})
    assert r.status_code == 200, r.text
    path = "/v1/%s/keys/%s/versions/1/schedule-destroy" % (s.tenant, key)
    # without a code: 401 and no pending request
    r = s.a1.call("POST", path, {"days": 7, "reason": "erasure 77"})
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    before = key_read(s, key)["versions"]["1"]["state"]
    assert before != "pending-destruction"
    aid = pending(a1(s, "POST", path, {"days": 7, "reason": "erasure 77"}), "key.version.schedule_destroy")
    assert key_read(s, key)["versions"]["1"]["state"] == before, "ran before its approval"
    rec = created_record(kmsd, aid)
    assert rec["operation"] == "key.version.schedule_destroy" and rec["outcome"] == "pending", rec
    d, ran = approve_by_b(kmsd, s, aid)
    assert ran["operation"] == "key.version.schedule_destroy" and ran["status"] == 200, ran
    assert key_read(s, key)["versions"]["1"]["state"] == "pending-destruction"
    r = s.a1.call("GET", "/v1/%s/keys/%s/history" % (s.tenant, key))
    assert r.status_code == 200, r.text
    events = [e["event"] for e in r.json()["data"]["events"]]
    assert events.count("schedule_destroy") == 1, events
    # cancelling needs no approval (it keeps the key)
    r = a1(s, "POST", "/v1/%s/keys/%s/versions/1/cancel-destroy" % (s.tenant, key), {"reason": "kept"})
    assert r.status_code == 200, r.text


def test_policy_write_needs_a_second_admin(kmsd):
    s = st_of(kmsd)
    d = s.a1.call("GET", "/v1/sys/policy").json()["data"]
    doc, ver = d["document"], d["version"]
    doc["version"] = ver + 1
    doc["description"] = "changed by test_quorum_builtin"
    aid = pending(a1(s, "POST", "/v1/sys/policy", doc), "policy.write")
    assert s.a1.call("GET", "/v1/sys/policy").json()["data"]["version"] == ver
    approve_by_b(kmsd, s, aid)
    d = s.a1.call("GET", "/v1/sys/policy").json()["data"]
    assert d["version"] == ver + 1 and d["document"]["description"] == "changed by test_quorum_builtin", d


def test_lowering_min_decryption_needs_approval_raising_does_not(kmsd):
    s = st_of(kmsd)
    key = new_key(s, versions=3)
    path = "/v1/%s/keys/%s/config" % (s.tenant, key)
    r = a1(s, "POST", path, {"min_decryption_version": 3})  # raising: runs now
    assert r.status_code == 200, r.text
    assert key_read(s, key)["min_decryption_version"] == 3
    r = a1(s, "POST", path, {"min_decryption_version": 3})  # unchanged: runs now
    assert r.status_code == 200, r.text
    r = a1(s, "POST", path, {"min_decryption_version": 2, "reason": "restore old backups"})
    aid = pending(r, "key.config")
    assert key_read(s, key)["min_decryption_version"] == 3, "ran before its approval"
    rec = created_record(kmsd, aid)
    assert rec["operation"] == "key.config", rec
    assert rec["policy_operation"] == "key.config.lower_min_decryption", rec
    assert "admin-two-person" in rec["reason"], rec
    d, ran = approve_by_b(kmsd, s, aid)
    assert ran["operation"] == "key.config", ran
    assert ran["policy_operation"] == "key.config.lower_min_decryption", ran
    assert key_read(s, key)["min_decryption_version"] == 2
    # a bad value is not refined: the operation refuses it on its own
    r = a1(s, "POST", path, {"min_decryption_version": 0})
    assert r.status_code == 400, r.text
    # a raise is not refined, and its record names no other operation
    r = a1(s, "POST", path, {"min_decryption_version": 3})
    assert r.status_code == 200, r.text
    rec = [x for x in audit_records(kmsd) if x.get("request_id") == r.json()["request_id"]][0]
    assert rec["operation"] == "key.config" and "policy_operation" not in rec, rec


def test_key_legal_hold_release_needs_approval_placing_does_not(kmsd):
    s = st_of(kmsd)
    key = new_key(s)
    path = "/v1/%s/keys/%s/legal-hold" % (s.tenant, key)
    # no hold to release: not a release, so the operation answers at once (no request waits)
    r = a1(s, "POST", path, {"hold": False, "reason": "nothing held"})
    assert r.status_code == 409 and "not under legal hold" in err(r), r.text
    r = a1(s, "POST", path, {"hold": True, "reason": "litigation 2026-41"})
    assert r.status_code == 200 and r.json()["data"]["legal_hold"] is True, r.text
    aid = pending(a1(s, "POST", path, {"hold": False, "reason": "settled"}), "key.legal_hold")
    assert created_record(kmsd, aid)["policy_operation"] == "key.legal_hold.release"
    r = s.a1.call("GET", "/v1/sys/approvals/" + aid)
    assert r.status_code == 200 and r.json()["data"]["state"] == "pending", r.text
    # still held: placing it again is refused by the operation
    r = a1(s, "POST", path, {"hold": True, "reason": "again"})
    assert r.status_code == 409, r.text
    d, ran = approve_by_b(kmsd, s, aid)
    assert ran["operation"] == "key.legal_hold" and ran["policy_operation"] == "key.legal_hold.release", ran
    assert d["result"]["body"]["data"]["legal_hold"] is False, d


def test_tenant_legal_hold_release_needs_approval_placing_does_not(kmsd):
    s = st_of(kmsd)
    t = uniq("t2h")
    r = a1(s, "POST", "/v1/sys/tenants/" + t, {"retention": "non-phi"})
    assert r.status_code == 200, r.text
    path = "/v1/sys/tenants/%s/config" % t
    r = a1(s, "POST", path, {"legal_hold": False})  # not held: not a release
    assert r.status_code == 200, r.text
    r = a1(s, "POST", path, {"legal_hold": True})
    assert r.status_code == 200 and r.json()["data"]["legal_hold"] is True, r.text
    # other settings of a held tenant change without approval while the hold stays
    r = a1(s, "POST", path, {"retention_days": 400})
    assert r.status_code == 200 and r.json()["data"]["legal_hold"] is True, r.text
    aid = pending(a1(s, "POST", path, {"legal_hold": False}), "tenant.config")
    rec = created_record(kmsd, aid)
    assert rec["policy_operation"] == "tenant.config.legal_hold_release" and rec["tenant"] == t, rec
    r = s.a1.call("GET", "/v1/sys/tenants/" + t)
    assert r.json()["data"]["legal_hold"] is True, r.text
    approve_by_b(kmsd, s, aid)
    r = s.a1.call("GET", "/v1/sys/tenants/" + t)
    assert r.json()["data"]["legal_hold"] is False, r.text


def test_denied_by_the_other_admin_never_runs(kmsd):
    s = st_of(kmsd)
    t = uniq("t2d")
    assert a1(s, "POST", "/v1/sys/tenants/" + t, {"retention": "non-phi"}).status_code == 200
    path = "/v1/sys/tenants/%s/config" % t
    assert a1(s, "POST", path, {"legal_hold": True}).status_code == 200
    aid = pending(a1(s, "POST", path, {"legal_hold": False}), "tenant.config")
    r = s.a2.call("POST", "/v1/sys/approvals/%s/deny" % aid, {"note": "no court order"},
                  mfa=s.a2.code(s.clock.next()))
    assert r.status_code == 200 and r.json()["data"]["state"] == "denied", r.text
    r = s.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=s.a2.code(s.clock.next()))
    assert r.status_code == 409, r.text
    assert s.a1.call("GET", "/v1/sys/tenants/" + t).json()["data"]["legal_hold"] is True
