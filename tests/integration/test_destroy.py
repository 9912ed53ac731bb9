"""Scheduled destruction, retention classes and legal holds (docs/KEY-LIFECYCLE.md),
with kmsd's test clock moved instead of sleeping: waiting periods, PHI retention,
legal holds placed before and during the wait, the blob gone from the SQLite file's
bytes, and nothing brought back by a restart."""

import base64
import glob
import hashlib
import json
import os
import sqlite3
import subprocess
import time

from conftest import b64, sqlite_only

KMSD_TEST_CLOCK = True
KMSD_EXTRA_OPTS = [("scheduler_interval", "1")]
DAY = 86400
SECRET = b"destroy PHI: MRN 0077"

_offset = {"now": 0}


def advance(kmsd, seconds):
    _offset["now"] += seconds
    kmsd.set_clock(_offset["now"])


def admin(kmsd, path, body=None):
    return kmsd.post(path, body if body is not None else {}, token=kmsd.admin_token)


def key_read(kmsd, t, k):
    r = kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def setup_key(kmsd, retention="phi", deletion_allowed=True):
    t = kmsd.create_tenant(retention=retention)
    k = kmsd.create_key(t)
    tok = kmsd.service([t])
    ct = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET)).json()["data"]["ciphertext"]
    kmsd.rotate(t, k)
    if deletion_allowed:
        r = admin(kmsd, "/v1/%s/keys/%s/config" % (t, k), {"deletion_allowed": True})
        assert r.status_code == 200, r.text
    return t, k, tok, ct


def schedule(kmsd, t, k, v, days=7, reason="erasure request 118"):
    return admin(kmsd, "/v1/%s/keys/%s/versions/%d/schedule-destroy" % (t, k, v),
                 {"days": days, "reason": reason})


def wait_state(kmsd, t, k, v, want, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = key_read(kmsd, t, k)["versions"][str(v)]["state"]
        if st == want:
            return st
        time.sleep(0.2)
    return st


def blob_of(kmsd, t, k, v):
    db = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True)
    try:
        row = db.execute(
            "SELECT v.blob FROM key_versions v JOIN keys k ON k.id = v.key_id "
            "JOIN tenants t ON t.id = k.tenant_id WHERE t.name = ? AND k.name = ? AND v.version = ?",
            (t, k, v)).fetchone()
    finally:
        db.close()
    return bytes(row[0])


def store_bytes(kmsd):
    out = b""
    for f in glob.glob(kmsd.store_path + "*"):
        with open(f, "rb") as fh:
            out += fh.read()
    return out


def audit_records(kmsd):
    with open(kmsd.audit_path) as f:
        return [json.loads(line) for line in f]


def test_schedule_refusals(kmsd):
    t, k, tok, ct = setup_key(kmsd, retention="non-phi", deletion_allowed=False)
    r = schedule(kmsd, t, k, 1)
    assert r.status_code == 409 and "deletion_allowed is false" in r.json()["errors"][0], r.text
    admin(kmsd, "/v1/%s/keys/%s/config" % (t, k), {"deletion_allowed": True})
    r = schedule(kmsd, t, k, 2)
    assert r.status_code == 409 and "active version: rotate" in r.json()["errors"][0], r.text
    for days in (6, 31, 0):
        r = schedule(kmsd, t, k, 1, days=days)
        assert r.status_code == 400 and "days must be between 7" in r.json()["errors"][0], r.text
    r = schedule(kmsd, t, k, 1, reason="")
    assert r.status_code == 400 and "reason" in r.json()["errors"][0]
    r = schedule(kmsd, t, k, 3)
    assert r.status_code == 404, r.text
    # a tenant's own minimum waiting period
    r = admin(kmsd, "/v1/sys/tenants/%s/config" % t, {"min_destroy_wait_days": 10})
    assert r.status_code == 200, r.text
    r = schedule(kmsd, t, k, 1, days=9)
    assert r.status_code == 400 and "between 10" in r.json()["errors"][0], r.text
    assert key_read(kmsd, t, k)["versions"]["1"]["state"] == "decrypt-only"
    assert kmsd.decrypt(tok, t, k, ciphertext=ct).status_code == 200
    # service principals cannot schedule
    r = kmsd.post("/v1/%s/keys/%s/versions/1/schedule-destroy" % (t, k), {"reason": "x"}, token=tok)
    assert r.status_code == 403


def test_non_phi_destroyed_after_wait(kmsd):
    sqlite_only(kmsd, "reads the blob bytes from the SQLite file")
    t, k, tok, ct = setup_key(kmsd, retention="non-phi")
    blob = blob_of(kmsd, t, k, 1)
    assert len(blob) == 40 and blob in store_bytes(kmsd)
    r = schedule(kmsd, t, k, 1, days=7)
    assert r.status_code == 200, r.text
    v1 = r.json()["data"]["versions"]["1"]
    assert v1["state"] == "pending-destruction" and v1["destroy_after"] > time.time() + 6 * DAY
    r = kmsd.decrypt(tok, t, k, ciphertext=ct)
    assert r.status_code == 409 and r.json()["errors"] == ["key version 1 is pending destruction"]
    r = schedule(kmsd, t, k, 1)
    assert r.status_code == 409 and "already pending" in r.json()["errors"][0]
    # six days later: still waiting (the scheduler runs every second)
    advance(kmsd, 6 * DAY)
    time.sleep(2.5)
    assert key_read(kmsd, t, k)["versions"]["1"]["state"] == "pending-destruction"
    # past the waiting period: destroyed by the scheduler
    advance(kmsd, DAY + 60)
    assert wait_state(kmsd, t, k, 1, "destroyed") == "destroyed"
    r = kmsd.decrypt(tok, t, k, ciphertext=ct)
    assert r.status_code == 409 and r.json()["errors"] == ["key version 1 destroyed"]
    assert kmsd.rewrap(tok, t, k, ciphertext=ct).status_code == 409
    # the wrapped KEK is gone from the database file and its WAL, byte for byte
    assert blob not in store_bytes(kmsd)
    assert blob_of(kmsd, t, k, 1) == b"\x00"
    # version 2 is untouched
    assert kmsd.datakey(tok, t, k).status_code == 200
    recs = [r for r in audit_records(kmsd) if r["operation"] == "key.version.destroy" and r["key"] == k]
    assert len(recs) == 1 and recs[0]["principal"] == "kmsd-scheduler" and recs[0]["outcome"] == "allow"
    ev = kmsd.get("/v1/%s/keys/%s/history" % (t, k), token=kmsd.admin_token).json()["data"]["events"]
    assert [e["event"] for e in ev][-2:] == ["schedule_destroy", "destroy"]
    # a signed erasure receipt, verifiable with openssl and the exported audit key alone
    r = kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (t, k), token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    rc = d["receipt"]
    assert (rc["format"], rc["tenant"], rc["key"], rc["version"]) == ("kmsd-erasure-receipt-v1", t, k, 1)
    assert rc["requested_by"] == "admin" and rc["reason"] == "erasure request 118"
    assert rc["wrapped_key_sha256"] == hashlib.sha256(blob).hexdigest()
    assert rc["approvals"] == []
    assert json.loads(d["receipt_text"]) == rc
    work = os.path.join(kmsd.tmp, "receipt-%s" % k)
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "receipt.json"), "wb") as f:
        f.write(d["receipt_text"].encode())
    with open(os.path.join(work, "sig.der"), "wb") as f:
        f.write(base64.b64decode(d["signature"]))
    verify = ["openssl", "dgst", "-sha256", "-verify", kmsd.audit_path + ".pub.pem", "-signature",
              os.path.join(work, "sig.der"), os.path.join(work, "receipt.json")]
    out = subprocess.run(verify, capture_output=True, text=True)
    assert out.returncode == 0 and "Verified OK" in out.stdout, out.stdout + out.stderr
    with open(os.path.join(work, "receipt.json"), "wb") as f:  # one changed byte fails
        f.write(d["receipt_text"].replace('"version":1', '"version":2').encode())
    assert subprocess.run(verify, capture_output=True).returncode != 0
    assert kmsd.get("/v1/%s/keys/%s/versions/2/receipt" % (t, k), token=kmsd.admin_token).status_code == 404
    assert kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (t, k), token=tok).status_code == 403
    # cannot be cancelled or enabled any more
    r = admin(kmsd, "/v1/%s/keys/%s/versions/1/cancel-destroy" % (t, k), {"reason": "oops"})
    assert r.status_code == 409, r.text
    r = admin(kmsd, "/v1/%s/keys/%s/versions/1/enable" % (t, k), {"reason": "oops"})
    assert r.status_code == 409, r.text
    # a restart does not bring it back
    kmsd.stop()
    kmsd.start()
    assert key_read(kmsd, t, k)["versions"]["1"]["state"] == "destroyed"
    assert kmsd.decrypt(tok, t, k, ciphertext=ct).status_code == 409
    assert blob not in store_bytes(kmsd)


def test_cancel_leaves_version_disabled(kmsd):
    t, k, tok, ct = setup_key(kmsd, retention="non-phi")
    assert schedule(kmsd, t, k, 1).status_code == 200
    r = admin(kmsd, "/v1/%s/keys/%s/versions/1/cancel-destroy" % (t, k))
    assert r.status_code == 400  # reason required
    r = admin(kmsd, "/v1/%s/keys/%s/versions/1/cancel-destroy" % (t, k), {"reason": "subject withdrew"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["versions"]["1"]["state"] == "disabled"
    advance(kmsd, 8 * DAY)
    time.sleep(2.5)
    assert key_read(kmsd, t, k)["versions"]["1"]["state"] == "disabled"
    assert admin(kmsd, "/v1/%s/keys/%s/versions/1/enable" % (t, k), {"reason": "r"}).status_code == 200
    assert kmsd.decrypt(tok, t, k, ciphertext=ct).status_code == 200


def test_phi_retention(kmsd):
    t, k, tok, ct = setup_key(kmsd, retention="phi")
    r = schedule(kmsd, t, k, 1, days=30)
    assert r.status_code == 409, r.text
    msg = r.json()["errors"][0]
    assert "keeps PHI key versions for 2190 days" in msg and "can be destroyed from 20" in msg, msg
    assert key_read(kmsd, t, k)["versions"]["1"]["state"] == "decrypt-only"
    # PHI tenants cannot shorten retention below the floor; non-PHI settings are free
    r = admin(kmsd, "/v1/sys/tenants/%s/config" % t, {"retention_days": 365})
    assert r.status_code == 400 and "2190" in r.json()["errors"][0], r.text
    # six years on, destruction is allowed and happens after the wait
    advance(kmsd, 2190 * DAY)
    r = schedule(kmsd, t, k, 1, days=7)
    assert r.status_code == 200, r.text
    advance(kmsd, 7 * DAY + 60)
    assert wait_state(kmsd, t, k, 1, "destroyed") == "destroyed"


def test_legal_hold(kmsd):
    t, k, tok, ct = setup_key(kmsd, retention="non-phi")
    r = admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": True, "reason": "litigation 2026-17"})
    assert r.status_code == 200 and r.json()["data"]["legal_hold"] is True, r.text
    assert admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": True, "reason": "x"}).status_code == 409
    r = schedule(kmsd, t, k, 1)
    assert r.status_code == 409 and "key \"%s\" is under legal hold" % k in r.json()["errors"][0], r.text
    assert admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": False, "reason": "settled"}).status_code == 200
    # a tenant-wide hold blocks too
    assert admin(kmsd, "/v1/sys/tenants/%s/config" % t, {"legal_hold": True}).status_code == 200
    r = schedule(kmsd, t, k, 1)
    assert r.status_code == 409 and "tenant \"%s\" is under legal hold" % t in r.json()["errors"][0], r.text
    assert admin(kmsd, "/v1/sys/tenants/%s/config" % t, {"legal_hold": False}).status_code == 200


def test_hold_during_wait_calls_destruction_off(kmsd):
    sqlite_only(kmsd, "reads the SQLite file")
    t, k, tok, ct = setup_key(kmsd, retention="non-phi")
    assert schedule(kmsd, t, k, 1).status_code == 200
    assert admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": True, "reason": "subpoena"}).status_code == 200
    advance(kmsd, 8 * DAY)
    assert wait_state(kmsd, t, k, 1, "disabled") == "disabled"
    ev = kmsd.get("/v1/%s/keys/%s/history" % (t, k), token=kmsd.admin_token).json()["data"]["events"]
    assert ev[-1]["event"] == "destroy_blocked" and "legal hold" in ev[-1]["reason"]
    recs = [r for r in audit_records(kmsd) if r["operation"] == "key.version.destroy" and r["key"] == k]
    assert [r["outcome"] for r in recs] == ["deny"]
    assert blob_of(kmsd, t, k, 1) != b"\x00"


def test_health_shows_test_clock(kmsd):
    assert kmsd.get("/v1/sys/health").json().get("test_clock") is True
