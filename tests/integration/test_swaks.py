"""swaks (an independent SMTP client) sends one message through ringmaild; it arrives."""

import subprocess
import unittest

import harness


def swaks(port: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [harness.SWAKS, "--server", f"{harness.LOOPBACK}:{port}", "--ehlo", "swaks.test",
         "--from", "sender@x.test", "--to", "rcpt@y.test",
         "--header", "Message-Id: <swaks-1@x.test>", "--header", "Subject: swaks",
         "--body", "hello from swaks\n.leading dot\n", *extra],
        capture_output=True, timeout=harness.scaled(30))


class SwaksTest(unittest.TestCase):
    def test_swaks_message_arrives(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        daemon = harness.Ringmaild(smarthost=sink.smarthost)
        self.addCleanup(daemon.kill)
        daemon.start()

        p = swaks(daemon.port)
        self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace"))
        ok = sink.wait_until(lambda ts: any(b"<swaks-1@x.test>" in t.content for t in ts),
                             harness.scaled(30))
        self.assertTrue(ok, daemon.log_text())
        [t] = sink.transactions()
        self.assertEqual(t.mail_from, "sender@x.test")
        self.assertEqual(t.rcpts, ["rcpt@y.test"])
        self.assertTrue(t.content.startswith(b"Received:"), t.content[:300])
        self.assertIn(b"\r\nhello from swaks\r\n.leading dot\r\n", t.content)
        self.assertIn(b"\r\n..leading dot\r\n", t.raw)
        daemon.stop()


if __name__ == "__main__":
    unittest.main()
