"""Bounce categories end to end: a sink (harness.SmtpSink, the smarthost) answers each recipient
with a real reply from a mailbox provider, one recipient goes to a route nobody listens on
(connection refused), and the temporary failures run into a short max_lifetime. The delivery log
carries each failure's category (Bounce, TransientFailure and Expiration records), and the one
DSN carries an X-Ringmail-Category per recipient."""

import email
import email.policy
import json
import os
import smtplib
import unittest

import harness

TIMEOUT = harness.scaled(40)
SENDER = "sender@origin.test"

# recipient -> (the sink's reply, its category). Replies as the providers send them.
PERMANENT = {
    "gmail-nouser@dest.test": (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
        "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
        "InvalidRecipient"),
    "gmail-quota@dest.test": (
        "552-5.2.2 The email account that you tried to reach is over quota and inactive.\r\n"
        "552 5.2.2 https://support.google.com/mail/?p=OverQuotaPerm - gsmtp",
        "QuotaIssues"),
    "outlook-block@dest.test": (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        "SpamBlock"),
    "yahoo-policy@dest.test": (
        "554 5.7.9 Message not accepted for policy reasons.  See "
        "https://postmaster.yahooinc.com/error-codes",
        "PolicyRelated"),
    "gmail-auth@dest.test": (
        "550-5.7.26 This mail has been blocked because the sender is\r\n"
        "550 5.7.26 unauthenticated. Gmail requires all senders to authenticate. - gsmtp",
        "AuthenticationFailed"),
    "mailru-disabled@dest.test": (
        "550 Message was not accepted -- invalid mailbox.  Local mailbox x@mail.ru is "
        "unavailable: account is disabled",
        "InactiveMailbox"),
}
TEMPORARY = {
    "outlook-rate@dest.test": (
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
        "reputation.",
        "SpamBlock"),
    "greylist@dest.test": (
        "450 4.2.0 <greylist@dest.test>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/dest.test.html",
        "TransientFailure"),
}
REFUSED = "someone@refused.test"  # its route's port is closed: BadConnection


def read_log(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class BounceCategories(unittest.TestCase):
    def test_categories_in_log_and_dsn(self):
        replies = {a: r for a, (r, _) in {**PERMANENT, **TEMPORARY}.items()}
        sink = harness.SmtpSink(reject_rcpts=replies)
        self.addCleanup(sink.close)
        workdir = harness.temp_dir()
        log_path = os.path.join(workdir, "delivery.log")
        closed = harness.free_port()
        port = harness.free_port()
        config = harness.make_config(
            os.path.join(workdir, "spool"), port, sink.smarthost,
            retry_schedule=["1s"], max_lifetime="4s",
            delivery_options={"log_file": log_path, "delay_warning": "",
                              "connect_timeout": "2s"})
        config["domain"] = [{"name": "refused.test", "route": f"127.0.0.1:{closed}"}]
        os.makedirs(os.path.join(workdir, "spool"), exist_ok=True)
        daemon = harness.Ringmaild(config, workdir=workdir)
        self.addCleanup(daemon.kill)
        daemon.start()

        rcpts = [*PERMANENT, *TEMPORARY, REFUSED, "ok@dest.test"]
        with smtplib.SMTP(harness.LOOPBACK, daemon.port, timeout=30) as s:
            s.sendmail(SENDER, rcpts,
                       b"From: sender@origin.test\r\nSubject: categories\r\n"
                       b"Message-ID: <cat-1@origin.test>\r\n\r\nbody\r\n")

        # The one DSN: every recipient but ok@ final (the temporary ones expired).
        self.assertTrue(sink.wait_until(
            lambda ts: any(t.mail_from == "" for t in ts), TIMEOUT), daemon.log_text())
        dsn = next(t for t in sink.transactions() if t.mail_from == "")
        msg = email.message_from_bytes(dsn.content, policy=email.policy.compat32)
        status = msg.get_payload()[1]
        blocks = status.get_payload()[1:]
        got = {b["Final-Recipient"].split(";", 1)[1].strip(): b["X-Ringmail-Category"]
               for b in blocks}
        want = {a: c for a, (_, c) in PERMANENT.items()}
        want.update({a: "MessageExpired" for a in TEMPORARY})
        want[REFUSED] = "MessageExpired"
        self.assertEqual(got, want)

        # The delivery log: every Bounce with its reply's category; every TransientFailure with
        # its own; the expirations as MessageExpired; the delivery without a category.
        self.assertTrue(harness.wait_until(
            lambda: sum(r["type"] == "Expiration" for r in read_log(log_path)) == 3, TIMEOUT))
        records = read_log(log_path)
        by_type: dict[str, dict[str, set]] = {}
        for r in records:
            if "recipient" in r:
                by_type.setdefault(r["type"], {}).setdefault(r["recipient"], set()).add(
                    r.get("category"))
        for a, (_, c) in PERMANENT.items():
            self.assertEqual(by_type["Bounce"][a], {c}, a)
        for a, (_, c) in TEMPORARY.items():
            self.assertEqual(by_type["TransientFailure"][a], {c}, a)
            self.assertEqual(by_type["Expiration"][a], {"MessageExpired"}, a)
        self.assertEqual(by_type["TransientFailure"][REFUSED], {"BadConnection"})
        self.assertEqual(by_type["Expiration"][REFUSED], {"MessageExpired"})
        self.assertEqual(by_type["Delivery"]["ok@dest.test"], {None})
        self.assertIn("category=InvalidRecipient", daemon.log_text())
        daemon.stop()

    def test_bad_rules_file_stops_start_up(self):
        workdir = harness.temp_dir()
        rules = os.path.join(workdir, "rules.toml")
        with open(rules, "w", encoding="utf-8") as f:
            f.write("# mine\n[rules]\nSpamBlock = [\n  'fine',\n  'broken(',\n]\n")
        daemon = harness.Ringmaild(workdir=workdir,
                                   delivery_options={"bounce_rules_file": [rules]})
        result = daemon.check_config()
        self.assertNotEqual(result.returncode, 0)
        err = result.stderr.decode("utf-8", "replace")
        self.assertIn("delivery.bounce_rules_file", err)
        self.assertIn(f"{rules}:5", err)
        self.assertIn("rules.SpamBlock[1]", err)

        # KumoMTA-format files of one's own load before the shipped one.
        with open(rules, "w", encoding="utf-8") as f:
            f.write("[rules]\nTransientFailure = ['blacklisted']\n")
        root = os.environ.get("RINGMAIL_SOURCE_ROOT",
                              os.path.join(os.path.dirname(__file__), "..", ".."))
        shipped = os.path.join(root, "packaging", "bounces.toml")
        ok = harness.Ringmaild(workdir=harness.temp_dir(),
                               delivery_options={"bounce_rules_file": [rules, shipped]})
        result = ok.check_config()
        self.assertEqual(result.returncode, 0, result.stderr)


if __name__ == "__main__":
    unittest.main()
