#!/bin/sh
# dev-client-certs.sh [-c CA] [-d DAYS] [-e EKU] [-k KU] DIR NAME... — a development CA for client
# certificates (mTLS, tls_client_ca in kmsd.conf) and client certificates signed by it.
# NOT for production.
#
# Creates, with the openssl CLI, under DIR (made if missing):
#   DIR/CA.key, DIR/CA.pem   the client CA (ECDSA P-256, 10 years, CA:TRUE, pathlen 0);
#                            CA defaults to "client-ca"; kept when it exists and is valid
#   DIR/NAME.key, NAME.pem   for each NAME: a client key and certificate signed by that
#                            CA, subject "CN=NAME,O=kmsd development", keyUsage
#                            KU (default digitalSignature; "keyAgreement" makes one
#                            that may not sign the handshake), extendedKeyUsage EKU
#                            (default clientAuth; "serverAuth" makes one unfit for
#                            client authentication),
#                            valid DAYS days (default 825; a negative number makes an
#                            already expired certificate, for tests). Always made anew.
#
# Use tls_client_ca = DIR/CA.pem in kmsd.conf, and map a client to a principal with
#   kmsctl principal cert-add PRINCIPAL --cert DIR/NAME.pem
# The SPKI fingerprint kmsd maps is printed by
#   openssl x509 -in DIR/NAME.pem -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum
# Prints what it made on stderr; no stdout. Exit status 0 on success, 1 on failure,
# 2 on bad usage.
set -eu
umask 077

CA=client-ca
DAYS=825
EKU=clientAuth
KU=digitalSignature
while getopts c:d:e:k: opt; do
	case $opt in
	c) CA=$OPTARG ;;
	d) DAYS=$OPTARG ;;
	e) EKU=$OPTARG ;;
	k) KU=$OPTARG ;;
	*)
		echo "usage: $0 [-c CA] [-d DAYS] [-e EKU] [-k KU] DIR NAME..." >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
if [ $# -lt 2 ] || [ -z "$1" ]; then
	echo "usage: $0 [-c CA] [-d DAYS] [-e EKU] [-k KU] DIR NAME..." >&2
	exit 2
fi
case $CA in *[!A-Za-z0-9._-]* | "") echo "dev-client-certs: bad CA name $CA" >&2; exit 2 ;; esac
case $DAYS in -[0-9]* | [0-9]*) ;; *) echo "dev-client-certs: bad DAYS $DAYS" >&2; exit 2 ;; esac
case $EKU in clientAuth | serverAuth) ;; *) echo "dev-client-certs: EKU must be clientAuth or serverAuth" >&2; exit 2 ;; esac
case $KU in digitalSignature | keyAgreement) ;; *) echo "dev-client-certs: KU must be digitalSignature or keyAgreement" >&2; exit 2 ;; esac
command -v openssl >/dev/null 2>&1 || {
	echo "dev-client-certs: openssl not found" >&2
	exit 1
}
mkdir -p "$1"
DIR=$(cd "$1" && pwd -P)
shift
CA_KEY="$DIR/$CA.key"
CA_PEM="$DIR/$CA.pem"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dev-client-certs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

fail() {
	cat "$WORK/err" >&2
	exit 1
}
serial() { echo "0x$(openssl rand -hex 16)"; }
newkey() { # path
	rm -f "$1.tmp"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-pkeyopt ec_param_enc:named_curve -out "$1.tmp" 2>"$WORK/err" || fail
	chmod 0600 "$1.tmp"
	mv -f "$1.tmp" "$1"
}

if ! { [ -s "$CA_KEY" ] && [ -s "$CA_PEM" ] &&
	openssl x509 -in "$CA_PEM" -noout -checkend 86400 >/dev/null 2>&1; }; then
	cat >"$WORK/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = kmsd development
CN = kmsd dev client CA ($CA)
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
	newkey "$CA_KEY"
	openssl req -new -x509 -config "$WORK/ca.cnf" -key "$CA_KEY" -sha256 -days 3650 \
		-set_serial "$(serial)" -out "$CA_PEM.tmp" 2>"$WORK/err" || fail
	chmod 0644 "$CA_PEM.tmp"
	mv -f "$CA_PEM.tmp" "$CA_PEM"
	echo "dev-client-certs: made CA $CA_PEM" >&2
fi

for NAME in "$@"; do
	case $NAME in *[!A-Za-z0-9._-]* | "") echo "dev-client-certs: bad name $NAME" >&2; exit 2 ;; esac
	cat >"$WORK/cli.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = kmsd development
CN = $NAME
[cli]
basicConstraints = critical, CA:FALSE
keyUsage = critical, $KU
extendedKeyUsage = $EKU
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
	newkey "$DIR/$NAME.key"
	openssl req -new -config "$WORK/cli.cnf" -key "$DIR/$NAME.key" -sha256 -out "$WORK/cli.csr" \
		2>"$WORK/err" || fail
	openssl x509 -req -in "$WORK/cli.csr" -CA "$CA_PEM" -CAkey "$CA_KEY" -sha256 -days "$DAYS" \
		-set_serial "$(serial)" -extfile "$WORK/cli.cnf" -extensions cli \
		-out "$DIR/$NAME.pem.tmp" 2>"$WORK/err" || fail
	chmod 0644 "$DIR/$NAME.pem.tmp"
	mv -f "$DIR/$NAME.pem.tmp" "$DIR/$NAME.pem"
	echo "dev-client-certs: made $DIR/$NAME.pem (CN=$NAME, $KU, $EKU, $DAYS days, CA $CA)" >&2
done
