"""What the metadata store and the token hold (docs/DESIGN key hierarchy): the SQLite store
never holds a DEK or a plaintext sent to encrypt; the token's secret keys cannot be read
out, and tenant KEKs live in the store wrapped, not as token objects."""

import base64
import glob
import os
import sqlite3
import stat
import subprocess

import pytest

from conftest import PKCS11_MODULE, b64, pg_dump

SECRET = b"store-check PHI plaintext: MRN 00012345, diagnosis F32.1"


@pytest.fixture(scope="module")
def material(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    deks = []
    for bits in (128, 256, 512, 256, 256):
        d = kmsd.datakey(tok, t, k, bits=bits).json()["data"]
        deks.append(base64.b64decode(d["plaintext"]))
    r = kmsd.post("/v1/%s/datakey/plaintext/%s" % (t, k),
                  {"batch_input": [{"bits": 256}] * 5}, token=tok)
    assert r.status_code == 200, r.text
    deks += [base64.b64decode(x["plaintext"]) for x in r.json()["data"]["batch_results"]]
    cts = []
    for i in range(3):
        r = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET + b" #%d" % i))
        assert r.status_code == 200
        cts.append(r.json()["data"]["ciphertext"])
    kmsd.rotate(t, k)
    # after rotation, rewrap and more data keys under v2
    for ct in cts:
        assert kmsd.rewrap(tok, t, k, ciphertext=ct).status_code == 200
    for _ in range(3):
        d = kmsd.datakey(tok, t, k).json()["data"]
        deks.append(base64.b64decode(d["plaintext"]))

    class M:
        pass

    m = M()
    m.deks, m.cts, m.tenant, m.key, m.token = deks, cts, t, k, tok
    return m


def store_files(kmsd):
    files = [f for f in glob.glob(kmsd.store_path + "*") if os.path.isfile(f)]
    assert kmsd.store_path in files, "no store at %s" % kmsd.store_path
    return files


def store_bytes(kmsd):
    if kmsd.store_uri:
        # PostgreSQL: everything the database holds, as pg_dump writes it out
        return pg_dump(kmsd.store_uri)
    out = b""
    for f in store_files(kmsd):
        with open(f, "rb") as fh:
            out += fh.read()
    return out


def forms(b):
    """The forms a secret could be stored in."""
    return [b, base64.b64encode(b), b.hex().encode(), b.hex().upper().encode()]


def test_store_has_no_dek(kmsd, material):
    blob = store_bytes(kmsd)
    assert len(material.deks) == 13 and len({d for d in material.deks}) == 13
    found = [i for i, d in enumerate(material.deks) if any(f in blob for f in forms(d))]
    assert not found, "DEKs #%s appear in the store files" % found


def test_store_has_no_dek_in_any_cell(kmsd, material):
    """Same check through SQLite itself (sees WAL content too)."""
    if kmsd.store_uri:
        pytest.skip("reads the SQLite file; on PostgreSQL test_store_has_no_dek reads every cell (pg_dump)")
    con = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True, timeout=10)
    try:
        cells = []
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert tables, "the store has no tables"
        for t in tables:
            for row in con.execute('SELECT * FROM "%s"' % t.replace('"', '""')):
                for v in row:
                    if isinstance(v, str):
                        cells.append(v.encode())
                    elif isinstance(v, (bytes, bytearray, memoryview)):
                        cells.append(bytes(v))
    finally:
        con.close()
    deks = set(material.deks)
    assert not [c for c in cells if c in deks], "a cell equals a DEK"
    for d in material.deks:
        for f in forms(d):
            assert not any(f in c for c in cells), "a cell contains a DEK"


def test_store_has_no_encrypt_plaintext(kmsd, material):
    blob = store_bytes(kmsd)
    for i in range(3):
        p = SECRET + b" #%d" % i
        for f in forms(p):
            assert f not in blob, "plaintext sent to encrypt is in the store"
    assert b"MRN 00012345" not in blob


def test_store_has_no_tokens(kmsd, material):
    blob = store_bytes(kmsd)
    assert kmsd.admin_token.encode() not in blob, "the admin token is stored in the clear"
    assert material.token.encode() not in blob, "a service token is stored in the clear"


def test_store_file_mode(kmsd, material):
    if kmsd.store_uri:
        pytest.skip("a PostgreSQL store has no file of kmsd's")
    mode = stat.S_IMODE(os.stat(kmsd.store_path).st_mode)
    assert mode & 0o077 == 0, "store mode %o is readable by others" % mode


def test_ciphertexts_still_decrypt(kmsd, material):
    for i, ct in enumerate(material.cts):
        r = kmsd.decrypt(material.token, material.tenant, material.key, ciphertext=ct)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"]["plaintext"]) == SECRET + b" #%d" % i


# -- the token ---------------------------------------------------------------------------

def p11(kmsd, *args):
    with open(kmsd.user_pin_file) as f:
        pin = f.read().strip()
    r = subprocess.run(["pkcs11-tool", "--module", PKCS11_MODULE, "--token-label", "kmsd",
                        "--login", "--pin", pin] + list(args), env=kmsd.env,
                       capture_output=True, text=True, timeout=60)
    return r


def secret_key_objects(kmsd):
    r = p11(kmsd, "--list-objects", "--type", "secrkey")
    assert r.returncode == 0, r.stderr
    objs = []
    cur = None
    for line in r.stdout.splitlines():
        if line.startswith("Secret Key Object"):
            cur = {"head": line, "lines": []}
            objs.append(cur)
        elif cur is not None and line.startswith("  "):
            cur["lines"].append(line.strip())
        else:
            cur = None
    return objs


def test_token_secret_keys_are_not_readable(kmsd, material):
    objs = secret_key_objects(kmsd)
    assert objs, "no secret key on the token (where is the master key?)"
    for o in objs:
        text = "\n".join(o["lines"])
        assert not any(ln.startswith("VALUE:") for ln in o["lines"]), \
            "a token secret key's value is readable with the user PIN:\n" + text
        access = [ln for ln in o["lines"] if ln.startswith("Access:")]
        assert access, text
        flags = [f.strip() for f in access[0][len("Access:"):].split(",")]
        assert "sensitive" in flags, "token secret key is not sensitive:\n" + text
        assert "extractable" not in flags, "token secret key is extractable:\n" + text


def test_keks_are_not_token_objects(kmsd, material):
    """Tenant KEKs are stored wrapped under the master key, not as token objects: making
    more keys and versions does not add objects to the token."""
    before = len(secret_key_objects(kmsd))
    t = kmsd.create_tenant()
    for _ in range(4):
        k = kmsd.create_key(t)
        kmsd.rotate(t, k)
    after = len(secret_key_objects(kmsd))
    assert after == before, "token secret keys: %d before, %d after 4 keys x 2 versions" % (
        before, after)
