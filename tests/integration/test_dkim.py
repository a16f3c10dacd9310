"""DKIM signing end to end: messages relayed through ringmaild to the Python sink and verified
there by independent verifiers: dkimpy (Debian python3-dkim, run by the system Python through
dkim_verify.py, keys fetched as TXT records from the test's dnsmasq) and, for RSA, OpenDKIM
(`opendkim -t`, its keys from a TestPublicKeys file filled from the same dnsmasq answers).

Covers RSA, Ed25519 and both on one message, every canonicalization, the most specific domain,
the hard inputs (folded, long, duplicate and UTF-8 headers, empty bodies, trailing blank lines
and whitespace, dot-stuffed lines, BDAT without a final CRLF, a foreign DKIM-Signature),
over-signing, a tampered body, which messages are signed (trusted network or AUTH, never
mail accepted only for relay.domains), key rotation by SIGHUP under load, and bad keys at
start-up and in --check-config. Keys are made at test time with openssl, their DNS records
with `ringmailctl dkim-record` ($RINGMAILCTL)."""

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import unittest

import harness

SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-dkim lives
VERIFY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dkim_verify.py")
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
USER = "dkimuser"
PASSWORD = "dkim pass"


def ctl() -> str:
    path = os.environ.get("RINGMAILCTL")
    if not path:
        raise unittest.SkipTest("RINGMAILCTL is not set (run through meson test)")
    return path


def genkey(directory: str, name: str, alg: str, bits: int = 2048) -> str:
    path = os.path.join(directory, name + ".pem")
    args = ["openssl", "genpkey", "-out", path]
    if alg == "rsa":
        args += ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"]
    else:
        args += ["-algorithm", "ed25519"]
    subprocess.run(args, check=True, capture_output=True, timeout=harness.scaled(60))
    return path


def dkim_record(key: str, selector: str) -> str:
    """The TXT text `ringmailctl dkim-record` prints (its strings joined)."""
    p = subprocess.run([ctl(), "dkim-record", key, selector], capture_output=True, check=True,
                       timeout=harness.scaled(30))
    out = p.stdout.decode()
    assert out.startswith(f"{selector}._domainkey\tIN\tTXT\t( "), out
    return "".join(re.findall(r'"([^"]*)"', out))


def full_log(d: harness.Ringmaild) -> str:
    """The whole log of the daemon's current run (log_text() keeps only its tail)."""
    with open(d._log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def header_of(content: bytes, name: str) -> list[bytes]:
    head = content.split(b"\r\n\r\n", 1)[0]
    out = []
    for m in re.finditer(rb"(?im)^" + re.escape(name.encode()) + rb":(.*(?:\r\n[ \t].*)*)",
                         head):
        out.append(m.group(1))
    return out


class DkimTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
                [SYSTEM_PYTHON, "-c", "import dkim, dns"], capture_output=True).returncode != 0:
            raise unittest.SkipTest("python3-dkim is not installed")
        cls.dir = harness.temp_dir("ringmail-dkim-")
        k = cls.keys = {
            "rsa": genkey(cls.dir, "rsa", "rsa"),
            "ed": genkey(cls.dir, "ed", "ed25519"),
            "sub": genkey(cls.dir, "sub", "rsa"),
            "rot1": genkey(cls.dir, "rot1", "ed25519"),
            "rot2": genkey(cls.dir, "rot2", "ed25519"),
            "small": genkey(cls.dir, "small", "rsa", 1024),
            "tiny": genkey(cls.dir, "tiny", "rsa", 512),
        }
        cls.rot_path = os.path.join(cls.dir, "rot.pem")
        shutil.copy(k["rot1"], cls.rot_path)
        cls.records = {
            "rsa._domainkey.example.test": dkim_record(k["rsa"], "rsa"),
            "ed._domainkey.example.test": dkim_record(k["ed"], "ed"),
            "sub._domainkey.mail.example.test": dkim_record(k["sub"], "sub"),
            "eds._domainkey.ed.test": dkim_record(k["ed"], "eds"),
        }
        cls.rot1 = dkim_record(k["rot1"], "rot")
        cls.rot2 = dkim_record(k["rot2"], "rot")
        txt = list(cls.records.items())
        # A rotation under one selector publishes both keys while it happens.
        txt += [("rot._domainkey.rot.test", cls.rot1), ("rot._domainkey.rot.test", cls.rot2)]
        cls.dns = harness.Dnsmasq(txt=txt)
        cls.sink = harness.SmtpSink()
        cls.dkim_tables = [
            {"domain": "example.test", "selector": "rsa", "key_file": k["rsa"]},
            {"domain": "example.test", "selector": "ed", "key_file": k["ed"],
             "canonicalization": "simple/simple", "expire_after": "7d"},
            {"domain": "mail.example.test", "selector": "sub", "key_file": k["sub"],
             "canonicalization": "simple/relaxed", "over_sign": False},
            {"domain": "ed.test", "selector": "eds", "key_file": k["ed"],
             "canonicalization": "relaxed/simple"},
            {"domain": "rot.test", "selector": "rot", "key_file": cls.rot_path},
        ]
        cls.daemon = cls.make_daemon()
        cls.daemon.start()

    @classmethod
    def make_daemon(cls, tables=None, **kwargs) -> harness.Ringmaild:
        workdir = harness.temp_dir()
        port = harness.free_port()
        config = harness.make_config(os.path.join(workdir, "spool"), port,
                                     cls.sink.smarthost, **kwargs)
        config["dkim"] = tables if tables is not None else cls.dkim_tables
        return harness.Ringmaild(config, workdir=workdir)

    @classmethod
    def tearDownClass(cls):
        for name in ("daemon",):
            d = getattr(cls, name, None)
            if d is not None:
                d.stop()
        for name in ("sink", "dns"):
            o = getattr(cls, name, None)
            if o is not None:
                o.close()

    # -- helpers ---------------------------------------------------------------------

    def send(self, msg: bytes, *, port=None, mail_from="sender@example.test",
             options=(), login=False) -> None:
        with smtplib.SMTP(harness.LOOPBACK, port or self.daemon.port,
                          timeout=harness.scaled(30)) as s:
            s.ehlo("client.test")
            if login:
                s.login(USER, PASSWORD)
            s.sendmail(mail_from, ["rcpt@dest.test"], msg, mail_options=list(options))

    def delivered(self, tag: str, timeout: float = 30) -> bytes:
        """The content of the message whose X-Test header is `tag`, once at the sink."""
        found: list[bytes] = []

        def pick(ts):
            for t in ts:
                if re.search(rb"(?m)^X-Test: " + re.escape(tag.encode()) + rb"\r$", t.content):
                    found.append(t.content)
                    return True
            return False

        self.assertTrue(self.sink.wait_until(pick, harness.scaled(timeout)),
                        f"message {tag} not delivered:\n" + self.daemon.log_text())
        return found[0]

    def verify(self, contents: list[bytes]) -> list[list[dict]]:
        paths = []
        for i, c in enumerate(contents):
            path = os.path.join(self.dir, f"verify-{time.monotonic_ns()}-{i}.eml")
            with open(path, "wb") as f:
                f.write(c)
            paths.append(path)
        p = subprocess.run([SYSTEM_PYTHON, VERIFY, "--dns", self.dns.server, *paths],
                           capture_output=True, timeout=harness.scaled(120))
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return [json.loads(line) for line in p.stdout.decode().splitlines()]

    def dns_txt(self, name: str) -> list[str]:
        """The TXT records dnsmasq serves for `name` (through dnspython, the system Python's)."""
        host, port = self.dns.server.rsplit(":", 1)
        code = ("import sys, dns.message, dns.query, dns.rdatatype\n"
                "q = dns.message.make_query(sys.argv[1], dns.rdatatype.TXT)\n"
                "r = dns.query.udp(q, sys.argv[2], timeout=5, port=int(sys.argv[3]))\n"
                "for rrset in r.answer:\n"
                "    for rd in rrset:\n"
                "        print(b''.join(rd.strings).decode())\n")
        p = subprocess.run([SYSTEM_PYTHON, "-c", code, name, host, port], capture_output=True,
                           check=True, timeout=harness.scaled(30))
        return p.stdout.decode().splitlines()

    def opendkim(self, content: bytes) -> list[tuple[str, str, str]]:
        """OpenDKIM's verdicts on the message: (result, a=, s=) per signature, from the
        Authentication-Results field `opendkim -t` prints. Its keys: a TestPublicKeys file
        written from dnsmasq's answers (opendkim cannot be pointed at a DNS port)."""
        keys = os.path.join(self.dir, "opendkim.keys")
        if not hasattr(self, "_opendkim_keys"):
            lines = []
            for name in self.records:
                for rec in self.dns_txt(name):
                    lines.append(f"{name} {rec}\n")
            type(self)._opendkim_keys = "".join(lines)
        with open(keys, "w") as f:
            f.write(self._opendkim_keys)
        conf = os.path.join(self.dir, "opendkim.conf")
        with open(conf, "w") as f:
            f.write(f"Mode v\nTestPublicKeys {keys}\nSyslog no\nLogResults yes\n"
                    "MinimumKeyBits 1024\nAlwaysAddARHeader yes\n")
        path = os.path.join(self.dir, f"opendkim-{time.monotonic_ns()}.eml")
        with open(path, "wb") as f:
            f.write(content)
        p = subprocess.run([OPENDKIM, "-x", conf, "-vvv", "-t", path], capture_output=True,
                           timeout=harness.scaled(60))
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        return re.findall(r"dkim=(\w+)[^;]*?header\.a=(\S+) header\.s=(\S+)", out) or [
            ("no-result", out, "")]

    # -- tests -----------------------------------------------------------------------

    def test_signatures_verify(self):
        long_subject = " ".join(f"word{i}" for i in range(120))
        folded_to = ",\r\n ".join(f"user{i}@dest.test" for i in range(30))
        cases = {
            # tag: (headers, body, expected [(d, s, a)], smtp options)
            "both": (b"From: Sender <sender@example.test>\r\nTo: r@dest.test\r\n"
                     b"Subject: both\r\n", b"hello\r\n",
                     [("example.test", "rsa", "rsa-sha256"),
                      ("example.test", "ed", "ed25519-sha256")], ()),
            "specific": (b"From: x@mail.example.test\r\nSubject: sub\r\n", b"hi\r\n",
                         [("mail.example.test", "sub", "rsa-sha256")], ()),
            "ed-only": (b"From: x@ed.test\r\nSubject: ed\r\n", b"hi\r\n",
                        [("ed.test", "eds", "ed25519-sha256")], ()),
            "folded": (b"From: x@example.test\r\nSubject: " + long_subject.encode() +
                       b"\r\nTo: " + folded_to.encode() + b"\r\nX-Long: " + b"y" * 900 +
                       b"\r\n", b"body\r\n", None, ()),
            "duplicates": (b"From: x@example.test\r\nTo: a@dest.test\r\nTo: b@dest.test\r\n"
                           b"Cc: c@dest.test\r\nCc: d@dest.test\r\n", b"dup\r\n", None, ()),
            "utf8": ("From: Jérôme <x@example.test>\r\nSubject: café ☕\r\n".encode(),
                     "ünïcödé body  \r\n".encode(), None, ("SMTPUTF8", "BODY=8BITMIME")),
            "empty-body": (b"From: x@example.test\r\n", b"", None, ()),
            "blank-tail": (b"From: x@example.test\r\n", b"text\r\n\r\n\r\n\r\n", None, ()),
            "whitespace": (b"From: x@example.test\r\nSubject:  spaced \t out  \r\n",
                           b"trailing   \r\n\t\r\n  mid   dle  \r\n", None, ()),
            "dots": (b"From: x@example.test\r\n", b".leading\r\n..two\r\n.\r\nend\r\n",
                     None, ()),
            "foreign-sig": (b"DKIM-Signature: v=1; a=rsa-sha256; d=other.test; s=x; "
                            b"h=from; bh=AAAA; b=BBBB\r\nFrom: x@example.test\r\n",
                            b"kept\r\n", None, ()),
        }
        default = [("example.test", "rsa", "rsa-sha256"),
                   ("example.test", "ed", "ed25519-sha256")]
        for tag, (head, body, _, opts) in cases.items():
            msg = head + f"X-Test: {tag}\r\n".encode() + b"\r\n" + body
            self.send(msg, options=opts)
        contents = {tag: self.delivered(tag) for tag in cases}
        results = self.verify(list(contents.values()))
        for (tag, content), res in zip(contents.items(), results):
            want = cases[tag][2] or default
            ours = [r for r in res if r["d"] != "other.test"]
            self.assertEqual([(r["d"], r["s"], r["a"]) for r in ours], want, tag)
            self.assertTrue(all(r["ok"] for r in ours), f"{tag}: {res}\n{content!r}")
        # The foreign signature is still there, byte for byte, after ours and Received.
        self.assertIn(b"\r\nDKIM-Signature: v=1; a=rsa-sha256; d=other.test; s=x; h=from; "
                      b"bh=AAAA; b=BBBB\r\nFrom:", contents["foreign-sig"])
        # Every line we add stays under 78 octets plus CRLF.
        for tag, content in contents.items():
            sigs = content.split(b"\r\nReceived:", 1)[0]
            for line in sigs.split(b"\r\n"):
                self.assertLessEqual(len(line), 78, f"{tag}: {line!r}")
        # OpenDKIM agrees on every RSA signature.
        for tag, content in contents.items():
            want = cases[tag][2] or default
            if not any(a == "rsa-sha256" for (_, _, a) in want):
                continue
            verdicts = self.opendkim(content)
            rsa = [(r, s) for (r, a, s) in verdicts if a == "rsa-sha256" and s != "x"]
            self.assertTrue(rsa, f"{tag}: {verdicts}")
            self.assertTrue(all(r == "pass" for r, _ in rsa), f"{tag}: {verdicts}")

    def test_bdat(self):
        with harness.RawSmtp(harness.LOOPBACK, self.daemon.port) as c:
            c.read_reply()
            self.assertEqual(c.cmd("EHLO client.test")[0], 250)
            self.assertEqual(c.cmd("MAIL FROM:<sender@example.test>")[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<rcpt@dest.test>")[0], 250)
            first = b"From: x@example.test\r\nX-Test: bdat\r\n\r\n.dot line\r\n..two"
            last = b" dots\r\nno final crlf"
            c.send(b"BDAT %d\r\n" % len(first) + first)
            self.assertEqual(c.read_reply()[0], 250)
            c.send(b"BDAT %d LAST\r\n" % len(last) + last)
            self.assertEqual(c.read_reply()[0], 250)
            c.cmd("QUIT")
        content = self.delivered("bdat")
        self.assertIn(b"\r\n.dot line\r\n..two dots\r\nno final crlf", content)
        res = self.verify([content])[0]
        self.assertEqual(len(res), 2, res)
        self.assertTrue(all(r["ok"] for r in res), res)

    def test_not_signed(self):
        cases = {
            "other-domain": b"From: x@other.test\r\n",
            "no-from": b"Subject: nobody\r\n",
            "two-addresses": b"From: a@example.test, b@example.test\r\n",
            "two-froms": b"From: a@example.test\r\nFrom: b@example.test\r\n",
        }
        for tag, head in cases.items():
            self.send(head + f"X-Test: {tag}\r\n\r\nbody\r\n".encode())
        for tag in cases:
            content = self.delivered(tag)
            self.assertEqual(header_of(content, "DKIM-Signature"), [], tag)
        log = full_log(self.daemon)
        for why in ("no [[dkim]] table for other.test", "no From header field",
                    "several addresses in the From header field", "several From header fields"):
            self.assertIn(f"not DKIM-signed: {why}", log)

    def test_over_signing_and_tampering(self):
        self.send(b"From: x@example.test\r\nSubject: original\r\nX-Test: tamper\r\n\r\n"
                  b"the body\r\n")
        content = self.delivered("tamper")
        head, body = content.split(b"\r\n\r\n", 1)
        variants = [
            content,
            head + b"\r\nSubject: injected\r\n\r\n" + body,   # a second Subject, at the bottom
            b"Subject: injected\r\n" + content,               # or at the top
            head + b"\r\nTo: extra@dest.test\r\n\r\n" + body,  # an absent signed header added
            head + b"\r\n\r\n" + body.replace(b"the body", b"the bodY"),
            head + b"\r\n\r\n" + body + b"appended\r\n",
            head + b"\r\nX-Unsigned: fine\r\n\r\n" + body,    # not signed, may be added
        ]
        results = self.verify(variants)
        expect = [True, False, False, False, False, False, True]
        for i, (res, want) in enumerate(zip(results, expect)):
            self.assertEqual(len(res), 2, res)
            self.assertEqual([r["ok"] for r in res], [want, want], f"variant {i}: {res}")
        # OpenDKIM agrees on the RSA signature of the original, the second Subject and the body.
        for i in (0, 1, 4):
            rsa = [r for (r, a, _) in self.opendkim(variants[i]) if a == "rsa-sha256"]
            self.assertEqual(rsa, ["pass" if expect[i] else "fail"], f"variant {i}")

    def test_relay_domains_are_not_signed_auth_is(self):
        users = os.path.join(self.dir, "users")
        p = subprocess.run([ctl(), "passwd", USER], input=PASSWORD.encode(),
                           capture_output=True, check=True, timeout=harness.scaled(30))
        with open(users, "wb") as f:
            f.write(p.stdout)
        d = self.make_daemon(allow_networks=["192.0.2.0/24"], domains=["dest.test"],
                             auth={"users_file": users},
                             listen_options={"auth_plaintext": True})
        d.start()
        try:
            self.send(b"From: x@example.test\r\nX-Test: relay-domain\r\n\r\nb\r\n", port=d.port)
            self.send(b"From: x@example.test\r\nX-Test: authenticated\r\n\r\nb\r\n",
                      port=d.port, login=True)
            self.assertEqual(header_of(self.delivered("relay-domain"), "DKIM-Signature"), [])
            res = self.verify([self.delivered("authenticated")])[0]
            self.assertEqual([(r["s"], r["ok"]) for r in res], [("rsa", True), ("ed", True)])
        finally:
            d.stop()

    def test_key_rotation_by_sighup_under_load(self):
        total = 80
        errors: list[str] = []
        sent: list[tuple[int, float]] = []

        def load(first: int):
            try:
                with smtplib.SMTP(harness.LOOPBACK, self.daemon.port,
                                  timeout=harness.scaled(30)) as s:
                    for i in range(first, total, 2):
                        s.sendmail("sender@rot.test", ["rcpt@dest.test"],
                                   f"From: x@rot.test\r\nX-Test: rot-{i}\r\n\r\n{i}\r\n".encode())
                        sent.append((i, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=load, args=(j,)) for j in range(2)]
        for t in threads:
            t.start()
        self.assertTrue(harness.wait_until(lambda: len(sent) >= total // 4, harness.scaled(60)))
        tmp = self.rot_path + ".new"
        shutil.copy(self.keys["rot2"], tmp)
        os.rename(tmp, self.rot_path)
        self.daemon.signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(
            lambda: "SIGHUP: DKIM keys reloaded" in full_log(self.daemon), harness.scaled(20)))
        # A reload that fails keeps the keys in use.
        with open(self.rot_path + ".bad", "w") as f:
            f.write("not a key\n")
        good = self.rot_path + ".good"
        shutil.copy(self.rot_path, good)
        os.rename(self.rot_path + ".bad", self.rot_path)
        self.daemon.signal(signal.SIGHUP)
        self.assertTrue(harness.wait_until(
            lambda: "DKIM keys not reloaded, keeping the old ones" in full_log(self.daemon),
            harness.scaled(20)))
        os.rename(good, self.rot_path)
        for t in threads:
            t.join(harness.scaled(120))
        self.assertEqual(errors, [])
        self.assertEqual(len(sent), total)
        # Long after the reload: the new key, and the failed reload changed nothing.
        self.send(b"From: x@rot.test\r\nX-Test: rot-after\r\n\r\nafter\r\n",
                  mail_from="sender@rot.test")
        contents = [self.delivered(f"rot-{i}", 60) for i in range(total)]
        contents.append(self.delivered("rot-after"))
        results = self.verify(contents)
        failed = [i for i, r in enumerate(results) if len(r) != 1 or not r[0]["ok"]]
        self.assertEqual(failed, [], results)
        used = [r[0]["record"] for r in results]
        self.assertIn(self.rot1, used)  # the first quarter went out before the reload
        self.assertEqual(used[-1], self.rot2)

    def test_bad_keys(self):
        def config_with(key):
            d = self.make_daemon(tables=[{"domain": "example.test", "selector": "s",
                                          "key_file": key}])
            return d

        missing = os.path.join(self.dir, "missing.pem")
        for key, says in ((missing, "cannot open"), (self.keys["tiny"], "512 bits"),
                          (os.path.join(self.dir, "users-not-a-key"), "")):
            if not says:
                with open(key, "w") as f:
                    f.write("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
                says = "private key"
            d = config_with(key)
            p = d.check_config()
            self.assertNotEqual(p.returncode, 0)
            err = p.stderr.decode()
            self.assertIn(key, err)
            self.assertIn(says, err)
            with self.assertRaises(harness.DaemonError) as cm:
                d.start(timeout=10)
            self.assertIn(key, str(cm.exception))
            self.assertIn(says, str(cm.exception))
        d = config_with(self.keys["small"])
        p = d.check_config()
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("RSA key of 1024 bits", p.stderr.decode())


if __name__ == "__main__":
    unittest.main(verbosity=2)
