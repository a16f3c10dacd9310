#include "ringmail/core/mailbox.h"

#include "ringmail/core/reactor.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace ringmail::core {
namespace {

using std::chrono::milliseconds;

struct msg {
    std::uint64_t seq;
};

TEST(mailbox, full_ring_refuses_and_drain_frees_space) {
    auto box = std::move(mailbox<msg, 4>::create(2).value());
    auto r = reactor::create().value();
    std::vector<std::pair<unsigned, std::uint64_t>> got;
    box->attach(*r, 1, [&](unsigned from, msg&& m) { got.emplace_back(from, m.seq); });

    for (std::uint64_t i = 0; i < 4; ++i)
        EXPECT_TRUE(box->try_send(0, 1, msg{i}));
    EXPECT_FALSE(box->try_send(0, 1, msg{4}));  // back-pressure, nothing queued
    EXPECT_EQ(box->pending_approx(0, 1), 4u);
    // Shard 1 sending to itself uses its own ring: unaffected by the full one.
    EXPECT_TRUE(box->try_send(1, 1, msg{100}));

    r->run_once(milliseconds(0));
    ASSERT_EQ(got.size(), 5u);
    for (std::uint64_t i = 0; i < 4; ++i)
        EXPECT_EQ(got[i], std::make_pair(0u, i));
    EXPECT_EQ(got[4], std::make_pair(1u, std::uint64_t{100}));
    EXPECT_TRUE(box->try_send(0, 1, msg{4}));
}

TEST(mailbox, sleeping_consumer_is_woken_once_for_a_burst) {
    auto box = std::move(mailbox<msg, 256>::create(2).value());
    auto r = reactor::create().value();
    std::size_t got = 0;
    box->attach(*r, 0, [&](unsigned, msg&&) { ++got; });
    r->run_once(milliseconds(0));  // first iteration ends with the consumer ready to sleep
    EXPECT_EQ(box->wakeups(0), 0u);
    for (std::uint64_t i = 0; i < 100; ++i)
        ASSERT_TRUE(box->try_send(1, 0, msg{i}));
    EXPECT_EQ(box->wakeups(0), 1u);  // one eventfd write for the whole burst
    // The wake-up alone ends a long wait: the eventfd read completes.
    for (int i = 0; i < 10 && got < 100; ++i)
        r->run_once(std::chrono::seconds(5));
    EXPECT_EQ(got, 100u);
}

TEST(mailbox, messages_sent_before_attach_are_delivered_without_waiting) {
    auto box = std::move(mailbox<msg, 16>::create(2).value());
    ASSERT_TRUE(box->try_send(0, 1, msg{7}));
    auto r = reactor::create().value();
    std::vector<std::uint64_t> got;
    box->attach(*r, 1, [&](unsigned, msg&& m) { got.push_back(m.seq); });
    // One iteration, long max_wait: it must return promptly with the message delivered.
    EXPECT_GT(r->run_once(std::chrono::seconds(30)), 0u);
    EXPECT_EQ(got, std::vector<std::uint64_t>{7});
}

TEST(mailbox, drain_is_bounded_per_iteration) {
    auto box = std::move(mailbox<msg, 64>::create(2, 8).value());
    auto r = reactor::create().value();
    std::size_t got = 0;
    box->attach(*r, 0, [&](unsigned, msg&&) { ++got; });
    for (std::uint64_t i = 0; i < 20; ++i)
        ASSERT_TRUE(box->try_send(1, 0, msg{i}));
    r->run_once(milliseconds(0));
    EXPECT_EQ(got, 8u);
    // The leftovers keep the loop from sleeping: the next waits return at once.
    r->run_once(std::chrono::seconds(5));
    r->run_once(std::chrono::seconds(5));
    EXPECT_EQ(got, 20u);
}

TEST(mailbox, two_reactor_threads_exchange_messages_without_lost_wakeups) {
    constexpr std::uint64_t n = 300'000;
    auto box = std::move(mailbox<msg, 512>::create(2).value());
    std::atomic<std::uint64_t> consumer_idle_iterations{0}, producer_idle_iterations{0};
    std::atomic<std::uint64_t> received{0}, out_of_order{0};
    std::atomic<bool> acked{false};

    std::thread consumer([&] {
        auto r = reactor::create().value();
        std::uint64_t expected = 0;
        bool done = false;
        box->attach(*r, 1, [&](unsigned from, msg&& m) {
            EXPECT_EQ(from, 0u);
            if (m.seq != expected)
                out_of_order.fetch_add(1);
            ++expected;
            if (expected == n) {
                while (!box->try_send(1, 0, msg{n})) {
                }
                done = true;
            }
        });
        // A lost wake-up shows as a wait that ran to its full timeout with nothing to do.
        while (!done) {
            if (r->run_once(std::chrono::seconds(10)) == 0)
                consumer_idle_iterations.fetch_add(1);
        }
        received = expected;
    });

    std::thread producer([&] {
        auto r = reactor::create().value();
        box->attach(*r, 0, [&](unsigned from, msg&& m) {
            EXPECT_EQ(from, 1u);
            EXPECT_EQ(m.seq, n);
            acked = true;
        });
        for (std::uint64_t i = 0; i < n;) {
            if (box->try_send(0, 1, msg{i})) {
                ++i;
            } else {
                std::this_thread::yield();  // back-pressure: the consumer frees space
            }
        }
        while (!acked) {
            if (r->run_once(std::chrono::seconds(10)) == 0)
                producer_idle_iterations.fetch_add(1);
        }
    });

    producer.join();
    consumer.join();
    EXPECT_EQ(received.load(), n);
    EXPECT_EQ(out_of_order.load(), 0u);
    EXPECT_TRUE(acked.load());
    EXPECT_EQ(consumer_idle_iterations.load(), 0u);
    EXPECT_EQ(producer_idle_iterations.load(), 0u);
    // At most one wake-up per message. How far below that it stays depends on scheduling (a
    // loaded machine puts the consumer to sleep more often), so the batching itself is asserted
    // deterministically in sleeping_consumer_is_woken_once_for_a_burst.
    EXPECT_LE(box->wakeups(1), n);
}

}  // namespace
}  // namespace ringmail::core
