// cluster::shard_limiter, the scheduler's limiter with [cluster] redis, against a real
// redis-server on loopback: two "nodes" (each a cluster_limiter, a local_limiter and a
// shard_limiter) on one reactor share a provider's rate, connections and suspensions; the
// synchronous answers come from grants asked ahead, the wake callback says when to ask again;
// without Redis the answers are local, at once.
#include "ringmail/cluster/shard_limiter.h"

#include "redis_fixture.h"

namespace {

using namespace ringmail;
using namespace std::chrono_literals;
using ringmail_test::fixture;

queue::provider_table providers(double rate, std::uint32_t conns) {
    queue::provider_spec p;
    p.name = "bulk";
    p.domain_suffix = {"bulk.example"};
    p.message_rate = rate;
    p.max_connections = conns;
    return queue::provider_table({p});
}

// One node as the daemon builds it for one shard.
struct node {
    node(fixture& f, const queue::provider_table& table, const std::string& id)
        : local(table, 0, {}),
          cl(*f.r, *f.buffers, options(f, id)),
          lim(*f.r, cl, local, {"p:bulk"}, {""}) {
        lim.set_wake([this] { ++wakes; });
        cl.start();
    }
    static cluster::cluster_options options(fixture& f, const std::string& id) {
        auto o = f.cluster(id);
        o.lease_ttl = 1500ms;  // renewed (and local leases put into Redis) every 500 ms
        return o;
    }
    queue::local_limiter local;
    cluster::cluster_limiter cl;
    cluster::shard_limiter lim;
    int wakes = 0;
};

TEST_F(fixture, MessagesSpendTokensAskedAheadAndTheReplyWakes) {
    const auto table = providers(20, 0);
    node a(*this, table, "a");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded(); }));
    EXPECT_EQ(a.lim.key(0, 0), "p:bulk/-");
    // The first ask: "not now", the grant comes later and wakes; then it is spent.
    auto t = a.lim.take_message(0, 0, r->now());
    EXPECT_FALSE(t.ok);
    EXPECT_GT(t.at, r->now());
    ASSERT_TRUE(spin([&] { return a.wakes > 0; }));
    EXPECT_TRUE(a.lim.take_message(0, 0, r->now()).ok);
    // The next: Redis says when, and a take at that time (after the wake of its ask) passes.
    t = a.lim.take_message(0, 0, r->now());
    EXPECT_FALSE(t.ok);
    const int w = a.wakes;
    ASSERT_TRUE(spin([&] { return a.wakes > w; }));
    t = a.lim.take_message(0, 0, r->now());
    ASSERT_FALSE(t.ok);
    EXPECT_LE(t.at, r->now() + 60ms);  // 20/s: at most one interval (50 ms) away
    bool passed = false;               // spin() asks once more at the end: the answer is kept
    ASSERT_TRUE(spin([&] {
        passed = passed || a.lim.take_message(0, 0, r->now()).ok;
        return passed;
    }));
    EXPECT_FALSE(a.cl.degraded());
    EXPECT_EQ(a.cl.local_decisions(), 0u);
}

TEST_F(fixture, TwoNodesTogetherKeepTheRate) {
    const auto table = providers(20, 0);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    // Both ask as fast as their answers allow for 1.5 s: together they get the rate's share
    // of that time (30), plus the one token each may hold, never twice the rate.
    int sent = 0;
    const auto end = r->now() + 1500ms;
    while (r->now() < end) {
        for (node* n : {&a, &b}) {
            if (n->lim.take_message(0, 0, r->now()).ok)
                ++sent;
        }
        r->run_once(2ms);
    }
    EXPECT_LE(sent, 30 + 1 + 2);
    EXPECT_GE(sent, 24);
    EXPECT_EQ(a.cl.local_decisions() + b.cl.local_decisions(), 0u);
}

TEST_F(fixture, ConnectionsAreLeasesKeptForTheNextTryAndGivenBack) {
    const auto table = providers(0, 2);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    auto open = [&](node& n) {
        // As the scheduler does: try, and try again when woken.
        for (int i = 0; i < 50; ++i) {
            const int w = n.wakes;
            if (n.lim.acquire_connection(0, 0, r->now()).ok)
                return true;
            if (!spin([&] { return n.wakes > w; }))
                return false;
        }
        return false;
    };
    ASSERT_TRUE(open(a));
    ASSERT_TRUE(open(b));
    EXPECT_EQ(a.lim.connections(0, 0) + b.lim.connections(0, 0), 2u);
    // The third is refused by Redis (the other node holds one): "not before" a retry.
    const int w = a.wakes;
    EXPECT_FALSE(a.lim.acquire_connection(0, 0, r->now()).ok);
    ASSERT_TRUE(spin([&] { return a.wakes > w; }));
    auto t = a.lim.acquire_connection(0, 0, r->now());
    EXPECT_FALSE(t.ok);
    EXPECT_GT(t.at, r->now());
    // b closes its connection: a gets the slot on a later try.
    b.lim.release_connection(0, 0);
    EXPECT_EQ(b.lim.connections(0, 0), 0u);
    bool got = false;
    ASSERT_TRUE(spin([&] {
        got = got || a.lim.acquire_connection(0, 0, r->now()).ok;
        return got;
    }));
    EXPECT_EQ(a.lim.connections(0, 0), 2u);
    // A lease granted and not used goes back by itself: b asks for the slot a frees and never
    // comes back for it; ~2 s later it is Redis's again, and a gets it.
    a.lim.release_connection(0, 0);
    EXPECT_FALSE(b.lim.acquire_connection(0, 0, r->now()).ok);
    ASSERT_TRUE(spin([&] { return b.lim.spare_leases() == 1; }));
    ASSERT_TRUE(spin([&] { return b.lim.spare_leases() == 0; }));
    EXPECT_TRUE(open(a));
    a.lim.release_connection(0, 0);
    a.lim.release_connection(0, 0);
    EXPECT_EQ(a.cl.leases_held() + b.cl.leases_held(), 0u);
}

TEST_F(fixture, AConnectionWhoseProviderIsLearnedLaterCountsInRedis) {
    const auto table = providers(0, 1);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    // Opened without a provider (its MX hosts not known yet), then attached: over the limit
    // if need be, and seen by the other node.
    ASSERT_TRUE(a.lim.acquire_connection(-1, 0, r->now()).ok);
    a.lim.attach_provider(0, 0);
    EXPECT_EQ(a.lim.connections(0, 0), 1u);
    ASSERT_TRUE(spin([&] { return a.cl.leases_held() == 1; }));
    const int w = b.wakes;
    EXPECT_FALSE(b.lim.acquire_connection(0, 0, r->now()).ok);
    ASSERT_TRUE(spin([&] { return b.wakes > w; }));
    EXPECT_FALSE(b.lim.acquire_connection(0, 0, r->now()).ok);
    a.lim.release_connection(0, 0);
    EXPECT_EQ(a.cl.leases_held(), 0u);
    ASSERT_TRUE(spin([&] { return a.cl.client().pending() == 0; }));
    bool got = false;
    ASSERT_TRUE(spin([&] {
        got = got || b.lim.acquire_connection(0, 0, r->now()).ok;
        return got;
    }));
    b.lim.release_connection(0, 0);
    // Closed before its lease came: the lease goes back when it comes.
    ASSERT_TRUE(a.lim.acquire_connection(-1, 0, r->now()).ok);
    a.lim.attach_provider(0, 0);
    a.lim.release_connection(0, 0);
    ASSERT_TRUE(spin([&] { return a.cl.client().pending() == 0; }));
    EXPECT_EQ(a.cl.leases_held(), 0u);
}

TEST_F(fixture, ARulesSuspensionReachesTheOtherNode) {
    const auto table = providers(10, 0);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    const auto until = r->now() + 5s;
    a.lim.suspend(0, 0, until, 0);
    EXPECT_GE(a.lim.suspended_until(0, 0), until);
    EXPECT_TRUE(a.lim.effect_active(0, 0, 0, r->now()));  // the rule's state stays local
    const auto from = std::chrono::steady_clock::now();
    ASSERT_TRUE(spin([&] { return b.lim.suspended_until(0, 0) > r->now(); }));
    EXPECT_LT(std::chrono::steady_clock::now() - from, 1100ms);
    // Within a poll's precision of the same end.
    EXPECT_GT(b.lim.suspended_until(0, 0), until - 1s);
    EXPECT_FALSE(b.lim.effect_active(0, 0, 0, r->now()));
}

// An operator's resume on one node takes the suspension out of Redis: the other nodes' polls
// drop it, long before it would have ended.
TEST_F(fixture, AResumeLiftsTheSuspensionOnEveryNode) {
    const auto table = providers(10, 0);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    a.lim.suspend(0, 0, r->now() + 60s, 0);
    ASSERT_TRUE(spin([&] { return b.lim.suspended_until(0, 0) > r->now(); }));
    a.lim.lift(0, 0);
    EXPECT_LE(a.lim.suspended_until(0, 0), r->now()) << "lifted here at once";
    EXPECT_FALSE(a.lim.effect_active(0, 0, 0, r->now()));
    ASSERT_TRUE(spin([&] { return b.lim.suspended_until(0, 0) <= r->now(); }))
        << "the other node still sees the suspension";
}

TEST_F(fixture, WithoutRedisEveryAnswerIsLocalAndImmediate) {
    const auto table = providers(10, 4);
    node a(*this, table, "a");
    node b(*this, table, "b");
    ASSERT_TRUE(spin([&] { return a.cl.nodes() == 2 && !a.cl.degraded(); }));
    redis->kill();
    ASSERT_TRUE(spin([&] { return a.cl.degraded(); }));
    const int w = a.wakes;
    // 4 connections over 2 participants: 2 here, answered in the call.
    EXPECT_TRUE(a.lim.acquire_connection(0, 0, r->now()).ok);
    EXPECT_TRUE(a.lim.acquire_connection(0, 0, r->now()).ok);
    EXPECT_FALSE(a.lim.acquire_connection(0, 0, r->now()).ok);
    // 10/s over 2: 5/s here, one now, the next ~200 ms later.
    EXPECT_TRUE(a.lim.take_message(0, 0, r->now()).ok);
    auto t = a.lim.take_message(0, 0, r->now());
    EXPECT_FALSE(t.ok);
    EXPECT_GT(t.at, r->now() + 150ms);
    EXPECT_EQ(a.wakes, w);  // nothing asynchronous to wait for
    EXPECT_EQ(a.cl.fallbacks(), 1u);
    // Redis back: the connections taken meanwhile are put into Redis (there is room), so the
    // other node gets only what is left.
    ASSERT_TRUE(redis->start());
    ASSERT_TRUE(spin([&] { return !a.cl.degraded() && !b.cl.degraded(); }));
    const auto settle = r->now() + 1200ms;  // two renewals
    spin([&] { return r->now() >= settle; });
    int granted = 0;
    for (int i = 0; i < 40 && granted < 3; ++i) {
        if (b.lim.acquire_connection(0, 0, r->now()).ok)
            ++granted;
        r->run_once(30ms);
    }
    a.lim.release_connection(0, 0);
    a.lim.release_connection(0, 0);
    for (int i = 0; i < granted; ++i)
        b.lim.release_connection(0, 0);
    EXPECT_LE(granted, 2);
}

}  // namespace
