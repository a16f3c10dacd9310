"""The Debian package's systemd unit, default configuration and logrotate file, checked from
the tree: every hardening directive issue 15 asks for, a SystemCallFilter that allows io_uring
(systemd 252's @system-service does not), `systemd-analyze verify` accepts the unit and
`systemd-analyze security --offline=yes` scores it 2.0 or lower (both skipped where
systemd-analyze is absent), and the conffile passes `ringmaild --check-config`."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

ROOT = os.environ.get("RINGMAIL_SOURCE_ROOT",
                      os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
                          os.path.abspath(__file__))))))
DEBIAN = os.path.join(ROOT, "packaging", "debian")
UNIT = os.path.join(DEBIAN, "ringmail.service")
ANALYZE = shutil.which("systemd-analyze")
IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def directives(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


class UnitFileTest(unittest.TestCase):
    def setUp(self):
        self.d = directives(UNIT)

    def one(self, key: str) -> str:
        self.assertIn(key, self.d, f"{key}= missing")
        return self.d[key][-1]

    def test_service_shape(self):
        self.assertEqual(self.one("Type"), "notify")
        self.assertIn("kill -HUP $MAINPID", self.one("ExecReload"))
        self.assertEqual(self.one("Restart"), "on-failure")
        self.assertEqual(self.one("LimitNOFILE"), "1048576")
        self.assertEqual(self.one("User"), "ringmail")
        self.assertEqual(self.one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
        self.assertEqual(self.one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")
        self.assertIn("/usr/sbin/ringmaild --config /etc/ringmail/ringmail.toml",
                      self.one("ExecStart"))
        paths = self.one("ReadWritePaths").split()
        self.assertIn("/var/spool/ringmail", paths)
        self.assertIn("/var/log/ringmail", paths)
        # The stop timeout covers server.shutdown_timeout (30 s by default).
        self.assertGreater(int(self.one("TimeoutStopSec").rstrip("s")), 30)

    def test_hardening(self):
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                    "ProtectControlGroups", "RestrictNamespaces", "LockPersonality",
                    "MemoryDenyWriteExecute"):
            self.assertEqual(self.one(key), "yes", key)
        self.assertEqual(self.one("ProtectSystem"), "strict")
        self.assertEqual(self.one("SystemCallArchitectures"), "native")
        self.assertEqual(self.one("RestrictAddressFamilies").split(),
                         ["AF_INET", "AF_INET6", "AF_UNIX"])

    def test_syscall_filter_allows_io_uring(self):
        allowed = [v for v in self.d.get("SystemCallFilter", []) if not v.startswith("~")]
        self.assertTrue(allowed, "no allow-list SystemCallFilter")
        words = " ".join(allowed).split()
        self.assertIn("@system-service", words)
        listed_by_group = set()
        if ANALYZE:
            out = subprocess.run([ANALYZE, "syscall-filter", "@system-service"],
                                 capture_output=True, text=True, timeout=60).stdout
            listed_by_group = {w for w in out.split() if w.startswith("io_uring")}
        for call in IO_URING:
            self.assertTrue(call in words or call in listed_by_group,
                            f"{call} neither in SystemCallFilter nor in @system-service")
        for denied in (v for v in self.d.get("SystemCallFilter", []) if v.startswith("~")):
            for call in IO_URING:
                self.assertNotIn(call, denied)

    @unittest.skipUnless(ANALYZE, "systemd-analyze not installed")
    def test_systemd_analyze_verify(self):
        daemon = os.environ.get("RINGMAILD")
        if not daemon:
            self.skipTest("RINGMAILD is not set (run through meson test)")
        with tempfile.TemporaryDirectory() as d:
            # The installed path does not exist in a build tree: the built daemon stands in.
            with open(UNIT, encoding="utf-8") as f:
                text = f.read().replace("/usr/sbin/ringmaild", daemon)
            copy = os.path.join(d, "ringmail.service")
            with open(copy, "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([ANALYZE, "verify", "--man=no", copy], capture_output=True,
                               text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual((r.stdout + r.stderr).strip(), "", "warnings from verify")

    @unittest.skipUnless(ANALYZE, "systemd-analyze not installed")
    def test_systemd_analyze_security_score(self):
        r = subprocess.run([ANALYZE, "security", "--offline=yes", UNIT], capture_output=True,
                           text=True, timeout=120)
        m = re.search(r"Overall exposure level for ringmail\.service: ([0-9.]+)", r.stdout)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)

    def test_default_config_is_loopback_and_checks(self):
        with open(os.path.join(DEBIAN, "ringmail.toml"), encoding="utf-8") as f:
            text = f.read()
        addresses = re.findall(r'^address\s*=\s*"([^"]*)"', text, re.MULTILINE)
        self.assertTrue(addresses)
        for a in addresses:
            self.assertTrue(a.startswith("127.") or a.startswith("[::1]"), a)
        daemon = os.environ.get("RINGMAILD")
        if daemon:
            # --check-config proves the spool and log directories writable; the package's
            # postinst makes them, here a temporary directory stands in for both.
            with tempfile.TemporaryDirectory() as d:
                os.makedirs(os.path.join(d, "spool"))
                os.makedirs(os.path.join(d, "log"))
                copy = os.path.join(d, "ringmail.toml")
                with open(copy, "w", encoding="utf-8") as f:
                    f.write(text.replace("/var/spool/ringmail", os.path.join(d, "spool"))
                            .replace("/var/log/ringmail", os.path.join(d, "log")))
                r = subprocess.run([daemon, "--check-config", copy], capture_output=True,
                                   text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_logrotate_reloads_through_systemctl(self):
        with open(os.path.join(DEBIAN, "ringmail.logrotate"), encoding="utf-8") as f:
            text = f.read()
        self.assertIn("/var/log/ringmail/", text)
        self.assertIn("systemctl reload ringmail.service", text)


if __name__ == "__main__":
    unittest.main()
