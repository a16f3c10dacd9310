#include "ringmail/dns/route.h"

#include "ringmail/dns/wire.h"

#include <ares.h>
#include <gtest/gtest.h>

#include "wire_builder.h"
#include <arpa/inet.h>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace ringmail::dns {
namespace {

using std::chrono::seconds;
using testing::wire_builder;

random_source seeded(std::uint64_t seed) {
    auto rng = std::make_shared<std::mt19937_64>(seed);
    return [rng] { return (*rng)(); };
}

std::vector<mx_host> hosts_of(std::initializer_list<std::pair<const char*, std::uint16_t>> list) {
    std::vector<mx_host> out;
    for (const auto& [name, pref] : list)
        out.push_back(mx_host{name, pref, {}});
    return out;
}

std::string ip_of(const core::endpoint& ep) {
    std::string s = core::to_string(ep);
    return s;
}

TEST(order_exchangers, sorts_by_preference_and_shuffles_equal_ones) {
    struct row {
        std::vector<mx_host> hosts;
        std::size_t expected_orders;  // distinct orders possible
    };
    const std::vector<row> rows = {
        {hosts_of({{"a", 10}, {"b", 10}, {"c", 10}, {"d", 20}, {"e", 5}}), 6},
        {hosts_of({{"a", 30}, {"b", 20}, {"c", 10}}), 1},
        {hosts_of({{"a", 0}, {"b", 0}, {"c", 1}, {"d", 1}}), 4},
        {hosts_of({{"only", 7}}), 1},
        {hosts_of({}), 1},
    };
    auto random = seeded(42);
    for (const auto& r : rows) {
        std::map<std::string, int> seen;
        for (int run = 0; run < 3000; ++run) {
            auto hosts = r.hosts;
            order_exchangers(hosts, random);
            std::string order;
            for (std::size_t i = 0; i < hosts.size(); ++i) {
                if (i > 0) {
                    ASSERT_LE(hosts[i - 1].preference, hosts[i].preference) << "inverted";
                }
                order += hosts[i].name;
            }
            ++seen[order];
        }
        EXPECT_EQ(seen.size(), r.expected_orders);
        // Roughly uniform: each order at least half its fair share over 3000 runs.
        for (const auto& [order, count] : seen)
            EXPECT_GT(count, 3000 / static_cast<int>(r.expected_orders) / 2) << order;
    }
}

TEST(normalize_domain, accepts_and_refuses) {
    struct row {
        const char* in;
        const char* out;  // nullptr: refused
    };
    const std::string long_label(64, 'a');
    const std::string ok_label(63, 'a');
    std::string too_long;
    while (too_long.size() < 254)
        too_long += "abcdefghi.";
    const row rows[] = {
        {"Example.TEST", "example.test"},
        {"example.test.", "example.test"},
        {"a-b_c.test", "a-b_c.test"},
        {"xn--bcher-kva.test", "xn--bcher-kva.test"},
        {"", nullptr},
        {".", nullptr},
        {"a..test", nullptr},
        {".test", nullptr},
        {"test..", nullptr},
        {"exa mple.test", nullptr},
        {"[127.0.0.1]", nullptr},
        {"b\xc3\xbc"
         "cher.test",
         nullptr},
    };
    for (const auto& r : rows) {
        auto got = normalize_domain(r.in);
        if (r.out) {
            ASSERT_TRUE(got) << r.in;
            EXPECT_EQ(*got, r.out);
        } else {
            ASSERT_FALSE(got) << r.in;
            EXPECT_EQ(got.error(), errc::bad_domain);
        }
    }
    EXPECT_TRUE(normalize_domain(ok_label + ".test"));
    EXPECT_FALSE(normalize_domain(long_label + ".test"));
    EXPECT_FALSE(normalize_domain(too_long));
}

TEST(loopback_route, ipv4_then_ipv6_loopback_at_the_port) {
    const auto now = clock::now();
    const route r = loopback_route("filter.localhost", 10025, now);
    EXPECT_EQ(r.domain, "filter.localhost");
    ASSERT_EQ(r.hosts.size(), 1u);
    EXPECT_EQ(r.hosts[0].name, "filter.localhost");
    ASSERT_EQ(r.hosts[0].addresses.size(), 2u);
    EXPECT_EQ(core::to_string(r.hosts[0].addresses[0]), "127.0.0.1:10025");
    EXPECT_EQ(core::to_string(r.hosts[0].addresses[1]), "[::1]:10025");
    EXPECT_GT(r.expires, now);
}

TEST(address_literal_route, one_address_no_dns) {
    const auto now = clock::now();
    struct {
        const char* domain;
        const char* endpoint;  // "" = not a literal, "bad" = bad_domain
    } cases[] = {
        {"[127.0.0.2]", "127.0.0.2:2525"},
        {"[IPv6:::1]", "[::1]:2525"},
        {"[ipv6:2001:db8::1]", "[2001:db8::1]:2525"},
        {"example.test", ""},
        {"[example.test]", "bad"},
        {"[::1]", "bad"},
        {"[300.1.1.1]", "bad"},
        {"[]", "bad"},
        {"[127.0.0.1", ""},
    };
    for (const auto& c : cases) {
        auto r = address_literal_route(c.domain, 2525, now);
        if (std::string_view(c.endpoint).empty()) {
            EXPECT_FALSE(r.has_value()) << c.domain;
            continue;
        }
        ASSERT_TRUE(r.has_value()) << c.domain;
        if (std::string_view(c.endpoint) == "bad") {
            ASSERT_FALSE(*r) << c.domain;
            EXPECT_EQ(r->error(), make_error_code(errc::bad_domain)) << c.domain;
            continue;
        }
        ASSERT_TRUE(*r) << c.domain;
        const route& rt = **r;
        ASSERT_EQ(rt.hosts.size(), 1u);
        ASSERT_EQ(rt.hosts[0].addresses.size(), 1u);
        EXPECT_EQ(core::to_string(rt.hosts[0].addresses[0]), c.endpoint);
        EXPECT_GT(rt.expires, now);
    }
}

TEST(errc, permanence_status_and_reply) {
    struct row {
        errc e;
        bool permanent;
        const char* status;
        int reply;
    };
    const row rows[] = {
        {errc::nxdomain, true, "5.1.2", 550},
        {errc::null_mx, true, "5.1.10", 556},
        {errc::no_address, true, "5.1.2", 550},
        {errc::bad_domain, true, "5.1.2", 550},
        {errc::server_failure, false, "4.4.3", 451},
        {errc::timeout, false, "4.4.3", 451},
        {errc::connection_refused, false, "4.4.3", 451},
        {errc::bad_response, false, "4.4.3", 451},
        {errc::no_reachable_mx, false, "4.4.4", 451},
        {errc::cancelled, false, "4.4.3", 451},
        {errc::overloaded, false, "4.4.3", 451},
        {errc::internal, false, "4.3.0", 451},
    };
    for (const auto& r : rows) {
        const std::error_code ec = r.e;
        EXPECT_EQ(is_permanent(ec), r.permanent) << ec.message();
        EXPECT_EQ(enhanced_status(ec), r.status) << ec.message();
        EXPECT_EQ(reply_code(ec), r.reply) << ec.message();
        EXPECT_NE(ec.message(), "unknown ringmail.dns error");
    }
    const auto other = std::make_error_code(std::errc::timed_out);
    EXPECT_FALSE(is_permanent(other));
    EXPECT_EQ(reply_code(other), 451);
}

TEST(from_ares_status, maps_every_failure) {
    EXPECT_FALSE(from_ares_status(ARES_SUCCESS));
    EXPECT_EQ(from_ares_status(ARES_ENOTFOUND), errc::nxdomain);
    EXPECT_EQ(from_ares_status(ARES_ESERVFAIL), errc::server_failure);
    EXPECT_EQ(from_ares_status(ARES_EREFUSED), errc::server_failure);
    EXPECT_EQ(from_ares_status(ARES_ETIMEOUT), errc::timeout);
    EXPECT_EQ(from_ares_status(ARES_ECONNREFUSED), errc::connection_refused);
    EXPECT_EQ(from_ares_status(ARES_EDESTRUCTION), errc::cancelled);
    EXPECT_EQ(from_ares_status(ARES_EBADRESP), errc::bad_response);
    EXPECT_EQ(from_ares_status(ARES_ENOMEM), errc::internal);
}

struct mx_fixture : ::testing::Test {
    ttl_policy policy;
    random_source random = seeded(7);
};

TEST_F(mx_fixture, mx_records_ordered_with_smallest_ttl) {
    wire_builder b;
    b.header(1, rcode_noerror, 1, 3, 0).question("d.test", type_mx);
    b.mx("d.test", 600, 20, "MX2.d.test")
        .mx("d.test", 300, 10, "mx1.d.test")
        .mx("d.test", 900, 30, "mx3.d.test");
    auto step = interpret_mx("d.test", ARES_SUCCESS, b.bytes, policy, random, 16);
    ASSERT_FALSE(step.error) << step.error.message();
    EXPECT_FALSE(step.implicit);
    ASSERT_EQ(step.hosts.size(), 3u);
    EXPECT_EQ(step.hosts[0].name, "mx1.d.test");
    EXPECT_EQ(step.hosts[1].name, "mx2.d.test");
    EXPECT_EQ(step.hosts[2].name, "mx3.d.test");
    EXPECT_EQ(step.ttl, seconds(300));

    auto capped = interpret_mx("d.test", ARES_SUCCESS, b.bytes, policy, random, 2);
    ASSERT_EQ(capped.hosts.size(), 2u);
    EXPECT_EQ(capped.hosts[1].name, "mx2.d.test");
}

TEST_F(mx_fixture, outcomes_by_answer) {
    struct row {
        const char* what;
        int status;
        std::vector<std::uint8_t> answer;
        std::error_code error;
        bool implicit;
        seconds ttl;
    };
    auto nx_soa = [] {
        wire_builder b;
        b.header(1, rcode_nxdomain, 1, 0, 1).question("d.test", type_mx).soa("test", 3600, 120);
        return b.bytes;
    }();
    auto nx_bare = [] {
        wire_builder b;
        b.header(1, rcode_nxdomain, 1, 0, 0).question("d.test", type_mx);
        return b.bytes;
    }();
    auto nx_huge_soa = [] {
        wire_builder b;
        b.header(1, rcode_nxdomain, 1, 0, 1).question("d.test", type_mx).soa("test", 86400, 86400);
        return b.bytes;
    }();
    auto nodata_soa = [] {
        wire_builder b;
        b.header(1, rcode_noerror, 1, 0, 1).question("d.test", type_mx).soa("test", 3600, 90);
        return b.bytes;
    }();
    auto null_mx = [] {
        wire_builder b;
        b.header(1, rcode_noerror, 1, 1, 0).question("d.test", type_mx).mx("d.test", 800, 0, "");
        return b.bytes;
    }();
    auto null_and_real = [] {
        wire_builder b;
        b.header(1, rcode_noerror, 1, 2, 0).question("d.test", type_mx);
        b.mx("d.test", 800, 0, "").mx("d.test", 800, 10, "mx.d.test");
        return b.bytes;
    }();
    const std::vector<row> rows = {
        {"nxdomain with SOA", ARES_ENOTFOUND, nx_soa, errc::nxdomain, false, seconds(120)},
        {"nxdomain without SOA", ARES_ENOTFOUND, nx_bare, errc::nxdomain, false, seconds(300)},
        {"nxdomain, SOA capped", ARES_ENOTFOUND, nx_huge_soa, errc::nxdomain, false, seconds(3600)},
        {"nodata: implicit MX", ARES_ENODATA, nodata_soa, {}, true, seconds(90)},
        {"null MX", ARES_SUCCESS, null_mx, errc::null_mx, false, seconds(800)},
        {"null MX beside a real one", ARES_SUCCESS, null_and_real, {}, false, seconds(800)},
        {"servfail", ARES_ESERVFAIL, {}, errc::server_failure, false, seconds(30)},
        {"refused", ARES_EREFUSED, {}, errc::server_failure, false, seconds(30)},
        {"timeout", ARES_ETIMEOUT, {}, errc::timeout, false, seconds(30)},
        {"conn refused", ARES_ECONNREFUSED, {}, errc::connection_refused, false, seconds(30)},
        {"destroyed", ARES_EDESTRUCTION, {}, errc::cancelled, false, seconds(0)},
        {"success, garbage", ARES_SUCCESS, {1, 2, 3}, errc::bad_response, false, seconds(30)},
    };
    for (const auto& r : rows) {
        auto step = interpret_mx("d.test", r.status, r.answer, policy, random, 16);
        EXPECT_EQ(step.error, r.error) << r.what << ": " << step.error.message();
        EXPECT_EQ(step.implicit, r.implicit) << r.what;
        EXPECT_EQ(step.ttl, r.ttl) << r.what;
        if (r.implicit) {
            ASSERT_EQ(step.hosts.size(), 1u);
            EXPECT_EQ(step.hosts[0].name, "d.test");
            EXPECT_EQ(step.hosts[0].preference, 0);
        }
    }
}

TEST_F(mx_fixture, addresses_with_port_and_ttl) {
    wire_builder b4;
    b4.header(1, rcode_noerror, 1, 2, 0).question("mx.test", type_a);
    b4.a("mx.test", 500, 192, 0, 2, 1).a("mx.test", 200, 192, 0, 2, 2);
    auto v4 = interpret_address(AF_INET, ARES_SUCCESS, b4.bytes, 2525, policy, 16);
    ASSERT_FALSE(v4.error);
    ASSERT_EQ(v4.addresses.size(), 2u);
    EXPECT_EQ(ip_of(v4.addresses[0]), "192.0.2.1:2525");
    EXPECT_EQ(ip_of(v4.addresses[1]), "192.0.2.2:2525");
    EXPECT_EQ(v4.ttl, seconds(200));

    auto one = interpret_address(AF_INET, ARES_SUCCESS, b4.bytes, 25, policy, 1);
    EXPECT_EQ(one.addresses.size(), 1u);

    wire_builder b6;
    b6.header(1, rcode_noerror, 1, 1, 0)
        .question("mx.test", type_aaaa)
        .aaaa_loopback("mx.test", 50);
    auto v6 = interpret_address(AF_INET6, ARES_SUCCESS, b6.bytes, 25, policy, 16);
    ASSERT_EQ(v6.addresses.size(), 1u);
    EXPECT_EQ(ip_of(v6.addresses[0]), "[::1]:25");
    EXPECT_EQ(v6.ttl, seconds(50));

    auto nodata = interpret_address(AF_INET6, ARES_ENODATA, {}, 25, policy, 16);
    EXPECT_FALSE(nodata.error);
    EXPECT_TRUE(nodata.name_exists);
    EXPECT_EQ(nodata.ttl, seconds(300));
    auto nx = interpret_address(AF_INET, ARES_ENOTFOUND, {}, 25, policy, 16);
    EXPECT_FALSE(nx.error);
    EXPECT_FALSE(nx.name_exists);
    auto fail = interpret_address(AF_INET, ARES_ETIMEOUT, {}, 25, policy, 16);
    EXPECT_EQ(fail.error, errc::timeout);
    EXPECT_EQ(fail.ttl, seconds(30));
}

address_step with_address(const char* text, seconds ttl) {
    address_step s;
    s.addresses.push_back(core::parse_endpoint(text).value());
    s.ttl = ttl;
    return s;
}
address_step empty_step(bool exists, seconds ttl) {
    address_step s;
    s.name_exists = exists;
    s.ttl = ttl;
    return s;
}
address_step failed_step(errc e) {
    address_step s;
    s.error = e;
    s.ttl = seconds(30);
    return s;
}

TEST_F(mx_fixture, assemble_skips_hosts_without_addresses) {
    mx_step mx;
    mx.hosts = hosts_of({{"gone.test", 5}, {"mx.test", 10}});
    mx.ttl = seconds(600);
    std::vector<address_step> v6{empty_step(false, seconds(60)), empty_step(true, seconds(400))};
    std::vector<address_step> v4{empty_step(false, seconds(60)),
                                 with_address("127.0.0.2:25", seconds(500))};
    const auto now = clock::time_point(std::chrono::hours(1));
    seconds ttl{};
    auto r = assemble_route("d.test", mx, v6, v4, policy, now, ttl);
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_EQ(r->hosts.size(), 1u);
    EXPECT_EQ(r->hosts[0].name, "mx.test");
    EXPECT_EQ(r->hosts[0].preference, 10);
    EXPECT_EQ(ttl, seconds(400));
    EXPECT_EQ(r->expires, now + seconds(400));
    EXPECT_EQ(r->domain, "d.test");
}

TEST_F(mx_fixture, assemble_orders_ipv4_before_ipv6) {
    mx_step mx;
    mx.hosts = hosts_of({{"mx.test", 10}});
    mx.ttl = seconds(600);
    std::vector<address_step> v6{with_address("[::1]:25", seconds(600))};
    std::vector<address_step> v4{with_address("127.0.0.2:25", seconds(600))};
    seconds ttl{};
    auto r = assemble_route("d.test", mx, v6, v4, policy, clock::time_point{}, ttl);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->hosts[0].addresses.size(), 2u);
    EXPECT_EQ(r->hosts[0].addresses[0].family(), AF_INET);
    EXPECT_EQ(r->hosts[0].addresses[1].family(), AF_INET6);
}

TEST_F(mx_fixture, assemble_failures) {
    struct row {
        const char* what;
        bool implicit;
        address_step v6;
        address_step v4;
        errc expected;
        seconds ttl;
    };
    const std::vector<row> rows = {
        {"mx host unknown", false, empty_step(false, seconds(60)), empty_step(false, seconds(60)),
         errc::no_reachable_mx, seconds(30)},
        {"mx host timed out", false, failed_step(errc::timeout), empty_step(true, seconds(60)),
         errc::timeout, seconds(30)},
        {"implicit, no address", true, empty_step(true, seconds(120)),
         empty_step(true, seconds(90)), errc::no_address, seconds(90)},
        {"implicit, name vanished", true, empty_step(false, seconds(120)),
         empty_step(false, seconds(90)), errc::nxdomain, seconds(90)},
        {"implicit, servfail", true, failed_step(errc::server_failure),
         empty_step(true, seconds(90)), errc::server_failure, seconds(30)},
    };
    for (const auto& r : rows) {
        mx_step mx;
        mx.implicit = r.implicit;
        mx.hosts = hosts_of({{"h.test", 0}});
        mx.ttl = seconds(300);
        std::vector<address_step> v6{r.v6};
        std::vector<address_step> v4{r.v4};
        seconds ttl{};
        auto got = assemble_route("d.test", mx, v6, v4, policy, clock::time_point{}, ttl);
        ASSERT_FALSE(got) << r.what;
        EXPECT_EQ(got.error(), r.expected) << r.what;
        EXPECT_EQ(ttl, r.ttl) << r.what;
    }
}

}  // namespace
}  // namespace ringmail::dns
