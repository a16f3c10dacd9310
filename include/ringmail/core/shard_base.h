// The skeleton of a shard: one thread with its own io_uring reactor and provided-buffer ring,
// woken from other threads through an eventfd, started with a status the main thread waits
// for, and stopped by a drain. The daemon's shards and ringmail-sink's are made on it; what a
// shard serves (listeners, sessions, spools, delivery) is the derived class's.
//
// Created on the main thread, which may only call request_stop(), wake() and status()
// afterwards; run() is the shard thread's body (the ring is created there: SINGLE_ISSUER).
// A start-up failure (io_uring, buffer ring, the derived class's start()) is reported through
// status() failed and startup_error(), and run() returns.
#pragma once

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/oncore.h"
#include "ringmail/core/panic.h"
#include "ringmail/core/reactor.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace ringmail::core {

// opened: start() succeeded and the shard waits at its start gate (shard_options::start_gate).
enum class startup_state : int { pending = 0, ready = 1, failed = 2, stopped = 3, opened = 4 };

// Values of a start gate.
inline constexpr int start_gate_wait = 0;
inline constexpr int start_gate_go = 1;
inline constexpr int start_gate_stop = 2;

struct shard_options {
    reactor_options ring;
    std::uint16_t buffer_group = 1;
    // The kernel takes provided buffers in ring order, so every buffer's first page is paged in
    // once some thousand receives have happened, whatever the number of connections: the pool
    // is a fixed share of the resident set (1024 x 16 KiB: at most 16 MiB per shard). Buffers
    // go back to the ring as soon as their CQE is handled, so 1024 covers a loop iteration.
    unsigned recv_buffers = 1024;       // provided buffers of the shard's recv ring
    unsigned recv_buffer_size = 16384;
    // How long a drain may take before drained(late = true) is asked to give up what is left.
    std::chrono::milliseconds drain_timeout{30000};
    // When set: once start() succeeded (listeners bound, spools open) the shard says `opened`
    // and waits, serving nothing, until the gate is go (then it serves) or stop (then it returns,
    // `stopped`). The daemon drops root in between (daemon/privileges.h).
    std::atomic<int>* start_gate = nullptr;
};

class shard_base {
  public:
    shard_base(unsigned id, shard_options options);
    virtual ~shard_base();
    shard_base(const shard_base&) = delete;
    shard_base& operator=(const shard_base&) = delete;

    // The shard thread's body: returns once the shard has drained after request_stop(), or at
    // once when start-up failed.
    void run();

    // Any thread: ask for a drain (begin_drain() on the shard) and wake it. Idempotent.
    void request_stop() noexcept;
    // Any thread: on_wake() runs on the shard.
    void wake() noexcept;
    startup_state status() const noexcept { return _status.load(std::memory_order_acquire); }
    const std::string& startup_error() const noexcept { return _startup_error; }

    unsigned id() const noexcept { return _id; }
    // Debug builds: the caller runs on this shard's thread (a shard is made on the main thread,
    // so it cannot keep an oncore of its own; its thread records the id at start).
    void check_shard() const noexcept {
#ifndef NDEBUG
        if (this_shard_id() != _id)
            invariant_broken("shard {} used from shard {}", _id, this_shard_id());
#endif
    }
    reactor& ring() noexcept {
        return *_reactor;
    }
    buffer_ring& buffers() noexcept {
        return *_buffers;
    }
    bool draining() const noexcept {
        return _draining;
    }

  protected:
    // The ring and the buffers exist: set up what the shard serves. false: `why` says why.
    virtual bool start(std::string& why) = 0;
    // Called once the shard is ready, before its loop runs.
    virtual void started() {}
    // wake() from another thread (also after request_stop(), after begin_drain()).
    virtual void on_wake() {}
    // request_stop(): stop accepting, let open work finish.
    virtual void begin_drain() = 0;
    // After each loop iteration of a drain: true when the shard may stop. `late`: the drain
    // timeout passed, close what is left (acknowledged mail is durable).
    virtual bool drained(bool late) = 0;
    // After the loop: true while the ring must run on for a little (a commit settling); it
    // runs at most 100 more iterations of 10 ms.
    virtual bool settling() {
        return false;
    }
    // Last thing on the shard's thread (thread-local clean-ups).
    virtual void stopped() {}

  private:
    void on_wake_cqe(int res, std::uint32_t flags);
    void arm_wake();

    const unsigned _id;
    const shard_options _options;
    std::atomic<startup_state> _status{startup_state::pending};
    std::string _startup_error;
    std::atomic<bool> _stop_requested{false};
    int _wake_fd = -1;
    std::uint64_t _wake_buf = 0;
    bool _wake_armed = false;
    member_completion<shard_base, &shard_base::on_wake_cqe> _wake_op{this};
    std::unique_ptr<reactor> _reactor;
    std::unique_ptr<buffer_ring> _buffers;
    bool _draining = false;
    bool _stopped = false;
    reactor::clock::time_point _drain_deadline{};
};

}  // namespace ringmail::core
