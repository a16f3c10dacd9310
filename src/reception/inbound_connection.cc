#include "ringmail/reception/inbound_connection.h"

#include "ringmail/auth/secret.h"
#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"
#include "ringmail/smtp/received.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace ringmail::reception {

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

std::vector<std::string> inbound_auth::mechanisms() const {
    const auth::verifier* v = _c._host.verifier();
    if (v != nullptr && v->cram_available())
        return {"PLAIN", "LOGIN", "CRAM-MD5"};
    return {"PLAIN", "LOGIN"};
}

namespace {
// RFC 2195's challenge form, "<random.time@host>": unique per attempt, so a recorded answer
// never works twice.
std::optional<std::string> make_cram_challenge(const std::string& hostname, std::int64_t now) {
    unsigned char r[12];
    if (!auth::random_bytes(r, sizeof r))
        return std::nullopt;
    std::string s = "<";
    for (const unsigned char b : r)
        s += fmt::format("{:02x}", b);
    s += fmt::format(".{}@{}>", now, hostname);
    return s;
}
}  // namespace

smtp::auth_step inbound_auth::start(std::string_view mechanism,
                                    std::optional<std::string_view> initial_response) {
    cancel();
    host& sh = _c._host;
    if (sh.auth_limiter().blocked(_c._peer.addr(), sh.reactor().now())) {
        log::info("connection {} from {}: AUTH refused, too many failures", _c._id, _c._peer_text);
        return smtp::auth_step::failure(421, "4.7.0",
                                        "Error: too many failed authentication attempts", true);
    }
    auto m = auth::parse_mechanism(mechanism);
    if (!m)
        return smtp::auth_step::failure(504, "5.5.4", "Unrecognized authentication type");
    if (*m == auth::mechanism::cram_md5) {
        auto challenge = make_cram_challenge(sh.hostname(), sh.unix_now());
        if (!challenge) {
            log::warn("connection {}: no random bytes for a CRAM-MD5 challenge", _c._id);
            return smtp::auth_step::failure(454, "4.7.0", "Temporary authentication failure");
        }
        _mech = *m;
        _sasl.emplace(*m, std::move(*challenge));
    } else {
        _mech = *m;
        _sasl.emplace(*m);
    }
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

void inbound_auth::count(bool ok) noexcept {
    core::shard_metrics* m = _c._host.metrics();
    if (m == nullptr)
        return;
    const auto i = _mech == auth::mechanism::cram_md5 ? core::auth_mech::cram_md5
                   : _mech == auth::mechanism::login  ? core::auth_mech::login
                                                      : core::auth_mech::plain;
    m->auth[static_cast<std::size_t>(i)][ok ? 0 : 1].add();
}

smtp::auth_step inbound_auth::failed_attempt() {
    count(false);
    host& sh = _c._host;
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
    host& sh = _c._host;
    auto* v = sh.verifier();
    const bool queued = v != nullptr && v->submit(sh.shard_id(), _c._id, s.creds.user,
                                                  s.creds.password, s.creds.cram_challenge);
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
            count(true);
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

inbound_connection::inbound_connection(host& owner, std::uint64_t id, core::ring_fd fd,
                                       const core::endpoint& peer,
                                       const listener_settings& listener)
    : core::stream_connection(owner.reactor(), owner.buffers()),
      _host(owner),
      _id(id),
      _listener(listener),
      _peer(peer),
      _peer_text(core::to_string(peer)),
      _relay_allowed(owner.relay_allowed(peer)),
      _connected_at(owner.unix_now()) {
    attach(std::move(fd));
}

inbound_connection::~inbound_connection() {
    if (_writer)
        _host.spool().abort(*_writer);
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
    if (_listener.proxy_protocol) {
        // Nothing is said before the header: the balancer speaks first.
        _via_text = _peer_text;
        log::info("connect from {} (connection {}), awaiting its PROXY header", _peer_text, _id);
        _proxy.emplace();
        set_deadline(ring().now() + proxy_header_timeout);
        update_input();
        return;
    }
    log::info("connect from {} (connection {})", _peer_text, _id);
    begin_protocol({});
}

void inbound_connection::begin_protocol(std::string_view early) {
    if (_listener.implicit_tls) {
        begin_tls(early);  // the session starts once the handshake is done
    } else {
        make_session(std::nullopt);
        _session->start();
        if (!early.empty())
            _session->receive(early);
    }
    pump();
}

// --- PROXY protocol: the balancer's header, before anything else ---------------------------

void inbound_connection::proxy_input(std::string_view bytes) {
    const std::size_t n = _proxy->feed(bytes);
    if (_proxy->failed()) {
        proxy_failed(_proxy->error());
        return;
    }
    if (!_proxy->done())
        return;  // every byte taken: the rest of the header is still on its way
    const smtp::proxy_header h = _proxy->header();
    _proxy.reset();
    clear_deadline();
    if (h.local) {
        // The balancer's own connection (a health check): its address stands.
        log::info("connection {}: PROXY v{} {} from {}", _id, h.version,
                  h.version == 2 ? "LOCAL" : "UNKNOWN", _via_text);
    } else {
        _peer = h.source;
        _peer_text = core::to_string(_peer);
        _relay_allowed = _host.relay_allowed(_peer);
        log::info("connection {}: client {} via {} (PROXY v{}){}", _id, _peer_text, _via_text,
                  h.version, _relay_allowed ? ", may relay" : "");
    }
    begin_protocol(bytes.substr(n));
}

void inbound_connection::proxy_failed(std::string_view why) {
    log::warn("connection {} from {}: no valid PROXY header ({}): closed without a greeting", _id,
              _via_text, why);
    _proxy.reset();
    start_close(false);
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
    if (!_host.can_accept()) {
        log::warn("connection {}: delivery queue full, new mail deferred", _id);
        return failure(std::make_error_code(std::errc::no_space_on_device));
    }
    mail::envelope stamped = env;
    if (stamped.arrival_time == 0)
        stamped.arrival_time = _host.unix_now();
    auto w = _host.spool().begin(stamped);
    if (!w) {
        log::warn("connection {}: spool refused a new message: {}", _id, w.error().message());
        return failure(w.error());
    }
    _writer = *w;
    // Mail we send is signed; never mail accepted only because its recipient domain is ours.
    _dkim.reset();
    if (const auto& signer = _host.dkim_signer();
        signer && (_relay_allowed || (_session && _session->authenticated())))
        _dkim.emplace(signer);
    return {};
}

result<void> inbound_connection::append(std::string_view bytes) {
    if (!_writer)
        return failure(std::make_error_code(std::errc::invalid_argument));
    if (_dkim)
        _dkim->update(bytes);
    return _host.spool().append(*_writer, bytes);
}

void inbound_connection::commit() {
    auto& sp = _host.spool();
    const mail::envelope& env = _session->current_envelope();
    spool::queue_id qid = sp.writer_queue_id(*_writer);
    std::string added;
    if (_dkim) {
        auto signed_ = _dkim->finish(_host.unix_now());
        _dkim.reset();
        if (!signed_) {
            // A broken signature is never sent, and neither is our mail without its signature.
            log::warn("connection {} from {}: DKIM signing failed, message refused: {}", _id,
                      _peer_text, signed_.error().message());
            sp.abort(*_writer);
            _writer.reset();
            if (signed_.error() == dkim::errc::header_too_large) {
                _session->on_commit_reply(552, "5.3.4", "Error: header section too large to sign");
            } else {
                _session->on_commit_reply(451, "4.3.0",
                                          "Error: message could not be signed, try again");
            }
            pump();
            return;
        }
        if (signed_->headers.empty()) {
            log::info("connection {} from {}: not DKIM-signed: {}", _id, _peer_text,
                      log::sanitize(signed_->note));
        }
        added = std::move(signed_->headers);
    }
    added += smtp::format_received(env, _host.hostname(), spool::format_queue_id(qid),
                                   _host.shard_id(), _host.unix_now());
    auto w = *_writer;
    _writer.reset();
    auto id = sp.finish(w, added, _id);
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
    _dkim.reset();
    if (_writer) {
        _host.spool().abort(*_writer);
        _writer.reset();
    }
}

void inbound_connection::on_committed(const result<spool::queue_id>& id) {
    _commit_pending = false;
    if (!_session)
        return;
    if (id) {
        const auto& env = _session->current_envelope();
        const spool::queue_id_text qid = spool::format_queue_id(*id);
        log::info("{}: from=<{}>, nrcpt={}, client={} (queued)", qid, log::sanitize(env.mail_from),
                  env.rcpt_to.size(), _peer_text);
        _session->on_commit(result<std::string_view>(qid.view()));
    } else {
        log::warn("connection {}: commit failed: {}", _id, id.error().message());
        _session->on_commit(failure(id.error()));
    }
    pump();
}

// --- the stream's events ---

void inbound_connection::on_received(std::string_view bytes) {
    if (_proxy) {
        proxy_input(bytes);
        return;
    }
    if (_tls_dead || !_session)
        return;
    _session->receive(bytes);
    pump();
}

bool inbound_connection::wants_input() const {
    if (_proxy)
        return !_peer_gone;
    if (!_session || _peer_gone || _tls_dead || _session->input_full())
        return false;
    // Back-pressure: message data waits in the socket while the spool holds its budget of
    // unwritten bytes (the shard resumes us when writes complete).
    if (held_by_budget()) {
        _host.input_held();
        return false;
    }
    return true;
}

void inbound_connection::on_input_end(int err) {
    if (err < 0)
        log::debug("connection {}: {}", _id, std::strerror(-err));
    peer_gone();
}

void inbound_connection::on_deadline() {
    if (_proxy) {
        proxy_failed(fmt::format("none within {} s", proxy_header_timeout.count()));
        return;
    }
    if (_tls && _tls->handshaking() && !_tls_dead) {
        tls_broken(true, "handshake timed out");
    } else {
        log::info("connection {} from {}: timeout", _id, _peer_text);
        if (_session)
            _session->on_timeout();
    }
    pump();
    // The 421 goes out if the socket takes it (it is already on its way); no more waiting.
    start_close(false);
}

void inbound_connection::on_closed() {
    _host.connection_closed(_id);
}

void inbound_connection::peer_gone() {
    if (_peer_gone)
        return;
    _peer_gone = true;
    if (_session)
        _session->on_peer_closed();
    start_close(false);
}

// --- TLS -------------------------------------------------------------------------------------

// STARTTLS (after the 220 went out in plaintext) or the first byte of an smtps connection.
void inbound_connection::begin_tls(std::string_view early) {
    const auto& context = _host.tls_context(_listener.index);
    if (!context) {
        // STARTTLS is offered only on listeners with certificates, whose contexts every shard
        // built at start-up; smtps requires certificates.
        core::invariant_broken("connection {}: TLS requested on a listener without a context", _id);
    }
    auto t = std::make_unique<tls::session>(context, tls_limits);
    _tls = t.get();
    _handshake_deadline = ring().now() + handshake_timeout;
    const bool failed = t->failed();
    start_transform(std::move(t), early);
    if (failed)
        tls_broken(true, _tls->error());
}

void inbound_connection::tls_broken(bool handshake, std::string_view why) {
    if (_tls_dead)
        return;
    _tls_dead = true;
    if (handshake) {
        _host.count_tls_failure();
        if (core::shard_metrics* m = _host.metrics())
            m->tls_handshakes[0][static_cast<std::size_t>(core::tls_result::failed)].add();
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

void inbound_connection::on_transform_ready() {
    _tls_up = true;
    if (core::shard_metrics* m = _host.metrics())
        m->tls_handshakes[0][static_cast<std::size_t>(core::tls_result::ok)].add();
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
    pump();
}

void inbound_connection::on_transform_failed(std::string_view why) {
    tls_broken(!_tls_up, why);
    pump();
}

// --- the protocol's side ---------------------------------------------------------------------

void inbound_connection::publish_rejections() noexcept {
    core::shard_metrics* m = _host.metrics();
    if (m == nullptr || !_session)
        return;
    const auto& now = _session->stats().rejected;
    for (std::size_t i = 0; i < now.size(); ++i) {
        if (now[i] != _rejected_seen[i]) {
            m->rejected[i].add(now[i] - _rejected_seen[i]);
            _rejected_seen[i] = now[i];
        }
    }
}

void inbound_connection::pump() {
    publish_rejections();
    if (closing())
        return;
    // One batch at a time: replies made meanwhile wait for it and go out together.
    if (!_peer_gone && !_tls_dead && !sending() && _session && _session->has_output()) {
        _session->take_output(_out);
        send(_out);
    }
    // The 220 to STARTTLS has left the session (it is in the stream's plaintext batch): every
    // byte from now on belongs to the handshake.
    if (_session && _session->wants_tls() && !_session->has_output() && !_tls && !_tls_dead)
        begin_tls();
    const bool finished = _tls_dead || (_session && _session->wants_close());
    if (finished) {
        if (!_peer_gone && !_tls_dead && _session && _session->has_output())
            return;  // the last replies are handed over when the batch in flight is done
        if (_tls && _tls_up && !_tls_dead && !_tls_closing && !_peer_gone) {
            _tls_closing = true;
            end_transform();  // close_notify after the last reply
        }
        start_close(true);
        return;
    }
    if (_shutdown && !in_transaction()) {
        // Between transactions while the daemon drains: say goodbye.
        if (!_session) {
            start_close(false);  // an smtps handshake: nothing to say yet
            return;
        }
        _session->shutdown();
        pump();
        return;
    }
    if (!_session && !_tls) {
        update_input();  // still reading the PROXY header
        return;
    }
    // Deadline: a fixed one for a handshake, none while our own commit is pending or while we
    // hold the input back for the spool's budget, else the session's for its state.
    if (_tls && _tls->handshaking()) {
        set_deadline(_handshake_deadline);
    } else if (_session->awaiting_commit() || held_by_budget()) {
        clear_deadline();
    } else {
        set_deadline(ring().now() + _session->current_timeout());
    }
    update_input();
}

void inbound_connection::shutdown(bool force) {
    _shutdown = true;
    if (force) {
        if (!closing()) {
            if (_session)
                _session->on_peer_closed();
            start_close(false);
        }
        return;
    }
    pump();
}

void inbound_connection::start_close(bool flush) {
    if (!_close_logged) {
        _close_logged = true;
        log_disconnect();
    }
    _dkim.reset();
    if (_writer) {
        _host.spool().abort(*_writer);
        _writer.reset();
    }
    // A commit still pending completes without us: the message is durable and delivered, only
    // its 250 cannot be sent (the shard logs it).
    close(flush && !_peer_gone);
}

void inbound_connection::log_disconnect() {
    publish_rejections();
    const smtp::session_stats st = _session ? _session->stats() : smtp::session_stats{};
    log::info(
        "disconnect from {} (connection {}) ehlo={} helo={} mail={} rcpt={} data={} bdat={} "
        "rset={} quit={} other={} starttls={} auth={}/{} accepted={} errors={} tls={} "
        "seconds={}",
        _peer_text, _id, st.ehlo, st.helo, st.mail, st.rcpt, st.data, st.bdat, st.rset, st.quit,
        st.other, st.starttls, st.authenticated, st.auth, st.messages_accepted, st.errors,
        _tls_up ? _tls->version()
                : (_tls ? std::string_view("unfinished") : std::string_view("no")),
        _host.unix_now() - _connected_at);
}

}  // namespace ringmail::reception
