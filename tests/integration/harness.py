"""Integration test harness: real processes on loopback, Python 3.11 stdlib only.

What it gives a test:
  - free_port(), temp_dir(): loopback ports (each handed out once among the tests running
    side by side) and temporary directories (removed at exit);
  - Ringmaild: writes a TOML config (contract keys, DESIGN.md), starts build/src/ringmaild
    (path from $RINGMAILD), waits until it greets, stops it with SIGTERM or kill -9;
  - SmtpSink: an SMTP server written here, independent of ringmail's code, that records
    every transaction exactly (envelope, raw DATA bytes as on the wire, un-stuffed content);
  - PostfixSink / smtp_source(): Postfix's smtp-sink (counting by dump files) and
    smtp-source (load).

Every process started here is killed and every temp dir removed at interpreter exit, on
SIGTERM (meson's timeout) and when this process dies (PR_SET_PDEATHSIG in the children).
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable

LOOPBACK = "127.0.0.1"

SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
SMTP_SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
SWAKS = os.environ.get("SWAKS", shutil.which("swaks") or "/usr/bin/swaks")

# Sanitizer builds are several times slower; scale every bounded wait.
TIME_SCALE = float(os.environ.get("RINGMAIL_TEST_TIME_SCALE", "1"))
if "sanitize" in os.environ.get("RINGMAILD", "") or "asan" in os.environ.get("RINGMAILD", ""):
    TIME_SCALE = max(TIME_SCALE, 3.0)


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


# ---------------------------------------------------------------------------------------
# Clean-up: processes and directories registered here never outlive the test.

_children: list[subprocess.Popen] = []
_dirs: list[str] = []
_cleanup_lock = threading.Lock()


def _cleanup() -> None:
    with _cleanup_lock:
        for p in _children:
            if p.poll() is None:
                try:
                    p.kill()
                except OSError:
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        _children.clear()
        for d in _dirs:
            shutil.rmtree(d, ignore_errors=True)
        _dirs.clear()


atexit.register(_cleanup)


def _on_sigterm(signum, frame):  # meson test timeout -> run atexit handlers
    raise SystemExit(128 + signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies (even by SIGKILL),
    # the kernel kills the child too.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Popen that is registered for clean-up and dies with this process."""
    p = subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)
    _children.append(p)
    return p


def temp_dir(prefix: str = "ringmail-it-") -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    _dirs.append(d)
    return d


def _bind_once(host: str, port: int) -> int:
    """The port bound (the kernel's choice for 0), 0 if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return 0
        return s.getsockname()[1]


def free_port(host: str = LOOPBACK) -> int:
    """A port for a daemon this test starts. The integration tests run side by side, and a
    port that bind(0) found free can be found free again by another test before this one's
    daemon binds it. So, with $RINGMAIL_TEST_PORT_FILE set (meson sets it), ports come from
    one counter shared by every test of the build tree, under flock: each one is handed out
    once per 20,000 (until the counter wraps), from below the kernel's ephemeral range, where
    no outgoing connection takes them either."""
    path = os.environ.get("RINGMAIL_TEST_PORT_FILE")
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    low, high = ephemeral_low - 20000, ephemeral_low
    if not path or low < 1024:
        return _bind_once(host, 0)
    with open(path, "a+", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            port = int(f.read().strip() or "0")
        except ValueError:
            port = 0
        if not low <= port < high:
            port = low + os.getpid() % (high - low)
        for _ in range(high - low):
            candidate, port = port, (low if port + 1 >= high else port + 1)
            if _bind_once(host, candidate):
                break
        else:
            raise RuntimeError(f"no free port in {low}-{high - 1} on {host}")
        f.seek(0)
        f.truncate()
        f.write(str(port))
    return candidate


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# TOML output (the subset the contract needs: tables, arrays of tables, scalars, arrays).


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ord(ch) < 0x20 or ch == "\x7f":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table: { name = "ip1", weight = 2 }
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """{"server": {...}, "listen": [{...}], ...} -> TOML text."""
    lines: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            for k, v in value.items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                lines.append(f"[[{key}]]")
                for k, v in item.items():
                    lines.append(f"{k} = {_toml_value(v)}")
                lines.append("")
        else:
            # Top-level scalars must precede tables in TOML.
            lines.insert(0, f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def make_config(
    spool_dir: str,
    port: int,
    smarthost: str | None = None,
    *,
    shards: int = 2,
    allow_networks: Iterable[str] = ("127.0.0.0/8", "::1/128"),
    domains: Iterable[str] = (),
    retry_schedule: Iterable[str] = ("1s", "2s"),
    max_lifetime: str = "1h",
    max_message_size: int | None = None,
    hostname: str = "ringmail.test",
    extra_listen: Iterable[dict[str, Any]] = (),
    delivery_options: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    listen_options: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config dict with the contract keys; admin is disabled (""), drain_grace is "0s".

    delivery_options: more [delivery] keys (connect_timeout, max_connections, ...).
    listen_options: more keys of the first [[listen]] (role, tls_cert, tls_key, ...).
    auth: an [auth] table (users_file, max_failures, ...); none when not given."""
    # No drain grace unless a test asks for one: a stop closes the listeners at once, as the
    # tests written before server.drain_grace expect (test_drain sets its own).
    server: dict[str, Any] = {"hostname": hostname, "shards": shards, "spool_dir": spool_dir,
                              "drain_grace": "0s"}
    if max_message_size is not None:
        server["max_message_size"] = max_message_size
    server.update(server_options or {})
    delivery: dict[str, Any] = {
        "retry_schedule": list(retry_schedule),
        "max_lifetime": max_lifetime,
    }
    if smarthost is not None:
        delivery["smarthost"] = smarthost
    delivery.update(delivery_options or {})
    first = {"address": f"{LOOPBACK}:{port}", "role": "relay"}
    first.update(listen_options or {})
    config = {
        "server": server,
        "listen": [first, *extra_listen],
        "relay": {"allow_networks": list(allow_networks), "domains": list(domains)},
        "delivery": delivery,
        "admin": {"address": ""},
    }
    if auth is not None:
        config["auth"] = dict(auth)
    return config


# ---------------------------------------------------------------------------------------
# ringmaild


def ringmaild_path() -> str:
    path = os.environ.get("RINGMAILD")
    if not path:
        raise RuntimeError("RINGMAILD is not set (run through meson test)")
    return path


class DaemonError(AssertionError):
    pass


class Ringmaild:
    """One ringmaild process on a generated config; restartable on the same spool."""

    def __init__(
        self,
        config: dict[str, Any] | str | None = None,
        *,
        smarthost: str | None = None,
        workdir: str | None = None,
        **config_kwargs: Any,
    ) -> None:
        self.workdir = workdir or temp_dir()
        self.spool_dir = os.path.join(self.workdir, "spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        if config is None:
            self.port = free_port()
            config = make_config(self.spool_dir, self.port, smarthost, **config_kwargs)
        if isinstance(config, dict):
            self.port = int(config["listen"][0]["address"].rsplit(":", 1)[1])
            text = to_toml(config)
        else:
            text = config
            m = re.search(r'address\s*=\s*"[^"]*:(\d+)"', text)
            if not m:
                raise ValueError("config text has no listen address with a port")
            self.port = int(m.group(1))
        self.config = config
        self.config_path = os.path.join(self.workdir, "ringmail.toml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(text)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log_path = ""

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def log_text(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        tail = data[-20000:]
        return tail.decode("utf-8", "replace")

    def start(self, timeout: float = 20.0) -> "Ringmaild":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self._log_path = os.path.join(self.workdir, f"ringmaild.{self.starts}.log")
        log = open(self._log_path, "wb")
        try:
            self.proc = spawn(
                [ringmaild_path(), "--config", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        finally:
            log.close()
        self.wait_ready(scaled(timeout))
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"ringmaild exited with {self.proc.returncode} during start-up:\n"
                    + self.log_text()
                )
            try:
                with socket.create_connection(self.address, timeout=2) as s:
                    s.settimeout(max(1.0, deadline - time.monotonic()))
                    greeting = s.recv(512)
                    if greeting.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        try:
                            s.recv(512)
                        except OSError:
                            pass
                        # One shard greeting is not the daemon ready: the others may still
                        # be opening their spools (seen: 10 s under the parallel suite's
                        # disk load), and SIGHUP or SIGTERM are only handled once all are.
                        # The main thread's "ready" line says they are (at log_level info,
                        # the only level the tests run at).
                        if self._ready_line_by(deadline):
                            return
                        last_error = "a shard greets, but no \"ringmaild ... ready\" line"
                        break
                    last_error = f"greeting {greeting!r}"
            except OSError as e:
                last_error = str(e)
            time.sleep(0.05)
        self.kill()
        raise DaemonError(
            f"ringmaild did not greet on {self.address} within {timeout:.0f}s "
            f"({last_error}):\n" + self.log_text()
        )

    _READY_LINE = re.compile(r"info: ringmaild \S+ ready: ")

    def _ready_line_by(self, deadline: float) -> bool:
        while True:
            if self._READY_LINE.search(self.log_text()):
                return True
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0, expect_code: int | None = 0) -> int:
        """SIGTERM, wait bounded; on timeout SIGKILL and fail."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit(scaled(timeout))
        if code is None:
            self.kill()
            raise DaemonError(
                f"ringmaild did not exit within {scaled(timeout):.0f}s of SIGTERM:\n"
                + self.log_text()
            )
        if expect_code is not None and code != expect_code:
            raise DaemonError(
                f"ringmaild exited with {code} after SIGTERM (expected {expect_code}):\n"
                + self.log_text()
            )
        return code

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def check_config(self, path: str | None = None, timeout: float = 20.0):
        return subprocess.run(
            [ringmaild_path(), "--check-config", path or self.config_path],
            capture_output=True,
            timeout=scaled(timeout),
            preexec_fn=_die_with_parent,
        )

    def __enter__(self) -> "Ringmaild":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


# ---------------------------------------------------------------------------------------
# Python SMTP sink


def unstuff(raw: bytes) -> bytes:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2) on complete CRLF lines."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def stuff(content: bytes) -> bytes:
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


@dataclasses.dataclass
class Transaction:
    mail_from: str
    mail_params: list[str]
    rcpts: list[str]
    raw: bytes  # DATA bytes as on the wire, up to and including the CRLF before "."
    content: bytes  # raw, un-stuffed
    helo: str
    peer: tuple
    accepted: bool  # False if the sink answered the end of data with 4xx/5xx
    tls: bool = False  # the transaction came over STARTTLS
    rcpt_params: list = dataclasses.field(default_factory=list)  # per rcpt, its parameters


_PATH_RE = re.compile(rb"^(?:MAIL FROM|RCPT TO):\s*<([^>]*)>\s*(.*)$", re.IGNORECASE | re.DOTALL)


def _split_path(line: bytes) -> tuple[str, list[str]] | None:
    m = _PATH_RE.match(line)
    if not m:
        return None
    addr = m.group(1).decode("utf-8", "surrogateescape")
    params = [p.decode("utf-8", "surrogateescape") for p in m.group(2).split()]
    return addr, params


class SmtpSink:
    """Threaded SMTP server on loopback that records each transaction exactly.

    reject_rcpts: {address: "550 5.1.1 no such user"} answers for given recipients
      (change it while running with set_rcpt_reply()).
    tempfail_rcpts: {address: N} answers the first N RCPTs of that address with 451.
    tempfail_first: answer the first N ends of data with 451 (nothing recorded as delivered).
    rcpt_attempts(address) counts every RCPT TO naming it, whatever the answer.
    All public reads are thread-safe; wait_for() blocks on a condition.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        hostname: str = "sink.test",
        size_limit: int = 100 * 1024 * 1024,
        smtputf8: bool = True,
        eightbitmime: bool = True,
        pipelining: bool = True,
        reject_rcpts: dict[str, str] | None = None,
        tempfail_first: int = 0,
        tempfail_rcpts: dict[str, int] | None = None,
        max_line: int = 1 << 20,
        tls_context: Any = None,
        dsn: bool = False,
        greeting_delay: float = 0.0,
    ) -> None:
        """tls_context: an ssl.SSLContext (server side): STARTTLS is offered and served.
        dsn: offer DSN (RFC 3461) in EHLO; the parameters are recorded, never acted on.
        greeting_delay: seconds each connection waits for its 220 (a slow server)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(256)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self.hostname = hostname
        self.size_limit = size_limit
        self.smtputf8 = smtputf8
        self.eightbitmime = eightbitmime
        self.pipelining = pipelining
        self.reject_rcpts = dict(reject_rcpts or {})
        self.tempfail_first = tempfail_first
        self.tempfail_rcpts = dict(tempfail_rcpts or {})
        self.max_line = max_line
        self.tls_context = tls_context
        self.dsn = dsn
        self.greeting_delay = greeting_delay
        self._rcpt_attempts: dict[str, int] = {}

        self._cond = threading.Condition()
        self._transactions: list[Transaction] = []
        self._attempts = 0
        self._connections = 0
        self._behind_data = 0
        self._errors: list[str] = []
        self._stopping = False
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    # -- results ---------------------------------------------------------------------

    @property
    def smarthost(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def transactions(self) -> list[Transaction]:
        with self._cond:
            return [t for t in self._transactions if t.accepted]

    def all_attempts(self) -> list[Transaction]:
        with self._cond:
            return list(self._transactions)

    def count(self) -> int:
        with self._cond:
            return sum(1 for t in self._transactions if t.accepted)

    @property
    def connections(self) -> int:
        with self._cond:
            return self._connections

    @property
    def behind_data(self) -> int:
        """MAIL commands that arrived with the previous message's final dot, before its
        reply (a client pipelining the next transaction behind the data, RFC 2920 3.1)."""
        with self._cond:
            return self._behind_data

    def rcpt_attempts(self, address: str) -> int:
        with self._cond:
            return self._rcpt_attempts.get(address, 0)

    def set_rcpt_reply(self, address: str, reply: str | None) -> None:
        """Answer RCPT TO:<address> with `reply` from now on (None: accept it again)."""
        with self._cond:
            if reply is None:
                self.reject_rcpts.pop(address, None)
            else:
                self.reject_rcpts[address] = reply

    def errors(self) -> list[str]:
        with self._cond:
            return list(self._errors)

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until at least n accepted transactions arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for t in self._transactions if t.accepted) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def wait_until(self, predicate: Callable[[list[Transaction]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([t for t in self._transactions if t.accepted]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    # -- life cycle ------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            conns = list(self._conns)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept_thread.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> "SmtpSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            with self._cond:
                if self._stopping:
                    conn.close()
                    return
                self._connections += 1
                self._conns.add(conn)
                t = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _ehlo_reply(self, in_tls: bool = False) -> bytes:
        caps = [self.hostname]
        if self.pipelining:
            caps.append("PIPELINING")
        if self.eightbitmime:
            caps.append("8BITMIME")
        if self.smtputf8:
            caps.append("SMTPUTF8")
        caps.append(f"SIZE {self.size_limit}")
        caps.append("ENHANCEDSTATUSCODES")
        if self.dsn:
            caps.append("DSN")
        if self.tls_context is not None and not in_tls:
            caps.append("STARTTLS")
        lines = [f"250-{c}" for c in caps[:-1]] + [f"250 {caps[-1]}"]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _serve(self, conn: socket.socket, peer) -> None:
        conn.settimeout(300)
        buf = bytearray()
        helo = ""
        in_tls = False
        mail: tuple[str, list[str]] | None = None
        rcpts: list[str] = []
        rcpt_params: list[list[str]] = []
        try:
            if self.greeting_delay > 0:
                time.sleep(self.greeting_delay)
            conn.sendall(f"220 {self.hostname} ESMTP test sink\r\n".encode())
            while True:
                out = bytearray()
                # Commands: answer every complete line in the buffer, then flush once
                # (a pipelining client gets its replies in order).
                while True:
                    end = buf.find(b"\r\n")
                    if end < 0:
                        if len(buf) > self.max_line:
                            out += b"500 5.5.2 line too long\r\n"
                            conn.sendall(out)
                            return
                        break
                    line = bytes(buf[:end])
                    del buf[: end + 2]
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        helo = line[5:].decode("utf-8", "replace")
                        mail, rcpts = None, []
                        out += self._ehlo_reply(in_tls) if verb == b"EHLO" else (
                            f"250 {self.hostname}\r\n".encode())
                    elif line.upper() == b"STARTTLS" and self.tls_context is not None and not in_tls:
                        conn.sendall(out + b"220 2.0.0 go ahead\r\n")
                        out = bytearray()
                        if buf:
                            return  # response injection: bytes behind STARTTLS
                        conn = self.tls_context.wrap_socket(conn, server_side=True)
                        with self._cond:
                            self._conns.add(conn)
                        in_tls = True
                        helo, mail, rcpts = "", None, []
                    elif verb == b"MAIL":
                        parsed = _split_path(line)
                        if parsed is None:
                            out += b"501 5.5.4 syntax\r\n"
                        elif mail is not None:
                            out += b"503 5.5.1 nested MAIL\r\n"
                        else:
                            size = 0
                            for p in parsed[1]:
                                if p.upper().startswith("SIZE="):
                                    try:
                                        size = int(p[5:])
                                    except ValueError:
                                        size = -1
                            if size < 0:
                                out += b"501 5.5.4 bad SIZE\r\n"
                            elif size > self.size_limit:
                                out += b"552 5.3.4 message too big\r\n"
                            else:
                                mail, rcpts, rcpt_params = parsed, [], []
                                out += b"250 2.1.0 ok\r\n"
                    elif verb == b"RCPT":
                        parsed = _split_path(line)
                        if mail is None:
                            out += b"503 5.5.1 need MAIL\r\n"
                        elif parsed is None:
                            out += b"501 5.5.4 syntax\r\n"
                        else:
                            reply = self._rcpt_reply(parsed[0])
                            if reply is None:
                                rcpts.append(parsed[0])
                                rcpt_params.append(list(parsed[1]))
                                out += b"250 2.1.5 ok\r\n"
                            else:
                                out += reply.encode() + b"\r\n"
                    elif verb == b"DATA":
                        if mail is None or not rcpts:
                            out += b"503 5.5.1 need RCPT\r\n"
                            continue
                        out += b"354 go ahead\r\n"
                        conn.sendall(out)
                        out = bytearray()
                        raw = self._read_data(conn, buf)
                        if raw is None:
                            return
                        if buf[:10].upper() == b"MAIL FROM:":
                            with self._cond:
                                self._behind_data += 1
                        out += self._finish(mail, rcpts, raw, helo, peer, in_tls, rcpt_params)
                        mail, rcpts, rcpt_params = None, [], []
                    elif verb == b"RSET":
                        mail, rcpts = None, []
                        out += b"250 2.0.0 ok\r\n"
                    elif verb == b"NOOP":
                        out += b"250 2.0.0 ok\r\n"
                    elif verb == b"QUIT":
                        out += b"221 2.0.0 bye\r\n"
                        conn.sendall(out)
                        return
                    else:
                        out += b"502 5.5.2 unknown command\r\n"
                if out:
                    conn.sendall(out)
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
        except OSError:
            return
        except Exception as e:  # a bug here must be visible to the test
            with self._cond:
                self._errors.append(f"{type(e).__name__}: {e}")
        finally:
            with self._cond:
                self._conns.discard(conn)
            conn.close()

    def _rcpt_reply(self, address: str) -> str | None:
        """The refusal for this RCPT, or None to accept it."""
        with self._cond:
            self._rcpt_attempts[address] = self._rcpt_attempts.get(address, 0) + 1
            if address in self.reject_rcpts:
                return self.reject_rcpts[address]
            left = self.tempfail_rcpts.get(address, 0)
            if left > 0:
                self.tempfail_rcpts[address] = left - 1
                return "451 4.2.0 recipient busy, try again later"
            return None

    @staticmethod
    def _read_data(conn: socket.socket, buf: bytearray) -> bytes | None:
        """Read until CRLF.CRLF; returns the raw bytes before the final '.' line, leaves
        whatever follows in buf. None if the connection ended first (nothing recorded)."""
        # The terminator is "\r\n.\r\n", where the leading CRLF ends the last content line;
        # an empty message is just ".\r\n" right after the 354.
        scan = 0
        while True:
            if buf.startswith(b".\r\n"):
                del buf[:3]
                return b""
            i = buf.find(b"\r\n.\r\n", scan)
            if i >= 0:
                raw = bytes(buf[: i + 2])
                del buf[: i + 5]
                return raw
            scan = max(0, len(buf) - 4)
            chunk = conn.recv(262144)
            if not chunk:
                return None
            buf += chunk

    def _finish(self, mail, rcpts, raw: bytes, helo: str, peer, tls: bool = False,
                rcpt_params: list | None = None) -> bytes:
        with self._cond:
            self._attempts += 1
            accepted = self._attempts > self.tempfail_first
            self._transactions.append(
                Transaction(
                    mail_from=mail[0],
                    mail_params=list(mail[1]),
                    rcpts=list(rcpts),
                    raw=raw,
                    content=unstuff(raw),
                    helo=helo,
                    peer=peer,
                    accepted=accepted,
                    tls=tls,
                    rcpt_params=list(rcpt_params or []),
                )
            )
            self._cond.notify_all()
        if accepted:
            return b"250 2.0.0 queued\r\n"
        return b"451 4.3.0 try again later\r\n"


# ---------------------------------------------------------------------------------------
# Postfix smtp-sink / smtp-source


def _root_args() -> list[str]:
    # smtp-sink refuses to run as root without -u; "nobody" exists on every Debian.
    return ["-u", "nobody"] if os.geteuid() == 0 else []


class PostfixSink:
    """Postfix's smtp-sink on loopback, one dump file per delivered message.

    Dump files (-d) are counted instead of the -c counters: those go through a buffered
    stream and lag behind by hundreds of messages.
    """

    def __init__(self, port: int | None = None, *, backlog: int = 1000) -> None:
        self.port = port or free_port()
        self.workdir = temp_dir("ringmail-smtp-sink-")
        self.dump_dir = os.path.join(self.workdir, "dump")
        os.makedirs(self.dump_dir)
        os.chmod(self.workdir, 0o755)
        os.chmod(self.dump_dir, 0o777)  # smtp-sink writes after dropping to -u nobody
        self._log = open(os.path.join(self.workdir, "smtp-sink.log"), "wb")
        # %H%M%S. prefix: names are a strftime expansion plus a 32-bit random number; the
        # time prefix keeps collisions between 10^4 files out of reach.
        self.proc = spawn(
            [SMTP_SINK, *_root_args(), "-d", os.path.join(self.dump_dir, "%H%M%S."),
             f"{LOOPBACK}:{self.port}", str(backlog)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if not wait_until(self._listening, 10):
            self.close()
            raise RuntimeError("smtp-sink did not start")

    @property
    def smarthost(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.settimeout(2)
                ok = s.recv(512).startswith(b"220")
                s.sendall(b"QUIT\r\n")
                return ok
        except OSError:
            return False

    def messages(self) -> list[str]:
        return sorted(os.listdir(self.dump_dir))

    def count(self) -> int:
        return len(os.listdir(self.dump_dir))

    def message_ids(self) -> list[str]:
        ids = []
        for name in os.listdir(self.dump_dir):
            with open(os.path.join(self.dump_dir, name), "rb") as f:
                m = re.search(rb"^Message-Id:\s*(\S+)", f.read(8192), re.IGNORECASE | re.MULTILINE)
            ids.append(m.group(1).decode() if m else "")
        return ids

    def wait_for(self, n: int, timeout: float) -> bool:
        return wait_until(lambda: self.count() >= n, timeout, interval=0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> "PostfixSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def smtp_source(
    port: int,
    messages: int,
    *,
    sessions: int = 20,
    length: int = 1024,
    sender: str = "from@x.test",
    recipient: str = "to@y.test",
    reuse_connections: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run smtp-source to completion (bounded); returns the completed process."""
    args = [SMTP_SOURCE]
    if reuse_connections:
        args.append("-d")
    args += ["-s", str(sessions), "-m", str(messages), "-l", str(length),
             "-f", sender, "-t", recipient, f"{LOOPBACK}:{port}"]
    p = spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"smtp-source did not finish within {timeout:.0f}s: {err!r}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


# ---------------------------------------------------------------------------------------
# Small SMTP client on a raw socket, for protocol-level checks smtplib hides.


class RawSmtp:
    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def read_reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text of all lines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed: " + repr(self.buf))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                code = int(line[:3]) if line[:3].isdigit() else -1
                return code, "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line + b"\r\n")
        return self.read_reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawSmtp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# dnsmasq: a DNS server on loopback for MX routing tests


DNSMASQ = "/usr/sbin/dnsmasq"


class Dnsmasq:
    """dnsmasq answering for one local zone (e.g. "test") on 127.0.0.1:<port>, nothing else.

    mx: [(domain, host, preference)]; hosts: [(name, ip)] (A records); null_mx: domains that
    publish "0 ." (RFC 7505); txt: [(name, text)] (one TXT record each, cut into strings of
    255 octets; a name given twice has two records). Every other name under the zone is
    NXDOMAIN."""

    def __init__(self, zone: str = "test", *, mx: Iterable[tuple[str, str, int]] = (),
                 hosts: Iterable[tuple[str, str]] = (), null_mx: Iterable[str] = (),
                 txt: Iterable[tuple[str, str]] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = temp_dir("ringmail-dns-")
        conf = [f"local=/{zone}/", "no-resolv", "no-hosts", "bind-interfaces",
                f"listen-address={LOOPBACK}", f"port={self.port}", "no-negcache",
                "log-facility=-"]
        for dom, host, pref in mx:
            conf.append(f"mx-host={dom},{host},{pref}")
        for name, ip in hosts:
            conf.append(f"host-record={name},{ip}")
        for dom in null_mx:
            conf.append(f"dns-rr={dom},15,000000")  # preference 0, root name (one 0 octet)
        for name, text in txt:
            if '"' in text or "\n" in text:
                raise ValueError(f"TXT text for {name} holds a quote or a newline")
            parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
            conf.append(f"txt-record={name}," + ",".join(f'"{p}"' for p in parts))
        self.conf_path = os.path.join(self.workdir, "dnsmasq.conf")
        with open(self.conf_path, "w", encoding="utf-8") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = spawn([DNSMASQ, "--no-daemon", f"--conf-file={self.conf_path}",
                           f"--pid-file={os.path.join(self.workdir, 'pid')}"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        if not wait_until(self._answers, scaled(10)):
            self.close()
            raise RuntimeError("dnsmasq did not start")

    @property
    def server(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}")
        # A minimal query for "." NS; any answer means it listens.
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, (LOOPBACK, self.port))
                s.recvfrom(512)
                return True
            except OSError:
                return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Dnsmasq":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# HAProxy: a real load balancer in front of ringmaild (PROXY protocol tests)


HAPROXY = os.environ.get("HAPROXY", shutil.which("haproxy") or "/usr/sbin/haproxy")


def _port_bound(host: str, port: int) -> bool:
    """True when something listens on host:port (a plain bind fails with EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Haproxy:
    """haproxy in TCP mode on loopback, in the foreground; one frontend per route.

    routes: (frontend port, backend "ip:port", server options such as "send-proxy-v2")."""

    def __init__(self, routes: Iterable[tuple[int, str, str]], timeout: float = 20.0) -> None:
        if not os.path.exists(HAPROXY):
            raise unittest_skip("haproxy is not installed (packaging/dev.sh deps)")
        self.dir = temp_dir("ringmail-haproxy-")
        self.routes = list(routes)
        lines = [
            "global", "    maxconn 512",
            "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 60s",
            "    timeout server 60s",
        ]
        for i, (port, backend, options) in enumerate(self.routes):
            lines += [f"frontend fe{i}", f"    bind {LOOPBACK}:{port}", f"    default_backend be{i}",
                      f"backend be{i}", f"    server s{i} {backend} {options}".rstrip()]
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self._log_path = os.path.join(self.dir, "haproxy.log")
        out = open(self._log_path, "wb")
        try:
            self.proc = spawn([HAPROXY, "-db", "-f", self.config_path], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        ok = wait_until(lambda: self.proc.poll() is not None or
                        all(_port_bound(LOOPBACK, p) for p, _, _ in self.routes),
                        scaled(timeout))
        if not ok or self.proc.poll() is not None:
            text = self.log_text()
            self.close()
            raise AssertionError(f"haproxy did not start:\n{text}")

    def log_text(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return f.read()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> "Haproxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unittest_skip(reason: str) -> Exception:
    import unittest

    return unittest.SkipTest(reason)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
