#include "ringmail/admin/status_page.h"

namespace ringmail::admin {

namespace {

// One document, no external asset. The script scrapes /metrics (the same numbers Prometheus
// sees) and /api/v1/queue every 2 s, keeps the last 5 minutes of rates in memory and draws
// them as inline SVG.
constexpr std::string_view page = R"html(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringmail status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:baseline}
header h1{font-size:18px;margin:0}#state{opacity:.8}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px;padding:14px}
section{background:#fff;border-radius:6px;padding:12px 14px;box-shadow:0 1px 2px #0002}
h2{font-size:14px;margin:0 0 8px;color:#445}
.big{font-size:28px;font-weight:600}.unit{color:#778;font-size:13px}
table{border-collapse:collapse;width:100%}td,th{padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}th{color:#667;font-weight:500}
.bar{height:14px;background:#4a7bd8;display:inline-block;vertical-align:middle}
.kv{display:grid;grid-template-columns:auto auto;gap:2px 16px}
#login{display:none;padding:14px}#login input{width:320px}
svg text{font-size:10px;fill:#667}
</style></head><body>
<header><h1>ringmail</h1><span id="state">connecting...</span></header>
<div id="login"><form id="tokform">Bearer token: <input id="tok" type="password"
 autocomplete="off"> <button>Use</button></form></div>
<main>
<section><h2>Accepted messages per second (5 min)</h2><div class="big" id="acc_now">-</div>
<svg id="acc_chart" width="100%" height="90" viewBox="0 0 300 90" preserveAspectRatio="none"></svg></section>
<section><h2>Delivered recipients per second (5 min)</h2><div class="big" id="del_now">-</div>
<svg id="del_chart" width="100%" height="90" viewBox="0 0 300 90" preserveAspectRatio="none"></svg></section>
<section><h2>Queue</h2><div class="kv">
<span>messages</span><b id="q_msgs">-</b><span>recipients</span><b id="q_rcpts">-</b>
<span>oldest message</span><b id="q_oldest">-</b><span>connections in / out</span><b id="conns">-</b>
</div></section>
<section><h2>Outcome mix (since start)</h2><div id="mix"></div></section>
<section><h2>TLS share of handshakes</h2><div class="kv">
<span>inbound TLS ok</span><b id="tls_in">-</b><span>outbound TLS ok</span><b id="tls_out">-</b>
<span>connections with TLS (inbound)</span><b id="tls_share">-</b></div></section>
<section style="grid-column:1/-1"><h2>Queue by destination</h2>
<table id="dests"><thead><tr><th>destination</th><th>recipients</th><th>ready</th>
<th>in flight</th><th>deferred</th><th>oldest</th><th>suspended until</th><th></th></tr></thead>
<tbody></tbody></table></section>
</main>
<script>
"use strict";
const hist = {acc: [], del: []};
let last = null, token = sessionStorage.getItem("ringmail_token") || "";
const $ = (id) => document.getElementById(id);
function headers() { return token ? {"Authorization": "Bearer " + token} : {}; }
function parse(text) {
  const m = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    m[line.slice(0, sp)] = parseFloat(line.slice(sp + 1));
  }
  return m;
}
function sum(m, prefix) {
  let s = 0;
  for (const k in m) if (k === prefix || k.startsWith(prefix + "{")) s += m[k];
  return s;
}
function age(s) {
  if (!s) return "none";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function chart(svg, data) {
  const w = 300, h = 80, max = Math.max(1, ...data);
  let pts = "";
  data.forEach((v, i) => {
    const x = data.length < 2 ? 0 : i * w / (150 - 1);
    pts += x.toFixed(1) + "," + (h - v / max * (h - 4) + 2).toFixed(1) + " ";
  });
  svg.innerHTML = '<line x1="0" y1="' + h + '" x2="300" y2="' + h + '" stroke="#ccd"/>' +
    '<polyline fill="none" stroke="#4a7bd8" stroke-width="1.5" points="' + pts + '"/>' +
    '<text x="2" y="10">' + max.toFixed(1) + '/s</text>';
}
function push(a, v) { a.push(v); if (a.length > 150) a.shift(); }
function needToken() {
  $("login").style.display = "block";
  $("state").textContent = "token required";
}
async function tick() {
  try {
    const r = await fetch("/metrics", {headers: headers(), cache: "no-store"});
    if (r.status === 401) { needToken(); return; }
    const m = parse(await r.text());
    const now = Date.now() / 1000;
    const acc = sum(m, "ringmail_messages_received_total");
    const del = sum(m, "ringmail_recipients_delivered_total");
    if (last) {
      const dt = Math.max(0.001, now - last.t);
      push(hist.acc, Math.max(0, (acc - last.acc) / dt));
      push(hist.del, Math.max(0, (del - last.del) / dt));
      $("acc_now").innerHTML = hist.acc[hist.acc.length - 1].toFixed(1) + ' <span class="unit">msg/s</span>';
      $("del_now").innerHTML = hist.del[hist.del.length - 1].toFixed(1) + ' <span class="unit">rcpt/s</span>';
      chart($("acc_chart"), hist.acc);
      chart($("del_chart"), hist.del);
    }
    last = {t: now, acc, del};
    $("q_msgs").textContent = m["ringmail_queue_messages"];
    $("q_rcpts").textContent = m["ringmail_queue_recipients"];
    $("q_oldest").textContent = age(m["ringmail_queue_oldest_seconds"]);
    $("conns").textContent = m['ringmail_connections_open{direction="inbound"}'] + " / " +
      m['ringmail_connections_open{direction="outbound"}'];
    const mix = {delivered: del, deferred: sum(m, "ringmail_recipients_deferred_total"),
      bounced: sum(m, "ringmail_recipients_bounced_total"),
      expired: sum(m, "ringmail_recipients_expired_total")};
    const total = Math.max(1, mix.delivered + mix.deferred + mix.bounced + mix.expired);
    let html = "<table>";
    for (const k in mix)
      html += "<tr><td>" + k + "</td><td>" + mix[k] + "</td><td style='width:55%;text-align:left'>" +
        "<span class='bar' style='width:" + (100 * mix[k] / total).toFixed(1) + "%'></span> " +
        (100 * mix[k] / total).toFixed(1) + "%</td></tr>";
    $("mix").innerHTML = html + "</table>";
    const tin = m['ringmail_tls_handshakes_total{direction="inbound",result="ok"}'] || 0;
    const tinf = m['ringmail_tls_handshakes_total{direction="inbound",result="failed"}'] || 0;
    const tout = m['ringmail_tls_handshakes_total{direction="outbound",result="ok"}'] || 0;
    const toutf = m['ringmail_tls_handshakes_total{direction="outbound",result="failed"}'] || 0;
    const accepted = sum(m, "ringmail_connections_accepted_total");
    $("tls_in").textContent = tin + " ok, " + tinf + " failed";
    $("tls_out").textContent = tout + " ok, " + toutf + " failed";
    $("tls_share").textContent = accepted ? (100 * tin / accepted).toFixed(1) + " %" : "-";
    const q = await fetch("/api/v1/queue?limit=20", {headers: headers(), cache: "no-store"});
    if (q.ok) {
      const j = await q.json();
      const max = Math.max(1, ...j.destinations.map((d) => d.recipients));
      let rows = "";
      for (const d of j.destinations) {
        const e = (s) => String(s).replace(/[&<>"]/g, (c) => "&#" + c.charCodeAt(0) + ";");
        rows += "<tr><td>" + e(d.destination) + "</td><td>" + d.recipients + "</td><td>" +
          d.ready + "</td><td>" + d.in_flight + "</td><td>" + d.deferred + "</td><td>" +
          age(d.oldest_age) + "</td><td>" + (d.suspended_until ?
          new Date(d.suspended_until * 1000).toLocaleTimeString() : "") +
          "</td><td style='width:30%;text-align:left'><span class='bar' style='width:" +
          (100 * d.recipients / max).toFixed(1) + "%'></span></td></tr>";
      }
      $("dests").tBodies[0].innerHTML = rows;
    }
    $("login").style.display = "none";
    $("state").textContent = "live, updated " + new Date().toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    $("state").textContent = "unreachable: " + e;
  }
}
$("tokform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("tok").value.trim();
  sessionStorage.setItem("ringmail_token", token);
  tick();
});
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) { token = fromHash; sessionStorage.setItem("ringmail_token", token); }
tick();
setInterval(tick, 2000);
</script></body></html>
)html";

}  // namespace

std::string_view status_page_html() noexcept {
    return page;
}

}  // namespace ringmail::admin
