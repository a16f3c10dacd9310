"""PROXY protocol behind a real HAProxy (Debian's haproxy, started here on loopback).

HAProxy forwards to ringmaild's proxy_protocol listeners with send-proxy (v1) and
send-proxy-v2; the client binds to 127.0.0.7, and relay.allow_networks trusts 127.0.0.7 only,
so a relayed RCPT proves that the relay decision saw the client, not the balancer (127.0.0.1).
The Received header must name 127.0.0.7 too. Also: an untrusted source that sends a PROXY
header directly is closed without a greeting; a trusted one that sends garbage or nothing is
closed without a greeting; v2 LOCAL keeps the balancer's address; a header coalesced with
the first SMTP command or the TLS ClientHello works; smtps (implicit TLS) and STARTTLS behind
PROXY. Certificates come from the openssl CLI, the users file from `ringmailctl passwd`."""

import os
import socket
import ssl
import struct
import unittest
import uuid

import harness
from test_tls_auth import PASSWORD, USER, client_context, make_cert, make_users, plain_b64

CLIENT = "127.0.0.7"
OTHER_CLIENT = "127.0.0.8"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_local() -> bytes:
    return V2_SIG + bytes([0x20, 0x00, 0, 0])


def v2_tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body


class Client(harness.RawSmtp):
    """RawSmtp from a chosen source address."""

    def __init__(self, port: int, source: str = CLIENT, timeout: float = 15) -> None:
        self.sock = socket.create_connection((harness.LOOPBACK, port),
                                             timeout=harness.scaled(timeout),
                                             source_address=(source, 0))
        self.buf = b""

    def starttls(self) -> None:
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        self.sock = client_context().wrap_socket(self.sock)

    def closed_without_a_byte(self) -> bool:
        """True when the server closes (or resets) without sending anything."""
        try:
            data = self.sock.recv(512)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return data == b""


class MemoryTls:
    """A TLS client over a socket through memory BIOs, so that the first bytes sent (a PROXY
    header) can share one segment with the ClientHello."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = client_context().wrap_bio(self.inc, self.out, server_hostname="ringmail.test")
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.sock.sendall(prefix + self.out.read())  # header + ClientHello in one send
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()
        self.buf = b""

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed during TLS")
        self.inc.write(data)

    def read_reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    self.buf += self.obj.read(65536)
                except ssl.SSLWantReadError:
                    self._flush()
                    self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.obj.write(line.encode() + b"\r\n")
        self._flush()
        return self.read_reply()


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = harness.temp_dir()
        cls.cert, cls.key = make_cert(cls.dir, "proxy", "ringmail.test")
        cls.users = make_users(cls.dir)
        cls.sink = harness.SmtpSink()
        cls.plain_port = harness.free_port()
        cls.relay_port = harness.free_port()
        cls.smtps_port = harness.free_port()
        tls = {"tls_cert": cls.cert, "tls_key": cls.key}
        proxied = {"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"], **tls}
        config = harness.make_config(
            os.path.join(cls.dir, "spool"), cls.plain_port, cls.sink.smarthost,
            allow_networks=[f"{CLIENT}/32"],
            extra_listen=[
                {"address": f"{harness.LOOPBACK}:{cls.relay_port}", "role": "relay", **proxied},
                {"address": f"{harness.LOOPBACK}:{cls.smtps_port}", "role": "smtps", **proxied},
            ],
            shards=1,
            auth={"users_file": cls.users, "max_failures": 2},
        )
        os.makedirs(config["server"]["spool_dir"], exist_ok=True)
        cls.daemon = harness.Ringmaild(config)
        cls.daemon.start()
        cls.fe_v1 = harness.free_port()
        cls.fe_v2 = harness.free_port()
        cls.fe_smtps_v1 = harness.free_port()
        cls.fe_smtps_v2 = harness.free_port()
        relay = f"{harness.LOOPBACK}:{cls.relay_port}"
        smtps = f"{harness.LOOPBACK}:{cls.smtps_port}"
        try:
            cls.haproxy = harness.Haproxy([
                (cls.fe_v1, relay, "send-proxy"),
                (cls.fe_v2, relay, "send-proxy-v2"),
                (cls.fe_smtps_v1, smtps, "send-proxy"),
                (cls.fe_smtps_v2, smtps, "send-proxy-v2"),
            ])
        except BaseException:
            cls.daemon.kill()
            cls.sink.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.haproxy.close()
            cls.daemon.stop()
        finally:
            cls.daemon.kill()
            cls.sink.close()

    def wait_message(self, marker: bytes) -> harness.Transaction:
        ok = self.sink.wait_until(lambda ts: any(marker in t.content for t in ts),
                                  harness.scaled(30))
        self.assertTrue(ok, "not delivered:\n" + self.daemon.log_text())
        return next(t for t in self.sink.transactions() if marker in t.content)

    @staticmethod
    def received(t: harness.Transaction) -> bytes:
        end = t.content.find(b"\r\n", 0)
        while t.content[end + 2:end + 3] in (b"\t", b" "):
            end = t.content.find(b"\r\n", end + 2)
        return t.content[:end]

    def send_message(self, c, marker: str, rcpt: str = "someone@elsewhere.test") -> None:
        self.assertEqual(c.cmd("MAIL FROM:<sender@proxy.test>")[0], 250)
        code, text = c.cmd(f"RCPT TO:<{rcpt}>")
        self.assertEqual(code, 250, text)
        self.assertEqual(c.cmd("DATA")[0], 354)
        code, text = c.cmd(f"Subject: {marker}\r\nMessage-ID: <{marker}@proxy.test>\r\n\r\n"
                           f"{marker}\r\n.")
        self.assertEqual(code, 250, text)

    # --- HAProxy send-proxy and send-proxy-v2 in front of the relay listener ---------------

    def test_haproxy_v1_and_v2_client_address_decides_relay_and_received(self):
        for name, port in (("send-proxy", self.fe_v1), ("send-proxy-v2", self.fe_v2)):
            with self.subTest(name):
                marker = f"via-{name}-{uuid.uuid4().hex[:8]}"
                with Client(port) as c:
                    code, text = c.read_reply()
                    self.assertEqual(code, 220, text)
                    self.assertEqual(c.cmd("EHLO client.test")[0], 250)
                    # Only 127.0.0.7 may relay: the balancer (127.0.0.1) may not.
                    self.send_message(c, marker)
                    c.cmd("QUIT")
                t = self.wait_message(marker.encode())
                self.assertIn(f"([{CLIENT}])".encode(), self.received(t))
                # Another client through the same balancer is not trusted to relay.
                with Client(port, source=OTHER_CLIENT) as c:
                    self.assertEqual(c.read_reply()[0], 220)
                    self.assertEqual(c.cmd("EHLO other.test")[0], 250)
                    self.assertEqual(c.cmd("MAIL FROM:<x@proxy.test>")[0], 250)
                    code, text = c.cmd("RCPT TO:<someone@elsewhere.test>")
                    self.assertEqual(code, 554, text)
        log = self.daemon.log_text()
        self.assertIn(f"client {CLIENT}:", log)
        self.assertIn("(PROXY v1)", log)
        self.assertIn("(PROXY v2)", log)

    # --- sources and headers that are refused ----------------------------------------------

    def test_untrusted_direct_proxy_header_is_refused_without_greeting(self):
        # 127.0.0.7 is not in trusted_proxies: it cannot choose its own address.
        with Client(self.relay_port, source=CLIENT) as c:
            try:
                c.send(b"PROXY TCP4 127.0.0.7 127.0.0.1 1234 25\r\n")
            except OSError:
                pass
            self.assertTrue(c.closed_without_a_byte())
        with Client(self.relay_port, source=CLIENT) as c:
            try:
                c.send(v2_tcp4(CLIENT, "127.0.0.1", 1234, 25))
            except OSError:
                pass
            self.assertTrue(c.closed_without_a_byte())
        self.assertTrue(harness.wait_until(
            lambda: "not in trusted_proxies" in self.daemon.log_text(), harness.scaled(10)),
            self.daemon.log_text())

    def test_trusted_source_without_a_valid_header_gets_no_greeting(self):
        with Client(self.relay_port, source=harness.LOOPBACK) as c:
            c.send(b"EHLO no-header.test\r\n")
            self.assertTrue(c.closed_without_a_byte())
        with Client(self.relay_port, source=harness.LOOPBACK) as c:
            c.send(b"PROXY TCP4 300.1.1.1 127.0.0.1 1 25\r\n")
            self.assertTrue(c.closed_without_a_byte())
        # Silence: closed after the header timeout (5 s), still without a greeting.
        with Client(self.relay_port, source=harness.LOOPBACK, timeout=30) as c:
            self.assertTrue(c.closed_without_a_byte())
        log = self.daemon.log_text()
        self.assertIn("no valid PROXY header (not a PROXY protocol header)", log)
        self.assertIn("no valid PROXY header (none within 5 s)", log)

    # --- hand-made headers from the trusted balancer address -------------------------------

    def test_v2_local_keeps_the_balancer_address(self):
        with Client(self.relay_port, source=harness.LOOPBACK) as c:
            c.send(v2_local())
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO health.test")[0], 250)
            self.assertEqual(c.cmd("MAIL FROM:<x@proxy.test>")[0], 250)
            # 127.0.0.1 itself may not relay.
            self.assertEqual(c.cmd("RCPT TO:<someone@elsewhere.test>")[0], 554)
        self.assertIn("PROXY v2 LOCAL from 127.0.0.1", self.daemon.log_text())

    def test_header_and_first_command_in_one_segment_and_tcp6(self):
        marker = f"coalesced-{uuid.uuid4().hex[:8]}"
        with Client(self.relay_port, source=harness.LOOPBACK) as c:
            c.send(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\nEHLO v6.test\r\n")
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.read_reply()[0], 250)
            self.assertEqual(c.cmd("MAIL FROM:<x@proxy.test>")[0], 250)
            # 2001:db8::7 may not relay; a local domain is not configured either.
            self.assertEqual(c.cmd("RCPT TO:<someone@elsewhere.test>")[0], 554)
        with Client(self.relay_port, source=harness.LOOPBACK) as c:
            c.send(v2_tcp4(CLIENT, "127.0.0.1", 40001, 25) + b"EHLO v4.test\r\n")
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.read_reply()[0], 250)
            self.send_message(c, marker)
        t = self.wait_message(marker.encode())
        self.assertIn(f"([{CLIENT}])".encode(), self.received(t))
        self.assertIn("client [2001:db8::7]:40000 via 127.0.0.1", self.daemon.log_text())

    def test_auth_failure_limit_counts_the_client_not_the_balancer(self):
        # max_failures = 2 (one shard): 127.0.0.8's third attempt is refused; 127.0.0.7,
        # through the same balancer address, still authenticates.
        with Client(self.fe_v2, source=OTHER_CLIENT) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO guesser.test")[0], 250)
            c.starttls()
            self.assertEqual(c.cmd("EHLO guesser.test")[0], 250)
            for _ in range(2):
                code, text = c.cmd(f"AUTH PLAIN {plain_b64(USER, 'wrong')}")
                self.assertEqual(code, 535, text)
            code, text = c.cmd(f"AUTH PLAIN {plain_b64(USER, PASSWORD)}")
            self.assertEqual(code, 421, text)
        with Client(self.fe_v2, source=CLIENT) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO good.test")[0], 250)
            c.starttls()
            self.assertEqual(c.cmd("EHLO good.test")[0], 250)
            code, text = c.cmd(f"AUTH PLAIN {plain_b64(USER, PASSWORD)}")
            self.assertEqual(code, 235, text)
        self.assertIn(f"from {OTHER_CLIENT}:", self.daemon.log_text())

    # --- TLS behind the balancer -----------------------------------------------------------

    def test_starttls_behind_haproxy(self):
        marker = f"starttls-{uuid.uuid4().hex[:8]}"
        with Client(self.fe_v2) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO tls.test")[0], 250)
            c.starttls()
            code, text = c.cmd("EHLO tls.test")
            self.assertEqual(code, 250, text)
            self.send_message(c, marker)
            c.cmd("QUIT")
        r = self.received(self.wait_message(marker.encode()))
        self.assertIn(f"([{CLIENT}])".encode(), r)
        self.assertIn(b"with ESMTPS", r)

    def test_smtps_behind_haproxy(self):
        for name, port in (("send-proxy", self.fe_smtps_v1), ("send-proxy-v2", self.fe_smtps_v2)):
            with self.subTest(name):
                marker = f"smtps-{name}-{uuid.uuid4().hex[:8]}"
                with Client(port) as c:
                    c.sock = client_context().wrap_socket(c.sock, server_hostname="ringmail.test")
                    self.assertEqual(c.read_reply()[0], 220)
                    self.assertEqual(c.cmd("EHLO smtps.test")[0], 250)
                    code, text = c.cmd(f"AUTH PLAIN {plain_b64(USER, PASSWORD)}")
                    self.assertEqual(code, 235, text)
                    self.send_message(c, marker)
                    c.cmd("QUIT")
                r = self.received(self.wait_message(marker.encode()))
                self.assertIn(f"([{CLIENT}])".encode(), r)
                self.assertIn(b"with ESMTPSA", r)

    def test_smtps_header_and_client_hello_in_one_segment(self):
        marker = f"smtps-coalesced-{uuid.uuid4().hex[:8]}"
        sock = socket.create_connection((harness.LOOPBACK, self.smtps_port),
                                        timeout=harness.scaled(15),
                                        source_address=(harness.LOOPBACK, 0))
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = MemoryTls(sock, v2_tcp4(CLIENT, "127.0.0.1", 40002, 465))
            self.assertEqual(t.read_reply()[0], 220)
            self.assertEqual(t.cmd("EHLO coalesced.test")[0], 250)
            self.assertEqual(t.cmd(f"AUTH PLAIN {plain_b64(USER, PASSWORD)}")[0], 235)
            self.send_message(t, marker)
        r = self.received(self.wait_message(marker.encode()))
        self.assertIn(f"([{CLIENT}])".encode(), r)


if __name__ == "__main__":
    unittest.main()
