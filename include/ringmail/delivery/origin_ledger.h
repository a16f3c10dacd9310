// The origin shard's record of the messages it spooled while their recipients are delivered by
// the owners of their destinations (whatever the route: MX, a [[domain]] route, the smarthost):
// per-recipient state, what to journal when a job_notice comes back, and when to send the one
// DSN a message gets for its failed recipients, the notices of relayed recipients (NOTIFY=
// SUCCESS to a hop without DSN) and the one delay notice per recipient (after delay_warning).
//
// Owned by the origin shard (core::oncore checked). A pure state machine: notices in, journal
// actions out; the engine applies them to the spool (record_rcpt, record_attempt, spool the
// DSN, record_done, in that order). Bounded by max_messages (add() answers queue_full).
// Notices for unknown messages or recipients already final are ignored (a duplicate after a
// restart race must not abort the daemon): they are counted in stale().
#pragma once

#include "ringmail/core/oncore.h"
#include "ringmail/core/result.h"
#include "ringmail/queue/handoff.h"
#include "ringmail/queue/outcome.h"
#include "ringmail/spool/spool.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ringmail::delivery {

struct ledger_message {
    spool::queue_id id = 0;
    std::string sender;  // "" = null sender: never a DSN
    std::int64_t arrival = 0;
    std::vector<std::string> rcpts;
    // Recovered messages bring their final recipients; empty = all pending.
    std::vector<queue::rcpt_state> state;
    std::uint32_t attempts = 0;
    // Recovered: recipients whose delay notice was journaled; empty = none.
    std::vector<bool> delay_noticed;
};

struct ledger_actions {
    std::vector<std::pair<std::uint32_t, spool::outcome>> outcomes;  // recipient, final state
    std::optional<queue::retry_record> retry;                        // some recipient still pending
    std::optional<queue::bounce_request> bounce;   // failed recipients, once all are final
    std::optional<queue::bounce_request> relayed;  // delivered to a hop without DSN
    std::optional<queue::bounce_request> delayed;  // deferred past delay_warning, once each
    std::vector<std::uint32_t> delay_noticed;      // journal them (outcome::delay_noticed)
    bool done = false;                             // no recipient pending: record_done
    bool null_sender_failure = false;              // failures that get no DSN (null sender)
};

class origin_ledger {
  public:
    // delay_warning: age of a deferred recipient that gets a delay notice; 0 = never.
    explicit origin_ledger(std::size_t max_messages = 500000,
                           std::chrono::seconds delay_warning = std::chrono::seconds(0))
        : _max(max_messages), _delay_warning(delay_warning) {}

    // errc::queue_full past max_messages; a message without pending recipient is refused
    // (no_recipients).
    result<void> add(ledger_message m);
    // now_unix: the time the delay warning is measured against (0: no delay notices).
    ledger_actions apply(const queue::job_notice& n, std::int64_t now_unix = 0);

    const ledger_message* find(spool::queue_id id) const;
    std::size_t size() const noexcept { return _entries.size(); }
    std::size_t max_messages() const noexcept { return _max; }
    std::uint64_t stale() const noexcept { return _stale; }
    // Recipients not final yet, over every message held.
    std::size_t pending_recipients() const noexcept { return _pending_rcpts; }
    // The arrival (unix seconds) of the oldest message held; 0 when empty.
    std::int64_t oldest_arrival() const noexcept {
        return _arrivals.empty() ? 0 : _arrivals.begin()->first;
    }

  private:
    struct entry {
        ledger_message m;
        std::uint32_t pending = 0;
        std::vector<queue::failed_recipient> failed;  // for the DSN, in the order they failed
        std::vector<bool> delay_noticed;  // per recipient; journaled, restored at recovery
    };

    core::oncore _oncore;
    std::size_t _max;
    std::chrono::seconds _delay_warning;
    std::unordered_map<spool::queue_id, entry> _entries;
    std::uint64_t _stale = 0;
    std::size_t _pending_rcpts = 0;
    std::map<std::int64_t, std::uint32_t> _arrivals;  // arrival second -> messages
};

}  // namespace ringmail::delivery
