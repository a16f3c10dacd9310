// Shard threads: one per online CPU, thread i pinned to the i-th online CPU, with
// this_shard_id() set before the shard's function runs.
//
// Owned by the daemon's main thread. A failed pin is logged and the shard runs unpinned (it
// still works, only slower); failing to create a thread is a start-up error. Signals: the main
// thread calls block_shutdown_signals() before start(), so every shard inherits the mask, and
// then waits in wait_for_signal() (sigwaitinfo); SIGPIPE stays blocked everywhere (sends use
// MSG_NOSIGNAL anyway).
#pragma once

#include "ringmail/core/result.h"

#include <chrono>
#include <functional>
#include <signal.h>
#include <thread>
#include <vector>

namespace ringmail::core {

// Online CPUs of this process (its affinity mask, so taskset/cgroups are honoured), ascending.
std::vector<int> online_cpus();

// Blocks SIGTERM, SIGINT, SIGHUP and SIGPIPE in the calling thread; returns the set.
result<sigset_t> block_shutdown_signals();
// Waits for one signal of `set` (blocked beforehand); returns its number. EINTR is retried.
result<int> wait_for_signal(const sigset_t& set);
// The same, for at most `timeout`: 0 when it passed without a signal.
result<int> wait_for_signal(const sigset_t& set, std::chrono::milliseconds timeout);

class shard_runner {
  public:
    shard_runner() = default;
    shard_runner(const shard_runner&) = delete;
    shard_runner& operator=(const shard_runner&) = delete;
    ~shard_runner();  // joins

    // Starts `count` threads; thread i runs fn(i) pinned to online_cpus()[i % cpus] when
    // `pin` is set. Call once.
    result<void> start(unsigned count, std::function<void(unsigned shard)> fn, bool pin = true);
    void join();
    unsigned size() const noexcept { return static_cast<unsigned>(_threads.size()); }

  private:
    std::vector<std::thread> _threads;
};

}  // namespace ringmail::core
