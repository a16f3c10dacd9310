#include <gtest/gtest.h>

#include "blast/histogram.h"
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace ringmail::blast {
namespace {

TEST(blast_histogram, small_values_are_exact) {
    for (std::uint64_t v = 0; v < histogram::linear_buckets; ++v) {
        EXPECT_EQ(histogram::bucket_of(v), v);
        EXPECT_EQ(histogram::bucket_low(v), v);
        EXPECT_EQ(histogram::bucket_high(v), v);
    }
}

TEST(blast_histogram, buckets_tile_the_range_without_gaps) {
    for (std::size_t i = 0; i + 1 < histogram::bucket_count; ++i) {
        ASSERT_EQ(histogram::bucket_high(i) + 1, histogram::bucket_low(i + 1)) << i;
        ASSERT_EQ(histogram::bucket_of(histogram::bucket_low(i)), i);
        ASSERT_EQ(histogram::bucket_of(histogram::bucket_high(i)), i);
    }
    EXPECT_EQ(histogram::bucket_high(histogram::bucket_count - 1), histogram::max_trackable);
    EXPECT_EQ(histogram::bucket_of(~std::uint64_t{0}), histogram::bucket_count - 1);
}

TEST(blast_histogram, relative_error_is_below_one_percent) {
    for (std::size_t i = histogram::linear_buckets; i < histogram::bucket_count; ++i) {
        double width =
            static_cast<double>(histogram::bucket_high(i) - histogram::bucket_low(i) + 1);
        ASSERT_LE(width / static_cast<double>(histogram::bucket_low(i)), 1.0 / 128) << i;
    }
}

TEST(blast_histogram, empty) {
    histogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.percentile(50), 0u);
    EXPECT_EQ(h.min(), 0u);
    EXPECT_EQ(h.max(), 0u);
    EXPECT_EQ(h.mean(), 0.0);
}

TEST(blast_histogram, percentiles_of_a_known_set) {
    histogram h;
    for (std::uint64_t v = 1; v <= 100; ++v)
        h.record(v);
    EXPECT_EQ(h.count(), 100u);
    EXPECT_EQ(h.min(), 1u);
    EXPECT_EQ(h.max(), 100u);
    EXPECT_EQ(h.percentile(50), 50u);
    EXPECT_EQ(h.percentile(90), 90u);
    EXPECT_EQ(h.percentile(99), 99u);
    EXPECT_EQ(h.percentile(100), 100u);
    EXPECT_EQ(h.percentile(0.001), 1u);
    EXPECT_DOUBLE_EQ(h.mean(), 50.5);
}

TEST(blast_histogram, percentile_is_never_below_the_truth_and_within_bound) {
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> dist(13.0, 1.5);  // ~0.4 ms median in ns, long tail
    std::vector<std::uint64_t> values;
    histogram h;
    for (int i = 0; i < 100000; ++i) {
        auto v = static_cast<std::uint64_t>(dist(rng));
        values.push_back(v);
        h.record(v);
    }
    std::sort(values.begin(), values.end());
    for (double p : {1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99}) {
        auto rank = static_cast<std::size_t>(std::ceil(p / 100 * values.size()));
        std::uint64_t truth = values[rank - 1];
        std::uint64_t got = h.percentile(p);
        EXPECT_GE(got, truth) << p;
        EXPECT_LE(static_cast<double>(got), static_cast<double>(truth) * (1 + 1.0 / 128) + 1) << p;
    }
    EXPECT_EQ(h.max(), values.back());
    EXPECT_EQ(h.min(), values.front());
}

TEST(blast_histogram, merge_equals_recording_everything_in_one) {
    histogram a, b, all;
    for (std::uint64_t v = 0; v < 5000; ++v) {
        std::uint64_t x = v * v * 37 + 11;
        (v % 3 ? a : b).record(x);
        all.record(x);
    }
    histogram merged;
    merged.merge(a);
    merged.merge(b);
    EXPECT_EQ(merged.count(), all.count());
    EXPECT_EQ(merged.min(), all.min());
    EXPECT_EQ(merged.max(), all.max());
    EXPECT_DOUBLE_EQ(merged.mean(), all.mean());
    for (double p : {50.0, 90.0, 99.0, 99.9})
        EXPECT_EQ(merged.percentile(p), all.percentile(p));
    histogram empty;
    merged.merge(empty);
    EXPECT_EQ(merged.count(), all.count());
}

TEST(blast_histogram, huge_values_clamp_but_max_stays_exact) {
    histogram h;
    std::uint64_t huge = std::uint64_t{1} << 50;
    h.record(huge);
    h.record(5, 3);
    EXPECT_EQ(h.count(), 4u);
    EXPECT_EQ(h.max(), huge);
    EXPECT_EQ(h.percentile(50), 5u);
    EXPECT_EQ(h.percentile(100), huge);
}

}  // namespace
}  // namespace ringmail::blast
