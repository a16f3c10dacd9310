#include "ringmail/core/timer.h"

#include "ringmail/core/panic.h"

#include <cstdio>
#include <cstdlib>

namespace ringmail::core {

timer::~timer() {
    if (_queue != nullptr)
        _queue->disarm(*this);
}

timer_queue::~timer_queue() {
    for (timer* t : _heap)
        t->_queue = nullptr;
}

void timer_queue::arm(timer& t, clock::time_point deadline) {
    if (t._queue != nullptr && t._queue != this) {
        invariant_broken("timer armed in two queues");
    }
    t._deadline = deadline;
    t._seq = _next_seq++;
    if (t._queue == this) {
        // A re-arm can move either way; one of the two sifts is a no-op.
        sift_up(t._index);
        sift_down(t._index);
        return;
    }
    if (_heap.size() >= _max) {
        invariant_broken("more than {} timers armed", _max);
    }
    t._queue = this;
    _heap.push_back(&t);
    t._index = _heap.size() - 1;
    sift_up(t._index);
}

void timer_queue::disarm(timer& t) noexcept {
    if (t._queue != this)
        return;
    remove_at(t._index);
}

std::optional<timer_queue::clock::time_point> timer_queue::next_deadline() const noexcept {
    if (_heap.empty())
        return std::nullopt;
    return _heap.front()->_deadline;
}

std::size_t timer_queue::expire(clock::time_point now) {
    const std::uint64_t horizon = _next_seq;
    std::size_t fired = 0;
    while (!_heap.empty()) {
        timer* t = _heap.front();
        if (t->_deadline > now)
            break;
        if (t->_seq >= horizon) {
            // Re-armed during this call and already due: stop here so a self-re-arming timer
            // cannot spin the loop. Older due timers behind it fire on the next call, which
            // the reactor makes at once because the nearest deadline has passed.
            break;
        }
        remove_at(0);
        ++fired;
        t->on_expire();
    }
    return fired;
}

void timer_queue::sift_up(std::size_t i) noexcept {
    timer* t = _heap[i];
    while (i > 0) {
        std::size_t parent = (i - 1) / 2;
        if (!before(t, _heap[parent]))
            break;
        place(_heap[parent], i);
        i = parent;
    }
    place(t, i);
}

void timer_queue::sift_down(std::size_t i) noexcept {
    timer* t = _heap[i];
    const std::size_t n = _heap.size();
    for (;;) {
        std::size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && before(_heap[child + 1], _heap[child]))
            ++child;
        if (!before(_heap[child], t))
            break;
        place(_heap[child], i);
        i = child;
    }
    place(t, i);
}

void timer_queue::remove_at(std::size_t i) noexcept {
    timer* t = _heap[i];
    t->_queue = nullptr;
    timer* last = _heap.back();
    _heap.pop_back();
    if (last == t)
        return;
    place(last, i);
    sift_up(i);
    sift_down(last->_index);
}

}  // namespace ringmail::core
