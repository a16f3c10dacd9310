#!/usr/bin/env bash
# How long this machine stops running anything, with every CPU busy, without and with disk
# flushes (issue 18: a latency percentile under load cannot be lower than the machine's own
# stalls, and a virtual machine can have stalls no process of it causes).
#
#   bench/compare/stalls.sh [--seconds S] [--dir DIR] [--rates LIST]
#
# For each entry of LIST (default none,250,500,1000,2000,max) one phase of S seconds (default
# 3): one spinner process per CPU reads the monotonic clock in a loop and records every gap
# over 1 ms (time in which it did not run), while a writer appends 5,000 octets to a file in
# DIR (default /var/tmp: put it on the spool's filesystem) and fdatasyncs it, R times a second
# (none: no writer; max: back to back). Columns:
#   fdatasync/s   the writer's achieved rate
#   stopped %     the share of the phase the spinners did not run (mean over the CPUs)
#   gaps/s        gaps of 5 ms or more, a second, on the first CPU
#   longest ms    the longest gap on any CPU
#   all CPUs      gaps of 5 ms or more on the first CPU that every other CPU saw at the same
#                 time: the whole machine stopped (a hypervisor's CPU quota, say), not one
#                 process preempted by another
# The spinners and the writer are this script's own processes; nothing else needs to run, and
# nothing touches the network. The file is removed at exit. Exits 2 on a usage error.
set -euo pipefail

SECONDS_PER=3
DIR=/var/tmp
RATES=none,250,500,1000,2000,max

while [ $# -gt 0 ]; do
  case "$1" in
  --seconds) SECONDS_PER=$2; shift 2 ;;
  --dir) DIR=$2; shift 2 ;;
  --rates) RATES=$2; shift 2 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -d "$DIR" ] && [ -w "$DIR" ] || { echo "--dir $DIR: not a writable directory" >&2; exit 2; }

exec python3 - "$SECONDS_PER" "$DIR" "$RATES" <<'EOF'
import multiprocessing as mp
import os, sys, tempfile, time

try:
    seconds = float(sys.argv[1])
except ValueError:
    print(f"--seconds: {sys.argv[1]!r} is not a number", file=sys.stderr)
    sys.exit(2)
directory = sys.argv[2]
rates = sys.argv[3].split(",")
def usage(why):
    print(why, file=sys.stderr)
    sys.exit(2)
for r in rates:
    if r not in ("none", "max") and not (r.isdigit() and int(r) > 0):
        usage(f"--rates: {r!r} is not none, max or a positive integer")
if not 0.5 <= seconds <= 60:
    usage("--seconds: 0.5 to 60")

GAP = 1e-3    # a gap: the clock moved this much between two reads of a spinning loop
LONG = 5e-3   # a gap that counts as a stall

def spin(start, stop, out):
    gaps = []
    while time.monotonic() < start:
        pass
    last = time.monotonic()
    while last < stop:
        now = time.monotonic()
        if now - last > GAP:
            gaps.append((last, now))
        last = now
    out.send(gaps)

def write(start, stop, rate, path, out):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = os.urandom(5000)
    n = 0
    while time.monotonic() < start:
        time.sleep(0.0005)
    t0 = time.monotonic()
    while time.monotonic() < stop:
        os.write(fd, data)
        os.fdatasync(fd)
        n += 1
        if rate:
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if n % 20000 == 0:
            os.ftruncate(fd, 0)  # bounded: at most 100 MB
            os.lseek(fd, 0, os.SEEK_SET)
    os.close(fd)
    out.send(n / (time.monotonic() - t0))

def phase(rate, path):
    cpus = len(os.sched_getaffinity(0))
    start = time.monotonic() + 0.3
    stop = start + seconds
    procs, pipes = [], []
    for _ in range(cpus):
        a, b = mp.Pipe(duplex=False)
        p = mp.Process(target=spin, args=(start, stop, b))
        procs.append(p); pipes.append(a)
    wpipe = None
    if rate != "none":
        a, b = mp.Pipe(duplex=False)
        procs.append(mp.Process(target=write,
                                args=(start, stop, 0 if rate == "max" else int(rate), path, b)))
        wpipe = a
    for p in procs:
        p.start()
    gaps = [c.recv() for c in pipes]
    achieved = wpipe.recv() if wpipe else None
    for p in procs:
        p.join()
    stopped = sum(sum(e - s for s, e in g) for g in gaps) / (cpus * seconds) * 100
    long0 = [(s, e) for s, e in gaps[0] if e - s >= LONG]
    longest = max((e - s for g in gaps for s, e in g), default=0.0) * 1e3
    def overlaps(x, g):
        return any(s < x[1] and x[0] < e and e - s >= LONG for s, e in g)
    together = sum(1 for x in long0 if all(overlaps(x, g) for g in gaps[1:]))
    return achieved, stopped, len(long0) / seconds, longest, together

fd, path = tempfile.mkstemp(prefix=".ringmail-stalls-", dir=directory)
os.close(fd)
try:
    cpus = len(os.sched_getaffinity(0))
    print(f"\n{cpus} CPUs busy, {seconds:g} s a phase, 5,000-octet writes + fdatasync in {directory}")
    print(f"{'fdatasync/s':>12} {'achieved':>9} {'stopped %':>10} {'gaps/s':>7} "
          f"{'longest ms':>11} {'all CPUs':>9}")
    for r in rates:
        print(f"  phase {r}...", file=sys.stderr, flush=True)
        achieved, stopped, per_s, longest, together = phase(r, path)
        ach = "-" if achieved is None else f"{achieved:.0f}"
        print(f"{r:>12} {ach:>9} {stopped:>10.1f} {per_s:>7.1f} {longest:>11.1f} "
              f"{together:>9}", flush=True)
finally:
    os.unlink(path)
EOF
