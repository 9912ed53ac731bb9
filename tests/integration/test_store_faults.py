"""The metadata store under I/O faults, SQLite-style (issue 8, "I/O faults"): for each
mutating operation and each of write and sync on the store's files (kmsd.db and its
WAL), fail call N of the operation, once (nth:N) and from N on (after:N-1, persistent
until disarmed), for N = 1, 2, ... until the operation completes without reaching a
fault. After every step:

  - the answer is 200 (the fault hit something that did not matter, e.g. a checkpoint
    after the commit) or 503 with a clear message, never another status, never a crash;
  - nothing is half-done: a tenant or key answered 503 either does not exist or exists
    whole (a key with its version 1 that serves), a rotation answered 503 left the key
    at its old latest version or a complete new one, never a version without its blob;
  - PRAGMA integrity_check on the store is "ok";
  - once the fault is disarmed, the server serves again without a restart.

At the end kmsd stops cleanly (SIGTERM, exit 0) and the audit chain verifies."""

import os
import sqlite3

import pytest

from conftest import PG_URI, FaultServer, uniq

pytestmark = pytest.mark.skipif(bool(PG_URI), reason="SQLite store only: injects I/O faults into the SQLite file")

MAX_N = 40


def integrity(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = FaultServer(tmp_path_factory.mktemp("storefaults"))
    yield s
    s.disarm()
    try:
        s.verify()
    finally:
        s.stop()


def key_state(k, t, name):
    r = k.get("/v1/%s/keys/%s" % (t, name), token=k.admin_token)
    assert r.status_code in (200, 404), r.text
    return r.json()["data"] if r.status_code == 200 else None


def check_key_whole(s, t, name):
    """A key that exists serves: datakey round trip with a service token for t."""
    k = s.k
    tok = s.tokens.get(t)
    if tok is None:
        tok = s.tokens[t] = k.service([t])
    r = k.datakey(tok, t, name)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    r = k.decrypt(tok, t, name, ciphertext=d["ciphertext"])
    assert r.status_code == 200 and r.json()["data"]["plaintext"] == d["plaintext"], r.text


class Op:
    """One mutating operation: prepare() before the fault is armed, run() returns the
    response, check(resp) the invariants."""

    def __init__(self, s):
        self.s = s
        self.k = s.k

    def prepare(self):
        pass


class TenantCreate(Op):
    def run(self):
        self.name = uniq("ft")
        return self.k.post("/v1/sys/tenants/" + self.name, {"retention": "phi"},
                           token=self.k.admin_token)

    def check(self, r):
        g = self.k.get("/v1/sys/tenants/" + self.name, token=self.k.admin_token)
        if r.status_code == 200:
            assert g.status_code == 200, g.text
        else:
            assert g.status_code in (200, 404), g.text


class KeyCreate(Op):
    def run(self):
        self.name = uniq("fk")
        return self.k.post("/v1/%s/keys/%s" % (self.s.t, self.name), {},
                           token=self.k.admin_token)

    def check(self, r):
        st = key_state(self.k, self.s.t, self.name)
        if r.status_code == 200:
            assert st is not None
        if st is not None:
            assert st["latest_version"] == 1, st
            check_key_whole(self.s, self.s.t, self.name)


class KeyRotate(Op):
    def run(self):
        self.before = key_state(self.k, self.s.t, self.s.key)["latest_version"]
        return self.k.post("/v1/%s/keys/%s/rotate" % (self.s.t, self.s.key), {},
                           token=self.k.admin_token)

    def check(self, r):
        after = key_state(self.k, self.s.t, self.s.key)["latest_version"]
        if r.status_code == 200:
            assert after == self.before + 1
        else:
            assert after in (self.before, self.before + 1)
        check_key_whole(self.s, self.s.t, self.s.key)


class KeyConfig(Op):
    def run(self):
        self.want = not getattr(self, "want", False)
        return self.k.post("/v1/%s/keys/%s/config" % (self.s.t, self.s.key),
                           {"deletion_allowed": self.want}, token=self.k.admin_token)

    def check(self, r):
        st = key_state(self.k, self.s.t, self.s.key)
        if r.status_code == 200:
            assert st["deletion_allowed"] == self.want, st
        check_key_whole(self.s, self.s.t, self.s.key)


class TokenCreate(Op):
    def prepare(self):
        self.p = self.k.create_principal(tenants=[self.s.t])

    def run(self):
        return self.k.post("/v1/sys/principals/%s/tokens" % self.p, {},
                           token=self.k.admin_token)

    def check(self, r):
        if r.status_code == 200:
            tok = r.json()["auth"]["client_token"]
            assert self.k.datakey(tok, self.s.t, self.s.key).status_code == 200


OPS = [TenantCreate, KeyCreate, KeyRotate, KeyConfig, TokenCreate]


@pytest.mark.parametrize("mode", ["nth", "after"])
@pytest.mark.parametrize("call", ["write", "sync"])
@pytest.mark.parametrize("op_cls", OPS, ids=lambda c: c.__name__)
def test_store_fault_loop(srv, op_cls, call, mode):
    if not hasattr(srv, "tokens"):
        srv.tokens = {srv.t: srv.tok}
    op = op_cls(srv)
    faults = 0
    # nth:N fails call N (1-based); after:N lets N calls pass and fails the rest
    for n in range(1 if mode == "nth" else 0, MAX_N + 1):
        op.prepare()
        before = len(srv.hits())
        srv.arm("%s EIO %s:%d kmsd.db" % (call, mode, n))
        try:
            r = op.run()
        finally:
            srv.disarm()
        fired = len(srv.hits()) > before
        assert r.status_code in (200, 503), (n, r.status_code, r.text)
        if r.status_code == 503:
            assert fired, "503 without an injected fault: %s" % r.text
            msg = " ".join(r.json()["errors"])
            assert "store" in msg or "I/O" in msg or "audit" in msg, msg
        op.check(r)
        assert integrity(srv.k.store_path) == "ok"
        srv.k.serves(srv.tok, srv.t, srv.key)
        if not fired:
            assert r.status_code == 200, r.text
            break
        faults += 1
    else:
        pytest.fail("%s still reached a fault after %d calls" % (op_cls.__name__, MAX_N))
    print("%s %s %s: %d fault points" % (op_cls.__name__, call, mode, faults))
    assert faults >= 1, "the operation never touched the store with %s" % call
