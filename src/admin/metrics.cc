#include "ringmail/admin/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

namespace ringmail::admin {

namespace {

// Label values are escaped as the format says: backslash, double quote, newline.
std::string label(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (const char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

void head(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

template <typename F>
std::uint64_t sum_u(std::span<const core::shard_metrics> s, F&& f) {
    std::uint64_t n = 0;
    for (const auto& m : s)
        n += f(m);
    return n;
}

template <typename F>
std::int64_t sum_i(std::span<const core::shard_metrics> s, F&& f) {
    std::int64_t n = 0;
    for (const auto& m : s)
        n += f(m);
    return n;
}

std::string seconds(double v) {
    return fmt::format("{}", v);
}

template <std::size_t N, typename F>
void histogram(std::string& out, std::string_view name, std::string_view help,
               std::span<const core::shard_metrics> shards, F&& pick) {
    head(out, name, "histogram", help);
    if (shards.empty())
        return;
    const auto& bounds = pick(shards.front()).bounds();
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= N; ++i) {
        for (const auto& m : shards)
            cumulative += pick(m).bucket(i);
        if (i < N) {
            fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"{}\"}} {}\n", name,
                           seconds(bounds[i]), cumulative);
        }
    }
    // The count is read after the buckets; +Inf must be the largest bucket and equal the
    // count, so both are the same number (observations racing with the scrape are shown in
    // the next one).
    std::uint64_t sum_us = 0;
    for (const auto& m : shards)
        sum_us += pick(m).sum_us();
    fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"+Inf\"}} {}\n", name, cumulative);
    fmt::format_to(std::back_inserter(out), "{}_sum {}\n", name,
                   seconds(static_cast<double>(sum_us) / 1e6));
    fmt::format_to(std::back_inserter(out), "{}_count {}\n", name, cumulative);
}

}  // namespace

std::vector<destination_row> merge_destinations(std::vector<destination_row> rows) {
    std::unordered_map<std::string, std::size_t> at;
    std::vector<destination_row> out;
    for (auto& r : rows) {
        auto [it, fresh] = at.emplace(r.key, out.size());
        if (fresh) {
            out.push_back(std::move(r));
            continue;
        }
        destination_row& m = out[it->second];
        m.ready += r.ready;
        m.deferred += r.deferred;
        m.in_flight += r.in_flight;
        m.connections += r.connections;
        m.recipients += r.recipients;
        if (r.next_attempt_unix != 0 &&
            (m.next_attempt_unix == 0 || r.next_attempt_unix < m.next_attempt_unix))
            m.next_attempt_unix = r.next_attempt_unix;
        if (r.oldest_arrival_unix != 0 &&
            (m.oldest_arrival_unix == 0 || r.oldest_arrival_unix < m.oldest_arrival_unix))
            m.oldest_arrival_unix = r.oldest_arrival_unix;
        if (m.last_reply.empty())
            m.last_reply = std::move(r.last_reply);
    }
    return out;
}

std::string render_metrics(const metrics_inputs& in) {
    const auto s = in.shards;
    std::string out;
    out.reserve(16384);
    auto line_u = [&](std::string_view name, std::string_view labels, std::uint64_t v) {
        if (labels.empty())
            fmt::format_to(std::back_inserter(out), "{} {}\n", name, v);
        else
            fmt::format_to(std::back_inserter(out), "{}{{{}}} {}\n", name, labels, v);
    };
    auto line_i = [&](std::string_view name, std::string_view labels, std::int64_t v) {
        if (labels.empty())
            fmt::format_to(std::back_inserter(out), "{} {}\n", name, v);
        else
            fmt::format_to(std::back_inserter(out), "{}{{{}}} {}\n", name, labels, v);
    };

    head(out, "ringmail_connections_accepted_total", "counter",
         "SMTP connections accepted and served, by listener address");
    for (std::size_t i = 0; i < in.listeners.size() && i < core::shard_metrics::max_listeners;
         ++i) {
        line_u("ringmail_connections_accepted_total",
               fmt::format("listener=\"{}\"", label(in.listeners[i])),
               sum_u(s, [&](const auto& m) { return m.connections_accepted[i].get(); }));
    }
    head(out, "ringmail_connections_open", "gauge", "SMTP connections open, by direction");
    line_i("ringmail_connections_open", "direction=\"inbound\"",
           sum_i(s, [](const auto& m) { return m.inbound_open.get(); }));
    line_i("ringmail_connections_open", "direction=\"outbound\"",
           sum_i(s, [](const auto& m) { return m.outbound_open.get(); }));

    head(out, "ringmail_messages_received_total", "counter",
         "messages accepted (committed to the spool and queued)");
    line_u("ringmail_messages_received_total", "",
           sum_u(s, [](const auto& m) { return m.messages_received.get(); }));
    head(out, "ringmail_messages_rejected_total", "counter",
         "SMTP refusals of a message or its transaction, by reason");
    for (std::size_t i = 0; i < core::rejection_names.size(); ++i) {
        line_u("ringmail_messages_rejected_total",
               fmt::format("reason=\"{}\"", core::rejection_names[i]),
               sum_u(s, [&](const auto& m) { return m.rejected[i].get(); }));
    }

    head(out, "ringmail_recipients_delivered_total", "counter",
         "recipients delivered (2xx from the next hop)");
    line_u("ringmail_recipients_delivered_total", "",
           sum_u(s, [](const auto& m) { return m.rcpt_delivered.get(); }));
    head(out, "ringmail_recipients_deferred_total", "counter",
         "recipient delivery attempts deferred (4xx, connection or DNS failure)");
    line_u("ringmail_recipients_deferred_total", "",
           sum_u(s, [](const auto& m) { return m.rcpt_deferred.get(); }));
    head(out, "ringmail_recipients_bounced_total", "counter",
         "recipients bounced (5xx, permanent DNS failure, operator bounce)");
    line_u("ringmail_recipients_bounced_total", "",
           sum_u(s, [](const auto& m) { return m.rcpt_bounced.get(); }));
    head(out, "ringmail_recipients_expired_total", "counter",
         "recipients still deferred at delivery.max_lifetime");
    line_u("ringmail_recipients_expired_total", "",
           sum_u(s, [](const auto& m) { return m.rcpt_expired.get(); }));

    head(out, "ringmail_queue_messages", "gauge", "messages in the spools not yet done");
    line_i("ringmail_queue_messages", "",
           sum_i(s, [](const auto& m) { return m.queue_messages.get(); }));
    head(out, "ringmail_queue_recipients", "gauge", "recipients not yet final");
    line_i("ringmail_queue_recipients", "",
           sum_i(s, [](const auto& m) { return m.queue_recipients.get(); }));
    std::int64_t oldest = 0;
    for (const auto& m : s) {
        const std::int64_t a = m.queue_oldest_arrival.get();
        if (a > 0 && (oldest == 0 || a < oldest))
            oldest = a;
    }
    head(out, "ringmail_queue_oldest_seconds", "gauge",
         "age of the oldest message in the queue (0 when empty)");
    line_i("ringmail_queue_oldest_seconds", "",
           oldest == 0 ? 0 : std::max<std::int64_t>(0, in.now_unix - oldest));

    histogram<12>(
        out, "ringmail_delivery_latency_seconds",
        "time from reception to a recipient's final outcome", s,
        [](const core::shard_metrics& m) -> const auto& { return m.delivery_latency; });
    histogram<12>(
        out, "ringmail_spool_commit_seconds",
        "group commit: batch write and fdatasync, submit to completion", s,
        [](const core::shard_metrics& m) -> const auto& { return m.spool_commit; });
    head(out, "ringmail_spool_bytes", "gauge",
         "bytes of the spools' live segment files (at their allocated size) and journals");
    line_i("ringmail_spool_bytes", "", sum_i(s, [](const auto& m) { return m.spool_bytes.get(); }));
    if (in.spool_free_bytes >= 0) {
        head(out, "ringmail_spool_free_bytes", "gauge",
             "bytes available to ringmaild on the spool's filesystem");
        line_i("ringmail_spool_free_bytes", "", in.spool_free_bytes);
    }

    head(out, "ringmail_suspensions", "gauge",
         "suspensions (and shaping rules' set overrides) in force, by origin");
    line_u("ringmail_suspensions", "origin=\"operator\"", in.suspensions_operator);
    line_u("ringmail_suspensions", "origin=\"rule\"", in.suspensions_rule);

    head(out, "ringmail_tls_handshakes_total", "counter",
         "TLS handshakes (inbound: STARTTLS and smtps; outbound: STARTTLS), by result");
    for (int d = 0; d < 2; ++d) {
        for (int r = 0; r < 2; ++r) {
            line_u("ringmail_tls_handshakes_total",
                   fmt::format("direction=\"{}\",result=\"{}\"", d == 0 ? "inbound" : "outbound",
                               r == 0 ? "ok" : "failed"),
                   sum_u(s, [&](const auto& m) { return m.tls_handshakes[d][r].get(); }));
        }
    }
    head(out, "ringmail_auth_attempts_total", "counter",
         "SMTP AUTH exchanges that reached a verdict, by mechanism and result");
    for (std::size_t k = 0; k < core::auth_mech_names.size(); ++k) {
        for (int r = 0; r < 2; ++r) {
            line_u("ringmail_auth_attempts_total",
                   fmt::format("mechanism=\"{}\",result=\"{}\"", core::auth_mech_names[k],
                               r == 0 ? "success" : "failure"),
                   sum_u(s, [&](const auto& m) { return m.auth[k][r].get(); }));
        }
    }
    head(out, "ringmail_dns_queries_total", "counter",
         "route lookups answered (MX or host, cache hits included), by result");
    for (std::size_t k = 0; k < core::dns_result_names.size(); ++k) {
        line_u("ringmail_dns_queries_total",
               fmt::format("result=\"{}\"", core::dns_result_names[k]),
               sum_u(s, [&](const auto& m) { return m.dns[k].get(); }));
    }
    head(out, "ringmail_shard_loop_lag_seconds", "gauge",
         "how late a shard's 250 ms timer last fired (event loop lag)");
    for (std::size_t i = 0; i < s.size(); ++i) {
        fmt::format_to(std::back_inserter(out),
                       "ringmail_shard_loop_lag_seconds{{shard=\"{}\"}} {}\n", i,
                       seconds(static_cast<double>(s[i].loop_lag_ns.get()) / 1e9));
    }

    head(out, "ringmail_cluster_fallbacks_total", "counter",
         "times a shard lost Redis ([cluster] redis) and fell back to local limits divided by "
         "the participants it last counted");
    line_i("ringmail_cluster_fallbacks_total", "",
           sum_i(s, [](const auto& m) { return m.cluster_fallbacks.get(); }));
    head(out, "ringmail_cluster_degraded", "gauge",
         "shards deciding on local limits now because Redis is unreachable");
    line_i("ringmail_cluster_degraded", "",
           sum_i(s, [](const auto& m) { return m.cluster_degraded.get(); }));

    head(out, "ringmail_cluster_participants", "gauge",
         "shards of every node sharing the limits through Redis, as last counted (0: no "
         "[cluster])");
    std::int64_t participants = 0;
    for (const auto& m : s)
        participants = std::max(participants, m.cluster_nodes.get());
    line_i("ringmail_cluster_participants", "", participants);

    head(out, "ringmail_destination_queue_recipients", "gauge",
         "recipients queued per destination (the 100 largest)");
    if (in.destinations != nullptr) {
        std::vector<const destination_row*> rows;
        rows.reserve(in.destinations->size());
        for (const auto& r : *in.destinations)
            if (r.recipients > 0)
                rows.push_back(&r);
        const std::size_t n = std::min(rows.size(), max_destinations);
        std::partial_sort(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n), rows.end(),
                          [](const destination_row* a, const destination_row* b) {
                              return a->recipients != b->recipients ? a->recipients > b->recipients
                                                                    : a->key < b->key;
                          });
        for (std::size_t i = 0; i < n; ++i) {
            line_u("ringmail_destination_queue_recipients",
                   fmt::format("destination=\"{}\"", label(rows[i]->key)), rows[i]->recipients);
        }
    }
    return out;
}

}  // namespace ringmail::admin
