#include "ringmail/queue/delivery_queue.h"

#include "ringmail/queue/errc.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace ringmail::queue {

namespace {

[[noreturn]] void broken(const char* what) {
    std::fprintf(stderr, "ringmail: invariant broken: delivery queue: %s\n", what);
    std::abort();
}

// The DSN status of a recipient refused for good: the server's enhanced code when it is a
// permanent one, else the generic 5.0.0 (RFC 3463).
std::string permanent_status(const attempt_reply& r) {
    if (r.enhanced.size() >= 5 && r.enhanced[0] == '5')
        return r.enhanced;
    return "5.0.0";
}

}  // namespace

std::string attempt_reply::to_string() const {
    std::string out = std::to_string(code);
    if (!enhanced.empty())
        out += " " + enhanced;
    if (!text.empty()) {
        out += ' ';
        for (char c : text)
            out += (c == '\n' || c == '\r') ? ' ' : c;
    }
    return out;
}

delivery_queue::delivery_queue(queue_config config) : _config(std::move(config)) {
    if (!_config.retry.validate())
        broken("retry policy not validated");
    if (_config.max_entries == 0)
        broken("max_entries is 0");
}

result<void> delivery_queue::add(queue_entry entry) {
    _oncore.check();
    bool any_pending = false;
    for (const recipient& r : entry.rcpts) {
        if (r.state == rcpt_state::pending)
            any_pending = true;
    }
    if (!any_pending)
        return errc::no_recipients;
    if (_entries.size() >= _config.max_entries)
        return errc::queue_full;
    if (_entries.contains(entry.id))
        return errc::duplicate_id;
    std::uint64_t id = entry.id;
    std::int64_t when = entry.next_attempt;
    _entries.emplace(id, slot{std::move(entry), false});
    if (when > 0) {
        defer(id, when);
    } else {
        _ready.push_back(id);
    }
    return {};
}

void delivery_queue::defer(std::uint64_t id, std::int64_t when) {
    _deferred.push(timed{when, _seq++, id});
}

std::size_t delivery_queue::due(std::int64_t now) {
    _oncore.check();
    while (!_deferred.empty() && _deferred.top().when <= now) {
        _ready.push_back(_deferred.top().id);
        _deferred.pop();
    }
    return _ready.size();
}

std::optional<std::uint64_t> delivery_queue::pop_ready(std::int64_t now) {
    if (due(now) == 0)
        return std::nullopt;
    std::uint64_t id = _ready.front();
    _ready.pop_front();
    auto it = _entries.find(id);
    if (it == _entries.end() || it->second.in_flight)
        broken("ready id not held or in flight");
    it->second.in_flight = true;
    ++_in_flight;
    return id;
}

std::optional<std::int64_t> delivery_queue::next_wakeup() const {
    _oncore.check();
    if (!_ready.empty())
        return std::int64_t{0};
    if (_deferred.empty())
        return std::nullopt;
    return _deferred.top().when;
}

const queue_entry* delivery_queue::find(std::uint64_t id) const {
    _oncore.check();
    auto it = _entries.find(id);
    return it == _entries.end() ? nullptr : &it->second.entry;
}

queue_counts delivery_queue::counts() const {
    _oncore.check();
    return queue_counts{_entries.size(), _ready.size(), _deferred.size(), _in_flight};
}

apply_actions delivery_queue::apply_with(std::uint64_t id, std::span<const rcpt_outcome> outcomes,
                                         const attempt_reply* connection_failure, std::int64_t now,
                                         double unit) {
    _oncore.check();
    auto it = _entries.find(id);
    if (it == _entries.end() || !it->second.in_flight)
        broken("apply on a message not in flight");
    queue_entry& e = it->second.entry;
    apply_actions actions;
    std::vector<failed_recipient> failed;
    ++e.attempts;

    if (connection_failure) {
        for (recipient& r : e.rcpts) {
            if (r.state == rcpt_state::pending)
                r.last = *connection_failure;
        }
    }
    for (const rcpt_outcome& o : outcomes) {
        if (o.rcpt >= e.rcpts.size())
            broken("outcome for an unknown recipient");
        recipient& r = e.rcpts[o.rcpt];
        if (r.state != rcpt_state::pending)
            broken("outcome for a finished recipient");
        r.last = o.reply;
        if (o.reply.code >= 200 && o.reply.code < 300) {
            r.state = rcpt_state::delivered;
            actions.delivered.push_back(o.rcpt);
        } else if (o.reply.code >= 500 && o.reply.code < 600) {
            r.state = rcpt_state::bounced;
            actions.bounced.push_back(o.rcpt);
            failed.push_back(failed_recipient{r.address, permanent_status(o.reply),
                                              o.reply.remote_mta, o.reply.to_string(), false});
        }
    }

    bool any_pending = false;
    for (const recipient& r : e.rcpts) {
        if (r.state == rcpt_state::pending)
            any_pending = true;
    }
    if (any_pending) {
        std::optional<std::int64_t> next =
            _config.retry.next_attempt_with(e.attempts, e.arrival, now, unit);
        if (next) {
            e.next_attempt = *next;
            actions.retry = retry_record{e.attempts, *next};
        } else {
            for (std::uint32_t i = 0; i < e.rcpts.size(); ++i) {
                recipient& r = e.rcpts[i];
                if (r.state != rcpt_state::pending)
                    continue;
                r.state = rcpt_state::expired;
                actions.expired.push_back(i);
                failed.push_back(failed_recipient{r.address, "5.4.7", r.last.remote_mta,
                                                  r.last.code ? r.last.to_string() : std::string{},
                                                  true});
            }
            any_pending = false;
        }
    }

    if (!failed.empty() && !e.sender.empty()) {
        actions.bounce = bounce_request{e.id, e.sender, e.arrival, std::move(failed)};
    }
    --_in_flight;
    if (any_pending) {
        it->second.in_flight = false;
        defer(id, e.next_attempt);
    } else {
        actions.done = true;
        _entries.erase(it);
    }
    return actions;
}

}  // namespace ringmail::queue
