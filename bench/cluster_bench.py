"""The cluster figure of `make bench` (issue 10, docs/BENCH.md "Cluster", docs/SCALE-OUT.md):
datakey/plaintext req/s at 64 connections through HAProxy in front of a local cluster
(scripts/kmscluster.py: one shared token, one store, 2 nodes) with 1 node in the balancer
vs 2, and in the same round the ceilings: GET /v1/sys/health through the balancer with 1
and with 2 nodes (what TLS through HAProxy costs, no key work), and datakey straight to
one node without the balancer.

The 1-node figure is the same cluster with node 2 disabled in HAProxy (its stats socket),
so both figures use the same store, token, key and warmed caches. On a 2-core machine a
second node adds no CPU: the two nodes, HAProxy and wrk share the same 2 cores, so the
2-node figure shows what coordination and the extra hop cost, not what a second machine
would add (docs/SCALE-OUT.md "Sizing" does that math).

The store is KMS_CLUSTER_STORE (pg by default, as scripts/cluster.sh). A cluster that
cannot be started is reported in the JSON ("cluster": {"error": ...}) and on stderr; the
rest of the bench stands. BENCH_CLUSTER=0 skips the figure."""

import json
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

import kmscluster  # noqa: E402

CONNS = 64
TENANT, KEY, SERVICE = "bench", "k1", "bench-svc"


def _ha_cmd(c, cmd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(c.ha_sock)
        s.sendall(cmd.encode() + b"\n")
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out.decode()
    finally:
        s.close()


def _ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            v = f.read().rsplit(")", 1)[1].split()
        return int(v[11]) + int(v[12])
    except (OSError, IndexError, ValueError):
        return 0


def _provision(c, api_post, tmp):
    tok = c.admin_token
    for path, body in (("/v1/sys/tenants/" + TENANT, {"retention": "phi"}),
                       ("/v1/%s/keys/%s" % (TENANT, KEY), {"type": "aes256-gcm96"}),
                       ("/v1/sys/principals/" + SERVICE, {"role": "service", "tenants": [TENANT]})):
        st, _ = api_post(c.lb_url, path, body, tok)
        if st != 200:
            raise kmscluster.ClusterError("%s: HTTP %d" % (path, st))
    st, j = api_post(c.lb_url, "/v1/sys/principals/%s/tokens" % SERVICE, {}, tok)
    if st != 200:
        raise kmscluster.ClusterError("service token: HTTP %d" % st)
    tf = os.path.join(tmp, "cluster-service.token")
    fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(j["auth"]["client_token"] + "\n")
    body = os.path.join(tmp, "cluster-datakey.json")
    with open(body, "w") as f:
        f.write('{"bits":256}')
    # check once on each node and through the balancer
    for url in [nd.url for nd in c.nodes] + [c.lb_url]:
        st, j = api_post(url, "/v1/%s/datakey/plaintext/%s" % (TENANT, KEY), {"bits": 256},
                         j_tok(tf))
        if st != 200 or "ciphertext" not in j.get("data", {}):
            raise kmscluster.ClusterError("datakey on %s: HTTP %d" % (url, st))
    return tf, body


def j_tok(path):
    with open(path) as f:
        return f.read().strip()


def run_cluster(bench_mod, kids, settings, tmp, say):
    """Returns the figure's dict for the results JSON (or {"error": ...})."""
    import http.client
    import ssl

    root = os.path.join(tmp, "cluster")
    build = os.path.join(bench_mod.REPO, settings["build"])
    kmsd_bin = os.path.join(build, "kmsd")
    policy = os.path.join(tmp, "cluster-policy.json")
    try:
        with open(policy, "w") as f:
            json.dump(kmscluster.nomfa_policy(kmsd_bin), f)
        c = kmscluster.Cluster(root, nodes=2, kmsd_bin=kmsd_bin, workers=settings["workers"] or 0,
                               policy_file=policy, log_level="warn", node_prefix="bench",
                               say=lambda m: say("cluster: " + m))
        say("cluster: starting 2 nodes + HAProxy (store %s)" % c.store)
    except (kmscluster.ClusterError, OSError) as e:
        say("cluster: no cluster figure: %s" % str(e).splitlines()[0])
        return {"error": str(e)[:2000]}
    try:
        c.up()
    except (kmscluster.ClusterError, OSError) as e:
        c.down(destroy=True)
        say("cluster: could not start the cluster, no cluster figure: %s" % str(e).splitlines()[0])
        return {"error": str(e)[:2000]}
    try:
        ctx = ssl.create_default_context(cafile=c.ca)

        def api_post(url, path, body, tok):
            host, port = url.rsplit("/", 1)[1].split(":")
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
            try:
                conn.request("POST", path, body=json.dumps(body),
                             headers={"X-Vault-Token": tok, "Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data else {})
            finally:
                conn.close()

        tok_file, body = _provision(c, api_post, tmp)
        path = "/v1/%s/datakey/plaintext/%s" % (TENANT, KEY)
        pids = [nd.pid for nd in c.nodes] + [c.ha_pid]

        def wrk(url, method="GET", body_file=None, token_file=None):
            threads = max(1, min(CONNS, os.cpu_count() or 1))
            env = dict(os.environ, BENCH_METHOD=method, BENCH_BODY_FILE=body_file or "",
                       BENCH_TOKEN_FILE=token_file or "")
            t0 = [_ticks(p) for p in pids]
            rc, out, err = kids.run(["wrk", "-t", str(threads), "-c", str(CONNS), "-d",
                                     "%ds" % settings["seconds"], "--timeout", "10s", "-s",
                                     bench_mod.WRK_LUA, url], settings["seconds"] + 60, env=env)
            t1 = [_ticks(p) for p in pids]
            line = [ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")]
            if rc != 0 or not line:
                raise kmscluster.ClusterError("wrk failed (%d): %s %s" % (rc, out[-1000:], err[-1000:]))
            w = json.loads(line[-1][len("BENCHJSON "):])
            secs = w["duration_us"] / 1e6
            n = w["requests"]
            cpu = [(b - a) / bench_mod.CLK_TCK for a, b in zip(t0, t1)]
            return {"requests": n, "req_per_s": n / secs if secs > 0 else None,
                    "p50_ms": w["latency_us"]["p50"] / 1000, "p99_ms": w["latency_us"]["p99"] / 1000,
                    "errors": w["errors"], "valid": sum(w["errors"].values()) == 0,
                    "kmsd_cpu_us_per_req": sum(cpu[:-1]) * 1e6 / n if n else None,
                    "haproxy_cpu_us_per_req": cpu[-1] * 1e6 / n if n else None,
                    "cpu_s_by_node": cpu[:-1]}

        names = ("health_lb_1", "health_lb_2", "datakey_direct_1", "datakey_lb_1", "datakey_lb_2")
        rounds = {k: [] for k in names}
        for rnd in range(1, settings["runs"] + 1):
            tag = "[%d/%d]" % (rnd, settings["runs"])
            for nodes in (1, 2):
                _ha_cmd(c, ("disable" if nodes == 1 else "enable") + " server kmsd_nodes/n2")
                c.wait_lb(nodes, timeout=15) if nodes == 2 else time.sleep(0.3)
                r = wrk(c.lb_url + "/v1/sys/health")
                rounds["health_lb_%d" % nodes].append(r)
                if nodes == 1:
                    d = wrk(c.nodes[0].url + path, "POST", body, tok_file)
                    rounds["datakey_direct_1"].append(d)
                    say("%s cluster datakey c=%d straight to node 1: %s req/s" % (
                        tag, CONNS, bench_mod.fmt_n(d["req_per_s"])))
                r2 = wrk(c.lb_url + path, "POST", body, tok_file)
                rounds["datakey_lb_%d" % nodes].append(r2)
                say("%s cluster datakey c=%d through HAProxy, %d node(s): %s req/s, p99 %s ms "
                    "(health through HAProxy %s req/s)%s" % (
                        tag, CONNS, nodes, bench_mod.fmt_n(r2["req_per_s"]), bench_mod.fmt_n(r2["p99_ms"]),
                        bench_mod.fmt_n(r["req_per_s"]), "" if r2["valid"] else " ERRORS %s" % r2["errors"]))
        rps = {k: [x["req_per_s"] for x in v] for k, v in rounds.items()}
        out = {
            "conns": CONNS, "nodes": 2, "store": c.store, "cores": os.cpu_count(),
            "note": ("the nodes, HAProxy and wrk share this machine's %d cores: a second node "
                     "adds no CPU here" % (os.cpu_count() or 0)),
            "req_per_s": {k: bench_mod.stats(v) for k, v in rps.items()},
            "ratio": {
                "lb_2_to_lb_1": bench_mod.ratios(rps["datakey_lb_2"], rps["datakey_lb_1"]),
                "lb_1_to_direct_1": bench_mod.ratios(rps["datakey_lb_1"], rps["datakey_direct_1"]),
                "lb_1_to_health_lb_1": bench_mod.ratios(rps["datakey_lb_1"], rps["health_lb_1"]),
                "lb_2_to_health_lb_2": bench_mod.ratios(rps["datakey_lb_2"], rps["health_lb_2"]),
            },
            "cpu_us_per_req": {k: {"kmsd": statistics.median([x["kmsd_cpu_us_per_req"] or 0 for x in v]),
                                   "haproxy": statistics.median([x["haproxy_cpu_us_per_req"] or 0 for x in v])}
                               for k, v in rounds.items()},
            "invalid_runs": sum(1 for v in rounds.values() for x in v if not x["valid"]),
            "rounds": rounds,
        }
        return out
    except (kmscluster.ClusterError, OSError, ValueError, KeyError) as e:
        say("cluster: the cluster figure failed: %s" % str(e).splitlines()[0])
        return {"error": str(e)[:2000]}
    finally:
        st = c.down(destroy=True)
        bad = {k: v for k, v in st.items() if v != 0}
        if bad:
            say("cluster: node exit status %s" % bad)


def print_cluster(cl, out):
    print("\nCluster (datakey/plaintext, %s connections, through HAProxy; docs/SCALE-OUT.md):" % (
        cl.get("conns", CONNS)), file=out)
    if "error" in cl:
        print("  not measured: %s" % cl["error"].splitlines()[0], file=out)
        return
    rp, ra = cl["req_per_s"], cl["ratio"]

    def m(k):
        s = rp.get(k)
        return "n/a" if not s else "{:,.0f}".format(s["median"])

    def r(k):
        s = ra.get(k)
        return "n/a" if not s else "%.2f" % s["median"]

    print("  1 node : %8s req/s  (straight to the node %s; health through HAProxy %s)" % (
        m("datakey_lb_1"), m("datakey_direct_1"), m("health_lb_1")), file=out)
    print("  2 nodes: %8s req/s  (health through HAProxy %s)" % (m("datakey_lb_2"), m("health_lb_2")), file=out)
    print("  2 nodes / 1 node: %s; HAProxy hop (1 node through it / straight): %s" % (
        r("lb_2_to_lb_1"), r("lb_1_to_direct_1")), file=out)
    print("  store %s; %s." % (cl["store"], cl["note"]), file=out)
