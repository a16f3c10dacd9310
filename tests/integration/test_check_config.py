"""ringmaild --check-config: 0 for a good file, non-zero with a message naming the key for
an unknown key or a bad value."""

import os
import subprocess
import unittest

import harness

GOOD = """
[server]
hostname = "relay.example.test"
shards = 1
spool_dir = "{spool}"
max_message_size = 1048576

[[listen]]
address = "127.0.0.1:{port}"
role = "relay"

[[listen]]
address = "[::1]:{port}"
role = "relay"

[relay]
allow_networks = ["127.0.0.0/8", "::1/128"]
domains = ["example.test"]

[delivery]
smarthost = "127.0.0.1:2526"
retry_schedule = ["1m", "5m", "1h"]
max_lifetime = "5d"

[admin]
address = ""
"""

# (what is wrong, replace this, with this, the key the message must name)
BAD = [
    ("unknown key in [server]", "shards = 1\n", "shards = 1\nbogus_knob = 3\n", "bogus_knob"),
    ("unknown table", "[admin]\n", "[no_such_table]\nx = 1\n\n[admin]\n", "no_such_table"),
    ("shards not a number", "shards = 1\n", 'shards = "many"\n', "shards"),
    ("negative message size", "max_message_size = 1048576\n", "max_message_size = -5\n",
     "max_message_size"),
    ("listen address without port", 'address = "127.0.0.1:{port}"\n',
     'address = "127.0.0.1"\n', "address"),
    ("unknown listen role", 'role = "relay"\n\n[[listen]]', 'role = "teleport"\n\n[[listen]]',
     "role"),
    ("bad network", '"127.0.0.0/8", "::1/128"', '"127.0.0.0/99"', "allow_networks"),
    ("bad duration", '"1m", "5m", "1h"', '"1m", "five minutes"', "retry_schedule"),
    ("bad lifetime", 'max_lifetime = "5d"', 'max_lifetime = "forever"', "max_lifetime"),
    ("redis by name", "[admin]\n", '[cluster]\nredis = "redis.example:6379"\n\n[admin]\n',
     "cluster.redis"),
]


class CheckConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = harness.temp_dir()
        cls.spool = os.path.join(cls.dir, "spool")
        os.makedirs(cls.spool)
        cls.port = harness.free_port()
        cls.good = GOOD.replace("{spool}", cls.spool).replace("{port}", str(cls.port))

    def check(self, text: str, name: str) -> subprocess.CompletedProcess:
        path = os.path.join(self.dir, name + ".toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return subprocess.run([harness.ringmaild_path(), "--check-config", path],
                              capture_output=True, timeout=harness.scaled(20))

    def test_good_config_exits_0(self):
        p = self.check(self.good, "good")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_harness_config_exits_0(self):
        text = harness.to_toml(harness.make_config(self.spool, self.port, "127.0.0.1:2526"))
        p = self.check(text, "harness")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_packaged_example_exits_0(self):
        root = os.environ.get("RINGMAIL_SOURCE_ROOT", "")
        example = os.path.join(root, "packaging", "ringmail.toml")
        if not root or not os.path.exists(example):
            self.skipTest("packaging/ringmail.toml not present")
        p = subprocess.run([harness.ringmaild_path(), "--check-config", example],
                           capture_output=True, timeout=harness.scaled(20))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_bad_configs_name_the_key(self):
        for what, old, new, key in BAD:
            old = old.replace("{port}", str(self.port))
            with self.subTest(what):
                self.assertIn(old, self.good, "test table out of date")
                text = self.good.replace(old, new, 1)
                p = self.check(text, "bad")
                output = (p.stdout + p.stderr).decode("utf-8", "replace")
                self.assertNotEqual(p.returncode, 0, f"{what}: accepted\n{text}")
                self.assertIn(key, output, f"{what}: message does not name {key!r}")

    # --- spool_dir and the delivery log's directory (issue 12) ----------------------------

    def with_spool(self, spool: str) -> str:
        old = f'spool_dir = "{self.spool}"'
        self.assertIn(old, self.good)
        return self.good.replace(old, f'spool_dir = "{spool}"')

    def with_log(self, log_file: str) -> str:
        old = 'smarthost = "127.0.0.1:2526"\n'
        self.assertIn(old, self.good)
        return self.good.replace(old, old + f'log_file = "{log_file}"\n')

    def assert_refused(self, text: str, key: str, *fragments: str) -> None:
        p = self.check(text, "paths")
        output = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertNotEqual(p.returncode, 0, f"accepted:\n{text}")
        self.assertIn(key, output)
        for f in fragments:
            self.assertIn(f, output)

    def test_spool_dir_that_can_be_created_passes_untouched(self):
        parent = os.path.join(self.dir, "not-yet")
        p = self.check(self.with_spool(os.path.join(parent, "spool")), "new-spool")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(os.path.exists(parent), "--check-config created the spool")
        self.assertEqual([n for n in os.listdir(self.spool) if n.startswith(".ringmaild")], [])

    def test_spool_dir_under_a_file_is_refused(self):
        blocker = os.path.join(self.dir, "a-file")
        with open(blocker, "w", encoding="utf-8") as f:
            f.write("not a directory\n")
        self.assert_refused(self.with_spool(os.path.join(blocker, "spool")),
                            "server.spool_dir", "cannot be created", "is not a directory")
        self.assert_refused(self.with_spool(blocker), "server.spool_dir", "is not a directory")

    def test_spool_dir_that_cannot_be_created_is_refused(self):
        # /proc takes no new files, not even from root (access(2) would say it is writable).
        self.assert_refused(self.with_spool("/proc/ringmail-check/spool"), "server.spool_dir",
                            "cannot be created in /proc")

    def test_unwritable_spool_dir_is_refused(self):
        if os.geteuid() == 0:
            self.skipTest("root writes into any directory mode")
        spool = os.path.join(self.dir, "read-only-spool")
        os.makedirs(spool)
        os.chmod(spool, 0o555)
        try:
            self.assert_refused(self.with_spool(spool), "server.spool_dir", "is not writable")
        finally:
            os.chmod(spool, 0o755)

    def test_unwritable_shard_directory_is_refused(self):
        spool = os.path.join(self.dir, "spool-with-a-file")
        os.makedirs(spool)
        with open(os.path.join(spool, "shard-3"), "w", encoding="utf-8") as f:
            f.write("")
        # A file named like a shard directory is not one (existing_shard_dirs skips it):
        # accepted. A real shard directory that is not writable is refused (non-root only).
        p = self.check(self.with_spool(spool), "shard-file")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        if os.geteuid() != 0:
            shard = os.path.join(spool, "shard-0")
            os.makedirs(shard)
            os.chmod(shard, 0o555)
            try:
                self.assert_refused(self.with_spool(spool), "server.spool_dir", "shard-0",
                                    "is not writable")
            finally:
                os.chmod(shard, 0o755)

    def test_log_file_in_a_writable_directory_passes_untouched(self):
        log = os.path.join(self.dir, "delivery.jsonl")
        p = self.check(self.with_log(log), "log-ok")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(os.path.exists(log), "--check-config created the log")

    def test_log_file_in_a_missing_directory_is_refused(self):
        self.assert_refused(self.with_log(os.path.join(self.dir, "no-such-dir", "d.jsonl")),
                            "delivery.log_file", "does not exist")

    def test_log_file_that_is_a_directory_is_refused(self):
        self.assert_refused(self.with_log(self.dir), "delivery.log_file", "is a directory")

    def test_log_file_in_an_unwritable_directory_is_refused(self):
        self.assert_refused(self.with_log("/proc/ringmail-delivery.jsonl"), "delivery.log_file",
                            "is not writable")

    def test_missing_file_fails(self):
        p = subprocess.run(
            [harness.ringmaild_path(), "--check-config", os.path.join(self.dir, "nope.toml")],
            capture_output=True, timeout=harness.scaled(20))
        self.assertNotEqual(p.returncode, 0)

    def test_syntax_error_fails(self):
        p = self.check(self.good + "\n[server\n", "syntax")
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    unittest.main()
