#!/usr/bin/python3
"""make bench: kmsd's measuring harness (docs/BENCH.md). Debian's python3, stdlib only.

One run builds nothing itself (make does that first), then:
  1. makes a temporary directory with two fresh SoftHSM2 tokens (scripts/dev-token.sh:
     one for kmsd, one for the raw PKCS#11 ceiling), dev certificates
     (scripts/dev-certs.sh), a config with port = 0 and a port_file, runs `kmsd init`,
     starts kmsd on a random loopback port with TLS, and creates a tenant, a key, a
     service principal and its token (as tests/integration/conftest.py does);
  2. checks every request body it will send once, with certificate verification, and
     checks the answers (status 200, item counts, decrypt gives back the plaintext);
  3. in each of BENCH_RUNS rounds measures the ceilings (append+fdatasync of 300-byte
     records one and 64 per sync; AES-256-GCM of 32 B under a serving-copy KEK, 1 and 2
     threads; GET /v1/sys/health at every connection count) and then every endpoint
     (datakey/plaintext, decrypt, encrypt, rewrap; single and batch_input of 10, 100;
     at every connection count) with wrk over keep-alive connections;
  4. prints a table (median of the rounds, min-max, ratio to the same round's ceiling)
     and writes everything, every round's raw figures included, to
     bench/results/<UTC timestamp>.json.
Whatever it started (kmsd, wrk, the ceiling tools) is stopped on exit, on failure and on
Ctrl-C/SIGTERM; the temporary directory is removed unless BENCH_KEEP=1.

Settings (environment; `make bench` passes its make variables through):
  BENCH_QUICK=1     smoke run: 1 s per measurement, connections "1 64"
  BENCH_SECONDS     seconds per measurement (integer >= 1; default 3, quick 1)
  BENCH_RUNS        rounds (>= 3 for a median; default 3)
  BENCH_CONNS       connection counts (default "1 16 64 256", quick "1 64")
  BENCH_OPS         endpoints (default "datakey decrypt encrypt rewrap")
  BENCH_BATCHES     items per request, 1 = a single item without batch_input
                    (default "1 10 100")
  BENCH_WORKERS     kmsd `workers` (default: kmsd's own default)
  BENCH_CONTEXT=1   send an encryption_context with every item (audit HMACs it)
  BENCH_KEEP=1      keep the temporary directory (its path is printed)
  BENCH_SCALING=0   skip the scaling figures (bench/scaling.py; default on)
  BENCH_SCALE_KEYS  key counts for the scaling figures (default "1 100 10000", quick "1 100")
  BENCH_IDLE_CONNS  idle TLS connections for the RSS figure (default 1000)
  BENCH_CLUSTER=0   skip the cluster figure (bench/cluster_bench.py: datakey through
                    HAProxy with 1 vs 2 nodes; KMS_CLUSTER_STORE=pg|sqlite, default pg)
  SOFTHSM_MECHANISMS  SoftHSM2's slots.mechanisms for both tokens (default "ALL",
                    SoftHSM2's own default; "kmsd": only the mechanisms kmsd uses,
                    scripts/dev-token.sh, docs/PERFORMANCE.md)
  BUILD             build directory (default build)
`bench.py --self-test` checks the statistics, the metrics parser, the JSON writer and
bench/pair.py's argument checks on made-up figures, and runs the two ceiling tools for a
moment (when built); it starts no kmsd and measures nothing.
"""

import base64
import datetime
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPTS = os.path.join(REPO, "scripts")
PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
WRK_LUA = os.path.join(REPO, "bench", "wrk.lua")
RESULTS = os.path.join(REPO, "bench", "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TENANT, KEY, SERVICE = "bench", "k1", "bench-svc"
RECORD_BYTES = 300
OPS = ("datakey", "decrypt", "encrypt", "rewrap")
OP_PATH = {"datakey": "/v1/%s/datakey/plaintext/%s", "decrypt": "/v1/%s/decrypt/%s",
           "encrypt": "/v1/%s/encrypt/%s", "rewrap": "/v1/%s/rewrap/%s"}

for _v in ("NO_PROXY", "no_proxy"):
    os.environ[_v] = "127.0.0.1,localhost,::1"


class BenchError(Exception):
    pass


def say(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- settings

def int_list(s, what):
    try:
        v = [int(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise BenchError("%s: not a list of integers: %r" % (what, s))
    if not v or min(v) < 1:
        raise BenchError("%s: want positive integers, got %r" % (what, s))
    return v


def settings_from_env(env):
    quick = env.get("BENCH_QUICK", "") not in ("", "0")
    g = lambda k: env.get(k, "").strip()
    s = {
        "quick": quick,
        "seconds": int(g("BENCH_SECONDS") or (1 if quick else 3)),
        "runs": int(g("BENCH_RUNS") or 3),
        "conns": int_list(g("BENCH_CONNS") or ("1 64" if quick else "1 16 64 256"), "BENCH_CONNS"),
        "ops": (g("BENCH_OPS") or " ".join(OPS)).replace(",", " ").split(),
        "batches": int_list(g("BENCH_BATCHES") or ("1 100" if quick else "1 10 100"), "BENCH_BATCHES"),
        "workers": int(g("BENCH_WORKERS")) if g("BENCH_WORKERS") else None,
        "context": g("BENCH_CONTEXT") not in ("", "0"),
        "keep": g("BENCH_KEEP") not in ("", "0"),
        "build": g("BUILD") or "build",
        "scaling": g("BENCH_SCALING") not in ("0",),
        "scale_keys": int_list(g("BENCH_SCALE_KEYS") or ("1 100" if quick else "1 100 10000"),
                               "BENCH_SCALE_KEYS"),
        "idle_conns": int(g("BENCH_IDLE_CONNS") or 1000),
        "cluster": g("BENCH_CLUSTER") not in ("0",),
        "softhsm_mechanisms": g("SOFTHSM_MECHANISMS") or "ALL",
    }
    if s["seconds"] < 1:
        raise BenchError("BENCH_SECONDS must be an integer >= 1")
    if s["runs"] < 1:
        raise BenchError("BENCH_RUNS must be >= 1")
    if s["runs"] < 3:
        say("warning: BENCH_RUNS=%d: a median wants at least 3" % s["runs"])
    bad = [o for o in s["ops"] if o not in OPS]
    if bad:
        raise BenchError("BENCH_OPS: unknown %s (known: %s)" % (bad, " ".join(OPS)))
    if max(s["batches"]) > 1000:
        raise BenchError("BENCH_BATCHES: kmsd takes at most 1000 items per batch")
    return s


# ---------------------------------------------------------------- statistics

def stats(values):
    """median/min/max of the non-None values, with the raw list; None if none."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": list(values)}


def ratios(num_runs, den_runs):
    """Per-round ratios num[r]/den[r] (the same round's ceiling), then their stats."""
    out = []
    for a, b in zip(num_runs, den_runs):
        out.append(a / b if a is not None and b else None)
    return stats(out)


def parse_prometheus(text, names):
    """Sums the samples of each wanted metric (any labels) in Prometheus text format."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in names:
            try:
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return found


def write_json(path, doc):
    """Writes doc atomically (tmp + rename); returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- processes

class Children:
    """Every process the bench starts, so that all of them are stopped on any exit.
    Each runs in its own session: a Ctrl-C on the terminal reaches only bench.py,
    which then stops them itself (kmsd gets SIGTERM, and SIGKILL if it hangs)."""

    def __init__(self):
        self.procs = []

    def popen(self, args, **kw):
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def run(self, args, timeout, **kw):
        """Runs to completion; returns (rc, stdout, stderr) as text."""
        p = self.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise BenchError("%s timed out after %ss" % (os.path.basename(args[0]), timeout))
        except BaseException:
            self.kill(p)
            raise
        self.procs.remove(p)
        return p.returncode, out, err

    def kill(self, p):
        if p.poll() is None:
            p.kill()
        p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop(self, p, grace=30):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p, grace=10)


def on_terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


# ---------------------------------------------------------------- /proc readings

def proc_cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]) - idle


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class AuditCounter:
    """Counts records appended to the audit log since the last call. Rotation renames
    the current file to "<stem>-<seq>.log" and starts a new one (through
    "<path>.next"), so every file of the log's directory whose name starts with the stem
    is read, and progress is kept per inode: a renamed segment goes on from where it
    was, a new file starts at 0. take() returns (records, of which checkpoints); a line
    still being written is left for the next call."""

    def __init__(self, path):
        self.dir = os.path.dirname(path)
        base = os.path.basename(path)
        self.stem = base[:-4] if base.endswith(".log") else base
        self.pos = {}  # inode -> offset
        self.take()

    def take(self):
        n = cp = 0
        for name in sorted(os.listdir(self.dir)):
            if not name.startswith(self.stem):
                continue
            p = os.path.join(self.dir, name)
            try:
                with open(p, "rb") as f:
                    st = os.fstat(f.fileno())
                    off = self.pos.get(st.st_ino, 0)
                    if st.st_size < off:
                        off = 0
                    f.seek(off)
                    data = f.read()
            except (FileNotFoundError, IsADirectoryError):
                continue  # renamed between listdir and open: seen at the next call
            end = data.rfind(b"\n") + 1
            n += data.count(b"\n", 0, end)
            cp += data.count(b'"operation":"audit.checkpoint"', 0, end)
            self.pos[st.st_ino] = off + end
        return n, cp

    def settle(self, quiet=0.2, limit=15.0):
        """After the load generator stopped, kmsd may still be finishing requests that
        were in flight (their records land late). Waits until the log has not grown for
        `quiet` seconds (at most `limit`) and returns everything appended meanwhile."""
        n = cp = 0
        deadline = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < deadline:
            a, b = self.take()
            n, cp = n + a, cp + b
            if a:
                last = time.monotonic()
            elif time.monotonic() - last >= quiet:
                break
            time.sleep(0.05)
        return n, cp


# ---------------------------------------------------------------- kmsd

class Server:
    def __init__(self, kids, tmp, settings, max_conns):
        self.kids, self.tmp, self.s = kids, tmp, settings
        self.bin = os.path.join(REPO, settings["build"], "kmsd")
        self.conf = os.path.join(tmp, "kmsd.conf")
        self.port_file = os.path.join(tmp, "port")
        self.audit_path = os.path.join(tmp, "audit", "audit.log")
        self.admin_token_file = os.path.join(tmp, "admin.token")
        self.service_token_file = os.path.join(tmp, "service.token")
        self.max_conns = max_conns
        self.proc = None
        self.port = None
        self.ctx = None

    def provision(self):
        hsm = os.path.join(self.tmp, "softhsm")
        certs = os.path.join(self.tmp, "certs")
        rc, out, err = self.kids.run(["sh", os.path.join(SCRIPTS, "dev-token.sh"), hsm], 60)
        if rc != 0:
            raise BenchError("dev-token.sh failed: " + err)
        self.softhsm_conf = out.strip().splitlines()[-1]
        rc, out, err = self.kids.run(["sh", os.path.join(SCRIPTS, "dev-certs.sh"), certs], 60)
        if rc != 0:
            raise BenchError("dev-certs.sh failed: " + err)
        self.ca = os.path.join(certs, "ca.pem")
        os.makedirs(os.path.dirname(self.audit_path), mode=0o700)
        opts = [
            ("listen_address", "127.0.0.1"), ("port", "0"), ("port_file", self.port_file),
            ("tls", "true"), ("tls_cert", os.path.join(certs, "server.pem")),
            ("tls_key", os.path.join(certs, "server.key")),
            ("pkcs11_module", PKCS11_MODULE), ("token_label", "kmsd"),
            ("pin_file", os.path.join(hsm, "user.pin")),
            ("so_pin_file", os.path.join(hsm, "so.pin")),
            ("store_path", os.path.join(self.tmp, "kmsd.db")),
            ("audit_path", self.audit_path), ("node_id", "bench-1"),
            # every bench connection comes from 127.0.0.1
            ("max_connections", str(max(1024, self.max_conns + 64))),
            ("per_ip_connections", "0"),
            ("log_level", "warn"),
        ]
        if os.geteuid() == 0:
            opts.append(("user", "root"))  # kmsd refuses root unless told (kmsd.conf.sample)
        if self.s["workers"] is not None:
            opts.append(("workers", str(self.s["workers"])))
        # The bench measures the data plane; its set-up (tenants, keys, principals, tokens)
        # runs as an admin without TOTP, so kmsd gets the built-in policy minus require_mfa
        # (as the integration tests do, tests/integration/conftest.py). Nothing measured
        # passes a step-up, so the numbers are those of the real policy.
        rc, out, err = self.kids.run([self.bin, "default-policy"], 60)
        if rc != 0:
            raise BenchError("kmsd default-policy failed: " + err)
        doc = json.loads(out)
        for rule in doc["rules"]:
            rule.pop("require_mfa", None)
        policy = os.path.join(self.tmp, "policy-nomfa.json")
        with open(policy, "w") as f:
            json.dump(doc, f)
        opts.append(("policy_file", policy))
        with open(self.conf, "w") as f:
            f.write("# written by bench/bench.py\n")
            for k, v in opts:
                f.write("%s = %s\n" % (k, v))
        os.chmod(self.conf, 0o600)
        self.env = dict(os.environ, SOFTHSM2_CONF=self.softhsm_conf)
        rc, out, err = self.kids.run([self.bin, "-c", self.conf, "init", "--admin-token-file",
                                      self.admin_token_file], 120, env=self.env, cwd=self.tmp)
        if rc != 0:
            raise BenchError("kmsd init failed (%d): %s" % (rc, err))
        with open(self.admin_token_file) as f:
            self.admin_token = f.read().strip()

    def start(self, timeout=60, poll=0.1):
        self.stderr_path = os.path.join(self.tmp, "kmsd.stderr")
        with open(self.stderr_path, "ab") as err, open(os.devnull, "wb") as null:
            self.proc = self.kids.popen([self.bin, "-c", self.conf], env=self.env, cwd=self.tmp,
                                        stdin=subprocess.DEVNULL, stdout=null, stderr=err)
        self.ctx = ssl.create_default_context(cafile=self.ca)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("kmsd exited with %d before serving:\n%s" % (
                    self.proc.returncode, self.stderr_tail()))
            if self.port is None:
                try:
                    with open(self.port_file) as f:
                        t = f.read().strip()
                    if t.isdigit():
                        self.port = int(t)
                except OSError:
                    pass
            if self.port is not None:
                try:
                    st, _ = self.call("GET", "/v1/sys/health")
                    if st == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(poll)
        raise BenchError("kmsd did not become healthy in %ss:\n%s" % (timeout, self.stderr_tail()))

    def stderr_tail(self, n=4000):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port

    def call(self, method, path, body=None, token=None, timeout=30):
        """One request on a fresh verified TLS connection: (status, parsed JSON or text)."""
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout)
        try:
            h = {}
            if token:
                h["X-Vault-Token"] = token
            if body is not None:
                h["Content-Type"] = "application/json"
                if not isinstance(body, (bytes, str)):
                    body = json.dumps(body)
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read().decode("utf-8", "replace")
            try:
                return r.status, json.loads(data)
            except ValueError:
                return r.status, data
        finally:
            c.close()

    def admin(self, path, body):
        st, j = self.call("POST", path, body, self.admin_token)
        if st != 200:
            raise BenchError("POST %s -> %d %s" % (path, st, j))
        return j

    def setup_tenant(self):
        self.admin("/v1/sys/tenants/" + TENANT, {"retention": "phi"})
        self.admin("/v1/%s/keys/%s" % (TENANT, KEY), {"type": "aes256-gcm96"})
        self.admin("/v1/sys/principals/" + SERVICE, {"role": "service", "tenants": [TENANT]})
        j = self.admin("/v1/sys/principals/%s/tokens" % SERVICE, {})
        self.service_token = j["auth"]["client_token"]
        fd = os.open(self.service_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.service_token + "\n")

    def metrics(self):
        """kmsd_audit_records_total / kmsd_audit_syncs_total from GET /v1/sys/metrics,
        or None. Tries ?format=prometheus and the plain path (whose JSON form carries
        data.audit.records_total / syncs_total), each without a token and with the admin
        token; the first way that works is kept."""
        want = ("kmsd_audit_records_total", "kmsd_audit_syncs_total")
        tries = [self.metrics_way] if getattr(self, "metrics_way", None) else [
            (path, tok) for path in ("/v1/sys/metrics?format=prometheus", "/v1/sys/metrics")
            for tok in (None, self.admin_token)]
        for path, tok in tries:
            try:
                st, body = self.call("GET", path, token=tok)
            except (OSError, http.client.HTTPException):
                return None
            if st != 200:
                continue
            m = {}
            if isinstance(body, str):
                m = parse_prometheus(body, want)
            elif isinstance(body, dict):
                a = (body.get("data") or {}).get("audit") or {}
                if isinstance(a.get("records_total"), int) and isinstance(a.get("syncs_total"), int):
                    m = {want[0]: float(a["records_total"]), want[1]: float(a["syncs_total"])}
            if all(k in m for k in want):
                self.metrics_way = (path, tok)
                return m
        return None

    def stop(self):
        if self.proc is None:
            return None
        rc = self.kids.stop(self.proc)
        if rc != 0:
            say("warning: kmsd exit status %s after SIGTERM; stderr:\n%s" % (rc, self.stderr_tail()))
        return rc


# ---------------------------------------------------------------- request bodies

def item_for(op, ciphertext, plaintext_b64, context):
    if op == "datakey":
        it = {"bits": 256}
    elif op == "encrypt":
        it = {"plaintext": plaintext_b64}
    else:
        it = {"ciphertext": ciphertext}
    if context:
        it["encryption_context"] = {"purpose": "treatment"}
    return it


def make_bodies(srv, settings, bodies_dir):
    """Writes one body file per (op, batch) and checks each once against kmsd, with
    certificate verification: 200, the right number of items, no item error, and for
    decrypt the plaintext the ciphertexts were made from."""
    ctx = {"purpose": "treatment"} if settings["context"] else None
    dk_body = {"bits": 256}
    if ctx:
        dk_body["encryption_context"] = ctx
    st, j = srv.call("POST", OP_PATH["datakey"] % (TENANT, KEY), dk_body, srv.service_token)
    if st != 200:
        raise BenchError("datakey -> %d %s" % (st, j))
    ct, dek = j["data"]["ciphertext"], j["data"]["plaintext"]
    pt = base64.b64encode(os.urandom(32)).decode()
    os.makedirs(bodies_dir)
    files = {}
    for op in settings["ops"]:
        for b in settings["batches"]:
            it = item_for(op, ct, pt, settings["context"])
            body = it if b == 1 else {"batch_input": [it] * b}
            raw = json.dumps(body, separators=(",", ":"))
            path = os.path.join(bodies_dir, "%s-%d.json" % (op, b))
            with open(path, "w") as f:
                f.write(raw)
            st, j = srv.call("POST", OP_PATH[op] % (TENANT, KEY), raw, srv.service_token)
            if st != 200:
                raise BenchError("%s batch %d -> %d %s" % (op, b, st, j))
            items = [j["data"]] if b == 1 else j["data"].get("batch_results", [])
            if len(items) != b or any("error" in x for x in items):
                raise BenchError("%s batch %d: bad answer %s" % (op, b, str(j)[:300]))
            if op == "decrypt" and any(x.get("plaintext") != dek for x in items):
                raise BenchError("decrypt did not give back the data key")
            if op in ("encrypt", "rewrap", "datakey") and any(
                    not x.get("ciphertext", "").startswith("vault:v") for x in items):
                raise BenchError("%s: no ciphertext in the answer" % op)
            files[(op, b)] = (path, len(raw))
    return files


# ---------------------------------------------------------------- measurements

def wrk_version():
    try:
        r = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).splitlines()[0].split(" Copyright")[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


class Bench:
    def __init__(self, kids, srv, settings, tmp):
        self.kids, self.srv, self.s, self.tmp = kids, srv, settings, tmp
        self.audit = AuditCounter(srv.audit_path)
        self.has_metrics = srv.metrics() is not None
        self.ncpu = os.cpu_count() or 1
        self.p11_dir = os.path.join(tmp, "softhsm-p11")
        self.tools = os.path.join(REPO, settings["build"], "bench")

    # -- ceilings that need no server --------------------------------------
    def fsync_ceiling(self, per_sync):
        rc, out, err = self.kids.run(
            [os.path.join(self.tools, "fsyncloop"), "--file",
             os.path.join(os.path.dirname(self.srv.audit_path), "fsyncloop.dat"),
             "--per-sync", str(per_sync), "--record", str(RECORD_BYTES),
             "--seconds", str(self.s["seconds"])], self.s["seconds"] + 60)
        if rc != 0:
            raise BenchError("fsyncloop failed: " + err)
        return json.loads(out)

    def p11_ceiling(self, threads):
        if not hasattr(self, "p11_conf"):
            rc, out, err = self.kids.run(["sh", os.path.join(SCRIPTS, "dev-token.sh"),
                                          self.p11_dir], 60)
            if rc != 0:
                raise BenchError("dev-token.sh (p11 ceiling) failed: " + err)
            self.p11_conf = out.strip().splitlines()[-1]
        rc, out, err = self.kids.run(
            [os.path.join(self.tools, "p11loop"), "--so-pin-file",
             os.path.join(self.p11_dir, "so.pin"), "--pin-file",
             os.path.join(self.p11_dir, "user.pin"), "--module", PKCS11_MODULE,
             "--threads", str(threads), "--size", "32", "--seconds", str(self.s["seconds"])],
            self.s["seconds"] + 120, env=dict(os.environ, SOFTHSM2_CONF=self.p11_conf))
        if rc != 0:
            raise BenchError("p11loop failed: " + err)
        return json.loads(out.strip().splitlines()[-1])

    # -- one wrk run against kmsd ------------------------------------------
    def wrk(self, path, conns, method="GET", body_file=None, token_file=None, extra_env=None):
        pid = self.srv.proc.pid
        threads = max(1, min(conns, self.ncpu))
        env = dict(os.environ, BENCH_METHOD=method, BENCH_BODY_FILE=body_file or "",
                   BENCH_TOKEN_FILE=token_file or "", **(extra_env or {}))
        args = ["wrk", "-t", str(threads), "-c", str(conns), "-d", "%ds" % self.s["seconds"],
                "--timeout", "10s", "-s", WRK_LUA, self.srv.url + path]
        m0 = self.srv.metrics() if self.has_metrics else None
        self.audit.take()  # the previous run settled already
        cpu0, busy0, wrk0, t0 = proc_cpu_ticks(pid), machine_busy_ticks(), children_cpu_s(), time.monotonic()
        rc, out, err = self.kids.run(args, self.s["seconds"] + 60, env=env)
        t1 = time.monotonic()
        # the requests wrk left in flight finish now: their records and CPU belong here
        records, checkpoints = self.audit.settle()
        cpu1, busy1, wrk1, t2 = proc_cpu_ticks(pid), machine_busy_ticks(), children_cpu_s(), time.monotonic()
        m1 = self.srv.metrics() if self.has_metrics else None
        if self.srv.proc.poll() is not None:
            raise BenchError("kmsd exited (%d) during a run:\n%s" % (
                self.srv.proc.returncode, self.srv.stderr_tail()))
        line = [ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")]
        if rc != 0 or not line:
            raise BenchError("wrk failed (%d): %s %s" % (rc, out[-2000:], err[-2000:]))
        w = json.loads(line[-1][len("BENCHJSON "):])
        secs = w["duration_us"] / 1e6
        n = w["requests"]
        # requests kmsd served: wrk does not count those still in flight when it stops,
        # but each data-plane request wrote exactly one audit record (health: none)
        served = max(n, records - checkpoints)
        srv_cpu_s = (cpu1 - cpu0) / CLK_TCK
        wrk_cpu_s = wrk1 - wrk0
        machine_s = (busy1 - busy0) / CLK_TCK
        r = {
            "requests": n, "seconds": secs, "errors": w["errors"],
            "req_per_s": n / secs if secs > 0 else None,
            "p50_ms": w["latency_us"]["p50"] / 1000, "p90_ms": w["latency_us"]["p90"] / 1000,
            "p99_ms": w["latency_us"]["p99"] / 1000, "max_ms": w["latency_us"]["max"] / 1000,
            "served": served,
            "server_cpu_us_per_req": srv_cpu_s * 1e6 / served if served else None,
            "server_cpu_cores": srv_cpu_s / (t2 - t0),
            "loadgen_cpu_us_per_req": wrk_cpu_s * 1e6 / n if n else None,
            # CPU used on this machine by neither kmsd nor wrk during the run, in cores:
            # the other engineers' load, i.e. how noisy this figure is
            "other_cpu_cores": max(0.0, (machine_s - srv_cpu_s - wrk_cpu_s) / (t2 - t0)),
            "rss_mib": (proc_status_kib(pid, "VmRSS") or 0) / 1024,
            "rss_peak_mib": (proc_status_kib(pid, "VmHWM") or 0) / 1024,
            "audit_records": records, "audit_checkpoints": checkpoints,
            "audit_records_per_s": records / secs if secs > 0 else None,
            "audit_syncs_per_s": None, "records_per_sync": None,
        }
        if m0 and m1:
            dr = m1["kmsd_audit_records_total"] - m0["kmsd_audit_records_total"]
            ds = m1["kmsd_audit_syncs_total"] - m0["kmsd_audit_syncs_total"]
            r["audit_records_metric"] = dr
            r["audit_syncs"] = ds
            r["audit_syncs_per_s"] = ds / secs if secs > 0 else None
            r["records_per_sync"] = dr / ds if ds else None
        bad = sum(w["errors"].values())
        r["valid"] = bad == 0
        return r

    def health(self, conns):
        return self.wrk("/v1/sys/health", conns)

    def endpoint(self, op, batch, conns, body_file):
        r = self.wrk(OP_PATH[op] % (TENANT, KEY), conns, "POST", body_file,
                     self.srv.service_token_file)
        r["items_per_s"] = r["req_per_s"] * batch if r["req_per_s"] is not None else None
        return r


def fmt_n(x):
    if x is None:
        return "n/a"
    if x >= 100:
        return "{:,.0f}".format(x)
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def fmt_range(st):
    if st is None:
        return "n/a"
    return "%s [%s–%s]" % (fmt_n(st["median"]), fmt_n(st["min"]), fmt_n(st["max"]))


def fmt_ratio(st):
    return "n/a" if st is None else "%.2f×" % st["median"]


FIELDS = ("req_per_s", "items_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms",
          "server_cpu_us_per_req", "server_cpu_cores", "loadgen_cpu_us_per_req",
          "other_cpu_cores", "rss_mib", "rss_peak_mib", "audit_records_per_s",
          "audit_syncs_per_s", "records_per_sync")


def summarise(runs):
    out = {f: stats([r.get(f) for r in runs]) for f in FIELDS}
    out = {k: v for k, v in out.items() if v is not None}
    out["invalid_runs"] = sum(1 for r in runs if not r["valid"])
    return out


def build_report(settings, ceil_runs, res_runs):
    """ceil_runs: {"fsync": {k: [run…]}, "p11": {t: [run…]}, "health": {c: [run…]}};
    res_runs: {(op, batch, conns): [run…]}, one run per round, same order."""
    rep = {"ceilings": {"fsync": {}, "p11_gcm": {}, "health": {}}, "results": []}
    for k, runs in sorted(ceil_runs["fsync"].items()):
        rep["ceilings"]["fsync"][str(k)] = {
            "records_per_s": stats([r["records_per_s"] for r in runs]),
            "syncs_per_s": stats([r["syncs_per_s"] for r in runs]), "raw": runs}
    for t, runs in sorted(ceil_runs["p11"].items()):
        rep["ceilings"]["p11_gcm"][str(t)] = {
            "ops_per_s": stats([r["ops_per_s"] for r in runs]), "raw": runs}
    for c, runs in sorted(ceil_runs["health"].items()):
        rep["ceilings"]["health"][str(c)] = dict(summarise(runs), raw=runs)
    p11_2 = [r["ops_per_s"] for r in ceil_runs["p11"].get(max(ceil_runs["p11"] or [0]), [])]
    fs1 = [r["syncs_per_s"] for r in ceil_runs["fsync"].get(1, [])]
    for (op, batch, conns), runs in res_runs.items():
        h = [r["req_per_s"] for r in ceil_runs["health"].get(conns, [])]
        e = {"op": op, "batch": batch, "conns": conns}
        e.update(summarise(runs))
        e["ratio"] = {
            "req_per_s_to_health": ratios([r["req_per_s"] for r in runs], h),
            "items_per_s_to_p11": ratios([r["items_per_s"] for r in runs], p11_2),
            "syncs_per_s_to_fsync1": ratios([r["audit_syncs_per_s"] for r in runs], fs1),
        }
        e["raw"] = runs
        rep["results"].append(e)
    return rep


def med(st, key=None):
    return None if st is None else st["median"]


def print_report(rep, settings, out=sys.stdout):
    c = rep["ceilings"]
    w = lambda s="": print(s, file=out)
    w()
    w("Ceilings (median [min–max] of %d rounds, %ds each)" % (settings["runs"], settings["seconds"]))
    for k, v in c["fsync"].items():
        w("  append %d B + fdatasync, %3s per sync : %s records/s, %s fsyncs/s" % (
            RECORD_BYTES, k, fmt_range(v["records_per_s"]), fmt_range(v["syncs_per_s"])))
    for t, v in c["p11_gcm"].items():
        w("  PKCS#11 AES-256-GCM 32 B, session key, %s thread(s) : %s ops/s" % (
            t, fmt_range(v["ops_per_s"])))
    for conns, v in c["health"].items():
        w("  GET /v1/sys/health, %4s conns : %s req/s  p50/p90/p99 %s/%s/%s ms  cpu %s µs/req" % (
            conns, fmt_range(v.get("req_per_s")), fmt_n(med(v.get("p50_ms"))),
            fmt_n(med(v.get("p90_ms"))), fmt_n(med(v.get("p99_ms"))),
            fmt_n(med(v.get("server_cpu_us_per_req")))))
    w()
    hdr = ("%-8s %5s %5s  %-26s %6s  %-28s %6s  %-17s %7s %6s  %-24s %-20s %7s %6s %s" % (
        "op", "items", "conns", "req/s [min–max]", "×hlth", "items/s [min–max]", "×p11",
        "p50/p90/p99 ms", "cpu µs", "RSS", "audit rec/s [min–max]", "fsyncs/s [min–max]",
        "rec/sync", "×fs1", "other"))
    w(hdr)
    w("-" * len(hdr))
    for e in rep["results"]:
        lat = "%s/%s/%s" % (fmt_n(med(e.get("p50_ms"))), fmt_n(med(e.get("p90_ms"))),
                            fmt_n(med(e.get("p99_ms"))))
        flag = "" if e["invalid_runs"] == 0 else "  !%d run(s) with errors" % e["invalid_runs"]
        w("%-8s %5d %5d  %-26s %6s  %-28s %6s  %-17s %7s %6s  %-24s %-20s %7s %6s %s%s" % (
            e["op"], e["batch"], e["conns"], fmt_range(e.get("req_per_s")),
            fmt_ratio(e["ratio"]["req_per_s_to_health"]), fmt_range(e.get("items_per_s")),
            fmt_ratio(e["ratio"]["items_per_s_to_p11"]), lat,
            fmt_n(med(e.get("server_cpu_us_per_req"))), fmt_n(med(e.get("rss_mib"))),
            fmt_range(e.get("audit_records_per_s")), fmt_range(e.get("audit_syncs_per_s")),
            fmt_n(med(e.get("records_per_sync"))),
            fmt_ratio(e["ratio"]["syncs_per_s_to_fsync1"]),
            fmt_n(med(e.get("other_cpu_cores"))), flag))
    w()
    w("×hlth: req/s over GET /v1/sys/health at the same connection count; ×p11: items/s over")
    w("the 2-thread PKCS#11 loop; ×fs1: fsyncs/s over the one-record-per-fsync loop; ratios are")
    w("per round, then the median. cpu µs: kmsd's utime+stime per request; RSS in MiB at the")
    w("end of the run; other: cores busy with neither kmsd nor wrk (the machine's noise).")


# ---------------------------------------------------------------- main

def host_info(tmp):
    info = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        r = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True,
                           timeout=10)
        info["tmp_fs"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "softhsm2"],
                           capture_output=True, text=True, timeout=10)
        info["softhsm2"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    info["wrk"] = wrk_version()
    with open("/proc/loadavg") as f:
        info["loadavg_start"] = f.read().split()[:3]
    return info


def allocator_of(pid):
    """Which malloc a running process uses, from the libraries it has mapped: glibc's,
    unless another was preloaded (bench/pair.py --b-env LD_PRELOAD=...)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
    except OSError:
        return None
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if "/lib%s" % name in maps:
            return name
    return "glibc"


def git_info():
    g = {}
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        g["commit"] = r.stdout.strip()
        r = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
        g["dirty"] = bool(r.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return g


def run(settings):
    for tool in ("wrk", "softhsm2-util", "openssl"):
        if shutil.which(tool) is None:
            raise BenchError("%s not found (sh scripts/deps.sh bench)" % tool)
    for b in ("kmsd", "bench/p11loop", "bench/fsyncloop"):
        if not os.access(os.path.join(REPO, settings["build"], b), os.X_OK):
            raise BenchError("%s/%s missing: run `make bench`" % (settings["build"], b))
    # both tokens (kmsd's and the PKCS#11 ceiling's) are made by dev-token.sh with it
    os.environ["SOFTHSM_MECHANISMS"] = settings["softhsm_mechanisms"]
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    kids = Children()
    tmp = tempfile.mkdtemp(prefix="kmsd-bench.")
    srv = None
    try:
        info = host_info(tmp)
        if info.get("tmp_fs") == "tmpfs":
            say("warning: %s is on tmpfs: fdatasync costs nothing there, the audit and fsync "
                "figures mean little (set TMPDIR to a disk)" % tmp)
        srv = Server(kids, tmp, settings, max(max(settings["conns"]),
                                              settings["idle_conns"] if settings["scaling"] else 0))
        say("temporary directory %s" % tmp)
        srv.provision()
        srv.start()
        srv.setup_tenant()
        allocator = allocator_of(srv.proc.pid)
        say("kmsd pid %d on %s (tenant %s, key %s, allocator %s)" % (
            srv.proc.pid, srv.url, TENANT, KEY, allocator))
        bodies = make_bodies(srv, settings, os.path.join(tmp, "bodies"))
        b = Bench(kids, srv, settings, tmp)
        say("audit fsync counts: %s" % ("GET /v1/sys/metrics" if b.has_metrics else
                                        "n/a (no kmsd_audit_syncs_total in /v1/sys/metrics)"))
        combos = [(op, bt, c) for op in settings["ops"] for bt in settings["batches"]
                  for c in settings["conns"]]
        per_round = (4 + len(settings["conns"]) + len(combos)) * settings["seconds"]
        say("%d rounds of %d measurements, about %d s of load per round" % (
            settings["runs"], 4 + len(settings["conns"]) + len(combos), per_round))
        ceil = {"fsync": {1: [], 64: []}, "p11": {1: [], 2: []},
                "health": {c: [] for c in settings["conns"]}}
        res = {k: [] for k in combos}
        for rnd in range(1, settings["runs"] + 1):
            tag = "[%d/%d]" % (rnd, settings["runs"])
            for k in (1, 64):
                r = b.fsync_ceiling(k)
                ceil["fsync"][k].append(r)
                say("%s fsync %2d/sync: %s records/s, %s fsyncs/s" % (
                    tag, k, fmt_n(r["records_per_s"]), fmt_n(r["syncs_per_s"])))
            for t in (1, 2):
                r = b.p11_ceiling(t)
                ceil["p11"][t].append(r)
                say("%s pkcs11 gcm %d thread(s): %s ops/s" % (tag, t, fmt_n(r["ops_per_s"])))
            for c in settings["conns"]:
                r = b.health(c)
                ceil["health"][c].append(r)
                say("%s health c=%d: %s req/s p99 %s ms%s" % (
                    tag, c, fmt_n(r["req_per_s"]), fmt_n(r["p99_ms"]),
                    "" if r["valid"] else " ERRORS %s" % r["errors"]))
            for (op, bt, c) in combos:
                r = b.endpoint(op, bt, c, bodies[(op, bt)][0])
                res[(op, bt, c)].append(r)
                say("%s %s items=%d c=%d: %s req/s, %s items/s, p99 %s ms, %s µs cpu/req, "
                    "%s audit rec/s, %s fsyncs/s%s" % (
                        tag, op, bt, c, fmt_n(r["req_per_s"]), fmt_n(r["items_per_s"]),
                        fmt_n(r["p99_ms"]), fmt_n(r["server_cpu_us_per_req"]),
                        fmt_n(r["audit_records_per_s"]), fmt_n(r["audit_syncs_per_s"]),
                        "" if r["valid"] else " ERRORS %s" % r["errors"]))
        rep = build_report(settings, ceil, res)
        if settings["scaling"]:
            import scaling  # bench/scaling.py
            rep["scaling"] = scaling.run_scaling(b, srv, settings, say, proc_status_kib)
        rc = srv.stop()
        if settings["cluster"]:
            import cluster_bench  # bench/cluster_bench.py
            rep["cluster"] = cluster_bench.run_cluster(sys.modules[__name__], kids, settings, tmp, say)
        with open("/proc/loadavg") as f:
            info["loadavg_end"] = f.read().split()[:3]
        finished = datetime.datetime.now(datetime.timezone.utc)
        doc = {
            "schema": "kmsd-bench/1",
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "command": "make bench" + "".join(
                " %s=%s" % (k, shlex.quote(os.environ[k])) for k in
                ("BENCH_QUICK", "BENCH_SECONDS", "BENCH_RUNS", "BENCH_CONNS", "BENCH_OPS",
                 "BENCH_BATCHES", "BENCH_WORKERS", "BENCH_CONTEXT", "BENCH_SCALING",
                 "BENCH_SCALE_KEYS", "BENCH_IDLE_CONNS", "BENCH_CLUSTER", "KMS_CLUSTER_STORE",
                 "SOFTHSM_MECHANISMS")
                if os.environ.get(k, "").strip()),
            "host": info, "git": git_info(),
            "settings": {k: v for k, v in settings.items() if k != "keep"},
            "kmsd": {"workers": settings["workers"], "exit_status": rc, "allocator": allocator,
                     "metrics_endpoint": b.has_metrics},
            "load_generator": "%s, on the same machine and cores as kmsd" % (
                info.get("wrk") or "wrk"),
        }
        doc.update(rep)
        print_report(rep, settings)
        if "scaling" in rep:
            import scaling
            scaling.print_scaling(rep["scaling"], sys.stdout)
        if "cluster" in rep:
            import cluster_bench
            cluster_bench.print_cluster(rep["cluster"], sys.stdout)
        path = write_json(os.path.join(RESULTS, started.strftime("%Y%m%dT%H%M%SZ") + ".json"), doc)
        print("\nJSON: %s (%.0f s)" % (os.path.relpath(path, os.getcwd()), doc["elapsed_s"]))
        invalid = sum(e["invalid_runs"] for e in rep["results"])
        if invalid:
            say("warning: %d run(s) saw connection errors, timeouts or non-2xx answers" % invalid)
        return 0
    finally:
        if srv is not None and srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
        kids.stop_all()
        if settings["keep"]:
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def self_test():
    """The parts that need no server: statistics, ratios, metrics parsing, the report
    and the JSON writer, on made-up figures."""
    assert stats([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "runs": [3, 1, 2]}
    assert stats([None, 4, 2])["median"] == 3 and stats([None]) is None
    assert ratios([10, 20, None], [20, 20, 5])["median"] == 0.75
    m = parse_prometheus('# TYPE kmsd_audit_syncs_total counter\n'
                         'kmsd_audit_syncs_total{node="a"} 12\nkmsd_audit_records_total 3e2\n'
                         'kmsd_other 1\n', ("kmsd_audit_records_total", "kmsd_audit_syncs_total"))
    assert m == {"kmsd_audit_syncs_total": 12.0, "kmsd_audit_records_total": 300.0}, m
    s = settings_from_env({"BENCH_QUICK": "1", "BENCH_CONNS": "1,64"})
    assert s["seconds"] == 1 and s["conns"] == [1, 64] and s["runs"] == 3

    def fake(rps, batch=1):
        return {"requests": rps, "seconds": 1.0, "errors": {"status": 0}, "valid": True,
                "req_per_s": rps, "items_per_s": rps * batch, "p50_ms": 1.0, "p90_ms": 2.0,
                "p99_ms": 3.0, "max_ms": 4.0, "server_cpu_us_per_req": 100.0,
                "server_cpu_cores": 1.0, "loadgen_cpu_us_per_req": 50.0,
                "other_cpu_cores": 0.1, "rss_mib": 20.0, "rss_peak_mib": 21.0,
                "audit_records_per_s": rps, "audit_syncs_per_s": None, "records_per_sync": None}

    ceil = {"fsync": {1: [{"records_per_s": 5e3, "syncs_per_s": 5e3}] * 3,
                      64: [{"records_per_s": 1.6e5, "syncs_per_s": 2.5e3}] * 3},
            "p11": {1: [{"ops_per_s": 5e4}] * 3, 2: [{"ops_per_s": 4e4}] * 3},
            "health": {64: [fake(2e4), fake(3e4), fake(1e4)]}}
    res = {("datakey", 100, 64): [fake(300, 100), fake(320, 100), fake(310, 100)]}
    rep = build_report(s, ceil, res)
    e = rep["results"][0]
    assert e["req_per_s"]["median"] == 310 and e["items_per_s"]["median"] == 31000
    assert abs(e["ratio"]["items_per_s_to_p11"]["median"] - 0.775) < 1e-9
    assert e["ratio"]["syncs_per_s_to_fsync1"] is None
    with open(os.devnull, "w") as null:
        print_report(rep, s, out=null)
    tmp = tempfile.mkdtemp(prefix="kmsd-bench-selftest.")
    try:
        p = write_json(os.path.join(tmp, "r", "x.json"), dict(rep, schema="kmsd-bench/1"))
        with open(p) as f:
            back = json.load(f)
        # per-round ratios 300/2e4, 320/3e4, 310/1e4: the median is the first
        assert back["results"][0]["ratio"]["req_per_s_to_health"]["median"] == 300 / 2e4
        assert not os.path.exists(p + ".tmp")
    finally:
        shutil.rmtree(tmp)
    import cluster_bench
    fake_cl = {"conns": 64, "store": "pg", "note": "n",
               "req_per_s": {k: stats([100.0, 110.0, 90.0]) for k in
                             ("health_lb_1", "health_lb_2", "datakey_direct_1", "datakey_lb_1", "datakey_lb_2")},
               "ratio": {"lb_2_to_lb_1": ratios([100, 120, 80], [100, 100, 100]),
                         "lb_1_to_direct_1": None}}
    assert fake_cl["ratio"]["lb_2_to_lb_1"]["median"] == 1.0
    with open(os.devnull, "w") as null:
        cluster_bench.print_cluster(fake_cl, null)
        cluster_bench.print_cluster({"error": "no store_uri\nmore"}, null)
    audit_counter_self_test()
    pair_self_test()
    tools_self_test(os.environ.get("BUILD") or "build")
    print("bench self-test: ok")
    return 0


def pair_self_test():
    """bench/pair.py's argument checks and summary, without a server."""
    import contextlib
    import io
    import pair
    a = pair.parse(["--op", "decrypt", "--batch", "10", "--b-env", "X=1=2", "--b-workers", "2"])
    assert (a.op, a.batch, a.a_keys, a.b_keys, a.rounds, a.b_env, a.b_workers, a.a_workers) == \
        ("decrypt", 10, 1, 1, 6, ["X=1=2"], 2, None), a
    a = pair.parse(["--keys", "100", "--b-keys", "10000"])
    assert (a.a_keys, a.b_keys) == (100, 10000), a
    for bad in (["--op", "health", "--batch", "10"], ["--op", "decrypt", "--keys", "10"],
                ["--keys", "10", "--batch", "10"], ["--a-env", "NOEQUALS"], ["--b-env", "=1"],
                ["--op", "encrypt", "--b-keys", "2"], ["--a-keys", "0"],
                ["--rounds", "0"], ["--a-workers", "0"], ["--op", "sign"]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                pair.parse(bad)
        except SystemExit as e:
            assert e.code == 2 and "error:" in err.getvalue(), (bad, e.code, err.getvalue())
        else:
            raise AssertionError("pair.py took %r" % bad)
    rounds = [{"req_per_s": r, "server_cpu_us_per_req": c, "p99_ms": 1.0,
               "loadgen_cpu_us_per_req": 40.0, "other_cpu_cores": 0.0, "records_per_sync": None}
              for r, c in ((100.0, 9.0), (300.0, 7.0), (200.0, 8.0))]
    sm = pair.summary(rounds)
    assert sm["req_per_s"] == {"median": 200.0, "min": 100.0, "max": 300.0}, sm
    assert sm["server_cpu_us_per_req"]["median"] == 8.0 and sm["records_per_sync"] is None
    assert "200 [100–300]" == pair.fmt(sm["req_per_s"]) and pair.fmt(None) == "n/a"


def audit_counter_self_test():
    """AuditCounter across a rotation: the renamed segment goes on where it was, the new
    file counts from 0, a half-written line waits for its newline."""
    tmp = tempfile.mkdtemp(prefix="kmsd-bench-selftest.")
    try:
        log = os.path.join(tmp, "audit.log")
        rec = b'{"seq":1,"operation":"datakey"}\n'
        cpt = b'{"seq":2,"operation":"audit.checkpoint"}\n'
        with open(log, "wb") as f:
            f.write(rec * 3)
        ac = AuditCounter(log)
        assert ac.take() == (0, 0)
        with open(log, "ab") as f:
            f.write(rec + cpt + b'{"seq":')
        assert ac.take() == (2, 1)
        with open(log, "ab") as f:
            f.write(b'3}\n')
        os.rename(log, os.path.join(tmp, "audit-%020d.log" % 1))
        with open(log + ".next", "wb") as f:
            f.write(rec * 2)
        os.rename(log + ".next", log)
        with open(os.path.join(tmp, "fsyncloop.dat"), "wb") as f:
            f.write(rec * 10)
        assert ac.take() == (3, 0)
        assert ac.take() == (0, 0)
    finally:
        shutil.rmtree(tmp)


def tools_self_test(build):
    """Runs each ceiling tool for a moment (fsyncloop on a temporary file, p11loop on a
    throwaway token) and checks that it answers with the JSON the bench reads. Skipped
    when the tools are not built. No timing is asserted, only that work was done."""
    tools = os.path.join(REPO, build, "bench")
    if not all(os.access(os.path.join(tools, t), os.X_OK) for t in ("fsyncloop", "p11loop")):
        print("bench self-test: %s/bench tools not built, skipping them" % build)
        return
    kids = Children()
    tmp = tempfile.mkdtemp(prefix="kmsd-bench-selftest.")
    try:
        rc, out, err = kids.run([os.path.join(tools, "fsyncloop"), "--file",
                                 os.path.join(tmp, "f"), "--per-sync", "4", "--seconds",
                                 "0.05"], 60)
        assert rc == 0, err
        j = json.loads(out)
        assert j["per_sync"] == 4 and j["records"] == 4 * j["syncs"] > 0, j
        assert not os.path.exists(os.path.join(tmp, "f")), "fsyncloop left its file"
        rc, out, err = kids.run(["sh", os.path.join(SCRIPTS, "dev-token.sh"),
                                 os.path.join(tmp, "hsm")], 60)
        assert rc == 0, err
        conf = out.strip().splitlines()[-1]
        rc, out, err = kids.run(
            [os.path.join(tools, "p11loop"), "--so-pin-file", os.path.join(tmp, "hsm", "so.pin"),
             "--pin-file", os.path.join(tmp, "hsm", "user.pin"), "--threads", "2",
             "--seconds", "0.05"], 120, env=dict(os.environ, SOFTHSM2_CONF=conf))
        assert rc == 0, err
        j = json.loads(out.strip().splitlines()[-1])
        assert j["threads"] == 2 and j["ops"] == sum(j["per_thread"]) > 0, j
        rc, out, err = kids.run([os.path.join(tools, "p11loop"), "--threads", "0"], 60)
        assert rc == 2, "p11loop took a bad usage"
    finally:
        kids.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGHUP, on_terminate)
    try:
        settings = settings_from_env(os.environ)
        return run(settings)
    except BenchError as e:
        say("error: %s" % e)
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything the bench started is stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv))
