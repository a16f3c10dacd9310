"""Self-test of the harness: the Python sink against smtplib and smtp-source, and the
smtp-sink wrapper against smtp-source. Needs no ringmaild, so it runs in every tree."""

import smtplib
import socket
import unittest

import harness


class SinkTest(unittest.TestCase):
    def setUp(self):
        self.sink = harness.SmtpSink()
        self.addCleanup(self.sink.close)

    def smtp(self):
        s = smtplib.SMTP(harness.LOOPBACK, self.sink.port, timeout=10)
        self.addCleanup(s.close)
        return s

    def test_dot_stuffing_round_trip(self):
        body = (b"Subject: dots\r\n\r\n.foo\r\n..bar\r\na . inside\r\n.\r\n"
                b"...\r\nlast line\r\n")
        with self.smtp() as s:
            s.sendmail("a@x.test", ["b@y.test"], body)
        [t] = self.sink.transactions()
        self.assertEqual(t.content, body)
        self.assertEqual(t.raw, harness.stuff(body))
        self.assertIn(b"\r\n..foo\r\n...bar\r\n", t.raw)
        self.assertIn(b"\r\n..\r\n....\r\n", t.raw)
        self.assertEqual(t.mail_from, "a@x.test")
        self.assertEqual(t.rcpts, ["b@y.test"])

    def test_utf8_envelope_and_8bit_body(self):
        body = "Subject: ü\r\n\r\nGrüße, 世界\r\n".encode()
        with self.smtp() as s:
            s.ehlo()
            s.sendmail("ünïcødé@例え.test", ["δοκιμή@παράδειγμα.test"], body,
                       mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        [t] = self.sink.transactions()
        self.assertEqual(t.mail_from, "ünïcødé@例え.test")
        self.assertEqual(t.rcpts, ["δοκιμή@παράδειγμα.test"])
        self.assertIn("SMTPUTF8", t.mail_params)
        self.assertEqual(t.content, body)

    def test_many_recipients_and_rejects(self):
        self.sink.reject_rcpts = {"no@y.test": "550 5.1.1 no such user"}
        rcpts = [f"r{i}@y.test" for i in range(100)]
        with self.smtp() as s:
            refused = s.sendmail("a@x.test", rcpts + ["no@y.test"], b"x\r\n")
        self.assertEqual(list(refused), ["no@y.test"])
        [t] = self.sink.transactions()
        self.assertEqual(t.rcpts, rcpts)

    def test_tempfail_first_and_size(self):
        self.sink.tempfail_first = 2
        self.sink.size_limit = 1000
        for expect in (451, 451, 250):
            with self.smtp() as s:
                s.ehlo()
                s.mail("a@x.test")
                s.rcpt("b@y.test")
                code, _ = s.data(b"hello\r\n")
                self.assertEqual(code, expect)
        self.assertEqual(self.sink.count(), 1)
        self.assertEqual(len(self.sink.all_attempts()), 3)
        with self.smtp() as s:
            s.ehlo()
            code, _ = s.mail("a@x.test", ["SIZE=5000"])
            self.assertEqual(code, 552)

    def test_empty_message_and_pipelined_raw(self):
        with harness.RawSmtp(harness.LOOPBACK, self.sink.port) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO me")[0], 250)
            c.send(b"MAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
            self.assertEqual([c.read_reply()[0] for _ in range(3)], [250, 250, 354])
            c.send(b".\r\nQUIT\r\n")
            self.assertEqual(c.read_reply()[0], 250)
            self.assertEqual(c.read_reply()[0], 221)
        [t] = self.sink.transactions()
        self.assertEqual((t.mail_from, t.raw, t.content), ("", b"", b""))

    def test_smtp_source_load(self):
        p = harness.smtp_source(self.sink.port, 500, sessions=10, length=512, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(self.sink.wait_for(500, 10))
        self.assertEqual(self.sink.count(), 500)
        self.assertEqual(self.sink.errors(), [])


class PostfixSinkTest(unittest.TestCase):
    def test_counts_every_message(self):
        with harness.PostfixSink() as sink:
            p = harness.smtp_source(sink.port, 1000, sessions=20, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertTrue(sink.wait_for(1000, 10), sink.count())
            self.assertEqual(sink.count(), 1000)
            self.assertEqual(len(set(sink.message_ids())), 1000)


class HarnessPiecesTest(unittest.TestCase):
    def test_toml(self):
        cfg = harness.make_config("/tmp/s\"p", 2525, "127.0.0.1:25")
        text = harness.to_toml(cfg)
        import tomllib

        self.assertEqual(tomllib.loads(text), cfg)

    def test_free_port_is_bindable(self):
        port = harness.free_port()
        with socket.create_server((harness.LOOPBACK, port)):
            pass


if __name__ == "__main__":
    unittest.main()
