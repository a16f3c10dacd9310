"""ringmail-blast against ringmail-sink on loopback: the two tools must agree exactly.

- counts: blast's "accepted" equals the sink's "received N messages, R recipients", over
  several connections and recipients, pipelined and lock-step, 2 shards each;
- --dump: every .eml is byte-exact what blast meant to send (--message-file with dot lines,
  8-bit bytes and a long line), every .env names the envelope of its message number;
- injected failures: the sink's deferred / rejected / disconnected counts equal blast's 4xx /
  5xx / cut (and connection errors), within a tolerance of the percentages; exit status 1,
  0 with --allow-errors;
- STARTTLS: blast --starttls against the sink with a self-signed certificate made here.

Binaries from $RINGMAIL_BLAST and $RINGMAIL_SINK. Bounded: every process has a timeout and is
killed at exit (harness.spawn), temp dirs go away."""

from __future__ import annotations

import math
import os
import subprocess
import unittest

import harness
from test_blast import BLAST, blast
from test_sink import Sink, make_certificate


class BlastSinkTest(unittest.TestCase):
    def sink(self, *args: str, **kw) -> Sink:
        s = Sink(*args, **kw)
        self.addCleanup(s.kill)
        return s

    def assert_clean(self, rc: int, s: dict, err: str) -> None:
        self.assertEqual(rc, 0, err)
        self.assertFalse(s["errors"], s)
        self.assertEqual(s["connections"]["errors"], 0, s)

    # -- exact counts --------------------------------------------------------------------

    def test_counts_match_pipelined_and_lock_step(self):
        for mode in (["--pipelining"], []):
            with self.subTest(pipelining=bool(mode)):
                sink = self.sink(shards=2)
                n, rcpts = 3000, 3
                rc, s, err = blast(sink.port, "--messages", str(n), "--connections", "12",
                                   "--shards", "2", "--recipients", str(rcpts),
                                   "--to", "u{n}@d{n}.test", "--domains", "17", *mode)
                self.assert_clean(rc, s, err)
                self.assertEqual(s["messages"]["sent"], n)
                self.assertEqual(s["messages"]["accepted"], n)
                self.assertEqual(s["recipients"]["accepted"], n * rcpts)
                self.assertEqual(s["connections"]["pipelining"], 12 if mode else 0)
                summary = sink.stop()
                self.assertEqual((summary.received, summary.recipients),
                                 (s["messages"]["accepted"], s["recipients"]["accepted"]),
                                 summary)
                self.assertEqual(summary.deferred + summary.rejected + summary.disconnected, 0)
                self.assertIsNone(summary.tls_failures)  # no TLS: not in the line

    def test_counts_match_with_reconnects(self):
        sink = self.sink(shards=2)
        rc, s, err = blast(sink.port, "--messages", "1000", "--connections", "8", "--shards",
                           "2", "--per-connection", "7", "--pipelining")
        self.assert_clean(rc, s, err)
        self.assertEqual(s["connections"]["attempts"], s["connections"]["established"])
        self.assertGreaterEqual(s["connections"]["attempts"], math.ceil(1000 / 7))
        summary = sink.stop()
        self.assertEqual((summary.received, summary.recipients), (1000, 1000), summary)

    # -- --dump ----------------------------------------------------------------------------

    def test_dump_is_byte_exact(self):
        work = harness.temp_dir("ringmail-blast-sink-")
        dump = os.path.join(work, "dump")
        os.mkdir(dump)
        long_line = b"L" * 980
        content = (b"From: blast <b@x.test>\r\nSubject: dots and bytes\r\n\r\n"
                   b".leading dot\r\n..two dots\r\n.\r\n...\r\nend .\r\n"
                   b"\xe9t\xe9 \xff\x80 8-bit\r\n" + long_line + b"\r\n"
                   b"\r\nlast line\r\n")
        path = os.path.join(work, "m.eml")
        with open(path, "wb") as f:
            f.write(content)
        sink = self.sink("--dump", dump, shards=2)
        n = 40
        rc, s, err = blast(sink.port, "--messages", str(n), "--connections", "4", "--shards",
                           "2", "--recipients", "2", "--from", "s{n}@x.test",
                           "--to", "r{n}@y.test", "--message-file", path, "--pipelining")
        self.assert_clean(rc, s, err)
        # What blast sent is the stuffed form; the sink's .eml is the content un-stuffed.
        self.assertEqual(s["message_size"], len(harness.stuff(content)))
        summary = sink.stop()
        self.assertEqual(summary.received, n)
        names = sorted(os.listdir(dump))
        emls = [x for x in names if x.endswith(".eml")]
        self.assertEqual(len(emls), n)
        self.assertEqual(sorted(x[:-4] + ".env" for x in emls),
                         sorted(x for x in names if x.endswith(".env")))
        senders = []
        for name in emls:
            with open(os.path.join(dump, name), "rb") as f:
                got = f.read()
            self.assertEqual(got, harness.unstuff(harness.stuff(content)), name)
            self.assertEqual(got, content, name)
            with open(os.path.join(dump, name[:-4] + ".env"), encoding="utf-8") as f:
                env = f.read().splitlines()
            sender = env[0].split("<", 1)[1].split(">", 1)[0]
            i = int(sender[1:].split("@")[0])
            senders.append(i)
            # Message i goes to r{2i}, r{2i+1} (recipient number i * R + j).
            self.assertEqual(env[1:3], [f"RCPT TO:<r{2 * i}@y.test>",
                                        f"RCPT TO:<r{2 * i + 1}@y.test>"])
            self.assertIn("HELO ringmail-blast.test", env)
            self.assertIn("CLIENT 127.0.0.1", env)
            self.assertEqual(env[-1], "RESULT 250 2.0.0")
        self.assertEqual(sorted(senders), list(range(n)))

    # -- injected failures ---------------------------------------------------------------

    @staticmethod
    def within(count: int, n: int, percent: float) -> bool:
        # 6 standard deviations of a binomial count: a false alarm is out of the question,
        # a broken injector (or counting) is not.
        p = percent / 100
        return abs(count - n * p) <= 6 * math.sqrt(n * p * (1 - p))

    def test_defer_and_reject_rates(self):
        n = 2000
        sink = self.sink("--defer-percent", "20", "--reject-percent", "10", shards=2)
        rc, s, err = blast(sink.port, "--messages", str(n), "--connections", "10", "--shards",
                           "2", "--pipelining")
        self.assertEqual(rc, 1, err)
        m = s["messages"]
        self.assertEqual(m["sent"], n)
        self.assertEqual(m["accepted"] + m["temp_failed"] + m["perm_failed"], n)
        self.assertEqual((m["cut"], m["not_sent"], s["connections"]["errors"]), (0, 0, 0))
        self.assertTrue(s["errors"])
        # The same run again with --allow-errors: exit 0, counts still reported.
        rc2, s2, err2 = blast(sink.port, "--messages", str(n), "--connections", "10",
                              "--shards", "2", "--allow-errors")
        self.assertEqual(rc2, 0, err2)
        self.assertTrue(s2["errors"])
        m2 = s2["messages"]
        summary = sink.stop()
        self.assertEqual(summary.received, m["accepted"] + m2["accepted"], summary)
        self.assertEqual(summary.deferred, m["temp_failed"] + m2["temp_failed"], summary)
        self.assertEqual(summary.rejected, m["perm_failed"] + m2["perm_failed"], summary)
        self.assertEqual(summary.disconnected, 0)
        for run in (m, m2):
            self.assertTrue(self.within(run["temp_failed"], n, 20), run)
            self.assertTrue(self.within(run["perm_failed"], n, 10), run)

    def test_disconnects_are_connection_errors(self):
        n = 1000
        sink = self.sink("--disconnect-percent", "5", shards=2)
        rc, s, err = blast(sink.port, "--messages", str(n), "--connections", "6", "--shards",
                           "2", "--pipelining", "--timeout", "10")
        self.assertEqual(rc, 1, err)
        m = s["messages"]
        c = s["connections"]
        summary = sink.stop()
        self.assertEqual(m["sent"], n)
        self.assertEqual(m["accepted"], summary.received, (s, summary))
        # Each injected disconnect cuts one message and is one "closed" connection error.
        self.assertEqual(m["cut"], summary.disconnected, (s, summary))
        self.assertEqual(c["error_kinds"]["closed"], summary.disconnected)
        self.assertEqual(c["errors"], summary.disconnected)
        self.assertEqual(m["accepted"] + m["cut"], n)
        self.assertTrue(self.within(summary.disconnected, n, 5), summary)
        # blast reconnected after each of them, except where a connection had no message
        # left to send (at most once per connection, at the very end).
        self.assertEqual(c["attempts"], c["established"])
        self.assertLessEqual(c["attempts"], 6 + summary.disconnected)
        self.assertGreaterEqual(c["attempts"], summary.disconnected)

    # -- STARTTLS --------------------------------------------------------------------------

    def test_starttls(self):
        cert, key = make_certificate(harness.temp_dir("ringmail-blast-sink-tls-"))
        sink = self.sink("--tls-cert", cert, "--tls-key", key, shards=2)
        total = 0
        for mode in (["--pipelining"], []):
            with self.subTest(pipelining=bool(mode)):
                rc, s, err = blast(sink.port, "--messages", "600", "--connections", "6",
                                   "--shards", "2", "--recipients", "2", "--per-connection",
                                   "50", "--starttls", *mode)
                self.assert_clean(rc, s, err)
                self.assertTrue(s["starttls"])
                self.assertEqual(s["messages"]["accepted"], 600)
                self.assertEqual(s["recipients"]["accepted"], 1200)
                c = s["connections"]
                self.assertEqual(c["attempts"], c["established"])
                self.assertEqual(c["tls_established"], c["established"])
                self.assertGreaterEqual(c["tls_established"], 12)  # 600 / 50
                h = s["tls_handshake_us"]
                self.assertEqual(h["count"], c["tls_established"])
                self.assertGreater(h["p50"], 0)
                self.assertLessEqual(h["p50"], h["p99"])
                self.assertLessEqual(h["p99"], h["max"])
                self.assertEqual(c["pipelining"], c["established"] if mode else 0)
                total += 600
        summary = sink.stop()
        self.assertEqual((summary.received, summary.recipients), (total, 2 * total), summary)
        self.assertEqual(summary.tls_failures, 0)

    def test_starttls_text_summary_shows_handshake_times(self):
        cert, key = make_certificate(harness.temp_dir("ringmail-blast-sink-tls-"))
        sink = self.sink("--tls-cert", cert, "--tls-key", key, shards=2)
        p = subprocess.run([BLAST,
                            "--target", f"{harness.LOOPBACK}:{sink.port}", "--messages", "20",
                            "--connections", "2", "--starttls"],
                           capture_output=True, timeout=harness.scaled(60))
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.decode()
        self.assertIn("sent 20  accepted 20", out)
        tls_lines = [x for x in out.splitlines() if x.startswith("tls ")]
        self.assertEqual(len(tls_lines), 1, out)
        self.assertIn("p50 ", tls_lines[0])
        self.assertIn("(2 samples)", tls_lines[0])
        self.assertIn("2 established", tls_lines[0])
        summary = sink.stop()
        self.assertEqual(summary.received, 20)


if __name__ == "__main__":
    unittest.main(verbosity=2)
