#include "ringmail/server/inbound.h"

#include "ringmail/auth/secret.h"
#include "ringmail/core/log.h"
#include "ringmail/server/delivery.h"
#include "ringmail/server/shard.h"
#include "ringmail/smtp/received.h"

#include <fmt/format.h>
#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <sys/socket.h>

namespace ringmail::server {

namespace log = core::log;

namespace {
// A handshake must finish within this (RFC 3207 leaves it to the server); a slow or silent
// client is closed, not kept.
constexpr auto handshake_timeout = std::chrono::seconds(30);
// The pump's bounds: ciphertext waiting to be decrypted, and plaintext handed to the session
// per read (the session holds at most max_buffered_input behind a commit, plus one read).
constexpr tls::session_limits tls_limits{256 * 1024, 256 * 1024, 16 * 1024};
}  // namespace

// --- AUTH: SASL on the shard, password checks on the verifier's threads ---

smtp::auth_step inbound_auth::start(std::string_view mechanism,
                                    std::optional<std::string_view> initial_response) {
    cancel();
    shard& sh = _c._shard;
    if (sh.auth_limiter().blocked(_c._peer.addr(), sh.reactor().now())) {
        log::info("connection {} from {}: AUTH refused, too many failures", _c._id, _c._peer_text);
        return smtp::auth_step::failure(421, "4.7.0",
                                        "Error: too many failed authentication attempts", true);
    }
    auto m = auth::parse_mechanism(mechanism);
    if (!m)
        return smtp::auth_step::failure(504, "5.5.4", "Unrecognized authentication type");
    _sasl.emplace(*m);
    std::optional<std::string_view> ir;
    if (initial_response)
        ir = initial_response->empty() ? std::string_view("=") : *initial_response;
    return apply(_sasl->start(ir));
}

smtp::auth_step inbound_auth::step(std::string_view response) {
    if (!_sasl || _sasl->finished()) {
        return smtp::auth_step::failure(503, "5.5.1", "Error: no authentication in progress");
    }
    return apply(_sasl->respond(response));
}

void inbound_auth::cancel() noexcept {
    _sasl.reset();
    _pending = false;
    auth::wipe(_user);
}

smtp::auth_step inbound_auth::failed_attempt() {
    shard& sh = _c._shard;
    sh.auth_limiter().record_failure(_c._peer.addr(), sh.reactor().now());
    return smtp::auth_step::failure(535, "5.7.8", "Error: authentication failed");
}

smtp::auth_step inbound_auth::apply(auth::sasl_step s) {
    switch (s.what) {
        case auth::sasl_step::kind::challenge:
            return smtp::auth_step::challenge(std::move(s.challenge));
        case auth::sasl_step::kind::failure: {
            _sasl.reset();
            if (s.failure.code == 535)
                return failed_attempt();
            return smtp::auth_step::failure(s.failure.code, std::string(s.failure.enhanced),
                                            std::string(s.failure.text));
        }
        case auth::sasl_step::kind::credentials:
            break;
    }
    _sasl.reset();
    shard& sh = _c._shard;
    auto* v = sh.ctx().verifier.get();
    const bool queued = v != nullptr && v->submit(sh.id(), _c._id, s.creds.user, s.creds.password);
    auth::wipe(s.creds.password);
    if (!queued) {
        log::warn("connection {}: AUTH deferred, verifier queue full", _c._id);
        return smtp::auth_step::failure(454, "4.7.0", "Temporary authentication failure");
    }
    _user = std::move(s.creds.user);
    _pending = true;
    return smtp::auth_step::pending();
}

std::optional<smtp::auth_step> inbound_auth::on_verdict(auth::verdict v) {
    if (!_pending)
        return std::nullopt;  // the exchange was dropped meanwhile
    _pending = false;
    switch (v) {
        case auth::verdict::ok:
            log::info("connection {} from {}: authenticated as {}", _c._id, _c._peer_text,
                      log::sanitize(_user));
            return smtp::auth_step::success(std::move(_user));
        case auth::verdict::fail:
            log::info("connection {} from {}: AUTH failed for {}", _c._id, _c._peer_text,
                      log::sanitize(_user));
            auth::wipe(_user);
            return failed_attempt();
        case auth::verdict::temporary:
            break;
    }
    auth::wipe(_user);
    return smtp::auth_step::failure(454, "4.7.0", "Temporary authentication failure");
}

// --- the connection ---

inbound_connection::inbound_connection(shard& owner, std::uint64_t id, core::ring_fd fd,
                                       const core::endpoint& peer,
                                       const listener_settings& listener, bool relay_allowed)
    : _shard(owner),
      _id(id),
      _fd(std::move(fd)),
      _listener(listener),
      _peer(peer),
      _peer_text(core::to_string(peer)),
      _relay_allowed(relay_allowed),
      _connected_at(owner.unix_now()) {}

inbound_connection::~inbound_connection() {
    if (_writer)
        _shard.own_spool().abort(*_writer);
}

void inbound_connection::make_session(std::optional<smtp::tls_details> tls) {
    _session.emplace(_listener.session,
                     smtp::peer_info{.address = core::ip_text(_peer),
                                     .relay_allowed = _relay_allowed,
                                     .tls = std::move(tls)},
                     static_cast<smtp::transaction_sink&>(*this),
                     _listener.auth ? static_cast<smtp::auth_backend*>(&_auth) : nullptr);
}

void inbound_connection::start() {
    log::info("connect from {} (connection {})", _peer_text, _id);
    if (_listener.implicit_tls) {
        begin_tls();  // the session starts once the handshake is done
    } else {
        make_session(std::nullopt);
        _session->start();
    }
    pump();
}

void inbound_connection::on_auth_verdict(auth::verdict v) {
    auto step = _auth.on_verdict(v);
    if (!step || !_session)
        return;
    _session->on_auth_result(std::move(*step));
    pump();
}

bool inbound_connection::in_transaction() const noexcept {
    return _writer.has_value() || _commit_pending || (_session && _session->in_transaction());
}

// --- transaction_sink: the session streams the message into the shard's own spool ---

result<void> inbound_connection::begin(const mail::envelope& env) {
    if (!_shard.outbound().can_accept()) {
        log::warn("connection {}: delivery queue full, new mail deferred", _id);
        return failure(std::make_error_code(std::errc::no_space_on_device));
    }
    mail::envelope stamped = env;
    if (stamped.arrival_time == 0)
        stamped.arrival_time = _shard.unix_now();
    auto w = _shard.own_spool().begin(stamped);
    if (!w) {
        log::warn("connection {}: spool refused a new message: {}", _id, w.error().message());
        return failure(w.error());
    }
    _writer = *w;
    return {};
}

result<void> inbound_connection::append(std::string_view bytes) {
    if (!_writer)
        return failure(std::make_error_code(std::errc::invalid_argument));
    return _shard.own_spool().append(*_writer, bytes);
}

void inbound_connection::commit() {
    auto& sp = _shard.own_spool();
    const mail::envelope& env = _session->current_envelope();
    spool::queue_id qid = sp.writer_queue_id(*_writer);
    std::string received =
        smtp::format_received(env, _shard.ctx().cfg.server.hostname, spool::format_queue_id(qid),
                              _shard.id(), _shard.unix_now());
    auto w = *_writer;
    _writer.reset();
    auto id = sp.finish(w, received, _id);
    if (!id) {
        log::warn("connection {}: spool could not take the message: {}", _id, id.error().message());
        _session->on_commit(failure(id.error()));
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
        const auto& env = _session->current_envelope();
        log::info("{}: from=<{}>, nrcpt={}, client={} (queued)", spool::format_queue_id(*id),
                  log::sanitize(env.mail_from), env.rcpt_to.size(), _peer_text);
        _session->on_commit(result<std::string>(spool::format_queue_id(*id)));
    } else {
        log::warn("connection {}: commit failed: {}", _id, id.error().message());
        _session->on_commit(failure(id.error()));
    }
    _commit_pending = false;
    pump();
}

// --- socket side ---

void inbound_connection::on_expire() {
    if (_closing)
        return;
    if (_tls && _tls->handshaking() && !_tls_dead) {
        tls_broken(true, "handshake timed out");
    } else {
        log::info("connection {} from {}: timeout", _id, _peer_text);
        if (_session)
            _session->on_timeout();
    }
    pump();
    if (!_closing)
        start_close();  // the 421 goes out if the socket takes it; no more waiting
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
        if (!_closing && !_tls_dead) {
            if (_tls) {
                _cipher_in.append(bytes);  // the pump takes it as far as it has room
            } else if (_session) {
                _session->receive(bytes);
            }
        }
        bufs.recycle(bid);
    } else if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
        if (res < 0)
            log::debug("connection {}: recv: {}", _id, std::strerror(-res));
        if (_tls && !_tls_dead)
            tls_input();  // what arrived before the end still counts
        peer_gone();
    }
    pump();
}

void inbound_connection::on_send(int res, std::uint32_t) {
    --_in_flight;
    _send_in_flight = false;
    if (res < 0) {
        log::debug("connection {}: send: {}", _id, std::strerror(-res));
        _sending.clear();
        _sent = 0;
        peer_gone();
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

void inbound_connection::on_shutdown(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void inbound_connection::on_close(int, std::uint32_t) {
    --_in_flight;
    _closed = true;
    maybe_finish();
}

void inbound_connection::peer_gone() {
    _peer_gone = true;
    if (_closing)
        return;
    if (_session)
        _session->on_peer_closed();
    start_close();
}

void inbound_connection::send_pending() {
    _send_in_flight = true;
    ++_in_flight;
    _shard.reactor().send(_fd, _sending.data() + _sent, _sending.size() - _sent, &_send_op);
}

// --- TLS -------------------------------------------------------------------------------------

// STARTTLS (after the 220 went out in plaintext) or the first byte of an smtps connection.
void inbound_connection::begin_tls() {
    const auto& context = _shard.tls_context(_listener.index);
    if (!context) {
        // STARTTLS is offered only on listeners with certificates, whose contexts every shard
        // built at start-up; smtps requires certificates.
        log::error("connection {}: TLS requested on a listener without a context", _id);
        std::abort();
    }
    _tls = std::make_unique<tls::session>(context, tls_limits);
    _handshake_deadline = _shard.reactor().now() + handshake_timeout;
    if (_tls->failed())
        tls_broken(true, _tls->error());
}

void inbound_connection::tls_broken(bool handshake, std::string_view why) {
    if (_tls_dead)
        return;
    _tls_dead = true;
    _plain_out.clear();
    if (handshake) {
        _shard.count_tls_failure();
        log::info("connection {} from {}: TLS handshake failed: {}", _id, _peer_text, why);
    } else {
        log::info("connection {} from {}: TLS error: {}", _id, _peer_text, why);
    }
    if (_session) {
        if (_session->wants_tls()) {
            _session->on_tls_failed();
        } else {
            _session->on_peer_closed();  // an open transaction is dropped, as on a reset
        }
    }
}

// Ciphertext received -> handshake or plaintext -> session, as far as each side has room.
void inbound_connection::tls_input() {
    if (!_tls || _tls_dead || _closing || _in_tls_input)
        return;
    _in_tls_input = true;
    while (!_closing && !_tls_dead) {
        bool progress = false;
        if (_cipher_pos < _cipher_in.size()) {
            std::size_t room =
                tls_limits.max_input - std::min(tls_limits.max_input, _tls->buffered_input());
            std::size_t n = std::min(room, _cipher_in.size() - _cipher_pos);
            if (n > 0) {
                _tls->feed(std::string_view(_cipher_in).substr(_cipher_pos, n));
                _cipher_pos += n;
                progress = true;
            }
            if (_cipher_pos == _cipher_in.size()) {
                _cipher_in.clear();
                _cipher_pos = 0;
            }
        }
        if (_tls->handshaking())
            _tls->step();
        if (_tls->failed()) {
            tls_broken(!_tls_up, _tls->error());
            break;
        }
        if (_tls->handshaking()) {
            if (!progress)
                break;
            continue;
        }
        if (!_tls_up) {
            _tls_up = true;
            smtp::tls_details d{std::string(_tls->version()), std::string(_tls->cipher())};
            log::info("connection {} from {}: TLS {} {}{}{}", _id, _peer_text, d.protocol, d.cipher,
                      _tls->resumed() ? " (resumed)" : "",
                      _tls->server_name().empty()
                          ? std::string()
                          : fmt::format(" sni={}", log::sanitize(_tls->server_name())));
            if (_session) {
                _session->on_tls_established(std::move(d));
            } else {
                make_session(std::move(d));
                _session->start();
            }
            progress = true;
        }
        if (!_session || _session->wants_close() || _session->input_full())
            break;
        _plain_in.clear();
        std::size_t n = _tls->read(_plain_in);
        if (_tls->failed()) {
            tls_broken(false, _tls->error());
            break;
        }
        if (n > 0) {
            _session->receive(_plain_in);
            progress = true;
        }
        if (!progress)
            break;
    }
    _in_tls_input = false;
    if (!_closing && !_tls_dead && _tls->close_notify_received())
        peer_gone();
}

// --- output ----------------------------------------------------------------------------------

bool inbound_connection::output_pending() const noexcept {
    if (_send_in_flight)
        return true;
    if (_tls)
        return _tls->has_output() || (!_tls_dead && !_plain_out.empty());
    return _session && _session->has_output();
}

void inbound_connection::flush_output() {
    if (_peer_gone)
        return;
    if (_tls) {
        if (!_tls_dead && _tls->established()) {
            for (;;) {
                if (_plain_out.empty() && _session && _session->has_output()) {
                    _session->take_output(_plain_out);
                }
                if (_plain_out.empty())
                    break;
                std::size_t n = _tls->write(_plain_out);
                if (n == 0)
                    break;  // the pump's output is full: more after this send
                _plain_out.erase(0, n);
            }
            if (_tls->failed())
                tls_broken(false, _tls->error());
        }
        if (!_send_in_flight && _tls->has_output()) {
            _sending.clear();
            _tls->take_output(_sending);
            _sent = 0;
            send_pending();
        }
        return;
    }
    if (!_session)
        return;
    if (!_send_in_flight && _session->has_output()) {
        _session->take_output(_sending);
        _sent = 0;
        send_pending();
    }
    // The 220 to STARTTLS has left the session (it goes out in plaintext): every byte from
    // now on belongs to the handshake.
    if (_session->wants_tls() && !_session->has_output())
        begin_tls();
}

void inbound_connection::pump() {
    if (_closing) {
        maybe_finish();
        return;
    }
    tls_input();
    if (_closing) {
        maybe_finish();
        return;
    }
    flush_output();
    const bool finished = _tls_dead || (_session && _session->wants_close());
    if (finished) {
        if (_tls && _tls_up && !_tls_dead && !_tls_closing && _plain_out.empty() && !_peer_gone) {
            _tls_closing = true;
            _tls->close();  // close_notify after the last reply
            flush_output();
        }
        if (!output_pending() || _peer_gone)
            start_close();
        return;
    }
    if (_shutdown && !in_transaction()) {
        // Between transactions while the daemon drains: say goodbye.
        if (!_session) {
            start_close();  // an smtps handshake: nothing to say yet
            return;
        }
        _session->shutdown();
        pump();
        return;
    }
    // Deadline: a fixed one for a handshake, none while our own commit is pending, else the
    // session's for its state.
    if (_tls && _tls->handshaking()) {
        _shard.reactor().arm(*this, _handshake_deadline);
    } else if (_session->awaiting_commit()) {
        _shard.reactor().disarm(*this);
    } else {
        _shard.reactor().arm(*this, _shard.reactor().now() + _session->current_timeout());
    }
    bool want_input = !_peer_gone;
    if (_tls) {
        // Ciphertext the pump could not take yet: stop reading until it has room again.
        want_input = want_input && _cipher_pos == _cipher_in.size() && !_tls->input_full();
    } else {
        want_input = want_input && !_session->input_full();
    }
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
            if (_session)
                _session->on_peer_closed();
            start_close();
        }
        return;
    }
    pump();
}

void inbound_connection::start_close() {
    if (_closing)
        return;
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
        // A peer that does not read must not hold the connection: fail the send. Counted like
        // every operation naming the fd: the kernel runs a shutdown late, in a worker, and it
        // must not find the number already closed and handed to another socket.
        ++_in_flight;
        _shard.reactor().shutdown(_fd, SHUT_RDWR, &_shutdown_op);
    }
    const smtp::session_stats st = _session ? _session->stats() : smtp::session_stats{};
    log::info(
        "disconnect from {} (connection {}) ehlo={} helo={} mail={} rcpt={} data={} bdat={} "
        "rset={} quit={} other={} starttls={} auth={}/{} accepted={} errors={} tls={} "
        "seconds={}",
        _peer_text, _id, st.ehlo, st.helo, st.mail, st.rcpt, st.data, st.bdat, st.rset, st.quit,
        st.other, st.starttls, st.authenticated, st.auth, st.messages_accepted, st.errors,
        _tls_up ? _tls->version()
                : (_tls ? std::string_view("unfinished") : std::string_view("no")),
        _shard.unix_now() - _connected_at);
    maybe_finish();
}

void inbound_connection::maybe_finish() {
    if (!_closing || _in_flight != 0)
        return;
    if (_commit_pending)
        return;  // the commit outcome still comes back here
    if (_fd.valid()) {
        ++_in_flight;
        _shard.reactor().close(std::move(_fd), &_close_op);
        return;
    }
    if (_closed)
        _shard.forget(_id);  // destroys this
}

}  // namespace ringmail::server
