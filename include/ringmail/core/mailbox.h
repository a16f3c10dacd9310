// Cross-shard messaging: an N x N matrix of SPSC rings plus one wake-up eventfd per shard.
//
// Built once before the shards start and destroyed after they are joined (a shard's reactor,
// which holds a read on its eventfd and a drain hook, must be gone before the mailbox).
// ring(from, to) has one producer (shard `from`) and one consumer (shard `to`), so no locks.
// A full ring makes try_send fail: the caller applies back-pressure (defer, drop with a 4xx),
// memory never grows.
//
// Wake-up: an eventfd per shard, read by the shard's own reactor, rather than
// IORING_OP_MSG_RING. Reasons: any thread can wake a shard (the main thread's stop request has
// no ring), the producer needs no SQE/completion bookkeeping for a wake, and it does not depend
// on how a kernel delivers MSG_RING into a DEFER_TASKRUN ring. The cost is a write(2) by the
// producer, paid only when the consumer may be about to sleep:
//   consumer (end of each loop iteration): drain (bounded), then set `sleeping`, full fence,
//     look at the rings again (drain on the next iteration if anything arrived);
//   producer: push, full fence, and only if `sleeping` is set, exchange it to false and write.
// Either the consumer sees the message or the producer sees the flag (Dekker), so no wake-up
// is lost; and a consumer that is busy gets at most one write per iteration, not one per
// message.
#pragma once

#include "ringmail/core/panic.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/result.h"
#include "ringmail/core/spsc_ring.h"

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <sys/eventfd.h>
#include <unistd.h>

namespace ringmail::core {

template <typename T, std::size_t Capacity = 1024>
class mailbox {
  public:
    using ring_type = spsc_ring<T, Capacity>;
    using handler = std::function<void(unsigned from, T&& msg)>;

    // `drain_batch`: messages taken from each incoming ring per loop iteration, so one busy
    // producer cannot monopolise the consumer.
    static result<std::unique_ptr<mailbox>> create(unsigned shards,
                                                   std::size_t drain_batch = Capacity) {
        if (shards == 0)
            return failure(std::make_error_code(std::errc::invalid_argument));
        std::unique_ptr<mailbox> m(new mailbox(shards, drain_batch));
        for (unsigned i = 0; i < shards; ++i) {
            int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (fd < 0)
                return sys_failure(errno);
            m->_inboxes[i].efd = fd;
        }
        return m;
    }

    ~mailbox() {
        for (unsigned i = 0; i < _shards; ++i) {
            if (_inboxes[i].efd >= 0)
                ::close(_inboxes[i].efd);
        }
    }
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    unsigned shards() const noexcept { return _shards; }

    // On shard `self`'s thread, once: arms the eventfd read and registers the drain hook.
    void attach(reactor& r, unsigned self, handler h) {
        inbox& in = _inboxes[check(self)];
        if (in.r != nullptr)
            invariant_broken("mailbox::attach called twice for a shard");
        in.r = &r;
        in.on_message = std::move(h);
        in.waker.owner = this;
        in.waker.self = self;
        in.waker.arm();
        r.on_iteration_end([this, self] { drain(self); });
        // Messages may have been queued before attach and their producers saw `sleeping` set
        // (no one drained yet): the first iteration must not sleep before draining them.
        r.nop(nullptr);
    }

    // On shard `from`'s thread. False when ring(from, to) is full; `msg` is then untouched.
    template <typename U>
    bool try_send(unsigned from, unsigned to, U&& msg) {
        if (!ring(check(from), check(to)).try_push(std::forward<U>(msg)))
            return false;
        std::atomic_thread_fence(std::memory_order_seq_cst);
        inbox& in = _inboxes[to];
        if (in.sleeping.load(std::memory_order_relaxed) &&
            in.sleeping.exchange(false, std::memory_order_acq_rel)) {
            signal(in);
        }
        return true;
    }

    // From any thread: wake shard `to` unconditionally (e.g. after setting its stop flag).
    void wake(unsigned to) { signal(_inboxes[check(to)]); }

    // Eventfd writes made so far for shard `to` (tests, metrics).
    std::uint64_t wakeups(unsigned to) const noexcept {
        return _inboxes[to].wakeups.load(std::memory_order_relaxed);
    }
    std::size_t pending_approx(unsigned from, unsigned to) const noexcept {
        return _rings[std::size_t{to} * _shards + from].size_approx();
    }

  private:
    struct inbox;

    // The consumer's read of its eventfd; re-armed after every completion.
    class waker_op final : public completion {
      public:
        void arm() { owner->_inboxes[self].r->read(owner->_inboxes[self].efd, &value, 8, this); }
        void complete(int res, std::uint32_t) override {
            // The ring ends the read only with a value, or with an error when it is torn down
            // or the fd is gone; -ECANCELED means the reactor is shutting down.
            if (res == -ECANCELED)
                return;
            if (res < 0 && res != -EAGAIN && res != -EINTR)
                invariant_broken("mailbox eventfd read failed: {}", res);
            arm();
        }
        mailbox* owner = nullptr;
        unsigned self = 0;
        std::uint64_t value = 0;
    };

    struct alignas(cache_line_size) inbox {
        // Shared with producers: alone on its line.
        // Starts set: until the consumer's first drain, every producer must wake it.
        alignas(cache_line_size) std::atomic<bool> sleeping{true};
        alignas(cache_line_size) std::atomic<std::uint64_t> wakeups{0};
        int efd = -1;
        // Consumer-only from here.
        reactor* r = nullptr;
        handler on_message;
        waker_op waker;
    };

    mailbox(unsigned shards, std::size_t drain_batch)
        : _shards(shards),
          _batch(drain_batch == 0 ? 1 : drain_batch),
          _rings(new ring_type[std::size_t{shards} * shards]),
          _inboxes(new inbox[shards]) {}

    unsigned check(unsigned shard) const {
        if (shard >= _shards)
            invariant_broken("mailbox shard id out of range");
        return shard;
    }
    // Incoming rings of one consumer are adjacent.
    ring_type& ring(unsigned from, unsigned to) { return _rings[std::size_t{to} * _shards + from]; }

    void signal(inbox& in) {
        in.wakeups.fetch_add(1, std::memory_order_relaxed);
        // Only EAGAIN (counter saturated) can fail, and then a wake-up is pending anyway.
        (void)::eventfd_write(in.efd, 1);
    }

    bool incoming_empty(unsigned self) {
        for (unsigned from = 0; from < _shards; ++from) {
            if (!ring(from, self).empty_for_consumer())
                return false;
        }
        return true;
    }

    void drain(unsigned self) {
        inbox& in = _inboxes[self];
        // Awake and looking: producers need not write until we are about to sleep again.
        if (in.sleeping.load(std::memory_order_relaxed)) {
            in.sleeping.store(false, std::memory_order_relaxed);
        }
        bool left_over = false;
        for (unsigned from = 0; from < _shards; ++from) {
            ring_type& q = ring(from, self);
            std::size_t n = 0;
            for (; n < _batch; ++n) {
                auto msg = q.try_pop();
                if (!msg)
                    break;
                in.on_message(from, std::move(*msg));
            }
            if (n == _batch && !q.empty_for_consumer())
                left_over = true;
        }
        if (!left_over) {
            in.sleeping.store(true, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            if (incoming_empty(self))
                return;
            in.sleeping.store(false, std::memory_order_relaxed);
        }
        // More to do: make the next wait return at once instead of sleeping.
        in.r->nop(nullptr);
    }

    unsigned _shards;
    std::size_t _batch;
    std::unique_ptr<ring_type[]> _rings;
    std::unique_ptr<inbox[]> _inboxes;
};

}  // namespace ringmail::core
