#include "ringmail/queue/destination.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/panic.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace ringmail::queue {

rcpt_list::rcpt_list(std::initializer_list<std::uint16_t> init) {
    if (init.size() > max_job_rcpts)
        core::invariant_broken("rcpt_list: more recipients than a job holds");
    for (auto r : init)
        _items.push_back(r);
}

bool rcpt_list::push_back(std::uint16_t rcpt) {
    if (full())
        return false;
    _items.push_back(rcpt);
    return true;
}

std::string destination_key(std::string_view domain) {
    while (!domain.empty() && domain.back() == '.')
        domain.remove_suffix(1);
    std::string key(domain);
    for (char& c : key)
        c = core::to_lower_ascii(c);
    return key;
}

std::vector<job_group> group_by_domain(std::span<const std::string> addresses,
                                       std::span<const std::uint32_t> pending) {
    return group_by_destination(addresses, pending,
                                [](std::string_view domain) { return destination_key(domain); });
}

std::vector<job_group> group_by_destination(
    std::span<const std::string> addresses, std::span<const std::uint32_t> pending,
    const std::function<std::string(std::string_view domain)>& key_of) {
    std::vector<job_group> groups;
    for (std::uint32_t index : pending) {
        if (index >= addresses.size() || index > 0xffff)
            core::invariant_broken("group_by_destination: recipient index out of range");
        std::string_view a = addresses[index];
        auto at = a.rfind('@');
        std::string key = key_of(at == std::string_view::npos ? "" : a.substr(at + 1));
        // The open group of this domain is the last one with its name (earlier ones are full).
        auto it = std::find_if(groups.rbegin(), groups.rend(),
                               [&](const job_group& g) { return g.domain == key; });
        if (it == groups.rend() || it->rcpts.full()) {
            groups.push_back({std::move(key), {}});
            groups.back().rcpts.push_back(static_cast<std::uint16_t>(index));
        } else {
            it->rcpts.push_back(static_cast<std::uint16_t>(index));
        }
    }
    return groups;
}

destination_queue::destination_queue(std::string key, const destination_policy& policy,
                                     steady_time now)
    : _key(std::move(key)),
      _policy(policy),
      _bucket(policy.rate, policy.burst > 0.0 ? policy.burst : std::max(1.0, policy.rate), now) {}

void destination_queue::push(delivery_job job, steady_time now) {
    if (job.rcpts.empty())
        core::invariant_broken("destination_queue: job without recipients");
    _queued_rcpts += job.rcpts.size();
    if (job.next_attempt <= now) {
        _ready.push_back(std::move(job));
        return;
    }
    steady_time when = job.next_attempt;
    _deferred.push_back({when, _seq++, std::move(job)});
    std::push_heap(_deferred.begin(), _deferred.end(), later);
}

std::size_t destination_queue::promote(steady_time now) {
    std::size_t n = 0;
    while (!_deferred.empty() && _deferred.front().when <= now) {
        std::pop_heap(_deferred.begin(), _deferred.end(), later);
        _ready.push_back(std::move(_deferred.back().job));
        _deferred.pop_back();
        ++n;
    }
    return n;
}

std::optional<delivery_job> destination_queue::pop_ready() {
    if (_ready.empty())
        return std::nullopt;
    delivery_job j = std::move(_ready.front());
    _ready.pop_front();
    _queued_rcpts -= j.rcpts.size();
    return j;
}

const delivery_job* destination_queue::front_ready() const {
    return _ready.empty() ? nullptr : &_ready.front();
}

std::optional<steady_time> destination_queue::next_deferred() const {
    if (_deferred.empty())
        return std::nullopt;
    return _deferred.front().when;
}

std::vector<delivery_job> destination_queue::take_all_ready() {
    std::vector<delivery_job> out(std::make_move_iterator(_ready.begin()),
                                  std::make_move_iterator(_ready.end()));
    _ready.clear();
    for (const auto& j : out)
        _queued_rcpts -= j.rcpts.size();
    return out;
}

std::size_t destination_queue::promote_all() {
    const std::size_t n = _deferred.size();
    while (!_deferred.empty()) {
        std::pop_heap(_deferred.begin(), _deferred.end(), later);
        _ready.push_back(std::move(_deferred.back().job));
        _deferred.pop_back();
    }
    return n;
}

std::vector<delivery_job> destination_queue::take_if(
    const std::function<bool(const delivery_job&)>& pred, std::size_t& ready_taken) {
    std::vector<delivery_job> out;
    ready_taken = 0;
    for (auto it = _ready.begin(); it != _ready.end();) {
        if (pred(*it)) {
            out.push_back(std::move(*it));
            it = _ready.erase(it);
            ++ready_taken;
        } else {
            ++it;
        }
    }
    bool removed = false;
    for (auto it = _deferred.begin(); it != _deferred.end();) {
        if (pred(it->job)) {
            out.push_back(std::move(it->job));
            it = _deferred.erase(it);
            removed = true;
        } else {
            ++it;
        }
    }
    if (removed)
        std::make_heap(_deferred.begin(), _deferred.end(), later);
    for (const auto& j : out)
        _queued_rcpts -= j.rcpts.size();
    return out;
}

void destination_queue::job_finished() {
    if (_in_flight == 0)
        core::invariant_broken("destination_queue: job finished but none in flight");
    --_in_flight;
}

void destination_queue::connection_gone() {
    if (_connections == 0)
        core::invariant_broken("destination_queue: connection gone but none counted");
    --_connections;
}

}  // namespace ringmail::queue
