"""Upgrades: a deployment made by an older kmsd (tests/fixtures/schema6: store schema 6,
its SoftHSM2 token and audit log) is opened by this kmsd. Expected: the store migrates
forward in place (6 -> current, each step in a transaction), every ciphertext the old
version handed out still decrypts, its tokens still work, key states survive, the audit
chain continues in the same file and verifies across the versions, and a store newer
than this kmsd is refused."""

import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from conftest import PG_URI, Kmsd, kmsd_bin, sanitizer_findings

pytestmark = pytest.mark.skipif(bool(PG_URI), reason="SQLite store only: upgrades SQLite files of older releases")

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "schema6")
KMSCTL = os.path.join(os.path.dirname(kmsd_bin()), "kmsctl")


def schema_version(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("SELECT version FROM schema_version").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A kmsd started on a copy of the fixture (no init: it is an existing deployment)."""
    tmp = tmp_path_factory.mktemp("upgrade")
    k = Kmsd(tmp)
    # A segment's age counts from its first record (docs/FORMATS.md), and the fixture's
    # records are from 2026-12-02: with the default audit_segment_seconds (1 day) kmsd
    # would start a new segment at once whenever the suite runs a day or more later, and
    # the chain would continue in audit.log.1 rather than in the old file.
    k.extra_opts = [("audit_segment_seconds", "0")]
    k.provision()  # fresh certificates and config; its new token is replaced below
    hsm = os.path.dirname(k.user_pin_file)
    shutil.rmtree(os.path.join(hsm, "tokens"))
    shutil.copytree(os.path.join(FIXTURE, "tokens"), os.path.join(hsm, "tokens"))
    for name in ("user.pin", "so.pin"):
        shutil.copyfile(os.path.join(FIXTURE, name), os.path.join(hsm, name))
        os.chmod(os.path.join(hsm, name), 0o600)
    for name in ("kmsd.db", "audit.log", "audit.log.pub.pem"):
        shutil.copyfile(os.path.join(FIXTURE, name), os.path.join(str(tmp), name))
    os.chmod(k.store_path, 0o600)
    os.chmod(k.audit_path, 0o600)
    with open(os.path.join(FIXTURE, "admin.token")) as f:
        k.admin_token = f.read().strip()
    with open(os.path.join(FIXTURE, "fixture.json")) as f:
        k.fixture = json.load(f)
    assert schema_version(k.store_path) == 6
    with open(k.audit_path, "rb") as f:
        k.old_audit = f.read()
    k.start()
    yield k
    rc, err = k.stop()
    assert not sanitizer_findings(err), err[-20000:]
    assert rc == 0, err[-5000:]


def test_store_migrated(old):
    assert schema_version(old.store_path) >= 8
    err = old.stderr()
    for v in (7, 8):
        assert "migrated to schema version %d" % v in err, err[-3000:]


def test_old_ciphertexts_decrypt(old):
    tok = old.fixture["service_token"]
    for c in old.fixture["ciphertexts"]:
        r = old.decrypt(tok, "legacy", "records", ciphertext=c["ciphertext"],
                        encryption_context=c["encryption_context"])
        assert r.status_code == 200, r.text
        assert r.json()["data"]["plaintext"] == c["plaintext"]
    # the old contexts are still bound: another one is refused
    c = old.fixture["ciphertexts"][0]
    r = old.decrypt(tok, "legacy", "records", ciphertext=c["ciphertext"],
                    encryption_context={"purpose": "research"})
    assert r.status_code == 400, r.text


def test_old_state_survives(old):
    r = old.get("/v1/legacy/keys/records", token=old.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["latest_version"] == 2
    assert d["versions"]["1"]["state"] == "decrypt-only"
    r = old.get("/v1/shred/keys/gone", token=old.admin_token)
    assert r.json()["data"]["versions"]["1"]["state"] == "pending-destruction"
    # new work under the old keys and tokens, and rewrap of old ciphertexts to v2
    tok = old.fixture["service_token"]
    old.serves(tok, "legacy", "records")
    c = old.fixture["ciphertexts"][0]
    r = old.rewrap(tok, "legacy", "records", ciphertext=c["ciphertext"],
                   encryption_context=c["encryption_context"])
    assert r.status_code == 200 and r.json()["data"]["ciphertext"].startswith("vault:v2:"), r.text
    old.rotate("legacy", "records")
    r = old.post("/v1/auth/token/lookup-accessor", {"accessor": "nope"}, token=old.admin_token)
    assert r.status_code == 404
    # the master key of the old deployment is version 1, active
    r = old.run_cli("master-key", "status")
    assert r.returncode == 0, r.stderr
    assert '"active"' in r.stdout or "active" in r.stdout


def test_audit_chain_continues(old):
    with open(old.audit_path, "rb") as f:
        now = f.read()
    assert now.startswith(old.old_audit), "the old records must stay as they were"
    assert len(now) > len(old.old_audit)
    old_last = json.loads(old.old_audit.splitlines()[-1])
    first_new = json.loads(now[len(old.old_audit):].splitlines()[0])
    assert first_new["seq"] == old_last["seq"] + 1 and first_new["prev"] == old_last["hash"]
    r = subprocess.run([KMSCTL, "audit", "verify", old.audit_path], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_newer_store_refused(old, tmp_path):
    """A store from a kmsd newer than this one is refused, never downgraded."""
    path = str(tmp_path / "newer.db")
    shutil.copyfile(old.store_path, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = version + 1")
    db.commit()
    db.close()
    conf = str(tmp_path / "newer.conf")
    with open(old.conf) as f:
        text = f.read().replace(old.store_path, path)
    with open(conf, "w") as f:
        f.write(text)
    os.chmod(conf, 0o600)
    r = subprocess.run([old.bin, "-c", conf, "master-key", "status"], env=old.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "newer" in r.stderr or "schema version" in r.stderr, r.stderr


def test_principals_rebuilt_keeping_ids(old, tmp_path):
    """The step that adds the auditor role rebuilds principals (SQLite cannot change a
    CHECK): same rows, same ids, every reference to them still valid."""
    def rows(path, sql):
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    before_db = str(tmp_path / "before.db")  # a copy: opening the fixture would add -wal/-shm to it
    shutil.copyfile(os.path.join(FIXTURE, "kmsd.db"), before_db)
    for sql in ("SELECT id, name, role, created FROM principals ORDER BY id",
                "SELECT accessor, principal_id FROM api_tokens ORDER BY accessor",
                "SELECT principal_id, tenant_id FROM principal_tenants ORDER BY 1, 2"):
        before = rows(before_db, sql)
        assert before, sql
        assert rows(old.store_path, sql) == before, sql
    assert rows(old.store_path, "PRAGMA foreign_key_check") == []
    assert rows(old.store_path, "PRAGMA integrity_check") == [("ok",)]
    ddl = rows(old.store_path, "SELECT sql FROM sqlite_master WHERE name = 'principals'")[0][0]
    assert "'auditor'" in ddl
    assert rows(old.store_path, "SELECT count(*) FROM sqlite_master WHERE name = 'principals_copy'") == [(0,)]
    # the old admin token still works, and can now make an auditor
    old.admin_post("/v1/sys/principals/upgrade-auditor", {"role": "auditor"})
    tok = old.create_token("upgrade-auditor")[0]
    r = old.get("/v1/legacy/keys/records", token=tok)
    assert r.status_code == 200, r.text


def test_authority_rows_macd_at_first_start(old):
    """The fixture's authority rows predate the row MACs (schema 12): the first start
    MACs every one of them once (trust on first use), says so in the log and the audit
    log, and marks the store so that a row without a MAC is refused from then on."""
    db = sqlite3.connect("file:%s?mode=ro" % old.store_path, uri=True)
    try:
        for table in ("principals", "api_tokens", "principal_tenants", "policies", "principal_certs",
                      "principal_mfa"):
            assert db.execute("SELECT count(*) FROM %s WHERE mac IS NULL OR length(mac) != 32"
                              % table).fetchone()[0] == 0, table
        assert db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] > 0
        assert db.execute("SELECT v FROM meta WHERE k = 'authority_macs'").fetchone()[0] == "1"
    finally:
        db.close()
    assert "MAC'd for the first time (trust on first use)" in old.stderr()
    with open(old.audit_path) as f:
        recs = [json.loads(l) for l in f if l.strip() and l.lstrip().startswith("{")]
    assert any(r.get("operation") == "store.integrity" and r.get("outcome") == "allow" for r in recs)
    # the old admin token still works after its row got its MAC
    assert old.get("/v1/auth/token/lookup-self", token=old.admin_token).status_code == 200
