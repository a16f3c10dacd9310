"""Inbound TLS and AUTH: STARTTLS and implicit TLS (smtps), AUTH PLAIN/LOGIN against a users
file, the submission rules, STARTTLS command injection, the failed-AUTH limiter, bad
handshakes, SIGHUP certificate reload and --check-config with a missing certificate.

Certificates are made at test time with the openssl CLI, the users file with
`ringmailctl passwd` ($RINGMAILCTL)."""

import base64
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import unittest

import harness

USER = "alice"
PASSWORD = "s3cret pass"


def make_cert(directory: str, name: str, cn: str) -> tuple[str, str]:
    cert = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn}"],
        check=True, capture_output=True, timeout=harness.scaled(30))
    return cert, key


def make_users(directory: str) -> str:
    ctl = os.environ.get("RINGMAILCTL")
    if not ctl:
        raise unittest.SkipTest("RINGMAILCTL is not set (run through meson test)")
    p = subprocess.run([ctl, "passwd", USER], input=PASSWORD.encode(), capture_output=True,
                       check=True, timeout=harness.scaled(30))
    path = os.path.join(directory, "users")
    with open(path, "wb") as f:
        f.write(p.stdout)
    return path


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def plain_b64(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Raw(harness.RawSmtp):
    """RawSmtp with a chosen source address (the AUTH limiter keys on the client IP)."""

    def __init__(self, port: int, source: str = harness.LOOPBACK, timeout: float = 10) -> None:
        self.sock = socket.create_connection((harness.LOOPBACK, port),
                                             timeout=harness.scaled(timeout),
                                             source_address=(source, 0))
        self.buf = b""

    def starttls(self) -> None:
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        assert not self.buf, self.buf
        self.sock = client_context().wrap_socket(self.sock)


class TlsAuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = harness.temp_dir()
        cls.cert, cls.key = make_cert(cls.dir, "a", "ringmail.test")
        cls.users = make_users(cls.dir)
        cls.sink = harness.SmtpSink()
        cls.relay_port = harness.free_port()
        cls.submission_port = harness.free_port()
        cls.smtps_port = harness.free_port()
        tls = {"tls_cert": cls.cert, "tls_key": cls.key}
        config = harness.make_config(
            os.path.join(harness.temp_dir(), "spool"), cls.relay_port, cls.sink.smarthost,
            listen_options=dict(tls),
            extra_listen=[
                {"address": f"{harness.LOOPBACK}:{cls.submission_port}", "role": "submission",
                 **tls},
                {"address": f"{harness.LOOPBACK}:{cls.smtps_port}", "role": "smtps", **tls},
            ],
            auth={"users_file": cls.users, "max_failures": 3, "failure_window": "5m"},
        )
        cls.daemon = harness.Ringmaild(config)
        os.makedirs(config["server"]["spool_dir"], exist_ok=True)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
        finally:
            cls.daemon.kill()
            cls.sink.close()

    def wait_message(self, marker: bytes) -> harness.Transaction:
        ok = self.sink.wait_until(lambda ts: any(marker in t.content for t in ts),
                                  harness.scaled(30))
        self.assertTrue(ok, self.daemon.log_text())
        return next(t for t in self.sink.transactions() if marker in t.content)

    def received(self, t: harness.Transaction) -> bytes:
        # The first header, with its folded continuation lines.
        end = t.content.find(b"\r\n", 0)
        while t.content[end + 2:end + 3] in (b"\t", b" "):
            end = t.content.find(b"\r\n", end + 2)
        return t.content[:end]

    # --- STARTTLS, AUTH, submission ------------------------------------------------------

    def test_starttls_login_sendmail(self):
        with smtplib.SMTP(harness.LOOPBACK, self.submission_port,
                          timeout=harness.scaled(20)) as s:
            s.ehlo("client.test")
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"), "AUTH offered before TLS")
            s.starttls(context=client_context())
            s.ehlo("client.test")
            self.assertIn("PLAIN", s.esmtp_features.get("auth", "").upper())
            self.assertIn("LOGIN", s.esmtp_features.get("auth", "").upper())
            self.assertNotIn("CRAM-MD5", s.esmtp_features.get("auth", "").upper(),
                             "CRAM-MD5 offered without a CRAM-MD5 entry in the users file")
            s.login(USER, PASSWORD)
            s.sendmail("sender@x.test", ["rcpt@y.test"],
                       b"Subject: tls\r\nMessage-Id: <tls-1@x.test>\r\n\r\nover TLS\r\n")
        t = self.wait_message(b"<tls-1@x.test>")
        received = self.received(t)
        self.assertIn(b"with ESMTPSA", received)
        self.assertIn(b"TLSv1.", received)
        self.assertNotIn(USER.encode(), received)

    def test_smtps_login_sendmail(self):
        with smtplib.SMTP_SSL(harness.LOOPBACK, self.smtps_port, timeout=harness.scaled(20),
                              context=client_context()) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("starttls"))
            s.login(USER, PASSWORD)
            s.sendmail("sender@x.test", ["rcpt@y.test"],
                       b"Subject: smtps\r\nMessage-Id: <smtps-1@x.test>\r\n\r\nimplicit\r\n")
        t = self.wait_message(b"<smtps-1@x.test>")
        self.assertIn(b"with ESMTPSA", self.received(t))

    def test_swaks_auth_login_and_plain(self):
        for mech in ("LOGIN", "PLAIN"):
            with self.subTest(mech):
                marker = f"<swaks-{mech}@x.test>"
                p = subprocess.run(
                    [harness.SWAKS, "--server", f"{harness.LOOPBACK}:{self.submission_port}",
                     "-tls", "--auth", mech, "--auth-user", USER, "--auth-password", PASSWORD,
                     "--ehlo", "swaks.test", "--from", "sender@x.test", "--to", "rcpt@y.test",
                     "--header", f"Message-Id: {marker}", "--body", "swaks auth\n"],
                    capture_output=True, timeout=harness.scaled(30))
                self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace"))
                t = self.wait_message(marker.encode())
                self.assertIn(b"with ESMTPSA", self.received(t))

    def test_auth_before_tls_is_538(self):
        with Raw(self.submission_port) as c:
            self.assertEqual(c.read_reply()[0], 220)
            code, text = c.cmd("EHLO client.test")
            self.assertEqual(code, 250)
            self.assertNotIn("AUTH", text)
            self.assertEqual(c.cmd("AUTH PLAIN " + plain_b64(USER, PASSWORD))[0], 538)

    def test_submission_requires_auth(self):
        with smtplib.SMTP(harness.LOOPBACK, self.submission_port,
                          timeout=harness.scaled(20)) as s:
            s.starttls(context=client_context())
            s.ehlo("client.test")
            self.assertEqual(s.mail("sender@x.test")[0], 530)

    def test_relay_listener_starttls_without_auth(self):
        # Loopback may relay on the relay listener; inside TLS the protocol is ESMTPS.
        with smtplib.SMTP(harness.LOOPBACK, self.relay_port, timeout=harness.scaled(20)) as s:
            s.starttls(context=client_context())
            s.sendmail("sender@x.test", ["rcpt@y.test"],
                       b"Subject: relay\r\nMessage-Id: <relay-tls@x.test>\r\n\r\nrelay\r\n")
        t = self.wait_message(b"<relay-tls@x.test>")
        self.assertIn(b"with ESMTPS ", self.received(t))

    # --- attacks and failures ------------------------------------------------------------

    def test_starttls_injection_is_not_executed(self):
        with Raw(self.relay_port) as c:
            self.assertEqual(c.read_reply()[0], 220)
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            c.send(b"STARTTLS\r\nMAIL FROM:<x@y.test>\r\n")
            code, text = c.read_reply()
            self.assertEqual(code, 220, text)
            self.assertEqual(c.buf, b"", "a reply to the injected command came in plaintext")
            c.sock = client_context().wrap_socket(c.sock)
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            code, text = c.cmd("RCPT TO:<rcpt@y.test>")
            self.assertEqual(code, 503, f"the injected MAIL was executed: {text}")
            self.assertEqual(c.cmd("QUIT")[0], 221)

    def test_wrong_password_then_limiter(self):
        # From 127.0.0.2, so the block does not hit the other tests (it keys on the IP).
        with Raw(self.submission_port, source="127.0.0.2") as c:
            self.assertEqual(c.read_reply()[0], 220)
            c.cmd("EHLO client.test")
            c.starttls()
            c.cmd("EHLO client.test")
            for i in range(3):
                code, text = c.cmd("AUTH PLAIN " + plain_b64(USER, f"wrong{i}"))
                self.assertEqual(code, 535, text)
                self.assertIn("5.7.8", text)
            code, text = c.cmd("AUTH PLAIN " + plain_b64(USER, PASSWORD))
            self.assertEqual(code, 421, text)
            self.assertIn("4.7.0", text)
            with self.assertRaises((ConnectionError, OSError)):
                c.cmd("NOOP")

    def shard_of(self, port: int) -> str | None:
        """The shard that logged the connection from 127.0.0.3:port."""
        m = re.search(rf"shard=(\d+) info: connect from 127\.0\.0\.3:{port} ",
                      self.daemon.log_text())
        return m.group(1) if m else None

    def auth_once(self, password: str) -> tuple[int, str, str | None]:
        """One connection from 127.0.0.3 with one AUTH PLAIN: (code, text, shard)."""
        with Raw(self.submission_port, source="127.0.0.3") as c:
            port = c.sock.getsockname()[1]
            self.assertEqual(c.read_reply()[0], 220)
            c.cmd("EHLO client.test")
            c.starttls()
            c.cmd("EHLO client.test")
            code, text = c.cmd("AUTH PLAIN " + plain_b64(USER, password))
        harness.wait_until(lambda: self.shard_of(port) is not None, harness.scaled(5))
        return code, text, self.shard_of(port)

    def test_limiter_counts_all_shards_together(self):
        # Issue 12: one limit per address for the daemon, not per shard. Each failure on its
        # own connection (SO_REUSEPORT spreads them over the 2 shards); after max_failures (3)
        # the right password is refused on every shard.
        failed_on = set()
        for i in range(3):
            code, text, shard = self.auth_once(f"wrong{i}")
            self.assertEqual(code, 535, text)
            failed_on.add(shard)
        refused_on = set()
        tries = 0
        while refused_on != {"0", "1"} or tries < 6:
            self.assertLess(tries, 40, f"the connections landed on shards {refused_on} only")
            code, text, shard = self.auth_once(PASSWORD)
            self.assertEqual(code, 421, f"right password accepted on shard {shard} after the "
                             f"lockout (failures on shards {failed_on}): {text}")
            self.assertIn("4.7.0", text)
            refused_on.add(shard)
            tries += 1
        # Another address is not affected.
        with smtplib.SMTP(harness.LOOPBACK, self.submission_port,
                          timeout=harness.scaled(20)) as s:
            s.starttls(context=client_context())
            s.login(USER, PASSWORD)

    def test_smtps_garbage_closes_that_connection_only(self):
        with socket.create_connection((harness.LOOPBACK, self.smtps_port),
                                      timeout=harness.scaled(10)) as s:
            s.sendall(b"EHLO this is not a ClientHello\r\n" * 4)
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
                self.assertLess(len(data), 4096)
            self.assertFalse(data.startswith(b"220"), data)
        with smtplib.SMTP_SSL(harness.LOOPBACK, self.smtps_port, timeout=harness.scaled(20),
                              context=client_context()) as s:
            self.assertEqual(s.noop()[0], 250)
        self.assertTrue(harness.wait_until(
            lambda: "TLS handshake failed" in self.daemon.log_text(), harness.scaled(10)))


class ReloadTest(unittest.TestCase):
    def test_sighup_new_certificate(self):
        d = harness.temp_dir()
        cert_a, key_a = make_cert(d, "a", "old.ringmail.test")
        cert_b, key_b = make_cert(d, "b", "new.ringmail.test")
        live_cert, live_key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
        shutil.copy(cert_a, live_cert)
        shutil.copy(key_a, live_key)
        users = make_users(d)
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        port = harness.free_port()
        smtps = harness.free_port()
        config = harness.make_config(
            os.path.join(d, "spool"), port, sink.smarthost,
            listen_options={"tls_cert": live_cert, "tls_key": live_key},
            extra_listen=[{"address": f"{harness.LOOPBACK}:{smtps}", "role": "smtps",
                           "tls_cert": live_cert, "tls_key": live_key}],
            auth={"users_file": users})
        os.makedirs(config["server"]["spool_dir"], exist_ok=True)
        daemon = harness.Ringmaild(config, workdir=d)
        self.addCleanup(daemon.kill)
        daemon.start()

        def peer_cert(p: int) -> bytes:
            with smtplib.SMTP_SSL(harness.LOOPBACK, p, timeout=harness.scaled(20),
                                  context=client_context()) as s:
                return s.sock.getpeercert(binary_form=True)

        def pem_der(path: str) -> bytes:
            with open(path, encoding="ascii") as f:
                return ssl.PEM_cert_to_DER_cert(f.read())

        self.assertEqual(peer_cert(smtps), pem_der(cert_a))
        # A session opened before the reload keeps working after it.
        old = smtplib.SMTP(harness.LOOPBACK, port, timeout=harness.scaled(20))
        self.addCleanup(old.close)
        old.starttls(context=client_context())
        self.assertEqual(old.sock.getpeercert(binary_form=True), pem_der(cert_a))

        # A broken file: the reload fails, the old certificate stays.
        with open(live_key, "w", encoding="ascii") as f:
            f.write("not a key\n")
        daemon.signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(
            lambda: "certificates not reloaded" in daemon.log_text(), harness.scaled(10)),
            daemon.log_text())
        self.assertEqual(peer_cert(smtps), pem_der(cert_a))

        shutil.copy(cert_b, live_cert)
        shutil.copy(key_b, live_key)
        daemon.signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(
            lambda: "certificates reloaded" in daemon.log_text(), harness.scaled(10)),
            daemon.log_text())
        self.assertTrue(harness.wait_until(lambda: peer_cert(smtps) == pem_der(cert_b),
                                           harness.scaled(10)), daemon.log_text())

        old.sendmail("sender@x.test", ["rcpt@y.test"],
                     b"Subject: old\r\nMessage-Id: <old-session@x.test>\r\n\r\nstill here\r\n")
        old.quit()
        ok = sink.wait_until(lambda ts: any(b"<old-session@x.test>" in t.content for t in ts),
                             harness.scaled(30))
        self.assertTrue(ok, daemon.log_text())
        daemon.stop()


class StartupTest(unittest.TestCase):
    def test_missing_certificate(self):
        d = harness.temp_dir()
        missing = os.path.join(d, "no-such-cert.pem")
        cert, key = make_cert(d, "a", "ringmail.test")
        config = harness.make_config(os.path.join(d, "spool"), harness.free_port(),
                                     "127.0.0.1:2526",
                                     listen_options={"tls_cert": missing, "tls_key": key})
        os.makedirs(config["server"]["spool_dir"], exist_ok=True)
        daemon = harness.Ringmaild(config, workdir=d)
        p = daemon.check_config()
        out = (p.stdout + p.stderr).decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn(missing, out)
        # Starting fails the same way, with the file named.
        p = subprocess.run([harness.ringmaild_path(), "--config", daemon.config_path],
                           capture_output=True, timeout=harness.scaled(20))
        out = (p.stdout + p.stderr).decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn(missing, out)
        # A key that does not match its certificate.
        _, other_key = make_cert(d, "b", "other.test")
        config["listen"][0].update({"tls_cert": cert, "tls_key": other_key})
        daemon = harness.Ringmaild(config, workdir=d)
        p = daemon.check_config()
        out = (p.stdout + p.stderr).decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn(other_key, out)



CRAM_USER = "tim"
CRAM_PASSWORD = "tanstaaftanstaaf"


class CramMd5Test(unittest.TestCase):
    """CRAM-MD5 (RFC 2195) for a user stored with `ringmailctl passwd --scheme cram-md5`,
    through smtplib's login() (which prefers CRAM-MD5 when offered) and swaks."""

    @classmethod
    def setUpClass(cls):
        ctl = os.environ.get("RINGMAILCTL")
        if not ctl:
            raise unittest.SkipTest("RINGMAILCTL is not set (run through meson test)")
        cls.dir = harness.temp_dir()
        cls.cert, cls.key = make_cert(cls.dir, "c", "ringmail.test")
        users = make_users(cls.dir)
        cram = subprocess.run([ctl, "passwd", CRAM_USER, "--scheme", "cram-md5"],
                              input=CRAM_PASSWORD.encode(), capture_output=True, check=True,
                              timeout=harness.scaled(30))
        with open(users, "ab") as f:
            f.write(cram.stdout)
        cls.sink = harness.SmtpSink()
        cls.port = harness.free_port()
        cls.submission_port = harness.free_port()
        tls = {"tls_cert": cls.cert, "tls_key": cls.key}
        config = harness.make_config(
            os.path.join(harness.temp_dir(), "spool"), cls.port, cls.sink.smarthost,
            listen_options=dict(tls),
            extra_listen=[{"address": f"{harness.LOOPBACK}:{cls.submission_port}",
                           "role": "submission", **tls}],
            auth={"users_file": users, "max_failures": 3, "failure_window": "5m"},
        )
        cls.daemon = harness.Ringmaild(config)
        os.makedirs(config["server"]["spool_dir"], exist_ok=True)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.daemon.stop()
        finally:
            cls.daemon.kill()
            cls.sink.close()

    def wait_message(self, marker: bytes) -> None:
        ok = self.sink.wait_until(lambda ts: any(marker in t.content for t in ts),
                                  harness.scaled(30))
        self.assertTrue(ok, self.daemon.log_text())

    def smtp(self, source: str = harness.LOOPBACK) -> smtplib.SMTP:
        # Failures count per client address: each test that fails on purpose has its own.
        s = smtplib.SMTP(harness.LOOPBACK, self.submission_port, timeout=harness.scaled(20),
                         source_address=(source, 0))
        s.ehlo("client.test")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        return s

    def test_smtplib_login_uses_cram_md5(self):
        with self.smtp() as s:
            mechs = s.esmtp_features.get("auth", "").upper().split()
            self.assertEqual(mechs, ["PLAIN", "LOGIN", "CRAM-MD5"])
            code, _ = s.login(CRAM_USER, CRAM_PASSWORD)  # smtplib tries CRAM-MD5 first
            self.assertEqual(code, 235)
            s.sendmail("sender@x.test", ["rcpt@y.test"],
                       b"Subject: cram\r\nMessage-Id: <cram-1@x.test>\r\n\r\ncram\r\n")
        self.wait_message(b"<cram-1@x.test>")
        self.assertIn("authenticated as tim", self.daemon.log_text())

    def test_smtplib_wrong_password(self):
        with self.smtp("127.0.0.5") as s:
            with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
                s.login(CRAM_USER, "wrong password")  # CRAM-MD5 first; PLAIN, LOGIN after it
            self.assertEqual(e.exception.smtp_code, 535)

    def test_swaks_cram_md5_good_and_bad(self):
        base = [harness.SWAKS, "--server", f"{harness.LOOPBACK}:{self.submission_port}", "-tls",
                "--auth", "CRAM-MD5", "--auth-user", CRAM_USER, "--ehlo", "swaks.test",
                "--from", "sender@x.test", "--to", "rcpt@y.test"]
        p = subprocess.run(base + ["--auth-password", CRAM_PASSWORD, "--header",
                                   "Message-Id: <swaks-cram@x.test>", "--body", "cram\n"],
                           capture_output=True, timeout=harness.scaled(30))
        self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace"))
        self.wait_message(b"<swaks-cram@x.test>")
        p = subprocess.run(base + ["--auth-password", "wrong", "--local-interface", "127.0.0.6"],
                           capture_output=True,
                           timeout=harness.scaled(30))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"535", p.stdout)

    def test_a_slow_hash_user_cannot_use_cram_md5_but_plain_works(self):
        with self.smtp("127.0.0.7") as s:
            s.user, s.password = USER, PASSWORD
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                s.auth("CRAM-MD5", s.auth_cram_md5, initial_response_ok=False)
            code, _ = s.auth("PLAIN", s.auth_plain)
            self.assertEqual(code, 235)

    def test_each_attempt_has_a_fresh_challenge_and_failures_are_limited(self):
        with Raw(self.submission_port, source="127.0.0.3") as c:
            self.assertEqual(c.read_reply()[0], 220)
            c.cmd("EHLO client.test")
            c.starttls()
            c.cmd("EHLO client.test")
            seen = set()
            for _ in range(3):
                code, text = c.cmd("AUTH CRAM-MD5")
                self.assertEqual(code, 334, text)
                challenge = base64.b64decode(text[4:].strip())
                self.assertRegex(challenge, rb"^<[0-9a-f]{24}\.\d+@[^>]+>$")
                self.assertNotIn(challenge, seen)
                seen.add(challenge)
                answer = base64.b64encode(f"{CRAM_USER} {'0' * 32}".encode()).decode()
                code, text = c.cmd(answer)
                self.assertEqual(code, 535, text)
            code, text = c.cmd("AUTH CRAM-MD5")
            self.assertEqual(code, 421, text)

    def test_initial_response_is_refused(self):
        with Raw(self.submission_port, source="127.0.0.4") as c:
            self.assertEqual(c.read_reply()[0], 220)
            c.cmd("EHLO client.test")
            c.starttls()
            c.cmd("EHLO client.test")
            code, text = c.cmd("AUTH CRAM-MD5 " + base64.b64encode(b"tim x").decode())
            self.assertEqual(code, 501, text)


if __name__ == "__main__":
    unittest.main()
