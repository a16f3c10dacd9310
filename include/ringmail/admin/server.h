// The admin HTTP endpoint ([admin] address): /healthz (the process serves) and /readyz (it
// takes new connections: every shard is up and no drain has begun) for load balancers and
// orchestrators, /metrics (Prometheus), the queue API and controls (/api/v1/...) and the status
// page (/). Off the mail path: its own thread, ring and listener (a core::shard_base). It reads
// the health atomics the main thread writes and the shards' published counters
// (core::shard_metrics, relaxed loads); everything else it asks the shards through the
// admin_mailbox (control.h) and answers when every shard replied.
//
// It owns the one suspension store (queue::suspensions): the operators' suspensions (the API)
// and the shaping rules' suspensions and `set`s (rule_effect messages from the shards, see
// rule_recorder.h), written to spool_dir/suspensions on every change (blocking I/O, on this
// thread only; the rules' changes once per loop iteration) and sent to every shard as an
// immutable copy (at most one such broadcast of the rules' changes in flight). A resume lifts
// every entry of the domain or provider, whoever set it. Without an address (admin.address
// "") it runs the same way with no listener: the store's keeper only.
//
// With a token (admin.token_file) every request but /healthz, /readyz and the status page's
// HTML needs "Authorization: Bearer <token>" (compared in constant time); 401 otherwise.
//
// Created and started by the daemon's main thread before the shards (a bad or busy address
// stops start-up with one message); stopped after them, so /readyz answers 503 for the whole
// drain. Bounded: at most max_connections clients (more are closed at once), one request at a
// time per connection, 10 s per request; a malformed request gets its 4xx and the connection
// closes.
#pragma once

#include "ringmail/admin/control.h"
#include "ringmail/admin/http.h"
#include "ringmail/core/acceptor.h"
#include "ringmail/core/connection_set.h"
#include "ringmail/core/metrics.h"
#include "ringmail/core/shard_base.h"
#include "ringmail/core/socket.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

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

// "Authorization: Bearer <token>" carries `token` (constant time in the token's length).
bool authorized(std::string_view authorization, std::string_view token) noexcept;

// What the endpoint serves from, given by the daemon at start-up.
struct sources {
    std::span<const core::shard_metrics> metrics;  // one per shard
    std::vector<std::string> listeners;            // listener addresses, by index
    std::string spool_dir;                         // statvfs for ringmail_spool_free_bytes
    std::string token;                             // "" = no authentication
    admin_mailbox* mailbox = nullptr;              // null: no shard to ask (tests)
    unsigned shards = 0;
    queue::suspensions suspensions;  // restored at start-up: the master copy from now on
    std::string suspensions_path;    // where changes are written
    std::function<void()> drain;     // POST /api/v1/drain (the daemon raises SIGTERM)
};

class admin_connection;

class server final : public core::shard_base {
  public:
    static constexpr std::size_t max_connections = 64;

    // `thread_id`: the shard id the admin thread takes (one no shard uses). No address: no
    // listener (the store's keeper only).
    server(unsigned thread_id, std::optional<core::endpoint> address, const health& h,
           sources src = {});
    ~server() override;

    const health& state() const noexcept { return _health; }
    // The connection closed and nothing names it: destroyed at the end of the iteration.
    void forget(std::uint64_t id);
    // One complete request of connection `conn`: the response now, or nullopt when it waits
    // for the shards (the connection then gets it through respond()).
    std::optional<std::string> handle(std::uint64_t conn, const http_request& req);

  private:
    bool start(std::string& why) override;
    void started() override;
    void begin_drain() override;
    bool drained(bool late) override;

    void accepted(core::ring_fd fd);

    struct pending;
    // Sends `m` to every shard; false (nothing sent) when a ring is full.
    bool ask_shards(std::uint64_t conn, bool keep_alive, control_message m,
                    std::function<std::string(pending&)> finish);
    void on_reply(control_message&& m);
    bool save_suspensions(std::string& why);
    // A shard's rule fired: into the store (written and sent at the end of the iteration).
    void on_rule_effect(queue::suspension s);
    void store_changed_by_rules();

    const std::optional<core::endpoint> _address;
    const health& _health;
    sources _src;
    std::unordered_map<std::uint64_t, std::unique_ptr<pending>> _pending;  // by token
    std::uint64_t _next_token = 1;
    // Rule effects not yet written / not yet sent to the shards; a copy of the store for the
    // rules' changes is on its way (at most one).
    bool _rules_unsaved = false;
    bool _rules_unsent = false;
    bool _broadcast_out = false;
    std::unique_ptr<core::acceptor> _listener;
    core::connection_set<admin_connection> _connections;
};

}  // namespace ringmail::admin
