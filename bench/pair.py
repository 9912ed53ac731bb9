"""bench/pair.py: two kmsd servers measured against each other, round by round.

On a shared VM the speed of the whole machine moves by 20 % or more between runs
minutes apart, so two `make bench` runs cannot tell a 10 % change from noise. This
harness starts two servers side by side, A and B, each set up as `make bench` sets up
its server (own SoftHSM2 token, store, audit log, tenant and service token), and then
measures them in alternating rounds (A then B, B then A, ...) with the same wrk
settings, so that both sides see the same moments of the machine. Each side may be a
different build, a different environment (e.g. GLIBC_TUNABLES) or a different
`workers`; with nothing set the two are identical, which is an A/A run and shows the
harness's own noise.

Usage (from the project root, after `make bench-tools`; Debian's /usr/bin/python3):
  /usr/bin/python3 bench/pair.py [--op datakey|decrypt|encrypt|rewrap|health]
      [--batch N] [--keys N] [--conns N] [--rounds N] [--seconds N]
      [--a-build DIR] [--b-build DIR] [--a-env K=V]... [--b-env K=V]...
      [--a-workers N] [--b-workers N] [--a-keys N] [--b-keys N] [--json FILE] [--perf DIR]

  --op        what both sides are asked (default datakey; health = GET /v1/sys/health)
  --batch     items per request (batch_input when > 1; not with health)
  --keys      datakey only: spread the requests over N keys, each with its own KEK
              version and so its own serving copy in the token (default 1)
  --rounds    rounds per side (default 6); --seconds per measurement (default 3)
  --a-build/--b-build  build directory of each side's kmsd (default build)
  --a-env/--b-env      K=V added to that side's kmsd environment only (repeatable)
  --a-workers/--b-workers  that side's kmsd `workers` (default: kmsd's own)
  --a-keys/--b-keys        that side's --keys (e.g. 1 against 10000: the scaling figure
              with both servers measured in the same minutes)
  --json      also write every round's figures, as bench.py's wrk() gives them
  --perf      during each side's first round, `perf record -F 499 --call-graph dwarf`
              on its kmsd into DIR/perf.A.data and DIR/perf.B.data (`perf report -i`)

Prints each round and, per side, the median and min–max of req/s, kmsd's CPU per
request (from /proc), p99 and wrk's CPU per request, and B's median over A's. Nothing
is asserted. Both servers, their tokens and wrk are stopped and the temporary
directories removed on exit, failure or Ctrl-C. Exit status 0, 1 on a failure, 2 on
bad usage, 130 when interrupted.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import scaling  # noqa: E402

SIDES = ("A", "B")


def parse(argv):
    ap = argparse.ArgumentParser(prog="bench/pair.py", description=__doc__.split("\n")[0])
    ap.add_argument("--op", default="datakey", choices=bench.OPS + ("health",))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--keys", type=int, default=1)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--perf", metavar="DIR")
    for s in ("a", "b"):
        ap.add_argument("--%s-build" % s, default=os.environ.get("BUILD", "build"))
        ap.add_argument("--%s-env" % s, action="append", default=[], metavar="K=V")
        ap.add_argument("--%s-workers" % s, type=int)
        ap.add_argument("--%s-keys" % s, type=int)
    a = ap.parse_args(argv)
    bad = []
    for s in ("a", "b"):
        if getattr(a, s + "_keys") is None:
            setattr(a, s + "_keys", a.keys)
    if min(a.batch, a.a_keys, a.b_keys, a.conns, a.rounds, a.seconds) < 1:
        bad.append("--batch, --keys, --conns, --rounds and --seconds want positive integers")
    if a.op == "health" and a.batch != 1:
        bad.append("--batch is for the key endpoints, not health")
    if max(a.a_keys, a.b_keys) > 1 and (a.op != "datakey" or a.batch != 1):
        bad.append("--keys is for single datakey requests only")
    for s in ("a", "b"):
        for kv in getattr(a, s + "_env"):
            if "=" not in kv or kv.startswith("="):
                bad.append("--%s-env wants K=V, got %r" % (s, kv))
        w = getattr(a, s + "_workers")
        if w is not None and w < 1:
            bad.append("--%s-workers wants a positive integer" % s)
    if a.perf and not os.path.isdir(a.perf):
        bad.append("--perf: %s is not a directory" % a.perf)
    if a.perf and shutil.which("perf") is None:
        bad.append("--perf: perf not found (Debian's linux-perf)")
    if bad:
        ap.error("; ".join(bad))
    return a


class Side:
    """One server and its wrk driver, set up like make bench's."""

    def __init__(self, name, kids, a, tmps):
        self.name = name
        s = name.lower()
        settings = bench.settings_from_env({"BENCH_SECONDS": str(a.seconds)})
        settings["build"] = getattr(a, s + "_build")
        if getattr(a, s + "_workers") is not None:
            settings["workers"] = getattr(a, s + "_workers")
        if not os.access(os.path.join(bench.REPO, settings["build"], "kmsd"), os.X_OK):
            raise bench.BenchError("%s/kmsd missing: run make" % settings["build"])
        self.tmp = tempfile.mkdtemp(prefix="kmsd-pair%s." % name)
        tmps.append(self.tmp)  # removed by run() even if the set-up below fails
        self.srv = bench.Server(kids, self.tmp, settings, max(256, a.conns))
        self.srv.provision()
        self.srv.env.update(dict(kv.split("=", 1) for kv in getattr(a, s + "_env")))
        self.srv.start()
        self.srv.setup_tenant()
        self.b = bench.Bench(kids, self.srv, settings, self.tmp)
        self.op, self.batch, self.conns = a.op, a.batch, a.conns
        self.keys = getattr(a, s + "_keys")
        if self.keys > 1:
            scaling.make_keys(self.srv, self.keys, 0, bench.say)
            self.body = os.path.join(self.tmp, "dk.json")
            with open(self.body, "w") as f:
                f.write('{"bits":256}')
        elif a.op != "health":
            files = bench.make_bodies(self.srv, dict(settings, ops=[a.op], batches=[a.batch]),
                                      os.path.join(self.tmp, "bodies"))
            self.body = files[(a.op, a.batch)][0]
        bench.say("side %s: kmsd pid %d (%s, allocator %s, %d key%s%s%s)" % (
            name, self.srv.proc.pid, settings["build"], bench.allocator_of(self.srv.proc.pid),
            self.keys, "" if self.keys == 1 else "s",
            ", workers %d" % settings["workers"] if settings["workers"] else "",
            ", " + " ".join(getattr(a, s + "_env")) if getattr(a, s + "_env") else ""))

    def measure(self, perf_dir=None):
        rec = None
        if perf_dir:
            rec = subprocess.Popen(
                ["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf", "-o",
                 os.path.join(perf_dir, "perf.%s.data" % self.name), "-p",
                 str(self.srv.proc.pid), "--", "sleep", str(self.b.s["seconds"])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return self.request()
        finally:
            if rec is not None:
                rec.wait()

    def request(self):
        if self.op == "health":
            return self.b.health(self.conns)
        if self.keys > 1:
            return scaling.datakey_over_keys(self.b, self.srv, self.keys, self.conns, self.body)
        return self.b.endpoint(self.op, self.batch, self.conns, self.body)


def summary(rounds):
    out = {}
    for f in ("req_per_s", "server_cpu_us_per_req", "p99_ms", "loadgen_cpu_us_per_req",
              "other_cpu_cores", "records_per_sync"):
        v = [r[f] for r in rounds if r.get(f) is not None]
        out[f] = {"median": statistics.median(v), "min": min(v), "max": max(v)} if v else None
    return out


def fmt(st, unit=""):
    if st is None:
        return "n/a"
    return "%s%s [%s–%s]" % (bench.fmt_n(st["median"]), unit, bench.fmt_n(st["min"]),
                             bench.fmt_n(st["max"]))


def run(a):
    if shutil.which("wrk") is None:
        raise bench.BenchError("wrk not found (sh scripts/deps.sh bench)")
    os.environ.setdefault("SOFTHSM_MECHANISMS", "ALL")
    kids = bench.Children()
    sides, tmps = {}, []
    try:
        for name in SIDES:
            sides[name] = Side(name, kids, a, tmps)
        res = {n: [] for n in SIDES}
        for r in range(a.rounds):
            for name in (SIDES if r % 2 == 0 else SIDES[::-1]):
                x = sides[name].measure(a.perf if not res[name] else None)
                if not x["valid"]:
                    raise bench.BenchError("side %s, round %d: error answers %s" % (
                        name, r + 1, x["errors"]))
                res[name].append(x)
                print("round %d %s: %s req/s, %s µs CPU/req, p99 %.1f ms, wrk %s µs/req, "
                      "other %.2f cores%s" % (
                          r + 1, name, bench.fmt_n(x["req_per_s"]),
                          bench.fmt_n(x["server_cpu_us_per_req"]), x["p99_ms"],
                          bench.fmt_n(x["loadgen_cpu_us_per_req"]), x["other_cpu_cores"],
                          ", %.1f records/sync" % x["records_per_sync"]
                          if x.get("records_per_sync") else ""), flush=True)
        sums = {n: summary(res[n]) for n in SIDES}
        for n in SIDES:
            s = sums[n]
            print("%s: %s req/s, %s µs CPU/req, p99 %s, wrk %s µs/req" % (
                n, fmt(s["req_per_s"]), fmt(s["server_cpu_us_per_req"]), fmt(s["p99_ms"], " ms"),
                fmt(s["loadgen_cpu_us_per_req"])))
        ra, rb = sums["A"]["req_per_s"], sums["B"]["req_per_s"]
        ca, cb = sums["A"]["server_cpu_us_per_req"], sums["B"]["server_cpu_us_per_req"]
        print("B/A: req/s %.2f×, CPU per request %.2f×" % (
            rb["median"] / ra["median"], cb["median"] / ca["median"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"settings": {k: v for k, v in vars(a).items()},
                           "rounds": res, "summary": sums}, f, indent=1)
        return 0
    finally:
        kids.stop_all()
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)


def main(argv):
    a = parse(argv[1:])
    signal.signal(signal.SIGTERM, bench.on_terminate)
    signal.signal(signal.SIGHUP, bench.on_terminate)
    try:
        return run(a)
    except bench.BenchError as e:
        bench.say("error: %s" % e)
        return 1
    except KeyboardInterrupt:
        bench.say("interrupted; both servers are stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv))
