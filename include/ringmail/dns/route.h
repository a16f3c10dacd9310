// Mail routes: the ordered mail exchangers of a domain, and the pure rules that turn DNS
// answers into one (RFC 5321 §5.1, RFC 7505, RFC 2308).
//
// Everything here is a pure function of its inputs (answers as c-ares status + raw bytes,
// the clock and the random source passed in), so the resolver's decisions are tested without
// a network. No shard affinity. Malformed answers give errc::bad_response (temporary); the
// permanent errors are NXDOMAIN, null MX, no address at all for an implicit MX and a bad name.
#pragma once

#include "ringmail/core/reactor.h"
#include "ringmail/core/result.h"
#include "ringmail/core/socket.h"
#include "ringmail/dns/errc.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ringmail::dns {

using clock = core::reactor::clock;

struct mx_host {
    std::string name;  // lower case, no final dot
    std::uint16_t preference = 0;
    std::vector<core::endpoint> addresses;  // IPv4 first, then IPv6, with the route's port
};

struct route {
    std::string domain;          // as looked up: lower case, no final dot
    std::vector<mx_host> hosts;  // in the order to try; every host has at least one address
    bool implicit = false;       // no MX records: the domain's own addresses (preference 0)
    clock::time_point expires;   // when the answer stops being valid
};

// Returns a uniformly distributed 64-bit value; injectable so tests can seed it.
using random_source = std::function<std::uint64_t()>;

// Sorts by preference (stable order never inverts preferences) and shuffles each run of
// equal preference uniformly with `random`.
void order_exchangers(std::vector<mx_host>& hosts, const random_source& random);

// How long answers stay cached.
struct ttl_policy {
    std::chrono::seconds max_positive{std::chrono::hours(24)};
    std::chrono::seconds default_negative{std::chrono::minutes(5)};  // NXDOMAIN/NODATA w/o SOA
    std::chrono::seconds max_negative{std::chrono::hours(1)};
    std::chrono::seconds temporary{std::chrono::seconds(30)};  // SERVFAIL, timeouts, ...
};

// Maps a c-ares status (ARES_E*) to a dns error; ARES_SUCCESS gives an empty code.
std::error_code from_ares_status(int status) noexcept;

// Lower-cases, drops one final dot and checks the syntax (labels of 1..63 octets, at most 253
// octets in all, no empty label, no octet that cannot appear in a DNS name we would query).
result<std::string> normalize_domain(std::string_view domain);

// An address literal domain (RFC 5321 section 4.1.3: "[192.0.2.1]", "[IPv6:2001:db8::1]",
// prefix case-insensitive): its route is that one address, no DNS involved. nullopt when
// `domain` is not bracketed; errc::bad_domain when it is but does not hold a valid address.
std::optional<result<route>> address_literal_route(std::string_view domain, std::uint16_t port,
                                                   clock::time_point now);

// The route of a host named "localhost" or "*.localhost" (RFC 6761 §6.3): 127.0.0.1 then ::1
// at `port`, no DNS involved.
route loopback_route(std::string_view name, std::uint16_t port, clock::time_point now);

// The MX step. `error` set: the lookup ends with it. Otherwise `hosts` lists the exchangers
// to resolve (addresses empty), ordered, at most `max_hosts`.
struct mx_step {
    std::error_code error;
    std::vector<mx_host> hosts;
    bool implicit = false;
    std::chrono::seconds ttl{0};  // how long this answer (or error) may be cached
};
mx_step interpret_mx(std::string_view domain, int ares_status, std::span<const std::uint8_t> answer,
                     const ttl_policy& policy, const random_source& random, std::size_t max_hosts);

// One A or AAAA answer for one host. NXDOMAIN and NODATA are not errors here (the host
// simply has no address of that family); `error` carries temporary failures only.
struct address_step {
    std::error_code error;
    std::vector<core::endpoint> addresses;
    bool name_exists = true;  // false on NXDOMAIN
    std::chrono::seconds ttl{0};
};
address_step interpret_address(int family, int ares_status, std::span<const std::uint8_t> answer,
                               std::uint16_t port, const ttl_policy& policy,
                               std::size_t max_addresses);

// Puts the pieces together: `v6[i]` and `v4[i]` are the answers for `mx.hosts[i]`. Hosts
// without any address are skipped; when none is left the result is no_reachable_mx
// (temporary) for MX records, no_address (permanent) for an implicit MX whose name has no
// address, or the first temporary error when one host's lookup failed. `ttl` receives how long
// the result may be cached.
result<route> assemble_route(std::string_view domain, mx_step mx, std::span<address_step> v6,
                             std::span<address_step> v4, const ttl_policy& policy,
                             clock::time_point now, std::chrono::seconds& ttl);

}  // namespace ringmail::dns
