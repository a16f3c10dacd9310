// The Redis client and the cluster limiter against a real redis-server on a free loopback port
// (started and stopped by the test; skipped when redis-server is not installed).
#include "redis_fixture.h"

namespace {

using namespace ringmail;
using namespace std::chrono_literals;
using ringmail_test::fixture;

TEST_F(fixture, PipelineAnswersInOrderAndReconnects) {
    int ups = 0, downs = 0;
    cluster::redis_client c(*r, *buffers, options(), [&](bool up) { (up ? ups : downs)++; });
    c.start();
    ASSERT_TRUE(spin([&] { return c.up(); }));
    std::vector<std::int64_t> got;
    for (int i = 0; i < 100; ++i)
        ASSERT_TRUE(
            c.call({"INCR", "n"}, [&](const cluster::resp_value& v) { got.push_back(v.integer); }));
    ASSERT_TRUE(spin([&] { return got.size() == 100; }));
    for (int i = 0; i < 100; ++i)
        EXPECT_EQ(got[i], i + 1);

    // Redis goes away: pending commands fail, new ones are refused at once, then it is back.
    redis->kill();
    ASSERT_TRUE(spin([&] { return !c.up(); }));
    EXPECT_EQ(downs, 1);
    EXPECT_FALSE(c.call({"PING"}, {}));
    ASSERT_TRUE(redis->start());
    ASSERT_TRUE(spin([&] { return c.up(); }));
    EXPECT_EQ(ups, 2);
    std::string pong;
    ASSERT_TRUE(c.call({"PING"}, [&](const cluster::resp_value& v) { pong = v.str; }));
    ASSERT_TRUE(spin([&] { return !pong.empty(); }));
    EXPECT_EQ(pong, "PONG");
    c.stop();
    ASSERT_TRUE(spin([&] { return c.stopped(); }));
}

TEST_F(fixture, RatesAreSharedByNodes) {
    cluster::cluster_limiter a(*r, *buffers, cluster("a"));
    cluster::cluster_limiter b(*r, *buffers, cluster("b"));
    a.start();
    b.start();
    ASSERT_TRUE(spin([&] { return !a.degraded() && !b.degraded(); }));
    ASSERT_TRUE(spin([&] { return a.nodes() == 2 && b.nodes() == 2; }));
    // 10/s, no burst: of four asks at once from two nodes one passes; the others wait ~100 ms.
    int allowed = 0, refused = 0;
    std::chrono::microseconds longest{0};
    for (auto* l : {&a, &b, &a, &b}) {
        l->acquire("example.com", {10, 1}, [&](cluster::rate_decision d) {
            EXPECT_FALSE(d.local);
            if (d.allowed) {
                ++allowed;
            } else {
                ++refused;
                longest = std::max(longest, d.retry_after);
            }
        });
    }
    ASSERT_TRUE(spin([&] { return allowed + refused == 4; }));
    EXPECT_EQ(allowed, 1);
    EXPECT_GT(longest.count(), 0);
    EXPECT_LE(longest.count(), 100000);
    // Burst 3: three at once.
    allowed = refused = 0;
    for (int i = 0; i < 5; ++i)
        a.acquire("burst.example", {1, 3},
                  [&](cluster::rate_decision d) { (d.allowed ? allowed : refused)++; });
    ASSERT_TRUE(spin([&] { return allowed + refused == 5; }));
    EXPECT_EQ(allowed, 3);
    a.stop();
    b.stop();
    spin([&] { return a.stopped() && b.stopped(); });
}

TEST_F(fixture, LeasesLimitConnectionsAcrossNodes) {
    cluster::cluster_limiter a(*r, *buffers, cluster("a"));
    cluster::cluster_limiter b(*r, *buffers, cluster("b"));
    a.start();
    b.start();
    ASSERT_TRUE(spin([&] { return !a.degraded() && !b.degraded(); }));
    // Three asks for two slots from two nodes: two granted, one refused, whoever asked first.
    std::vector<std::pair<cluster::cluster_limiter*, std::uint64_t>> got;
    auto take = [&](cluster::cluster_limiter& l) {
        l.lease("mx.example", 2, [&, p = &l](std::uint64_t id) { got.emplace_back(p, id); });
    };
    take(a);
    take(b);
    take(a);
    ASSERT_TRUE(spin([&] { return got.size() == 3; }));
    std::vector<std::pair<cluster::cluster_limiter*, std::uint64_t>> granted;
    for (auto& g : got) {
        if (g.second != 0)
            granted.push_back(g);
    }
    ASSERT_EQ(granted.size(), 2u);
    EXPECT_EQ(a.leases_held() + b.leases_held(), 2u);
    // One given back: the next ask gets it.
    granted[0].first->release(granted[0].second);
    // The ZREM goes on that node's connection: answered before the other node asks (two
    // connections are not ordered with each other).
    ASSERT_TRUE(spin([&] { return granted[0].first->client().pending() == 0; }));
    got.clear();
    take(b);
    ASSERT_TRUE(spin([&] { return got.size() == 1; }));
    EXPECT_NE(got[0].second, 0u);
    EXPECT_EQ(a.leases_held() + b.leases_held(), 2u);
    a.stop();
    b.stop();
    spin([&] { return a.stopped() && b.stopped(); });
}

TEST_F(fixture, SuspensionsReachOtherNodesWithinOneSecond) {
    cluster::cluster_limiter a(*r, *buffers, cluster("a"));
    cluster::cluster_limiter b(*r, *buffers, cluster("b"));
    a.start();
    b.start();
    ASSERT_TRUE(spin([&] { return !a.degraded() && !b.degraded(); }));
    a.suspend("yahoo", 3s);
    EXPECT_TRUE(a.suspended("yahoo"));
    // b polls every 500 ms (cluster_options::poll_interval): it sees it within 1 s.
    ASSERT_TRUE(spin([&] { return b.suspended("yahoo"); }));
    EXPECT_FALSE(b.suspended("google"));
    a.stop();
    b.stop();
    spin([&] { return a.stopped() && b.stopped(); });
}

TEST_F(fixture, WithoutRedisLimitsAreLocalDividedByNodes) {
    cluster::cluster_limiter a(*r, *buffers, cluster("a"));
    cluster::cluster_limiter b(*r, *buffers, cluster("b"));
    a.start();
    b.start();
    ASSERT_TRUE(spin([&] { return a.nodes() == 2 && !a.degraded(); }));
    redis->kill();
    ASSERT_TRUE(spin([&] { return a.degraded(); }));
    EXPECT_EQ(a.fallbacks(), 1u);
    // max 4 connections over 2 nodes: 2 here.
    std::vector<std::uint64_t> got;
    for (int i = 0; i < 3; ++i)
        a.lease("mx.example", 4, [&](std::uint64_t id) { got.push_back(id); });
    ASSERT_EQ(got.size(), 3u);  // answered at once
    EXPECT_NE(got[0], 0u);
    EXPECT_NE(got[1], 0u);
    EXPECT_EQ(got[2], 0u);
    // 10/s over 2 nodes: 5/s here, decided at once.
    std::vector<cluster::rate_decision> d;
    for (int i = 0; i < 2; ++i)
        a.acquire("example.com", {10, 1}, [&](cluster::rate_decision x) { d.push_back(x); });
    ASSERT_EQ(d.size(), 2u);
    EXPECT_TRUE(d[0].allowed && d[0].local);
    EXPECT_FALSE(d[1].allowed);
    EXPECT_GT(d[1].retry_after.count(), 150000);  // ~200 ms at 5/s
    EXPECT_GE(a.local_decisions(), 5u);
    // Back: shared again.
    ASSERT_TRUE(redis->start());
    ASSERT_TRUE(spin([&] { return !a.degraded(); }));
    bool remote = false;
    a.acquire("other.example", {10, 1}, [&](cluster::rate_decision x) { remote = !x.local; });
    ASSERT_TRUE(spin([&] { return remote; }));
    a.release(got[0]);
    a.release(got[1]);
    a.stop();
    b.stop();
    spin([&] { return a.stopped() && b.stopped(); });
}

}  // namespace
