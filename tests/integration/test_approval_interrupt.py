"""An approved request that a crash leaves `executing` (kmsd killed between the final
vote and the end of the run) is marked `interrupted` when kmsd starts again: audited as
approval.interrupt, shown by GET /v1/sys/approvals, and never run again (docs/API.md
"Approvals"). The window is made with the test hook KMSD_TEST_APPROVAL_EXEC_DELAY_MS
(a pause after the final vote, before the run) and closed with SIGKILL.

On PostgreSQL (make check-pg) the request names the run of kmsd that runs it
("<node_id>/<run>"), and kmsd, started again, marks those of runs that ended before it
serves (docs/SCALE-OUT.md "Approvals left executing"); tests/cluster/test_approval_node_gone.py
covers another node marking them."""

import json
import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import PG_URI, pg_query, uniq


POLICY = {
    "version": 2,
    "description": "test_approval_interrupt: admins manage; rotating qi-* keys needs one approval",
    "rules": [
        {"name": "health-is-public", "effect": "allow", "principals": ["*"], "operations": ["sys.health"]},
        {"name": "admin-management", "effect": "allow", "principals": ["role:admin"], "operations": ["*"]},
        {"name": "qi-rotate-needs-one", "effect": "allow", "principals": ["role:admin"], "keys": ["qi-*"],
         "operations": ["key.rotate"], "require_quorum": 1},
    ],
}

_DIR = tempfile.mkdtemp(prefix="kmsd-interrupt-")
POLICY_FILE = os.path.join(_DIR, "policy.json")
with open(POLICY_FILE, "w") as _f:
    json.dump(POLICY, _f, indent=2)

KMSD_EXTRA_OPTS = [("policy_file", POLICY_FILE), ("workers", "4")]
HOOK = "KMSD_TEST_APPROVAL_EXEC_DELAY_MS"


def hold_lease(uri, name):
    """A psql session that holds one of kmsd's leases on a PostgreSQL store (the
    advisory lock whose key is the FNV-1a hash of its name, kms/store/store.c) until
    its stdin is closed; waits for the killed kmsd's session to let go of it first."""
    h = 1469598103934665603
    for b in name.encode():
        h = ((h ^ b) * 1099511628211) % 2 ** 64
    key = h - 2 ** 64 if h >= 2 ** 63 else h
    p = subprocess.Popen(["psql", uri, "-qAt", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        p.stdin.write("SELECT pg_try_advisory_lock(%d);\n" % key)
        p.stdin.flush()
        if p.stdout.readline().strip() == "t":
            return p
        assert time.monotonic() < deadline, "the lease %s was not let go" % name
        time.sleep(0.1)


def let_go(lease):
    lease.stdin.close()
    lease.wait(timeout=30)


def audit_records(kmsd):
    with open(kmsd.audit_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def show(kmsd, aid):
    r = kmsd.get("/v1/sys/approvals/" + aid, token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def leave_executing(kmsd):
    """Makes an approved key.rotate that kmsd is running when it is killed (SIGKILL between
    the final vote and the run). Returns the request's id, the approvers' names and
    tokens, the tenant and key, and on PostgreSQL the run that was executing it."""
    names = {}
    toks = {}
    for who in ("b", "c"):
        names[who] = uniq("adm-" + who)
        kmsd.create_principal(names[who], role="admin")
        toks[who] = kmsd.create_token(names[who])[0]
    tenant = kmsd.create_tenant()
    key = kmsd.create_key(tenant, uniq("qi-k"))
    r = kmsd.post("/v1/%s/keys/%s/rotate" % (tenant, key), {}, token=kmsd.admin_token)
    assert r.status_code == 202, r.text
    aid = r.json()["data"]["approval_id"]

    # restart with the pause between the final vote and the run
    kmsd.stop()
    kmsd.env[HOOK] = "60000"
    kmsd.start()
    answers = []

    def vote():
        try:
            answers.append(requests.post(kmsd.url + "/v1/sys/approvals/%s/approve" % aid, json={},
                                         headers={"X-Vault-Token": toks["b"]}, verify=kmsd.ca,
                                         timeout=90).status_code)
        except requests.RequestException as e:  # the kill cuts the connection
            answers.append(type(e).__name__)

    th = threading.Thread(target=vote)
    th.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and state_now(kmsd, aid) != "executing":
        time.sleep(0.05)
    assert state_now(kmsd, aid) == "executing"
    executor = None
    if kmsd.store_uri:
        rows = pg_query(kmsd.store_uri, "SELECT executor, interrupted FROM approval_requests "
                                        "WHERE id = '%s'" % aid)
        assert len(rows) == 1 and rows[0][1] == "0", rows
        assert re.fullmatch(re.escape(kmsd.node_id) + "/[0-9a-f]{16}", rows[0][0]), rows
        executor = rows[0][0]
    kmsd.kill()  # SIGKILL between the final vote and the end of the run
    th.join(timeout=60)
    assert not th.is_alive()
    assert answers and answers[0] != 200, answers
    del kmsd.env[HOOK]
    return {"id": aid, "names": names, "toks": toks, "tenant": tenant, "key": key,
            "executor": executor}


def state_now(kmsd, aid):
    """The request's state read from the store, not over HTTP: a paused request holds
    one of kmsd's worker threads, and the point is the state it left behind."""
    if kmsd.store_uri:
        rows = pg_query(kmsd.store_uri, "SELECT state FROM approval_requests WHERE id = '%s'" % aid)
        return rows[0][0] if rows else None
    db = sqlite3.connect("file:%s?mode=ro" % kmsd.store_path, uri=True, timeout=10)
    try:
        (state,) = db.execute("SELECT state FROM approval_requests WHERE id = ?", (aid,)).fetchone()
    finally:
        db.close()
    return state


def test_killed_while_executing_is_interrupted_and_never_runs(kmsd):
    left = leave_executing(kmsd)
    aid, names, toks, tenant, key = (left[k] for k in ("id", "names", "toks", "tenant", "key"))
    lease = hold_lease(kmsd.store_uri, "scheduler") if kmsd.store_uri else None
    try:
        kmsd.start()
        if lease:
            # another "node" holds the scheduler's lease: what marks the request is
            # kmsd's own start, before it serves, not a scheduler round
            h = kmsd.get("/v1/sys/health").json()
            assert h["cluster"]["scheduler"] is False, h
        d = show(kmsd, aid)
    finally:
        if lease:
            let_go(lease)
    assert d["state"] == "interrupted" and d["finished"] > 0, d
    assert [x["principal"] for x in d["approved_by"]] == [names["b"]]
    assert "result" not in d
    r = kmsd.get("/v1/sys/approvals", token=kmsd.admin_token)
    listed = [x for x in r.json()["data"]["requests"] if x["id"] == aid]
    assert listed and listed[0]["state"] == "interrupted", listed
    # never run: the key was not rotated, and no execution record exists
    r = kmsd.get("/v1/%s/keys/%s" % (tenant, key), token=kmsd.admin_token)
    assert r.json()["data"]["latest_version"] == 1, r.text
    recs = [x for x in audit_records(kmsd) if x.get("approval_id") == aid]
    assert not [x for x in recs if x.get("auth_method") == "approval"], recs
    intr = [x for x in recs if x["operation"] == "approval.interrupt"]
    assert len(intr) == 1, recs
    assert intr[0]["approval_event"] == "interrupted" and intr[0]["outcome"] == "error", intr[0]
    assert intr[0]["requested_by"] == "admin" and intr[0]["approved_operation"] == "key.rotate", intr[0]
    assert intr[0]["tenant"] == tenant and intr[0]["key"] == key, intr[0]
    # and it cannot be approved, or run, again
    r = kmsd.post("/v1/sys/approvals/%s/approve" % aid, {}, token=toks["c"])
    assert r.status_code == 409, r.text
    r = kmsd.post("/v1/sys/approvals/%s/deny" % aid, {}, token=toks["c"])
    assert r.status_code == 409, r.text
    assert kmsd.get("/v1/%s/keys/%s" % (tenant, key), token=kmsd.admin_token).json()["data"]["latest_version"] == 1

    # another restart marks nothing twice
    kmsd.stop()
    kmsd.start()
    assert show(kmsd, aid)["state"] == "interrupted"
    intr = [x for x in audit_records(kmsd) if x.get("approval_id") == aid and x["operation"] == "approval.interrupt"]
    assert len(intr) == 1, intr


@pytest.mark.skipif(not PG_URI, reason="runs and their leases are the PostgreSQL store's (make check-pg)")
def test_a_run_whose_lease_is_held_is_waited_for_then_left_to_the_scheduler(kmsd):
    """The killed run's lease still held, as when PostgreSQL has not yet ended the dead
    session (or a second kmsd runs with this node_id): the restarted kmsd waits for it a
    while, says so, serves without touching that run's request, and the scheduler's
    holder marks the request as soon as the lease is free."""
    left = leave_executing(kmsd)
    aid, run = left["id"], left["executor"].split("/", 1)[1]
    held = hold_lease(kmsd.store_uri, "run:" + left["executor"])
    try:
        kmsd.start()
        assert ("an earlier run of node %s still holds its lease" % kmsd.node_id) in kmsd.stderr()
        deadline = time.monotonic() + 30
        while not kmsd.get("/v1/sys/health").json()["cluster"]["scheduler"]:
            assert time.monotonic() < deadline, "kmsd never took the scheduler lease"
            time.sleep(0.1)
        d = show(kmsd, aid)
        assert d["state"] == "executing", d
        time.sleep(2.5)  # scheduler rounds (cluster_sync_ms, 1 s) while the run looks alive
        assert show(kmsd, aid)["state"] == "executing"
    finally:
        let_go(held)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and show(kmsd, aid)["state"] == "executing":
        time.sleep(0.1)
    d = show(kmsd, aid)
    assert d["state"] == "interrupted" and d["finished"] > 0, d
    assert kmsd.get("/v1/%s/keys/%s" % (left["tenant"], left["key"]),
                    token=kmsd.admin_token).json()["data"]["latest_version"] == 1
    intr = [x for x in audit_records(kmsd) if x.get("approval_id") == aid and x["operation"] == "approval.interrupt"]
    assert len(intr) == 1, intr
    assert intr[0]["executing_node"] == kmsd.node_id and intr[0]["executing_run"] == run, intr[0]


def test_a_finished_request_is_not_touched_by_a_restart(kmsd):
    tok_b = kmsd.create_token(kmsd.create_principal(uniq("adm-e"), role="admin"))[0]
    tenant = kmsd.create_tenant()
    key = kmsd.create_key(tenant, uniq("qi-k"))
    r = kmsd.post("/v1/%s/keys/%s/rotate" % (tenant, key), {}, token=kmsd.admin_token)
    aid = r.json()["data"]["approval_id"]
    r = kmsd.post("/v1/sys/approvals/%s/approve" % aid, {}, token=tok_b)
    assert r.status_code == 200 and r.json()["data"]["state"] == "approved-executed", r.text
    kmsd.stop()
    kmsd.start()
    assert show(kmsd, aid)["state"] == "approved-executed"
    assert kmsd.get("/v1/%s/keys/%s" % (tenant, key), token=kmsd.admin_token).json()["data"]["latest_version"] == 2
