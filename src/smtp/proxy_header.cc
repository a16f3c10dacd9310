#include "ringmail/smtp/proxy_header.h"

#include <fmt/format.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <vector>

namespace ringmail::smtp {

namespace {

constexpr std::string_view v1_prefix = "PROXY ";
constexpr char v2_signature_bytes[] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                       '\n', 'Q',  'U',  'I',  'T',  '\n'};
constexpr std::string_view v2_signature(v2_signature_bytes, sizeof v2_signature_bytes);

bool is_prefix_of(std::string_view have, std::string_view full) {
    return have.size() <= full.size() && full.substr(0, have.size()) == have;
}

// Decimal 0..65535 without sign or leading zeros.
std::optional<std::uint16_t> parse_port(std::string_view t) {
    if (t.empty() || t.size() > 5 || (t.size() > 1 && t[0] == '0'))
        return std::nullopt;
    unsigned v = 0;
    for (char c : t) {
        if (c < '0' || c > '9')
            return std::nullopt;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > 65535)
        return std::nullopt;
    return static_cast<std::uint16_t>(v);
}

core::endpoint make_v4(const void* addr4, std::uint16_t port_net) {
    core::endpoint ep;
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    std::memcpy(&sin.sin_addr, addr4, 4);
    sin.sin_port = port_net;
    std::memcpy(&ep.storage, &sin, sizeof sin);
    ep.len = sizeof sin;
    return ep;
}

core::endpoint make_v6(const void* addr16, std::uint16_t port_net) {
    core::endpoint ep;
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    std::memcpy(&sin6.sin6_addr, addr16, 16);
    sin6.sin6_port = port_net;
    std::memcpy(&ep.storage, &sin6, sizeof sin6);
    ep.len = sizeof sin6;
    return ep;
}

// An IP literal of `family` in v1 text form.
bool parse_ip(int family, std::string_view t, unsigned char* out) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (t.empty() || t.size() >= sizeof buf)
        return false;
    std::memcpy(buf, t.data(), t.size());
    buf[t.size()] = '\0';
    return inet_pton(family, buf, out) == 1;
}

std::uint16_t be16(const std::string& b, std::size_t at) {
    return static_cast<std::uint16_t>((static_cast<unsigned char>(b[at]) << 8) |
                                      static_cast<unsigned char>(b[at + 1]));
}

}  // namespace

void proxy_reader::fail(std::string why) {
    _state = state::failed;
    _error = std::move(why);
}

std::size_t proxy_reader::feed(std::string_view bytes) {
    std::size_t taken = 0;
    while (taken < bytes.size()) {
        switch (_state) {
            case state::done:
            case state::failed:
                return taken;
            case state::start: {
                _buf += bytes[taken++];
                if (is_prefix_of(_buf, v1_prefix)) {
                    if (_buf.size() == v1_prefix.size())
                        _state = state::v1;
                } else if (is_prefix_of(_buf, v2_signature)) {
                    if (_buf.size() == v2_signature.size())
                        _state = state::v2;
                } else {
                    fail(_buf.size() == 1 || _buf[0] == 'P' ? "not a PROXY protocol header"
                                                            : "bad v2 signature");
                }
                break;
            }
            case state::v1: {
                const char c = bytes[taken++];
                const char prev = _buf.back();
                _buf += c;
                if (prev == '\r' && c != '\n') {
                    fail("v1 line with a bare CR");
                } else if (c == '\n') {
                    if (prev != '\r') {
                        fail("v1 line ends in a bare LF");
                    } else {
                        finish_v1();
                    }
                } else if (_buf.size() >= max_v1_size) {
                    // The CRLF would not fit in the spec's 107 octets.
                    fail(fmt::format("v1 line longer than {} octets", max_v1_size));
                }
                break;
            }
            case state::v2: {
                std::size_t want = (_v2_total == 0 ? v2_fixed_size : _v2_total) - _buf.size();
                const std::size_t n = std::min(want, bytes.size() - taken);
                _buf.append(bytes.substr(taken, n));
                taken += n;
                if (_buf.size() == v2_fixed_size && _v2_total == 0) {
                    _v2_total = v2_fixed_size + be16(_buf, 14);
                    if (_v2_total > _max_v2) {
                        fail(fmt::format("v2 header of {} octets, more than the limit of {}",
                                         _v2_total, _max_v2));
                        break;
                    }
                }
                if (_v2_total != 0 && _buf.size() == _v2_total)
                    finish_v2();
                break;
            }
        }
    }
    return taken;
}

void proxy_reader::finish_v1() {
    std::string_view line(_buf);
    line.remove_suffix(2);  // CRLF
    std::vector<std::string_view> tokens;
    while (true) {
        const auto sp = line.find(' ');
        tokens.push_back(line.substr(0, sp));
        if (sp == std::string_view::npos)
            break;
        line.remove_prefix(sp + 1);
    }
    // tokens[0] is "PROXY" (the prefix matched).
    if (tokens.size() < 2) {
        fail("v1 line without a protocol");
        return;
    }
    _header.version = 1;
    if (tokens[1] == "UNKNOWN") {
        // The balancer does not know the client (or it is not TCP): the rest is ignored.
        _header.local = true;
        _state = state::done;
        return;
    }
    int family = 0;
    if (tokens[1] == "TCP4") {
        family = AF_INET;
    } else if (tokens[1] == "TCP6") {
        family = AF_INET6;
    } else {
        fail("v1 protocol is not TCP4, TCP6 or UNKNOWN");
        return;
    }
    if (tokens.size() != 6) {
        fail("v1 line does not have 4 address fields separated by single spaces");
        return;
    }
    unsigned char src[16];
    unsigned char dst[16];
    if (!parse_ip(family, tokens[2], src) || !parse_ip(family, tokens[3], dst)) {
        fail(family == AF_INET ? "v1 address is not an IPv4 literal"
                               : "v1 address is not an IPv6 literal");
        return;
    }
    auto sport = parse_port(tokens[4]);
    auto dport = parse_port(tokens[5]);
    if (!sport || !dport) {
        fail("v1 port is not a decimal 0..65535");
        return;
    }
    if (family == AF_INET) {
        _header.source = make_v4(src, htons(*sport));
        _header.destination = make_v4(dst, htons(*dport));
    } else {
        _header.source = make_v6(src, htons(*sport));
        _header.destination = make_v6(dst, htons(*dport));
    }
    _state = state::done;
}

void proxy_reader::finish_v2() {
    const auto ver_cmd = static_cast<unsigned char>(_buf[12]);
    const auto fam = static_cast<unsigned char>(_buf[13]);
    const std::size_t len = _v2_total - v2_fixed_size;
    if ((ver_cmd >> 4) != 2) {
        fail(fmt::format("v2 header with version {}", ver_cmd >> 4));
        return;
    }
    _header.version = 2;
    const unsigned cmd = ver_cmd & 0x0F;
    if (cmd == 0) {
        // LOCAL: the balancer's own connection (a health check); addresses, if any, ignored.
        _header.local = true;
        _state = state::done;
        return;
    }
    if (cmd != 1) {
        fail(fmt::format("v2 command {} is neither LOCAL nor PROXY", cmd));
        return;
    }
    const unsigned af = fam >> 4;
    const unsigned transport = fam & 0x0F;
    if (af == 0) {
        // PROXY over an unspecified family: the spec says to use the real connection's.
        _header.local = true;
        _state = state::done;
        return;
    }
    if (af != 1 && af != 2) {
        fail(af == 3 ? "v2 family AF_UNIX is not supported"
                     : fmt::format("v2 family {} is unknown", af));
        return;
    }
    if (transport != 1) {
        fail("v2 transport is not STREAM");
        return;
    }
    const char* a = _buf.data() + v2_fixed_size;
    if (af == 1) {
        if (len < 12) {
            fail(fmt::format("v2 address block of {} octets is too short for IPv4", len));
            return;
        }
        std::uint16_t sp;
        std::uint16_t dp;
        std::memcpy(&sp, a + 8, 2);
        std::memcpy(&dp, a + 10, 2);
        _header.source = make_v4(a, sp);
        _header.destination = make_v4(a + 4, dp);
    } else {
        if (len < 36) {
            fail(fmt::format("v2 address block of {} octets is too short for IPv6", len));
            return;
        }
        std::uint16_t sp;
        std::uint16_t dp;
        std::memcpy(&sp, a + 32, 2);
        std::memcpy(&dp, a + 34, 2);
        _header.source = make_v6(a, sp);
        _header.destination = make_v6(a + 16, dp);
    }
    // What follows the addresses (TLVs: ALPN, authority, SSL, CRC...) is not used.
    _state = state::done;
}

}  // namespace ringmail::smtp
