#include "ringmail/core/shard_base.h"

#include "ringmail/core/log.h"
#include "ringmail/core/oncore.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <sys/eventfd.h>
#include <unistd.h>

namespace ringmail::core {

using namespace std::chrono_literals;

shard_base::shard_base(unsigned id, shard_options options)
    : _id(id), _options(options), _wake_fd(::eventfd(0, EFD_CLOEXEC)) {}

shard_base::~shard_base() {
    // The derived part (sessions, spools) is gone; the ring goes before the eventfd it reads.
    _buffers.reset();
    _reactor.reset();
    if (_wake_fd >= 0)
        ::close(_wake_fd);
}

void shard_base::request_stop() noexcept {
    _stop_requested.store(true, std::memory_order_release);
    wake();
}

void shard_base::wake() noexcept {
    std::uint64_t one = 1;
    if (_wake_fd >= 0) {
        [[maybe_unused]] auto n = ::write(_wake_fd, &one, sizeof one);
    }
}

void shard_base::run() {
    this_shard_id() = _id;
    std::string why;
    bool ok = _wake_fd >= 0;
    if (!ok)
        why = fmt::format("eventfd: {}", std::strerror(errno));
    if (ok) {
        std::string rwhy;
        auto r = reactor::create(_options.ring, &rwhy);
        if (!r) {
            why = fmt::format("io_uring: {}", rwhy.empty() ? r.error().message() : rwhy);
            ok = false;
        } else {
            _reactor = std::move(*r);
        }
    }
    if (ok) {
        auto b = buffer_ring::create(*_reactor, _options.buffer_group, _options.recv_buffers,
                                     _options.recv_buffer_size);
        if (!b) {
            why = fmt::format("provided-buffer ring: {}", b.error().message());
            ok = false;
        } else {
            _buffers = std::move(*b);
        }
    }
    if (ok)
        ok = start(why);
    if (!ok) {
        _startup_error = std::move(why);
        _status.store(startup_state::failed, std::memory_order_release);
        return;
    }
    if (_options.start_gate) {
        _status.store(startup_state::opened, std::memory_order_release);
        int g;
        while ((g = _options.start_gate->load(std::memory_order_acquire)) == start_gate_wait)
            _options.start_gate->wait(start_gate_wait, std::memory_order_acquire);
        if (g != start_gate_go) {
            _status.store(startup_state::stopped, std::memory_order_release);
            return;
        }
    }
    arm_wake();
    started();
    _status.store(startup_state::ready, std::memory_order_release);
    log::begin_batching();
    while (!_stopped) {
        _reactor->run_once(1s);
        log::flush();
        if (_draining) {
            const bool late = _reactor->now() >= _drain_deadline;
            if (drained(late))
                _stopped = true;
        }
    }
    // Flush what the last iteration may have left and let the ring settle.
    for (int i = 0; i < 100 && settling(); ++i) {
        _reactor->run_once(10ms);
        log::flush();
    }
    stopped();
    log::end_batching();
    _status.store(startup_state::stopped, std::memory_order_release);
}

void shard_base::arm_wake() {
    if (_wake_armed)
        return;
    _wake_armed = true;
    _reactor->read(_wake_fd, &_wake_buf, sizeof _wake_buf, &_wake_op);
}

void shard_base::on_wake_cqe(int, std::uint32_t) {
    _wake_armed = false;
    if (_stop_requested.load(std::memory_order_acquire) && !_draining) {
        _draining = true;
        _drain_deadline = _reactor->now() + _options.drain_timeout;
        begin_drain();
    }
    on_wake();
    if (!_stopped)
        arm_wake();
}

}  // namespace ringmail::core
