#include "blast/worker.h"

#include <climits>
#include <liburing.h>

#include "blast/message.h"
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <unistd.h>

namespace ringmail::blast {

using namespace std::chrono_literals;

namespace {
constexpr std::uint16_t recv_group = 1;
constexpr unsigned recv_buffer_size = 4096;
// Pause before a slot whose attempt failed tries again: a refused port is refused at once,
// and spinning on it would only measure our own loop.
constexpr auto reconnect_backoff = 10ms;

std::uint64_t ns(clock::duration d) {
    return d.count() > 0 ? static_cast<std::uint64_t>(
                               std::chrono::duration_cast<std::chrono::nanoseconds>(d).count())
                         : 0;
}

bool same_reply(const smtp::server_reply& a, const smtp::server_reply& b) {
    return a.code == b.code && a.enhanced == b.enhanced && a.text == b.text;
}

conn_error errno_kind(int err) {
    switch (err) {
        case ECONNREFUSED:
            return conn_error::refused;
        case ETIMEDOUT:
            return conn_error::timeout;
        case ECONNRESET:
        case EPIPE:
        case ECONNABORTED:
            return conn_error::closed;
        default:
            return conn_error::other;
    }
}
}  // namespace

// --- connection ---------------------------------------------------------------------------

connection::connection(worker& w, unsigned slot) : _w(w), _slot(slot) {
    _rcpts.resize(w.p().recipients);
}

// An fd still open (the shard torn down after a start-up failure) closes with _fd.
connection::~connection() = default;

void connection::open() {
    _session.emplace(_w.p().client);
    _job.reset();
    _transactions = 0;
    _cause.reset();
    _wait = wait_kind::none;
    _recv_armed = _send_in_flight = _established = _failure_seen = false;
    _parked = _finishing = _closing = _cancel_sent = _attempt_failed = false;
    _idle_slot = false;
    _tls.reset();
    _pieces = {};
    _pieces_held = _tls_up = _send_is_tls = false;
    _connect_start = clock::now();
    ++_w.count().connects;
    const core::endpoint& ep = _w.p().target;
    auto fd = core::make_tcp_socket(ep.family());
    if (!fd) {
        attempt_failed(conn_error::other);
        start_close();
        return;
    }
    _fd = core::ring_fd::adopt(*fd);
    (void)core::set_nodelay(_fd.get());
    _connecting = true;
    ++_in_flight;
    _w.reactor().connect(_fd, ep.addr(), ep.len, &_connect_op);
    arm_wait(wait_kind::connect, _w.p().timeout);
}

void connection::start(const job& j) {
    _parked = false;
    begin_transaction(j);
    pump();
}

void connection::finish() {
    _parked = false;
    _finishing = true;
    pump();
}

void connection::arm_wait(wait_kind k, clock::duration d) {
    _wait = k;
    _w.reactor().arm(*this, clock::now() + d);
}

void connection::arm_recv() {
    _recv_armed = true;
    ++_in_flight;
    _w.reactor().recv_multishot(_fd, _w.buffers().group(), &_recv_op);
}

void connection::on_connect(int res, std::uint32_t) {
    --_in_flight;
    _connecting = false;
    if (_closing) {
        check_finished();
        return;
    }
    if (res < 0) {
        attempt_failed(errno_kind(-res));
        start_close();
        return;
    }
    arm_recv();
    pump();
}

void connection::on_recv(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _recv_armed = false;
        --_in_flight;
    }
    if (res > 0) {
        auto& bufs = _w.buffers();
        auto bid = core::buffer_ring::buffer_id(flags);
        auto bytes = bufs.data(bid, static_cast<std::size_t>(res));
        if (!_closing)
            from_wire(bytes);
        bufs.recycle(bid);
    } else if (res == 0 || (res != -ENOBUFS && res != -ECANCELED)) {
        if (!_closing) {
            _cause = res == 0 ? conn_error::closed : errno_kind(-res);
            _session->on_connection_lost();
        }
    }
    if (!_closing && !_recv_armed && !_session->closed())
        arm_recv();
    pump();
}

void connection::on_send(int res, std::uint32_t) {
    --_in_flight;
    _send_in_flight = false;
    if (_closing) {
        check_finished();
        return;
    }
    if (res < 0) {
        // Nothing of this send is retried: release the pieces, or the next pump sends them
        // again on a dead socket.
        if (!_send_is_tls)
            _session->end_send();
        _send_is_tls = false;
        _cause = errno_kind(-res);
        _session->on_connection_lost();
        pump();
        return;
    }
    auto left = static_cast<std::size_t>(res);
    while (_iov_first < _iov.size() && left >= _iov[_iov_first].iov_len) {
        left -= _iov[_iov_first].iov_len;
        ++_iov_first;
    }
    if (_iov_first < _iov.size()) {
        auto& v = _iov[_iov_first];
        v.iov_base = static_cast<char*>(v.iov_base) + left;
        v.iov_len -= left;
        submit_send();
        return;
    }
    if (_send_is_tls) {
        _send_is_tls = false;  // the session's pieces were released when the pump took them
    } else {
        _session->end_send();
    }
    pump();
}

void connection::on_cancel(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void connection::on_shutdown(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void connection::on_close(int, std::uint32_t) {
    --_in_flight;
    check_finished();
}

void connection::on_expire() {
    wait_kind k = _wait;
    _wait = wait_kind::none;
    switch (k) {
        case wait_kind::connect:
            attempt_failed(conn_error::timeout);
            start_close();
            return;
        case wait_kind::reply:
            if (_closing)
                return;
            _cause = conn_error::timeout;
            _session->on_timeout();
            pump();
            return;
        case wait_kind::backoff:
            if (_w.work_remaining()) {
                open();
            } else {
                _w.slot_done();
            }
            return;
        case wait_kind::none:
            return;
    }
}

// The TLS seam, inbound: wire bytes to the session, through the record pump after STARTTLS.
void connection::from_wire(std::string_view bytes) {
    if (!_tls) {
        _session->receive(bytes);
        return;
    }
    _tls->feed(bytes);
    tls_progress();
}

// The 220 to STARTTLS is in and everything before it is sent: the handshake starts (its
// time is measured from here) under the reply timeout.
void connection::start_tls() {
    _tls = std::make_unique<tls::session>(_w.tls(), _w.p().tls_host);
    _tls_start = clock::now();
    arm_wait(wait_kind::reply, _w.p().timeout);
    tls_progress();  // the ClientHello
}

void connection::tls_progress() {
    _tls->step();
    if (!_tls_up && _tls->established()) {
        _tls_up = true;
        ++_w.count().tls_established;
        _w.stats_mut().tls.record(ns(clock::now() - _tls_start));
        _session->on_tls_established();  // EHLO again, now inside TLS
    }
    if (_tls_up) {
        _plain.clear();
        _tls->read(_plain);
        if (!_plain.empty())
            _session->receive(_plain);
    }
    if (_tls->failed())
        tls_failed();
}

void connection::tls_failed() {
    if (_session->closed())
        return;
    _cause = conn_error::tls;
    if (!_tls_up) {
        _session->on_tls_failed(_tls->error());
    } else {
        _session->on_connection_lost();  // a bad record: nothing more can be read
    }
}

// The TLS seam, outbound: the session's pieces as iovecs, or after STARTTLS encrypted into
// one buffer.
void connection::to_wire() {
    if (_tls) {
        to_wire_tls();
        return;
    }
    auto pieces = _session->begin_send();
    if (pieces.empty())
        return;
    _iov.clear();
    for (auto piece : pieces) {
        if (!piece.empty())
            _iov.push_back(iovec{const_cast<char*>(piece.data()), piece.size()});
    }
    _iov_first = 0;
    if (_iov.empty()) {
        _session->end_send();
        return;
    }
    submit_send();
}

void connection::to_wire_tls() {
    if (!_pieces_held && !_tls->failed()) {
        _pieces = _session->begin_send();
        _piece = _piece_offset = 0;
        _pieces_held = !_pieces.empty();
    }
    if (_pieces_held) {
        // The pump copies what it takes; it stops taking while its output holds 256 KiB, and
        // the rest waits for the next send (a large --size goes out in slices).
        while (_piece < _pieces.size()) {
            auto rest = _pieces[_piece].substr(_piece_offset);
            const std::size_t n = rest.empty() ? 0 : _tls->write(rest);
            _piece_offset += n;
            if (_piece_offset < _pieces[_piece].size())
                break;
            ++_piece;
            _piece_offset = 0;
        }
        if (_piece == _pieces.size()) {
            _pieces_held = false;
            _pieces = {};
            _session->end_send();
        }
    }
    if (_tls->failed()) {
        tls_failed();
        return;
    }
    if (!_tls->has_output())
        return;
    _cipher.clear();
    _tls->take_output(_cipher);
    _iov.assign(1, iovec{_cipher.data(), _cipher.size()});
    _iov_first = 0;
    _send_is_tls = true;
    submit_send();
}

void connection::submit_send() {
    _msg = msghdr{};
    _msg.msg_iov = &_iov[_iov_first];
    _msg.msg_iovlen = std::min<std::size_t>(_iov.size() - _iov_first, IOV_MAX);
    _send_in_flight = true;
    ++_in_flight;
    _w.reactor().sendmsg(_fd, &_msg, &_send_op);
}

void connection::begin_transaction(const job& j) {
    const plan& p = _w.p();
    _job = j;
    _tx_start = p.rate > 0 ? j.scheduled : clock::now();
    expand_address(_from, p.from, sender_number(j.index));
    for (unsigned i = 0; i < p.recipients; ++i) {
        expand_address(_rcpts[i], p.to, recipient_number(j.index, p.recipients, i, p.domains));
    }
    smtp::outbound_message m;
    m.mail_from = _from;
    m.rcpts = _rcpts;
    m.body = p.body;
    m.size = p.body.size();
    ++_w.count().sent;
    _session->start_transaction(m);
}

void connection::pump() {
    for (;;) {
        if (_closing) {
            check_finished();
            return;
        }
        const bool busy = _job.has_value();
        if (auto r = _session->take_result()) {
            // A transaction the session failed itself (timeout, loss, garbage) carries the
            // failure as its missing replies: the final reply is then the session's error.
            bool cut =
                _session->failed() && !_failure_seen && same_reply(r->data, _session->last_error());
            on_result(*r, cut);
        }
        if (_session->failed() && !_failure_seen) {
            _failure_seen = true;
            on_session_failed_busy(busy);
        }
        if (!_established && _session->ready()) {
            _established = true;
            auto& c = _w.count();
            ++c.established;
            if (_session->capabilities().pipelining)
                ++c.pipelined;
            _w.stats_mut().connect.record(ns(clock::now() - _connect_start));
            _w.attempt_succeeded();
            if (!_counted_initial) {
                _counted_initial = true;
                _w.initial_attempt_done();
                if (_closing || _parked || _job)
                    return;  // the worker acted on us meanwhile
            }
        }
        if (!_send_in_flight)
            to_wire();
        if (!_tls && _session->wants_tls() && !_send_in_flight) {
            start_tls();
            continue;  // the handshake may have failed at once
        }
        if (_session->closed()) {
            _w.reactor().disarm(*this);
            _wait = wait_kind::none;
            if (!_send_in_flight)
                start_close();
            return;
        }
        if (_session->ready() && !_job && !_parked) {
            const std::uint32_t limit = _w.p().per_connection;
            worker::next n = worker::next::finish;
            job j;
            if (!_finishing && (limit == 0 || _transactions < limit))
                n = _w.take(*this, j);
            if (n == worker::next::job) {
                begin_transaction(j);
                continue;
            }
            if (n == worker::next::wait) {
                _parked = true;
                _w.reactor().disarm(*this);
                _wait = wait_kind::none;
                return;
            }
            _finishing = true;
            _session->quit();
            if (!_send_in_flight)
                to_wire();
        }
        auto t = _session->current_timeout();
        if (t.count() > 0) {
            arm_wait(wait_kind::reply, t);
        } else if (_session->wants_tls()) {
            // The handshake keeps the deadline start_tls() set.
        } else {
            _w.reactor().disarm(*this);
            _wait = wait_kind::none;
        }
        return;
    }
}

void connection::on_result(const smtp::transaction_result& r, bool cut) {
    ++_transactions;
    const auto now = clock::now();
    _w.transaction_done(now);
    auto& c = _w.count();
    _job.reset();
    if (cut && r.data.code != 421) {
        ++c.cut;
        return;
    }
    // The reply that decided the message: MAIL's if refused; else, when no RCPT was accepted,
    // the mildest RCPT refusal (a pipelined DATA then only says "no valid recipients");
    // else the final reply to the data.
    int code = 0;
    bool any_rcpt = false;
    for (const auto& x : r.rcpts)
        any_rcpt = any_rcpt || x.positive();
    if (!r.mail.positive()) {
        code = r.mail.code;
    } else if (!any_rcpt) {
        code = 599;
        for (const auto& x : r.rcpts)
            code = std::min(code, x.code);
    } else {
        code = r.data.code;
    }
    if (r.mail.positive()) {
        for (const auto& x : r.rcpts) {
            if (!x.positive())
                ++c.rcpt_refused;
        }
    }
    if (code >= 200 && code < 300) {
        ++c.accepted;
        for (const auto& x : r.rcpts) {
            if (x.positive())
                ++c.rcpt_accepted;
        }
        _w.stats_mut().latency.record(ns(now - _tx_start));
    } else if (code >= 400 && code < 500) {
        ++c.temp_failed;
    } else {
        ++c.perm_failed;
    }
}

void connection::on_session_failed_busy(bool busy) {
    const auto& e = _session->last_error();
    conn_error kind = conn_error::rejected;
    if (_cause) {
        kind = *_cause;
    } else if (e.code == 451 && e.enhanced == "4.5.0") {
        kind = conn_error::garbage;  // malformed, unexpected or out-of-sequence reply
    } else if (e.code == 451 && e.enhanced == "4.7.0") {
        kind = conn_error::tls;  // STARTTLS not offered or refused, bytes behind its 220
    }
    if (!_established) {
        attempt_failed(kind);
        return;
    }
    if (!busy && kind == conn_error::closed) {
        ++_w.count().idle_closed;  // the server may end idle sessions; nothing was lost
        return;
    }
    ++_w.count().conn_errors[static_cast<std::size_t>(kind)];
}

void connection::attempt_failed(conn_error why) {
    ++_w.count().conn_errors[static_cast<std::size_t>(why)];
    _attempt_failed = true;
    if (!_counted_initial) {
        _counted_initial = true;
        _w.initial_attempt_done();
    }
    _w.attempt_failed();
}

void connection::start_close() {
    if (_closing)
        return;
    _closing = true;
    _w.reactor().disarm(*this);
    _wait = wait_kind::none;
    if (_parked) {
        _parked = false;
        _w.unpark(*this);
    }
    if ((_recv_armed || _connecting) && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _w.reactor().cancel(_connecting ? static_cast<core::completion*>(&_connect_op)
                                        : static_cast<core::completion*>(&_recv_op),
                            &_cancel_op);
    }
    if (_send_in_flight && _fd.valid()) {
        ++_in_flight;  // the close waits for it (ring_fd.h)
        _w.reactor().shutdown(_fd, SHUT_RDWR, &_shutdown_op);
    }
    check_finished();
}

void connection::check_finished() {
    if (!_closing || _in_flight != 0 || _idle_slot)
        return;
    if (_fd.valid()) {
        ++_in_flight;
        _w.reactor().close(std::move(_fd), &_close_op);
        return;
    }
    _idle_slot = true;
    _closing = false;
    if (!_w.closed())
        return;
    if (_attempt_failed) {
        arm_wait(wait_kind::backoff, reconnect_backoff);
    } else {
        open();
    }
}

// --- worker -------------------------------------------------------------------------------

worker::worker(const plan& p, unsigned shard, const std::atomic<bool>& stop, progress& prog)
    : _plan(p), _shard(shard), _stop(stop), _progress(prog) {
    _conns = p.connections / p.shards + (shard < p.connections % p.shards ? 1 : 0);
    _next = shard;
    _schedule_timer.w = this;
    _schedule_timer.fn = &worker::on_schedule;
    _deadline_timer.w = this;
    _deadline_timer.fn = &worker::on_deadline;
}

worker::~worker() {
    _parked.clear();
    _connections.clear();
    _tls.reset();
}

bool worker::run(std::string& why) {
    std::string rwhy;
    auto r = core::reactor::create({}, &rwhy);
    if (!r) {
        why = "io_uring: " + (rwhy.empty() ? r.error().message() : rwhy);
        return false;
    }
    _reactor = std::move(*r);
    unsigned count = std::bit_ceil(std::clamp(_conns * 4u, 64u, core::buffer_ring::max_count));
    count = std::min(count, core::buffer_ring::max_count);
    auto b = core::buffer_ring::create(*_reactor, recv_group, count, recv_buffer_size);
    if (!b) {
        why = "provided-buffer ring: " + b.error().message();
        return false;
    }
    _buffers = std::move(*b);
    if (_plan.starttls) {
        // A benchmark measures, it does not protect: encrypt to whatever certificate the
        // server shows (opportunistic, no CA store to load).
        tls::client_options o;
        o.mode = tls::verify_mode::opportunistic;
        o.system_ca = false;
        std::string twhy;
        auto ctx = tls::client_context::create(o, twhy);
        if (!ctx) {
            why = "tls: " + (twhy.empty() ? ctx.error().message() : twhy);
            return false;
        }
        _tls = std::move(*ctx);
    }
    _connections.reserve(_conns);
    for (unsigned i = 0; i < _conns; ++i)
        _connections.push_back(std::make_unique<connection>(*this, i));
    _live = _conns;
    _initial_pending = _conns;
    if (_plan.duration.count() > 0 && _plan.rate == 0)
        _reactor->arm(_deadline_timer, _plan.start + _plan.duration);
    for (auto& c : _connections)
        c->open();
    while (_live > 0) {
        _reactor->run_once(100ms);
        if (_stop.load(std::memory_order_relaxed) && !_no_more_work)
            stop_work();
        publish();
    }
    _reactor->disarm(_schedule_timer);
    _reactor->disarm(_deadline_timer);
    if (_tls)
        tls::release_thread_cache();  // this thread's wolfSSL ECC cache
    publish();
    return true;
}

void worker::publish() noexcept {
    const counters& c = _stats.c;
    _progress.sent.store(c.sent, std::memory_order_relaxed);
    _progress.accepted.store(c.accepted, std::memory_order_relaxed);
    _progress.errors.store(
        c.temp_failed + c.perm_failed + c.cut + c.not_sent + c.connection_errors(),
        std::memory_order_relaxed);
}

bool worker::work_remaining() const noexcept {
    return !_no_more_work && (_plan.limit == 0 || _next < _plan.limit);
}

std::uint64_t worker::remaining() const noexcept {
    if (_plan.limit == 0 || _next >= _plan.limit)
        return 0;
    return (_plan.limit - _next + _plan.shards - 1) / _plan.shards;
}

clock::time_point worker::scheduled(std::uint64_t index) const noexcept {
    auto offset = std::chrono::nanoseconds(
        static_cast<std::int64_t>(std::floor(static_cast<double>(index) * 1e9 / _plan.rate)));
    return _schedule_start + std::chrono::duration_cast<clock::duration>(offset);
}

worker::next worker::take(connection& c, job& out) {
    if (!work_remaining())
        return next::finish;
    if (_plan.rate == 0) {
        out = job{_next, clock::now()};
        _next += _plan.shards;
        return next::job;
    }
    if (_clock_started) {
        auto t = scheduled(_next);
        if (t <= clock::now()) {
            out = job{_next, t};
            _next += _plan.shards;
            return next::job;
        }
        if (!_schedule_timer.armed() || _schedule_timer.deadline() > t)
            _reactor->arm(_schedule_timer, t);
    }
    _parked.push_back(&c);
    return next::wait;
}

void worker::on_schedule() {
    const auto now = clock::now();
    while (!_parked.empty() && work_remaining() && scheduled(_next) <= now) {
        connection* c = _parked.front();
        _parked.pop_front();
        job j{_next, scheduled(_next)};
        _next += _plan.shards;
        c->start(j);
    }
    if (!work_remaining()) {
        stop_work();
    } else if (!_parked.empty()) {
        _reactor->arm(_schedule_timer, scheduled(_next));
    }
}

void worker::initial_attempt_done() {
    if (_initial_pending > 0)
        --_initial_pending;
    if (_initial_pending > 0 || _clock_started || _plan.rate == 0)
        return;
    // Open loop: the schedule starts once every connection of the shard is open (or failed),
    // so connection set-up is not counted as queueing.
    _clock_started = true;
    _schedule_start = clock::now();
    if (_plan.duration.count() > 0)
        _reactor->arm(_deadline_timer, _schedule_start + _plan.duration);
    if (!_parked.empty())
        _reactor->arm(_schedule_timer, scheduled(_next));
}

void worker::on_deadline() {
    if (_plan.rate > 0) {
        _stats.c.behind += remaining();
        _next = _plan.limit;
    }
    stop_work();
}

void worker::stop_work() {
    _no_more_work = true;
    _reactor->disarm(_schedule_timer);
    while (!_parked.empty()) {
        connection* c = _parked.front();
        _parked.pop_front();
        c->finish();
    }
}

void worker::transaction_done(clock::time_point when) noexcept {
    _last_outcome = std::max(_last_outcome, when);
}

void worker::attempt_failed() {
    ++_consecutive_failures;
    if (work_remaining() && _plan.limit != 0) {
        ++_stats.c.not_sent;
        _next += _plan.shards;
        _last_outcome = std::max(_last_outcome, clock::now());
    }
    if (_consecutive_failures >= 3 * _conns && !_no_more_work) {
        _stats.c.not_sent += remaining();
        _next = _plan.limit;
        stop_work();
    }
}

bool worker::closed() noexcept {
    if (work_remaining())
        return true;
    slot_done();
    return false;
}

void worker::unpark(connection& c) {
    std::erase(_parked, &c);
}

}  // namespace ringmail::blast
