// A token bucket: the messages-per-second throttle of one destination.
//
// Owned by whoever holds it (the destination's shard); time is injected, so tests need no
// clock. A rate of 0 means unlimited. Time going backwards (never with steady_clock, but an
// injected clock may) adds no tokens rather than failing.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>

namespace ringmail::queue {

// Every time in the scheduler is the reactor's clock (core::reactor::clock).
using steady_time = std::chrono::steady_clock::time_point;

class token_bucket {
  public:
    token_bucket() = default;
    // `rate` tokens per second (0 = unlimited), holding at most `burst` (values below 1 become 1,
    // so one message can always go). Starts full: a new destination may send a burst at once.
    token_bucket(double rate, double burst, steady_time now)
        : _rate(std::max(rate, 0.0)), _burst(std::max(burst, 1.0)), _tokens(_burst), _last(now) {}

    bool unlimited() const noexcept { return _rate <= 0.0; }
    double rate() const noexcept { return _rate; }
    double burst() const noexcept { return _burst; }

    // Takes one token when there is one.
    bool try_take(steady_time now) noexcept {
        if (unlimited())
            return true;
        refill(now);
        if (_tokens < 1.0)
            return false;
        _tokens -= 1.0;
        return true;
    }

    // When try_take will next succeed (<= now: at once).
    steady_time next_available(steady_time now) noexcept {
        if (unlimited())
            return now;
        refill(now);
        if (_tokens >= 1.0)
            return now;
        double wait_s = (1.0 - _tokens) / _rate;
        auto wait = std::chrono::duration_cast<steady_time::duration>(
            std::chrono::duration<double>(wait_s));
        // Round up so that waking at the returned time finds a whole token.
        return now + wait + steady_time::duration(1);
    }

    double tokens(steady_time now) noexcept {
        refill(now);
        return _tokens;
    }

  private:
    void refill(steady_time now) noexcept {
        if (now <= _last)
            return;
        double elapsed = std::chrono::duration<double>(now - _last).count();
        _tokens = std::min(_burst, _tokens + elapsed * _rate);
        _last = now;
    }

    double _rate = 0.0;
    double _burst = 1.0;
    double _tokens = 1.0;
    steady_time _last{};
};

}  // namespace ringmail::queue
