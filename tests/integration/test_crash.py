"""kill -9 under load: every message that got its 250 before the crash is delivered after a
restart on the same spool, complete (size and SHA-256 of the body match); no partial
message ever reaches the sink. Duplicates are allowed (at-least-once) and reported."""

import collections
import hashlib
import random
import re
import smtplib
import threading
import time
import unittest

import harness

CLIENT_THREADS = 8
KILL_AFTER_ACKS = 400  # kill once this many messages were acknowledged...
KILL_AFTER_SECONDS = 8  # ...or after this long, whichever comes first


def make_message(tag: str, rng: random.Random) -> bytes:
    # Bodies of varied size (up to ~200 kB) with dot-leading lines, so partial writes and
    # stuffing mistakes both show up as a checksum mismatch.
    lines = []
    for i in range(rng.choice([5, 50, 500, 2500])):
        line = f"{tag} line {i} " + "x" * rng.randrange(0, 70)
        if i % 7 == 0:
            line = "." + line
        lines.append(line)
    body = ("\r\n".join(lines) + "\r\n").encode()
    digest = hashlib.sha256(body).hexdigest()
    headers = (f"From: load@x.test\r\nTo: sink@y.test\r\nSubject: {tag}\r\n"
               f"Message-ID: <{tag}@crash.test>\r\nX-Body-Length: {len(body)}\r\n"
               f"X-Body-SHA256: {digest}\r\n\r\n")
    return headers.encode() + body


def check_complete(content: bytes) -> str | None:
    """None if the relayed message is whole, else what is wrong."""
    head, sep, body = content.partition(b"\r\n\r\n")
    if not sep:
        return "no header/body separator"
    length = re.search(rb"^X-Body-Length: (\d+)\r?$", head, re.MULTILINE)
    digest = re.search(rb"^X-Body-SHA256: ([0-9a-f]{64})\r?$", head, re.MULTILINE)
    if not length or not digest:
        return "checksum headers missing"
    if len(body) != int(length.group(1)):
        return f"body is {len(body)} bytes, sent {int(length.group(1))}"
    if hashlib.sha256(body).hexdigest().encode() != digest.group(1):
        return "body checksum differs"
    return None


def tag_of(content: bytes) -> str | None:
    m = re.search(rb"^Message-ID: <([^@>]+)@crash\.test>", content, re.MULTILINE)
    return m.group(1).decode() if m else None


class Load:
    """Client threads sending until told to stop; records every acknowledged tag."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: set[str] = set()
        self.attempted = 0
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True)
                        for n in range(CLIENT_THREADS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self, n: int) -> None:
        rng = random.Random(n)
        seq = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP(harness.LOOPBACK, self.port, timeout=20) as s:
                    s.ehlo("load.test")
                    for _ in range(20):  # a few messages per connection
                        if self.stop.is_set():
                            return
                        seq += 1
                        tag = f"t{n}-m{seq}"
                        with self.lock:
                            self.attempted += 1
                        s.sendmail("load@x.test", ["sink@y.test"], make_message(tag, rng))
                        # sendmail returned: the server answered 250 to the end of data.
                        with self.lock:
                            self.acked.add(tag)
            except (OSError, smtplib.SMTPException):
                # The daemon is gone or refused: nothing acknowledged in this transaction.
                if self.stop.wait(0.05):
                    return

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class CrashTest(unittest.TestCase):
    def test_kill_9_loses_no_acknowledged_message(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        daemon = harness.Ringmaild(smarthost=sink.smarthost, retry_schedule=["1s"])
        self.addCleanup(daemon.kill)
        daemon.start()

        load = Load(daemon.port)
        self.addCleanup(load.join)
        load.start()
        harness.wait_until(lambda: load.acked_count() >= KILL_AFTER_ACKS,
                           harness.scaled(KILL_AFTER_SECONDS))
        daemon.kill()  # SIGKILL mid-load
        load.join()
        acked = set(load.acked)
        harness.log(f"crash: killed after {len(acked)} acknowledged of {load.attempted} "
                    f"attempted; {sink.count()} delivered before the kill")
        self.assertGreater(len(acked), 0, "no message was acknowledged before the kill:\n"
                           + daemon.log_text())

        daemon.start()  # same config, same spool_dir
        ok = sink.wait_until(lambda ts: acked <= {tag_of(t.content) for t in ts},
                             harness.scaled(120))

        transactions = sink.transactions()
        delivered = collections.Counter(tag_of(t.content) for t in transactions)
        missing = sorted(acked - set(delivered))
        broken = [(tag_of(t.content), problem) for t in transactions
                  if (problem := check_complete(t.content)) is not None]
        duplicates = {tag: n for tag, n in delivered.items() if n > 1}
        unacked_delivered = set(delivered) - acked - {None}
        harness.log(f"crash: {len(acked)} acknowledged, {len(delivered)} distinct delivered, "
                    f"{len(missing)} missing, {len(broken)} partial/corrupt, "
                    f"{len(duplicates)} duplicated ({sum(duplicates.values())} copies), "
                    f"{len(unacked_delivered)} delivered without an acknowledgement")
        if duplicates:
            harness.log(f"crash: duplicated: {sorted(duplicates.items())[:20]}")

        self.assertEqual(broken, [], "partial or corrupt messages reached the sink")
        self.assertNotIn(None, delivered, "a message without our Message-ID reached the sink")
        self.assertTrue(ok and not missing,
                        f"{len(missing)} acknowledged messages never arrived, e.g. "
                        f"{missing[:10]}\n{daemon.log_text()}")
        self.assertEqual(sink.errors(), [])
        daemon.stop()


if __name__ == "__main__":
    unittest.main()
