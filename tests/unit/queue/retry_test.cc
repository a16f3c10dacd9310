#include "ringmail/queue/retry.h"

#include "ringmail/queue/errc.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

retry_policy policy(double jitter) {
    retry_policy p;
    p.schedule = {60s, 300s, 900s};
    p.max_lifetime = 5 * 24h;
    p.jitter = jitter;
    return p;
}

struct interval_case {
    std::uint32_t attempts;
    std::int64_t expected_interval;
};

class retry_interval : public testing::TestWithParam<interval_case> {};

TEST_P(retry_interval, schedule_then_last_interval_repeats) {
    retry_policy p = policy(0.0);
    std::mt19937_64 rng(1);
    auto next = p.next_attempt(GetParam().attempts, 1000, 5000, rng);
    ASSERT_TRUE(next);
    EXPECT_EQ(*next - 5000, GetParam().expected_interval);
}

INSTANTIATE_TEST_SUITE_P(attempts, retry_interval,
                         testing::Values(interval_case{0, 60}, interval_case{1, 60},
                                         interval_case{2, 300}, interval_case{3, 900},
                                         interval_case{4, 900}, interval_case{1000, 900}));

TEST(retry_policy, jitter_stays_within_bounds_and_spreads) {
    retry_policy p = policy(0.1);
    std::mt19937_64 rng(42);
    std::set<std::int64_t> seen;
    for (int i = 0; i < 2000; ++i) {
        auto next = p.next_attempt(2, 0, 100, rng);
        ASSERT_TRUE(next);
        std::int64_t interval = *next - 100;
        EXPECT_GE(interval, 270);
        EXPECT_LE(interval, 330);
        seen.insert(interval);
    }
    EXPECT_GT(seen.size(), 40u);  // the band is used, not one point
    EXPECT_TRUE(seen.contains(270) || seen.contains(271));
    EXPECT_TRUE(seen.contains(330) || seen.contains(329));
}

TEST(retry_policy, deterministic_with_a_seeded_generator) {
    retry_policy p = policy(0.1);
    std::mt19937_64 a(7), b(7);
    for (std::uint32_t i = 1; i < 50; ++i) {
        EXPECT_EQ(p.next_attempt(i, 0, 1000, a), p.next_attempt(i, 0, 1000, b));
    }
}

TEST(retry_policy, expires_at_max_lifetime) {
    retry_policy p = policy(0.0);
    p.max_lifetime = 3600s;
    std::mt19937_64 rng(1);
    EXPECT_EQ(p.next_attempt(1, 0, 100, rng), 160);
    // The interval would overshoot the lifetime: one last attempt exactly at the deadline.
    EXPECT_EQ(p.next_attempt(3, 0, 3000, rng), 3600);
    EXPECT_EQ(p.next_attempt(3, 0, 3600, rng), std::nullopt);
    EXPECT_EQ(p.next_attempt(3, 0, 99999, rng), std::nullopt);
}

TEST(retry_policy, validate_rejects_bad_policies) {
    EXPECT_TRUE(policy(0.1).validate());
    retry_policy empty = policy(0.1);
    empty.schedule.clear();
    retry_policy zero = policy(0.1);
    zero.schedule[1] = 0s;
    retry_policy jitter = policy(1.0);
    retry_policy lifetime = policy(0.1);
    lifetime.max_lifetime = 0s;
    for (const retry_policy* bad : {&empty, &zero, &jitter, &lifetime}) {
        auto r = bad->validate();
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error(), errc::bad_retry_policy);
    }
}

}  // namespace
}  // namespace ringmail::queue
