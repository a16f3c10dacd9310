// The admin HTTP endpoint ([admin] address): /healthz (the process serves) and /readyz (it
// takes new connections: every shard is up and no drain has begun), for load balancers and
// orchestrators. Off the mail path: its own thread, ring and listener (a core::shard_base),
// reading two atomics the main thread writes; nothing here is touched by a shard.
//
// Created and started by the daemon's main thread before the shards (a bad or busy address
// stops start-up with one message); stopped after them, so /readyz answers 503 for the whole
// drain. Bounded: at most max_connections clients (more are closed at once), one request at a
// time per connection, 10 s per request; a malformed request gets its 4xx and the connection
// closes.
#pragma once

#include "ringmail/admin/http.h"
#include "ringmail/core/acceptor.h"
#include "ringmail/core/connection_set.h"
#include "ringmail/core/shard_base.h"
#include "ringmail/core/socket.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace ringmail::admin {

// Written by the daemon's main thread, read by the admin thread.
struct health {
    std::atomic<bool> started{false};   // every shard is serving
    std::atomic<bool> draining{false};  // SIGTERM/SIGINT: no new work should be routed here
};

// The answer to one request (a whole response), from the request and the state: GET/HEAD of
// /healthz -> 200 "ok"; /readyz -> 200 "ready", or 503 "starting" / "draining"; any other
// path 404, any other method 405.
std::string answer(const http_request& req, const health& h);

class admin_connection;

class server final : public core::shard_base {
  public:
    static constexpr std::size_t max_connections = 64;

    // `thread_id`: the shard id the admin thread takes (one no shard uses).
    server(unsigned thread_id, core::endpoint address, const health& h);
    ~server() override;

    const health& state() const noexcept { return _health; }
    // The connection closed and nothing names it: destroyed at the end of the iteration.
    void forget(std::uint64_t id);

  private:
    bool start(std::string& why) override;
    void started() override;
    void begin_drain() override;
    bool drained(bool late) override;

    void accepted(core::ring_fd fd);

    const core::endpoint _address;
    const health& _health;
    std::unique_ptr<core::acceptor> _listener;
    core::connection_set<admin_connection> _connections;
};

}  // namespace ringmail::admin
