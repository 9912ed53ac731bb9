"""kmsd sets a larger glibc per-thread malloc cache for itself (kms/kmsd.c malloc_tune,
docs/PERFORMANCE.md "Process start: the malloc cache"): it executes itself again, once,
with glibc.malloc.tcache_count=256 added to GLIBC_TUNABLES, in the same process, and
leaves an operator's own tcache_count alone.

Reads /proc/<pid>/environ, the environment the process's current image started with
(the suite runs as root: kmsd is not dumpable). It is read as bytes: glibc's loader
cuts GLIBC_TUNABLES at each ':' in place while parsing it."""

import re

import pytest

TCACHE = b"glibc.malloc.tcache_count=256"


def start_env(kmsd):
    with open("/proc/%d/environ" % kmsd.proc.pid, "rb") as f:
        return f.read()


def restart_with(kmsd, value):
    rc, err = kmsd.stop()
    assert rc == 0, err[-3000:]
    if value is None:
        kmsd.env.pop("GLIBC_TUNABLES", None)
    else:
        kmsd.env["GLIBC_TUNABLES"] = value
    kmsd.start()


@pytest.fixture
def plain(kmsd):
    """kmsd as the suite starts it, without a GLIBC_TUNABLES of its own; restored after."""
    saved = kmsd.env.get("GLIBC_TUNABLES")
    if saved is not None:
        restart_with(kmsd, None)
    yield kmsd
    restart_with(kmsd, saved)


def test_tcache_set_in_the_same_process(plain):
    # the process the suite started (its pid) runs the second image, with the tunable
    env = start_env(plain)
    assert b"\0GLIBC_TUNABLES=" + TCACHE + b"\0" in b"\0" + env
    assert b"\0KMSD_REEXECUTED=1\0" in b"\0" + env
    t, k, tok = plain.setup_tenant_key()
    assert plain.datakey(tok, t, k).status_code == 200


def test_other_tunables_are_kept(plain):
    restart_with(plain, "glibc.malloc.check=0")
    assert re.search(rb"(^|\0)GLIBC_TUNABLES=glibc\.malloc\.check=0[:\0]" + re.escape(TCACHE) + rb"\0",
                     start_env(plain))
    assert plain.get("/v1/sys/health").status_code == 200


def test_operator_tcache_count_is_left_alone(plain):
    restart_with(plain, "glibc.malloc.tcache_count=16")
    env = start_env(plain)
    assert b"\0GLIBC_TUNABLES=glibc.malloc.tcache_count=16\0" in b"\0" + env
    assert TCACHE not in env
    assert b"KMSD_REEXECUTED" not in env  # no second image
    assert plain.get("/v1/sys/health").status_code == 200
