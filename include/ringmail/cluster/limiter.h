// Cluster-wide limits on Redis ([cluster] redis = "host:port"): message rates, connection
// counts and suspensions that hold across every ringmaild node sharing one Redis.
//
// - Rates are GCRA in a Lua script run by Redis (EVALSHA after SCRIPT LOAD, EVAL when Redis
//   answers NOSCRIPT) on Redis's clock (TIME, with its microseconds): every node's decision is
//   taken against one theoretical arrival time per key, so N nodes together send at the rate.
// - Connection limits are leases: members of a sorted set per key whose score is their expiry
//   (Redis time, ms). A lease is taken only while fewer live members exist, renewed by its
//   holder every ttl/3 while held, released (ZREM) on close; a node that dies loses its
//   leases when they expire.
// - Suspensions are a hash key -> until (Redis time, ms), polled every poll_interval (500 ms:
//   every node sees a suspension within 1 s).
// - Nodes are counted by heartbeats (a sorted set of node ids scored by expiry), so that each
//   node knows how many share the limits.
//
// Redis unreachable (not connected, pipeline full, an error reply): decisions are taken locally
// with every limit divided by the last known node count (at least 1), the switch is logged and
// counted (fallbacks(), local_decisions()), the client reconnects with backoff, and delivery
// never waits for Redis: a callback is always called, at once when local.
//
// Owned by one shard (one connection per shard), used on its thread only; callbacks run on it.
#pragma once

#include "ringmail/cluster/redis_client.h"
#include "ringmail/core/timer.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ringmail::cluster {

struct cluster_options {
    redis_options redis;
    std::string prefix = "ringmail:";  // every key ringmail makes starts so
    std::string node_id;               // unique per node (and shard): heartbeats, lease ids
    std::chrono::milliseconds lease_ttl{10000};
    std::chrono::milliseconds heartbeat_ttl{3000};
    std::chrono::milliseconds poll_interval{500};
};

struct rate_limit {
    double per_second = 0;    // > 0
    std::uint32_t burst = 1;  // messages allowed at once beyond the steady rate (>= 1)
};

// A rate decision: allowed now, or not before `retry_after` from now.
struct rate_decision {
    bool allowed = false;
    std::chrono::microseconds retry_after{0};
    bool local = false;  // taken without Redis (fallback)
};

class cluster_limiter final : private core::timer {
  public:
    cluster_limiter(core::reactor& r, core::buffer_ring& buffers, cluster_options o);
    ~cluster_limiter();
    cluster_limiter(const cluster_limiter&) = delete;
    cluster_limiter& operator=(const cluster_limiter&) = delete;

    void start();
    void stop();
    bool stopped() const noexcept { return _client.stopped(); }

    // One message of `key` at rate `r`.
    void acquire(std::string_view key, rate_limit r, std::function<void(rate_decision)> cb);

    // One connection of `key` among at most `max`: cb(lease id) or cb(0) when refused.
    void lease(std::string_view key, std::uint32_t max, std::function<void(std::uint64_t)> cb);
    void release(std::uint64_t lease);
    std::size_t leases_held() const noexcept { return _leases.size(); }

    // Every node stops new attempts to `key` for `d` (seen by the others within 1 s).
    void suspend(std::string_view key, std::chrono::milliseconds d);
    // An operator's resume: `key` is not suspended here from now, nor in Redis once the HDEL
    // is answered (a poll answered in between may bring it back here for one poll interval).
    void lift(std::string_view key);
    bool suspended(std::string_view key) const;
    // How long `key` stays suspended (0: not suspended).
    std::chrono::milliseconds suspended_for(std::string_view key) const;
    // Called after each poll of the suspensions (on this shard's thread).
    void set_on_poll(std::function<void()> f) { _on_poll = std::move(f); }

    bool degraded() const noexcept { return !_client.up() || !_scripts_loaded; }
    unsigned nodes() const noexcept { return _nodes; }
    std::uint64_t fallbacks() const noexcept { return _fallbacks; }
    std::uint64_t local_decisions() const noexcept { return _local_decisions; }
    redis_client& client() noexcept { return _client; }

  private:
    struct lease_state {
        std::string key;
        std::uint32_t max = 0;
        bool local = false;
    };
    struct local_rate {
        std::chrono::steady_clock::time_point tat{};
    };

    void on_expire() override;
    void on_state(bool up);
    void load_scripts();
    void heartbeat();
    void renew();
    void poll_suspensions();
    void eval(int script, std::vector<std::string> keys, std::vector<std::string> args,
              std::function<void(const resp_value&)> cb);
    void went_local(std::string_view why);
    rate_decision local_acquire(const std::string& key, rate_limit r);
    bool local_lease(const std::string& key, std::uint32_t max);

    core::reactor& _reactor;
    cluster_options _o;
    std::function<void()> _on_poll;
    redis_client _client;
    bool _scripts_loaded = false;
    bool _stopping = false;
    bool _was_local = true;
    std::string _sha[4];
    unsigned _nodes = 1;
    std::uint64_t _fallbacks = 0;
    std::uint64_t _local_decisions = 0;
    std::uint64_t _next_lease = 1;
    std::unordered_map<std::uint64_t, lease_state> _leases;
    // Leases held per key, Redis's and local ones: the fallback's share counts both.
    std::unordered_map<std::string, std::uint32_t> _held;
    std::unordered_map<std::string, local_rate> _local_rates;
    std::unordered_map<std::string, std::int64_t> _suspended;  // key -> until (Redis ms)
    std::int64_t _redis_now_ms = 0;                            // from the last poll
    core::timer::clock::time_point _last_poll{}, _last_heartbeat{}, _last_renew{};
    core::timer::clock::time_point _redis_now_at{};
};

}  // namespace ringmail::cluster
