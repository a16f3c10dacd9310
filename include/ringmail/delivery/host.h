// What the delivery engine needs from the shard that owns it: time (steady and Unix), one
// wake-up timer, the spools, the delivery log, the rings to the other shards and the drain
// flags. The daemon's shard implements it on its reactor; the engine's unit tests give a fake
// with a clock they move by hand. Used on the owning shard's thread only.
#pragma once

#include "ringmail/core/metrics.h"
#include "ringmail/delivery/delivery_log.h"
#include "ringmail/delivery/messages.h"
#include "ringmail/queue/destination.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <optional>

namespace ringmail::delivery {

class host {
  public:
    virtual queue::steady_time now() const = 0;
    virtual std::int64_t unix_now() const = 0;
    virtual std::int64_t unix_now_ms() const = 0;
    virtual unsigned shard_id() const noexcept = 0;
    virtual unsigned shards() const noexcept = 0;
    // Calls engine::on_timer() at `t` (nullopt: not at all); one wake-up, replaced by each call.
    virtual void wake_at(std::optional<queue::steady_time> t) = 0;
    // Journal records were added after this iteration's commit: make another iteration come
    // soon so that they are committed without waiting for other input.
    virtual void nudge() = 0;
    // The spool holding `id` (its shard directory), or null; the shard's own spool.
    virtual spool::spool* spool_for(spool::queue_id id) noexcept = 0;
    virtual spool::spool& own_spool() noexcept = 0;
    virtual delivery_log& events() noexcept = 0;
    // Where this shard publishes its counters (/metrics); null: not counted (tests).
    virtual core::shard_metrics* metrics() noexcept { return nullptr; }
    // To shard `to`'s engine; false when its ring is full (the caller keeps the message).
    virtual bool send(unsigned to, shard_message&& m) = 0;
    // Drain: nothing waits in this shard's incoming rings (approximately; see engine::idle).
    virtual bool inbox_empty() const = 0;
    // Drain: this shard says whether it is quiet; whether every shard is.
    virtual void set_quiet(bool quiet) = 0;
    virtual bool all_quiet() const = 0;

  protected:
    ~host() = default;
};

}  // namespace ringmail::delivery
