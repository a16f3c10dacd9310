// The scheduler with traffic shaping (issue 16): egress sources chosen by smooth weighted
// round-robin, provider limits shared by destinations, suspensions, the wake-up time of a
// throttled queue, providers learned from MX hosts.
#include "ringmail/queue/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

const steady_time t0 = steady_time{} + 1000s;
constexpr std::int64_t unix0 = 1'700'000'000;

std::unique_ptr<shaping_context> shaping(std::vector<provider_spec> providers,
                                         std::vector<std::uint32_t> weights) {
    auto sh = std::make_unique<shaping_context>();
    sh->providers = provider_table(std::move(providers));
    std::string why;
    sh->rules = *shaping_rules::build({}, sh->providers.size(), weights.size() + 1, why);
    sh->sources = weights.size();
    if (!weights.empty()) {
        egress_pool_spec p;
        for (unsigned i = 0; i < weights.size(); ++i)
            p.sources.push_back(i);
        p.weights = weights;
        sh->pools.push_back(p);
        sh->default_pool = 0;
    }
    sh->limits = std::make_unique<local_limiter>(sh->providers, 0,
                                                 std::vector<std::uint32_t>(weights.size(), 0));
    return sh;
}

scheduler_config config(const shaping_context* sh, destination_policy p = {}) {
    scheduler_config c;
    c.policies = domain_policy(p, {});
    c.retry.schedule = {60s};
    c.retry.max_lifetime = 24h;
    c.retry.jitter = 0.0;
    c.idle_timeout = 10s;
    c.shaping = sh;
    return c;
}

delivery_job job(std::uint64_t id) {
    delivery_job j;
    j.queue_id = id;
    j.rcpts = {0};
    j.arrival_unix = unix0;
    return j;
}

template <typename T>
std::optional<T> as(const action& a) {
    if (const T* p = std::get_if<T>(&a))
        return *p;
    return std::nullopt;
}

void deliver(scheduler& s, const run_job& r, steady_time now) {
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    s.complete(r.conn, r.job, std::span(&ok, 1), now, unix0);
}

TEST(sched_shaping, pool_weights_two_to_one_over_3000_connections) {
    auto sh = shaping({}, {2, 1});
    destination_policy p;
    p.max_connections = 1;
    p.max_messages_per_connection = 1;
    scheduler s(config(sh.get(), p));
    for (std::uint64_t i = 1; i <= 3000; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    std::map<int, int> by_source;
    for (int n = 0; n < 3000; ++n) {
        auto o = as<open_connection>(s.next_action(t0));
        ASSERT_TRUE(o) << n;
        by_source[o->source]++;
        const std::uint64_t cid = o->conn;
        s.connection_opened(cid, t0);
        auto r = as<run_job>(s.next_action(t0));
        ASSERT_TRUE(r);
        deliver(s, *r, t0);
        auto c = as<close_connection>(s.next_action(t0));
        ASSERT_TRUE(c);
        s.connection_closed(cid, t0);
    }
    EXPECT_EQ(by_source[0], 2000);
    EXPECT_EQ(by_source[1], 1000);
}

TEST(sched_shaping, a_provider_rate_is_shared_and_wakes_when_due) {
    auto sh = shaping({{.name = "p", .domain_suffix = {"p.test"}, .message_rate = 10}}, {});
    destination_policy one;
    one.max_connections = 1;
    scheduler s(config(sh.get(), one));
    // Two destinations of the provider, one connection each.
    for (std::uint64_t i = 1; i <= 4; ++i) {
        ASSERT_TRUE(s.submit("a.p.test", job(i), t0));
        ASSERT_TRUE(s.submit("b.p.test", job(10 + i), t0));
    }
    std::vector<std::uint64_t> conns;
    for (int k = 0; k < 2; ++k) {
        auto o = as<open_connection>(s.next_action(t0));
        ASSERT_TRUE(o);
        EXPECT_EQ(o->provider, 0);
        EXPECT_EQ(o->source, -1);  // no pool: no binding
        conns.push_back(o->conn);
    }
    for (auto c : conns)
        s.connection_opened(c, t0);
    auto r = as<run_job>(s.next_action(t0));
    ASSERT_TRUE(r);
    // The other destination's connection is idle with ready jobs: the provider's token is
    // gone, so the scheduler waits exactly until the next is due (100 ms), no polling.
    auto w = as<wait>(s.next_action(t0));
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->until);
    EXPECT_EQ(*w->until, t0 + 100ms);
    EXPECT_TRUE(as<wait>(s.next_action(t0 + 99ms)).has_value());
    EXPECT_TRUE(as<run_job>(s.next_action(t0 + 100ms)).has_value());
}

TEST(sched_shaping, a_suspension_moves_traffic_to_the_other_source) {
    auto sh = shaping({{.name = "p", .domain_suffix = {"p.test"}}}, {1, 1});
    destination_policy pol;
    pol.max_connections = 4;
    scheduler s(config(sh.get(), pol));
    for (std::uint64_t i = 1; i <= 8; ++i)
        ASSERT_TRUE(s.submit("a.p.test", job(i), t0));
    // Source 0 (slot 1) suspended for the provider.
    sh->limits->suspend(0, 1, t0 + 60s, 0);
    std::vector<int> sources;
    for (int k = 0; k < 4; ++k) {
        auto o = as<open_connection>(s.next_action(t0));
        if (!o)
            break;
        sources.push_back(o->source);
    }
    EXPECT_EQ(sources, (std::vector<int>{1, 1, 1, 1}));
    // Suspend the other source too: nothing opens, and the wait ends with the suspension.
    sh->limits->suspend(0, 2, t0 + 30s, 0);
    for (std::uint64_t i = 20; i <= 30; ++i)
        ASSERT_TRUE(s.submit("b.p.test", job(i), t0));
    auto w = as<wait>(s.next_action(t0));
    ASSERT_TRUE(w);
    ASSERT_TRUE(w->until);
    EXPECT_LE(*w->until, t0 + 30s);
    auto o = as<open_connection>(s.next_action(t0 + 30s));
    ASSERT_TRUE(o);
    EXPECT_EQ(o->source, 1);
}

// After a restart: a "*" rule's suspension of one source on a domain no rule names comes
// back from the store onto the queue, so traffic goes to the other source; a resume
// (lift_destination) ends it.
TEST(sched_shaping, a_stored_per_source_domain_suspension_applies_to_its_queue) {
    auto sh = shaping({}, {1, 1});
    sh->source_names = {"ip1", "ip2"};
    destination_policy pol;
    pol.max_connections = 2;
    scheduler s(config(sh.get(), pol));
    auto store = std::make_shared<suspensions>();
    suspension e;
    e.scope = {suspension_kind::domain, "x.test", "ip1"};
    e.since_unix = unix0 - 10;
    e.until_unix = unix0 + 60;
    e.origin = std::string(origin_rule);
    ASSERT_TRUE(store->suspend(e));
    s.set_suspensions(store, t0, unix0);
    for (std::uint64_t i = 1; i <= 4; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto open_two = [&] {
        std::vector<int> sources;
        for (int k = 0; k < 2; ++k) {
            auto o = as<open_connection>(s.next_action(t0));
            if (!o)
                break;
            sources.push_back(o->source);
            s.connection_closed(o->conn, t0);  // the connect failed: the slot is free again
        }
        return sources;
    };
    EXPECT_EQ(open_two(), (std::vector<int>{1, 1}));  // never source 0 (ip1)
    EXPECT_TRUE(s.lift_destination("x.test"));
    EXPECT_FALSE(s.lift_destination("y.test"));
    const auto after = open_two();
    EXPECT_NE(std::find(after.begin(), after.end(), 0), after.end());
}

TEST(sched_shaping, idle_connections_of_a_suspended_source_close) {
    auto sh = shaping({{.name = "p", .domain_suffix = {"p.test"}}}, {1});
    scheduler s(config(sh.get()));
    ASSERT_TRUE(s.submit("a.p.test", job(1), t0));
    auto o = as<open_connection>(s.next_action(t0));
    ASSERT_TRUE(o);
    s.connection_opened(o->conn, t0);
    auto r = as<run_job>(s.next_action(t0));
    ASSERT_TRUE(r);
    ASSERT_TRUE(s.submit("a.p.test", job(2), t0));
    sh->limits->suspend(0, 1, t0 + 60s, 0);
    deliver(s, *r, t0);  // the transaction in flight finishes
    auto c = as<close_connection>(s.next_action(t0));
    ASSERT_TRUE(c);
    EXPECT_EQ(c->conn, o->conn);
    s.connection_closed(o->conn, t0);
    EXPECT_TRUE(as<wait>(s.next_action(t0)).has_value());
}

TEST(sched_shaping, a_provider_learned_from_mx_counts_the_connection) {
    auto sh = shaping({{.name = "g", .mx_suffix = {".google.test"}, .max_connections = 1}}, {});
    destination_policy pol;
    pol.max_connections = 5;
    scheduler s(config(sh.get(), pol));
    for (std::uint64_t i = 1; i <= 5; ++i)
        ASSERT_TRUE(s.submit("gmail.test", job(i), t0));
    auto o = as<open_connection>(s.next_action(t0));
    ASSERT_TRUE(o);
    EXPECT_EQ(o->provider, -1);  // not known before the route
    s.learn_provider(o->conn, 0);
    EXPECT_EQ(s.provider_of(o->conn), 0);
    // The provider allows one connection per source: no second.
    EXPECT_TRUE(as<wait>(s.next_action(t0)).has_value());
    s.connection_closed(o->conn, t0);
    auto o2 = as<open_connection>(s.next_action(t0));
    ASSERT_TRUE(o2);
    EXPECT_EQ(o2->provider, 0);  // known from now on
}

}  // namespace
}  // namespace ringmail::queue
