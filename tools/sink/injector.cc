#include "sink/injector.h"

#include <fmt/format.h>

#include <cmath>

namespace ringmail::sink {

namespace {
constexpr double scale = 9007199254740992.0;  // 2^53

std::uint64_t threshold(double percent) noexcept {
    double t = std::floor(percent / 100.0 * scale);
    if (t <= 0)
        return 0;
    if (t >= scale)
        return static_cast<std::uint64_t>(scale);
    return static_cast<std::uint64_t>(t);
}

bool bad(double p) noexcept {
    return !(p >= 0 && p <= 100);
}  // NaN fails too
}  // namespace

std::string validate(const injection& inj) {
    if (bad(inj.defer_percent))
        return "--defer-percent must be within 0..100";
    if (bad(inj.reject_percent))
        return "--reject-percent must be within 0..100";
    if (bad(inj.disconnect_percent))
        return "--disconnect-percent must be within 0..100";
    double sum = inj.defer_percent + inj.reject_percent + inj.disconnect_percent;
    if (sum > 100.0 + 1e-9) {
        return fmt::format(
            "--defer-percent, --reject-percent and --disconnect-percent add up to {} (> 100)", sum);
    }
    return {};
}

injector::injector(const injection& inj, std::uint64_t seed, unsigned shard) noexcept
    : _rng(seed ^ (0xd1b54a32d192ed03ULL * (static_cast<std::uint64_t>(shard) + 1))) {
    const std::uint64_t max = static_cast<std::uint64_t>(scale);
    _disconnect_below = threshold(inj.disconnect_percent);
    _reject_below = std::min(max, _disconnect_below + threshold(inj.reject_percent));
    _defer_below = std::min(max, _reject_below + threshold(inj.defer_percent));
    _active = _defer_below > 0;
}

outcome injector::pick() noexcept {
    if (!_active)
        return outcome::accept;
    const std::uint64_t r = _rng.next() >> 11;  // uniform over [0, 2^53)
    if (r < _disconnect_below)
        return outcome::disconnect;
    if (r < _reject_below)
        return outcome::reject;
    if (r < _defer_below)
        return outcome::defer;
    return outcome::accept;
}

}  // namespace ringmail::sink
