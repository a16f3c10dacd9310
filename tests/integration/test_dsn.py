"""Delivery status notifications on request (RFC 3461 DSN): MAIL RET=/ENVID= and RCPT NOTIFY=/
ORCPT= through ringmaild to a smarthost (harness.SmtpSink), every notice parsed with Python's
email package: relayed (NOTIFY=SUCCESS to a hop without DSN), none through a DSN-capable hop
(the parameters are passed on instead), failed with RET=HDRS and RET=FULL, NEVER, ENVID and
ORCPT echoed, one delay notice, and the parameters surviving a restart between acceptance and
the notice. Bad parameters get 501."""

import email
import email.message
import email.policy
import re
import smtplib
import unittest

import harness

TIMEOUT = harness.scaled(30)
QUIET = harness.scaled(3)
SENDER = "sender@origin.test"


def message(mid: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: someone@dest.test\r\nSubject: dsn test {mid}\r\n"
            f"Message-ID: <{mid}>\r\n\r\nbody of {mid}\r\n").encode()


class Notice:
    """One RFC 3464 report, parsed."""

    def __init__(self, t: harness.Transaction) -> None:
        self.t = t
        self.msg = email.message_from_bytes(t.content, policy=email.policy.compat32)
        assert self.msg.get_content_type() == "multipart/report", self.msg.get_content_type()
        assert self.msg.get_param("report-type") == "delivery-status"
        parts = self.msg.get_payload()
        assert len(parts) == 3, len(parts)
        self.text, status, self.returned = parts
        assert status.get_content_type() == "message/delivery-status"
        # compat32 parses message/delivery-status into a list of header blocks.
        blocks = status.get_payload()
        self.per_message = blocks[0]
        self.recipients = blocks[1:]

    @property
    def subject(self) -> str:
        return self.msg["Subject"]

    def returned_text(self) -> str:
        p = self.returned.get_payload()
        if isinstance(p, list):  # message/rfc822
            return p[0].as_string()
        return p


class DsnTestCase(unittest.TestCase):
    sink_dsn = False

    def setUp(self):
        self.sink = harness.SmtpSink(
            dsn=self.sink_dsn,
            reject_rcpts={"gone@dest.test": "550 5.1.1 no such user"},
            tempfail_rcpts={"late@dest.test": 2})
        self.addCleanup(self.sink.close)
        self.daemon = harness.Ringmaild(smarthost=self.sink.smarthost, retry_schedule=["1s"],
                                        delivery_options={"delay_warning": "1s"})
        self.addCleanup(self.daemon.kill)
        self.daemon.start()

    def send(self, rcpts, mid, mail_options=(), rcpt_options=None):
        rcpt_options = rcpt_options or {}
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            self.assertTrue(s.has_extn("dsn"))
            code, text = s.mail(SENDER, list(mail_options))
            self.assertEqual(code, 250, text)
            for r in rcpts:
                code, text = s.rcpt(r, list(rcpt_options.get(r, ())))
                self.assertEqual(code, 250, text)
            code, text = s.data(message(mid))
            self.assertEqual(code, 250, text)

    def notices(self, mid: str) -> list[Notice]:
        return [Notice(t) for t in self.sink.transactions()
                if t.mail_from == "" and SENDER in t.rcpts and f"<{mid}>".encode() in t.content]

    def wait_notices(self, mid: str, n: int = 1) -> list[Notice]:
        ok = self.sink.wait_until(lambda ts: len(self.notices(mid)) >= n, TIMEOUT)
        self.assertTrue(ok, f"{n} notice(s) for {mid}; daemon log:\n" + self.daemon.log_text())
        return self.notices(mid)

    def delivered(self, rcpt: str, mid: str) -> list[harness.Transaction]:
        return [t for t in self.sink.transactions()
                if t.mail_from == SENDER and rcpt in t.rcpts and f"<{mid}>".encode() in t.content]

    def wait_delivered(self, rcpt: str, mid: str) -> harness.Transaction:
        ok = self.sink.wait_until(lambda ts: bool(self.delivered(rcpt, mid)), TIMEOUT)
        self.assertTrue(ok, self.daemon.log_text())
        return self.delivered(rcpt, mid)[0]

    def quiet(self, mid: str, expected: int) -> None:
        """No further notice arrives for a while."""
        harness.wait_until(lambda: len(self.notices(mid)) > expected, QUIET)
        self.assertEqual(len(self.notices(mid)), expected, self.daemon.log_text())


class ToAHopWithoutDsn(DsnTestCase):
    def test_success_is_reported_as_relayed(self):
        self.send(["ok@dest.test"], "relayed-1@x.test",
                  rcpt_options={"ok@dest.test": ["NOTIFY=SUCCESS"]})
        t = self.wait_delivered("ok@dest.test", "relayed-1@x.test")
        self.assertEqual(t.rcpt_params, [[]], "DSN parameters sent to a hop that did not offer DSN")
        (n,) = self.wait_notices("relayed-1@x.test")
        self.assertEqual(n.subject, "Successful Mail Delivery Report")
        (r,) = n.recipients
        self.assertEqual(r["Action"], "relayed")
        self.assertEqual(r["Final-Recipient"], "rfc822; ok@dest.test")
        self.assertTrue(r["Status"].startswith("2."), r["Status"])
        self.assertIn("250", r["Diagnostic-Code"])
        self.quiet("relayed-1@x.test", 1)

    def test_failure_with_ret_hdrs_envid_and_orcpt(self):
        self.send(["gone@dest.test"], "failed-1@x.test",
                  mail_options=["RET=HDRS", "ENVID=QQ314159+2Bx"],
                  rcpt_options={"gone@dest.test": ["NOTIFY=FAILURE",
                                                   "ORCPT=rfc822;Orig+2Buser@dest.test"]})
        (n,) = self.wait_notices("failed-1@x.test")
        self.assertEqual(n.subject, "Undelivered Mail Returned to Sender")
        self.assertEqual(n.per_message["Original-Envelope-Id"], "QQ314159+x")
        (r,) = n.recipients
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "5.1.1")
        self.assertEqual(r["Original-Recipient"], "rfc822;Orig+user@dest.test")
        self.assertEqual(n.returned.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: dsn test failed-1@x.test", n.returned_text())
        self.assertNotIn("body of", n.returned_text())

    def test_failure_with_ret_full_returns_the_message(self):
        self.send(["gone@dest.test"], "full-1@x.test", mail_options=["RET=FULL"])
        (n,) = self.wait_notices("full-1@x.test")
        self.assertEqual(n.returned.get_content_type(), "message/rfc822")
        self.assertIn("body of full-1@x.test", n.returned_text())

    def test_never_means_no_notice(self):
        self.send(["gone@dest.test", "ok@dest.test"], "never-1@x.test",
                  rcpt_options={"gone@dest.test": ["NOTIFY=NEVER"]})
        self.wait_delivered("ok@dest.test", "never-1@x.test")
        ok = harness.wait_until(lambda: "NOTIFY excludes it" in self.daemon.log_text(),
                                TIMEOUT)
        self.assertTrue(ok, self.daemon.log_text())
        self.quiet("never-1@x.test", 0)

    def test_one_delay_notice_then_delivery(self):
        # late@ gets 451 twice; the second deferral is past delay_warning ("1s").
        self.send(["late@dest.test"], "late-1@x.test")
        self.wait_delivered("late@dest.test", "late-1@x.test")
        (n,) = self.wait_notices("late-1@x.test")
        self.assertEqual(n.subject, "Delayed Mail (still being retried)")
        (r,) = n.recipients
        self.assertEqual(r["Action"], "delayed")
        self.assertTrue(r["Status"].startswith("4."), r["Status"])
        self.quiet("late-1@x.test", 1)

    def test_notify_failure_only_gets_no_delay_notice(self):
        self.sink.tempfail_rcpts["late2@dest.test"] = 2
        self.send(["late2@dest.test"], "late-2@x.test",
                  rcpt_options={"late2@dest.test": ["NOTIFY=FAILURE"]})
        self.wait_delivered("late2@dest.test", "late-2@x.test")
        self.quiet("late-2@x.test", 0)

    def test_bad_parameters_get_501(self):
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            for opts in (["RET=ALL"], ["ENVID=a+ZZ"], ["ENVID=" + "e" * 101], ["RET=FULL", "RET=HDRS"]):
                code, text = s.mail(SENDER, opts)
                self.assertEqual(code, 501, (opts, text))
                self.assertTrue(text.startswith(b"5.5.4"), text)
            code, _ = s.mail(SENDER)
            self.assertEqual(code, 250)
            for opts in (["NOTIFY=NEVER,SUCCESS"], ["NOTIFY=SOMETIMES"], ["ORCPT=nosemicolon"],
                         ["ORCPT=rfc822;a+0Ab@dest.test"]):
                code, text = s.rcpt("ok@dest.test", opts)
                self.assertEqual(code, 501, (opts, text))


class ThroughADsnCapableHop(DsnTestCase):
    sink_dsn = True

    def test_parameters_are_passed_on_and_no_notice_is_sent(self):
        self.send(["ok@dest.test"], "passed-1@x.test", mail_options=["RET=HDRS", "ENVID=E1"],
                  rcpt_options={"ok@dest.test": ["NOTIFY=SUCCESS,FAILURE",
                                                 "ORCPT=rfc822;ok@dest.test"]})
        t = self.wait_delivered("ok@dest.test", "passed-1@x.test")
        self.assertIn("RET=HDRS", t.mail_params)
        self.assertIn("ENVID=E1", t.mail_params)
        self.assertEqual(t.rcpt_params, [["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;ok@dest.test"]])
        self.quiet("passed-1@x.test", 0)


class AcrossARestart(unittest.TestCase):
    def test_parameters_survive_a_restart_before_the_notice(self):
        port = harness.free_port()
        daemon = harness.Ringmaild(smarthost=f"{harness.LOOPBACK}:{port}", retry_schedule=["1s"],
                                   delivery_options={"delay_warning": ""})
        self.addCleanup(daemon.kill)
        daemon.start()
        with smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail(SENDER, ["RET=HDRS", "ENVID=restart+2B1"])[0], 250)
            self.assertEqual(s.rcpt("gone@dest.test", ["ORCPT=rfc822;first@dest.test"])[0], 250)
            self.assertEqual(s.rcpt("never@dest.test", ["NOTIFY=NEVER"])[0], 250)
            self.assertEqual(s.data(message("restart-1@x.test"))[0], 250)
        # Nothing listens on the smarthost port yet: the message waits, deferred.
        self.assertTrue(harness.wait_until(lambda: "deferred" in daemon.log_text(), TIMEOUT),
                        daemon.log_text())
        daemon.stop()
        sink = harness.SmtpSink(port=port, reject_rcpts={"gone@dest.test": "550 5.1.1 gone",
                                                         "never@dest.test": "550 5.1.1 gone"})
        self.addCleanup(sink.close)
        daemon.start()
        mid = b"<restart-1@x.test>"
        ok = sink.wait_until(
            lambda ts: any(t.mail_from == "" and mid in t.content for t in ts), TIMEOUT)
        self.assertTrue(ok, daemon.log_text())
        (t,) = [t for t in sink.transactions() if t.mail_from == "" and mid in t.content]
        n = Notice(t)
        self.assertEqual(n.per_message["Original-Envelope-Id"], "restart+1")
        self.assertEqual([r["Final-Recipient"] for r in n.recipients], ["rfc822; gone@dest.test"])
        self.assertEqual(n.recipients[0]["Original-Recipient"], "rfc822;first@dest.test")
        self.assertEqual(n.returned.get_content_type(), "text/rfc822-headers")


if __name__ == "__main__":
    unittest.main()
