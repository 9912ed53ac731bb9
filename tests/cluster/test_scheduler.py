"""The scheduler runs on one node at a time and moves to a survivor (issue 10
acceptance): with scheduler_interval 1 and the test clock (one clock file for every
node), a key whose auto_rotate_period passes is rotated once per period, by one node; when
that node is killed (-9), the next period's rotation is done by the other. The audit
record's `node` says who did it."""

import time

from conftest import World

CLUSTER_NODES = 2
CLUSTER_TEST_CLOCK = True
CLUSTER_EXTRA_OPTS = [("scheduler_interval", "1")]
PERIOD = 3600
# how long a survivor may take to take over: the lead's lease must expire first
TAKEOVER = 30.0


def scheduled(cluster, key):
    return sorted((r for r in cluster.all_audit_records()
                   if r.get("operation") == "key.rotate" and r.get("key") == key
                   and r.get("principal") == "kmsd-scheduler" and r.get("outcome") == "allow"),
                  key=lambda r: r.get("time", ""))


def wait_rotations(cluster, key, n, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = scheduled(cluster, key)
        if len(recs) >= n:
            return recs
        time.sleep(0.2)
    return scheduled(cluster, key)


def test_scheduler_moves_to_a_survivor(cluster):
    a = cluster.api(0)
    w = World(a)
    a.admin("/v1/%s/keys/%s/config" % (w.tenant, w.key), {"auto_rotate_period": PERIOD})
    offset = 0
    time.sleep(1.5)
    assert scheduled(cluster, w.key) == []

    # two periods pass, one at a time: one rotation each, by the same node (the lease holder)
    for i in (1, 2):
        offset += PERIOD + 1
        cluster.set_clock(offset)
        recs = wait_rotations(cluster, w.key, i, 10)
        assert len(recs) == i, recs
        time.sleep(2.5)  # no second node rotates the same period
        recs = scheduled(cluster, w.key)
        assert len(recs) == i, "one period, %d scheduled rotations: %s" % (len(recs), recs)
    assert recs[0]["node"] == recs[1]["node"], "the scheduler ran on two nodes: %s" % recs
    holder = recs[0]["node"]
    victim = [nd for nd in cluster.nodes if nd.node_id == holder][0]
    survivor = [nd for nd in cluster.nodes if nd.node_id != holder][0]

    victim.kill()
    cluster.killed.add(victim.node_id)
    offset += PERIOD + 1
    cluster.set_clock(offset)
    recs = wait_rotations(cluster, w.key, 3, TAKEOVER)
    assert len(recs) == 3, "no rotation within %.0f s of the lease holder's death: %s" % (TAKEOVER, recs)
    assert recs[2]["node"] == survivor.node_id, recs[2]
    info = cluster.api(survivor.index - 1).key_info(w.tenant, w.key)
    assert info["latest_version"] == 4, info["latest_version"]
    assert sorted(int(v) for v in info["versions"]) == [1, 2, 3, 4]
