"""TLS session resumption (tls_session_tickets, docs/PERFORMANCE.md): a client that
kept the session ticket resumes with TLS 1.3 and 1.2; a restarted kmsd (new ticket
key) and a kmsd with tickets off make a full handshake; the resumed connection is
served like any other."""

import socket
import ssl

from conftest import Kmsd, sanitizer_findings


def request(kmsd, ctx, session=None):
    raw = socket.create_connection(("127.0.0.1", kmsd.port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        s.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, s.session, s.session_reused
    finally:
        s.close()


def ctx_for(kmsd, version):
    ctx = ssl.create_default_context(cafile=kmsd.ca)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def test_resumes_tls13_and_tls12(kmsd):
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ctx_for(kmsd, version)
        data, sess, reused = request(kmsd, ctx)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert not reused
        assert sess is not None and sess.has_ticket, version
        data, _, reused = request(kmsd, ctx, session=sess)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert reused, version


def test_restart_invalidates_tickets(kmsd):
    ctx = ctx_for(kmsd, ssl.TLSVersion.TLSv1_3)
    _, sess, _ = request(kmsd, ctx)
    rc, err = kmsd.stop()
    assert rc == 0, err[-3000:]
    kmsd.start()
    data, _, reused = request(kmsd, ctx, session=sess)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert not reused


def test_tickets_off(tmp_path):
    k = Kmsd(tmp_path)
    k.extra_opts = [("tls_session_tickets", "false")]
    try:
        k.provision()
        k.init()
        k.start()
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = ctx_for(k, version)
            data, sess, reused = request(k, ctx)
            assert data.startswith(b"HTTP/1.1 200")
            data, _, reused = request(k, ctx, session=sess)
            assert data.startswith(b"HTTP/1.1 200")
            assert not reused, version
    finally:
        rc, err = k.stop()
    assert not sanitizer_findings(err), err[-5000:]
    assert rc == 0, err[-5000:]
