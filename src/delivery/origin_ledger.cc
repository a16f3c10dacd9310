#include "ringmail/delivery/origin_ledger.h"

#include "ringmail/queue/errc.h"

#include <algorithm>

namespace ringmail::delivery {

result<void> origin_ledger::add(ledger_message m) {
    _oncore.check();
    if (_entries.size() >= _max)
        return queue::errc::queue_full;
    m.state.resize(m.rcpts.size(), queue::rcpt_state::pending);
    entry e;
    e.pending = static_cast<std::uint32_t>(
        std::count(m.state.begin(), m.state.end(), queue::rcpt_state::pending));
    if (e.pending == 0)
        return queue::errc::no_recipients;
    // Recipients that failed before a restart still belong in the one DSN (it is only sent once
    // every recipient is final); their reply was not journaled.
    for (std::size_t i = 0; i < m.rcpts.size(); ++i) {
        if (m.state[i] == queue::rcpt_state::bounced || m.state[i] == queue::rcpt_state::expired) {
            queue::failed_recipient f;
            f.address = m.rcpts[i];
            f.expired = m.state[i] == queue::rcpt_state::expired;
            f.status = f.expired ? "4.4.7" : "5.0.0";
            f.category = f.expired ? queue::bounce_class::message_expired
                                   : queue::bounce_class::uncategorized;
            e.failed.push_back(std::move(f));
        }
    }
    spool::queue_id id = m.id;
    e.delay_noticed = m.delay_noticed;
    e.m = std::move(m);
    const std::uint32_t pending = e.pending;
    const std::int64_t arrival = e.m.arrival;
    if (!_entries.emplace(id, std::move(e)).second)
        return queue::errc::queue_full;  // already known: never twice
    _pending_rcpts += pending;
    ++_arrivals[arrival];
    return {};
}

const ledger_message* origin_ledger::find(spool::queue_id id) const {
    auto it = _entries.find(id);
    return it == _entries.end() ? nullptr : &it->second.m;
}

namespace {

queue::failed_recipient notice_entry(const std::string& address, const queue::attempt_reply* reply,
                                     queue::dsn_action action, std::string_view fallback) {
    queue::failed_recipient f;
    f.address = address;
    f.action = action;
    if (reply) {
        f.remote_mta = reply->remote_mta;
        if (reply->code != 0)
            f.diagnostic = reply->to_string();
        f.status = reply->enhanced;
        if (action != queue::dsn_action::relayed)
            f.category = reply->category;
    }
    const char cls = action == queue::dsn_action::relayed ? '2' : '4';
    if (f.status.empty() || f.status[0] != cls)
        f.status = std::string(fallback);
    return f;
}

queue::bounce_request notice_for(const ledger_message& m,
                                 std::vector<queue::failed_recipient> rcpts) {
    queue::bounce_request b;
    b.id = m.id;
    b.sender = m.sender;
    b.arrival = m.arrival;
    b.rcpts = std::move(rcpts);
    return b;
}

}  // namespace

ledger_actions origin_ledger::apply(const queue::job_notice& n, std::int64_t now_unix) {
    _oncore.check();
    ledger_actions a;
    auto it = _entries.find(n.queue_id);
    if (it == _entries.end()) {
        ++_stale;
        return a;
    }
    entry& e = it->second;
    e.m.attempts = std::max(e.m.attempts, n.attempts);
    bool any_deferred = false;
    std::vector<queue::failed_recipient> relayed;
    std::vector<queue::failed_recipient> delayed;
    const bool warn_delays = _delay_warning.count() > 0 && now_unix != 0 && !e.m.sender.empty() &&
                             now_unix - e.m.arrival >= _delay_warning.count();
    for (std::size_t i = 0; i < n.rcpts.size(); ++i) {
        std::uint16_t r = n.rcpts[i];
        if (r >= e.m.state.size() || e.m.state[r] != queue::rcpt_state::pending) {
            ++_stale;
            continue;
        }
        const queue::attempt_reply* reply = nullptr;
        if (n.detail) {
            for (const auto& [idx, rep] : n.detail->replies) {
                if (idx == r) {
                    reply = &rep;
                    break;
                }
            }
        }
        switch (n.status[i]) {
            case queue::rcpt_status::delivered:
                e.m.state[r] = queue::rcpt_state::delivered;
                a.outcomes.emplace_back(r, spool::outcome::delivered);
                --e.pending;
                --_pending_rcpts;
                if (n.detail && !e.m.sender.empty() &&
                    std::find(n.detail->relayed.begin(), n.detail->relayed.end(), r) !=
                        n.detail->relayed.end()) {
                    relayed.push_back(
                        notice_entry(e.m.rcpts[r], reply, queue::dsn_action::relayed, "2.0.0"));
                }
                break;
            case queue::rcpt_status::failed:
            case queue::rcpt_status::expired: {
                bool expired = n.status[i] == queue::rcpt_status::expired;
                e.m.state[r] = expired ? queue::rcpt_state::expired : queue::rcpt_state::bounced;
                a.outcomes.emplace_back(
                    r, expired ? spool::outcome::expired : spool::outcome::bounced);
                --e.pending;
                --_pending_rcpts;
                queue::failed_recipient f;
                f.address = e.m.rcpts[r];
                f.expired = expired;
                if (reply) {
                    f.remote_mta = reply->remote_mta;
                    if (reply->code != 0)
                        f.diagnostic = reply->to_string();
                    f.status = reply->enhanced;
                    f.category = reply->category;
                }
                // An expired recipient failed because its time ran out (RFC 3463 X.4.7,
                // "delivery time expired"); the last temporary reply is its Diagnostic-Code.
                // Turning that reply's 4.a.b into 5.a.b would claim a permanent condition the
                // receiver never reported (4.2.1 "mailbox busy" is not 5.2.1 "disabled").
                if (!f.category)
                    f.category = queue::bounce_class::uncategorized;
                if (expired) {
                    f.status = "5.4.7";
                    f.category = queue::bounce_class::message_expired;
                } else if (f.status.empty() || f.status[0] != '5') {
                    f.status = "5.0.0";
                }
                e.failed.push_back(std::move(f));
                break;
            }
            case queue::rcpt_status::deferred:
                any_deferred = true;
                if (warn_delays) {
                    e.delay_noticed.resize(e.m.rcpts.size(), false);
                    if (!e.delay_noticed[r]) {
                        e.delay_noticed[r] = true;
                        a.delay_noticed.push_back(r);
                        delayed.push_back(
                            notice_entry(e.m.rcpts[r], reply, queue::dsn_action::delayed, "4.0.0"));
                    }
                }
                break;
        }
    }
    if (!relayed.empty())
        a.relayed = notice_for(e.m, std::move(relayed));
    if (!delayed.empty())
        a.delayed = notice_for(e.m, std::move(delayed));
    if (e.pending == 0) {
        a.done = true;
        if (!e.failed.empty()) {
            if (e.m.sender.empty()) {
                a.null_sender_failure = true;
            } else {
                queue::bounce_request b;
                b.id = e.m.id;
                b.sender = e.m.sender;
                b.arrival = e.m.arrival;
                b.rcpts = std::move(e.failed);
                a.bounce = std::move(b);
            }
        }
        if (auto ar = _arrivals.find(e.m.arrival); ar != _arrivals.end() && --ar->second == 0)
            _arrivals.erase(ar);
        _entries.erase(it);
        return a;
    }
    if (any_deferred && n.next_attempt_unix != 0)
        a.retry = queue::retry_record{e.m.attempts, n.next_attempt_unix};
    return a;
}

}  // namespace ringmail::delivery
