#include "sink/connection.h"

#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"

#include <fmt/format.h>

#include "sink/shard.h"
#include <cerrno>
#include <cstring>

namespace ringmail::sink {

namespace log = core::log;

connection::connection(shard& owner, std::uint64_t id, core::ring_fd fd, std::string peer_ip)
    : core::stream_connection(owner.reactor(), owner.buffers()),
      _shard(owner),
      _id(id),
      _session(owner.cfg().session,
               smtp::peer_info{.address = std::move(peer_ip), .relay_allowed = true}, *this) {
    attach(std::move(fd));
}

connection::~connection() = default;

void connection::start() {
    _last_activity = ring().now();
    set_deadline(_last_activity + _session.current_timeout());
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

// --- time ---

void connection::on_deadline() {
    auto now = ring().now();
    auto deadline = _last_activity + _session.current_timeout();
    if (_reply_owed || now < deadline) {
        // Activity since the deadline was set (or our own delay holds the session): push it
        // back once here rather than re-arming it on every read.
        set_deadline(_reply_owed ? now + _session.current_timeout() : deadline);
        return;
    }
    _session.on_timeout();
    pump();
    start_close(false);  // the 421 goes out if the socket takes it
}

void connection::on_delay() {
    if (!_reply_owed)
        return;
    final_reply();
    pump();
}

// --- the stream ---

void connection::on_received(std::string_view bytes) {
    _last_activity = ring().now();
    _session.receive(bytes);
    pump();
}

void connection::on_input_end(int err) {
    if (err < 0)
        log::debug("connection {}: {}", _id, std::strerror(-err));
    _peer_gone = true;
    _session.on_peer_closed();
    start_close(false);
}

void connection::on_transform_ready() {
    _session.on_tls_established(smtp::tls_details{.protocol = std::string(_tls->version()),
                                                  .cipher = std::string(_tls->cipher())});
    pump();
}

void connection::on_transform_failed(std::string_view why) {
    log::debug("connection {}: tls: {}", _id, why);
    if (_session.wants_tls()) {
        // Handshake failed: the pump's alert (if any) goes out, then the session closes.
        _session.on_tls_failed();
    } else {
        _peer_gone = true;
        _session.on_peer_closed();
        start_close(false);
    }
    pump();
}

void connection::on_closed() {
    _shard.forget(_id);
}

// The 220 to STARTTLS has left the session (it is the stream's plaintext batch): from here on
// every byte goes through the record pump.
void connection::start_tls() {
    const auto& ctx = _shard.tls();
    if (!ctx) {
        // STARTTLS is offered only with a certificate: a session asking without one is a bug.
        core::invariant_broken("connection {}: STARTTLS without a TLS context", _id);
    }
    auto t = std::make_unique<tls::session>(ctx);
    _tls = t.get();
    start_transform(std::move(t));
}

void connection::pump() {
    if (closing())
        return;
    if (_drop_now) {
        // Injected disconnect: no final reply; replies owed before it still go out.
        _drop_now = false;
        _session.on_peer_closed();
    }
    // One batch at a time: replies produced meanwhile wait for it and go out together.
    if (!sending() && !_peer_gone && _session.has_output()) {
        _session.take_output(_out);
        send(_out);
    }
    if (_session.wants_tls() && !_tls && !_session.has_output())
        start_tls();
    if (_session.wants_close()) {
        if (_session.has_output() && !_peer_gone)
            return;  // the last replies follow the batch in flight
        start_close(true);
        return;
    }
    if (_shutdown && !busy()) {
        _session.shutdown();  // 421 4.3.2 between transactions
        pump();
        return;
    }
    update_input();
}

void connection::shutdown(bool force) {
    _shutdown = true;
    if (force) {
        if (!closing()) {
            _session.on_peer_closed();
            start_close(false);
        }
        return;
    }
    pump();
}

void connection::start_close(bool flush) {
    if (closing())
        return;
    _reply_owed = false;
    if (_tls && !_tls->established() && !_tls_counted) {
        _tls_counted = true;
        shard_counters::add(_shard.counters().tls_failures);  // a handshake that never ended
    }
    ring().disarm(_delay);
    _dump.abort();
    close(flush && !_peer_gone);
}

}  // namespace ringmail::sink
