"""Authority rows carry a MAC by the token's store MAC key (docs/THREAT-MODEL.md
"Authority rows"): someone who can write the SQLite store but does not hold the token
PIN cannot mint principals or tokens, raise a role, widen a scope, move a token or a
certificate mapping to another principal, or install a policy. Each refusal is the
answer an unknown credential gets (403, same body), names the table and row in the
log (never a token), counts kmsd_store_integrity_failures_total and is audited as
store.integrity. A store whose rows predate the MACs gets them once at start (trust on
first use); a forged policy version makes kmsd refuse to start."""

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import struct
import subprocess
import time

from conftest import uniq

KMSD_SQLITE_ONLY = "edits authority rows in the SQLite file as an insider would"


def db(kmsd):
    c = sqlite3.connect(kmsd.store_path, timeout=30)
    c.execute("PRAGMA foreign_keys = ON")
    return c


def pid_of(kmsd, name):
    c = db(kmsd)
    try:
        return c.execute("SELECT id FROM principals WHERE name = ?", (name,)).fetchone()[0]
    finally:
        c.close()


def tenant_id(kmsd, name):
    c = db(kmsd)
    try:
        return c.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()[0]
    finally:
        c.close()


def execute(kmsd, sql, args=()):
    c = db(kmsd)
    try:
        c.execute(sql, args)
        c.commit()
    finally:
        c.close()


def integrity_failures(kmsd):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "prometheus"})
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith("kmsd_store_integrity_failures_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no kmsd_store_integrity_failures_total in the metrics")


def integrity_records(kmsd):
    with open(kmsd.audit_path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    return [r for r in recs if r.get("operation") == "store.integrity"]


def forged_token():
    acc = secrets.token_hex(8)
    tok = "kms.%s.%s" % (acc, secrets.token_hex(32))
    return tok, acc, hashlib.sha256(tok.encode()).digest()


def lookup_self(kmsd, tok):
    return kmsd.get("/v1/auth/token/lookup-self", token=tok)


def test_minted_principal_and_token_refused(kmsd):
    """(a) A principal and a token row inserted with a hash of the insider's choosing."""
    before_count, before_recs = integrity_failures(kmsd), len(integrity_records(kmsd))
    tok, acc, h = forged_token()
    name = uniq("evil")
    c = db(kmsd)
    cur = c.execute("INSERT INTO principals (name, role, created) VALUES (?, 'admin', 0)", (name,))
    c.execute("INSERT INTO api_tokens (accessor, principal_id, hash, created) VALUES (?, ?, ?, 0)",
              (acc, cur.lastrowid, h))
    c.commit()
    c.close()
    r = lookup_self(kmsd, tok)
    assert r.status_code == 403, r.text
    # the same answer as a token that does not exist at all
    unknown = lookup_self(kmsd, forged_token()[0])
    assert unknown.status_code == 403 and r.json()["errors"] == unknown.json()["errors"]
    assert kmsd.post("/v1/sys/tenants/" + uniq("t"), {}, token=tok).status_code == 403
    # logged by table and row, never the token; counted; audited
    err = kmsd.stderr()
    assert "api_tokens row accessor=%s has no integrity MAC" % acc in err
    assert tok not in err and tok.split(".")[2] not in err
    assert integrity_failures(kmsd) >= before_count + 2
    recs = integrity_records(kmsd)[before_recs:]
    assert recs and all(x["outcome"] == "deny" and x["status"] == 403 for x in recs), recs
    assert any("api_tokens" in x["reason"] and acc in x["reason"] for x in recs), recs
    assert all(tok.split(".")[2] not in json.dumps(x) for x in recs)


def test_role_raised_refused(kmsd):
    """(b) A service principal's role changed to admin in the store."""
    t, k, _ = kmsd.setup_tenant_key()
    name = kmsd.create_principal(tenants=[t])
    tok = kmsd.create_token(name)[0]
    assert lookup_self(kmsd, tok).status_code == 200
    assert kmsd.datakey(tok, t, k).status_code == 200
    execute(kmsd, "UPDATE principals SET role = 'admin' WHERE name = ?", (name,))
    assert lookup_self(kmsd, tok).status_code == 403
    assert kmsd.post("/v1/sys/tenants/" + uniq("t"), {}, token=tok).status_code == 403
    assert kmsd.datakey(tok, t, k).status_code == 403
    assert "principals row id=%d fails its integrity MAC" % pid_of(kmsd, name) in kmsd.stderr()
    # put back as kmsd wrote it: the row verifies again
    execute(kmsd, "UPDATE principals SET role = 'service' WHERE name = ?", (name,))
    assert kmsd.datakey(tok, t, k).status_code == 200


def test_scope_row_added_refused(kmsd):
    """(c) A principal_tenants row added: the other tenant is refused (and, since the
    principal's scope no longer verifies as a whole, so is its own)."""
    t, k, tok = kmsd.setup_tenant_key()
    other = kmsd.create_tenant()
    ok = kmsd.create_key(other)
    c = db(kmsd)
    pid = c.execute("SELECT p.id FROM principals p JOIN principal_tenants pt ON pt.principal_id = p.id "
                    "WHERE pt.tenant_id = ?", (tenant_id(kmsd, t),)).fetchone()[0]
    # with no MAC, and with the MAC of the principal's genuine scope row
    mac = c.execute("SELECT mac FROM principal_tenants WHERE principal_id = ?", (pid,)).fetchone()[0]
    assert mac is not None and len(mac) == 32
    c.execute("INSERT INTO principal_tenants (principal_id, tenant_id, mac) VALUES (?, ?, ?)",
              (pid, tenant_id(kmsd, other), mac))
    c.commit()
    c.close()
    assert kmsd.datakey(tok, other, ok).status_code == 403
    assert kmsd.datakey(tok, t, k).status_code == 403
    assert "principal_tenants row principal_id=%d,tenant_id=%d fails its integrity MAC" % (
        pid, tenant_id(kmsd, other)) in kmsd.stderr()
    execute(kmsd, "DELETE FROM principal_tenants WHERE principal_id = ? AND tenant_id = ?",
            (pid, tenant_id(kmsd, other)))
    assert kmsd.datakey(tok, t, k).status_code == 200


def test_mac_copied_to_another_principal_refused(kmsd):
    """(e) A valid token row moved to the admin, and a valid MAC copied onto a forged row."""
    t, k, tok = kmsd.setup_tenant_key()
    acc = tok.split(".")[1]
    admin_id = admin_principal_id(kmsd)
    c = db(kmsd)
    own_pid = c.execute("SELECT principal_id FROM api_tokens WHERE accessor = ?", (acc,)).fetchone()[0]
    c.execute("UPDATE api_tokens SET principal_id = ? WHERE accessor = ?", (admin_id, acc))
    c.commit()
    assert kmsd.post("/v1/sys/tenants/" + uniq("t"), {}, token=tok).status_code == 403
    assert lookup_self(kmsd, tok).status_code == 403
    c.execute("UPDATE api_tokens SET principal_id = ? WHERE accessor = ?", (own_pid, acc))
    c.commit()
    assert kmsd.datakey(tok, t, k).status_code == 200
    # a new row for the admin, with the insider's hash and the genuine row's MAC
    ftok, facc, fh = forged_token()
    c.execute("INSERT INTO api_tokens (accessor, principal_id, hash, created, expires, revoked, mac) "
              "SELECT ?, ?, ?, created, expires, revoked, mac FROM api_tokens WHERE accessor = ?",
              (facc, admin_id, fh, acc))
    # and the admin's own MAC on a row naming the admin with the insider's hash
    admin_acc = kmsd.admin_token.split(".")[1]
    ftok2, facc2, fh2 = forged_token()
    c.execute("INSERT INTO api_tokens (accessor, principal_id, hash, created, expires, revoked, mac) "
              "SELECT ?, principal_id, ?, created, expires, revoked, mac FROM api_tokens WHERE accessor = ?",
              (facc2, fh2, admin_acc))
    c.commit()
    c.close()
    assert lookup_self(kmsd, ftok).status_code == 403
    assert lookup_self(kmsd, ftok2).status_code == 403
    assert "api_tokens row accessor=%s fails its integrity MAC" % facc2 in kmsd.stderr()


def admin_principal_id(kmsd):
    c = db(kmsd)
    try:
        return c.execute("SELECT principal_id FROM api_tokens WHERE accessor = ?",
                         (kmsd.admin_token.split(".")[1],)).fetchone()[0]
    finally:
        c.close()


def test_revoked_token_unrevoked_refused(kmsd):
    """A revoked token flipped back to live in the store stays refused."""
    t, k, tok = kmsd.setup_tenant_key()
    acc = tok.split(".")[1]
    r = kmsd.post("/v1/sys/tokens/revoke", {"accessor": acc}, token=kmsd.admin_token)
    assert r.status_code == 200 and r.json()["data"]["revoked"] is True, r.text
    assert kmsd.datakey(tok, t, k).status_code == 403
    execute(kmsd, "UPDATE api_tokens SET revoked = 0 WHERE accessor = ?", (acc,))
    assert kmsd.datakey(tok, t, k).status_code == 403


def totp(secret, step):
    """RFC 6238, HMAC-SHA-1, 6 digits (as in test_mfa.py)."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def test_mfa_row_edited_refused(kmsd):
    """The MFA row's seed, state and recovery codes are MAC'd too: recovery-code hashes of
    the insider's choosing (or any edit of those columns) are refused, not used."""
    name = kmsd.create_principal(role="admin")
    tok = kmsd.create_token(name)[0]
    r = kmsd.post("/v1/sys/mfa/enroll", {}, token=tok)
    assert r.status_code == 200, r.text
    secret = r.json()["data"]["secret"]
    # confirm (pending -> active: the row is checked, changed and MAC'd again in one go)
    step = int(time.time()) // 30
    r = kmsd.post("/v1/sys/mfa/confirm", {"code": totp(secret, step)}, token=tok)
    if r.status_code != 200:  # the step turned over between the two lines
        r = kmsd.post("/v1/sys/mfa/confirm", {"code": totp(secret, int(time.time()) // 30)}, token=tok)
    assert r.status_code == 200, r.text
    status = kmsd.get("/v1/sys/mfa/status", token=tok)
    assert status.status_code == 200 and status.json()["data"]["state"] == "active", status.text
    pid = pid_of(kmsd, name)
    c = db(kmsd)
    genuine = c.execute("SELECT recovery FROM principal_mfa WHERE principal_id = ?", (pid,)).fetchone()[0]
    c.close()
    execute(kmsd, "UPDATE principal_mfa SET recovery = ? WHERE principal_id = ?", (genuine[:-8] + "00000000", pid))
    assert kmsd.get("/v1/sys/mfa/status", token=tok).status_code == 403
    assert kmsd.get("/v1/sys/mfa/status/" + name, token=kmsd.admin_token).status_code == 403
    assert "principal_mfa row principal_id=%d fails its integrity MAC" % pid in kmsd.stderr()
    execute(kmsd, "UPDATE principal_mfa SET recovery = ? WHERE principal_id = ?", (genuine, pid))
    assert kmsd.get("/v1/sys/mfa/status", token=tok).status_code == 200
    # the counters are not MAC'd (they change on every check): unlocking by hand works
    execute(kmsd, "UPDATE principal_mfa SET failures = 0, locked = 0 WHERE principal_id = ?", (pid,))
    assert kmsd.get("/v1/sys/mfa/status", token=tok).status_code == 200


AUTH_TABLES = ("principals", "api_tokens", "principal_tenants", "policies", "principal_certs", "principal_mfa")


def _null_all_macs(kmsd):
    c = db(kmsd)
    for table in AUTH_TABLES:
        c.execute("UPDATE %s SET mac = NULL" % table)
    c.execute("DELETE FROM meta WHERE k = 'authority_macs'")
    c.commit()
    c.close()


def _count_null_macs(kmsd):
    c = db(kmsd)
    try:
        return sum(c.execute("SELECT count(*) FROM %s WHERE mac IS NULL" % t).fetchone()[0]
                   for t in AUTH_TABLES)
    finally:
        c.close()


def test_first_start_macs_older_rows(kmsd):
    """(f) A store whose authority rows predate the MACs (NULL, no meta flag): kmsd MACs
    them once at start, logs and audits it, and they work; a NULL added afterwards is an
    attack, not an old row."""
    t, k, tok = kmsd.setup_tenant_key()
    # the rows test (a) forged are deleted first: first use trusts what is there
    c = db(kmsd)
    c.execute("DELETE FROM api_tokens WHERE mac IS NULL")
    c.execute("DELETE FROM principals WHERE mac IS NULL AND id NOT IN (SELECT principal_id FROM api_tokens)")
    c.execute("DELETE FROM api_tokens WHERE length(mac) = 32 AND accessor NOT IN (?, ?)",
              (tok.split(".")[1], kmsd.admin_token.split(".")[1]))
    c.commit()
    c.close()
    rc, err = kmsd.stop()
    assert rc == 0, err[-3000:]
    _null_all_macs(kmsd)
    assert _count_null_macs(kmsd) > 0
    recs_before = len(integrity_records(kmsd))
    kmsd.start()
    assert _count_null_macs(kmsd) == 0
    c = db(kmsd)
    assert c.execute("SELECT v FROM meta WHERE k = 'authority_macs'").fetchone()[0] == "1"
    c.close()
    assert "MAC'd for the first time (trust on first use)" in kmsd.stderr()
    recs = integrity_records(kmsd)[recs_before:]
    assert any(r["outcome"] == "allow" and "first time" in r["reason"] for r in recs), recs
    assert kmsd.datakey(tok, t, k).status_code == 200
    assert lookup_self(kmsd, kmsd.admin_token).status_code == 200
    c = db(kmsd)
    mfa_rows = c.execute("SELECT count(*) FROM principal_mfa").fetchone()[0]
    c.close()
    assert mfa_rows >= 1  # the enrolment of test_mfa_row_edited_refused, MAC'd again
    # from now on a row without a MAC is refused
    ftok, facc, fh = forged_token()
    execute(kmsd, "INSERT INTO api_tokens (accessor, principal_id, hash, created) VALUES (?, ?, ?, 0)",
            (facc, admin_principal_id(kmsd), fh))
    assert lookup_self(kmsd, ftok).status_code == 403


def test_forged_policy_refuses_start(kmsd):
    """(d) A new policy version inserted in the store: kmsd, at its next start, refuses
    to start (fail closed: neither the forged text nor an older version is served)."""
    c = db(kmsd)
    ver, text = c.execute("SELECT version, text FROM policies ORDER BY version DESC LIMIT 1").fetchone()
    doc = json.loads(text)
    doc["version"] = ver + 1
    # with the MAC of the genuine latest version copied onto it
    c.execute("INSERT INTO policies (version, text, principal, created, mac) "
              "SELECT ?, ?, 'insider', 0, mac FROM policies WHERE version = ?", (ver + 1, json.dumps(doc), ver))
    c.commit()
    c.close()
    # a running kmsd does not reread the policy: it goes on with the one it verified
    assert kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]["version"] == ver
    rc, err = kmsd.stop()
    assert rc == 0, err[-3000:]
    r = subprocess.run([kmsd.bin, "-c", kmsd.conf], env=kmsd.env, cwd=kmsd.tmp, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stderr[-3000:]
    assert "policies row version=%d fails its integrity MAC" % (ver + 1) in r.stderr, r.stderr[-3000:]
    assert "refusing to start" in r.stderr, r.stderr[-3000:]
    # the operator removes the forged row (docs/OPERATIONS.md): kmsd starts again
    execute(kmsd, "DELETE FROM policies WHERE version = ?", (ver + 1,))
    kmsd.start()
    assert kmsd.get("/v1/sys/policy", token=kmsd.admin_token).json()["data"]["version"] == ver
    time.sleep(0)
