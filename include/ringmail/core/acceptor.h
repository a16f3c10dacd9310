// An accept loop on one listening socket of a shard: a multishot accept (or a single-shot one
// re-armed per connection, for kernels where multishot accept misbehaves) that hands every new
// fd to its owner. Used by the daemon's listeners and by ringmail-sink.
//
// Owned by one shard and used on its thread only. Accept errors (EMFILE, ENFILE, ENOMEM) pause
// it for 100 ms instead of spinning on a failing accept. close() cancels the accept and closes
// the socket once the ring has given the operation back; the owner keeps the acceptor alive
// until done(). Destroying it earlier is only allowed when the ring is gone (the fd is then
// closed directly by its ring_fd).
#pragma once

#include "ringmail/core/member_completion.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/ring_fd.h"
#include "ringmail/core/timer.h"

#include <functional>
#include <string>

namespace ringmail::core {

class acceptor final : private timer {
  public:
    // `on_accepted(fd)` owns the new socket. `name` goes into log lines ("accept on NAME: ...").
    acceptor(reactor& r, ring_fd listener, bool multishot, std::string name,
             std::function<void(ring_fd fd)> on_accepted);
    ~acceptor();
    acceptor(const acceptor&) = delete;
    acceptor& operator=(const acceptor&) = delete;

    void arm();
    void close();
    bool done() const noexcept { return _closing && _in_flight == 0 && !_fd.valid(); }

  private:
    void on_accept(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_expire() override { arm(); }
    void finish();

    reactor& _reactor;
    ring_fd _fd;
    const bool _multishot;
    const std::string _name;
    std::function<void(ring_fd)> _on_accepted;
    bool _armed = false;
    bool _closing = false;
    unsigned _in_flight = 0;
    member_completion<acceptor, &acceptor::on_accept> _accept_op{this};
    member_completion<acceptor, &acceptor::on_cancel> _cancel_op{this};
};

}  // namespace ringmail::core
