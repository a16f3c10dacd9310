#include "sink/connection.h"

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/log.h"

#include <fmt/format.h>
#include <liburing.h>

#include "sink/shard.h"
#include "sink/tls_transform.h"
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sys/socket.h>

namespace ringmail::sink {

namespace log = core::log;

connection::connection(shard& owner, std::uint64_t id, core::ring_fd fd, std::string peer_ip)
    : _shard(owner),
      _id(id),
      _fd(std::move(fd)),
      _session(owner.cfg().session,
               smtp::peer_info{.address = std::move(peer_ip), .relay_allowed = true}, *this) {}

connection::~connection() = default;

void connection::start() {
    _last_activity = _shard.reactor().now();
    _shard.reactor().arm(_idle, _last_activity + _session.current_timeout());
    _session.start();
    pump();
}

bool connection::busy() const noexcept {
    return _reply_owed || _drop_now || _session.in_transaction();
}

// --- transaction_sink ---

result<void> connection::begin(const mail::envelope&) {
    _seq = _shard.next_seq();
    if (_shard.cfg().dump_dir.empty())
        return {};
    char name[48];
    auto r = fmt::format_to_n(name, sizeof name, "{}-{}", _shard.id(), _seq);
    auto opened = _dump.open(_shard.cfg().dump_dir, std::string_view(name, r.size));
    if (!opened)
        log::warn("connection {}: dump file: {}", _id, opened.error().message());
    return opened;
}

result<void> connection::append(std::string_view bytes) {
    if (!_dump.is_open())
        return {};
    auto w = _dump.append(bytes);
    if (!w)
        log::warn("connection {}: dump write: {}", _id, w.error().message());
    return w;
}

void connection::commit() {
    _outcome = _shard.inject().pick();
    _reply_owed = true;
    if (_shard.cfg().delay.count() > 0) {
        _shard.reactor().arm(_delay, _shard.reactor().now() + _shard.cfg().delay);
        return;
    }
    final_reply();  // the session takes the reply from inside commit()
}

void connection::abort() {
    _dump.abort();
}

void connection::final_reply() {
    _reply_owed = false;
    auto& c = _shard.counters();
    const auto& env = _session.current_envelope();
    std::string_view result;
    switch (_outcome) {
        case outcome::accept:
            result = "250 2.0.0";
            break;
        case outcome::defer:
            result = "451 4.3.0";
            break;
        case outcome::reject:
            result = "550 5.7.1";
            break;
        case outcome::disconnect:
            result = "disconnect";
            break;
    }
    if (_dump.is_open()) {
        auto w = _dump.finish(env, result);
        if (!w) {
            log::warn("connection {}: dump envelope: {}", _id, w.error().message());
            if (_outcome == outcome::accept)
                _outcome = outcome::defer;  // a 451, counted so
        }
    }
    shard_counters::set(c.last_reply_ns, _shard.now_ns());
    switch (_outcome) {
        case outcome::accept: {
            shard_counters::add(c.accepted);
            shard_counters::add(c.recipients, env.rcpt_to.size());
            char text[64];
            auto r = fmt::format_to_n(text, sizeof text, "Ok: queued as {}-{}", _shard.id(), _seq);
            _session.on_commit_reply(250, "2.0.0", std::string_view(text, r.size));
            break;
        }
        case outcome::defer:
            shard_counters::add(c.deferred);
            _session.on_commit_reply(451, "4.3.0", "Error: deferred by ringmail-sink");
            break;
        case outcome::reject:
            shard_counters::add(c.rejected);
            _session.on_commit_reply(550, "5.7.1", "Error: rejected by ringmail-sink");
            break;
        case outcome::disconnect:
            // Closed from pump(), outside the session's own call stack.
            shard_counters::add(c.disconnected);
            _drop_now = true;
            break;
    }
}

// --- timers ---

void connection::on_idle() {
    if (_closing)
        return;
    auto now = _shard.reactor().now();
    auto deadline = _last_activity + _session.current_timeout();
    if (_reply_owed || now < deadline) {
        // Activity since the timer was armed (or our own delay holds the session): push it
        // back once here rather than re-arming on every read.
        _shard.reactor().arm(_idle, _reply_owed ? now + _session.current_timeout() : deadline);
        return;
    }
    _session.on_timeout();
    pump();
    if (!_closing)
        start_close();  // the 421 goes out if the socket takes it
}

void connection::on_delay() {
    if (!_reply_owed)
        return;
    final_reply();
    pump();
}

// --- socket side ---

void connection::receive_wire(std::string_view bytes) {
    if (!_transform) {
        _session.receive(bytes);
        return;
    }
    _plain.clear();
    auto r = _transform->decode(bytes, _plain);
    // Before any plaintext: the session drops input until it is told the handshake is done.
    if (auto details = _transform->take_established())
        _session.on_tls_established(std::move(*details));
    if (!r) {
        log::debug("connection {}: tls: {}", _id, _transform->error());
        if (_session.wants_tls()) {
            // Handshake failed: the pump's alert (if any) goes out, then the session closes.
            _session.on_tls_failed();
            return;
        }
        _peer_gone = true;
        _session.on_peer_closed();
        start_close();
        return;
    }
    if (!_plain.empty())
        _session.receive(_plain);
}

// The 220 to STARTTLS has left the session (it is in _sending, or sent): from here on every
// byte goes through the record pump.
void connection::start_tls() {
    const auto& ctx = _shard.tls();
    if (!ctx) {
        // STARTTLS is offered only with a certificate: a session asking without one is a bug.
        log::error("connection {}: STARTTLS without a TLS context", _id);
        std::abort();
    }
    _transform = std::make_unique<tls_transform>(ctx);
}

// Moves what is owed to the peer into _sending (empty, nothing in flight). False: nothing.
bool connection::take_wire_output() {
    if (!_transform) {
        if (!_session.has_output())
            return false;
        _session.take_output(_sending);
        return true;
    }
    if (!_session.has_output() && !_transform->has_output())
        return false;
    _plain.clear();
    _session.take_output(_plain);
    _sending.clear();
    if (auto r = _transform->encode(_plain, _sending); !r) {
        log::debug("connection {}: transform: {}", _id, r.error().message());
        _peer_gone = true;
        _session.on_peer_closed();
        return false;
    }
    return !_sending.empty();
}

void connection::on_recv(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _recv_armed = false;
        --_in_flight;
    }
    if (res > 0) {
        auto& bufs = _shard.buffers();
        auto bid = core::buffer_ring::buffer_id(flags);
        std::string_view bytes = bufs.data(bid, static_cast<std::size_t>(res));
        if (!_closing)
            receive_wire(bytes);
        bufs.recycle(bid);
    } else if (res == 0 || (res != -ENOBUFS && res != -ECANCELED)) {
        if (res < 0)
            log::debug("connection {}: recv: {}", _id, std::strerror(-res));
        _peer_gone = true;
        if (!_closing) {
            _session.on_peer_closed();
            start_close();
        }
    }
    pump();
}

void connection::on_send(int res, std::uint32_t) {
    --_in_flight;
    _send_in_flight = false;
    if (res < 0) {
        log::debug("connection {}: send: {}", _id, std::strerror(-res));
        _peer_gone = true;
        _sending.clear();
        _sent = 0;
        if (!_closing) {
            _session.on_peer_closed();
            start_close();
        }
        pump();
        return;
    }
    _sent += static_cast<std::size_t>(res);
    if (_sent < _sending.size()) {
        send_pending();
        return;
    }
    _sending.clear();
    _sent = 0;
    pump();
}

void connection::on_cancel(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void connection::on_shutdown(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void connection::on_close(int, std::uint32_t) {
    --_in_flight;
    _closed = true;
    maybe_finish();
}

void connection::send_pending() {
    _send_in_flight = true;
    ++_in_flight;
    _shard.reactor().send(_fd, _sending.data() + _sent, _sending.size() - _sent, &_send_op);
}

void connection::pump() {
    if (_closing) {
        maybe_finish();
        return;
    }
    _last_activity = _shard.reactor().now();
    if (_drop_now) {
        // Injected disconnect: no final reply; replies owed before it still go out.
        _drop_now = false;
        _session.on_peer_closed();
    }
    // One send per flush: replies produced meanwhile wait for it and go out together.
    if (!_send_in_flight && !_peer_gone && take_wire_output()) {
        _sent = 0;
        send_pending();
    }
    if (_session.wants_tls() && !_transform && !_session.has_output())
        start_tls();
    if (_session.wants_close()) {
        if (!_send_in_flight || _peer_gone)
            start_close();
        return;
    }
    if (_shutdown && !busy()) {
        _session.shutdown();  // 421 4.3.2 between transactions
        pump();
        return;
    }
    bool want_input = !_session.input_full() && !_peer_gone;
    if (want_input && !_recv_armed) {
        _recv_armed = true;
        _cancel_sent = false;
        ++_in_flight;
        _shard.reactor().recv_multishot(_fd, _shard.buffers().group(), &_recv_op);
    } else if (!want_input && _recv_armed && !_cancel_sent) {
        // Pipelined input piled up behind a delayed reply: stop reading until it is taken.
        _cancel_sent = true;
        ++_in_flight;
        _shard.reactor().cancel(&_recv_op, &_cancel_op);
    }
}

void connection::shutdown(bool force) {
    _shutdown = true;
    if (force) {
        if (!_closing) {
            _session.on_peer_closed();
            start_close();
        }
        return;
    }
    pump();
}

void connection::start_close() {
    if (_closing)
        return;
    _closing = true;
    _reply_owed = false;
    if (_transform && !_transform->established())
        shard_counters::add(_shard.counters().tls_failures);  // a handshake that never ended
    _shard.reactor().disarm(_idle);
    _shard.reactor().disarm(_delay);
    _dump.abort();
    if (_recv_armed && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _shard.reactor().cancel(&_recv_op, &_cancel_op);
    }
    if (_send_in_flight) {
        // A peer that does not read must not hold the connection: fail the send. Counted:
        // the close waits for it (ring_fd.h).
        ++_in_flight;
        _shard.reactor().shutdown(_fd, SHUT_RDWR, &_shutdown_op);
    }
    maybe_finish();
}

void connection::maybe_finish() {
    if (!_closing || _in_flight != 0)
        return;
    if (_fd.valid()) {
        ++_in_flight;
        _shard.reactor().close(std::move(_fd), &_close_op);
        return;
    }
    if (_closed)
        _shard.forget(_id);  // destroys this
}

}  // namespace ringmail::sink
