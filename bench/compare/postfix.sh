#!/usr/bin/env bash
# Side-by-side throughput: a private Postfix instance and ringmaild, same load, same sink.
#
#   bench/compare/postfix.sh [--repeat N] [--messages N] [--sessions N] [--size BYTES]
#                            [--only postfix|ringmail] [--scrape MS] [--shaping on|off]
#
# --scrape MS: ringmaild serves its admin endpoint and one keep-alive HTTP client (a stand-in for
# Prometheus) GETs /metrics every MS milliseconds during the load (issue 14: the cost of being
# scraped). Compare the ringmail figures of a run with and without it.
# --shaping (issue 16, with --only ringmail): ringmaild routes y.test to the sink by a
# [[domain]] route instead of the smarthost, so the destination is one a [[provider]] can
# match; "on" adds two egress sources (127.0.0.1 and 127.0.0.2) in a 2:1 pool, a provider
# for y.test whose limits are never reached, and the shipped shaping rules. Compare the two.
#
# Each MTA relays everything to Postfix's smtp-sink on loopback and is loaded with
# `smtp-source -d -s 50 -m 20000 -l 1024`. Reported per MTA (median over --repeat runs):
#   accepted/s   messages / wall time of smtp-source (every message got its 250)
#   delivered/s  messages / time until the sink received the last one
# Everything stays on 127.0.0.1; all processes and temp dirs go away at exit.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# postfix_make (the private Postfix instance); this script's own functions follow and win.
. "$ROOT/bench/compare/lib.sh"

REPEAT=1
MESSAGES=20000
SESSIONS=50
SIZE=1024
ONLY=""
SCRAPE_MS=""
SHAPING=""
TIMEOUT=${BENCH_TIMEOUT:-600} # per run, seconds

while [ $# -gt 0 ]; do
  case "$1" in
  --repeat) REPEAT=$2; shift 2 ;;
  --messages) MESSAGES=$2; shift 2 ;;
  --sessions) SESSIONS=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --only) ONLY=$2; shift 2 ;;
  --scrape) SCRAPE_MS=$2; shift 2 ;;
  --shaping) SHAPING=$2; shift 2 ;;
  -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

SMTP_SINK=/usr/sbin/smtp-sink
SMTP_SOURCE=/usr/sbin/smtp-source
for t in "$SMTP_SINK" "$SMTP_SOURCE" /usr/sbin/postfix; do
  [ -x "$t" ] || { echo "missing $t (apt-get install postfix)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ringmail-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
POSTFIX_DIRS=()

log() { printf '%s\n' "$*" >&2; }

cleanup() {
  local d p
  for d in "${POSTFIX_DIRS[@]}"; do
    /usr/sbin/postfix -c "$d" stop >/dev/null 2>&1 || true
  done
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  sleep 0.3
  for p in "${PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null || true
  done
  # A Postfix master that ignored "stop": kill it by the pid it recorded.
  for d in "${POSTFIX_DIRS[@]}"; do
    local pidfile="$WORK/${d##*/}-queue/pid/master.pid"
    if [ -f "$pidfile" ]; then
      p=$(tr -dc '0-9' <"$pidfile")
      if [ -n "$p" ]; then kill -9 "$p" 2>/dev/null || true; fi
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
  local port=$1 limit=$2 i
  for ((i = 0; i < limit * 20; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# start_sink PORT: smtp-sink that exits after MESSAGES messages (-M); sets SINK_PID.
start_sink() {
  local port=$1 user_args=()
  [ "$(id -u)" -eq 0 ] && user_args=(-u nobody)
  "$SMTP_SINK" "${user_args[@]}" -M "$MESSAGES" "127.0.0.1:$port" 1000 \
    >"$WORK/sink-$port.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 || { log "smtp-sink did not start"; cat "$WORK/sink-$port.log" >&2; return 1; }
}

# sink_alive PID: running (an exited child stays a zombie until reaped: state Z).
sink_alive() {
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# load PORT SINK_PID: sets ACC and DEL to seconds until accepted / delivered, or "fail".
load() {
  local port=$1 sink_pid=$2 t0 t1 rc=0 start=$SECONDS
  ACC=fail DEL=fail
  t0=$EPOCHREALTIME
  timeout "$TIMEOUT" "$SMTP_SOURCE" -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
    -f from@x.test -t to@y.test "127.0.0.1:$port" >"$WORK/source.log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    log "smtp-source failed ($rc): $(tail -3 "$WORK/source.log")"
    return 0
  fi
  ACC=$(python3 -c "print($t1 - $t0)")
  # The sink exits after receiving MESSAGES messages (-M).
  while sink_alive "$sink_pid"; do
    if ((SECONDS - start > TIMEOUT)); then
      log "the sink did not receive $MESSAGES messages within ${TIMEOUT}s"
      return 0
    fi
    sleep 0.01
  done
  DEL=$(python3 -c "print($EPOCHREALTIME - $t0)")
}

# ----------------------------------------------------------------------------- Postfix

# A private instance in $WORK/NAME (lib.sh's postfix_make): own config, queue and data
# directories, relaying everything to the sink. Sets CONF.
make_postfix() {
  postfix_make "$WORK/$1" "$2" "$3"
}

# run_postfix N: sets ACC and DEL.
run_postfix() {
  local i=$1 smtpd_port sink_port conf
  ACC=fail DEL=fail
  smtpd_port=$(free_port)
  sink_port=$(free_port)
  make_postfix "pf$i" "$smtpd_port" "$sink_port"
  conf=$CONF
  POSTFIX_DIRS+=("$conf")
  start_sink "$sink_port"
  if ! /usr/sbin/postfix -c "$conf" start >"$WORK/pf$i.start.log" 2>&1; then
    log "postfix did not start:"
    cat "$WORK/pf$i.start.log" >&2
    return 0
  fi
  if ! wait_port "$smtpd_port" 20; then
    log "postfix smtpd not listening on $smtpd_port"
    tail -20 "$WORK/pf$i.maillog" >&2 || true
    return 0
  fi
  load "$smtpd_port" "$SINK_PID"
  /usr/sbin/postfix -c "$conf" stop >/dev/null 2>&1 || true
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
}

# ----------------------------------------------------------------------------- ringmail

RINGMAILD=${RINGMAILD:-"$ROOT/build/src/ringmaild"}

ensure_ringmaild() {
  if [ ! -x "$RINGMAILD" ]; then
    log "building ringmaild"
    if [ ! -d "$ROOT/build" ]; then
      meson setup "$ROOT/build" >&2 || return 1
    fi
    meson compile -C "$ROOT/build" -j 2 src/ringmaild >&2 || return 1
  fi
  [ -x "$RINGMAILD" ]
}

# run_ringmail N: sets ACC and DEL.
# GET /metrics every $2 ms on one keep-alive connection until killed; writes the scrape count
# and the mean scrape time to $3 at exit.
start_scraper() {
  python3 - "$1" "$2" "$3" <<'PY' &
import http.client, signal, sys, time
port, every, out = int(sys.argv[1]), float(sys.argv[2]) / 1000, sys.argv[3]
n, spent = 0, 0.0
def done(*_):
    with open(out, "w") as f:
        f.write(f"{n} {spent / max(n, 1) * 1000:.2f}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
nxt = time.monotonic()
while True:
    t = time.monotonic()
    try:
        c.request("GET", "/metrics")
        c.getresponse().read()
        n += 1
        spent += time.monotonic() - t
    except (OSError, http.client.HTTPException):
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    nxt += every
    time.sleep(max(0.0, nxt - time.monotonic()))
PY
  SCRAPER_PID=$!
  PIDS+=("$SCRAPER_PID")
}

run_ringmail() {
  local i=$1 port sink_port dir pid rc admin_port="" admin_address=""
  ACC=fail DEL=fail
  port=$(free_port)
  sink_port=$(free_port)
  if [ -n "$SCRAPE_MS" ]; then
    admin_port=$(free_port)
    admin_address="127.0.0.1:$admin_port"
  fi
  dir="$WORK/rm$i"
  mkdir -p "$dir/spool"
  cat >"$dir/ringmail.toml" <<EOF
[server]
hostname = "ringmail-bench.test"
shards = 0
spool_dir = "$dir/spool"

[[listen]]
address = "127.0.0.1:$port"
role = "relay"

[relay]
allow_networks = ["127.0.0.0/8"]
domains = []

[admin]
address = "$admin_address"
EOF
  if [ -z "$SHAPING" ]; then
    printf '[delivery]\nsmarthost = "127.0.0.1:%s"\n' "$sink_port" >>"$dir/ringmail.toml"
  else
    cat >>"$dir/ringmail.toml" <<EOF
[[domain]]
name = "y.test"
route = "127.0.0.1:$sink_port"
max_connections = 64
EOF
  fi
  if [ "$SHAPING" = on ]; then
    cat >>"$dir/ringmail.toml" <<EOF
[delivery]
egress_pool = "bench"
shaping_file = "$ROOT/packaging/shaping.toml"

[[egress_source]]
name = "a"
address = "127.0.0.1"

[[egress_source]]
name = "b"
address = "127.0.0.2"

[[egress_pool]]
name = "bench"
sources = [{ name = "a", weight = 2 }, { name = "b", weight = 1 }]

[[provider]]
name = "bench"
domain_suffix = ["y.test"]
max_connections = 64
max_message_rate = "1000000/s"
max_connection_rate = "100000/s"
EOF
  fi
  start_sink "$sink_port"
  "$RINGMAILD" --config "$dir/ringmail.toml" >"$dir/ringmaild.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if ! wait_port "$port" 20; then
    log "ringmaild did not start:"
    tail -20 "$dir/ringmaild.log" >&2
    return 0
  fi
  if [ -n "$SCRAPE_MS" ]; then
    start_scraper "$admin_port" "$SCRAPE_MS" "$dir/scrapes"
  fi
  load "$port" "$SINK_PID"
  if [ -n "$SCRAPE_MS" ]; then
    kill -TERM "$SCRAPER_PID" 2>/dev/null || true
    wait "$SCRAPER_PID" 2>/dev/null || true
    log "  scraper: $(awk '{print $1 " scrapes of /metrics, " $2 " ms each on average"}' "$dir/scrapes" 2>/dev/null)"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  rc=0
  timeout 30 tail --pid="$pid" -f /dev/null || { log "ringmaild ignored SIGTERM"; kill -9 "$pid" 2>/dev/null || true; }
  wait "$pid" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || log "ringmaild exited with $rc"
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
}

# ----------------------------------------------------------------------------- report

median() { # values on stdin; "fail" if any failed
  python3 -c '
import sys, statistics
v = sys.stdin.read().split()
print("fail" if not v or "fail" in v else "%.3f" % statistics.median(map(float, v)))'
}

rate() { # seconds -> msg/s
  if [ "$1" = fail ]; then echo "-"; else python3 -c "print('%.0f' % ($MESSAGES / $1))"; fi
}

ratio() {
  if [ "$1" = - ] || [ "$2" = - ]; then echo "-"; else python3 -c "print('%.2f' % ($1 / $2))"; fi
}

PF_ACC=() PF_DEL=() RM_ACC=() RM_DEL=()
for ((i = 1; i <= REPEAT; i++)); do
  if [ "$ONLY" != ringmail ]; then
    log "run $i/$REPEAT: postfix"
    run_postfix "$i"
    PF_ACC+=("$ACC") PF_DEL+=("$DEL")
    log "  postfix: seconds until accepted ${ACC}, until delivered ${DEL}"
  fi
  if [ "$ONLY" != postfix ]; then
    log "run $i/$REPEAT: ringmail"
    if ensure_ringmaild; then
      run_ringmail "$i"
    else
      log "  ringmaild is not available"
      ACC=fail DEL=fail
    fi
    RM_ACC+=("$ACC") RM_DEL+=("$DEL")
    log "  ringmail: seconds until accepted ${ACC}, until delivered ${DEL}"
  fi
done

pf_acc=- pf_del=- rm_acc=- rm_del=-
if [ "$ONLY" != ringmail ]; then
  pf_acc=$(rate "$(printf '%s\n' "${PF_ACC[@]}" | median)")
  pf_del=$(rate "$(printf '%s\n' "${PF_DEL[@]}" | median)")
fi
if [ "$ONLY" != postfix ]; then
  rm_acc=$(rate "$(printf '%s\n' "${RM_ACC[@]}" | median)")
  rm_del=$(rate "$(printf '%s\n' "${RM_DEL[@]}" | median)")
fi

printf '\n%s messages of %s bytes, %s sessions, %s run(s), medians, %s CPUs%s\n' \
  "$MESSAGES" "$SIZE" "$SESSIONS" "$REPEAT" "$(nproc)" \
  "${SCRAPE_MS:+, ringmaild /metrics scraped every $SCRAPE_MS ms}"
printf '%-10s %12s %12s\n' "" "accepted/s" "delivered/s"
printf '%-10s %12s %12s\n' postfix "$pf_acc" "$pf_del"
printf '%-10s %12s %12s\n' ringmail "$rm_acc" "$rm_del"
printf '%-10s %12s %12s\n' ratio "$(ratio "$rm_acc" "$pf_acc")" "$(ratio "$rm_del" "$pf_del")"
