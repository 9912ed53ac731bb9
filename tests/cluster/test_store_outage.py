"""A node that cannot read the other nodes' changes stops serving (docs/SCALE-OUT.md
"The coherence bound", fail closed), and serves again once it can.

PostgreSQL is stopped under a running cluster. Requests that need no store read (a
data key with a cached token) would otherwise go on, while a revocation made meanwhile
could not reach the node: after 3 x cluster_sync_ms (at least 3 s) without reading the
change log every node answers 503 and its health check fails (`checks.cluster`). When
PostgreSQL is back, the nodes reconnect by themselves, serve again, and follow changes
again (a token revoked on A is refused on B within the bound)."""

import os
import subprocess
import time

import pytest

from conftest import BOUND, REPO, World, wait_until

CLUSTER_NODES = 2
STALE = max(3 * BOUND, 3.0)  # cluster.c: STALE_PERIODS x cluster_sync_ms, at least 3 s


def pgtmp(*args):
    subprocess.run(["sh", os.path.join(REPO, "scripts", "pgtmp.sh")] + list(args), check=True,
                   stdout=subprocess.DEVNULL, timeout=180)


def test_node_refuses_while_it_cannot_read_changes_and_recovers(cluster):
    if cluster.store != "pg":
        pytest.skip("the change log is PostgreSQL's (KMS_CLUSTER_STORE=pg)")
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    # B has applied every change World made (each emptied its authentication cache), and
    # then caches the token and the key: from here its data keys need no store read
    time.sleep(BOUND + 0.5)
    wait_until(lambda: b.datakey(w.tok, w.tenant, w.key).status_code == 200, BOUND, "datakey on B")
    assert b.datakey(w.tok, w.tenant, w.key).status_code == 200
    r = b.get("/v1/sys/health")
    assert r.status_code == 200 and r.json()["checks"]["cluster"] == "ok", r.text

    t0 = time.monotonic()  # before the stop, which takes a while itself
    pgtmp("stop", cluster.pg_dir)
    stop_took = time.monotonic() - t0
    try:
        served = 0
        while True:
            r = b.datakey(w.tok, w.tenant, w.key)
            if r.status_code == 503:
                break
            assert r.status_code == 200, r.text
            served += 1
            assert time.monotonic() - t0 < STALE + 2.0, "B still serves %.1f s after PostgreSQL stopped" % (
                time.monotonic() - t0)
            time.sleep(0.05)
        took = time.monotonic() - t0
        # served from its caches at first, refused once it was too long without the log
        # (its last read of the log was at most one sync period before the stop began)
        assert took >= STALE - BOUND - 0.5, (served, took, r.text)
        if stop_took < 1.0:  # a stop that took longer may have used up the grace itself
            assert served > 0, (served, stop_took)
        assert "other nodes" in r.json()["errors"][0], r.text
        h = b.get("/v1/sys/health")
        assert h.status_code == 503, h.text
        assert h.json()["checks"]["cluster"] == "failed", h.text
        assert h.json()["cluster"]["changes_read_ms_ago"] >= 1000 * (STALE - BOUND), h.text
    finally:
        pgtmp("start", cluster.pg_dir, str(cluster.pg_port))

    def serving():
        r = b.datakey(w.tok, w.tenant, w.key)
        return True if r.status_code == 200 else (r.status_code, r.text[:200])

    wait_until(serving, 15.0, "B serves again once PostgreSQL is back")
    wait_until(lambda: b.get("/v1/sys/health").status_code == 200, 15.0, "B's health passes again")
    wait_until(lambda: a.datakey(w.tok, w.tenant, w.key).status_code == 200, 15.0, "A serves again")
    # and follows changes again: a token revoked on A is refused on B within the bound
    a.admin("/v1/sys/tokens/revoke", {"accessor": w.accessor})
    wait_until(lambda: b.datakey(w.tok, w.tenant, w.key).status_code in (401, 403), BOUND,
               "token revoked on A refused on B after the outage")
