#include "ringmail/queue/token_bucket.h"

#include <gtest/gtest.h>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

const steady_time t0 = steady_time{} + 1000s;

TEST(token_bucket, unlimited_when_rate_is_zero) {
    token_bucket b(0.0, 0.0, t0);
    EXPECT_TRUE(b.unlimited());
    for (int i = 0; i < 1000; ++i)
        ASSERT_TRUE(b.try_take(t0));
    EXPECT_EQ(b.next_available(t0), t0);
}

TEST(token_bucket, starts_full_then_refills_at_the_rate) {
    token_bucket b(2.0, 3.0, t0);
    EXPECT_TRUE(b.try_take(t0));
    EXPECT_TRUE(b.try_take(t0));
    EXPECT_TRUE(b.try_take(t0));
    EXPECT_FALSE(b.try_take(t0));
    EXPECT_FALSE(b.try_take(t0 + 499ms));
    EXPECT_TRUE(b.try_take(t0 + 500ms));
    EXPECT_FALSE(b.try_take(t0 + 500ms));
    // A long pause never stores more than the burst.
    steady_time later = t0 + 1h;
    int taken = 0;
    while (b.try_take(later))
        ++taken;
    EXPECT_EQ(taken, 3);
}

TEST(token_bucket, next_available_is_when_a_whole_token_is_there) {
    token_bucket b(4.0, 1.0, t0);
    ASSERT_TRUE(b.try_take(t0));
    steady_time next = b.next_available(t0);
    EXPECT_GE(next, t0 + 250ms);
    EXPECT_LE(next, t0 + 251ms);
    EXPECT_FALSE(b.try_take(next - 1ms));
    EXPECT_TRUE(b.try_take(next));
}

TEST(token_bucket, burst_below_one_still_lets_one_message_go) {
    token_bucket b(0.5, 0.0, t0);
    EXPECT_DOUBLE_EQ(b.burst(), 1.0);
    EXPECT_TRUE(b.try_take(t0));
    EXPECT_FALSE(b.try_take(t0 + 1s));
    EXPECT_TRUE(b.try_take(t0 + 2s));
}

TEST(token_bucket, time_going_backwards_adds_nothing) {
    token_bucket b(1.0, 1.0, t0);
    ASSERT_TRUE(b.try_take(t0));
    EXPECT_FALSE(b.try_take(t0 - 10s));
    EXPECT_FALSE(b.try_take(t0 + 500ms));
    EXPECT_TRUE(b.try_take(t0 + 1s));
}

}  // namespace
}  // namespace ringmail::queue
