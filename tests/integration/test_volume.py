"""10,000 messages from Postfix's smtp-source (20 sessions) through ringmaild to a sink:
every one is accepted and exactly 10,000 arrive, each once."""

import collections
import re
import time
import unittest

import harness

MESSAGES = 10_000


class VolumeTest(unittest.TestCase):
    def test_10000_messages_arrive_exactly_once(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        daemon = harness.Ringmaild(smarthost=sink.smarthost)
        self.addCleanup(daemon.kill)
        daemon.start()

        started = time.monotonic()
        p = harness.smtp_source(daemon.port, MESSAGES, sessions=20, length=1024,
                                timeout=harness.scaled(120))
        accepted_after = time.monotonic() - started
        self.assertEqual(p.returncode, 0,
                         f"smtp-source failed: {p.stderr!r}\n{daemon.log_text()}")

        arrived = sink.wait_for(MESSAGES, harness.scaled(180))
        delivered_after = time.monotonic() - started
        # Anything extra (a duplicate) would come soon after the last one.
        time.sleep(2)
        transactions = sink.transactions()
        harness.log(f"volume: {len(transactions)} delivered; accepted in {accepted_after:.1f}s, "
                    f"delivered in {delivered_after:.1f}s")
        self.assertTrue(arrived, f"only {len(transactions)} of {MESSAGES} arrived\n"
                                 f"{daemon.log_text()}")
        self.assertEqual(sink.errors(), [])

        ids = collections.Counter()
        for t in transactions:
            m = re.search(rb"^Message-Id:\s*(\S+)", t.content, re.IGNORECASE | re.MULTILINE)
            self.assertIsNotNone(m, t.content[:500])
            ids[m.group(1)] += 1
            self.assertEqual(t.rcpts, ["to@y.test"])
            self.assertEqual(t.mail_from, "from@x.test")
        duplicates = {k: v for k, v in ids.items() if v > 1}
        self.assertEqual(duplicates, {}, f"{len(duplicates)} messages delivered more than once")
        self.assertEqual(len(transactions), MESSAGES)
        self.assertEqual(len(ids), MESSAGES)

        daemon.stop()


if __name__ == "__main__":
    unittest.main()
