"""Delivery by MX routing: dnsmasq on loopback answers for the zone "test", the Python sinks
listen on 127.0.0.2 (and 127.0.0.4 with STARTTLS) on the port set as delivery.mx_port.

DNS data (one dnsmasq per test class):
  live.test      MX 10 mx-dead.test (127.0.0.3, nothing listens), MX 20 mx-live.test (127.0.0.2)
  implicit.test  no MX, A 127.0.0.2 (implicit MX)
  nullmx.test    MX 0 "." (RFC 7505)
  nx.test        does not exist (NXDOMAIN)
  origin.test    MX mx-live.test: where the DSNs go
  d0..d49.test   MX mx-live.test
  tls.test       MX mx-tls.test (127.0.0.4, STARTTLS offered)
  notls.test     MX mx-live.test, and [[domain]] tls = "required": no STARTTLS there -> deferred
"""

import email
import email.parser
import json
import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
import unittest

import harness

DELIVERY_TIMEOUT = harness.scaled(30)
QUIET_PERIOD = harness.scaled(3)
SENDER = "sender@origin.test"
LIVE = "127.0.0.2"
DEAD = "127.0.0.3"
TLS_HOST = "127.0.0.4"
DOMAINS = [f"d{i}.test" for i in range(50)]


def message(mid: str, subject: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: someone@dest.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nbody of {mid}\r\n").encode()


class MxTestCase(unittest.TestCase):
    dns: harness.Dnsmasq

    @classmethod
    def setUpClass(cls):
        mx = [("live.test", "mx-dead.test", 10), ("live.test", "mx-live.test", 20),
              ("origin.test", "mx-live.test", 10), ("tls.test", "mx-tls.test", 10),
              ("notls.test", "mx-live.test", 10)]
        mx += [(d, "mx-live.test", 10) for d in DOMAINS]
        hosts = [("mx-live.test", LIVE), ("mx-dead.test", DEAD), ("mx-tls.test", TLS_HOST),
                 ("implicit.test", LIVE)]
        cls.dns = harness.Dnsmasq(mx=mx, hosts=hosts, null_mx=["nullmx.test"])
        cls.certdir = harness.temp_dir("ringmail-mx-cert-")
        cls.cert = os.path.join(cls.certdir, "cert.pem")
        cls.key = os.path.join(cls.certdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", cls.key, "-out",
                        cls.cert, "-days", "2", "-subj", "/CN=mx-tls.test"],
                       check=True, capture_output=True)

    @classmethod
    def tearDownClass(cls):
        cls.dns.close()
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def start(self, *, sink_kwargs=None, shards=2, domains=None, tls_sink=False,
              delivery_options=None, workdir=None):
        self.sink = harness.SmtpSink(LIVE, harness.free_port(LIVE), **(sink_kwargs or {}))
        self.addCleanup(self.sink.close)
        self.tls_sink = None
        if tls_sink:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cert, self.key)
            self.tls_sink = harness.SmtpSink(TLS_HOST, self.sink.port, tls_context=ctx)
            self.addCleanup(self.tls_sink.close)
        self.log_path = os.path.join(harness.temp_dir(), "delivery.jsonl")
        opts = {"mx_port": self.sink.port, "log_file": self.log_path, "connect_timeout": "5s"}
        opts.update(delivery_options or {})
        self.workdir = workdir or harness.temp_dir()
        cfg = harness.make_config(os.path.join(self.workdir, "spool"), harness.free_port(),
                                  shards=shards, retry_schedule=["1s"], delivery_options=opts)
        cfg["dns"] = {"servers": [self.dns.server]}
        if domains:
            cfg["domain"] = domains
        self.daemon = harness.Ringmaild(cfg, workdir=self.workdir)
        self.addCleanup(self.daemon.kill)
        self.daemon.start()
        return self.daemon

    def send(self, sender, rcpts, msg: bytes):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            refused = s.sendmail(sender, rcpts, msg)
        self.assertEqual(refused, {})

    def with_marker(self, marker: bytes, sink=None) -> list[harness.Transaction]:
        sink = sink or self.sink
        return [t for t in sink.transactions() if marker in t.content and t.mail_from != ""]

    def dsns(self) -> list[harness.Transaction]:
        return [t for t in self.sink.transactions() if t.mail_from == "" and SENDER in t.rcpts]

    def wait(self, what: str, predicate, timeout: float = DELIVERY_TIMEOUT, sink=None) -> None:
        ok = (sink or self.sink).wait_until(lambda ts: predicate(), timeout)
        self.assertTrue(ok, f"{what} within {timeout:.0f}s; daemon log:\n" + self.daemon.log_text())

    def events(self) -> list[dict]:
        try:
            with open(self.log_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []

    def parse_dsn(self, t: harness.Transaction) -> dict:
        msg = email.message_from_bytes(t.content)
        self.assertEqual(msg.get_content_type(), "multipart/report", t.content[:3000])
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = msg.get_payload()
        types = [p.get_content_type() for p in parts]
        self.assertEqual(types, ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        blocks = parts[1].get_payload()
        returned = email.parser.HeaderParser().parsestr(parts[2].get_payload())
        return {"recipients": blocks[1:], "headers": returned, "text": parts[0].get_payload()}


class RoutingTest(MxTestCase):
    def test_fallback_from_dead_mx(self):
        self.start()
        self.send(SENDER, ["user@live.test"], message("fb@origin.test", "fallback"))
        self.wait("nothing arrived through the second MX",
                  lambda: self.with_marker(b"<fb@origin.test>"))
        [t] = self.with_marker(b"<fb@origin.test>")
        self.assertEqual(t.rcpts, ["user@live.test"])
        self.assertEqual(t.mail_from, SENDER)
        self.assertIn("mx-dead.test", self.daemon.log_text())
        self.daemon.stop()

    def test_implicit_mx(self):
        self.start()
        self.send(SENDER, ["user@implicit.test"], message("imp@origin.test", "implicit"))
        self.wait("implicit MX not used", lambda: self.with_marker(b"<imp@origin.test>"))
        self.daemon.stop()

    def test_address_literal(self):
        # RFC 5321 4.1.3: user@[ip] goes to that address, with no DNS lookup.
        self.start()
        self.send(SENDER, ["lit@[127.0.0.2]"], message("lit@origin.test", "literal"))
        self.wait("address literal not delivered", lambda: self.with_marker(b"<lit@origin.test>"))
        [t] = self.with_marker(b"<lit@origin.test>")
        self.assertEqual(t.rcpts, ["lit@[127.0.0.2]"])
        self.daemon.stop()

    def test_null_mx_and_nxdomain_bounce(self):
        self.start()
        self.send(SENDER, ["a@nullmx.test"], message("null@origin.test", "null mx"))
        self.send(SENDER, ["b@nx.test"], message("nx@origin.test", "nxdomain"))
        self.wait("two DSNs", lambda: len(self.dsns()) >= 2)
        statuses = {}
        for t in self.dsns():
            d = self.parse_dsn(t)
            for r in d["recipients"]:
                statuses[r["Final-Recipient"]] = r["Status"]
                self.assertEqual(r["Action"], "failed")
        self.assertEqual(statuses, {"rfc822; a@nullmx.test": "5.1.10",
                                    "rfc822; b@nx.test": "5.1.2"})
        self.daemon.stop()

    def test_three_recipients_one_transaction(self):
        self.start()
        rcpts = ["a@d1.test", "b@d1.test", "c@d1.test"]
        self.send(SENDER, rcpts, message("three@origin.test", "three"))
        self.wait("not delivered", lambda: self.with_marker(b"<three@origin.test>"))
        time.sleep(QUIET_PERIOD)
        [t] = self.with_marker(b"<three@origin.test>")
        self.assertEqual(sorted(t.rcpts), rcpts)
        self.daemon.stop()

    def test_two_domains_two_transactions_one_dsn(self):
        self.start(sink_kwargs={"reject_rcpts": {"x@d2.test": "550 5.1.1 no such user x",
                                                 "y@d3.test": "550 5.1.1 no such user y"}})
        self.send(SENDER, ["ok2@d2.test", "ok3@d3.test"], message("two@origin.test", "two"))
        self.wait("not delivered", lambda: len(self.with_marker(b"<two@origin.test>")) >= 2)
        self.assertEqual(sorted(t.rcpts[0] for t in self.with_marker(b"<two@origin.test>")),
                         ["ok2@d2.test", "ok3@d3.test"])
        self.send(SENDER, ["x@d2.test", "y@d3.test"], message("twofail@origin.test", "fails"))
        self.wait("no DSN", lambda: self.dsns())
        time.sleep(QUIET_PERIOD)
        [dsn] = self.dsns()
        d = self.parse_dsn(dsn)
        self.assertEqual(sorted(r["Final-Recipient"] for r in d["recipients"]),
                         ["rfc822; x@d2.test", "rfc822; y@d3.test"])
        self.assertEqual(d["headers"]["Subject"], "fails")
        self.daemon.stop()


class OutcomeTest(MxTestCase):
    def test_deferred_once_then_delivered(self):
        self.start(sink_kwargs={"tempfail_rcpts": {"later@d4.test": 1}})
        self.send(SENDER, ["later@d4.test"], message("later@origin.test", "later"))
        self.wait("not delivered after the retry", lambda: self.with_marker(b"<later@origin.test>"))
        time.sleep(QUIET_PERIOD)
        self.assertEqual(self.sink.rcpt_attempts("later@d4.test"), 2)
        self.assertEqual(len(self.with_marker(b"<later@origin.test>")), 1)
        types = [e["type"] for e in self.events() if e.get("recipient") == "later@d4.test"]
        self.assertEqual(types, ["TransientFailure", "Delivery"])
        self.daemon.stop()

    def test_5xx_bounces_and_null_sender_gets_none(self):
        bad = "bad@d5.test"
        self.start(sink_kwargs={"reject_rcpts": {bad: "550 5.1.1 mailbox unknown"}})
        self.send(SENDER, [bad], message("bad@origin.test", "bad one"))
        self.wait("no DSN", lambda: self.dsns())
        d = self.parse_dsn(self.dsns()[0])
        [r] = d["recipients"]
        self.assertEqual(r["Status"], "5.1.1")
        self.assertIn("mailbox unknown", r["Diagnostic-Code"])
        self.send("", [bad], message("nullbad@origin.test", "from null"))
        ok = harness.wait_until(
            lambda: "null sender: no notification sent" in self.daemon.log_text(), DELIVERY_TIMEOUT)
        self.assertTrue(ok, self.daemon.log_text())
        time.sleep(QUIET_PERIOD)
        self.assertEqual(len(self.dsns()), 1)
        self.assertEqual(self.sink.rcpt_attempts(bad), 2)
        self.daemon.stop()

    def test_restart_delivers_only_the_rest(self):
        later = "later@d7.test"
        self.start(sink_kwargs={"reject_rcpts": {later: "451 4.3.0 not now"}})
        self.send(SENDER, ["first@d6.test", later], message("part@origin.test", "partial"))
        self.wait("first recipient not delivered",
                  lambda: self.with_marker(b"<part@origin.test>"))
        ok = harness.wait_until(lambda: self.sink.rcpt_attempts(later) >= 1, DELIVERY_TIMEOUT)
        self.assertTrue(ok)
        self.daemon.stop()
        self.sink.set_rcpt_reply(later, None)
        self.daemon.start()
        self.wait("the rest not delivered after restart",
                  lambda: any(later in t.rcpts for t in self.with_marker(b"<part@origin.test>")))
        time.sleep(QUIET_PERIOD)
        got = sorted(r for t in self.with_marker(b"<part@origin.test>") for r in t.rcpts)
        self.assertEqual(got, ["first@d6.test", later])
        self.daemon.stop()


class VolumeTest(MxTestCase):
    def test_50_domains_2000_messages(self):
        # 4 connections per shard for 25 destinations each: idle connections must give way.
        self.start(shards=2, delivery_options={"max_connections": 4})
        n = 2000
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=60) as s:
            s.ehlo("client.test")
            for i in range(n):
                rcpt = f"u{i}@{DOMAINS[i % len(DOMAINS)]}"
                s.sendmail(SENDER, [rcpt], message(f"vol{i}@origin.test", f"vol {i}"))
        ok = self.sink.wait_for(n, harness.scaled(120))
        self.assertTrue(ok, f"{self.sink.count()} of {n}; log:\n" + self.daemon.log_text())
        time.sleep(QUIET_PERIOD)
        seen = {}
        for t in self.sink.transactions():
            for r in t.rcpts:
                seen[r] = seen.get(r, 0) + 1
        self.assertEqual(len(seen), n)
        self.assertEqual(set(seen.values()), {1}, "some recipient got a message twice")
        self.assertEqual(self.dsns(), [])
        self.daemon.stop()


class SharedMxTest(MxTestCase):
    def test_domains_sharing_an_mx_reuse_one_session(self):
        # d1.test and d2.test both have MX mx-live.test. One connection per shard: the idle
        # session of d1 is handed back when d2 has mail, parked, and adopted by d2.
        self.start(shards=1, delivery_options={"max_connections": 1})
        self.send(SENDER, ["a@d1.test"], message("share1@origin.test", "first domain"))
        self.wait("d1 not delivered", lambda: self.with_marker(b"<share1@origin.test>"))
        self.send(SENDER, ["b@d2.test"], message("share2@origin.test", "second domain"))
        self.wait("d2 not delivered", lambda: self.with_marker(b"<share2@origin.test>"))
        self.assertEqual(self.sink.connections, 1, self.daemon.log_text())
        self.assertEqual(self.dsns(), [])
        self.daemon.stop()


class TlsTest(MxTestCase):
    def test_starttls_to_mx(self):
        self.start(tls_sink=True)
        self.send(SENDER, ["user@tls.test"], message("tls@origin.test", "over tls"))
        self.wait("not delivered over TLS", lambda: self.with_marker(b"<tls@origin.test>",
                                                                     self.tls_sink),
                  sink=self.tls_sink)
        [t] = self.with_marker(b"<tls@origin.test>", self.tls_sink)
        self.assertTrue(t.tls, "the transaction did not use STARTTLS")
        self.daemon.stop()

    def test_required_tls_without_starttls_defers(self):
        self.start(domains=[{"name": "notls.test", "tls": "required"}])
        self.send(SENDER, ["user@notls.test"], message("req@origin.test", "required tls"))
        ok = harness.wait_until(
            lambda: any(e["type"] == "TransientFailure" and e.get("recipient") == "user@notls.test"
                        for e in self.events()), DELIVERY_TIMEOUT)
        self.assertTrue(ok, self.daemon.log_text())
        self.assertEqual(self.with_marker(b"<req@origin.test>"), [])
        self.assertEqual(self.dsns(), [])
        self.daemon.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
