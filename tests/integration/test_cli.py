"""The kmsd command line: init, config errors, signals."""

import os
import signal
import stat

import pytest

from conftest import Kmsd, run_kmsd, sanitizer_findings


def test_admin_token_file_mode(kmsd):
    st = os.stat(kmsd.admin_token_file)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert len(kmsd.admin_token) >= 20, "admin token looks too short to be random"


def test_init_twice_is_refused(kmsd):
    before = open(kmsd.admin_token_file).read()
    other = os.path.join(kmsd.tmp, "admin2.token")
    r = kmsd.run_cli("init", "--admin-token-file", other)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert (r.stderr + r.stdout).strip(), "init refused without a message"
    assert not os.path.exists(other) or os.path.getsize(other) == 0
    assert open(kmsd.admin_token_file).read() == before
    # the running server and its tokens are unharmed
    lk = kmsd.get("/v1/auth/token/lookup-self", token=kmsd.admin_token)
    assert lk.status_code == 200, lk.text
    t, k, tok = kmsd.setup_tenant_key()
    kmsd.serves(tok, t, k)


def test_missing_config_file(kmsd):
    r = run_kmsd(kmsd.bin, os.path.join(kmsd.tmp, "nope.conf"), kmsd.env, "serve", timeout=30)
    assert r.returncode != 0
    assert "nope.conf" in r.stderr


def test_bad_config_line_is_named(kmsd, tmp_path):
    conf = tmp_path / "bad.conf"
    text = open(kmsd.conf).read() + "no_such_option = 1\n"
    conf.write_text(text)
    line = text.count("\n")
    r = run_kmsd(kmsd.bin, str(conf), kmsd.env, "serve", timeout=30)
    assert r.returncode != 0
    assert "bad.conf:%d" % line in r.stderr, r.stderr
    conf.write_text(open(kmsd.conf).read().replace("port = 0", "port = 70000"))
    r = run_kmsd(kmsd.bin, str(conf), kmsd.env, "serve", timeout=30)
    assert r.returncode != 0
    assert "port" in r.stderr, r.stderr


@pytest.fixture
def fresh(tmp_path):
    """A second provisioned (not initialized, not started) kmsd."""
    srv = Kmsd(tmp_path)
    srv.provision()
    yield srv
    srv.kill()


def test_init_refuses_existing_token_file(fresh):
    with open(fresh.admin_token_file, "w") as f:
        f.write("precious\n")
    r = fresh.run_cli("init", "--admin-token-file", fresh.admin_token_file)
    assert r.returncode != 0, r.stdout
    assert open(fresh.admin_token_file).read() == "precious\n"
    assert "precious" not in r.stdout


def test_init_prints_token_once_and_sigint_exits_0(fresh):
    r = fresh.run_cli("init", "--admin", "ops-admin")
    assert r.returncode == 0, r.stderr
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    assert lines, "init without --admin-token-file printed no token"
    # the token is one of the printed words; find it by asking the server
    fresh.start()
    found = None
    for ln in lines:
        for word in ln.replace("=", " ").replace(":", " ").split():
            rr = fresh.get("/v1/auth/token/lookup-self", token=word)
            if rr.status_code == 200:
                found = rr.json()["data"]
                break
        if found:
            break
    assert found, "no printed word is a working token: %r" % r.stdout
    assert "ops-admin" in found["display_name"]
    assert found["policies"] == ["admin"]
    # SIGINT: stops, exits 0
    fresh.proc.send_signal(signal.SIGINT)
    rc = fresh.proc.wait(timeout=60)
    err = fresh.stderr()
    assert not sanitizer_findings(err), err[-5000:]
    assert rc == 0, err[-3000:]
