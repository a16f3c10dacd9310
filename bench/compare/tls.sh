#!/usr/bin/env bash
# Inbound TLS side by side: a private Postfix instance (smtpd_tls_security_level = may) and
# ringmaild (a relay listener with tls_cert/tls_key), same self-signed certificate, same load.
#
#   bench/compare/tls.sh [--repeat N] [--handshakes N] [--messages N] [--connections N]
#                        [--size BYTES] [--only postfix|ringmail]
#
# Two loads, both made by one small Python client (stdlib ssl, forked processes x threads;
# smtp-source and ringmail-blast have no STARTTLS), the same for both servers:
#   handshakes/s  connect, EHLO, STARTTLS, full TLS handshake (no resumption), EHLO, QUIT,
#                 --handshakes times over --connections concurrent clients
#   messages/s    --connections sessions, each STARTTLS once and then sends its share of
#                 --messages (MAIL, RCPT, DATA, no pipelining); time until the last 250
# Both MTAs relay to Postfix's smtp-sink. Reported: medians over --repeat runs and the ratio
# ringmail / postfix. The client shares the machine's CPUs with the server under test, so the
# figures are a comparison, not a capacity. Everything stays on 127.0.0.1; all processes and
# temp dirs go away at exit.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# postfix_make (the private Postfix instance); this script's own functions follow and win.
. "$ROOT/bench/compare/lib.sh"

REPEAT=3
HANDSHAKES=3000
MESSAGES=10000
CONNECTIONS=20
SIZE=1024
ONLY=""
TIMEOUT=${BENCH_TIMEOUT:-600} # per run, seconds

while [ $# -gt 0 ]; do
  case "$1" in
  --repeat) REPEAT=$2; shift 2 ;;
  --handshakes) HANDSHAKES=$2; shift 2 ;;
  --messages) MESSAGES=$2; shift 2 ;;
  --connections) CONNECTIONS=$2; shift 2 ;;
  --size) SIZE=$2; shift 2 ;;
  --only) ONLY=$2; shift 2 ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

SMTP_SINK=/usr/sbin/smtp-sink
for t in "$SMTP_SINK" /usr/sbin/postfix /usr/bin/openssl; do
  [ -x "$t" ] || { echo "missing $t (apt-get install postfix openssl)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ringmail-bench-tls.XXXXXX)
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

wait_port() { # PORT SECONDS
  local port=$1 limit=$2 i
  for ((i = 0; i < limit * 20; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# One certificate for both servers: ECDSA P-256, what a modern MTA would present.
CERT="$WORK/cert.pem"
KEY="$WORK/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$KEY" \
  -out "$CERT" -days 2 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null
chmod 644 "$CERT" "$KEY"

# ----------------------------------------------------------------------------- the client

cat >"$WORK/tls_load.py" <<'EOF'
"""STARTTLS load: handshakes or messages, over processes x threads. Prints seconds."""
import argparse, multiprocessing, os, socket, ssl, sys, threading, time, traceback

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--mode", choices=["handshakes", "messages"], required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--connections", type=int, required=True)
p.add_argument("--size", type=int, default=1024)
a = p.parse_args()

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", a.port), timeout=60)
        self.buf = b""
        self.expect(220)

    def reply(self):
        while True:
            i = self.buf.find(b"\r\n")
            while i < 0:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
                i = self.buf.find(b"\r\n")
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            if line[3:4] != b"-":
                return int(line[:3]), line

    def expect(self, code, data=None):
        if data is not None:
            self.s.sendall(data)
        got, line = self.reply()
        if got != code:
            raise RuntimeError(f"expected {code}, got {line!r}")

    def starttls(self):
        self.expect(250, b"EHLO load.test\r\n")
        self.expect(220, b"STARTTLS\r\n")
        self.s = CTX.wrap_socket(self.s)
        self.expect(250, b"EHLO load.test\r\n")

    def quit(self):
        try:
            self.expect(221, b"QUIT\r\n")
        finally:
            self.s.close()


LINE = b"x" * 76 + b"\r\n"
BODY = b"Subject: tls bench\r\n\r\n" + LINE * max(1, (a.size - 22) // len(LINE))


def worker(n):
    if a.mode == "handshakes":
        for _ in range(n):
            c = Conn()
            c.starttls()
            c.quit()
    elif n > 0:
        c = Conn()
        c.starttls()
        for _ in range(n):
            c.expect(250, b"MAIL FROM:<from@x.test>\r\n")
            c.expect(250, b"RCPT TO:<to@y.test>\r\n")
            c.expect(354, b"DATA\r\n")
            c.expect(250, BODY + b".\r\n")
        c.quit()


def process(shares, q):
    errors = []
    def run(n):
        try:
            worker(n)
        except Exception as e:
            errors.append(f"{e!r} in " + " < ".join(
                f.name for f in reversed(traceback.extract_tb(e.__traceback__))))
    ts = [threading.Thread(target=run, args=(n,)) for n in shares]
    for t in ts: t.start()
    for t in ts: t.join()
    q.put(errors)


procs_n = min(os.cpu_count() or 1, a.connections)
shares = [a.count // a.connections + (1 if i < a.count % a.connections else 0)
          for i in range(a.connections)]
groups = [shares[i::procs_n] for i in range(procs_n)]
q = multiprocessing.Queue()
t0 = time.monotonic()
ps = [multiprocessing.Process(target=process, args=(g, q)) for g in groups]
for x in ps: x.start()
errors = [e for _ in ps for e in q.get()]
for x in ps: x.join()
elapsed = time.monotonic() - t0
if errors:
    print(f"{len(errors)} client(s) failed: {errors[0]}", file=sys.stderr)
    sys.exit(1)
print(f"{elapsed:.4f}")
EOF

# load PORT -> HS and MSG (seconds, or fail)
load() {
  local port=$1
  HS=fail MSG=fail
  if HS=$(timeout "$TIMEOUT" python3 "$WORK/tls_load.py" --port "$port" --mode handshakes \
    --count "$HANDSHAKES" --connections "$CONNECTIONS" 2>"$WORK/load.err"); then :; else
    log "  handshakes failed: $(tail -2 "$WORK/load.err")"
    HS=fail
  fi
  if MSG=$(timeout "$TIMEOUT" python3 "$WORK/tls_load.py" --port "$port" --mode messages \
    --count "$MESSAGES" --connections "$CONNECTIONS" --size "$SIZE" 2>"$WORK/load.err"); then :; else
    log "  messages failed: $(tail -2 "$WORK/load.err")"
    MSG=fail
  fi
}

start_sink() { # PORT -> SINK_PID
  local port=$1 user_args=()
  [ "$(id -u)" -eq 0 ] && user_args=(-u nobody)
  "$SMTP_SINK" "${user_args[@]}" "127.0.0.1:$port" 1000 >"$WORK/sink-$port.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$port" 10 || { log "smtp-sink did not start"; return 1; }
}

# ----------------------------------------------------------------------------- Postfix

# A private instance in $WORK/NAME (lib.sh's postfix_make) that offers STARTTLS with the
# bench certificate. Sets CONF.
make_postfix() { # NAME SMTPD_PORT SINK_PORT -> CONF
  postfix_make "$WORK/$1" "$2" "$3"
  /usr/sbin/postconf -c "$CONF" -e "smtpd_tls_security_level = may" \
    "smtpd_tls_cert_file = $CERT" "smtpd_tls_key_file = $KEY" "smtpd_tls_loglevel = 0"
  /usr/sbin/postconf -c "$CONF" -M "tlsmgr/unix = tlsmgr unix - - n 1000? 1 tlsmgr"
}

run_postfix() { # N -> HS MSG
  local i=$1 smtpd_port sink_port conf
  HS=fail MSG=fail
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
    return 0
  fi
  load "$smtpd_port"
  /usr/sbin/postfix -c "$conf" stop >/dev/null 2>&1 || true
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
}

# ----------------------------------------------------------------------------- ringmail

RINGMAILD=${RINGMAILD:-"$ROOT/build/src/ringmaild"}

run_ringmail() { # N -> HS MSG
  local i=$1 port sink_port dir pid
  HS=fail MSG=fail
  port=$(free_port)
  sink_port=$(free_port)
  dir="$WORK/rm$i"
  mkdir -p "$dir/spool"
  cat >"$dir/ringmail.toml" <<EOF
[server]
hostname = "ringmail-bench.test"
shards = 0
spool_dir = "$dir/spool"
log_level = "warn"

[[listen]]
address = "127.0.0.1:$port"
role = "relay"
tls_cert = "$CERT"
tls_key = "$KEY"

[relay]
allow_networks = ["127.0.0.0/8"]

[delivery]
smarthost = "127.0.0.1:$sink_port"

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
  load "$port"
  if [ "$HS" = fail ] || [ "$MSG" = fail ]; then
    log "  ringmaild's log, failures:"
    grep -E 'failed|error|timeout|warn' "$dir/ringmaild.log" | tail -5 >&2 || true
  fi
  kill -TERM "$pid" 2>/dev/null || true
  timeout 30 tail --pid="$pid" -f /dev/null || kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || log "ringmaild exited with $?"
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
}

[ "$ONLY" = postfix ] || [ -x "$RINGMAILD" ] || {
  log "missing $RINGMAILD (meson compile -C build src/ringmaild)"
  exit 1
}

# ----------------------------------------------------------------------------- report

rate() { # COUNT seconds... -> median per second, "-" if any failed
  local count=$1
  shift
  python3 -c '
import sys, statistics
n = float(sys.argv[1]); v = sys.argv[2:]
print("-" if not v or "fail" in v else "%.0f" % (n / statistics.median(map(float, v))))' "$count" "$@"
}

ratio() {
  if [ "$1" = - ] || [ "$2" = - ]; then echo "-"; else python3 -c "print('%.2f' % ($1 / $2))"; fi
}

PF_HS=() PF_MSG=() RM_HS=() RM_MSG=()
for ((i = 1; i <= REPEAT; i++)); do
  if [ "$ONLY" != ringmail ]; then
    log "run $i/$REPEAT: postfix"
    run_postfix "$i"
    PF_HS+=("$HS") PF_MSG+=("$MSG")
    log "  postfix: ${HANDSHAKES} handshakes in ${HS}s, ${MESSAGES} messages in ${MSG}s"
  fi
  if [ "$ONLY" != postfix ]; then
    log "run $i/$REPEAT: ringmail"
    run_ringmail "$i"
    RM_HS+=("$HS") RM_MSG+=("$MSG")
    log "  ringmail: ${HANDSHAKES} handshakes in ${HS}s, ${MESSAGES} messages in ${MSG}s"
  fi
done

pf_hs=- pf_msg=- rm_hs=- rm_msg=-
if [ "$ONLY" != ringmail ]; then
  pf_hs=$(rate "$HANDSHAKES" "${PF_HS[@]}")
  pf_msg=$(rate "$MESSAGES" "${PF_MSG[@]}")
fi
if [ "$ONLY" != postfix ]; then
  rm_hs=$(rate "$HANDSHAKES" "${RM_HS[@]}")
  rm_msg=$(rate "$MESSAGES" "${RM_MSG[@]}")
fi

printf '\nSTARTTLS, ECDSA P-256 certificate, %s concurrent clients, %s run(s), medians, %s CPUs\n' \
  "$CONNECTIONS" "$REPEAT" "$(nproc)"
printf '%-10s %14s %14s\n' "" "handshakes/s" "messages/s"
printf '%-10s %14s %14s\n' postfix "$pf_hs" "$pf_msg"
printf '%-10s %14s %14s\n' ringmail "$rm_hs" "$rm_msg"
printf '%-10s %14s %14s\n' ratio "$(ratio "$rm_hs" "$pf_hs")" "$(ratio "$rm_msg" "$pf_msg")"
