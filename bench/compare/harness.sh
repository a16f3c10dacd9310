#!/usr/bin/env bash
# Load generators and sinks side by side: ringmail-blast -> ringmail-sink, ringmail-blast ->
# Postfix's smtp-sink (with PIPELINING, and lock-step like smtp-source), and Postfix's
# smtp-source -> smtp-sink; same load, all on loopback.
#
#   bench/compare/harness.sh [--repeat K] [--messages N] [--connections C] [--size BYTES]
#                            [--shards S]
#
# Defaults: 50 connections, 50,000 messages of 1 KiB, one run. Every run checks its counts
# exactly: the generator must report N accepted (blast --json) or exit 0 (smtp-source), and
# the sink must have received exactly N (smtp-sink -c: its last counter line after the
# generator finished says mesg=N; ringmail-sink --exit-after N prints "ringmail-sink:
# received N messages, ..." on exit). (smtp-sink -M N is no use: it exits on the Nth message
# before answering it, so the generator loses its last reply.) A run that fails
# a check is reported as "fail", never as a figure.
# Reported: median messages/s over the runs (N / wall time of the generator process) and the
# ratio to smtp-source -> smtp-sink. Binaries: RINGMAIL_BLAST (default build/tools/ringmail-blast),
# RINGMAIL_SINK (default build/tools/ringmail-sink); SINK_LISTEN_FLAG (default --listen) is
# how ringmail-sink is told its address. Everything stays on 127.0.0.1; processes and temp
# dirs go away at exit.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

REPEAT=1
MESSAGES=50000
CONNECTIONS=50
SIZE=1024
SHARDS=0
TIMEOUT=${BENCH_TIMEOUT:-600} # per run, seconds

while [ $# -gt 0 ]; do
  case "$1" in
  --repeat) REPEAT=$2; shift 2 ;;
  --messages) MESSAGES=$2; shift 2 ;;
  --connections) CONNECTIONS=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --shards) SHARDS=$2; shift 2 ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

RINGMAIL_BLAST=${RINGMAIL_BLAST:-"$ROOT/build/tools/ringmail-blast"}
RINGMAIL_SINK=${RINGMAIL_SINK:-"$ROOT/build/tools/ringmail-sink"}
SINK_LISTEN_FLAG=${SINK_LISTEN_FLAG:---listen}
SMTP_SINK=/usr/sbin/smtp-sink
SMTP_SOURCE=/usr/sbin/smtp-source
for t in "$SMTP_SINK" "$SMTP_SOURCE"; do
  [ -x "$t" ] || { echo "missing $t (apt-get install postfix)" >&2; exit 1; }
done

log() { printf '%s\n' "$*" >&2; }

HAVE_BLAST=1
HAVE_SINK=1
[ -x "$RINGMAIL_BLAST" ] || { log "ringmail-blast not found at $RINGMAIL_BLAST (meson compile -C build tools/ringmail-blast): its rows are skipped"; HAVE_BLAST=0; }
[ -x "$RINGMAIL_SINK" ] || { log "ringmail-sink not found at $RINGMAIL_SINK (set RINGMAIL_SINK or build it): the blast -> ringmail-sink row is skipped"; HAVE_SINK=0; }

WORK=$(mktemp -d /tmp/ringmail-harness.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT SECONDS
  local port=$1 limit=$2 i
  for ((i = 0; i < limit * 20; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

# wait_exit PID SECONDS: until the process is gone (a zombie counts as gone); 1 on timeout.
wait_exit() {
  local pid=$1 limit=$2 st start=$SECONDS
  while :; do
    st=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || return 0
    [ -z "$st" ] || [ "$st" = Z ] && return 0
    ((SECONDS - start > limit)) && return 1
    sleep 0.01
  done
}

# The wait_port probe opens one connection without a message; sinks count messages, not
# connections, so it does not disturb the counts.

start_smtp_sink() { # PORT -> SINK_PID
  local port=$1 user_args=()
  [ "$(id -u)" -eq 0 ] && user_args=(-u nobody)
  "$SMTP_SINK" "${user_args[@]}" -c "127.0.0.1:$port" 1000 >"$WORK/smtp-sink.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 || { log "smtp-sink did not start: $(tail -3 "$WORK/smtp-sink.log")"; return 1; }
}

start_ringmail_sink() { # PORT -> SINK_PID
  local port=$1
  "$RINGMAIL_SINK" "$SINK_LISTEN_FLAG" "127.0.0.1:$port" --exit-after "$MESSAGES" \
    >"$WORK/ringmail-sink.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 || { log "ringmail-sink did not start: $(tail -3 "$WORK/ringmail-sink.log")"; return 1; }
}

# run_blast PORT [ARGS...] -> SECS (or fail); checks blast's own exact count.
run_blast() {
  local port=$1 t0 t1 rc=0 accepted
  shift
  SECS=fail
  t0=$EPOCHREALTIME
  timeout "$TIMEOUT" "$RINGMAIL_BLAST" --target "127.0.0.1:$port" --messages "$MESSAGES" \
    --connections "$CONNECTIONS" --size "$SIZE" --shards "$SHARDS" "$@" --json \
    --no-progress >"$WORK/blast.json" 2>"$WORK/blast.err" || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    log "  ringmail-blast failed ($rc): $(tail -3 "$WORK/blast.err") $(cat "$WORK/blast.json")"
    return 0
  fi
  accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"]["accepted"])' "$WORK/blast.json")
  if [ "$accepted" != "$MESSAGES" ]; then
    log "  ringmail-blast: $accepted of $MESSAGES accepted"
    return 0
  fi
  SECS=$(python3 -c "print($t1 - $t0)")
}

run_source() { # PORT -> SECS (or fail)
  local port=$1 t0 t1 rc=0
  SECS=fail
  t0=$EPOCHREALTIME
  timeout "$TIMEOUT" "$SMTP_SOURCE" -d -s "$CONNECTIONS" -m "$MESSAGES" -l "$SIZE" \
    -f from@x.test -t to@y.test "127.0.0.1:$port" >"$WORK/source.log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    log "  smtp-source failed ($rc): $(tail -3 "$WORK/source.log")"
    return 0
  fi
  SECS=$(python3 -c "print($t1 - $t0)")
}

# check_smtp_sink: every message was answered, so every "." was counted: stop the sink and
# read its last counter line (written out at exit).
check_smtp_sink() {
  local got
  kill -TERM "$SINK_PID" 2>/dev/null || true
  if ! wait_exit "$SINK_PID" 10; then
    kill -9 "$SINK_PID" 2>/dev/null || true
  fi
  wait "$SINK_PID" 2>/dev/null || true
  got=$(tr '\r' '\n' <"$WORK/smtp-sink.log" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
  if [ "$got" != "$MESSAGES" ]; then
    log "  smtp-sink counted ${got:-nothing} messages, expected $MESSAGES"
    SECS=fail
  fi
}

# check_ringmail_sink: exits after --exit-after N with "received N messages" on its last line.
check_ringmail_sink() {
  local got
  if ! wait_exit "$SINK_PID" 30; then
    log "  ringmail-sink did not exit after $MESSAGES messages"
    kill "$SINK_PID" 2>/dev/null || true
    SECS=fail
  fi
  wait "$SINK_PID" 2>/dev/null || true
  got=$(sed -n 's/.*ringmail-sink: received \([0-9]*\) messages.*/\1/p' "$WORK/ringmail-sink.log" | tail -1)
  if [ "$got" != "$MESSAGES" ]; then
    log "  ringmail-sink reports ${got:-nothing} messages, expected $MESSAGES: $(tail -2 "$WORK/ringmail-sink.log")"
    SECS=fail
  fi
}

BR=() BS=() BL=() SS=()
for ((i = 1; i <= REPEAT; i++)); do
  if [ "$HAVE_BLAST" = 1 ] && [ "$HAVE_SINK" = 1 ]; then
    port=$(free_port)
    SECS=fail
    if start_ringmail_sink "$port"; then run_blast "$port" --pipelining; check_ringmail_sink; fi
    BR+=("$SECS")
    log "run $i/$REPEAT: ringmail-blast -> ringmail-sink: ${SECS}s"
  fi
  if [ "$HAVE_BLAST" = 1 ]; then
    port=$(free_port)
    SECS=fail
    if start_smtp_sink "$port"; then run_blast "$port" --pipelining; check_smtp_sink; fi
    BS+=("$SECS")
    log "run $i/$REPEAT: ringmail-blast -> smtp-sink: ${SECS}s"
    port=$(free_port)
    SECS=fail
    if start_smtp_sink "$port"; then run_blast "$port"; check_smtp_sink; fi
    BL+=("$SECS")
    log "run $i/$REPEAT: ringmail-blast (lock-step) -> smtp-sink: ${SECS}s"
  fi
  port=$(free_port)
  SECS=fail
  if start_smtp_sink "$port"; then run_source "$port"; check_smtp_sink; fi
  SS+=("$SECS")
  log "run $i/$REPEAT: smtp-source -> smtp-sink: ${SECS}s"
done

rate() { # seconds... -> median msg/s, or "-" if any run failed or none ran
  python3 -c '
import sys, statistics
v = sys.argv[2:]
n = int(sys.argv[1])
print("-" if not v or "fail" in v else "%.0f" % (n / statistics.median(map(float, v))))' "$MESSAGES" "$@"
}
ratio() {
  if [ "$1" = - ] || [ "$2" = - ]; then echo "-"; else python3 -c "print('%.2f' % ($1 / $2))"; fi
}

br=$(rate "${BR[@]+"${BR[@]}"}")
bs=$(rate "${BS[@]+"${BS[@]}"}")
bl=$(rate "${BL[@]+"${BL[@]}"}")
ss=$(rate "${SS[@]}")
printf '\n%s messages of %s octets, %s connections, %s run(s), medians, %s CPUs\n' \
  "$MESSAGES" "$SIZE" "$CONNECTIONS" "$REPEAT" "$(nproc)"
printf '%-40s %10s %8s\n' "" "msg/s" "ratio"
printf '%-40s %10s %8s\n' "ringmail-blast -> ringmail-sink" "$br" "$(ratio "$br" "$ss")"
printf '%-40s %10s %8s\n' "ringmail-blast -> smtp-sink" "$bs" "$(ratio "$bs" "$ss")"
printf '%-40s %10s %8s\n' "ringmail-blast lock-step -> smtp-sink" "$bl" "$(ratio "$bl" "$ss")"
printf '%-40s %10s %8s\n' "smtp-source -> smtp-sink" "$ss" "1.00"
