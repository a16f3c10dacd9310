#include "ringmail/server/shard.h"

#include "ringmail/core/acceptor.h"
#include "ringmail/core/log.h"
#include "ringmail/core/oncore.h"
#include "ringmail/server/delivery.h"
#include "ringmail/server/delivery_log.h"
#include "ringmail/server/inbound.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <sys/eventfd.h>
#include <unistd.h>

namespace ringmail::server {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// How long a drain waits for open transactions and deliveries before closing what is left
// (acknowledged messages are durable: what did not go out is delivered after a restart).
constexpr auto drain_timeout = 30s;
// Recv buffers per shard: enough for every busy session to have a read in flight.
constexpr unsigned recv_buffer_count = 2048;  // 32 MiB per shard
constexpr unsigned recv_buffer_size = 16384;
constexpr std::uint16_t recv_buffer_group = 1;
}  // namespace

namespace {
// A connection refused at accept time (too many connections, draining): one 421 line, then
// close. Deletes itself when its last operation completes.
class refusal final {
  public:
    refusal(core::reactor& r, core::ring_fd fd, std::string line)
        : _r(r), _fd(std::move(fd)), _line(std::move(line)) {
        _r.send(_fd, _line.data(), _line.size(), &_op);
    }

  private:
    void on_sent(int, std::uint32_t) {
        _r.close(std::move(_fd));
        delete this;
    }
    core::reactor& _r;
    core::ring_fd _fd;
    std::string _line;
    core::member_completion<refusal, &refusal::on_sent> _op{this};
};
}  // namespace

void shard::spool_slot::on_written(int res, std::uint32_t) {
    owner->batch_done(*this, res);
}

namespace {
auth::failure_limiter_options limiter_options(const core::auth_config& a) {
    auth::failure_limiter_options o;
    o.max_failures = a.max_failures;
    o.window = a.failure_window;
    return o;
}
}  // namespace

shard::shard(unsigned id, const daemon_context& ctx)
    : _id(id), _ctx(ctx), _auth_limiter(limiter_options(ctx.cfg.auth)) {
    _wake_fd = ::eventfd(0, EFD_CLOEXEC);
}

shard::~shard() {
    _connections.clear();
    _delivery.reset();
    _events.reset();
    _listeners.clear();
    _buffers.reset();
    _reactor.reset();
    _spools.clear();
    if (_wake_fd >= 0)
        ::close(_wake_fd);
}

void shard::request_stop() noexcept {
    _stop_requested.store(true, std::memory_order_release);
    wake();
}

void shard::wake() noexcept {
    std::uint64_t one = 1;
    if (_wake_fd >= 0) {
        [[maybe_unused]] auto n = ::write(_wake_fd, &one, sizeof one);
    }
}

std::int64_t shard::unix_now() const noexcept {
    return static_cast<std::int64_t>(::time(nullptr));
}

std::int64_t shard::unix_now_ms() const noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

spool::spool* shard::spool_for(spool::queue_id id) noexcept {
    unsigned origin = spool::queue_id_shard(id);
    for (auto& slot : _spools) {
        if (slot->dir_shard == origin)
            return slot->sp.get();
    }
    return nullptr;
}

bool shard::start(std::string& why) {
    if (_wake_fd < 0) {
        why = fmt::format("eventfd: {}", std::strerror(errno));
        return false;
    }
    core::reactor_options ro;
    ro.defer_taskrun = _ctx.cfg.server.io_uring_defer_taskrun;
    std::string rwhy;
    auto r = core::reactor::create(ro, &rwhy);
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

    // Spools first: recovery must be complete before the first new message arrives.
    spool::options so;
    so.max_message_size = _ctx.cfg.server.max_message_size +
                          _ctx.cfg.server.max_message_size / 8;  // dot-stuffing headroom
    std::vector<spool::recovered_message> recovered_all;
    std::vector<spool_slot*> recovered_slots;
    for (unsigned dir : _ctx.spool_dirs[_id]) {
        auto path = std::filesystem::path(_ctx.cfg.server.spool_dir) / fmt::format("shard-{}", dir);
        auto sp = spool::spool::open(path, dir, so);
        if (!sp) {
            why = fmt::format("spool {}: {}", path.string(), sp.error().message());
            return false;
        }
        auto slot = std::make_unique<spool_slot>();
        slot->owner = this;
        slot->dir_shard = dir;
        slot->sp = std::move(*sp);
        auto rec = slot->sp->recover();
        if (!rec) {
            why =
                fmt::format("spool {}: recovery failed: {}", path.string(), rec.error().message());
            return false;
        }
        if (!rec->empty()) {
            log::info("spool {}: {} message(s) to deliver after restart", path.string(),
                      rec->size());
        }
        for (auto& m : *rec) {
            recovered_all.push_back(std::move(m));
            recovered_slots.push_back(slot.get());
        }
        _spools.push_back(std::move(slot));
    }

    _events = std::make_unique<delivery_log>(_ctx.cfg.delivery.log_file, _ctx.reload->generation);
    _delivery = std::make_unique<delivery>(*this);
    for (std::size_t i = 0; i < recovered_all.size(); ++i) {
        _delivery->add_recovered(*recovered_slots[i]->sp, recovered_all[i]);
    }

    _tls_contexts.resize(_ctx.listeners.size());
    if (!refresh_tls(why))
        return false;

    for (const auto& l : _ctx.listeners) {
        auto fd = core::make_listener(l.endpoint, 1024);
        if (!fd) {
            why =
                fmt::format("listen on {}: {}", core::to_string(l.endpoint), fd.error().message());
            return false;
        }
        _listeners.push_back(std::make_unique<core::acceptor>(
            *_reactor, core::ring_fd::adopt(*fd), _ctx.cfg.server.multishot_accept,
            core::to_string(l.endpoint),
            [this, &l](core::ring_fd conn) { accepted_connection(std::move(conn), l); }));
    }

    _reactor->on_iteration_end([this] { flush_commits(); });
    _reactor->on_iteration_end([this] { _delivery->reap(); });
    _reactor->on_iteration_end([this] { _events->flush(); });
    arm_wake();
    arm_auth();
    for (auto& l : _listeners)
        l->arm();
    return true;
}

bool shard::refresh_tls(std::string& why) {
    auto set = _ctx.reload->tls.load(std::memory_order_acquire);
    if (set == _tls_seen || set == nullptr)
        return true;
    std::vector<std::shared_ptr<const tls::server_context>> fresh(_tls_contexts.size());
    for (std::size_t i = 0; i < fresh.size() && i < set->size(); ++i) {
        if ((*set)[i] == nullptr)
            continue;
        if (_tls_seen != nullptr && i < _tls_seen->size() && (*_tls_seen)[i] == (*set)[i]) {
            fresh[i] = _tls_contexts[i];
            continue;
        }
        std::string text;
        auto c = tls::server_context::create((*set)[i], _ctx.tickets, text);
        if (!c) {
            why = fmt::format("listen[{}]: TLS context: {}", i,
                              text.empty() ? c.error().message() : text);
            return false;
        }
        fresh[i] = std::move(*c);
    }
    _tls_contexts = std::move(fresh);
    _tls_seen = std::move(set);
    return true;
}

void shard::arm_auth() {
    if (!_ctx.verifier || _auth_armed)
        return;
    _auth_armed = true;
    _reactor->read(_ctx.verifier->response_fd(_id), &_auth_buf, sizeof _auth_buf, &_auth_op);
}

void shard::on_auth_ready(int res, std::uint32_t) {
    _auth_armed = false;
    if (res == -ECANCELED)
        return;
    while (auto r = _ctx.verifier->poll(_id)) {
        auto it = _connections.find(r->token);
        if (it != _connections.end())
            it->second->on_auth_verdict(r->result);  // else the client left: dropped
    }
    arm_auth();
}

void shard::run() {
    std::string why;
    if (!start(why)) {
        _startup_error = std::move(why);
        _status.store(startup_state::failed, std::memory_order_release);
        return;
    }
    log::info("shard {} ready: {} listener(s), ring flags {:#x}", _id, _listeners.size(),
              _reactor->setup_flags());
    _status.store(startup_state::ready, std::memory_order_release);
    while (!_stopped) {
        _reactor->run_once(1s);
        if (_draining) {
            bool late = _reactor->now() >= _drain_deadline;
            if (late) {
                for (auto& [id, c] : _connections)
                    c->shutdown(true);
                _delivery->begin_drain(true);
            }
            if (drained() || (late && _connections.empty()))
                _stopped = true;
        }
    }
    // Flush what the last iteration may have left and let the ring settle.
    for (int i = 0; i < 100 && (any_batch_in_flight() || !_connections.empty()); ++i) {
        _reactor->run_once(10ms);
    }
    _status.store(startup_state::stopped, std::memory_order_release);
    tls::release_thread_cache();
    log::info("shard {} stopped (TLS handshakes failed: {})", _id, _tls_failures);
}

bool shard::any_batch_in_flight() const {
    for (const auto& s : _spools) {
        if (s->in_flight || s->sp->has_pending())
            return true;
    }
    return false;
}

bool shard::drained() const {
    if (!_connections.empty())
        return false;
    for (const auto& l : _listeners) {
        if (!l->done())
            return false;
    }
    if (any_batch_in_flight())
        return false;
    return _delivery->idle();
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
    std::string why;
    if (!refresh_tls(why))
        log::error("shard {}: certificates not reloaded, keeping the old ones: {}", _id, why);
    arm_wake();
}

void shard::begin_drain() {
    _draining = true;
    _drain_deadline = _reactor->now() + drain_timeout;
    log::info("shard {}: draining ({} connection(s) open)", _id, _connections.size());
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
    _delivery->begin_drain(false);
}

void shard::accepted_connection(core::ring_fd fd, const listener_settings& l) {
    if (_draining) {
        new refusal(*_reactor, std::move(fd), "421 4.3.2 Service shutting down\r\n");
        return;
    }
    if (_connections.size() >= _ctx.cfg.server.max_connections) {
        log::warn("connection refused: {} connections open (server.max_connections)",
                  _connections.size());
        new refusal(*_reactor, std::move(fd),
                    fmt::format("421 4.7.0 {} Too many connections, try later\r\n",
                                _ctx.cfg.server.hostname));
        return;
    }
    auto peer = core::peer_endpoint(fd.get());
    if (!peer) {
        // The client is already gone (ENOTCONN): nothing to say to it.
        _reactor->close(std::move(fd));
        return;
    }
    (void)core::set_nodelay(fd.get());
    bool relay_allowed = _ctx.cfg.relay.allow_networks.contains(peer->addr());
    std::uint64_t id = _next_conn_id++;
    auto c =
        std::make_unique<inbound_connection>(*this, id, std::move(fd), *peer, l, relay_allowed);
    auto* raw = c.get();
    _connections.emplace(id, std::move(c));
    raw->start();
}

void shard::forget(std::uint64_t connection_id) {
    _connections.erase(connection_id);
}

void shard::flush_commits() {
    for (auto& slot : _spools) {
        if (slot->in_flight || _reactor->now() < slot->retry_at)
            continue;
        const spool::commit_batch* b = slot->sp->prepare_batch();
        if (b == nullptr)
            continue;
        slot->requests.clear();
        for (const auto& w : b->writes) {
            slot->requests.push_back(core::write_request{w.fd, w.offset, w.iov.data(),
                                                         static_cast<unsigned>(w.iov.size())});
        }
        if (slot->requests.empty() && b->sync_fds.empty()) {
            batch_done(*slot, 0);
            continue;
        }
        slot->in_flight = true;
        _reactor->write_chain(slot->requests, b->sync_fds, &slot->op);
    }
}

void shard::batch_done(spool_slot& slot, int res) {
    slot.in_flight = false;
    if (res < 0) {
        slot.backoff = slot.backoff.count() == 0
                           ? 50ms
                           : std::min<std::chrono::milliseconds>(slot.backoff * 2, 1s);
        slot.retry_at = _reactor->now() + slot.backoff;
        _reactor->arm(slot, slot.retry_at);
        log::error("spool {}: commit failed: {} (next attempt in {} ms)", slot.sp->dir().string(),
                   std::strerror(-res), slot.backoff.count());
    } else if (slot.backoff.count() != 0) {
        log::info("spool {}: commits succeed again", slot.sp->dir().string());
        slot.backoff = 0ms;
    }
    auto committed = slot.sp->complete_batch(res);
    for (auto& c : committed) {
        if (c.id)
            _delivery->add_committed(*slot.sp, *c.id);
        if (c.token == 0) {
            _delivery->internal_committed(c.id);
            continue;
        }
        auto it = _connections.find(c.token);
        if (it != _connections.end()) {
            it->second->on_committed(c.id);
        } else if (c.id) {
            log::info("{}: committed after its client left (delivered anyway)",
                      spool::format_queue_id(*c.id));
        }
    }
}

}  // namespace ringmail::server
