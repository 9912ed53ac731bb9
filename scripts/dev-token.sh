#!/bin/sh
# dev-token.sh DIR — a SoftHSM2 token for development and tests. NOT for production.
#
# Creates, under DIR (made if missing):
#   DIR/softhsm2.conf   directories.tokendir = DIR/tokens, objectstore.backend = file,
#                       log.level = ERROR
#   DIR/tokens/         one token labelled "kmsd" (override: TOKEN_LABEL=...)
#   DIR/so.pin          random SO PIN   (mode 0600, written under umask 077)
#   DIR/user.pin        random user PIN (mode 0600, written under umask 077)
#
# SOFTHSM_MECHANISMS=LIST adds "slots.mechanisms = LIST" (SoftHSM2's comma-separated
# list of the mechanisms it offers; "kmsd" stands for the ones kmsd uses). SoftHSM2
# copies its list of enabled mechanisms on every C_EncryptInit/C_DecryptInit, so a short
# list is cheaper per call (docs/PERFORMANCE.md); `make bench` and bench/profile.py set
# it. The tests do not: some of them show that the key templates, not the mechanism
# list, refuse a mechanism.
#
# Idempotent: when DIR/tokens already holds a token, nothing is changed (the conf file
# is rewritten only if it is missing).
#
# Output: stdout is exactly one line, the absolute path of DIR/softhsm2.conf, so that
#   export SOFTHSM2_CONF="$(sh scripts/dev-token.sh var/softhsm)"
# works. Everything else goes to stderr. Exit status 0 on success, 1 on failure.
#
# Note: softhsm2-util only takes PINs as arguments, so they are visible in the process
# list for the fraction of a second it runs. Acceptable for a dev token only.
set -eu
umask 077

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
LABEL=${TOKEN_LABEL:-kmsd}
MECHS=${SOFTHSM_MECHANISMS:-}
if [ "$MECHS" = kmsd ]; then
	MECHS=CKM_AES_KEY_GEN,CKM_AES_KEY_WRAP_PAD,CKM_AES_GCM,CKM_GENERIC_SECRET_KEY_GEN,CKM_SHA256_HMAC,CKM_EC_KEY_PAIR_GEN,CKM_ECDSA
fi

mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
CONF="$DIR/softhsm2.conf"
TOKENS="$DIR/tokens"
mkdir -p "$TOKENS"

write_conf() {
	tmp="$CONF.tmp.$$"
	cat >"$tmp" <<EOF
# SoftHSM2 configuration for a kmsd development token (scripts/dev-token.sh).
directories.tokendir = $TOKENS
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
	if [ -n "$MECHS" ]; then
		echo "slots.mechanisms = $MECHS" >>"$tmp"
	fi
	chmod 0600 "$tmp"
	mv -f "$tmp" "$CONF"
}

has_token() {
	for f in "$TOKENS"/*/token.object; do
		[ -f "$f" ] && return 0
	done
	return 1
}

if has_token; then
	[ -f "$CONF" ] || write_conf
	echo "dev-token: $TOKENS already holds a token; nothing to do" >&2
	echo "$CONF"
	exit 0
fi

command -v softhsm2-util >/dev/null 2>&1 || {
	echo "dev-token: softhsm2-util not found (apt-get install softhsm2)" >&2
	exit 1
}
command -v openssl >/dev/null 2>&1 || {
	echo "dev-token: openssl not found" >&2
	exit 1
}

write_conf

# 24 random bytes, hex: 48 characters, within SoftHSM2's 4..255 PIN bounds.
SO_PIN=$(openssl rand -hex 24)
USER_PIN=$(openssl rand -hex 24)
[ ${#SO_PIN} -eq 48 ] && [ ${#USER_PIN} -eq 48 ] || {
	echo "dev-token: could not generate PINs" >&2
	exit 1
}

rm -f "$DIR/so.pin" "$DIR/user.pin"
printf '%s\n' "$SO_PIN" >"$DIR/so.pin"
printf '%s\n' "$USER_PIN" >"$DIR/user.pin"
chmod 0600 "$DIR/so.pin" "$DIR/user.pin"

if ! out=$(SOFTHSM2_CONF="$CONF" softhsm2-util --init-token --free --label "$LABEL" \
	--so-pin "$SO_PIN" --pin "$USER_PIN" 2>&1); then
	echo "dev-token: softhsm2-util --init-token failed:" >&2
	echo "$out" >&2
	exit 1
fi
if ! has_token; then
	echo "dev-token: softhsm2-util reported success but no token appeared in $TOKENS" >&2
	echo "$out" >&2
	exit 1
fi
echo "dev-token: token '$LABEL' created in $TOKENS (PINs in $DIR/so.pin, $DIR/user.pin)" >&2
echo "$CONF"
