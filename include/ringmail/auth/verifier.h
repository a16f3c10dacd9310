// auth::verifier: password verification off the shard threads.
//
// A slow hash (argon2id, ~20 ms) on a shard thread would stall every session of that shard,
// so shards hand AUTH attempts to worker threads. Per shard there is a bounded request ring
// (shard -> worker) and a bounded response ring (worker -> shard), both core::spsc_ring, plus
// an eventfd the worker writes after it pushed a response: the shard's reactor keeps a read
// armed on response_fd(shard) and, when it completes, drains poll(shard). Shard s is served by
// worker s % workers, so every ring keeps exactly one producer and one consumer, without locks.
//
// Bounded: a shard has at most max_in_flight requests outstanding (submitted, response not yet
// polled). Past that submit() refuses at once and the session answers 454 4.7.0 (temporary
// failure) instead of blocking or queueing without limit. Because a response ring holds as many
// entries as the limit allows, a worker never finds it full and never waits for a shard.
//
// Cache: each worker remembers successful verifications (user -> HMAC-SHA256 of user and
// password under a random per-process key, with an expiry), so a bulk sender that reconnects
// constantly costs one slow hash per cache_ttl, not one per connection. Only successes are
// cached; a wrong password always costs a full hash. Caches are per worker (no sharing, no
// locks): with W workers a user costs at most W slow hashes per period. reload() swaps the
// credential store and clears the caches (a changed password must not keep working).
//
// Lifetime: built before the shards start, destroyed (or stop()ped) after they are joined.
// stop() answers requests still queued with `temporary` (without hashing) and joins the
// workers. Failures (eventfd, thread creation, RNG) happen in create() and are start-up
// errors; after that nothing fails except a hash computation, which answers `temporary`.
#pragma once

#include "ringmail/auth/credential_store.h"
#include "ringmail/core/result.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

namespace ringmail::auth {

struct verify_response {
    std::uint64_t token = 0;  // what submit() was given (the connection id)
    verdict result = verdict::fail;
};

struct verifier_options {
    unsigned workers = 1;              // clamped to the number of shards
    std::size_t max_in_flight = 256;   // per shard, 1..verifier::ring_capacity
    std::size_t cache_entries = 1024;  // per worker; 0 disables the cache
    std::chrono::seconds cache_ttl{300};
};

class verifier {
  public:
    static constexpr std::size_t ring_capacity = 256;
    static_assert(verifier_options{}.max_in_flight <= ring_capacity);

    using options = verifier_options;

    // Counters, any thread (relaxed; tests and metrics).
    struct counters {
        std::uint64_t hashes = 0;      // slow verifications done (store lookups)
        std::uint64_t cache_hits = 0;  // successes answered from the cache
        std::uint64_t refused = 0;     // submit() calls refused (-> 454)
    };

    // errc::bad_option for zero shards, zero workers or max_in_flight out of range; errors
    // from eventfd(2), thread creation or the RNG otherwise.
    static result<std::unique_ptr<verifier>> create(std::shared_ptr<const credential_store> store,
                                                    unsigned shards, options o = {});
    ~verifier();
    verifier(const verifier&) = delete;
    verifier& operator=(const verifier&) = delete;

    unsigned shards() const noexcept { return _shards; }
    unsigned workers() const noexcept { return _workers_n; }

    // --- On shard `shard`'s thread only.
    // Queues one verification. False (nothing queued) when max_in_flight requests of this shard
    // are outstanding or the verifier is stopping: answer 454 4.7.0. The verifier keeps its own
    // copy of the password and wipes it after use; the caller wipes its own. CRAM-MD5:
    // `password` is the client's hex digest and `cram_challenge` the challenge it answers.
    bool submit(unsigned shard, std::uint64_t token, std::string_view user,
                std::string_view password, std::string_view cram_challenge = {});
    // The current store has CRAM-MD5 entries (so CRAM-MD5 is offered). Any thread.
    bool cram_available() const noexcept { return _cram.load(std::memory_order_relaxed); }
    // One finished verification, or nullopt. Drain until nullopt after each eventfd read.
    std::optional<verify_response> poll(unsigned shard);
    // Non-blocking eventfd; readable (counter > 0) after responses were pushed. The shard's
    // reactor reads it; the value only wakes, poll() tells what arrived.
    int response_fd(unsigned shard) const;
    // Requests of this shard submitted and not yet polled.
    std::size_t in_flight(unsigned shard) const;

    // --- From one thread at a time (the main thread: start-up, SIGHUP).
    // Hands a new store to every worker; each clears its cache when it takes it. False when a
    // worker still has 4 reloads pending (try again later).
    bool reload(std::shared_ptr<const credential_store> store);
    // Idempotent; joins the workers.
    void stop();

    counters stats() const noexcept;

  private:
    struct shard_channel;
    struct worker;

    verifier(unsigned shards, unsigned workers, options o);
    void run(worker& w);
    void wake(worker& w);
    bool channels_empty(worker& w);

    unsigned _shards;
    unsigned _workers_n;
    options _opts;
    std::unique_ptr<shard_channel[]> _channels;
    std::unique_ptr<worker[]> _workers;
    std::atomic<bool> _stop{false};
    std::atomic<bool> _cram{false};
    bool _joined = false;
    std::atomic<std::uint64_t> _hashes{0};
    std::atomic<std::uint64_t> _cache_hits{0};
    std::atomic<std::uint64_t> _refused{0};
    unsigned char _mac_key[32] = {};
};

}  // namespace ringmail::auth
