"""The admin endpoint (issue 14): bearer token, /metrics (counters move by exactly what was sent,
promtool accepts the exposition), the queue API and the controls (suspend / resume across a
restart, flush, bounce with its DSN, drain), and the status page in headless Chromium.

MX routing through dnsmasq on loopback: every *.test domain below has MX mx-live.test
(127.0.0.2), where the Python sink listens on the port set as delivery.mx_port."""

import json
import os
import shutil
import smtplib
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request

import harness

TIMEOUT = harness.scaled(30)
QUIET = harness.scaled(2)
SENDER = "sender@origin.test"
LIVE = "127.0.0.2"
TOKEN = "test-token-0123456789abcdef"
DOMAINS = ["origin.test", "a.test", "b.test", "c.test", "d.test", "load.test"]


def message(mid: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: x@dest.test\r\nSubject: admin {mid}\r\n"
            f"Message-ID: <{mid}@origin.test>\r\n\r\nbody {mid}\r\n").encode()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class AdminTest(unittest.TestCase):
    dns: harness.Dnsmasq

    @classmethod
    def setUpClass(cls):
        cls.dns = harness.Dnsmasq(mx=[(d, "mx-live.test", 10) for d in DOMAINS],
                                  hosts=[("mx-live.test", LIVE)])

    @classmethod
    def tearDownClass(cls):
        cls.dns.close()

    def setUp(self):
        self.sink = harness.SmtpSink(LIVE, harness.free_port(LIVE))
        self.addCleanup(self.sink.close)
        self.workdir = harness.temp_dir()
        token_file = os.path.join(self.workdir, "admin.token")
        with open(token_file, "w", encoding="utf-8") as f:
            f.write(TOKEN + "\n")
        self.admin_port = harness.free_port()
        cfg = harness.make_config(os.path.join(self.workdir, "spool"), harness.free_port(),
                                  shards=2, retry_schedule=["1h"],
                                  delivery_options={"mx_port": self.sink.port,
                                                    "connect_timeout": "5s"})
        cfg["dns"] = {"servers": [self.dns.server]}
        cfg["admin"] = {"address": f"{harness.LOOPBACK}:{self.admin_port}",
                        "token_file": token_file}
        self.daemon = harness.Ringmaild(cfg, workdir=self.workdir)
        self.addCleanup(self.daemon.kill)
        self.daemon.start()

    # --- helpers ---------------------------------------------------------------------------

    def http(self, method: str, path: str, body=None, token: str | None = TOKEN):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{harness.LOOPBACK}:{self.admin_port}{path}",
                                     data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def api(self, method: str, path: str, body=None):
        status, text = self.http(method, path, body)
        self.assertLess(status, 300, f"{method} {path}: {status} {text}")
        return json.loads(text)

    def metrics(self) -> dict[str, float]:
        status, text = self.http("GET", "/metrics")
        self.assertEqual(status, 200, text)
        return parse_metrics(text)

    def send(self, rcpt: str, mid: str) -> str:
        """One message in its own SMTP session; returns its queue id."""
        with smtplib.SMTP(harness.LOOPBACK, self.daemon.port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail(SENDER)
            code, _ = s.rcpt(rcpt)
            self.assertEqual(code, 250)
            code, reply = s.data(message(mid))
            self.assertEqual(code, 250, reply)
        return reply.decode().rsplit(" ", 1)[1]

    def delivered(self, mid: str) -> bool:
        return any(f"<{mid}@origin.test>".encode() in t.content and t.mail_from != ""
                   for t in self.sink.transactions())

    def wait(self, what: str, predicate, timeout: float = TIMEOUT) -> None:
        self.assertTrue(harness.wait_until(predicate, timeout),
                        f"{what} within {timeout:.0f}s; daemon log:\n" + self.daemon.log_text())

    # --- tests ------------------------------------------------------------------------------

    def test_token_metrics_and_errors(self):
        # Probes need no token; everything else does.
        self.assertEqual(self.http("GET", "/healthz", token=None)[0], 200)
        # The harness waits for a 220, which the first shard up gives; /readyz turns 200 once
        # every shard serves.
        self.wait("/readyz 200", lambda: self.http("GET", "/readyz", token=None)[0] == 200)
        for path in ("/metrics", "/api/v1/queue", "/api/v1/suspend"):
            status, text = self.http("GET", path, token=None)
            self.assertEqual(status, 401, path)
            self.assertIn("error", json.loads(text))
            self.assertEqual(self.http("GET", path, token=TOKEN[:-1] + "X")[0], 401, path)
        self.assertEqual(self.http("POST", "/api/v1/drain", token=None)[0], 401)
        self.assertTrue(self.daemon.running())

        before = self.metrics()
        ids = [self.send(f"r{i}@a.test", f"count{i}") for i in range(3)]
        self.assertEqual(len(set(ids)), 3)
        self.wait("3 deliveries", lambda: all(self.delivered(f"count{i}") for i in range(3)))
        key = "ringmail_recipients_delivered_total"
        self.wait("the delivered counter", lambda: self.metrics()[key] == before[key] + 3)
        after = self.metrics()
        listener = f'ringmail_connections_accepted_total{{listener="{harness.LOOPBACK}:{self.daemon.port}"}}'
        self.assertEqual(after[listener] - before[listener], 3)
        for name, delta in (("ringmail_messages_received_total", 3),
                            ("ringmail_recipients_delivered_total", 3),
                            ("ringmail_recipients_bounced_total", 0),
                            ("ringmail_recipients_expired_total", 0),
                            ('ringmail_dns_queries_total{result="nxdomain"}', 0),
                            ("ringmail_delivery_latency_seconds_count", 3)):
            self.assertEqual(after[name] - before[name], delta, name)
        self.assertGreaterEqual(after['ringmail_dns_queries_total{result="ok"}'], 1)
        self.assertGreaterEqual(after["ringmail_spool_commit_seconds_count"], 3)
        self.assertIn('ringmail_shard_loop_lag_seconds{shard="1"}', after)

        promtool = shutil.which("promtool")
        if promtool is None:
            self.skipTest("promtool (Debian prometheus) is not installed")
        _, text = self.http("GET", "/metrics")
        check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout.decode() + check.stderr.decode())

        # Bad requests: a 4xx with a JSON error, and the endpoint carries on.
        for method, path, body in (("POST", "/api/v1/suspend", {"duration": "30m"}),
                                   ("POST", "/api/v1/suspend", {"domain": "a.test",
                                                                "duration": "soon"}),
                                   ("GET", "/api/v1/queue?limit=zero", None),
                                   ("GET", "/api/v1/messages/nothex", None),
                                   ("POST", "/api/v1/bounce", {}),
                                   ("GET", "/api/v1/nothing", None),
                                   ("PUT", "/metrics", None)):
            status, text = self.http(method, path, body)
            self.assertGreaterEqual(status, 400, path)
            self.assertLess(status, 500, path)
            self.assertIn("error", json.loads(text), path)
        status, _ = self.http("GET", "/api/v1/messages/00000000DEADBEEF")
        self.assertEqual(status, 404)
        # Malformed HTTP: its 4xx (505 for HTTP/2.0) with a JSON error, then the connection
        # closes; the endpoint carries on.
        for raw in (b"GET /metrics HTTP/1.1\nHost: x\n\n", b"GET /metrics HTTP/2.0\r\n\r\n",
                    b"POST /api/v1/flush HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
                    b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", b"\x00\xff\r\n\r\n"):
            with socket.create_connection((harness.LOOPBACK, self.admin_port), timeout=10) as c:
                c.sendall(raw)
                answer = b""
                while chunk := c.recv(65536):
                    answer += chunk
            status = int(answer.split(b" ", 2)[1])
            self.assertTrue(400 <= status < 500 or status == 505, answer)
            self.assertIn(b'{"error":', answer)
        self.assertEqual(self.http("GET", "/healthz", token=None)[0], 200)

    def test_suspend_restart_resume_flush_bounce_drain(self):
        until = self.api("POST", "/api/v1/suspend",
                         {"domain": "A.test", "duration": "30m", "reason": "maintenance"})
        self.assertEqual(until["suspended"]["domain"], "a.test")
        held = self.send("held@a.test", "held")
        self.send("flows@b.test", "flows")
        self.wait("b.test delivered", lambda: self.delivered("flows"))
        time.sleep(QUIET)
        self.assertFalse(self.delivered("held"), "a suspended domain got a delivery")
        q = self.api("GET", "/api/v1/queue?sort=recipients&limit=10")
        row = [d for d in q["destinations"] if d["destination"] == "a.test"]
        self.assertEqual(len(row), 1, q)
        self.assertEqual(row[0]["recipients"], 1)
        self.assertIsNotNone(row[0]["suspended_until"])
        ctl = os.environ.get("RINGMAILCTL")
        if ctl:
            base = [ctl, "--admin", f"{harness.LOOPBACK}:{self.admin_port}", "--token-file",
                    os.path.join(self.workdir, "admin.token")]
            out = subprocess.run(base + ["queue"], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("a.test", out.stdout)
            out = subprocess.run(base + ["--json", "suspend"], capture_output=True, text=True,
                                 timeout=30)
            self.assertEqual(json.loads(out.stdout)["suspensions"][0]["domain"], "a.test")
            out = subprocess.run(base + ["suspend"], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("a.test", out.stdout)  # the listing's NAME column
            out = subprocess.run(base + ["inspect", held], capture_output=True, text=True,
                                 timeout=30)
            self.assertIn("held@a.test", out.stdout)
            out = subprocess.run(base[:3] + ["queue"], capture_output=True, text=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 1)  # no token
            self.assertIn("401", out.stderr)
        m = self.api("GET", f"/api/v1/messages/{held}")
        self.assertEqual(m["sender"], SENDER)
        self.assertEqual([r["state"] for r in m["recipients"]], ["pending"])
        self.assertEqual(m["recipients"][0]["destination"], "a.test")

        # A restart keeps the suspension (spool_dir/suspensions) and the message.
        self.daemon.stop()
        self.daemon.start()
        listed = self.api("GET", "/api/v1/suspend")["suspensions"]
        self.assertEqual([(s["domain"], s["reason"]) for s in listed], [("a.test", "maintenance")])
        time.sleep(QUIET)
        self.assertFalse(self.delivered("held"), "the suspension did not survive the restart")
        self.api("DELETE", "/api/v1/suspend?domain=a.test")
        self.wait("a.test delivered after resume", lambda: self.delivered("held"))
        self.assertEqual(self.api("GET", "/api/v1/suspend")["suspensions"], [])

        # Flush: a deferred recipient (retry in 1h) is tried again now.
        self.sink.set_rcpt_reply("later@c.test", "451 4.3.0 try later")
        self.send("later@c.test", "later")
        self.wait("the first attempt", lambda: self.sink.rcpt_attempts("later@c.test") >= 1)
        self.wait("the deferral", lambda: self.api("GET", "/api/v1/queue")["totals"]["deferred"] >= 1)
        self.sink.set_rcpt_reply("later@c.test", None)
        flushed = self.api("POST", "/api/v1/flush", {"domain": "c.test"})
        self.assertEqual(flushed["flushed_jobs"], 1)
        self.wait("c.test delivered after flush", lambda: self.delivered("later"))

        # Bounce: the queued recipients fail now and their sender gets the usual DSN.
        before = self.metrics()["ringmail_recipients_bounced_total"]
        self.api("POST", "/api/v1/suspend", {"domain": "d.test", "duration": "1h"})
        self.send("doomed@d.test", "doomed")
        self.wait("d.test queued",
                  lambda: any(d["destination"] == "d.test" and d["recipients"] == 1
                              for d in self.api("GET", "/api/v1/queue")["destinations"]))
        bounced = self.api("POST", "/api/v1/bounce", {"domain": "d.test", "reason": "spam run"})
        self.assertEqual(bounced["bounced_recipients"], 1)
        dsn = lambda: [t for t in self.sink.transactions() if t.mail_from == "" and
                       SENDER in t.rcpts and b"doomed@d.test" in t.content]
        self.wait("the DSN", lambda: dsn())
        self.assertIn(b"spam run", dsn()[0].content)
        self.assertEqual(self.metrics()["ringmail_recipients_bounced_total"], before + 1)
        self.assertFalse(self.delivered("doomed"))

        # Drain: as SIGTERM.
        status, _ = self.http("POST", "/api/v1/drain")
        self.assertEqual(status, 202)
        self.assertEqual(self.daemon.wait_exit(harness.scaled(30)), 0)

    def test_status_page_in_headless_chromium(self):
        chromium = shutil.which("chromium")
        if chromium is None:
            self.skipTest("chromium is not installed")
        status, html = self.http("GET", "/", token=None)
        self.assertEqual(status, 200)
        self.assertNotIn("http://", html.replace(f"http://{harness.LOOPBACK}", ""))
        self.assertNotIn("https://", html)
        # The page gets the token from its URL fragment (never sent to the server) and sends it
        # as the Authorization header. Two loads some seconds apart under a small load: the
        # numbers it shows must move.
        url = f"http://{harness.LOOPBACK}:{self.admin_port}/#token={TOKEN}"
        profile = harness.temp_dir("ringmail-chromium-")

        def dump() -> str:
            r = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox",
                                "--no-first-run", "--disable-extensions",
                                "--disable-background-networking", f"--user-data-dir={profile}",
                                "--virtual-time-budget=5000", "--dump-dom", url],
                               capture_output=True, timeout=harness.scaled(60))
            self.assertEqual(r.returncode, 0, r.stderr.decode()[-2000:])
            return r.stdout.decode()

        def number(dom: str, ident: str) -> str:
            at = dom.find(f'id="{ident}"')
            self.assertGreaterEqual(at, 0, dom[:3000])
            return dom[dom.find(">", at) + 1:dom.find("<", at)]

        for i in range(3):
            self.send(f"p{i}@load.test", f"page{i}")
        self.wait("load delivered", lambda: all(self.delivered(f"page{i}") for i in range(3)))
        first = dump()
        self.assertIn("live, updated", first)
        for i in range(3, 8):
            self.send(f"p{i}@load.test", f"page{i}")
        self.wait("more load delivered", lambda: all(self.delivered(f"page{i}") for i in range(8)))
        second = dump()
        self.assertIn("live, updated", second)
        self.assertNotEqual(number(first, "q_msgs") + first[first.find('id="mix"'):][:400],
                            number(second, "q_msgs") + second[second.find('id="mix"'):][:400])


if __name__ == "__main__":
    unittest.main()
