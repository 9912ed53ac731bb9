"""mTLS: client certificates checked in the TLS handshake against tls_client_ca, and
mapped to principals by SPKI fingerprint or subject DN (docs/API.md "Client
certificates"). tls_client_auth = optional here: token clients share the listener."""
import atexit
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import uuid

import pytest
import requests

from conftest import SCRIPTS, uniq

CERTS = tempfile.mkdtemp(prefix="kmsd-mtls-")
atexit.register(shutil.rmtree, CERTS, True)


def _make(*args):
    r = subprocess.run(["sh", os.path.join(SCRIPTS, "dev-client-certs.sh")] + list(args),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


_make(CERTS, "svc-spki", "svc-subject", "svc-unmapped", "svc-both", "svc-revoke", "svc-audit",
      "svc-admin", "svc-resume")
_make("-d", "-1", CERTS, "svc-expired")
_make("-e", "serverAuth", CERTS, "svc-server-eku")
_make("-k", "keyAgreement", CERTS, "svc-no-sign-ku")
_make("-c", "other-ca", CERTS, "rogue")

CLIENT_CA = os.path.join(CERTS, "client-ca.pem")
KMSD_EXTRA_OPTS = [("tls_client_ca", CLIENT_CA), ("tls_client_auth", "optional")]


def pair(name):
    return os.path.join(CERTS, name + ".pem"), os.path.join(CERTS, name + ".key")


def spki_sha256(name):
    pub = subprocess.run(["openssl", "x509", "-in", pair(name)[0], "-noout", "-pubkey"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def subject(name):
    out = subprocess.run(["openssl", "x509", "-in", pair(name)[0], "-noout", "-subject",
                          "-nameopt", "RFC2253"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith("subject=")
    return out[len("subject="):]


def call(kmsd, method, path, cert=None, token=None, body=None, session=None):
    h = {"X-Request-Id": uuid.uuid4().hex}
    if token is not None:
        h["X-Vault-Token"] = token
    data = None
    if body is not None:
        data = json.dumps(body)
        h["Content-Type"] = "application/json"
    s = session or requests
    return s.request(method, kmsd.url + path, headers=h, data=data, verify=kmsd.ca,
                     cert=pair(cert) if cert else None, timeout=30)


def raw_exchange(kmsd, cert=None, maxver=None):
    """One TLS connection with a plain GET of health; returns what came back, or the
    exception that ended it. A refused handshake returns no HTTP at all."""
    ctx = ssl.create_default_context(cafile=kmsd.ca)
    if cert:
        ctx.load_cert_chain(*pair(cert))
    if maxver is not None:
        ctx.maximum_version = maxver
    sock = socket.create_connection(("127.0.0.1", kmsd.port), timeout=15)
    data = b""
    try:
        s = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        s.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return data, e
    finally:
        sock.close()
    return data, None


def audit_records(kmsd, request_id):
    with open(kmsd.audit_path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    return [r for r in recs if r.get("request_id") == request_id]


def map_cert(kmsd, principal, **body):
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs" % principal, token=kmsd.admin_token,
             body=body)
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.fixture(scope="module")
def svc(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    name = uniq("svc")
    kmsd.create_principal(name, "service", [t])
    return {"tenant": t, "key": k, "token": tok, "name": name,
            "own_token": kmsd.create_token(name)[0]}


# ---- the handshake ---------------------------------------------------------------------

@pytest.mark.parametrize("maxver", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_unknown_ca_fails_the_handshake(kmsd, maxver):
    data, err = raw_exchange(kmsd, "rogue", maxver)
    assert b"HTTP/1.1" not in data, data[:200]
    if maxver == ssl.TLSVersion.TLSv1_2:
        # TLS 1.2: the server's Finished never comes, so the client's handshake fails
        assert err is not None
    # TLS 1.3: the client's side of the handshake may end before the server has checked
    # the certificate; the server then closes without a byte of HTTP either way


@pytest.mark.parametrize("name", ["svc-expired", "svc-server-eku", "svc-no-sign-ku"])
def test_expired_or_wrong_purpose_fails_the_handshake(kmsd, name):
    for maxver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        data, err = raw_exchange(kmsd, name, maxver)
        assert b"HTTP/1.1" not in data, (name, data[:200])


def test_refusals_logged(kmsd):
    raw_exchange(kmsd, "rogue", ssl.TLSVersion.TLSv1_2)
    assert "client certificate refused in the TLS handshake" in kmsd.stderr()


def test_good_cert_and_no_cert_both_connect(kmsd):
    data, err = raw_exchange(kmsd, "svc-unmapped", ssl.TLSVersion.TLSv1_3)
    assert err is None and data.startswith(b"HTTP/1.1 200"), (err, data[:200])
    data, err = raw_exchange(kmsd, "svc-unmapped", ssl.TLSVersion.TLSv1_2)
    assert err is None and data.startswith(b"HTTP/1.1 200"), (err, data[:200])
    # optional: a client without a certificate still connects (tokens keep working)
    data, err = raw_exchange(kmsd, None)
    assert err is None and data.startswith(b"HTTP/1.1 200"), (err, data[:200])


def test_token_clients_unaffected(kmsd, svc):
    kmsd.serves(svc["token"], svc["tenant"], svc["key"])


# ---- mapping and authentication --------------------------------------------------------

def test_mapping_by_spki(kmsd, svc):
    fp = spki_sha256("svc-spki")
    d = map_cert(kmsd, svc["name"], spki_sha256=fp.upper())
    assert d == {"principal": svc["name"], "kind": "spki", "value": fp, "created": d["created"]}
    r = call(kmsd, "POST", "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"]),
             cert="svc-spki", body={})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["plaintext"]
    recs = audit_records(kmsd, r.request.headers["X-Request-Id"])
    assert len(recs) == 1, recs
    assert recs[0]["principal"] == svc["name"]
    assert recs[0]["auth_method"] == "cert"
    assert recs[0]["outcome"] == "allow"
    assert recs[0]["client_cert_spki"] == fp
    # lookup-self works too, with nothing but the certificate
    r = call(kmsd, "GET", "/v1/auth/token/lookup-self", cert="svc-spki")
    assert r.status_code == 200, r.text


def test_mapping_by_subject(kmsd, svc):
    dn = subject("svc-subject")
    assert dn == "CN=svc-subject,O=kmsd development"
    map_cert(kmsd, svc["name"], subject=dn)
    r = call(kmsd, "POST", "/v1/%s/datakey/wrapped/%s" % (svc["tenant"], svc["key"]),
             cert="svc-subject", body={})
    assert r.status_code == 200, r.text
    rec = audit_records(kmsd, r.request.headers["X-Request-Id"])[0]
    assert rec["auth_method"] == "cert" and rec["principal"] == svc["name"]


def test_mapping_by_pem_certificate(kmsd):
    name = uniq("aud")
    kmsd.create_principal(name, "auditor")
    with open(pair("svc-audit")[0]) as f:
        pem = f.read()
    d = map_cert(kmsd, name, certificate=pem)
    assert d["kind"] == "spki" and d["value"] == spki_sha256("svc-audit")
    r = call(kmsd, "GET", "/v1/sys/policy", cert="svc-audit")
    assert r.status_code == 200, r.text
    # an auditor by certificate is still an auditor: no key material, no change
    r = call(kmsd, "POST", "/v1/sys/tenants/" + uniq("t"), cert="svc-audit", body={})
    assert r.status_code == 403, r.text


def test_list_mappings(kmsd, svc):
    r = call(kmsd, "GET", "/v1/sys/principals/%s/certs" % svc["name"], token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    kinds = {(c["kind"], c["value"]) for c in r.json()["data"]["certs"]}
    assert ("spki", spki_sha256("svc-spki")) in kinds
    assert ("subject", subject("svc-subject")) in kinds
    r = call(kmsd, "LIST", "/v1/sys/principals/%s/certs" % svc["name"], token=kmsd.admin_token)
    assert r.status_code == 200, r.text


def test_unmapped_cert_without_token_is_403(kmsd, svc):
    r = call(kmsd, "POST", "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"]),
             cert="svc-unmapped", body={})
    assert r.status_code == 403, r.text
    assert r.json()["errors"] == ["client certificate is not mapped to a principal"]
    rec = audit_records(kmsd, r.request.headers["X-Request-Id"])[0]
    assert rec["outcome"] == "deny" and rec["principal"] is None
    assert rec["auth_method"] == "cert"
    assert rec["client_cert_spki"] == spki_sha256("svc-unmapped")
    assert rec["client_cert_subject"] == subject("svc-unmapped")


def test_unmapped_cert_with_token_uses_the_token(kmsd, svc):
    r = call(kmsd, "POST", "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"]),
             cert="svc-unmapped", token=svc["token"], body={})
    assert r.status_code == 200, r.text
    rec = audit_records(kmsd, r.request.headers["X-Request-Id"])[0]
    assert rec["auth_method"] == "token"


def test_token_must_match_the_cert(kmsd, svc):
    path = "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"])
    # the principal's own token with its certificate: allowed, recorded as both
    r = call(kmsd, "POST", path, cert="svc-spki", token=svc["own_token"], body={})
    assert r.status_code == 200, r.text
    assert audit_records(kmsd, r.request.headers["X-Request-Id"])[0]["auth_method"] == "cert+token"
    # another principal's token (valid, even the admin's): refused
    for tok in (svc["token"], kmsd.admin_token):
        r = call(kmsd, "POST", path, cert="svc-spki", token=tok, body={})
        assert r.status_code == 403, r.text
        assert r.json()["errors"] == [
            "the token and the client certificate belong to different principals"]
        rec = audit_records(kmsd, r.request.headers["X-Request-Id"])[0]
        assert rec["outcome"] == "deny" and rec["principal"] is None
    # a bogus token with a good certificate: refused
    r = call(kmsd, "POST", path, cert="svc-spki", token="kms.0000000000000000." + "0" * 64, body={})
    assert r.status_code == 403, r.text


def test_admin_by_cert_may_manage(kmsd):
    name = uniq("adm")
    kmsd.create_principal(name, "admin")
    map_cert(kmsd, name, spki_sha256=spki_sha256("svc-admin"))
    r = call(kmsd, "POST", "/v1/sys/tenants/" + uniq("t"), cert="svc-admin", body={})
    assert r.status_code == 200, r.text


def test_cert_mapped_twice_is_refused(kmsd, svc):
    other = uniq("svc")
    kmsd.create_principal(other, "service", [svc["tenant"]])
    map_cert(kmsd, svc["name"], spki_sha256=spki_sha256("svc-both"))
    map_cert(kmsd, other, subject=subject("svc-both"))
    r = call(kmsd, "GET", "/v1/auth/token/lookup-self", cert="svc-both")
    assert r.status_code == 403, r.text
    assert "two principals" in r.json()["errors"][0]
    # and the same value cannot be mapped twice
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs" % other, token=kmsd.admin_token,
             body={"spki_sha256": spki_sha256("svc-both")})
    assert r.status_code == 409, r.text


def test_removing_the_mapping_revokes_on_the_next_request(kmsd, svc):
    fp = spki_sha256("svc-revoke")
    map_cert(kmsd, svc["name"], spki_sha256=fp)
    path = "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"])
    with requests.Session() as s:
        s.trust_env = False
        r = call(kmsd, "POST", path, cert="svc-revoke", body={}, session=s)
        assert r.status_code == 200, r.text
        r = call(kmsd, "POST", "/v1/sys/principals/%s/certs/revoke" % svc["name"],
                 token=kmsd.admin_token, body={"spki_sha256": fp})
        assert r.status_code == 200, r.text
        # same kept-alive connection: refused at once, no cache
        r = call(kmsd, "POST", path, cert="svc-revoke", body={}, session=s)
        assert r.status_code == 403, r.text
        assert r.json()["errors"] == ["client certificate is not mapped to a principal"]
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs/revoke" % svc["name"],
             token=kmsd.admin_token, body={"spki_sha256": fp})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("body,status", [
    (None, 400),
    ({}, 400),
    ({"spki_sha256": "abc"}, 400),
    ({"spki_sha256": "g" * 64}, 400),
    ({"spki_sha256": "a" * 65}, 400),
    ({"subject": ""}, 400),
    ({"subject": "CN=x\nO=y"}, 400),
    ({"subject": "CN=" + "x" * 1100}, 400),
    ({"certificate": "not a pem"}, 400),
    ({"spki_sha256": "a" * 64, "subject": "CN=x"}, 400),
    ({"fingerprint": "a" * 64}, 400),
])
def test_bad_mapping_bodies(kmsd, svc, body, status):
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs" % svc["name"], token=kmsd.admin_token,
             body=body)
    assert r.status_code == status, r.text
    assert r.json()["errors"]


def test_mapping_needs_an_existing_principal_and_an_admin(kmsd, svc):
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs" % uniq("ghost"), token=kmsd.admin_token,
             body={"spki_sha256": "a" * 64})
    assert r.status_code == 404, r.text
    # a service may not map certificates, not even to itself
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs" % svc["name"], token=svc["token"],
             body={"spki_sha256": "b" * 64})
    assert r.status_code == 403, r.text
    r = call(kmsd, "GET", "/v1/sys/principals/%s/certs" % svc["name"], token=svc["token"])
    assert r.status_code == 403, r.text


# ---- clients: kmsctl and libkmsclient with a certificate and no token --------------------

def _client_env(kmsd, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KMS_", "VAULT_", "XDG_CONFIG"))}
    env.update(HOME=str(tmp_path), KMS_ADDR=kmsd.url, KMS_CACERT=kmsd.ca)
    env.update(extra)
    return env


def _bin(name):
    from conftest import REPO, kmsd_bin
    if name == "kmsctl":
        return os.environ.get("KMSCTL_BIN", os.path.join(REPO, "build", "kmsctl"))
    return os.environ.get("KMSC_ITEST_BIN",
                          os.path.join(os.path.dirname(kmsd_bin()), "tests", "kmsc_itest"))


@pytest.fixture(scope="module")
def cli_svc(kmsd, svc):
    _make(CERTS, "svc-cli")
    map_cert(kmsd, svc["name"], subject=subject("svc-cli"))
    return svc


def test_kmsctl_datakey_with_cert_flags(kmsd, cli_svc, tmp_path):
    cert, key = pair("svc-cli")
    r = subprocess.run([_bin("kmsctl"), "--client-cert", cert, "--client-key", key,
                        "--format", "json", "datakey", cli_svc["tenant"], cli_svc["key"]],
                       env=_client_env(kmsd, tmp_path), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ciphertext"].startswith("vault:v") and d["plaintext"]


@pytest.mark.parametrize("prefix", ["KMS", "VAULT"])
def test_kmsctl_datakey_with_cert_env(kmsd, cli_svc, tmp_path, prefix):
    cert, key = pair("svc-cli")
    env = _client_env(kmsd, tmp_path, **{prefix + "_CLIENT_CERT": cert,
                                         prefix + "_CLIENT_KEY": key})
    r = subprocess.run([_bin("kmsctl"), "--format", "json", "datakey", cli_svc["tenant"],
                        cli_svc["key"], "--wrapped"], env=env, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ciphertext"].startswith("vault:v")


def test_kmsctl_cert_errors(kmsd, cli_svc, tmp_path):
    cert, key = pair("svc-cli")
    loose = str(tmp_path / "loose.key")
    shutil.copyfile(key, loose)
    os.chmod(loose, 0o644)
    r = subprocess.run([_bin("kmsctl"), "--client-cert", cert, "--client-key", loose,
                        "datakey", cli_svc["tenant"], cli_svc["key"]],
                       env=_client_env(kmsd, tmp_path), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr
    r = subprocess.run([_bin("kmsctl"), "--client-key", key, "datakey", cli_svc["tenant"],
                        cli_svc["key"]], env=_client_env(kmsd, tmp_path), capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "--client-cert" in r.stderr, r.stderr
    # an unmapped certificate: the server's 403 and its message
    ucert, ukey = pair("svc-unmapped")
    r = subprocess.run([_bin("kmsctl"), "--client-cert", ucert, "--client-key", ukey,
                        "datakey", cli_svc["tenant"], cli_svc["key"]],
                       env=_client_env(kmsd, tmp_path), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    assert "kmsctl: 403 client certificate is not mapped to a principal" in r.stderr
    # a certificate of another CA: the TLS handshake fails (exit 3, unreachable)
    rcert, rkey = pair("rogue")
    r = subprocess.run([_bin("kmsctl"), "--client-cert", rcert, "--client-key", rkey,
                        "datakey", cli_svc["tenant"], cli_svc["key"]],
                       env=_client_env(kmsd, tmp_path), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 3, (r.returncode, r.stderr)


def test_kmsctl_manages_cert_mappings(kmsd, tmp_path):
    name = uniq("svc")
    kmsd.create_principal(name, "service")
    _make(CERTS, "svc-ctl")
    env = _client_env(kmsd, tmp_path)
    base = [_bin("kmsctl"), "--token-file", kmsd.admin_token_file]
    r = subprocess.run(base + ["principal", "cert-add", name, "--cert", pair("svc-ctl")[0]],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["principal", "cert-add", name, "--subject", "CN=x,O=y"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["principal", "cert-list", name], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert spki_sha256("svc-ctl") in r.stdout and "CN=x,O=y" in r.stdout, r.stdout
    r = subprocess.run(base + ["principal", "cert-revoke", name, "--spki",
                               spki_sha256("svc-ctl")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["--format", "json", "principal", "cert-list", name], env=env,
                       capture_output=True, text=True, timeout=60)
    assert [c["value"] for c in json.loads(r.stdout)["certs"]] == ["CN=x,O=y"], r.stdout
    r = subprocess.run(base + ["principal", "cert-add", name, "--spki", "aa", "--subject", "b"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr


def test_libkmsclient_with_cert_and_no_token(kmsd, cli_svc, tmp_path):
    cert, key = pair("svc-cli")
    env = _client_env(kmsd, tmp_path, KMS_CLIENT_CERT=cert, KMS_CLIENT_KEY=key)
    r = subprocess.run([_bin("kmsc_itest"), "roundtrip", cli_svc["tenant"], cli_svc["key"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    w1, w2 = r.stdout.split()
    assert w1.startswith("vault:v") and w2.startswith("vault:v")
    # with the principal's own token as well: allowed (the same principal)
    tf = str(tmp_path / "own.token")
    fd = os.open(tf, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (cli_svc["own_token"] + "\n").encode())
    os.close(fd)
    env["KMS_TOKEN_FILE"] = tf
    r = subprocess.run([_bin("kmsc_itest"), "roundtrip", cli_svc["tenant"], cli_svc["key"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_audit_log_with_cert_records_verifies(kmsd, tmp_path):
    """Records with auth_method cert and client_cert_spki keep the chain verifiable and
    searchable."""
    r = subprocess.run([_bin("kmsctl"), "audit", "verify", "--pubkey",
                        kmsd.audit_path + ".pub.pem", kmsd.audit_path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    r = subprocess.run([_bin("kmsctl"), "audit", "search", "--format", "json", "--outcome",
                        "deny", kmsd.audit_path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "client certificate is not mapped to a principal" in r.stdout


def _short_lived(name, seconds):
    """A client certificate of the client CA valid from a minute ago until `seconds`
    from now (openssl ca: x509 -days cannot say seconds)."""
    import datetime
    import time
    work = tempfile.mkdtemp(dir=CERTS)
    os.mkdir(os.path.join(work, "db"))
    open(os.path.join(work, "db", "index.txt"), "w").close()
    with open(os.path.join(work, "db", "serial"), "w") as f:
        f.write("%032x\n" % int.from_bytes(os.urandom(15), "big"))
    with open(os.path.join(work, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = c\n[c]\ndatabase = db/index.txt\nnew_certs_dir = db\n"
                "serial = db/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                "x509_extensions = ext\n[p]\ncommonName = supplied\n"
                "organizationName = optional\n[ext]\nbasicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n")
    cert, key = pair(name)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out",
                    os.path.join(work, "c.csr"), "-subj", "/O=kmsd development/CN=" + name],
                   check=True, capture_output=True, cwd=work)
    now = datetime.datetime.now(datetime.timezone.utc)
    fmt = "%y%m%d%H%M%SZ"
    end = now + datetime.timedelta(seconds=seconds)
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", CLIENT_CA,
                    "-keyfile", os.path.join(CERTS, "client-ca.key"), "-in", "c.csr",
                    "-out", cert, "-preserveDN", "-startdate",
                    (now - datetime.timedelta(seconds=60)).strftime(fmt),
                    "-enddate", end.strftime(fmt)],
                   check=True, capture_output=True, cwd=work)
    return end.timestamp()


def test_certificate_expiring_on_a_kept_alive_connection(kmsd, svc):
    import time
    name = "svc-short-%d" % os.getpid()
    not_after = _short_lived(name, 6)
    map_cert(kmsd, svc["name"], subject=subject(name))
    path = "/v1/%s/datakey/plaintext/%s" % (svc["tenant"], svc["key"])
    with requests.Session() as s:
        s.trust_env = False
        r = call(kmsd, "POST", path, cert=name, body={}, session=s)
        assert r.status_code == 200, r.text
        time.sleep(max(0, not_after - time.time()) + 1.5)
        # the same connection is closed instead of answered; the new handshake that
        # requests then makes is refused: either way, no answer
        with pytest.raises(requests.exceptions.RequestException):
            call(kmsd, "POST", path, cert=name, body={}, session=s)
    assert "expired on a kept-alive connection" in kmsd.stderr()


def _lookup_self_on(kmsd, ctx, session=None):
    """GET lookup-self on a fresh connection (resuming `session` when given): the HTTP
    answer, the connection's session and whether it was resumed."""
    sock = socket.create_connection(("127.0.0.1", kmsd.port), timeout=15)
    try:
        s = ctx.wrap_socket(sock, server_hostname="127.0.0.1", session=session)
        s.sendall(b"GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        sess, reused = s.session, s.session_reused
        s.close()
        return data, sess, reused
    finally:
        sock.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_resumed_session_keeps_the_certificate(kmsd, svc, version):
    """A session resumed from a ticket (tls_session_tickets) carries no Certificate
    message: the principal must still be the certificate's, and removing the mapping
    must still refuse the next request."""
    name = "svc-resume"
    map_cert(kmsd, svc["name"], spki_sha256=spki_sha256(name))
    ctx = ssl.create_default_context(cafile=kmsd.ca)
    ctx.load_cert_chain(*pair(name))
    ctx.minimum_version = ctx.maximum_version = version
    data, sess, reused = _lookup_self_on(kmsd, ctx)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert not reused
    data, _, reused = _lookup_self_on(kmsd, ctx, session=sess)
    assert reused, "the session was not resumed"
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert svc["name"].encode() in data
    r = call(kmsd, "POST", "/v1/sys/principals/%s/certs/revoke" % svc["name"],
             token=kmsd.admin_token, body={"spki_sha256": spki_sha256(name)})
    assert r.status_code == 200, r.text
    data, _, reused = _lookup_self_on(kmsd, ctx, session=sess)
    assert data.startswith(b"HTTP/1.1 403"), data[:300]
