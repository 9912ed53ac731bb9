#!/bin/sh
# check.sh — runs every test kmsd has, after `make tests` and `make asan` (make check).
#
#   1. every build/tests/test_* and build/asan/tests/test_* (cmocka unit tests); counts
#      come from cmocka's "[  PASSED  ] N test(s)." and "[  FAILED  ] N test(s)" lines;
#      a binary that exits non-zero (crash, sanitizer report, timeout) without a FAILED
#      line counts as 1 failed
#   2. pytest tests/integration (modules in parallel: PYTEST_JOBS) with KMSD_BIN=build/kmsd, then KMSD_BIN=build/asan/kmsd
#      (KMSCTL_BIN beside it); then tests/integration/test_stress.py alone with
#      KMSD_BIN=build/tsan/kmsd (make tsan) for STRESS_SECONDS (default 20); then
#      tests/cluster (the local cluster, docs/SCALE-OUT.md) with KMSD_BIN=build/kmsd; counts
#      come from pytest's summary (passed; failed and errors count as failed)
#   3. each libFuzzer harness in build/fuzz/bin over its corpus in tests/fuzz/corpus
#      (one result per harness)
#   4. bench/bench.py --self-test (make bench's statistics, JSON writer and ceiling
#      tools, bench/pair.py's argument checks; no timing; one result)
#   5. the PostgreSQL store: a throwaway server (scripts/pgtmp.sh start build/pgtest PORT,
#      destroyed afterwards, also on failure), the store's unit tests again with
#      KMS_TEST_PG_URI, and the integration modules PG_MODULES against it (each kmsd
#      on a fresh database); `scripts/check.sh pg` (make check-pg) runs only this part
#
# Prints each suite's result as it goes; the last line is exactly "N passed, M failed".
# Exit status 0 only when M = 0 and N > 0.
#
# Environment: PG_TEST_PORT (the throwaway PostgreSQL's port; default: a free one),
# PYTHON (default /usr/bin/python3, Debian's, which has pytest, requests and
# hvac), UNIT_TIMEOUT (seconds per unit binary, default 300), PYTEST_TIMEOUT (seconds
# per pytest run, default 900), PYTEST_JOBS (pytest-xdist workers for the integration
# modules, default 4; 1 runs them one after another), PYTEST_ARGS (extra pytest arguments), STRESS_SECONDS
# (the ThreadSanitizer stress run's length, default 20).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd -P)
PYTHON=${PYTHON:-/usr/bin/python3}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-300}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-900}
PYTEST_JOBS=${PYTEST_JOBS:-4}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
unset CMOCKA_MESSAGE_OUTPUT CMOCKA_XML_FILE # plain output, parsed below

ONLY=${1:-all}
case $ONLY in all | pg) ;; *) echo "usage: check.sh [pg]" >&2; exit 2 ;; esac
PG_DIR="$ROOT/build/pgtest"
PG_STARTED=0
pg_cleanup() {
	[ "$PG_STARTED" -eq 1 ] && sh scripts/pgtmp.sh destroy "$PG_DIR" >/dev/null 2>&1
	PG_STARTED=0
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kmsd-check.XXXXXX") || exit 1
trap 'pg_cleanup; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

TOTAL_PASS=0
TOTAL_FAIL=0

# sum_matches FILE SED_EXPR: sums the numbers the sed expression prints, one per line
sum_matches() {
	sed -n "$2" "$1" | awk '{ s += $1 } END { print s + 0 }'
}

run_unit() { # binary
	bin=$1
	log="$TMP/unit.log"
	start=$(date +%s)
	timeout -k 10 "$UNIT_TIMEOUT" "$bin" >"$log" 2>&1 </dev/null
	rc=$?
	secs=$(($(date +%s) - start))
	pass=$(sum_matches "$log" 's/^\[  PASSED  \] \([0-9][0-9]*\) test(s)\..*/\1/p')
	fail=$(sum_matches "$log" 's/^\[  FAILED  \] \([0-9][0-9]*\) test(s).*/\1/p')
	has_failed_line=0
	grep -q '^\[  FAILED  \] [0-9][0-9]* test(s)' "$log" && has_failed_line=1
	note=""
	if [ "$rc" -ne 0 ] && [ "$has_failed_line" -eq 0 ]; then
		fail=$((fail + 1))
		case $rc in
		124 | 137) note=" (timed out after ${UNIT_TIMEOUT}s)" ;;
		*) note=" (exit status $rc without a FAILED line: crash or sanitizer report)" ;;
		esac
	elif [ "$rc" -eq 0 ] && [ "$pass" -eq 0 ] && [ "$fail" -eq 0 ]; then
		note=" (no cmocka result lines)"
	fi
	if grep -q -e 'ERROR: AddressSanitizer' -e 'ERROR: LeakSanitizer' -e 'runtime error:' "$log"; then
		if [ "$rc" -eq 0 ]; then
			fail=$((fail + 1))
			note="$note (sanitizer report despite exit status 0)"
		fi
	fi
	TOTAL_PASS=$((TOTAL_PASS + pass))
	TOTAL_FAIL=$((TOTAL_FAIL + fail))
	if [ "$fail" -gt 0 ]; then
		printf 'FAIL  %-44s %3d passed, %d failed, %ss%s\n' "$bin" "$pass" "$fail" "$secs" "$note"
		# the failing part of the log: cmocka failures and any sanitizer report
		grep -n -e '^\[  FAILED  \]' -e '^\[  ERROR   \]' -e 'ERROR: ' -e 'runtime error:' \
			-e 'SUMMARY:' -e 'Assertion' -e 'error:' "$log" | head -40 | sed 's/^/      /'
		echo "      --- last lines ---"
		tail -n 15 "$log" | sed 's/^/      /'
	else
		printf 'ok    %-44s %3d passed, %ss%s\n' "$bin" "$pass" "$secs" "$note"
	fi
}

for dir in build/tests build/asan/tests; do
	[ "$ONLY" = all ] || break
	found=0
	for bin in "$dir"/test_*; do
		[ -f "$bin" ] && [ -x "$bin" ] || continue
		case $bin in *.o | *.d) continue ;; esac
		found=1
		run_unit "$bin"
	done
	[ "$found" -eq 1 ] || echo "--    $dir/test_*: no unit test binaries"
done

run_pytest() { # label kmsd-binary [test paths, default tests/integration]
	label=$1
	bin=$2
	shift 2
	paths=${*:-tests/integration}
	log="$TMP/pytest-$label.log"
	echo "==> integration tests ($label): KMSD_BIN=$bin"
	if [ ! -x "$bin" ]; then
		echo "FAIL  integration ($label): $bin is missing (make / make asan / make tsan)"
		TOTAL_FAIL=$((TOTAL_FAIL + 1))
		return
	fi
	start=$(date +%s)
	# Test modules in parallel (pytest-xdist), each module whole on one worker (its
	# kmsd is module-scoped): most of the suite's time is waiting (fsync, clocks,
	# handshakes, timeouts), so PYTEST_JOBS workers on 2 cores roughly quarter it.
	xdist=""
	if [ "$PYTEST_JOBS" -gt 1 ] && "$PYTHON" -c 'import xdist' 2>/dev/null; then
		xdist="-n $PYTEST_JOBS --dist loadfile"
	fi
	# shellcheck disable=SC2086
	(KMSD_BIN="$bin" KMSCTL_BIN="$(dirname "$bin")/kmsctl" STRESS_SECONDS="$RUN_STRESS" timeout -k 15 "$PYTEST_TIMEOUT" "$PYTHON" -m pytest -p no:cacheprovider \
		-q -rfE --tb=short --color=no $xdist ${PYTEST_ARGS:-} $paths </dev/null 2>&1
	echo "$?" >"$TMP/rc") | tee "$log" | sed 's/^/      /'
	rc=$(cat "$TMP/rc" 2>/dev/null || echo 1)
	secs=$(($(date +%s) - start))
	# pytest's last summary line: "3 failed, 120 passed, 1 error in 9.12s" (maybe in "=")
	summary=$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)(,| in )|no tests ran' "$log" | tail -n 1)
	# shellcheck disable=SC2046 # three numbers, split on purpose
	set -- $(printf '%s\n' "$summary" | awk '{
		for (i = 2; i <= NF; i++) {
			w = $i; sub(/,$/, "", w); n = $(i - 1)
			if (n !~ /^[0-9]+$/) continue
			if (w == "passed") p += n
			else if (w == "failed") f += n
			else if (w == "error" || w == "errors") e += n
		}
	} END { print p + 0, f + 0, e + 0 }')
	pass=$1
	fail=$(($2 + $3))
	note=""
	if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
		fail=1
		case $rc in
		124 | 137) note=" (timed out after ${PYTEST_TIMEOUT}s)" ;;
		5) note=" (no tests collected)" ;;
		*) note=" (pytest exit status $rc)" ;;
		esac
	fi
	TOTAL_PASS=$((TOTAL_PASS + pass))
	TOTAL_FAIL=$((TOTAL_FAIL + fail))
	if [ "$fail" -gt 0 ]; then
		printf 'FAIL  integration (%s): %d passed, %d failed, %ss%s\n' "$label" "$pass" "$fail" "$secs" "$note"
	else
		printf 'ok    integration (%s): %d passed, %ss\n' "$label" "$pass" "$secs"
	fi
}

# 5. the PostgreSQL store (see the top): store unit tests and an integration subset.
PG_UNITS="test_store test_store_pg test_authmac test_mfa test_approval test_core"
PG_MODULES="test_store.py test_api.py test_lifecycle.py test_rotate.py test_datakey.py test_tokens.py test_quorum.py test_approval_interrupt.py"
run_pg() {
	echo "==> the PostgreSQL store"
	port=${PG_TEST_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
	sh scripts/pgtmp.sh destroy "$PG_DIR" >/dev/null 2>&1 # a leftover of a killed run
	if ! uri=$(sh scripts/pgtmp.sh start "$PG_DIR" "$port" 2>"$TMP/pg.log"); then
		echo "FAIL  PostgreSQL: scripts/pgtmp.sh start failed (apt-get install postgresql)"
		sed 's/^/      /' "$TMP/pg.log" | tail -n 20
		TOTAL_FAIL=$((TOTAL_FAIL + 1))
		return
	fi
	PG_STARTED=1
	export KMS_TEST_PG_URI="$uri"
	for u in $PG_UNITS; do
		if [ -x "build/tests/$u" ]; then
			run_unit "build/tests/$u"
		else
			echo "FAIL  build/tests/$u: missing (make tests)"
			TOTAL_FAIL=$((TOTAL_FAIL + 1))
		fi
	done
	set --
	for m in $PG_MODULES; do set -- "$@" "tests/integration/$m"; done
	RUN_STRESS=${STRESS_SECONDS:-6} run_pytest postgresql build/kmsd "$@"
	unset KMS_TEST_PG_URI
	pg_cleanup
}

if [ "$ONLY" = pg ]; then
	run_pg
	echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
	[ "$TOTAL_FAIL" -eq 0 ] && [ "$TOTAL_PASS" -gt 0 ] || exit 1
	exit 0
fi

RUN_STRESS=${STRESS_SECONDS:-6} # test_stress.py's length in the normal and ASan runs
run_pytest build build/kmsd
run_pytest asan build/asan/kmsd
# ThreadSanitizer: the concurrency stress test only (the whole suite under TSan is far
# slower and adds no concurrency the stress test lacks); any TSan report fails it.
RUN_STRESS=${STRESS_SECONDS:-20}
run_pytest tsan build/tsan/kmsd tests/integration/test_stress.py
# The cluster tests (tests/cluster, docs/SCALE-OUT.md): each module its own local cluster
# (shared token, PostgreSQL, 2-3 nodes, HAProxy); about a minute.
run_pytest cluster build/kmsd tests/cluster

run_pg

# 3. every fuzzer's checked-in corpus, replayed once (make fuzz-build made them), so that
#    a past crash cannot come back. One result per harness.
echo "==> fuzz corpus replay"
for bin in build/fuzz/bin/fuzz_*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	corpus="tests/fuzz/corpus/$name"
	log="$TMP/$name.log"
	if [ ! -d "$corpus" ]; then
		echo "FAIL  $name: no corpus at $corpus"
		TOTAL_FAIL=$((TOTAL_FAIL + 1))
		continue
	fi
	if timeout -k 10 "$UNIT_TIMEOUT" "$bin" -runs=0 "$corpus" >"$log" 2>&1 </dev/null; then
		printf 'ok    %-44s %3d inputs\n' "$name" "$(ls "$corpus" | wc -l)"
		TOTAL_PASS=$((TOTAL_PASS + 1))
	else
		echo "FAIL  $name: replaying $corpus"
		tail -n 30 "$log" | sed 's/^/      /'
		TOTAL_FAIL=$((TOTAL_FAIL + 1))
	fi
done

# 4. make bench's own parts, without a benchmark: its statistics and JSON writer on
#    made-up figures, and each ceiling tool run for a moment (no timing asserted).
echo "==> bench self-test"
if timeout -k 10 "$UNIT_TIMEOUT" "$PYTHON" bench/bench.py --self-test >"$TMP/bench.log" 2>&1 </dev/null; then
	echo "ok    bench self-test"
	TOTAL_PASS=$((TOTAL_PASS + 1))
else
	echo "FAIL  bench self-test"
	tail -n 30 "$TMP/bench.log" | sed 's/^/      /'
	TOTAL_FAIL=$((TOTAL_FAIL + 1))
fi

if [ $((TOTAL_PASS + TOTAL_FAIL)) -eq 0 ]; then
	echo "check: nothing ran"
	echo "0 passed, 0 failed"
	exit 1
fi
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
[ "$TOTAL_FAIL" -eq 0 ] || exit 1
exit 0
