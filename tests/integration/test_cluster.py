"""Cluster-wide limits on Redis (issue 16) end to end: a redis-server of the test's own on a
free loopback port (no persistence), three ringmaild nodes with their own spools and
`[cluster] redis` pointing at it, one provider with max_message_rate = "50/s" and
max_connections = 2, all delivering by MX (dnsmasq answers for the zone "test") to one Python
sink on 127.0.0.1 that records when each message arrived and how many connections were open.

  the combined rate of the three nodes at the sink is 50/s within 5% over 20 s of steady state;
  never more than 2 connections at once from all nodes together while Redis is up;
  a rule's suspension on one node holds on the other within a second;
  Redis killed mid-run and started again: delivery never stops (each node falls back to the
  local limits divided by the participants it last counted, at least one connection each,
  and says so in its log and /metrics), and every message arrives exactly once.

Skipped when redis-server is not installed. RINGMAIL_CLUSTER_MESSAGES changes the count.
"""

import os
import shutil
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

import harness

SINK_IP = harness.LOOPBACK
BLAST = os.environ.get("RINGMAIL_BLAST", "build/tools/ringmail-blast")
REDIS = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or ""
RATE = 50
CONNECTIONS = 2
NODES = 3
TIMEOUT = harness.scaled(30)


class CountingSink(harness.SmtpSink):
    """The harness sink, remembering when each message arrived and the connections open."""

    def __init__(self, *args, **kwargs):
        self.open_now = 0
        self.opened = []  # (monotonic, connections open after this one came)
        self.arrivals = []  # (monotonic, recipient)
        super().__init__(*args, **kwargs)

    def _serve(self, conn, peer):
        with self._cond:
            self.open_now += 1
            self.opened.append((time.monotonic(), self.open_now))
        try:
            return super()._serve(conn, peer)
        finally:
            with self._cond:
                self.open_now -= 1

    def _finish(self, mail, rcpts, raw, helo, peer, tls=False, rcpt_params=None):
        reply = super()._finish(mail, rcpts, raw, helo, peer, tls, rcpt_params)
        with self._cond:
            for r in rcpts:
                self.arrivals.append((time.monotonic(), r))
        return reply

    def snapshot(self):
        with self._cond:
            return list(self.opened), list(self.arrivals)


class Redis:
    """redis-server on 127.0.0.1:port in a directory of its own, without persistence."""

    def __init__(self):
        self.port = harness.free_port()
        self.dir = harness.temp_dir("ringmail-redis-")
        self.proc = None

    def start(self):
        self.proc = harness.spawn(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not harness.wait_until(self._answers, harness.scaled(10)):
            raise AssertionError("redis-server did not start")

    def _answers(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def send(port, rcpts):
    with smtplib.SMTP(harness.LOOPBACK, port, timeout=30) as s:
        for r in rcpts:
            msg = (f"From: s@origin.test\r\nTo: {r}\r\nSubject: cluster\r\n"
                   f"Message-ID: <{time.time_ns()}@origin.test>\r\n\r\nbody\r\n")
            s.sendmail("s@origin.test", [r], msg.encode())


def metric(node, name):
    try:
        with urllib.request.urlopen(f"http://{node.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@unittest.skipUnless(REDIS, "redis-server not installed")
class TestCluster(unittest.TestCase):
    def start_cluster(self, count, provider, rules=(), sink_kwargs=None):
        """dnsmasq, the sink, redis-server and `count` nodes sharing [[provider]] `provider`."""
        dns = harness.Dnsmasq(mx=[("cluster.test", "mx.test", 10)], hosts=[("mx.test", SINK_IP)])
        self.addCleanup(dns.close)
        sink = CountingSink(SINK_IP, harness.free_port(SINK_IP), **(sink_kwargs or {}))
        self.addCleanup(sink.close)
        redis = Redis()
        redis.start()
        self.addCleanup(redis.kill)
        nodes = []
        for i in range(count):
            work = harness.temp_dir()
            self.addCleanup(shutil.rmtree, work, True)
            cfg = harness.make_config(
                os.path.join(work, "spool"), harness.free_port(), shards=1,
                hostname=f"node{i}.test",
                delivery_options={"mx_port": sink.port, "shaping_file": "",
                                  "connect_timeout": "5s", "idle_timeout": "1s",
                                  "retry_schedule": ["1s", "2s"]})
            cfg["dns"] = {"servers": [dns.server]}
            cfg["provider"] = [dict(provider, name="bulk", domain_suffix=["cluster.test"])]
            if rules:
                cfg["shaping_rule"] = list(rules)
            cfg["cluster"] = {"redis": f"127.0.0.1:{redis.port}"}
            admin = f"127.0.0.1:{harness.free_port()}"
            cfg["admin"] = {"address": admin}
            node = harness.Ringmaild(cfg, workdir=work)
            node.admin = admin
            self.addCleanup(node.stop)
            node.start()
            nodes.append(node)
        # Every node counts the participants before the mail comes.
        self.assertTrue(harness.wait_until(
            lambda: all(metric(n, "ringmail_cluster_participants") == count for n in nodes),
            TIMEOUT), [n.log_text()[-2000:] for n in nodes])
        return sink, redis, nodes

    def test_a_suspension_on_one_node_stops_the_others_within_a_second(self):
        duration = 4
        tss04 = "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred"
        sink, _, nodes = self.start_cluster(
            2, {}, rules=[{"provider": "bulk", "match": r"\[TSS04\]", "action": "suspend",
                           "duration": f"{duration}s"}],
            sink_kwargs={"reject_rcpts": {"bad@cluster.test": tss04}})
        a, b = nodes
        send(a.port, ["bad@cluster.test"])
        self.assertTrue(harness.wait_until(lambda: "suspended from source" in a.log_text(),
                                           TIMEOUT), a.log_text()[-3000:])
        suspended_at = time.monotonic()
        sink.set_rcpt_reply("bad@cluster.test", None)
        # Within a second the other node knows: what it gets then waits for the end.
        time.sleep(1.0)
        send(b.port, [f"x{k}@cluster.test" for k in range(5)])
        self.assertTrue(harness.wait_until(
            lambda: len([r for _, r in sink.snapshot()[1] if r.startswith("x")]) == 5,
            TIMEOUT + duration))
        first = min(t for t, r in sink.snapshot()[1] if r.startswith("x"))
        print(f"the other node's first delivery {first - suspended_at:.2f} s after the "
              f"suspension ({duration} s)")
        self.assertGreaterEqual(first - suspended_at, duration - 0.5)

    def test_three_nodes_share_rate_and_connections_through_redis(self):
        total = int(os.environ.get("RINGMAIL_CLUSTER_MESSAGES", "1500"))
        sink, redis, nodes = self.start_cluster(
            NODES, {"max_message_rate": f"{RATE}/s", "max_connections": CONNECTIONS,
                    # Connections turn over, so that every node gets its turn.
                    "max_messages_per_connection": 20})
        for n in nodes:
            self.assertIn("in use for shared limits", n.log_text())

        per_node = total // NODES
        blasts = [subprocess.Popen(
            [BLAST, "--target", f"{harness.LOOPBACK}:{n.port}", "--messages", str(per_node),
             "--connections", "4", "--to", f"n{i}u{{n}}@cluster.test",
             "--from", "s@origin.test", "--json", "--no-progress", "--size", "512"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, n in enumerate(nodes)]
        for b in blasts:
            out, err = b.communicate(timeout=harness.scaled(60))
            self.assertEqual(b.returncode, 0, err)
        expected = per_node * NODES

        # Steady state: 20 s measured from the 50th message on.
        self.assertTrue(harness.wait_until(lambda: len(sink.snapshot()[1]) >= 50, TIMEOUT))
        start = sink.snapshot()[1][49][0]
        window = 20.0
        time.sleep(max(0.0, start + window + 0.5 - time.monotonic()))
        opened, arrivals = sink.snapshot()
        in_window = [t for t, _ in arrivals if start <= t < start + window]
        rate = len(in_window) / window
        steady_peak = max(k for _, k in opened)
        print(f"combined rate at the sink: {rate:.2f}/s over {window:.0f} s "
              f"({len(in_window)} messages); most connections at once: {steady_peak}")

        # Redis goes away for a while, then comes back.
        redis.kill()
        killed_at = time.monotonic()
        self.assertTrue(harness.wait_until(
            lambda: all((metric(n, "ringmail_cluster_degraded") or 0) >= 1 for n in nodes),
            TIMEOUT))
        outage = 3.0
        time.sleep(max(0.0, killed_at + outage - time.monotonic()))
        delivered_during = len([t for t, _ in sink.snapshot()[1] if t >= killed_at])
        redis.start()
        restarted_at = time.monotonic()
        self.assertTrue(harness.wait_until(
            lambda: all(metric(n, "ringmail_cluster_degraded") == 0 for n in nodes), TIMEOUT))

        # Everything arrives, once.
        self.assertTrue(harness.wait_until(lambda: len(sink.snapshot()[1]) >= expected,
                                           harness.scaled(60)),
                        (len(sink.snapshot()[1]), expected))
        time.sleep(1.0)  # anything more would be a duplicate
        opened, arrivals = sink.snapshot()
        rcpts = [r for _, r in arrivals]
        self.assertEqual(len(rcpts), expected)
        self.assertEqual(len(set(rcpts)), expected)
        wanted = {f"n{i}u{k}@cluster.test" for i in range(NODES) for k in range(per_node)}
        self.assertEqual(set(rcpts), wanted)

        during_outage = [k for t, k in opened if killed_at <= t < restarted_at]
        # While Redis was up (before the kill, and once the connections opened on local limits
        # are gone: each carries at most 20 messages), never more than the limit.
        up = [k for t, k in opened if t < killed_at or t > restarted_at + 6]
        print(f"during the outage ({outage:.0f} s): {delivered_during} messages delivered, "
              f"most connections at once {max(during_outage, default=0)}; after it: "
              f"{max(up, default=0)}")
        for n in nodes:
            with open(n._log_path, encoding="utf-8", errors="replace") as f:
                self.assertIn("cluster: Redis unavailable", f.read())
            self.assertGreaterEqual(metric(n, "ringmail_cluster_fallbacks_total"), 1)
        self.assertLessEqual(abs(rate - RATE) / RATE, 0.05, rate)
        self.assertLessEqual(steady_peak, CONNECTIONS, opened[:50])
        self.assertLessEqual(max(up), CONNECTIONS)
        # Delivery never stopped: mail flowed while Redis was away, each node on its share
        # (a third of the rate, at least one connection, the ones it held counted in it).
        self.assertGreater(delivered_during, 0)
        self.assertLessEqual(max(during_outage, default=0), CONNECTIONS + NODES - 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
