"""An unmodified Vault client (python3-hvac 0.11.2, hvac.api.secrets_engines.transit)
against kmsd, with the tenant as the mount point."""

import base64

import hvac
import hvac.exceptions
import pytest
import requests

from conftest import uniq


def client(kmsd, token):
    s = requests.Session()
    s.trust_env = False
    return hvac.Client(url=kmsd.url, token=token, verify=kmsd.ca, session=s)


@pytest.fixture(scope="module")
def hv(kmsd):
    t = kmsd.create_tenant(uniq("hv"))
    tok = kmsd.service([t])

    class H:
        pass

    h = H()
    h.tenant = t
    h.admin = client(kmsd, kmsd.admin_token)
    h.svc = client(kmsd, tok)
    h.key = "hvac-key"
    return h


def b64s(b):
    return base64.b64encode(b).decode()


def test_01_create_key(hv):
    r = hv.admin.secrets.transit.create_key(name=hv.key, key_type="aes256-gcm96",
                                            mount_point=hv.tenant)
    # 200 with a body is returned as a dict by hvac's JSONAdapter
    assert isinstance(r, dict), r
    assert r["data"]["name"] == hv.key
    assert r["data"]["type"] == "aes256-gcm96"
    assert r["data"]["latest_version"] == 1
    r = hv.admin.secrets.transit.create_key(name="hvac-key-2", mount_point=hv.tenant)
    assert r["data"]["name"] == "hvac-key-2"


def test_02_create_existing_key_raises(hv):
    # hvac 0.11.2 has no exception class for 409: UnexpectedError carries the errors
    with pytest.raises(hvac.exceptions.VaultError) as e:
        hv.admin.secrets.transit.create_key(name=hv.key, mount_point=hv.tenant)
    assert "already exists" in str(e.value)


def test_03_generate_data_key_and_decrypt(hv):
    for bits, n in ((128, 16), (256, 32), (512, 64)):
        r = hv.svc.secrets.transit.generate_data_key(name=hv.key, key_type="plaintext",
                                                     bits=bits, mount_point=hv.tenant)
        dek = base64.b64decode(r["data"]["plaintext"])
        assert len(dek) == n
        ct = r["data"]["ciphertext"]
        assert ct.startswith("vault:v1:")
        d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=ct,
                                                mount_point=hv.tenant)
        assert base64.b64decode(d["data"]["plaintext"]) == dek


def test_04_generate_wrapped_data_key(hv):
    r = hv.svc.secrets.transit.generate_data_key(name=hv.key, key_type="wrapped",
                                                 mount_point=hv.tenant)
    assert "plaintext" not in r["data"]
    d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=r["data"]["ciphertext"],
                                            mount_point=hv.tenant)
    assert len(base64.b64decode(d["data"]["plaintext"])) == 32


def test_05_encrypt_decrypt(hv):
    r = hv.svc.secrets.transit.encrypt_data(name=hv.key, plaintext=b64s(b"hvac single"),
                                            mount_point=hv.tenant)
    ct = r["data"]["ciphertext"]
    assert ct.startswith("vault:v1:")
    d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=ct, mount_point=hv.tenant)
    assert base64.b64decode(d["data"]["plaintext"]) == b"hvac single"


# hvac 0.11.2 always sends the single-item field next to batch_input:
# encrypt_data -> {"plaintext": null, "batch_input": [...]},
# decrypt_data -> {"ciphertext": null, "batch_input": [...]}.
BATCH_PTS = [b"batch one", b"batch two two", b"batch three three three"]


def test_06a_encrypt_data_batch(hv):
    r = hv.svc.secrets.transit.encrypt_data(
        name=hv.key, plaintext=None, batch_input=[{"plaintext": b64s(p)} for p in BATCH_PTS],
        mount_point=hv.tenant)
    res = r["data"]["batch_results"]
    assert len(res) == 3
    assert all(x["ciphertext"].startswith("vault:v1:") for x in res)
    # in order: each decrypts (singly) to its own plaintext
    for x, p in zip(res, BATCH_PTS):
        d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=x["ciphertext"],
                                                mount_point=hv.tenant)
        assert base64.b64decode(d["data"]["plaintext"]) == p


def test_06b_decrypt_data_batch(kmsd, hv):
    cts = []
    for p in BATCH_PTS:
        e = hv.svc.secrets.transit.encrypt_data(name=hv.key, plaintext=b64s(p),
                                                mount_point=hv.tenant)
        cts.append(e["data"]["ciphertext"])
    d = hv.svc.secrets.transit.decrypt_data(
        name=hv.key, ciphertext=None, batch_input=[{"ciphertext": c} for c in cts],
        mount_point=hv.tenant)
    assert [base64.b64decode(x["plaintext"]) for x in d["data"]["batch_results"]] == BATCH_PTS


def test_07_rotate_and_rewrap(hv):
    old = hv.svc.secrets.transit.encrypt_data(name=hv.key, plaintext=b64s(b"before rotation"),
                                              mount_point=hv.tenant)["data"]["ciphertext"]
    assert old.startswith("vault:v1:")
    r = hv.admin.secrets.transit.rotate_key(name=hv.key, mount_point=hv.tenant)
    assert r["data"]["latest_version"] == 2
    new = hv.svc.secrets.transit.rewrap_data(name=hv.key, ciphertext=old, mount_point=hv.tenant)
    ct2 = new["data"]["ciphertext"]
    assert ct2.startswith("vault:v2:")
    d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=ct2, mount_point=hv.tenant)
    assert base64.b64decode(d["data"]["plaintext"]) == b"before rotation"
    d = hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext=old, mount_point=hv.tenant)
    assert base64.b64decode(d["data"]["plaintext"]) == b"before rotation"
    e = hv.svc.secrets.transit.encrypt_data(name=hv.key, plaintext=b64s(b"after"),
                                            mount_point=hv.tenant)
    assert e["data"]["ciphertext"].startswith("vault:v2:")


def test_08_read_key(hv):
    for c in (hv.admin, hv.svc):
        r = c.secrets.transit.read_key(name=hv.key, mount_point=hv.tenant)
        d = r["data"]
        assert d["name"] == hv.key
        assert d["latest_version"] == 2
        assert set(d["keys"]) == {"1", "2"}
        assert d["type"] == "aes256-gcm96"
        assert d["exportable"] is False and d["derived"] is False
        assert d["supports_encryption"] is True and d["supports_decryption"] is True


def test_09_list_keys(hv):
    for c in (hv.admin, hv.svc):
        r = c.secrets.transit.list_keys(mount_point=hv.tenant)
        assert sorted(r["data"]["keys"]) == ["hvac-key", "hvac-key-2"]


def test_10_service_cannot_create_or_rotate(hv):
    with pytest.raises(hvac.exceptions.Forbidden):
        hv.svc.secrets.transit.create_key(name="nope", mount_point=hv.tenant)
    with pytest.raises(hvac.exceptions.Forbidden):
        hv.svc.secrets.transit.rotate_key(name=hv.key, mount_point=hv.tenant)


def test_11_admin_gets_no_data_key(hv):
    with pytest.raises(hvac.exceptions.Forbidden):
        hv.admin.secrets.transit.generate_data_key(name=hv.key, key_type="plaintext",
                                                   mount_point=hv.tenant)


def test_12_bad_ciphertext_is_invalid_request(hv):
    with pytest.raises(hvac.exceptions.InvalidRequest) as e:
        hv.svc.secrets.transit.decrypt_data(name=hv.key, ciphertext="vault:v1:AAAA",
                                            mount_point=hv.tenant)
    assert e.value.errors


def test_13_lookup_self(kmsd, hv):
    r = hv.svc.lookup_token()
    assert r["data"]["policies"] == ["service"]
    assert hv.svc.is_authenticated() is True
    assert client(kmsd, "bogus").is_authenticated() is False
