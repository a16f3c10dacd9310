// The daemon's wiring of one shard: a core::shard_base (a pinned thread with its own io_uring
// reactor and buffer ring) that owns its SO_REUSEPORT listeners, the SMTP sessions it
// accepted (reception), its spool(s) and their group commit, its delivery engine with its
// network (outbound connections, DNS) and delivery log, its TLS contexts and AUTH limiter.
// Nothing here is shared with another shard except through the engines' rings.
//
// It is the host of both halves: reception::host for the inbound connections, delivery::host
// for the engine. Start-up failures (ring, spool lock, bind, resolver) are reported through
// status() with a message, and the daemon exits non-zero. Stopping drains: listeners close,
// idle sessions get 421, open transactions finish and commit, deliveries in flight finish.
#pragma once

#include "ringmail/auth/failure_limiter.h"
#include "ringmail/cluster/limiter.h"
#include "ringmail/cluster/shard_limiter.h"
#include "ringmail/core/acceptor.h"
#include "ringmail/core/connection_set.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/shard_base.h"
#include "ringmail/core/timer.h"
#include "ringmail/daemon/context.h"
#include "ringmail/delivery/delivery_log.h"
#include "ringmail/delivery/engine.h"
#include "ringmail/delivery/host.h"
#include "ringmail/outbound/ring_network.h"
#include "ringmail/reception/host.h"
#include "ringmail/reception/inbound_connection.h"
#include "ringmail/spool/spool.h"
#include "ringmail/tls/context.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ringmail::daemon {

using core::startup_state;

class shard final : public core::shard_base, public reception::host, public delivery::host {
  public:
    shard(unsigned id, const daemon_context& ctx);
    ~shard() override;

    const daemon_context& ctx() const noexcept { return _ctx; }

    // reception::host
    core::reactor& reactor() noexcept override { return ring(); }
    core::buffer_ring& buffers() noexcept override { return core::shard_base::buffers(); }
    unsigned shard_id() const noexcept override { return id(); }
    spool::spool& spool() noexcept override { return *_spools.front()->sp; }
    bool can_accept() const override { return _engine->can_accept(); }
    const std::shared_ptr<const tls::server_context>& tls_context(
        std::size_t index) const override {
        return _tls_contexts[index];
    }
    void count_tls_failure() noexcept override { ++_tls_failures; }
    core::shard_metrics* metrics() noexcept override { return &_ctx.metrics[id()]; }
    auth::failure_limiter& auth_limiter() noexcept override { return *_ctx.auth_limiter; }
    auth::verifier* verifier() noexcept override { return _ctx.verifier.get(); }
    const std::shared_ptr<dkim::signer>& dkim_signer() const noexcept override { return _dkim; }
    const std::string& hostname() const noexcept override { return _ctx.cfg.server.hostname; }
    std::int64_t unix_now() const noexcept override;
    bool relay_allowed(const core::endpoint& client) const noexcept override;
    void connection_closed(std::uint64_t id) override;
    bool over_budget() const noexcept override;
    void input_held() noexcept override { _input_held = true; }

    // delivery::host
    queue::steady_time now() const override { return _now_source(); }
    std::int64_t unix_now_ms() const override;
    unsigned shards() const noexcept override { return _ctx.shards; }
    void wake_at(std::optional<queue::steady_time> t) override;
    void nudge() override;
    spool::spool* spool_for(spool::queue_id id) noexcept override;
    spool::spool& own_spool() noexcept override { return spool(); }
    delivery::delivery_log& events() noexcept override { return *_events; }
    bool send(unsigned to, delivery::shard_message&& m) override;
    bool inbox_empty() const override;
    void set_quiet(bool quiet) override;
    bool all_quiet() const override;

  private:
    // A spool and its group-commit state. After a failed batch (disk full, I/O error) the next
    // one waits a growing pause (50 ms doubling to 1 s): failed batches give their journal bytes
    // back to the next one, and resubmitting at once would spin while the disk stays full.
    struct spool_slot final : core::timer {
        std::unique_ptr<spool::spool> sp;
        core::reactor::clock::time_point retry_at{};
        std::chrono::milliseconds backoff{0};
        void on_expire() override {}  // only wakes the loop; the end-of-iteration hook commits
        shard* owner = nullptr;
        unsigned dir_shard = 0;  // N of the shard-<N> directory
        bool in_flight = false;
        core::reactor::clock::time_point submitted{};  // the batch in flight
        std::vector<core::write_request> requests;
        void on_written(int res, std::uint32_t flags);
        core::member_completion<spool_slot, &spool_slot::on_written> op{this};
        // Streaming messages' bytes on their way to their files (no sync), beside the batch.
        bool stream_in_flight = false;
        std::vector<core::write_request> stream_requests;
        void on_streamed(int res, std::uint32_t flags);
        core::member_completion<spool_slot, &spool_slot::on_streamed> stream_op{this};
        // A released file's step on the ring (spool::release_op: a hole or the close), so that
        // what it frees is freed off the loop; the spool's, valid until complete_release().
        const spool::release_op* release_step = nullptr;
        void on_released(int res, std::uint32_t flags);
        core::member_completion<spool_slot, &spool_slot::on_released> release_op{this};
    };
    // The engine's one wake-up.
    struct engine_timer final : core::timer {
        shard* owner = nullptr;
        void on_expire() override { owner->_engine->on_timer(); }
    };
    // Every 250 ms: how late it fires is the loop's lag; the gauges are published then.
    struct lag_timer final : core::timer {
        shard* owner = nullptr;
        core::reactor::clock::time_point due{};
        void on_expire() override { owner->on_lag_timer(); }
    };
    void on_lag_timer();
    // A question or an order of the admin thread; answered at once through the admin rings.
    void on_control(admin::control_message&& m);
    void publish_gauges();

    // core::shard_base
    bool start(std::string& why) override;
    void started() override;
    void on_wake() override;
    void begin_drain() override;
    bool drained(bool late) override;
    bool settling() override;
    void stopped() override;

    void accepted_connection(core::ring_fd fd, const reception::listener_settings& l);
    void flush_commits();
    void batch_done(spool_slot& slot, int res);
    // Builds this shard's server contexts from the published credentials if they changed.
    bool refresh_tls(std::string& why);
    // Builds this shard's DKIM signer from the published keys if they changed.
    bool refresh_dkim(std::string& why);
    // [cluster] redis: this shard's Redis connection and the scheduler's limiter over it.
    bool start_cluster(delivery::engine_settings& settings, std::string& why);
    void arm_auth();
    void on_auth_ready(int res, std::uint32_t flags);
    bool any_batch_in_flight() const;
    std::uint64_t unwritten_bytes() const noexcept;
    void apply_budget();

    const daemon_context& _ctx;
    std::function<queue::steady_time()> _now_source;
    std::vector<std::unique_ptr<core::acceptor>> _listeners;
    std::vector<std::unique_ptr<spool_slot>> _spools;  // stable addresses: ops point at them
    std::unique_ptr<delivery::delivery_log> _events;
    std::unique_ptr<outbound::ring_network> _network;
    std::unique_ptr<cluster::cluster_limiter> _cluster;       // null without [cluster] redis
    std::unique_ptr<cluster::shard_limiter> _cluster_limits;  // (or without shaping)
    bool _cluster_stopping = false;
    std::unique_ptr<delivery::engine> _engine;
    engine_timer _engine_timer;
    lag_timer _lag_timer;
    core::connection_set<reception::inbound_connection> _connections;  // reaped per iteration
    bool _input_held = false;   // a connection stopped reading: the spool was over its budget
    bool _holding_all = false;  // apply_budget() told every connection in a message to stop

    std::vector<std::shared_ptr<const tls::server_context>> _tls_contexts;  // per listener
    std::shared_ptr<const tls_credentials_set> _tls_seen;  // what _tls_contexts were built from
    std::uint64_t _tls_failures = 0;                       // handshakes failed or timed out
    std::shared_ptr<dkim::signer> _dkim;                   // null without [[dkim]]
    std::shared_ptr<const dkim::key_set> _dkim_seen;       // what _dkim was built from
    std::uint64_t _untrusted_proxy_refused = 0;            // PROXY listeners: sources not trusted
    core::reactor::clock::time_point _untrusted_logged_at{};
    std::uint64_t _auth_buf = 0;
    bool _auth_armed = false;
    core::member_completion<shard, &shard::on_auth_ready> _auth_op{this};
};

}  // namespace ringmail::daemon
