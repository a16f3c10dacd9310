#include "ringmail/core/spsc_ring.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <thread>

namespace ringmail::core {
namespace {

TEST(spsc_ring, single_thread_fifo_full_and_empty) {
    spsc_ring<int, 4> q;
    EXPECT_FALSE(q.try_pop().has_value());
    EXPECT_TRUE(q.empty_for_consumer());
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(q.try_push(i));
    EXPECT_FALSE(q.try_push(99));
    EXPECT_EQ(q.size_approx(), 4u);
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(q.try_pop(), i);
    EXPECT_FALSE(q.try_pop().has_value());
    // Indices wrap many times over the 4 slots.
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(q.try_push(i));
        ASSERT_TRUE(q.try_push(i + 1));
        ASSERT_EQ(q.try_pop(), i);
        ASSERT_EQ(q.try_pop(), i + 1);
    }
    EXPECT_TRUE(q.empty_for_consumer());
}

TEST(spsc_ring, move_only_elements_and_destruction_of_leftovers) {
    auto tracker = std::make_shared<int>(0);
    {
        spsc_ring<std::unique_ptr<std::shared_ptr<int>>, 8> q;
        auto p = std::make_unique<std::shared_ptr<int>>(tracker);
        ASSERT_TRUE(q.try_push(std::move(p)));
        EXPECT_EQ(p, nullptr);
        ASSERT_TRUE(q.try_push(std::make_unique<std::shared_ptr<int>>(tracker)));
        EXPECT_EQ(tracker.use_count(), 3);
        auto out = q.try_pop();
        ASSERT_TRUE(out && *out);
        EXPECT_EQ(**out, tracker);
    }
    EXPECT_EQ(tracker.use_count(), 1);  // popped one and the one left in the ring both freed
}

TEST(spsc_ring, failed_push_leaves_the_value) {
    spsc_ring<std::unique_ptr<int>, 2> q;
    ASSERT_TRUE(q.try_push(std::make_unique<int>(1)));
    ASSERT_TRUE(q.try_push(std::make_unique<int>(2)));
    auto v = std::make_unique<int>(3);
    EXPECT_FALSE(q.try_push(std::move(v)));
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(*v, 3);
}

TEST(spsc_ring, two_threads_preserve_order_and_lose_nothing) {
    constexpr std::uint64_t n = 5'000'000;
    auto q = std::make_unique<spsc_ring<std::uint64_t, 1024>>();
    std::thread producer([&] {
        for (std::uint64_t i = 1; i <= n;) {
            if (q->try_push(i)) {
                ++i;
            } else {
                std::this_thread::yield();
            }
        }
    });
    std::uint64_t expected = 1, sum = 0, out_of_order = 0;
    while (expected <= n) {
        auto v = q->try_pop();
        if (!v) {
            std::this_thread::yield();
            continue;
        }
        if (*v != expected)
            ++out_of_order;
        sum += *v;
        ++expected;
    }
    producer.join();
    EXPECT_EQ(out_of_order, 0u);
    EXPECT_EQ(sum, n * (n + 1) / 2);
    EXPECT_FALSE(q->try_pop().has_value());
}

}  // namespace
}  // namespace ringmail::core
