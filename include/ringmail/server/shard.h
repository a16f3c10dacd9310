// One shard of the daemon: a thread pinned to a CPU that owns an io_uring reactor, its own
// SO_REUSEPORT listeners, the SMTP sessions it accepted, its spool(s), its delivery queue and
// its outbound connections. Nothing here is shared with another shard.
//
// Created on the main thread (which may only call request_stop() and read startup_status()
// afterwards); run() is the shard thread's body. Start-up failures (ring, spool lock, bind)
// are reported through startup_status() with a message, and the daemon exits non-zero.
// Stopping drains: listeners close, idle sessions get 421, open transactions finish and
// commit, deliveries in flight finish, then run() returns.
#pragma once

#include "ringmail/auth/failure_limiter.h"
#include "ringmail/core/acceptor.h"
#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"
#include "ringmail/server/context.h"
#include "ringmail/spool/spool.h"
#include "ringmail/tls/context.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ringmail::server {

class inbound_connection;
class delivery;
class delivery_log;

enum class startup_state : int { pending = 0, ready = 1, failed = 2, stopped = 3 };

class shard {
  public:
    shard(unsigned id, const daemon_context& ctx);
    ~shard();
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    // The shard thread's body: returns once the shard has drained after request_stop(), or at
    // once when start-up failed.
    void run();

    // Main thread: ask for a drain and wake the ring. Idempotent.
    void request_stop() noexcept;
    // Main thread: wake the ring so the shard notices a reload (SIGHUP).
    void wake() noexcept;
    startup_state status() const noexcept { return _status.load(std::memory_order_acquire); }
    const std::string& startup_error() const noexcept { return _startup_error; }  // after failed

    // Shard-internal API used by connections and delivery.
    unsigned id() const noexcept { return _id; }
    const daemon_context& ctx() const noexcept { return _ctx; }
    core::reactor& reactor() noexcept { return *_reactor; }
    core::buffer_ring& buffers() noexcept { return *_buffers; }
    spool::spool& own_spool() noexcept { return *_spools.front()->sp; }
    spool::spool* spool_for(spool::queue_id id) noexcept;
    delivery& outbound() noexcept { return *_delivery; }
    delivery_log& events() noexcept { return *_events; }
    bool draining() const noexcept { return _draining; }

    // Inbound TLS/AUTH. The server context of listener `index` as of the last reload (null
    // without certificates); a session holds the one it started with.
    const std::shared_ptr<const tls::server_context>& tls_context(std::size_t index) const {
        return _tls_contexts[index];
    }
    void count_tls_failure() noexcept { ++_tls_failures; }
    auth::failure_limiter& auth_limiter() noexcept { return _auth_limiter; }

    // A listener accepted `fd`: the shard makes the session (or refuses it with 421).
    void accepted_connection(core::ring_fd fd, const listener_settings& l);
    // The connection has closed its fd and has no operation in flight: destroy it.
    void forget(std::uint64_t connection_id);
    std::int64_t unix_now() const noexcept;
    std::int64_t unix_now_ms() const noexcept;

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
        std::vector<core::write_request> requests;
        void on_written(int res, std::uint32_t flags);
        core::member_completion<spool_slot, &spool_slot::on_written> op{this};
    };

    bool start(std::string& why);
    void flush_commits();
    void batch_done(spool_slot& slot, int res);
    void on_wake(int res, std::uint32_t flags);
    void arm_wake();
    void begin_drain();
    // Builds this shard's server contexts from the published credentials if they changed.
    bool refresh_tls(std::string& why);
    void arm_auth();
    void on_auth_ready(int res, std::uint32_t flags);
    bool drained() const;
    bool any_batch_in_flight() const;

    const unsigned _id;
    const daemon_context& _ctx;
    std::atomic<startup_state> _status{startup_state::pending};
    std::string _startup_error;
    std::atomic<bool> _stop_requested{false};
    int _wake_fd = -1;
    std::uint64_t _wake_buf = 0;
    core::member_completion<shard, &shard::on_wake> _wake_op{this};
    bool _wake_armed = false;

    std::unique_ptr<core::reactor> _reactor;
    std::unique_ptr<core::buffer_ring> _buffers;
    std::vector<std::unique_ptr<core::acceptor>> _listeners;
    std::vector<std::unique_ptr<spool_slot>> _spools;  // stable addresses: ops point at them
    std::unique_ptr<delivery_log> _events;
    std::unique_ptr<delivery> _delivery;
    std::unordered_map<std::uint64_t, std::unique_ptr<inbound_connection>> _connections;
    std::uint64_t _next_conn_id = 1;
    bool _draining = false;
    bool _stopped = false;
    core::reactor::clock::time_point _drain_deadline{};

    std::vector<std::shared_ptr<const tls::server_context>> _tls_contexts;  // per listener
    std::shared_ptr<const tls_credentials_set> _tls_seen;  // what _tls_contexts were built from
    std::uint64_t _tls_failures = 0;                       // handshakes failed or timed out
    auth::failure_limiter _auth_limiter;
    std::uint64_t _auth_buf = 0;
    bool _auth_armed = false;
    core::member_completion<shard, &shard::on_auth_ready> _auth_op{this};
};

}  // namespace ringmail::server
