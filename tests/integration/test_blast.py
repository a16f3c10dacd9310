"""ringmail-blast against real and fake SMTP servers on loopback: exact counts against
Postfix's smtp-sink and the harness's Python sink, refusals (4xx/5xx), AUTH PLAIN (accepted,
refused, not offered), STARTTLS failures (not offered, garbage instead of a handshake), broken
servers (disconnect, stall, garbage) that must end in bounded time with the failures counted,
and an open-loop run (--rate with --duration). Binary from $RINGMAIL_BLAST. STARTTLS that
works is tested against ringmail-sink in test_blast_sink.py."""

import base64
import binascii
import collections
import json
import os
import socket
import subprocess
import threading
import unittest

import harness

BLAST = os.environ.get("RINGMAIL_BLAST", "build/tools/ringmail-blast")


def blast(port: int, *args: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Run ringmail-blast --json to completion; returns (exit status, summary, stderr)."""
    cmd = [BLAST, "--target", f"{harness.LOOPBACK}:{port}", "--json", *args]
    p = harness.spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=harness.scaled(timeout))
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"ringmail-blast did not finish: {err!r}")
    summary = json.loads(out) if p.returncode in (0, 1) and out.strip() else {}
    return p.returncode, summary, err.decode(errors="replace")


class FakeServer:
    """Threaded SMTP-ish server whose behaviour a test chooses:
    serve(conn, index) runs per connection (index counts connections from 0)."""

    def __init__(self, serve) -> None:
        self._serve = serve
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((harness.LOOPBACK, 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                index = self.connections
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(60)
        try:
            self._serve(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
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
        self._thread.join(timeout=5)


class Lines:
    """Reads CRLF lines (and DATA up to CRLF.CRLF) from a socket."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def data(self) -> bool:
        while b"\r\n.\r\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        self.buf = self.buf.split(b"\r\n.\r\n", 1)[1]
        return True


def smtp_loop(conn: socket.socket, on_mail=None, on_dot=None, on_auth=None) -> None:
    """A minimal lock-step SMTP server (no PIPELINING offered). on_mail(n) / on_dot(n) may
    return a reply line, None for the default, or "close" / "stall"; n counts MAIL/dots on
    this connection from 0. With on_auth, AUTH PLAIN is offered and on_auth(argument line)
    returns the reply to AUTH; MAIL before a 235 is refused."""
    r = Lines(conn)
    conn.sendall(b"220 fake ESMTP\r\n")
    mails = dots = 0
    authenticated = False
    while True:
        line = r.line()
        if line is None:
            return
        verb = line[:4].upper()
        reply = b"250 2.0.0 ok"
        if verb == b"EHLO":
            reply = b"250-fake\r\n250 ENHANCEDSTATUSCODES"
            if on_auth:
                reply = b"250-fake\r\n250-AUTH LOGIN PLAIN\r\n250 ENHANCEDSTATUSCODES"
        elif verb == b"AUTH" and on_auth:
            reply = on_auth(line[5:].decode()).encode()
            authenticated = reply.startswith(b"235")
        elif verb == b"MAIL" and on_auth and not authenticated:
            reply = b"530 5.7.0 authentication required"
        elif verb == b"MAIL":
            action = on_mail(mails) if on_mail else None
            mails += 1
            if action == "close":
                return
            if action:
                reply = action.encode()
        elif verb == b"DATA":
            conn.sendall(b"354 go ahead\r\n")
            if not r.data():
                return
            action = on_dot(dots) if on_dot else None
            dots += 1
            if action == "close":
                return
            if action == "stall":
                while conn.recv(65536):
                    pass
                return
            if action:
                reply = action.encode()
        elif verb == b"QUIT":
            conn.sendall(b"221 2.0.0 bye\r\n")
            return
        conn.sendall(reply + b"\r\n")


class BlastTest(unittest.TestCase):
    def fake(self, serve) -> FakeServer:
        s = FakeServer(serve)
        self.addCleanup(s.close)
        return s

    def sink(self, **kw) -> harness.SmtpSink:
        s = harness.SmtpSink(**kw)
        self.addCleanup(s.close)
        return s

    # -- exact counts --------------------------------------------------------------------

    def test_postfix_smtp_sink_exact_counts(self):
        with harness.PostfixSink() as sink:
            rc, s, err = blast(sink.port, "--messages", "600", "--connections", "8",
                               "--recipients", "3", "--pipelining")
            self.assertEqual(rc, 0, err)
            self.assertEqual(s["messages"]["sent"], 600)
            self.assertEqual(s["messages"]["accepted"], 600)
            self.assertEqual(s["recipients"]["accepted"], 1800)
            self.assertEqual(s["connections"]["errors"], 0)
            self.assertEqual(s["latency_us"]["count"], 600)
            self.assertTrue(sink.wait_for(600, harness.scaled(30)), sink.count())
            self.assertEqual(sink.count(), 600)

    def test_python_sink_envelopes_and_bodies(self):
        sink = self.sink()
        rc, s, err = blast(sink.port, "--messages", "200", "--connections", "5", "--shards", "2",
                           "--recipients", "2", "--to", "u{n}@d{n}.test", "--domains", "7",
                           "--from", "s{n}@x.test", "--size", "3000")
        self.assertEqual(rc, 0, err)
        self.assertEqual(s["messages"]["accepted"], 200)
        self.assertEqual(s["shards"], 2)
        ts = sink.transactions()
        self.assertEqual(len(ts), 200)
        # Message i: sender s{i}, recipients u{(2i+j) % 7}@d{(2i+j) % 7}.test.
        senders = sorted(int(t.mail_from[1:].split("@")[0]) for t in ts)
        self.assertEqual(senders, list(range(200)))
        for t in ts:
            i = int(t.mail_from[1:].split("@")[0])
            want = [f"u{(2 * i + j) % 7}@d{(2 * i + j) % 7}.test" for j in range(2)]
            self.assertEqual(t.rcpts, want)
            self.assertEqual(len(t.raw), 3000)
            self.assertTrue(t.content.startswith(b"From: ringmail-blast <s0@x.test>\r\n"))
        self.assertEqual(s["message_size"], 3000)

    def test_per_connection_limit(self):
        sink = self.sink()
        rc, s, err = blast(sink.port, "--messages", "100", "--connections", "4",
                           "--per-connection", "10", "--pipelining")
        self.assertEqual(rc, 0, err)
        self.assertEqual(s["messages"]["accepted"], 100)
        per_peer = collections.Counter(t.peer for t in sink.transactions())
        self.assertLessEqual(max(per_peer.values()), 10)
        self.assertGreaterEqual(len(per_peer), 10)
        self.assertEqual(s["connections"]["established"], sink.connections)

    def test_pipelining_only_when_asked(self):
        sink = self.sink()
        rc, s, err = blast(sink.port, "--messages", "20", "--connections", "2")
        self.assertEqual(rc, 0, err)
        self.assertEqual(s["connections"]["pipelining"], 0)
        rc, s, err = blast(sink.port, "--messages", "20", "--connections", "2", "--pipelining")
        self.assertEqual(rc, 0, err)
        self.assertEqual(s["connections"]["pipelining"], 2)
        self.assertEqual(sink.count(), 40)

    def test_message_file_is_normalised_and_stuffed(self):
        path = os.path.join(harness.temp_dir(), "m.eml")
        with open(path, "wb") as f:
            f.write(b"Subject: file\n\n.dot line\nlast")
        sink = self.sink()
        rc, s, err = blast(sink.port, "--messages", "3", "--connections", "1",
                           "--message-file", path)
        self.assertEqual(rc, 0, err)
        for t in sink.transactions():
            self.assertEqual(t.raw, b"Subject: file\r\n\r\n..dot line\r\nlast\r\n")
            self.assertEqual(t.content, b"Subject: file\r\n\r\n.dot line\r\nlast\r\n")

    # -- refusals ------------------------------------------------------------------------

    def test_refusals_are_counted_and_fail_the_run(self):
        for pipelining in ([], ["--pipelining"]):
            with self.subTest(pipelining=bool(pipelining)):
                sink = self.sink(reject_rcpts={
                    "user1@blast.test": "550 5.1.1 no such user",
                    "user2@blast.test": "451 4.2.0 busy",
                    "user7@blast.test": "552 5.2.2 full",
                }, tempfail_first=0)
                args = ["--messages", "10", "--connections", "3", *pipelining]
                rc, s, err = blast(sink.port, *args)
                self.assertEqual(rc, 1, err)
                m = s["messages"]
                self.assertEqual((m["sent"], m["accepted"], m["temp_failed"], m["perm_failed"]),
                                 (10, 7, 1, 2))
                self.assertEqual(m["cut"], 0)
                self.assertEqual(s["recipients"]["refused"], 3)
                self.assertEqual(s["connections"]["errors"], 0)
                self.assertTrue(s["errors"])
                self.assertEqual(sink.count(), 7)
                rc, s, err = blast(sink.port, *args, "--allow-errors")
                self.assertEqual(rc, 0, err)
                self.assertEqual(s["messages"]["accepted"], 7)

    def test_data_refusals(self):
        def on_dot(n):
            return ["451 4.3.0 later", "550 5.7.1 no", None][n % 3]
        server = self.fake(lambda c, i: smtp_loop(c, on_dot=on_dot))
        rc, s, err = blast(server.port, "--messages", "9", "--connections", "1")
        self.assertEqual(rc, 1, err)
        m = s["messages"]
        self.assertEqual((m["sent"], m["accepted"], m["temp_failed"], m["perm_failed"]),
                         (9, 3, 3, 3))
        self.assertEqual(s["connections"]["established"], 1)

    # -- AUTH ---------------------------------------------------------------------------

    def auth_server(self, password: str) -> tuple[FakeServer, list[str]]:
        """Offers AUTH PLAIN; 235 for bench / the given password, else 535. Returns the
        server and the decoded credentials it saw ("user:password" each)."""
        seen: list[str] = []

        def on_auth(arg: str) -> str:
            mech, _, b64 = arg.partition(" ")
            if mech.upper() != "PLAIN" or not b64:
                return "504 5.5.4 PLAIN with an initial response, please"
            try:
                authzid, user, pw = base64.b64decode(b64, validate=True).split(b"\0")
            except (ValueError, binascii.Error):
                return "501 5.5.2 bad base64"
            seen.append(f"{user.decode()}:{pw.decode()}")
            if authzid == b"" and user == b"bench" and pw == password.encode():
                return "235 2.7.0 ok"
            return "535 5.7.8 authentication credentials invalid"

        return self.fake(lambda c, i: smtp_loop(c, on_auth=on_auth)), seen

    def test_auth_plain(self):
        server, seen = self.auth_server("s3:cr et")
        rc, s, err = blast(server.port, "--messages", "12", "--connections", "3", "--shards", "1",
                           "--auth", "bench:s3:cr et")
        self.assertEqual(rc, 0, err)
        self.assertEqual(s["auth"], True)
        self.assertEqual(s["messages"]["accepted"], 12)
        self.assertEqual(s["connections"]["established"], 3)
        self.assertEqual(seen, ["bench:s3:cr et"] * 3)  # once per connection

    def test_auth_refused_is_an_error(self):
        server, seen = self.auth_server("right")
        rc, s, err = blast(server.port, "--messages", "4", "--connections", "2", "--shards", "1",
                           "--auth", "bench:wrong", "--timeout", "5", timeout=60)
        self.assertEqual(rc, 1, err)
        m = s["messages"]
        self.assertEqual((m["sent"], m["accepted"], m["not_sent"]), (0, 0, 4))
        rejected = s["connections"]["error_kinds"]["rejected"]
        self.assertEqual(rejected, s["connections"]["attempts"])
        self.assertEqual(rejected, len(seen))
        self.assertIn(rejected, (4, 5))
        self.assertEqual(s["connections"]["established"], 0)
        self.assertTrue(s["errors"])

    def test_auth_not_offered(self):
        server = self.fake(lambda c, i: smtp_loop(c))
        rc, s, err = blast(server.port, "--messages", "2", "--connections", "1",
                           "--auth", "bench:x", "--timeout", "5", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["not_sent"], 2)
        self.assertEqual(s["connections"]["error_kinds"]["rejected"],
                         s["connections"]["attempts"])

    def test_starttls_not_offered_is_a_tls_error(self):
        server = self.fake(lambda c, i: smtp_loop(c))
        rc, s, err = blast(server.port, "--messages", "2", "--connections", "1", "--starttls",
                           "--timeout", "5", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["sent"], 0)
        self.assertEqual(s["messages"]["not_sent"], 2)
        self.assertEqual(s["connections"]["error_kinds"]["tls"], s["connections"]["attempts"])
        self.assertEqual(s["connections"]["tls_established"], 0)

    def test_starttls_handshake_with_garbage_fails_in_bounded_time(self):
        def serve(conn, i):
            r = Lines(conn)
            conn.sendall(b"220 fake ESMTP\r\n")
            while (line := r.line()) is not None:
                if line.upper().startswith(b"EHLO"):
                    conn.sendall(b"250-fake\r\n250 STARTTLS\r\n")
                elif line.upper() == b"STARTTLS":
                    conn.sendall(b"220 2.0.0 go ahead\r\n")
                    conn.recv(65536)  # the ClientHello
                    conn.sendall(b"this is not a TLS record\r\n" * 4)
                    while conn.recv(65536):
                        pass
                    return
        server = self.fake(serve)
        rc, s, err = blast(server.port, "--messages", "3", "--connections", "1", "--starttls",
                           "--timeout", "5", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["not_sent"], 3)
        self.assertEqual(s["connections"]["error_kinds"]["tls"], s["connections"]["attempts"])

    # -- broken servers ------------------------------------------------------------------

    def test_disconnect_mid_transaction(self):
        # Each connection takes one message, then drops the connection at the next MAIL.
        server = self.fake(lambda c, i: smtp_loop(c, on_mail=lambda n: "close" if n else None))
        rc, s, err = blast(server.port, "--messages", "10", "--connections", "2", "--shards", "1",
                           "--timeout", "5")
        self.assertEqual(rc, 1, err)
        m = s["messages"]
        self.assertEqual(m["sent"], 10)
        self.assertEqual(m["accepted"] + m["cut"], 10)
        self.assertGreaterEqual(m["cut"], 4)
        self.assertEqual(s["connections"]["error_kinds"]["closed"], m["cut"])
        self.assertEqual(m["not_sent"], 0)

    def test_stalled_server_ends_in_bounded_time(self):
        def stall(conn, i):
            while conn.recv(65536):
                pass
        server = self.fake(stall)
        rc, s, err = blast(server.port, "--messages", "4", "--connections", "2", "--shards", "1",
                           "--timeout", "2", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["sent"], 0)
        self.assertEqual(s["messages"]["not_sent"], 4)
        timeouts = s["connections"]["error_kinds"]["timeout"]
        self.assertEqual(timeouts, s["connections"]["attempts"])
        self.assertIn(timeouts, (4, 5))
        self.assertEqual(s["connections"]["established"], 0)

    def test_stall_after_data_cuts_by_timeout(self):
        server = self.fake(lambda c, i: smtp_loop(c, on_dot=lambda n: "stall"))
        rc, s, err = blast(server.port, "--messages", "2", "--connections", "2", "--shards", "1",
                           "--timeout", "2", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["sent"], 2)
        self.assertEqual(s["messages"]["cut"], 2)
        self.assertEqual(s["connections"]["error_kinds"]["timeout"], 2)
        self.assertEqual(s["latency_us"]["count"], 0)

    def test_garbage_replies(self):
        def garbage(conn, i):
            conn.sendall(b"hello, I am not an SMTP server\r\n")
            while conn.recv(65536):
                pass
        server = self.fake(garbage)
        rc, s, err = blast(server.port, "--messages", "6", "--connections", "2", "--shards", "1",
                           "--timeout", "5", timeout=60)
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["not_sent"], 6)
        garbage = s["connections"]["error_kinds"]["garbage"]
        self.assertEqual(garbage, s["connections"]["attempts"])
        self.assertIn(garbage, (6, 7))

    def test_refused_port(self):
        port = harness.free_port()
        rc, s, err = blast(port, "--messages", "5", "--connections", "2", "--shards", "1")
        self.assertEqual(rc, 1, err)
        self.assertEqual(s["messages"]["not_sent"], 5)
        # Every failed attempt takes one message off; a slot may have one more in flight.
        refused = s["connections"]["error_kinds"]["refused"]
        self.assertEqual(refused, s["connections"]["attempts"])
        self.assertIn(refused, (5, 6))

    # -- open loop -----------------------------------------------------------------------

    def test_rate_with_duration(self):
        sink = self.sink()
        rc, s, err = blast(sink.port, "--rate", "50", "--duration", "2", "--connections", "4",
                           "--pipelining", timeout=60)
        self.assertEqual(rc, 0, err)
        m = s["messages"]
        self.assertEqual(s["mode"], "open")
        # 100 messages are scheduled in 2 s; each is sent or counted as behind schedule.
        self.assertEqual(m["sent"] + m["behind_schedule"], 100)
        self.assertGreaterEqual(m["sent"], 80)
        self.assertEqual(m["accepted"], m["sent"])
        self.assertEqual(sink.count(), m["accepted"])

    # -- command line --------------------------------------------------------------------

    def test_usage_errors_exit_2(self):
        for args in (["--auth", "no-colon"], ["--connections", "0"], ["--bogus"]):
            rc, _, err = blast(harness.free_port(), *args)
            self.assertEqual(rc, 2, args)
            self.assertIn("ringmail-blast", err)
        p = subprocess.run([BLAST, "--messages", "1"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 2)

    def test_text_summary(self):
        sink = self.sink()
        p = subprocess.run([BLAST, "--target", f"{harness.LOOPBACK}:{sink.port}", "--messages",
                            "5", "--connections", "1"], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"sent 5  accepted 5  4xx 0  5xx 0", p.stdout)
        self.assertEqual(p.stderr, b"")  # no progress line: stderr is not a terminal


if __name__ == "__main__":
    unittest.main()
