#include "ringmail/dns/cache.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::dns {
namespace {

using std::chrono::seconds;

route make_route(const std::string& domain) {
    route r;
    r.domain = domain;
    r.hosts.push_back(mx_host{"mx." + domain, 10, {core::parse_endpoint("127.0.0.2:25").value()}});
    return r;
}

const clock::time_point t0 = clock::time_point(std::chrono::hours(100));

TEST(route_cache, hit_until_expiry_then_miss) {
    route_cache cache(10);
    cache.insert("a.test", make_route("a.test"), t0 + seconds(300), t0);
    auto* hit = cache.find("a.test", t0 + seconds(299));
    ASSERT_NE(hit, nullptr);
    ASSERT_TRUE(*hit);
    EXPECT_EQ((*hit)->hosts[0].name, "mx.a.test");
    EXPECT_EQ(cache.find("a.test", t0 + seconds(300)), nullptr);
    EXPECT_EQ(cache.size(), 0u);  // dropped on the expired find
    EXPECT_EQ(cache.find("b.test", t0), nullptr);
}

TEST(route_cache, negative_entries) {
    route_cache cache(10);
    cache.insert("nx.test", result<route>(errc::nxdomain), t0 + seconds(60), t0);
    cache.insert("dead.test", result<route>(errc::timeout), t0 + seconds(30), t0);
    auto* nx = cache.find("nx.test", t0 + seconds(59));
    ASSERT_NE(nx, nullptr);
    EXPECT_EQ(nx->error(), errc::nxdomain);
    ASSERT_NE(cache.find("dead.test", t0 + seconds(29)), nullptr);
    EXPECT_EQ(cache.find("dead.test", t0 + seconds(30)), nullptr);
    EXPECT_NE(cache.find("nx.test", t0 + seconds(30)), nullptr);
}

TEST(route_cache, replace_and_zero_ttl) {
    route_cache cache(10);
    cache.insert("a.test", result<route>(errc::timeout), t0 + seconds(30), t0);
    cache.insert("a.test", make_route("a.test"), t0 + seconds(300), t0);
    EXPECT_EQ(cache.size(), 1u);
    auto* hit = cache.find("a.test", t0 + seconds(100));
    ASSERT_NE(hit, nullptr);
    EXPECT_TRUE(*hit);
    // An answer that is already stale is not stored (and drops the older one).
    cache.insert("a.test", make_route("a.test"), t0, t0);
    EXPECT_EQ(cache.find("a.test", t0), nullptr);
    EXPECT_EQ(cache.size(), 0u);
}

TEST(route_cache, full_cache_drops_expired_then_soonest) {
    route_cache cache(3);
    cache.insert("a.test", make_route("a.test"), t0 + seconds(100), t0);
    cache.insert("b.test", make_route("b.test"), t0 + seconds(50), t0);
    cache.insert("c.test", make_route("c.test"), t0 + seconds(200), t0);
    EXPECT_EQ(cache.size(), 3u);
    // Full: b (soonest) goes.
    cache.insert("d.test", make_route("d.test"), t0 + seconds(300), t0);
    EXPECT_EQ(cache.size(), 3u);
    EXPECT_EQ(cache.find("b.test", t0), nullptr);
    EXPECT_NE(cache.find("a.test", t0), nullptr);
    EXPECT_NE(cache.find("c.test", t0), nullptr);
    EXPECT_NE(cache.find("d.test", t0), nullptr);
    // Later: a has expired; inserting drops it even though the cache has room after that.
    cache.insert("e.test", make_route("e.test"), t0 + seconds(400), t0 + seconds(150));
    EXPECT_EQ(cache.size(), 3u);
    EXPECT_NE(cache.find("c.test", t0 + seconds(150)), nullptr);
    EXPECT_NE(cache.find("e.test", t0 + seconds(150)), nullptr);
}

TEST(route_cache, stays_bounded) {
    route_cache cache(100);
    for (int i = 0; i < 1000; ++i) {
        const std::string d = "d" + std::to_string(i) + ".test";
        cache.insert(d, make_route(d), t0 + seconds(1000 + i), t0);
        ASSERT_LE(cache.size(), 100u);
    }
    // The survivors are the 100 that expire last.
    EXPECT_NE(cache.find("d999.test", t0), nullptr);
    EXPECT_NE(cache.find("d900.test", t0), nullptr);
    EXPECT_EQ(cache.find("d899.test", t0), nullptr);
}

TEST(route_cache, zero_capacity_stores_nothing) {
    route_cache cache(0);
    cache.insert("a.test", make_route("a.test"), t0 + seconds(100), t0);
    EXPECT_EQ(cache.size(), 0u);
    EXPECT_EQ(cache.find("a.test", t0), nullptr);
}

}  // namespace
}  // namespace ringmail::dns
