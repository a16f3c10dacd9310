#include "ringmail/queue/delivery_queue.h"

#include "ringmail/queue/errc.h"

#include <gtest/gtest.h>

#include <random>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

queue_config config(std::size_t max_entries = 100) {
    queue_config c;
    c.max_entries = max_entries;
    c.retry.schedule = {60s, 300s};
    c.retry.max_lifetime = 3600s;
    c.retry.jitter = 0.0;
    return c;
}

queue_entry entry(std::uint64_t id, std::vector<std::string> rcpts, std::string sender = "s@a.org",
                  std::int64_t arrival = 0) {
    queue_entry e;
    e.id = id;
    e.sender = std::move(sender);
    e.arrival = arrival;
    for (auto& r : rcpts)
        e.rcpts.push_back(recipient{std::move(r), rcpt_state::pending, {}});
    return e;
}

attempt_reply reply(int code, std::string enhanced, std::string text) {
    return attempt_reply{code, std::move(enhanced), std::move(text), "mx.b.org"};
}

TEST(delivery_queue, ready_in_fifo_order) {
    delivery_queue q(config());
    for (std::uint64_t id : {5, 3, 9})
        ASSERT_TRUE(q.add(entry(id, {"r@b.org"})));
    EXPECT_EQ(q.next_wakeup(), 0);
    EXPECT_EQ(q.pop_ready(0), 5u);
    EXPECT_EQ(q.pop_ready(0), 3u);
    EXPECT_EQ(q.pop_ready(0), 9u);
    EXPECT_EQ(q.pop_ready(0), std::nullopt);
    EXPECT_EQ(q.counts().in_flight, 3u);
    EXPECT_EQ(q.next_wakeup(), std::nullopt);
}

TEST(delivery_queue, deferred_entries_wake_up_in_time_order) {
    delivery_queue q(config());
    auto late = entry(1, {"r@b.org"});
    late.next_attempt = 200;
    auto early = entry(2, {"r@b.org"});
    early.next_attempt = 100;
    ASSERT_TRUE(q.add(late));
    ASSERT_TRUE(q.add(early));
    EXPECT_EQ(q.counts().deferred, 2u);
    EXPECT_EQ(q.next_wakeup(), 100);
    EXPECT_EQ(q.pop_ready(99), std::nullopt);
    EXPECT_EQ(q.pop_ready(250), 2u);
    EXPECT_EQ(q.pop_ready(250), 1u);
}

// due() is what sizes the daemon's connection pool: deferred entries whose time has come count
// (counts().ready alone would stay 0 until somebody pops, and nobody would connect).
TEST(delivery_queue, due_counts_deferred_entries_whose_time_came) {
    delivery_queue q(config());
    auto a = entry(1, {"r@b.org"});
    a.next_attempt = 100;
    auto b = entry(2, {"r@b.org"});
    b.next_attempt = 200;
    ASSERT_TRUE(q.add(a));
    ASSERT_TRUE(q.add(b));
    ASSERT_TRUE(q.add(entry(3, {"r@b.org"})));
    EXPECT_EQ(q.due(50), 1u);
    EXPECT_EQ(q.due(150), 2u);
    EXPECT_EQ(q.counts().ready, 2u);
    EXPECT_EQ(q.counts().deferred, 1u);
    EXPECT_EQ(q.pop_ready(150), 3u);  // FIFO: the one ready from the start goes first
    EXPECT_EQ(q.pop_ready(150), 1u);
    EXPECT_EQ(q.due(150), 0u);
    EXPECT_EQ(q.due(200), 1u);
}

TEST(delivery_queue, partial_outcomes_then_retry_of_the_deferred_one) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(7, {"ok@b.org", "later@b.org", "gone@b.org"})));
    ASSERT_EQ(q.pop_ready(1000), 7u);
    std::vector<rcpt_outcome> out = {
        {0, reply(250, "2.0.0", "ok")},
        {1, reply(451, "4.3.0", "try later")},
        {2, reply(550, "5.1.1", "no such user")},
    };
    apply_actions a = q.apply(7, out, 1000, rng);
    EXPECT_EQ(a.delivered, std::vector<std::uint32_t>{0});
    EXPECT_EQ(a.bounced, std::vector<std::uint32_t>{2});
    EXPECT_TRUE(a.expired.empty());
    EXPECT_FALSE(a.done);
    ASSERT_TRUE(a.retry);
    EXPECT_EQ(a.retry->attempts, 1u);
    EXPECT_EQ(a.retry->next_attempt, 1060);
    ASSERT_TRUE(a.bounce);
    EXPECT_EQ(a.bounce->id, 7u);
    EXPECT_EQ(a.bounce->sender, "s@a.org");
    ASSERT_EQ(a.bounce->rcpts.size(), 1u);
    EXPECT_EQ(a.bounce->rcpts[0].address, "gone@b.org");
    EXPECT_EQ(a.bounce->rcpts[0].status, "5.1.1");
    EXPECT_EQ(a.bounce->rcpts[0].remote_mta, "mx.b.org");
    EXPECT_EQ(a.bounce->rcpts[0].diagnostic, "550 5.1.1 no such user");
    EXPECT_FALSE(a.bounce->rcpts[0].expired);

    queue_counts c = q.counts();
    EXPECT_EQ(c.queued, 1u);
    EXPECT_EQ(c.deferred, 1u);
    EXPECT_EQ(c.in_flight, 0u);
    const queue_entry* e = q.find(7);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->rcpts[1].state, rcpt_state::pending);
    EXPECT_EQ(e->rcpts[1].last.code, 451);

    EXPECT_EQ(q.next_wakeup(), 1060);
    EXPECT_EQ(q.pop_ready(1059), std::nullopt);
    ASSERT_EQ(q.pop_ready(1060), 7u);
    std::vector<rcpt_outcome> second = {{1, reply(250, "2.0.0", "ok")}};
    a = q.apply(7, second, 1060, rng);
    EXPECT_EQ(a.delivered, std::vector<std::uint32_t>{1});
    EXPECT_TRUE(a.done);
    EXPECT_FALSE(a.retry);
    EXPECT_FALSE(a.bounce);
    EXPECT_EQ(q.find(7), nullptr);
    EXPECT_EQ(q.counts().queued, 0u);
}

TEST(delivery_queue, second_retry_uses_the_next_interval) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(1, {"r@b.org"})));
    std::int64_t now = 0;
    for (std::int64_t expected : {60, 300, 300}) {
        ASSERT_EQ(q.pop_ready(now), 1u);
        auto a = q.apply_connection_failure(1, reply(421, "4.4.2", "busy"), now, rng);
        ASSERT_TRUE(a.retry);
        EXPECT_EQ(a.retry->next_attempt - now, expected);
        now = a.retry->next_attempt;
    }
    EXPECT_EQ(q.find(1)->attempts, 3u);
}

TEST(delivery_queue, expiry_expires_pending_and_bounces) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    auto e = entry(3, {"done@b.org", "slow@b.org"});
    e.rcpts[0].state = rcpt_state::delivered;  // recovered from the journal
    e.attempts = 6;
    ASSERT_TRUE(q.add(e));
    ASSERT_EQ(q.pop_ready(3600), 3u);
    std::vector<rcpt_outcome> out = {{1, reply(452, "4.2.2", "mailbox full")}};
    apply_actions a = q.apply(3, out, 3600, rng);
    EXPECT_TRUE(a.delivered.empty());
    EXPECT_EQ(a.expired, std::vector<std::uint32_t>{1});
    EXPECT_TRUE(a.done);
    EXPECT_FALSE(a.retry);
    ASSERT_TRUE(a.bounce);
    ASSERT_EQ(a.bounce->rcpts.size(), 1u);
    EXPECT_EQ(a.bounce->rcpts[0].address, "slow@b.org");
    EXPECT_EQ(a.bounce->rcpts[0].status, "5.4.7");
    EXPECT_TRUE(a.bounce->rcpts[0].expired);
    EXPECT_EQ(a.bounce->rcpts[0].diagnostic, "452 4.2.2 mailbox full");
}

TEST(delivery_queue, connection_failure_defers_every_pending_recipient) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(4, {"a@b.org", "c@b.org"})));
    ASSERT_EQ(q.pop_ready(0), 4u);
    // Even a 5xx greeting is a connection-level problem: retried, not bounced.
    auto a = q.apply_connection_failure(4, reply(554, "5.7.1", "go away"), 0, rng);
    EXPECT_TRUE(a.bounced.empty());
    EXPECT_FALSE(a.bounce);
    ASSERT_TRUE(a.retry);
    EXPECT_EQ(q.find(4)->rcpts[1].last.code, 554);
}

TEST(delivery_queue, no_bounce_for_the_null_sender) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(5, {"a@b.org"}, "")));
    ASSERT_EQ(q.pop_ready(0), 5u);
    std::vector<rcpt_outcome> out = {{0, reply(550, "5.1.1", "unknown")}};
    auto a = q.apply(5, out, 0, rng);
    EXPECT_EQ(a.bounced, std::vector<std::uint32_t>{0});  // still journaled
    EXPECT_TRUE(a.done);
    EXPECT_FALSE(a.bounce);
}

TEST(delivery_queue, bounce_status_without_enhanced_code) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(6, {"a@b.org"})));
    ASSERT_EQ(q.pop_ready(0), 6u);
    std::vector<rcpt_outcome> out = {{0, reply(550, "", "nope")}};
    auto a = q.apply(6, out, 0, rng);
    ASSERT_TRUE(a.bounce);
    EXPECT_EQ(a.bounce->rcpts[0].status, "5.0.0");
}

TEST(delivery_queue, bound_and_refusals) {
    delivery_queue q(config(2));
    ASSERT_TRUE(q.add(entry(1, {"a@b.org"})));
    auto dup = q.add(entry(1, {"a@b.org"}));
    ASSERT_FALSE(dup);
    EXPECT_EQ(dup.error(), errc::duplicate_id);
    ASSERT_TRUE(q.add(entry(2, {"a@b.org"})));
    auto full = q.add(entry(3, {"a@b.org"}));
    ASSERT_FALSE(full);
    EXPECT_EQ(full.error(), errc::queue_full);
    EXPECT_EQ(q.counts().queued, 2u);

    delivery_queue r(config());
    auto none = r.add(entry(1, {}));
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error(), errc::no_recipients);
    auto finished = entry(2, {"a@b.org"});
    finished.rcpts[0].state = rcpt_state::bounced;
    EXPECT_FALSE(r.add(finished));
}

TEST(delivery_queue, counts_follow_the_life_of_a_message) {
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(1, {"a@b.org"})));
    ASSERT_TRUE(q.add(entry(2, {"a@b.org"})));
    EXPECT_EQ(q.counts().ready, 2u);
    ASSERT_EQ(q.pop_ready(0), 1u);
    queue_counts c = q.counts();
    EXPECT_EQ(c.ready, 1u);
    EXPECT_EQ(c.in_flight, 1u);
    q.apply_connection_failure(1, reply(451, "4.4.1", "no answer"), 0, rng);
    c = q.counts();
    EXPECT_EQ(c.queued, 2u);
    EXPECT_EQ(c.ready, 1u);
    EXPECT_EQ(c.deferred, 1u);
    EXPECT_EQ(c.in_flight, 0u);
}

TEST(delivery_queue_death, apply_on_a_message_not_in_flight_aborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    delivery_queue q(config());
    std::mt19937_64 rng(1);
    ASSERT_TRUE(q.add(entry(1, {"a@b.org"})));
    EXPECT_DEATH(q.apply_connection_failure(1, reply(451, "", ""), 0, rng), "not in flight");
}

}  // namespace
}  // namespace ringmail::queue
