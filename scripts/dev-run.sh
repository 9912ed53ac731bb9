#!/bin/sh
# dev-run.sh — `make run`: a development kmsd on https://127.0.0.1:8200 with a demo tenant.
# NOT for production (dev token, dev CA, PINs in files under ./var/dev).
#
# Run from anywhere; works in the repository root. On first run it sets up ./var/:
#   var/softhsm/        SoftHSM2 token "kmsd" and its softhsm2.conf (scripts/dev-token.sh)
#   var/dev/            user.pin, so.pin (moved here from var/softhsm), ca.pem, ca.key,
#                       server.pem, server.key (scripts/dev-certs.sh), admin.token,
#                       service.token, admin.totp (the dev admin's TOTP secret, base32),
#                       admin.recovery (its one-time recovery codes), admin.totp.step (the
#                       last TOTP step this script used), client-ca.pem/.key and
#                       demo-service.pem/.key (scripts/dev-client-certs.sh: mTLS, optional)
#                       (all secrets 0600, directory 0700)
#   var/kmsd.conf       written from the settings below on every run (edit them here or
#                       with the environment, not in the file)
#   var/kmsd.db         the store;  var/audit.log  the audit log
# then runs `kmsd init` once (only while var/dev/admin.token does not exist), starts kmsd,
# waits for GET /v1/sys/health, enrols the dev admin in TOTP (once: the secret goes to
# var/dev/admin.totp; the built-in policy wants a code, X-Vault-MFA, on every admin
# change; codes come from oathtool), and creates (skipping what exists) tenant "demo"
# (retention phi), key demo/patient-records, principal demo-service (role service,
# tenants ["demo"]) and a token for it in var/dev/service.token (only if that file does
# not exist), and maps var/dev/demo-service.pem to it (client certificate, mTLS). Each
# change uses a TOTP step of its own, so a first run waits up to a minute and a half
# for steps to pass (at the end, for one it has not used). It prints curl commands to try, then stays in the foreground until Ctrl-C
# or SIGTERM, which it forwards to kmsd; its exit status is kmsd's.
# Re-running reuses ./var/. To start over: rm -rf var
#
# Settings (environment): KMSD_BIN (build/kmsd), KMSD_PORT (8200), KMSD_LOG_LEVEL (info),
# KMSD_WORKERS (0 = one per core).
# If the port is already in use, it says so and exits 1.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

BIN=${KMSD_BIN:-build/kmsd}
PORT=${KMSD_PORT:-8200}
ADDR=127.0.0.1
LOG_LEVEL=${KMSD_LOG_LEVEL:-info}
WORKERS=${KMSD_WORKERS:-0}
PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3

TENANT=demo
KEY=patient-records
SERVICE=demo-service
URL="https://$ADDR:$PORT"

VAR=var
DEV=$VAR/dev
HSM=$VAR/softhsm
CONF=$VAR/kmsd.conf
CA=$DEV/ca.pem

say() { printf '%s\n' "dev-run: $*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$BIN" ] || die "$BIN not found; build it first (make)"
command -v curl >/dev/null 2>&1 || die "curl not found"
command -v oathtool >/dev/null 2>&1 || die "oathtool not found (Debian package oathtool; make deps installs it)"

# -- the port must be free -----------------------------------------------------------------
port_busy() {
	"$PYTHON" - "$ADDR" "$PORT" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(0)  # busy
finally:
    s.close()
sys.exit(1)      # free
EOF
}
if port_busy; then
	say "port $PORT on $ADDR is already in use; is another kmsd (or make run) running?"
	if command -v ss >/dev/null 2>&1; then
		ss -ltnp "sport = :$PORT" 2>/dev/null | sed 's/^/    /' >&2 || true
	fi
	say "stop it, or use another port: KMSD_PORT=8201 make run"
	exit 1
fi

# -- ./var ---------------------------------------------------------------------------------
umask 077
mkdir -p "$VAR" "$DEV" "$HSM"
chmod 0700 "$VAR" "$DEV" "$HSM"

SOFTHSM2_CONF=$(sh scripts/dev-token.sh "$HSM") || die "scripts/dev-token.sh failed"
export SOFTHSM2_CONF
if [ -f "$HSM/user.pin" ] || [ -f "$HSM/so.pin" ]; then
	# a token was just made: its PINs move to var/dev
	if [ -f "$VAR/kmsd.db" ] || [ -f "$DEV/admin.token" ]; then
		die "a new token was created in $HSM but $VAR/kmsd.db or $DEV/admin.token belong to an old one; rm -rf $VAR and re-run"
	fi
	mv -f "$HSM/user.pin" "$DEV/user.pin"
	mv -f "$HSM/so.pin" "$DEV/so.pin"
fi
[ -f "$DEV/user.pin" ] && [ -f "$DEV/so.pin" ] ||
	die "$DEV/user.pin or $DEV/so.pin is missing but the token exists; rm -rf $VAR and re-run"

sh scripts/dev-certs.sh "$DEV" || die "scripts/dev-certs.sh failed"
[ -s "$DEV/$SERVICE.pem" ] && [ -s "$DEV/client-ca.pem" ] ||
	sh scripts/dev-client-certs.sh "$DEV" "$SERVICE" || die "scripts/dev-client-certs.sh failed"

cat >"$CONF.tmp" <<EOF
# Written by scripts/dev-run.sh on every run; changes here are overwritten.
# Paths are relative to the repository root, where dev-run.sh starts kmsd.
listen_address = $ADDR
port = $PORT
tls = true
tls_cert = $DEV/server.pem
tls_key = $DEV/server.key
tls_client_ca = $DEV/client-ca.pem
tls_client_auth = optional
pkcs11_module = $PKCS11_MODULE
token_label = kmsd
pin_file = $DEV/user.pin
so_pin_file = $DEV/so.pin
store_path = $VAR/kmsd.db
audit_path = $VAR/audit.log
node_id = dev-1
workers = $WORKERS
log_level = $LOG_LEVEL
EOF
if [ "$(id -u)" -eq 0 ]; then
	# kmsd refuses to run as root unless `user` says which account to become. A dev
	# setup under ./var stays root's (in a container, root is often the only user);
	# production uses an account of its own.
	printf '%s\n' "# started as root: stay root (dev only; see user in kmsd.conf.sample)" "user = root" >>"$CONF.tmp"
fi
mv -f "$CONF.tmp" "$CONF"

# -- init, once ----------------------------------------------------------------------------
if [ ! -f "$DEV/admin.token" ]; then
	if [ -f "$VAR/kmsd.db" ]; then
		say "$VAR/kmsd.db exists but $DEV/admin.token does not; trying init anyway"
	fi
	say "kmsd init (master key ceremony on the dev token)"
	if ! "$BIN" -c "$CONF" init --admin-token-file "$DEV/admin.token"; then
		rm -f "$DEV/admin.token.partial"
		die "kmsd init failed. If the store is already initialized and the admin token is lost, start over: rm -rf $VAR"
	fi
	[ -s "$DEV/admin.token" ] || die "kmsd init did not write $DEV/admin.token"
fi
chmod 0600 "$DEV/admin.token"

# -- start kmsd ----------------------------------------------------------------------------
"$BIN" -c "$CONF" serve </dev/null &
KPID=$!

stop_kmsd() {
	if kill -0 "$KPID" 2>/dev/null; then
		kill -TERM "$KPID" 2>/dev/null || true
	fi
}
on_signal() {
	say "stopping kmsd (pid $KPID)"
	stop_kmsd
}
trap on_signal INT TERM HUP
trap stop_kmsd EXIT

i=0
until code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$CA" "$URL/v1/sys/health") &&
	[ "$code" = 200 ]; do
	if ! kill -0 "$KPID" 2>/dev/null; then
		wait "$KPID" 2>/dev/null && rc=0 || rc=$?
		trap - EXIT
		die "kmsd exited (status $rc) before it answered on $URL (see its messages above)"
	fi
	i=$((i + 1))
	[ "$i" -lt 300 ] || die "kmsd did not answer GET $URL/v1/sys/health within 30s (last status: $code)"
	sleep 0.1
done
say "kmsd is up on $URL (pid $KPID)"

# -- demo tenant, key, principal, token ----------------------------------------------------
# api METHOD PATH TOKENFILE [JSON]: sets API_STATUS and API_BODY. The token (and the TOTP
# code in API_MFA, when set) reach curl through a config on stdin, not the command line
# (where ps would show them).
api() {
	resp="$VAR/.api.$$"
	tok=$(cat "$3")
	mfa_line=""
	[ -z "${API_MFA-}" ] || mfa_line=$(printf 'header = "X-Vault-MFA: totp:%s"' "$API_MFA")
	set -- "$1" "$2" "$3" "${4-}"
	if [ -n "$4" ]; then
		set -- "$1" "$2" "$3" --data-binary "$4"
	else
		set -- "$1" "$2" "$3"
	fi
	method=$1
	path=$2
	shift 3
	API_STATUS=$(printf 'header = "X-Vault-Token: %s"\n%s\n' "$tok" "$mfa_line" |
		curl -sS -K - -o "$resp" -w '%{http_code}' --cacert "$CA" -X "$method" \
			-H 'Content-Type: application/json' "$@" "$URL$path") || API_STATUS=000
	API_BODY=$(cat "$resp" 2>/dev/null || true)
	rm -f "$resp"
}

# next_code: sets API_MFA to the dev admin's TOTP code for the next step not yet used.
# kmsd accepts the current step +-1, each step once per principal, in increasing order:
# three changes can go at once, then one a step (the script waits).
next_code() {
	last=$(cat "$DEV/admin.totp.step" 2>/dev/null || echo 0)
	step=$(($(date +%s) / 30 - 1))
	[ "$step" -gt "$last" ] || step=$((last + 1))
	while [ "$step" -gt $(($(date +%s) / 30 + 1)) ]; do
		say "waiting for the next TOTP step (a code is good once) ..."
		sleep $((30 - $(date +%s) % 30 + 1))
	done
	printf '%s\n' "$step" >"$DEV/admin.totp.step"
	API_MFA=$(oathtool --totp -b -N "@$((step * 30))" "$(cat "$DEV/admin.totp")") ||
		die "oathtool failed on $DEV/admin.totp"
}

# enrols the dev admin in TOTP, once (the built-in policy asks for a code on every admin change)
API_MFA=""
api GET /v1/sys/mfa/status "$DEV/admin.token"
[ "$API_STATUS" = 200 ] || die "reading the admin's MFA status: HTTP $API_STATUS $API_BODY"
mfa_state=$(printf '%s' "$API_BODY" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["data"]["state"])')
if [ "$mfa_state" != active ] && [ ! -s "$DEV/admin.totp" ] || [ "$mfa_state" = none ]; then
	api POST /v1/sys/mfa/enroll "$DEV/admin.token"
	[ "$API_STATUS" = 200 ] || die "enrolling the admin in TOTP: HTTP $API_STATUS $API_BODY"
	rm -f "$DEV/admin.totp" "$DEV/admin.recovery" "$DEV/admin.totp.step"
	printf '%s' "$API_BODY" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["data"]["secret"])' >"$DEV/admin.totp"
	printf '%s' "$API_BODY" | "$PYTHON" -c 'import json,sys; print("\n".join(json.load(sys.stdin)["data"]["recovery_codes"]))' >"$DEV/admin.recovery"
	chmod 0600 "$DEV/admin.totp" "$DEV/admin.recovery"
	say "enrolled the admin in TOTP: secret in $DEV/admin.totp, recovery codes in $DEV/admin.recovery"
	mfa_state=pending
fi
[ "$mfa_state" = active ] || [ -s "$DEV/admin.totp" ] ||
	die "the admin's TOTP enrolment is active but $DEV/admin.totp is missing; rm -rf $VAR and re-run"
if [ "$mfa_state" != active ]; then
	next_code
	code=$API_MFA
	API_MFA=""
	api POST /v1/sys/mfa/confirm "$DEV/admin.token" "{\"code\":\"$code\"}"
	[ "$API_STATUS" = 200 ] || die "confirming the admin's TOTP enrolment: HTTP $API_STATUS $API_BODY"
	say "confirmed the admin's TOTP enrolment"
fi

ensure() { # what get-path method path json: created with a TOTP code unless GET finds it
	# (get-path "-": nothing to GET; a 409 answer then says it exists)
	API_MFA=""
	if [ "$2" != - ]; then
		api GET "$2" "$DEV/admin.token"
		if [ "$API_STATUS" = 200 ]; then
			say "$1 exists"
			return
		fi
	fi
	next_code
	api "$3" "$4" "$DEV/admin.token" "$5"
	API_MFA=""
	case $API_STATUS in
	200) say "created $1" ;;
	409) say "$1 exists" ;;
	*) die "creating $1: HTTP $API_STATUS $API_BODY" ;;
	esac
}

ensure "tenant $TENANT" "/v1/sys/tenants/$TENANT" POST "/v1/sys/tenants/$TENANT" '{"retention":"phi"}'
ensure "key $TENANT/$KEY" "/v1/$TENANT/keys/$KEY" POST "/v1/$TENANT/keys/$KEY" '{"type":"aes256-gcm96"}'
ensure "principal $SERVICE" "/v1/sys/principals/$SERVICE" POST "/v1/sys/principals/$SERVICE" \
	"{\"role\":\"service\",\"tenants\":[\"$TENANT\"]}"
ensure "client certificate of $SERVICE" - POST "/v1/sys/principals/$SERVICE/certs" \
	"$("$PYTHON" -c 'import json,sys; print(json.dumps({"certificate": open(sys.argv[1]).read()}))' "$DEV/$SERVICE.pem")"
if [ ! -s "$DEV/service.token" ]; then
	next_code
	api POST "/v1/sys/principals/$SERVICE/tokens" "$DEV/admin.token" '{}'
	API_MFA=""
	[ "$API_STATUS" = 200 ] || die "creating a token for $SERVICE: HTTP $API_STATUS $API_BODY"
	tok=$(printf '%s' "$API_BODY" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])') ||
		die "no auth.client_token in the answer"
	rm -f "$DEV/service.token"
	printf '%s\n' "$tok" >"$DEV/service.token"
	chmod 0600 "$DEV/service.token"
	say "created a token for $SERVICE in $DEV/service.token"
else
	say "$DEV/service.token exists"
fi

# A code is good once: if this run used the current TOTP step (or the next), wait until a
# step it has not used begins, so that the first code the user computes works.
if [ -s "$DEV/admin.totp.step" ]; then
	last=$(cat "$DEV/admin.totp.step")
	if [ "$(($(date +%s) / 30))" -le "$last" ]; then
		say "waiting for a TOTP step this script has not used, so that your first code works ..."
		while [ "$(($(date +%s) / 30))" -le "$last" ]; do
			sleep 1
		done
	fi
fi

# -- how to call it ------------------------------------------------------------------------
C="curl -sS --cacert $CA"
S='-H "X-Vault-Token: $(cat '"$DEV"'/service.token)"'
A='-H "X-Vault-Token: $(cat '"$DEV"'/admin.token)"'
M='-H "X-Vault-MFA: totp:$(oathtool --totp -b $(cat '"$DEV"'/admin.totp))"'
cat <<EOF

kmsd (dev) is running on $URL — pid $KPID, store $VAR/kmsd.db, audit log $VAR/audit.log.
From $ROOT, try:

# a data key: plaintext DEK + its wrapped form (ciphertext)
$C $S \\
  -d '{"bits":256}' $URL/v1/$TENANT/datakey/plaintext/$KEY

# the same, keeping the ciphertext, then unwrapping it again
CT=\$($C $S -d '{}' $URL/v1/$TENANT/datakey/plaintext/$KEY | $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["data"]["ciphertext"])')
$C $S \\
  -d "{\\"ciphertext\\":\\"\$CT\\"}" $URL/v1/$TENANT/decrypt/$KEY

# encrypt a small value (base64 plaintext)
$C $S \\
  -d "{\\"plaintext\\":\\"\$(printf 'hello PHI' | base64)\\"}" $URL/v1/$TENANT/encrypt/$KEY

# a data key with the service's client certificate instead of a token (mTLS)
$C --cert $DEV/$SERVICE.pem --key $DEV/$SERVICE.key \\
  -d '{}' $URL/v1/$TENANT/datakey/plaintext/$KEY

# read the key (admin token; no key material)
$C $A \\
  $URL/v1/$TENANT/keys/$KEY

# rotate it: an admin change, so it carries the admin's current TOTP code (each code
# is good once: between two admin changes, wait for the next one, at most 30 s)
oathtool --totp -b \$(cat $DEV/admin.totp)     # the code; $DEV/admin.recovery has one-time fallbacks
$C $A $M \\
  -X POST $URL/v1/$TENANT/keys/$KEY/rotate

Ctrl-C stops kmsd. Docs: docs/API.md.

EOF

# -- foreground until kmsd exits -----------------------------------------------------------
rc=0
wait "$KPID" || rc=$?
# a trapped signal interrupts wait (status > 128): wait again for kmsd's own status
while kill -0 "$KPID" 2>/dev/null; do
	rc=0
	wait "$KPID" || rc=$?
done
trap - EXIT INT TERM HUP
if [ "$rc" -eq 0 ]; then
	say "kmsd stopped"
else
	say "kmsd exited with status $rc"
fi
exit "$rc"
