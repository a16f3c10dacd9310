#include "ringmail/core/cidr.h"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <system_error>

namespace ringmail::core {

namespace {

failure bad() {
    return failure(std::make_error_code(std::errc::invalid_argument));
}

// True when the first `prefix` bits of a and b agree.
bool same_prefix(const std::uint8_t* a, const std::uint8_t* b, unsigned prefix) noexcept {
    const unsigned whole = prefix / 8;
    if (std::memcmp(a, b, whole) != 0)
        return false;
    const unsigned rest = prefix % 8;
    if (rest == 0)
        return true;
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

result<cidr> parse_cidr(std::string_view text, host_bits mode) {
    cidr out;
    std::string_view ip = text;
    std::string_view len;
    bool has_len = false;
    if (const auto slash = text.find('/'); slash != std::string_view::npos) {
        ip = text.substr(0, slash);
        len = text.substr(slash + 1);
        has_len = true;
    }
    // inet_pton wants a NUL-terminated string; the longest IPv6 text form is 45 characters.
    char buf[INET6_ADDRSTRLEN + 1];
    if (ip.empty() || ip.size() >= sizeof buf)
        return bad();
    std::memcpy(buf, ip.data(), ip.size());
    buf[ip.size()] = '\0';

    unsigned max_len = 0;
    if (inet_pton(AF_INET, buf, out.bytes.data()) == 1) {
        out.family = AF_INET;
        max_len = 32;
    } else if (inet_pton(AF_INET6, buf, out.bytes.data()) == 1) {
        out.family = AF_INET6;
        max_len = 128;
    } else {
        return bad();
    }

    out.prefix = max_len;
    if (has_len) {
        if (len.empty() || len.size() > 3 || (len.size() > 1 && len[0] == '0'))
            return bad();
        unsigned n = 0;
        for (const char c : len) {
            if (c < '0' || c > '9')
                return bad();
            n = n * 10 + static_cast<unsigned>(c - '0');
        }
        if (n > max_len)
            return bad();
        out.prefix = n;
    }

    // Host bits: everything after the prefix must be zero.
    const unsigned total = max_len / 8;
    bool host_set = false;
    for (unsigned i = 0; i < total; ++i) {
        const unsigned bit0 = i * 8;
        std::uint8_t keep = 0xff;
        if (bit0 >= out.prefix) {
            keep = 0;
        } else if (out.prefix - bit0 < 8) {
            keep = static_cast<std::uint8_t>(0xff << (8 - (out.prefix - bit0)));
        }
        if ((out.bytes[i] & ~keep) != 0)
            host_set = true;
        out.bytes[i] &= keep;
    }
    if (host_set && mode == host_bits::reject)
        return bad();
    return out;
}

std::string to_string(const cidr& c) {
    char buf[INET6_ADDRSTRLEN];
    if (inet_ntop(c.family, c.bytes.data(), buf, sizeof buf) == nullptr)
        return "?";
    return fmt::format("{}/{}", buf, c.prefix);
}

bool contains(const cidr& range, const sockaddr* addr) noexcept {
    if (addr == nullptr)
        return false;
    if (addr->sa_family == AF_INET) {
        if (range.family != AF_INET)
            return false;
        sockaddr_in sin;
        std::memcpy(&sin, addr, sizeof sin);
        return same_prefix(reinterpret_cast<const std::uint8_t*>(&sin.sin_addr), range.bytes.data(),
                           range.prefix);
    }
    if (addr->sa_family == AF_INET6) {
        sockaddr_in6 sin6;
        std::memcpy(&sin6, addr, sizeof sin6);
        const auto* a = reinterpret_cast<const std::uint8_t*>(&sin6.sin6_addr);
        if (range.family == AF_INET6)
            return same_prefix(a, range.bytes.data(), range.prefix);
        if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            return same_prefix(a + 12, range.bytes.data(), range.prefix);
        }
        return false;
    }
    return false;
}

bool cidr_set::contains(const sockaddr* addr) const noexcept {
    for (const auto& r : _ranges) {
        if (core::contains(r, addr))
            return true;
    }
    return false;
}

}  // namespace ringmail::core
