"""Auditor authentication by token plus TOTP, against kmsd running the REAL built-in
policy (docs/POLICY.md "The built-in document"): an auditor enrols itself, and its audit
reads are allowed within 8 hours (mfa_max_age 28800) of a TOTP check -- confirming the
enrolment, POST /v1/sys/mfa/verify, or a code sent with the read itself. Before a check
and after 8 hours a read is refused with 401 saying how to start a session; a wrong code
is 403. An auditor reads only its own MFA state and still changes nothing."""

import json

from conftest import uniq
from test_mfa import Admin, Clock, err, new_principal

KMSD_BUILTIN_POLICY = True
KMSD_TEST_CLOCK = True

SESSION = 28800  # seconds
PERIOD = 30


class St:
    pass


_st = {}


def st_of(kmsd):
    if "s" in _st:
        return _st["s"]
    s = St()
    s.clock = Clock(kmsd)
    s.clock.next()
    s.a1 = Admin(kmsd, "admin", kmsd.admin_token)
    s.a1.enroll_confirm(s.clock)
    s.au = new_principal(kmsd, s.a1, s.clock, "auditor", "auditor")
    s.tenant = uniq("ta")
    r = s.a1.call("POST", "/v1/sys/tenants/" + s.tenant, {"retention": "non-phi"}, mfa=s.a1.code(s.clock.next()))
    assert r.status_code == 200, r.text
    _st["s"] = s
    return s


def record(kmsd, rid):
    with open(kmsd.audit_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("request_id") == rid:
                return rec
    raise AssertionError("no audit record for %s" % rid)


def read(s, mfa=None):
    return s.au.call("GET", "/v1/sys/tenants/" + s.tenant, mfa=mfa)


def gap_steps(seconds):
    return seconds // PERIOD + 1


def test_auditor_refused_before_enrolment(kmsd):
    s = st_of(kmsd)
    r = read(s)
    assert r.status_code == 401, r.text
    assert "MFA required" in err(r) and "no active TOTP enrolment" in err(r), err(r)
    rec = record(kmsd, r.json()["request_id"])
    assert rec["principal"] == s.au.name and rec["outcome"] == "deny" and rec["status"] == 401, rec
    # its own MFA state, yes; another principal's (existing or not), no
    r = s.au.call("GET", "/v1/sys/mfa/status")
    assert r.status_code == 200 and r.json()["data"]["enrolled"] is False, r.text
    for other in ("admin", "no-such-principal"):
        r = s.au.call("GET", "/v1/sys/mfa/status/" + other)
        assert r.status_code == 403 and err(r) == "permission denied", r.text
    r = s.au.call("GET", "/v1/sys/mfa/status/" + s.au.name)
    assert r.status_code == 200, r.text


def test_auditor_session_from_enrolment_verify_and_expiry(kmsd):
    s = st_of(kmsd)
    s.au.enroll_confirm(s.clock)  # a confirmed enrolment is a check: the session starts
    r = read(s)
    assert r.status_code == 200 and r.json()["data"]["name"] == s.tenant, r.text
    # 8 hours and a bit later: refused, with the way out in the message
    s.clock.next(gap=gap_steps(SESSION) + 1)
    r = read(s)
    assert r.status_code == 401, r.text
    assert err(r).startswith("MFA required: send a TOTP code") and "/v1/sys/mfa/verify" in err(r), err(r)
    assert "expired" in err(r), err(r)
    assert s.au.call("LIST", "/v1/sys/tenants").status_code == 401
    # verify starts a new session; reads need no code within it
    step = s.clock.next()
    r = s.au.call("POST", "/v1/sys/mfa/verify", mfa=s.au.code(step))
    assert r.status_code == 200 and r.json()["data"]["verified"] is True, r.text
    assert read(s).status_code == 200
    assert s.au.call("LIST", "/v1/sys/tenants").status_code == 200
    r = s.au.call("GET", "/v1/sys/metrics", params={"format": "json"})
    assert r.status_code == 200, r.text
    # still inside 8 hours
    s.clock.next(gap=gap_steps(SESSION) - 40)
    r = read(s)
    assert r.status_code == 200, r.text
    # past 8 hours from the verify
    s.clock.next(gap=60)
    r = read(s)
    assert r.status_code == 401 and "expired" in err(r), r.text


def test_auditor_code_on_the_read_starts_a_session(kmsd):
    s = st_of(kmsd)
    s.clock.next(gap=gap_steps(SESSION) + 1)
    assert read(s).status_code == 401
    step = s.clock.next()
    # a wrong code is refused (403) and counted
    bad = "totp:%06d" % ((int(s.au.code(step)[5:]) + 1) % 1000000)
    r = read(s, mfa=bad)
    assert r.status_code == 403 and "invalid" in err(r), r.text
    assert s.au.status()["failures"] == 1
    r = read(s, mfa=s.au.code(step))
    assert r.status_code == 200, r.text
    assert record(kmsd, r.json()["request_id"])["mfa"] is True
    # the same code again is a replay; no code is needed now anyway
    assert read(s).status_code == 200
    assert s.au.status()["failures"] == 0


def test_auditor_changes_nothing_even_with_a_session(kmsd):
    s = st_of(kmsd)
    step = s.clock.next()
    assert s.au.call("POST", "/v1/sys/mfa/verify", mfa=s.au.code(step)).status_code == 200
    step = s.clock.next()
    for method, path, body in (("POST", "/v1/sys/tenants/" + uniq("tx"), {}),
                               ("POST", "/v1/sys/tenants/%s/config" % s.tenant, {"legal_hold": True}),
                               ("POST", "/v1/sys/mfa/unlock/admin", {}),
                               ("POST", "/v1/sys/policy", {"version": 99, "rules": []})):
        r = s.au.call(method, path, body, mfa=s.au.code(step))
        assert r.status_code == 403 and err(r) == "permission denied", (path, r.text)
    # and an admin's reads are not subject to a session
    s.clock.next(gap=gap_steps(SESSION) + 1)
    r = s.a1.call("GET", "/v1/sys/tenants/" + s.tenant)
    assert r.status_code == 200, r.text
