"""Inbound and outbound connections churning on the same shards never touch each other's
socket (issue: "MX routing cuts inbound sessions while outbound sessions churn").

The interleaving that cut sessions: MX routing with fallback, null MX, NXDOMAIN and DSNs, then
many short inbound sessions while outbound sessions to one shared MX are parked, adopted,
refused recipient by recipient (each refusal sends RSET, and a job handed to a connection
still in RSET closed it by force, with a shutdown) and closed. A close that ran before such a
shutdown freed the fd number; the late shutdown then cut whatever socket had the number next:
an inbound session after its 220 or after its DATA (a duplicate when the client retries), an
outbound session, or the resolver's DNS socket (every later lookup "refused").

Each round checks from the outside that every session got its 250, that every accepted
recipient arrives exactly once, that each message with refused recipients gets exactly one
DSN, and that no lookup failed.
"""

import collections
import os
import re
import smtplib
import threading
import time
import unittest

import harness
import test_mx as mx

ROUNDS = int(os.environ.get("RINGMAIL_FD_REUSE_ROUNDS", "4"))
SHORT_SESSIONS = 120  # per round, from CLIENTS clients in parallel
CLIENTS = 4
BURST = 60            # messages per round and burst domain, every other recipient refused
BURST_DOMAINS = ["d1.test", "d2.test"]
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE)


def refused(r: int, i: int, domain: str) -> str:
    return f"no{r}-{i}@{domain}"


class ChurnTest(mx.MxTestCase):
    def test_inbound_and_outbound_churn_never_share_a_socket(self):
        reject = {"bad@d5.test": "550 5.1.1 mailbox unknown"}
        for r in range(ROUNDS):
            for d in BURST_DOMAINS:
                for i in range(0, BURST, 2):
                    reject[refused(r, i, d)] = "550 5.1.1 mailbox unknown"
        tempfail = {f"later{r}@d4.test": 1 for r in range(ROUNDS)}
        # Two connections per shard and one per destination: idle sessions are parked and
        # adopted across the 50 domains that share mx-live.test, and the refused recipients
        # of d1.test queue up behind one connection.
        self.start(shards=2,
                   sink_kwargs={"reject_rcpts": reject, "tempfail_rcpts": tempfail},
                   delivery_options={"max_connections": 2, "destination_max_connections": 1,
                                     "idle_timeout": "2s"})
        expected: dict[str, collections.Counter] = {}  # marker -> recipients that must arrive
        with_refusals: set[str] = set()
        errors: list[str] = []
        lock = threading.Lock()

        def session(sender: str, rcpts: list[str], marker: str, deliver: list[str]) -> None:
            try:
                self.send(sender, rcpts, mx.message(marker, "churn"))
            except (smtplib.SMTPException, OSError, AssertionError) as e:
                with lock:
                    errors.append(f"{marker}: {e!r}")
                return
            with lock:
                expected[marker] = collections.Counter(deliver)

        def shorts(r: int, first: int) -> None:
            for i in range(first, SHORT_SESSIONS, CLIENTS):
                a = mx.DOMAINS[(2 * i) % len(mx.DOMAINS)]
                b = mx.DOMAINS[(2 * i + 1) % len(mx.DOMAINS)]
                rcpts = [f"u{r}-{i}@{a}", f"v{r}-{i}@{b}"]
                session(mx.SENDER, rcpts, f"s{r}-{i}@origin.test", rcpts)

        def burst(r: int, domain: str) -> None:
            try:
                with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
                    s.ehlo("burst.test")
                    for i in range(BURST):
                        marker = f"b{r}-{i}-{domain}@origin.test"
                        rcpt = refused(r, i, domain) if i % 2 == 0 else f"yes{r}-{i}@{domain}"
                        s.sendmail(mx.SENDER, [rcpt], mx.message(marker, "burst"))
                        with lock:
                            if i % 2 == 0:
                                with_refusals.add(marker)
                                expected[marker] = collections.Counter()
                            else:
                                expected[marker] = collections.Counter([rcpt])
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors.append(f"burst {r}: {e!r}")

        for r in range(ROUNDS):
            # The seven sessions of the report: MX fallback, implicit MX, 451 then 250, 550,
            # null MX, null sender, NXDOMAIN.
            session(mx.SENDER, ["user@live.test"], f"fb{r}@origin.test", ["user@live.test"])
            session(mx.SENDER, ["user@implicit.test"], f"im{r}@origin.test",
                    ["user@implicit.test"])
            session(mx.SENDER, [f"later{r}@d4.test"], f"tf{r}@origin.test", [f"later{r}@d4.test"])
            session(mx.SENDER, ["bad@d5.test"], f"rj{r}@origin.test", [])
            session(mx.SENDER, ["a@nullmx.test"], f"nm{r}@origin.test", [])
            session("", ["bad@d5.test"], f"ns{r}@origin.test", [])
            session(mx.SENDER, ["b@nx.test"], f"nx{r}@origin.test", [])
            with lock:
                with_refusals.update({f"rj{r}@origin.test", f"nm{r}@origin.test",
                                      f"nx{r}@origin.test"})
            time.sleep(1)  # the DSNs and the retry go out meanwhile
            threads = [threading.Thread(target=burst, args=(r, d)) for d in BURST_DOMAINS]
            threads += [threading.Thread(target=shorts, args=(r, c)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [], "sessions cut or refused; daemon log:\n" +
                             self.daemon.log_text())

        def arrived() -> collections.Counter:
            got: collections.Counter = collections.Counter()
            for t in self.sink.transactions():
                m = MESSAGE_ID.search(t.content)
                if t.mail_from == "" or m is None:
                    continue
                for rcpt in t.rcpts:
                    got[(m.group(1).decode(), rcpt)] += 1
            return got

        want = collections.Counter({(m, rc): 1 for m, c in expected.items() for rc in c})
        ok = self.sink.wait_until(lambda ts: arrived() == want and len(self.dsns()) >=
                                  len(with_refusals), harness.scaled(90))
        got = arrived()
        missing = sorted(k for k in want if got[k] == 0)
        twice = sorted(k for k, n in got.items() if n > 1)
        extra = sorted(k for k in got if k not in want)
        self.assertTrue(ok, f"missing {missing[:10]} ({len(missing)}), twice {twice[:10]}, "
                            f"unexpected {extra[:10]}, DSNs {len(self.dsns())} of "
                            f"{len(with_refusals)}; log:\n" + self.daemon.log_text())
        time.sleep(mx.QUIET_PERIOD)
        self.assertEqual(arrived(), want, "a recipient arrived twice")
        self.assertEqual(len(self.dsns()), len(with_refusals), "not one DSN per message")
        with open(self.daemon._log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertNotIn("route lookup failed", log)
        self.assertNotIn("invariant broken", log)
        self.daemon.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
