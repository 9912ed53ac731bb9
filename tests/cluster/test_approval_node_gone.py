"""An approved request left `executing` by a node that dies (kill -9 between the final
vote and the end of the run) is marked `interrupted` by the scheduler's holder once the
dead node's run lease is free: audited as approval.interrupt with the node and run that ran it,
shown as interrupted on every node, never run again. While the node is alive, however
long its run takes, nobody touches the request. The node, started again, marks nothing
twice (docs/SCALE-OUT.md "Approvals left executing"). The window is made with the test
hook KMSD_TEST_APPROVAL_EXEC_DELAY_MS on the victim only."""

import subprocess
import threading
import time

import pytest
import requests

from conftest import BOUND, uniq, wait_until

CLUSTER_NODES = 2
HOOK = "KMSD_TEST_APPROVAL_EXEC_DELAY_MS"


def row(cluster, aid):
    """[state, node of the run that executes it, interrupted], and that run's id."""
    out = subprocess.run(["psql", cluster.pg_uri, "-v", "ON_ERROR_STOP=1", "-qAtc",
                          "SELECT state, coalesce(executor, ''), interrupted FROM approval_requests "
                          "WHERE id = '%s'" % aid],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    if not out:
        return None, None
    state, executor, interrupted = out.split("|")
    node, _, run = executor.partition("/")
    return [state, node, interrupted], run


def scheduler_holder(cluster):
    """Index of the node that holds the scheduler lease, once exactly one does."""
    def holders():
        got = []
        for i, nd in enumerate(cluster.nodes):
            r = cluster.api(i).get("/v1/sys/health")
            if r.status_code == 200 and r.json().get("cluster", {}).get("scheduler"):
                got.append(i)
        return got

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = holders()
        if len(h) == 1:
            return h[0]
        time.sleep(0.2)
    pytest.fail("no single scheduler lease holder: %r" % holders())


def interrupts(cluster, aid):
    return [r for r in cluster.all_audit_records()
            if r.get("operation") == "approval.interrupt" and r.get("approval_id") == aid]


def test_request_of_a_dead_node_is_interrupted_by_a_live_one(cluster):
    if cluster.store != "pg":
        pytest.skip("nodes and their leases are PostgreSQL's (KMS_CLUSTER_STORE=pg)")
    lead = scheduler_holder(cluster)
    vi = 1 - lead
    victim, holder = cluster.nodes[vi], cluster.nodes[lead]
    a = cluster.api(lead)

    # the victim again, with a pause between the final vote and the run
    assert victim.stop() == 0
    cluster.env[HOOK] = "60000"
    try:
        victim.start()
    finally:
        del cluster.env[HOOK]
    assert scheduler_holder(cluster) == lead

    approvers = []
    for _ in range(2):
        p = a.principal(role="admin")
        approvers.append(a.token(p)[0])
    tenant = a.tenant()
    key = a.key(tenant, uniq("q-k"))
    r = a.post("/v1/%s/keys/%s/rotate" % (tenant, key), {}, token=a.admin_token)
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]
    a.admin("/v1/sys/approvals/%s/approve" % aid, {}, token=approvers[0])

    answers = []

    def final_vote():
        try:
            answers.append(requests.post(victim.url + "/v1/sys/approvals/%s/approve" % aid, json={},
                                         headers={"X-Vault-Token": approvers[1]}, verify=cluster.ca,
                                         timeout=90).status_code)
        except requests.RequestException as e:  # the kill cuts the connection
            answers.append(type(e).__name__)

    th = threading.Thread(target=final_vote)
    th.start()
    try:
        wait_until(lambda: row(cluster, aid)[0] == ["executing", victim.node_id, "0"], 10,
                   "the request executing on the victim")
        run = row(cluster, aid)[1]
        assert len(run) == 16, run
        # alive, however long it takes: three sync rounds later nobody has touched it
        time.sleep(3 * BOUND)
        assert row(cluster, aid)[0] == ["executing", victim.node_id, "0"]
        assert interrupts(cluster, aid) == []

        victim.kill()
        cluster.killed.add(victim.node_id)
    finally:
        th.join(timeout=100)
    assert not th.is_alive()
    assert answers and answers[0] != 200, answers

    # the holder sees the dead node's lease free within a sync round or two
    wait_until(lambda: row(cluster, aid)[0] == ["executing", victim.node_id, "1"], 2 * BOUND,
               "the dead node's request marked interrupted")
    r = a.get("/v1/sys/approvals/" + aid, token=a.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["state"] == "interrupted" and d["finished"] > 0, d
    assert "result" not in d
    recs = interrupts(cluster, aid)
    assert len(recs) == 1, recs
    x = recs[0]
    assert x["node"] == holder.node_id and x["executing_node"] == victim.node_id, x
    assert x["executing_run"] == run, x
    assert x["outcome"] == "error" and x["approval_event"] == "interrupted", x
    assert x["tenant"] == tenant and x["key"] == key and x["approved_operation"] == "key.rotate", x
    # never run: no rotation, no execution record, and it cannot be voted on again
    assert a.key_info(tenant, key)["latest_version"] == 1
    assert not [r for r in cluster.all_audit_records()
                if r.get("approval_id") == aid and r.get("auth_method") == "approval"]
    r = a.post("/v1/sys/approvals/%s/approve" % aid, {}, token=approvers[1])
    assert r.status_code == 409, r.text

    # the victim comes back (without the pause): nothing is marked twice, and it serves
    victim.start()
    cluster.killed.discard(victim.node_id)
    b = cluster.api(vi)
    r = b.get("/v1/sys/approvals/" + aid, token=b.admin_token)
    assert r.status_code == 200 and r.json()["data"]["state"] == "interrupted", r.text
    time.sleep(2 * BOUND)
    assert len(interrupts(cluster, aid)) == 1
    assert row(cluster, aid) == (["executing", victim.node_id, "1"], run)
