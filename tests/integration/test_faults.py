"""Fault injection on delivery (issue 12): the receiving server misbehaves, one fault per
connection, in turn:

  - resets the connection after its 354 (in the middle of the body);
  - takes the whole message but never answers the final dot (until delivery.data_timeout);
  - greets with garbage; answers the final dot with garbage;
  - closes after accepting RCPT (the pipelined DATA is never answered);
  - answers 250 to the final dot and then resets the connection.

Once the faults are used up it behaves. Every message must then be delivered: none lost, none
partial (every copy the server accepted is the whole message), and a message may arrive twice
only where the server did answer 250 (the reset may keep ringmaild from reading that 250):
those duplicates are counted and asserted. No fault may turn into a bounce."""

import os
import smtplib
import socket
import struct
import threading
import unittest

import harness

FAULTS = [
    "reset_after_354",
    "silent_after_dot",
    "garbage_greeting",
    "garbage_after_dot",
    "close_after_rcpt",
    "reset_after_250",
]
MESSAGES = 8
DELIVERY_TIMEOUT = harness.scaled(90)


class FaultSink:
    """A lock-step-or-pipelined SMTP server on loopback whose first connections each play one
    fault of `faults`; later connections are served normally. Records every message body it
    read to the end (answered with 250 or not)."""

    def __init__(self, faults: list[str]) -> None:
        self._faults = list(faults)
        self.used: list[str] = []
        self.received: list[tuple[bytes, bool, str]] = []  # (content, answered 250, fault)
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((harness.LOOPBACK, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    @property
    def smarthost(self) -> str:
        return f"{harness.LOOPBACK}:{self.port}"

    def accepted(self) -> list[bytes]:
        with self._cond:
            return [c for c, ok, _ in self.received if ok]

    def wait_until(self, predicate, timeout: float) -> bool:
        return harness.wait_until(lambda: predicate(self), timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            conns = list(self._conns)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                if self._stopping:
                    conn.close()
                    return
                fault = self._faults.pop(0) if self._faults else ""
                if fault:
                    self.used.append(fault)
                self._conns.add(conn)
                t = threading.Thread(target=self._serve, args=(conn, fault), daemon=True)
                self._threads.append(t)
            t.start()

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        # SO_LINGER 0: close sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _record(self, raw: bytes, answered: bool, fault: str) -> None:
        with self._cond:
            self.received.append((harness.unstuff(raw), answered, fault))
            self._cond.notify_all()

    def _serve(self, conn: socket.socket, fault: str) -> None:
        conn.settimeout(harness.scaled(60))
        buf = bytearray()
        reset = False

        def lines():
            """Complete command lines in buf (blocking for more when none)."""
            while True:
                end = buf.find(b"\r\n")
                if end >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 2]
                    return line
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buf.extend(chunk)

        try:
            if fault == "garbage_greeting":
                conn.sendall(b"hello?? \x00\xff this is not SMTP\r\n")
                while conn.recv(65536):
                    pass
                return
            conn.sendall(b"220 faults.test ESMTP\r\n")
            in_mail = False
            while True:
                line = lines()
                if line is None:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-faults.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                 b"250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"MAIL":
                    in_mail = True
                    conn.sendall(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    conn.sendall(b"250 2.1.5 ok\r\n")
                    if fault == "close_after_rcpt":
                        conn.close()
                        return
                elif verb == b"DATA" and in_mail:
                    conn.sendall(b"354 go ahead\r\n")
                    if fault == "reset_after_354":
                        conn.recv(100)  # the first bytes of the body, then the reset
                        self._reset(conn)
                        reset = True
                        return
                    raw = harness.SmtpSink._read_data(conn, buf)
                    if raw is None:
                        return
                    in_mail = False
                    if fault == "silent_after_dot":
                        self._record(raw, False, fault)
                        while conn.recv(65536):  # until ringmaild gives up (data_timeout)
                            pass
                        return
                    if fault == "garbage_after_dot":
                        self._record(raw, False, fault)
                        conn.sendall(b"OK then, thanks!\r\n")
                        while conn.recv(65536):
                            pass
                        return
                    self._record(raw, True, fault)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                    if fault == "reset_after_250":
                        self._reset(conn)
                        reset = True
                        return
                elif verb == b"RSET":
                    in_mail = False
                    conn.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"NOOP":
                    conn.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 unknown command\r\n")
        except OSError:
            return
        except Exception as e:  # a bug in the test server must show
            with self._cond:
                self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            with self._cond:
                self._conns.discard(conn)
            if not reset:
                try:
                    conn.close()
                except OSError:
                    pass


def message(i: int) -> bytes:
    # Big enough that a reset after 354 lands mid-body.
    body = b"".join(b"line %05d of message %d, padding padding padding\r\n" % (n, i)
                    for n in range(2000))
    return (b"Subject: fault %d\r\nMessage-ID: <fault-%d@x.test>\r\n\r\n" % (i, i)) + body


def message_id(content: bytes) -> int | None:
    marker = b"Message-ID: <fault-"
    at = content.find(marker)
    if at < 0:
        return None
    return int(content[at + len(marker):content.index(b"@", at)])


class DeliveryFaultTest(unittest.TestCase):
    def test_every_message_arrives_whole_through_the_faults(self):
        sink = FaultSink(FAULTS)
        daemon = harness.Ringmaild(
            smarthost=sink.smarthost,
            shards=2,
            retry_schedule=["1s"],
            delivery_options={"data_timeout": "2s", "connect_timeout": "5s",
                              "max_connections": 2})
        try:
            daemon.start()
            for i in range(MESSAGES):
                with smtplib.SMTP(harness.LOOPBACK, daemon.port,
                                  timeout=harness.scaled(30)) as s:
                    s.sendmail("sender@x.test", [f"rcpt{i}@y.test"], message(i))

            def all_there(k: FaultSink) -> bool:
                ids = {message_id(c) for c in k.accepted()}
                return ids >= set(range(MESSAGES)) and not k._faults
            ok = sink.wait_until(all_there, DELIVERY_TIMEOUT)
            # Room for late duplicates (there must be none beyond the counted ones).
            harness.wait_until(lambda: False, harness.scaled(3))
            log = daemon.log_text()
            self.assertEqual(sink.errors, [])
            self.assertTrue(ok, f"faults used {sink.used}; delivered "
                                f"{sorted(message_id(c) for c in sink.accepted())}:\n{log}")
            self.assertEqual(sink.used, FAULTS, "not every fault was played")

            # None partial: every copy the server accepted is the whole message.
            accepted = sink.accepted()
            for content in accepted:
                i = message_id(content)
                self.assertIsNotNone(i, content[:200])
                self.assertTrue(content.endswith(message(i)), f"message {i} arrived partial")
            # Duplicates only where the server had answered 250 and then reset.
            with sink._cond:
                answered_then_reset = {message_id(c) for c, ok, f in sink.received
                                       if ok and f == "reset_after_250"}
            counts = {i: sum(1 for c in accepted if message_id(c) == i) for i in range(MESSAGES)}
            duplicates = {i: n - 1 for i, n in counts.items() if n > 1}
            print(f"faults played: {sink.used}; duplicates: {sum(duplicates.values())} "
                  f"{duplicates}")
            self.assertLessEqual(set(duplicates), answered_then_reset, duplicates)
            self.assertLessEqual(sum(duplicates.values()), len(answered_then_reset))
            # A fault is a deferral, never a bounce (no DSN went out) and never lost mail.
            self.assertNotIn("status=bounced", log)
            self.assertNotIn("status=expired", log)
            self.assertIn("status=deferred", log)
            if os.environ.get("FAULTS_VERBOSE"):
                print("\n".join(l for l in log.splitlines() if "deferred" in l or "warn" in l))
            daemon.stop()
        finally:
            daemon.kill()
            sink.close()


if __name__ == "__main__":
    unittest.main()
