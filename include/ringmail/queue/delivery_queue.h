// The per-shard delivery queue: which messages wait for an attempt, in what order, and what the
// daemon must journal after each attempt (delivered / bounced / expired recipients, the retry
// time, a bounce to send).
//
// Owned by one shard (core::oncore checked on every call). Messages are named by their spool
// queue id (std::uint64_t); the queue does not know the spool. Bounded: add() beyond max_entries
// fails with errc::queue_full, so the daemon can answer 452 to new mail. Caller bugs (apply on a
// message not in flight, an unknown recipient index) abort.
#pragma once

#include "ringmail/core/oncore.h"
#include "ringmail/core/result.h"
#include "ringmail/queue/dsn.h"
#include "ringmail/queue/retry.h"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <queue>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace ringmail::queue {

enum class rcpt_state : std::uint8_t { pending, delivered, bounced, expired };

// What a server (or the client session, for local and connection failures) answered.
struct attempt_reply {
    int code = 0;          // 2xx delivered, 5xx bounced, anything else retried
    std::string enhanced;  // "x.y.z" or ""
    std::string text;
    std::string remote_mta;  // host name of the server, "" when no connection was made

    std::string to_string() const;  // "550 5.1.1 text"
};

struct recipient {
    std::string address;
    rcpt_state state = rcpt_state::pending;  // recovered messages bring their finished ones
    attempt_reply last;                      // last answer, for logs, /queue and the DSN
};

struct queue_entry {
    std::uint64_t id = 0;
    std::string sender;  // "" = null sender: never bounced to
    std::vector<recipient> rcpts;
    std::int64_t arrival = 0;       // unix seconds
    std::uint32_t attempts = 0;     // attempts made so far
    std::int64_t next_attempt = 0;  // unix seconds; 0 = ready at once
};

struct rcpt_outcome {
    std::uint32_t rcpt = 0;  // index into queue_entry::rcpts
    attempt_reply reply;
};

struct retry_record {
    std::uint32_t attempts = 0;
    std::int64_t next_attempt = 0;
};

struct bounce_request {
    std::uint64_t id = 0;  // the failed message (its bytes become text/rfc822-headers)
    std::string sender;    // the DSN's recipient
    std::int64_t arrival = 0;
    std::vector<failed_recipient> rcpts;
};

// What the daemon does after an attempt: journal the recipients' new states, then either drop
// the message (done) or record the retry; and spool a DSN when asked.
struct apply_actions {
    std::vector<std::uint32_t> delivered, bounced, expired;  // recipient indexes
    bool done = false;                  // no recipient pending: the message left the queue
    std::optional<retry_record> retry;  // some recipients still pending
    std::optional<bounce_request> bounce;
};

struct queue_config {
    std::size_t max_entries = 100000;
    retry_policy retry;
};

struct queue_counts {
    std::size_t queued = 0;     // every message held
    std::size_t ready = 0;      // due, waiting for pop_ready
    std::size_t deferred = 0;   // waiting for their retry time
    std::size_t in_flight = 0;  // popped, waiting for apply
};

class delivery_queue {
  public:
    // The policy must have passed validate().
    explicit delivery_queue(queue_config config);

    // A new message, or one recovered from the journal (finished recipients keep their state,
    // next_attempt in the future keeps it deferred). Needs at least one pending recipient.
    result<void> add(queue_entry entry);

    // How many messages are due at `now` (deferred ones whose time has come join the ready
    // list): the daemon sizes its connection pool by it.
    std::size_t due(std::int64_t now);
    // The next message due at `now`, oldest first; it is in flight until apply().
    std::optional<std::uint64_t> pop_ready(std::int64_t now);
    // When pop_ready may next return something (<= now: at once); nullopt when nothing waits.
    std::optional<std::int64_t> next_wakeup() const;

    // Outcome of an attempt on an in-flight message. Pending recipients without an outcome stay
    // pending (not attempted this time).
    template <std::uniform_random_bit_generator Rng>
    apply_actions apply(std::uint64_t id, std::span<const rcpt_outcome> outcomes, std::int64_t now,
                        Rng& rng) {
        return apply_with(id, outcomes, nullptr, now, draw(rng));
    }
    // No transaction happened (connect failed, greeting refused, TLS failed, ...): every pending
    // recipient is deferred with this reply, whatever its code.
    template <std::uniform_random_bit_generator Rng>
    apply_actions apply_connection_failure(std::uint64_t id, const attempt_reply& reply,
                                           std::int64_t now, Rng& rng) {
        return apply_with(id, {}, &reply, now, draw(rng));
    }

    const queue_entry* find(std::uint64_t id) const;
    queue_counts counts() const;
    std::size_t max_entries() const { return _config.max_entries; }

  private:
    struct slot {
        queue_entry entry;
        bool in_flight = false;
    };
    struct timed {
        std::int64_t when;
        std::uint64_t seq;  // FIFO among equal times
        std::uint64_t id;
        bool operator>(const timed& o) const {
            return when != o.when ? when > o.when : seq > o.seq;
        }
    };

    template <typename Rng>
    static double draw(Rng& rng) {
        return std::uniform_real_distribution<double>(-1.0, 1.0)(rng);
    }
    apply_actions apply_with(std::uint64_t id, std::span<const rcpt_outcome> outcomes,
                             const attempt_reply* connection_failure, std::int64_t now,
                             double unit);
    void defer(std::uint64_t id, std::int64_t when);

    core::oncore _oncore;
    queue_config _config;
    std::unordered_map<std::uint64_t, slot> _entries;
    std::deque<std::uint64_t> _ready;
    std::priority_queue<timed, std::vector<timed>, std::greater<timed>> _deferred;
    std::uint64_t _seq = 0;
    std::size_t _in_flight = 0;
};

}  // namespace ringmail::queue
