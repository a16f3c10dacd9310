#include "ringmail/server/inbound.h"

#include "ringmail/core/log.h"
#include "ringmail/server/delivery.h"
#include "ringmail/server/shard.h"
#include "ringmail/smtp/received.h"

#include <liburing.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace ringmail::server {

namespace log = core::log;

namespace {
// The bare IP of "a.b.c.d:port" / "[v6]:port": what the envelope and Received header record.
std::string ip_text(const core::endpoint& ep) {
    std::string t = core::to_string(ep);
    t.resize(t.rfind(':'));
    if (t.size() > 2 && t.front() == '[') t = t.substr(1, t.size() - 2);
    return t;
}
}  // namespace

inbound_connection::inbound_connection(shard& owner, std::uint64_t id, int fd,
                                       const core::endpoint& peer,
                                       const listener_settings& listener, bool relay_allowed)
    : _shard(owner),
      _id(id),
      _fd(fd),
      _peer_text(core::to_string(peer)),
      _session(listener.session,
               smtp::peer_info{.address = ip_text(peer), .relay_allowed = relay_allowed}, *this),
      _connected_at(owner.unix_now()) {}

inbound_connection::~inbound_connection() {
    if (_writer) _shard.own_spool().abort(*_writer);
}

void inbound_connection::start() {
    log::info("connect from {} (connection {})", _peer_text, _id);
    _session.start();
    pump();
}

bool inbound_connection::in_transaction() const noexcept {
    return _writer.has_value() || _commit_pending || _session.in_transaction();
}

// --- transaction_sink: the session streams the message into the shard's own spool ---

result<void> inbound_connection::begin(const smtp::envelope& env) {
    if (!_shard.outbound().can_accept()) {
        log::warn("connection {}: delivery queue full, new mail deferred", _id);
        return failure(std::make_error_code(std::errc::no_space_on_device));
    }
    smtp::envelope stamped = env;
    if (stamped.arrival_time == 0) stamped.arrival_time = _shard.unix_now();
    auto w = _shard.own_spool().begin(stamped);
    if (!w) {
        log::warn("connection {}: spool refused a new message: {}", _id, w.error().message());
        return failure(w.error());
    }
    _writer = *w;
    return {};
}

result<void> inbound_connection::append(std::string_view bytes) {
    if (!_writer) return failure(std::make_error_code(std::errc::invalid_argument));
    return _shard.own_spool().append(*_writer, bytes);
}

void inbound_connection::commit() {
    auto& sp = _shard.own_spool();
    const smtp::envelope& env = _session.current_envelope();
    spool::queue_id qid = sp.writer_queue_id(*_writer);
    std::string received = smtp::format_received(env, _shard.ctx().cfg.server.hostname,
                                                 spool::format_queue_id(qid), _shard.id(),
                                                 _shard.unix_now());
    auto w = *_writer;
    _writer.reset();
    auto id = sp.finish(w, received, _id);
    if (!id) {
        log::warn("connection {}: spool could not take the message: {}", _id,
                  id.error().message());
        _session.on_commit(failure(id.error()));
        pump();
        return;
    }
    _commit_pending = true;
    // The 250 waits for the group commit at the end of this loop iteration.
}

void inbound_connection::abort() {
    if (_writer) {
        _shard.own_spool().abort(*_writer);
        _writer.reset();
    }
}

void inbound_connection::on_committed(const result<spool::queue_id>& id) {
    if (id) {
        const auto& env = _session.current_envelope();
        log::info("{}: from=<{}>, nrcpt={}, client={} (queued)", spool::format_queue_id(*id),
                  log::sanitize(env.mail_from), env.rcpt_to.size(), _peer_text);
        _session.on_commit(result<std::string>(spool::format_queue_id(*id)));
    } else {
        log::warn("connection {}: commit failed: {}", _id, id.error().message());
        _session.on_commit(failure(id.error()));
    }
    _commit_pending = false;
    pump();
}

// --- socket side ---

void inbound_connection::on_expire() {
    if (_closing) return;
    log::info("connection {} from {}: timeout", _id, _peer_text);
    _session.on_timeout();
    pump();
    if (!_closing) start_close();  // the 421 goes out if the socket takes it; no more waiting
}

void inbound_connection::on_recv(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _recv_armed = false;
        --_in_flight;
    }
    if (res > 0) {
        auto& bufs = _shard.buffers();
        auto bid = core::buffer_ring::buffer_id(flags);
        std::string_view bytes = bufs.data(bid, static_cast<std::size_t>(res));
        if (!_closing) _session.receive(bytes);
        bufs.recycle(bid);
    } else if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
        if (res < 0) log::debug("connection {}: recv: {}", _id, std::strerror(-res));
        _peer_gone = true;
        if (!_closing) {
            _session.on_peer_closed();
            start_close();
        }
    }
    pump();
}

void inbound_connection::on_send(int res, std::uint32_t) {
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

void inbound_connection::on_cancel(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void inbound_connection::on_close(int, std::uint32_t) {
    --_in_flight;
    _closed = true;
    maybe_finish();
}

void inbound_connection::send_pending() {
    _send_in_flight = true;
    ++_in_flight;
    _shard.reactor().send(_fd, _sending.data() + _sent, _sending.size() - _sent, &_send_op);
}

void inbound_connection::pump() {
    if (_closing) {
        maybe_finish();
        return;
    }
    if (!_send_in_flight && _session.has_output() && !_peer_gone) {
        _session.take_output(_sending);
        _sent = 0;
        send_pending();
    }
    if (_session.wants_close()) {
        if (!_send_in_flight || _peer_gone) start_close();
        return;
    }
    if (_shutdown && !in_transaction()) {
        // Between transactions while the daemon drains: say goodbye.
        _session.shutdown();
        pump();
        return;
    }
    // Deadline: none while our own commit is pending, else the session's for its state.
    if (_session.awaiting_commit()) {
        _shard.reactor().disarm(*this);
    } else {
        _shard.reactor().arm(*this, _shard.reactor().now() + _session.current_timeout());
    }
    bool want_input = !_session.input_full() && !_peer_gone;
    if (want_input && !_recv_armed) {
        _recv_armed = true;
        _cancel_sent = false;
        ++_in_flight;
        _shard.reactor().recv_multishot(_fd, _shard.buffers().group(), &_recv_op);
    } else if (!want_input && _recv_armed && !_cancel_sent) {
        // Pipelined input piled up behind a commit: stop reading until the session catches up.
        _cancel_sent = true;
        ++_in_flight;
        _shard.reactor().cancel(&_recv_op, &_cancel_op);
    }
}

void inbound_connection::shutdown(bool force) {
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

void inbound_connection::start_close() {
    if (_closing) return;
    _closing = true;
    _shard.reactor().disarm(*this);
    if (_writer) {
        _shard.own_spool().abort(*_writer);
        _writer.reset();
    }
    if (_recv_armed && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _shard.reactor().cancel(&_recv_op, &_cancel_op);
    }
    if (_send_in_flight) {
        // A peer that does not read must not hold the connection: fail the send.
        _shard.reactor().shutdown(_fd, SHUT_RDWR);
    }
    const auto& st = _session.stats();
    log::info(
        "disconnect from {} (connection {}) ehlo={} helo={} mail={} rcpt={} data={} bdat={} "
        "rset={} quit={} other={} accepted={} errors={} seconds={}",
        _peer_text, _id, st.ehlo, st.helo, st.mail, st.rcpt, st.data, st.bdat, st.rset, st.quit,
        st.other, st.messages_accepted, st.errors, _shard.unix_now() - _connected_at);
    maybe_finish();
}

void inbound_connection::maybe_finish() {
    if (!_closing || _in_flight != 0) return;
    if (_commit_pending) return;  // the commit outcome still comes back here
    if (_fd >= 0) {
        ++_in_flight;
        _shard.reactor().close(_fd, &_close_op);
        _fd = -1;
        return;
    }
    if (_closed) _shard.forget(_id);  // destroys this
}

}  // namespace ringmail::server
