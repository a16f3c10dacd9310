// The shards' side of the one suspension store: queue::suspension_recorder for the shaping
// rules, carrying each fired suspend or `set` to the admin thread (the store's owner, which
// persists it, lists it and lifts it) as a rule_effect control message.
//
// record() runs on the shard that saw the reply and never blocks or locks: the entry goes into
// that shard's own small outbox (index = shard; no other thread touches it) and flush(shard),
// called by the shard at the end of each loop iteration, moves it into the shard's ring to the
// admin thread while the ring keeps reply_reserve free for replies. Bounded: an outbox holds
// max_pending entries; one more is dropped with a warning (its effect still holds in the
// limiter, only the store does not learn of it). Built before the shards, destroyed after.
#pragma once

#include "ringmail/admin/control.h"
#include "ringmail/queue/shaping.h"

#include <cstddef>
#include <deque>
#include <memory>

namespace ringmail::admin {

class rule_recorder final : public queue::suspension_recorder {
  public:
    static constexpr std::size_t max_pending = 256;

    // `shards`: how many shards there are; the admin thread is participant `shards`.
    rule_recorder(admin_mailbox& mailbox, unsigned shards);

    void record(unsigned shard, queue::suspension s) override;
    // On shard `shard`'s thread: sends what its outbox holds, room permitting.
    void flush(unsigned shard);
    // Entries waiting in shard `shard`'s outbox (its thread; tests).
    std::size_t pending(unsigned shard) const { return _outbox[shard].q.size(); }

  private:
    // One per shard, on its own cache line: written by that shard only.
    struct alignas(64) outbox {
        std::deque<queue::suspension> q;
        std::size_t dropped = 0;
    };
    admin_mailbox& _mailbox;
    const unsigned _shards;
    std::unique_ptr<outbox[]> _outbox;
};

}  // namespace ringmail::admin
