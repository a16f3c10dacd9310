"""Started as root with server.user set, ringmaild drops to that user (issue 15).

It binds its listeners (here a privileged port) and opens its spools as root, then switches
every thread, io_uring's io-wq workers included, to the user for good, and still accepts and
delivers mail: the spool was handed to the user. An unknown user is refused by --check-config
and at start-up. Needs root (skipped otherwise) and the system user `nobody`."""

import glob
import os
import pwd
import smtplib
import socket
import subprocess
import unittest

import harness

USER = "nobody"


def free_privileged_port() -> int:
    for port in range(700, 1000):
        s = socket.socket()
        try:
            s.bind((harness.LOOPBACK, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise unittest.SkipTest("no free port below 1024")


def ids(path: str, key: str) -> list[int]:
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return [int(v) for v in line.split()[1:]]
    return []


@unittest.skipUnless(os.geteuid() == 0, "needs root")
class DropPrivilegesTest(unittest.TestCase):
    def setUp(self):
        try:
            self.pw = pwd.getpwnam(USER)
        except KeyError:
            self.skipTest(f"no user {USER}")

    def test_drops_to_server_user_and_still_serves(self):
        sink = harness.SmtpSink()
        self.addCleanup(sink.close)
        workdir = harness.temp_dir()
        os.chmod(workdir, 0o755)  # the user walks to its spool
        port = free_privileged_port()
        spool = os.path.join(workdir, "spool")
        os.makedirs(spool)
        config = harness.make_config(spool, port, sink.smarthost, shards=2,
                                     server_options={"user": USER})
        daemon = harness.Ringmaild(config, workdir=workdir)
        self.addCleanup(daemon.kill)
        daemon.start()
        self.assertIn(f"running as user {USER}", daemon.log_text())

        with smtplib.SMTP(harness.LOOPBACK, port, timeout=30) as s:
            s.sendmail("a@client.test", ["b@dest.test"],
                       b"Subject: dropped\r\n\r\nwritten by an unprivileged spool\r\n")
        self.assertTrue(sink.wait_for(1, harness.scaled(20)), daemon.log_text())
        self.assertIn(b"written by an unprivileged spool", sink.transactions()[0].content)

        # Every thread, the shards', the verifier's and io-wq workers' alike: real, effective,
        # saved and filesystem ids are the user's, and no supplementary group is root's.
        pid = daemon.proc.pid
        tasks = glob.glob(f"/proc/{pid}/task/*/status")
        self.assertGreater(len(tasks), 2)
        for status in tasks:
            self.assertEqual(ids(status, "Uid"), [self.pw.pw_uid] * 4, status)
            self.assertEqual(ids(status, "Gid"), [self.pw.pw_gid] * 4, status)
            self.assertNotIn(0, ids(status, "Groups"), status)
        for root, dirs, files in os.walk(spool):
            for name in dirs + files:
                st = os.lstat(os.path.join(root, name))
                self.assertEqual(st.st_uid, self.pw.pw_uid, name)

        # A restart as root finds the spool the user owns and drops again.
        daemon.stop()
        daemon.start()
        with smtplib.SMTP(harness.LOOPBACK, port, timeout=30) as s:
            s.sendmail("a@client.test", ["c@dest.test"], b"Subject: again\r\n\r\nagain\r\n")
        self.assertTrue(sink.wait_for(2, harness.scaled(20)), daemon.log_text())
        self.assertEqual(ids(f"/proc/{daemon.proc.pid}/status", "Uid"), [self.pw.pw_uid] * 4)
        daemon.stop()

    def test_unknown_user_is_refused(self):
        workdir = harness.temp_dir()
        spool = os.path.join(workdir, "spool")
        config = harness.make_config(spool, harness.free_port(), "127.0.0.1:9",
                                     server_options={"user": "no-such-ringmail-user"})
        daemon = harness.Ringmaild(config, workdir=workdir)
        self.addCleanup(daemon.kill)
        check = subprocess.run([harness.ringmaild_path(), "--check-config", daemon.config_path],
                               capture_output=True, text=True, timeout=harness.scaled(20))
        self.assertNotEqual(check.returncode, 0)
        self.assertIn('server.user "no-such-ringmail-user": no such user', check.stderr)
        proc = subprocess.run([harness.ringmaild_path(), "--config", daemon.config_path],
                              capture_output=True, text=True, timeout=harness.scaled(20))
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("no such user", proc.stderr)


if __name__ == "__main__":
    unittest.main()
