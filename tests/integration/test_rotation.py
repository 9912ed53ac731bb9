"""Automatic rotation (docs/KEY-LIFECYCLE.md): by use count, with counter blocks
reserved in the store before use, under concurrent load with manual rotations mixed in;
and by age, through auto_rotate_period and the scheduler, with the test clock."""

import collections
import json
import sqlite3
import threading
import time

from conftest import b64, pg_query

LIMIT = 40
KMSD_TEST_CLOCK = True
KMSD_EXTRA_OPTS = [("max_encryptions_per_version", str(LIMIT)), ("scheduler_interval", "1")]
_offset = {"now": 0}


def reserved_per_version(kmsd, t, k):
    if kmsd.store_uri:
        assert t.replace("-", "").isalnum() and k.replace("-", "").isalnum()
        rows = pg_query(kmsd.store_uri,
                        "SELECT v.version, v.enc_reserved FROM key_versions v JOIN keys k ON k.id = v.key_id "
                        "JOIN tenants t ON t.id = k.tenant_id WHERE t.name = '%s' AND k.name = '%s'" % (t, k))
        return {int(a): int(b) for a, b in rows}
    db = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True)
    try:
        rows = db.execute(
            "SELECT v.version, v.enc_reserved FROM key_versions v JOIN keys k ON k.id = v.key_id "
            "JOIN tenants t ON t.id = k.tenant_id WHERE t.name = ? AND k.name = ?", (t, k)).fetchall()
    finally:
        db.close()
    return dict(rows)


def latest(kmsd, t, k):
    return kmsd.get("/v1/%s/keys/%s" % (t, k), token=kmsd.admin_token).json()["data"]["latest_version"]


def test_usage_limit_rotation_under_load(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    results, errors = [], []
    lock = threading.Lock()

    def worker(n):
        for i in range(n):
            ctx = {"purpose": "treatment", "i": str(i)}
            r = kmsd.datakey(tok, t, k, encryption_context=ctx)
            with lock:
                if r.status_code == 200:
                    d = r.json()["data"]
                    results.append((d["ciphertext"], d["plaintext"], ctx, d["key_version"]))
                else:
                    errors.append(r.text)

    def rotator():
        for _ in range(5):
            kmsd.rotate(t, k)
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(50,)) for _ in range(6)] + [threading.Thread(target=rotator)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(results) == 300
    # never more encryptions under a version than its limit, nor than what was reserved
    per_version = collections.Counter(int(ct.split(":")[1][1:]) for ct, _, _, _ in results)
    reserved = reserved_per_version(kmsd, t, k)
    for v, n in per_version.items():
        assert n <= reserved[v] <= LIMIT, (v, n, reserved[v])
    assert latest(kmsd, t, k) >= 300 // LIMIT
    # every ciphertext still decrypts, to its own data key
    for ct, pt, ctx, _ in results:
        r = kmsd.decrypt(tok, t, k, ciphertext=ct, encryption_context=ctx)
        assert r.status_code == 200 and r.json()["data"]["plaintext"] == pt, r.text
    with open(kmsd.audit_path) as f:
        recs = [json.loads(line) for line in f]
    auto = [r for r in recs if r["operation"] == "key.rotate" and r["key"] == k and r["principal"] == "kmsd-scheduler"]
    assert auto and all("usage limit" in r["reason"] for r in auto)


def test_pinned_version_at_limit_is_refused(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    for _ in range(LIMIT):
        assert kmsd.encrypt(tok, t, k, plaintext=b64(b"x"), key_version=1).status_code == 200
    r = kmsd.encrypt(tok, t, k, plaintext=b64(b"x"), key_version=1)
    assert r.status_code == 409 and "usage limit" in r.json()["errors"][0], r.text
    assert latest(kmsd, t, k) == 1
    r = kmsd.encrypt(tok, t, k, plaintext=b64(b"x"))
    assert r.status_code == 200 and r.json()["data"]["key_version"] == 2, r.text


def test_counts_survive_restart(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    for _ in range(10):
        assert kmsd.datakey(tok, t, k).status_code == 200
    before = reserved_per_version(kmsd, t, k)[1]
    assert 10 <= before <= LIMIT
    kmsd.stop()
    kmsd.start()
    cts = [kmsd.datakey(tok, t, k).json()["data"]["ciphertext"] for _ in range(LIMIT)]
    # the slots reserved before the restart are not handed out again
    n1 = sum(1 for ct in cts if ct.startswith("vault:v1:"))
    assert n1 <= LIMIT - before
    assert reserved_per_version(kmsd, t, k)[1] <= LIMIT


def test_auto_rotate_by_age(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    r = kmsd.post("/v1/%s/keys/%s/config" % (t, k), {"auto_rotate_period": 3600}, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    time.sleep(1.5)
    assert latest(kmsd, t, k) == 1
    _offset["now"] += 3601
    kmsd.set_clock(_offset["now"])
    deadline = time.monotonic() + 10
    while latest(kmsd, t, k) == 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert latest(kmsd, t, k) == 2
    # a revoked key is left alone
    assert kmsd.post("/v1/%s/keys/%s/revoke" % (t, k), {"reason": "r"}, token=kmsd.admin_token).status_code == 200
    _offset["now"] += 7300
    kmsd.set_clock(_offset["now"])
    time.sleep(2.5)
    assert latest(kmsd, t, k) == 2
    with open(kmsd.audit_path) as f:
        recs = [json.loads(line) for line in f]
    auto = [r for r in recs if r["operation"] == "key.rotate" and r["key"] == k]
    assert [(r["principal"], r["reason"]) for r in auto] == [("kmsd-scheduler", "auto_rotate_period passed")]
