"""Outbound delivery through a smarthost: retries after 4xx, partial outcomes, RFC 3464
bounces (and none for the null sender), expiry, a smarthost that comes up late, restart with
a half-delivered message, connection reuse in the pool and the next message pipelined behind
the last one's data.

Every test runs its own ringmaild against its own Python sink (harness.SmtpSink) with a
one-second retry schedule, so each retry happens within a few seconds."""

import email
import email.message
import email.parser
import json
import os
import signal
import re
import smtplib
import time
import unittest

import harness

DELIVERY_TIMEOUT = harness.scaled(30)
# How long "nothing more arrives" is watched for (several retry intervals).
QUIET_PERIOD = harness.scaled(3)

SENDER = "sender@origin.test"


def message(mid: str, subject: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: someone@dest.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nbody of {mid}\r\n").encode()


class DeliveryTestCase(unittest.TestCase):
    """Helpers: a sink + daemon per test, sending, counting, reading the daemon log."""

    def start(self, *, sink_kwargs=None, delivery_options=None, smarthost=None, **config):
        self.sink = None
        if smarthost is None:
            self.sink = harness.SmtpSink(**(sink_kwargs or {}))
            self.addCleanup(self.sink.close)
            smarthost = self.sink.smarthost
        config.setdefault("retry_schedule", ["1s"])
        self.daemon = harness.Ringmaild(smarthost=smarthost, delivery_options=delivery_options,
                                        **config)
        self.addCleanup(self.daemon.kill)
        self.daemon.start()
        return self.daemon

    def send(self, sender, rcpts, msg: bytes):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            refused = s.sendmail(sender, rcpts, msg)
        self.assertEqual(refused, {})

    def with_marker(self, marker: bytes) -> list[harness.Transaction]:
        """Deliveries of the message with this marker (a DSN quoting its headers excluded)."""
        return [t for t in self.sink.transactions() if marker in t.content and t.mail_from != ""]

    def to_rcpt(self, rcpt: str, marker: bytes | None = None) -> list[harness.Transaction]:
        return [t for t in self.sink.transactions() if rcpt in t.rcpts and t.mail_from != ""
                and (marker is None or marker in t.content)]

    def dsns(self, to: str = SENDER) -> list[harness.Transaction]:
        return [t for t in self.sink.transactions() if t.mail_from == "" and to in t.rcpts]

    def wait(self, what: str, predicate, timeout: float = DELIVERY_TIMEOUT) -> None:
        ok = self.sink.wait_until(lambda ts: predicate(), timeout)
        self.assertTrue(ok, f"{what} within {timeout:.0f}s; daemon log:\n"
                        + self.daemon.log_text())

    def wait_log(self, pattern: str, timeout: float = DELIVERY_TIMEOUT) -> None:
        ok = harness.wait_until(lambda: re.search(pattern, self.daemon.log_text()), timeout,
                                interval=0.1)
        self.assertTrue(ok, f"no log line matching {pattern!r} within {timeout:.0f}s:\n"
                        + self.daemon.log_text())

    def statuses(self, rcpt: str) -> list[str]:
        """status= words of the delivery log lines for one recipient, in order."""
        return re.findall(r"to=<" + re.escape(rcpt) + r">, .*?status=(\w+)",
                          self.daemon.log_text())

    def parse_dsn(self, t: harness.Transaction) -> dict:
        """Checks the RFC 3464 structure; returns its parts."""
        msg = email.message_from_bytes(t.content)
        self.assertEqual(msg.get_content_type(), "multipart/report", t.content[:3000])
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = msg.get_payload()
        self.assertIsInstance(parts, list)
        types = [p.get_content_type() for p in parts]
        self.assertEqual(types, ["text/plain", "message/delivery-status", "text/rfc822-headers"],
                         t.content[:3000])
        blocks = parts[1].get_payload()  # per-message fields, then one block per recipient
        self.assertIsInstance(blocks, list)
        self.assertGreaterEqual(len(blocks), 2, t.content[:3000])
        self.assertIn("Reporting-MTA", blocks[0])
        returned = email.parser.HeaderParser().parsestr(parts[2].get_payload())
        return {"message": msg, "text": parts[0].get_payload(), "per_message": blocks[0],
                "recipients": blocks[1:], "headers": returned}


class RetryTest(DeliveryTestCase):
    def test_deferred_once_then_delivered_exactly_once(self):
        self.start(sink_kwargs={"tempfail_first": 1})
        start = time.monotonic()
        self.send(SENDER, ["once@dest.test"], message("retry1@origin.test", "retry"))
        marker = b"<retry1@origin.test>"
        self.wait("the deferred message was not delivered", lambda: self.with_marker(marker))
        elapsed = time.monotonic() - start
        harness.log(f"retry: delivered {elapsed:.1f}s after submission")
        # One refused attempt, then the delivery.
        attempts = [t for t in self.sink.all_attempts() if marker in t.content]
        self.assertEqual([t.accepted for t in attempts], [False, True])
        time.sleep(QUIET_PERIOD)
        self.assertEqual(len(self.with_marker(marker)), 1, "delivered more than once")
        self.assertEqual(self.statuses("once@dest.test"), ["deferred", "sent"],
                         self.daemon.log_text())
        self.daemon.stop()


class PartialTest(DeliveryTestCase):
    OK, LATER, BAD = "ok@dest.test", "later@dest.test", "bad@dest.test"
    BAD_REPLY = "550 5.1.1 <bad@dest.test>: mailbox unknown here"

    def test_250_451_550_in_one_message(self):
        self.start(sink_kwargs={"reject_rcpts": {self.BAD: self.BAD_REPLY},
                                "tempfail_rcpts": {self.LATER: 1}})
        marker = b"<partial@origin.test>"
        self.send(SENDER, [self.OK, self.LATER, self.BAD],
                  message("partial@origin.test", "Partial outcome subject"))

        self.wait("the 250 recipient got nothing", lambda: self.to_rcpt(self.OK, marker))
        self.wait("the 451 recipient was not retried", lambda: self.to_rcpt(self.LATER, marker))
        self.wait("no DSN for the 550 recipient", lambda: self.dsns())
        time.sleep(QUIET_PERIOD)

        [first] = self.to_rcpt(self.OK, marker)
        self.assertEqual(first.rcpts, [self.OK])
        self.assertEqual(first.mail_from, SENDER)
        [retry] = self.to_rcpt(self.LATER, marker)
        self.assertEqual(retry.rcpts, [self.LATER], "retry went to more than the deferred one")
        self.assertEqual(len(self.with_marker(marker)), 2, [t.rcpts for t in self.with_marker(marker)])
        self.assertEqual(self.sink.rcpt_attempts(self.BAD), 1, "550 recipient tried again")
        self.assertEqual(self.sink.rcpt_attempts(self.LATER), 2)

        dsns = self.dsns()
        self.assertEqual(len(dsns), 1, f"{len(dsns)} DSNs")
        self.assertEqual(dsns[0].mail_from, "")
        self.assertEqual(dsns[0].rcpts, [SENDER])
        dsn = self.parse_dsn(dsns[0])
        self.assertEqual(len(dsn["recipients"]), 1, "DSN names more than the 550 recipient")
        r = dsn["recipients"][0]
        self.assertEqual(r["Final-Recipient"], f"rfc822; {self.BAD}")
        self.assertEqual(r["Action"], "failed")
        self.assertRegex(r["Status"], r"^5\.\d{1,3}\.\d{1,3}$")
        self.assertIn("550", r["Diagnostic-Code"])
        self.assertIn("mailbox unknown here", r["Diagnostic-Code"])
        self.assertEqual(dsn["headers"]["Subject"], "Partial outcome subject")
        self.assertIn(self.BAD, dsn["text"])
        self.assertEqual(self.statuses(self.OK), ["sent"])
        self.assertEqual(self.statuses(self.LATER), ["deferred", "sent"])
        self.assertEqual(self.statuses(self.BAD), ["bounced"])
        self.daemon.stop()


class NullSenderTest(DeliveryTestCase):
    def test_no_dsn_for_null_sender(self):
        bad = "nobody@dest.test"
        self.start(sink_kwargs={"reject_rcpts": {bad: "550 5.1.1 no such user"}})
        self.send("", [bad], message("null@origin.test", "from the null sender"))
        self.wait_log(r"to=<" + re.escape(bad) + r">, .*status=bounced")
        time.sleep(QUIET_PERIOD)
        self.assertEqual(self.sink.transactions(), [], "something was delivered")
        self.assertEqual(self.sink.rcpt_attempts(bad), 1)
        self.assertNotIn("non-delivery notification", self.daemon.log_text())
        self.assertIn("null sender: no notification sent", self.daemon.log_text())
        self.assertTrue(self.daemon.running(), self.daemon.log_text())
        self.daemon.stop()


class ExpiryTest(DeliveryTestCase):
    def test_expired_message_bounces_once_and_stops(self):
        rcpt = "slow@dest.test"
        self.start(sink_kwargs={"reject_rcpts": {rcpt: "451 4.2.1 mailbox busy"}},
                   max_lifetime="3s")
        start = time.monotonic()
        self.send(SENDER, [rcpt], message("expire@origin.test", "will expire"))
        self.wait("no DSN after max_lifetime", lambda: self.dsns(),
                  timeout=harness.scaled(30))
        harness.log(f"expiry: DSN {time.monotonic() - start:.1f}s after submission, "
                    f"{self.sink.rcpt_attempts(rcpt)} attempts")
        tried = self.sink.rcpt_attempts(rcpt)
        self.assertGreaterEqual(tried, 2, "expired without retrying")
        time.sleep(QUIET_PERIOD)
        self.assertEqual(self.sink.rcpt_attempts(rcpt), tried, "retried after expiry")
        dsns = self.dsns()
        self.assertEqual(len(dsns), 1, f"{len(dsns)} DSNs")
        dsn = self.parse_dsn(dsns[0])
        [r] = dsn["recipients"]
        self.assertEqual(r["Final-Recipient"], f"rfc822; {rcpt}")
        self.assertEqual(r["Action"], "failed")
        self.assertRegex(r["Status"], r"^(4\.\d{1,3}\.\d{1,3}|5\.4\.7)$")
        self.assertEqual(dsn["headers"]["Subject"], "will expire")
        self.assertRegex(self.daemon.log_text(), r"expired after delivery.max_lifetime")
        self.assertEqual([t.mail_from for t in self.sink.transactions()], [""])
        self.daemon.stop()


class SmarthostDownTest(DeliveryTestCase):
    def test_smarthost_comes_up_late(self):
        port = harness.free_port()
        self.start(smarthost=f"{harness.LOOPBACK}:{port}")
        mids = [f"down{i}@origin.test" for i in range(5)]
        for mid in mids:
            self.send(SENDER, ["late@dest.test"], message(mid, "smarthost down"))
        time.sleep(2)
        self.sink = harness.SmtpSink(port=port)
        self.addCleanup(self.sink.close)
        markers = [f"<{m}>".encode() for m in mids]
        self.wait("not all messages arrived after the smarthost came up",
                  lambda: all(self.with_marker(m) for m in markers))
        time.sleep(QUIET_PERIOD)
        for m in markers:
            self.assertEqual(len(self.with_marker(m)), 1, f"{m!r} delivered more than once")
        self.assertEqual(self.sink.count(), 5)
        # The refused connections deferred the messages (no transaction was ever started).
        self.assertRegex(self.daemon.log_text(), r"unavailable \(421 .*\): \d+ message\(s\) deferred")
        self.daemon.stop()


class PipeliningTest(DeliveryTestCase):
    MESSAGES = 20

    def test_next_message_rides_behind_the_data(self):
        """A backlog on one connection: each next MAIL goes out with the previous dot (RFC
        2920 3.1), and every message still arrives exactly once."""
        # The sink's greeting takes long enough for every message to queue behind the first
        # connection (the only one allowed: the smarthost takes delivery.max_connections).
        self.start(shards=1, sink_kwargs={"greeting_delay": harness.scaled(2)},
                   delivery_options={"max_connections": 1})
        mids = [f"pipe{i}@origin.test" for i in range(self.MESSAGES)]
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            for mid in mids:
                self.assertEqual(s.sendmail(SENDER, ["pipe@dest.test"],
                                            message(mid, "pipelined")), {})
        markers = [f"<{m}>".encode() for m in mids]
        self.wait("not all messages arrived", lambda: all(self.with_marker(m) for m in markers))
        time.sleep(QUIET_PERIOD)
        for m in markers:
            self.assertEqual(len(self.with_marker(m)), 1, f"{m!r} delivered more than once")
        self.assertEqual(self.sink.count(), self.MESSAGES)
        self.assertEqual(self.sink.errors(), [])
        harness.log(f"pipelining: {self.sink.behind_data} of {self.MESSAGES} MAILs behind the "
                    f"previous dot, {self.sink.connections} connection(s)")
        self.assertEqual(self.sink.connections, 1)
        self.assertGreaterEqual(self.sink.behind_data, self.MESSAGES // 2)
        self.daemon.stop()


class RestartTest(DeliveryTestCase):
    def test_restart_with_partly_delivered_message(self):
        a, b = "a@dest.test", "b@dest.test"
        self.start(sink_kwargs={"reject_rcpts": {b: "451 4.2.0 not yet"}})
        marker = b"<restart@origin.test>"
        self.send(SENDER, [a, b], message("restart@origin.test", "restart"))
        self.wait("A was not delivered", lambda: self.to_rcpt(a, marker))
        self.wait_log(r"to=<b@dest\.test>, .*status=deferred")
        self.daemon.stop()  # SIGTERM, exit 0

        self.sink.set_rcpt_reply(b, None)
        self.daemon.start()
        self.wait("B was not delivered after the restart", lambda: self.to_rcpt(b, marker))
        time.sleep(QUIET_PERIOD)
        self.assertEqual(len(self.to_rcpt(a, marker)), 1, "A was delivered again after restart")
        [tb] = self.to_rcpt(b, marker)
        self.assertEqual(tb.rcpts, [b])
        self.assertEqual(self.dsns(), [])
        self.daemon.stop()

    def test_outcome_is_durable_soon_on_an_idle_shard(self):
        # Delivery outcomes wait up to 20 ms for a batch (spool::options::journal_delay); with
        # no more traffic the shard's timer must commit them, so a kill -9 a while after the
        # delivery does not deliver again.
        self.start()
        marker = b"<idle-outcome@origin.test>"
        self.send(SENDER, ["a@dest.test"], message("idle-outcome@origin.test", "idle outcome"))
        self.wait("the message was not delivered", lambda: self.with_marker(marker))
        time.sleep(1)
        self.daemon.kill()
        self.daemon.start()
        time.sleep(QUIET_PERIOD)
        self.assertEqual(len(self.with_marker(marker)), 1, "delivered again after kill -9")
        self.daemon.stop()


class ConnectionReuseTest(DeliveryTestCase):
    MESSAGES = 50
    SHARDS = 2

    def send_sequentially(self, tag: str) -> None:
        for i in range(self.MESSAGES):
            mid = f"{tag}{i}@origin.test"
            self.send(SENDER, ["reuse@dest.test"], message(mid, tag))
            marker = f"<{mid}>".encode()
            self.wait(f"message {i} not delivered", lambda: self.with_marker(marker))
        time.sleep(0.5)
        self.assertEqual(self.sink.count(), self.MESSAGES)
        self.assertEqual(self.sink.errors(), [])

    def test_connections_are_reused(self):
        max_connections = 2
        self.start(shards=self.SHARDS, delivery_options={
            "max_connections": max_connections, "idle_timeout": "60s"})
        self.send_sequentially("reuse")
        harness.log(f"reuse: {self.sink.connections} connections for {self.MESSAGES} messages")
        self.assertLessEqual(self.sink.connections, self.SHARDS * max_connections)
        self.daemon.stop()

    def test_max_messages_per_connection(self):
        self.start(shards=self.SHARDS, delivery_options={
            "max_messages_per_connection": 5, "idle_timeout": "60s"})
        self.send_sequentially("limit")
        harness.log(f"limit: {self.sink.connections} connections for {self.MESSAGES} messages")
        self.assertGreaterEqual(self.sink.connections, self.MESSAGES // 5)
        # Reuse still happens within the limit (allow for the odd extra connection).
        self.assertLessEqual(self.sink.connections, self.MESSAGES // 5 + 2 * self.SHARDS)
        self.daemon.stop()


class DeliveryLogTest(DeliveryTestCase):
    """[delivery] log_file: one JSON line per event; SIGHUP reopens the file (log rotation)."""
    OK, LATER, BAD = "ok@dest.test", "later@dest.test", "bad@dest.test"

    def read_events(self, path: str) -> list[dict]:
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def wait_events(self, path: str, predicate, what: str) -> list[dict]:
        ok = harness.wait_until(lambda: predicate(self.read_events(path)), DELIVERY_TIMEOUT,
                                interval=0.1)
        self.assertTrue(ok, f"{what}: {self.read_events(path)}\n{self.daemon.log_text()}")
        return self.read_events(path)

    def test_events_and_reopen(self):
        workdir = harness.temp_dir()
        path = os.path.join(workdir, "delivery.json")
        self.start(sink_kwargs={"reject_rcpts": {self.BAD: "550 5.1.1 no such user"},
                                "tempfail_rcpts": {self.LATER: 1}},
                   delivery_options={"log_file": path})
        self.send(SENDER, [self.OK, self.LATER, self.BAD],
                  message("log1@origin.test", "logged \u00e9"))

        def complete(events):
            types = [(e["type"], e.get("recipient")) for e in events]
            return (("Delivery", self.LATER) in types and ("Bounce", self.BAD) in types
                    and any(e["type"] == "Delivery" and e["sender"] == "" for e in events))
        events = self.wait_events(path, complete, "not every event was logged")

        [rx] = [e for e in events if e["type"] == "Reception" and e["sender"] == SENDER]
        self.assertEqual(rx["recipients"], 3)
        self.assertEqual(rx["message_id"], "<log1@origin.test>")
        self.assertEqual(rx["client_ip"], "127.0.0.1")
        self.assertGreater(rx["size"], 0)
        qid = rx["queue_id"]
        mine = [e for e in events if e.get("queue_id") == qid and e["type"] != "Reception"]
        by_rcpt = {}
        for e in mine:
            self.assertEqual(e["message_id"], "<log1@origin.test>")
            self.assertEqual(e["sender"], SENDER)
            self.assertEqual(e["mx_ip"], "127.0.0.1")
            self.assertIn("attempt", e)
            self.assertGreaterEqual(e["latency_ms"], 0)
            self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            by_rcpt.setdefault(e["recipient"], []).append(e)
        self.assertEqual([e["type"] for e in by_rcpt[self.OK]], ["Delivery"])
        self.assertTrue(by_rcpt[self.OK][0]["reply"].startswith("250"), by_rcpt[self.OK])
        self.assertEqual([e["type"] for e in by_rcpt[self.LATER]],
                         ["TransientFailure", "Delivery"])
        self.assertEqual([e["attempt"] for e in by_rcpt[self.LATER]], [1, 2])
        self.assertTrue(by_rcpt[self.LATER][0]["reply"].startswith("4"), by_rcpt[self.LATER])
        self.assertEqual([e["type"] for e in by_rcpt[self.BAD]], ["Bounce"])
        self.assertIn("no such user", by_rcpt[self.BAD][0]["reply"])
        # The DSN is a message of its own: received locally from <>, then delivered.
        dsn_rx = [e for e in events if e["type"] == "Reception" and e["sender"] == ""]
        self.assertEqual(len(dsn_rx), 1, events)

        # Rotation: move the file away, SIGHUP, and the next events go to a fresh file.
        rotated = path + ".1"
        os.rename(path, rotated)
        self.daemon.signal(signal.SIGHUP)
        self.wait_log(r"SIGHUP")
        self.send(SENDER, [self.OK], message("log2@origin.test", "after rotation"))
        events = self.wait_events(
            path, lambda ev: any(e["type"] == "Delivery" and e.get("message_id") ==
                                 "<log2@origin.test>" for e in ev),
            "no events in the reopened file")
        self.assertFalse(any(e.get("message_id") == "<log1@origin.test>" for e in events))
        old = self.read_events(rotated)
        self.assertFalse(any(e.get("message_id") == "<log2@origin.test>" for e in old))
        self.daemon.stop()


class EightBitTest(DeliveryTestCase):
    """RFC 6152: 8-bit octets never go to a server without 8BITMIME; 7-bit content declared
    BODY=8BITMIME still does."""

    def test_8bit_to_a_7bit_server(self):
        self.start(sink_kwargs={"eightbitmime": False})
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            s.sendmail(SENDER, ["seven@dest.test"], message("ascii@origin.test", "plain"),
                       mail_options=["BODY=8BITMIME"])
            # 8-bit in the body only, so the DSN (which quotes the headers) is 7-bit itself.
            eight = message("eight@origin.test", "eight").replace(b"body of", "caf\u00e9".encode())
            s.sendmail(SENDER, ["eight@dest.test"], eight, mail_options=["BODY=8BITMIME"])
        self.wait("the 7-bit message was not delivered",
                  lambda: self.to_rcpt("seven@dest.test", b"<ascii@origin.test>"))
        self.wait("no DSN for the 8-bit message", lambda: self.dsns())
        self.assertEqual(self.to_rcpt("eight@dest.test"), [], "8-bit octets sent to a 7-bit server")
        [dsn] = self.dsns()
        r = self.parse_dsn(dsn)["recipients"][0]
        self.assertEqual(r["Final-Recipient"], "rfc822; eight@dest.test")
        self.assertEqual(r["Status"], "5.6.3")
        self.daemon.stop()


if __name__ == "__main__":
    unittest.main()
