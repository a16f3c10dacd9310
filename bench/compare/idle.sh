#!/usr/bin/env bash
# Memory per idle SMTP connection in ringmaild (issue 18: under 4 KiB at 10,000 connections).
#
#   bench/compare/idle.sh [--connections N] [--shards S] [--greeting-only]
#
# Defaults: 10,000 connections, one shard per CPU. Starts ringmaild (a relay on 127.0.0.1,
# server.max_connections raised to N so that no shard answers 421), then a Python asyncio
# client opens N connections; each reads the 220 greeting, sends EHLO, reads the whole 250
# reply and then stays idle (--greeting-only: the 220, no EHLO). ringmaild's resident memory
# is read from /proc/PID/status (VmRSS) and /proc/PID/smaps_rollup (Rss) once before the
# first connection and once after all N are idle (1 s later); printed: the RSS before and
# after and (after - before) / N in KiB per connection. Counts are checked exactly: all N
# connections must have had their 220 (and EHLO reply), and ringmaild must hold exactly N
# more file descriptors than before (/proc/PID/fd); otherwise the script prints "fail",
# never a figure. The soft `ulimit -n` is raised to N + 1024 (the hard limit must allow it:
# the client and ringmaild each need N descriptors). Connections come from 127.0.0.1, then
# 127.0.0.2, ... (one source address per 20,000, well inside the ephemeral port range).
# Binary: RINGMAILD (default: this tree's build/src/ringmaild). Everything stays on
# 127.0.0.1; the client gives up after BENCH_TIMEOUT seconds (default 300); all processes
# and temp dirs go away at exit.
set -euo pipefail

cd "$(dirname "$0")/../.."
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
. bench/compare/lib.sh

CONNECTIONS=10000
SHARDS=0
EHLO=1
while [ $# -gt 0 ]; do
  case "$1" in
  --connections) CONNECTIONS=$2; shift 2 ;;
  --shards) SHARDS=$2; shift 2 ;;
  --greeting-only) EHLO=0; shift ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

need_exec "$RINGMAILD" "meson compile -C build src/ringmaild, or set RINGMAILD"

want=$((CONNECTIONS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
  log "ulimit -Hn is $hard: $CONNECTIONS connections need $want descriptors (raise the hard limit, e.g. as root: ulimit -Hn $want)"
  exit 1
fi
[ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$want" ] && ulimit -Sn "$want"

bench_init ringmail-idle

port=$(free_port)
nowhere=$(free_port) # the smarthost: nothing is delivered
dir="$WORK/rm"
ringmail_config "$dir" "$port" "$nowhere" "max_connections = $CONNECTIONS"
sed -i "s/^shards = 0$/shards = $SHARDS/" "$dir/ringmail.toml"
ringmaild_start "$dir" "$port" || { echo fail; exit 1; }
sleep 1 # the wait_port probe's session is gone, the shards are settled

rc=0
python3 - "$RINGMAILD_PID" "$port" "$CONNECTIONS" "$BENCH_TIMEOUT" "$EHLO" >"$WORK/idle.out" <<'EOF' &
import asyncio, os, socket, sys, time

pid, port, n, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ehlo = sys.argv[5] == "1"
PER_SOURCE = 20000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def memory():
    vm = rss = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                vm = int(line.split()[1])
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return vm, rss, len(os.listdir("/proc/%d/fd" % pid))


async def reply(reader, code):
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError("expected %s, got %r" % (code.decode(), line[:80]))
        if line[3:4] == b" ":
            return


async def one(i, gate, conns, errors):
    async with gate:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind(("127.0.0.%d" % (1 + i // PER_SOURCE), 0))
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=s)
            await reply(reader, b"220")
            if ehlo:
                writer.write(b"EHLO idle.test\r\n")
                await reply(reader, b"250")
            conns.append(writer)
        except Exception as e:  # counted, the first few are shown
            errors.append("%s: %s" % (type(e).__name__, e))


async def main():
    before = memory()
    gate = asyncio.Semaphore(256)  # connects in flight, well under the listen backlog
    conns, errors = [], []
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(i, gate, conns, errors) for i in range(n))), limit)
    except asyncio.TimeoutError:
        errors.append("timeout after %gs" % limit)
    took = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after = memory()
    print("established %d" % len(conns))
    print("seconds %.1f" % took)
    print("before %s %s %d" % before)
    print("after %s %s %d" % after)
    for e in errors[:5]:
        print("error " + e)
    for w in conns:
        w.transport.abort()


asyncio.run(main())
EOF
wait_child $! || rc=$?
ringmaild_stop "$RINGMAILD_PID" || true

if [ "$rc" -ne 0 ]; then
  log "the client failed ($rc)"
  echo fail
  exit 1
fi
sed -n 's/^error /  client: /p' "$WORK/idle.out" >&2
read -r _ established < <(grep '^established' "$WORK/idle.out")
read -r _ secs < <(grep '^seconds' "$WORK/idle.out")
read -r _ vm0 rss0 fd0 < <(grep '^before' "$WORK/idle.out")
read -r _ vm1 rss1 fd1 < <(grep '^after' "$WORK/idle.out")
if [ "$established" != "$CONNECTIONS" ]; then
  log "only $established of $CONNECTIONS connections got their 220$([ "$EHLO" = 1 ] && echo " and EHLO reply")"
  echo fail
  exit 1
fi
if [ $((fd1 - fd0)) != "$CONNECTIONS" ]; then
  log "ringmaild holds $((fd1 - fd0)) more descriptors, expected $CONNECTIONS"
  echo fail
  exit 1
fi
python3 - "$CONNECTIONS" "$vm0" "$vm1" "$rss0" "$rss1" "$secs" "$SHARDS" "$EHLO" <<'EOF'
import os, sys
n, vm0, vm1, rss0, rss1, secs, shards, ehlo = sys.argv[1:]
n = int(n)
print("%d idle connections to ringmaild (%s, then idle; opened in %s s), shards %s, %d CPUs"
      % (n, "220, EHLO" if ehlo == "1" else "220 only", secs,
         shards if shards != "0" else "one per CPU", os.cpu_count()))
print("VmRSS             %8s KiB before, %8s KiB after: %.2f KiB per connection"
      % (vm0, vm1, (int(vm1) - int(vm0)) / n))
if rss0 != "None":
    print("smaps_rollup Rss  %8s KiB before, %8s KiB after: %.2f KiB per connection"
          % (rss0, rss1, (int(rss1) - int(rss0)) / n))
EOF
