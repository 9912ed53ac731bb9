#!/usr/bin/python3
"""Deterministic cost per request: kmsd under callgrind on a fixed workload.

Wall-clock figures on a shared 2-core machine are noise; instruction counts and call
counts are not. This starts a kmsd of its own (the integration tests' set-up, a fresh
SoftHSM2 token) under `valgrind --tool=callgrind`, warms it up, zeroes the counters,
sends N requests of one kind over one keep-alive HTTPS connection, dumps, and prints per
request: instructions (every thread: TLS, HTTP, JSON, policy, token, audit), calls to
sqlite3_step (store statements), to the PKCS#11 functions (token calls), to fdatasync
(audit syncs), and the functions with the most inclusive instructions.

    make -s && /usr/bin/python3 bench/profile.py [--op datakey|decrypt|health|encrypt]
        [--n 200] [--batch 1] [--context] [--top 25] [--keep] [--mechanisms kmsd|ALL|LIST]

Needs valgrind (callgrind_control, callgrind_annotate). Takes a minute or two."""

import argparse
import base64
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))


def parse_calls(path):
    """{function name: total calls to it} from a callgrind out file."""
    names = {}
    calls = collections.Counter()
    cfn = None
    rx = re.compile(r"^\((\d+)\)(?: (.*))?$")
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn=") or line.startswith("cfn="):
                key, val = line.rstrip("\n").split("=", 1)
                m = rx.match(val)
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), val)
                else:
                    name = val
                if key == "cfn":
                    cfn = name
            elif line.startswith("calls=") and cfn is not None:
                calls[cfn] += int(line.split("=", 1)[1].split()[0])
                cfn = None
    return calls


def total_ir(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", default="datakey", choices=["datakey", "decrypt", "encrypt", "health"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", action="store_true", help='add encryption_context {"purpose":"treatment"}')
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--keys", type=int, default=1,
                    help="spread datakey requests round-robin over this many keys (made and "
                         "used once before the measurement, without callgrind)")
    ap.add_argument("--mechanisms", default=os.environ.get("SOFTHSM_MECHANISMS", "ALL"),
                    help='SoftHSM2 slots.mechanisms for the token (scripts/dev-token.sh; default '
                         '"ALL", SoftHSM2\'s default, as make bench; "kmsd": only the mechanisms kmsd uses)')
    a = ap.parse_args()
    os.environ["SOFTHSM_MECHANISMS"] = a.mechanisms

    import conftest  # the integration tests' Kmsd class

    tmp = tempfile.mkdtemp(prefix="kmsd-profile-")
    outfile = os.path.join(tmp, "callgrind.out")
    prefix = ("valgrind --tool=callgrind --callgrind-out-file=%s.%%p "
                                 "--dump-instr=no --collect-systime=no" % outfile)
    # keys are made by a kmsd without callgrind (fast), which is then restarted under it
    os.environ["KMSD_PREFIX"] = "" if a.keys > 1 else prefix
    os.environ.setdefault("KMSD_STARTUP_TIMEOUT", "300")
    k = conftest.Kmsd(tmp)
    k.extra_opts = [("log_level", "warn"), ("workers", "2")]
    try:
        k.provision()
        k.init()
        k.start()
        t, key, tok = k.setup_tenant_key()
        keys = [key]
        if a.keys > 1:
            keys = ["s%d" % i for i in range(a.keys)]
            for kn in keys:
                k.create_key(t, kn)
                assert k.datakey(tok, t, kn).status_code == 200
            k.stop()
            os.environ["KMSD_PREFIX"] = prefix
            k.session = conftest.requests.Session()
            k.session.trust_env = False
            k.start()
            for kn in keys:  # each KEK unwrapped into the token by this process once
                assert k.datakey(tok, t, kn).status_code == 200
        turn = [0]
        item = {}
        if a.context:
            item["encryption_context"] = {"purpose": "treatment"}
        ct = None
        if a.op in ("decrypt",):
            r = k.datakey(tok, t, key, **item)
            assert r.status_code == 200, r.text
            ct = r.json()["data"]["ciphertext"]

        def body():
            it = dict(item)
            if a.op == "decrypt":
                it["ciphertext"] = ct
            elif a.op == "encrypt":
                it["plaintext"] = base64.b64encode(b"x" * 32).decode()
            if a.batch > 1:
                return {"batch_input": [dict(it) for _ in range(a.batch)]}
            return it

        def one():
            if a.op == "health":
                r = k.get("/v1/sys/health")
            elif a.op == "datakey":
                turn[0] += 1
                r = k.datakey(tok, t, keys[turn[0] % len(keys)], **body())
            elif a.op == "decrypt":
                r = k.decrypt(tok, t, key, **body())
            else:
                r = k.encrypt(tok, t, key, **body())
            assert r.status_code == 200, r.text

        for _ in range(20):
            one()
        pid = k.proc.pid
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        t0 = time.monotonic()
        for _ in range(a.n):
            one()
        dt = time.monotonic() - t0
        subprocess.run(["callgrind_control", "-d", "profile", str(pid)], check=True,
                       capture_output=True)
        time.sleep(1)
        dumps = sorted(glob.glob(outfile + ".%d.*" % pid), key=os.path.getmtime)
        assert dumps, "no callgrind dump in %s" % tmp
        dump = dumps[-1]
        ir = total_ir(dump)
        calls = parse_calls(dump)
        n = a.n
        print("keys=%d softhsm_mechanisms=%s" % (len(keys), a.mechanisms))
        print("op=%s batch=%d context=%s n=%d (one keep-alive TLS connection, workers=2, %.1f s "
              "under callgrind)" % (a.op, a.batch, a.context, n, dt))
        print("instructions per request: %.0f" % (ir / n))
        step = sum(v for f, v in calls.items() if f.startswith("sqlite3_step"))
        print("sqlite3_step calls per request: %.2f" % (step / n))
        p11 = {f: v for f, v in calls.items() if re.match(r"^C_[A-Z][A-Za-z]+$", f)}
        print("PKCS#11 calls per request: %.2f  %s" % (
            sum(p11.values()) / n,
            ", ".join("%s %.2f" % (f, v / n) for f, v in sorted(p11.items(), key=lambda x: -x[1]))))
        for f in ("fdatasync", "pthread_mutex_lock", "malloc", "json_loads", "json_dumps",
                  "json_loadb"):
            print("%s calls per request: %.2f" % (f, calls.get(f, 0) / n))
        r = subprocess.run(["callgrind_annotate", "--inclusive=yes", dump], capture_output=True,
                           text=True)
        lines = [ln for ln in r.stdout.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
        print("top inclusive (instructions per request, share of total):")
        for ln in lines[:a.top]:
            m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", ln)
            if m:
                v = int(m.group(1).replace(",", ""))
                print("  %10.0f %6s%%  %s" % (v / n, m.group(2), m.group(3)[:110]))
    finally:
        k.stop(timeout=300)
        if a.keep:
            print("kept", tmp)
        else:
            subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
