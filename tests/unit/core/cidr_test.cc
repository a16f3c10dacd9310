#include "ringmail/core/cidr.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <string>
#include <sys/un.h>

namespace ringmail::core {
namespace {

// A client address as accept() would report it.
struct client {
    sockaddr_storage ss{};
    explicit client(const char* ip) {
        auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
            v4->sin_family = AF_INET;
            v4->sin_port = htons(40000);
        } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
            v6->sin6_family = AF_INET6;
            v6->sin6_port = htons(40000);
        } else {
            ADD_FAILURE() << "bad test address " << ip;
        }
    }
    const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
};

cidr must(const char* text) {
    auto c = parse_cidr(text);
    EXPECT_TRUE(c.has_value()) << text;
    return c ? *c : cidr{};
}

TEST(cidr, parse_forms) {
    struct {
        const char* text;
        const char* canonical;
        sa_family_t family;
        unsigned prefix;
    } cases[] = {
        {"127.0.0.0/8", "127.0.0.0/8", AF_INET, 8},
        {"0.0.0.0/0", "0.0.0.0/0", AF_INET, 0},
        {"192.0.2.7", "192.0.2.7/32", AF_INET, 32},
        {"192.0.2.7/32", "192.0.2.7/32", AF_INET, 32},
        {"192.0.2.128/25", "192.0.2.128/25", AF_INET, 25},
        {"::1/128", "::1/128", AF_INET6, 128},
        {"::1", "::1/128", AF_INET6, 128},
        {"::/0", "::/0", AF_INET6, 0},
        {"2001:DB8::/32", "2001:db8::/32", AF_INET6, 32},
        {"2001:db8:0:0:8000::/65", "2001:db8:0:0:8000::/65", AF_INET6, 65},
        {"::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104", AF_INET6, 104},
    };
    for (const auto& c : cases) {
        const auto r = parse_cidr(c.text);
        ASSERT_TRUE(r.has_value()) << c.text;
        EXPECT_EQ(r->family, c.family) << c.text;
        EXPECT_EQ(r->prefix, c.prefix) << c.text;
        EXPECT_EQ(to_string(*r), c.canonical) << c.text;
    }
}

TEST(cidr, parse_rejects) {
    for (const char* text : {"",
                             "/8",
                             "127.0.0.0/",
                             "127.0.0.0/33",
                             "::/129",
                             "127.0.0.0/08",
                             "127.0.0.0/-1",
                             "127.0.0.0/+8",
                             "127.0.0.0/8/8",
                             "127.0.0.0 /8",
                             "127.0.0.0/ 8",
                             "127.0.0/8",
                             "localhost",
                             "example.com/8",
                             "[::1]/128",
                             "fe80::1%eth0/64",
                             "10.0.0.1/8",
                             "11.0.0.0/7",
                             "192.0.2.1/31",
                             "::1/127",
                             "2001:db8::1/64",
                             "1.2.3.4/1000",
                             "2001:db8:0:0:0:0:0:0:1/128"}) {
        const auto r = parse_cidr(text);
        EXPECT_FALSE(r.has_value()) << text;
        if (!r) {
            EXPECT_EQ(r.error(), std::errc::invalid_argument) << text;
        }
    }
}

TEST(cidr, host_bits_clear_mode_masks) {
    const auto r = parse_cidr("10.1.2.3/8", host_bits::clear);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(to_string(*r), "10.0.0.0/8");
    const auto r6 = parse_cidr("2001:db8::1/33", host_bits::clear);
    ASSERT_TRUE(r6.has_value());
    EXPECT_EQ(to_string(*r6), "2001:db8::/33");
    const auto odd = parse_cidr("192.0.2.255/27", host_bits::clear);
    ASSERT_TRUE(odd.has_value());
    EXPECT_EQ(to_string(*odd), "192.0.2.224/27");
    EXPECT_FALSE(parse_cidr("nonsense", host_bits::clear).has_value());
}

struct match_case {
    const char* range;
    const char* addr;
    bool want;
};

class cidr_match : public ::testing::TestWithParam<match_case> {};

TEST_P(cidr_match, contains) {
    const auto& c = GetParam();
    EXPECT_EQ(contains(must(c.range), client(c.addr).sa()), c.want) << c.range << " " << c.addr;
}

INSTANTIATE_TEST_SUITE_P(
    all, cidr_match,
    ::testing::Values(
        // IPv4
        match_case{"127.0.0.0/8", "127.0.0.1", true},
        match_case{"127.0.0.0/8", "127.255.255.255", true},
        match_case{"127.0.0.0/8", "128.0.0.1", false},
        match_case{"127.0.0.0/8", "126.255.255.255", false},
        match_case{"192.0.2.128/25", "192.0.2.128", true},
        match_case{"192.0.2.128/25", "192.0.2.255", true},
        match_case{"192.0.2.128/25", "192.0.2.127", false},
        match_case{"192.0.2.0/23", "192.0.3.200", true},
        match_case{"192.0.2.0/23", "192.0.4.0", false},
        // edges
        match_case{"0.0.0.0/0", "203.0.113.9", true}, match_case{"0.0.0.0/0", "0.0.0.0", true},
        match_case{"192.0.2.7/32", "192.0.2.7", true},
        match_case{"192.0.2.7/32", "192.0.2.6", false},
        match_case{"192.0.2.7/32", "192.0.2.8", false}, match_case{"::/0", "2001:db8::1", true},
        match_case{"::/0", "::", true}, match_case{"::1/128", "::1", true},
        match_case{"::1/128", "::2", false}, match_case{"::1/128", "::", false},
        // IPv6
        match_case{"2001:db8::/32", "2001:db8:ffff::1", true},
        match_case{"2001:db8::/32", "2001:db9::1", false},
        match_case{"2001:db8:0:0:8000::/65", "2001:db8::8000:0:0:1", true},
        match_case{"2001:db8:0:0:8000::/65", "2001:db8::7fff:0:0:1", false},
        // IPv4-mapped IPv6 clients match IPv4 ranges
        match_case{"127.0.0.0/8", "::ffff:127.0.0.1", true},
        match_case{"127.0.0.0/8", "::ffff:128.0.0.1", false},
        match_case{"0.0.0.0/0", "::ffff:1.2.3.4", true},
        match_case{"192.0.2.7/32", "::ffff:192.0.2.7", true},
        // ... but other IPv6 forms that embed an IPv4 address do not
        match_case{"127.0.0.0/8", "::127.0.0.1", false},
        match_case{"127.0.0.0/8", "64:ff9b::127.0.0.1", false},
        match_case{"0.0.0.0/0", "::1", false},
        // IPv6 ranges never match IPv4 clients; the mapped range matches mapped clients
        match_case{"::/0", "127.0.0.1", false},
        match_case{"::ffff:0.0.0.0/96", "::ffff:10.1.1.1", true},
        match_case{"::ffff:0.0.0.0/96", "10.1.1.1", false}));

TEST(cidr, other_families_never_match) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    EXPECT_FALSE(contains(must("0.0.0.0/0"), reinterpret_cast<const sockaddr*>(&un)));
    EXPECT_FALSE(contains(must("::/0"), reinterpret_cast<const sockaddr*>(&un)));
    EXPECT_FALSE(contains(must("0.0.0.0/0"), nullptr));
}

TEST(cidr_set, any_member_matches) {
    cidr_set set;
    EXPECT_TRUE(set.empty());
    EXPECT_FALSE(set.contains(client("127.0.0.1").sa()));
    set.add(must("127.0.0.0/8"));
    set.add(must("::1/128"));
    set.add(must("2001:db8::/32"));
    EXPECT_EQ(set.size(), 3u);
    EXPECT_TRUE(set.contains(client("127.0.0.1").sa()));
    EXPECT_TRUE(set.contains(client("::ffff:127.9.9.9").sa()));
    EXPECT_TRUE(set.contains(client("::1").sa()));
    EXPECT_TRUE(set.contains(client("2001:db8::25").sa()));
    EXPECT_FALSE(set.contains(client("10.0.0.1").sa()));
    EXPECT_FALSE(set.contains(client("::2").sa()));
    EXPECT_FALSE(set.contains(client("::ffff:10.0.0.1").sa()));
    EXPECT_FALSE(set.contains(nullptr));

    const cidr_set copy(set.ranges());
    EXPECT_EQ(copy, set);
}

}  // namespace
}  // namespace ringmail::core
