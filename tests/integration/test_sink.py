"""ringmail-sink (build/tools/ringmail-sink, path from $RINGMAIL_SINK): exact counts in the
summary line, byte-exact --dump files with their envelope, failure injection (reject, defer,
disconnect), --delay-ms that holds one session without stalling another, --exit-after,
SIGTERM, STARTTLS (Python's ssl as the client, failed handshakes counted) and Postfix's
smtp-source as a load."""

from __future__ import annotations

import os
import re
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import unittest

import harness

SUMMARY = re.compile(
    r"^ringmail-sink: received (\d+) messages, (\d+) recipients, (\d+) deferred, "
    r"(\d+) rejected, (\d+) disconnected(?:, (\d+) tls failures)? in ([0-9.]+) s "
    r"\((\d+) msg/s\)$", re.M)


def sink_path() -> str:
    p = os.environ.get("RINGMAIL_SINK")
    if p:
        return p
    root = os.environ.get("RINGMAIL_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
    return os.path.join(root, "build", "tools", "ringmail-sink")


class Summary:
    def __init__(self, m: re.Match) -> None:
        self.received, self.recipients, self.deferred, self.rejected, self.disconnected = (
            int(m.group(i)) for i in range(1, 6))
        # None when the sink runs without --tls-cert (the line then has no such part).
        self.tls_failures = int(m.group(6)) if m.group(6) is not None else None
        self.seconds = float(m.group(7))
        self.rate = int(m.group(8))

    def __repr__(self) -> str:
        return repr(self.__dict__)


class Sink:
    """One ringmail-sink process on a free loopback port."""

    def __init__(self, *args: str, shards: int = 2, quiet: bool = True) -> None:
        self.port = harness.free_port()
        self.dir = harness.temp_dir("ringmail-sink-it-")
        self.stderr_path = os.path.join(self.dir, "stderr")
        argv = [sink_path(), "--listen", f"{harness.LOOPBACK}:{self.port}",
                "--shards", str(shards), "--hostname", "sink.test", *args]
        if quiet:
            argv.append("--quiet")
        self._err = open(self.stderr_path, "wb")
        self.proc = harness.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=self._err)
        self.stdout = ""
        if not harness.wait_until(self._greets, harness.scaled(10)):
            raise AssertionError(f"ringmail-sink did not greet: {self.stderr()!r}")

    def _greets(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"ringmail-sink exited {self.proc.returncode}: {self.stderr()!r}")
        try:
            with harness.RawSmtp(harness.LOOPBACK, self.port, timeout=2) as c:
                code, _ = c.read_reply()
                c.cmd("QUIT")
                return code == 220
        except OSError:
            return False

    def stderr(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_exit(self, timeout: float) -> Summary:
        try:
            out, _ = self.proc.communicate(timeout=harness.scaled(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"ringmail-sink did not exit: {self.stderr()!r}")
        self._err.close()
        self.stdout = out.decode()
        if self.proc.returncode != 0:
            raise AssertionError(f"exit status {self.proc.returncode}: {self.stderr()!r}")
        m = SUMMARY.search(self.stdout)
        if not m:
            raise AssertionError(f"no summary line in {self.stdout!r}")
        return Summary(m)

    def stop(self, sig: int = signal.SIGTERM) -> Summary:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        if not self._err.closed:
            self._err.close()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(harness.LOOPBACK, self.port, timeout=harness.scaled(20))

    def raw(self) -> harness.RawSmtp:
        c = harness.RawSmtp(harness.LOOPBACK, self.port, timeout=harness.scaled(20))
        code, text = c.read_reply()
        assert code == 220, text
        return c


def make_certificate(directory: str, name: str = "sink.test") -> tuple[str, str]:
    """A self-signed P-256 certificate and its key, made with the openssl CLI."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name},IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def message(i: int) -> bytes:
    return f"Subject: sink test {i}\r\nMessage-ID: <{i}@sink.test>\r\n\r\nbody {i}\r\n".encode()


class SinkTest(unittest.TestCase):
    def start(self, *args: str, **kw) -> Sink:
        s = Sink(*args, **kw)
        self.addCleanup(s.kill)
        return s

    def test_counts_exactly(self):
        sink = self.start()
        rcpts = [f"r{k}@y.test" for k in range(3)]
        sent = 0
        for conn in range(5):
            with sink.smtp() as s:
                for i in range(10):
                    s.sendmail("a@x.test", rcpts, message(conn * 10 + i))
                    sent += 1
        # One more through RSET and a session that gives up mid-transaction: neither counts.
        with sink.raw() as c:
            c.cmd("EHLO c.test")
            c.cmd("MAIL FROM:<a@x.test>")
            c.cmd("RSET")
            c.cmd("MAIL FROM:<a@x.test>")
            c.cmd("RCPT TO:<b@y.test>")
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"half a message\r\n")
        summary = sink.stop()
        self.assertEqual((summary.received, summary.recipients), (sent, 3 * sent), summary)
        self.assertEqual((summary.deferred, summary.rejected, summary.disconnected), (0, 0, 0))

    def test_dump_is_byte_exact_with_envelope(self):
        dump = harness.temp_dir("ringmail-sink-dump-")
        sink = self.start("--dump", dump)
        long_line = b"L" * 990
        bodies = [
            b"Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\n...\r\nend .\r\n",
            # 8-bit bytes and a control character (a NUL would be refused: 550 5.6.0).
            b"Subject: 8bit\r\n\r\n\xe9t\xe9 \xff\x80\x01 bytes\r\n" + long_line + b"\r\n",
            b"Subject: no body\r\n\r\n",
            b"Subject: blank lines\r\n\r\n\r\n\r\nx\r\n\r\n",
        ]
        queued = {}
        with sink.raw() as c:
            self.assertEqual(c.cmd("EHLO dumper.test")[0], 250)
            for n, body in enumerate(bodies):
                rcpts = [f"r{n}-{k}@y.test" for k in range(n + 1)]
                self.assertEqual(c.cmd(f"MAIL FROM:<s{n}@x.test> BODY=8BITMIME")[0], 250)
                for r in rcpts:
                    self.assertEqual(c.cmd(f"RCPT TO:<{r}>")[0], 250)
                self.assertEqual(c.cmd("DATA")[0], 354)
                c.send(harness.stuff(body) + b".\r\n")
                code, text = c.read_reply()
                self.assertEqual(code, 250, text)
                qid = text.rsplit(" ", 1)[1]
                queued[qid] = (body, f"s{n}@x.test", rcpts)
            # BDAT: raw content, dot lines are not stuffed on the wire.
            bdat_body = b"Subject: bdat\r\n\r\n.dot\r\n..\r\n" + long_line + b"\r\n"
            self.assertEqual(c.cmd("MAIL FROM:<>")[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<postmaster@y.test>")[0], 250)
            c.send(f"BDAT {len(bdat_body)} LAST\r\n".encode() + bdat_body)
            code, text = c.read_reply()
            self.assertEqual(code, 250, text)
            queued[text.rsplit(" ", 1)[1]] = (bdat_body, "", ["postmaster@y.test"])
            c.cmd("QUIT")
        summary = sink.stop()
        self.assertEqual(summary.received, len(queued))

        names = sorted(os.listdir(dump))
        self.assertEqual(names, sorted([q + ".eml" for q in queued] + [q + ".env" for q in queued]))
        for qid, (body, sender, rcpts) in queued.items():
            with open(os.path.join(dump, qid + ".eml"), "rb") as f:
                self.assertEqual(f.read(), body, qid)
            with open(os.path.join(dump, qid + ".env"), "r", encoding="utf-8") as f:
                env = f.read().splitlines()
            self.assertTrue(env[0].startswith(f"MAIL FROM:<{sender}>"), env)
            self.assertEqual(env[1:1 + len(rcpts)], [f"RCPT TO:<{r}>" for r in rcpts])
            self.assertIn("HELO dumper.test", env)
            self.assertIn("CLIENT 127.0.0.1", env)
            self.assertEqual(env[-1], "RESULT 250 2.0.0")

    def test_reject_percent_100(self):
        sink = self.start("--reject-percent", "100")
        with sink.smtp() as s:
            for i in range(20):
                with self.assertRaises(smtplib.SMTPDataError) as cm:
                    s.sendmail("a@x.test", ["b@y.test", "c@y.test"], message(i))
                self.assertEqual(cm.exception.smtp_code, 550)
                self.assertIn(b"5.7.1", cm.exception.smtp_error)
        summary = sink.stop()
        self.assertEqual((summary.received, summary.rejected, summary.recipients), (0, 20, 0))

    def test_defer_percent_matches_what_the_client_saw(self):
        n = 1000
        sink = self.start("--defer-percent", "30", "--seed", "12345")
        deferred = accepted = 0
        with sink.smtp() as s:
            for i in range(n):
                try:
                    s.sendmail("a@x.test", ["b@y.test"], b"Subject: d\r\n\r\nx\r\n")
                    accepted += 1
                except smtplib.SMTPDataError as e:
                    self.assertEqual(e.smtp_code, 451)
                    self.assertIn(b"4.3.0", e.smtp_error)
                    deferred += 1
        summary = sink.stop()
        self.assertTrue(200 <= deferred <= 400, deferred)
        self.assertEqual((summary.received, summary.deferred), (accepted, deferred))
        self.assertEqual(accepted + deferred, n)

    def test_disconnect_percent(self):
        n = 200
        sink = self.start("--disconnect-percent", "40", "--seed", "7")
        dropped = accepted = 0
        s = None
        for i in range(n):
            if s is None:
                s = sink.smtp()
            try:
                s.sendmail("a@x.test", ["b@y.test"], message(i))
                accepted += 1
            except smtplib.SMTPServerDisconnected:
                dropped += 1
                s.close()
                s = None
        if s is not None:
            s.quit()
        summary = sink.stop()
        self.assertTrue(40 <= dropped <= 120, dropped)
        self.assertEqual((summary.received, summary.disconnected), (accepted, dropped))

    def test_delay_does_not_stall_other_sessions(self):
        # One shard: both sessions share one thread, so a blocking delay would stall B.
        sink = self.start("--delay-ms", str(int(harness.scaled(1500))), shards=1)
        a = sink.raw()
        self.addCleanup(a.close)
        for line in ("EHLO a.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>"):
            self.assertEqual(a.cmd(line)[0], 250)
        self.assertEqual(a.cmd("DATA")[0], 354)
        a.send(b"Subject: a\r\n\r\nfrom A\r\n.\r\n")  # A now waits for its delayed reply

        b = sink.raw()  # B is greeted and served while A's reply is held
        self.addCleanup(b.close)
        for line in ("EHLO b.test", "MAIL FROM:<c@x.test>", "RCPT TO:<d@y.test>"):
            self.assertEqual(b.cmd(line)[0], 250)
        self.assertEqual(b.cmd("DATA")[0], 354)
        readable, _, _ = select.select([a.sock], [], [], 0)
        self.assertEqual(readable, [], "A's final reply came before B's session went through")
        b.send(b"Subject: b\r\n\r\nfrom B\r\n.\r\n")

        self.assertEqual(a.read_reply()[0], 250)
        self.assertEqual(b.read_reply()[0], 250)
        self.assertEqual(a.cmd("QUIT")[0], 221)
        self.assertEqual(b.cmd("QUIT")[0], 221)
        summary = sink.stop()
        self.assertEqual(summary.received, 2)

    def test_exit_after(self):
        sink = self.start("--exit-after", "25")
        s = sink.smtp()
        for i in range(25):
            s.sendmail("a@x.test", ["b@y.test", "c@y.test"], message(i))
        try:
            s.quit()  # may meet the sink's 421 or its close: it is stopping by now
        except smtplib.SMTPServerDisconnected:
            pass
        s.close()
        summary = sink.wait_exit(20)  # no signal: it stops by itself
        self.assertEqual((summary.received, summary.recipients), (25, 50), summary)

    def test_sigterm_with_an_idle_session_exits_0(self):
        sink = self.start(quiet=False)
        idle = sink.raw()
        self.addCleanup(idle.close)
        self.assertEqual(idle.cmd("EHLO idle.test")[0], 250)
        with sink.smtp() as s:
            s.sendmail("a@x.test", ["b@y.test"], message(1))
        summary = sink.stop(signal.SIGTERM)
        self.assertEqual(summary.received, 1)
        self.assertIn("listening on", sink.stderr())
        # The idle session was told 421 and closed.
        code, text = idle.read_reply()
        self.assertEqual(code, 421, text)

    def test_starttls_with_python_ssl(self):
        # An independent TLS stack (OpenSSL through Python's ssl) as the client.
        cert, key = make_certificate(harness.temp_dir("ringmail-sink-tls-"))
        sink = self.start("--tls-cert", cert, "--tls-key", key)
        ctx = ssl.create_default_context(cafile=cert)
        for conn in range(3):
            with sink.smtp() as s:
                s.ehlo("tls.test")
                self.assertTrue(s.has_extn("starttls"))
                s.starttls(context=ctx)  # verifies the chain and the name
                s.ehlo("tls.test")
                self.assertFalse(s.has_extn("starttls"))
                for i in range(5):
                    s.sendmail("a@x.test", ["b@y.test", "c@y.test"], message(conn * 5 + i))
        summary = sink.stop()
        self.assertEqual((summary.received, summary.recipients), (15, 30), summary)
        self.assertEqual(summary.tls_failures, 0)

    def test_starttls_failures_close_that_connection_only(self):
        cert, key = make_certificate(harness.temp_dir("ringmail-sink-tls-"))
        sink = self.start("--tls-cert", cert, "--tls-key", key)
        # 1: garbage instead of a ClientHello; 2: EOF right after the 220.
        for ending in (b"this is no ClientHello\r\n" * 8, b""):
            c = sink.raw()
            self.assertEqual(c.cmd("EHLO bad.test")[0], 250)
            self.assertEqual(c.cmd("STARTTLS")[0], 220)
            if ending:
                c.send(ending)
            else:
                c.sock.shutdown(socket.SHUT_WR)
            c.sock.settimeout(harness.scaled(10))
            rest = b""
            while chunk := c.sock.recv(4096):  # an alert at most, then the close
                rest += chunk
            self.assertFalse(b"250" in rest, rest)
            c.close()
        # Plaintext pipelined behind STARTTLS is never executed.
        c = sink.raw()
        self.assertEqual(c.cmd("EHLO smuggle.test")[0], 250)
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        self.assertEqual(c.read_reply()[0], 220)
        c.close()
        with sink.smtp() as s:  # the sink is fine
            s.sendmail("a@x.test", ["b@y.test"], message(1))
        summary = sink.stop()
        self.assertEqual(summary.received, 1)
        self.assertEqual(summary.tls_failures, 3)

    def test_tls_options(self):
        d = harness.temp_dir("ringmail-sink-tls-")
        cert, key = make_certificate(d)
        for args in (["--tls-cert", cert], ["--tls-key", key],
                     ["--tls-cert", cert, "--tls-key", os.path.join(d, "missing.pem")],
                     ["--tls-cert", key, "--tls-key", key]):
            p = subprocess.run([sink_path(), "--listen", f"{harness.LOOPBACK}:0", *args],
                               capture_output=True, timeout=20)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(b"ringmail-sink:", p.stderr)

    def test_smtp_source_5000(self):
        n = 5000
        sink = self.start("--exit-after", str(n))
        p = harness.smtp_source(sink.port, n, sessions=20, length=1024,
                                timeout=harness.scaled(120))
        # smtp-source's QUIT may meet the stopping sink: its exit status is not the point.
        summary = sink.wait_exit(30)
        self.assertEqual((summary.received, summary.recipients), (n, n), (summary, p.stderr))
        self.assertEqual(summary.deferred + summary.rejected + summary.disconnected, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
