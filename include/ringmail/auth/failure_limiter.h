// Failed-AUTH limiter: after `max_failures` failed attempts from one client address within
// `window`, any shard answers 421 4.7.0 and closes instead of verifying more passwords.
//
// One per daemon, shared by every shard (daemon::context owns it; the shards only call it).
// SO_REUSEPORT spreads one client's connections over the shards, so a per-shard count would
// let a client guess max_failures x shards times per window; this table counts all shards
// together. It is a fixed array of 64-bit atomic words, each one whole entry (tag, window start,
// count), updated by compare-and-swap: no lock, no allocation after construction, and no torn
// entry (an update either lands on the word it read or retries). It is only touched on an AUTH
// start and a failed AUTH, never on a message path.
//
// Keys: an IPv4 address (IPv4-mapped IPv6 counts as IPv4) or the /64 of an IPv6 address, since
// one IPv6 client usually owns a whole /64. A key is hashed with a per-process random seed (so
// a client cannot choose addresses that collide) to a bucket of 8 words (one cache line) and a
// 24-bit tag inside it. Two keys share a count only if both bucket and tag collide.
//
// Bounded memory: `max_entries` words (rounded up to a power of two, at least one bucket). A
// new key in a full bucket evicts the entry with the fewest failures (the oldest among equals),
// so a flood of addresses with one failure each does not push out a client already blocked.
// Two shards inserting the same new key at once may, rarely, give it two words; a key's count
// is the sum over its words, so nothing is lost.
//
// Times are whole seconds of steady_clock kept modulo 2^26 (about 2 years); the window is
// clamped to 30 days, so an entry is never mistaken for a fresh one while it could matter.
// Counts saturate at 16383 (the config bounds max_failures to 10000).
//
// A success does not reset the count: with one valid account an attacker could otherwise reset
// its own limit between guesses at other accounts.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <sys/socket.h>

namespace ringmail::auth {

struct failure_limiter_options {
    unsigned max_failures = 5;
    std::chrono::seconds window{300};
    std::size_t max_entries = 16384;  // addresses tracked, all shards together
    // The hash seed; 0 = random (tests pass a fixed one).
    std::uint64_t seed = 0;
};

class failure_limiter {
  public:
    using clock = std::chrono::steady_clock;

    using options = failure_limiter_options;

    static constexpr unsigned max_count = (1u << 14) - 1;
    static constexpr std::chrono::seconds max_window{30 * 24 * 3600};
    static constexpr std::size_t bucket_ways = 8;

    // 16 bytes: IPv4 as ::ffff:a.b.c.d, IPv6 with the low 64 bits cleared.
    using key = std::array<std::uint8_t, 16>;
    // nullopt-free: other families (AF_UNIX, null) all map to one all-zero key.
    static key key_of(const sockaddr* addr) noexcept;

    // max_failures is clamped to [1, max_count], the window to [1 s, max_window], max_entries
    // up to a power of two of at least bucket_ways.
    explicit failure_limiter(options o = {});

    failure_limiter(const failure_limiter&) = delete;
    failure_limiter& operator=(const failure_limiter&) = delete;

    // Any thread. True when this client must get 421 4.7.0 instead of another attempt.
    bool blocked(const key& k, clock::time_point now) const noexcept;
    bool blocked(const sockaddr* addr, clock::time_point now) const noexcept {
        return blocked(key_of(addr), now);
    }

    // Any thread. Counts one failed attempt (535); returns blocked(k, now) afterwards.
    bool record_failure(const key& k, clock::time_point now) noexcept;
    bool record_failure(const sockaddr* addr, clock::time_point now) noexcept {
        return record_failure(key_of(addr), now);
    }

    // Failures counted for `k` in its current window (0 when none or expired).
    unsigned failures(const key& k, clock::time_point now) const noexcept;
    // Entries whose window is still open (a scan: tests and diagnostics).
    std::size_t size(clock::time_point now) const noexcept;
    std::size_t capacity() const noexcept { return _slots; }
    const options& opts() const noexcept { return _opts; }

  private:
    struct located {
        std::size_t bucket;  // index of the bucket's first word
        std::uint32_t tag;   // never 0: a word of 0 is empty
    };
    located locate(const key& k) const noexcept;
    std::uint32_t now_seconds(clock::time_point now) const noexcept;
    bool live(std::uint64_t word, std::uint32_t now_s) const noexcept;

    options _opts;
    std::size_t _slots = 0;
    std::size_t _bucket_mask = 0;  // buckets - 1
    std::unique_ptr<std::atomic<std::uint64_t>[]> _words;
};

}  // namespace ringmail::auth
