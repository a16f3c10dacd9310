#include "blast/worker.h"

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

connection::connection(worker& w)
    : core::stream_connection(w.reactor(), w.buffers()), _w(w) {
    _rcpts.resize(w.p().recipients);
    _backoff.c = this;
}

// An fd still open (the shard torn down after a start-up failure) closes with the stream.
connection::~connection() = default;

void connection::open() {
    _session.emplace(_w.p().client);
    _job.reset();
    _transactions = 0;
    _cause.reset();
    _wait = wait_kind::none;
    _established = _failure_seen = false;
    _parked = _finishing = _attempt_failed = false;
    _tls = nullptr;
    _tls_up = false;
    _pieces_out = false;
    _connect_start = clock::now();
    ++_w.count().connects;
    const core::endpoint& ep = _w.p().target;
    auto fd = core::make_tcp_socket(ep.family());
    if (!fd) {
        attempt_failed(conn_error::other);
        start_close();
        return;
    }
    (void)core::set_nodelay(*fd);
    connect(core::ring_fd::adopt(*fd), ep);
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
    set_deadline(clock::now() + d);
}

void connection::on_connected(int res) {
    if (res < 0) {
        attempt_failed(errno_kind(-res));
        start_close();
        return;
    }
    pump();
}

void connection::on_received(std::string_view bytes) {
    _session->receive(bytes);
    pump();
}

void connection::on_sent() {
    if (_pieces_out) {
        _pieces_out = false;
        _session->end_send();
    }
    pump();
}

void connection::on_input_end(int err) {
    _cause = err == 0 ? conn_error::closed : errno_kind(-err);
    _session->on_connection_lost();
    pump();
}

void connection::on_deadline() {
    wait_kind k = _wait;
    _wait = wait_kind::none;
    switch (k) {
        case wait_kind::connect:
            attempt_failed(conn_error::timeout);
            start_close();
            return;
        case wait_kind::reply:
            _cause = conn_error::timeout;
            _session->on_timeout();
            pump();
            return;
        case wait_kind::none:
            return;
    }
}

void connection::on_backoff() {
    if (_w.work_remaining()) {
        open();
    } else {
        _w.slot_done();
    }
}

// The 220 to STARTTLS is in and everything before it is sent: the handshake starts (its
// time is measured from here) under the reply timeout.
void connection::start_tls() {
    auto t = std::make_unique<tls::session>(_w.tls(), _w.p().tls_host);
    _tls = t.get();
    _tls_start = clock::now();
    arm_wait(wait_kind::reply, _w.p().timeout);
    start_transform(std::move(t));  // the ClientHello goes out
}

void connection::on_transform_ready() {
    _tls_up = true;
    ++_w.count().tls_established;
    _w.stats_mut().tls.record(ns(clock::now() - _tls_start));
    _session->on_tls_established();  // EHLO again, now inside TLS
    pump();
}

void connection::on_transform_failed(std::string_view why) {
    if (!_session->closed()) {
        _cause = conn_error::tls;
        if (!_tls_up) {
            _session->on_tls_failed(why);
        } else {
            _session->on_connection_lost();  // a bad record: nothing more can be read
        }
    }
    pump();
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
        if (closing() || connecting() || !has_socket())
            return;
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
                if (closing() || _parked || _job)
                    return;  // the worker acted on us meanwhile
            }
        }
        // One batch at a time: the session's pieces, then end_send() once they are out.
        if (!sending() && !_pieces_out) {
            auto pieces = _session->begin_send();
            if (!pieces.empty()) {
                _pieces_out = true;
                send_pieces(pieces);
                if (closing())
                    return;
            }
        }
        if (!_tls && _session->wants_tls() && !sending()) {
            start_tls();
            continue;  // the handshake may have failed at once
        }
        if (_session->closed()) {
            clear_deadline();
            _wait = wait_kind::none;
            if (_parked) {
                _parked = false;
                _w.unpark(*this);
            }
            close(!_session->failed());  // a QUIT answered: what is left goes out first
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
                clear_deadline();
                _wait = wait_kind::none;
                update_input();
                return;
            }
            _finishing = true;
            _session->quit();
            continue;
        }
        auto t = _session->current_timeout();
        if (t.count() > 0) {
            arm_wait(wait_kind::reply, t);
        } else if (_session->wants_tls()) {
            // The handshake keeps the deadline start_tls() set.
        } else {
            clear_deadline();
            _wait = wait_kind::none;
        }
        update_input();
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
    _wait = wait_kind::none;
    if (_parked) {
        _parked = false;
        _w.unpark(*this);
    }
    close();
}

// The slot is free: open again at once, after a pause when the attempt failed, or not at all.
void connection::on_closed() {
    if (!_w.closed())
        return;
    if (_attempt_failed) {
        _w.reactor().arm(_backoff, clock::now() + reconnect_backoff);
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
        _connections.push_back(std::make_unique<connection>(*this));
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
