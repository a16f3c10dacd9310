// Shard ownership checks, as Redpanda's `oncore`.
//
// Every shard thread records its id in a thread-local at start-up. Objects that belong to a
// shard keep an `oncore` member and call `check()` on entry points; debug builds abort when
// another thread touches them (an invariant broken), release builds compile the check away.
#pragma once

#include "ringmail/core/panic.h"

namespace ringmail::core {

inline constexpr unsigned no_shard = ~0u;

// The calling thread's shard id, or no_shard on threads that are not shards (main, tests).
unsigned& this_shard_id() noexcept;

class oncore {
  public:
    oncore() noexcept : _owner(this_shard_id()) {}
    void check() const noexcept {
#ifndef NDEBUG
        if (_owner != this_shard_id()) {
            invariant_broken("object of shard {} used on shard {}", _owner, this_shard_id());
        }
#endif
    }
    unsigned owner() const noexcept {
        return _owner;
    }

  private:
    unsigned _owner;
};

}  // namespace ringmail::core
