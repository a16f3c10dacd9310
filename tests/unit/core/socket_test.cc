#include "ringmail/core/socket.h"

#include "ringmail/core/errc.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <netinet/tcp.h>
#include <string>
#include <unistd.h>

namespace ringmail::core {
namespace {

struct endpoint_case {
    const char* text;
    bool ok;
    int family;
    std::uint16_t port;
    const char* canonical;  // to_string() of the parsed endpoint
    errc error;
};

class parse_endpoint_table : public ::testing::TestWithParam<endpoint_case> {};

TEST_P(parse_endpoint_table, parses_or_rejects) {
    const auto& c = GetParam();
    auto ep = parse_endpoint(c.text);
    if (!c.ok) {
        ASSERT_FALSE(ep.has_value()) << c.text << " -> " << to_string(ep.value());
        EXPECT_EQ(ep.error(), make_error_code(c.error)) << c.text;
        return;
    }
    ASSERT_TRUE(ep.has_value()) << c.text << ": " << ep.error().message();
    EXPECT_EQ(ep->family(), c.family);
    EXPECT_EQ(ep->port(), c.port);
    EXPECT_EQ(to_string(*ep), c.canonical);
    auto again = parse_endpoint(to_string(*ep));
    ASSERT_TRUE(again.has_value());
    EXPECT_TRUE(*again == *ep);
}

INSTANTIATE_TEST_SUITE_P(
    cases, parse_endpoint_table,
    ::testing::Values(
        endpoint_case{"127.0.0.1:2525", true, AF_INET, 2525, "127.0.0.1:2525", errc::ok},
        endpoint_case{"0.0.0.0:25", true, AF_INET, 25, "0.0.0.0:25", errc::ok},
        endpoint_case{"10.1.2.3:65535", true, AF_INET, 65535, "10.1.2.3:65535", errc::ok},
        endpoint_case{"127.0.0.1:0", true, AF_INET, 0, "127.0.0.1:0", errc::ok},
        endpoint_case{"127.0.0.1:00025", true, AF_INET, 25, "127.0.0.1:25", errc::ok},
        endpoint_case{"[::1]:2525", true, AF_INET6, 2525, "[::1]:2525", errc::ok},
        endpoint_case{"[2001:DB8::0:1]:587", true, AF_INET6, 587, "[2001:db8::1]:587", errc::ok},
        endpoint_case{"[::ffff:192.0.2.1]:25", true, AF_INET6, 25, "[::ffff:192.0.2.1]:25",
                      errc::ok},
        endpoint_case{"[::]:1", true, AF_INET6, 1, "[::]:1", errc::ok},
        endpoint_case{"127.0.0.1:65536", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:99999", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:123456", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:-1", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:+25", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1: 25", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1", false, 0, 0, "", errc::bad_port},
        endpoint_case{"127.0.0.1:25x", false, 0, 0, "", errc::bad_port},
        endpoint_case{"[::1]", false, 0, 0, "", errc::bad_port},
        endpoint_case{"[::1]:", false, 0, 0, "", errc::bad_port},
        endpoint_case{"[::1]:70000", false, 0, 0, "", errc::bad_port},
        endpoint_case{"", false, 0, 0, "", errc::bad_port},
        endpoint_case{":25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"localhost:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"mx.example.com:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"256.0.0.1:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"127.1:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"1.2.3.4.5:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"::1:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"[::1:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"[::1]25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"[]:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"[127.0.0.1]:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{"[fe80::1%eth0]:25", false, 0, 0, "", errc::bad_endpoint},
        endpoint_case{" 127.0.0.1:25", false, 0, 0, "", errc::bad_endpoint}));

TEST(socket, ip_text_is_the_address_alone) {
    for (auto [text, ip] : {std::pair{"127.0.0.1:25", "127.0.0.1"},
                            {"[::1]:2525", "::1"},
                            {"[2001:db8::1]:25", "2001:db8::1"},
                            {"[::ffff:192.0.2.1]:25", "::ffff:192.0.2.1"}}) {
        auto ep = parse_endpoint(text);
        ASSERT_TRUE(ep) << text;
        EXPECT_EQ(ip_text(*ep), ip) << text;
    }
    EXPECT_EQ(ip_text(endpoint{}), "<unknown address family>");
}

TEST(socket, endpoint_from_sockaddr_checks_family_and_length) {
    auto ep = parse_endpoint("192.0.2.7:25").value();
    auto copy = endpoint_from_sockaddr(ep.addr(), ep.len);
    ASSERT_TRUE(copy.has_value());
    EXPECT_EQ(to_string(*copy), "192.0.2.7:25");
    EXPECT_FALSE(endpoint_from_sockaddr(ep.addr(), 4).has_value());  // truncated
    sockaddr_storage un{};
    un.ss_family = AF_UNIX;
    auto bad = endpoint_from_sockaddr(reinterpret_cast<sockaddr*>(&un), sizeof un);
    ASSERT_FALSE(bad.has_value());
    EXPECT_EQ(bad.error(), make_error_code(errc::bad_address_family));
}

TEST(socket, listeners_share_a_port_with_reuseport) {
    auto l1 = make_listener(parse_endpoint("127.0.0.1:0").value(), 8);
    ASSERT_TRUE(l1.has_value()) << l1.error().message();
    auto bound = local_endpoint(*l1).value();
    EXPECT_NE(bound.port(), 0);
    auto l2 = make_listener(bound, 8);  // second shard, same address
    ASSERT_TRUE(l2.has_value()) << l2.error().message();

    int c = make_tcp_socket(AF_INET).value();
    ASSERT_EQ(::connect(c, bound.addr(), bound.len), 0);
    ASSERT_TRUE(set_nodelay(c).has_value());
    int v = 0;
    socklen_t len = sizeof v;
    ASSERT_EQ(::getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
    EXPECT_EQ(v, 1);
    auto peer = peer_endpoint(c).value();
    EXPECT_EQ(peer.port(), bound.port());
    for (int fd : {c, *l1, *l2})
        ::close(fd);
}

TEST(socket, ipv6_listener_is_v6only) {
    auto l = make_listener(parse_endpoint("[::1]:0").value(), 8);
    if (!l && (l.error().value() == EADDRNOTAVAIL || l.error().value() == EAFNOSUPPORT)) {
        GTEST_SKIP() << "no IPv6 loopback here";
    }
    ASSERT_TRUE(l.has_value()) << l.error().message();
    int v = 0;
    socklen_t len = sizeof v;
    ASSERT_EQ(::getsockopt(*l, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len), 0);
    EXPECT_EQ(v, 1);
    EXPECT_EQ(to_string(local_endpoint(*l).value()).rfind("[::1]:", 0), 0u);
    ::close(*l);
}

TEST(socket, errors_carry_a_reason) {
    EXPECT_EQ(make_tcp_socket(AF_UNIX).error(), make_error_code(errc::bad_address_family));
    auto in_use = make_listener(parse_endpoint("192.0.2.1:25").value(), 8);  // not our address
    ASSERT_FALSE(in_use.has_value());
    EXPECT_EQ(in_use.error().value(), EADDRNOTAVAIL);
}

endpoint with_port(const char* ip, std::uint16_t port) {
    return parse_endpoint(std::string(ip) + ":" + std::to_string(port)).value();
}

// The start-up probe: any socket listening on an overlapping address is found, a
// non-overlapping one is not, and nothing is left bound.
TEST(socket, probe_finds_a_listener_on_an_overlapping_address) {
    auto l = make_listener(parse_endpoint("127.0.0.1:0").value(), 8);
    ASSERT_TRUE(l.has_value()) << l.error().message();
    const std::uint16_t port = local_endpoint(*l).value().port();

    const auto listened = make_error_code(errc::address_listened);
    auto same = probe_unshared(with_port("127.0.0.1", port));
    ASSERT_FALSE(same.has_value());
    EXPECT_EQ(same.error(), listened);
    // The IPv4 wildcard covers 127.0.0.1 (bound only, never listening: nothing exposed).
    auto wildcard = probe_unshared(with_port("0.0.0.0", port));
    ASSERT_FALSE(wildcard.has_value());
    EXPECT_EQ(wildcard.error(), listened);
    // Another loopback address with the same port does not overlap.
    EXPECT_TRUE(probe_unshared(with_port("127.0.0.2", port)).has_value());
    // Nor does IPv6 (the daemon's IPv6 listeners are v6only).
    auto v6 = probe_unshared(with_port("[::]", port));
    EXPECT_TRUE(v6.has_value() || v6.error().value() == EAFNOSUPPORT) << v6.error().message();
    // The probe itself leaves nothing bound.
    EXPECT_TRUE(probe_unshared(with_port("127.0.0.2", port)).has_value());

    ::close(*l);
    EXPECT_TRUE(probe_unshared(with_port("127.0.0.1", port)).has_value());
    auto again = make_listener(with_port("127.0.0.1", port), 8);
    ASSERT_TRUE(again.has_value()) << again.error().message();
    ::close(*again);
}

TEST(socket, probe_finds_a_specific_listener_under_a_wildcard_probe_v6) {
    auto l = make_listener(parse_endpoint("[::1]:0").value(), 8);
    if (!l && (l.error().value() == EADDRNOTAVAIL || l.error().value() == EAFNOSUPPORT))
        GTEST_SKIP() << "no IPv6 loopback here";
    ASSERT_TRUE(l.has_value()) << l.error().message();
    const std::uint16_t port = local_endpoint(*l).value().port();
    auto same = probe_unshared(with_port("[::1]", port));
    ASSERT_FALSE(same.has_value());
    EXPECT_EQ(same.error(), make_error_code(errc::address_listened));
    auto wildcard = probe_unshared(with_port("[::]", port));
    ASSERT_FALSE(wildcard.has_value());
    EXPECT_EQ(wildcard.error(), make_error_code(errc::address_listened));
    EXPECT_TRUE(probe_unshared(with_port("127.0.0.1", port)).has_value());
    ::close(*l);
}

TEST(socket, probe_ignores_port_zero_and_time_wait) {
    EXPECT_TRUE(probe_unshared(parse_endpoint("127.0.0.1:0").value()).has_value());
    // A closed connection leaves the server side in TIME_WAIT: the address is free again.
    auto l = make_listener(parse_endpoint("127.0.0.1:0").value(), 8);
    ASSERT_TRUE(l.has_value());
    const auto bound = local_endpoint(*l).value();
    int c = make_tcp_socket(AF_INET).value();
    ASSERT_EQ(::connect(c, bound.addr(), bound.len), 0);
    int s = ::accept(*l, nullptr, nullptr);
    ASSERT_GE(s, 0);
    ::close(s);  // the server closes first: its side waits in TIME_WAIT
    ::close(c);
    ::close(*l);
    EXPECT_TRUE(probe_unshared(bound).has_value());
}

TEST(socket, claim_is_exclusive_while_held) {
    const auto ep = parse_endpoint("127.0.0.1:2").value();  // never bound: only the name
    auto a = claim_endpoint(ep);
    ASSERT_TRUE(a.has_value()) << a.error().message();
    ASSERT_GE(*a, 0);
    auto b = claim_endpoint(ep);
    ASSERT_FALSE(b.has_value());
    EXPECT_EQ(b.error(), make_error_code(errc::address_claimed));
    // Another address (or the same port on IPv6) is another claim.
    auto other = claim_endpoint(parse_endpoint("[::1]:2").value());
    ASSERT_TRUE(other.has_value());
    ::close(*other);
    ::close(*a);
    auto c = claim_endpoint(ep);
    ASSERT_TRUE(c.has_value()) << "a released claim stays taken";
    ::close(*c);
    // Port 0 is never claimed (each bind gets its own port).
    auto zero = claim_endpoint(parse_endpoint("127.0.0.1:0").value());
    ASSERT_TRUE(zero.has_value());
    EXPECT_EQ(*zero, -1);
}

// The one host:port parser, with the rules each caller keeps.
TEST(split_host_port, one_parser_for_every_caller) {
    auto hp = split_host_port("relay.example.test:2525");
    ASSERT_TRUE(hp);
    EXPECT_EQ(hp->host, "relay.example.test");
    EXPECT_EQ(hp->port, 2525);
    EXPECT_FALSE(hp->bracketed);
    hp = split_host_port("[2001:db8::1]:25");
    ASSERT_TRUE(hp);
    EXPECT_EQ(hp->host, "2001:db8::1");
    EXPECT_TRUE(hp->bracketed);
    // Port 0 only where a caller binds an ephemeral port; leading zeros only where asked.
    EXPECT_EQ(split_host_port("127.0.0.1:0").error(), make_error_code(errc::bad_port));
    EXPECT_TRUE(split_host_port("127.0.0.1:0", host_port_rules{.port_zero = true}));
    EXPECT_EQ(split_host_port("127.0.0.1:025").error(), make_error_code(errc::bad_port));
    EXPECT_EQ(split_host_port("127.0.0.1:025", host_port_rules{.leading_zeros = true})->port, 25);
    EXPECT_EQ(split_host_port("2001:db8::1:25").error(), make_error_code(errc::bad_endpoint));
    EXPECT_EQ(split_host_port(":25").error(), make_error_code(errc::bad_endpoint));
    EXPECT_EQ(split_host_port("host").error(), make_error_code(errc::bad_port));
    EXPECT_EQ(split_host_port("host:65536").error(), make_error_code(errc::bad_port));
}

}  // namespace
}  // namespace ringmail::core
