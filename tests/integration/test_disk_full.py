"""The spool's file system fills up: ringmaild answers 452 4.3.1, keeps serving, never
delivers what it refused, and accepts again once space returns.

The spool lives on a 2 MiB tmpfs (needs root or CAP_SYS_ADMIN; otherwise skipped). The
smarthost answers 451 to every DATA until the test lets it accept, so accepted mail stays in
the spool and the space is not freed behind the test's back.
"""

import os
import re
import signal
import smtplib
import subprocess
import time
import unittest

import harness

DELIVERY_TIMEOUT = harness.scaled(60)
MESSAGE_LINES = 400  # x 78 bytes: about 30 KiB per message
MAX_ATTEMPTS = 300  # 2 MiB / 30 KiB is about 70; far more means 452 never comes


def message(n: int) -> tuple[bytes, bytes]:
    """(marker, content) for message n: every line differs, so torn or mixed-up bytes show."""
    marker = f"<disk-full-{n}@x.test>".encode()
    head = (
        b"From: a@x.test\r\nTo: b@y.test\r\nSubject: disk full " + str(n).encode()
        + b"\r\nMessage-ID: " + marker + b"\r\n\r\n"
    )
    body = b"".join(
        f"{n:05d}.{i:04d} ".encode() + bytes([0x41 + (n + i) % 26]) * 64 + b"\r\n"
        for i in range(MESSAGE_LINES)
    )
    return marker, head + body


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


class DiskFullTest(unittest.TestCase):
    def setUp(self):
        self.workdir = harness.temp_dir("ringmail-disk-full-")
        self.spool = os.path.join(self.workdir, "spool")
        os.makedirs(self.spool)
        try:
            r = _mount(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", self.spool])
            why = (r.stderr or r.stdout).strip() if r.returncode != 0 else ""
        except OSError as e:  # no mount(8)
            why = str(e)
        if why:
            raise unittest.SkipTest(
                "cannot mount a tmpfs for the spool (needs root or CAP_SYS_ADMIN): " + why
            )
        # Cleanups run last-in first-out: the daemon dies before the unmount.
        self.addCleanup(self._umount)
        # 451 to every DATA until allow_delivery(): accepted mail stays spooled.
        self.sink = harness.SmtpSink(tempfail_first=1 << 60)
        self.addCleanup(self.sink.close)
        self.daemon = harness.Ringmaild(
            smarthost=self.sink.smarthost, workdir=self.workdir, retry_schedule=("1s",)
        )
        self.addCleanup(self.daemon.kill)
        self.daemon.start()

    def _umount(self):
        r = _mount(["umount", self.spool])
        if r.returncode != 0:
            # Something still holds it: detach it so nothing outlives the test.
            _mount(["umount", "-l", self.spool])

    def full_log(self) -> str:
        path = os.path.join(self.workdir, f"ringmaild.{self.daemon.starts}.log")
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def send(self, n: int) -> tuple[int, str]:
        """Submit message n on a new connection; (code, text) of the end-of-data reply."""
        _, content = message(n)
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=harness.scaled(30)) as s:
            s.ehlo("client.test")
            try:
                refused = s.sendmail("a@x.test", ["b@y.test"], content)
            except smtplib.SMTPResponseException as e:
                text = e.smtp_error.decode("utf-8", "replace") if isinstance(
                    e.smtp_error, bytes) else str(e.smtp_error)
                return e.smtp_code, text
            self.assertEqual(refused, {})
            return 250, ""

    def test_enospc_is_452_and_recovers(self):
        accepted: list[int] = []
        refused: dict[int, tuple[int, str]] = {}  # every n that did not get 250
        n = 0

        # 1. Fill the spool until a commit fails with 452 4.3.1.
        first_452 = None
        while n < MAX_ATTEMPTS:
            code, text = self.send(n)
            if code == 250:
                accepted.append(n)
            else:
                refused[n] = (code, text)
                if code == 452:
                    first_452 = n
                    n += 1
                    break
            n += 1
            self.assertTrue(self.daemon.running(), self.daemon.log_text())
        self.assertIsNotNone(
            first_452,
            f"no 452 after {MAX_ATTEMPTS} messages of 30 KiB into a 2 MiB spool; "
            f"other refusals {refused}:\n{self.daemon.log_text()}",
        )
        self.assertIn("4.3.1", refused[first_452][1])
        self.assertGreater(len(accepted), 10, f"{refused}\n{self.daemon.log_text()}")
        # A full disk is ENOSPC all along: no other refusal (451 4.3.0 would mean the daemon
        # took the short write of a filling disk for an I/O error).
        self.assertEqual(
            {k: v for k, v in refused.items() if v[0] != 452}, {},
            f"refusals other than 452 while filling the disk:\n{self.daemon.log_text()}",
        )

        # 2. Still serving: greeting, NOOP, and a further message still gets 452 (not 250,
        #    not a dropped connection) in a session that goes on afterwards.
        self.assertTrue(self.daemon.running(), self.daemon.log_text())
        with harness.RawSmtp(*self.daemon.address, timeout=harness.scaled(30)) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            self.assertEqual(c.cmd("NOOP")[0], 250)
        for _ in range(3):
            code, text = self.send(n)
            refused[n] = (code, text)
            self.assertEqual(code, 452, f"{text}\n{self.daemon.log_text()}")
            self.assertIn("4.3.1", text)
            n += 1
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=harness.scaled(30)) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail("a@x.test")[0], 250)
            self.assertEqual(s.rcpt("b@y.test")[0], 250)
            code, text = s.data(message(n)[1])
            refused[n] = (code, text.decode("utf-8", "replace"))
            n += 1
            self.assertEqual(code, 452, text)
            self.assertEqual(s.rset()[0], 250)
            self.assertEqual(s.noop()[0], 250)

        log = self.full_log()
        self.assertRegex(
            log, r"commit failed: No space left on device",
            f"no log line about the failed commit:\n{self.daemon.log_text()}",
        )

        # While the disk stays full, the deferred deliveries keep adding journal entries that
        # cannot be written. Retrying them must be paced, not a busy loop: a few seconds of
        # idling produce a bounded number of failed commits (a busy loop makes ~10^5/s).
        before = len(log)
        time.sleep(harness.scaled(3))
        self.assertTrue(self.daemon.running(), self.daemon.log_text())
        idle = self.full_log()[before:]
        failed = idle.count("commit failed")
        self.assertLess(
            failed, 500,
            f"{failed} failed commits in {harness.scaled(3):.0f}s of idling on a full disk:\n"
            + idle[:3000],
        )

        # 3. Space returns: new mail is accepted again.
        r = _mount(["mount", "-o", "remount,size=64m", self.spool])
        self.assertEqual(r.returncode, 0, r.stderr)
        for _ in range(3):
            code, text = self.send(n)
            self.assertEqual(code, 250, f"{text} after space returned:\n{self.daemon.log_text()}")
            accepted.append(n)
            n += 1

        # 4. The smarthost accepts: every 250 arrives exactly once and byte-exact; nothing
        #    that was refused is ever delivered (not even attempted).
        self.sink.tempfail_first = 0
        want = {message(k)[0]: message(k)[1] for k in accepted}

        def all_arrived(ts):
            got = {m for t in ts for m in want if t.content.endswith(want[m])}
            return len(got) == len(want)

        ok = self.sink.wait_until(all_arrived, DELIVERY_TIMEOUT)
        got = {m for t in self.sink.transactions() for m in want if m in t.content}
        self.assertTrue(
            ok, f"{len(want) - len(got)} of {len(want)} accepted messages not delivered:\n"
            + self.daemon.log_text(),
        )
        # Longer than a retry interval: a duplicate would have shown up by now.
        time.sleep(harness.scaled(3))
        delivered = self.sink.transactions()
        for marker, content in want.items():
            found = [t for t in delivered if marker in t.content]
            self.assertEqual(len(found), 1, f"{marker!r} delivered {len(found)} times")
            t = found[0]
            self.assertTrue(t.content.endswith(content), f"{marker!r} not byte-exact")
            added = t.content[: len(t.content) - len(content)]
            self.assertTrue(added.startswith(b"Received:"), added[:200])
            self.assertNotIn(b"\r\n\r\n", added)
            self.assertEqual(t.mail_from, "a@x.test")
            self.assertEqual(t.rcpts, ["b@y.test"])
        for k in refused:
            marker = message(k)[0]
            hits = [t for t in self.sink.all_attempts() if marker in t.content]
            self.assertEqual(hits, [], f"refused message {k} {refused[k]} was sent to the smarthost")
        self.assertEqual(len(delivered), len(want), "unexpected extra deliveries")
        self.assertEqual(self.sink.errors(), [])

        # 5. Clean exit on SIGTERM.
        self.daemon.signal(signal.SIGTERM)
        code = self.daemon.wait_exit(harness.scaled(30))
        self.assertEqual(code, 0, self.daemon.log_text())
        harness.log(
            f"disk full: {len(accepted)} accepted, {len(refused)} refused with 452, "
            f"first 452 at message {first_452}"
        )


if __name__ == "__main__":
    unittest.main()
