"""The store remembers, per node_id, that a node has written an audit log
(meta "audit_started:<node_id>"), so that nodes sharing a store (docs/SCALE-OUT.md) each
keep a log of their own: a node that starts on a store another node has used begins its
own chain, and a node whose own log went missing still refuses to start. A store from
before the per-node key ("audit_started" = "1") is claimed by the first node to start."""

import os
import sqlite3

from conftest import Kmsd


def meta(k):
    db = sqlite3.connect("file:%s?mode=ro" % k.store_path, uri=True)
    try:
        return dict(db.execute("SELECT k, v FROM meta WHERE k LIKE 'audit_started%'").fetchall())
    finally:
        db.close()


def set_node(k, node_id, audit_path):
    with open(k.conf) as f:
        lines = [ln for ln in f if not ln.startswith(("node_id ", "audit_path "))]
    lines += ["node_id = %s\n" % node_id, "audit_path = %s\n" % audit_path]
    with open(k.conf, "w") as f:
        f.writelines(lines)
    k.node_id, k.audit_path = node_id, audit_path


def start_fails(k):
    r = k.run_cli()  # `kmsd -c CONF` in the foreground: it exits at once when it refuses
    assert r.returncode != 0
    return r.stderr


def stop_ok(k):
    rc, err = k.stop()
    assert rc == 0, err[-3000:]
    k.proc = None


def test_per_node_flag_and_the_legacy_one(tmp_path):
    k = Kmsd(tmp_path)
    k.provision()
    k.init()
    k.start()
    stop_ok(k)
    assert meta(k) == {"audit_started:itest-1": "1"}

    # a second node on the same store, with a log of its own: starts a new chain
    log2 = os.path.join(str(tmp_path), "node2", "audit.log")
    os.makedirs(os.path.dirname(log2))
    set_node(k, "itest-2", log2)
    k.start()
    stop_ok(k)
    assert meta(k) == {"audit_started:itest-1": "1", "audit_started:itest-2": "1"}
    # ... and once its log is gone, it refuses to start
    os.rename(log2, log2 + ".moved")
    assert "has written an audit log here before" in start_fails(k)
    os.rename(log2 + ".moved", log2)

    # an older store: only "audit_started" = "1". The first node to start claims it ...
    db = sqlite3.connect(k.store_path)
    with db:
        db.execute("DELETE FROM meta WHERE k LIKE 'audit_started%'")
        db.execute("INSERT INTO meta (k, v) VALUES ('audit_started', '1')")
    db.close()
    set_node(k, "itest-1", os.path.join(str(tmp_path), "audit.log"))
    os.rename(k.audit_path, k.audit_path + ".moved")
    assert "has written an audit log here before" in start_fails(k)
    os.rename(k.audit_path + ".moved", k.audit_path)
    k.start()
    stop_ok(k)
    assert meta(k) == {"audit_started": "claimed by itest-1", "audit_started:itest-1": "1"}
    # ... and a node that starts later begins a chain of its own
    log3 = os.path.join(str(tmp_path), "node3", "audit.log")
    os.makedirs(os.path.dirname(log3))
    set_node(k, "itest-3", log3)
    k.start()
    stop_ok(k)
    assert meta(k)["audit_started:itest-3"] == "1"
