"""kmsctl rewrap --in against a kmsd that rate-limits rewrap (rate_limit_ops): the 429
answers are retried after a pause (docs/KMSCTL.md "Bulk rewrap", Rate) and the run
completes with every line rewrapped; the audit log holds the denied calls too.

Environment: KMSCTL_BIN as for test_kmsctl.py."""

import json
import os
import time

import pytest

from test_kmsctl import Ctl, kmsctl_bin

# one rewrap call a second per principal, no burst beyond one
KMSD_EXTRA_OPTS = [("rate_limit_ops", "rewrap=1:1")]


@pytest.fixture(scope="module")
def ctl(kmsd, tmp_path_factory):
    if not os.access(kmsctl_bin(), os.X_OK):
        pytest.fail("kmsctl binary %s does not exist (build it, or set KMSCTL_BIN)" % kmsctl_bin())
    return Ctl(kmsd, tmp_path_factory.mktemp("rewrap-retry"))


def test_429_is_retried(ctl):
    kmsd = ctl.kmsd
    t = kmsd.create_tenant()
    k = kmsd.create_key(t)
    tok = kmsd.service([t])
    svc = ctl.service_token([t])
    r = kmsd.datakey(tok, t, k, batch_input=[{}] * 3)
    rows = r.json()["data"]["batch_results"]
    kmsd.rotate(t, k)
    src, dst = str(ctl.tmp / "in.txt"), str(ctl.tmp / "out.txt")
    with open(src, "w") as f:
        f.write("".join(x["ciphertext"] + "\n" for x in rows))
    t0 = time.monotonic()
    # no --rate: kmsctl sends as fast as it can, the server answers 429, kmsctl waits
    r = ctl.run("rewrap", "--tenant", t, "--key", k, "--in", src, "--out", dst, "--batch", "1",
                token=svc, want=0)
    took = time.monotonic() - t0
    assert "429 from the server, again in" in r.stderr, r.stderr
    assert "3 rewrapped to v2" in r.stderr
    out = open(dst).read().split()
    assert len(out) == 3 and all(x.startswith("vault:v2:") for x in out)
    r = kmsd.decrypt(tok, t, k, batch_input=[{"ciphertext": x} for x in out])
    assert [x["plaintext"] for x in r.json()["data"]["batch_results"]] == [x["plaintext"] for x in rows]
    assert took >= 1.5, took  # three calls at one a second
    with open(kmsd.audit_path) as f:
        recs = [json.loads(ln) for ln in f if '"rewrap"' in ln]
    statuses = [x["status"] for x in recs if x.get("operation") == "rewrap" and x.get("tenant") == t]
    assert statuses.count(200) == 3 and 429 in statuses, statuses
