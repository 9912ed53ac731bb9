"""GET /v1/sys/compliance and `kmsctl report compliance` (docs/API.md, docs/KMSCTL.md):
after a scripted set-up (a key past its rotation date through the test clock, legal
holds, a version pending destruction, tokens with and without expiry, a principal
whose name carries markup, written straight into the store) the JSON is asserted field
by field; the Markdown has every section; the HTML page renders in headless Chromium
with its sections and values, and the markup stays text."""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time

import pytest

from conftest import _BUILD, b64
from test_mfa import PERIOD, totp

KMSD_TEST_CLOCK = True
KMSD_SQLITE_ONLY = "edits rows in the SQLite file to age them"
KMSD_EXTRA_OPTS = [
    ("scheduler_interval", "86400"),  # no automatic rotation while the test looks
    ("audit_checkpoint_records", "5"),
    ("max_encryptions_per_version", "1000"),
]
DAY = 86400
EVIL = "<script>alert(1)</script>&\"'x"
SECTIONS = ["Key inventory", "Keys past their rotation date", "Destruction queue", "Legal holds",
            "Admins without MFA", "Tokens without expiry", "Principals by role",
            "Break-glass grants without review", "Audit chain"]


def kmsctl(kmsd, tmp, *args):
    tokf = os.path.join(tmp, "admin.tok")
    with open(tokf, "w") as f:
        f.write(kmsd.admin_token + "\n")
    os.chmod(tokf, 0o600)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp,
           "KMS_ADDR": kmsd.url, "KMS_CACERT": kmsd.ca}
    for k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return subprocess.run([os.path.join(_BUILD, "kmsctl"), "--token-file", tokf] + list(args),
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def setup(kmsd):
    s = {}
    # tenant a (phi): key "rot" rotates every 30 days; key "held" under a legal hold
    a = kmsd.create_tenant()
    rot = kmsd.create_key(a)
    kmsd.admin_post("/v1/%s/keys/%s/config" % (a, rot), {"auto_rotate_period": 30 * DAY})
    fresh = kmsd.create_key(a)
    kmsd.admin_post("/v1/%s/keys/%s/config" % (a, fresh), {"auto_rotate_period": 90 * DAY})
    held = kmsd.create_key(a)
    kmsd.admin_post("/v1/%s/keys/%s/legal-hold" % (a, held), {"hold": True, "reason": "litigation 17"})
    # tenant b (non-phi): version 1 of "gone" pending destruction in 7 days
    b = kmsd.create_tenant(retention="non-phi")
    gone = kmsd.create_key(b)
    svc_b = kmsd.service([b])
    assert kmsd.encrypt(svc_b, b, gone, plaintext=b64(b"x")).status_code == 200
    kmsd.rotate(b, gone)
    kmsd.admin_post("/v1/%s/keys/%s/config" % (b, gone), {"deletion_allowed": True})
    r = kmsd.admin_post("/v1/%s/keys/%s/versions/1/schedule-destroy" % (b, gone),
                        {"days": 7, "reason": "erasure request 9"})
    s["destroy_after"] = r.json()["data"]["versions"]["1"]["destroy_after"]
    # tenant c (phi): under a tenant-wide legal hold, no keys
    c = kmsd.create_tenant()
    kmsd.admin_post("/v1/sys/tenants/%s/config" % c, {"legal_hold": True})
    # tokens: svc_b's never expires; one with a ttl must not be listed
    p_ttl = kmsd.create_principal(tenants=[a])
    kmsd.create_token(p_ttl, ttl=3600)
    # a principal name with markup, written into the store directly (the API only
    # takes [A-Za-z0-9._-]; the report must not rely on that)
    db = sqlite3.connect(kmsd.store_path, timeout=30)
    db.execute("INSERT INTO principals (name, role, created) VALUES (?, 'admin', ?)",
               (EVIL, int(time.time())))
    db.commit()
    db.close()
    # MFA: one admin enrolled and confirmed, one admin with an enrolment never
    # confirmed (pending), an auditor never enrolled
    mfa_on = kmsd.create_principal(role="admin")
    on_tok, _ = kmsd.create_token(mfa_on)
    r = kmsd.post("/v1/sys/mfa/enroll", token=on_tok)
    assert r.status_code == 200, r.text
    secret = r.json()["data"]["secret"]
    step = kmsd.health().json()["server_time_utc"] // PERIOD
    r = kmsd.post("/v1/sys/mfa/confirm", {"code": totp(secret, step)}, token=on_tok)
    assert r.status_code == 200, r.text
    mfa_pending = kmsd.create_principal(role="admin")
    r = kmsd.post("/v1/sys/mfa/enroll", token=kmsd.create_token(mfa_pending)[0])
    assert r.status_code == 200, r.text
    auditor = kmsd.create_principal(role="auditor")
    # 31 days later: "rot" is past its rotation date, "fresh" is not
    kmsd.set_clock(31 * DAY)
    s.update(a=a, b=b, c=c, rot=rot, fresh=fresh, held=held, gone=gone, p_ttl=p_ttl,
             mfa_on=mfa_on, mfa_pending=mfa_pending, auditor=auditor, mfa_at=step * PERIOD,
             now=time.time() + 31 * DAY)
    yield s
    kmsd.set_clock(0)


def drop_seconds(v):
    """v without the members that count seconds from now (they move between calls)."""
    if isinstance(v, dict):
        return {k: drop_seconds(x) for k, x in v.items() if not k.endswith("_seconds")}
    if isinstance(v, list):
        return [drop_seconds(x) for x in v]
    return v


def by_name(items, name):
    found = [x for x in items if x["name"] == name]
    assert len(found) == 1, (name, items)
    return found[0]


def test_compliance_json_field_by_field(kmsd, setup, tmp_path):
    s = setup
    r = kmsd.get("/v1/sys/compliance", token=kmsd.admin_token)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    # the same through kmsctl --format json
    out = kmsctl(kmsd, str(tmp_path), "report", "compliance", "--format", "json")
    assert out.returncode == 0, out.stderr
    d2 = json.loads(out.stdout)
    assert set(d2) == set(d)
    for name in d:
        if name not in ("generated_at", "audit_chain"):  # time and the log move on
            # ages tick between the two calls
            assert drop_seconds(d2[name]) == drop_seconds(d[name]), name

    assert d["report"] == "kmsd compliance report" and d["format_version"] == 1
    assert abs(d["generated_at"] - s["now"]) <= 30
    assert d["max_encryptions_per_version"] == 1000
    assert d["controls"]["§164.312(b)"] == "Audit controls"
    assert d["controls"]["§164.312(a)(2)(iv)"] == "Encryption and decryption"
    assert d["controls"]["§164.308(a)(1)(ii)(D)"] == "Information system activity review"
    assert d["controls"]["§164.312(d)"] == "Person or entity authentication"
    assert d["controls"]["§164.312(a)(2)(ii)"] == "Emergency access procedure"
    for name, sec in d.items():
        if isinstance(sec, dict) and name != "controls":
            assert sec["controls"] and all(c in d["controls"] for c in sec["controls"]), name

    inv = d["key_inventory"]
    assert inv["controls"] == ["§164.312(a)(2)(iv)"]
    ta = by_name(inv["tenants"], s["a"])
    assert ta["retention"] == "phi" and ta["legal_hold"] is False
    assert sorted(k["name"] for k in ta["keys"]) == sorted([s["rot"], s["fresh"], s["held"]])
    rot = by_name(ta["keys"], s["rot"])
    assert rot["auto_rotate_period"] == 30 * DAY and rot["latest_version"] == 1
    assert rot["past_rotation_date"] is True and rot["revoked"] is False and rot["legal_hold"] is False
    v1 = rot["versions"][0]
    assert v1["version"] == 1 and v1["state"] == "enabled" and v1["destroy_after"] is None
    assert abs(rot["rotation_due"] - (v1["created"] + 30 * DAY)) == 0
    assert 31 * DAY - 60 <= v1["age_seconds"] <= 31 * DAY + 60
    assert rot["latest_version_age_seconds"] == v1["age_seconds"]
    fresh = by_name(ta["keys"], s["fresh"])
    assert fresh["past_rotation_date"] is False and fresh["rotation_due"] == fresh["versions"][0]["created"] + 90 * DAY
    held = by_name(ta["keys"], s["held"])
    assert held["legal_hold"] is True and held["auto_rotate_period"] == 0
    assert held["rotation_due"] is None and held["past_rotation_date"] is False
    tb = by_name(inv["tenants"], s["b"])
    assert tb["retention"] == "non-phi"
    gone = by_name(tb["keys"], s["gone"])
    assert gone["latest_version"] == 2 and [v["version"] for v in gone["versions"]] == [1, 2]
    assert gone["versions"][0]["state"] == "pending_destruction"
    assert gone["versions"][0]["destroy_after"] == s["destroy_after"]
    assert gone["versions"][0]["encryptions_reserved"] >= 1
    assert gone["versions"][1]["state"] == "enabled" and gone["versions"][1]["encryptions_reserved"] == 0
    tc = by_name(inv["tenants"], s["c"])
    assert tc["legal_hold"] is True and tc["keys"] == []

    rot_sec = d["rotation"]
    assert rot_sec["controls"] == ["§164.312(a)(2)(iv)"]
    past = [x for x in rot_sec["keys_past_rotation_date"] if x["tenant"] == s["a"]]
    assert len(past) == 1
    assert past[0]["key"] == s["rot"] and past[0]["latest_version"] == 1
    assert past[0]["auto_rotate_period"] == 30 * DAY and past[0]["rotation_due"] == rot["rotation_due"]
    assert DAY - 60 <= past[0]["overdue_seconds"] <= DAY + 60

    q = d["destruction_queue"]
    assert q["controls"] == ["§164.312(c)(1)", "§164.312(a)(2)(iv)"]
    assert [x for x in q["versions"] if x["tenant"] == s["b"]] == [
        {"tenant": s["b"], "key": s["gone"], "version": 1, "destroy_after": s["destroy_after"],
         "blocked_by_legal_hold": False}]

    lh = d["legal_holds"]
    assert lh["controls"] == ["§164.312(c)(1)"]
    assert s["c"] in lh["tenants"] and s["a"] not in lh["tenants"]
    assert {"tenant": s["a"], "key": s["held"]} in lh["keys"]
    assert all(k["key"] != s["rot"] for k in lh["keys"])

    mfa = d["admins_without_mfa"]
    assert mfa["controls"] == ["§164.312(d)", "§164.312(a)(1)"]
    assert mfa["mfa_enrolment"] == "totp"
    everyone = {x["name"]: x for x in mfa["principals"]}
    assert all(x["role"] in ("admin", "auditor") for x in mfa["principals"])
    assert s["p_ttl"] not in everyone  # services are not listed
    assert everyone[s["mfa_on"]]["mfa"] == "active" and everyone[s["mfa_on"]]["role"] == "admin"
    assert everyone[s["mfa_on"]]["locked"] is False
    assert abs(everyone[s["mfa_on"]]["last_mfa"] - s["mfa_at"]) <= 2 * PERIOD
    assert everyone[s["mfa_pending"]]["mfa"] == "pending"
    assert everyone[s["mfa_pending"]]["last_mfa"] is None
    assert everyone[s["auditor"]] == {"name": s["auditor"], "role": "auditor",
                                      "created": everyone[s["auditor"]]["created"], "mfa": "none",
                                      "locked": False, "last_mfa": None}
    assert everyone[EVIL]["mfa"] == "none" and everyone[EVIL]["role"] == "admin"
    # "admins": exactly those without an active enrolment
    names = [x["name"] for x in mfa["admins"]]
    assert sorted(names) == sorted(n for n, x in everyone.items() if x["mfa"] != "active")
    assert s["mfa_on"] not in names
    for n in (EVIL, s["mfa_pending"], s["auditor"]):
        assert n in names
    assert all(x == everyone[x["name"]] for x in mfa["admins"])

    toks = d["tokens_without_expiry"]
    assert toks["controls"] == ["§164.312(d)", "§164.312(a)(1)"]
    owners = [x["principal"] for x in toks["tokens"]]
    assert s["p_ttl"] not in owners  # its token expires
    assert all(x["role"] in ("admin", "service") and x["accessor"] for x in toks["tokens"])
    assert len([x for x in toks["tokens"] if x["role"] == "service"]) >= 1

    roles = d["principals_by_role"]
    assert roles["controls"] == ["§164.312(a)(1)", "§164.308(a)(4)(ii)(B)"]
    assert s["p_ttl"] in [x["name"] for x in roles["roles"]["service"]]
    assert EVIL in [x["name"] for x in roles["roles"]["admin"]]

    bg = d["break_glass_without_review"]
    assert bg["controls"] == ["§164.312(a)(2)(ii)", "§164.308(a)(1)(ii)(D)"]
    assert bg["grants"] == []  # no grant was ever activated here (test_break_glass lists one)

    au = d["audit_chain"]
    assert au["controls"] == ["§164.312(b)", "§164.308(a)(1)(ii)(D)"]
    assert au["healthy"] is True and au["error"] is None and au["status"] == "ok"
    assert len(au["head_hash"]) == 64 and int(au["head_hash"], 16) >= 0
    assert au["head_seq"] >= 20
    ck = au["last_checkpoint"]
    assert ck["covered_seq"] < ck["seq"] <= au["head_seq"]
    assert ck["time"][:2] == "20" and ck["time"].endswith("Z")
    # the head matches the log on disk: the record with head_seq carries head_hash
    with open(kmsd.audit_path) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    by_seq = {x["seq"]: x for x in recs}
    assert by_seq[au["head_seq"]]["hash"] == au["head_hash"]
    assert by_seq[ck["seq"]]["operation"] == "audit.checkpoint"
    assert by_seq[ck["seq"]]["checkpoint"]["seq"] == ck["covered_seq"]


def test_compliance_needs_admin(kmsd, setup):
    assert kmsd.get("/v1/sys/compliance").status_code in (401, 403)
    svc = kmsd.service([setup["a"]])
    r = kmsd.get("/v1/sys/compliance", token=svc)
    assert r.status_code == 403
    assert kmsd.post("/v1/sys/compliance", {}, token=kmsd.admin_token).status_code == 405
    # the request is audited like any other
    with open(kmsd.audit_path) as f:
        ops = [json.loads(ln).get("operation") for ln in f if ln.strip()]
    assert "sys.compliance" in ops


def test_markdown_has_every_section(kmsd, setup, tmp_path):
    out = os.path.join(str(tmp_path), "report.md")
    r = kmsctl(kmsd, str(tmp_path), "report", "compliance", "--out", out)  # md is the default
    assert r.returncode == 0, r.stderr
    md = open(out).read()
    assert md.startswith("\n# kmsd compliance report") or md.startswith("# kmsd compliance report")
    for sec in SECTIONS:
        assert ("\n## " + sec.replace("-", "\\-")) in md, sec
    for word in ("§164\\.312\\(b\\)", "§164\\.312\\(a\\)\\(2\\)\\(iv\\)", "§164\\.312\\(d\\)",
                 "MFA enrolment: totp;"):
        assert word in md, word
    # every admin and auditor with its enrolment state
    for name, role, state in ((setup["mfa_on"], "admin", "active"),
                              (setup["mfa_pending"], "admin", "pending"),
                              (setup["auditor"], "auditor", "none")):
        rows = [[c.strip() for c in x.split("|")] for x in md.splitlines()
                if x.startswith("| " + name.replace("-", "\\-") + " |")]
        rows = [c for c in rows if len(c) == 8 and c[4] in ("none", "pending", "active")]
        assert len(rows) == 1, (name, md)
        assert rows[0][2] == role and rows[0][4] == state and rows[0][5] == "no", rows
    assert setup["rot"].replace("-", "\\-") in md
    assert "\\(past\\)" in md
    # the markup is escaped: no tag survives
    assert "<script>" not in md and "&lt;script&gt;" in md
    r = kmsctl(kmsd, str(tmp_path), "report", "compliance", "--format", "pdf")
    assert r.returncode == 2 and "md, json or html" in r.stderr


def chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    pytest.fail("chromium is not installed: scripts/deps.sh installs it (Debian package chromium)")


def test_html_renders_in_headless_chromium(kmsd, setup, tmp_path):
    out = os.path.join(str(tmp_path), "report.html")
    r = kmsctl(kmsd, str(tmp_path), "report", "compliance", "--format", "html", "--out", out)
    assert r.returncode == 0, r.stderr
    html = open(out).read()
    # self-contained: no script, no external resource
    low = html.lower()
    assert "<script" not in low and "src=" not in low and "href=" not in low and "@import" not in low
    assert "http://" not in low and "https://" not in low
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;x" in html
    profile = tempfile.mkdtemp(prefix="chromium-", dir=str(tmp_path))
    env = dict(os.environ, HOME=profile)
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", "--user-data-dir=" + profile, "--dump-dom",
           "file://" + out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    dom = p.stdout
    assert "<title>kmsd compliance report</title>" in dom
    assert "<h1>kmsd compliance report</h1>" in dom
    for sec in SECTIONS:
        assert "<h2>%s</h2>" % sec in dom, sec
    assert "<h3>Tenant %s (phi)</h3>" % setup["a"] in dom
    assert "<h3>Tenant %s (phi, legal hold)</h3>" % setup["c"] in dom
    assert "<td>%s</td>" % setup["rot"] in dom and "(past)</td>" in dom
    assert "<td>pending_destruction</td>" in dom
    assert "§164.312(b)" in dom and "§164.312(a)(2)(iv)" in dom
    assert "MFA enrolment: totp;" in dom
    assert "<td>%s</td><td>admin</td>" % setup["mfa_pending"] in dom
    assert "<td>%s</td><td>auditor</td>" % setup["auditor"] in dom
    assert "<td>active</td>" in dom and "<td>pending</td>" in dom and "<td>none</td>" in dom
    # the principal's markup stayed text: no script element was created from it
    assert dom.count("<script") == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    # and a screenshot renders
    shot = os.path.join(str(tmp_path), "report.png")
    p = subprocess.run(cmd[:-2] + ["--screenshot=" + shot, "--window-size=1280,2000", "file://" + out],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0 and os.path.getsize(shot) > 10000, p.stderr[-3000:]
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
