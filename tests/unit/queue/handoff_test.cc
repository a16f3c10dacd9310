#include "ringmail/queue/handoff.h"

#include "ringmail/core/mailbox.h"
#include "ringmail/core/spsc_ring.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>

namespace ringmail::queue {
namespace {

TEST(owner_shard, stable_fnv1a_case_and_trailing_dot_insensitive) {
    // FNV-1a 64 reference values: a change here re-homes every destination.
    EXPECT_EQ(fnv1a64_nocase(""), 0xcbf29ce484222325ull);
    EXPECT_EQ(fnv1a64_nocase("a"), 0xaf63dc4c8601ec8cull);
    EXPECT_EQ(fnv1a64_nocase("A"), fnv1a64_nocase("a"));
    EXPECT_EQ(owner_shard("Example.COM.", 7), owner_shard("example.com", 7));
    EXPECT_EQ(owner_shard("example.com", 7), fnv1a64_nocase("example.com") % 7);
    EXPECT_EQ(owner_shard("anything", 1), 0u);
}

TEST(owner_shard, spreads_domains_over_shards) {
    std::map<unsigned, int> per;
    for (int i = 0; i < 4000; ++i)
        ++per[owner_shard("d" + std::to_string(i) + ".test", 4)];
    ASSERT_EQ(per.size(), 4u);
    for (auto [s, n] : per)
        EXPECT_GT(n, 800) << s;
}

TEST(destination_slots, enforce_the_limit_and_refuse_double_release) {
    destination_slots s(2);
    EXPECT_TRUE(s.try_acquire());
    EXPECT_TRUE(s.try_acquire());
    EXPECT_FALSE(s.try_acquire());
    EXPECT_EQ(s.in_use(), 2u);
    s.release();
    EXPECT_TRUE(s.try_acquire());
    s.release();
    s.release();
    EXPECT_EQ(s.in_use(), 0u);
    EXPECT_DEATH(s.release(), "released twice");
}

TEST(spare_gauges, publish_and_read) {
    spare_gauges g(3);
    g.publish(1, 42);
    EXPECT_EQ(g.read(1), 42u);
    EXPECT_EQ(g.read(0), 0u);
}

TEST(shard_message, round_trip_through_an_spsc_ring) {
    auto ring = std::make_unique<core::spsc_ring<shard_message, 8>>();
    delivery_job j;
    j.queue_id = 0x123456789ull;
    j.origin = 3;
    j.rcpts = {0, 2, 7};
    j.attempts = 2;
    j.arrival_unix = 1700000000;
    ASSERT_TRUE(ring->try_push(job_handoff{"a-rather-long-domain-name.example.test", j, 5}));

    job_notice n;
    n.queue_id = 77;
    n.rcpts = {1, 4};
    n.status[0] = rcpt_status::delivered;
    n.status[1] = rcpt_status::failed;
    n.attempts = 1;
    n.detail = std::make_unique<notice_detail>();
    n.detail->replies.emplace_back(
        4, attempt_reply{550, "5.1.1", "no such user", "mx.test", bounce_class::invalid_recipient});
    ASSERT_TRUE(ring->try_push(std::move(n)));

    destination_slots slots(3);
    ASSERT_TRUE(ring->try_push(lease_grant{"x.test", &slots, 9, 2, destination_policy{}}));
    ASSERT_TRUE(ring->try_push(lease_return{"x.test", 9}));

    auto m1 = ring->try_pop();
    ASSERT_TRUE(m1);
    auto& h = std::get<job_handoff>(*m1);
    EXPECT_EQ(h.domain, "a-rather-long-domain-name.example.test");
    EXPECT_EQ(h.lease, 5u);
    EXPECT_EQ(h.job.queue_id, j.queue_id);
    EXPECT_EQ(h.job.origin, 3);
    EXPECT_EQ(h.job.rcpts, j.rcpts);
    EXPECT_EQ(h.job.attempts, 2u);
    EXPECT_EQ(h.job.arrival_unix, j.arrival_unix);

    auto m2 = ring->try_pop();
    ASSERT_TRUE(m2);
    auto& got = std::get<job_notice>(*m2);
    EXPECT_EQ(got.queue_id, 77u);
    EXPECT_EQ(got.status[1], rcpt_status::failed);
    ASSERT_TRUE(got.detail);
    EXPECT_EQ(got.detail->replies[0].second.to_string(), "550 5.1.1 no such user");
    EXPECT_EQ(got.detail->replies[0].second.category, bounce_class::invalid_recipient);

    auto m3 = ring->try_pop();
    ASSERT_TRUE(m3);
    EXPECT_EQ(std::get<lease_grant>(*m3).slots, &slots);
    auto m4 = ring->try_pop();
    ASSERT_TRUE(m4);
    EXPECT_EQ(std::get<lease_return>(*m4).lease, 9u);
    EXPECT_FALSE(ring->try_pop());
}

TEST(shard_message, fits_the_mailbox) {
    // Messages are handles: a few cache lines at most, whatever the job.
    EXPECT_LE(sizeof(shard_message), 192u);
    auto mb = core::mailbox<shard_message, 16>::create(2);
    ASSERT_TRUE(mb);
    delivery_job j;
    j.rcpts = {0};
    EXPECT_TRUE((*mb)->try_send(0, 1, shard_message{job_handoff{"x.test", j, 0}}));
    EXPECT_EQ((*mb)->pending_approx(0, 1), 1u);
}

}  // namespace
}  // namespace ringmail::queue
