"""examples/phi-records (docs/CLIENT.md "The example") against a real kmsd: stores the
sample Patients with name, birthDate and identifier sealed field by field in SQLite,
reads them back in a fresh process, and leaves no plaintext in the database file; a
sealed field moved into another column does not open.

Environment: KMSD_BIN (the example is taken from beside it: examples/phi-records/, both
phi-records and phi-records-shared, linked to libkmsclient.so); PHI_EXAMPLE_BIN overrides
it (and PHI_EXAMPLE_BIN-shared)."""

import json
import os
import sqlite3
import subprocess

import pytest

from conftest import kmsd_bin, sanitizer_findings, uniq

SECRETS = [b"Doe", b"Jane", b"Roe", b"Richard", b"Nguyen", b"MRN-0042", b"MRN-0043",
           b"MRN-0044", b"1970-01-01", b"1982-07-14", b"2001-02-28"]


def example_bin(shared=False):
    if os.environ.get("PHI_EXAMPLE_BIN"):
        b = os.path.abspath(os.environ["PHI_EXAMPLE_BIN"])
    else:
        b = os.path.join(os.path.dirname(kmsd_bin()), "examples", "phi-records", "phi-records")
    return b + "-shared" if shared else b


@pytest.fixture(scope="module")
def setup(kmsd, tmp_path_factory):
    for shared in (False, True):
        if not os.access(example_bin(shared), os.X_OK):
            pytest.fail("%s does not exist (make examples)" % example_bin(shared))
    tmp = tmp_path_factory.mktemp("phi")
    t, k, tok = kmsd.setup_tenant_key()
    tf = tmp / "svc.token"
    fd = os.open(str(tf), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (tok + "\n").encode())
    os.close(fd)
    env = dict(os.environ)
    env.update({"KMS_ADDR": kmsd.url, "KMS_CACERT": kmsd.ca, "KMS_TOKEN_FILE": str(tf),
                "KMS_TENANT": t, "KMS_KEY": k})
    return tmp, env


def run(env, *args, want=0, shared=False):
    r = subprocess.run([example_bin(shared)] + list(args), env=env, capture_output=True, text=True,
                       timeout=120)
    assert not sanitizer_findings(r.stderr), r.stderr
    assert r.returncode == want, "phi-records %s -> %d\n%s%s" % (args, r.returncode, r.stdout,
                                                                 r.stderr)
    return r


def patients(out):
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def test_store_and_read_back(setup):
    tmp, env = setup
    db = str(tmp / (uniq("phi") + ".db"))
    r = run(env, "demo", db)
    assert "stored 3 patients" in r.stdout and "read 3 patients" in r.stdout
    ps = patients(r.stdout)
    assert [p["id"] for p in ps] == ["pat-001", "pat-002", "pat-003"]
    jane = ps[0]
    assert jane["name"] == [{"family": "Doe", "given": ["Jane"]}]
    assert jane["birthDate"] == "1970-01-01"
    assert jane["identifier"][0]["value"] == "MRN-0042"
    assert jane["resourceType"] == "Patient" and jane["gender"] == "female"
    # a fresh process (no cached keys) reads the same, also linked to libkmsclient.so
    assert patients(run(env, "read", db).stdout) == ps
    assert patients(run(env, "read", db, shared=True).stdout) == ps
    # the database holds no sensitive value in the clear, only sealed blobs. A short
    # value ("Roe") can occur by chance inside a blob's random bytes, so the blobs'
    # own bytes are cut out before the file is searched: anything left is the rest of
    # the file (other columns, page headers, free space), where no value may appear.
    with open(db, "rb") as f:
        raw = f.read()
    con = sqlite3.connect(db)
    blobs = [v for row in con.execute("SELECT * FROM patient") for v in row
             if isinstance(v, bytes) and len(v) >= 32]
    con.close()
    assert blobs, "no sealed blob found"
    for b in blobs:
        assert b in raw  # stored whole in its page
        raw = raw.replace(b, b"")
    for s in SECRETS:
        assert s not in raw, s
    con = sqlite3.connect(db)
    rows = con.execute("SELECT identifier, name, birth_date FROM patient").fetchall()
    con.close()
    assert len(rows) == 3
    for row in rows:
        for blob in row:
            assert bytes(blob[:8]) == b"KMSSEAL\x01"


def test_moved_field_does_not_open(setup):
    tmp, env = setup
    db = str(tmp / (uniq("phi") + ".db"))
    run(env, "store", db)
    con = sqlite3.connect(db)
    con.execute("UPDATE patient SET name = birth_date WHERE id = 'pat-002'")
    con.commit()
    con.close()
    r = run(env, "read", db, want=1)
    assert "sealed under context" in r.stderr and "not the one expected" in r.stderr, r.stderr


def test_wrong_tenant_token_is_refused(setup, kmsd):
    tmp, env = setup
    other = kmsd.create_tenant()
    tok = kmsd.service([other])
    tf = tmp / uniq("other")
    fd = os.open(str(tf), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (tok + "\n").encode())
    os.close(fd)
    db = str(tmp / (uniq("phi") + ".db"))
    run(env, "store", db)
    r = run(dict(env, KMS_TOKEN_FILE=str(tf)), "read", db, want=1)
    assert "HTTP 403" in r.stderr, r.stderr
