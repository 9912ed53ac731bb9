#!/bin/sh
# dev-certs.sh DIR — a development CA and a loopback server certificate for kmsd.
# NOT for production.
#
# Creates, with the openssl CLI, under DIR (made if missing):
#   DIR/ca.key      dev CA private key, ECDSA P-256 (0600)
#   DIR/ca.pem      dev CA certificate (10 years, CA:TRUE, pathlen 0)
#   DIR/server.key  server private key, ECDSA P-256 (0600)
#   DIR/server.pem  server certificate signed by the CA (825 days), serverAuth,
#                   SAN IP:127.0.0.1, IP:::1, DNS:localhost
#
# Idempotent: an existing CA is kept; an existing server certificate is kept when it
# still verifies against DIR/ca.pem and is valid for at least one more day, otherwise
# the server key and certificate are made again. Prints the paths made on stderr; no
# stdout. Exit status 0 on success, 1 on failure.
set -eu
umask 077

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
command -v openssl >/dev/null 2>&1 || {
	echo "dev-certs: openssl not found" >&2
	exit 1
}
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
CA_KEY="$DIR/ca.key"
CA_PEM="$DIR/ca.pem"
SRV_KEY="$DIR/server.key"
SRV_PEM="$DIR/server.pem"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dev-certs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

serial() { echo "0x$(openssl rand -hex 16)"; }

newkey() { # path
	rm -f "$1.tmp"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-pkeyopt ec_param_enc:named_curve -out "$1.tmp" 2>"$WORK/err" || {
		cat "$WORK/err" >&2
		exit 1
	}
	chmod 0600 "$1.tmp"
	mv -f "$1.tmp" "$1"
}

ca_ok() {
	[ -s "$CA_KEY" ] && [ -s "$CA_PEM" ] &&
		openssl x509 -in "$CA_PEM" -noout -checkend 86400 >/dev/null 2>&1
}

server_ok() {
	[ -s "$SRV_KEY" ] && [ -s "$SRV_PEM" ] || return 1
	openssl verify -CAfile "$CA_PEM" "$SRV_PEM" >/dev/null 2>&1 || return 1
	openssl x509 -in "$SRV_PEM" -noout -checkend 86400 >/dev/null 2>&1 || return 1
	# the key must match the certificate
	a=$(openssl x509 -in "$SRV_PEM" -noout -pubkey 2>/dev/null | openssl sha256)
	b=$(openssl pkey -in "$SRV_KEY" -pubout 2>/dev/null | openssl sha256)
	[ -n "$a" ] && [ "$a" = "$b" ]
}

if ! ca_ok; then
	cat >"$WORK/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = kmsd development
CN = kmsd dev CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
	newkey "$CA_KEY"
	openssl req -new -x509 -config "$WORK/ca.cnf" -key "$CA_KEY" -sha256 -days 3650 \
		-set_serial "$(serial)" -out "$CA_PEM.tmp" 2>"$WORK/err" || {
		cat "$WORK/err" >&2
		exit 1
	}
	chmod 0644 "$CA_PEM.tmp"
	mv -f "$CA_PEM.tmp" "$CA_PEM"
	rm -f "$SRV_PEM" # a new CA invalidates the old server certificate
	echo "dev-certs: made CA $CA_PEM" >&2
fi

if server_ok; then
	echo "dev-certs: $SRV_PEM is valid; nothing to do" >&2
	exit 0
fi

cat >"$WORK/srv.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
O = kmsd development
CN = localhost
[srv]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
newkey "$SRV_KEY"
openssl req -new -config "$WORK/srv.cnf" -key "$SRV_KEY" -sha256 -out "$WORK/srv.csr" \
	2>"$WORK/err" || {
	cat "$WORK/err" >&2
	exit 1
}
openssl x509 -req -in "$WORK/srv.csr" -CA "$CA_PEM" -CAkey "$CA_KEY" -sha256 -days 825 \
	-set_serial "$(serial)" -extfile "$WORK/srv.cnf" -extensions srv \
	-out "$SRV_PEM.tmp" 2>"$WORK/err" || {
	cat "$WORK/err" >&2
	exit 1
}
chmod 0644 "$SRV_PEM.tmp"
mv -f "$SRV_PEM.tmp" "$SRV_PEM"
server_ok || {
	echo "dev-certs: the new server certificate does not verify" >&2
	exit 1
}
echo "dev-certs: made $SRV_PEM (SAN 127.0.0.1, ::1, localhost)" >&2
