"""5,000 connections opened at once (issue 8, "Network abuse"), with kmsd's default
connection limits (max_connections 1024, per_ip_connections 256) and a short
connection_timeout: 25 source addresses open 200 idle TCP connections each, none of
which ever sends a request. kmsd accepts up to max_connections, the rest wait in the
kernel's listen backlog; the request deadline drops each idle connection after
connection_timeout, so the backlog drains in rounds. A legitimate client from another
address must be served within a few rounds, kmsd's memory stays bounded, and once the
flood is gone a client is served at once."""

import errno
import os
import resource
import socket
import time

import pytest

from test_abuse import alive, legit, rss_kib

ASAN = "asan" in os.environ.get("KMSD_BIN", "")
TIMEOUT = 3
KMSD_EXTRA_OPTS = [("connection_timeout", str(TIMEOUT))]
N = 5000
SOURCES = ["127.0.1.%d" % i for i in range(1, 26)]   # 200 each, below per_ip_connections
ROUNDS_ALLOWED = 8                                    # backlog rounds of connection_timeout


def test_five_thousand_idle_connections(kmsd, env):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = N + 512
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    pid = kmsd.proc.pid
    base = rss_kib(pid)
    socks = []
    try:
        for i in range(N):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((SOURCES[i % len(SOURCES)], 0))
            rc = s.connect_ex(("127.0.0.1", kmsd.port))
            assert rc in (0, errno.EINPROGRESS, errno.EAGAIN), rc
            socks.append(s)
        t0 = time.monotonic()
        took = legit(kmsd, env, src="127.0.2.1", within=TIMEOUT * ROUNDS_ALLOWED + 5)
        peak = rss_kib(pid)
        alive(kmsd)
        print("5,000 idle connections: legitimate client served after %.1f s "
              "(connection_timeout %d s); VmRSS %d -> %d KiB" % (time.monotonic() - t0, TIMEOUT,
                                                                 base, peak))
        assert took < TIMEOUT * ROUNDS_ALLOWED + 5
        assert peak - base < (400 if ASAN else 120) * 1024, (base, peak)
    finally:
        for s in socks:
            s.close()
    # the flood gone: served promptly again
    assert legit(kmsd, env, src="127.0.2.2", within=TIMEOUT * 2 + 5) < TIMEOUT * 2 + 5
