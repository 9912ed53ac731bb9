"""Metrics after a scripted workload (docs/API.md "Metrics"): request counters by
operation and outcome, refusals, token call and audit figures match what the script
did, exactly; the key-state gauges follow creation, rotation, disabling and scheduled
destruction (with the test clock); the separate metrics listener serves GET /metrics
without a token and nothing else."""

import os
import re
import socket
import time

import pytest
import requests

from conftest import b64

KMSD_TEST_CLOCK = True
KMSD_EXTRA_OPTS = [
    ("metrics_listen", "127.0.0.1:0"),
    ("metrics_port_file", "metrics.port"),  # relative to kmsd's working directory
    ("max_encryptions_per_version", "100"),  # counter blocks of 100 / 16 = 6
    ("rate_limit_ops", "audit.hash=0.001:2"),
]
DAY = 86400
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, ((label, value), ...)): float}; also checks every sample has a TYPE."""
    out, types = {}, {}
    for ln in text.splitlines():
        if ln.startswith("# TYPE "):
            _, _, name, kind = ln.split(" ", 3)
            types[name] = kind
            continue
        if not ln or ln.startswith("#"):
            continue
        m = LINE.match(ln)
        assert m, "not a Prometheus sample line: %r" % ln
        labels = tuple(sorted(LABEL.findall(m.group(3) or "")))
        key = (m.group(1), labels)
        assert key not in out, "sample repeated: %r" % (key,)
        out[key] = float(m.group(4))
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in types or base in types, "no TYPE for %s" % m.group(1)
    return out


def val(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def listener_url(kmsd):
    path = os.path.join(kmsd.tmp, "metrics.port")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                txt = f.read().strip()
            if txt.isdigit():
                return "http://127.0.0.1:%d" % int(txt)
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail("metrics_port_file never written")


def scrape(kmsd):
    r = requests.get(listener_url(kmsd) + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def scrape_fresh(kmsd):
    """After a state change: the gauges refresh at most once a second."""
    time.sleep(1.2)
    return scrape(kmsd)


def test_workload_counters_match(kmsd):
    t = kmsd.create_tenant(retention="non-phi")
    ka, kb = kmsd.create_key(t), kmsd.create_key(t)
    tok = kmsd.service([t])
    other = kmsd.service([kmsd.create_tenant()])
    before = scrape(kmsd)

    n_datakeys, n_decrypts, n_denied, n_forged, n_badauth = 10, 7, 3, 2, 4
    cts = []
    for _ in range(n_datakeys):
        r = kmsd.datakey(tok, t, ka)
        assert r.status_code == 200, r.text
        cts.append(r.json()["data"]["ciphertext"])
    r = kmsd.encrypt(tok, t, kb, batch_input=[{"plaintext": b64(b"x%d" % i)} for i in range(50)])
    assert r.status_code == 200, r.text
    for i in range(n_decrypts):
        assert kmsd.decrypt(tok, t, ka, ciphertext=cts[i]).status_code == 200
    for _ in range(n_denied):  # a service of another tenant: policy denies
        assert kmsd.datakey(other, t, ka).status_code == 403
    forged = cts[0][:-6] + ("AAAAAA" if not cts[0].endswith("AAAAAA") else "BBBBBB")
    for _ in range(n_forged):
        assert kmsd.decrypt(tok, t, ka, ciphertext=forged).status_code == 400
    for _ in range(n_badauth):
        assert kmsd.datakey("s.not-a-real-token", t, ka).status_code in (401, 403)
    codes = [kmsd.post("/v1/sys/audit/hash", {"input": "x"}, token=kmsd.admin_token).status_code
             for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429], codes

    after = scrape_fresh(kmsd)

    def d(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    req = "kmsd_requests_total"
    assert d(req, operation="datakey", outcome="allow") == n_datakeys
    assert d(req, operation="datakey", outcome="deny") == n_denied + n_badauth
    assert d(req, operation="encrypt", outcome="allow") == 1
    assert d(req, operation="decrypt", outcome="allow") == n_decrypts
    assert d(req, operation="decrypt", outcome="error") == n_forged
    assert d(req, operation="audit.hash", outcome="allow") == 2
    assert d("kmsd_rate_limited_total") == 3
    assert d("kmsd_policy_denials_total") == n_denied
    assert d("kmsd_auth_failures_total") == n_badauth
    assert d("kmsd_request_duration_seconds_count", operation="datakey") == \
        n_datakeys + n_denied + n_badauth
    # the token: one GCM encryption per data key and per batch item, one decryption
    # per decrypt (forged ones included: the token is asked and says no)
    assert d("kmsd_token_call_duration_seconds_count", call="gcm_encrypt") == n_datakeys + 50
    assert d("kmsd_token_call_duration_seconds_count", call="gcm_decrypt") == n_decrypts + n_forged
    assert d("kmsd_token_call_duration_seconds_bucket", call="gcm_encrypt", le="+Inf") == \
        n_datakeys + 50
    assert not any(k[0] == "kmsd_token_call_errors_total" for k in after), \
        "a forged ciphertext is not a token error"
    # audit: one record per request made above, all durable; one fsync histogram entry
    # per group commit
    requests_made = (n_datakeys + 1 + n_decrypts + n_denied + n_forged + n_badauth + 5)
    ckpts = d("kmsd_audit_last_seq") - d("kmsd_audit_records_total")
    assert ckpts == 0
    assert requests_made <= d("kmsd_audit_records_total") <= requests_made + 2  # + checkpoints
    assert val(after, "kmsd_audit_fsync_duration_seconds_count") == val(after, "kmsd_audit_syncs_total")
    assert val(after, "kmsd_audit_fsync_duration_seconds_bucket", le="+Inf") == \
        val(after, "kmsd_audit_syncs_total")
    assert val(after, "kmsd_audit_queue_depth") == 0
    assert val(after, "kmsd_audit_healthy") == 1
    # usage against the limit of 100: key a reserved 2 blocks of 6, key b 9 (54)
    assert val(after, "kmsd_key_version_encryption_limit") == 100
    assert val(after, "kmsd_key_version_encryptions_reserved_max") == 54
    assert val(after, "kmsd_key_version_usage_ratio_max") == pytest.approx(0.54)
    assert val(after, "kmsd_key_versions_usage_over_ratio", ratio="0.5") == 1
    assert val(after, "kmsd_key_versions_usage_over_ratio", ratio="0.9") == 0


def test_key_state_gauges(kmsd):
    t = kmsd.create_tenant(retention="non-phi")
    k = kmsd.create_key(t)
    kmsd.create_key(t)
    m = scrape_fresh(kmsd)
    assert val(m, "kmsd_key_versions", tenant=t, state="enabled") == 2
    for s in ("disabled", "pending_destruction", "destroyed"):
        assert val(m, "kmsd_key_versions", tenant=t, state=s) == 0
        assert (("kmsd_key_versions", (("state", s), ("tenant", t)))) in m
    kmsd.rotate(t, k)
    kmsd.rotate(t, k)
    m = scrape_fresh(kmsd)
    assert val(m, "kmsd_key_versions", tenant=t, state="enabled") == 4
    kmsd.admin_post("/v1/%s/keys/%s/versions/1/disable" % (t, k), {"reason": "test"})
    m = scrape_fresh(kmsd)
    assert val(m, "kmsd_key_versions", tenant=t, state="enabled") == 3
    assert val(m, "kmsd_key_versions", tenant=t, state="disabled") == 1
    kmsd.admin_post("/v1/%s/keys/%s/config" % (t, k), {"deletion_allowed": True})
    r = kmsd.admin_post("/v1/%s/keys/%s/versions/2/schedule-destroy" % (t, k),
                        {"days": 9, "reason": "erasure request 7"})
    due = r.json()["data"]["versions"]["2"]["destroy_after"]
    m = scrape_fresh(kmsd)
    assert val(m, "kmsd_key_versions", tenant=t, state="enabled") == 2
    assert val(m, "kmsd_key_versions", tenant=t, state="pending_destruction") == 1
    # the earliest destruction across the server: this one, unless another test
    # module's... (each module has its own server, and this module schedules one)
    left = val(m, "kmsd_next_destruction_seconds")
    assert abs(left - (due - time.time())) <= 5, (left, due - time.time())
    assert 9 * DAY - 10 <= left <= 9 * DAY
    kmsd.set_clock(3 * DAY)
    try:
        m = scrape(kmsd)  # the gauge's time is taken at each scrape, no refresh needed
        assert abs(val(m, "kmsd_next_destruction_seconds") - (left - 3 * DAY)) <= 5
    finally:
        kmsd.set_clock(0)


def test_listener_serves_metrics_only(kmsd):
    url = listener_url(kmsd)
    r = requests.get(url + "/metrics", timeout=10)  # no token
    assert r.status_code == 200 and "kmsd_requests_total" in r.text
    assert "kmsd_token_call_duration_seconds_bucket" in r.text
    assert "kmsd_audit_fsync_duration_seconds_bucket" in r.text
    # no secret and no principal names: the admin token, its accessor-free body
    assert kmsd.admin_token not in r.text
    for path in ("/", "/metrics/", "/v1/sys/metrics", "/v1/sys/health", "/v1/sys/tenants",
                 "/metricsx", "/metrics/../v1/sys/health"):
        r = requests.get(url + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
        assert "kmsd_" not in r.text
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        r = requests.request(method, url + "/metrics", data=b"x" * 10, timeout=10)
        assert r.status_code == 404, (method, r.status_code)
    # a token does not unlock anything more
    r = requests.get(url + "/v1/sys/tenants?list=true", timeout=10,
                     headers={"X-Vault-Token": kmsd.admin_token})
    assert r.status_code == 404
    # plain HTTP only: a TLS hello gets no TLS answer
    host, port = url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
        s.settimeout(10)
        try:
            got = s.recv(64)
        except (socket.timeout, ConnectionResetError):
            got = b""
        assert not got.startswith(b"\x16\x03")
    # the API's own metrics route still wants an admin token
    assert kmsd.get("/v1/sys/metrics", params={"format": "prometheus"}).status_code in (401, 403)
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "prometheus"})
    assert r.status_code == 200 and "kmsd_key_versions" in r.text
    # the server still serves after all that
    kmsd.health()


def test_metrics_listen_config_is_checked(kmsd, tmp_path):
    for bad in ("127.0.0.1", "localhost:9102", "::1:9102", "127.0.0.1:70000", "[::1]9102",
                "127.0.0.1:-1", "127.0.0.1:"):
        conf = tmp_path / "bad.conf"
        text = open(kmsd.conf).read()
        text = re.sub(r"(?m)^metrics_listen = .*$", "metrics_listen = %s" % bad, text)
        conf.write_text(text)
        conf.chmod(0o600)
        r = __import__("conftest").run_kmsd(kmsd.bin, str(conf), kmsd.env, "init")
        assert r.returncode != 0, (bad, r.stdout, r.stderr)
        assert "metrics_listen" in r.stderr, (bad, r.stderr)
