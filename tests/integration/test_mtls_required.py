"""tls_client_auth = required: without a client certificate of tls_client_ca the TLS
handshake fails; with one, tokens and mapped certificates work as with optional."""
import atexit
import os
import shutil
import ssl
import tempfile

import pytest

from conftest import Kmsd, SCRIPTS, sanitizer_findings, uniq
import test_mtls as m

CERTS = tempfile.mkdtemp(prefix="kmsd-mtls-req-")
atexit.register(shutil.rmtree, CERTS, True)
m._make(CERTS, "operator", "svc-req")
m._make("-c", "other-ca", CERTS, "rogue")


def pair(name):
    return os.path.join(CERTS, name + ".pem"), os.path.join(CERTS, name + ".key")


@pytest.fixture(scope="module")
def kreq(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kmsd-req")
    srv = Kmsd(tmp)
    srv.extra_opts = [("tls_client_ca", os.path.join(CERTS, "client-ca.pem")),
                      ("tls_client_auth", "required")]
    # every HTTP call of the harness (health polling, admin calls) presents a valid,
    # unmapped certificate: the admin token then decides
    srv.session.cert = pair("operator")
    try:
        srv.provision()
        srv.init()
        srv.start()
    except BaseException:
        srv.kill()
        raise
    yield srv
    rc, err = srv.stop()
    assert not sanitizer_findings(err), err[-20000:]
    assert rc == 0, err[-5000:]


def exchange(k, cert, maxver):
    ctx = ssl.create_default_context(cafile=k.ca)
    if cert:
        ctx.load_cert_chain(*pair(cert))
    ctx.maximum_version = maxver
    import socket
    sock = socket.create_connection(("127.0.0.1", k.port), timeout=15)
    data = b""
    try:
        s = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        s.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return data, e
    finally:
        sock.close()
    return data, None


@pytest.mark.parametrize("maxver", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_no_certificate_fails_the_handshake(kreq, maxver):
    data, err = exchange(kreq, None, maxver)
    assert b"HTTP/1.1" not in data, data[:200]
    if maxver == ssl.TLSVersion.TLSv1_2:
        assert err is not None


@pytest.mark.parametrize("maxver", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_unknown_ca_fails_the_handshake(kreq, maxver):
    data, err = exchange(kreq, "rogue", maxver)
    assert b"HTTP/1.1" not in data, data[:200]


def test_valid_certificate_connects(kreq):
    for maxver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        data, err = exchange(kreq, "svc-req", maxver)
        assert err is None and data.startswith(b"HTTP/1.1 200"), (err, data[:200])


def test_token_and_mapped_cert_work(kreq):
    t, k, tok = kreq.setup_tenant_key()
    kreq.serves(tok, t, k)  # token, over the harness's certificate
    name = uniq("svc")
    kreq.create_principal(name, "service", [t])
    with open(pair("svc-req")[0]) as f:
        kreq.admin_post("/v1/sys/principals/%s/certs" % name, {"certificate": f.read()})
    # a session of its own: the harness's pooled connections carry its certificate
    import requests
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(kreq.url + "/v1/%s/datakey/plaintext/%s" % (t, k), json={},
                   verify=kreq.ca, cert=pair("svc-req"), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["plaintext"]
