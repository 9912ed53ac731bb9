"""A policy version written into PostgreSQL behind kmsd's back (a DB insider: no row
MAC) is never installed by the nodes that hear of it: they refuse every request until a
good version is the newest again (docs/SCALE-OUT.md "The coherence bound", fail closed;
docs/THREAT-MODEL.md "Authority rows")."""

import json
import subprocess

import pytest

from conftest import BOUND, World, wait_until

CLUSTER_NODES = 2

ALLOW_ALL = {"version": 0, "description": "inserted by hand",
             "rules": [{"name": "everyone", "effect": "allow", "principals": ["*"], "operations": ["*"]}]}


def psql(uri, sql):
    subprocess.run(["psql", uri, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)


def test_forged_policy_version_refuses_everything_until_removed(cluster):
    if cluster.store != "pg":
        pytest.skip("the change log is PostgreSQL's (KMS_CLUSTER_STORE=pg)")
    a, b = cluster.api(0), cluster.api(1)
    w = World(a)
    wait_until(lambda: b.datakey(w.tok, w.tenant, w.key).status_code == 200, BOUND, "datakey on B")
    r = a.get("/v1/sys/policy", token=a.admin_token)
    assert r.status_code == 200, r.text
    good = int(r.json()["data"]["version"])
    forged = dict(ALLOW_ALL, version=good + 1)
    text = json.dumps(forged).replace("'", "''")
    psql(cluster.pg_uri, "INSERT INTO policies (version, text, principal, created) "
                         "VALUES (%d, '%s', 'insider', 0)" % (good + 1, text))
    try:
        for api, name in ((a, "A"), (b, "B")):
            wait_until(lambda: api.datakey(w.tok, w.tenant, w.key).status_code == 403, BOUND,
                       "%s refusing data keys under the unverifiable policy version" % name)
            # not the forged allow-everything either: the admin is refused too
            r = api.get("/v1/sys/policy", token=api.admin_token)
            assert r.status_code == 403, r.text
        # the nodes stay up and say why in their logs
        for nd in cluster.nodes:
            assert nd.alive()
            assert "not usable here" in nd.log_tail(), nd.log_tail()[-2000:]
    finally:
        psql(cluster.pg_uri, "DELETE FROM policies WHERE version = %d" % (good + 1))
    for api, name in ((a, "A"), (b, "B")):
        wait_until(lambda: api.datakey(w.tok, w.tenant, w.key).status_code == 200, BOUND,
                   "%s serving again under the good version" % name)
        r = api.get("/v1/sys/policy", token=api.admin_token)
        assert r.status_code == 200 and int(r.json()["data"]["version"]) == good, r.text
