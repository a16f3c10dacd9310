// Latency histogram for ringmail-blast: log-linear buckets in the manner of HdrHistogram, so
// memory is fixed (4352 counters, 34 KiB) and every recorded value is known to within 1/128
// (0.8 %) of itself, whatever its magnitude.
//
// One per shard and per measure (transaction latency, connect time), written only by its
// shard; merged on the main thread after the shards have stopped. Values are unsigned
// integers in any unit (blast records nanoseconds); values of 2^40 and above (18 minutes in
// ns) share the last bucket, while min() and max() stay exact. Nothing here can fail.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace ringmail::blast {

class histogram {
  public:
    // Values below 2^sub_bits get a bucket each; above, each power of two is split into
    // 2^(sub_bits - 1) buckets of equal width.
    static constexpr unsigned sub_bits = 8;
    static constexpr unsigned max_bits = 40;
    static constexpr std::size_t linear_buckets = std::size_t{1} << sub_bits;
    static constexpr std::size_t half = linear_buckets / 2;
    static constexpr std::size_t bucket_count = linear_buckets + (max_bits - sub_bits) * half;
    static constexpr std::uint64_t max_trackable = (std::uint64_t{1} << max_bits) - 1;

    void record(std::uint64_t value, std::uint64_t count = 1) noexcept;
    void merge(const histogram& other) noexcept;
    void reset() noexcept;

    std::uint64_t count() const noexcept { return _count; }
    std::uint64_t min() const noexcept { return _count ? _min : 0; }
    std::uint64_t max() const noexcept { return _max; }
    double mean() const noexcept;

    // The value at percentile p (0 < p <= 100): the smallest bucket holding at least
    // ceil(p% of count) values, reported by its highest value (so never below the true
    // percentile, and at most 1/128 above it), capped at max(). 0 when empty.
    std::uint64_t percentile(double p) const noexcept;

    // Bucket geometry, public for tests.
    static std::size_t bucket_of(std::uint64_t value) noexcept;
    static std::uint64_t bucket_low(std::size_t index) noexcept;
    static std::uint64_t bucket_high(std::size_t index) noexcept;

  private:
    std::array<std::uint64_t, bucket_count> _counts{};
    std::uint64_t _count = 0;
    std::uint64_t _min = 0;
    std::uint64_t _max = 0;
    long double _sum = 0;  // for the mean only; precision loss past 2^64 ns is irrelevant
};

}  // namespace ringmail::blast
