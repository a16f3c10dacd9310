#!/usr/bin/env python3
"""ringmailctl passwd end to end.

Usage: ctl_passwd_test.py RINGMAILCTL CHECK_USERS

Pipes passwords into the real binary and checks what it prints: PBKDF2-SHA256 lines are
recomputed with hashlib.pbkdf2_hmac, and every line is loaded and verified by the credential
store itself (the check_users helper). Also checks the refusals and their exit codes.
"""
import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile

CTL, CHECK = sys.argv[1], sys.argv[2]
failures = []


def run(args, stdin=b"", timeout=30):
    return subprocess.run([CTL] + args, input=stdin, capture_output=True, timeout=timeout)


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def check_store(line, user, password):
    """Loads `line` as a users file and verifies `password` for `user`; returns the exit code."""
    with tempfile.NamedTemporaryFile("w", suffix=".users", delete=False) as f:
        f.write("# written by ctl_passwd_test.py\n" + line + "\n")
        path = f.name
    try:
        r = subprocess.run([CHECK, path, user], input=password, capture_output=True, timeout=30)
        if r.returncode == 2:
            print(r.stderr.decode(errors="replace"))
        return r.returncode
    finally:
        os.unlink(path)


# Good cases: (name, args, stdin, user, password as the store must see it)
good = [
    ("argon2id default", ["passwd", "alice"], b"s3cret\n", "alice", b"s3cret"),
    ("argon2id explicit, CRLF", ["passwd", "bob", "--scheme", "argon2id"], b"pa ss\r\n", "bob",
     b"pa ss"),
    ("pbkdf2 no newline", ["passwd", "carol@example.test", "--scheme", "pbkdf2-sha256"],
     b"hunter2", "carol@example.test", b"hunter2"),
    ("pbkdf2 first line only", ["passwd", "dave", "--scheme=pbkdf2-sha256"], b"one\ntwo\n",
     "dave", b"one"),
]
for name, args, stdin, user, password in good:
    r = run(args, stdin)
    out = r.stdout.decode()
    expect(r.returncode == 0, f"{name}: exit {r.returncode}, stderr {r.stderr!r}")
    expect(r.stderr == b"", f"{name}: stderr not empty: {r.stderr!r}")
    expect(password not in r.stdout, f"{name}: password echoed")
    lines = out.splitlines()
    expect(len(lines) == 1, f"{name}: expected one line, got {out!r}")
    if not lines:
        continue
    line = lines[0]
    expect(line.startswith(user + ":$"), f"{name}: line does not start with the user: {line!r}")
    hash_text = line[len(user) + 1:]
    m = re.fullmatch(r"\$pbkdf2-sha256\$i=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", hash_text)
    if "pbkdf2-sha256" in " ".join(args):
        expect(m is not None, f"{name}: not our PBKDF2 format: {hash_text!r}")
        if m:
            iterations = int(m.group(1))
            salt = base64.b64decode(m.group(2), validate=True)
            digest = base64.b64decode(m.group(3), validate=True)
            expect(len(salt) == 16, f"{name}: salt is {len(salt)} octets")
            expect(hashlib.pbkdf2_hmac("sha256", password, salt, iterations, len(digest)) == digest,
                   f"{name}: hashlib disagrees")
    else:
        expect(re.fullmatch(r"\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}",
                            hash_text) is not None, f"{name}: not a PHC argon2id string: {hash_text!r}")
    expect(check_store(line, user, password + b"\n") == 0, f"{name}: store rejects the password")
    expect(check_store(line, user, password + b"x\n") == 1, f"{name}: store accepts a wrong one")

# CRAM-MD5: the HMAC-MD5 key state, with a warning that it is equivalent to the password.
r = run(["passwd", "tim", "--scheme", "cram-md5"], b"tanstaaftanstaaf\n")
expect(r.returncode == 0, f"cram-md5: exit {r.returncode}, stderr {r.stderr!r}")
expect(b"equivalent to the password" in r.stderr, f"cram-md5: no warning: {r.stderr!r}")
cram_line = r.stdout.decode().strip()
expect(re.fullmatch(r"tim:\{CRAM-MD5\}[0-9a-f]{64}", cram_line) is not None,
       f"cram-md5: not a {{CRAM-MD5}} entry: {cram_line!r}")
expect(check_store(cram_line, "tim", b"tanstaaftanstaaf\n") == 0, "cram-md5: store rejects it")
expect(check_store(cram_line, "tim", b"tanstaaftanstaafx\n") == 1, "cram-md5: accepts a wrong one")

# Refusals: (name, args, stdin, exit code)
bad = [
    ("empty password", ["passwd", "alice"], b"\n", 1),
    ("no input", ["passwd", "alice"], b"", 1),
    ("too long", ["passwd", "alice"], b"p" * 1025 + b"\n", 1),
    ("colon in user", ["passwd", "a:b"], b"x\n", 2),
    ("space in user", ["passwd", "a b"], b"x\n", 2),
    ("control in user", ["passwd", "a\tb"], b"x\n", 2),
    ("unknown scheme", ["passwd", "alice", "--scheme", "md5"], b"x\n", 2),
    ("missing user", ["passwd"], b"x\n", 2),
    ("no subcommand", [], b"", 2),
    ("unknown subcommand", ["frobnicate"], b"", 2),
]
for name, args, stdin, code in bad:
    r = run(args, stdin)
    expect(r.returncode == code, f"{name}: exit {r.returncode}, expected {code}")
    expect(r.stdout == b"", f"{name}: printed {r.stdout!r}")
    expect(len(r.stderr.strip()) > 0, f"{name}: no message on stderr")

r = run(["--help"])
expect(r.returncode == 0 and b"passwd" in r.stdout, f"--help: exit {r.returncode}, {r.stdout!r}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("ok")
