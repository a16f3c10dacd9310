// admin::rule_recorder: a shard's fired rules go to the admin thread's ring in order, and the
// ring always keeps room for the replies to the admin's requests (reply_reserve).
#include "ringmail/admin/rule_recorder.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::admin {
namespace {

queue::suspension effect(int i) {
    queue::suspension s;
    s.scope = {queue::suspension_kind::provider, "p" + std::to_string(i), ""};
    s.since_unix = 100;
    s.until_unix = 200;
    s.origin = std::string(queue::origin_rule);
    return s;
}

TEST(rule_recorder, sends_to_the_admin_and_keeps_the_reply_reserve) {
    auto mb = admin_mailbox::create(3);  // two shards, the admin is participant 2
    ASSERT_TRUE(mb);
    admin_mailbox& m = **mb;
    rule_recorder rec(m, 2);
    rec.record(1, effect(0));
    EXPECT_EQ(rec.pending(1), 0u);
    EXPECT_EQ(m.pending_approx(1, 2), 1u);
    EXPECT_EQ(m.pending_approx(0, 2), 0u);
    // Fill until only the reserve is left: the rest waits in the shard's outbox.
    const std::size_t room = admin_mailbox::ring_type::capacity() - reply_reserve;
    for (int i = 1; i < 200; ++i)
        rec.record(1, effect(i));
    EXPECT_EQ(m.pending_approx(1, 2), room);
    EXPECT_EQ(rec.pending(1), 200u - room);
    // Replies still fit.
    for (std::size_t i = 0; i + 1 < reply_reserve; ++i) {
        control_message r;
        r.reply = true;
        EXPECT_TRUE(m.try_send(1, 2, std::move(r)));
    }
    // Bounded: past max_pending entries are dropped, not queued.
    for (std::size_t i = 0; i < rule_recorder::max_pending + 10; ++i)
        rec.record(1, effect(1000));
    EXPECT_EQ(rec.pending(1), rule_recorder::max_pending);
    rec.flush(1);  // no room: nothing moves
    EXPECT_EQ(rec.pending(1), rule_recorder::max_pending);
    EXPECT_EQ(rec.pending(0), 0u);
}

}  // namespace
}  // namespace ringmail::admin
