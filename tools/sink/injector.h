// Failure injection for ringmail-sink: at each end of data, decide whether the transaction is
// accepted, deferred (451), rejected (550) or dropped (connection closed without a reply).
//
// One injector per shard (its own PRNG state, no sharing); pure, no I/O. The same seed and the
// same sequence of calls give the same outcomes, so runs are reproducible with --seed.
// Percentages outside 0..100 or summing past 100 are refused by validate().
#pragma once

#include <cstdint>
#include <string>

namespace ringmail::sink {

enum class outcome : std::uint8_t { accept, defer, reject, disconnect };

struct injection {
    double defer_percent = 0;
    double reject_percent = 0;
    double disconnect_percent = 0;
};

// Empty when valid, else a one-line reason naming the option.
std::string validate(const injection& inj);

// splitmix64: small, fast and good enough to spread outcomes; not for anything secret.
class prng {
  public:
    explicit prng(std::uint64_t seed) noexcept : _state(seed) {}
    std::uint64_t next() noexcept {
        std::uint64_t z = (_state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

  private:
    std::uint64_t _state;
};

class injector {
  public:
    // `seed` is the run's seed; `shard` makes each shard's sequence different.
    injector(const injection& inj, std::uint64_t seed, unsigned shard) noexcept;

    // No draw at all when nothing is injected: the fast path stays a compare.
    outcome pick() noexcept;
    bool active() const noexcept { return _active; }

  private:
    // Cumulative thresholds over [0, 2^53): disconnect, then reject, then defer.
    std::uint64_t _disconnect_below = 0;
    std::uint64_t _reject_below = 0;
    std::uint64_t _defer_below = 0;
    bool _active = false;
    prng _rng;
};

}  // namespace ringmail::sink
