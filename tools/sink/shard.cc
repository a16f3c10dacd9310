#include "sink/shard.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include "sink/connection.h"
#include <cerrno>
#include <cstring>
#include <sys/eventfd.h>
#include <unistd.h>

namespace ringmail::sink {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// Recv buffers per shard: every busy session can have a read in flight. 16 MiB per shard.
constexpr unsigned recv_buffer_count = 1024;
constexpr unsigned recv_buffer_size = 16384;
constexpr std::uint16_t recv_buffer_group = 1;
// How long a stop waits for open transactions (plus --delay-ms) before closing what is left.
constexpr auto drain_grace = 2s;

}  // namespace

shard::shard(unsigned id, const sink_config& cfg, std::vector<int> listen_fds)
    : _id(id), _cfg(cfg), _listen_fds(std::move(listen_fds)), _inject(cfg.inject, cfg.seed, id) {
    _wake_fd = ::eventfd(0, EFD_CLOEXEC);
}

shard::~shard() {
    _connections.clear();
    _listeners.clear();
    _tls.reset();
    _buffers.reset();
    _reactor.reset();
    for (int fd : _listen_fds)
        ::close(fd);  // those no listener took over
    if (_wake_fd >= 0)
        ::close(_wake_fd);
}

void shard::request_stop() noexcept {
    _stop_requested.store(true, std::memory_order_release);
    std::uint64_t one = 1;
    if (_wake_fd >= 0) {
        [[maybe_unused]] auto n = ::write(_wake_fd, &one, sizeof one);
    }
}

std::int64_t shard::now_ns() const noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(_reactor->now().time_since_epoch())
        .count();
}

bool shard::start(std::string& why) {
    if (_wake_fd < 0) {
        why = fmt::format("eventfd: {}", std::strerror(errno));
        return false;
    }
    std::string rwhy;
    auto r = core::reactor::create({}, &rwhy);
    if (!r) {
        why = fmt::format("io_uring: {}", rwhy.empty() ? r.error().message() : rwhy);
        return false;
    }
    _reactor = std::move(*r);
    auto b = core::buffer_ring::create(*_reactor, recv_buffer_group, recv_buffer_count,
                                       recv_buffer_size);
    if (!b) {
        why = fmt::format("provided-buffer ring: {}", b.error().message());
        return false;
    }
    _buffers = std::move(*b);
    if (_cfg.tls_credentials) {
        // Built here, on the shard's thread: a context belongs to the shard that uses it.
        std::string twhy;
        auto ctx = tls::server_context::create(_cfg.tls_credentials, _cfg.tls_tickets, twhy);
        if (!ctx) {
            why = fmt::format("tls: {}", twhy.empty() ? ctx.error().message() : twhy);
            return false;
        }
        _tls = std::move(*ctx);
    }
    for (int fd : _listen_fds)
        _listeners.push_back(std::make_unique<core::acceptor>(
            *_reactor, core::ring_fd::adopt(fd), true, "sink listener",
            [this](core::ring_fd conn) { accepted_connection(std::move(conn)); }));
    _listen_fds.clear();
    arm_wake();
    for (auto& l : _listeners)
        l->arm();
    return true;
}

void shard::run() {
    std::string why;
    if (!start(why)) {
        _startup_error = std::move(why);
        _status.store(startup_state::failed, std::memory_order_release);
        return;
    }
    _status.store(startup_state::ready, std::memory_order_release);
    while (!_stopped) {
        _reactor->run_once(1s);
        if (!_draining)
            continue;
        if (_reactor->now() >= _drain_deadline) {
            for (auto& [id, c] : _connections)
                c->shutdown(true);
        }
        bool listeners_done = true;
        for (const auto& l : _listeners)
            listeners_done = listeners_done && l->done();
        if (_connections.empty() && listeners_done)
            _stopped = true;
    }
    if (_tls)
        tls::release_thread_cache();  // this thread's wolfSSL ECC cache
    _status.store(startup_state::stopped, std::memory_order_release);
}

void shard::arm_wake() {
    if (_wake_armed)
        return;
    _wake_armed = true;
    _reactor->read(_wake_fd, &_wake_buf, sizeof _wake_buf, &_wake_op);
}

void shard::on_wake(int, std::uint32_t) {
    _wake_armed = false;
    if (_stop_requested.load(std::memory_order_acquire) && !_draining)
        begin_drain();
    if (!_stopped)
        arm_wake();
}

void shard::begin_drain() {
    _draining = true;
    _drain_deadline = _reactor->now() + drain_grace + _cfg.delay;
    for (auto& l : _listeners)
        l->close();
    // shutdown() may close and forget connections: iterate over a snapshot of ids.
    std::vector<std::uint64_t> ids;
    ids.reserve(_connections.size());
    for (auto& [id, c] : _connections)
        ids.push_back(id);
    for (auto id : ids) {
        auto it = _connections.find(id);
        if (it != _connections.end())
            it->second->shutdown(false);
    }
}

void shard::accepted_connection(core::ring_fd fd) {
    if (_counters.first_connection_ns.load(std::memory_order_relaxed) == 0) {
        shard_counters::set(_counters.first_connection_ns, now_ns());
    }
    // TCP_NODELAY comes from the listening socket (Linux copies it to accepted sockets), so
    // the fast path makes no setsockopt. The peer address is only needed by --dump.
    std::string peer;
    if (!_cfg.dump_dir.empty()) {
        if (auto p = core::peer_endpoint(fd.get()))
            peer = core::ip_text(*p);
    }
    std::uint64_t id = _next_conn_id++;
    auto c = std::make_unique<connection>(*this, id, std::move(fd), std::move(peer));
    auto* raw = c.get();
    _connections.emplace(id, std::move(c));
    raw->start();
}

void shard::forget(std::uint64_t connection_id) {
    _connections.erase(connection_id);
}

}  // namespace ringmail::sink
