#include "ringmail/cluster/shard_limiter.h"

#include "ringmail/core/panic.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace ringmail::cluster {

using namespace std::chrono_literals;
using queue::steady_time;
using queue::take_result;

namespace {

// A token or a lease Redis granted that nobody used this long is dropped (a token: its moment
// has passed, spending it later would be a burst) or given back (a lease: others may use it).
constexpr auto token_ttl = 1s;
constexpr auto spare_ttl = 2s;
// While an ask is out the scheduler is told to come back after this; the reply (or the
// client's reply timeout, 1 s, which answers locally) wakes it first.
constexpr auto ask_bound = 2s;
// A lease refused (the other nodes hold every slot): asked again after this. Their releases
// cannot wake us, as with local_limiter's counters held by other shards.
constexpr auto lease_retry = 100ms;
// In shard_limiter::cell::in_use: a connection whose lease (taken by attach_provider) is on its
// way. Lease ids count up from 1.
constexpr std::uint64_t attaching = std::numeric_limits<std::uint64_t>::max();

}  // namespace

std::vector<std::string> scope_names(const queue::shaping_context& sh) {
    std::vector<std::string> out;
    for (std::size_t i = 0; i < sh.providers.size(); ++i)
        out.push_back("p:" + sh.providers[i].name);
    out.resize(sh.providers.size() + sh.rules.domain_scopes());
    for (std::size_t i = 0; i < sh.rules.size(); ++i) {
        const std::string& d = sh.rules[i].domain;
        const int scope = d.empty() ? -1 : sh.rules.domain_scope(d);
        if (scope >= 0 && static_cast<std::size_t>(scope) < out.size())
            out[static_cast<std::size_t>(scope)] = "d:" + d;
    }
    return out;
}

std::vector<std::string> slot_names(const queue::shaping_context& sh) {
    std::vector<std::string> out{""};
    for (std::size_t i = 0; i < sh.sources; ++i)
        out.push_back(i < sh.source_names.size() ? sh.source_names[i] : fmt::format("source{}", i));
    return out;
}

shard_limiter::shard_limiter(core::reactor& r, cluster_limiter& cluster,
                             queue::local_limiter& local, std::vector<std::string> scope_names,
                             std::vector<std::string> slot_names)
    : _reactor(r),
      _cluster(cluster),
      _local(local),
      _scopes(local.scopes()),
      _slots(local.slots()),
      _cells(_scopes * _slots) {
    if (scope_names.size() != _scopes || slot_names.size() != _slots)
        core::invariant_broken("shard_limiter: {} scope and {} slot names for {} x {} cells",
                               scope_names.size(), slot_names.size(), _scopes, _slots);
    for (std::size_t s = 0; s < _scopes; ++s) {
        for (std::size_t k = 0; k < _slots; ++k) {
            cell& c = _cells[s * _slots + k];
            c.key =
                fmt::format("{}/{}", scope_names[s], slot_names[k].empty() ? "-" : slot_names[k]);
            c.conn_key = "conn/" + c.key;
        }
    }
    _cluster.set_on_poll([this] { on_poll(); });
}

shard_limiter::~shard_limiter() {
    _cluster.set_on_poll({});
    _reactor.disarm(*this);
}

shard_limiter::cell* shard_limiter::at(int scope, unsigned slot) noexcept {
    if (scope < 0 || static_cast<std::size_t>(scope) >= _scopes || slot >= _slots)
        return nullptr;
    return &_cells[static_cast<std::size_t>(scope) * _slots + slot];
}

const shard_limiter::cell* shard_limiter::at(int scope, unsigned slot) const noexcept {
    return const_cast<shard_limiter*>(this)->at(scope, slot);
}

const std::string& shard_limiter::key(int scope, unsigned slot) const {
    const cell* c = at(scope, slot);
    if (c == nullptr)
        core::invariant_broken("shard_limiter: no cell {} / {}", scope, slot);
    return c->key;
}

std::size_t shard_limiter::spare_leases() const noexcept {
    std::size_t n = 0;
    for (const auto& c : _cells)
        n += c.spare.size();
    return n;
}

void shard_limiter::woken() {
    if (_calling == 0 && _wake)
        _wake();
}

// Is a token of `t` held? When none is, one is asked for (unless an ask is out or Redis said
// to wait); an answer given in the same call (Redis away: local decisions are immediate)
// counts at once.
bool shard_limiter::ready(tokens& t, const std::string& key, double rate, std::uint32_t burst,
                          steady_time now) {
    if (t.held > 0 && now - t.granted_at > token_ttl)
        t.held = 0;
    if (t.held == 0 && !t.asking && now >= t.next_ask) {
        t.asking = true;
        ++_calling;
        // `t` outlives the call: cells are never added or removed after construction.
        _cluster.acquire(key, rate_limit{rate, std::max<std::uint32_t>(burst, 1)},
                         [this, &t](rate_decision d) {
                             const auto at = _reactor.now();
                             t.asking = false;
                             if (d.allowed) {
                                 t.held = 1;
                                 t.granted_at = at;
                             } else {
                                 t.next_ask = at + d.retry_after;
                             }
                             woken();
                         });
        --_calling;
    }
    return t.held > 0;
}

steady_time shard_limiter::not_before(const tokens& t, steady_time now) const {
    if (t.asking)
        return now + ask_bound;
    return std::max(t.next_ask, now + 1us);
}

take_result shard_limiter::take_message(int provider, unsigned slot, steady_time now) {
    cell* c = at(provider, slot);
    if (c == nullptr)
        return {true, now};
    const double rate = _local.message_rate(provider, slot, now);
    if (rate <= 0.0)
        return {true, now};
    if (ready(c->messages, c->key, rate, _local.message_burst(provider), now)) {
        --c->messages.held;
        return {true, now};
    }
    return {false, not_before(c->messages, now)};
}

void shard_limiter::ask_lease(cell& c, std::uint32_t max) {
    c.leasing = true;
    ++_calling;
    _cluster.lease(c.key, max, [this, &c](std::uint64_t id) {
        const auto now = _reactor.now();
        c.leasing = false;
        if (id == 0) {
            c.next_lease = now + lease_retry;
        } else {
            if (c.spare.empty())
                c.spare_since = now;
            c.spare.push_back(id);
            arm_sweep();
        }
        woken();
    });
    --_calling;
}

take_result shard_limiter::acquire_connection(int provider, unsigned slot, steady_time now) {
    cell* c = at(provider, slot);
    const std::uint32_t max = c != nullptr ? _local.max_connections(provider, slot, now) : 0;
    const double crate = c != nullptr ? _local.connection_rate(provider) : 0.0;
    if (c == nullptr || (max == 0 && crate <= 0.0)) {
        // No limit of the provider's: the node's own counters (the source's limit) alone.
        auto t = _local.acquire_connection(provider, slot, now);
        if (t.ok && c != nullptr)
            c->in_use.push_back(0);
        return t;
    }
    // Both asked for at once (a lease, a connection-rate token), so one wait covers them.
    const bool leased = max > 0;
    if (leased && c->spare.empty() && !c->leasing && now >= c->next_lease)
        ask_lease(*c, max);
    const bool rate_ok = crate <= 0.0 || ready(c->connects, c->conn_key, crate, 1, now);
    if (leased && c->spare.empty())
        return {false, c->leasing ? now + ask_bound : std::max(c->next_lease, now + 1ms)};
    if (!rate_ok)
        return {false, not_before(c->connects, now)};
    // The source's own limit, on this node (its address is this node's).
    auto src = _local.acquire_connection(-1, slot, now);
    if (!src.ok)
        return src;  // the lease and the token are kept for the next try
    if (crate > 0.0)
        --c->connects.held;
    if (leased) {
        c->in_use.push_back(c->spare.back());
        c->spare.pop_back();
        c->spare_since = now;
    } else {
        // A rate and no connection limit: counted by the node, as a connection without a
        // lease (released through the local limiter).
        _local.attach_provider(provider, slot);
        c->in_use.push_back(0);
    }
    return {true, now};
}

void shard_limiter::attach_provider(int provider, unsigned slot) {
    // Opened before its provider was known (learned from its MX hosts; its source was counted
    // then): counted now whatever the limit, as local_limiter does, and in Redis too, so that
    // the other nodes see it.
    cell* c = at(provider, slot);
    if (c == nullptr || _local.max_connections(provider, slot, _reactor.now()) == 0) {
        _local.attach_provider(provider, slot);
        if (c != nullptr)
            c->in_use.push_back(0);
        return;
    }
    c->in_use.push_back(attaching);
    ++_calling;
    _cluster.lease(c->key, std::numeric_limits<std::uint32_t>::max(),
                   [this, c, provider, slot](std::uint64_t id) {
                       auto it = std::find(c->in_use.begin(), c->in_use.end(), attaching);
                       if (it == c->in_use.end()) {
                           _cluster.release(id);  // closed meanwhile
                           return;
                       }
                       if (id == 0) {
                           _local.attach_provider(provider, slot);  // counted here at least
                       }
                       *it = id;
                   });
    --_calling;
}

void shard_limiter::release_connection(int provider, unsigned slot) {
    cell* c = at(provider, slot);
    if (c == nullptr || c->in_use.empty()) {
        _local.release_connection(provider, slot);
        return;
    }
    const std::uint64_t lease = c->in_use.back();
    c->in_use.pop_back();
    if (lease == 0) {
        _local.release_connection(provider, slot);
        return;
    }
    _local.release_connection(-1, slot);
    if (lease != attaching)
        _cluster.release(lease);  // else the lease is given back when it comes
}

std::uint32_t shard_limiter::max_connections(int provider, unsigned slot, steady_time now) const {
    return _local.max_connections(provider, slot, now);
}

std::uint32_t shard_limiter::connections(int provider, unsigned slot) const {
    // This shard's: the others' are in Redis (asking there for a lending decision is not worth
    // it; a shard that lends keeps its own count).
    const cell* c = at(provider, slot);
    if (c == nullptr)
        return _local.connections(provider, slot);
    return static_cast<std::uint32_t>(c->in_use.size());
}

steady_time shard_limiter::suspended_until(int scope, unsigned slot) const {
    const steady_time local = _local.suspended_until(scope, slot);
    const cell* c = at(scope, slot);
    return c == nullptr ? local : std::max(local, c->remote_suspended);
}

void shard_limiter::suspend(int scope, unsigned slot, steady_time until, int rule) {
    _local.suspend(scope, slot, until, rule);
    cell* c = at(scope, slot);
    if (c == nullptr)
        return;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - _reactor.now());
    if (left.count() > 0)
        _cluster.suspend(c->key, left);
}

void shard_limiter::lift(int scope, unsigned slot) {
    _local.lift(scope, slot);
    cell* c = at(scope, slot);
    if (c == nullptr)
        return;
    c->remote_suspended = {};
    _cluster.lift(c->key);
}

void shard_limiter::set_limits(int scope, unsigned slot, const queue::rule_spec& r, int rule,
                               steady_time now) {
    _local.set_limits(scope, slot, r, rule, now);
}

bool shard_limiter::effect_active(int scope, unsigned slot, int rule, steady_time now) const {
    return _local.effect_active(scope, slot, rule, now);
}

void shard_limiter::suspend_source(unsigned slot, steady_time until) {
    _local.suspend_source(slot, until);
}

steady_time shard_limiter::source_suspended_until(unsigned slot) const {
    return _local.source_suspended_until(slot);
}

// After each poll of Redis's suspensions (every 500 ms): the cells' view of them, so that the
// scheduler's checks per message are a load, not a lookup by name.
void shard_limiter::on_poll() {
    const auto now = _reactor.now();
    for (auto& c : _cells) {
        const auto left = _cluster.suspended_for(c.key);
        c.remote_suspended = left.count() > 0 ? now + left : steady_time{};
    }
}

void shard_limiter::arm_sweep() {
    if (_swept)
        return;
    _swept = true;
    _reactor.arm(*this, _reactor.now() + spare_ttl / 2);
}

// Spare leases nobody used go back to Redis.
void shard_limiter::on_expire() {
    _swept = false;
    const auto now = _reactor.now();
    bool more = false;
    for (auto& c : _cells) {
        if (c.spare.empty())
            continue;
        if (now - c.spare_since >= spare_ttl) {
            for (auto id : c.spare)
                _cluster.release(id);
            c.spare.clear();
        } else {
            more = true;
        }
    }
    if (more)
        arm_sweep();
}

}  // namespace ringmail::cluster
