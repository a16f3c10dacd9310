#include "sink/shard.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include "sink/connection.h"
#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace ringmail::sink {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// How long a stop waits for open transactions (plus --delay-ms) before closing what is left.
constexpr auto drain_grace = 2s;

core::shard_options options_for(const sink_config& cfg) {
    core::shard_options o;
    // Recv buffers per shard: every busy session can have a read in flight. 16 MiB per shard.
    o.recv_buffers = 1024;
    o.recv_buffer_size = 16384;
    o.drain_timeout =
        std::chrono::duration_cast<std::chrono::milliseconds>(drain_grace) + cfg.delay;
    return o;
}
}  // namespace

shard::shard(unsigned id, const sink_config& cfg, std::vector<int> listen_fds)
    : core::shard_base(id, options_for(cfg)),
      _cfg(cfg),
      _listen_fds(std::move(listen_fds)),
      _inject(cfg.inject, cfg.seed, id) {}

shard::~shard() {
    _connections.clear();
    _listeners.clear();
    _tls.reset();
    for (int fd : _listen_fds)
        ::close(fd);  // those no listener took over
}

std::int64_t shard::now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(reactor().now().time_since_epoch())
        .count();
}

bool shard::start(std::string& why) {
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
            reactor(), core::ring_fd::adopt(fd), true, "sink listener",
            [this](core::ring_fd conn) { accepted_connection(std::move(conn)); }));
    _listen_fds.clear();
    reactor().on_iteration_end([this] { _connections.reap(); });
    for (auto& l : _listeners)
        l->arm();
    return true;
}

void shard::stopped() {
    if (_tls)
        tls::release_thread_cache();  // this thread's wolfSSL ECC cache
}

void shard::begin_drain() {
    for (auto& l : _listeners)
        l->close();
    _connections.for_each([](connection& c) { c.shutdown(false); });
}

bool shard::drained(bool late) {
    if (late) {
        _connections.for_each([](connection& c) { c.shutdown(true); });
    }
    const bool listeners_done =
        std::all_of(_listeners.begin(), _listeners.end(), [](const auto& l) { return l->done(); });
    return _connections.empty() && listeners_done;
}

void shard::accepted_connection(core::ring_fd fd) {
    check_shard();
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
    const std::uint64_t id = _connections.next_id();
    _connections.add(id, std::make_unique<connection>(*this, id, std::move(fd), std::move(peer)))
        .start();
}

void shard::forget(std::uint64_t connection_id) {
    check_shard();
    _connections.retire(connection_id);
}

}  // namespace ringmail::sink
