// Failed-AUTH limiter: after `max_failures` failed attempts from one client address within
// `window`, the shard answers 421 4.7.0 and closes instead of verifying more passwords.
//
// One per shard, used only by that shard's thread (pure: the caller passes the time). Memory is
// bounded: at most `max_entries` addresses are tracked; a new address past that evicts the one
// whose last failure is oldest. Keys: an IPv4 address (IPv4-mapped IPv6 counts as IPv4) or the
// /64 of an IPv6 address, since one IPv6 client usually owns a whole /64.
//
// Per shard, not global: SO_REUSEPORT spreads one client's connections over the shards, so a
// client may get up to max_failures x shards attempts per window. That is acceptable: the limit
// exists to make guessing slow, not to stop it at an exact count, and every attempt still costs
// the client a connection and a full SASL exchange and costs us one slow hash in the verifier
// (where a full queue turns further attempts into 454 without hashing). A global table would
// need cross-shard synchronisation on every failure for a constant-factor gain.
//
// A success does not reset the count: with one valid account an attacker could otherwise reset
// its own limit between guesses at other accounts.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <sys/socket.h>
#include <unordered_map>

namespace ringmail::auth {

struct failure_limiter_options {
    unsigned max_failures = 5;
    std::chrono::seconds window{300};
    std::size_t max_entries = 4096;  // addresses tracked per shard
};

class failure_limiter {
  public:
    using clock = std::chrono::steady_clock;

    using options = failure_limiter_options;

    // 16 bytes: IPv4 as ::ffff:a.b.c.d, IPv6 with the low 64 bits cleared.
    using key = std::array<std::uint8_t, 16>;
    // nullopt-free: other families (AF_UNIX, null) all map to one all-zero key.
    static key key_of(const sockaddr* addr) noexcept;

    // Options with max_failures 0 or max_entries 0 are clamped to 1.
    explicit failure_limiter(options o = {});

    // True when this client must get 421 4.7.0 instead of another attempt.
    bool blocked(const key& k, clock::time_point now) const;
    bool blocked(const sockaddr* addr, clock::time_point now) const {
        return blocked(key_of(addr), now);
    }

    // Counts one failed attempt (535); returns blocked(k, now) afterwards.
    bool record_failure(const key& k, clock::time_point now);
    bool record_failure(const sockaddr* addr, clock::time_point now) {
        return record_failure(key_of(addr), now);
    }

    std::size_t size() const noexcept { return _entries.size(); }
    const options& opts() const noexcept { return _opts; }

  private:
    struct key_hash {
        std::size_t operator()(const key& k) const noexcept;
    };
    struct entry {
        unsigned failures = 0;
        clock::time_point window_start;
        std::list<key>::iterator order;  // position in _order (front = oldest last failure)
    };

    options _opts;
    std::unordered_map<key, entry, key_hash> _entries;
    std::list<key> _order;
};

}  // namespace ringmail::auth
