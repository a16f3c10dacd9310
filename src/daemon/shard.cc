#include "ringmail/daemon/shard.h"

#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"
#include "ringmail/tls/context.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <unistd.h>

namespace ringmail::daemon {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {

core::shard_options shard_options_for(const daemon_context& ctx) {
    core::shard_options o;
    o.ring.defer_taskrun = ctx.cfg.server.io_uring_defer_taskrun;
    // How long a drain waits for open transactions and deliveries before closing what is left
    // (acknowledged messages are durable: what did not go out is delivered after a restart).
    // The drain starts after server.drain_grace; 2 s of server.shutdown_timeout are kept for
    // closing what is left, settling the last commit and joining the threads.
    const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(
        ctx.cfg.server.shutdown_timeout - ctx.cfg.server.drain_grace - 2s);
    o.drain_timeout = std::max<std::chrono::milliseconds>(budget, 1s);
    o.start_gate = ctx.start_gate.get();
    return o;
}

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

void shard::spool_slot::on_streamed(int res, std::uint32_t) {
    owner->check_shard();
    stream_in_flight = false;
    if (res < 0) {
        log::error("spool {}: message data could not be written: {}", sp->dir().string(),
                   std::strerror(-res));
    }
    sp->complete_stream(res);
}

void shard::spool_slot::on_released(int res, std::uint32_t) {
    owner->check_shard();
    const bool punch = release_step->punch_length > 0;
    release_step = nullptr;
    if (res < 0 && punch) {
        // The spool closes the file whole instead; a filesystem without holes says so for
        // every file, so only debug.
        log::debug("spool {}: punching a released file's extents: {}", sp->dir().string(),
                   std::strerror(-res));
    } else if (res < 0) {
        log::warn("spool {}: closing a released file: {}", sp->dir().string(), std::strerror(-res));
    }
    sp->complete_release(res);
}

shard::shard(unsigned id, const daemon_context& ctx)
    : core::shard_base(id, shard_options_for(ctx)), _ctx(ctx) {
    _engine_timer.owner = this;
    _lag_timer.owner = this;
    _now_source = [this] { return ring().now(); };
}

shard::~shard() {
    _connections.clear();
    _engine.reset();
    _cluster_limits.reset();
    _cluster.reset();
    _network.reset();
    _events.reset();
    _listeners.clear();
    _spools.clear();
}

std::int64_t shard::unix_now() const noexcept {
    return static_cast<std::int64_t>(::time(nullptr));
}

std::int64_t shard::unix_now_ms() const {
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
    // Spools first: recovery must be complete before the first new message arrives.
    spool::options so;
    so.max_message_size = _ctx.cfg.server.max_message_size +
                          _ctx.cfg.server.max_message_size / 8;  // dot-stuffing headroom
    so.unwritten_budget = _ctx.cfg.server.max_unwritten_bytes;
    std::vector<spool::recovered_message> recovered_all;
    std::vector<spool_slot*> recovered_slots;
    for (unsigned dir : _ctx.spool_dirs[id()]) {
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

    _events = std::make_unique<delivery::delivery_log>(_ctx.cfg.delivery.log_file,
                                                       _ctx.reload->generation);
    dns::resolver_options ro;
    ro.servers = _ctx.cfg.dns.servers;
    ro.port = _ctx.cfg.delivery.mx_port;
    std::string rwhy;
    auto resolver = dns::resolver::create(reactor(), ro, &rwhy);
    if (!resolver) {
        why = fmt::format("DNS resolver: {}", rwhy.empty() ? resolver.error().message() : rwhy);
        return false;
    }
    _network = std::make_unique<outbound::ring_network>(reactor(), buffers(), std::move(*resolver),
                                                        _ctx.cfg.delivery.tls_ca_file, metrics());
    auto settings = delivery::make_settings(_ctx.cfg, id(), _ctx.shards, _ctx.delivery.gauges.get(),
                                            _ctx.delivery.shaping.get());
    if (!start_cluster(settings, why))
        return false;
    settings.bounces = _ctx.delivery.bounces;
    settings.bounce_counts = &_ctx.delivery.bounce_counts[id()];
    _engine = std::make_unique<delivery::engine>(*this, *_network, std::move(settings));
    if (_cluster_limits)
        _cluster_limits->set_wake([this] { _engine->wake(); });
    _ctx.delivery.mailbox->attach(reactor(), id(),
                                  [this](unsigned from, delivery::shard_message&& m) {
                                      _engine->receive(from, std::move(m));
                                  });
    for (std::size_t i = 0; i < recovered_all.size(); ++i)
        _engine->add_recovered(*recovered_slots[i]->sp, recovered_all[i]);
    if (_ctx.suspensions && !_ctx.suspensions->empty())
        _engine->set_suspensions(_ctx.suspensions);
    _ctx.admin_mailbox->attach(reactor(), id(), [this](unsigned, admin::control_message&& m) {
        on_control(std::move(m));
    });

    _tls_contexts.resize(_ctx.listeners.size());
    if (!refresh_tls(why))
        return false;
    if (!refresh_dkim(why))
        return false;

    for (const auto& l : _ctx.listeners) {
        auto fd = core::make_listener(l.endpoint, 1024);
        if (!fd) {
            why =
                fmt::format("listen on {}: {}", core::to_string(l.endpoint), fd.error().message());
            return false;
        }
        _listeners.push_back(std::make_unique<core::acceptor>(
            reactor(), core::ring_fd::adopt(*fd), _ctx.cfg.server.multishot_accept,
            core::to_string(l.endpoint),
            [this, &l](core::ring_fd conn) { accepted_connection(std::move(conn), l); }));
    }

    reactor().on_iteration_end([this] {
        flush_commits();
        apply_budget();
    });
    reactor().on_iteration_end([this] {
        _connections.reap();
        _engine->reap();
    });
    reactor().on_iteration_end([this] { _events->flush(); });
    if (auto* rec = _ctx.delivery.recorder.get())
        reactor().on_iteration_end([this, rec] { rec->flush(id()); });
    arm_auth();
    return true;
}

bool shard::start_cluster(delivery::engine_settings& settings, std::string& why) {
    const queue::shaping_context* sh = _ctx.delivery.shaping.get();
    if (!_ctx.cfg.cluster.enabled())
        return true;
    if (sh == nullptr) {
        if (id() == 0)
            log::info("cluster.redis {}: no [[provider]] or [[shaping_rule]], nothing to share",
                      _ctx.cfg.cluster.redis);
        return true;
    }
    auto server = core::parse_endpoint(_ctx.cfg.cluster.redis);
    if (!server) {  // the config reader checked it: not reached
        why = fmt::format("cluster.redis: {} cannot be used", _ctx.cfg.cluster.redis);
        return false;
    }
    cluster::cluster_options o;
    o.redis.server = *server;
    // Unique per node and shard: each shard is one participant, with its own heartbeat and
    // leases, so the fallback divides the limits by the shards of every node.
    o.node_id = fmt::format("{}:{}:{}", _ctx.cfg.server.hostname, ::getpid(), id());
    _cluster = std::make_unique<cluster::cluster_limiter>(reactor(), buffers(), std::move(o));
    _cluster_limits = std::make_unique<cluster::shard_limiter>(
        reactor(), *_cluster, *sh->limits, cluster::scope_names(*sh), cluster::slot_names(*sh));
    settings.scheduler.limits = _cluster_limits.get();
    _cluster->start();
    return true;
}

void shard::started() {
    for (auto& l : _listeners)
        l->arm();
    _lag_timer.due = reactor().now() + 250ms;
    reactor().arm(_lag_timer, _lag_timer.due);
    log::info("shard {} ready: {} listener(s), ring flags {:#x}", id(), _listeners.size(),
              reactor().setup_flags());
}

void shard::on_lag_timer() {
    const auto now = reactor().now();
    core::shard_metrics& m = *metrics();
    m.loop_lag_ns.set(std::max<std::int64_t>(
        0, std::chrono::duration_cast<std::chrono::nanoseconds>(now - _lag_timer.due).count()));
    publish_gauges();
    _lag_timer.due = now + 250ms;
    reactor().arm(_lag_timer, _lag_timer.due);
}

// The gauges /metrics shows, four times a second (a few relaxed stores).
void shard::publish_gauges() {
    core::shard_metrics& m = *metrics();
    m.inbound_open.set(static_cast<std::int64_t>(_connections.size()));
    m.outbound_open.set(static_cast<std::int64_t>(_engine->scheduler().counts().connections));
    const auto& ledger = _engine->ledger();
    m.queue_messages.set(static_cast<std::int64_t>(ledger.size()));
    m.queue_recipients.set(static_cast<std::int64_t>(ledger.pending_recipients()));
    m.queue_oldest_arrival.set(ledger.oldest_arrival());
    std::uint64_t bytes = 0;
    for (const auto& slot : _spools) {
        const auto sm = slot->sp->metrics();
        bytes += sm.segments_live * spool::options{}.segment_size + sm.journal_bytes;
    }
    m.spool_bytes.set(static_cast<std::int64_t>(bytes));
    if (_cluster) {
        m.cluster_fallbacks.set(static_cast<std::int64_t>(_cluster->fallbacks()));
        m.cluster_degraded.set(_cluster->degraded() ? 1 : 0);
        m.cluster_nodes.set(_cluster->nodes());
    }
}

void shard::on_control(admin::control_message&& m) {
    check_shard();
    admin::control_message r;
    r.token = m.token;
    r.reply = true;
    r.kind = m.kind;
    const queue::steady_time now = this->now();
    const std::int64_t unix = unix_now();
    auto to_unix = [&](std::optional<queue::steady_time> t) -> std::int64_t {
        if (!t)
            return 0;
        return unix + std::chrono::duration_cast<std::chrono::seconds>(*t - now).count();
    };
    switch (m.kind) {
        case admin::request_kind::destinations:
            for (auto& d : _engine->scheduler().destinations(m.ages)) {
                admin::destination_row row;
                row.key = std::move(d.key);
                row.ready = d.ready;
                row.deferred = d.deferred;
                row.in_flight = d.in_flight;
                row.connections = d.connections;
                row.recipients = d.recipients;
                row.next_attempt_unix = to_unix(d.next_attempt);
                row.oldest_arrival_unix = d.oldest_arrival_unix;
                row.last_reply = std::move(d.last_reply);
                r.destinations.push_back(std::move(row));
            }
            break;
        case admin::request_kind::message: {
            if (const auto* lm = _engine->ledger().find(m.queue_id)) {
                auto& md = r.message;
                md.found = true;
                md.sender = lm->sender;
                md.arrival_unix = lm->arrival;
                md.attempts = lm->attempts;
                static constexpr const char* names[] = {"pending", "delivered", "bounced",
                                                        "expired"};
                for (std::size_t i = 0; i < lm->rcpts.size(); ++i) {
                    const auto st =
                        i < lm->state.size() ? lm->state[i] : queue::rcpt_state::pending;
                    md.recipients.push_back({lm->rcpts[i], names[static_cast<int>(st)]});
                }
                if (spool::spool* sp = spool_for(m.queue_id)) {
                    if (auto sm = sp->read(m.queue_id))
                        md.size = sm->body.size();
                }
            }
            const auto dests = _engine->scheduler().destinations();
            for (auto& [key, job] : _engine->scheduler().jobs_of(m.queue_id)) {
                admin::message_detail::job_row j;
                j.destination = key;
                j.rcpts.assign(job.rcpts.begin(), job.rcpts.end());
                j.attempts = job.attempts;
                if (job.next_attempt > now)
                    j.next_attempt_unix = to_unix(job.next_attempt);
                for (const auto& d : dests)
                    if (d.key == key)
                        j.last_reply = d.last_reply;
                r.message.jobs.push_back(std::move(j));
            }
            break;
        }
        case admin::request_kind::suspensions:
            // Lifted first: the new set then finds the destinations free to run.
            if (!m.lifted.empty())
                _engine->lift_suspensions(m.lifted);
            _engine->set_suspensions(m.suspensions);
            break;
        case admin::request_kind::rule_effect:
            return;  // the admin thread's own kind: never sent here
        case admin::request_kind::flush:
            r.affected = _engine->flush(m.key);
            break;
        case admin::request_kind::bounce:
            r.affected = _engine->bounce(m.key, m.queue_id, m.reason);
            break;
    }
    // The admin thread keeps at most one request per connection out per shard (64), the ring
    // holds 256: a full ring is a broken invariant, not load.
    if (!_ctx.admin_mailbox->try_send(id(), _ctx.shards, std::move(r)))
        core::invariant_broken("shard {}: the ring to the admin thread is full", id());
}

void shard::stopped() {
    tls::release_thread_cache();
    log::info("shard {} stopped (TLS handshakes failed: {})", id(), _tls_failures);
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

bool shard::refresh_dkim(std::string& why) {
    auto keys = _ctx.reload->dkim.load(std::memory_order_acquire);
    if (keys == _dkim_seen || keys == nullptr)
        return true;
    std::shared_ptr<dkim::signer> fresh;
    if (!keys->specs.empty()) {
        fresh = dkim::signer::create(keys, why);
        if (!fresh)
            return false;
    }
    _dkim = std::move(fresh);  // messages in progress hold the old one
    _dkim_seen = std::move(keys);
    return true;
}

void shard::arm_auth() {
    if (!_ctx.verifier || _auth_armed)
        return;
    _auth_armed = true;
    reactor().read(_ctx.verifier->response_fd(id()), &_auth_buf, sizeof _auth_buf, &_auth_op);
}

void shard::on_auth_ready(int res, std::uint32_t) {
    check_shard();
    _auth_armed = false;
    if (res == -ECANCELED)
        return;
    while (auto r = _ctx.verifier->poll(id())) {
        if (auto* c = _connections.find(r->token))
            c->on_auth_verdict(r->result);  // else the client left: dropped
    }
    arm_auth();
}

void shard::on_wake() {
    std::string why;
    if (!refresh_tls(why))
        log::error("shard {}: certificates not reloaded, keeping the old ones: {}", id(), why);
    why.clear();
    if (!refresh_dkim(why))
        log::error("shard {}: DKIM keys not reloaded, keeping the old ones: {}", id(), why);
}

bool shard::any_batch_in_flight() const {
    for (const auto& s : _spools) {
        if (s->in_flight || s->stream_in_flight || s->release_step != nullptr ||
            s->sp->has_pending())
            return true;
    }
    return false;
}

// Every spool of the shard counts: new messages and DSNs go to its own, but a spool adopted
// from another shard's directory holds memory too while its writes are pending.
std::uint64_t shard::unwritten_bytes() const noexcept {
    std::uint64_t unwritten = 0;
    for (const auto& s : _spools)
        unwritten += s->sp->unwritten_bytes();
    return unwritten;
}

bool shard::over_budget() const noexcept {
    return unwritten_bytes() >= _ctx.cfg.server.max_unwritten_bytes;
}

// At the end of each iteration, before its cancels are submitted. Going over, every connection
// in a message stops reading at once: a connection's multishot recv takes whatever its socket
// holds, so waiting for each one's next completion to notice let a thousand sockets' queues
// into memory (213 MiB a shard against a 32 MiB budget, bench/compare/big-upload.sh). What
// comes in after is bounded by one iteration's receive buffers. Reading resumes at three
// quarters of the budget, so that one write completing does not make every connection cancel
// and re-arm its recv each iteration.
void shard::apply_budget() {
    const std::uint64_t unwritten = unwritten_bytes();
    const std::uint64_t budget = _ctx.cfg.server.max_unwritten_bytes;
    if (unwritten >= budget) {
        if (!_holding_all) {
            _holding_all = true;
            _input_held = true;
            _connections.for_each([](reception::inbound_connection& c) { c.budget_changed(); });
        }
        return;
    }
    if (!_input_held || unwritten > budget - budget / 4)
        return;
    _input_held = false;
    _holding_all = false;
    _connections.for_each([](reception::inbound_connection& c) { c.budget_changed(); });
}

bool shard::settling() {
    if (_cluster && !_cluster_stopping) {
        // The leases go back while the ring still runs (what does not get out expires).
        _cluster_stopping = true;
        _cluster->stop();
    }
    return any_batch_in_flight() || !_connections.empty() || (_cluster && !_cluster->stopped());
}

void shard::begin_drain() {
    log::info("shard {}: draining ({} connection(s) open)", id(), _connections.size());
    for (auto& l : _listeners)
        l->close();
    _connections.for_each([](reception::inbound_connection& c) { c.shutdown(false); });
    _engine->begin_drain(false);
}

bool shard::drained(bool late) {
    if (late) {
        _connections.for_each([](reception::inbound_connection& c) { c.shutdown(true); });
        _engine->begin_drain(true);
    }
    const bool listeners_done =
        std::all_of(_listeners.begin(), _listeners.end(), [](const auto& l) { return l->done(); });
    if (late && _connections.empty())
        return true;
    return _connections.empty() && listeners_done && !any_batch_in_flight() && _engine->idle();
}

void shard::accepted_connection(core::ring_fd fd, const reception::listener_settings& l) {
    check_shard();
    if (draining()) {
        new refusal(reactor(), std::move(fd), "421 4.3.2 Service shutting down\r\n");
        return;
    }
    if (_connections.size() >= _ctx.cfg.server.max_connections) {
        log::warn("connection refused: {} connections open (server.max_connections)",
                  _connections.size());
        new refusal(reactor(), std::move(fd),
                    fmt::format("421 4.7.0 {} Too many connections, try later\r\n",
                                _ctx.cfg.server.hostname));
        return;
    }
    auto peer = core::peer_endpoint(fd.get());
    if (!peer) {
        // The client is already gone (ENOTCONN): nothing to say to it.
        reactor().close(std::move(fd));
        return;
    }
    if (l.proxy_protocol && !l.trusted_proxies.contains(peer->addr())) {
        // Only a trusted balancer may say who the client is; anyone else would choose their
        // own address (and with it relay permission). Closed before any byte is read or sent.
        ++_untrusted_proxy_refused;
        const auto now = reactor().now();
        if (now - _untrusted_logged_at >= 1s) {
            log::warn(
                "connection from {} to {} refused: not in trusted_proxies of this PROXY "
                "protocol listener ({} refused so far on shard {})",
                core::to_string(*peer), core::to_string(l.endpoint), _untrusted_proxy_refused,
                id());
            _untrusted_logged_at = now;
        }
        reactor().close(std::move(fd));
        return;
    }
    (void)core::set_nodelay(fd.get());
    if (const auto li = static_cast<std::size_t>(&l - _ctx.listeners.data());
        li < core::shard_metrics::max_listeners)
        metrics()->connections_accepted[li].add();
    const std::uint64_t cid = _connections.next_id();
    _connections
        .add(cid,
             std::make_unique<reception::inbound_connection>(*this, cid, std::move(fd), *peer, l))
        .start();
}

bool shard::relay_allowed(const core::endpoint& client) const noexcept {
    return _ctx.cfg.relay.allow_networks.contains(client.addr());
}

void shard::connection_closed(std::uint64_t cid) {
    check_shard();
    _connections.retire(cid);
}

// --- group commit ------------------------------------------------------------------------

void shard::flush_commits() {
    check_shard();
    for (auto& slot : _spools) {
        if (!slot->stream_in_flight) {
            if (const spool::commit_batch* sb = slot->sp->prepare_stream()) {
                slot->stream_requests.clear();
                for (const auto& w : sb->writes) {
                    slot->stream_requests.push_back(core::write_request{
                        w.fd, w.offset, w.iov.data(), static_cast<unsigned>(w.iov.size())});
                }
                slot->stream_in_flight = true;
                reactor().write_chain(slot->stream_requests, {}, &slot->stream_op);
            }
        }
        if (slot->release_step == nullptr) {
            if (const spool::release_op* p = slot->sp->prepare_release()) {
                slot->release_step = p;
                if (p->punch_length > 0) {
                    reactor().punch_hole_async(p->fd, p->punch_offset, p->punch_length,
                                               &slot->release_op);
                } else {
                    reactor().close_file_async(p->fd, &slot->release_op);
                }
            }
        }
        if (slot->in_flight || reactor().now() < slot->retry_at)
            continue;
        // Draining: whatever is pending goes now, so the shard can stop.
        const spool::commit_batch* b =
            slot->sp->prepare_batch(draining() ? std::nullopt : std::optional(reactor().now()));
        if (b == nullptr) {
            // Journal entries held for a later batch: wake the loop when they are due (the
            // retry pause, if any, still comes first).
            if (auto due = slot->sp->journal_due())
                reactor().arm(*slot, std::max(*due, slot->retry_at));
            continue;
        }
        slot->requests.clear();
        for (const auto& w : b->writes) {
            slot->requests.push_back(core::write_request{w.fd, w.offset, w.iov.data(),
                                                         static_cast<unsigned>(w.iov.size())});
        }
        if (slot->requests.empty() && b->sync_fds.empty() && b->fsync_fds.empty()) {
            batch_done(*slot, 0);
            continue;
        }
        slot->in_flight = true;
        slot->submitted = reactor().now();
        reactor().write_chain(slot->requests, b->sync_fds, &slot->op, b->fsync_fds);
    }
}

void shard::batch_done(spool_slot& slot, int res) {
    check_shard();
    if (slot.in_flight && res >= 0)
        metrics()->spool_commit.observe(reactor().now() - slot.submitted);
    metrics()->spool_failing.set(res >= 0 ? 0 : (res == -ENOSPC || res == -EDQUOT) ? 1 : 2);
    slot.in_flight = false;
    if (res < 0) {
        slot.backoff = slot.backoff.count() == 0
                           ? 50ms
                           : std::min<std::chrono::milliseconds>(slot.backoff * 2, 1s);
        slot.retry_at = reactor().now() + slot.backoff;
        reactor().arm(slot, slot.retry_at);
        log::error("spool {}: commit failed: {} (next attempt in {} ms)", slot.sp->dir().string(),
                   std::strerror(-res), slot.backoff.count());
    } else if (slot.backoff.count() != 0) {
        log::info("spool {}: commits succeed again", slot.sp->dir().string());
        slot.backoff = 0ms;
    }
    auto committed = slot.sp->complete_batch(res);
    for (auto& c : committed) {
        if (c.id)
            _engine->add_committed(*slot.sp, *c.id);
        if (delivery::engine::internal_token(c.token)) {
            _engine->internal_committed(c.token, c.id);
            continue;
        }
        if (auto* conn = _connections.find(c.token)) {
            conn->on_committed(c.id);
        } else if (c.id) {
            log::info("{}: committed after its client left (delivered anyway)",
                      spool::format_queue_id(*c.id));
        }
    }
}

// --- delivery::host ------------------------------------------------------------------------

void shard::wake_at(std::optional<queue::steady_time> t) {
    check_shard();
    if (t) {
        reactor().arm(_engine_timer, *t);
    } else {
        reactor().disarm(_engine_timer);
    }
}

// The engine journaled after this iteration's commit hook: the next iteration must come, unless
// each spool's pending work is covered already (a batch in flight, whose completion brings the
// hook back, or held journal entries, for which the slot's timer is armed). Under load that
// spares a ring NOP, and the loop iteration it forces, for nearly every delivery.
void shard::nudge() {
    for (const auto& s : _spools) {
        if (!s->in_flight && s->sp->has_pending() && !s->sp->holds_journal_only()) {
            reactor().nop(nullptr);
            return;
        }
    }
}

bool shard::send(unsigned to, delivery::shard_message&& m) {
    check_shard();
    return _ctx.delivery.mailbox->try_send(id(), to, std::move(m));
}

bool shard::inbox_empty() const {
    auto& mb = *_ctx.delivery.mailbox;
    for (unsigned from = 0; from < _ctx.shards; ++from) {
        if (mb.pending_approx(from, id()) != 0)
            return false;
    }
    return true;
}

void shard::set_quiet(bool quiet) {
    _ctx.delivery.quiet[id()].store(quiet, std::memory_order_seq_cst);
}

bool shard::all_quiet() const {
    for (unsigned s = 0; s < _ctx.shards; ++s) {
        if (!_ctx.delivery.quiet[s].load(std::memory_order_seq_cst))
            return false;
    }
    return true;
}

}  // namespace ringmail::daemon
