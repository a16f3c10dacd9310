// The daemon's keeper of queue::suspensions (the one store of delivery suspensions): the
// master copy, written to spool_dir/suspensions by a thread of its own whenever it changes,
// read back at start-up (shaping applies what is still in force to its limiter).
//
// Shards record the suspensions their shaping rules set (queue::suspension_recorder): a rule
// fires rarely (once per suspension: its own effect never triggers it again), so record()
// takes a mutex for the few instructions of an insert and never waits for the disk; the file
// write, with its fsyncs, is the keeper thread's. A write that fails is logged and retried at
// the next change. Destroyed after the shards are joined: the last change is written then.
//
// When the admin API (issue 14) owns the store on its thread, it takes this role: the shards
// only see the recorder interface.
#pragma once

#include "ringmail/queue/shaping.h"
#include "ringmail/queue/suspensions.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace ringmail::daemon {

class suspension_keeper final : public queue::suspension_recorder {
  public:
    suspension_keeper(std::string path, queue::suspensions initial);
    ~suspension_keeper() override;
    suspension_keeper(const suspension_keeper&) = delete;
    suspension_keeper& operator=(const suspension_keeper&) = delete;

    void record(queue::suspension s) override;
    // A copy of the store as it is now (tests, the admin API).
    queue::suspensions snapshot() const;

  private:
    void run();

    const std::string _path;
    mutable std::mutex _mu;
    std::condition_variable _cv;
    queue::suspensions _store;
    std::uint64_t _saved = 0;  // generation on disk
    bool _stop = false;
    std::thread _thread;
};

}  // namespace ringmail::daemon
