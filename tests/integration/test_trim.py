"""Vault's trim (`POST /v1/<t>/keys/<k>/trim {"min_available_version"}`) under kmsd's
destruction rules (docs/KEY-LIFECYCLE.md "Trim"): the versions below the floor are
scheduled for destruction as schedule-destroy would, refused whole (409, nothing
scheduled) when deletion_allowed, a legal hold or PHI retention forbids any of them;
Vault's bounds are 400s that change nothing. The test clock moves instead of sleeping."""

import time

from conftest import b64

KMSD_TEST_CLOCK = True
KMSD_EXTRA_OPTS = [("scheduler_interval", "1")]
DAY = 86400

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


def states(kmsd, t, k):
    d = key_read(kmsd, t, k)
    return {int(v): s["state"] for v, s in d["versions"].items()}


def trim(kmsd, t, k, body):
    return admin(kmsd, "/v1/%s/keys/%s/trim" % (t, k), body)


def setup_key(kmsd, retention="non-phi", versions=4, min_dec=3, deletion_allowed=True):
    t = kmsd.create_tenant(retention=retention)
    k = kmsd.create_key(t)
    tok = kmsd.service([t])
    cts = {}
    for v in range(1, versions + 1):
        r = kmsd.encrypt(tok, t, k, plaintext=b64(b"trim v%d" % v))
        assert r.status_code == 200, r.text
        cts[v] = r.json()["data"]["ciphertext"]
        if v < versions:
            kmsd.rotate(t, k)
    r = admin(kmsd, "/v1/%s/keys/%s/config" % (t, k),
              {"deletion_allowed": deletion_allowed, "min_decryption_version": min_dec})
    assert r.status_code == 200, r.text
    return t, k, tok, cts


def test_bad_input_is_400_and_changes_nothing(kmsd):
    t, k, tok, cts = setup_key(kmsd)
    before = states(kmsd, t, k)
    cases = [
        ({"min_available_version": 3}, "reason"),
        ({"reason": "x"}, "min_available_version"),
        ({"min_available_version": 0, "reason": "x"}, "min_available_version"),
        ({"min_available_version": -1, "reason": "x"}, "min_available_version"),
        ({"min_available_version": "three", "reason": "x"}, "min_available_version"),
        ({"min_available_version": 5, "reason": "x"}, "latest version (4)"),
        ({"min_available_version": 4, "reason": "x"}, "min_decryption_version (3)"),
        ({"min_available_version": 3, "reason": "x", "days": 6}, "days must be between 7"),
        ({"min_available_version": 3, "reason": "x", "days": 31}, "days must be between 7"),
        ({"min_available_version": 3, "reason": "x", "extra": 1}, "extra"),
    ]
    for body, words in cases:
        r = trim(kmsd, t, k, body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["errors"][0], (body, r.text)
    assert states(kmsd, t, k) == before
    r = admin(kmsd, "/v1/%s/keys/nope/trim" % t, {"min_available_version": 1, "reason": "x"})
    assert r.status_code == 404, r.text
    r = kmsd.post("/v1/%s/keys/%s/trim" % (t, k), {"min_available_version": 3, "reason": "x"},
                  token=tok)
    assert r.status_code == 403, r.text
    assert states(kmsd, t, k) == before


def test_trim_schedules_destruction_below_the_floor(kmsd):
    t, k, tok, cts = setup_key(kmsd)
    r = trim(kmsd, t, k, {"min_available_version": 3, "days": 7, "reason": "GDPR erasure #91"})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["min_available_version"] == 3
    assert d["scheduled_versions"] == [1, 2]
    assert {int(v): s["state"] for v, s in d["versions"].items()} == {
        1: "pending-destruction", 2: "pending-destruction", 3: "decrypt-only", 4: "active"}
    ev = kmsd.get("/v1/%s/keys/%s/history" % (t, k), token=kmsd.admin_token).json()["data"]["events"]
    trims = [e for e in ev if e["event"] == "trim"]
    assert [e["version"] for e in trims] == [1, 2]
    assert all(e["reason"] == "GDPR erasure #91" for e in trims)
    # again: nothing new to schedule, same answer
    r = trim(kmsd, t, k, {"min_available_version": 3, "days": 7, "reason": "again"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["scheduled_versions"] == []
    assert len([e for e in kmsd.get("/v1/%s/keys/%s/history" % (t, k),
                                    token=kmsd.admin_token).json()["data"]["events"]
                if e["event"] == "trim"]) == 2
    # each version can still be called off on its own
    r = admin(kmsd, "/v1/%s/keys/%s/versions/2/cancel-destroy" % (t, k), {"reason": "kept"})
    assert r.status_code == 200, r.text
    # after the wait the scheduler destroys version 1, with a receipt naming the trim
    advance(kmsd, 7 * DAY + 60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and states(kmsd, t, k)[1] != "destroyed":
        time.sleep(0.2)
    assert states(kmsd, t, k) == {1: "destroyed", 2: "disabled", 3: "decrypt-only", 4: "active"}
    r = kmsd.get("/v1/%s/keys/%s/versions/1/receipt" % (t, k), token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    rec = r.json()["data"]["receipt"]
    assert rec["reason"] == "GDPR erasure #91" and rec["requested_by"] == "admin"
    r = kmsd.post("/v1/%s/decrypt/%s" % (t, k), {"ciphertext": cts[4]}, token=tok)
    assert r.status_code == 200, r.text


def test_trim_refused_without_deletion_allowed(kmsd):
    t, k, tok, cts = setup_key(kmsd, deletion_allowed=False)
    before = states(kmsd, t, k)
    r = trim(kmsd, t, k, {"min_available_version": 3, "reason": "x"})
    assert r.status_code == 409, r.text
    assert "deletion_allowed is false" in r.json()["errors"][0]
    assert states(kmsd, t, k) == before


def test_trim_refused_by_phi_retention(kmsd):
    t, k, tok, cts = setup_key(kmsd, retention="phi")
    before = states(kmsd, t, k)
    r = trim(kmsd, t, k, {"min_available_version": 3, "reason": "cleanup"})
    assert r.status_code == 409, r.text
    msg = r.json()["errors"][0]
    assert "trim refused at version 1, nothing was scheduled" in msg, msg
    assert "keeps PHI key versions" in msg and "can be destroyed from" in msg, msg
    assert states(kmsd, t, k) == before


def test_trim_refused_by_legal_hold(kmsd):
    t, k, tok, cts = setup_key(kmsd)
    r = admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": True, "reason": "litigation 7"})
    assert r.status_code == 200, r.text
    before = states(kmsd, t, k)
    r = trim(kmsd, t, k, {"min_available_version": 3, "reason": "x"})
    assert r.status_code == 409, r.text
    assert "legal hold" in r.json()["errors"][0]
    assert states(kmsd, t, k) == before
    # a tenant-wide hold too
    admin(kmsd, "/v1/%s/keys/%s/legal-hold" % (t, k), {"hold": False, "reason": "settled"})
    r = admin(kmsd, "/v1/sys/tenants/%s/config" % t, {"legal_hold": True})
    assert r.status_code == 200, r.text
    r = trim(kmsd, t, k, {"min_available_version": 3, "reason": "x"})
    assert r.status_code == 409 and "tenant" in r.json()["errors"][0], r.text
    assert states(kmsd, t, k) == before


def test_trim_in_the_audit_log(kmsd):
    import json
    with open(kmsd.audit_path) as f:
        recs = [json.loads(x) for x in f if x.strip()]
    trims = [x for x in recs if x.get("operation") == "key.trim"]
    assert any(x["status"] == 200 for x in trims)
    assert any(x["status"] == 409 for x in trims)
    assert any(x["status"] == 400 for x in trims)
