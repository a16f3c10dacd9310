#!/usr/bin/env bash
# Developer entry point for a fresh Debian 12 machine.
#
#   ./packaging/dev.sh run  [ringmaild args]  install what is missing, build the daemon and
#                                             the tools only, run ringmaild
#   ./packaging/dev.sh test                   install what is missing, build, run every test
#   ./packaging/dev.sh deps | build           the individual steps
#
# `test` builds three trees: build (release, as a package is built: -O3, NDEBUG, Debian's
# hardening flags, warnings as errors), build-asan (ASan+UBSan, assertions on) and, when
# clang++ exists, build-fuzz (libFuzzer). Its last line is always
# "tests: N passed, N failed"; it exits non-zero if anything failed or no test ran.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

PACKAGES=(meson ninja-build pkg-config g++ liburing-dev libwolfssl-dev libc-ares-dev
  libmimalloc-dev libargon2-dev libre2-dev libtomlplusplus-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev
  libbenchmark-dev cmake python3 postfix swaks dnsmasq-base clang libclang-rt-14-dev
  python3-dkim opendkim opendkim-tools haproxy redis-server prometheus chromium)

JOBS=${JOBS:-2}

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

missing_packages() {
  local p status
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || printf '%s\n' "$p"
  done
}

install_deps() {
  local missing
  mapfile -t missing < <(missing_packages)
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  log "installing: ${missing[*]}"
  # Postfix is only here for its smtp-source/smtp-sink tools and for side-by-side
  # benchmarks, haproxy for the PROXY protocol tests, redis-server for the [cluster] tests
  # (each starts its own on a free loopback port): no configuration, and no system daemon
  # left running.
  echo 'postfix postfix/main_mailer_type select No configuration' | as_root debconf-set-selections
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  as_root apt-get update || rc=$?
  if [ "$rc" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
      "${missing[@]}" || rc=$?
  fi
  if [ "$made_policy" -eq 1 ]; then
    as_root rm -f "$policy"
  fi
  [ "$rc" -eq 0 ] || { log "package installation failed"; return "$rc"; }
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now postfix.service >/dev/null 2>&1 || true
    # haproxy is started by the PROXY protocol tests on loopback; no system instance.
    as_root systemctl disable --now haproxy.service >/dev/null 2>&1 || true
    as_root systemctl disable --now redis-server.service >/dev/null 2>&1 || true
    # prometheus is here for promtool (tests/integration/test_admin.py): no system instance.
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  if [ -f /run/redis/redis-server.pid ] && command -v redis-cli >/dev/null 2>&1; then
    as_root redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true
  fi
  if [ -f /etc/postfix/main.cf ] && as_root postfix status >/dev/null 2>&1; then
    as_root postfix stop >/dev/null 2>&1 || true
  fi
}

# setup_dir DIR [meson options...]: configure DIR, reusing it when it exists.
setup_dir() {
  local dir=$1
  shift
  if [ -f "$dir/meson-private/coredata.dat" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null ||
      meson setup --wipe "$dir" "$@"
  else
    rm -rf "$dir"
    meson setup "$dir" "$@"
  fi
}

# The test command's main tree is what a packager builds, tested: release (-O3, NDEBUG) with
# Debian's hardening flags on top, warnings as errors (GCC 12 warns differently at -O3 and
# with _FORTIFY_SOURCE). It used to be debugoptimized plus a release tree compiled only; one
# tree instead of two saves CI a full compile, and -O3 without debug information compiles
# faster than -O2 -g (the whole tree: 6.5 min against 8.8 min on 2 cores). Assertions and the
# owning-shard checks run in build-asan, which is not a release build.
BUILD_OPTS=(--buildtype=release -Dwerror=true
  "-Dcpp_args=-D_FORTIFY_SOURCE=2 -fstack-protector-strong")

build_main() {
  setup_dir build "${BUILD_OPTS[@]}"
  meson compile -C build -j "$JOBS"
}

# What `run` needs: the daemon and the tools, not the tests and benchmarks (a newcomer wants
# a first mail, not 200 targets), in a tree of its own with lighter flags: -O1 without debug
# information costs about 40% less compiler time per translation unit than debugoptimized's
# -O2 -g (ringmaild.cc: 10.6 s against 16.7 s of CPU). `build` stays the test command's tree.
RUN_TARGETS=(src/ringmaild tools/ringmail-blast tools/ringmail-sink tools/ringmailctl)
RUN_DIR=build-run

cmd_run() {
  install_deps
  setup_dir "$RUN_DIR" -Doptimization=1 -Ddebug=false -Dtests=false -Dbenchmarks=false \
    -Dfuzz=false
  meson compile -C "$RUN_DIR" -j "$JOBS" "${RUN_TARGETS[@]}"
  local daemon="$ROOT/$RUN_DIR/src/ringmaild"
  if [ ! -x "$daemon" ]; then
    log "$RUN_DIR/src/ringmaild was not built (the daemon is not part of this tree yet)"
    exit 1
  fi
  # Without --config ringmaild uses its embedded default (127.0.0.1:2525, spool under ./var).
  mkdir -p var
  exec "$daemon" "$@"
}

# Counts one build dir's results into PASSED/FAILED/SKIPPED from meson-logs/testlog.json.
PASSED=0
FAILED=0
SKIPPED=0
count_results() {
  local dir=$1 meson_rc=$2 counts p f s
  local json="$dir/meson-logs/testlog.json"
  if [ ! -f "$json" ]; then
    if [ "$meson_rc" -ne 0 ]; then
      log "$dir: meson test failed without a test log"
      FAILED=$((FAILED + 1))
    fi
    return 0
  fi
  counts=$(python3 - "$json" <<'EOF'
import json, sys
passed = failed = skipped = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            result = json.loads(line).get("result", "")
        except ValueError:
            failed += 1
            continue
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:  # FAIL, TIMEOUT, ERROR, UNEXPECTEDPASS, anything unknown
            failed += 1
print(passed, failed, skipped)
EOF
  )
  read -r p f s <<<"$counts"
  # meson failing although no test did (crash, interrupted run) still counts as a failure.
  if [ "$meson_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
  fi
  log "$dir: $p passed, $f failed, $s skipped"
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  SKIPPED=$((SKIPPED + s))
}

# run_suite DIR [meson test args...]: compile DIR (only the targets in COMPILE_TARGETS when
# set), run its tests, count them.
COMPILE_TARGETS=()
run_suite() {
  local dir=$1
  shift
  rm -f "$dir/meson-logs/testlog.json"
  if ! meson compile -C "$dir" -j "$JOBS" "${COMPILE_TARGETS[@]}"; then
    log "$dir: build failed"
    FAILED=$((FAILED + 1))
    return 0
  fi
  local rc=0
  meson test -C "$dir" --no-rebuild --print-errorlogs "$@" || rc=$?
  count_results "$dir" "$rc"
}

cmd_test() {
  install_deps
  # Four at a time on two cores: most integration tests wait on the clock, not the CPU
  # (tests/integration/meson.build says which run alone).
  export MESON_TESTTHREADS=${MESON_TESTTHREADS:-4}

  if setup_dir build "${BUILD_OPTS[@]}"; then
    run_suite build
  else
    log "build: configure failed"
    FAILED=$((FAILED + 1))
  fi

  # -O1 -g1 (line tables, enough for sanitizer stack traces): the sanitizer tree compiles
  # about 3x faster than at -O2 -g and still runs the integration tests at a useful speed.
  if setup_dir build-asan -Doptimization=1 -Ddebug=false -Dcpp_args=-g1 \
    -Db_sanitize=address,undefined -Db_lundef=false -Dmimalloc=disabled -Dbenchmarks=false; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      run_suite build-asan --no-suite fuzz
  else
    log "build-asan: configure failed"
    FAILED=$((FAILED + 1))
  fi

  if command -v clang++ >/dev/null 2>&1; then
    if CXX=clang++ setup_dir build-fuzz --buildtype=debugoptimized -Dfuzz=true \
      -Dbenchmarks=false -Dmimalloc=disabled; then
      # Only the fuzz targets: the rest of the tree is built and tested twice already.
      COMPILE_TARGETS=(fuzz_server_session fuzz_address fuzz_reply_parser fuzz_dns_message
        fuzz_proxy_header fuzz_http_request)
      run_suite build-fuzz --suite fuzz
      COMPILE_TARGETS=()
    else
      log "build-fuzz: configure failed"
      FAILED=$((FAILED + 1))
    fi
  else
    log "clang++ not found: skipping the fuzz build"
  fi

  [ "$SKIPPED" -eq 0 ] || log "$SKIPPED skipped"
  echo "tests: $PASSED passed, $FAILED failed"
  if [ "$FAILED" -ne 0 ] || [ "$PASSED" -eq 0 ]; then
    exit 1
  fi
}

case "${1:-}" in
run)
  shift
  cmd_run "$@"
  ;;
test)
  shift
  cmd_test "$@"
  ;;
deps)
  install_deps
  ;;
build)
  install_deps
  build_main
  ;;
*)
  echo "usage: $0 run [ringmaild args] | test | deps | build" >&2
  exit 2
  ;;
esac
