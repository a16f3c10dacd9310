"""smtplib -> ringmaild -> Python sink (smarthost): byte-exact relaying, envelopes, trace
header, and the protocol errors an independent client sees."""

import smtplib
import unittest

import harness

DELIVERY_TIMEOUT = harness.scaled(30)


def split_added_headers(test: unittest.TestCase, content: bytes, original: bytes) -> bytes:
    """Assert content == <headers ringmail added> + original; return the added part."""
    test.assertTrue(
        content.endswith(original),
        f"relayed content does not end with the submitted message:\n{content[:2000]!r}",
    )
    added = content[: len(content) - len(original)]
    test.assertTrue(added.startswith(b"Received:"), f"no Received header on top: {added!r}")
    test.assertTrue(added.endswith(b"\r\n"), added)
    test.assertNotIn(b"\r\n\r\n", added)
    return added


class RelayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = harness.SmtpSink()
        cls.daemon = harness.Ringmaild(smarthost=cls.sink.smarthost).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
        finally:
            cls.daemon.kill()
            cls.sink.close()

    def send(self, sender, rcpts, message: bytes, **kw):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            refused = s.sendmail(sender, rcpts, message, **kw)
        self.assertEqual(refused, {})

    def delivered(self, marker: bytes) -> harness.Transaction:
        ok = self.sink.wait_until(lambda ts: any(marker in t.content for t in ts), DELIVERY_TIMEOUT)
        self.assertTrue(ok, f"message {marker!r} not delivered; daemon log:\n{self.daemon.log_text()}")
        found = [t for t in self.sink.transactions() if marker in t.content]
        self.assertEqual(len(found), 1, f"{marker!r} delivered {len(found)} times")
        return found[0]

    def test_dot_leading_lines_byte_exact(self):
        message = (
            b"From: a@x.test\r\nTo: b@y.test\r\nSubject: dots\r\nMessage-ID: <dots@x.test>\r\n\r\n"
            b".foo\r\n..bar\r\nsome . inside text\r\n.\r\n...\r\n. \r\n.x.\r\nend\r\n"
        )
        self.send("a@x.test", ["b@y.test"], message)
        t = self.delivered(b"<dots@x.test>")
        split_added_headers(self, t.content, message)
        # On the wire, every line starting with "." carries one more ".".
        self.assertEqual(t.raw, harness.stuff(t.content))
        self.assertIn(b"\r\n..foo\r\n...bar\r\n", t.raw)
        self.assertIn(b"\r\n..\r\n....\r\n.. \r\n..x.\r\nend\r\n", t.raw)
        self.assertEqual(t.mail_from, "a@x.test")
        self.assertEqual(t.rcpts, ["b@y.test"])

    def test_8bitmime_body_byte_exact(self):
        body = "Grüße aus Köln — 東京 — ∑ ≠ ∞\r\n".encode() + bytes(range(0x80, 0x100)) + b"\r\n"
        message = (
            b"From: a@x.test\r\nTo: b@y.test\r\nSubject: 8bit\r\nMessage-ID: <8bit@x.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body
        )
        self.send("a@x.test", ["b@y.test"], message, mail_options=["BODY=8BITMIME"])
        t = self.delivered(b"<8bit@x.test>")
        split_added_headers(self, t.content, message)

    def test_smtputf8_addresses_exact(self):
        sender = "ünïcødé@例え.test"
        rcpts = ["δοκιμή@παράδειγμα.test", "получатель@пример.test"]
        message = "From: ünïcødé@例え.test\r\nSubject: ✓\r\nMessage-ID: <utf8@x.test>\r\n\r\nhi ✓\r\n"
        message = message.encode()
        self.send(sender, rcpts, message, mail_options=["SMTPUTF8"])
        t = self.delivered(b"<utf8@x.test>")
        self.assertEqual(t.mail_from, sender)
        self.assertEqual(sorted(t.rcpts), sorted(rcpts))
        self.assertIn("SMTPUTF8", [p.upper() for p in t.mail_params])
        split_added_headers(self, t.content, message)

    def test_100_recipients_one_transaction(self):
        rcpts = [f"rcpt{i:03d}@many.test" for i in range(100)]
        message = b"From: a@x.test\r\nSubject: many\r\nMessage-ID: <many@x.test>\r\n\r\nhello\r\n"
        self.send("a@x.test", rcpts, message)
        t = self.delivered(b"<many@x.test>")
        self.assertEqual(sorted(t.rcpts), rcpts)
        self.assertEqual(len(t.rcpts), 100)
        split_added_headers(self, t.content, message)

    def test_received_header_names_ringmail(self):
        message = b"Subject: trace\r\nMessage-ID: <trace@x.test>\r\n\r\nbody\r\n"
        self.send("a@x.test", ["b@y.test"], message)
        t = self.delivered(b"<trace@x.test>")
        added = split_added_headers(self, t.content, message)
        first = added.split(b"\r\n")[0]
        self.assertTrue(first.startswith(b"Received:"), first)
        self.assertIn(b"ringmail.test", added)  # our [server] hostname ("by ...")

    def test_rcpt_before_mail_is_503(self):
        with harness.RawSmtp(*self.daemon.address) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<b@y.test>")[0], 503)
            self.assertEqual(c.cmd("DATA")[0], 503)
            self.assertEqual(c.cmd("QUIT")[0], 221)

    def test_quit_is_221(self):
        with harness.RawSmtp(*self.daemon.address) as c:
            code, greeting = c.read_reply()
            self.assertEqual(code, 220)
            self.assertIn("ringmail.test", greeting)
            self.assertEqual(c.cmd("QUIT")[0], 221)
            self.assertEqual(c.sock.recv(16), b"")  # and the server closes


class PolicyTest(unittest.TestCase):
    """Clients outside allow_networks may only send to [relay] domains."""

    @classmethod
    def setUpClass(cls):
        cls.sink = harness.SmtpSink()
        cls.daemon = harness.Ringmaild(
            smarthost=cls.sink.smarthost,
            allow_networks=["10.0.0.0/8"],
            domains=["allowed.test"],
            max_message_size=10000,
        ).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
        finally:
            cls.daemon.kill()
            cls.sink.close()

    def test_relay_denied_except_for_domains(self):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail("a@x.test")[0], 250)
            self.assertEqual(s.rcpt("someone@allowed.test")[0], 250)
            code, text = s.rcpt("victim@elsewhere.test")
            self.assertEqual(code, 554, text)
            code, _ = s.data(b"Subject: policy\r\nMessage-ID: <policy@x.test>\r\n\r\nok\r\n")
            self.assertEqual(code, 250)
        ok = self.sink.wait_until(
            lambda ts: any(b"<policy@x.test>" in t.content for t in ts), DELIVERY_TIMEOUT)
        self.assertTrue(ok, self.daemon.log_text())
        [t] = [t for t in self.sink.transactions() if b"<policy@x.test>" in t.content]
        self.assertEqual(t.rcpts, ["someone@allowed.test"])

    def test_declared_size_too_large_is_552(self):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            self.assertTrue(s.has_extn("size"))
            code, text = s.mail("a@x.test", ["SIZE=20000"])
            self.assertEqual(code, 552, text)
            self.assertEqual(s.mail("a@x.test", ["SIZE=5000"])[0], 250)

    def test_actual_size_too_large_is_552(self):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail("a@x.test")[0], 250)
            self.assertEqual(s.rcpt("someone@allowed.test")[0], 250)
            big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 300  # ~21 kB
            code, text = s.data(big)
            self.assertEqual(code, 552, text)
            # The session goes on.
            self.assertEqual(s.rset()[0], 250)
            self.assertEqual(s.noop()[0], 250)



class FeatureSwitchTest(unittest.TestCase):
    """The io_uring switches for kernels with known bugs: with DEFER_TASKRUN and multishot
    accept both off, every connection is still accepted and every message relayed."""

    def test_single_shot_accept_without_defer_taskrun(self):
        sink = harness.SmtpSink()
        daemon = harness.Ringmaild(
            smarthost=sink.smarthost,
            server_options={"io_uring_defer_taskrun": False, "multishot_accept": False},
        )
        try:
            daemon.start()
            for i in range(20):  # a connection each: the accept is re-armed every time
                with smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30) as s:
                    s.sendmail("a@x.test", ["b@y.test"],
                               f"Subject: switch {i}\r\nMessage-ID: <sw{i}@x.test>\r\n\r\nbody\r\n")
            ok = sink.wait_until(lambda ts: len(ts) >= 20, DELIVERY_TIMEOUT)
            self.assertTrue(ok, daemon.log_text())
            ids = sorted(t.content.split(b"Message-ID: <")[1].split(b">")[0] for t in sink.transactions())
            self.assertEqual(ids, sorted(f"sw{i}@x.test".encode() for i in range(20)))
            daemon.stop()
        finally:
            daemon.kill()
            sink.close()


class ConnectionLimitTest(unittest.TestCase):
    """server.max_connections: the connection past the limit gets 421 4.7.0 and is closed;
    once a slot frees, new clients are served again."""

    def test_connection_past_the_limit_gets_421(self):
        daemon = harness.Ringmaild(shards=1, server_options={"max_connections": 2})
        held = []
        try:
            daemon.start()
            for _ in range(2):
                c = smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30)
                self.assertEqual(c.noop()[0], 250)
                held.append(c)
            with self.assertRaises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30)
            self.assertEqual(refused.exception.smtp_code, 421)
            self.assertIn(b"4.7.0", refused.exception.smtp_error)
            held.pop().quit()

            def served() -> bool:  # the slot frees once the server has closed its side
                try:
                    with smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30) as c:
                        return c.noop()[0] == 250
                except smtplib.SMTPConnectError:
                    return False

            self.assertTrue(harness.wait_until(served, harness.scaled(10), 0.1), daemon.log_text())
            self.assertIn("server.max_connections", daemon.log_text())
            daemon.stop()
        finally:
            for c in held:
                c.close()
            daemon.kill()

if __name__ == "__main__":
    unittest.main()


class LocalhostSmarthostTest(unittest.TestCase):
    """A smarthost named "localhost" (a local content filter, say) is the loopback, with no
    DNS query (RFC 6761)."""

    def test_delivers_through_localhost_by_name(self):
        sink = harness.SmtpSink()
        port = sink.smarthost.rsplit(":", 1)[1]
        daemon = harness.Ringmaild(smarthost=f"localhost:{port}").start()
        try:
            with smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30) as s:
                s.ehlo("client.test")
                self.assertEqual(
                    s.sendmail("a@x.test", ["b@y.test"],
                               b"Subject: lh\r\nMessage-ID: <localhost@x.test>\r\n\r\nok\r\n"), {})
            ok = sink.wait_until(
                lambda ts: any(b"<localhost@x.test>" in t.content for t in ts), DELIVERY_TIMEOUT)
            self.assertTrue(ok, daemon.log_text())
        finally:
            try:
                daemon.stop()
            finally:
                daemon.kill()
                sink.close()
