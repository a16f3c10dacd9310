#!/usr/bin/env bash
# Heap allocations per message in ringmaild (issue 18's first suspect), counted, not sampled.
#
#   bench/compare/allocs.sh [--messages N] [--size BYTES] [--connections C]
#
# Defaults: 20,000 messages of 1,024 octets over 50 connections, smtp-source -d (one message
# at a time per connection) into ringmaild relaying to Postfix's smtp-sink, all on 127.0.0.1.
# A warm-up of 2,000 messages opens the connections (both sides) and the spool's segment
# first; then `perf stat` counts, in ringmaild only, the calls into the allocator it is linked
# with (mimalloc: operator new and new[] (one entry point), aligned new, malloc, calloc and
# realloc; uprobes added for the run and removed at exit) while N messages go through, up to
# the sink having counted all of them. Printed: each entry point's count and the total, per
# message. Everything ringmaild does per message is in it: reception, spool, delivery, logs.
# Needs root (uprobes), perf (Debian linux-perf) and a ringmaild linked with mimalloc (the
# default build). Calls are counted, not sampled, so two builds compare at any load on the
# machine; allocations made per group commit, not per message, move the figure by a few tenths.
# Binary: RINGMAILD (default: this tree's build/src/ringmaild).
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/compare/lib.sh

MESSAGES=20000
SIZE=1024
CONNECTIONS=50
WARM=2000
while [ $# -gt 0 ]; do
  case "$1" in
  --messages) MESSAGES=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --connections) CONNECTIONS=$2; shift 2 ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

need_exec "$RINGMAILD" "meson compile -C build src/ringmaild, or set RINGMAILD"
need_exec "$SMTP_SINK" "apt-get install postfix"
need_exec "$SMTP_SOURCE" "apt-get install postfix"
command -v perf >/dev/null || { log "missing perf (apt-get install linux-perf)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { log "uprobes need root"; exit 1; }
MI=$(ldd "$RINGMAILD" | awk '/libmimalloc/ {print $3}')
[ -n "$MI" ] || { log "$RINGMAILD is not linked with mimalloc (meson -Dmimalloc=enabled)"; exit 1; }
MI=$(readlink -f "$MI")

GROUP=ringmail_allocs
probes_remove() { perf probe -q -d "$GROUP:*" >/dev/null 2>&1 || true; }
bench_init ringmail-allocs
trap 'bench_cleanup; probes_remove' EXIT # perf (in PIDS) lets go of the probes first
probes_remove
EVENTS=()
for fn in mi_new mi_new_aligned mi_malloc mi_calloc mi_realloc; do
  if perf probe -q -x "$MI" -a "$GROUP:$fn=$fn" >/dev/null 2>&1; then
    EVENTS+=(-e "$GROUP:$fn")
  else
    log "no uprobe on $fn in $MI: not counted"
  fi
done
[ ${#EVENTS[@]} -gt 0 ] || { log "no uprobe could be added"; exit 1; }

SINK_PORT=$(free_port)
PORT=$(free_port)
smtp_sink_start "$SINK_PORT" "$WORK/sink.log"
ringmail_config "$WORK/rm" "$PORT" "$SINK_PORT"
ringmaild_start "$WORK/rm" "$PORT"

# load N TOTAL LOG: smtp-source sends N messages; returns once the sink has counted TOTAL in
# all (1, with a line on stderr, when the load failed or the sink fell short in time).
load() {
  smtp_sink_watch "$WORK/sink.log" "$2" "$WORK/seen" || return 1
  run_smtp_source "$PORT" "$1" "$CONNECTIONS" "$SIZE" "$3"
  if [ "$SECS" = fail ]; then
    kill "$WATCH_PID" 2>/dev/null || true
    return 1
  fi
  wait "$WATCH_PID" 2>/dev/null || true
  if [ "$(cat "$WORK/seen" 2>/dev/null || echo timeout)" = timeout ]; then
    log "the sink counted $(smtp_sink_count "$WORK/sink.log") of $2 messages in time"
    return 1
  fi
}

load "$WARM" "$WARM" "$WORK/warm.log" || exit 1
perf stat -x, "${EVENTS[@]}" -p "$RINGMAILD_PID" -o "$WORK/stat" -- sleep "$BENCH_TIMEOUT" &
PERF_PID=$!
PIDS+=("$PERF_PID")
sleep 0.5 # perf attaches its probes
load "$MESSAGES" $((WARM + MESSAGES)) "$WORK/load.log" || exit 1
sleep 0.2 # the last deliveries' logs and journal entries
kill -INT "$PERF_PID"
wait "$PERF_PID" || true
ringmaild_stop "$RINGMAILD_PID" || exit 1

echo "$MESSAGES messages of $SIZE octets, smtp-source -d, $CONNECTIONS connections, $(basename "$MI")"
awk -F, -v n="$MESSAGES" '
  $3 ~ /ringmail_allocs:/ { sub(".*:", "", $3); total += $1; printf "  %-16s %8.2f per message\n", $3, $1 / n }
  END { if (total == 0) { print "fail: nothing counted"; exit 1 } printf "  %-16s %8.2f per message\n", "total", total / n }
' "$WORK/stat"
