// Parked sessions: idle, healthy SMTP client sessions that belong to no destination any more,
// kept per address so that another destination whose route reaches the same host reuses the
// session (no connect, greeting or EHLO). Many domains share a few large mail exchangers; a
// bulk sender's shard sees the same MX addresses for thousands of destinations.
//
// Owned by one shard's delivery engine. Bounded (max_total sessions, max_per_address per
// ip:port); a parked session is QUIT after its time (the idle timeout) or when the pool stops.
// A session is adopted only when its TLS state meets the adopter's policy.
#pragma once

#include "ringmail/outbound/link.h"

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace ringmail::outbound {

// What a destination asks of a session it would adopt.
struct adoption_policy {
    smtp::tls_policy starttls = smtp::tls_policy::none;
    bool tls_context = false;  // a client context exists: a fresh session would try STARTTLS
    bool verify = false;       // only sessions verified for the same host name
};

class session_pool {
  public:
    using time_point = std::chrono::steady_clock::time_point;

    explicit session_pool(std::size_t max_total = 32, std::size_t max_per_address = 4)
        : _max_total(max_total), _max_per_address(max_per_address) {}

    // Takes `l` (ready and established) into the pool until `until`; false, and `l` left
    // as it is, when the pool or its address is full. `verified`: TLS is on and the peer
    // certificate was verified for target().host.
    bool park(std::unique_ptr<link>& l, bool verified, time_point until);
    // A parked session to one of `candidates` (one preference level of a route) that meets
    // `policy`, out of the pool; null when none.
    std::unique_ptr<link> adopt(std::span<const outbound_target> candidates,
                                const adoption_policy& policy);
    // Sessions whose time has come are stopped (QUIT) and moved to `stopped`; returns the
    // next expiry.
    std::optional<time_point> expire(time_point now, std::vector<std::unique_ptr<link>>& stopped);
    // A parked session that closed by itself leaves the pool; null when `l` is not parked.
    std::unique_ptr<link> take(const link& l);
    // Stops every session (force: close now) into `stopped`.
    void stop_all(bool force, std::vector<std::unique_ptr<link>>& stopped);

    bool empty() const noexcept { return _parked.empty(); }
    std::size_t size() const noexcept { return _parked.size(); }

  private:
    struct parked {
        std::unique_ptr<link> l;
        bool verified = false;
        time_point until;
    };
    std::size_t _max_total;
    std::size_t _max_per_address;
    std::vector<parked> _parked;  // oldest first
};

}  // namespace ringmail::outbound
