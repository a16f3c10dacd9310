// What a shard publishes for the admin endpoint's /metrics: counters, gauges and histograms
// that only their shard writes and the admin thread reads, without a lock.
//
// One `shard_metrics` per shard, made by the main thread before the shards start and kept
// until every thread has joined (daemon::context owns them). Single writer: the owning shard
// updates a value with a relaxed load and store (no read-modify-write: nobody else writes, so
// no lock prefix and no contention on the mail path); the admin thread reads with relaxed
// loads and sums over the shards. A reader may see one shard's values a moment apart from
// each other, never torn ones (each is one aligned 64-bit atomic). Label sets are fixed
// arrays (bounded by design); a shard's struct sits on its own cache lines.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

namespace ringmail::core {

// Monotonic, one writer.
class counter {
  public:
    void add(std::uint64_t n = 1) noexcept {
        _v.store(_v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::uint64_t get() const noexcept { return _v.load(std::memory_order_relaxed); }

  private:
    std::atomic<std::uint64_t> _v{0};
};

// A current value, one writer.
class gauge {
  public:
    void set(std::int64_t v) noexcept { _v.store(v, std::memory_order_relaxed); }
    std::int64_t get() const noexcept { return _v.load(std::memory_order_relaxed); }

  private:
    std::atomic<std::int64_t> _v{0};
};

// A cumulative histogram over fixed upper bounds (seconds), one writer. The sum is kept in
// microseconds (an integer, so it stays one plain atomic).
template <std::size_t N>
class histogram {
  public:
    explicit constexpr histogram(const std::array<double, N>& bounds) : _bounds(bounds) {}

    void observe(double seconds) noexcept {
        std::size_t i = 0;
        while (i < N && seconds > _bounds[i])
            ++i;
        _buckets[i].add();  // non-cumulative here; the reader accumulates
        _count.add();
        _sum_us.add(seconds <= 0 ? 0 : static_cast<std::uint64_t>(seconds * 1e6));
    }
    void observe(std::chrono::nanoseconds d) noexcept {
        observe(std::chrono::duration<double>(d).count());
    }

    const std::array<double, N>& bounds() const noexcept { return _bounds; }
    // Observations in (bounds[i-1], bounds[i]]; index N is past the last bound.
    std::uint64_t bucket(std::size_t i) const noexcept { return _buckets[i].get(); }
    std::uint64_t count() const noexcept { return _count.get(); }
    std::uint64_t sum_us() const noexcept { return _sum_us.get(); }

  private:
    std::array<double, N> _bounds;
    std::array<counter, N + 1> _buckets{};
    counter _count;
    counter _sum_us;
};

inline constexpr std::array<double, 12> delivery_latency_bounds{0.1, 0.5, 1,   5,    10,    30,
                                                                60,  300, 900, 3600, 14400, 86400};
inline constexpr std::array<double, 12> spool_commit_bounds{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                            0.05,   0.1,   0.25,  0.5,   1,    5};

// Why reception refused a message (or its transaction), by the reply it got.
enum class rejection : std::uint8_t {
    relay_denied,   // 554 5.7.1
    too_big,        // 552 5.3.4
    bad_content,    // 550 5.6.0: bare CR/LF, NUL
    storage,        // 451/452 4.3.x: spool or queue full, I/O error
    auth_required,  // 530 5.7.0
    count
};
inline constexpr std::array<const char*, static_cast<std::size_t>(rejection::count)>
    rejection_names{"relay_denied", "too_big", "bad_content", "storage", "auth_required"};

enum class tls_result : std::uint8_t { ok, failed, count };
// SASL mechanisms as counted (auth::mechanism order is not assumed).
enum class auth_mech : std::uint8_t { plain, login, cram_md5, count };
inline constexpr std::array<const char*, 3> auth_mech_names{"PLAIN", "LOGIN", "CRAM-MD5"};
enum class dns_result : std::uint8_t { ok, nxdomain, nodata, temporary, count };
inline constexpr std::array<const char*, 4> dns_result_names{"ok", "nxdomain", "nodata",
                                                             "temporary"};

struct alignas(64) shard_metrics {
    static constexpr std::size_t max_listeners = 32;

    // Reception.
    std::array<counter, max_listeners> connections_accepted{};
    gauge inbound_open;
    gauge outbound_open;
    counter messages_received;  // committed and taken by the engine
    std::array<counter, static_cast<std::size_t>(rejection::count)> rejected{};
    // [direction: 0 inbound, 1 outbound][tls_result]
    std::array<std::array<counter, 2>, 2> tls_handshakes{};
    // [auth_mech][0 success, 1 failure]
    std::array<std::array<counter, 2>, static_cast<std::size_t>(auth_mech::count)> auth{};

    // Delivery outcomes, counted by the origin shard when it journals them.
    counter rcpt_delivered, rcpt_deferred, rcpt_bounced, rcpt_expired;
    histogram<12> delivery_latency{delivery_latency_bounds};

    // The origin ledger: what this shard's spool still holds.
    gauge queue_messages;
    gauge queue_recipients;
    gauge queue_oldest_arrival;  // unix seconds; 0 = empty

    // Spool.
    histogram<12> spool_commit{spool_commit_bounds};
    gauge spool_bytes;
    // The last commit batch failed: 0 no, 1 disk full (ENOSPC, EDQUOT), 2 another error.
    gauge spool_failing;

    // DNS lookups answered (cache hits included).
    std::array<counter, static_cast<std::size_t>(dns_result::count)> dns{};

    // The event loop: how late a 250 ms timer fired, last measured (nanoseconds).
    gauge loop_lag_ns;

    // [cluster] redis: times this shard fell back to local limits (a running total), whether
    // it is on them now, and the participants (shards of every node) it last counted.
    gauge cluster_fallbacks;
    gauge cluster_degraded;
    gauge cluster_nodes;
};

}  // namespace ringmail::core
