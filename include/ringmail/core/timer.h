// Intrusive timers for session deadlines, retry wake-ups and idle pool connections.
//
// A timer is embedded in its owner (no allocation per arm); a timer_queue is a binary min-heap
// of pointers to armed timers, so arm, re-arm and disarm are O(log n) and the nearest deadline
// is O(1). One queue per reactor, owned by its shard. Timers with equal deadlines fire in the
// order they were armed. Destroying an armed timer disarms it. The queue is bounded: arming
// past `max_timers` is an invariant violation (the number of timers follows the configured
// connection limits) and aborts with a message.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace ringmail::core {

class timer_queue;

class timer {
  public:
    using clock = std::chrono::steady_clock;

    timer() = default;
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;

    // Called by the queue's expire() after the timer left the queue: the owner may re-arm.
    virtual void on_expire() = 0;

    bool armed() const noexcept { return _queue != nullptr; }
    clock::time_point deadline() const noexcept { return _deadline; }

  protected:
    ~timer();

  private:
    friend class timer_queue;
    timer_queue* _queue = nullptr;
    clock::time_point _deadline{};
    std::uint64_t _seq = 0;  // arm order: ties between equal deadlines fire first-armed-first
    std::size_t _index = 0;  // position in the heap while armed
};

class timer_queue {
  public:
    using clock = timer::clock;

    explicit timer_queue(std::size_t max_timers = std::size_t{1} << 22) : _max(max_timers) {}
    timer_queue(const timer_queue&) = delete;
    timer_queue& operator=(const timer_queue&) = delete;
    ~timer_queue();

    // Arms `t` (re-arms it if already armed here). Arming a timer that is armed in another
    // queue is an invariant violation.
    void arm(timer& t, clock::time_point deadline);
    void disarm(timer& t) noexcept;

    std::optional<clock::time_point> next_deadline() const noexcept;
    std::size_t size() const noexcept { return _heap.size(); }

    // Fires every timer whose deadline is <= now and that was armed before this call began;
    // timers re-armed from on_expire() wait for the next call even if already due, so a
    // timer that keeps re-arming itself cannot starve the loop. Returns how many fired.
    std::size_t expire(clock::time_point now);

  private:
    bool before(const timer* a, const timer* b) const noexcept {
        return a->_deadline < b->_deadline || (a->_deadline == b->_deadline && a->_seq < b->_seq);
    }
    void place(timer* t, std::size_t i) noexcept {
        _heap[i] = t;
        t->_index = i;
    }
    void sift_up(std::size_t i) noexcept;
    void sift_down(std::size_t i) noexcept;
    void remove_at(std::size_t i) noexcept;

    std::vector<timer*> _heap;
    std::size_t _max;
    std::uint64_t _next_seq = 0;
};

}  // namespace ringmail::core
