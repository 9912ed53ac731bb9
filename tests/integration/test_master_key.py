"""Master-key rotation, the small cases (docs/KEY-LIFECYCLE.md "Master-key rotation"):
`kmsd master-key status`, a wrong SO PIN refused with nothing changed, a rotation with
no key versions, a second rotation, the server serving throughout, the steps relayed
into the audit log. The 1,000-version rotation killed halfway is test_master_key_resume.py.

The tests in this module run in order on one server and build on each other."""

import json
import os
import threading

from conftest import b64

# The scheduler relays the rotation's steps into the audit log on each pass.
KMSD_EXTRA_OPTS = [("scheduler_interval", "1")]

SECRET = b"master key rotation: MRN 0042"


def status(kmsd):
    r = kmsd.run_cli("master-key", "status")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def rotate(kmsd, *args, env=None):
    r = kmsd.run_cli("master-key", "rotate", *args) if env is None else _run(kmsd, env, *args)
    return r


def _run(kmsd, env, *args):
    import subprocess
    return subprocess.run([kmsd.bin, "-c", kmsd.conf, "master-key", "rotate"] + list(args),
                          env=env, capture_output=True, text=True, timeout=120)


def audit_records(kmsd):
    with open(kmsd.audit_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_status_after_init(kmsd):
    s = status(kmsd)
    assert s["active"] == 1
    assert s["rotation_in_progress"] is False and s["retiring"] is None
    assert s["key_versions_by_master_key"] == {}
    assert s["token_master_keys"] == {"1": "present", "2": "absent"}


def test_wrong_so_pin_is_refused_and_changes_nothing(kmsd, tmp_path):
    t, k, tok = kmsd.setup_tenant_key()
    r = kmsd.encrypt(tok, t, k, plaintext=b64(SECRET))
    assert r.status_code == 200, r.text
    ct = r.json()["data"]["ciphertext"]
    before = status(kmsd)
    bad = tmp_path / "so.pin"
    bad.write_text("not-the-so-pin\n")
    os.chmod(bad, 0o600)
    r = rotate(kmsd, "--so-pin-file", str(bad))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SO PIN incorrect" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr, r.stderr
    assert status(kmsd) == before
    # a group-readable PIN file is refused before the token is touched
    os.chmod(bad, 0o640)
    r = rotate(kmsd, "--so-pin-file", str(bad))
    assert r.returncode == 1 and "mode 0600" in r.stderr, r.stderr
    # no SO PIN at all: usage of the option, not argv
    r = rotate(kmsd, "--so-pin-file", "")
    assert r.returncode == 1 and "needs the SO PIN" in r.stderr, r.stderr
    assert status(kmsd) == before
    r = kmsd.decrypt(tok, t, k, ciphertext=ct)
    assert r.status_code == 200, r.text


def test_bad_arguments_are_usage_errors(kmsd):
    for args in (("master-key",), ("master-key", "spin"), ("master-key", "rotate", "extra"),
                 ("master-key", "rotate", "--batch", "0"), ("master-key", "rotate", "--batch", "x")):
        r = kmsd.run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
    assert status(kmsd)["active"] == 1


def _relayed(kmsd, want_events, timeout=15):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [x for x in audit_records(kmsd) if x.get("operation") == "sys.master_key.rotate"]
        seen = [x["reason"].split(":")[0] for x in recs]
        if all(e in seen for e in want_events):
            return recs
        time.sleep(0.2)
    raise AssertionError("not relayed into the audit log: %s (have %s)" % (want_events, seen))


def test_refusal_is_relayed_to_audit(kmsd):
    recs = _relayed(kmsd, ["rotate_refused"])
    r = [x for x in recs if x["reason"].startswith("rotate_refused")][0]
    assert r["outcome"] == "error" and r["principal"].startswith("os:")
    assert "SO PIN incorrect" in r["reason"]


def test_rotate_with_nothing_to_move_but_one_key(kmsd):
    # A fresh tenant with no keys adds nothing; the one key from the SO PIN test is all.
    s = status(kmsd)
    assert s["key_versions_by_master_key"] == {"1": 1}
    r = rotate(kmsd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rotation complete" in r.stdout
    s = status(kmsd)
    assert s["active"] == 2 and s["rotation_in_progress"] is False
    assert s["key_versions_by_master_key"] == {"2": 1}
    assert s["token_master_keys"] == {"1": "absent", "2": "present", "3": "absent"}


def test_new_keys_go_under_the_new_master_key(kmsd):
    t, k, tok = kmsd.setup_tenant_key()
    kmsd.rotate(t, k)
    kmsd.serves(tok, t, k)
    assert status(kmsd)["key_versions_by_master_key"] == {"2": 3}


def test_rotate_again_is_a_new_rotation(kmsd):
    """No rotation in progress: `rotate` makes the next version; with every row already
    under the active key it only swaps keys (mk-2 -> mk-3)."""
    r = rotate(kmsd)
    assert r.returncode == 0, r.stdout + r.stderr
    s = status(kmsd)
    assert s["active"] == 3
    assert s["key_versions_by_master_key"] == {"3": 3}
    assert s["token_master_keys"] == {"1": "absent", "2": "absent", "3": "present",
                                      "4": "absent"}


def test_server_keeps_serving_during_rotation(kmsd):
    """Data keys, decrypts, key creation and key rotation from four threads while the
    rotation (mk-3 -> mk-4) moves 60 key versions in batches of 5."""
    tenant = kmsd.create_tenant()
    tok = kmsd.service([tenant])
    keys = [kmsd.create_key(tenant) for _ in range(12)]
    cts = []
    for k in keys:
        for _ in range(4):
            r = kmsd.encrypt(tok, tenant, k, plaintext=b64(SECRET))
            assert r.status_code == 200, r.text
            cts.append((k, r.json()["data"]["ciphertext"]))
            kmsd.rotate(tenant, k)
    stop = threading.Event()
    errors = []
    done = [0]

    def load(i):
        n = 0
        while not stop.is_set():
            k = keys[(i * 3 + n) % len(keys)]
            try:
                if n % 7 == 3:
                    kmsd.admin_post("/v1/%s/keys/%s/rotate" % (tenant, k), {})
                elif n % 11 == 5:
                    kmsd.create_key(tenant)
                else:
                    r = kmsd.datakey(tok, tenant, k)
                    if r.status_code != 200:
                        errors.append(r.text)
                    r2 = kmsd.decrypt(tok, tenant, k, ciphertext=r.json()["data"]["ciphertext"])
                    if r2.status_code != 200:
                        errors.append(r2.text)
                    ck, ct = cts[n % len(cts)]
                    r3 = kmsd.decrypt(tok, tenant, ck, ciphertext=ct)
                    if r3.status_code != 200:
                        errors.append(r3.text)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(repr(e))
            n += 1
            done[0] += 1

    env = dict(kmsd.env)
    env["KMSD_TEST_MK_BATCH_DELAY_MS"] = "50"
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    try:
        r = rotate(kmsd, "--batch", "5", env=env)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("key versions rewrapped") >= 10, r.stdout
    assert not errors, errors[:5]
    assert done[0] > 20
    s = status(kmsd)
    assert s["active"] == 4 and s["rotation_in_progress"] is False
    assert list(s["key_versions_by_master_key"]) == ["4"]
    assert s["token_master_keys"]["3"] == "absent"
    # everything made before and during the rotation still decrypts, after a restart too
    kmsd.stop()
    kmsd.start()
    for k, ct in cts:
        r = kmsd.decrypt(tok, tenant, k, ciphertext=ct)
        assert r.status_code == 200, r.text


def test_rotation_steps_are_in_the_audit_log(kmsd):
    recs = _relayed(kmsd, ["mk_created", "rotate_start", "rewrap", "mk_destroyed"])
    destroyed = [x for x in recs if x["reason"].startswith("mk_destroyed")]
    assert [x["version"] for x in destroyed] == [1, 2, 3]
    assert all(x["outcome"] == "allow" for x in recs if not x["reason"].startswith("rotate_refused"))
    r = kmsd.run_cli("-h")
    assert "master-key rotate" in r.stdout


def test_one_rotation_at_a_time(kmsd):
    """A second `master-key rotate` while one runs is refused (it would make a second
    new master key in the token); the first completes."""
    import subprocess
    import time
    env = dict(kmsd.env)
    env["KMSD_TEST_MK_BATCH_DELAY_MS"] = "300"
    first = subprocess.Popen([kmsd.bin, "-c", kmsd.conf, "master-key", "rotate", "--batch", "1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # it holds the lock from before its first batch
        assert first.poll() is None, "the first rotation ended too soon to test against"
        r = rotate(kmsd)
        assert r.returncode != 0
        assert "another master-key rotation is running" in r.stderr, r.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    s = status(kmsd)
    assert s["rotation_in_progress"] is False
    assert list(s["key_versions_by_master_key"]) == [str(s["active"])]
