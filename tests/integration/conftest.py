"""Integration test harness: a real kmsd on a fresh SoftHSM2 token, per test module.

Every test module gets its own server (module-scoped `kmsd` fixture): a fresh token
(scripts/dev-token.sh), fresh certificates (scripts/dev-certs.sh), a config file with
`port = 0` and a `port_file`, `kmsd init`, then `kmsd -c CONF` in the background.
At teardown kmsd gets SIGTERM and must exit 0 with no sanitizer report on stderr;
that is how ASan/LSan/UBSan findings fail the suite (KMSD_BIN=build/asan/kmsd), and
ThreadSanitizer's (KMSD_BIN=build/tsan/kmsd, tests/tsan.supp) and valgrind's
(KMSD_PREFIX, below) too.

Policy: the built-in policy asks for a TOTP step-up (X-Vault-MFA) on every admin change.
Unless a module sets `KMSD_BUILTIN_POLICY = True` (tests/integration/test_mfa.py does),
its kmsd gets `policy_file` = the built-in policy without require_mfa and require_quorum
(every `require_mfa`, every `require_quorum` and every `mfa_max_age` condition removed,
nothing else changed), so that the other modules can act as an admin with a bare token,
without a second admin's approval, and as an auditor without a TOTP session. A module's KMSD_EXTRA_OPTS may still name a policy_file of its own.

Environment:
  KMSD_BIN              the server binary (default build/kmsd, relative to the repo root)
  KMSD_PREFIX           a command run in front of every kmsd, split on blanks (make
                        valgrind: "valgrind --leak-check=full ..."); empty by default
  KMSD_STARTUP_TIMEOUT  seconds to wait for health after start (default 60)
  KMSD_KEEP_TMP=1       print the temporary directory of each server and keep it
  KMS_TEST_PG_URI       a PostgreSQL server (make check-pg starts one): each kmsd gets a fresh
                        database on it through store_uri; KMSD_SQLITE_ONLY modules are skipped
"""

import base64
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import secrets

import pytest
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPTS = os.path.join(REPO, "scripts")
PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer",
                     "FATAL: ThreadSanitizer")
# valgrind (make valgrind): any error, or memory definitely or indirectly lost. The
# summary lines are always printed, so these match only a non-zero count.
VALGRIND_MARKERS = (re.compile(r"==\d+== ERROR SUMMARY: [1-9]"),
                    re.compile(r"==\d+==\s+definitely lost: [1-9]"),
                    re.compile(r"==\d+==\s+indirectly lost: [1-9]"))

# Loopback only: never let a proxy from the environment see these requests.
for _v in ("NO_PROXY", "no_proxy"):
    os.environ[_v] = "127.0.0.1,localhost,::1"


def kmsd_bin():
    b = os.environ.get("KMSD_BIN", "build/kmsd")
    if not os.path.isabs(b):
        b = os.path.join(REPO, b)
    return b


def kmsd_prefix():
    return os.environ.get("KMSD_PREFIX", "").split()


def kmsd_env(softhsm_conf):
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = softhsm_conf
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(REPO, "tests", "lsan.supp")
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    # exitcode=66 (TSan's default) also makes a report fail the exit-status check
    env["TSAN_OPTIONS"] = "suppressions=%s:halt_on_error=0:second_deadlock_stack=1:exitcode=66" % (
        os.path.join(REPO, "tests", "tsan.supp"))
    return env


def sanitizer_findings(text):
    return [m for m in SANITIZER_MARKERS if m in text] + [
        m.pattern for m in VALGRIND_MARKERS if m.search(text)]


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(s):
    return base64.b64decode(s, validate=True)


def run_kmsd(binary, conf, env, *args, timeout=120):
    """Runs `kmsd -c conf args...` to completion; asserts no sanitizer finding."""
    r = subprocess.run(kmsd_prefix() + [binary, "-c", conf] + list(args), env=env, capture_output=True,
                       text=True, timeout=timeout)
    found = sanitizer_findings(r.stderr)
    assert not found, "kmsd %s: sanitizer report %s:\n%s" % (args, found, r.stderr)
    return r


_counter = itertools.count(1)


# KMS_TEST_PG_URI: a PostgreSQL server the tests may use (scripts/pgtmp.sh; make check-pg).
# When set, every kmsd started here gets its own fresh database on it (store_uri), and
# modules that read the SQLite file itself (KMSD_SQLITE_ONLY = "reason") are skipped.
PG_URI = os.environ.get("KMS_TEST_PG_URI") or None


def _psql(uri, sql):
    r = subprocess.run(["psql", uri, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "psql %s: %s" % (sql, r.stderr)
    return r.stdout


def pg_create_db():
    """A fresh database on PG_URI's server; returns its URI."""
    name = "kmsd_%s" % secrets.token_hex(6)
    _psql(PG_URI, 'CREATE DATABASE "%s"' % name)
    u = urllib.parse.urlsplit(PG_URI)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def pg_drop_db(uri):
    name = urllib.parse.urlsplit(uri).path.lstrip("/")
    _psql(PG_URI, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def pg_query(uri, sql):
    """Rows of a query on a kmsd's database, as lists of text fields."""
    out = _psql(uri, sql)
    return [line.split("|") for line in out.splitlines() if line]


def pg_dump(uri):
    """The whole database as pg_dump prints it (bytea in hex): the PostgreSQL store's bytes."""
    r = subprocess.run(["pg_dump", "--no-owner", uri], capture_output=True, timeout=120)
    assert r.returncode == 0, "pg_dump: %s" % r.stderr.decode(errors="replace")
    return r.stdout


def sqlite_only(kmsd, why):
    """Skips a test that reads or edits the SQLite file itself when kmsd runs on PostgreSQL."""
    if kmsd.store_uri:
        pytest.skip("SQLite store only: %s" % why)


def uniq(prefix):
    """A fresh, valid name (tenant names are lower case, so this is too)."""
    return "%s-%d-%d" % (prefix, os.getpid() % 10000, next(_counter))


class Kmsd:
    """One running kmsd with its token, certificates, config, store and audit log."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.bin = kmsd_bin()
        self.proc = None
        self.port = None
        self.url = None
        self.admin_token = None
        self.stopped = False
        self.stdout_path = os.path.join(self.tmp, "kmsd.stdout")
        self.stderr_path = os.path.join(self.tmp, "kmsd.stderr")
        self.conf = os.path.join(self.tmp, "kmsd.conf")
        self.port_file = os.path.join(self.tmp, "port")
        self.store_path = os.path.join(self.tmp, "kmsd.db")
        self.store_uri = None  # a PostgreSQL database of its own when PG_URI is set
        self.audit_path = os.path.join(self.tmp, "audit.log")
        self.admin_token_file = os.path.join(self.tmp, "admin.token")
        self.node_id = "itest-1"
        # Opt-in per test module: extra config lines, and the test clock
        # (KMSD_TEST_CLOCK_FILE: an offset in seconds that set_clock() rewrites).
        self.extra_opts = []
        self.clock_file = None
        # The built-in policy asks for a TOTP step-up (X-Vault-MFA) on every admin
        # change. Most modules test other things with a bare admin token, so by default
        # kmsd gets a policy_file holding the built-in document with every require_mfa,
        # require_quorum and mfa_max_age condition removed (nothing else changed). A module that sets KMSD_BUILTIN_POLICY = True
        # runs with the real built-in policy (test_mfa.py does).
        self.builtin_policy = False
        self.nomfa_policy_path = os.path.join(self.tmp, "policy-nomfa.json")
        self.session = requests.Session()
        self.session.trust_env = False
        self.conn_timeout = 0.0  # kmsd's connection_timeout, from the config written
        self.last_request = 0.0  # time.monotonic() when the session was last used

    def set_clock(self, offset_seconds):
        """Moves kmsd's clock: the offset is read whenever the file changes."""
        tmp = self.clock_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % int(offset_seconds))
        os.replace(tmp, self.clock_file)

    # -- setup -----------------------------------------------------------------
    def provision(self):
        if not os.access(self.bin, os.X_OK):
            pytest.fail("kmsd binary %s does not exist or is not executable "
                        "(build it, or set KMSD_BIN)" % self.bin)
        hsm = os.path.join(self.tmp, "softhsm")
        certs = os.path.join(self.tmp, "certs")
        r = subprocess.run(["sh", os.path.join(SCRIPTS, "dev-token.sh"), hsm],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, "dev-token.sh failed: %s" % r.stderr
        self.softhsm_conf = r.stdout.strip().splitlines()[-1]
        assert os.path.isfile(self.softhsm_conf), self.softhsm_conf
        r = subprocess.run(["sh", os.path.join(SCRIPTS, "dev-certs.sh"), certs],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, "dev-certs.sh failed: %s" % r.stderr
        self.ca = os.path.join(certs, "ca.pem")
        self.user_pin_file = os.path.join(hsm, "user.pin")
        self.so_pin_file = os.path.join(hsm, "so.pin")
        self.env = kmsd_env(self.softhsm_conf)
        if self.clock_file:
            self.set_clock(0)
            self.env["KMSD_TEST_CLOCK_FILE"] = self.clock_file
        opts = [
            ("listen_address", "127.0.0.1"),
            ("port", "0"),
            ("port_file", self.port_file),
            ("tls", "true"),
            ("tls_cert", os.path.join(certs, "server.pem")),
            ("tls_key", os.path.join(certs, "server.key")),
            ("pkcs11_module", PKCS11_MODULE),
            ("token_label", "kmsd"),
            ("pin_file", self.user_pin_file),
            ("so_pin_file", self.so_pin_file),
            ("store_path", self.store_path),
        ]
        if PG_URI:
            if self.store_uri is None:
                self.store_uri = pg_create_db()
            opts.append(("store_uri", self.store_uri))
        opts += [
            ("audit_path", self.audit_path),
            ("node_id", self.node_id),
            ("workers", "2"),
            ("max_body_bytes", "65536"),
            ("connection_timeout", "30"),
            ("log_level", "info"),
        ]
        if not self.builtin_policy:
            self.write_nomfa_policy()
            opts.append(("policy_file", self.nomfa_policy_path))
        # kmsd refuses to run as root unless told which account to be; the suite runs
        # as root in CI and keeps it (test_hygiene.py covers the switch to another user)
        if os.geteuid() == 0:
            opts.append(("user", "root"))
        # a module's extra options replace these defaults (kmsd refuses a name twice)
        extra = dict(self.extra_opts)
        opts = [(k, extra.pop(k)) if k in extra else (k, v) for k, v in opts]
        opts += [(k, v) for k, v in self.extra_opts if k in extra]
        with open(self.conf, "w") as f:
            f.write("# written by tests/integration/conftest.py\n")
            for k, v in opts:
                f.write("%s = %s\n" % (k, v))
        self.conn_timeout = float(dict(opts).get("connection_timeout", 0))
        os.chmod(self.conf, 0o600)

    def write_nomfa_policy(self):
        """The built-in policy document (kmsd default-policy) without require_mfa and
        require_quorum: every require_mfa, require_quorum and mfa_max_age condition removed
        (the auditor's TOTP session, the two-person rule and the admin step-up are tested
        under the real built-in policy by the modules that set KMSD_BUILTIN_POLICY)."""
        r = subprocess.run([self.bin, "default-policy"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, "kmsd default-policy failed: %s" % r.stderr
        doc = json.loads(r.stdout)
        for rule in doc["rules"]:
            rule.pop("require_mfa", None)
            rule.pop("require_quorum", None)
            conds = rule.get("conditions")
            if conds is not None:
                conds.pop("mfa_max_age", None)
                if not conds:
                    del rule["conditions"]
        doc["description"] = ("test harness (conftest.py): the built-in policy without require_mfa "
                              "and require_quorum; "
                              + doc.get("description", ""))
        with open(self.nomfa_policy_path, "w") as f:
            json.dump(doc, f, indent=1)

    def run_cli(self, *args, timeout=120):
        """Runs `kmsd -c CONF args...`; asserts no sanitizer finding; returns the result."""
        return run_kmsd(self.bin, self.conf, self.env, *args, timeout=timeout)

    def init(self):
        r = self.run_cli("init", "--admin-token-file", self.admin_token_file)
        assert r.returncode == 0, "kmsd init failed (%d):\n%s\n%s" % (
            r.returncode, r.stdout, r.stderr)
        with open(self.admin_token_file) as f:
            self.admin_token = f.read().strip()
        assert self.admin_token, "kmsd init wrote an empty admin token file"

    def start(self):
        timeout = float(os.environ.get("KMSD_STARTUP_TIMEOUT", "60"))
        # A restart must not read the previous run's port; its stderr is kept (append)
        # so that a sanitizer report from any run still fails the teardown.
        self.port = None
        try:
            os.unlink(self.port_file)
        except FileNotFoundError:
            pass
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(kmsd_prefix() + [self.bin, "-c", self.conf], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=self.tmp)
        finally:
            out.close()
            err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("kmsd exited with %d before serving:\n%s" % (
                    self.proc.returncode, self.stderr()))
            if self.port is None:
                try:
                    with open(self.port_file) as f:
                        txt = f.read().strip()
                    if txt.isdigit() and 0 < int(txt) < 65536:
                        self.port = int(txt)
                        self.url = "https://127.0.0.1:%d" % self.port
                except OSError:
                    pass
            if self.port is not None:
                try:
                    r = self.session.get(self.url + "/v1/sys/health", verify=self.ca,
                                         timeout=5)
                    if r.status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.kill()
        pytest.fail("kmsd did not become healthy within %ss (port file %s):\n%s" % (
            timeout, "read" if self.port else "missing", self.stderr()))

    # -- teardown --------------------------------------------------------------
    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout=60):
        """SIGTERM, wait; returns (exit status, stderr). The status is the string
        "exited early (N)" when kmsd had already exited before the SIGTERM."""
        self.session.close()
        if self.proc is None:
            return None, ""
        if self.proc.poll() is not None:
            self.stopped = True
            return "exited early (%d)" % self.proc.returncode, self.stderr()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "timeout", self.stderr()
        self.stopped = True
        return self.proc.returncode, self.stderr()

    # -- HTTP helpers ----------------------------------------------------------
    def request(self, method, path, token=None, json_body=None, data=None, headers=None,
                bearer=False, timeout=30, params=None):
        h = dict(headers or {})
        if token is not None:
            if bearer:
                h["Authorization"] = "Bearer " + token
            else:
                h["X-Vault-Token"] = token
        if json_body is not None:
            data = json.dumps(json_body)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        # kmsd closes a keep-alive connection once it has been idle for connection_timeout;
        # a request sent on it at that moment meets the close ("Remote end closed
        # connection without response"). Like any client that keeps its connections for
        # less than the server's idle timeout, the session drops them after half of it.
        if self.conn_timeout > 0 and time.monotonic() - self.last_request >= self.conn_timeout / 2:
            self.session.close()
        try:
            return self.session.request(method, self.url + path, data=data, headers=h,
                                        verify=self.ca, timeout=timeout, params=params)
        finally:
            self.last_request = time.monotonic()

    def get(self, path, token=None, **kw):
        return self.request("GET", path, token=token, **kw)

    def post(self, path, body=None, token=None, **kw):
        if body is None and "data" not in kw:
            body = {}
        return self.request("POST", path, token=token, json_body=body, **kw)

    def admin_post(self, path, body=None, ok=(200,)):
        r = self.post(path, body, token=self.admin_token)
        assert r.status_code in ok, "%s -> %d %s" % (path, r.status_code, r.text)
        return r

    def health(self):
        r = self.get("/v1/sys/health")
        assert r.status_code == 200, r.text
        return r

    # -- provisioning helpers (admin) ------------------------------------------
    def create_tenant(self, name=None, retention="phi"):
        name = name or uniq("t")
        self.admin_post("/v1/sys/tenants/" + name, {"retention": retention})
        return name

    def create_key(self, tenant, name=None):
        name = name or uniq("k")
        self.admin_post("/v1/%s/keys/%s" % (tenant, name), {"type": "aes256-gcm96"})
        return name

    def rotate(self, tenant, key):
        return self.admin_post("/v1/%s/keys/%s/rotate" % (tenant, key), {}).json()["data"]

    def create_principal(self, name=None, role="service", tenants=()):
        name = name or uniq("p")
        self.admin_post("/v1/sys/principals/" + name, {"role": role, "tenants": list(tenants)})
        return name

    def create_token(self, principal, ttl=None):
        body = {} if ttl is None else {"ttl": ttl}
        j = self.admin_post("/v1/sys/principals/%s/tokens" % principal, body).json()
        tok = j["auth"]["client_token"]
        assert isinstance(tok, str) and tok
        return tok, j["auth"]["accessor"]

    def service(self, tenants):
        """A new service principal scoped to tenants; returns its token."""
        p = self.create_principal(tenants=tenants)
        return self.create_token(p)[0]

    def setup_tenant_key(self):
        """A new tenant with one key and a service token for it: (tenant, key, token)."""
        t = self.create_tenant()
        k = self.create_key(t)
        return t, k, self.service([t])

    # -- data plane helpers (service) ------------------------------------------
    # Keyword arguments become JSON body fields, except headers= and bearer=.
    def datakey(self, token, t, k, kind="plaintext", headers=None, bearer=False, **body):
        return self.post("/v1/%s/datakey/%s/%s" % (t, kind, k), body, token=token,
                         headers=headers, bearer=bearer)

    def encrypt(self, token, t, k, headers=None, bearer=False, **body):
        return self.post("/v1/%s/encrypt/%s" % (t, k), body, token=token, headers=headers,
                         bearer=bearer)

    def decrypt(self, token, t, k, headers=None, bearer=False, **body):
        return self.post("/v1/%s/decrypt/%s" % (t, k), body, token=token, headers=headers,
                         bearer=bearer)

    def rewrap(self, token, t, k, headers=None, bearer=False, **body):
        return self.post("/v1/%s/rewrap/%s" % (t, k), body, token=token, headers=headers,
                         bearer=bearer)

    def serves(self, token, t, k):
        """Proves the server still works: health 200 and a datakey round trip."""
        self.health()
        r = self.datakey(token, t, k)
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        r2 = self.decrypt(token, t, k, ciphertext=d["ciphertext"])
        assert r2.status_code == 200, r2.text
        assert r2.json()["data"]["plaintext"] == d["plaintext"]

    def raw_post(self, path, body, headers=None, timeout=30):
        """POST over a raw TLS socket, polling for the answer between body chunks (a
        server may answer 413 and close before it has read a large body; requests
        would then only report a broken pipe). Returns (status, headers, body)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        hdr = {"Host": "127.0.0.1:%d" % self.port, "Content-Type": "application/json",
               "Content-Length": str(len(body)), "Connection": "close"}
        hdr.update(headers or {})
        head = "POST %s HTTP/1.1\r\n" % path + "".join(
            "%s: %s\r\n" % kv for kv in hdr.items()) + "\r\n"
        buf = b""
        view = memoryview(body)
        sent = 0
        deadline = time.monotonic() + timeout
        try:
            s.sendall(head.encode())
            while time.monotonic() < deadline:
                s.settimeout(0.0)
                try:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if _http_complete(buf):
                        break
                    continue
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    break
                if sent < len(view):
                    s.settimeout(timeout)
                    try:
                        s.sendall(view[sent:sent + 16384])
                        sent += 16384
                    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                        sent = len(view)
                else:
                    time.sleep(0.01)
        finally:
            try:
                s.close()
            except OSError:
                pass
        return _http_parse(buf)


def _http_complete(buf):
    if b"\r\n\r\n" not in buf:
        return False
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(rest) >= int(m.group(1))


def _http_parse(buf):
    if not buf:
        return None, {}, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
    status = int(m.group(1)) if m else None
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


_BUILD = os.path.dirname(kmsd_bin())
# the shim is built once, without sanitizers, in the normal build (used by asan and tsan)
IOFAULT = os.path.join(os.path.dirname(_BUILD) if _BUILD.endswith(("asan", "tsan")) else _BUILD,
                       "tests", "iofault.so")


class FaultServer:
    """A kmsd of a test's own, started with tests/iofault (build/tests/iofault.so)
    preloaded and armed through a control file (arm/disarm); hits() lists the faults
    it injected. preload=False: the same server without the library."""

    def __init__(self, tmp, extra_opts=(), preload=True):
        self.k = Kmsd(tmp)
        self.k.extra_opts = list(extra_opts)
        self.ctl = os.path.join(str(tmp), "iofault.ctl")
        open(self.ctl, "w").close()
        self.k.provision()
        if preload:
            self.k.env["LD_PRELOAD"] = IOFAULT
            self.k.env["IOFAULT_CTL"] = self.ctl
            self.k.env["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
        self.k.init()
        self.k.start()
        self.t, self.key, self.tok = self.k.setup_tenant_key()

    def arm(self, rule):
        tmp = self.ctl + ".tmp"
        with open(tmp, "w") as f:
            f.write(rule + "\n")
        os.replace(tmp, self.ctl)

    def disarm(self):
        self.arm("")

    def hits(self):
        try:
            with open(self.ctl + ".log") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop(self):
        rc, err = self.k.stop()
        found = sanitizer_findings(err)
        assert not found, "sanitizer report(s) %s:\n%s" % (found, err[-20000:])
        assert rc == 0, "kmsd exit status %r\n%s" % (rc, err[-5000:])

    def segments(self):
        d = os.path.dirname(self.k.audit_path)
        segs = sorted(n for n in os.listdir(d) if n.startswith("audit-") and n.endswith(".log"))
        return [os.path.join(d, n) for n in segs]

    def verify(self):
        files = self.segments() + [self.k.audit_path]
        r = subprocess.run([os.path.join(_BUILD, "kmsctl"), "audit", "verify",
                            "--pubkey", self.k.audit_path + ".pub.pem"] + files,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, "verify: %s%s" % (r.stdout, r.stderr)
        return r.stdout


@pytest.fixture(scope="module")
def kmsd(tmp_path_factory, request):
    """A fresh kmsd for this test module; asserts a clean exit at teardown."""
    tmp = tmp_path_factory.mktemp("kmsd")
    if os.environ.get("KMSD_KEEP_TMP"):
        print("\nkmsd tmp dir for %s: %s" % (request.module.__name__, tmp))
    if PG_URI and getattr(request.module, "KMSD_SQLITE_ONLY", None):
        pytest.skip("SQLite store only: %s" % request.module.KMSD_SQLITE_ONLY)
    srv = Kmsd(tmp)
    srv.extra_opts = getattr(request.module, "KMSD_EXTRA_OPTS", [])
    srv.builtin_policy = getattr(request.module, "KMSD_BUILTIN_POLICY", False)
    if getattr(request.module, "KMSD_TEST_CLOCK", False):
        srv.clock_file = os.path.join(str(tmp), "clock")
    try:
        srv.provision()
        srv.init()
        srv.start()
    except BaseException:
        srv.kill()
        raise
    yield srv
    rc, err = srv.stop()
    if srv.store_uri:
        pg_drop_db(srv.store_uri)
    found = sanitizer_findings(err)
    assert not found, "kmsd stderr has sanitizer report(s) %s:\n%s" % (found, err[-20000:])
    assert rc == 0, "kmsd exit status after SIGTERM: %r (want 0)\n%s" % (rc, err[-5000:])


@pytest.fixture(scope="module")
def env(kmsd):
    """A tenant, a key in it and a service token scoped to it."""
    t, k, tok = kmsd.setup_tenant_key()

    class Env:
        pass

    e = Env()
    e.tenant, e.key, e.token = t, k, tok
    return e
