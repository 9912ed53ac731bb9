"""Cluster test harness (issue 10, docs/SCALE-OUT.md; `make cluster-check`).

Each test module gets its own local cluster (scripts/kmscluster.py, the code behind
scripts/cluster.sh): one SoftHSM2 token shared by every node, one store
(KMS_CLUSTER_STORE=pg, the default: PostgreSQL from scripts/pgtmp.sh; sqlite: every node
on one SQLite file), CLUSTER_NODES kmsd nodes (default 2) and HAProxy in front, all on
loopback ports the kernel hands out, under a pytest temporary directory. At teardown every
node that the test did not kill gets SIGTERM and must exit 0.

Policy: the built-in policy without its MFA and quorum conditions (as in
tests/integration), plus one rule asking 2 approvals for key.rotate on q-* keys.

Module settings: CLUSTER_NODES, CLUSTER_EXTRA_OPTS (config lines for every node),
CLUSTER_TEST_CLOCK (one KMSD_TEST_CLOCK_FILE for every node; cluster.set_clock(s)).

Environment: KMSD_BIN (build/kmsd; kmsctl beside it), KMS_CLUSTER_STORE (pg | sqlite),
KMS_CLUSTER_SYNC_MS (the coherence bound the tests hold the nodes to: cluster_sync_ms,
default 1000), KMSD_KEEP_TMP=1 (keep and print the cluster's directory).
"""

import json
import os
import sys
import threading
import time

import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import kmscluster  # noqa: E402

# cluster_sync_ms (docs/SCALE-OUT.md "Coherence"): how soon a change made on one node must
# hold on every other. kmsd's default is 1000 ms.
BOUND = int(os.environ.get("KMS_CLUSTER_SYNC_MS", "1000")) / 1000.0

QUORUM_RULE = {"name": "q-keys-need-two", "effect": "allow", "principals": ["role:admin"],
               "keys": ["q-*"], "operations": ["key.rotate"], "require_quorum": 2}

_n = [0]
_lock = threading.Lock()


def uniq(prefix):
    with _lock:
        _n[0] += 1
        return "%s-%d-%d" % (prefix, os.getpid() % 10000, _n[0])


class Api:
    """HTTP to one address (a node or the balancer). One requests.Session per thread."""

    def __init__(self, url, ca, admin_token):
        self.url, self.ca, self.admin_token = url, ca, admin_token
        self._tls = threading.local()

    @property
    def session(self):
        s = getattr(self._tls, "s", None)
        if s is None:
            s = requests.Session()
            s.trust_env = False
            self._tls.s = s
        return s

    def req(self, method, path, token=None, body=None, timeout=30):
        h = {}
        if token is not None:
            h["X-Vault-Token"] = token
        data = None
        if body is not None:
            data = json.dumps(body)
            h["Content-Type"] = "application/json"
        return self.session.request(method, self.url + path, data=data, headers=h, verify=self.ca,
                                    timeout=timeout)

    def get(self, path, token=None, **kw):
        return self.req("GET", path, token=token, **kw)

    def post(self, path, body=None, token=None, **kw):
        return self.req("POST", path, token=token, body={} if body is None else body, **kw)

    def admin(self, path, body=None, ok=(200,), token=None):
        r = self.post(path, body, token=token or self.admin_token)
        assert r.status_code in ok, "%s %s -> %d %s" % (self.url, path, r.status_code, r.text)
        return r.json() if r.content else None

    # provisioning (admin)
    def tenant(self):
        t = uniq("t")
        self.admin("/v1/sys/tenants/" + t, {"retention": "phi"})
        return t

    def key(self, t, name=None):
        k = name or uniq("k")
        self.admin("/v1/%s/keys/%s" % (t, k), {"type": "aes256-gcm96"})
        return k

    def principal(self, role="service", tenants=(), name=None):
        p = name or uniq("p")
        self.admin("/v1/sys/principals/" + p, {"role": role, "tenants": list(tenants)})
        return p

    def token(self, principal):
        j = self.admin("/v1/sys/principals/%s/tokens" % principal, {})
        return j["auth"]["client_token"], j["auth"]["accessor"]

    def key_info(self, t, k):
        r = self.get("/v1/%s/keys/%s" % (t, k), token=self.admin_token)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    # data plane (service)
    def datakey(self, tok, t, k, **kw):
        return self.post("/v1/%s/datakey/plaintext/%s" % (t, k), {}, token=tok, **kw)

    def decrypt(self, tok, t, k, ct, **kw):
        return self.post("/v1/%s/decrypt/%s" % (t, k), {"ciphertext": ct}, token=tok, **kw)


class World:
    """A tenant, a key and a service principal with its token, made on node A."""

    def __init__(self, a):
        self.tenant = a.tenant()
        self.key = a.key(self.tenant)
        self.svc = a.principal(tenants=[self.tenant])
        self.tok, self.accessor = a.token(self.svc)


def wait_until(pred, bound, what):
    """Polls pred() until it is true; fails after bound + 1 s (the coherence bound plus a
    second of slack for the polling itself and a loaded 2-core machine). Returns the
    seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + bound + 1.0
    last = None
    while True:
        last = pred()
        if last is True:
            return time.monotonic() - t0
        if time.monotonic() >= deadline:
            pytest.fail("%s: not within %.1f s (bound %.1f s + 1 s); last: %r" % (
                what, bound + 1.0, bound, last))
        time.sleep(0.05)


class LocalCluster(kmscluster.Cluster):
    def set_clock(self, offset):
        tmp = self.clock_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % int(offset))
        os.replace(tmp, self.clock_file)

    def api(self, i=None):
        """Api of node i (0-based), or of the balancer when i is None."""
        url = self.lb_url if i is None else self.nodes[i].url
        return Api(url, self.ca, self.admin_token)

    def all_audit_records(self):
        return [r for nd in self.nodes for r in nd.audit_records()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cluster")
    keep = bool(os.environ.get("KMSD_KEEP_TMP"))
    if keep:
        print("\ncluster dir for %s: %s" % (request.module.__name__, root))
    kmsd_bin = os.environ.get("KMSD_BIN", "build/kmsd")
    kmsd_bin = kmsd_bin if os.path.isabs(kmsd_bin) else os.path.join(REPO, kmsd_bin)
    if not os.access(kmsd_bin, os.X_OK):
        pytest.fail("%s missing: build it (make) or set KMSD_BIN" % kmsd_bin)
    policy = os.path.join(str(root), "policy.json")
    with open(policy, "w") as f:
        json.dump(kmscluster.nomfa_policy(kmsd_bin, [QUORUM_RULE]), f, indent=1)
    clock = os.path.join(str(root), "clock") if getattr(request.module, "CLUSTER_TEST_CLOCK", False) else None
    c = LocalCluster(os.path.join(str(root), "c"), nodes=getattr(request.module, "CLUSTER_NODES", 2),
                    kmsd_bin=kmsd_bin, workers=2,
                    extra_opts=getattr(request.module, "CLUSTER_EXTRA_OPTS", []),
                    policy_file=policy, clock_file=clock, node_prefix="cnode")
    if clock:
        c.set_clock(0)
    try:
        c.up()
    except BaseException:
        c.down(destroy=not keep)  # PostgreSQL's data directory too
        raise
    c.killed = set()
    yield c
    alive = [nd for nd in c.nodes if nd.node_id not in c.killed]
    status = c.down(destroy=not keep)
    bad = {nd.node_id: status.get(nd.node_id) for nd in alive if status.get(nd.node_id) != 0}
    assert not bad, "node exit status after SIGTERM (want 0): %r" % bad
