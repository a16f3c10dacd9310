#!/usr/bin/env bash
# End to end with DKIM signing on and off: ringmail-blast -> ringmaild -> ringmail-sink, for
# 1 KiB and 100 KiB messages (or --size), one RSA-2048 relaxed/relaxed signature per message.
#
#   bench/compare/dkim.sh [--repeat K] [--messages N] [--connections C] [--sizes "1024 102400"]
#                         [--key rsa|ed25519]
#
# Reported per size: median delivered messages/s (N / time from the first message sent until
# the sink received the Nth), unsigned and signed, and signed/unsigned; and the daemon's CPU
# time (user + system) per message, which a busy machine disturbs less than the rates. The sink must receive
# exactly N (ringmail-sink --exit-after N) and blast must report N accepted, or the run is
# "fail". Binaries from build/ (RINGMAILD, RINGMAIL_BLAST, RINGMAIL_SINK override). Loopback
# only; processes and temp dirs go away at exit.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

REPEAT=1
MESSAGES=20000
CONNECTIONS=50
SIZES="1024 102400"
KEY=rsa
TIMEOUT=${BENCH_TIMEOUT:-600}

while [ $# -gt 0 ]; do
  case "$1" in
  --repeat) REPEAT=$2; shift 2 ;;
  --messages) MESSAGES=$2; shift 2 ;;
  --connections) CONNECTIONS=$2; shift 2 ;;
  --sizes) SIZES=$2; shift 2 ;;
  --key) KEY=$2; shift 2 ;;
  -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

RINGMAILD=${RINGMAILD:-"$ROOT/build/src/ringmaild"}
RINGMAIL_BLAST=${RINGMAIL_BLAST:-"$ROOT/build/tools/ringmail-blast"}
RINGMAIL_SINK=${RINGMAIL_SINK:-"$ROOT/build/tools/ringmail-sink"}
for b in "$RINGMAILD" "$RINGMAIL_BLAST" "$RINGMAIL_SINK"; do
  [ -x "$b" ] || { echo "missing $b (meson compile -C build)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ringmail-dkim-bench.XXXXXX)
PIDS=()
log() { printf '%s\n' "$*" >&2; }
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
wait_port() {
  local port=$1 i
  for ((i = 0; i < 400; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

if [ "$KEY" = rsa ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/key.pem" 2>/dev/null
else
  openssl genpkey -algorithm ed25519 -out "$WORK/key.pem" 2>/dev/null
fi

# run SIGNED SIZE -> SECS (or fail)
run() {
  local signed=$1 size=$2 port sink_port dir pid sink t0 t1 rc=0 accepted
  SECS=fail
  CPU_US=fail
  port=$(free_port)
  sink_port=$(free_port)
  dir=$(mktemp -d "$WORK/run.XXXXXX")
  mkdir -p "$dir/spool"
  cat >"$dir/ringmail.toml" <<EOF
[server]
hostname = "ringmail-bench.test"
spool_dir = "$dir/spool"

[[listen]]
address = "127.0.0.1:$port"
role = "relay"

[relay]
allow_networks = ["127.0.0.0/8"]

[delivery]
smarthost = "127.0.0.1:$sink_port"

[admin]
address = ""
EOF
  if [ "$signed" = 1 ]; then
    printf '\n[[dkim]]\ndomain = "example.com"\nselector = "bench"\nkey_file = "%s"\n' \
      "$WORK/key.pem" >>"$dir/ringmail.toml"
  fi
  "$RINGMAIL_SINK" --listen "127.0.0.1:$sink_port" --exit-after "$MESSAGES" --quiet \
    >"$dir/sink.log" 2>&1 &
  sink=$!
  PIDS+=("$sink")
  wait_port "$sink_port" || { log "ringmail-sink did not start"; return 0; }
  "$RINGMAILD" --config "$dir/ringmail.toml" >"$dir/ringmaild.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port" || { log "ringmaild did not start: $(tail -5 "$dir/ringmaild.log")"; return 0; }
  t0=$EPOCHREALTIME
  timeout "$TIMEOUT" "$RINGMAIL_BLAST" --target "127.0.0.1:$port" --messages "$MESSAGES" \
    --connections "$CONNECTIONS" --size "$size" --from "bench@example.com" --json \
    --no-progress >"$dir/blast.json" 2>"$dir/blast.err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "  ringmail-blast failed ($rc): $(tail -3 "$dir/blast.err")"
    return 0
  fi
  accepted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"]["accepted"])' "$dir/blast.json")
  [ "$accepted" = "$MESSAGES" ] || { log "  ringmail-blast: $accepted of $MESSAGES accepted"; return 0; }
  timeout "$TIMEOUT" tail --pid="$sink" -f /dev/null || { log "  the sink did not receive $MESSAGES"; return 0; }
  t1=$EPOCHREALTIME
  grep -q "received $MESSAGES messages" "$dir/sink.log" || { log "  sink: $(tail -2 "$dir/sink.log")"; return 0; }
  if [ "$signed" = 1 ] && grep -q "not DKIM-signed\|signing failed" "$dir/ringmaild.log"; then
    log "  some messages were not signed: $(grep -m1 'not DKIM-signed\|signing failed' "$dir/ringmaild.log")"
    return 0
  fi
  local stat
  read -r -a stat <"/proc/$pid/stat"
  CPU_US=$(python3 -c "print('%.1f' % ((${stat[13]} + ${stat[14]}) / $(getconf CLK_TCK) / $MESSAGES * 1e6))")
  kill -TERM "$pid" 2>/dev/null || true
  timeout 30 tail --pid="$pid" -f /dev/null || kill -9 "$pid" 2>/dev/null || true
  SECS=$(python3 -c "print($t1 - $t0)")
}

median() {
  python3 -c '
import sys, statistics
v = sys.stdin.read().split()
print("fail" if not v or "fail" in v else "%.3f" % statistics.median(map(float, v)))'
}
rate() { if [ "$1" = fail ]; then echo "-"; else python3 -c "print('%.0f' % ($MESSAGES / $1))"; fi; }

printf '\n%s messages, %s connections, %s run(s), medians, %s CPUs, key %s\n' \
  "$MESSAGES" "$CONNECTIONS" "$REPEAT" "$(nproc)" "$KEY"
printf '%-8s %12s %12s %8s %14s %14s\n' size "unsigned/s" "signed/s" ratio "cpu/msg unsig" "cpu/msg signed"
for size in $SIZES; do
  U=() S=() UC=() SC=()
  for ((i = 1; i <= REPEAT; i++)); do
    log "size $size run $i/$REPEAT: unsigned"
    run 0 "$size"; U+=("$SECS"); UC+=("$CPU_US")
    log "size $size run $i/$REPEAT: signed"
    run 1 "$size"; S+=("$SECS"); SC+=("$CPU_US")
  done
  u=$(rate "$(printf '%s\n' "${U[@]}" | median)")
  s=$(rate "$(printf '%s\n' "${S[@]}" | median)")
  r=-
  if [ "$u" != - ] && [ "$s" != - ]; then r=$(python3 -c "print('%.2f' % ($s / $u))"); fi
  uc=$(printf '%s\n' "${UC[@]}" | median)
  sc=$(printf '%s\n' "${SC[@]}" | median)
  printf '%-8s %12s %12s %8s %12s us %12s us\n' "$size" "$u" "$s" "$r" "$uc" "$sc"
done
