"""The scaling figures of `make bench` (issue 7, docs/BENCH.md "Scaling"):

  - datakey throughput with the requests spread over 1, 100 and 10,000 keys (each key
    its own KEK version, so its own serving copy in the token), 64 connections;
  - start-up to ready (spawn to the first 200 from /v1/sys/health) with as many key
    versions in the store as the largest key count;
  - kmsd's RSS with 1,000 idle keep-alive TLS connections (each made one request).

Called by bench.py after the rounds; every figure is a median of the rounds too."""

import http.client
import json
import os
import resource
import socket
import ssl
import statistics
import threading
import time

SCALE_TENANT = "bench"  # the service principal's tenant; keys s1..sN are made in it


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def datakey_over_keys(bench, srv, n, conns, body):
    """One wrk run of single data keys, each to one of keys s1..s<n> picked at random
    (wrk.lua's BENCH_KEYS), as bench.Bench.wrk measures it."""
    return bench.wrk("/v1/%s/datakey/plaintext/s1" % SCALE_TENANT, conns, "POST", body,
                     srv.service_token_file,
                     extra_env={"BENCH_KEYS": str(n),
                                "BENCH_PATH_PREFIX": "/v1/%s/datakey/plaintext/" % SCALE_TENANT})


def make_keys(srv, upto, have, say, threads=4):
    """Creates keys s<have+1>..s<upto> over a few persistent connections."""
    todo = list(range(have + 1, upto + 1))
    lock = threading.Lock()
    errors = []

    def worker():
        c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=srv.ctx, timeout=60)
        try:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    i = todo.pop()
                body = json.dumps({"type": "aes256-gcm96"})
                c.request("POST", "/v1/%s/keys/s%d" % (SCALE_TENANT, i), body=body,
                          headers={"X-Vault-Token": srv.admin_token,
                                   "Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status != 200:
                    with lock:
                        errors.append("key s%d: %d %s" % (i, r.status, data[:200]))
                    return
                # Warm it as a service in steady state would have: the first use
                # unwraps the KEK into the token and reserves a counter block.
                c.request("POST", "/v1/%s/datakey/plaintext/s%d" % (SCALE_TENANT, i),
                          body='{"bits":256}',
                          headers={"X-Vault-Token": srv.service_token,
                                   "Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                if r.status != 200:
                    with lock:
                        errors.append("datakey s%d: %d %s" % (i, r.status, data[:200]))
                    return
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors.append(str(e))
        finally:
            c.close()

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("creating keys: %s" % errors[:3])
    dt = time.monotonic() - t0
    say("scaling: keys s%d..s%d made and used once in %.1f s (%.0f keys/s)" % (
        have + 1, upto, dt, (upto - have) / dt if dt > 0 else 0))


def startup_to_ready(srv):
    """Stops kmsd, starts it again and times spawn -> first 200 from /v1/sys/health."""
    srv.stop()
    srv.proc = None
    srv.port = None
    try:
        os.unlink(srv.port_file)
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    srv.start(timeout=300, poll=0.01)
    return time.monotonic() - t0


def idle_rss(srv, n, proc_status_kib):
    """Opens n keep-alive TLS connections, one health request on each, holds them;
    returns (connections held, RSS MiB before, RSS MiB with them, peak MiB)."""
    pid = srv.proc.pid
    before = (proc_status_kib(pid, "VmRSS") or 0) / 1024
    ctx = ssl.create_default_context(cafile=srv.ca)
    socks = []
    try:
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("kmsd closed an idle-test connection (max_connections?)")
                buf += chunk
            socks.append(s)
        time.sleep(1.0)
        held = (proc_status_kib(pid, "VmRSS") or 0) / 1024
        peak = (proc_status_kib(pid, "VmHWM") or 0) / 1024
        return len(socks), before, held, peak
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def run_scaling(bench, srv, settings, say, proc_status_kib):
    """Returns the "scaling" section of the JSON document."""
    counts = settings["scale_keys"]
    rounds = settings["runs"]
    raise_nofile(settings["idle_conns"] + 256)
    out = {"keys": {}, "conns": 64, "seconds": settings["seconds"], "rounds": rounds}
    have = 0
    body = os.path.join(bench.tmp, "bodies", "scale-datakey.json")
    with open(body, "w") as f:
        f.write(json.dumps({"bits": 256}, separators=(",", ":")))
    for n in counts:
        make_keys(srv, n, have, say)
        have = max(have, n)
        runs = []
        for _ in range(rounds):
            r = datakey_over_keys(bench, srv, n, 64, body)
            runs.append(r)
            say("scaling: datakey over %d key(s), c=64: %.0f req/s%s" % (
                n, r["req_per_s"] or 0, "" if r["valid"] else " ERRORS %s" % r["errors"]))
        vals = [r["req_per_s"] for r in runs if r["req_per_s"] is not None]
        out["keys"][str(n)] = {
            "req_per_s": statistics.median(vals) if vals else None,
            "min": min(vals) if vals else None, "max": max(vals) if vals else None,
            "invalid_runs": sum(1 for r in runs if not r["valid"]),
            "rss_mib": runs[-1]["rss_mib"], "runs": runs,
        }
    base = out["keys"][str(counts[0])]["req_per_s"]
    for n in counts:
        e = out["keys"][str(n)]
        e["ratio_to_first"] = e["req_per_s"] / base if base and e["req_per_s"] else None
    ups = []
    for _ in range(rounds):
        ups.append(startup_to_ready(srv))
        say("scaling: start-up to ready with %d key versions: %.3f s" % (have, ups[-1]))
    out["startup"] = {"key_versions": have, "seconds": statistics.median(ups),
                      "min": min(ups), "max": max(ups), "runs": ups}
    n, before, held, peak = idle_rss(srv, settings["idle_conns"], proc_status_kib)
    say("scaling: RSS %.1f MiB with %d idle TLS connections (%.1f MiB before)" % (held, n, before))
    out["idle"] = {"connections": n, "rss_mib_before": before, "rss_mib": held,
                   "rss_peak_mib": peak}
    return out


def print_scaling(sc, out):
    first = str(sorted(int(k) for k in sc["keys"])[0])
    print("\nScaling (datakey, %d connections, median [min–max] of %d rounds)" % (
        sc["conns"], sc["rounds"]), file=out)
    for k in sorted(sc["keys"], key=int):
        e = sc["keys"][k]
        print("  %6s key(s): %8.0f [%.0f–%.0f] req/s  %.2f× the %s-key figure%s" % (
            k, e["req_per_s"] or 0, e["min"] or 0, e["max"] or 0, e["ratio_to_first"] or 0, first,
            "  !" if e["invalid_runs"] else ""), file=out)
    st = sc["startup"]
    print("  start-up to ready with %d key versions: %.3f s [%.3f–%.3f]" % (
        st["key_versions"], st["seconds"], st["min"], st["max"]), file=out)
    i = sc["idle"]
    print("  RSS with %d idle TLS connections: %.1f MiB (%.1f MiB before them)" % (
        i["connections"], i["rss_mib"], i["rss_mib_before"]), file=out)
