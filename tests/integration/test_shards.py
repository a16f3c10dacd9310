"""A change of shard count between runs: mail spooled by a run with more shards sits in
spool_dir/shard-<N> directories the new run has no shard for. Each is adopted by shard
N % shards and drained, so nothing acknowledged is stranded."""

import os
import smtplib
import unittest

import harness

DELIVERY_TIMEOUT = harness.scaled(30)
MESSAGES = 24


class ShardCountChangeTest(unittest.TestCase):
    def test_fewer_shards_after_restart_deliver_everything(self):
        dead = f"{harness.LOOPBACK}:{harness.free_port()}"  # nothing listens: mail stays queued
        first = harness.Ringmaild(smarthost=dead, shards=2)
        sink = harness.SmtpSink()
        second = None
        try:
            first.start()
            for i in range(MESSAGES):  # a connection each, so SO_REUSEPORT spreads them
                with smtplib.SMTP(harness.LOOPBACK, first.port, timeout=30) as s:
                    s.sendmail("a@x.test", ["b@y.test"],
                               f"Subject: shard {i}\r\nMessage-ID: <sh{i}@x.test>\r\n\r\nbody {i}\r\n")
            log = first.log_text()
            first.stop()
            self.assertIn("shard=0 info:", log)
            self.assertRegex(log, r"shard=1 info: \w+: from=<a@x\.test>", "shard 1 spooled nothing")
            self.assertTrue(os.path.isdir(os.path.join(first.spool_dir, "shard-1")))

            second = harness.Ringmaild(smarthost=sink.smarthost, shards=1, workdir=first.workdir)
            second.start()
            ok = sink.wait_until(lambda ts: len(ts) >= MESSAGES, DELIVERY_TIMEOUT)
            self.assertTrue(ok, f"{sink.count()} of {MESSAGES} delivered:\n{second.log_text()}")
            harness.wait_until(lambda: False, 1.0)  # room for duplicates to show up
            ids = sorted(t.content.split(b"Message-ID: <")[1].split(b">")[0]
                         for t in sink.transactions())
            self.assertEqual(ids, sorted(f"sh{i}@x.test".encode() for i in range(MESSAGES)))
            self.assertIn("shard-1: ", second.log_text())  # the adopted directory was recovered
            second.stop()
        finally:
            first.kill()
            if second is not None:
                second.kill()
            sink.close()


if __name__ == "__main__":
    unittest.main()
