#include "ringmail/outbound/outbound_connection.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace ringmail::outbound {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// A STARTTLS handshake that has not finished after this long fails the session (451 4.7.0).
constexpr auto handshake_timeout = 60s;
}  // namespace

std::shared_ptr<const tls::client_context> make_client_tls(const std::string& extra_ca_file,
                                                           bool verify) {
    tls::client_options o;
    o.mode = verify ? tls::verify_mode::verify : tls::verify_mode::opportunistic;
    o.system_ca = true;
    o.extra_ca_file = extra_ca_file;
    std::string why;
    auto c = tls::client_context::create(o, why);
    if (!c) {
        log::error("outbound TLS ({}): {}: STARTTLS disabled", verify ? "verify" : "opportunistic",
                   why.empty() ? c.error().message() : why);
        return nullptr;
    }
    return *c;
}

outbound_connection::outbound_connection(link_handler& handler, core::reactor& r,
                                         core::buffer_ring& buffers, std::uint64_t id,
                                         outbound_target target, const outbound_settings& settings)
    : core::stream_connection(r, buffers),
      _handler(handler),
      _id(id),
      _target(std::move(target)),
      _settings(settings),
      _session(settings.client) {}

outbound_connection::~outbound_connection() = default;

bool outbound_connection::ready() const noexcept {
    return !closing() && !_busy && _session.ready() && !_stopping;
}

std::string_view outbound_connection::tls_version() const noexcept {
    return _tls && _tls->established() ? _tls->version() : std::string_view{};
}

void outbound_connection::connect() {
    auto fd = core::make_tcp_socket(_target.endpoint.family());
    if (!fd) {
        fail(fmt::format("socket: {}", fd.error().message()));
        return;
    }
    (void)core::set_nodelay(*fd);
    auto sock = core::ring_fd::adopt(*fd);
    if (_settings.source) {
        if (auto b = core::bind_source(sock.get(), *_settings.source); !b) {
            _bind_error = b.error() == std::errc::address_not_available ? EADDRNOTAVAIL : EINVAL;
            // The socket is the stream's, so its close goes through the ring like any other.
            attach(std::move(sock));
            fail(fmt::format("bind to source {}: {}", core::ip_text(*_settings.source),
                             b.error().message()));
            return;
        }
    }
    core::stream_connection::connect(std::move(sock), _target.endpoint);
    set_deadline(ring().now() + _settings.connect_timeout);
}

void outbound_connection::start(const smtp::outbound_message& m) {
    _busy = true;
    _idle = false;
    _offered = false;
    _session.start_transaction(m);
    if (!_offering)
        pump();
}

void outbound_connection::stop(bool force) {
    _stopping = true;
    if (force) {
        close();
        return;
    }
    pump();
}

void outbound_connection::on_connected(int res) {
    if (res < 0) {
        fail(fmt::format("connect to {}: {}", core::to_string(_target.endpoint),
                         std::strerror(-res)));
        return;
    }
    pump();
}

void outbound_connection::on_received(std::string_view bytes) {
    _session.receive(bytes);
    pump();
}

void outbound_connection::on_sent() {
    if (_pieces_out) {
        _pieces_out = false;
        _session.end_send();
    }
    pump();
}

void outbound_connection::on_input_end(int) {
    _session.on_connection_lost();
    pump();
}

void outbound_connection::on_transform_ready() {
    if (_session.wants_tls()) {
        clear_deadline();
        count_tls(core::tls_result::ok);
        _session.on_tls_established();
    }
    pump();
}

void outbound_connection::on_transform_failed(std::string_view why) {
    if (_session.wants_tls()) {
        log::warn("{} [{}]: STARTTLS failed: {}", _target.host, _target.ip, why);
        count_tls(core::tls_result::failed);
        _session.on_tls_failed(why);
    } else {
        _session.on_connection_lost();
    }
    pump();
}

void outbound_connection::on_deadline() {
    if (connecting()) {
        fail(fmt::format("connect to {}: timed out", core::to_string(_target.endpoint)));
        return;
    }
    if (_session.wants_tls()) {
        count_tls(core::tls_result::failed);
        _session.on_tls_failed("TLS handshake timed out");
        pump();
        return;
    }
    if (_idle) {
        _stopping = true;  // idle_timeout: QUIT politely
        pump();
        return;
    }
    _session.on_timeout();
    pump();
}

void outbound_connection::start_handshake() {
    if (!_settings.tls) {
        _session.on_tls_failed("no TLS client context");
        return;
    }
    auto t = std::make_unique<tls::session>(_settings.tls, _target.host);
    t->step();  // the ClientHello
    if (t->failed()) {
        _session.on_tls_failed(t->error());
        return;
    }
    _tls = t.get();
    set_deadline(ring().now() + handshake_timeout);
    start_transform(std::move(t));
}

void outbound_connection::pump() {
    if (closing() || connecting() || !has_socket())
        return;
    while (auto r = _session.take_result()) {
        _busy = _session.transaction_open();
        _offered = false;
        ++_transactions;
        _handler.on_transaction(*this, *r);
        if (closing())
            return;
    }
    if (_session.ready())
        _established = true;
    if (_session.ready() && !_busy &&
        (_stopping ||
         (_settings.max_transactions != 0 && _transactions >= _settings.max_transactions))) {
        _session.quit();
        set_deadline(ring().now() + _session.current_timeout() + 1s);
        _idle = false;
    }
    // Before the data goes out: the next transaction may join its send (one transaction
    // runs, so the limit allows the next only when two more fit).
    if (!_offered && !_stopping && _session.can_pipeline() &&
        (_settings.max_transactions == 0 || _transactions + 2 <= _settings.max_transactions)) {
        _offered = true;
        _offering = true;
        _handler.on_pipeline(*this);
        _offering = false;
        if (closing())
            return;
    }
    // One batch at a time: the session's pieces, then end_send() when they are on the wire.
    if (!sending() && !_pieces_out) {
        auto pieces = _session.begin_send();
        if (!pieces.empty()) {
            _pieces_out = true;
            send_pieces(pieces, _session.file_backed_body());
            if (closing())
                return;
        }
    }
    if (_session.wants_tls() && !_tls && !sending())
        start_handshake();
    if (_session.closed()) {
        if (_session.failed()) {
            report_failure(_session.last_error());
            close();  // nothing more is worth sending on a failed session
        } else {
            close(true);  // the QUIT is answered: what is left goes out first
        }
        return;
    }
    if (_session.ready() && !_busy && !_stopping) {
        _idle = true;
        if (_settings.idle_timeout.count() > 0) {
            set_deadline(ring().now() + _settings.idle_timeout);
        } else {
            clear_deadline();
        }
        update_input();
        _handler.on_ready(*this);
        return;
    }
    auto t = _session.current_timeout();
    if (t.count() > 0 && !_session.wants_tls()) {
        _idle = false;
        set_deadline(ring().now() + t);
    }
    update_input();
}

void outbound_connection::report_failure(const smtp::server_reply& why) {
    if (_reported_failure)
        return;
    _reported_failure = true;
    _handler.on_failed(*this, why);
}

void outbound_connection::fail(std::string_view why) {
    log::warn("{} [{}]: {}", _target.host, _target.ip, why);
    report_failure(smtp::make_reply(421, "4.4.1", why, smtp::local_failure::connect));
    close();
}

}  // namespace ringmail::outbound
