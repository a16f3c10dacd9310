#include "ringmail/core/acceptor.h"

#include "ringmail/core/log.h"

#include <liburing.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

namespace ringmail::core {

acceptor::acceptor(reactor& r, ring_fd listener, bool multishot, std::string name,
                   std::function<void(ring_fd fd)> on_accepted)
    : _reactor(r),
      _fd(std::move(listener)),
      _multishot(multishot),
      _name(std::move(name)),
      _on_accepted(std::move(on_accepted)) {}

acceptor::~acceptor() = default;  // an fd still open (the ring went away) closes with _fd

void acceptor::arm() {
    if (_armed || _closing)
        return;
    _armed = true;
    ++_in_flight;
    if (_multishot) {
        _reactor.accept_multishot(_fd, &_accept_op);
    } else {
        _reactor.accept(_fd, &_accept_op);  // its CQE never has F_MORE: re-armed below
    }
}

void acceptor::close() {
    if (_closing)
        return;
    _closing = true;
    _reactor.disarm(*this);
    if (_armed) {
        ++_in_flight;
        _reactor.cancel(&_accept_op, &_cancel_op);
    }
    finish();
}

void acceptor::on_accept(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _armed = false;
        --_in_flight;
    }
    if (res >= 0) {
        if (_closing) {
            _reactor.close(ring_fd::adopt(res));
        } else {
            _on_accepted(ring_fd::adopt(res));
        }
    } else if (res != -ECANCELED) {
        log::warn("accept on {}: {}", _name, std::strerror(-res));
        if (!_armed && !_closing) {
            _reactor.arm(*this, _reactor.now() + std::chrono::milliseconds(100));
            return;
        }
    }
    if (!_armed && !_closing && !armed())
        arm();
    finish();
}

void acceptor::on_cancel(int, std::uint32_t) {
    --_in_flight;
    finish();
}

void acceptor::finish() {
    if (_closing && _in_flight == 0 && _fd.valid())
        _reactor.close(std::move(_fd));
}

}  // namespace ringmail::core
