// One shard of ringmail-sink: a pinned thread with its own io_uring reactor, provided-buffer
// ring, SO_REUSEPORT listeners (one per --listen address), the SMTP sessions it accepted, its
// failure-injection PRNG and its counters. Nothing here is shared between shards except the
// read-only sink_config and the counters, which only this shard writes and the main thread
// only reads (one cache line per shard, so no line is written by two threads).
//
// Created on the main thread, which afterwards only calls request_stop(), status() and reads
// counters(); run() is the shard thread's body. Start-up failures (ring, buffers) are reported
// through status()/startup_error() and the tool exits 1. Stopping: listeners close, idle
// sessions get 421 4.3.2, open transactions finish (up to a grace period), then run() returns.
#pragma once

#include "ringmail/core/acceptor.h"
#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/connection_set.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/shard_base.h"
#include "ringmail/core/socket.h"
#include "ringmail/smtp/server_session.h"
#include "ringmail/tls/context.h"
#include "ringmail/tls/credentials.h"

#include "sink/injector.h"
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ringmail::sink {

class connection;

// Everything the command line decided; read-only once the shards run.
struct sink_config {
    std::vector<core::endpoint> listen;
    unsigned shards = 1;
    std::string dump_dir;  // empty: no dump
    injection inject;
    std::chrono::milliseconds delay{0};
    std::uint64_t exit_after = 0;  // 0: run until a signal
    std::uint64_t seed = 0;
    bool quiet = false;
    smtp::server_config session;
    // STARTTLS (both set, or neither): shared read-only; each shard builds its own context.
    std::shared_ptr<const tls::server_credentials> tls_credentials;
    std::shared_ptr<const tls::ticket_key> tls_tickets;
};

// Written by its shard only (load + store, no read-modify-write), read by the main thread.
struct alignas(64) shard_counters {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> recipients{0};  // of accepted messages
    std::atomic<std::uint64_t> deferred{0};
    std::atomic<std::uint64_t> rejected{0};
    std::atomic<std::uint64_t> disconnected{0};
    std::atomic<std::uint64_t> tls_failures{0};  // STARTTLS handshakes that did not complete
    // steady_clock nanoseconds; 0 = not yet.
    std::atomic<std::int64_t> first_connection_ns{0};
    std::atomic<std::int64_t> last_reply_ns{0};

    static void add(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept {
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    static void set(std::atomic<std::int64_t>& c, std::int64_t v) noexcept {
        c.store(v, std::memory_order_relaxed);
    }
};
static_assert(sizeof(shard_counters) == 64);

using core::startup_state;

class shard final : public core::shard_base {
  public:
    // `listen_fds`: this shard's listening sockets, one per sink_config::listen entry; the
    // shard owns (and closes) them.
    shard(unsigned id, const sink_config& cfg, std::vector<int> listen_fds);
    ~shard() override;

    // Main thread.
    const shard_counters& counters() const noexcept { return _counters; }

    // Shard-internal API for listeners and connections.
    const sink_config& cfg() const noexcept { return _cfg; }
    core::reactor& reactor() noexcept { return ring(); }
    injector& inject() noexcept { return _inject; }
    // This shard's TLS context; null without --tls-cert.
    const std::shared_ptr<const tls::server_context>& tls() const noexcept { return _tls; }
    shard_counters& counters() noexcept { return _counters; }
    std::uint64_t next_seq() noexcept { return ++_seq; }
    std::int64_t now_ns() noexcept;
    void accepted_connection(core::ring_fd fd);
    // The connection closed and nothing names it: destroyed at the end of the iteration.
    void forget(std::uint64_t connection_id);

  private:
    bool start(std::string& why) override;
    void begin_drain() override;
    bool drained(bool late) override;
    void stopped() override;

    const sink_config& _cfg;
    std::vector<int> _listen_fds;
    shard_counters _counters;
    injector _inject;
    std::shared_ptr<const tls::server_context> _tls;
    std::vector<std::unique_ptr<core::acceptor>> _listeners;
    core::connection_set<connection> _connections;  // reaped per iteration
    std::uint64_t _seq = 0;
};

}  // namespace ringmail::sink
