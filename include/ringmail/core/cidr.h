// Address ranges ("127.0.0.0/8", "2001:db8::/32") and the question "is this client in one?",
// asked for relay permission and PROXY-protocol trust on every accepted connection.
//
// Values with no shard affinity: a cidr_set is built from the configuration at start-up and then
// only read, so every shard may share one. Malformed text is std::errc::invalid_argument.
#pragma once

#include "ringmail/core/result.h"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <vector>

namespace ringmail::core {

struct cidr {
    sa_family_t family = AF_INET;          // AF_INET or AF_INET6
    std::array<std::uint8_t, 16> bytes{};  // network address; IPv4 uses the first 4 bytes
    unsigned prefix = 0;                   // 0..32 (AF_INET) or 0..128 (AF_INET6)

    friend bool operator==(const cidr&, const cidr&) = default;
};

enum class host_bits {
    reject,  // "10.0.0.1/8" is an error: it is almost always a typo for a host or a network
    clear,   // "10.0.0.1/8" means 10.0.0.0/8 (used to suggest the fix in error messages)
};

// "ip/prefix" or a bare IP literal (a host route: /32 or /128). IPv6 without brackets and without
// a zone. Prefix lengths are decimal without sign or leading zeros.
result<cidr> parse_cidr(std::string_view text, host_bits mode = host_bits::reject);

// "10.0.0.0/8", "2001:db8::/32" (the inet_ntop form, always with the prefix).
std::string to_string(const cidr& c);

// IPv4 ranges match IPv4 clients and IPv4-mapped IPv6 clients (::ffff:127.0.0.1 is in
// 127.0.0.0/8: that is how a dual-stack socket reports IPv4 peers). IPv6 ranges match IPv6
// clients only, compared on all 128 bits. Null or other families never match.
bool contains(const cidr& range, const sockaddr* addr) noexcept;

class cidr_set {
  public:
    cidr_set() = default;
    explicit cidr_set(std::vector<cidr> ranges) : _ranges(std::move(ranges)) {}

    void add(const cidr& c) { _ranges.push_back(c); }
    bool contains(const sockaddr* addr) const noexcept;

    bool empty() const noexcept { return _ranges.empty(); }
    std::size_t size() const noexcept { return _ranges.size(); }
    const std::vector<cidr>& ranges() const noexcept { return _ranges; }

    friend bool operator==(const cidr_set&, const cidr_set&) = default;

  private:
    // A handful of entries in practice: a linear scan beats any tree at this size.
    std::vector<cidr> _ranges;
};

}  // namespace ringmail::core
