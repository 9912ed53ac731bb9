"""GET /v1/sys/health (docs/API.md, docs/OPERATIONS.md "Health checks"): each check
named in `checks` (audit, token, store, clock), 503 naming the one that failed with its
`*_error`, recovery once the fault is gone; Vault's ?activecode= / ?sealedcode=; the
token and store checks run at most once a second.

- token: kmsd runs on tests/p11shim (build/tests/p11shim.so) in front of SoftHSM2, and
  the shim fails C_GetSessionInfo;
- store: tests/iofault fails writes to the store file;
- clock: the test clock (KMSD_TEST_CLOCK_FILE) moved far back, into the far future and
  before 2024.
The audit check has its own tests in test_audit_faults.py."""

import os
import time

import pytest

from conftest import IOFAULT, PG_URI, PKCS11_MODULE, FaultServer, Kmsd
from test_kmsctl import Ctl

KMSD_TEST_CLOCK = True
SHIM = os.path.join(os.path.dirname(IOFAULT), "p11shim.so")
ALL_OK = {"audit": "ok", "token": "ok", "store": "ok", "clock": "ok"}


def health(k, **params):
    r = k.get("/v1/sys/health", params=params or None)
    return r.status_code, r.json()


def wait_status(k, want, timeout=10):
    """Health is re-checked at most once a second: poll until it answers want."""
    deadline = time.monotonic() + timeout
    while True:
        st, body = health(k)
        if st == want or time.monotonic() > deadline:
            return st, body
        time.sleep(0.2)


def test_every_check_named_and_vault_codes(kmsd):
    st, body = health(kmsd)
    assert st == 200, body
    assert body["checks"] == ALL_OK
    assert body["initialized"] is True and body["sealed"] is False and body["standby"] is False
    # Vault's query parameters: activecode when healthy; standbyok and the rest change
    # nothing (kmsd is never a standby)
    st, body = health(kmsd, activecode="218")
    assert st == 218 and body["checks"] == ALL_OK
    st, _ = health(kmsd, standbyok="true", perfstandbyok="true", uninitcode="200")
    assert st == 200
    for bad in ("abc", "99", "600", "", "200x"):
        r = kmsd.get("/v1/sys/health", params={"activecode": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "activecode and sealedcode" in r.json()["errors"][0]
        r = kmsd.get("/v1/sys/health", params={"sealedcode": bad})
        assert r.status_code == 400, (bad, r.text)


def test_clock_far_back_fails_and_recovers(kmsd):
    assert health(kmsd)[0] == 200  # the store now holds this time
    time.sleep(1.1)
    kmsd.set_clock(-3600)
    st, body = wait_status(kmsd, 503)
    assert st == 503, body
    assert body["checks"]["clock"] == "failed"
    assert body["checks"]["audit"] == "ok" and body["checks"]["token"] == "ok"
    assert body["checks"]["store"] == "ok"
    assert "the newest time the store has recorded" in body["checks"]["clock_error"]
    assert "more than 300 s back" in body["checks"]["clock_error"]
    # sealedcode: the status of a failed check
    assert health(kmsd, sealedcode="500")[0] == 500
    # a small step back (NTP) is tolerated
    kmsd.set_clock(-120)
    st, body = wait_status(kmsd, 200)
    assert st == 200 and body["checks"] == ALL_OK, body
    kmsd.set_clock(0)
    st, body = wait_status(kmsd, 200)
    assert st == 200 and body["checks"] == ALL_OK, body


def test_clock_out_of_range(kmsd):
    # a clock in the far future fails, and is never recorded as the reference
    kmsd.set_clock(100 * 365 * 86400)
    st, body = wait_status(kmsd, 503)
    assert st == 503 and body["checks"]["clock"] == "failed", body
    assert "after 2100-01-01" in body["checks"]["clock_error"]
    time.sleep(1.1)
    assert health(kmsd)[0] == 503
    kmsd.set_clock(0)
    st, body = wait_status(kmsd, 200)
    assert st == 200 and body["checks"] == ALL_OK, body
    # one before 2024
    kmsd.set_clock(1600000000 - int(time.time()))
    st, body = wait_status(kmsd, 503)
    assert st == 503 and "before 2024-01-01" in body["checks"]["clock_error"], body
    kmsd.set_clock(0)
    st, body = wait_status(kmsd, 200)
    assert st == 200, body


@pytest.fixture
def shimmed(tmp_path):
    if not os.path.exists(SHIM):
        pytest.fail("%s is missing (make tests builds it)" % SHIM)
    k = Kmsd(tmp_path)
    k.extra_opts = [("pkcs11_module", SHIM)]
    k.provision()
    ctl = os.path.join(str(tmp_path), "shim.ctl")
    k.env["KMS_SHIM_TARGET"] = PKCS11_MODULE
    k.env["KMS_SHIM_CONTROL"] = ctl
    try:
        k.init()
        k.start()
    except BaseException:
        k.kill()
        raise
    k.shim_ctl = ctl
    yield k
    rc, err = k.stop()
    assert rc == 0, err[-3000:]


def shim_rule(k, rule):
    tmp = k.shim_ctl + ".tmp"
    with open(tmp, "w") as f:
        f.write(rule + "\n")
    os.replace(tmp, k.shim_ctl)


def test_token_failure_and_recovery(shimmed, tmp_path_factory):
    k = shimmed
    ctl = Ctl(k, tmp_path_factory.mktemp("kmsctl-health"))
    st, body = health(k)
    assert st == 200 and body["checks"] == ALL_OK, body
    shim_rule(k, "C_GetSessionInfo 1 CKR_DEVICE_REMOVED persist")
    st, body = wait_status(k, 503)
    assert st == 503, body
    c = body["checks"]
    assert c["token"] == "failed" and "CKR_DEVICE_REMOVED" in c["token_error"], c
    assert "C_GetSessionInfo" in c["token_error"]
    assert c["audit"] == "ok" and c["store"] == "ok" and c["clock"] == "ok"
    # kmsctl status: the checks, exit 4, the failed one named
    r = ctl.run("status", want=4)
    assert "check token      failed" in r.stdout and "CKR_DEVICE_REMOVED" in r.stdout, r.stdout
    assert "kmsctl: 503 the server is unhealthy: failed check token" in r.stderr, r.stderr
    os.unlink(k.shim_ctl)
    st, body = wait_status(k, 200)
    assert st == 200 and body["checks"] == ALL_OK, body
    ctl.run("status", want=0)


def test_token_check_runs_at_most_once_a_second(shimmed):
    k = shimmed
    time.sleep(1.1)
    # the first C_GetSessionInfo after this passes, every later one fails
    shim_rule(k, "C_GetSessionInfo 2 CKR_DEVICE_ERROR persist")
    st, body = health(k)
    t0 = time.monotonic()
    assert st == 200, body
    n = 0
    while time.monotonic() - t0 < 0.7:
        st, body = health(k)
        assert st == 200, body  # the cached verdict: no second call reached the token
        n += 1
    assert n >= 3
    st, body = wait_status(k, 503)
    assert st == 503 and "CKR_DEVICE_ERROR" in body["checks"]["token_error"], body
    os.unlink(k.shim_ctl)
    assert wait_status(k, 200)[0] == 200


def test_store_failure_and_recovery(tmp_path):
    if PG_URI:
        pytest.skip("SQLite store only: injects I/O faults into the SQLite file")
    srv = FaultServer(tmp_path)
    try:
        k = srv.k
        st, body = health(k)
        assert st == 200 and body["checks"] == ALL_OK, body
        srv.arm("write EIO always kmsd.db")
        st, body = wait_status(k, 503)
        assert st == 503, body
        c = body["checks"]
        assert c["store"] == "failed" and "metadata store error" in c["store_error"], c
        assert c["audit"] == "ok" and c["token"] == "ok" and c["clock"] == "ok", c
        assert any("kmsd.db" in h for h in srv.hits())
        srv.disarm()
        st, body = wait_status(k, 200)
        assert st == 200 and body["checks"] == ALL_OK, body
        # and the store takes changes again
        k.create_tenant()
    finally:
        srv.stop()
