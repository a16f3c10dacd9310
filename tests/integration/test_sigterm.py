"""SIGTERM while clients are in the middle of DATA: ringmaild stops accepting connections,
lets the open transactions finish (250), delivers them (before exiting or after a
restart on the same spool) and exits 0."""

import socket
import time
import unittest

import harness

OPEN_TRANSACTIONS = 5


def open_mid_data(port: int, n: int) -> harness.RawSmtp:
    c = harness.RawSmtp(harness.LOOPBACK, port, timeout=30)
    assert c.read_reply()[0] == 220
    assert c.cmd("EHLO mid.test")[0] == 250
    assert c.cmd("MAIL FROM:<a@x.test>")[0] == 250
    assert c.cmd("RCPT TO:<b@y.test>")[0] == 250
    code, text = c.cmd("DATA")
    assert code == 354, text
    c.send(f"Subject: mid {n}\r\nMessage-ID: <mid{n}@sigterm.test>\r\n\r\nfirst half\r\n".encode())
    return c


def new_connection_refused(port: int) -> str | None:
    """None if a new client cannot get a session, else what it got."""
    try:
        s = socket.create_connection((harness.LOOPBACK, port), timeout=3)
    except OSError:
        return None  # refused: the listener is closed
    with s:
        s.settimeout(3)
        try:
            greeting = s.recv(512)
        except OSError:
            return None  # timed out or reset: nobody serves it
        if greeting.startswith(b"220"):
            return greeting.decode("utf-8", "replace")
        return None  # closed, or 421


class SigtermTest(unittest.TestCase):
    def test_sigterm_finishes_open_transactions_and_exits_0(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        daemon = harness.Ringmaild(smarthost=sink.smarthost)
        self.addCleanup(daemon.kill)
        daemon.start()

        clients = [open_mid_data(daemon.port, n) for n in range(OPEN_TRANSACTIONS)]
        for c in clients:
            self.addCleanup(c.close)
        time.sleep(0.2)  # let the daemon read the first halves

        daemon.signal(15)  # SIGTERM
        time.sleep(harness.scaled(1))
        got = new_connection_refused(daemon.port)
        self.assertIsNone(got, f"a new connection was served after SIGTERM: {got!r}")
        self.assertTrue(daemon.running(),
                        "ringmaild exited with transactions still open:\n" + daemon.log_text())

        acked = []
        for n, c in enumerate(clients):
            c.send(b"second half\r\n.\r\n")
            code, text = c.read_reply()
            self.assertEqual(code, 250, f"transaction {n} after SIGTERM: {text}")
            acked.append(f"<mid{n}@sigterm.test>".encode())
            # QUIT may get 221, or the session may already be closing (421 / EOF).
            try:
                c.cmd("QUIT")
            except OSError:
                pass
            c.close()

        code = daemon.wait_exit(harness.scaled(30))
        if code is None:
            daemon.kill()
            self.fail("ringmaild did not exit within 30s of SIGTERM:\n" + daemon.log_text())
        self.assertEqual(code, 0, daemon.log_text())

        def all_delivered(ts):
            return all(any(mid in t.content for t in ts) for mid in acked)

        if not all_delivered(sink.transactions()):
            harness.log(f"sigterm: {sink.count()} of {len(acked)} delivered before exit; "
                        "restarting on the same spool")
            daemon.start()
            ok = sink.wait_until(all_delivered, harness.scaled(60))
            self.assertTrue(ok, "acknowledged messages not delivered after restart:\n"
                            + daemon.log_text())
            daemon.stop()  # SIGTERM again, idle this time: exit 0

        for mid in acked:
            [t] = [t for t in sink.transactions() if mid in t.content]
            self.assertTrue(t.content.endswith(b"\r\n\r\nfirst half\r\nsecond half\r\n"),
                            t.content)


if __name__ == "__main__":
    unittest.main()
