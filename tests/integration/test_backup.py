"""Backup and restore (docs/OPERATIONS.md "Backup and restore", docs/FORMATS.md "Backup
archive"): `kmsctl backup` while kmsd serves under load, wipe the store and the audit
log (the token stays), `kmsd restore`, start again: every ciphertext, wrapped data key
and sealed file made before the backup opens, nothing acknowledged before the backup
began is lost, and `kmsctl audit verify` passes across the restore. Refusals: a tampered
or truncated archive (nothing is written), a backup from another token's master key (both
identities named), a manifest claiming a newer store schema (built by the real writer
under KMSD_TEST_BACKUP_SCHEMA), a non-empty target without --force; with --force the old
files are moved aside, never deleted. Admin only; audited as sys.backup."""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from conftest import PG_URI, REPO, Kmsd, b64, unb64, uniq

pytestmark = pytest.mark.skipif(bool(PG_URI), reason="SQLite store only: kmsctl backup and kmsd restore "
                                "(a PostgreSQL store answers 501; pg_dump/PITR instead)")
from test_kmsctl import Ctl, kmsctl_bin, write_secret

# Several audit segments in a short test: rotate every second.
KMSD_EXTRA_OPTS = [("audit_segment_seconds", "1")]


def schema_version():
    with open(os.path.join(REPO, "kms", "store", "store.h")) as f:
        m = re.search(r"#define STORE_SCHEMA_VERSION (\d+)", f.read())
    assert m
    return int(m.group(1))


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("backup"))


def audit_files(k):
    d = os.path.dirname(k.audit_path)
    segs = sorted(glob.glob(os.path.join(d, "audit-" + "[0-9]" * 20 + ".log")))
    return segs + [k.audit_path]


def verify(ctl, k, files=None):
    r = ctl.run("audit", "verify", "--pubkey", k.audit_path + ".pub.pem", *(files or audit_files(k)))
    assert r.returncode == 0, "audit verify: %s%s" % (r.stdout, r.stderr)
    return r.stdout


def records(k):
    out = []
    for p in audit_files(k):
        with open(p) as f:
            out += [json.loads(ln) for ln in f if ln.strip()]
    return out


def backup(ctl, out, want=0):
    return ctl.run("backup", "--out", str(out), token=ctl.admin, want=want)


def var_files(k):
    """Everything of the store and the audit log in the server's directory."""
    names = []
    for p in os.listdir(k.tmp):
        if p.startswith("kmsd.db") or p.startswith("audit") or p.startswith("kmsd-pre-restore"):
            names.append(p)
    return sorted(names)


def wipe(k):
    for p in var_files(k):
        full = os.path.join(k.tmp, p)
        if os.path.isdir(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def alt_config(k, d):
    """k's configuration with the store and the audit log in directory d (empty)."""
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "kmsd.conf")
    with open(k.conf) as f:
        lines = f.read().splitlines()
    out = []
    for ln in lines:
        if ln.startswith("store_path ="):
            ln = "store_path = " + os.path.join(d, "kmsd.db")
        elif ln.startswith("audit_path ="):
            ln = "audit_path = " + os.path.join(d, "audit.log")
        out.append(ln)
    with open(conf, "w") as f:
        f.write("\n".join(out) + "\n")
    os.chmod(conf, 0o600)
    return conf


def listing(d):
    """The files in d, but the (empty) lock file every restore and every serving kmsd
    opens: restore takes it to refuse while kmsd serves (docs/OPERATIONS.md)."""
    names = sorted(os.listdir(str(d)))
    for n in names:
        if n.endswith(".serve.lock"):
            assert os.path.getsize(os.path.join(str(d), n)) == 0
    return [n for n in names if not n.endswith(".serve.lock")]


def restore(k, conf, archive, *extra):
    r = subprocess.run([k.bin, "-c", conf, "restore", "--from", str(archive)] + list(extra),
                       env=k.env, capture_output=True, text=True, timeout=120)
    assert "AddressSanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr
    return r


class Load:
    """Creates keys and encrypts under them until stopped; remembers when each was
    acknowledged (monotonic time)."""

    def __init__(self, k, tenant, tok):
        self.k, self.t, self.tok = k, tenant, tok
        self.acked = []  # (time acked, key, plaintext b64, ciphertext)
        self.stop = False
        self.errors = []
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        sess = requests.Session()
        sess.trust_env = False
        i = 0
        while not self.stop:
            name = "load-%d" % i
            i += 1
            try:
                r = sess.post("%s/v1/%s/keys/%s" % (self.k.url, self.t, name),
                              json={"type": "aes256-gcm96"}, verify=self.k.ca, timeout=30,
                              headers={"X-Vault-Token": self.k.admin_token})
                if r.status_code != 200:
                    self.errors.append(("create", r.status_code, r.text))
                    continue
                pt = b64(("load %d" % i).encode())
                r = sess.post("%s/v1/%s/encrypt/%s" % (self.k.url, self.t, name),
                              json={"plaintext": pt}, verify=self.k.ca, timeout=30,
                              headers={"X-Vault-Token": self.tok})
                if r.status_code != 200:
                    self.errors.append(("encrypt", r.status_code, r.text))
                    continue
                self.acked.append((time.monotonic(), name, pt, r.json()["data"]["ciphertext"]))
            except Exception as e:  # noqa: BLE001 - recorded, asserted by the test
                self.errors.append(("exception", repr(e)))
        sess.close()


@pytest.fixture(scope="module")
def made(kmsd, ctl, tmp_path_factory):
    """Data made before the backup, the archive made under load, and what the load had
    acknowledged before the backup began."""
    k = kmsd
    tmp = tmp_path_factory.mktemp("made")
    # small chunks, so that this archive has many (the reader takes any size up to 1 MiB)
    k.stop()
    k.env["KMSD_TEST_BACKUP_CHUNK"] = "4096"
    k.start()
    t1, t2 = k.create_tenant(), k.create_tenant(retention="non-phi")
    k1, k2 = k.create_key(t1), k.create_key(t2)
    k.rotate(t1, k1)
    tok = k.service([t1, t2])
    tokf = write_secret(tmp / "svc.token", tok)
    cts = []
    for t, key in ((t1, k1), (t2, k2)):
        for n in range(5):
            pt = b64(("PHI %s %s %d" % (t, key, n)).encode())
            r = k.encrypt(tok, t, key, plaintext=pt)
            assert r.status_code == 200, r.text
            cts.append((t, key, pt, r.json()["data"]["ciphertext"]))
    dks = []
    for t, key in ((t1, k1), (t2, k2)):
        r = k.datakey(tok, t, key, kind="plaintext")
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        dks.append((t, key, d["plaintext"], d["ciphertext"]))
    plain = os.urandom(3 * 1024 * 1024 + 17)
    src, sealed = tmp / "phi.bin", tmp / "phi.sealed"
    src.write_bytes(plain)
    ctl.ok("seal", "--tenant", t1, "--key", k1, "--context", "purpose=treatment", str(src),
           str(sealed), token=tokf)
    time.sleep(1.2)  # let a segment rotate
    # the backup, under load
    lt = k.create_tenant()
    load = Load(k, lt, k.service([lt]))
    load.th.start()
    deadline = time.monotonic() + 30
    while len(load.acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    archive = tmp / "kmsd.kmsbak"
    r = backup(ctl, archive)
    ended = time.monotonic()
    time.sleep(0.5)
    load.stop = True
    load.th.join(60)
    assert not load.errors, load.errors[:5]
    before = [a for a in load.acked if a[0] < began]
    assert len(before) >= 10
    assert any(a[0] > ended for a in load.acked), "the load did not run past the backup"
    return {"tenants": (t1, t2), "keys": (k1, k2), "tok": tok, "tokf": tokf, "cts": cts,
            "dks": dks, "plain": plain, "sealed": sealed, "archive": archive,
            "load": (lt, load.tok, before), "out": r.stdout, "tmp": tmp}


def test_backup_is_admin_only_and_audited(kmsd, ctl, made, tmp_path):
    k = kmsd
    r = k.post("/v1/sys/backup", {}, token=made["tok"])
    assert r.status_code == 403, r.text
    assert k.post("/v1/sys/backup", {}).status_code == 401
    r = k.post("/v1/sys/backup", {"x": 1}, token=k.admin_token)
    assert r.status_code == 400 and "no parameters" in r.text, r.text
    r = k.post("/v1/sys/backup", {}, token=k.admin_token)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content[:8] == b"KMSDBAK1"
    recs = [x for x in records(k) if x.get("operation") == "sys.backup"]
    assert [x["outcome"] for x in recs].count("allow") >= 2, recs  # kmsctl's and this one
    assert any(x["outcome"] == "deny" for x in recs)
    # the kmsctl summary names the master key and the file's SHA-256
    out = made["out"]
    assert "kmsd-mk-1" in out and "sha256" in out, out
    sha = hashlib.sha256(made["archive"].read_bytes()).hexdigest()
    assert sha in out
    # each archive is tied to its audit record by its SHA-256 and size
    reasons = [x["reason"] for x in recs if x["outcome"] == "allow"]
    assert any("archive sha256 %s, %d bytes" % (sha, os.path.getsize(made["archive"])) in x
               for x in reasons), reasons
    assert any("archive sha256 %s" % hashlib.sha256(r.content).hexdigest() in x for x in reasons)
    assert oct(os.stat(made["archive"]).st_mode & 0o777) == "0o600"
    # never overwrites
    r = backup(ctl, made["archive"], want=2)
    assert "exists" in r.stderr


def test_archive_reveals_nothing_in_clear(made):
    data = made["archive"].read_bytes()
    n = int.from_bytes(data[8:12], "big")
    hdr = json.loads(data[12:12 + n])
    assert set(hdr) == {"format", "mk_version", "mk_label", "mk_fingerprint", "key_blob",
                        "chunk_size", "created"}, hdr
    assert hdr["format"] == 1 and hdr["mk_label"] == "kmsd-mk-1"
    assert len(unb64(hdr["key_blob"])) == 40
    # no SQLite header, no audit record, no tenant name, no PEM in the body
    body = data[12 + n:]
    for needle in (b"SQLite format 3", b'"operation"', made["tenants"][0].encode(),
                   b"BEGIN PUBLIC KEY"):
        assert needle not in body, needle


def refused(r, *fragments):
    assert r.returncode != 0, "restore was not refused:\n%s\n%s" % (r.stdout, r.stderr)
    assert "restore refused" in r.stderr, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def test_tampered_archive_refused_nothing_written(kmsd, made, tmp_path):
    k = kmsd
    data = made["archive"].read_bytes()
    n = int.from_bytes(data[8:12], "big")
    body = 12 + n
    chunks, o = [], body  # (offset, length, final) by the documented layout
    while o < len(data):
        ln = int.from_bytes(data[o:o + 4], "big")
        chunks.append((o, ln & 0x7fffffff, bool(ln & 0x80000000)))
        o += 4 + (ln & 0x7fffffff)
    assert o == len(data) and chunks[-1][2] and not any(c[2] for c in chunks[:-1]), chunks
    assert len(chunks) > 10 and json.loads(data[12:body])["chunk_size"] == 4096, len(chunks)
    cases = {
        "magic": (lambda b: b"X" + b[1:], ["not a kmsd backup archive"]),
        "header": (lambda b: b[:14] + bytes([b[14] ^ 0x01]) + b[15:], ["header is damaged"]),
        "header field": (lambda b: b[:12] + b[12:body].replace(b'"created":1', b'"created":2')
                         + b[body:], ["fails authentication at chunk 0"]),
        "fingerprint": (lambda b: b[:12] + re.sub(rb'"mk_fingerprint":"(.)', lambda m: b'"mk_fingerprint":"'
                                                  + (b"0" if m.group(1) != b"0" else b"1"), b[12:body])
                        + b[body:], ["another master key"]),
        "first chunk length": (lambda b: b[:body + 3] + bytes([b[body + 3] ^ 0x04]) + b[body + 4:],
                               []),
        "first chunk": (lambda b: b[:body + 100] + bytes([b[body + 100] ^ 0x80]) + b[body + 101:],
                        ["fails authentication at chunk 0"]),
        "middle": (lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0x01]) + b[len(b) // 2 + 1:],
                   ["fails authentication"]),
        "chunks swapped": (lambda b: b[:chunks[1][0]] + b[chunks[2][0]:chunks[3][0]]
                           + b[chunks[1][0]:chunks[2][0]] + b[chunks[3][0]:],
                           ["fails authentication at chunk 1"]),
        "chunk dropped": (lambda b: b[:chunks[1][0]] + b[chunks[2][0]:],
                          ["fails authentication at chunk 1"]),
        "last byte": (lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), ["fails authentication"]),
        "truncated in header": (lambda b: b[:body - 5], ["header is damaged"]),
        "truncated in a chunk": (lambda b: b[:len(b) - 1000], ["truncated"]),
        "final chunk dropped": (lambda b: b[:chunks[-1][0]], ["truncated"]),
        "final bit cleared": (lambda b: b[:chunks[-1][0]] + bytes([b[chunks[-1][0]] & 0x7f])
                              + b[chunks[-1][0] + 1:], ["fails authentication at chunk %d" % (len(chunks) - 1)]),
        "final bit set early": (lambda b: b[:body] + bytes([b[body] | 0x80]) + b[body + 1:],
                                ["fails authentication at chunk 0"]),
        "trailing bytes": (lambda b: b + b"\x00", ["after its final chunk"]),
    }
    for name, (fn, frags) in cases.items():
        bad = fn(data)
        assert bad != data, name
        d = tmp_path / name.replace(" ", "-")
        conf = alt_config(k, str(d))
        p = tmp_path / (name.replace(" ", "-") + ".kmsbak")
        p.write_bytes(bad)
        r = restore(k, conf, p)
        if os.environ.get("BACKUP_TEST_SHOW"):  # to read each refusal: pytest -s
            print(name, "->", r.stderr.strip().splitlines()[-1])
        refused(r, *frags)
        left = listing(d)
        assert left == ["kmsd.conf"], (name, left, r.stderr)
    # a byte flipped anywhere: 24 places spread over the whole file
    for i in range(24):
        pos = i * (len(data) - 1) // 23
        d = tmp_path / ("flip-%d" % pos)
        conf = alt_config(k, str(d))
        p = tmp_path / ("flip-%d.kmsbak" % pos)
        p.write_bytes(data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1:])
        refused(restore(k, conf, p))
        assert listing(d) == ["kmsd.conf"], pos
    # the untouched archive restores into the same kind of target
    d = tmp_path / "good"
    conf = alt_config(k, str(d))
    r = restore(k, conf, made["archive"])
    assert r.returncode == 0, r.stderr
    assert os.path.exists(d / "kmsd.db") and os.path.exists(d / "audit.log.pub.pem")


def test_newer_schema_refused(kmsd, ctl, made, tmp_path):
    """The real writer, told by a test hook to claim a newer schema."""
    k = kmsd
    k.stop()
    k.env["KMSD_TEST_BACKUP_SCHEMA"] = str(schema_version() + 1)
    try:
        k.start()
        p = tmp_path / "newer.kmsbak"
        backup(ctl, p)
    finally:
        k.stop()
        del k.env["KMSD_TEST_BACKUP_SCHEMA"]
        k.start()
    d = tmp_path / "target"
    conf = alt_config(k, str(d))
    r = restore(k, conf, p)
    refused(r, "schema version %d" % (schema_version() + 1), "up to %d" % schema_version())
    assert listing(d) == ["kmsd.conf"]


def test_foreign_master_key_refused(kmsd, made, tmp_path):
    """A second fresh SoftHSM2 token with its own master key."""
    other = Kmsd(tmp_path / "other")
    os.makedirs(other.tmp)
    other.provision()
    other.init()
    before = listing(other.tmp)
    size = os.path.getsize(other.store_path)
    r = other.run_cli("restore", "--from", str(made["archive"]))
    refused(r, "kmsd-mk-1 (fingerprint")
    fps = re.findall(r"kmsd-mk-1 \(fingerprint ([0-9a-f]{16})\)", r.stderr)
    assert len(fps) == 2 and fps[0] != fps[1], r.stderr
    hdr = json.loads(made["archive"].read_bytes()[12:12 + int.from_bytes(
        made["archive"].read_bytes()[8:12], "big")])
    assert fps[0] == hdr["mk_fingerprint"][:16]
    assert listing(other.tmp) == before
    assert os.path.getsize(other.store_path) == size


def test_restore_after_wipe(kmsd, ctl, made):
    """The acceptance test: wipe everything but the token, restore, serve."""
    k = kmsd
    k.stop()
    wipe(k)
    assert var_files(k) == []
    r = k.run_cli("restore", "--from", str(made["archive"]))
    assert r.returncode == 0, r.stderr
    k.start()
    # every ciphertext made before the backup decrypts
    for t, key, pt, ct in made["cts"]:
        r = k.decrypt(made["tok"], t, key, ciphertext=ct)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["plaintext"] == pt
    for t, key, pt, ct in made["dks"]:
        r = k.decrypt(made["tok"], t, key, ciphertext=ct)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["plaintext"] == pt
    out = made["tmp"] / "phi.opened"
    ctl.ok("open", str(made["sealed"]), str(out), token=made["tokf"])
    assert out.read_bytes() == made["plain"]
    # nothing the load had acknowledged before the backup began is lost
    lt, ltok, before = made["load"]
    for _, name, pt, ct in before:
        r = k.decrypt(ltok, lt, name, ciphertext=ct)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["data"]["plaintext"] == pt
    # one cut: a load key is in the restored store exactly when its creation is in the
    # restored log
    r = k.get("/v1/%s/keys" % lt, token=k.admin_token, params={"list": "true"})
    assert r.status_code == 200, r.text
    present = {n for n in r.json()["data"]["keys"] if n.startswith("load-")}
    logged = {x["key"] for x in records(k) if x.get("operation") == "key.create"
              and x.get("tenant") == lt and x.get("outcome") == "allow"}
    assert present == logged, (sorted(present ^ logged))
    assert {n for _, n, _, _ in before} <= present
    # the chain verifies across the restore, which is recorded in it
    k.serves(made["tok"], made["tenants"][0], made["keys"][0])
    out = verify(ctl, k)
    assert out.startswith("ok"), out
    recs = records(k)
    rest = [x for x in recs if x.get("operation") == "sys.restore"]
    assert len(rest) == 1 and rest[0]["outcome"] == "allow", rest
    assert "the target was empty" in rest[0]["reason"]
    assert len(audit_files(k)) > 2, "the restored log has no segments"


def test_nonempty_target_needs_force_and_keeps_old_files(kmsd, ctl, made):
    """The log has moved on since the backup: restore refuses to discard it; --force
    moves it aside (never deletes), and the aside copy still verifies on its own."""
    k = kmsd
    t, key = made["tenants"][0], made["keys"][0]
    k.serves(made["tok"], t, key)
    # never beside a serving kmsd, --force or not
    files = var_files(k)
    r = k.run_cli("restore", "--from", str(made["archive"]), "--force")
    refused(r, "must not serve")
    assert "kmsd is serving on this store" in r.stderr
    assert var_files(k) == files
    k.serves(made["tok"], t, key)
    k.stop()
    files = var_files(k)
    sizes = {p: os.path.getsize(os.path.join(k.tmp, p)) for p in files}
    r = k.run_cli("restore", "--from", str(made["archive"]))
    refused(r, "not empty", "--force", "nothing was changed")
    assert {p: os.path.getsize(os.path.join(k.tmp, p)) for p in var_files(k)} == sizes
    old_last = records(k)[-1]
    r = k.run_cli("restore", "--from", str(made["archive"]), "--force")
    assert r.returncode == 0, r.stderr
    aside = glob.glob(os.path.join(k.tmp, "kmsd-pre-restore-*"))
    assert len(aside) == 1, aside
    kept = sorted(os.listdir(aside[0]))
    assert "kmsd.db" in kept and "audit.log" in kept and "audit.log.pub.pem" in kept, kept
    # the old log, kept whole: it verifies with its key and ends where it ended
    segs = sorted(glob.glob(os.path.join(aside[0], "audit-" + "[0-9]" * 20 + ".log")))
    old = segs + [os.path.join(aside[0], "audit.log")]
    r = ctl.run("audit", "verify", "--pubkey", os.path.join(aside[0], "audit.log.pub.pem"), *old)
    assert r.returncode == 0, r.stdout + r.stderr
    # as docs/OPERATIONS.md says it: the directory, its key found beside the log
    r = ctl.run("audit", "verify", aside[0])
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    # (its last record may sit in the newest segment: a segment rotated by time at the
    # stop leaves audit.log empty)
    last = None
    for p in old:
        with open(p) as f:
            lines = f.read().splitlines()
        if lines:
            last = lines[-1]
    assert last is not None and json.loads(last)["hash"] == old_last["hash"]
    k.start()
    k.serves(made["tok"], t, key)
    assert verify(ctl, k).startswith("ok")
    r = ctl.run("audit", "verify", k.tmp)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    rest = [x for x in records(k) if x.get("operation") == "sys.restore"]
    assert len(rest) == 1 and "kmsd-pre-restore-" in rest[0]["reason"], rest
