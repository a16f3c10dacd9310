// Cross-shard scheduling: which shard owns a destination, the messages shards exchange about
// jobs, and the two pieces of shared state (per-destination slot counters, spare gauges).
//
// Ownership. A destination (routing domain) has one owner shard: FNV-1a 64 of its key modulo
// the shard count, stable across runs and builds (unlike std::hash). The shard that spooled a
// message (the origin) hands each job to the owner; the owner queues it, delivers it and sends
// a job_notice back to the origin, which journals the outcome in its own spool.
//
// Messages (shard_message) carry handles only: queue id, recipient indexes, origin shard, the
// domain key, a slot-counter pointer. Bodies stay in the origin's spool. Every alternative
// moves without throwing, as core::spsc_ring / core::mailbox require, and is a few dozen bytes.
//
// Spreading a hot destination (lending). The owner may lend part of a destination's backlog to
// another shard: it sends a lease_grant, then the jobs as job_handoff with the lease id, on the
// same ring (FIFO, so the grant arrives first). The borrower delivers them with its own
// connections and, once it holds nothing of the lease (no job, no connection), sends
// lease_return. Jobs a borrower has to defer go back to the owner as plain job_handoff.
//
// The global connection limit. Each owned destination has one destination_slots, allocated by
// the owner. Every connection to the destination, the owner's and the borrowers', takes a slot
// with a compare-and-swap before it connects and gives it back after it is closed, so the sum
// over all shards never exceeds the limit. Lifetime: the owner frees a destination (and its
// slots) only when it has no lease out; a borrower touches the slots only between receiving
// the grant and sending lease_return, and releases its last slot before that send, so the
// ring's release/acquire orders every borrower access before the free.
//
// Spare gauges. Each shard publishes (relaxed) how much more work it could take; an owner reads
// them to choose a borrower. A stale value only makes a lending choice worse, never unsafe.
#pragma once

#include "ringmail/core/spsc_ring.h"
#include "ringmail/queue/destination.h"
#include "ringmail/queue/outcome.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace ringmail::queue {

// FNV-1a 64 of the bytes, lower-cased ASCII on the fly.
std::uint64_t fnv1a64_nocase(std::string_view s) noexcept;
// The owner shard of a routing domain (any case; a trailing dot is ignored). shards > 0.
unsigned owner_shard(std::string_view domain, unsigned shards) noexcept;

// The global per-destination connection counter (see the protocol above).
class alignas(core::cache_line_size) destination_slots {
  public:
    explicit destination_slots(std::uint32_t limit) noexcept : _limit(limit) {}
    destination_slots(const destination_slots&) = delete;
    destination_slots& operator=(const destination_slots&) = delete;

    // Takes a slot unless `limit` are taken; never blocks.
    bool try_acquire() noexcept {
        std::uint32_t cur = _in_use.load(std::memory_order_relaxed);
        while (cur < _limit) {
            if (_in_use.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                              std::memory_order_relaxed))
                return true;
        }
        return false;
    }
    // Gives back a slot taken with try_acquire; releasing more than taken aborts.
    void release() noexcept;
    std::uint32_t in_use() const noexcept { return _in_use.load(std::memory_order_relaxed); }
    std::uint32_t limit() const noexcept { return _limit; }

  private:
    std::atomic<std::uint32_t> _in_use{0};
    const std::uint32_t _limit;
};

// One relaxed gauge per shard: the spare capacity it publishes (connections it could still
// open minus its backlog; 0 when loaded). Built before the shards start, destroyed after.
class spare_gauges {
  public:
    explicit spare_gauges(unsigned shards)
        : _shards(shards), _cells(std::make_unique<cell[]>(shards)) {}
    unsigned shards() const noexcept { return _shards; }
    void publish(unsigned shard, std::uint32_t spare) noexcept {
        _cells[shard].v.store(spare, std::memory_order_relaxed);
    }
    std::uint32_t read(unsigned shard) const noexcept {
        return _cells[shard].v.load(std::memory_order_relaxed);
    }

  private:
    struct alignas(core::cache_line_size) cell {
        std::atomic<std::uint32_t> v{0};
    };
    unsigned _shards;
    std::unique_ptr<cell[]> _cells;
};

// --- messages between shards ---

// A job for the owner (lease == 0), or for a borrower under lease `lease` of the sender.
struct job_handoff {
    std::string domain;  // destination key (short names stay inline in the string)
    delivery_job job;
    std::uint32_t lease = 0;
};

// The owner lends a destination: the borrower may open up to `max_connections` connections,
// each taking a slot from `slots` first. The jobs follow as job_handoff with this lease id.
struct lease_grant {
    std::string domain;
    destination_slots* slots = nullptr;
    std::uint32_t lease = 0;
    std::uint32_t max_connections = 1;
    destination_policy policy;  // rate is always 0: rate-limited destinations are not lent
    // The job_handoffs of this lease that follow the grant. A full ring may hold some back
    // for a later flush: the borrower keeps the lease until all of them have come.
    std::uint32_t jobs = 0;
    int provider = -1;  // the destination's [[provider]] as the owner knows it (shaping.h)
};

// The borrower holds nothing of the lease any more (no job, no connection, no slot).
struct lease_return {
    std::string domain;
    std::uint32_t lease = 0;
};

enum class rcpt_status : std::uint8_t { delivered, failed, deferred, expired };

// Replies worth journaling / reporting (everything but 2xx), only allocated when there are any.
struct notice_detail {
    std::vector<std::pair<std::uint16_t, attempt_reply>> replies;  // recipient index, reply
    // Delivered recipients whose sender asked NOTIFY=SUCCESS, to a next hop that does not
    // offer DSN (their replies are in `replies`): the origin sends an "Action: relayed" notice.
    std::vector<std::uint16_t> relayed;
};

// To the origin: what happened to some recipients of one of its messages. delivered and failed
// (5xx) and expired are final; deferred recipients are queued again at the destination's owner
// for next_attempt_unix (the origin journals the retry record).
struct job_notice {
    std::uint64_t queue_id = 0;
    rcpt_list rcpts;
    core::small_vector<rcpt_status, 16> status;  // parallel to rcpts
    std::uint32_t attempts = 0;                  // attempts made, this one included
    std::int64_t next_attempt_unix = 0;          // when some recipient is deferred
    std::unique_ptr<notice_detail> detail;       // freed by the origin shard
};

using shard_message = std::variant<job_handoff, lease_grant, lease_return, job_notice>;

static_assert(std::is_nothrow_move_constructible_v<shard_message> &&
                  std::is_nothrow_destructible_v<shard_message>,
              "shard_message must fit core::spsc_ring / core::mailbox");

}  // namespace ringmail::queue
