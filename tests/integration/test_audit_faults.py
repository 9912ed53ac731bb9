"""The audit log under I/O faults, deletion and rotation (issue 5, "Durability, fail
closed"). Faults come from tests/iofault (an LD_PRELOAD library, build/tests/iofault.so)
armed through a control file while kmsd runs: a write or an fdatasync of the audit log
fails once with ENOSPC or EIO. Expected, each time: that call and every later key
operation answer 503 with no key material, /v1/sys/health answers 503 naming the
failure, the log is never written again by this process; after the operator restarts
kmsd the chain verifies and the server serves again. Also: the log file deleted or
replaced while kmsd runs is noticed, and a restart refuses to start a silent new chain;
segments rotated by time form one verifiable chain.

Each test runs its own kmsd (a failed log cannot be reused)."""

import glob
import json
import os
import subprocess
import time

import pytest

from conftest import FaultServer, kmsd_bin

KMSCTL = os.path.join(os.path.dirname(kmsd_bin()), "kmsctl")
Server = FaultServer


def assert_refused_503(r):
    assert r.status_code == 503, r.text
    body = r.json()
    assert "audit log unavailable" in " ".join(body["errors"]), body
    assert "data" not in body and "plaintext" not in r.text, "key material left: %s" % r.text


def health_failure(k):
    r = k.get("/v1/sys/health")
    assert r.status_code == 503, r.text
    checks = r.json()["checks"]
    assert checks["audit"] == "failed", checks
    return checks["audit_error"]


@pytest.mark.parametrize("call,err,text", [
    ("write", "ENOSPC", "No space left on device"),
    ("write", "EIO", "Input/output error"),
    ("sync", "EIO", "Input/output error"),
    ("sync", "ENOSPC", "No space left on device"),
])
def test_fault_fails_closed_and_recovers_on_restart(tmp_path, call, err, text):
    s = Server(tmp_path)
    k = s.k
    try:
        k.serves(s.tok, s.t, s.key)
        s.arm("%s %s once audit.log" % (call, err))
        r = k.datakey(s.tok, s.t, s.key)
        assert_refused_503(r)
        assert len(s.hits()) == 1 and s.hits()[0].startswith(call), s.hits()
        s.disarm()
        # a failed log is never retried: still refused although the fault is gone
        for _ in range(3):
            assert_refused_503(k.datakey(s.tok, s.t, s.key))
            assert_refused_503(k.post("/v1/%s/keys/%s/rotate" % (s.t, s.key), {},
                                      token=k.admin_token))
        why = health_failure(k)
        assert text in why and "audit.log" in why, why
        assert len(s.hits()) == 1, "the log was written again after failing: %s" % s.hits()
        size = os.path.getsize(k.audit_path)
        time.sleep(1.2)  # the idle timer must not write either
        assert os.path.getsize(k.audit_path) == size
        s.stop()
        # the operator's recovery: restart (the fault is gone)
        k.start()
        k.serves(s.tok, s.t, s.key)
        out = s.verify()
        assert out.startswith("ok"), out
    except BaseException:
        k.kill()
        raise
    s.stop()


class DatakeyLoad:
    """Client threads asking for data keys on a FaultServer's key until stop(), each
    request with the id "<prefix>.<thread>.<n>" (n counts that thread's tries). seen:
    (request_id, status, key material in the answer, thread, n) per answer; cut: the
    ids whose connection failed."""

    def __init__(self, s, prefix, threads=16):
        import threading
        self.s, self.prefix = s, prefix
        self.url = s.k.url + "/v1/%s/datakey/plaintext/%s" % (s.t, s.key)
        self.seen, self.cut = [], []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(threads)]

    def _client(self, t):
        import requests
        sess = requests.Session()
        n = 0
        while not self.stopping.is_set():
            rid = "%s.%d.%d" % (self.prefix, t, n)
            n += 1
            try:
                r = sess.post(self.url, data="{}", verify=self.s.k.ca, timeout=30,
                              headers={"X-Vault-Token": self.s.tok, "X-Request-Id": rid,
                                       "Content-Type": "application/json"})
            except requests.RequestException:
                with self.lock:
                    self.cut.append(rid)
                time.sleep(0.01)
                continue
            with self.lock:
                self.seen.append((rid, r.status_code, "plaintext" in r.text, t, n))

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(60)

    def answered(self, status=None):
        with self.lock:
            return sum(1 for x in self.seen if status is None or x[1] == status)

    def wait_answered(self, n, status=None, timeout=30):
        deadline = time.monotonic() + timeout
        while self.answered(status) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def logged(self):
        """request_id -> status of this load's records in the audit log."""
        out = {}
        with open(self.s.k.audit_path) as f:
            for line in f:
                rec = json.loads(line)
                rid = rec.get("request_id") or ""
                if rid.startswith(self.prefix + "."):
                    out[rid] = rec.get("status")
        return out


def test_stop_under_load_answers_only_durable(tmp_path):
    """kmsd stopped (SIGTERM) while 16 clients keep asking for data keys and every sync
    of the audit log takes 50 ms (tests/iofault "SLOW"), so that answers are held for
    their sync when the stop begins and new ones arrive while it runs: kmsd exits 0 in
    time with no sanitizer finding; every answer a client got is a 200 with its record
    in the log (or a 503 with no key material), the rest lose their connection; the log
    verifies and its tail is signed."""
    s = Server(tmp_path)
    k = s.k
    load = DatakeyLoad(s, "stop")
    try:
        k.serves(s.tok, s.t, s.key)
        load.start()
        load.wait_answered(100)
        s.arm("sync SLOW always audit.log")
        load.wait_answered(load.answered() + 32)
        assert s.hits(), "no slow sync yet"
        t0 = time.monotonic()
        s.stop()  # SIGTERM while the clients go on; asserts exit 0 and no sanitizer report
        took = time.monotonic() - t0
    finally:
        load.stop()
        k.kill()
    assert took < 30, "kmsd took %.1f s to stop under load" % took
    ok = [x for x in load.seen if x[1] == 200]
    assert len(ok) >= 132, len(ok)
    assert {x[1] for x in load.seen} <= {200, 503}, {x[1] for x in load.seen}
    assert all(x[2] for x in ok)
    assert not any(x[2] for x in load.seen if x[1] != 200), "key material left with a 503"
    assert load.cut, "no request was cut by the stop: the clients stopped too early"
    logged = load.logged()
    missing = [x[0] for x in ok if logged.get(x[0]) != 200]
    assert not missing, "answered 200 without a durable record: %s" % missing[:10]
    s.disarm()
    out = s.verify()
    assert out.startswith("ok") and "unsigned tail" not in out, out


@pytest.mark.parametrize("call", ["write", "sync"])
def test_fault_under_load_drops_every_held_answer(tmp_path, call):
    """Data-plane answers are held (their connection suspended) while their record
    waits for the group commit, many per sync. A write or sync that fails under
    concurrent load: every answer it covered is refused (503, no key material)
    although the operation had run, every request answered 200 has its record in the
    log, and after the failure nothing is answered 200 again; kmsd stops cleanly. (A
    failed write leaves its records out of the file, so an answer sent for one of them
    shows as a 200 without a record; a failed sync leaves them in the page cache.)"""
    s = Server(tmp_path)
    k = s.k
    load = DatakeyLoad(s, "held")
    try:
        k.serves(s.tok, s.t, s.key)
        load.start()
        time.sleep(0.5)
        s.arm("%s EIO once audit.log" % call)
        load.wait_answered(32, status=503)
        load.stop()
        # the server still holds nothing: a held answer after the failure would hang
        assert_refused_503(k.datakey(s.tok, s.t, s.key))
        s.stop()
    except BaseException:
        load.stop()
        k.kill()
        raise
    seen = load.seen
    assert len(s.hits()) == 1 and s.hits()[0].startswith(call), s.hits()
    ok = [x for x in seen if x[1] == 200]
    refused = [x for x in seen if x[1] == 503]
    assert ok and len(refused) >= 32, (len(ok), len(refused))
    assert {x[1] for x in seen} <= {200, 503}, {x[1] for x in seen}
    assert all(x[2] for x in ok)
    assert not any(x[2] for x in refused), "key material left with a 503"
    # per thread: once refused, never answered 200 again (a failed log is not retried)
    first_refusal = {}
    for rid, st, _, t, n in seen:
        if st == 503:
            first_refusal[t] = min(first_refusal.get(t, n), n)
    for rid, st, _, t, n in seen:
        assert not (st == 200 and t in first_refusal and n > first_refusal[t]), rid
    # every acknowledged data key has its record, with status 200
    logged = load.logged()
    missing = [x[0] for x in ok if logged.get(x[0]) != 200]
    assert not missing, "answered 200 without a durable record: %s" % missing[:10]


def test_persistent_fault_refuses_start(tmp_path):
    """A disk that stays full: kmsd does not start rather than serve unaudited."""
    s = Server(tmp_path)
    k = s.k
    try:
        s.arm("write ENOSPC always audit.log")
        assert_refused_503(k.datakey(s.tok, s.t, s.key))
        s.stop()
        # nothing needs writing at start-up (the failed write wrote nothing), so kmsd
        # may start; then the first key operation must be refused again
        try:
            os.unlink(k.port_file)
        except FileNotFoundError:
            pass
        k.proc = subprocess.Popen([k.bin, "-c", k.conf], env=k.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=k.tmp)
        deadline = time.monotonic() + 60
        while k.proc.poll() is None and not os.path.exists(k.port_file):
            assert time.monotonic() < deadline, "kmsd neither started nor exited"
            time.sleep(0.05)
        if k.proc.poll() is None:
            time.sleep(0.2)
            k.port = int(open(k.port_file).read())
            k.url = "https://127.0.0.1:%d" % k.port
            assert_refused_503(k.datakey(s.tok, s.t, s.key))
            assert health_failure(k)
            k.proc.kill()
            k.proc.wait()
        else:
            assert k.proc.returncode != 0
        s.disarm()
        k.start()
        k.serves(s.tok, s.t, s.key)
        assert s.verify().startswith("ok")
    except BaseException:
        k.kill()
        raise
    s.stop()


def test_deleted_log_detected_and_restart_refused(tmp_path):
    s = Server(tmp_path, preload=False)
    k = s.k
    try:
        k.serves(s.tok, s.t, s.key)
        os.unlink(k.audit_path)
        assert_refused_503(k.datakey(s.tok, s.t, s.key))
        why = health_failure(k)
        assert "deleted" in why, why
        s.stop()
        # restart: kmsd knows it wrote a log here and refuses a silent new chain
        r = subprocess.run([k.bin, "-c", k.conf], env=k.env, capture_output=True, text=True,
                           timeout=60, cwd=k.tmp)
        assert r.returncode != 0
        assert "deleted or moved" in r.stderr, r.stderr
        # the operator accepts the loss knowingly: an empty file
        open(k.audit_path, "w").close()
        k.start()
        k.serves(s.tok, s.t, s.key)
        with open(k.audit_path) as f:
            first = json.loads(f.readline())
        assert first["operation"] == "audit.recovered" and first["seq"] == 1
        assert "new chain" in first["reason"], first
        assert s.verify().startswith("ok")
    except BaseException:
        k.kill()
        raise
    s.stop()


def test_idle_log_replaced_detected(tmp_path):
    s = Server(tmp_path, preload=False)
    k = s.k
    try:
        os.rename(k.audit_path, k.audit_path + ".moved")
        open(k.audit_path, "w").close()
        for _ in range(50):  # the timer looks once a second
            if k.get("/v1/sys/health").status_code == 503:
                break
            time.sleep(0.1)
        why = health_failure(k)
        assert "replaced" in why, why
        assert_refused_503(k.datakey(s.tok, s.t, s.key))
    except BaseException:
        k.kill()
        raise
    k.stop()


def test_segments_rotate_by_time_and_verify(tmp_path):
    s = Server(tmp_path, extra_opts=[("audit_segment_seconds", "1")], preload=False)
    k = s.k
    try:
        for _ in range(3):
            k.serves(s.tok, s.t, s.key)
            time.sleep(1.1)
        k.serves(s.tok, s.t, s.key)
        segs = s.segments()
        assert len(segs) >= 3, segs
        r = k.get("/v1/sys/metrics", token=k.admin_token)
        assert r.json()["data"]["audit"]["segments_rotated_total"] >= 3
        # each segment starts where the previous one ended
        last = 0
        for p in segs + [k.audit_path]:
            with open(p) as f:
                lines = f.read().splitlines()
            if not lines:
                continue
            first = json.loads(lines[0])["seq"]
            assert first == last + 1, (p, first, last)
            last = json.loads(lines[-1])["seq"]
            assert os.stat(p).st_mode & 0o077 == 0
        out = s.verify()
        assert out.startswith("ok"), out
        # as the docs say it: the sorted glob, and the key found next to audit.log
        files = sorted(glob.glob(os.path.join(os.path.dirname(k.audit_path), "audit*.log")))
        assert files[-1] == k.audit_path and len(files) == len(segs) + 1, files
        r = subprocess.run([KMSCTL, "audit", "verify"] + files, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
        # any order, or the directory; after retention removed the oldest segment,
        # only --partial accepts the rest
        d = os.path.dirname(k.audit_path)
        for args in (list(reversed(files)), [d]):
            r = subprocess.run([KMSCTL, "audit", "verify"] + args, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0 and r.stdout == out, r.stdout + r.stderr
        os.rename(segs[0], os.path.join(str(tmp_path), "expired.log"))
        r = subprocess.run([KMSCTL, "audit", "verify", d], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and "deleted" in r.stdout, r.stdout + r.stderr
        r = subprocess.run([KMSCTL, "audit", "verify", "--partial", d], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "from seq" in r.stdout, r.stdout + r.stderr
        os.rename(os.path.join(str(tmp_path), "expired.log"), segs[0])
        s.stop()
        # a restart continues the chain after the newest segment
        k.start()
        k.serves(s.tok, s.t, s.key)
        assert s.verify().startswith("ok")
    except BaseException:
        k.kill()
        raise
    s.stop()


@pytest.mark.parametrize("rule", ["open EIO always audit.log.next",
                                  "rename EIO always audit.log"])
def test_rotation_fault_postpones(tmp_path, rule):
    """A rotation that cannot start (the new file cannot be made, or cannot take the
    log's name) is undone and postponed: requests go on in the current file, the log
    stays healthy, and the chain verifies; after a restart rotation works again."""
    s = Server(tmp_path, extra_opts=[("audit_segment_seconds", "1")])
    k = s.k
    try:
        s.arm(rule)
        # set-up may already have rotated (a slow build takes over a second): only
        # what happens once the fault is armed counts
        time.sleep(0.2)
        before = s.segments()
        time.sleep(1.1)
        for _ in range(3):
            k.serves(s.tok, s.t, s.key)
        assert s.hits(), "the rotation was not attempted"
        assert s.segments() == before and not os.path.exists(k.audit_path + ".next")
        assert k.get("/v1/sys/health").status_code == 200
        s.disarm()
        assert s.verify().startswith("ok")
        s.stop()
        k.start()
        time.sleep(1.1)
        k.serves(s.tok, s.t, s.key)
        k.serves(s.tok, s.t, s.key)
        assert len(s.segments()) > len(before)
        assert s.verify().startswith("ok")
    except BaseException:
        k.kill()
        raise
    s.stop()
