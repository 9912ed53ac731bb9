"""Audit log (docs/API.md, Conventions: Audit): one JSON record per call that touches a
tenant, key, principal or token, allowed or denied, on disk before the answer; never
plaintext, DEKs or tokens. Operation names are kms_op_name() (kms/base/op.c)."""

import base64
import json

import pytest

from conftest import b64, uniq

FIELDS = {"seq", "time", "node", "request_id", "principal", "auth_method", "remote_addr",
          "operation", "tenant", "key", "version", "outcome", "status", "reason"}

SECRET = b"PHI-SECRET: patient 4711 has condition Z99.89"
CTX_VALUE = "ctx-value-must-not-be-logged-in-clear-8812"
BAD_TOKEN = "bogus-token-value-that-must-not-be-logged-55"


def read_audit(kmsd):
    with open(kmsd.audit_path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n"), "audit log ends with a partial line"
    recs = []
    for i, line in enumerate(data.decode("utf-8").splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            pytest.fail("audit line %d is not JSON: %r" % (i + 1, line[:200]))
        assert isinstance(rec, dict), line
        recs.append(rec)
    return data, recs


class Script:
    """Runs calls with unique X-Request-Ids and remembers what each must have logged."""

    def __init__(self, kmsd):
        self.kmsd = kmsd
        self.expect = []  # (request_id, dict of expected fields)
        self.n = 0

    def call(self, method, path, token=None, body=None, want_status=200, **exp):
        self.n += 1
        rid = "audit-%03d-%s" % (self.n, exp.get("operation", "x").replace(".", "_"))
        r = self.kmsd.request(method, path, token=token, json_body=body,
                              headers={"X-Request-Id": rid})
        assert r.status_code == want_status, (path, r.status_code, r.text)
        assert r.headers.get("X-Request-Id") == rid
        # on disk before the answer: the record must be there now
        _, recs = read_audit(self.kmsd)
        assert any(x.get("request_id") == rid for x in recs), \
            "no audit record for %s right after its answer" % rid
        exp["status"] = want_status
        self.expect.append((rid, exp))
        return r


@pytest.fixture(scope="module")
def run(kmsd):
    data0, recs0 = read_audit(kmsd) if _exists(kmsd.audit_path) else (b"", [])
    s = Script(kmsd)
    adm = kmsd.admin_token
    t, t2 = uniq("aud"), uniq("aud2")
    k = "records"
    p = uniq("svc")

    s.call("POST", "/v1/sys/tenants/" + t, adm, {"retention": "phi"},
           operation="tenant.create", tenant=t, principal="admin", outcome="allow")
    s.call("POST", "/v1/sys/tenants/" + t2, adm, {"retention": "non-phi"},
           operation="tenant.create", tenant=t2, principal="admin", outcome="allow")
    s.call("POST", "/v1/%s/keys/%s" % (t, k), adm, {},
           operation="key.create", tenant=t, key=k, principal="admin", outcome="allow")
    s.call("POST", "/v1/%s/keys/%s" % (t2, k), adm, {},
           operation="key.create", tenant=t2, key=k, principal="admin", outcome="allow")
    s.call("POST", "/v1/sys/principals/" + p, adm, {"role": "service", "tenants": [t]},
           operation="principal.create", principal="admin", outcome="allow")
    r = s.call("POST", "/v1/sys/principals/%s/tokens" % p, adm, {},
               operation="token.create", principal="admin", outcome="allow")
    tok = r.json()["auth"]["client_token"]
    accessor = r.json()["auth"]["accessor"]

    r = s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), tok, {"bits": 256},
               operation="datakey", tenant=t, key=k, principal=p, outcome="allow", version=1)
    dek_b64 = r.json()["data"]["plaintext"]
    dk_ct = r.json()["data"]["ciphertext"]
    r = s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), tok, {"bits": 512},
               operation="datakey", tenant=t, key=k, principal=p, outcome="allow", version=1)
    dek2_b64 = r.json()["data"]["plaintext"]
    r = s.call("POST", "/v1/%s/encrypt/%s" % (t, k), tok,
               {"plaintext": b64(SECRET), "encryption_context": {"field": CTX_VALUE}},
               operation="encrypt", tenant=t, key=k, principal=p, outcome="allow", version=1)
    ct = r.json()["data"]["ciphertext"]
    s.call("POST", "/v1/%s/decrypt/%s" % (t, k), tok,
           {"ciphertext": ct, "encryption_context": {"field": CTX_VALUE}},
           operation="decrypt", tenant=t, key=k, principal=p, outcome="allow", version=1)
    s.call("POST", "/v1/%s/decrypt/%s" % (t, k), tok, {"ciphertext": dk_ct},
           operation="decrypt", tenant=t, key=k, principal=p, outcome="allow", version=1)
    # a ciphertext that does not authenticate: allowed by policy, failed -> error/400
    s.call("POST", "/v1/%s/decrypt/%s" % (t, k), tok, {"ciphertext": ct}, want_status=400,
           operation="decrypt", tenant=t, key=k, principal=p, outcome="error")
    # denied calls
    s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), None, {}, want_status=401,
           operation="datakey", tenant=t, key=k, principal=None, outcome="deny")
    s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), BAD_TOKEN, {}, want_status=403,
           operation="datakey", tenant=t, key=k, principal=None, outcome="deny")
    s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), adm, {}, want_status=403,
           operation="datakey", tenant=t, key=k, principal="admin", outcome="deny")
    s.call("POST", "/v1/%s/decrypt/%s" % (t, k), adm, {"ciphertext": ct}, want_status=403,
           operation="decrypt", tenant=t, key=k, principal="admin", outcome="deny")
    s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t2, k), tok, {}, want_status=403,
           operation="datakey", tenant=t2, key=k, principal=p, outcome="deny")
    s.call("POST", "/v1/%s/keys/%s" % (t, "newkey"), tok, {}, want_status=403,
           operation="key.create", tenant=t, key="newkey", principal=p, outcome="deny")
    s.call("POST", "/v1/sys/tenants/" + uniq("nope"), tok, {}, want_status=403,
           operation="tenant.create", principal=p, outcome="deny")
    # rotate, rewrap, read, batch
    s.call("POST", "/v1/%s/keys/%s/rotate" % (t, k), adm, {},
           operation="key.rotate", tenant=t, key=k, principal="admin", outcome="allow")
    s.call("POST", "/v1/%s/rewrap/%s" % (t, k), tok, {"ciphertext": dk_ct},
           operation="rewrap", tenant=t, key=k, principal=p, outcome="allow", version=2)
    s.call("GET", "/v1/%s/keys/%s" % (t, k), tok, None,
           operation="key.read", tenant=t, key=k, principal=p, outcome="allow")
    r = s.call("POST", "/v1/%s/encrypt/%s" % (t, k), tok,
               {"batch_input": [{"plaintext": b64(SECRET)}] * 3},
               operation="encrypt", tenant=t, key=k, principal=p, outcome="allow")
    # revoke, then the revoked token is refused
    s.call("POST", "/v1/sys/tokens/revoke", adm, {"accessor": accessor},
           operation="token.revoke", principal="admin", outcome="allow")
    s.call("POST", "/v1/%s/datakey/plaintext/%s" % (t, k), tok, {}, want_status=403,
           operation="datakey", tenant=t, key=k, outcome="deny")

    data, recs = read_audit(kmsd)
    assert data.startswith(data0), "the audit log was rewritten, not appended to"

    class Run:
        pass

    x = Run()
    x.script, x.recs, x.new = s, recs, recs[len(recs0):]
    x.data = data
    x.secrets = {
        "dek (base64)": dek_b64, "dek2 (base64)": dek2_b64,
        "dek (hex)": base64.b64decode(dek_b64).hex(),
        "plaintext": SECRET.decode(), "plaintext (base64)": b64(SECRET),
        "admin token": adm, "service token": tok, "bad token": BAD_TOKEN,
        "encryption_context value": CTX_VALUE,
    }
    x.raw_secrets = {"dek (raw)": base64.b64decode(dek_b64),
                     "dek2 (raw)": base64.b64decode(dek2_b64)}
    x.principal = p
    x.revoked_rid = s.expect[-1][0]
    return x


def _exists(path):
    try:
        open(path, "rb").close()
        return True
    except OSError:
        return False


def test_one_record_per_call(run):
    ours = {rid for rid, _ in run.script.expect}
    for rid, _ in run.script.expect:
        n = sum(1 for r in run.recs if r.get("request_id") == rid)
        assert n == 1, "%d audit records for %s (want 1)" % (n, rid)
    # every new record that names a request belongs to one of our calls
    stray = [r for r in run.new if r.get("request_id") and r["request_id"] not in ours]
    assert not stray, "audit records for calls not made by the script: %s" % stray[:3]


def test_records_have_every_field(run):
    for r in run.new:
        if not r.get("request_id"):
            continue
        missing = FIELDS - set(r)
        assert not missing, "record %s lacks %s" % (r, sorted(missing))


@pytest.mark.parametrize("field", ["operation", "tenant", "key", "principal", "outcome",
                                   "status", "version"])
def test_record_fields_right(run, field):
    by_id = {r.get("request_id"): r for r in run.recs}
    wrong = []
    for rid, exp in run.script.expect:
        if field not in exp:
            continue
        got = by_id[rid].get(field)
        want = exp[field]
        if field in ("principal", "tenant", "key") and want is None:
            ok = got in (None, "")
        else:
            ok = got == want
        if not ok:
            wrong.append("%s: %s=%r, want %r" % (rid, field, got, want))
    assert not wrong, "\n".join(wrong)


def test_revoked_token_principal(run):
    rec = [r for r in run.recs if r.get("request_id") == run.revoked_rid][0]
    assert rec["outcome"] == "deny" and rec["status"] == 403
    assert rec["principal"] in (None, "", run.principal)


def test_record_context(kmsd, run):
    for r in run.new:
        if not r.get("request_id"):
            continue
        assert r["node"] == kmsd.node_id, r
        assert r["auth_method"] in ("token", None), r
        if r["principal"]:
            assert r["auth_method"] == "token", r
        assert str(r["remote_addr"]).startswith("127.0.0.1"), r
        assert r["time"], r
        assert r["outcome"] in ("allow", "deny", "error"), r
        if r["outcome"] == "allow":
            assert r["status"] == 200, r
        else:
            assert r["status"] >= 400, r
        if r["outcome"] != "allow":
            assert isinstance(r["reason"], str) and r["reason"], \
                "a refused call should say why: %s" % r


def test_seq_is_gapless(run):
    seqs = [r["seq"] for r in run.recs]
    assert all(isinstance(s, int) for s in seqs)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def test_no_secrets_in_audit(run):
    text = run.data.decode("utf-8")
    leaked = [name for name, v in run.secrets.items() if v and v in text]
    leaked += [name for name, v in run.raw_secrets.items() if v in run.data]
    assert not leaked, "audit log contains: %s" % leaked


def test_audit_file_mode(kmsd, run):
    import os
    import stat
    mode = stat.S_IMODE(os.stat(kmsd.audit_path).st_mode)
    assert mode & 0o077 == 0, "audit log mode %o is readable by others" % mode
