// Delivery jobs and the per-destination queue that holds them on the owning shard.
//
// A job is one message's recipients that share a routing domain: one SMTP transaction later.
// It names the message by spool queue id and the shard whose spool holds it (never bytes), so
// it can cross shards as a small value. A destination_queue belongs to one shard (the owner of
// the domain, or a borrower holding a lease) and is used only there; it is bounded by what
// the scheduler admits. Caller bugs (more recipients than a job holds, counters going below
// zero) abort.
#pragma once

#include "ringmail/core/small_vector.h"
#include "ringmail/queue/domain_policy.h"
#include "ringmail/queue/token_bucket.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::queue {

// Recipients per job: one transaction. RFC 5321 4.5.3.1.8 asks servers to take at least 100
// recipients; more at one destination make several jobs (several transactions, on the same
// pooled connection). A job stays a small value for the rings: its first 16 recipients are
// inline, the rest (rare) on the heap.
inline constexpr std::size_t max_job_rcpts = 100;

// Bounded list of recipient indexes (into the spool message's recipients).
class rcpt_list {
  public:
    rcpt_list() = default;
    rcpt_list(std::initializer_list<std::uint16_t> init);
    bool push_back(std::uint16_t rcpt);  // false when full
    std::size_t size() const noexcept { return _items.size(); }
    bool empty() const noexcept { return _items.empty(); }
    bool full() const noexcept { return _items.size() == max_job_rcpts; }
    std::uint16_t operator[](std::size_t i) const noexcept { return _items[i]; }
    const std::uint16_t* begin() const noexcept { return _items.begin(); }
    const std::uint16_t* end() const noexcept { return _items.end(); }
    std::span<const std::uint16_t> view() const noexcept { return _items.view(); }
    bool operator==(const rcpt_list& o) const noexcept { return _items == o._items; }

  private:
    core::small_vector<std::uint16_t, 16> _items;
};

struct delivery_job {
    std::uint64_t queue_id = 0;     // spool queue id
    std::uint16_t origin = 0;       // shard whose spool holds the message (journals outcomes)
    rcpt_list rcpts;                // pending recipients of this routing domain
    std::uint32_t attempts = 0;     // attempts made so far (recovered messages bring theirs)
    std::int64_t arrival_unix = 0;  // for max_lifetime
    steady_time next_attempt{};     // ready when <= now
};

// The queue key of a routing domain: ASCII lower case, without a trailing dot.
std::string destination_key(std::string_view domain);

// The recipients of one message grouped into jobs: one group per routing domain (the part after
// the last '@', as destination_key), split every max_job_rcpts. Groups keep first-seen order.
struct job_group {
    std::string domain;
    rcpt_list rcpts;
};
std::vector<job_group> group_by_domain(std::span<const std::string> addresses,
                                       std::span<const std::uint32_t> pending);
// The same with the destination key of each recipient's domain given by `key_of` (routes:
// every domain sent to one smarthost is one destination).
std::vector<job_group> group_by_destination(
    std::span<const std::string> addresses, std::span<const std::uint32_t> pending,
    const std::function<std::string(std::string_view domain)>& key_of);

struct destination_counts {
    std::size_t ready = 0;
    std::size_t deferred = 0;
    std::size_t in_flight = 0;
    std::uint32_t connections = 0;  // this shard's, opening or open
};

class destination_queue {
  public:
    destination_queue(std::string key, const destination_policy& policy, steady_time now);

    const std::string& key() const noexcept { return _key; }
    const destination_policy& policy() const noexcept { return _policy; }

    // Ready (FIFO) when next_attempt <= now, else deferred (by time, FIFO among equal times).
    void push(delivery_job job, steady_time now);
    // Deferred jobs whose time has come join the ready list; returns how many.
    std::size_t promote(steady_time now);
    std::optional<delivery_job> pop_ready();
    const delivery_job* front_ready() const;
    std::optional<steady_time> next_deferred() const;
    // Every ready job, oldest first (a failed connection defers them all).
    std::vector<delivery_job> take_all_ready();
    // Every deferred job becomes ready now (the operator's flush); returns how many.
    std::size_t promote_all();
    // Removes the jobs (ready or deferred) `pred` selects; `ready_taken` counts the ready ones.
    std::vector<delivery_job> take_if(const std::function<bool(const delivery_job&)>& pred,
                                      std::size_t& ready_taken);
    // Recipients of the queued (ready and deferred) jobs.
    std::size_t queued_recipients() const noexcept { return _queued_rcpts; }
    // Every queued job (ready, then deferred), for the admin API.
    template <typename F>
    void for_each_job(F&& f) const {
        for (const auto& j : _ready)
            f(j);
        for (const auto& t : _deferred)
            f(t.job);
    }

    // The scheduler's bookkeeping of this shard's use of the destination.
    void job_started() noexcept { ++_in_flight; }
    void job_finished();
    void connection_opening() noexcept { ++_connections; }
    void connection_gone();
    // Local cap only; the global one is the destination's shared slot counter.
    bool below_connection_cap(std::uint32_t cap) const noexcept { return _connections < cap; }

    token_bucket& bucket() noexcept { return _bucket; }
    destination_counts counts() const noexcept {
        return {_ready.size(), _deferred.size(), _in_flight, _connections};
    }
    bool empty() const noexcept {
        return _ready.empty() && _deferred.empty() && _in_flight == 0 && _connections == 0;
    }

  private:
    struct timed {
        steady_time when;
        std::uint64_t seq;
        delivery_job job;
    };
    static bool later(const timed& a, const timed& b) {
        return a.when != b.when ? a.when > b.when : a.seq > b.seq;
    }

    std::string _key;
    destination_policy _policy;
    token_bucket _bucket;
    std::deque<delivery_job> _ready;
    std::vector<timed> _deferred;   // min-heap by (when, seq)
    std::size_t _queued_rcpts = 0;  // recipients of the ready and deferred jobs
    std::uint64_t _seq = 0;
    std::size_t _in_flight = 0;
    std::uint32_t _connections = 0;
};

}  // namespace ringmail::queue
