"""TOTP step-up (docs/API.md "MFA"), against kmsd running the real built-in policy: every
admin change needs `X-Vault-MFA: totp:<code>`. The test clock (KMSD_TEST_CLOCK_FILE) puts
kmsd at the start of a chosen 30 s step, so that each test knows which codes are current:
enrolment and confirmation, step-up success, missing / wrong / malformed / replayed codes,
±1 step accepted and ±2 refused, a step never accepted twice (also across a restart and
with the clock stepped back), lockout after mfa_max_failures and unlock by another admin
(never by oneself), one-time recovery codes, re-enrolment and reset, mfa_max_age, the seed
never in the clear in the store, the audit record's mfa flag and the metrics counters."""

import base64
import hashlib
import hmac
import json
import os
import pty
import sqlite3
import struct
import subprocess
import time
import urllib.parse

import pytest

from conftest import sqlite_only, uniq
from test_kmsctl import base_env, kmsctl_bin, write_secret

KMSD_BUILTIN_POLICY = True
KMSD_TEST_CLOCK = True
MAX_FAILURES = 3
KMSD_EXTRA_OPTS = [("mfa_max_failures", str(MAX_FAILURES))]

PERIOD = 30


def totp(secret, step, digits=6):
    """RFC 6238 with HMAC-SHA-1, written out here independently of kmsd's."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 0x0F
    v = (struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % (10 ** digits)
    return "%0*d" % (digits, v)


class Clock:
    """Puts kmsd's clock a few seconds into a chosen step; steps only go forward unless
    a test asks for an earlier one on purpose."""

    def __init__(self, kmsd):
        self.k = kmsd
        self.step = int(time.time()) // PERIOD + 1000

    def at(self, step):
        for _ in range(3):
            self.k.set_clock(step * PERIOD + 2 - int(time.time()))
            now = self.k.get("/v1/sys/health").json()["server_time_utc"]
            if now // PERIOD == step and now % PERIOD <= 10:
                return step
        pytest.fail("could not put kmsd's clock into step %d" % step)

    def next(self, gap=5):
        self.step += gap
        return self.at(self.step)


class Admin:
    def __init__(self, kmsd, name, token):
        self.k, self.name, self.token = kmsd, name, token
        self.secret = None
        self.recovery = None

    def call(self, method, path, body=None, mfa=None, **kw):
        h = {"X-Vault-MFA": mfa} if mfa is not None else None
        return self.k.request(method, path, token=self.token, json_body=body, headers=h, **kw)

    def code(self, step):
        return "totp:" + totp(self.secret, step)

    def status(self, name=None):
        r = self.call("GET", "/v1/sys/mfa/status" + ("/" + name if name else ""))
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def enroll_confirm(self, clock):
        r = self.call("POST", "/v1/sys/mfa/enroll")
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        self.secret, self.recovery = d["secret"], d["recovery_codes"]
        s = clock.next()
        r = self.call("POST", "/v1/sys/mfa/confirm", {"code": totp(self.secret, s)})
        assert r.status_code == 200, r.text
        return d


def new_principal(kmsd, admin, clock, role, prefix):
    """A new principal of `role`, made by `admin` with a step-up for each change, and a
    token of its own: as an Admin (not enrolled)."""
    name = uniq(prefix)
    r = admin.call("POST", "/v1/sys/principals/" + name, {"role": role}, mfa=admin.code(clock.next()))
    assert r.status_code == 200, r.text
    r = admin.call("POST", "/v1/sys/principals/%s/tokens" % name, {}, mfa=admin.code(clock.next()))
    assert r.status_code == 200, r.text
    return Admin(kmsd, name, r.json()["auth"]["client_token"])


def err(r):
    return r.json()["errors"][0]


def audit_record(kmsd, rid):
    with open(kmsd.audit_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("request_id") == rid:
                return rec
    pytest.fail("no audit record for request %s" % rid)


def metric(kmsd, name):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "prometheus"})
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    pytest.fail("metric %s missing" % name)


@pytest.fixture(scope="module")
def st(kmsd):
    class S:
        pass

    s = S()
    s.clock = Clock(kmsd)
    s.clock.next()
    s.a1 = Admin(kmsd, "admin", kmsd.admin_token)
    return s


def write_policy(kmsd, st, doc):
    """policy.write under the built-in two-person rule: a1 asks (with its code), a2
    approves (with its own); the change runs once, on the approval."""
    if st.a2.status()["state"] != "active":
        st.a2.enroll_confirm(st.clock)
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/policy", doc, mfa=st.a1.code(s))
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]
    r = st.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=st.a2.code(s))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["executed"] is True and d["result"]["status"] == 200, d
    return d


def test_admin_change_refused_before_enrolment(kmsd, st):
    r = st.a1.call("POST", "/v1/sys/tenants/" + uniq("t"))
    assert r.status_code == 401, r.text
    assert "MFA required" in err(r) and "no active TOTP enrolment" in err(r), err(r)
    # reads need no step-up
    assert st.a1.call("LIST", "/v1/sys/tenants").status_code == 200
    assert st.a1.status()["enrolled"] is False


def test_enrol_and_confirm(kmsd, st):
    r = st.a1.call("POST", "/v1/sys/mfa/enroll")
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    uri = urllib.parse.urlparse(d["otpauth_uri"])
    q = urllib.parse.parse_qs(uri.query)
    assert uri.scheme == "otpauth" and uri.netloc == "totp" and uri.path == "/kmsd:admin", d["otpauth_uri"]
    assert q["secret"] == [d["secret"]] and q["issuer"] == ["kmsd"] and q["digits"] == ["6"]
    assert q["period"] == ["30"] and q["algorithm"] == ["SHA1"]
    assert len(base64.b32decode(d["secret"] + "=" * (-len(d["secret"]) % 8))) == 20
    assert len(d["recovery_codes"]) == 10 and len(set(d["recovery_codes"])) == 10
    assert d["state"] == "pending"
    st.a1.secret, st.a1.recovery = d["secret"], d["recovery_codes"]
    s = st.clock.next()
    # pending: no step-up yet
    r = st.a1.call("POST", "/v1/sys/tenants/" + uniq("t"), mfa=st.a1.code(s))
    assert r.status_code == 401 and "no active TOTP enrolment" in err(r), r.text
    # a wrong first code is refused and counted
    bad = "%06d" % ((int(totp(st.a1.secret, s)) + 1) % 1000000)
    r = st.a1.call("POST", "/v1/sys/mfa/confirm", {"code": bad})
    assert r.status_code == 403 and "invalid" in err(r), r.text
    assert st.a1.status()["failures"] == 1
    r = st.a1.call("POST", "/v1/sys/mfa/confirm", {"code": totp(st.a1.secret, s)})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["state"] == "active"
    assert audit_record(kmsd, r.json()["request_id"])["mfa"] is True
    d = st.a1.status()
    assert d["state"] == "active" and d["failures"] == 0 and d["recovery_codes_left"] == 10
    assert d["last_verified"] == kmsd.get("/v1/sys/health").json()["server_time_utc"] or d["last_verified"] > 0
    # bad confirm bodies
    assert st.a1.call("POST", "/v1/sys/mfa/confirm", {"code": 123456}).status_code == 400
    assert st.a1.call("POST", "/v1/sys/mfa/confirm", {}).status_code == 400
    assert st.a1.call("POST", "/v1/sys/mfa/enroll", {"x": 1}).status_code == 400


def test_seed_not_in_the_clear_in_the_store(kmsd, st):
    sqlite_only(kmsd, "reads the SQLite file")
    raw = base64.b32decode(st.a1.secret + "=" * (-len(st.a1.secret) % 8))
    found = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = kmsd.store_path + suffix
        if not os.path.exists(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        for needle in (st.a1.secret.encode(), st.a1.secret.lower().encode(), raw, raw.hex().encode(),
                       base64.b64encode(raw)):
            if needle in data:
                found.append((p, needle))
        for code in st.a1.recovery:
            if code.encode() in data:
                found.append((p, code))
    assert not found, found
    # the row exists, holding a sealed seed (iv + 20 bytes + tag)
    db = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True)
    try:
        (blob,) = db.execute("SELECT sealed_seed FROM principal_mfa").fetchone()
    finally:
        db.close()
    assert len(blob) == 12 + 20 + 16


def test_step_up_success_and_audit(kmsd, st):
    s = st.clock.next()
    t = uniq("t")
    r = st.a1.call("POST", "/v1/sys/tenants/" + t, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    rec = audit_record(kmsd, r.json()["request_id"])
    assert rec["mfa"] is True and rec["outcome"] == "allow" and rec["operation"] == "tenant.create", rec
    # a read carries no code and is recorded without MFA
    r = st.a1.call("GET", "/v1/sys/tenants/" + t)
    assert r.status_code == 200
    assert audit_record(kmsd, r.json()["request_id"])["mfa"] is False
    # the data plane needs no step-up: a service made (with codes) works with its token
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/%s/keys/k1" % t, {}, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    s = st.clock.next()
    svc = uniq("svc")
    r = st.a1.call("POST", "/v1/sys/principals/" + svc, {"role": "service", "tenants": [t]}, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/principals/%s/tokens" % svc, {}, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    tok = r.json()["auth"]["client_token"]
    r = kmsd.request("POST", "/v1/%s/datakey/plaintext/k1" % t, token=tok, json_body={})
    assert r.status_code == 200, r.text
    st.tenant = t


def test_missing_wrong_malformed_replayed(kmsd, st):
    s = st.clock.next()
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    r = st.a1.call("POST", path, body)
    assert r.status_code == 401 and err(r).startswith("MFA required"), r.text
    assert "invalid" not in err(r)
    rec = audit_record(kmsd, r.json()["request_id"])
    assert rec["outcome"] == "deny" and rec["mfa"] is False and "MFA required" in rec["reason"], rec
    good = totp(st.a1.secret, s)
    bad = "%06d" % ((int(good) + 500000) % 1000000)
    r = st.a1.call("POST", path, body, mfa="totp:" + bad)
    assert r.status_code == 403 and "code invalid or already used" in err(r), r.text
    assert "1 of %d" % MAX_FAILURES in err(r), err(r)
    assert good not in r.text and st.a1.secret not in r.text
    rec = audit_record(kmsd, r.json()["request_id"])
    assert rec["outcome"] == "deny" and "invalid" in rec["reason"] and bad not in json.dumps(rec), rec
    r = st.a1.call("POST", path, body, mfa=good)  # no "totp:" prefix
    assert r.status_code == 403 and "malformed" in err(r), r.text
    r = st.a1.call("POST", path, body, mfa="totp:" + good)
    assert r.status_code == 200, r.text
    assert st.a1.status()["failures"] == 0
    # the same code again, in the same step: a replay
    r = st.a1.call("POST", path, body, mfa="totp:" + good)
    assert r.status_code == 403 and "invalid or already used" in err(r), r.text
    rec = audit_record(kmsd, r.json()["request_id"])
    assert rec["outcome"] == "deny" and rec["mfa"] is False and "already used" in rec["reason"], rec
    s = st.clock.next()
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200


def test_window_plus_minus_one(kmsd, st):
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    s = st.clock.next()
    r = st.a1.call("POST", path, body, mfa=st.a1.code(s - 2))
    assert r.status_code == 403, r.text
    r = st.a1.call("POST", path, body, mfa=st.a1.code(s + 2))
    assert r.status_code == 403, r.text
    r = st.a1.call("POST", path, body, mfa=st.a1.code(s - 1))
    assert r.status_code == 200, r.text
    r = st.a1.call("POST", path, body, mfa=st.a1.code(s + 1))
    assert r.status_code == 200, r.text
    # s itself is now older than the last accepted step (s + 1): refused, though unused
    r = st.a1.call("POST", path, body, mfa=st.a1.code(s))
    assert r.status_code == 403, r.text
    s = st.clock.next()
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200


def test_clock_stepped_back(kmsd, st):
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    s = st.clock.next()
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200
    back = st.clock.at(s - 4)
    r = st.a1.call("POST", path, body, mfa=st.a1.code(back))
    assert r.status_code == 403 and "already used" in err(r), r.text
    s = st.clock.next()
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200


def test_replay_across_restart(kmsd, st):
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    s = st.clock.next()
    code = st.a1.code(s)
    assert st.a1.call("POST", path, body, mfa=code).status_code == 200
    kmsd.stop()
    kmsd.start()
    st.clock.at(s)
    r = st.a1.call("POST", path, body, mfa=code)
    assert r.status_code == 403 and "already used" in err(r), r.text
    s = st.clock.next()
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200


def test_lockout_and_unlock_by_another_admin(kmsd, st):
    before = {n: metric(kmsd, n) for n in ("kmsd_mfa_failures_total", "kmsd_mfa_lockouts_total",
                                           "kmsd_mfa_locked_refusals_total", "kmsd_mfa_verified_total",
                                           "kmsd_mfa_missing_total")}
    # a second admin, made and given a token with step-ups
    name2 = uniq("admin2")
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/principals/" + name2, {"role": "admin"}, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/principals/%s/tokens" % name2, {}, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    st.a2 = Admin(kmsd, name2, r.json()["auth"]["client_token"])
    st.a2.enroll_confirm(st.clock)

    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    s = st.clock.next()
    good = totp(st.a1.secret, s)
    bad = "%06d" % ((int(good) + 1) % 1000000)
    for i in range(1, MAX_FAILURES + 1):
        r = st.a1.call("POST", path, body, mfa="totp:" + bad)
        assert r.status_code == 403, r.text
        if i < MAX_FAILURES:
            assert "%d of %d" % (i, MAX_FAILURES) in err(r), err(r)
    assert "locked" in err(r) and "another admin" in err(r), err(r)
    rec = audit_record(kmsd, r.json()["request_id"])
    assert "locked" in rec["reason"], rec
    # locked: even the right code is refused, without being looked at
    r = st.a1.call("POST", path, body, mfa="totp:" + good)
    assert r.status_code == 403 and "locked" in err(r) and "ask another admin to unlock" in err(r), r.text
    d = st.a2.status("admin")
    assert d["locked"] is True and d["failures"] == MAX_FAILURES
    # nobody unlocks themselves: a2 (not locked, with a good code) is refused for itself
    s2 = st.clock.step
    r = st.a2.call("POST", "/v1/sys/mfa/unlock/" + name2, mfa=st.a2.code(s2))
    assert r.status_code == 403 and "cannot unlock its own" in err(r), r.text
    # and the locked admin cannot get through the step-up to try
    r = st.a1.call("POST", "/v1/sys/mfa/unlock/admin", mfa="totp:" + good)
    assert r.status_code == 403 and "locked" in err(r), r.text
    # unlock needs a's own step-up too
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/mfa/unlock/admin")
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    r = st.a2.call("POST", "/v1/sys/mfa/unlock/admin", mfa=st.a2.code(s))
    assert r.status_code == 200, r.text
    rec = audit_record(kmsd, r.json()["request_id"])
    assert rec["operation"] == "mfa.unlock" and rec["key"] == "admin" and rec["mfa"] is True, rec
    assert st.a1.status()["locked"] is False
    assert st.a1.call("POST", path, body, mfa=st.a1.code(s)).status_code == 200
    after = {n: metric(kmsd, n) for n in before}
    assert after["kmsd_mfa_failures_total"] >= before["kmsd_mfa_failures_total"] + MAX_FAILURES
    assert after["kmsd_mfa_lockouts_total"] == before["kmsd_mfa_lockouts_total"] + 1
    assert after["kmsd_mfa_locked_refusals_total"] >= before["kmsd_mfa_locked_refusals_total"] + 2
    assert after["kmsd_mfa_verified_total"] >= before["kmsd_mfa_verified_total"] + 5
    assert after["kmsd_mfa_missing_total"] >= before["kmsd_mfa_missing_total"] + 1
    # unknown principal / no enrolment
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/mfa/unlock/" + uniq("nobody"), mfa=st.a2.code(s))
    assert r.status_code == 404, r.text


def test_recovery_code_once(kmsd, st):
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    code = st.a1.recovery[0]
    r = st.a1.call("POST", path, body, mfa="recovery:" + code)
    assert r.status_code == 200, r.text
    assert audit_record(kmsd, r.json()["request_id"])["mfa"] is True
    r = st.a1.call("POST", path, body, mfa="recovery:" + code)
    assert r.status_code == 403 and "recovery code invalid or already used" in err(r), r.text
    # a TOTP code is not a recovery code and the other way round
    r = st.a1.call("POST", path, body, mfa="totp:" + st.a1.recovery[1])
    assert r.status_code == 403, r.text
    d = st.a1.status()
    assert d["recovery_codes_left"] == 9 and d["failures"] == 2
    # formatting is forgiven: lower case with a dash
    c = st.a1.recovery[2].lower()
    r = st.a1.call("POST", path, body, mfa="recovery:%s-%s" % (c[:5], c[5:]))
    assert r.status_code == 200, r.text
    assert st.a1.status()["recovery_codes_left"] == 8


def test_reenrolment_needs_a_code_and_keeps_the_old_seed_until_confirmed(kmsd, st):
    r = st.a2.call("POST", "/v1/sys/mfa/enroll")
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/mfa/enroll", mfa=st.a2.code(s))
    assert r.status_code == 200, r.text
    new = r.json()["data"]
    assert new["replaces_active"] is True and new["secret"] != st.a2.secret
    d = st.a2.status()
    assert d["state"] == "active" and d["reenrolment_pending"] is True
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    s = st.clock.next()
    assert st.a2.call("POST", path, body, mfa=st.a2.code(s)).status_code == 200  # old seed still in force
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/mfa/confirm", {"code": totp(new["secret"], s)})
    assert r.status_code == 200, r.text
    old = st.a2.secret
    st.a2.secret, st.a2.recovery = new["secret"], new["recovery_codes"]
    s = st.clock.next()
    assert st.a2.call("POST", path, body, mfa="totp:" + totp(old, s)).status_code == 403
    assert st.a2.call("POST", path, body, mfa=st.a2.code(s)).status_code == 200
    assert st.a2.status()["reenrolment_pending"] is False


def test_reset_by_another_admin(kmsd, st):
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/mfa/reset/admin", mfa=st.a1.code(s))
    assert r.status_code == 403 and "cannot reset its own" in err(r), r.text
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/mfa/reset/" + st.a2.name, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    assert st.a2.status()["enrolled"] is False
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/tenants/%s/config" % st.tenant, {"legal_hold": False}, mfa=st.a2.code(s))
    assert r.status_code == 401 and "no active TOTP enrolment" in err(r), r.text
    st.a2.enroll_confirm(st.clock)
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/tenants/%s/config" % st.tenant, {"legal_hold": False}, mfa=st.a2.code(s))
    assert r.status_code == 200, r.text


def test_services_cannot_use_mfa_endpoints(kmsd, st):
    s = st.clock.next()
    svc = uniq("svc")
    r = st.a1.call("POST", "/v1/sys/principals/" + svc, {"role": "service", "tenants": [st.tenant]},
                   mfa=st.a1.code(s))
    assert r.status_code == 200, r.text
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/principals/%s/tokens" % svc, {}, mfa=st.a1.code(s))
    tok = r.json()["auth"]["client_token"]
    for m, p in (("POST", "/v1/sys/mfa/enroll"), ("GET", "/v1/sys/mfa/status"),
                 ("POST", "/v1/sys/mfa/unlock/admin"), ("POST", "/v1/sys/mfa/reset/admin")):
        r = kmsd.request(m, p, token=tok)
        assert r.status_code == 403 and err(r) == "permission denied", (p, r.text)


def kmsctl(kmsd, home, *args, token=None, env=None, stdin=None, want=None):
    e = base_env(home)
    e["KMS_ADDR"], e["KMS_CACERT"] = kmsd.url, kmsd.ca
    e.update(env or {})
    argv = [kmsctl_bin()] + (["--token-file", token] if token else []) + list(args)
    r = subprocess.run(argv, env=e, input=stdin, capture_output=True, text=True, timeout=60)
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr
    if want is not None:
        assert r.returncode == want, "kmsctl %s -> %d\n%s\n%s" % (args, r.returncode, r.stdout, r.stderr)
    return r


def test_kmsctl_mfa(kmsd, st, tmp_path):
    sqlite_only(kmsd, "steps up for kmsctl backup, which a PostgreSQL store answers with 501")
    home = tmp_path / "home"
    home.mkdir()
    # a third admin, enrolled entirely through kmsctl
    name3 = uniq("admin3")
    a1tok = kmsd.admin_token_file
    s = st.clock.next()
    kmsctl(kmsd, home, "principal", "create", name3, "--role", "admin", token=a1tok,
           env={"KMS_MFA": totp(st.a1.secret, s)}, want=0)
    s = st.clock.next()
    r = kmsctl(kmsd, home, "--format", "json", "token", "create", name3, token=a1tok,
               env={"KMS_MFA": "totp:" + totp(st.a1.secret, s)}, want=0)
    tok3 = write_secret(tmp_path / "a3.token", json.loads(r.stdout)["auth"]["client_token"])
    # no code and no terminal: refused with the server's message, exit 1
    r = kmsctl(kmsd, home, "tenant", "create", uniq("t"), token=tok3, want=1)
    assert "401" in r.stderr and "MFA required" in r.stderr, r.stderr
    # a code is never an argv value
    r = kmsctl(kmsd, home, "--mfa=123456", "mfa", "status", token=tok3, want=2)
    assert "--mfa takes no value" in r.stderr
    # enroll: not a terminal, so no QR code; the secret and recovery codes are printed once
    r = kmsctl(kmsd, home, "mfa", "enroll", token=tok3, want=0)
    assert "\u2580" not in r.stdout
    lines = dict(ln.split(None, 1) for ln in r.stdout.splitlines() if ln.startswith(("secret ", "otpauth_uri ")))
    secret3 = lines["secret"].strip()
    assert lines["otpauth_uri"].startswith("otpauth://totp/kmsd:%s?secret=%s" % (name3, secret3))
    assert r.stdout.count("\n  ") == 10  # ten recovery codes
    r = kmsctl(kmsd, home, "--format", "json", "mfa", "status", token=tok3, want=0)
    assert json.loads(r.stdout)["state"] == "pending"
    # confirm reads the code from stdin
    s = st.clock.next()
    kmsctl(kmsd, home, "mfa", "confirm", token=tok3, stdin=totp(secret3, s) + "\n", want=0)
    r = kmsctl(kmsd, home, "--format", "json", "mfa", "status", token=tok3, want=0)
    assert json.loads(r.stdout)["state"] == "active"
    s = st.clock.next()
    kmsctl(kmsd, home, "tenant", "create", uniq("t"), token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=0)
    # the same code again is refused
    r = kmsctl(kmsd, home, "tenant", "create", uniq("t"), token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=1)
    assert "already used" in r.stderr, r.stderr
    # status of another principal, verify, unlock and reset of another, never of oneself
    r = kmsctl(kmsd, home, "--format", "json", "mfa", "status", "admin", token=tok3, want=0)
    assert json.loads(r.stdout)["principal"] == "admin"
    s = st.clock.next()
    kmsctl(kmsd, home, "mfa", "verify", token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=0)
    s = st.clock.next()
    r = kmsctl(kmsd, home, "mfa", "unlock", name3, token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=1)
    assert "cannot unlock its own" in r.stderr, r.stderr
    s = st.clock.next()
    kmsctl(kmsd, home, "mfa", "unlock", "admin", token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=0)
    # a backup (streamed, not through cli_call) needs and carries the code too
    bk = os.path.join(str(tmp_path), "mfa.kmsbak")
    r = kmsctl(kmsd, home, "backup", "--out", bk, token=tok3, want=1)
    assert "401 MFA required" in r.stderr and not os.path.exists(bk), r.stderr
    s = st.clock.next()
    kmsctl(kmsd, home, "backup", "--out", bk, token=tok3, env={"KMS_MFA": totp(secret3, s)}, want=0)
    assert os.path.getsize(bk) > 12
    s = st.clock.next()
    kmsctl(kmsd, home, "mfa", "reset", name3, token=a1tok, env={"KMS_MFA": totp(st.a1.secret, s)}, want=0)
    r = kmsctl(kmsd, home, "--format", "json", "mfa", "status", token=tok3, want=0)
    assert json.loads(r.stdout)["enrolled"] is False
    # on a terminal, enroll draws the QR code
    master, slave = pty.openpty()
    e = base_env(home)
    e["KMS_ADDR"], e["KMS_CACERT"] = kmsd.url, kmsd.ca
    p = subprocess.Popen([kmsctl_bin(), "--token-file", tok3, "mfa", "enroll"], env=e, stdout=slave,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=60)
    os.close(master)
    assert p.returncode == 0, p.stderr.read()
    text = out.decode("utf-8", "replace")
    assert text.count("\u2580") > 200 and "otpauth://totp/kmsd:" + name3 in text, text[:2000]


def test_one_code_races_itself(kmsd, st):
    """The step is taken with a compare-and-set: of two requests carrying one code at
    the same moment, exactly one passes."""
    import concurrent.futures
    path = "/v1/sys/tenants/%s/config" % st.tenant
    for _ in range(3):
        s = st.clock.next()
        code = st.a2.code(s)
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(kmsd.request, "POST", path, token=st.a2.token,
                              json_body={"legal_hold": False}, headers={"X-Vault-MFA": code})
                    for _ in range(2)]
            codes = sorted(f.result().status_code for f in futs)
        assert codes == [200, 403], codes


def test_step_up_with_quorum(kmsd, st):
    """A change that needs MFA and approvals: the requester steps up when the request is
    made (no pending request without a code), each approver steps up on its vote, and
    the approved execution does not ask the requester again."""
    d = kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]
    doc = d["document"]
    doc["version"] = d["version"] + 1
    doc["rules"].append({"name": "mq-rotate-needs-one", "effect": "allow", "principals": ["role:admin"],
                         "keys": ["mq-*"], "operations": ["key.rotate"], "require_quorum": 1})
    write_policy(kmsd, st, doc)
    key = uniq("mq-k")
    s = st.clock.next()
    assert st.a1.call("POST", "/v1/%s/keys/%s" % (st.tenant, key), {}, mfa=st.a1.code(s)).status_code == 200
    path = "/v1/%s/keys/%s/rotate" % (st.tenant, key)
    before = st.a1.call("GET", "/v1/sys/approvals").json()["data"]["keys"]  # the policy change's
    r = st.a1.call("POST", path, {})
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    after = st.a1.call("GET", "/v1/sys/approvals").json()["data"]["keys"]
    assert after == before, after  # refused before any pending request was made
    s = st.clock.next()
    r = st.a1.call("POST", path, {}, mfa=st.a1.code(s))
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]
    r = st.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {})
    assert r.status_code == 401 and "MFA required" in err(r), r.text
    s = st.clock.next()
    r = st.a2.call("POST", "/v1/sys/approvals/%s/approve" % aid, {}, mfa=st.a2.code(s))
    assert r.status_code == 200, r.text
    assert audit_record(kmsd, r.json()["request_id"])["mfa"] is True
    r = st.a1.call("GET", "/v1/%s/keys/%s" % (st.tenant, key))
    assert r.json()["data"]["latest_version"] == 2, r.text


def test_sealed_seed_bound_to_its_principal(kmsd, st):
    """A sealed seed copied into another principal's row is refused, never taken as a
    wrong code and never as a pass. The row's MAC (docs/THREAT-MODEL.md "Authority
    rows") refuses it before the seal is opened (403, logged as an integrity failure);
    the seal's own binding to its principal (AAD) is tested in tests/unit/test_mfa.c."""
    sqlite_only(kmsd, "edits the SQLite file")
    def failures_in_store():
        db = sqlite3.connect(kmsd.store_path, timeout=30)
        try:
            return db.execute("SELECT failures FROM principal_mfa WHERE principal_id = ?",
                              (ids[st.a2.name],)).fetchone()[0]
        finally:
            db.close()

    db = sqlite3.connect(kmsd.store_path, timeout=30)
    try:
        ids = dict(db.execute("SELECT name, id FROM principals").fetchall())
        (blob,) = db.execute("SELECT sealed_seed FROM principal_mfa WHERE principal_id = ?",
                             (ids["admin"],)).fetchone()
        db.execute("UPDATE principal_mfa SET sealed_seed = ? WHERE principal_id = ?", (blob, ids[st.a2.name]))
        db.commit()
    finally:
        db.close()
    path = "/v1/sys/tenants/%s/config" % st.tenant
    failures = failures_in_store()
    s = st.clock.next()
    for code in (st.a2.code(s), st.a1.code(s)):
        r = st.a2.call("POST", path, {"legal_hold": False}, mfa=code)
        assert r.status_code == 403, r.text
        assert "invalid" not in err(r)
    assert "principal_mfa row principal_id=%d fails its integrity MAC" % ids[st.a2.name] in kmsd.stderr()
    assert failures_in_store() == failures  # not counted as wrong codes
    s = st.clock.next()
    r = st.a1.call("POST", "/v1/sys/mfa/reset/" + st.a2.name, mfa=st.a1.code(s))
    assert r.status_code == 200, r.text


def test_mfa_max_age(kmsd, st):
    d = kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]
    doc, ver = d["document"], d["version"]
    for rule in doc["rules"]:
        if rule["name"] == "admin-management":
            rule["operations"].remove("tenant.config")
    doc["rules"].append({"name": "fresh-mfa-tenant-config", "effect": "allow", "principals": ["role:admin"],
                         "operations": ["tenant.config"], "conditions": {"mfa_max_age": 120}})
    doc["version"] = ver + 1
    write_policy(kmsd, st, doc)
    path = "/v1/sys/tenants/%s/config" % st.tenant
    body = {"legal_hold": False}
    # a1 passed a check just now: no code needed within 120 s
    r = st.a1.call("POST", path, body)
    assert r.status_code == 200, r.text
    # 300 s later the condition no longer holds: only the session's age stands between
    # a1 and an allow, so the answer asks for a code (401), it does not just refuse
    s = st.clock.next(gap=10)
    r = st.a1.call("POST", path, body)
    assert r.status_code == 401 and err(r).startswith("MFA required: send a TOTP code"), r.text
    assert "session has expired" in err(r), r.text
    # a principal no rule would allow, session or not, still gets the plain 403
    r = st.a1.call("POST", "/v1/%s/datakey/plaintext/nokey" % st.tenant, {})
    assert r.status_code == 403 and err(r) == "permission denied", r.text
    # a fresh verification makes it hold again
    r = st.a1.call("POST", "/v1/sys/mfa/verify", mfa=st.a1.code(s))
    assert r.status_code == 200 and r.json()["data"]["verified"] is True, r.text
    assert audit_record(kmsd, r.json()["request_id"])["mfa"] is True
    r = st.a1.call("POST", path, body)
    assert r.status_code == 200, r.text
    # back to the built-in rules
    builtin = json.loads(os.popen("%s default-policy" % kmsd.bin).read())
    builtin["version"] = ver + 2
    write_policy(kmsd, st, builtin)
    r = st.a1.call("POST", path, body)
    assert r.status_code == 401 and err(r).startswith("MFA required"), r.text
