#!/bin/sh
# A throwaway PostgreSQL server for tests, the local cluster and the bench: Debian's
# own postgresql package, its own data directory, loopback only.
#
#   pgtmp.sh start DIR PORT   initdb (first time) and start; prints the connection URI
#   pgtmp.sh stop DIR         stop it (the data stays)
#   pgtmp.sh destroy DIR      stop it and delete its data
#   pgtmp.sh uri DIR          print the URI of a started server
#
# DIR holds the state file (DIR/pg.env). PostgreSQL refuses to run as root, so as root
# the server runs as the "postgres" user (made by Debian's package) in a private
# directory under /tmp that user can reach; otherwise as the caller, under DIR.
# Authentication is "trust" on 127.0.0.1 and on a private Unix socket: this server is
# for tests and development only, never for PHI (docs/SCALE-OUT.md "PostgreSQL").
set -eu

die() { echo "pgtmp: $*" >&2; exit 1; }

bindir() {
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] && { echo "$d"; return 0; }
	done
	die "PostgreSQL server binaries not found (apt-get install postgresql)"
}

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

cmd=${1-}
dir=${2-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: pgtmp.sh start DIR PORT | stop DIR | destroy DIR | uri DIR"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
envf="$dir/pg.env"

case "$cmd" in
start)
	port=${3-}
	case "$port" in '' | *[!0-9]*) die "start wants a port number" ;; esac
	bin=$(bindir)
	if [ -f "$envf" ]; then
		# shellcheck disable=SC1090
		. "$envf"
	else
		if [ "$(id -u)" -eq 0 ]; then
			id postgres >/dev/null 2>&1 || die "no \"postgres\" user (apt-get install postgresql)"
			PGTMP_DATA=$(mktemp -d /tmp/kmsd-pg.XXXXXX)
			chown postgres: "$PGTMP_DATA"
		else
			PGTMP_DATA="$dir/pgdata"
			mkdir -p "$PGTMP_DATA"
		fi
		chmod 700 "$PGTMP_DATA"
		as_pg "$bin/initdb" -D "$PGTMP_DATA/data" -U kmsd --auth=trust -E UTF8 --locale=C.UTF-8 \
			>"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
		mkdir -p "$PGTMP_DATA/sock"
		[ "$(id -u)" -eq 0 ] && chown postgres: "$PGTMP_DATA/sock"
		cat >>"$PGTMP_DATA/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGTMP_DATA/sock'
unix_socket_permissions = 0700
max_connections = 200
fsync = on
synchronous_commit = on
logging_collector = off
EOF
		printf 'PGTMP_DATA=%s\n' "$PGTMP_DATA" >"$envf"
	fi
	# shellcheck disable=SC1090
	. "$envf"
	printf 'PGTMP_DATA=%s\nPGTMP_PORT=%s\n' "$PGTMP_DATA" "$port" >"$envf"
	if ! as_pg "$bin/pg_ctl" -D "$PGTMP_DATA/data" status >/dev/null 2>&1; then
		as_pg "$bin/pg_ctl" -D "$PGTMP_DATA/data" -w -t 60 -o "-p $port" -l "$PGTMP_DATA/server.log" start \
			>/dev/null || { cat "$PGTMP_DATA/server.log" >&2; die "server did not start"; }
	fi
	if ! as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U kmsd -d postgres -Atqc \
		"SELECT 1 FROM pg_database WHERE datname = 'kmsd'" | grep -q 1; then
		as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U kmsd kmsd
	fi
	echo "postgresql://kmsd@127.0.0.1:$port/kmsd"
	;;
stop | destroy)
	if [ -f "$envf" ]; then
		# shellcheck disable=SC1090
		. "$envf"
		bin=$(bindir)
		if [ -d "$PGTMP_DATA/data" ]; then
			as_pg "$bin/pg_ctl" -D "$PGTMP_DATA/data" -m fast -w stop >/dev/null 2>&1 || true
		fi
		if [ "$cmd" = destroy ]; then
			rm -rf "$PGTMP_DATA"
			rm -f "$envf" "$dir/initdb.log"
		fi
	fi
	;;
uri)
	[ -f "$envf" ] || die "not started: $dir"
	# shellcheck disable=SC1090
	. "$envf"
	echo "postgresql://kmsd@127.0.0.1:${PGTMP_PORT:?}/kmsd"
	;;
*)
	die "unknown command \"$cmd\""
	;;
esac
