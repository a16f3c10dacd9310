#include "ringmail/core/socket.h"

#include "ringmail/core/errc.h"

#include <fmt/format.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <netinet/tcp.h>
#include <sys/un.h>
#include <unistd.h>

namespace ringmail::core {

std::uint16_t endpoint::port() const noexcept {
    if (storage.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    }
    if (storage.ss_family == AF_INET6) {
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    }
    return 0;
}

bool operator==(const endpoint& a, const endpoint& b) noexcept {
    return a.len == b.len && std::memcmp(&a.storage, &b.storage, a.len) == 0;
}

namespace {

bool parse_port(std::string_view s, host_port_rules rules, std::uint16_t& out) {
    if (s.empty() || s.size() > 5 || (!rules.leading_zeros && s.size() > 1 && s[0] == '0'))
        return false;
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > 65535 || (v == 0 && !rules.port_zero))
        return false;
    out = static_cast<std::uint16_t>(v);
    return true;
}

}  // namespace

result<host_port_parts> split_host_port(std::string_view text, host_port_rules rules) {
    host_port_parts out;
    std::string_view port_text;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos)
            return failure(errc::bad_endpoint);
        if (close + 1 == text.size())
            return failure(errc::bad_port);
        if (text[close + 1] != ':')
            return failure(errc::bad_endpoint);
        out.host = text.substr(1, close - 1);
        port_text = text.substr(close + 2);
        out.bracketed = true;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos)
            return failure(errc::bad_port);
        out.host = text.substr(0, colon);
        if (out.host.find(':') != std::string_view::npos)
            return failure(errc::bad_endpoint);  // a bare IPv6 literal
        port_text = text.substr(colon + 1);
    }
    if (!parse_port(port_text, rules, out.port))
        return failure(errc::bad_port);
    if (out.host.empty())
        return failure(errc::bad_endpoint);
    return out;
}

result<endpoint> parse_endpoint(std::string_view text) {
    auto parts = split_host_port(text, host_port_rules{.port_zero = true, .leading_zeros = true});
    if (!parts)
        return failure(parts.error());
    const std::string host(parts->host);
    endpoint ep;
    if (parts->bracketed) {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ep.storage);
        // Zone ids ("%eth0") are not supported: listen/relay addresses are global or loopback.
        if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) != 1)
            return failure(errc::bad_endpoint);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(parts->port);
        ep.len = sizeof(sockaddr_in6);
    } else {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ep.storage);
        // inet_pton accepts only the dotted-quad form (no "127.1", no octal), as wanted.
        if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1)
            return failure(errc::bad_endpoint);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(parts->port);
        ep.len = sizeof(sockaddr_in);
    }
    return ep;
}

std::string to_string(const endpoint& ep) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ep.family() == AF_INET) {
        auto* sin = reinterpret_cast<const sockaddr_in*>(&ep.storage);
        inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
        return fmt::format("{}:{}", buf, ep.port());
    }
    if (ep.family() == AF_INET6) {
        auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ep.storage);
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
        // One formatted write, not "[" + std::string + "]:" + ...: GCC 12 at -O3 reports a
        // false -Wrestrict inside the inlined string concatenation (GCC PR 105651).
        return fmt::format("[{}]:{}", buf, ep.port());
    }
    return "<unknown address family>";
}

std::string ip_text(const endpoint& ep) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ep.family() == AF_INET) {
        auto* sin = reinterpret_cast<const sockaddr_in*>(&ep.storage);
        inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
        return buf;
    }
    if (ep.family() == AF_INET6) {
        auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ep.storage);
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
        return buf;
    }
    return "<unknown address family>";
}

result<endpoint> endpoint_from_sockaddr(const sockaddr* sa, socklen_t len) {
    endpoint ep;
    if (sa == nullptr)
        return failure(errc::bad_address_family);
    if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
        ep.len = sizeof(sockaddr_in);
    } else if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
        ep.len = sizeof(sockaddr_in6);
    } else {
        return failure(errc::bad_address_family);
    }
    std::memcpy(&ep.storage, sa, ep.len);
    return ep;
}

namespace {

template <typename F>
result<endpoint> query_name(int fd, F f) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (f(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return sys_failure(errno);
    return endpoint_from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

result<void> set_int_option(int fd, int level, int name, int value) {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0)
        return sys_failure(errno);
    return {};
}

}  // namespace

result<endpoint> local_endpoint(int fd) {
    return query_name(fd, ::getsockname);
}
result<endpoint> peer_endpoint(int fd) {
    return query_name(fd, ::getpeername);
}

result<int> make_listener(const endpoint& ep, int backlog) {
    if (ep.family() != AF_INET && ep.family() != AF_INET6) {
        return failure(errc::bad_address_family);
    }
    int fd = ::socket(ep.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        return sys_failure(errno);
    auto fail = [fd](std::error_code ec) {
        ::close(fd);
        return failure(ec);
    };
    if (auto r = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1); !r)
        return fail(r.error());
    if (auto r = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1); !r)
        return fail(r.error());
    if (ep.family() == AF_INET6) {
        if (auto r = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1); !r)
            return fail(r.error());
    }
    if (::bind(fd, ep.addr(), ep.len) != 0)
        return fail({errno, std::system_category()});
    if (::listen(fd, backlog) != 0)
        return fail({errno, std::system_category()});
    return fd;
}

result<int> claim_endpoint(const endpoint& ep) {
    if (ep.family() != AF_INET && ep.family() != AF_INET6)
        return failure(errc::bad_address_family);
    if (ep.port() == 0)
        return -1;
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sys_failure(errno);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    // Abstract namespace: a leading NUL, then the name (not NUL-terminated; its length counts).
    const std::string name = fmt::format("ringmaild listen {}", to_string(ep));
    const std::size_t n = std::min(name.size(), sizeof un.sun_path - 1);
    std::memcpy(un.sun_path + 1, name.data(), n);
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&un), len) != 0) {
        const int err = errno;
        ::close(fd);
        return err == EADDRINUSE ? failure(errc::address_claimed) : sys_failure(err);
    }
    return fd;
}

result<void> probe_unshared(const endpoint& ep) {
    if (ep.family() != AF_INET && ep.family() != AF_INET6)
        return failure(errc::bad_address_family);
    if (ep.port() == 0)
        return {};
    int fd = ::socket(ep.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        return sys_failure(errno);
    auto done = [fd](result<void> r) {
        ::close(fd);
        return r;
    };
    if (auto r = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1); !r)
        return done(r);
    if (ep.family() == AF_INET6) {
        if (auto r = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1); !r)
            return done(r);
    }
    if (::bind(fd, ep.addr(), ep.len) != 0) {
        const int err = errno;
        return done(err == EADDRINUSE ? failure(errc::address_listened) : sys_failure(err));
    }
    return done({});
}

result<int> make_tcp_socket(int family) {
    if (family != AF_INET && family != AF_INET6)
        return failure(errc::bad_address_family);
    int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        return sys_failure(errno);
    return fd;
}

result<void> set_nodelay(int fd, bool on) {
    return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0);
}

result<void> bind_source(int fd, const endpoint& source) {
    if (source.family() != AF_INET && source.family() != AF_INET6)
        return failure(errc::bad_address_family);
    (void)set_int_option(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
    if (::bind(fd, source.addr(), source.len) != 0)
        return sys_failure(errno);
    return {};
}

}  // namespace ringmail::core
