#include "ringmail/core/duration.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::core {
namespace {

using namespace std::chrono_literals;

struct good_case {
    const char* text;
    std::chrono::seconds want;
};

class duration_good : public ::testing::TestWithParam<good_case> {};

TEST_P(duration_good, parses) {
    const auto& c = GetParam();
    const auto d = parse_duration(c.text);
    ASSERT_TRUE(d.has_value()) << c.text << ": " << d.error().message();
    EXPECT_EQ(*d, c.want) << c.text;
}

INSTANTIATE_TEST_SUITE_P(all, duration_good,
                         ::testing::Values(good_case{"1s", 1s}, good_case{"90s", 90s},
                                           good_case{"5m", 5min}, good_case{"4h", 4h},
                                           good_case{"5d", 5 * 24h}, good_case{"1", 1s},
                                           good_case{"300", 300s}, good_case{"007m", 7min},
                                           good_case{"9223372036s", 9223372036s},
                                           good_case{"9223372036", 9223372036s},
                                           good_case{"106751d", 106751 * 24h}));

struct bad_case {
    const char* text;
    std::errc want;
};

class duration_bad : public ::testing::TestWithParam<bad_case> {};

TEST_P(duration_bad, rejected) {
    const auto& c = GetParam();
    const auto d = parse_duration(c.text);
    ASSERT_FALSE(d.has_value()) << c.text;
    EXPECT_EQ(d.error(), c.want) << c.text;
}

constexpr auto bad = std::errc::invalid_argument;
constexpr auto big = std::errc::result_out_of_range;

INSTANTIATE_TEST_SUITE_P(
    all, duration_bad,
    ::testing::Values(bad_case{"", bad}, bad_case{"s", bad}, bad_case{"0", bad},
                      bad_case{"0s", bad}, bad_case{"00d", bad}, bad_case{"-1s", bad},
                      bad_case{"+1s", bad}, bad_case{"1.5h", bad}, bad_case{"1 s", bad},
                      bad_case{" 1s", bad}, bad_case{"1s ", bad}, bad_case{"1S", bad},
                      bad_case{"1ms", bad}, bad_case{"1w", bad}, bad_case{"1y", bad},
                      bad_case{"1h30m", bad}, bad_case{"h1", bad}, bad_case{"0x10", bad},
                      // one past the limit, in every unit, and far past int64
                      bad_case{"9223372037s", big}, bad_case{"9223372037", big},
                      bad_case{"153722868m", big}, bad_case{"2562048h", big},
                      bad_case{"106752d", big}, bad_case{"99999999999999999999999d", big},
                      bad_case{"18446744073709551617", big}));

TEST(duration, limit_fits_nanoseconds) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(max_duration);
    EXPECT_GT(ns.count(), 0);
    EXPECT_EQ(max_duration.count(), 9223372036);
}

TEST(duration, format_uses_largest_exact_unit) {
    EXPECT_EQ(format_duration(0s), "0s");
    EXPECT_EQ(format_duration(1s), "1s");
    EXPECT_EQ(format_duration(61s), "61s");
    EXPECT_EQ(format_duration(60s), "1m");
    EXPECT_EQ(format_duration(5400s), "90m");
    EXPECT_EQ(format_duration(3600s), "1h");
    EXPECT_EQ(format_duration(86400s), "1d");
    EXPECT_EQ(format_duration(5 * 86400s), "5d");
    EXPECT_EQ(format_duration(90000s), "25h");
}

TEST(duration, format_round_trips) {
    for (const long long s :
         {1LL, 59LL, 60LL, 61LL, 3599LL, 3600LL, 86399LL, 86400LL, 172800LL, 9223372036LL}) {
        const auto text = format_duration(std::chrono::seconds(s));
        const auto back = parse_duration(text);
        ASSERT_TRUE(back.has_value()) << text;
        EXPECT_EQ(back->count(), s) << text;
    }
}

}  // namespace
}  // namespace ringmail::core
