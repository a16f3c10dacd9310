#!/usr/bin/env bash
# Many concurrent big uploads through ringmaild: bounded memory (issue 12), byte-exact delivery.
#
#   bench/compare/big-upload.sh [--sessions N] [--size BYTES] [--shards S]
#                               [--delivery-connections C] [--budget BYTES]
#
# Defaults: 1,000 concurrent sessions (ringmail-blast, one connection each) each upload one
# 20 MiB message into ringmaild (2 shards), which relays them to ringmail-sink (smarthost, C
# connections per shard, default 2). ringmail-sink dumps every message; a checker hashes each
# dump as it lands (and deletes it) and compares it, without ringmaild's Received header, with
# the file sent: every message must arrive byte-exact, exactly once.
# Printed: ringmaild's peak RSS (VmHWM of /proc/PID/status at the end: reception, spool and
# delivery together; the target is < 256 MiB), upload throughput (bytes / wall time of the
# generator) and end-to-end throughput (until the sink has them all), and the sampled peaks of
# anonymous memory and of mapped spool pages apart. Delivery reads the spool through a shared
# mapping and drops each body's pages once sent, so a delivery in flight holds about a MiB of
# it. --budget sets server.max_unwritten_bytes (default: its default).
# Binaries: RINGMAILD, RINGMAIL_BLAST, RINGMAIL_SINK (default build/...). Loopback only; the
# temp dir (spool, dumps) goes away at exit. Needs about 2 x N x SIZE of free disk at worst.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SESSIONS=1000
SIZE=$((20 << 20))
SHARDS=2
DELIVERY_CONNECTIONS=2
BUDGET=""
TIMEOUT=${BENCH_TIMEOUT:-1800}

while [ $# -gt 0 ]; do
  case "$1" in
  --sessions) SESSIONS=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --shards) SHARDS=$2; shift 2 ;;
  --delivery-connections) DELIVERY_CONNECTIONS=$2; shift 2 ;;
  --budget) BUDGET=$2; shift 2 ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

RINGMAILD=${RINGMAILD:-"$ROOT/build/src/ringmaild"}
RINGMAIL_BLAST=${RINGMAIL_BLAST:-"$ROOT/build/tools/ringmail-blast"}
RINGMAIL_SINK=${RINGMAIL_SINK:-"$ROOT/build/tools/ringmail-sink"}
for b in "$RINGMAILD" "$RINGMAIL_BLAST" "$RINGMAIL_SINK"; do
  [ -x "$b" ] || { echo "missing $b (meson compile -C build)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ringmail-big-upload.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # PORT SECONDS
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# The message: CRLF lines that all differ, some starting with '.' (stuffed on the way).
python3 - "$WORK/message.eml" "$SIZE" <<'EOF'
import hashlib, sys
path, size = sys.argv[1], int(sys.argv[2])
head = b"From: bench@big-upload.test\r\nTo: sink@big-upload.test\r\nSubject: big upload\r\n\r\n"
out = [head]
n = len(head)
i = 0
while n < size:
    line = (b"." if i % 101 == 0 else b"") + b"%09d %s\r\n" % (i, hashlib.sha1(b"%d" % i).hexdigest().encode())
    out.append(line)
    n += len(line)
    i += 1
with open(path, "wb") as f:
    f.write(b"".join(out))
EOF
EXPECT=$(sha256sum "$WORK/message.eml" | cut -d' ' -f1)
BYTES=$(stat -c %s "$WORK/message.eml")

SINK_PORT=$(free_port)
PORT=$(free_port)
mkdir -p "$WORK/dump" "$WORK/spool"
"$RINGMAIL_SINK" --listen "127.0.0.1:$SINK_PORT" --shards 1 --dump "$WORK/dump" --quiet \
  --max-message-size $((SIZE * 2)) --exit-after "$SESSIONS" >"$WORK/sink.out" 2>"$WORK/sink.err" &
SINK_PID=$!
PIDS+=("$SINK_PID")

{
  echo "[server]"
  echo "hostname = \"big-upload.test\""
  echo "shards = $SHARDS"
  echo "spool_dir = \"$WORK/spool\""
  echo "max_message_size = $((SIZE * 2))"
  echo "data_timeout = \"10m\""
  echo "log_level = \"warn\""
  [ -n "$BUDGET" ] && echo "max_unwritten_bytes = $BUDGET"
  echo "[[listen]]"
  echo "address = \"127.0.0.1:$PORT\""
  echo "role = \"relay\""
  echo "[relay]"
  echo "allow_networks = [\"127.0.0.0/8\"]"
  echo "[delivery]"
  echo "smarthost = \"127.0.0.1:$SINK_PORT\""
  echo "max_connections = $DELIVERY_CONNECTIONS"
  echo "retry_schedule = [\"1s\"]"
  echo "[admin]"
  echo "address = \"\""
} >"$WORK/ringmail.toml"
"$RINGMAILD" --config "$WORK/ringmail.toml" >"$WORK/ringmaild.log" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
wait_port "$PORT" 20 || { echo "ringmaild did not start:" >&2; cat "$WORK/ringmaild.log" >&2; exit 1; }
wait_port "$SINK_PORT" 20 || { echo "ringmail-sink did not start" >&2; exit 1; }
BASE_HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status")

# The checker: hashes each dump once its .env is written (the .eml is complete), deletes both.
python3 - "$WORK/dump" "$EXPECT" "$SESSIONS" "$TIMEOUT" >"$WORK/check.out" 2>&1 <<'EOF' &
import hashlib, os, sys, time
d, expect, n, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ok = bad = 0
deadline = time.monotonic() + timeout
while ok + bad < n and time.monotonic() < deadline:
    envs = [f for f in os.listdir(d) if f.endswith(".env")]
    if not envs:
        time.sleep(0.2)
        continue
    for e in envs:
        eml = os.path.join(d, e[:-4] + ".eml")
        with open(eml, "rb") as f:
            data = f.read()
        i = data.find(b"\nFrom: bench@big-upload.test\r\n")
        if data.startswith(b"Received: ") and i > 0 and hashlib.sha256(data[i + 1:]).hexdigest() == expect:
            ok += 1
        else:
            bad += 1
            print("differs:", e, len(data), file=sys.stderr)
        os.unlink(eml)
        os.unlink(os.path.join(d, e))
print(f"{ok} {bad}")
EOF
CHECK_PID=$!
PIDS+=("$CHECK_PID")

# The sampler: the peaks of anonymous memory (heap: buffers, chunks) and of mapped spool pages
# apart, every 100 ms; VmHWM alone cannot say which one made the peak.
(
  anon=0 file=0
  while kill -0 "$DAEMON_PID" 2>/dev/null && [ ! -e "$WORK/stop-sampling" ]; do
    read -r a f < <(awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {print a+0, f+0}' \
      "/proc/$DAEMON_PID/status" 2>/dev/null || echo "0 0")
    [ "$a" -gt "$anon" ] && anon=$a
    [ "$f" -gt "$file" ] && file=$f
    echo "$anon $file" >"$WORK/sample.tmp" && mv "$WORK/sample.tmp" "$WORK/sample.out"
    sleep 0.1
  done
) &
SAMPLER_PID=$!
PIDS+=("$SAMPLER_PID")

T0=$(date +%s.%N)
"$RINGMAIL_BLAST" --target "127.0.0.1:$PORT" --connections "$SESSIONS" --messages "$SESSIONS" \
  --per-connection 1 --message-file "$WORK/message.eml" --timeout 900s --no-progress --json \
  --to 'rcpt{n}@big-upload.test' >"$WORK/blast.json" 2>"$WORK/blast.err" || {
  echo "ringmail-blast failed:" >&2; cat "$WORK/blast.err" >&2; tail -20 "$WORK/ringmaild.log" >&2; exit 1; }
T1=$(date +%s.%N)
wait "$CHECK_PID" || true
T2=$(date +%s.%N)
PEAK_HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status")
touch "$WORK/stop-sampling"
wait "$SAMPLER_PID" 2>/dev/null || true
read -r PEAK_ANON PEAK_FILE <"$WORK/sample.out" 2>/dev/null || { PEAK_ANON=0; PEAK_FILE=0; }
read -r OK BAD <"$WORK/check.out" || { OK=0; BAD=0; }
ACCEPTED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"]["accepted"])' "$WORK/blast.json" 2>/dev/null || echo "?")

python3 - "$SESSIONS" "$BYTES" "$T0" "$T1" "$T2" "$BASE_HWM" "$PEAK_HWM" "$OK" "$BAD" "$ACCEPTED" \
  "$PEAK_ANON" "$PEAK_FILE" <<'EOF'
import sys
n, size, t0, t1, t2, base, peak, ok, bad, acc, anon, mapped = sys.argv[1:]
n, size = int(n), int(size)
t0, t1, t2 = float(t0), float(t1), float(t2)
gib = n * size / (1 << 30)
print(f"big-upload: {n} sessions x {size / (1 << 20):.1f} MiB = {gib:.1f} GiB, accepted {acc}")
print(f"  ringmaild peak RSS (VmHWM): {int(peak) / 1024:.0f} MiB (idle {int(base) / 1024:.0f} MiB)"
      f" -> {'PASS' if int(peak) < 256 * 1024 else 'FAIL'} (< 256 MiB)")
print(f"    sampled peaks every 100 ms: anonymous {int(anon) / 1024:.0f} MiB,"
      f" mapped spool pages {int(mapped) / 1024:.0f} MiB")
print(f"  upload: {t1 - t0:.1f} s, {n * size / (1 << 20) / (t1 - t0):.0f} MiB/s")
print(f"  end to end: {t2 - t0:.1f} s, {n * size / (1 << 20) / (t2 - t0):.0f} MiB/s")
print(f"  delivered byte-exact: {ok}/{n}, differing: {bad} -> {'PASS' if int(ok) == n and int(bad) == 0 else 'FAIL'}")
EOF
