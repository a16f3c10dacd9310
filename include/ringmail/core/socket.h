// Socket addresses and the few socket syscalls made outside the ring (at start-up or when a
// connection is opened): listeners, outbound TCP sockets, options.
//
// No shard affinity: pure functions over fds and addresses. Text that does not parse fails
// with errc::bad_endpoint / errc::bad_port (host names are never resolved here: that is the
// DNS part's job); syscall failures carry errno.
#pragma once

#include "ringmail/core/result.h"

#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace ringmail::core {

struct endpoint {
    sockaddr_storage storage{};
    socklen_t len = 0;

    int family() const noexcept { return storage.ss_family; }
    const sockaddr* addr() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
    std::uint16_t port() const noexcept;
};

bool operator==(const endpoint& a, const endpoint& b) noexcept;

// A host and a port as written in the configuration or on a command line.
struct host_port {
    std::string host;  // a name, or an IP literal (IPv6 without brackets)
    std::uint16_t port = 0;

    friend bool operator==(const host_port&, const host_port&) = default;
};

// What the callers of split_host_port tolerate beyond "host:port" with port 1..65535 in
// plain digits: port 0 (binding an ephemeral port), and leading zeros ("00025").
struct host_port_rules {
    bool port_zero = false;
    bool leading_zeros = false;
};

struct host_port_parts {
    std::string_view host;  // without brackets
    std::uint16_t port = 0;
    bool bracketed = false;  // "[...]:port" (an IPv6 literal)
};

// The one parser of "host:port" and "[v6]:port" (listen addresses, the smarthost, routes, DNS
// servers, the tools' targets). The host is not checked here beyond being non-empty and, when
// not bracketed, free of ':' (IPv6 needs its brackets). errc::bad_port: no port, or not a
// port by `rules`; errc::bad_endpoint: anything else.
result<host_port_parts> split_host_port(std::string_view text, host_port_rules rules = {});

// "1.2.3.4:25" or "[2001:db8::1]:25". Port 0 is accepted (bind to an ephemeral port);
// configuration code rejects it where a real port is needed.
result<endpoint> parse_endpoint(std::string_view text);
// The inverse: IPv4 as "a.b.c.d:port", IPv6 as "[addr]:port".
std::string to_string(const endpoint& ep);
// Just the address, without port or brackets ("192.0.2.1", "2001:db8::1"): what envelopes,
// Received headers and the delivery log record.
std::string ip_text(const endpoint& ep);
result<endpoint> endpoint_from_sockaddr(const sockaddr* sa, socklen_t len);

// Address a bound/connected socket has (getsockname / getpeername).
result<endpoint> local_endpoint(int fd);
result<endpoint> peer_endpoint(int fd);

// Listening TCP socket with SO_REUSEADDR + SO_REUSEPORT (one per shard on the same address,
// the kernel spreads connections), IPV6_V6ONLY for IPv6, close-on-exec. Blocking mode is
// left on: the ring never blocks on it.
result<int> make_listener(const endpoint& ep, int backlog);
// Start-up checks that this process is the only one serving `ep` (issue 12: SO_REUSEPORT lets a
// second daemon of the same user bind the same address and silently take a share of the
// connections). Both are made on the main thread before any shard binds; port 0 (an
// ephemeral port) passes both untouched.
//
// claim_endpoint: binds an abstract AF_UNIX socket named after the address ("ringmaild listen
// " + to_string(ep)) and returns its fd, to be kept open for the life of the process (the
// kernel frees the name when the process dies, so it is never stale). errc::address_claimed
// when another ringmaild in this network namespace holds it; race-free between two daemons
// started at once.
result<int> claim_endpoint(const endpoint& ep);
// probe_unshared: binds a TCP socket to `ep` without SO_REUSEPORT (with SO_REUSEADDR, so
// connections in TIME_WAIT do not count), never listens, closes it. The kernel refuses the bind
// when any socket listens on an overlapping address: the same one, the wildcard of its family
// (0.0.0.0 or [::]), a dual-stack [::]; or, for a wildcard `ep`, any address of the family:
// errc::address_listened. Catches other programs, and daemons the claim cannot see.
result<void> probe_unshared(const endpoint& ep);

// Unconnected TCP socket (close-on-exec) for a ring connect.
result<int> make_tcp_socket(int family);
result<void> set_nodelay(int fd, bool on = true);
// Binds an unconnected TCP socket to a source address (port 0: the kernel picks it at connect,
// IP_BIND_ADDRESS_NO_PORT, so many sources x destinations do not exhaust ephemeral ports). A
// source not on any interface fails with EADDRNOTAVAIL (std::generic_category, so callers can
// tell it from other errors).
result<void> bind_source(int fd, const endpoint& source);

}  // namespace ringmail::core
