// The shard's DNS resolver: MX routes (DESIGN.md "The path of a message", step 6) on c-ares,
// driven by the shard's io_uring reactor. Nothing here blocks.
//
// One per shard, created and used on the shard's thread, bound to its core::reactor. c-ares
// owns the DNS sockets; every socket it reports is polled on the ring (one-shot polls, re-armed
// while c-ares wants them) and its retransmission timeouts run on a reactor timer. Answers and
// failures are cached by TTL (cache.h). Concurrent requests for one domain share one lookup.
// Callbacks always run from the reactor loop, never inside resolve_route, so the caller is not
// re-entered half-way through its own call; a callback must not destroy the resolver.
//
// Failures are values (errc.h): permanent ones (NXDOMAIN, null MX, no address, bad name)
// bounce, everything else (SERVFAIL, timeouts, refused connections, shutdown) defers.
//
// Shutting down: call shutdown() (every outstanding callback completes with errc::cancelled
// before it returns), keep running the reactor until idle() (the ring has given back every
// poll, cancel and wake-up naming the resolver), then destroy it. Destroying it earlier is
// also safe as long as the reactor lives on: the objects the ring still names detach and free
// themselves when their last completion arrives.
#pragma once

#include "ringmail/core/reactor.h"
#include "ringmail/core/result.h"
#include "ringmail/core/timer.h"
#include "ringmail/dns/cache.h"
#include "ringmail/dns/route.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

struct ares_channeldata;

namespace ringmail::dns {

struct resolver_options {
    // "ip", "ip:port" or "[ipv6]:port" (port 53 when absent); empty: /etc/resolv.conf.
    std::vector<std::string> servers;
    std::chrono::milliseconds timeout{2000};  // per try, per server
    int tries = 2;
    std::uint16_t port = 25;  // port set in every endpoint of a route
    std::size_t cache_entries = 10'000;
    std::size_t max_lookups = 4096;  // distinct domains being looked up at once
    std::size_t max_waiters = 256;   // callbacks waiting on one lookup
    std::size_t max_mx_hosts = 16;   // exchangers kept per route, in order
    std::size_t max_addresses = 16;  // addresses kept per host and family
    ttl_policy ttl;
    random_source random;                    // empty: a generator seeded from random_device
    std::function<clock::time_point()> now;  // empty: the reactor's now()
};

struct resolver_stats {
    std::uint64_t requests = 0;     // resolve_route calls
    std::uint64_t cache_hits = 0;   // answered from the cache
    std::uint64_t joined = 0;       // attached to a lookup already in flight
    std::uint64_t lookups = 0;      // lookups started (one MX query + address queries)
    std::uint64_t dns_queries = 0;  // queries handed to c-ares
};

class resolver {
  public:
    using callback = std::function<void(const result<route>&)>;

    // Fails with errc::internal (c-ares refused to start; `why` says why) or
    // core::errc::bad_endpoint (a server that does not parse).
    static result<std::unique_ptr<resolver>> create(core::reactor& reactor,
                                                    resolver_options options,
                                                    std::string* why = nullptr);
    ~resolver();
    resolver(const resolver&) = delete;
    resolver& operator=(const resolver&) = delete;

    // Looks up the mail route of `domain` (an A-label domain, not an address literal); `cb`
    // runs later from the reactor loop, exactly once.
    void resolve_route(std::string_view domain, callback cb);
    // The route to one fixed host (a relay named in the configuration): its addresses, with
    // `port`, as a route of that one host at preference 0. No MX lookup; an IP literal is
    // answered without DNS. Cached and shared like routes.
    void resolve_host(std::string_view host, std::uint16_t port, callback cb);

    // Ends every lookup (callbacks get errc::cancelled before this returns) and closes the
    // DNS sockets; later requests fail with errc::cancelled. Idempotent.
    void shutdown();
    // No ring operation names the resolver any more.
    bool idle() const noexcept { return _ops_in_flight == 0; }

    route_cache& cache() noexcept { return _cache; }
    const resolver_stats& stats() const noexcept { return _stats; }
    std::size_t lookups_in_flight() const noexcept { return _lookups.size(); }

  private:
    struct lookup;
    struct query_context;
    struct socket_watch;
    struct waker;
    struct timeout_timer final : core::timer {
        resolver* owner = nullptr;
        void on_expire() override { owner->on_timeout(); }
    };
    using shared_result = std::shared_ptr<const result<route>>;

    resolver(core::reactor& reactor, resolver_options options);

    clock::time_point now() const;
    // The lookup for `key` to start, with `cb` its first waiter; null when `cb` was answered
    // from the cache, joined a lookup in flight, or refused (overloaded).
    lookup* new_lookup(const std::string& key, const std::string& name, std::uint16_t port,
                       callback& cb);
    void start_lookup(lookup& l);
    void start_address_queries(lookup& l);
    void finish(lookup& l, result<route> value, std::chrono::seconds ttl);
    void complete_later(callback cb, shared_result value);
    void deliver_ready();
    void wake();

    void on_mx(lookup& l, int status, std::span<const std::uint8_t> answer);
    void on_address(query_context& q, int status, std::span<const std::uint8_t> answer);
    void on_socket_state(int fd, bool readable, bool writable);
    void on_timeout();
    void process_fd(int rfd, int wfd);
    void update_timer();
    void sync(socket_watch& w);
    void release_if_done(socket_watch& w);

    static void socket_state_cb(void* data, int fd, int readable, int writable);
    // c-ares opens and closes its sockets through these (see socket_watch in resolver.cc).
    friend struct socket_hooks;
    int open_socket(int family, int type, int protocol);
    void close_socket(int fd);
    static void mx_cb(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
    static void address_cb(void* arg, int status, int timeouts, unsigned char* abuf, int alen);

    core::reactor& _reactor;
    resolver_options _opts;
    ares_channeldata* _channel = nullptr;
    bool _stopping = false;
    std::mt19937_64 _rng;
    route_cache _cache;
    resolver_stats _stats;
    timeout_timer _timer;

    std::unordered_map<std::string, std::unique_ptr<lookup>> _lookups;
    std::vector<std::pair<callback, shared_result>> _ready;  // drained every loop iteration
    waker* _waker = nullptr;  // owns itself while a wake-up is in flight

    std::unordered_map<int, socket_watch*> _sockets;  // sockets c-ares has open, by fd
    std::unordered_set<socket_watch*> _watches;       // every watch alive (open or closing)
    std::uint64_t _generation = 0;
    std::size_t _ops_in_flight = 0;
};

}  // namespace ringmail::dns
