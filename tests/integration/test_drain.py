"""Graceful drain for load balancers, under load from ringmail-blast.

SIGTERM while ringmail-blast is sending (new connections all the time): /readyz turns 503 while
the listeners still accept (checked as a state: the flip is seen before the grace ends, and a
fresh connection still gets its 220 after it), no connection is refused during the grace
(blast exits 0 with no refused connection and every message accepted), a second SIGTERM ends
the grace, open transactions finish, the process exits 0, and every message that got its 250 is
delivered to the sink. systemd's notify protocol is checked on the way: READY=1 after start,
STOPPING=1 at the signal. A drain with no second signal ends by itself after drain_grace.

Binaries from $RINGMAILD and $RINGMAIL_BLAST."""

import http.client
import json
import os
import signal
import socket
import subprocess
import unittest

import harness

MESSAGES = 2000
RATE = 400  # messages/s: the load lasts about 5 s, across the signal
CONNECTIONS = 8


def readyz(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=harness.scaled(5))
    try:
        conn.request("GET", "/readyz")
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection(harness.LOOPBACK, port, timeout=harness.scaled(5))
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def greets(port: int) -> bool:
    try:
        with socket.create_connection((harness.LOOPBACK, port), timeout=harness.scaled(5)) as s:
            s.settimeout(harness.scaled(5))
            ok = s.recv(512).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


class NotifySocket:
    """The service manager's end of sd_notify: an abstract datagram socket."""

    def __init__(self) -> None:
        self.name = f"@ringmail-test-notify-{os.getpid()}-{id(self)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def seen(self, key: str) -> bool:
        return any(key in m.split("\n") for m in self.poll())

    def close(self) -> None:
        self.sock.close()


def blast_path() -> str:
    path = os.environ.get("RINGMAIL_BLAST")
    if not path:
        raise unittest.SkipTest("RINGMAIL_BLAST is not set (run through meson test)")
    return path


class DrainTest(unittest.TestCase):
    def start_daemon(self, sink, grace: str, shutdown: str = "60s") -> tuple:
        admin_port = harness.free_port()
        work = harness.temp_dir()
        port = harness.free_port()
        config = harness.make_config(
            os.path.join(work, "spool"), port, sink.smarthost,
            server_options={"drain_grace": grace, "shutdown_timeout": shutdown})
        config["admin"] = {"address": f"{harness.LOOPBACK}:{admin_port}"}
        daemon = harness.Ringmaild(config, workdir=work)
        self.addCleanup(daemon.kill)
        daemon.start()
        ok = harness.wait_until(lambda: readyz(admin_port)[0] == 200, harness.scaled(10))
        self.assertTrue(ok, "/readyz never 200:\n" + daemon.log_text())
        return daemon, admin_port

    def test_sigterm_under_load_no_refusal_readiness_503_every_250_delivered(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        notify = NotifySocket()
        self.addCleanup(notify.close)
        os.environ["NOTIFY_SOCKET"] = notify.name
        try:
            daemon, admin_port = self.start_daemon(sink, grace="30s")
        finally:
            del os.environ["NOTIFY_SOCKET"]
        self.assertTrue(harness.wait_until(lambda: notify.seen("READY=1"), harness.scaled(10)),
                        f"no READY=1: {notify.messages}")
        self.assertFalse(notify.seen("STOPPING=1"))
        self.assertEqual(readyz(admin_port), (200, "ready\n"))

        # Load: a new connection every 5 messages, across the signal and into the grace.
        blast = harness.spawn(
            [blast_path(), "--target", f"{harness.LOOPBACK}:{daemon.port}",
             "--connections", str(CONNECTIONS), "--messages", str(MESSAGES),
             "--per-connection", "5", "--rate", str(RATE), "--timeout", "30s", "--json",
             "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertTrue(sink.wait_for(20, harness.scaled(30)),
                        "no delivery before the signal:\n" + daemon.log_text())

        daemon.signal(signal.SIGTERM)
        # Readiness flips first, while the listeners are still open.
        flipped = harness.wait_until(lambda: readyz(admin_port)[0] == 503, harness.scaled(10),
                                     interval=0.01)
        self.assertTrue(flipped, "/readyz not 503 after SIGTERM:\n" + daemon.log_text())
        self.assertNotIn("closing the listeners", daemon.log_text(),
                         "the grace ended before readiness turned 503")
        self.assertEqual(readyz(admin_port), (503, '{"reason":"draining"}\n'))
        self.assertEqual(healthz(admin_port), 200, "liveness stays 200 during the drain")
        self.assertTrue(greets(daemon.port), "a new connection was not served during the grace")
        self.assertTrue(harness.wait_until(lambda: notify.seen("STOPPING=1"), harness.scaled(5)),
                        f"no STOPPING=1: {notify.messages}")

        out, err = blast.communicate(timeout=harness.scaled(120))
        self.assertNotIn("closing the listeners", daemon.log_text(),
                         "the load outlasted the 30 s grace: inconclusive on this machine")
        self.assertEqual(blast.returncode, 0, out.decode() + err.decode())
        summary = json.loads(out)
        self.assertEqual(summary["messages"]["accepted"], MESSAGES, summary)
        self.assertEqual(summary["connections"]["errors"], 0, summary)
        self.assertTrue(daemon.running(), daemon.log_text())

        # A second signal ends the grace; the drain finishes and the process exits 0.
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(harness.scaled(60))
        if code is None:
            daemon.kill()
            self.fail("ringmaild did not exit after the second SIGTERM:\n" + daemon.log_text())
        self.assertEqual(code, 0, daemon.log_text())
        log = daemon.log_text()
        self.assertIn("second stop signal: the grace ends now", log)
        self.assertFalse(greets(daemon.port))

        # Every 250 is delivered: before the exit, or after a restart on the same spool.
        expected = MESSAGES  # blast's; greets() sends none
        if sink.count() < expected:
            harness.log(f"drain: {sink.count()} of {expected} delivered before exit; restarting")
            daemon.start()
            ok = sink.wait_for(expected, harness.scaled(120))
            self.assertTrue(ok, f"{sink.count()} of {expected} delivered:\n" + daemon.log_text())
            daemon.stop(timeout=90)
        self.assertGreaterEqual(sink.count(), expected)  # at least once

    def test_grace_ends_by_itself_and_exit_is_0(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        daemon, admin_port = self.start_daemon(sink, grace="1s", shutdown="20s")
        c = harness.RawSmtp(harness.LOOPBACK, daemon.port, timeout=harness.scaled(30))
        self.addCleanup(c.close)
        self.assertEqual(c.read_reply()[0], 220)
        self.assertEqual(c.cmd("EHLO idle.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@x.test>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<b@y.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: open\r\nMessage-ID: <open@drain.test>\r\n\r\nbefore\r\n")
        daemon.signal(signal.SIGTERM)
        self.assertTrue(harness.wait_until(lambda: readyz(admin_port)[0] == 503,
                                           harness.scaled(10), interval=0.01))
        # The listeners close once the grace is over; the open transaction still finishes.
        self.assertTrue(harness.wait_until(
            lambda: "closing the listeners" in daemon.log_text(), harness.scaled(20)),
            daemon.log_text())
        c.send(b"after\r\n.\r\n")
        code, text = c.read_reply()
        self.assertEqual(code, 250, text)
        code = daemon.wait_exit(harness.scaled(30))
        if code is None:
            daemon.kill()
            self.fail("ringmaild did not exit within shutdown_timeout:\n" + daemon.log_text())
        self.assertEqual(code, 0, daemon.log_text())


if __name__ == "__main__":
    unittest.main()
