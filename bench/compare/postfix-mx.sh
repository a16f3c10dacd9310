#!/usr/bin/env bash
# Side-by-side MX routing throughput: a private Postfix instance and ringmaild, both resolving
# MX records through the same dnsmasq and delivering to the same sink over 100 domains.
#
#   bench/compare/postfix-mx.sh [--repeat N] [--messages N] [--sessions N] [--size BYTES]
#                               [--domains N] [--only postfix|ringmail]
#                               [--loader smtp-source|blast]
#
# dnsmasq (127.0.0.153:53) answers MX d0.bench..d99.bench -> mx.bench -> 127.0.0.2, where
# Postfix's smtp-sink listens (port P). ringmaild: dns.servers = ["127.0.0.153:53"],
# delivery.mx_port = P. Postfix: smtp_tcp_port = P, default transport smtp (MX lookups), and,
# because its SMTP client uses the system resolver (res_search reads /etc/resolv.conf and
# has no port setting), it runs in a private mount namespace (unshare -m, needs root) where
# /etc/resolv.conf is bind-mounted to "nameserver 127.0.0.153".
# Load (default --loader smtp-source): smtp-source (-s 1 each) in --sessions parallel workers, each sending its share in
# chunks of 20 messages to rotating domains (smtp-source cannot vary the recipient domain
# within one run), so --sessions sessions stay open at a time and recipients cover every
# domain. On a small machine those ~1,000 short smtp-source runs cost CPU the MTAs need;
# --loader blast uses ringmail-blast instead (one thread, --sessions connections, recipients
# u{n}@d{n}.bench over --domains), the same for both MTAs. Reported per MTA (median over --repeat runs):
#   accepted/s   messages / wall time of the load (every message got its 250)
#   delivered/s  messages / time until the sink received the last one
# Everything stays on loopback; all processes and temp dirs go away at exit.
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
LOADER=smtp-source
DOMAINS=100
DNS_ADDR=127.0.0.153
SINK_ADDR=127.0.0.2
TIMEOUT=${BENCH_TIMEOUT:-600} # per run, seconds

while [ $# -gt 0 ]; do
  case "$1" in
  --repeat) REPEAT=$2; shift 2 ;;
  --messages) MESSAGES=$2; shift 2 ;;
  --sessions) SESSIONS=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --domains) DOMAINS=$2; shift 2 ;;
  --only) ONLY=$2; shift 2 ;;
  --loader) LOADER=$2; shift 2 ;;
  -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

SMTP_SINK=/usr/sbin/smtp-sink
SMTP_SOURCE=/usr/sbin/smtp-source
[ "$(id -u)" -eq 0 ] || { echo "needs root (dnsmasq on port 53, unshare -m for Postfix)" >&2; exit 1; }
for t in "$SMTP_SINK" "$SMTP_SOURCE" /usr/sbin/postfix /usr/sbin/dnsmasq /usr/bin/unshare; do
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

# wait_port PORT SECONDS [ADDR]: until something accepts on ADDR:PORT (127.0.0.1).
wait_port() {
  local port=$1 limit=$2 addr=${3:-127.0.0.1} i
  for ((i = 0; i < limit * 20; i++)); do
    if (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then
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
  "$SMTP_SINK" "${user_args[@]}" -M "$MESSAGES" "$SINK_ADDR:$port" 1000 \
    >"$WORK/sink-$port.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 "$SINK_ADDR" || { log "smtp-sink did not start"; cat "$WORK/sink-$port.log" >&2; return 1; }
}

# sink_alive PID: running (an exited child stays a zombie until reaped: state Z).
sink_alive() {
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# worker W PORT: this session's share, 20 messages per smtp-source run, rotating domains.
worker() {
  local w=$1 port=$2 share chunk sent=0 k=0 d
  share=$(((MESSAGES + SESSIONS - 1 - w) / SESSIONS))
  while ((sent < share)); do
    chunk=$((share - sent < 20 ? share - sent : 20))
    d=$(((w + k * SESSIONS) % DOMAINS))
    "$SMTP_SOURCE" -d -s 1 -m "$chunk" -l "$SIZE" -f from@x.test -t "u$w@d$d.bench" \
      "127.0.0.1:$port" || return 1
    sent=$((sent + chunk))
    k=$((k + 1))
  done
}

# load PORT SINK_PID: sets ACC and DEL to seconds until accepted / delivered, or "fail".
load() {
  local port=$1 sink_pid=$2 t0 t1 rc=0 start=$SECONDS w wpids=()
  ACC=fail DEL=fail
  t0=$EPOCHREALTIME
  if [ "$LOADER" = blast ]; then
    timeout "$TIMEOUT" "$BLAST" --target "127.0.0.1:$port" --shards 1 \
      --connections "$SESSIONS" --messages "$MESSAGES" --size "$SIZE" --from from@x.test \
      --to 'u{n}@d{n}.bench' --domains "$DOMAINS" --pipelining --no-progress \
      >>"$WORK/source.log" 2>&1 || rc=$?
  else
    for ((w = 0; w < SESSIONS; w++)); do
      worker "$w" "$port" >>"$WORK/source.log" 2>&1 &
      wpids+=($!)
    done
    for w in "${wpids[@]}"; do
      wait "$w" || rc=$?
    done
  fi
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

# ----------------------------------------------------------------------------- DNS

# dnsmasq on DNS_ADDR:53 for the zone "bench": d0..d(N-1).bench MX 10 mx.bench, mx.bench A
# SINK_ADDR; everything else in the zone NXDOMAIN, nothing forwarded.
start_dns() {
  local conf="$WORK/dnsmasq.conf" i
  {
    echo "local=/bench/"
    echo "no-resolv"
    echo "no-hosts"
    echo "bind-interfaces"
    echo "listen-address=$DNS_ADDR"
    echo "port=53"
    echo "cache-size=10000"
    echo "host-record=mx.bench,$SINK_ADDR"
    for ((i = 0; i < DOMAINS; i++)); do echo "mx-host=d$i.bench,mx.bench,10"; done
  } >"$conf"
  /usr/sbin/dnsmasq --no-daemon --conf-file="$conf" --pid-file="$WORK/dnsmasq.pid" \
    >"$WORK/dnsmasq.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  kill -0 "${PIDS[-1]}" 2>/dev/null || { log "dnsmasq did not start:"; cat "$WORK/dnsmasq.log" >&2; exit 1; }
  echo "nameserver $DNS_ADDR" >"$WORK/resolv.conf"
}

# ----------------------------------------------------------------------------- Postfix

# A private instance in $WORK/NAME (lib.sh's postfix_make) that routes by MX through the
# bench's dnsmasq instead of relaying to the sink. Sets CONF.
make_postfix() {
  postfix_make "$WORK/$1" "$2" "$3"
  /usr/sbin/postconf -c "$CONF" -e "relayhost =" "default_transport = smtp" \
    "smtp_tcp_port = $3" "smtp_host_lookup = dns" "disable_dns_lookups = no" \
    "smtp_dns_support_level = enabled" "default_destination_concurrency_limit = 20" \
    "smtp_connection_cache_on_demand = yes"
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
  # Postfix's resolver reads /etc/resolv.conf: give it ours in a private mount namespace
  # (its daemons are children of the master started there and stay in it).
  if ! unshare -m --propagation private sh -c \
    "mount --bind '$WORK/resolv.conf' /etc/resolv.conf && /usr/sbin/postfix -c '$conf' start" \
    >"$WORK/pf$i.start.log" 2>&1; then
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
BLAST=${RINGMAIL_BLAST:-"$ROOT/build/tools/ringmail-blast"}

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
run_ringmail() {
  local i=$1 port sink_port dir pid rc
  ACC=fail DEL=fail
  port=$(free_port)
  sink_port=$(free_port)
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

[delivery]
mx_port = $sink_port
destination_max_connections = 20

[dns]
servers = ["$DNS_ADDR:53"]

[admin]
address = ""
EOF
  start_sink "$sink_port"
  "$RINGMAILD" --config "$dir/ringmail.toml" >"$dir/ringmaild.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if ! wait_port "$port" 20; then
    log "ringmaild did not start:"
    tail -20 "$dir/ringmaild.log" >&2
    return 0
  fi
  load "$port" "$SINK_PID"
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

start_dns
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

printf '\nMX routing: %s messages of %s bytes, %s sessions, %s domains, loader %s, %s run(s), medians, %s CPUs\n' \
  "$MESSAGES" "$SIZE" "$SESSIONS" "$DOMAINS" "$LOADER" "$REPEAT" "$(nproc)"
printf '%-10s %12s %12s\n' "" "accepted/s" "delivered/s"
printf '%-10s %12s %12s\n' postfix "$pf_acc" "$pf_del"
printf '%-10s %12s %12s\n' ringmail "$rm_acc" "$rm_del"
printf '%-10s %12s %12s\n' ratio "$(ratio "$rm_acc" "$pf_acc")" "$(ratio "$rm_del" "$pf_del")"
