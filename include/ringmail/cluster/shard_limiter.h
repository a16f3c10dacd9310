// The scheduler's limiter with [cluster] redis: queue::limiter answered synchronously from
// what this shard's cluster_limiter already got from Redis, so the delivery path never waits
// for the network and takes no lock.
//
// - take_message spends a token Redis granted (GCRA on Redis's clock, one key per scope and
//   source). None there: the answer is "not before" (the wait Redis last gave, or a bound while
//   the ask is out) and the next token is asked for; when the reply comes the engine is woken
//   (wake callback), so a throttled queue waits on a timer or that reply, never polls. At most
//   one token held and one ask out per key and shard: the combined rate of all nodes passes
//   Redis's by at most two messages per shard at any moment, never over time.
// - acquire_connection takes a connection lease (a member of Redis's sorted set per key) that
//   was asked for earlier: the first try answers "retry shortly" and asks; the lease, when
//   granted, is kept for the scheduler's next try (a spare unused for 2 s goes back).
//   release_connection gives it back (ZREM); attach_provider (a provider learned from the MX
//   hosts after the connection opened) takes one whatever the limit. The connection rate is a
//   GCRA key too. The egress source's own connection limit stays this node's (local_limiter).
// - suspend publishes a rule's suspension to Redis as well; the others' are read from the
//   limiter's poll (every 500 ms) into this shard's cells.
// - Everything else (set overrides, rules' effects, unbindable sources) is the node's shared
//   local_limiter, which this one reads for the limits in force.
//
// Redis away: cluster_limiter answers at once with the local limits divided by the number of
// shards heartbeating (all nodes), so the calls here are answered in the same call.
//
// Owned by one shard (the daemon's shard, beside its cluster_limiter), used on its thread only.
#pragma once

#include "ringmail/cluster/limiter.h"
#include "ringmail/core/timer.h"
#include "ringmail/queue/shaping.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ringmail::cluster {

// The names of a shaping context's cells in Redis keys: its scopes ("p:NAME" for a provider,
// "d:NAME" for a domain some rule names, in scope order) and its source slots ("" for none,
// then the sources' names). Every node with the same tables makes the same keys.
std::vector<std::string> scope_names(const queue::shaping_context& sh);
std::vector<std::string> slot_names(const queue::shaping_context& sh);

class shard_limiter final : public queue::limiter, private core::timer {
  public:
    // `scope_names`: the providers' names then the rule domains' (scope order), `slot_names`:
    // "" then the egress sources' names; together they name the keys every node shares.
    shard_limiter(core::reactor& r, cluster_limiter& cluster, queue::local_limiter& local,
                  std::vector<std::string> scope_names, std::vector<std::string> slot_names);
    ~shard_limiter() override;
    shard_limiter(const shard_limiter&) = delete;
    shard_limiter& operator=(const shard_limiter&) = delete;

    // Called when a reply from Redis may let the scheduler go on (never from inside a call of
    // the scheduler's).
    void set_wake(std::function<void()> wake) { _wake = std::move(wake); }

    queue::take_result acquire_connection(int provider, unsigned slot,
                                          queue::steady_time now) override;
    void attach_provider(int provider, unsigned slot) override;
    void release_connection(int provider, unsigned slot) override;
    queue::take_result take_message(int provider, unsigned slot, queue::steady_time now) override;
    std::uint32_t max_connections(int provider, unsigned slot,
                                  queue::steady_time now) const override;
    std::uint32_t connections(int provider, unsigned slot) const override;
    queue::steady_time suspended_until(int scope, unsigned slot) const override;
    void suspend(int scope, unsigned slot, queue::steady_time until, int rule) override;
    // The node's local_limiter lifts its state, and the suspension leaves Redis, so that every
    // node's poll drops it.
    void lift(int scope, unsigned slot) override;
    void set_limits(int scope, unsigned slot, const queue::rule_spec& r, int rule,
                    queue::steady_time now) override;
    bool effect_active(int scope, unsigned slot, int rule, queue::steady_time now) const override;
    void suspend_source(unsigned slot, queue::steady_time until) override;
    queue::steady_time source_suspended_until(unsigned slot) const override;

    // Redis keys (after the cluster prefix) of a scope and slot: "provider/source".
    const std::string& key(int scope, unsigned slot) const;
    std::size_t spare_leases() const noexcept;

  private:
    // One GCRA key seen from this shard.
    struct tokens {
        std::uint32_t held = 0;  // granted by Redis, not spent (at most 1)
        bool asking = false;
        queue::steady_time granted_at{};
        queue::steady_time next_ask{};  // Redis said: not before
    };
    struct cell {
        std::string key;       // of the messages' rate and the leases
        std::string conn_key;  // of the connection rate
        tokens messages;
        tokens connects;
        std::vector<std::uint64_t> spare;  // leases granted, not yet used
        queue::steady_time spare_since{};
        bool leasing = false;
        queue::steady_time next_lease{};
        // One entry per connection counted here: its lease, or 0 for one counted by the
        // local limiter alone (no connection limit); entries are interchangeable.
        std::vector<std::uint64_t> in_use;
        queue::steady_time remote_suspended{};
    };

    cell* at(int scope, unsigned slot) noexcept;
    const cell* at(int scope, unsigned slot) const noexcept;
    bool ready(tokens& t, const std::string& key, double rate, std::uint32_t burst,
               queue::steady_time now);
    queue::steady_time not_before(const tokens& t, queue::steady_time now) const;
    void ask_lease(cell& c, std::uint32_t max);
    void woken();
    void on_poll();
    void on_expire() override;
    void arm_sweep();

    core::reactor& _reactor;
    cluster_limiter& _cluster;
    queue::local_limiter& _local;
    std::size_t _scopes = 0;
    std::size_t _slots = 0;
    std::vector<cell> _cells;  // scope x slot
    std::function<void()> _wake;
    int _calling = 0;  // inside one of our calls: a reply answered at once needs no wake
    bool _swept = false;
};

}  // namespace ringmail::cluster
