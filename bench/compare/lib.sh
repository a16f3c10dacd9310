# shellcheck shell=bash disable=SC2034 # result variables (SECS, CONF, ...) are for the caller
# Shell functions shared by the bench/compare scripts (sourced, not run): temp dir and clean-up,
# free loopback ports, Postfix's smtp-sink and smtp-source, ringmail-blast, a private Postfix
# instance and a ringmaild relaying to a sink.
#
#   . "$(dirname "$0")/lib.sh"
#   bench_init ringmail-peers        # WORK=$BENCH_TMP/ringmail-peers.XXXXXX, trap: clean up at exit
#
# Conventions: everything listens on 127.0.0.1 only. Every process a function starts is added
# to PIDS and every Postfix instance to POSTFIX_DIRS; bench_cleanup (the EXIT trap) stops them
# (TERM, then KILL) and removes WORK. Functions that measure set their result variables to
# "fail" first and only write a figure once every check passed; they explain a failure on
# stderr and return 0, so a failed run is a "fail" in the table, not the end of the script.
# BENCH_TIMEOUT (seconds, default 600) bounds every load and every wait for a sink.
# BENCH_TMP (default /tmp) holds WORK, and with it ringmaild's spool: BENCH_TMP=/dev/shm takes
# the disk out of a run (fdatasync on tmpfs is free), to tell the disk's share from the CPU's.
# Binaries: RINGMAILD, RINGMAIL_BLAST, RINGMAIL_SINK (defaults: this tree's build/).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RINGMAILD=${RINGMAILD:-"$BENCH_ROOT/build/src/ringmaild"}
RINGMAIL_BLAST=${RINGMAIL_BLAST:-"$BENCH_ROOT/build/tools/ringmail-blast"}
RINGMAIL_SINK=${RINGMAIL_SINK:-"$BENCH_ROOT/build/tools/ringmail-sink"}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
PIDS=()
POSTFIX_DIRS=()

log() { printf '%s\n' "$*" >&2; }

# need_exec PATH HINT: exit 1 with HINT unless PATH is executable.
need_exec() {
  [ -x "$1" ] || { log "missing $1 ($2)"; exit 1; }
}

# bench_init PREFIX: WORK=$BENCH_TMP/PREFIX.XXXXXX (world-readable: smtp-sink and Postfix run as
# other users) and the traps that clean up.
bench_init() {
  WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/$1.XXXXXX")
  chmod 755 "$WORK"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local d p pidfile
  for d in "${POSTFIX_DIRS[@]+"${POSTFIX_DIRS[@]}"}"; do
    /usr/sbin/postfix -c "$d" stop >/dev/null 2>&1 || true
  done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  # A Postfix master that ignored "stop": kill it by the pid it recorded.
  for d in "${POSTFIX_DIRS[@]+"${POSTFIX_DIRS[@]}"}"; do
    pidfile="$d-queue/pid/master.pid"
    if [ -f "$pidfile" ]; then
      p=$(tr -dc '0-9' <"$pidfile")
      if [ -n "$p" ]; then kill -9 "$p" 2>/dev/null || true; fi
    fi
  done
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT SECONDS [PID]: until something accepts on 127.0.0.1:PORT; 1 on timeout or
# as soon as PID (the process that should listen) has exited.
wait_port() {
  local port=$1 limit=$2 pid=${3:-} i
  for ((i = 0; i < limit * 20; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if [ -n "$pid" ] && ! proc_alive "$pid"; then return 1; fi
    sleep 0.05
  done
  return 1
}

# proc_alive PID: running (an exited child stays a zombie until reaped: state Z).
proc_alive() {
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# wait_exit PID SECONDS: until the process is gone; 1 on timeout.
wait_exit() {
  local pid=$1 limit=$2 start=$SECONDS
  while proc_alive "$pid"; do
    ((SECONDS - start > limit)) && return 1
    sleep 0.01
  done
  return 0
}

# stop_pid PID [SECONDS]: SIGTERM, SIGKILL after SECONDS (default 30), reap. Returns the exit
# status (137 when it had to be killed).
stop_pid() {
  local pid=$1 limit=${2:-30} rc=0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" "$limit"; then
    log "process $pid ignored SIGTERM for ${limit}s: killed"
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

# wait_child PID: its exit status. The child runs in the background and is in PIDS, so a
# SIGINT/SIGTERM to the script interrupts the wait (bash runs traps only between foreground
# commands) and the clean-up stops the child (timeout(1) passes the signal on).
wait_child() {
  PIDS+=("$1")
  wait "$1"
}

fcalc() { python3 -c "print($1)"; } # floating point arithmetic

# json_get FILE KEY[.KEY...]: one value out of a JSON document.
json_get() {
  python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$1" "$2"
}

# ----------------------------------------------------------------------------- smtp-sink
#
# smtp-sink -c rewrites a counter line ("sess=S quit=Q mesg=M", CR-terminated) on stdout at
# every "." and at every session end, unbuffered, so its log file says how many messages it
# has received at any moment. (smtp-sink -M N is no use for exact counts: it exits on the Nth
# message before answering it, so whoever sent it loses the last reply, and more than N
# cannot be seen.)

# smtp_sink_start PORT LOG [BACKLOG]: sets SINK_PID.
smtp_sink_start() {
  local port=$1 sink_log=$2 backlog=${3:-1000} user_args=()
  [ "$(id -u)" -eq 0 ] && user_args=(-u nobody)
  "$SMTP_SINK" "${user_args[@]}" -c "127.0.0.1:$port" "$backlog" >"$sink_log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 "$SINK_PID" || { log "smtp-sink did not start: $(tail -3 "$sink_log")"; return 1; }
}

# smtp_sink_count LOG: the highest message count in the log (nothing if there is none).
smtp_sink_count() {
  tr '\r' '\n' <"$1" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | sort -n | tail -1
}

# smtp_sink_watch LOG N OUT [SECONDS [PID]]: in the background (sets WATCH_PID), polls the
# sink's counter every 2 ms and writes to OUT the wall-clock time (seconds since the epoch, as
# $EPOCHREALTIME) at which it first saw N messages, or "timeout" after SECONDS (default
# BENCH_TIMEOUT). With the sink's PID, OUT.sched gets the first two fields of its
# /proc/PID/schedstat (ns on a CPU, ns runnable but waiting for one) as the watcher starts and
# again when it sees N: over the run, waiting/(wall time) is the share in which the sink had
# work but no CPU (on a machine it shares with the loader and the MTA, what keeps an end-to-end
# figure under the harness-alone one). Returns once the watcher polls (a Python start-up on a
# loaded machine can take a good part of a second: started late, it would report the time it
# first looked).
smtp_sink_watch() {
  local i
  rm -f "$3" "$3.ready" "$3.sched"
  python3 - "$1" "$2" "$3" "${4:-$BENCH_TIMEOUT}" "${5:-}" <<'EOF' &
import os, re, sys, time
log, n, out, limit, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
pat = re.compile(rb"mesg=(\d+)")
deadline = time.monotonic() + limit
fd = os.open(log, os.O_RDONLY)

def sched():
    if pid:
        try:
            with open("/proc/%s/schedstat" % pid) as f, open(out + ".sched", "a") as o:
                o.write(" ".join(f.read().split()[:2]) + "\n")
        except OSError:
            pass

sched()
open(out + ".ready", "w").close()
result = "timeout"
while time.monotonic() < deadline:
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 128, max(0, size - 128))
    got = [int(m) for m in pat.findall(tail)]
    if got and max(got) >= n:
        result = "%.6f" % time.time()
        sched()
        break
    time.sleep(0.002)
with open(out, "w") as f:
    f.write(result + "\n")
EOF
  WATCH_PID=$!
  PIDS+=("$WATCH_PID")
  for ((i = 0; i < 2000; i++)); do
    [ -e "$3.ready" ] && return 0
    proc_alive "$WATCH_PID" || break
    sleep 0.005
  done
  log "  the sink's watcher did not start"
  return 1
}

# smtp_sink_stop_check PID LOG N: stops the sink and checks that it counted exactly N
# messages; 1 (and a line on stderr) if not.
smtp_sink_stop_check() {
  local pid=$1 sink_log=$2 n=$3 got
  stop_pid "$pid" 10 || true
  got=$(smtp_sink_count "$sink_log")
  if [ "$got" != "$n" ]; then
    log "  smtp-sink counted ${got:-no} messages, expected $n"
    return 1
  fi
}

# ----------------------------------------------------------------------------- ringmail-sink

# ringmail_sink_start PORT N LOG: ringmail-sink --exit-after N (SINK_LISTEN_FLAG, default
# --listen, is how it is told its address); sets SINK_PID.
ringmail_sink_start() {
  local port=$1 n=$2 sink_log=$3
  "$RINGMAIL_SINK" "${SINK_LISTEN_FLAG:---listen}" "127.0.0.1:$port" --exit-after "$n" \
    >"$sink_log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 "$SINK_PID" || { log "ringmail-sink did not start: $(tail -3 "$sink_log")"; return 1; }
}

# ringmail_sink_check PID LOG N: the sink exits after N messages with "ringmail-sink: received
# N messages, ..." on its last line; 1 (and a line on stderr) if it did not within 30 s or
# counted otherwise.
ringmail_sink_check() {
  local pid=$1 sink_log=$2 n=$3 got
  if ! wait_exit "$pid" 30; then
    log "  ringmail-sink did not exit after $n messages"
    stop_pid "$pid" 5 || true
    return 1
  fi
  wait "$pid" 2>/dev/null || true
  got=$(sed -n 's/.*ringmail-sink: received \([0-9]*\) messages.*/\1/p' "$sink_log" | tail -1)
  if [ "$got" != "$n" ]; then
    log "  ringmail-sink reports ${got:-no} messages, expected $n: $(tail -2 "$sink_log")"
    return 1
  fi
}

# ----------------------------------------------------------------------------- loaders

# run_blast PORT N CONNECTIONS SIZE JSON [BLAST ARGS...]: ringmail-blast --json into JSON;
# sets SECS (wall time of the process) or "fail" unless it exited 0 with exactly N accepted,
# and LOAD_T0 (its start, as $EPOCHREALTIME).
run_blast() {
  local port=$1 n=$2 conns=$3 size=$4 json=$5 t0 t1 rc=0 accepted
  shift 5
  SECS=fail
  t0=$EPOCHREALTIME
  LOAD_T0=$t0
  timeout "$BENCH_TIMEOUT" "$RINGMAIL_BLAST" --target "127.0.0.1:$port" --messages "$n" \
    --connections "$conns" --size "$size" "$@" --json --no-progress \
    >"$json" 2>"$json.err" &
  wait_child $! || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    log "  ringmail-blast failed ($rc): $(tail -3 "$json.err") $(head -c 600 "$json")"
    return 0
  fi
  accepted=$(json_get "$json" messages.accepted 2>/dev/null) || accepted="?"
  if [ "$accepted" != "$n" ]; then
    log "  ringmail-blast: $accepted of $n accepted"
    return 0
  fi
  SECS=$(fcalc "$t1 - $t0")
}

# run_smtp_source PORT N SESSIONS SIZE LOG: smtp-source -d (connections reused); sets SECS
# (wall time) or "fail" unless it exited 0, and LOAD_T0 (its start).
run_smtp_source() {
  local port=$1 n=$2 conns=$3 size=$4 src_log=$5 t0 t1 rc=0
  SECS=fail
  t0=$EPOCHREALTIME
  LOAD_T0=$t0
  timeout "$BENCH_TIMEOUT" "$SMTP_SOURCE" -d -s "$conns" -m "$n" -l "$size" \
    -f from@x.test -t to@y.test "127.0.0.1:$port" >"$src_log" 2>&1 &
  wait_child $! || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    log "  smtp-source failed ($rc): $(tail -3 "$src_log")"
    return 0
  fi
  SECS=$(fcalc "$t1 - $t0")
}

# ----------------------------------------------------------------------------- Postfix

# postfix_make DIR SMTPD_PORT RELAYHOST_PORT: a private instance relaying everything to
# 127.0.0.1:RELAYHOST_PORT, config in DIR, queue in DIR-queue, data in DIR-data, log in
# DIR.maillog (DIR's parent must be world-readable, as WORK is). Sets CONF.
postfix_make() {
  local conf=$1 smtpd_port=$2 sink_port=$3
  local queue="$conf-queue" data="$conf-data"
  mkdir -p "$conf" "$queue" "$data"
  chown postfix "$data"
  cat >"$conf/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $conf
queue_directory = $queue
data_directory = $data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.test
mydomain = postfix-bench.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:$sink_port
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file_prefixes = ${conf%/*}
maillog_file = $conf.maillog
EOF
  cat >"$conf/master.cf" <<EOF
127.0.0.1:$smtpd_port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  CONF=$conf
}

# postfix_start CONF SMTPD_PORT: starts the instance and waits for its smtpd; 1 on failure.
postfix_start() {
  local conf=$1 port=$2
  POSTFIX_DIRS+=("$conf")
  if ! /usr/sbin/postfix -c "$conf" start >"$conf.start.log" 2>&1; then
    log "postfix did not start: $(tail -5 "$conf.start.log")"
    return 1
  fi
  if ! wait_port "$port" 20; then
    log "postfix smtpd not listening on $port: $(tail -10 "$conf.maillog" 2>/dev/null)"
    return 1
  fi
}

postfix_stop() { /usr/sbin/postfix -c "$1" stop >/dev/null 2>&1 || true; }

# ----------------------------------------------------------------------------- ringmaild

# ringmail_config DIR PORT SMARTHOST_PORT [SERVER_LINES]: writes DIR/ringmail.toml, a relay
# for 127.0.0.0/8 on 127.0.0.1:PORT delivering everything to 127.0.0.1:SMARTHOST_PORT, spool
# in DIR/spool, no admin endpoint. SERVER_LINES (TOML, one key a line) joins [server].
ringmail_config() {
  local dir=$1 port=$2 sink_port=$3 extra=${4:-}
  mkdir -p "$dir/spool"
  cat >"$dir/ringmail.toml" <<EOF
[server]
hostname = "ringmail-bench.test"
shards = 0
spool_dir = "$dir/spool"
$extra

[[listen]]
address = "127.0.0.1:$port"
role = "relay"

[relay]
allow_networks = ["127.0.0.0/8"]
domains = []

[delivery]
smarthost = "127.0.0.1:$sink_port"

[admin]
address = ""
EOF
}

# ringmaild_start DIR PORT: runs ringmaild with DIR/ringmail.toml (log DIR/ringmaild.log) and
# waits for PORT; sets RINGMAILD_PID; 1 on failure.
ringmaild_start() {
  local dir=$1 port=$2
  "$RINGMAILD" --config "$dir/ringmail.toml" >"$dir/ringmaild.log" 2>&1 &
  RINGMAILD_PID=$!
  PIDS+=("$RINGMAILD_PID")
  if ! wait_port "$port" 20 "$RINGMAILD_PID"; then
    log "ringmaild did not start: $(tail -10 "$dir/ringmaild.log")"
    return 1
  fi
}

# ringmaild_stop PID: SIGTERM (it drains), 1 unless it exits 0 within 30 s.
ringmaild_stop() {
  local rc=0
  stop_pid "$1" 30 || rc=$?
  [ "$rc" -eq 0 ] || { log "  ringmaild exited with $rc"; return 1; }
}

# ----------------------------------------------------------------------------- figures

# median VALUES...: "fail" if there is none or any is "fail".
median() {
  python3 -c '
import sys, statistics
v = sys.argv[1:]
print("fail" if not v or "fail" in v else "%.6g" % statistics.median(map(float, v)))' "$@"
}
