"""Break-glass (docs/API.md "Break-glass"): a principal the policy designates
(breakglass.activate on oncall-* for bg-* tenants) takes a time-limited grant with a
mandatory reason; during it, it may decrypt and rewrap in the grant's tenant and key
scope although its rules refuse it, each such call audited with the grant id and
break_glass: true; the grant is an alert in the audit log and in syslog, counted in
metrics, listed, and reviewed afterwards by admins other than the grantee. After expiry
(test clock) the grant stops working at once."""

import json
import os
import re
import socket
import tempfile
import time

from conftest import uniq

MAX_TTL = 300

POLICY = {
    "version": 2,
    "description": "test_break_glass: built-in rules plus an on-call break-glass designation",
    "rules": [
        {"name": "health-is-public", "effect": "allow", "principals": ["*"], "operations": ["sys.health"]},
        {"name": "lookup-own-token", "effect": "allow", "principals": ["role:admin", "role:service"],
         "operations": ["token.lookup_self"]},
        {"name": "admin-no-key-material", "effect": "deny", "principals": ["role:admin"],
         "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "plain-admins-no-break-glass", "effect": "deny", "principals": ["admin", "adm-*"],
         "operations": ["breakglass.activate"]},
        {"name": "admin-management", "effect": "allow", "principals": ["role:admin"], "operations": ["*"]},
        {"name": "oncall-may-break-glass", "effect": "allow", "principals": ["oncall-*"], "tenants": ["bg-*"],
         "operations": ["breakglass.activate"]},
        {"name": "service-data-plane", "effect": "allow", "principals": ["role:service"],
         "tenants": ["@scope"], "operations": ["datakey", "encrypt", "decrypt", "rewrap"]},
        {"name": "service-read", "effect": "allow", "principals": ["role:service"], "tenants": ["@scope"],
         "operations": ["key.read", "key.list"]},
    ],
}

_DIR = tempfile.mkdtemp(prefix="kmsd-bg-")
POLICY_FILE = os.path.join(_DIR, "policy.json")
with open(POLICY_FILE, "w") as _f:
    json.dump(POLICY, _f, indent=2)

COLLECTOR = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
COLLECTOR.bind(("127.0.0.1", 0))
COLLECTOR.settimeout(0.2)

KMSD_EXTRA_OPTS = [("policy_file", POLICY_FILE), ("break_glass_max_ttl", str(MAX_TTL)),
                   ("audit_syslog", "udp:127.0.0.1:%d" % COLLECTOR.getsockname()[1])]
KMSD_TEST_CLOCK = True

HEADER = re.compile(r"^<(\d+)>1 (\S+) (\S+) kmsd (\d+) audit - (\{.*\})$")


def drain():
    msgs = []
    while True:
        try:
            msgs.append(COLLECTOR.recv(70000).decode())
        except socket.timeout:
            return msgs


class World:
    pass


_world = {}


def world(kmsd):
    if "w" in _world:
        return _world["w"]
    w = World()
    w.tenant = kmsd.create_tenant(uniq("bg"))
    w.other = kmsd.create_tenant(uniq("bg"))
    w.key = kmsd.create_key(w.tenant, uniq("k-phi"))
    w.key2 = kmsd.create_key(w.tenant, uniq("k-lab"))
    w.okey = kmsd.create_key(w.other, uniq("k-phi"))
    w.svc = kmsd.service([w.tenant, w.other])
    w.oncall_name = uniq("oncall-svc")
    kmsd.create_principal(w.oncall_name, role="service", tenants=[])
    w.oncall = kmsd.create_token(w.oncall_name)[0]
    w.oncall_admin_name = uniq("oncall-adm")
    kmsd.create_principal(w.oncall_admin_name, role="admin")
    w.oncall_admin = kmsd.create_token(w.oncall_admin_name)[0]
    w.names = {}
    for who in ("b", "c"):
        name = uniq("adm-" + who)
        kmsd.create_principal(name, role="admin")
        setattr(w, who, kmsd.create_token(name)[0])
        w.names[who] = name
    _world["w"] = w
    return w


def ciphertext(kmsd, w, tenant, key, pt=b"patient 1234"):
    import base64
    r = kmsd.encrypt(w.svc, tenant, key, plaintext=base64.b64encode(pt).decode())
    assert r.status_code == 200, r.text
    return r.json()["data"]["ciphertext"]


def activate(kmsd, token, **body):
    return kmsd.post("/v1/sys/break-glass", body, token=token)


def audit_records(kmsd):
    out = []
    with open(kmsd.audit_path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def metric(kmsd, name):
    r = kmsd.get("/v1/sys/metrics", token=kmsd.admin_token, params={"format": "prometheus"})
    assert r.status_code == 200, r.text
    m = re.search(r"^%s (\d+)$" % name, r.text, re.M)
    assert m, "no %s in metrics" % name
    return int(m.group(1))


def test_activation_refusals(kmsd):
    w = world(kmsd)
    for body in ({"tenant": w.tenant}, {"tenant": w.tenant, "reason": ""}, {"tenant": w.tenant, "reason": "  "},
                 {"tenant": w.tenant, "reason": "x", "ttl": MAX_TTL + 1},
                 {"tenant": w.tenant, "reason": "x", "ttl": 0}, {"tenant": w.tenant, "reason": "x", "key": "a[b]"},
                 {"tenant": w.tenant, "reason": "x", "bogus": 1}, {"tenant": w.tenant, "reason": 5}):
        r = activate(kmsd, w.oncall, **body)
        assert r.status_code == 400, (body, r.text)
    # without a tenant the designation (tenants bg-*) does not match: refused by the policy
    # before the body is looked at; an admin designated for every tenant gets the 400
    assert activate(kmsd, w.oncall, reason="ehr down").status_code == 403
    r = activate(kmsd, w.oncall_admin, reason="ehr down")
    assert r.status_code == 400 and "tenant" in r.text, r.text
    r = kmsd.post("/v1/sys/break-glass", None, token=w.oncall_admin, data="")
    assert r.status_code == 400, r.text
    # not designated: plain admins (explicit deny) and other services (default deny)
    assert activate(kmsd, w.b, tenant=w.tenant, reason="x").status_code == 403
    assert activate(kmsd, w.svc, tenant=w.tenant, reason="x").status_code == 403
    # designated only for bg-* tenants
    t = kmsd.create_tenant()
    assert activate(kmsd, w.oncall, tenant=t, reason="x").status_code == 403
    r = kmsd.get("/v1/sys/break-glass", token=kmsd.admin_token)
    assert r.status_code == 200 and r.json()["data"]["grants"] == []


def test_grant_allows_decrypt_until_expiry(kmsd):
    w = world(kmsd)
    ct = ciphertext(kmsd, w, w.tenant, w.key)
    ct2 = ciphertext(kmsd, w, w.tenant, w.key2)
    oct_ = ciphertext(kmsd, w, w.other, w.okey)
    assert kmsd.decrypt(w.oncall, w.tenant, w.key, ciphertext=ct).status_code == 403
    a0 = metric(kmsd, "kmsd_break_glass_activations_total")
    d0 = metric(kmsd, "kmsd_break_glass_decrypts_total")
    drain()

    r = activate(kmsd, w.oncall, tenant=w.tenant, key="k-phi*", reason="EHR down, patient in ER", ttl=120)
    assert r.status_code == 200, r.text
    g = r.json()["data"]
    assert len(g["id"]) == 32 and g["expires"] - g["granted"] == 120 and g["key"] == "k-phi*"

    r = kmsd.decrypt(w.oncall, w.tenant, w.key, ciphertext=ct)
    assert r.status_code == 200, r.text
    r = kmsd.rewrap(w.oncall, w.tenant, w.key, ciphertext=ct)
    assert r.status_code == 200, r.text
    # outside the grant's key glob and tenant; and never more than decrypt/rewrap
    assert kmsd.decrypt(w.oncall, w.tenant, w.key2, ciphertext=ct2).status_code == 403
    assert kmsd.decrypt(w.oncall, w.other, w.okey, ciphertext=oct_).status_code == 403
    assert kmsd.datakey(w.oncall, w.tenant, w.key).status_code == 403
    assert kmsd.encrypt(w.oncall, w.tenant, w.key, plaintext="aGk=").status_code == 403
    # the scoped service's own decrypts are ordinary
    assert kmsd.decrypt(w.svc, w.tenant, w.key, ciphertext=ct).status_code == 200

    assert metric(kmsd, "kmsd_break_glass_activations_total") == a0 + 1
    assert metric(kmsd, "kmsd_break_glass_decrypts_total") == d0 + 2

    recs = audit_records(kmsd)
    act = [x for x in recs if x["operation"] == "breakglass.activate" and x.get("break_glass_grant") == g["id"]]
    assert len(act) == 1 and act[0]["alert"] is True and act[0]["severity"] == "alert"
    assert act[0]["principal"] == w.oncall_name and act[0]["outcome"] == "allow"
    assert act[0]["grant_tenant"] == w.tenant and act[0]["grant_key"] == "k-phi*"
    used = [x for x in recs if x.get("break_glass_grant") == g["id"] and x["operation"] in ("decrypt", "rewrap")]
    assert len(used) == 2 and all(x["break_glass"] is True and x["outcome"] == "allow" for x in used)
    assert all(g["id"] in x["reason"] for x in used)
    ordinary = [x for x in recs if x["operation"] == "decrypt" and x["principal"] != w.oncall_name]
    assert ordinary and all("break_glass" not in x for x in ordinary)

    time.sleep(0.3)
    alerts = []
    for m in drain():
        h = HEADER.match(m)
        if h and json.loads(h.group(5)).get("break_glass_grant") == g["id"] and \
                json.loads(h.group(5))["operation"] == "breakglass.activate":
            alerts.append(int(h.group(1)))
    assert alerts == [10 * 8 + 1], alerts  # authpriv.alert

    try:
        kmsd.set_clock(121)
        r = kmsd.decrypt(w.oncall, w.tenant, w.key, ciphertext=ct)
        assert r.status_code == 403, r.text
        assert kmsd.rewrap(w.oncall, w.tenant, w.key, ciphertext=ct).status_code == 403
    finally:
        kmsd.set_clock(0)
    r = kmsd.get("/v1/sys/break-glass", token=kmsd.admin_token)
    assert r.status_code == 200
    got = [x for x in r.json()["data"]["grants"] if x["id"] == g["id"]]
    assert len(got) == 1 and got[0]["principal"] == w.oncall_name
    assert got[0]["reason"] == "EHR down, patient in ER" and got[0]["reviews"] == []
    assert got[0]["reviewed"] is False and got[0]["reviews_required"] == 2


def test_reviews(kmsd):
    w = world(kmsd)
    r = activate(kmsd, w.oncall_admin, tenant=w.tenant, reason="restore drill")
    assert r.status_code == 200, r.text
    g = r.json()["data"]
    assert g["expires"] - g["granted"] == MAX_TTL  # default: the longest allowed
    # an admin grantee may now decrypt, which its rules (admin-no-key-material) refuse
    ct = ciphertext(kmsd, w, w.tenant, w.key)
    assert kmsd.decrypt(w.oncall_admin, w.tenant, w.key, ciphertext=ct).status_code == 200

    path = "/v1/sys/break-glass/%s/review" % g["id"]
    r = kmsd.post(path, {"verdict": "justified", "note": "mine"}, token=w.oncall_admin)
    assert r.status_code == 403, r.text
    assert "grantee" in r.text
    assert kmsd.post(path, {"verdict": "justified", "note": "ok"}, token=w.oncall).status_code == 403
    assert kmsd.post(path, {"verdict": "justified"}, token=w.b).status_code == 400
    assert kmsd.post(path, {"verdict": "maybe", "note": "x"}, token=w.b).status_code == 400
    assert kmsd.post("/v1/sys/break-glass/%s/review" % ("0" * 32), {"verdict": "justified", "note": "x"},
                     token=w.b).status_code == 404
    r = kmsd.post(path, {"verdict": "justified", "note": "drill was announced"}, token=w.b)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["reviewed"] is False and len(r.json()["data"]["reviews"]) == 1
    assert kmsd.post(path, {"verdict": "unjustified", "note": "again"}, token=w.b).status_code == 409
    r = kmsd.post(path, {"verdict": "unjustified", "note": "no ticket"}, token=w.c)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["reviewed"] is True
    assert [(x["principal"], x["verdict"]) for x in d["reviews"]] == [
        (w.names["b"], "justified"), (w.names["c"], "unjustified")]
    recs = [x for x in audit_records(kmsd)
            if x["operation"] == "breakglass.review" and x.get("break_glass_grant") == g["id"]]
    assert {(x["principal"], x["status"]) for x in recs} >= {
        (w.oncall_admin_name, 403), (w.names["b"], 200), (w.names["c"], 200), (w.names["b"], 409)}


def test_kmsctl_break_glass(kmsd, tmp_path):
    from test_kmsctl import Ctl, fails, write_secret
    w = world(kmsd)
    ctl = Ctl(kmsd, tmp_path)
    on = write_secret(tmp_path / "oncall.token", w.oncall)
    tb = write_secret(tmp_path / "b.token", w.b)

    ctl.run("break-glass", "activate", w.tenant, token=on, want=2)  # no --reason
    r = ctl.run("break-glass", "activate", w.tenant, "--reason", "x", "--ttl", "2h", token=on, want=1)
    fails(r, 400, "ttl")
    g = ctl.json("break-glass", "activate", w.tenant, "--reason", "EHR down (kmsctl)", "--key", "k-phi*",
                 "--ttl", "2m", token=on)
    assert g["expires"] - g["granted"] == 120 and g["key"] == "k-phi*"
    r = ctl.ok("break-glass", "list", token=ctl.admin)
    assert g["id"] in r.stdout and "EHR down (kmsctl)" in r.stdout
    ctl.run("break-glass", "review", g["id"], "--verdict", "justified", token=tb, want=2)  # no --note
    ctl.run("break-glass", "review", g["id"], "--verdict", "ok", "--note", "x", token=tb, want=2)
    r = ctl.run("break-glass", "review", g["id"], "--verdict", "justified", "--note", "x", token=on, want=1)
    fails(r, 403)
    d = ctl.json("break-glass", "review", g["id"], "--verdict", "justified", "--note", "INC-1", token=tb)
    assert [x["principal"] for x in d["reviews"]] == [w.names["b"]] and d["reviewed"] is False
    r = ctl.ok("break-glass", "list", token=ctl.admin)
    assert "1 of 2" in r.stdout
