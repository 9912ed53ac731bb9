"""Forwarding audit records to syslog (audit_syslog, kms/audit/syslog.h): every record,
once durable in the local log, arrives as one RFC 5424 datagram carrying the record's
exact line; severity follows the outcome; the local log stays complete when the
collector is gone."""

import json
import re
import socket
import time

from conftest import uniq

COLLECTOR = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
COLLECTOR.bind(("127.0.0.1", 0))
COLLECTOR.settimeout(0.2)
KMSD_EXTRA_OPTS = [("audit_syslog", "udp:127.0.0.1:%d" % COLLECTOR.getsockname()[1])]

HEADER = re.compile(r"^<(\d+)>1 (\S+) (\S+) kmsd (\d+) audit - (\{.*\})$")


def drain():
    msgs = []
    while True:
        try:
            msgs.append(COLLECTOR.recv(70000).decode())
        except socket.timeout:
            return msgs


def local_lines(kmsd):
    with open(kmsd.audit_path) as f:
        return f.read().splitlines()


def test_records_forwarded_verbatim(kmsd, env):
    drain()
    rids = []
    for i in range(5):
        rid = uniq("sys")
        rids.append(rid)
        r = kmsd.datakey(env.token, env.tenant, env.key, headers={"X-Request-Id": rid})
        assert r.status_code == 200
    r = kmsd.datakey("not-a-token", env.tenant, env.key, headers={"X-Request-Id": "sys-deny-1"})
    assert r.status_code in (401, 403)
    r = kmsd.datakey(env.token, env.tenant, "no-such-key", headers={"X-Request-Id": "sys-err-1"})
    assert r.status_code == 404
    time.sleep(0.2)
    msgs = drain()
    lines = set(local_lines(kmsd))
    got = {}
    for m in msgs:
        h = HEADER.match(m)
        assert h, m[:200]
        pri, ts, host, pid, line = h.groups()
        assert line in lines, "forwarded record is not a line of the local log: %s" % line[:200]
        rec = json.loads(line)
        assert ts == rec["time"]
        assert int(pid) == kmsd.proc.pid
        got[rec.get("request_id")] = (int(pri), rec)
    for rid in rids:
        assert got[rid][0] == 10 * 8 + 6, got[rid]
    assert got["sys-deny-1"][0] == 10 * 8 + 5
    assert got["sys-err-1"][0] == 10 * 8 + 4


def test_collector_gone_local_log_unaffected(kmsd, env):
    drain()
    before = len(local_lines(kmsd))
    m0 = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token).json()["data"]["audit"]
    # nothing listens on this port any more: sends fail (ECONNREFUSED on loopback) or
    # vanish; either way requests succeed and the local log gets every record
    port = COLLECTOR.getsockname()[1]
    COLLECTOR.close()
    try:
        for _ in range(10):
            assert kmsd.datakey(env.token, env.tenant, env.key).status_code == 200
        assert len(local_lines(kmsd)) >= before + 11
        m1 = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token).json()["data"]["audit"]
        assert m1["syslog_sent_total"] + m1["syslog_dropped_total"] >= \
            m0["syslog_sent_total"] + m0["syslog_dropped_total"] + 11
        assert m1["healthy"]
    finally:
        assert port
