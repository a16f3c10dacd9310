#include "ringmail/admin/rule_recorder.h"

#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"

namespace ringmail::admin {

namespace log = core::log;

rule_recorder::rule_recorder(admin_mailbox& mailbox, unsigned shards)
    : _mailbox(mailbox), _shards(shards), _outbox(new outbox[shards]) {}

void rule_recorder::record(unsigned shard, queue::suspension s) {
    if (shard >= _shards)
        core::invariant_broken("rule_recorder: shard {} of {}", shard, _shards);
    outbox& o = _outbox[shard];
    if (o.q.size() >= max_pending) {
        if (o.dropped++ == 0)
            log::warn(
                "shaping: the suspension store is behind; the suspension of {} holds but "
                "is not stored",
                log::sanitize(s.scope.name));
        return;
    }
    o.q.push_back(std::move(s));
    flush(shard);
}

void rule_recorder::flush(unsigned shard) {
    outbox& o = _outbox[shard];
    while (!o.q.empty()) {
        if (_mailbox.pending_approx(shard, _shards) + reply_reserve >=
            admin_mailbox::ring_type::capacity())
            return;  // the next iteration tries again
        control_message m;
        m.kind = request_kind::rule_effect;
        m.effect = std::move(o.q.front());
        if (!_mailbox.try_send(shard, _shards, std::move(m))) {
            o.q.front() = std::move(m.effect);
            return;
        }
        o.q.pop_front();
    }
    o.dropped = 0;
}

}  // namespace ringmail::admin
