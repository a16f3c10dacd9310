#include "blast/stats.h"

#include <fmt/format.h>

namespace ringmail::blast {

std::string_view conn_error_name(conn_error e) noexcept {
    switch (e) {
        case conn_error::refused:
            return "refused";
        case conn_error::timeout:
            return "timeout";
        case conn_error::closed:
            return "closed";
        case conn_error::garbage:
            return "garbage";
        case conn_error::rejected:
            return "rejected";
        case conn_error::other:
            return "other";
        case conn_error::tls:
            return "tls";
    }
    return "other";
}

std::uint64_t counters::connection_errors() const noexcept {
    std::uint64_t n = 0;
    for (auto v : conn_errors)
        n += v;
    return n;
}

bool counters::any_error() const noexcept {
    return temp_failed + perm_failed + cut + not_sent + connection_errors() > 0;
}

void counters::merge(const counters& o) noexcept {
    sent += o.sent;
    accepted += o.accepted;
    temp_failed += o.temp_failed;
    perm_failed += o.perm_failed;
    cut += o.cut;
    not_sent += o.not_sent;
    behind += o.behind;
    rcpt_accepted += o.rcpt_accepted;
    rcpt_refused += o.rcpt_refused;
    connects += o.connects;
    established += o.established;
    pipelined += o.pipelined;
    idle_closed += o.idle_closed;
    tls_established += o.tls_established;
    for (std::size_t i = 0; i < conn_error_kinds; ++i)
        conn_errors[i] += o.conn_errors[i];
}

namespace {

double per_second(std::uint64_t n, double seconds) {
    return seconds > 0 ? static_cast<double>(n) / seconds : 0.0;
}

// Nanoseconds as a short human figure.
std::string human_ns(std::uint64_t ns) {
    if (ns < 10'000)
        return fmt::format("{:.1f}us", ns / 1e3);
    if (ns < 10'000'000)
        return fmt::format("{:.2f}ms", ns / 1e6);
    if (ns < 10'000'000'000)
        return fmt::format("{:.1f}ms", ns / 1e6);
    return fmt::format("{:.2f}s", ns / 1e9);
}

std::string latency_line(const histogram& h, bool full) {
    if (h.count() == 0)
        return "none recorded";
    if (!full) {
        return fmt::format("p50 {}  p99 {}  max {}  ({} samples)", human_ns(h.percentile(50)),
                           human_ns(h.percentile(99)), human_ns(h.max()), h.count());
    }
    return fmt::format("p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                       human_ns(h.percentile(50)), human_ns(h.percentile(90)),
                       human_ns(h.percentile(99)), human_ns(h.percentile(99.9)), human_ns(h.max()),
                       h.count());
}

// Microseconds with 0.1 precision, for JSON.
double us(std::uint64_t ns) {
    return static_cast<double>(ns) / 1e3;
}

std::string histogram_json(const histogram& h, bool full) {
    if (!full) {
        return fmt::format(R"({{"count": {}, "p50": {:.1f}, "p99": {:.1f}, "max": {:.1f}}})",
                           h.count(), us(h.percentile(50)), us(h.percentile(99)), us(h.max()));
    }
    return fmt::format(
        R"({{"count": {}, "min": {:.1f}, "mean": {:.1f}, "p50": {:.1f}, "p90": {:.1f}, "p99": {:.1f}, "p99.9": {:.1f}, "max": {:.1f}}})",
        h.count(), us(h.min()), h.mean() / 1e3, us(h.percentile(50)), us(h.percentile(90)),
        us(h.percentile(99)), us(h.percentile(99.9)), us(h.max()));
}

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
            out += c;
        }
    }
    return out + "\"";
}

}  // namespace

std::string format_text(const run_info& run, const shard_stats& s) {
    const counters& c = s.c;
    std::string out;
    auto mode = run.rate > 0 ? fmt::format("open loop at {:g} msg/s", run.rate)
                             : std::string("closed loop");
    out += fmt::format(
        "ringmail-blast -> {}: {} connection(s) on {} shard(s), {}, {} octets, "
        "{} recipient(s)/message{}\n",
        run.target, run.connections, run.shards, mode, run.message_size, run.recipients,
        run.interrupted ? " (interrupted)" : "");
    out += fmt::format(
        "messages     sent {}  accepted {}  4xx {}  5xx {}  cut by connection "
        "errors {}  not sent {}",
        c.sent, c.accepted, c.temp_failed, c.perm_failed, c.cut, c.not_sent);
    if (run.rate > 0)
        out += fmt::format("  behind schedule at the end {}", c.behind);
    out += '\n';
    out += fmt::format("recipients   accepted {}  refused {}\n", c.rcpt_accepted, c.rcpt_refused);
    out += fmt::format(
        "connections  attempts {}  established {}  pipelining {}  closed by server "
        "while idle {}\n",
        c.connects, c.established, c.pipelined, c.idle_closed);
    out += fmt::format("conn errors  {}", c.connection_errors());
    for (std::size_t i = 0; i < conn_error_kinds; ++i) {
        out +=
            fmt::format("  {} {}", conn_error_name(static_cast<conn_error>(i)), c.conn_errors[i]);
    }
    out += '\n';
    out += fmt::format("throughput   {:.1f} accepted msg/s  ({:.1f} sent/s over {:.3f} s)\n",
                       per_second(c.accepted, run.elapsed_s), per_second(c.sent, run.elapsed_s),
                       run.elapsed_s);
    out += fmt::format("latency      {}  [{}]\n", latency_line(s.latency, true),
                       run.rate > 0 ? "scheduled time to final reply" : "MAIL to final reply");
    out += fmt::format("connect      {}  [connect to {} done]\n", latency_line(s.connect, false),
                       run.auth       ? "AUTH"
                       : run.starttls ? "EHLO in TLS"
                                      : "EHLO");
    if (run.starttls) {
        out += fmt::format("tls          {}  [220 to STARTTLS to handshake done; {} established]\n",
                           latency_line(s.tls, false), c.tls_established);
    }
    return out;
}

std::string format_json(const run_info& run, const shard_stats& s) {
    const counters& c = s.c;
    std::string errors;
    for (std::size_t i = 0; i < conn_error_kinds; ++i) {
        if (i)
            errors += ", ";
        errors += fmt::format(R"("{}": {})", conn_error_name(static_cast<conn_error>(i)),
                              c.conn_errors[i]);
    }
    return fmt::format(
        R"({{"target": {}, "shards": {}, "connections": {}, "mode": "{}", "rate": {:g}, )"
        R"("requested": {{"messages": {}, "duration_s": {:g}}}, "message_size": {}, )"
        R"("recipients_per_message": {}, "pipelining_requested": {}, "starttls": {}, )"
        R"("auth": {}, "interrupted": {}, )"
        R"("elapsed_s": {:.6f}, )"
        R"("messages": {{"sent": {}, "accepted": {}, "temp_failed": {}, "perm_failed": {}, )"
        R"("cut": {}, "not_sent": {}, "behind_schedule": {}}}, )"
        R"("recipients": {{"accepted": {}, "refused": {}}}, )"
        R"("connections": {{"attempts": {}, "established": {}, "pipelining": {}, )"
        R"("idle_closed": {}, "tls_established": {}, "errors": {}, "error_kinds": {{{}}}}}, )"
        R"("throughput": {{"accepted_per_s": {:.3f}, "sent_per_s": {:.3f}}}, )"
        R"("latency_us": {}, "connect_us": {}, "tls_handshake_us": {}, "errors": {}}})"
        "\n",
        json_string(run.target), run.shards, run.connections, run.rate > 0 ? "open" : "closed",
        run.rate, run.messages, run.duration_s, run.message_size, run.recipients,
        run.pipelining ? "true" : "false", run.starttls ? "true" : "false",
        run.auth ? "true" : "false", run.interrupted ? "true" : "false", run.elapsed_s, c.sent,
        c.accepted, c.temp_failed, c.perm_failed, c.cut, c.not_sent, c.behind, c.rcpt_accepted,
        c.rcpt_refused, c.connects, c.established, c.pipelined, c.idle_closed, c.tls_established,
        c.connection_errors(), errors, per_second(c.accepted, run.elapsed_s),
        per_second(c.sent, run.elapsed_s), histogram_json(s.latency, true),
        histogram_json(s.connect, false), histogram_json(s.tls, false),
        c.any_error() ? "true" : "false");
}

}  // namespace ringmail::blast
