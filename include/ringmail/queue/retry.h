// When to try a deferred message again: the [delivery] retry_schedule and max_lifetime.
//
// Plain configuration, copied into each shard's queue; no shard affinity and no global RNG: the
// caller passes its own generator, so tests are deterministic with a seeded one. A policy that
// fails validate() is a configuration error (the daemon reports it at start-up); using one
// anyway is an invariant violation and aborts.
#pragma once

#include "ringmail/core/result.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

namespace ringmail::queue {

struct retry_policy {
    std::vector<std::chrono::seconds> schedule;  // interval after attempt 1, 2, ...; last repeats
    std::chrono::seconds max_lifetime{5 * 24 * 3600};
    double jitter = 0.1;  // each interval is scaled by a uniform factor in [1 - jitter, 1 + jitter]

    result<void> validate() const;

    // Unix time of the next attempt after `attempts_so_far` failed attempts, or nullopt when the
    // message has reached max_lifetime (expire it now). The last attempt is made exactly at
    // arrival + max_lifetime rather than dropping the tail of the lifetime.
    template <std::uniform_random_bit_generator Rng>
    std::optional<std::int64_t> next_attempt(std::uint32_t attempts_so_far,
                                             std::int64_t arrival_unix, std::int64_t now_unix,
                                             Rng& rng) const {
        std::uniform_real_distribution<double> unit(-1.0, 1.0);
        return next_attempt_with(attempts_so_far, arrival_unix, now_unix, unit(rng));
    }

    // Same, with the random draw given: `unit` in [-1, 1] picks the point in the jitter band.
    std::optional<std::int64_t> next_attempt_with(std::uint32_t attempts_so_far,
                                                  std::int64_t arrival_unix, std::int64_t now_unix,
                                                  double unit) const;
};

}  // namespace ringmail::queue
