"""Master-key rotation with 1,000 tenant key versions, killed (kill -9) halfway, then
resumed (issue 3 acceptance; docs/KEY-LIFECYCLE.md "Master-key rotation").

100 keys x 10 versions, one ciphertext per version. The rotation runs in batches of 50
with a test-only pause before each commit (KMSD_TEST_MK_BATCH_DELAY_MS), so that the kill
lands while a batch has been rewrapped in the token but not committed. kmsd is killed
with it. Then: the store is half moved and consistent, a restarted kmsd decrypts under
both master keys, a second run resumes and finishes, the old master key is gone from the
token, every row names the new one, and every old ciphertext still decrypts after
another restart."""

import json
import re
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import b64, unb64

KMSD_SQLITE_ONLY = "counts rows per master key in the SQLite file"

KEYS = 100
VERSIONS = 10


def status(kmsd):
    r = kmsd.run_cli("master-key", "status")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def store_rows(kmsd):
    db = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True, timeout=10)
    try:
        return db.execute("SELECT mk_version, count(*) FROM key_versions "
                          "WHERE state != 'destroyed' GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        db.close()


def build(kmsd, tenant, tok, key):
    """A key with VERSIONS versions and one ciphertext under each: [(version, ct, pt)]."""
    kmsd.create_key(tenant, key)
    out = []
    for v in range(1, VERSIONS + 1):
        pt = b"%s v%d" % (key.encode(), v)
        r = kmsd.encrypt(tok, tenant, key, plaintext=b64(pt))
        assert r.status_code == 200, r.text
        ct = r.json()["data"]["ciphertext"]
        assert ct.startswith("vault:v%d:" % v)
        out.append((ct, pt))
        if v < VERSIONS:
            kmsd.rotate(tenant, key)
    return key, out


def decrypt_all(kmsd, tenant, tok, cts):
    def one(item):
        key, pairs = item
        r = kmsd.post("/v1/%s/decrypt/%s" % (tenant, key),
                      {"batch_input": [{"ciphertext": ct} for ct, _ in pairs]}, token=tok)
        assert r.status_code == 200, r.text
        res = r.json()["data"]["batch_results"]
        assert [unb64(x["plaintext"]) for x in res] == [pt for _, pt in pairs], key
        return len(res)

    with ThreadPoolExecutor(4) as ex:
        return sum(ex.map(one, cts.items()))


def test_rotation_of_1000_versions_survives_kill_9(kmsd):
    t0 = time.monotonic()
    tenant = kmsd.create_tenant()
    tok = kmsd.service([tenant])
    with ThreadPoolExecutor(4) as ex:
        cts = dict(ex.map(lambda i: build(kmsd, tenant, tok, "k%03d" % i), range(KEYS)))
    assert sum(len(v) for v in cts.values()) == KEYS * VERSIONS
    assert store_rows(kmsd) == [(1, 1000)]
    built = time.monotonic() - t0

    # -- the rotation, killed while a batch is rewrapped but not committed ----------
    env = dict(kmsd.env)
    env["KMSD_TEST_MK_BATCH_DELAY_MS"] = "150"
    proc = subprocess.Popen([kmsd.bin, "-c", kmsd.conf, "master-key", "rotate", "--batch", "50"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    moved = 0
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"(\d+) key versions rewrapped", line)
            if m:
                moved = int(m.group(1))
                if moved >= 400:
                    break
        time.sleep(0.05)  # into the next batch's pause
        proc.send_signal(signal.SIGKILL)
        kmsd.kill()  # and the server with it
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, lines, proc.stderr.read())
    assert moved >= 400, lines

    s = status(kmsd)
    assert s["rotation_in_progress"] is True and s["active"] == 2 and s["retiring"] == 1
    assert s["token_master_keys"]["1"] == "present" and s["token_master_keys"]["2"] == "present"
    rows = dict(store_rows(kmsd))
    assert rows[1] + rows[2] == 1000
    assert moved <= rows[2] < 1000, rows  # committed batches only, none lost

    # -- half way: a restarted kmsd serves under both master keys --------------------
    kmsd.start()
    assert decrypt_all(kmsd, tenant, tok, cts) == 1000
    extra = kmsd.create_key(tenant)       # new versions go under the new master key
    kmsd.serves(tok, tenant, extra)
    assert dict(store_rows(kmsd))[2] == rows[2] + 1

    # -- resume ------------------------------------------------------------------------
    r = kmsd.run_cli("master-key", "rotate", "--batch", "50")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming the master-key rotation from version 1 to 2" in r.stdout
    assert "rotation complete" in r.stdout
    s = status(kmsd)
    assert s["rotation_in_progress"] is False and s["active"] == 2
    assert s["key_versions_by_master_key"] == {"2": 1001}
    assert s["token_master_keys"] == {"1": "absent", "2": "present", "3": "absent"}
    assert store_rows(kmsd) == [(2, 1001)]

    # -- every old ciphertext decrypts in a fresh process; new encryptions work -------
    kmsd.stop()
    kmsd.start()
    assert decrypt_all(kmsd, tenant, tok, cts) == 1000
    for key in ("k000", "k050", "k099"):
        kmsd.serves(tok, tenant, key)
        r = kmsd.rewrap(tok, tenant, key, ciphertext=cts[key][0][0])
        assert r.status_code == 200, r.text
        assert r.json()["data"]["ciphertext"].startswith("vault:v%d:" % VERSIONS)
        kmsd.rotate(tenant, key)
    assert store_rows(kmsd) == [(2, 1004)]
    print("\n    1000 versions built in %.1fs; whole test %.1fs" % (built, time.monotonic() - t0))
