#!/usr/bin/python3
"""A local kmsd cluster (issue 10, docs/SCALE-OUT.md): one shared SoftHSM2 token, one shared
store, N kmsd nodes and HAProxy in front, everything on 127.0.0.1. NOT for production
(dev token, dev CA, trust authentication in PostgreSQL, PINs in files).

Used three ways, one implementation:
  scripts/cluster.sh up|down|status|destroy [--nodes N]   a dev cluster under ./var/cluster
  tests/cluster/conftest.py                               the cluster tests (make cluster-check)
  bench/cluster_bench.py                                  the cluster figure of make bench

Layout under ROOT:
  softhsm/            the token every node opens (scripts/dev-token.sh; PINs beside it)
  certs/              dev CA and the server certificate every node presents (dev-certs.sh)
  pg/                 PostgreSQL (scripts/pgtmp.sh) when the store is pg
  kmsd.db             the store when it is sqlite (every node on the same file)
  admin.token         the bootstrap admin's token (kmsd init, once)
  node<i>/kmsd.conf   node i's config: its node_id (<prefix>-<i>), port, audit log
  node<i>/audit/      node i's audit log (audit.log, segments, audit.log.pub.pem)
  node<i>/kmsd.log    its stdout and stderr;  node<i>/kmsd.pid
  haproxy.cfg, haproxy.pid, haproxy.log, haproxy.sock (its stats socket)
  cluster.json        what is running: ports, PIDs, the store, the balancer

Store: KMS_CLUSTER_STORE=pg (default) starts PostgreSQL and gives every node
`store_uri = postgresql://...` (the PostgreSQL backend of issue 10); sqlite puts every node
on one SQLite file (store_path), which works with the SQLite backend too (kmsd.c,
serve_lock) and is how the harness runs before the PostgreSQL backend exists.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPTS = os.path.join(REPO, "scripts")
PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

for _v in ("NO_PROXY", "no_proxy"):
    os.environ[_v] = "127.0.0.1,localhost,::1"


class ClusterError(Exception):
    pass


def free_port():
    """A port the kernel says is free now (bind to 0). Another process may take it before
    we use it; the callers fail loudly then rather than silently share a port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own child, killed, not yet reaped) is not alive
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def nomfa_policy(kmsd_bin, extra_rules=()):
    """The built-in policy document without its require_mfa, require_quorum and mfa_max_age
    conditions (as tests/integration/conftest.py makes it), plus extra_rules at the end."""
    r = subprocess.run([kmsd_bin, "default-policy"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise ClusterError("kmsd default-policy failed: %s" % r.stderr)
    doc = json.loads(r.stdout)
    for rule in doc["rules"]:
        rule.pop("require_mfa", None)
        rule.pop("require_quorum", None)
        conds = rule.get("conditions")
        if conds is not None:
            conds.pop("mfa_max_age", None)
            if not conds:
                del rule["conditions"]
    doc["rules"].extend(extra_rules)
    doc["description"] = "local cluster (scripts/kmscluster.py): the built-in policy without MFA"
    return doc


class Node:
    def __init__(self, cluster, index):
        self.c = cluster
        self.index = index
        self.name = "n%d" % index
        self.node_id = "%s-%d" % (cluster.node_prefix, index)
        self.dir = os.path.join(cluster.root, "node%d" % index)
        self.conf = os.path.join(self.dir, "kmsd.conf")
        self.audit_dir = os.path.join(self.dir, "audit")
        self.audit_path = os.path.join(self.audit_dir, "audit.log")
        self.log = os.path.join(self.dir, "kmsd.log")
        self.pid_file = os.path.join(self.dir, "kmsd.pid")
        self.port = None
        self.proc = None  # when started by this process
        self.pid = None

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port

    def write_conf(self):
        c = self.c
        os.makedirs(self.audit_dir, mode=0o700, exist_ok=True)
        opts = [
            ("listen_address", "127.0.0.1"),
            ("port", str(self.port)),
            ("tls", "true"),
            ("tls_cert", os.path.join(c.certs, "server.pem")),
            ("tls_key", os.path.join(c.certs, "server.key")),
            ("pkcs11_module", PKCS11_MODULE),
            ("token_label", "kmsd"),
            ("pin_file", os.path.join(c.hsm, "user.pin")),
            ("so_pin_file", os.path.join(c.hsm, "so.pin")),
        ]
        if c.store == "pg":
            opts.append(("store_uri", c.pg_uri))
        else:
            opts.append(("store_path", c.sqlite_path))
        opts += [
            ("audit_path", self.audit_path),
            ("node_id", self.node_id),
            ("workers", str(c.workers)),
            ("log_level", c.log_level),
        ]
        if c.policy_file:
            opts.append(("policy_file", c.policy_file))
        if os.geteuid() == 0:
            # kmsd refuses to run as root unless told which account to be (dev only)
            opts.append(("user", "root"))
        extra = dict(c.extra_opts)
        opts = [(k, extra.pop(k)) if k in extra else (k, v) for k, v in opts]
        opts += [(k, v) for k, v in c.extra_opts if k in extra]
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write("# written by scripts/kmscluster.py; changes here are overwritten\n")
            for k, v in opts:
                f.write("%s = %s\n" % (k, v))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.conf)

    def start(self, wait=True):
        if self.alive():
            return
        out = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([self.c.kmsd_bin, "-c", self.conf], env=self.c.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         cwd=self.dir, start_new_session=True)
        finally:
            out.close()
        self.pid = self.proc.pid
        with open(self.pid_file, "w") as f:
            f.write("%d\n" % self.pid)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout=None):
        timeout = timeout or self.c.startup_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ClusterError("node %s exited before serving:\n%s" % (self.node_id, self.log_tail()))
            if self.c.health(self.url) == 200:
                return
            time.sleep(0.1)
        raise ClusterError("node %s not healthy on %s within %ss:\n%s" % (
            self.node_id, self.url, timeout, self.log_tail()))

    def alive(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def kill(self, sig=signal.SIGKILL):
        """Sends sig to this node (kill -9 by default) and, for SIGKILL, waits until it is gone."""
        if not self.alive():
            return
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self._wait_gone(30)

    def _wait_gone(self, timeout):
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout=60):
        """SIGTERM and wait; returns kmsd's exit status (None when it was not running or is
        not our child; "killed" when it had to be killed)."""
        if not self.alive():
            rc = self.proc.returncode if self.proc is not None else None
            self._rm_pid()
            return rc
        os.kill(self.pid, signal.SIGTERM)
        if not self._wait_gone(timeout):
            os.kill(self.pid, signal.SIGKILL)
            self._wait_gone(30)
            self._rm_pid()
            return "killed"
        self._rm_pid()
        return self.proc.returncode if self.proc is not None else None

    def _rm_pid(self):
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass

    def log_tail(self, n=4000):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def audit_files(self):
        names = sorted(n for n in os.listdir(self.audit_dir)
                       if n.startswith("audit-") and n.endswith(".log"))
        files = [os.path.join(self.audit_dir, n) for n in names]
        if os.path.exists(self.audit_path):
            files.append(self.audit_path)
        return files

    def audit_records(self):
        out = []
        for p in self.audit_files():
            with open(p) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        out.append(json.loads(line))
        return out


class Cluster:
    """root: the directory everything lives in. nodes: 1..3 (2 or 3 for a cluster; 1 for
    the bench's one-node figure). store: "pg" or "sqlite" (default: $KMS_CLUSTER_STORE or
    pg). base_port: None = free ports from the kernel for the balancer, the nodes and
    PostgreSQL; a number = the balancer on it, node i on base_port + i, PostgreSQL on
    base_port + 9 (scripts/cluster.sh). extra_opts: config lines for every node (they
    replace the defaults). policy_file: every node's policy_file. clock_file: exported as
    KMSD_TEST_CLOCK_FILE to every node (one clock for the cluster; tests only)."""

    def __init__(self, root, nodes=3, store=None, base_port=None, kmsd_bin=None, workers=2,
                 extra_opts=(), policy_file=None, clock_file=None, log_level="info",
                 node_prefix="node", balance="roundrobin", say=None):
        self.root = os.path.abspath(root)
        self.n = int(nodes)
        if not 1 <= self.n <= 9:
            raise ClusterError("nodes must be 1..9, got %d" % self.n)
        self.store = store or os.environ.get("KMS_CLUSTER_STORE", "pg") or "pg"
        if self.store not in ("pg", "sqlite"):
            raise ClusterError("KMS_CLUSTER_STORE must be pg or sqlite, got %r" % self.store)
        self.base_port = base_port
        b = kmsd_bin or os.environ.get("KMSD_BIN", "build/kmsd")
        self.kmsd_bin = b if os.path.isabs(b) else os.path.join(REPO, b)
        self.kmsctl_bin = os.path.join(os.path.dirname(self.kmsd_bin), "kmsctl")
        self.workers = workers
        self.extra_opts = list(extra_opts)
        self.policy_file = policy_file
        self.clock_file = clock_file
        self.log_level = log_level
        self.node_prefix = node_prefix
        self.balance = balance
        self.say = say or (lambda m: print("cluster: " + m, file=sys.stderr, flush=True))
        self.startup_timeout = float(os.environ.get("KMSD_STARTUP_TIMEOUT", "60"))
        self.hsm = os.path.join(self.root, "softhsm")
        self.certs = os.path.join(self.root, "certs")
        self.ca = os.path.join(self.certs, "ca.pem")
        self.pg_dir = os.path.join(self.root, "pg")
        self.pg_uri = None
        self.pg_port = None
        self.sqlite_path = os.path.join(self.root, "kmsd.db")
        self.admin_token_file = os.path.join(self.root, "admin.token")
        self.admin_token = None
        self.state_file = os.path.join(self.root, "cluster.json")
        self.ha_cfg = os.path.join(self.root, "haproxy.cfg")
        self.ha_pid_file = os.path.join(self.root, "haproxy.pid")
        self.ha_log = os.path.join(self.root, "haproxy.log")
        self.ha_sock = os.path.join(self.root, "haproxy.sock")
        self.ha_proc = None
        self.ha_pid = None
        self.lb_port = None
        self.nodes = [Node(self, i) for i in range(1, self.n + 1)]
        self.env = None
        self.ctx = ssl.create_default_context(cafile=self.ca) if os.path.exists(self.ca) else None

    @property
    def lb_url(self):
        return "https://127.0.0.1:%d" % self.lb_port

    # -- pieces --------------------------------------------------------------------------
    def _run(self, args, what, timeout=120, env=None):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise ClusterError("%s failed (%d):\n%s%s" % (what, r.returncode, r.stdout, r.stderr))
        return r.stdout

    def _token(self):
        out = self._run(["sh", os.path.join(SCRIPTS, "dev-token.sh"), self.hsm], "dev-token.sh")
        conf = out.strip().splitlines()[-1]
        for f in ("user.pin", "so.pin"):
            if not os.path.isfile(os.path.join(self.hsm, f)):
                raise ClusterError("%s/%s is missing: the token is unusable; destroy the cluster "
                                   "and start again" % (self.hsm, f))
        self.env = dict(os.environ, SOFTHSM2_CONF=conf)
        if self.clock_file:
            self.env["KMSD_TEST_CLOCK_FILE"] = self.clock_file

    def _certs(self):
        self._run(["sh", os.path.join(SCRIPTS, "dev-certs.sh"), self.certs], "dev-certs.sh")
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def _pg(self):
        port = self.base_port + 9 if self.base_port else free_port()
        out = self._run(["sh", os.path.join(SCRIPTS, "pgtmp.sh"), "start", self.pg_dir, str(port)],
                        "pgtmp.sh start", timeout=180)
        self.pg_uri = out.strip().splitlines()[-1]
        self.pg_port = port

    def _ports(self):
        if self.base_port:
            self.lb_port = self.base_port
            for nd in self.nodes:
                nd.port = self.base_port + nd.index
            busy = [p for p in [self.lb_port] + [nd.port for nd in self.nodes] if not port_free(p)]
            if busy:
                raise ClusterError("port(s) %s on 127.0.0.1 already in use (a cluster already up? "
                                   "scripts/cluster.sh status)" % busy)
        else:
            taken = set()
            for nd in self.nodes:
                p = free_port()
                while p in taken:
                    p = free_port()
                taken.add(p)
                nd.port = p
            p = free_port()
            while p in taken:
                p = free_port()
            self.lb_port = p

    def _init(self):
        if os.path.exists(self.admin_token_file):
            with open(self.admin_token_file) as f:
                self.admin_token = f.read().strip()
            return
        self.say("kmsd init (master key ceremony on the shared token, once)")
        r = subprocess.run([self.kmsd_bin, "-c", self.nodes[0].conf, "init", "--admin-token-file",
                            self.admin_token_file], capture_output=True, text=True, timeout=180,
                           env=self.env)
        if r.returncode != 0:
            raise ClusterError("kmsd init failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr))
        with open(self.admin_token_file) as f:
            self.admin_token = f.read().strip()
        if not self.admin_token:
            raise ClusterError("kmsd init wrote an empty admin token")

    def _haproxy_cfg(self):
        servers = "".join("    server %s 127.0.0.1:%d check\n" % (nd.name, nd.port) for nd in self.nodes)
        cfg = """# written by scripts/kmscluster.py (docs/SCALE-OUT.md); changes here are overwritten
global
    maxconn 8192
    stats socket {sock} mode 600 level admin
    # no chroot/user: a dev balancer of the caller's own

defaults
    mode tcp
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    timeout check 1s
    # a connection refused by a dead node goes to another one
    retries 2
    option redispatch

frontend kms
    bind 127.0.0.1:{port}
    default_backend kmsd_nodes

backend kmsd_nodes
    balance {balance}
    # TLS passes through to the nodes (TCP mode); the check speaks TLS and HTTP to
    # GET /v1/sys/health itself: 200 = in, anything else (503: audit, token, store or
    # clock failed) or no answer = out after 2 checks 200 ms apart
    option httpchk GET /v1/sys/health
    http-check expect status 200
    default-server check-ssl verify none inter 500ms fastinter 200ms downinter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
{servers}""".format(sock=self.ha_sock, port=self.lb_port, balance=self.balance, servers=servers)
        with open(self.ha_cfg, "w") as f:
            f.write(cfg)

    def _haproxy_start(self):
        self._haproxy_cfg()
        r = subprocess.run([HAPROXY, "-c", "-q", "-f", self.ha_cfg], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise ClusterError("haproxy -c refused %s:\n%s%s" % (self.ha_cfg, r.stdout, r.stderr))
        out = open(self.ha_log, "ab")
        try:
            # -db: foreground (we keep the PID ourselves), -W not needed
            self.ha_proc = subprocess.Popen([HAPROXY, "-db", "-f", self.ha_cfg], stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()
        self.ha_pid = self.ha_proc.pid
        with open(self.ha_pid_file, "w") as f:
            f.write("%d\n" % self.ha_pid)
        self.wait_lb(len(self.nodes))

    def lb_status(self):
        """{server name: status} from HAProxy's stats socket ("UP", "DOWN", "UP 1/2", ...)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.ha_sock)
            s.sendall(b"show stat\n")
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        lines = buf.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        cols = lines[0][2:].split(",")
        out = {}
        for ln in lines[1:]:
            v = dict(zip(cols, ln.split(",")))
            if v.get("pxname") == "kmsd_nodes" and v.get("svname") not in ("BACKEND", "FRONTEND"):
                out[v["svname"]] = v.get("status", "")
        return out

    def wait_lb(self, up, timeout=30):
        """Waits until HAProxy counts exactly `up` nodes UP and the others DOWN (its checks,
        not ours)."""
        deadline = time.monotonic() + timeout
        st = {}
        while time.monotonic() < deadline:
            if self.ha_proc is not None and self.ha_proc.poll() is not None:
                raise ClusterError("haproxy exited (%d):\n%s" % (self.ha_proc.returncode, self._tail(self.ha_log)))
            try:
                st = self.lb_status()
            except OSError:
                st = {}
            # settled: `up` nodes fully UP, the rest fully DOWN (not "UP 1/2" going down)
            if sum(1 for v in st.values() if v == "UP") == up and all(
                    v == "UP" or v.startswith(("DOWN", "MAINT")) for v in st.values()) and \
                    not any(v.startswith("DOWN ") for v in st.values()):
                return st
            time.sleep(0.1)
        raise ClusterError("HAProxy did not see %d node(s) UP within %ss: %s" % (up, timeout, st))

    @staticmethod
    def _tail(path, n=4000):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def health(self, url):
        try:
            r = urllib.request.urlopen(url + "/v1/sys/health", context=self.ctx, timeout=3)
            return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, ssl.SSLError):
            return None

    def write_state(self):
        doc = {"root": self.root, "store": self.store, "pg_uri": self.pg_uri, "pg_port": self.pg_port,
               "sqlite_path": self.sqlite_path if self.store == "sqlite" else None,
               "lb_port": self.lb_port, "haproxy_pid": self.ha_pid, "ca": self.ca,
               "admin_token_file": self.admin_token_file, "kmsd_bin": self.kmsd_bin,
               "nodes": [{"index": nd.index, "node_id": nd.node_id, "port": nd.port, "pid": nd.pid,
                          "conf": nd.conf, "audit_path": nd.audit_path, "log": nd.log}
                         for nd in self.nodes]}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.state_file)

    def load_state(self):
        with open(self.state_file) as f:
            doc = json.load(f)
        self.store = doc["store"]
        self.pg_uri, self.pg_port = doc["pg_uri"], doc["pg_port"]
        self.lb_port, self.ha_pid = doc["lb_port"], doc["haproxy_pid"]
        self.nodes = [Node(self, d["index"]) for d in doc["nodes"]]
        self.n = len(self.nodes)
        for nd, d in zip(self.nodes, doc["nodes"]):
            nd.port, nd.pid = d["port"], d["pid"]
            nd.node_id = d["node_id"]
        return doc

    # -- up / down -----------------------------------------------------------------------
    def up(self):
        if not os.access(self.kmsd_bin, os.X_OK):
            raise ClusterError("%s missing: build it first (make)" % self.kmsd_bin)
        if not os.path.exists(HAPROXY):
            raise ClusterError("haproxy not found (sh scripts/deps.sh installs it)")
        old = os.umask(0o077)
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for nd in self.nodes:
                os.makedirs(nd.dir, mode=0o700, exist_ok=True)
            self._token()
            self._certs()
            self._ports()
            if self.store == "pg":
                self._pg()
            for nd in self.nodes:
                nd.write_conf()
            self._init()
            # one after another: nodes started at the same instant on a fresh store race to
            # store policy_file's version (the loser refuses to start: "not newer")
            for nd in self.nodes:
                nd.start(wait=False)
                self.write_state()
                nd.wait_healthy()
            self._haproxy_start()
            self.write_state()
        except BaseException:
            self.down()
            raise
        finally:
            os.umask(old)
        return self

    def down(self, destroy=False):
        """Stops the balancer, the nodes (SIGTERM; their exit statuses are returned by node
        id) and PostgreSQL, by the PIDs this cluster wrote. destroy: deletes PostgreSQL's
        data and ROOT too."""
        if self.ha_pid and pid_alive(self.ha_pid):
            os.kill(self.ha_pid, signal.SIGTERM)
            if self.ha_proc is not None:
                try:
                    self.ha_proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.ha_proc.kill()
                    self.ha_proc.wait()
            else:
                deadline = time.monotonic() + 10
                while pid_alive(self.ha_pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        for p in (self.ha_pid_file, self.ha_sock):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        status = {}
        for nd in self.nodes:
            if nd.pid is None and os.path.exists(nd.pid_file):
                with open(nd.pid_file) as f:
                    nd.pid = int(f.read().strip() or 0) or None
            status[nd.node_id] = nd.stop()
        if os.path.exists(os.path.join(self.pg_dir, "pg.env")):
            subprocess.run(["sh", os.path.join(SCRIPTS, "pgtmp.sh"), "destroy" if destroy else "stop",
                            self.pg_dir], capture_output=True, timeout=120)
        if destroy:
            shutil.rmtree(self.root, ignore_errors=True)
        return status

    # -- using it ------------------------------------------------------------------------
    def verify_audit(self, nodes=None):
        """`kmsctl audit verify` over the logs of nodes (default: every node's, at once);
        returns (exit status, output)."""
        files = [p for nd in (nodes or self.nodes) for p in nd.audit_files()]
        pub = self.nodes[0].audit_path + ".pub.pem"
        r = subprocess.run([self.kmsctl_bin, "audit", "verify", "--pubkey", pub] + files,
                           capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout + r.stderr

    def describe(self):
        lines = ["kmsd cluster: %d node(s) behind HAProxy on %s (store: %s%s)" % (
            self.n, self.lb_url, self.store, (" " + self.pg_uri) if self.store == "pg" else
            (" " + self.sqlite_path))]
        for nd in self.nodes:
            lines.append("  %-8s %s  pid %s  %s" % (nd.node_id, nd.url, nd.pid,
                                                      "alive" if nd.alive() else "NOT RUNNING"))
        return "\n".join(lines)


# -- command line (scripts/cluster.sh) ----------------------------------------------------

def _cli_cluster(args):
    root = os.environ.get("KMS_CLUSTER_DIR") or os.path.join(REPO, "var", "cluster")
    nodes = 3
    rest = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--nodes" and i + 1 < len(args):
            nodes = args[i + 1]
            i += 2
            continue
        if a.startswith("--nodes="):
            nodes = a.split("=", 1)[1]
            i += 1
            continue
        rest.append(a)
        i += 1
    if rest:
        raise ClusterError("unknown argument(s): %s" % " ".join(rest))
    try:
        nodes = int(nodes)
    except ValueError:
        raise ClusterError("--nodes wants 2 or 3")
    if nodes not in (2, 3):
        raise ClusterError("--nodes wants 2 or 3, got %d" % nodes)
    port = int(os.environ.get("KMS_CLUSTER_PORT", "8300"))
    if not 1024 <= port <= 65500:
        raise ClusterError("KMS_CLUSTER_PORT must be 1024..65500")
    policy = os.environ.get("KMS_CLUSTER_POLICY") or None
    return Cluster(root, nodes=nodes, base_port=port, workers=int(os.environ.get("KMSD_WORKERS", "0")),
                   policy_file=os.path.abspath(policy) if policy else None,
                   log_level=os.environ.get("KMSD_LOG_LEVEL", "info"))


def main(argv):
    usage = "usage: cluster.sh up|down|status|destroy [--nodes N]   (N = 2 or 3, default 3)"
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(usage, file=sys.stderr)
        return 2
    cmd = argv[1]
    try:
        c = _cli_cluster(argv[2:])
        if cmd == "up":
            if os.path.exists(c.state_file):
                c2 = Cluster(c.root, nodes=c.n, base_port=c.base_port)
                c2.load_state()
                if any(nd.alive() for nd in c2.nodes) or (c2.ha_pid and pid_alive(c2.ha_pid)):
                    raise ClusterError("a cluster is already up under %s (cluster.sh status; "
                                       "cluster.sh down first)" % c.root)
            c.up()
            # the processes outlive this command: forget them as children
            for nd in c.nodes:
                nd.proc = None
            c.ha_proc = None
            print(c.describe())
            dev = os.path.relpath(c.root) if c.root.startswith(os.getcwd() + os.sep) else c.root
            curl = "curl -sS --cacert %s/certs/ca.pem" % dev
            print("""
Admin token: %(dev)s/admin.token     CA: %(dev)s/certs/ca.pem
Logs: %(dev)s/node<i>/kmsd.log, audit logs %(dev)s/node<i>/audit/, HAProxy %(dev)s/haproxy.log

# health through the balancer (and of one node directly)
%(curl)s %(lb)s/v1/sys/health
%(curl)s %(n1)s/v1/sys/health

# the admin token, through the balancer (the built-in policy asks admin changes for a TOTP
# code: enrol first, docs/KMSCTL.md "mfa"; or start with KMS_CLUSTER_POLICY=FILE)
%(curl)s -H "X-Vault-Token: $(cat %(dev)s/admin.token)" %(lb)s/v1/sys/tenants

# kmsctl against the balancer
KMS_ADDR=%(lb)s KMS_CACERT=%(dev)s/certs/ca.pem build/kmsctl --token-file %(dev)s/admin.token tenant list

# kill one node and watch HAProxy take it out (about 1 s):
kill -9 $(cat %(dev)s/node1/kmsd.pid); sh scripts/cluster.sh status

sh scripts/cluster.sh down      stops everything (data kept; destroy deletes it)
""" % {"dev": dev, "curl": curl, "lb": c.lb_url, "n1": c.nodes[0].url})
            return 0
        if not os.path.exists(c.state_file):
            if cmd in ("down", "destroy"):
                if cmd == "destroy":
                    c.down(destroy=True)
                print("cluster: nothing is up under %s" % c.root)
                return 0
            print("cluster: nothing is up under %s" % c.root)
            return 1
        c.load_state()
        if cmd == "status":
            print(c.describe())
            try:
                st = c.lb_status() if c.ha_pid and pid_alive(c.ha_pid) else None
            except OSError:
                st = None
            if st is None:
                print("  HAProxy: NOT RUNNING")
            else:
                print("  HAProxy pid %s on %s: %s" % (c.ha_pid, c.lb_url, ", ".join(
                    "%s %s" % kv for kv in sorted(st.items()))))
            return 0 if st is not None and all(nd.alive() for nd in c.nodes) else 1
        if cmd in ("down", "destroy"):
            st = c.down(destroy=(cmd == "destroy"))
            if cmd == "down":
                try:
                    os.unlink(c.state_file)
                except FileNotFoundError:
                    pass
            for k, v in st.items():
                print("cluster: %s stopped%s" % (k, "" if v in (0, None) else " (status %s)" % v))
            print("cluster: %s" % ("destroyed %s" % c.root if cmd == "destroy" else "down (data kept in %s)" % c.root))
            return 0
        print(usage, file=sys.stderr)
        return 2
    except ClusterError as e:
        print("cluster: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
