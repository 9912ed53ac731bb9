"""Crash loop: kill -9 kmsd under concurrent load, restart, and check that nothing it
acknowledged was lost (docs/FORMATS.md "Audit record": every record is fdatasync'd
before the answer; the store is SQLite WAL with synchronous=FULL).

Per iteration: 4-8 client threads send a random mix (datakey with encryption_context,
encrypt, decrypt of earlier ciphertexts, an occasional rotate and key create by the
admin, a policy replacement, and a crypto-shredding flow on a non-PHI tenant: create a
key, allow deletion, rotate, schedule-destroy version 1) for a random 50-400 ms, every request with a unique X-Request-Id recorded with
its outcome; then SIGKILL while requests are in flight, and a restart. After the
restart:
  (a) PRAGMA integrity_check on the store (read-only) is "ok";
  (b) the chain holds: the test checks every new record's hash, prev and seq itself
      (docs/FORMATS.md "Bytes of a line"), and `kmsctl audit verify` (signatures too)
      exits 0 every 10th iteration, after every torn tail and at the end; a torn tail
      (left by the kill, or in some iterations simulated by appending a prefix of a
      record, as a power cut would leave one) was cut and recorded by an
      `audit.recovered` record naming size and offset;
  (c) every request answered 200 has an audit record with its request_id and status
      200 (lost = 0); answered requests with another status are logged with that status;
  (d) every ciphertext answered with 200 in this iteration (and a sample of older
      ones) still decrypts with its context to the same plaintext; acknowledged
      rotations are visible (latest_version at least as high);
  (e) keys whose creation was answered 200 exist; versions whose schedule-destroy was
      answered 200 are pending destruction; the policy version is at least the highest
      one whose replacement was answered 200.
At the end every acknowledged request and every ciphertext is checked once more.

Requests that got no answer (connection error during the kill) have an unknown outcome
and are not checked.

Environment:
  KMSD_CRASH_ITER   iterations (default 200, the audit issue's floor; 25 when KMSD_BIN
                    contains "asan", where each run is several times slower)
  KMSD_CRASH_SEED   seed of the random generator (default fixed, printed on failure).
                    Thread scheduling is not reproducible, so a seed replays the choices
                    (load duration, threads, operations), not the exact interleaving.
"""

import base64
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from conftest import kmsd_bin, sqlite_only

ASAN = "asan" in os.environ.get("KMSD_BIN", "")
ITER = int(os.environ.get("KMSD_CRASH_ITER", "25" if ASAN else "200"))
SEED = int(os.environ.get("KMSD_CRASH_SEED", "20240611"), 0)
TIMEOUT = 10.0 if ASAN else 5.0
OLD_SAMPLE = 16          # older ciphertexts re-decrypted per iteration
TEAR = 0.15             # share of iterations that get a simulated torn tail
BATCH = 150              # decrypt batch size (bodies stay far below max_body_bytes)

# Checkpoints (a token signature, the slow step of the log) every 40 records, so that
# kills also land while one is being signed or written.
KMSD_EXTRA_OPTS = [("audit_checkpoint_records", "40")]

KMSCTL = os.path.join(os.path.dirname(kmsd_bin()), "kmsctl")


def ctx_msg(extra=""):
    return "KMSD_CRASH_SEED=%d%s" % (SEED, extra)


class Ct:
    """A ciphertext the client received with a 200."""
    __slots__ = ("key", "ct", "ctx", "plain", "it", "rid")

    def __init__(self, key, ct, ctx, plain, it, rid):
        self.key, self.ct, self.ctx, self.plain, self.it, self.rid = key, ct, ctx, plain, it, rid


class State:
    """What the client knows, across iterations."""

    def __init__(self, tenant, keys, token, admin, shred_tenant, policy_doc):
        self.tenant = tenant
        self.shred_tenant = shred_tenant    # non-PHI: versions may be scheduled for destruction
        self.policy_doc = policy_doc        # the document in force, re-posted with new versions
        self.policy_next = policy_doc["version"] + 1
        self.policy_lock = threading.Lock()
        self.policy_acked = policy_doc["version"]
        self.scheduled = []                 # shred keys whose version 1 schedule was acknowledged
        self.keys = list(keys)          # keys known to exist (created with a 200)
        self.keys_lock = threading.Lock()
        self.token = token
        self.admin = admin
        self.cts = []                   # Ct, append-only
        self.cts_lock = threading.Lock()
        self.min_latest = {k: 1 for k in keys}   # latest_version seen acknowledged
        self.created = []               # (iteration, key) created with a 200
        self.acked = {}                 # request_id -> HTTP status the client saw
        self.sent = 0
        self.unknown = 0
        self.ops = {}                   # operation -> count acknowledged with 200


class Worker(threading.Thread):
    def __init__(self, srv, st, it, idx, rng, stop):
        super().__init__(daemon=True)
        self.srv, self.st, self.it, self.idx, self.rng, self.stop = srv, st, it, idx, rng, stop
        self.log = []        # (rid, op, status or None, detail)
        self.new_cts = []
        self.rotated = []    # (key, latest_version)
        self.created = []
        self.scheduled = []  # shred keys whose schedule-destroy of version 1 got a 200
        self.policy = []     # policy versions whose replacement got a 200
        self.versions = []   # (key, key_version) seen in data answers
        self.bad = []        # unexpected answers while the server was up
        self.n = 0
        self.cut = 0         # 200 answers whose body the kill cut short

    def post(self, sess, path, body, token):
        self.n += 1
        rid = "crash.%d.%d.%d" % (self.it, self.idx, self.n)
        h = {"X-Request-Id": rid, "X-Vault-Token": token, "Content-Type": "application/json"}
        try:
            r = sess.post(self.srv.url + path, data=json.dumps(body), headers=h,
                          verify=self.srv.ca, timeout=TIMEOUT)
        except requests.RequestException:
            return rid, None
        return rid, r

    def run(self):
        st, rng = self.st, self.rng
        sess = requests.Session()
        sess.trust_env = False
        try:
            while not self.stop.is_set():
                self.one(sess, st, rng)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.bad.append("client thread %d: %r" % (self.idx, e))
        finally:
            sess.close()

    def one(self, sess, st, rng):
        t = st.tenant
        with st.keys_lock:
            key = rng.choice(st.keys)
        x = rng.random()
        if x < 0.006:
            self.shred_flow(sess, st)
            return
        if x < 0.012:
            op = "policy.write"
            with st.policy_lock:
                v = st.policy_next
                st.policy_next += 1
            body = dict(st.policy_doc, version=v)
            rid, r = self.post(sess, "/v1/sys/policy", body, st.admin)
            if r is not None and r.status_code == 409:
                self.log.append((rid, op, 409))   # overtaken by a newer one: fine
                return
            if r is not None and r.status_code == 200:
                self.policy.append(v)
        elif x < 0.02:
            op = "key.rotate"
            rid, r = self.post(sess, "/v1/%s/keys/%s/rotate" % (t, key), {}, st.admin)
        elif x < 0.03:
            op = "key.create"
            key = "ck-%d-%d-%d" % (self.it, self.idx, self.n + 1)
            rid, r = self.post(sess, "/v1/%s/keys/%s" % (t, key), {"type": "aes256-gcm96"},
                               st.admin)
        elif x < 0.45:
            op = "datakey"
            kind = rng.choice(("plaintext", "wrapped"))
            ctx = {"record": "mrn-%06d" % rng.randrange(10 ** 6),
                   "purpose": rng.choice(("treatment", "billing", "research"))}
            body = {"encryption_context": ctx, "bits": rng.choice((128, 256, 512))}
            rid, r = self.post(sess, "/v1/%s/datakey/%s/%s" % (t, kind, key), body, st.token)
        elif x < 0.7:
            op = "encrypt"
            plain = base64.b64encode(rng.randbytes(rng.randrange(1, 64))).decode()
            ctx = {"doc": "d%d" % rng.randrange(10 ** 6)} if rng.random() < 0.7 else None
            body = {"plaintext": plain}
            if ctx:
                body["encryption_context"] = ctx
            rid, r = self.post(sess, "/v1/%s/encrypt/%s" % (t, key), body, st.token)
        else:
            op = "decrypt"
            with st.cts_lock:
                c = rng.choice(st.cts) if st.cts else None
            if c is None:
                return
            body = {"ciphertext": c.ct}
            if c.ctx:
                body["encryption_context"] = c.ctx
            rid, r = self.post(sess, "/v1/%s/decrypt/%s" % (t, c.key), body, st.token)
        if r is None:
            self.log.append((rid, op, None))
            return
        self.log.append((rid, op, r.status_code))
        if r.status_code != 200:
            self.bad.append("%s %s %s -> %d %s" % (rid, op, key, r.status_code, r.text[:200]))
            return
        if op == "policy.write":
            return
        try:
            d = r.json()["data"]
        except ValueError:
            # The status line came, the body was cut by the kill (urllib3 1.x does not
            # enforce Content-Length). kmsd answers only after the record is durable, so
            # this still counts as acknowledged; only the answer's data is unusable.
            want = r.headers.get("Content-Length")
            if want is None or not want.isdigit() or len(r.content) >= int(want):
                self.bad.append("%s %s -> 200 with a complete body that is not JSON: %r"
                                % (rid, op, r.content[:200]))
            self.cut += 1
            if op == "key.create":      # the name is known: it must exist
                self.created.append(key)
            return
        if op == "key.rotate":
            self.rotated.append((key, d["latest_version"]))
        elif op == "key.create":
            self.created.append(key)
            with st.keys_lock:
                st.keys.append(key)
        elif op in ("datakey", "encrypt"):
            self.versions.append((key, d["key_version"]))
            p = plain if op == "encrypt" else d.get("plaintext")
            c = Ct(key, d["ciphertext"], ctx, p, self.it, rid)
            self.new_cts.append(c)
            with st.cts_lock:
                st.cts.append(c)
        elif op == "decrypt":
            if c.plain is not None and d["plaintext"] != c.plain:
                self.bad.append("%s decrypt of %s (%s): wrong plaintext" % (rid, c.rid, c.key))


    def shred_flow(self, sess, st):
        """A non-PHI key made, rotated and its version 1 scheduled for destruction, one
        request at a time; stops at the first request without a 200."""
        t = st.shred_tenant
        key = "sk-%d-%d-%d" % (self.it, self.idx, self.n + 1)
        steps = [("key.create", "/v1/%s/keys/%s" % (t, key), {"type": "aes256-gcm96"}),
                 ("key.config", "/v1/%s/keys/%s/config" % (t, key), {"deletion_allowed": True}),
                 ("key.rotate", "/v1/%s/keys/%s/rotate" % (t, key), {}),
                 ("key.version.schedule_destroy",
                  "/v1/%s/keys/%s/versions/1/schedule-destroy" % (t, key),
                  {"days": 7, "reason": "crash loop erasure"})]
        for op, path, body in steps:
            rid, r = self.post(sess, path, body, st.admin)
            self.log.append((rid, op, r.status_code if r is not None else None))
            if r is None:
                return
            if r.status_code != 200:
                self.bad.append("%s %s %s -> %d %s" % (rid, op, key, r.status_code, r.text[:200]))
                return
        self.scheduled.append(key)


# ---------------------------------------------------------------- checks


class AuditReader:
    """Reads the audit log incrementally (kmsd only appends; recovery may cut bytes after
    the last newline, never before it). Checks that what was read stays in place."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.last = b""          # the last complete line read, ending at self.off
        self.by_rid = {}         # request_id -> status (None for the log's own records)
        self.records = 0
        self.recovered = []      # reasons of audit.recovered records
        self.last_hash = "0" * 64
        self.last_seq = 0

    def tail_state(self):
        """(size, offset just after the last newline) of the file as it is now."""
        with open(self.path, "rb") as f:
            data = f.read()
        return len(data), data.rfind(b"\n") + 1

    def read_new(self):
        new = []
        with open(self.path, "rb") as f:
            if self.last:
                f.seek(self.off - len(self.last))
                again = f.read(len(self.last))
                assert again == self.last, ctx_msg(
                    ": audit bytes before offset %d changed after restart" % self.off)
            f.seek(self.off)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            rec = json.loads(line)
            # the chain, as docs/FORMATS.md defines it: hash = SHA-256 of the line
            # without its hash member; prev = the previous record's hash
            m = re.match(rb'^(.*),"hash":"([0-9a-f]{64})"}$', line)
            assert m, ctx_msg(": audit line without a hash member: %r" % line[:200])
            assert hashlib.sha256(m.group(1) + b"}").hexdigest() == m.group(2).decode(), \
                ctx_msg(": audit seq %s does not match its hash" % rec.get("seq"))
            assert rec["prev"] == self.last_hash and rec["seq"] == self.last_seq + 1, \
                ctx_msg(": audit chain broken at seq %s" % rec.get("seq"))
            self.last_hash, self.last_seq = rec["hash"], rec["seq"]
            self.records += 1
            new.append(rec)
            rid = rec.get("request_id")
            if rid is not None:
                assert not rid.startswith("crash.") or rid not in self.by_rid, ctx_msg(": request_id %s logged twice" % rid)
                self.by_rid[rid] = rec.get("status")
            if rec.get("operation") == "audit.recovered":
                self.recovered.append(rec.get("reason"))
        if end:
            self.last = data[:end].splitlines(keepends=True)[-1]
            self.off += end
        return new


def integrity_ok(path):
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()


def audit_verify(log):
    return subprocess.run([KMSCTL, "audit", "verify", log], capture_output=True, text=True,
                          timeout=120)


def vreq(srv, path, body, token, method="POST"):
    """A verification request (request ids 'verify-…': not part of the load)."""
    h = {"X-Request-Id": "verify-%d" % next(_vcount)}
    r = srv.request(method, path, token=token, json_body=body, headers=h, timeout=60)
    return r


_vcount = iter(range(1, 10 ** 9))


def decrypt_all(srv, st, cts):
    """Decrypts cts in batches per key; returns a list of failures."""
    fails = []
    by_key = {}
    for c in cts:
        by_key.setdefault(c.key, []).append(c)
    for key, lst in by_key.items():
        for i in range(0, len(lst), BATCH):
            chunk = lst[i:i + BATCH]
            items = []
            for c in chunk:
                it = {"ciphertext": c.ct}
                if c.ctx:
                    it["encryption_context"] = c.ctx
                items.append(it)
            r = vreq(srv, "/v1/%s/decrypt/%s" % (st.tenant, key), {"batch_input": items},
                     st.token)
            if r.status_code not in (200, 400):
                fails.append("batch decrypt %s -> %d %s" % (key, r.status_code, r.text[:300]))
                continue
            res = r.json().get("data", {}).get("batch_results")
            if not isinstance(res, list) or len(res) != len(chunk):
                fails.append("batch decrypt %s -> %d %s" % (key, r.status_code, r.text[:300]))
                continue
            for c, x in zip(chunk, res):
                if "error" in x or "plaintext" not in x:
                    fails.append("ciphertext from %s (iteration %d, key %s) no longer "
                                 "decrypts: %s" % (c.rid, c.it, key, x))
                elif c.plain is not None and x["plaintext"] != c.plain:
                    fails.append("ciphertext from %s decrypts to another plaintext" % c.rid)
    return fails


def key_latest(srv, st, key):
    r = vreq(srv, "/v1/%s/keys/%s" % (st.tenant, key), None, st.admin, method="GET")
    return r.status_code, (r.json()["data"]["latest_version"] if r.status_code == 200 else None)


# ---------------------------------------------------------------- the test


def test_crash_loop(kmsd, capsys):
    sqlite_only(kmsd, "checks the SQLite file's integrity after each crash")
    srv = kmsd
    assert os.access(KMSCTL, os.X_OK), "%s missing (make)" % KMSCTL
    t = srv.create_tenant()
    keys = [srv.create_key(t), srv.create_key(t)]
    shred = srv.create_tenant(retention="non-phi")
    doc = srv.get("/v1/sys/policy", token=srv.admin_token).json()["data"]["document"]
    st = State(t, keys, srv.service([t]), srv.admin_token, shred, doc)
    audit = AuditReader(srv.audit_path)
    totals = dict(torn=0, torn_injected=0, in_flight=0, redecrypted=0, checked=0, cut=0,
                  verified=0)
    t0 = time.monotonic()
    load_time = 0.0

    for it in range(1, ITER + 1):
        where = ctx_msg(", iteration %d/%d" % (it, ITER))
        rng = random.Random("%d/%d" % (SEED, it))   # independent of earlier timing
        nthreads = rng.randint(4, 8)
        dur = rng.uniform(0.05, 0.4)
        stop = threading.Event()
        workers = [Worker(srv, st, it, i, random.Random(rng.getrandbits(64)), stop)
                   for i in range(nthreads)]
        for w in workers:
            w.start()
        time.sleep(dur)
        srv.kill()                       # SIGKILL with requests in flight
        stop.set()
        for w in workers:
            w.join(timeout=TIMEOUT + 30)
            assert not w.is_alive(), where + ": a client thread hangs"
        load_time += dur

        size, keep = audit.tail_state()
        torn = size - keep
        if torn:
            totals["torn"] += 1
        elif rng.random() < TEAR and size:
            # A SIGKILL rarely tears a write(); a power cut does (the record was never
            # synced, so never acknowledged). Simulate one: a prefix of a next record.
            with open(srv.audit_path, "rb") as f:
                f.seek(max(0, size - 4096))
                last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            torn = rng.randrange(1, len(last))
            with open(srv.audit_path, "ab") as f:
                f.write(last[:torn])
            totals["torn_injected"] += 1
        srv.start()

        # (a) the store
        res = integrity_ok(srv.store_path)
        assert res == [("ok",)], "%s: integrity_check: %r" % (where, res)

        # (b) the chain (checked record by record by read_new; the whole log with its
        # signatures by kmsctl every 10th iteration and after a torn tail), and the
        # recovery record for a torn tail
        if it % 10 == 0 or torn or it == ITER:
            v = audit_verify(srv.audit_path)
            assert v.returncode == 0, "%s: kmsctl audit verify exit %d:\n%s%s" % (
                where, v.returncode, v.stdout, v.stderr)
            totals["verified"] += 1
        n_rec_before = len(audit.recovered)
        audit.read_new()
        if torn:
            want = "cut a torn tail of %d bytes at offset %d" % (torn, keep)
            assert want in audit.recovered[n_rec_before:], "%s: torn tail of %d bytes, " \
                "recovery records %r" % (where, torn, audit.recovered[n_rec_before:])
        else:
            assert len(audit.recovered) == n_rec_before, "%s: audit.recovered without a " \
                "torn tail: %r" % (where, audit.recovered[n_rec_before:])

        # (c) acknowledged requests are in the log with their status
        log = [x for w in workers for x in w.log]
        lost, wrong = [], []
        for rid, op, status in log:
            st.sent += 1
            if status is None:
                st.unknown += 1
                continue
            st.acked[rid] = status
            got = audit.by_rid.get(rid, "absent")
            if status == 200:
                st.ops[op] = st.ops.get(op, 0) + 1
                totals["checked"] += 1
                if got == "absent":
                    lost.append("%s (%s)" % (rid, op))
                elif got != 200:
                    wrong.append("%s (%s): logged %r" % (rid, op, got))
            elif got not in ("absent", status):
                wrong.append("%s (%s): answered %d, logged %r" % (rid, op, status, got))
        totals["in_flight"] += sum(1 for x in log if x[2] is None)
        totals["cut"] += sum(w.cut for w in workers)
        bad = [b for w in workers for b in w.bad]
        assert not lost, "%s: %d acknowledged request(s) without an audit record " \
            "(lost): %s" % (where, len(lost), lost[:20])
        assert not wrong, "%s: audit status differs: %s" % (where, wrong[:20])
        assert not bad, "%s: unexpected answers under load: %s" % (where, bad[:10])

        # (d) ciphertexts still decrypt; rotations and versions are visible
        new_cts = [c for w in workers for c in w.new_cts]
        with st.cts_lock:
            old = [c for c in st.cts if c.it < it]
        sample = rng.sample(old, min(OLD_SAMPLE, len(old)))
        fails = decrypt_all(srv, st, new_cts + sample)
        totals["redecrypted"] += len(new_cts) + len(sample)
        assert not fails, "%s: %s" % (where, fails[:10])
        touched = {}
        for w in workers:
            for k, v_ in w.rotated + w.versions:
                touched[k] = max(touched.get(k, 0), v_)
        for k, v_ in touched.items():
            st.min_latest[k] = max(st.min_latest.get(k, 1), v_)
        # (e) created keys exist
        for w in workers:
            for k in w.created:
                st.created.append((it, k))
                st.min_latest.setdefault(k, 1)
                touched.setdefault(k, 1)
        for k in touched:
            code, latest = key_latest(srv, st, k)
            assert code == 200, "%s: key %s (acknowledged) -> %d" % (where, k, code)
            assert latest >= st.min_latest[k], "%s: key %s latest_version %d < %d " \
                "acknowledged" % (where, k, latest, st.min_latest[k])
        for w in workers:
            st.scheduled += w.scheduled
            for k in w.scheduled:
                r = vreq(srv, "/v1/%s/keys/%s" % (st.shred_tenant, k), None, st.admin,
                         method="GET")
                assert r.status_code == 200, "%s: shred key %s -> %d" % (where, k, r.status_code)
                state = r.json()["data"]["versions"]["1"]["state"]
                assert state == "pending-destruction", "%s: %s v1 acknowledged as scheduled " \
                    "for destruction, now %s" % (where, k, state)
            st.policy_acked = max([st.policy_acked] + w.policy)
        r = vreq(srv, "/v1/sys/policy", None, st.admin, method="GET")
        assert r.status_code == 200 and r.json()["data"]["version"] >= st.policy_acked, \
            "%s: policy version %s < %d acknowledged" % (where, r.text[:100], st.policy_acked)

    # Once more over everything: no earlier record, ciphertext or key went missing.
    audit.read_new()
    missing = [rid for rid, s in st.acked.items() if s == 200 and audit.by_rid.get(rid) != 200]
    assert not missing, ctx_msg(": final pass: %d acknowledged records lost: %s" % (
        len(missing), missing[:20]))
    fails = decrypt_all(srv, st, st.cts)
    assert not fails, ctx_msg(": final pass: %s" % fails[:10])
    for k, want in st.min_latest.items():
        code, latest = key_latest(srv, st, k)
        assert code == 200 and latest >= want, ctx_msg(": final pass: key %s -> %d %r < %d"
                                                       % (k, code, latest, want))
    # A clean stop signs the whole log (checkpoint "requested"): no unsigned tail.
    srv.proc.terminate()
    rc = srv.proc.wait(timeout=60)
    assert rc == 0, ctx_msg(": kmsd exit status after SIGTERM: %r" % rc)
    v = audit_verify(srv.audit_path)
    assert v.returncode == 0, ctx_msg(": final verify:\n%s%s" % (v.stdout, v.stderr))
    assert "unsigned tail" not in v.stdout, ctx_msg(": final verify: %s" % v.stdout)
    srv.start()                          # the fixture's teardown stops it again

    acked200 = sum(1 for s in st.acked.values() if s == 200)
    with capsys.disabled():
        print("\ncrash loop (%s, seed %d): %d iterations in %.1f s (load %.1f s)\n"
              "  requests: %d sent, %d acknowledged (%d with 200: %s), %d unknown "
              "(in flight at the kill or refused after it), %d 200s whose body the kill cut\n"
              "  audit: %d records read, %d acknowledged records checked, lost = 0, "
              "torn tails cut and recorded: %d left by the kill + %d simulated\n"
              "  data: %d ciphertexts re-decrypted after restarts + %d in the final pass, "
              "%d keys created, %d versions, %d versions scheduled for destruction, "
              "policy at version %d\n"
              "  kmsctl audit verify: %d full runs during the loop, finally %s" % (
                  os.path.relpath(srv.bin), SEED, ITER, time.monotonic() - t0, load_time,
                  st.sent, len(st.acked), acked200,
                  ", ".join("%s %d" % kv for kv in sorted(st.ops.items())), st.unknown,
                  totals["cut"], audit.records, totals["checked"], totals["torn"],
                  totals["torn_injected"], totals["redecrypted"], len(st.cts), len(st.created),
                  sum(st.min_latest.values()), len(st.scheduled), st.policy_acked,
                  totals["verified"], v.stdout.strip()))
