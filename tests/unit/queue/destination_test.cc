#include "ringmail/queue/destination.h"

#include <gtest/gtest.h>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

const steady_time t0 = steady_time{} + 1000s;

delivery_job job(std::uint64_t id, steady_time next = {}) {
    delivery_job j;
    j.queue_id = id;
    j.rcpts = {0};
    j.next_attempt = next;
    return j;
}

TEST(destination_key, lower_case_without_trailing_dot) {
    EXPECT_EQ(destination_key("Example.COM."), "example.com");
    EXPECT_EQ(destination_key("a.b"), "a.b");
    EXPECT_EQ(destination_key(""), "");
}

TEST(rcpt_list, bounded) {
    rcpt_list l;
    for (std::size_t i = 0; i < max_job_rcpts; ++i)
        ASSERT_TRUE(l.push_back(static_cast<std::uint16_t>(i)));
    EXPECT_TRUE(l.full());
    EXPECT_FALSE(l.push_back(99));
    EXPECT_EQ(l.size(), max_job_rcpts);
    EXPECT_EQ(l[3], 3);
}

TEST(rcpt_list, past_its_inline_part_it_is_the_same_list) {
    rcpt_list a, b;
    for (std::uint16_t i = 0; i < 40; ++i) {
        a.push_back(i);
        b.push_back(i);
    }
    EXPECT_EQ(a, b);
    rcpt_list c = a;  // copies hold their own heap part
    b.push_back(40);
    EXPECT_FALSE(a == b);
    EXPECT_EQ(c, a);
    EXPECT_EQ(c[39], 39);
    EXPECT_EQ(std::vector<std::uint16_t>(c.begin(), c.end()).size(), 40u);
}

TEST(group_by_destination, every_domain_of_a_route_is_one_destination) {
    std::vector<std::string> addrs = {"a@x.test", "b@y.test", "c@x.test", "d@z.test"};
    std::vector<std::uint32_t> pending = {0, 1, 2, 3};
    auto g = group_by_destination(addrs, pending, [](std::string_view d) {
        return d == "z.test" ? std::string("z.test") : std::string(":smarthost");
    });
    ASSERT_EQ(g.size(), 2u);
    EXPECT_EQ(g[0].domain, ":smarthost");
    EXPECT_EQ(g[0].rcpts, (rcpt_list{0, 1, 2}));
    EXPECT_EQ(g[1].domain, "z.test");
}

TEST(group_by_domain, one_job_per_domain_split_when_full) {
    std::vector<std::string> addrs = {"a@X.test",  "b@y.test",    "c@x.test",
                                      "d@x.test.", "done@x.test", "e@y.test"};
    std::vector<std::uint32_t> pending = {0, 1, 2, 3, 5};  // 4 is finished
    auto g = group_by_domain(addrs, pending);
    ASSERT_EQ(g.size(), 2u);
    EXPECT_EQ(g[0].domain, "x.test");
    EXPECT_EQ(g[0].rcpts, (rcpt_list{0, 2, 3}));
    EXPECT_EQ(g[1].domain, "y.test");
    EXPECT_EQ(g[1].rcpts, (rcpt_list{1, 5}));

    std::vector<std::string> many;
    std::vector<std::uint32_t> all;
    for (std::uint32_t i = 0; i < max_job_rcpts * 2 + 3; ++i) {
        many.push_back("u" + std::to_string(i) + "@big.test");
        all.push_back(i);
    }
    auto big = group_by_domain(many, all);
    ASSERT_EQ(big.size(), 3u);
    EXPECT_EQ(big[0].rcpts.size(), max_job_rcpts);
    EXPECT_EQ(big[1].rcpts.size(), max_job_rcpts);
    EXPECT_EQ(big[2].rcpts.size(), 3u);
    EXPECT_EQ(big[2].rcpts[0], max_job_rcpts * 2);
}

TEST(destination_queue, ready_jobs_are_fifo) {
    destination_queue q("x.test", destination_policy{}, t0);
    for (std::uint64_t i = 1; i <= 5; ++i)
        q.push(job(i), t0);
    EXPECT_EQ(q.counts().ready, 5u);
    for (std::uint64_t i = 1; i <= 5; ++i)
        EXPECT_EQ(q.pop_ready()->queue_id, i);
    EXPECT_FALSE(q.pop_ready());
}

TEST(destination_queue, deferred_jobs_wait_for_their_time_in_order) {
    destination_queue q("x.test", destination_policy{}, t0);
    q.push(job(1, t0 + 30s), t0);
    q.push(job(2, t0 + 10s), t0);
    q.push(job(3, t0 + 10s), t0);  // same time: FIFO
    q.push(job(4), t0);
    EXPECT_EQ(q.counts().ready, 1u);
    EXPECT_EQ(q.counts().deferred, 3u);
    EXPECT_EQ(q.next_deferred(), t0 + 10s);
    EXPECT_EQ(q.promote(t0 + 9s), 0u);
    EXPECT_EQ(q.promote(t0 + 10s), 2u);
    EXPECT_EQ(q.pop_ready()->queue_id, 4u);
    EXPECT_EQ(q.pop_ready()->queue_id, 2u);
    EXPECT_EQ(q.pop_ready()->queue_id, 3u);
    EXPECT_EQ(q.next_deferred(), t0 + 30s);
    EXPECT_EQ(q.promote(t0 + 1h), 1u);
    EXPECT_EQ(q.pop_ready()->queue_id, 1u);
    EXPECT_FALSE(q.next_deferred());
}

TEST(destination_queue, counts_connections_and_jobs_in_flight) {
    destination_policy p;
    p.max_connections = 2;
    destination_queue q("x.test", p, t0);
    EXPECT_TRUE(q.empty());
    q.connection_opening();
    q.job_started();
    EXPECT_FALSE(q.empty());
    EXPECT_TRUE(q.below_connection_cap(2));
    q.connection_opening();
    EXPECT_FALSE(q.below_connection_cap(2));
    q.job_finished();
    q.connection_gone();
    q.connection_gone();
    EXPECT_TRUE(q.empty());
}

TEST(destination_queue, take_all_ready_keeps_deferred) {
    destination_queue q("x.test", destination_policy{}, t0);
    q.push(job(1), t0);
    q.push(job(2, t0 + 5s), t0);
    q.push(job(3), t0);
    auto all = q.take_all_ready();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].queue_id, 1u);
    EXPECT_EQ(all[1].queue_id, 3u);
    EXPECT_EQ(q.counts().deferred, 1u);
}

TEST(destination_queue, bucket_follows_the_policy) {
    destination_policy p;
    p.rate = 2.0;
    destination_queue q("x.test", p, t0);
    EXPECT_FALSE(q.bucket().unlimited());
    EXPECT_DOUBLE_EQ(q.bucket().burst(), 2.0);  // default burst = rate
}

}  // namespace
}  // namespace ringmail::queue
