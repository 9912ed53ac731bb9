"""Concurrency stress (issue 8, "Concurrency"): ≥ 32 client threads against one kmsd
for a bounded time, mixing the data plane (datakey, decrypt, encrypt and rewrap with
batch_input) with every call that changes what the data plane sees: rotate, version
disable/enable, schedule-destroy/cancel-destroy, revoke/restore, key config, policy
reload, key creation, token create/use/revoke; a metrics/health poller; and, inside
kmsd, the scheduler (every second), audit checkpoints, audit segment rotation and
syslog forwarding running beside the requests. Meant for the ThreadSanitizer build (`make tsan`, run by
`make check` with STRESS_SECONDS=20): conftest fails the module on any
`WARNING: ThreadSanitizer` in kmsd's stderr. Short (STRESS_SECONDS, default 6) in the
normal and ASan runs.

Asserted:
- every status is one the API documents for that call in that situation (200; 400 only
  for a partial batch or a ciphertext below min_decryption_version; 409 with a message
  naming the refusing state; never any 5xx: nothing here makes the token, store or
  audit log unavailable, so not even 503);
- every 200 datakey decrypts to the same plaintext, both while the run goes on
  (when the call is allowed) and at the end, after every key is restored, every
  version enabled and min_decryption_version put back to 1;
- every encrypt decrypts to its plaintext, every rewrap to the rewrapped plaintext;
- kmsd keeps serving, and exits 0 with no sanitizer report at teardown (conftest).
"""

import copy
import json
import os
import random
import socket
import threading
import time

import requests

from conftest import b64, unb64

STRESS_SECONDS = float(os.environ.get("STRESS_SECONDS", "6"))
DATA_THREADS = 20
# scheduler every second: rotation by age, usage-limit rotation and destruction run
# beside the requests; a low usage limit makes reservations and limit-rotations happen;
# frequent audit checkpoints and segment rotations, and a syslog collector, put the
# audit log's timer thread and forwarding under the same load.
SYSLOG = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SYSLOG.bind(("127.0.0.1", 0))
SYSLOG.settimeout(0.2)
KMSD_EXTRA_OPTS = [("workers", "8"), ("scheduler_interval", "1"),
                   ("max_encryptions_per_version", "300"),
                   ("audit_checkpoint_records", "200"), ("audit_checkpoint_seconds", "2"),
                   ("audit_segment_seconds", "4"),
                   ("audit_syslog", "udp:127.0.0.1:%d" % SYSLOG.getsockname()[1]),
                   # The rate limiters run (their buckets are shared by all threads, which
                   # is what TSan should see) but never limit: every client here comes
                   # from 127.0.0.1 and one thread keeps presenting revoked tokens, which
                   # the default failed-authentication limit would turn into 429s for all.
                   # Limiting itself is tested in test_ratelimit.py.
                   ("auth_fail_rps", "100000"), ("auth_fail_burst", "1000000"),
                   ("rate_limit_rps", "1000000"), ("rate_limit_burst", "10000000"),
                   ("rate_limit_ops", "key.rotate=100000")]

BASE_POLICY = {
    "version": 2,
    "description": "stress: the built-in rules, reinstalled under ever newer versions",
    "rules": [
        {"name": "health-is-public", "effect": "allow", "principals": ["*"], "operations": ["sys.health"]},
        {"name": "lookup-own-token", "effect": "allow", "principals": ["role:admin", "role:service"],
         "operations": ["token.lookup_self"]},
        {"name": "admin-no-key-material", "effect": "deny", "principals": ["role:admin"],
         "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "admin-management", "effect": "allow", "principals": ["role:admin"], "operations": ["*"]},
        {"name": "service-data-plane", "effect": "allow", "principals": ["role:service"],
         "tenants": ["@scope"], "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "service-read", "effect": "allow", "principals": ["role:service"],
         "tenants": ["@scope"], "operations": ["key.read", "key.list"]},
    ],
}

# 409 messages the data plane may answer while versions and keys change state
# (docs/KEY-LIFECYCLE.md): disabled, revoked, superseded (a pinned old version),
# usage limit, pending destruction (scheduled 7 days ahead: never destroyed here).
DATA_409 = ("is disabled", "is revoked", "decrypt-only", "usage limit", "not usable now",
            "pending destruction")
BELOW_MIN = "below min_decryption_version"


class Stats:
    def __init__(self):
        self.mu = threading.Lock()
        self.counts = {}
        self.bad = []

    def add(self, what, status):
        with self.mu:
            k = (what, status)
            self.counts[k] = self.counts.get(k, 0) + 1

    def fail(self, msg):
        with self.mu:
            if len(self.bad) < 50:
                self.bad.append(msg)

    def total(self):
        with self.mu:
            return sum(self.counts.values())


def _err(r):
    try:
        return " ".join(r.json().get("errors", []))
    except ValueError:
        return r.text[:200]


class Client:
    """One thread's own HTTPS session (keep-alive) against the shared server."""

    def __init__(self, kmsd):
        self.k = kmsd
        self.s = requests.Session()
        self.s.trust_env = False

    def call(self, method, path, token, body=None, params=None):
        h = {"X-Vault-Token": token} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body)
            h["Content-Type"] = "application/json"
        return self.s.request(method, self.k.url + path, data=data, headers=h, params=params,
                              verify=self.k.ca, timeout=120)


class Run:
    def __init__(self, kmsd):
        self.k = kmsd
        self.stats = Stats()
        self.stop = threading.Event()
        self.deadline = None
        # two tenants, three keys each: several threads always share a key
        self.keys = []
        self.tokens = {}
        for retention in ("phi", "non-phi"):
            # non-phi: no retention floor, so schedule-destroy can succeed
            t = kmsd.create_tenant(retention=retention)
            self.tokens[t] = kmsd.service([t])
            for _ in range(3):
                self.keys.append((t, kmsd.create_key(t)))
        self.mu = threading.Lock()
        self.datakeys = []  # (t, k, ciphertext, plaintext b64)
        self.sealed = []    # (t, k, ciphertext, plaintext b64) from encrypt and rewrap
        self.policy_version = 2
        self.created = []
        self.syslog_datagrams = 0

    def pick(self, rng):
        return rng.choice(self.keys)

    def check(self, what, r, allowed, msgs=None):
        """Records r; fails the run if its status is not in allowed, or if it is a
        status listed in msgs without one of that status's messages."""
        self.stats.add(what, r.status_code)
        if r.status_code >= 500 or r.status_code not in allowed:
            self.stats.fail("%s -> %d %s" % (what, r.status_code, r.text[:300]))
            return False
        if msgs and r.status_code in msgs:
            e = _err(r)
            if not any(m in e for m in msgs[r.status_code]):
                self.stats.fail("%s -> %d with an unexpected message: %s" % (what, r.status_code, e))
                return False
        return True

    # -- data plane ------------------------------------------------------------
    def w_data(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        mine = []
        while not self.stop.is_set():
            t, k = self.pick(rng)
            tok = self.tokens[t]
            op = rng.random()
            if op < 0.35 or not mine:
                ctx = {"case": str(rng.randrange(1000))}
                r = c.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), tok,
                           {"encryption_context": ctx})
                if self.check("datakey", r, (200, 409), {409: DATA_409}) and r.status_code == 200:
                    d = r.json()["data"]
                    if len(unb64(d["plaintext"])) != 32 or not d["ciphertext"].startswith("vault:v"):
                        self.stats.fail("datakey: bad answer %r" % (d,))
                        continue
                    item = (t, k, d["ciphertext"], d["plaintext"], ctx)
                    mine.append(item)
                    with self.mu:
                        self.datakeys.append(item)
            elif op < 0.6:
                t, k, ct, pt, ctx = rng.choice(mine)
                r = c.call("POST", "/v1/%s/decrypt/%s" % (t, k), self.tokens[t],
                           {"ciphertext": ct, "encryption_context": ctx})
                if self.check("decrypt", r, (200, 400, 409), {400: (BELOW_MIN,), 409: DATA_409}) \
                        and r.status_code == 200 and r.json()["data"]["plaintext"] != pt:
                    self.stats.fail("decrypt of %s gave another plaintext" % ct[:24])
            elif op < 0.8:
                pts = [b64(os.urandom(rng.randrange(1, 200))) for _ in range(rng.randrange(1, 8))]
                r = c.call("POST", "/v1/%s/encrypt/%s" % (t, k), tok,
                           {"batch_input": [{"plaintext": p} for p in pts]})
                if self.check("encrypt-batch", r, (200, 400, 409), {409: DATA_409}):
                    self.batch_results("encrypt-batch", r, t, k, pts)
            else:
                olds = [x for x in rng.sample(mine, min(len(mine), rng.randrange(1, 6)))
                        if x[0] == t and x[1] == k]
                if not olds:
                    continue
                r = c.call("POST", "/v1/%s/rewrap/%s" % (t, k), tok,
                           {"batch_input": [{"ciphertext": o[2], "encryption_context": o[4]}
                                            for o in olds]})
                if self.check("rewrap-batch", r, (200, 400, 409), {409: DATA_409}):
                    self.batch_results("rewrap-batch", r, t, k, [o[3] for o in olds],
                                       ctxs=[o[4] for o in olds])

    def batch_results(self, what, r, t, k, pts, ctxs=None):
        """A batch answered 200 or 400: one result per item, each a ciphertext or a
        documented refusal."""
        if r.status_code == 409:
            return
        res = r.json().get("data", {}).get("batch_results")
        if not isinstance(res, list) or len(res) != len(pts):
            self.stats.fail("%s: %d results for %d items: %s" % (what, len(res or []), len(pts), r.text[:300]))
            return
        if r.status_code == 200 and any("error" in x for x in res):
            self.stats.fail("%s: 200 with a failed item: %s" % (what, r.text[:300]))
        if r.status_code == 400 and not any("error" in x for x in res):
            self.stats.fail("%s: 400 without a failed item: %s" % (what, r.text[:300]))
        for i, x in enumerate(res):
            if "error" in x:
                if not any(m in x["error"] for m in DATA_409 + (BELOW_MIN,)):
                    self.stats.fail("%s: item error %r" % (what, x["error"]))
                continue
            ct = x.get("ciphertext", "")
            if not ct.startswith("vault:v"):
                self.stats.fail("%s: item %r" % (what, x))
                continue
            with self.mu:
                self.sealed.append((t, k, ct, pts[i], ctxs[i] if ctxs else None))

    # -- control plane ---------------------------------------------------------
    def admin(self, c, what, method, path, body, allowed, msgs=None):
        r = c.call(method, path, self.k.admin_token, body)
        self.check(what, r, allowed, msgs)
        return r

    def w_rotate(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            t, k = self.pick(rng)
            self.admin(c, "rotate", "POST", "/v1/%s/keys/%s/rotate" % (t, k), {}, (200,))
            time.sleep(rng.uniform(0.05, 0.3))

    def latest(self, c, t, k):
        r = self.admin(c, "key.read", "GET", "/v1/%s/keys/%s" % (t, k), None, (200,))
        return r.json()["data"]["latest_version"] if r.status_code == 200 else 1

    def w_versions(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            t, k = self.pick(rng)
            n = rng.randint(1, self.latest(c, t, k))
            p = "/v1/%s/keys/%s/versions/%d/" % (t, k, n)
            self.admin(c, "version.disable", "POST", p + "disable", {"reason": "stress"}, (200, 409),
                       {409: (", not enabled",)})  # "key version N is <state>, not enabled"
            time.sleep(rng.uniform(0.0, 0.2))
            self.admin(c, "version.enable", "POST", p + "enable", {"reason": "stress"}, (200, 409),
                       {409: (", not disabled",)})  # "key version N is <state>, not disabled"

    def w_destroy(self, seed):
        """Schedules versions for destruction and cancels, on the non-PHI tenant's keys
        (a PHI key's retention floor refuses: 409 too)."""
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            t, k = self.pick(rng)
            n = rng.randint(1, self.latest(c, t, k))
            p = "/v1/%s/keys/%s/versions/%d/" % (t, k, n)
            r = self.admin(c, "version.schedule_destroy", "POST", p + "schedule-destroy",
                           {"days": 7, "reason": "stress"}, (200, 409),
                           {409: ("rotate the key first", "deletion_allowed is false", "key version",
                                  "can be destroyed from")})
            time.sleep(rng.uniform(0.0, 0.2))
            if r.status_code == 200:
                self.admin(c, "version.cancel_destroy", "POST", p + "cancel-destroy",
                           {"reason": "stress"}, (200,))
                self.admin(c, "version.enable", "POST", p + "enable", {"reason": "stress"}, (200, 409),
                           {409: (", not disabled",)})

    def w_tokens(self, seed):
        """Issues a token, uses it, revokes it, and checks it is refused."""
        rng = random.Random(seed)
        c = Client(self.k)
        t = sorted(self.tokens)[seed % len(self.tokens)]
        p = self.k.create_principal(tenants=[t])
        while not self.stop.is_set():
            r = self.admin(c, "token.create", "POST", "/v1/sys/principals/%s/tokens" % p,
                           {"ttl": 3600}, (200,))
            if r.status_code != 200:
                continue
            tok, acc = r.json()["auth"]["client_token"], r.json()["auth"]["accessor"]
            r = c.call("GET", "/v1/auth/token/lookup-self", tok)
            self.check("token.lookup_self", r, (200,))
            k = rng.choice([kk for tt, kk in self.keys if tt == t])
            r = c.call("POST", "/v1/%s/datakey/wrapped/%s" % (t, k), tok, {})
            self.check("datakey.wrapped", r, (200, 409), {409: DATA_409})
            self.admin(c, "token.revoke", "POST", "/v1/sys/tokens/revoke", {"accessor": acc}, (200,))
            r = c.call("GET", "/v1/auth/token/lookup-self", tok)
            self.check("revoked-token", r, (403,))
            time.sleep(rng.uniform(0.0, 0.1))

    def w_revoke(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            t, k = self.pick(rng)
            p = "/v1/%s/keys/%s/" % (t, k)
            self.admin(c, "key.revoke", "POST", p + "revoke", {"reason": "stress"}, (200, 409),
                       {409: ("already revoked",)})
            time.sleep(rng.uniform(0.0, 0.3))
            self.admin(c, "key.restore", "POST", p + "restore", {"reason": "stress"}, (200, 409),
                       {409: ("not revoked",)})
            time.sleep(rng.uniform(0.0, 0.3))

    def w_config(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            t, k = self.pick(rng)
            latest = self.latest(c, t, k)
            body = rng.choice([
                {"min_decryption_version": rng.randint(1, latest), "reason": "stress"},
                {"min_decryption_version": 1, "reason": "stress"},
                {"auto_rotate_period": rng.choice([0, 3600, 86400])},
                {"deletion_allowed": rng.choice([True, False])},
            ])
            # min_encryption_version stays 0 (unset): a raised min_decryption_version is
            # then always valid, however the others move it
            self.admin(c, "key.config", "POST", "/v1/%s/keys/%s/config" % (t, k), body, (200,))
            time.sleep(rng.uniform(0.05, 0.3))

    def w_policy(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            with self.mu:
                self.policy_version += 1
                v = self.policy_version
            doc = copy.deepcopy(BASE_POLICY)
            doc["version"] = v
            doc["description"] = "stress reload %d" % v
            # two policy threads race: the slower of two adjacent versions is not newer
            self.admin(c, "policy.write", "POST", "/v1/sys/policy", doc, (200, 409),
                       {409: ("not newer",)})
            time.sleep(rng.uniform(0.05, 0.3))

    def w_keys(self, seed):
        """Creates keys into the tenants (hash buckets and the cache grow while read),
        reads and lists them."""
        rng = random.Random(seed)
        c = Client(self.k)
        tenants = sorted(self.tokens)
        while not self.stop.is_set():
            t = rng.choice(tenants)
            name = "s%d-%d" % (seed, rng.randrange(10 ** 9))
            r = self.admin(c, "key.create", "POST", "/v1/%s/keys/%s" % (t, name),
                           {"type": "aes256-gcm96"}, (200,))
            if r.status_code == 200:
                self.created.append((t, name))
            r = c.call("LIST", "/v1/%s/keys" % t, self.tokens[t])
            self.check("key.list", r, (200,))
            time.sleep(rng.uniform(0.05, 0.3))

    def w_poll(self, seed):
        rng = random.Random(seed)
        c = Client(self.k)
        while not self.stop.is_set():
            if seed % 2 == 0:  # one poller also drains the syslog collector
                try:
                    while True:
                        SYSLOG.recv(70000, socket.MSG_DONTWAIT)
                        self.syslog_datagrams += 1
                except (BlockingIOError, socket.timeout):
                    pass
            r = c.call("GET", "/v1/sys/health", None)
            self.check("health", r, (200,))
            r = c.call("GET", "/v1/sys/metrics", self.k.admin_token,
                       params={"format": rng.choice(["json", "prometheus"])})
            self.check("metrics", r, (200,))
            r = c.call("GET", "/v1/sys/policy", self.k.admin_token)
            self.check("policy.read", r, (200,))
            time.sleep(rng.uniform(0.0, 0.1))


def _guard(run, fn, seed):
    def body():
        try:
            fn(seed)
        except Exception as e:  # a client-side failure (connection reset, bad JSON): a finding
            run.stats.fail("%s(%d): %s: %s" % (fn.__name__, seed, type(e).__name__, e))
    return body


def test_stress_mixed(kmsd):
    run = Run(kmsd)
    plan = ([run.w_data] * DATA_THREADS + [run.w_rotate] * 2 + [run.w_versions] * 2 +
            [run.w_destroy] + [run.w_revoke] * 2 + [run.w_config] * 2 + [run.w_policy] * 2 +
            [run.w_keys] + [run.w_tokens] * 2 + [run.w_poll] * 2)
    assert len(plan) >= 32
    threads = [threading.Thread(target=_guard(run, fn, i), name="%s-%d" % (fn.__name__, i))
               for i, fn in enumerate(plan)]
    start = time.monotonic()
    for th in threads:
        th.start()
    time.sleep(STRESS_SECONDS)
    run.stop.set()
    for th in threads:
        th.join(timeout=180)
    assert not any(th.is_alive() for th in threads), "client threads hung"
    elapsed = time.monotonic() - start
    assert kmsd.proc.poll() is None, "kmsd died during the run:\n" + kmsd.stderr()[-5000:]
    counts = run.stats.counts
    summary = ", ".join("%s %d: %d" % (w, s, n) for (w, s), n in sorted(counts.items()))
    print("\nstress: %d threads, %d requests in %.1fs: %s" % (len(threads), run.stats.total(),
                                                            elapsed, summary))
    assert not run.stats.bad, "\n".join(run.stats.bad)
    # each kind of call was made, and the data plane and the changes each succeeded
    for what in ("datakey", "decrypt", "encrypt-batch", "rewrap-batch", "rotate",
                 "version.disable", "version.enable", "key.revoke", "key.restore",
                 "key.config", "policy.write", "key.create", "health", "metrics",
                 "version.schedule_destroy", "version.cancel_destroy", "token.create",
                 "token.revoke", "revoked-token"):
        assert counts.get((what, 403 if what == "revoked-token" else 200)), \
            "no successful %s: %s" % (what, summary)
    assert run.syslog_datagrams > 0, "no audit record reached the syslog collector"
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    audit = r.json()["data"]["audit"]
    assert audit["healthy"] and audit["segments_rotated_total"] >= 1, audit

    # Undo every refusal-causing state, then every datakey and ciphertext must decrypt.
    c = Client(kmsd)
    for t, k in run.keys:
        r = c.call("POST", "/v1/%s/keys/%s/restore" % (t, k), kmsd.admin_token, {"reason": "end"})
        assert r.status_code in (200, 409), r.text
        r = c.call("POST", "/v1/%s/keys/%s/config" % (t, k), kmsd.admin_token,
                   {"min_decryption_version": 1, "reason": "end"})
        assert r.status_code == 200, r.text
        latest = r.json()["data"]["latest_version"]
        for n in range(1, latest + 1):
            r = c.call("POST", "/v1/%s/keys/%s/versions/%d/cancel-destroy" % (t, k, n),
                       kmsd.admin_token, {"reason": "end"})
            assert r.status_code in (200, 409), r.text
            r = c.call("POST", "/v1/%s/keys/%s/versions/%d/enable" % (t, k, n), kmsd.admin_token,
                       {"reason": "end"})
            assert r.status_code in (200, 409), r.text
    items = [(t, k, ct, pt, ctx) for t, k, ct, pt, ctx in run.datakeys] + run.sealed
    assert run.datakeys, "no datakey succeeded"
    by_key = {}
    for it in items:
        by_key.setdefault((it[0], it[1]), []).append(it)
    for (t, k), its in by_key.items():
        for i in range(0, len(its), 200):
            chunk = its[i:i + 200]
            batch = [{"ciphertext": ct} if ctx is None else {"ciphertext": ct, "encryption_context": ctx}
                     for _, _, ct, _, ctx in chunk]
            r = c.call("POST", "/v1/%s/decrypt/%s" % (t, k), run.tokens[t], {"batch_input": batch})
            assert r.status_code == 200, r.text[:2000]
            got = [x["plaintext"] for x in r.json()["data"]["batch_results"]]
            assert got == [pt for _, _, _, pt, _ in chunk], "a ciphertext decrypted to another plaintext"
    print("stress: %d datakeys and %d encrypt/rewrap ciphertexts verified at the end" % (
        len(run.datakeys), len(run.sealed)))
    kmsd.health()
