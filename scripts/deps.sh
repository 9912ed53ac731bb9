#!/bin/sh
# Installs the Debian packages kmsd needs to build, run and test, when run as root;
# otherwise prints the apt-get line to run. Quiet when everything is present.
# `deps.sh bench` also wants what `make bench` needs (the wrk load generator);
# `deps.sh valgrind` what `make valgrind` needs.
set -eu
PKGS="gcc make pkg-config libssl-dev libmicrohttpd-dev libgnutls28-dev libjansson-dev
libsqlite3-dev sqlite3 libp11-kit-dev libcurl4-openssl-dev libcmocka-dev softhsm2 opensc
openssl curl python3 python3-pytest python3-pytest-xdist python3-requests python3-hvac clang
libclang-rt-14-dev
sslscan libtsan2 chromium libqrencode-dev oathtool
libpq-dev postgresql haproxy"
if [ "${1-}" = bench ]; then
	PKGS="$PKGS wrk"
fi
if [ "${1-}" = valgrind ]; then
	PKGS="$PKGS valgrind"
fi
missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
	echo "deps: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
	echo "deps: missing packages. Run as root:"
	echo "  apt-get update && apt-get install -y$missing"
	exit 1
fi
