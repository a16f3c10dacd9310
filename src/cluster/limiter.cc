#include "ringmail/cluster/limiter.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace ringmail::cluster {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {

// GCRA. KEYS[1]: the key's theoretical arrival time (us, Redis clock). ARGV[1]: emission
// interval T (us); ARGV[2]: burst tolerance tau = T * (burst - 1) (us). Returns {1, 0} when
// allowed, {0, wait_us} when not. As queue::gcra_cell does, an ask late by at most one
// interval counts from its due time: the asker's timer, its loop and the round trip make every
// ask a little late, and those delays must not add up to a lower rate (any window still holds
// at most one message more than the rate gives it).
constexpr std::string_view gcra_script = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if now - tat > T then tat = now end
if now < tat - tau then return {0, tat - tau - now} end
local new = tat + T
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {1, 0}
)lua";

// Leases. KEYS[1]: sorted set member -> expiry (ms, Redis clock). ARGV: max, ttl ms, lease id.
// A member already there is renewed; a new one is added only below max. Returns 1 or 0.
constexpr std::string_view lease_script = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
)lua";

// Heartbeat. KEYS[1]: sorted set node id -> expiry (ms). ARGV: node id, ttl ms. Returns the
// number of live nodes.
constexpr std::string_view nodes_script = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
)lua";

// Suspensions. KEYS[1]: hash key -> until (ms). ARGV: a key to suspend ("" for none), its
// duration ms. Drops what expired; returns {now, key1, until1, ...}.
constexpr std::string_view suspend_script = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  local untl = now + tonumber(ARGV[2])
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or 0)
  if untl > old then redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', untl)) end
end
local out = {now}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, tonumber(all[i + 1]))
  end
end
return out
)lua";

constexpr std::string_view scripts[] = {gcra_script, lease_script, nodes_script, suspend_script};
enum { gcra = 0, lease_op = 1, nodes_op = 2, suspend_op = 3 };

constexpr auto tick = 100ms;

}  // namespace

cluster_limiter::cluster_limiter(core::reactor& r, core::buffer_ring& buffers, cluster_options o)
    : _reactor(r),
      _o(std::move(o)),
      _client(r, buffers, _o.redis, [this](bool up) { on_state(up); }) {}

cluster_limiter::~cluster_limiter() {
    _reactor.disarm(*this);
}

void cluster_limiter::start() {
    _stopping = false;
    _client.start();
    _reactor.arm(*this, _reactor.now() + tick);
}

void cluster_limiter::stop() {
    _stopping = true;
    _reactor.disarm(*this);
    // Leases are given back while the connection is still there; what does not get through
    // expires on its own.
    for (const auto& [id, l] : _leases) {
        if (!l.local)
            _client.call(
                {"ZREM", _o.prefix + "conn:" + l.key, fmt::format("{}:{}", _o.node_id, id)}, {});
    }
    _leases.clear();
    _held.clear();
    _client.stop();
}

void cluster_limiter::on_state(bool up) {
    if (!up) {
        _scripts_loaded = false;
        if (!_stopping)
            went_local("connection lost");
        return;
    }
    load_scripts();
}

void cluster_limiter::went_local(std::string_view why) {
    if (_was_local)
        return;
    _was_local = true;
    ++_fallbacks;
    log::warn(
        "cluster: Redis unavailable ({}): local limits divided by {} node(s) until it is back", why,
        _nodes);
}

void cluster_limiter::load_scripts() {
    auto left = std::make_shared<int>(static_cast<int>(std::size(scripts)));
    for (int i = 0; i < static_cast<int>(std::size(scripts)); ++i) {
        const bool ok = _client.call(
            {"SCRIPT", "LOAD", std::string(scripts[i])}, [this, i, left](const resp_value& v) {
                if (v.type != resp_value::kind::bulk) {
                    log::warn("cluster: SCRIPT LOAD failed: {}", v.str);
                    return;
                }
                _sha[i] = v.str;
                if (--*left == 0) {
                    _scripts_loaded = true;
                    if (_was_local) {
                        _was_local = false;
                        log::info("cluster: Redis {} in use for shared limits",
                                  core::to_string(_o.redis.server));
                    }
                    heartbeat();
                    poll_suspensions();
                    // Leases taken locally meanwhile go into Redis before new asks are
                    // granted over them (this connection answers in order).
                    _last_renew = _reactor.now();
                    renew();
                }
            });
        if (!ok)
            return;
    }
}

void cluster_limiter::eval(int script, std::vector<std::string> keys, std::vector<std::string> args,
                           std::function<void(const resp_value&)> cb) {
    std::vector<std::string> cmd{"EVALSHA", _sha[script], std::to_string(keys.size())};
    cmd.insert(cmd.end(), keys.begin(), keys.end());
    cmd.insert(cmd.end(), args.begin(), args.end());
    auto retry = std::make_shared<std::vector<std::string>>(cmd);
    const bool ok = _client.call(std::move(cmd), [this, script, retry, cb](const resp_value& v) {
        if (v.is_error() && v.str.starts_with("NOSCRIPT")) {
            // Redis lost its script cache (restart, SCRIPT FLUSH): the script itself, once.
            (*retry)[0] = "EVAL";
            (*retry)[1] = std::string(scripts[script]);
            load_scripts();
            if (!_client.call(std::move(*retry), cb)) {
                resp_value err;
                err.type = resp_value::kind::error;
                err.str = "ERR ringmail: pipeline full";
                cb(err);
            }
            return;
        }
        cb(v);
    });
    if (!ok) {
        resp_value err;
        err.type = resp_value::kind::error;
        err.str = "ERR ringmail: not connected";
        cb(err);
    }
}

rate_decision cluster_limiter::local_acquire(const std::string& key, rate_limit r) {
    ++_local_decisions;
    const double rate = r.per_second / std::max(1u, _nodes);
    const auto T = std::chrono::duration_cast<core::timer::clock::duration>(
        std::chrono::duration<double>(1.0 / rate));
    const auto tau = T * (std::max<std::uint32_t>(r.burst, 1) - 1);
    const auto now = _reactor.now();
    local_rate& lr = _local_rates[key];
    auto tat = std::max(lr.tat, now);
    if (now < tat - tau) {
        return rate_decision{
            false, std::chrono::duration_cast<std::chrono::microseconds>(tat - tau - now), true};
    }
    lr.tat = tat + T;
    return rate_decision{true, {}, true};
}

void cluster_limiter::acquire(std::string_view key_in, rate_limit r,
                              std::function<void(rate_decision)> cb) {
    std::string key(key_in);
    if (degraded()) {
        went_local(_client.up() ? "scripts not loaded" : "not connected");
        cb(local_acquire(key, r));
        return;
    }
    const double t_us = 1e6 / r.per_second;
    const double tau_us = t_us * (std::max<std::uint32_t>(r.burst, 1) - 1);
    eval(gcra, {_o.prefix + "rate:" + key},
         {fmt::format("{:.0f}", t_us), fmt::format("{:.0f}", tau_us)},
         [this, key, r, cb](const resp_value& v) {
             if (v.type != resp_value::kind::array || v.elements.size() != 2) {
                 went_local(v.is_error() ? v.str : "unexpected reply");
                 cb(local_acquire(key, r));
                 return;
             }
             rate_decision d;
             d.allowed = v.elements[0].integer == 1;
             d.retry_after = std::chrono::microseconds(v.elements[1].integer);
             cb(d);
         });
}

bool cluster_limiter::local_lease(const std::string& key, std::uint32_t max) {
    ++_local_decisions;
    const std::uint32_t share = std::max<std::uint32_t>(1, max / std::max(1u, _nodes));
    // Redis's leases held here count too: they stay open through the outage.
    auto& held = _held[key];
    if (held >= share)
        return false;
    ++held;
    return true;
}

void cluster_limiter::lease(std::string_view key_in, std::uint32_t max,
                            std::function<void(std::uint64_t)> cb) {
    std::string key(key_in);
    const std::uint64_t id = _next_lease++;
    if (degraded()) {
        went_local("not connected");
        if (!local_lease(key, max)) {
            cb(0);
            return;
        }
        _leases[id] = lease_state{key, max, true};
        cb(id);
        return;
    }
    eval(lease_op, {_o.prefix + "conn:" + key},
         {std::to_string(max), std::to_string(_o.lease_ttl.count()),
          fmt::format("{}:{}", _o.node_id, id)},
         [this, key, max, id, cb](const resp_value& v) {
             if (v.type != resp_value::kind::integer) {
                 went_local(v.is_error() ? v.str : "unexpected reply");
                 if (!local_lease(key, max)) {
                     cb(0);
                     return;
                 }
                 _leases[id] = lease_state{key, max, true};
                 cb(id);
                 return;
             }
             if (v.integer != 1) {
                 cb(0);
                 return;
             }
             _leases[id] = lease_state{key, max, false};
             ++_held[key];
             cb(id);
         });
}

void cluster_limiter::release(std::uint64_t id) {
    auto it = _leases.find(id);
    if (it == _leases.end())
        return;
    auto c = _held.find(it->second.key);
    if (c != _held.end() && c->second > 0 && --c->second == 0)
        _held.erase(c);
    if (!it->second.local && _client.up()) {
        _client.call(
            {"ZREM", _o.prefix + "conn:" + it->second.key, fmt::format("{}:{}", _o.node_id, id)},
            {});
    }  // else: it expires on its own within lease_ttl
    _leases.erase(it);
}

void cluster_limiter::renew() {
    if (degraded())
        return;
    for (auto& [id, l] : _leases) {
        if (l.local) {
            // Taken while Redis was away: put into Redis now if there is room (the
            // connection then counts for every node); else it stays counted here, over the
            // limit, until its connection closes.
            eval(lease_op, {_o.prefix + "conn:" + l.key},
                 {std::to_string(l.max), std::to_string(_o.lease_ttl.count()),
                  fmt::format("{}:{}", _o.node_id, id)},
                 // init-captures: clang 14 cannot capture a structured binding
                 [this, id = id, key = l.key](const resp_value& v) {
                     if (v.type != resp_value::kind::integer || v.integer != 1)
                         return;
                     auto it = _leases.find(id);
                     if (it == _leases.end()) {
                         // Released meanwhile: not held over its ttl.
                         _client.call({"ZREM", _o.prefix + "conn:" + key,
                                       fmt::format("{}:{}", _o.node_id, id)},
                                      {});
                         return;
                     }
                     it->second.local = false;
                 });
            continue;
        }
        eval(lease_op, {_o.prefix + "conn:" + l.key},
             {std::to_string(l.max), std::to_string(_o.lease_ttl.count()),
              fmt::format("{}:{}", _o.node_id, id)},
             [key = l.key](const resp_value& v) {
                 if (v.type == resp_value::kind::integer && v.integer == 0)
                     log::warn("cluster: lease on {} lost (expired and taken): held over the limit",
                               key);
             });
    }
}

void cluster_limiter::heartbeat() {
    if (degraded())
        return;
    eval(nodes_op, {_o.prefix + "nodes"}, {_o.node_id, std::to_string(_o.heartbeat_ttl.count())},
         [this](const resp_value& v) {
             if (v.type == resp_value::kind::integer && v.integer > 0)
                 _nodes = static_cast<unsigned>(v.integer);
         });
}

void cluster_limiter::poll_suspensions() {
    if (degraded())
        return;
    eval(suspend_op, {_o.prefix + "suspended"}, {"", "0"}, [this](const resp_value& v) {
        if (v.type != resp_value::kind::array || v.elements.empty())
            return;
        _redis_now_ms = v.elements[0].integer;
        _redis_now_at = _reactor.now();
        std::unordered_map<std::string, std::int64_t> fresh;
        for (std::size_t i = 1; i + 1 < v.elements.size(); i += 2)
            fresh[v.elements[i].str] = v.elements[i + 1].integer;
        _suspended.swap(fresh);
        if (_on_poll)
            _on_poll();
    });
}

void cluster_limiter::suspend(std::string_view key, std::chrono::milliseconds d) {
    // Effective here at once, whatever Redis says.
    const std::int64_t now_ms =
        _redis_now_ms +
        std::chrono::duration_cast<std::chrono::milliseconds>(_reactor.now() - _redis_now_at)
            .count();
    auto& until = _suspended[std::string(key)];
    until = std::max(until, now_ms + d.count());
    if (degraded())
        return;
    eval(suspend_op, {_o.prefix + "suspended"}, {std::string(key), std::to_string(d.count())},
         [](const resp_value&) {});
}

void cluster_limiter::lift(std::string_view key) {
    _suspended.erase(std::string(key));
    if (!degraded())
        _client.call({"HDEL", _o.prefix + "suspended", std::string(key)}, {});
}

bool cluster_limiter::suspended(std::string_view key) const {
    return suspended_for(key).count() > 0;
}

std::chrono::milliseconds cluster_limiter::suspended_for(std::string_view key) const {
    auto it = _suspended.find(std::string(key));
    if (it == _suspended.end())
        return std::chrono::milliseconds(0);
    const std::int64_t now_ms =
        _redis_now_ms +
        std::chrono::duration_cast<std::chrono::milliseconds>(_reactor.now() - _redis_now_at)
            .count();
    return std::chrono::milliseconds(std::max<std::int64_t>(0, it->second - now_ms));
}

void cluster_limiter::on_expire() {
    const auto now = _reactor.now();
    if (now - _last_heartbeat >= _o.heartbeat_ttl / 3) {
        _last_heartbeat = now;
        heartbeat();
    }
    if (now - _last_renew >= _o.lease_ttl / 3) {
        _last_renew = now;
        renew();
    }
    if (now - _last_poll >= _o.poll_interval) {
        _last_poll = now;
        poll_suspensions();
    }
    _reactor.arm(*this, now + tick);
}

}  // namespace ringmail::cluster
