#include "ringmail/server/outbound.h"

#include "ringmail/core/log.h"
#include "ringmail/server/shard.h"

#include <fmt/format.h>
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits.h>

namespace ringmail::server {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// A STARTTLS handshake that has not finished after this long fails the session (451 4.7.0).
constexpr auto handshake_timeout = 60s;
}  // namespace

smtp::tls_policy to_smtp_policy(core::tls_policy p) noexcept {
    switch (p) {
        case core::tls_policy::none:
            return smtp::tls_policy::none;
        case core::tls_policy::opportunistic:
            return smtp::tls_policy::opportunistic;
        case core::tls_policy::required:
            return smtp::tls_policy::required;
    }
    return smtp::tls_policy::none;
}

std::shared_ptr<const tls::client_context> make_client_tls(const core::delivery_config& d,
                                                           bool verify) {
    tls::client_options o;
    o.mode = verify ? tls::verify_mode::verify : tls::verify_mode::opportunistic;
    o.system_ca = true;
    o.extra_ca_file = d.tls_ca_file;
    std::string why;
    auto c = tls::client_context::create(o, why);
    if (!c) {
        log::error("outbound TLS ({}): {}: STARTTLS disabled", verify ? "verify" : "opportunistic",
                   why.empty() ? c.error().message() : why);
        return nullptr;
    }
    return *c;
}

outbound_connection::outbound_connection(outbound_handler& handler, shard& sh, std::uint64_t id,
                                         outbound_target target, const outbound_settings& settings)
    : _handler(handler),
      _shard(sh),
      _id(id),
      _target(std::move(target)),
      _settings(settings),
      _session(settings.client) {}

outbound_connection::~outbound_connection() = default;

bool outbound_connection::ready() const noexcept {
    return !_closing && !_busy && _session.ready() && !_stopping;
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
    _fd = core::ring_fd::adopt(*fd);
    (void)core::set_nodelay(_fd.get());
    _connecting = true;
    ++_in_flight;
    _shard.reactor().connect(_fd, _target.endpoint.addr(), _target.endpoint.len, &_connect_op);
    _shard.reactor().arm(*this, _shard.reactor().now() + _settings.connect_timeout);
}

void outbound_connection::start(const smtp::outbound_message& m) {
    _busy = true;
    _idle = false;
    _session.start_transaction(m);
    pump();
}

void outbound_connection::stop(bool force) {
    _stopping = true;
    if (force) {
        start_close();
        return;
    }
    pump();
}

void outbound_connection::on_connect(int res, std::uint32_t) {
    --_in_flight;
    _connecting = false;
    if (_closing) {
        check_finished();
        return;
    }
    if (res < 0) {
        fail(fmt::format("connect to {}: {}", core::to_string(_target.endpoint),
                         std::strerror(-res)));
        return;
    }
    _recv_armed = true;
    ++_in_flight;
    _shard.reactor().recv_multishot(_fd, _shard.buffers().group(), &_recv_op);
    pump();
}

void outbound_connection::on_recv(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _recv_armed = false;
        --_in_flight;
    }
    if (res > 0) {
        auto& bufs = _shard.buffers();
        auto bid = core::buffer_ring::buffer_id(flags);
        auto bytes = bufs.data(bid, static_cast<std::size_t>(res));
        if (!_closing) {
            if (_tls) {
                _tls->feed(
                    std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
                bufs.recycle(bid);
                tls_receive();
            } else {
                _session.receive(bytes);
                bufs.recycle(bid);
            }
        } else {
            bufs.recycle(bid);
        }
    } else if (res == 0 || (res != -ENOBUFS && res != -ECANCELED)) {
        if (!_closing) {
            if (_tls)
                _tls->on_eof();
            _session.on_connection_lost();
        }
    }
    if (!_closing && !_recv_armed && !_session.closed()) {
        _recv_armed = true;
        ++_in_flight;
        _shard.reactor().recv_multishot(_fd, _shard.buffers().group(), &_recv_op);
    }
    pump();
}

void outbound_connection::tls_receive() {
    if (_tls->handshaking())
        _tls->step();
    if (_tls->failed()) {
        if (_session.wants_tls()) {
            log::warn("{} [{}]: STARTTLS failed: {}", _target.host, _target.ip, _tls->error());
            _session.on_tls_failed(_tls->error());
        } else {
            _session.on_connection_lost();
        }
        return;
    }
    if (!_tls->established())
        return;
    if (_session.wants_tls()) {
        _shard.reactor().disarm(*this);
        _session.on_tls_established();
    }
    _plain_in.clear();
    while (_tls->read(_plain_in) > 0) {
    }
    if (!_plain_in.empty())
        _session.receive(_plain_in);
    if (_tls->failed())
        _session.on_connection_lost();
}

void outbound_connection::on_send(int res, std::uint32_t) {
    --_in_flight;
    _send_in_flight = false;
    if (_closing) {
        check_finished();
        return;
    }
    if (res < 0) {
        _session.on_connection_lost();
        pump();
        return;
    }
    if (_tls) {
        _wire_off += static_cast<std::size_t>(res);
        tls_fill();
        pump();
        return;
    }
    // Advance over what went out; resubmit the rest of a partial send.
    auto left = static_cast<std::size_t>(res);
    while (_iov_first < _iov.size() && left >= _iov[_iov_first].iov_len) {
        left -= _iov[_iov_first].iov_len;
        ++_iov_first;
    }
    if (_iov_first < _iov.size()) {
        auto& v = _iov[_iov_first];
        v.iov_base = static_cast<char*>(v.iov_base) + left;
        v.iov_len -= left;
        _msg = msghdr{};
        _msg.msg_iov = &_iov[_iov_first];
        _msg.msg_iovlen = std::min<std::size_t>(_iov.size() - _iov_first, IOV_MAX);
        _send_in_flight = true;
        ++_in_flight;
        _shard.reactor().sendmsg(_fd, &_msg, &_send_op);
        return;
    }
    _session.end_send();
    pump();
}

void outbound_connection::on_cancel(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void outbound_connection::on_shutdown(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void outbound_connection::on_close(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void outbound_connection::on_expire() {
    if (_closing)
        return;
    if (_connecting) {
        fail(fmt::format("connect to {}: timed out", core::to_string(_target.endpoint)));
        return;
    }
    if (_session.wants_tls()) {
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

void outbound_connection::send_plain(std::span<const std::string_view> pieces) {
    _iov.clear();
    for (auto p : pieces) {
        if (!p.empty())
            _iov.push_back(iovec{const_cast<char*>(p.data()), p.size()});
    }
    _iov_first = 0;
    if (_iov.empty()) {
        _session.end_send();
        return;
    }
    _msg = msghdr{};
    _msg.msg_iov = _iov.data();
    _msg.msg_iovlen = std::min<std::size_t>(_iov.size(), IOV_MAX);
    _send_in_flight = true;
    ++_in_flight;
    _shard.reactor().sendmsg(_fd, &_msg, &_send_op);
}

void outbound_connection::send_pieces() {
    if (_send_in_flight || !_fd.valid() || _connecting)
        return;
    if (_tls) {
        if (_tls->established() && !_pieces_pending) {
            auto pieces = _session.begin_send();
            if (!pieces.empty()) {
                _pieces.assign(pieces.begin(), pieces.end());
                _piece = 0;
                _piece_off = 0;
                _pieces_pending = true;
            }
        }
        tls_fill();
        return;
    }
    auto pieces = _session.begin_send();
    if (pieces.empty())
        return;
    send_plain(pieces);
}

// Ciphertext goes out one buffer at a time: plaintext pieces are encrypted until the TLS
// session's output bound, that output is sent, and the rest follows on the send's completion.
void outbound_connection::tls_fill() {
    if (_send_in_flight || !_fd.valid())
        return;
    if (_pieces_pending && _tls->established()) {
        while (_piece < _pieces.size()) {
            std::string_view rest = _pieces[_piece].substr(_piece_off);
            if (rest.empty()) {
                ++_piece;
                _piece_off = 0;
                continue;
            }
            std::size_t n = _tls->write(rest);
            _piece_off += n;
            if (n < rest.size())
                break;
        }
    }
    if (_wire_off >= _wire.size()) {
        _wire.clear();
        _wire_off = 0;
        _tls->take_output(_wire);
    }
    if (_wire_off < _wire.size()) {
        _send_in_flight = true;
        ++_in_flight;
        _shard.reactor().send(_fd, _wire.data() + _wire_off, _wire.size() - _wire_off, &_send_op);
        return;
    }
    if (_pieces_pending && _piece >= _pieces.size()) {
        _pieces_pending = false;
        _pieces.clear();
        _session.end_send();
    }
}

void outbound_connection::start_handshake() {
    if (!_settings.tls) {
        _session.on_tls_failed("no TLS client context");
        return;
    }
    _tls = std::make_unique<tls::session>(_settings.tls, _target.host);
    _tls->step();
    _shard.reactor().arm(*this, _shard.reactor().now() + handshake_timeout);
    if (_tls->failed()) {
        _session.on_tls_failed(_tls->error());
        return;
    }
    tls_fill();
}

void outbound_connection::pump() {
    if (_closing) {
        check_finished();
        return;
    }
    if (auto r = _session.take_result()) {
        _busy = false;
        ++_transactions;
        _handler.on_transaction(*this, *r);
        if (_closing) {
            check_finished();
            return;
        }
    }
    if (_session.ready())
        _established = true;
    if (!_send_in_flight)
        send_pieces();
    if (_session.wants_tls() && !_tls && !_send_in_flight)
        start_handshake();
    if (_session.closed()) {
        if (_session.failed())
            report_failure(_session.last_error());
        if (!_send_in_flight)
            start_close();
        return;
    }
    if (_session.ready() && !_busy) {
        if (_stopping ||
            (_settings.max_transactions != 0 && _transactions >= _settings.max_transactions)) {
            _session.quit();
            if (!_send_in_flight)
                send_pieces();
            _shard.reactor().arm(*this, _shard.reactor().now() + _session.current_timeout() + 1s);
            _idle = false;
            return;
        }
        _idle = true;
        if (_settings.idle_timeout.count() > 0) {
            _shard.reactor().arm(*this, _shard.reactor().now() + _settings.idle_timeout);
        } else {
            _shard.reactor().disarm(*this);
        }
        _handler.on_ready(*this);
        return;
    }
    auto t = _session.current_timeout();
    if (t.count() > 0) {
        _idle = false;
        _shard.reactor().arm(*this, _shard.reactor().now() + t);
    }
}

void outbound_connection::report_failure(const smtp::server_reply& why) {
    if (_reported_failure)
        return;
    _reported_failure = true;
    _handler.on_failed(*this, why);
}

void outbound_connection::fail(std::string_view why) {
    log::warn("{} [{}]: {}", _target.host, _target.ip, why);
    report_failure(smtp::make_reply(421, "4.4.1", why));
    start_close();
}

void outbound_connection::start_close() {
    if (_closing)
        return;
    _closing = true;
    _shard.reactor().disarm(*this);
    if ((_recv_armed || _connecting) && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _shard.reactor().cancel(_connecting ? static_cast<core::completion*>(&_connect_op)
                                            : static_cast<core::completion*>(&_recv_op),
                                &_cancel_op);
    }
    if (_send_in_flight && _fd.valid()) {
        // Counted: a shutdown runs late in a kernel worker; the close must wait for it.
        ++_in_flight;
        _shard.reactor().shutdown(_fd, SHUT_RDWR, &_shutdown_op);
    }
    check_finished();
}

void outbound_connection::check_finished() {
    if (!_closing || _in_flight != 0 || _finished)
        return;
    if (_fd.valid()) {
        ++_in_flight;
        _shard.reactor().close(std::move(_fd), &_close_op);
        return;
    }
    _finished = true;
    _handler.on_closed(*this);
}

}  // namespace ringmail::server
