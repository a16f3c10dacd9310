#include "blast/histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace ringmail::blast {

std::size_t histogram::bucket_of(std::uint64_t value) noexcept {
    value = std::min(value, max_trackable);
    if (value < linear_buckets)
        return static_cast<std::size_t>(value);
    const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(value));  // >= sub_bits
    const unsigned shift = msb - (sub_bits - 1);
    const std::uint64_t top = value >> shift;  // in [half, linear_buckets)
    return linear_buckets + (msb - sub_bits) * half + static_cast<std::size_t>(top - half);
}

std::uint64_t histogram::bucket_low(std::size_t index) noexcept {
    if (index < linear_buckets)
        return index;
    const std::size_t k = index - linear_buckets;
    const unsigned msb = sub_bits + static_cast<unsigned>(k / half);
    const unsigned shift = msb - (sub_bits - 1);
    return static_cast<std::uint64_t>(half + k % half) << shift;
}

std::uint64_t histogram::bucket_high(std::size_t index) noexcept {
    if (index < linear_buckets)
        return index;
    const std::size_t k = index - linear_buckets;
    const unsigned shift = static_cast<unsigned>(k / half) + 1;
    return bucket_low(index) + (std::uint64_t{1} << shift) - 1;
}

void histogram::record(std::uint64_t value, std::uint64_t count) noexcept {
    if (count == 0)
        return;
    _counts[bucket_of(value)] += count;
    if (_count == 0 || value < _min)
        _min = value;
    if (value > _max)
        _max = value;
    _count += count;
    _sum += static_cast<long double>(value) * static_cast<long double>(count);
}

void histogram::merge(const histogram& other) noexcept {
    if (other._count == 0)
        return;
    for (std::size_t i = 0; i < bucket_count; ++i)
        _counts[i] += other._counts[i];
    if (_count == 0 || other._min < _min)
        _min = other._min;
    _max = std::max(_max, other._max);
    _count += other._count;
    _sum += other._sum;
}

void histogram::reset() noexcept {
    *this = histogram{};
}

double histogram::mean() const noexcept {
    return _count ? static_cast<double>(_sum / static_cast<long double>(_count)) : 0.0;
}

std::uint64_t histogram::percentile(double p) const noexcept {
    if (_count == 0)
        return 0;
    if (p >= 100.0)
        return _max;
    p = std::max(p, 0.0);
    auto rank = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(_count)));
    rank = std::clamp<std::uint64_t>(rank, 1, _count);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
        seen += _counts[i];
        if (seen >= rank)
            return std::clamp(bucket_high(i), _min, _max);
    }
    return _max;
}

}  // namespace ringmail::blast
