#include "ringmail/queue/scheduler.h"

#include "ringmail/queue/errc.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

const steady_time t0 = steady_time{} + 1000s;
constexpr std::int64_t unix0 = 1'700'000'000;

scheduler_config config(destination_policy defaults = {},
                        std::vector<domain_override> overrides = {}) {
    scheduler_config c;
    c.shard = 0;
    c.shards = 1;
    c.policies = domain_policy(defaults, overrides);
    c.retry.schedule = {60s, 300s};
    c.retry.max_lifetime = 24h;
    c.retry.jitter = 0.0;
    c.idle_timeout = 10s;
    return c;
}

delivery_job job(std::uint64_t id, rcpt_list rcpts = {0}, std::int64_t arrival = unix0) {
    delivery_job j;
    j.queue_id = id;
    j.rcpts = rcpts;
    j.arrival_unix = arrival;
    return j;
}

struct sent {
    unsigned to;
    shard_message msg;
};

std::vector<sent> drain(scheduler& s) {
    std::vector<sent> out;
    s.flush_outgoing([&](unsigned to, shard_message& m) {
        out.push_back({to, std::move(m)});
        return true;
    });
    return out;
}

std::vector<job_notice> notices(scheduler& s) {
    std::vector<job_notice> out;
    for (auto& o : drain(s)) {
        if (auto* n = std::get_if<job_notice>(&o.msg))
            out.push_back(std::move(*n));
    }
    return out;
}

template <typename T>
T expect(const action& a) {
    const T* p = std::get_if<T>(&a);
    if (!p) {
        ADD_FAILURE() << "unexpected action kind " << a.index();
        return T{};
    }
    return *p;
}

TEST(scheduler, opens_up_to_the_connection_limit_then_waits) {
    destination_policy p;
    p.max_connections = 2;
    scheduler s(config(p));
    for (std::uint64_t i = 1; i <= 10; ++i)
        ASSERT_TRUE(s.submit("X.test", job(i), t0));
    auto o1 = expect<open_connection>(s.next_action(t0));
    auto o2 = expect<open_connection>(s.next_action(t0));
    EXPECT_NE(o1.conn, o2.conn);
    EXPECT_EQ(o1.domain, "x.test");
    EXPECT_EQ(o1.connect_timeout, p.connect_timeout);
    auto w = expect<wait>(s.next_action(t0));
    EXPECT_FALSE(w.until);  // only a connection event can move things on
    EXPECT_EQ(s.counts().connections, 2u);
}

TEST(scheduler, does_not_open_more_connections_than_jobs_waiting) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("x.test", job(1), t0));
    expect<open_connection>(s.next_action(t0));
    expect<wait>(s.next_action(t0));
}

TEST(scheduler, runs_jobs_in_order_on_open_connections) {
    scheduler s(config());
    for (std::uint64_t i = 1; i <= 3; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    expect<open_connection>(s.next_action(t0));
    expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    EXPECT_EQ(r.conn, o.conn);
    EXPECT_EQ(r.detail.queue_id, 1u);
    EXPECT_EQ(r.detail.origin, 0);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    s.complete(r.conn, r.job, {&ok, 1}, t0, unix0);
    auto r2 = expect<run_job>(s.next_action(t0));
    EXPECT_EQ(r2.conn, o.conn);
    EXPECT_EQ(r2.detail.queue_id, 2u);
}

TEST(scheduler, jobs_are_grouped_per_destination) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("a.test", job(1, {0, 2, 3}), t0));
    ASSERT_TRUE(s.submit("b.test", job(1, {1}), t0));
    ASSERT_TRUE(s.submit("A.TEST", job(2, {0}), t0));
    EXPECT_EQ(s.counts().destinations, 2u);
    auto oa = expect<open_connection>(s.next_action(t0));
    auto ob = expect<open_connection>(s.next_action(t0));
    EXPECT_EQ(oa.domain, "a.test");
    EXPECT_EQ(ob.domain, "b.test");
    expect<open_connection>(s.next_action(t0));  // a.test has two jobs
    s.connection_opened(oa.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    EXPECT_EQ(r.detail.rcpts, (rcpt_list{0, 2, 3}));  // one job = one transaction
}

TEST(scheduler, closes_a_connection_after_max_messages) {
    destination_policy p;
    p.max_messages_per_connection = 2;
    p.max_connections = 1;
    scheduler s(config(p));
    for (std::uint64_t i = 1; i <= 3; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    for (int i = 0; i < 2; ++i) {
        auto r = expect<run_job>(s.next_action(t0));
        s.complete(r.conn, r.job, {&ok, 1}, t0, unix0);
    }
    auto c = expect<close_connection>(s.next_action(t0));
    EXPECT_EQ(c.conn, o.conn);
    expect<wait>(s.next_action(t0));  // the slot is still taken until it is closed
    s.connection_closed(c.conn, t0);
    auto o2 = expect<open_connection>(s.next_action(t0));
    EXPECT_NE(o2.conn, o.conn);
}

TEST(scheduler, a_busy_connection_takes_one_job_pipelined_behind_its_own) {
    destination_policy p;
    p.max_connections = 1;
    scheduler s(config(p));
    for (std::uint64_t i = 1; i <= 4; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // not running anything yet
    s.connection_opened(o.conn, t0);
    auto r1 = expect<run_job>(s.next_action(t0));
    auto r2 = s.pipeline_job(o.conn, t0);
    ASSERT_TRUE(r2);
    EXPECT_EQ(r2->conn, o.conn);
    EXPECT_EQ(r2->detail.queue_id, 2u);
    EXPECT_NE(r2->job, r1.job);
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // one behind at most
    EXPECT_EQ(s.counts().in_flight, 2u);
    EXPECT_EQ(s.counts().ready, 2u);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    s.complete(o.conn, r1.job, {&ok, 1}, t0, unix0);
    // The connection is still busy with the second: nothing runs on it from next_action.
    expect<wait>(s.next_action(t0));
    auto r3 = s.pipeline_job(o.conn, t0);
    ASSERT_TRUE(r3);
    EXPECT_EQ(r3->detail.queue_id, 3u);
    // Out of order is fine too.
    s.complete(o.conn, r3->job, {&ok, 1}, t0, unix0);
    s.complete(o.conn, r2->job, {&ok, 1}, t0, unix0);
    auto r4 = expect<run_job>(s.next_action(t0));  // idle again
    EXPECT_EQ(r4.detail.queue_id, 4u);
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // nothing ready
    s.complete(o.conn, r4.job, {&ok, 1}, t0, unix0);
    EXPECT_EQ(notices(s).size(), 4u);
    EXPECT_EQ(s.counts().in_flight, 0u);
}

TEST(scheduler, pipelining_keeps_max_messages_per_connection) {
    destination_policy p;
    p.max_messages_per_connection = 3;
    p.max_connections = 1;
    scheduler s(config(p));
    for (std::uint64_t i = 1; i <= 5; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    auto r1 = expect<run_job>(s.next_action(t0));
    auto r2 = s.pipeline_job(o.conn, t0);
    ASSERT_TRUE(r2);
    s.complete(o.conn, r1.job, {&ok, 1}, t0, unix0);
    auto r3 = s.pipeline_job(o.conn, t0);  // message 3 of 3
    ASSERT_TRUE(r3);
    s.complete(o.conn, r2->job, {&ok, 1}, t0, unix0);
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // would be the fourth
    s.complete(o.conn, r3->job, {&ok, 1}, t0, unix0);
    auto c = expect<close_connection>(s.next_action(t0));
    EXPECT_EQ(c.conn, o.conn);
}

TEST(scheduler, pipelining_keeps_the_rate) {
    domain_override slow;
    slow.name = "slow.test";
    slow.rate = 1.0;
    scheduler s(config({}, {slow}));
    for (std::uint64_t i = 1; i <= 3; ++i)
        ASSERT_TRUE(s.submit("slow.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    expect<run_job>(s.next_action(t0));
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // the bucket is empty
    EXPECT_TRUE(s.pipeline_job(o.conn, t0 + 1s));
}

TEST(scheduler, both_jobs_of_a_broken_pipelined_connection_are_reported_then_it_closes) {
    scheduler s(config());
    for (std::uint64_t i = 1; i <= 3; ++i)
        ASSERT_TRUE(s.submit("x.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r1 = expect<run_job>(s.next_action(t0));
    auto r2 = s.pipeline_job(o.conn, t0);
    ASSERT_TRUE(r2);
    attempt_reply why;
    why.code = 421;
    why.enhanced = "4.4.2";
    why.text = "lost";
    s.job_failed(o.conn, r1.job, why, t0, unix0);
    EXPECT_FALSE(s.pipeline_job(o.conn, t0));  // broken: nothing more on it
    s.job_failed(o.conn, r2->job, why, t0, unix0);
    s.connection_closed(o.conn, t0);
    auto n = notices(s);
    ASSERT_EQ(n.size(), 2u);
    for (const auto& x : n) {
        ASSERT_EQ(x.status.size(), 1u);
        EXPECT_EQ(x.status[0], rcpt_status::deferred);
    }
    EXPECT_EQ(s.counts().connections, 0u);
    EXPECT_EQ(s.counts().in_flight, 0u);
}

TEST(scheduler, rate_limit_paces_job_starts) {
    domain_override slow;
    slow.name = "slow.test";
    slow.rate = 1.0;  // burst defaults to 1
    scheduler s(config({}, {slow}));
    for (std::uint64_t i = 1; i <= 3; ++i)
        ASSERT_TRUE(s.submit("slow.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    auto r = expect<run_job>(s.next_action(t0));
    s.complete(r.conn, r.job, {&ok, 1}, t0, unix0);
    auto a = s.next_action(t0);
    // No second connection either: it would not beat the rate.
    auto w = expect<wait>(a);
    ASSERT_TRUE(w.until);
    EXPECT_GE(*w.until, t0 + 1s);
    EXPECT_LE(*w.until, t0 + 1001ms);
    expect<wait>(s.next_action(t0 + 900ms));
    auto r2 = expect<run_job>(s.next_action(*w.until));
    EXPECT_EQ(r2.detail.queue_id, 2u);
}

TEST(scheduler, outcomes_produce_notices_and_retries) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("x.test", job(7, {0, 1, 2}), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    attempt_reply busy{451, "4.3.0", "try later", "mx.x.test"};
    attempt_reply nouser{550, "5.1.1", "no such user", "mx.x.test"};
    rcpt_result res[] = {{0, rcpt_status::delivered, nullptr},
                         {1, rcpt_status::failed, &nouser},
                         {2, rcpt_status::deferred, &busy}};
    s.complete(r.conn, r.job, res, t0, unix0);
    auto ns = notices(s);
    ASSERT_EQ(ns.size(), 1u);
    const job_notice& n = ns[0];
    EXPECT_EQ(n.queue_id, 7u);
    EXPECT_EQ(n.attempts, 1u);
    ASSERT_EQ(n.rcpts, (rcpt_list{0, 1, 2}));
    EXPECT_EQ(n.status[0], rcpt_status::delivered);
    EXPECT_EQ(n.status[1], rcpt_status::failed);
    EXPECT_EQ(n.status[2], rcpt_status::deferred);
    EXPECT_EQ(n.next_attempt_unix, unix0 + 60);
    ASSERT_TRUE(n.detail);
    ASSERT_EQ(n.detail->replies.size(), 2u);
    EXPECT_EQ(n.detail->replies[0].first, 1);
    EXPECT_EQ(n.detail->replies[1].second.code, 451);

    // The deferred recipient comes back as its own job after the first interval.
    auto w = expect<wait>(s.next_action(t0));
    ASSERT_TRUE(w.until);
    EXPECT_EQ(*w.until, t0 + 10s);  // idle timeout of the open connection first
    EXPECT_EQ(s.counts().deferred, 1u);
    auto c = expect<close_connection>(s.next_action(t0 + 10s));
    s.connection_closed(c.conn, t0 + 10s);
    w = expect<wait>(s.next_action(t0 + 10s));
    ASSERT_TRUE(w.until);
    EXPECT_EQ(*w.until, t0 + 60s);
    auto o2 = expect<open_connection>(s.next_action(t0 + 60s));
    s.connection_opened(o2.conn, t0 + 60s);
    auto r2 = expect<run_job>(s.next_action(t0 + 60s));
    EXPECT_EQ(r2.detail.rcpts, (rcpt_list{2}));
    EXPECT_EQ(r2.detail.attempts, 1u);
    // Unreported recipients count as deferred; the second interval applies.
    s.complete(r2.conn, r2.job, {}, t0 + 60s, unix0 + 60);
    ns = notices(s);
    ASSERT_EQ(ns.size(), 1u);
    EXPECT_EQ(ns[0].status[0], rcpt_status::deferred);
    EXPECT_EQ(ns[0].next_attempt_unix, unix0 + 60 + 300);
}

TEST(scheduler, past_max_lifetime_deferred_recipients_expire) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("x.test", job(3, {0}, unix0 - 2 * 86400), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    attempt_reply busy{421, "4.7.0", "slow down", "mx"};
    s.job_failed(r.conn, r.job, busy, t0, unix0);
    auto ns = notices(s);
    ASSERT_EQ(ns.size(), 1u);
    EXPECT_EQ(ns[0].status[0], rcpt_status::expired);
    s.connection_closed(r.conn, t0);
    EXPECT_TRUE(s.idle());
}

TEST(scheduler, a_failed_connection_with_none_working_defers_every_ready_job) {
    destination_policy p;
    p.max_connections = 1;
    scheduler s(config(p));
    for (std::uint64_t i = 1; i <= 4; ++i)
        ASSERT_TRUE(s.submit("down.test", job(i), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    attempt_reply refused{421, "4.4.1", "connection refused", ""};
    s.connection_failed(o.conn, refused, t0, unix0);
    auto ns = notices(s);
    ASSERT_EQ(ns.size(), 4u);
    for (const auto& n : ns) {
        EXPECT_EQ(n.status[0], rcpt_status::deferred);
        EXPECT_EQ(n.attempts, 1u);
        ASSERT_TRUE(n.detail);
        EXPECT_EQ(n.detail->replies[0].second.text, "connection refused");
    }
    auto w = expect<wait>(s.next_action(t0));
    ASSERT_TRUE(w.until);
    EXPECT_EQ(*w.until, t0 + 60s);  // no connect loop: the schedule paces it
    EXPECT_EQ(s.counts().connections, 0u);
}

TEST(scheduler, idle_connections_close_after_the_idle_timeout) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("x.test", job(1), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    s.complete(r.conn, r.job, {&ok, 1}, t0 + 1s, unix0 + 1);
    auto w = expect<wait>(s.next_action(t0 + 1s));
    ASSERT_TRUE(w.until);
    EXPECT_EQ(*w.until, t0 + 11s);
    expect<wait>(s.next_action(t0 + 10s));
    auto c = expect<close_connection>(s.next_action(t0 + 11s));
    EXPECT_EQ(c.conn, o.conn);
    s.connection_closed(c.conn, t0 + 11s);
    EXPECT_EQ(notices(s).size(), 1u);
    EXPECT_TRUE(s.idle());
}

TEST(scheduler, jobs_for_other_owners_are_handed_over) {
    scheduler_config c = config();
    c.shards = 4;
    // A domain this shard does not own, and one it does.
    std::string remote, local;
    for (int i = 0; remote.empty() || local.empty(); ++i) {
        std::string d = "d" + std::to_string(i) + ".test";
        (owner_shard(d, 4) == 0 ? local : remote) = d;
    }
    scheduler s(std::move(c));
    ASSERT_TRUE(s.submit(remote, job(5, {1, 2}), t0));
    ASSERT_TRUE(s.submit(local, job(6), t0));
    auto out = drain(s);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].to, owner_shard(remote, 4));
    auto& h = std::get<job_handoff>(out[0].msg);
    EXPECT_EQ(h.domain, remote);
    EXPECT_EQ(h.lease, 0u);
    EXPECT_EQ(h.job.queue_id, 5u);
    EXPECT_EQ(h.job.origin, 0);
    EXPECT_EQ(h.job.rcpts, (rcpt_list{1, 2}));
    EXPECT_EQ(s.counts().ready, 1u);
}

TEST(scheduler, full_scheduler_refuses_new_jobs) {
    scheduler_config c = config();
    c.max_jobs = 2;
    scheduler s(std::move(c));
    ASSERT_TRUE(s.submit("x.test", job(1), t0));
    ASSERT_TRUE(s.submit("x.test", job(2), t0));
    auto r = s.submit("x.test", job(3), t0);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::queue_full);
}

TEST(scheduler, notices_for_handed_over_jobs_go_to_their_origin) {
    scheduler_config c = config();
    c.shards = 2;
    std::string mine;
    for (int i = 0; mine.empty(); ++i) {
        std::string d = "d" + std::to_string(i) + ".test";
        if (owner_shard(d, 2) == 0)
            mine = d;
    }
    scheduler s(std::move(c));
    delivery_job j = job(9);
    j.origin = 1;
    EXPECT_FALSE(s.receive(1, job_handoff{mine, j, 0}, t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    EXPECT_EQ(r.detail.origin, 1);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    s.complete(r.conn, r.job, {&ok, 1}, t0, unix0);
    auto out = drain(s);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].to, 1u);
    EXPECT_EQ(std::get<job_notice>(out[0].msg).queue_id, 9u);
}

// --- spreading ---

struct pair_fixture {
    std::string hot;  // owned by shard 0
    spare_gauges gauges{2};
    std::unique_ptr<scheduler> a, b;

    explicit pair_fixture(destination_policy p = {}, double rate = 0.0) {
        for (int i = 0; hot.empty(); ++i) {
            std::string d = "hot" + std::to_string(i) + ".test";
            if (owner_shard(d, 2) == 0)
                hot = d;
        }
        domain_override o;
        o.name = hot;
        if (rate > 0)
            o.rate = rate;
        for (unsigned sh = 0; sh < 2; ++sh) {
            scheduler_config c = config(p, {o});
            c.shard = sh;
            c.shards = 2;
            c.gauges = &gauges;
            c.max_total_connections = 100;
            c.spread_backlog = 50;
            c.lend_batch = 20;
            (sh == 0 ? a : b) = std::make_unique<scheduler>(std::move(c));
        }
    }
    // Everything a sent to b, in order.
    void pass_a_to_b() {
        a->flush_outgoing([&](unsigned to, shard_message& m) {
            EXPECT_EQ(to, 1u);
            b->receive(0, std::move(m), t0);
            return true;
        });
    }
};

TEST(scheduler_spreading, lends_a_hot_backlog_to_a_shard_with_spare_capacity) {
    destination_policy p;
    p.max_connections = 4;
    p.max_messages_per_connection = 10;
    pair_fixture f(p);
    for (std::uint64_t i = 1; i <= 200; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    expect<wait>(f.b->next_action(t0));  // b publishes its spare capacity
    EXPECT_EQ(f.gauges.read(1), 100u);
    auto first = f.a->next_action(t0);
    expect<open_connection>(first);
    auto c = f.a->counts();
    EXPECT_EQ(c.leases_out, 1u);
    EXPECT_EQ(c.lent_jobs, 20u);
    EXPECT_EQ(c.ready, 180u);
    // Not again before spread_interval.
    expect<open_connection>(f.a->next_action(t0));
    EXPECT_EQ(f.a->counts().leases_out, 1u);

    f.pass_a_to_b();
    EXPECT_EQ(f.b->counts().borrowed, 1u);
    EXPECT_EQ(f.b->counts().ready, 20u);
    // b may open what the global limit leaves: a holds 2 of 4 slots.
    auto ob = expect<open_connection>(f.b->next_action(t0));
    auto ob2 = expect<open_connection>(f.b->next_action(t0));
    expect<wait>(f.b->next_action(t0));
    // The global limit now binds a too: 4 connections over both shards.
    auto wa = expect<wait>(f.a->next_action(t0));
    ASSERT_TRUE(wa.until);  // polls for a slot the borrower may give back
    EXPECT_EQ(f.a->counts().connections + f.b->counts().connections, 4u);

    // The borrower delivers the lease and returns it.
    f.b->connection_opened(ob.conn, t0);
    f.b->connection_opened(ob2.conn, t0);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    std::size_t done = 0;
    for (int guard = 0; guard < 1000; ++guard) {
        auto act = f.b->next_action(t0);
        if (auto* r = std::get_if<run_job>(&act)) {
            f.b->complete(r->conn, r->job, {&ok, 1}, t0, unix0);
            ++done;
        } else if (auto* cl = std::get_if<close_connection>(&act)) {
            f.b->connection_closed(cl->conn, t0);
        } else {
            break;
        }
    }
    EXPECT_EQ(done, 20u);
    EXPECT_TRUE(f.b->idle() || f.b->has_outgoing());
    std::size_t notices_to_a = 0, returns = 0;
    f.b->flush_outgoing([&](unsigned to, shard_message& m) {
        EXPECT_EQ(to, 0u);
        if (std::holds_alternative<job_notice>(m))
            ++notices_to_a;
        if (std::holds_alternative<lease_return>(m))
            ++returns;
        EXPECT_FALSE(f.a->receive(1, std::move(m), t0).has_value() &&
                     !std::holds_alternative<job_notice>(m));
        return true;
    });
    EXPECT_EQ(notices_to_a, 20u);
    EXPECT_EQ(returns, 1u);
    EXPECT_EQ(f.a->counts().leases_out, 0u);
    EXPECT_TRUE(f.b->idle());
}

// A full ring holds back part of a lease: the borrower delivers the jobs that came and must
// keep the lease (not return it) until the rest has arrived. This was an intermittent
// "lent job for an unknown lease" in the stress test.
TEST(scheduler_spreading, a_lease_split_over_two_flushes_stays_until_its_last_job) {
    destination_policy p;
    p.max_connections = 4;
    p.max_messages_per_connection = 10;
    pair_fixture f(p);
    for (std::uint64_t i = 1; i <= 200; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    f.gauges.publish(1, 100);
    expect<open_connection>(f.a->next_action(t0));
    ASSERT_EQ(f.a->counts().leases_out, 1u);
    // The ring takes the grant and 5 of the 20 jobs; the rest waits in a's outbox.
    std::size_t taken = 0;
    f.a->flush_outgoing([&](unsigned, shard_message& m) {
        if (std::holds_alternative<job_handoff>(m) && taken == 5)
            return false;
        taken += std::holds_alternative<job_handoff>(m);
        f.b->receive(0, std::move(m), t0);
        return true;
    });
    ASSERT_EQ(f.b->counts().ready, 5u);
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    std::size_t done = 0;
    auto run_b = [&] {
        for (int guard = 0; guard < 1000; ++guard) {
            auto act = f.b->next_action(t0);
            if (auto* o = std::get_if<open_connection>(&act)) {
                f.b->connection_opened(o->conn, t0);
            } else if (auto* r = std::get_if<run_job>(&act)) {
                f.b->complete(r->conn, r->job, {&ok, 1}, t0, unix0);
                ++done;
            } else if (auto* cl = std::get_if<close_connection>(&act)) {
                f.b->connection_closed(cl->conn, t0);
            } else {
                break;
            }
        }
    };
    run_b();
    EXPECT_EQ(done, 5u);
    std::size_t returns = 0;
    auto back_to_a = [&] {
        f.b->flush_outgoing([&](unsigned, shard_message& m) {
            returns += std::holds_alternative<lease_return>(m);
            f.a->receive(1, std::move(m), t0);
            return true;
        });
    };
    back_to_a();
    EXPECT_EQ(returns, 0u) << "returned with 15 lent jobs still on their way";
    EXPECT_EQ(f.b->counts().borrowed, 1u);
    f.pass_a_to_b();  // the other 15 arrive: no "unknown lease"
    run_b();
    back_to_a();
    EXPECT_EQ(done, 20u);
    EXPECT_EQ(returns, 1u);
    EXPECT_EQ(f.a->counts().leases_out, 0u);
    EXPECT_TRUE(f.b->idle());
}

TEST(scheduler_spreading, no_lending_without_a_less_loaded_shard) {
    pair_fixture f;
    for (std::uint64_t i = 1; i <= 200; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    f.gauges.publish(1, 0);  // b is as busy as can be
    f.a->next_action(t0);
    EXPECT_EQ(f.a->counts().leases_out, 0u);
}

TEST(scheduler_spreading, no_lending_below_the_backlog_threshold) {
    pair_fixture f;
    for (std::uint64_t i = 1; i <= 40; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    f.gauges.publish(1, 100);
    f.a->next_action(t0);
    EXPECT_EQ(f.a->counts().leases_out, 0u);
}

TEST(scheduler_spreading, rate_limited_destinations_are_not_lent) {
    pair_fixture f({}, 10.0);
    for (std::uint64_t i = 1; i <= 200; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    f.gauges.publish(1, 100);
    f.a->next_action(t0);
    EXPECT_EQ(f.a->counts().leases_out, 0u);
}

TEST(scheduler_spreading, borrower_sends_deferred_jobs_back_to_the_owner) {
    pair_fixture f;
    for (std::uint64_t i = 1; i <= 200; ++i)
        ASSERT_TRUE(f.a->submit(f.hot, job(i), t0));
    f.gauges.publish(1, 100);
    f.a->next_action(t0);
    ASSERT_EQ(f.a->counts().leases_out, 1u);
    f.pass_a_to_b();
    auto ob = expect<open_connection>(f.b->next_action(t0));
    attempt_reply refused{421, "4.4.1", "refused", ""};
    // Only one of b's connections fails; with none working every ready lent job is deferred.
    f.b->connection_failed(ob.conn, refused, t0, unix0);
    std::size_t back = 0, notes = 0, returns = 0;
    for (int guard = 0; guard < 100 && !f.b->idle(); ++guard) {
        auto act = f.b->next_action(t0);
        if (auto* o = std::get_if<open_connection>(&act))
            f.b->connection_failed(o->conn, refused, t0, unix0);
        f.b->flush_outgoing([&](unsigned to, shard_message& m) {
            EXPECT_EQ(to, 0u);
            back += std::holds_alternative<job_handoff>(m);
            notes += std::holds_alternative<job_notice>(m);
            returns += std::holds_alternative<lease_return>(m);
            f.a->receive(1, std::move(m), t0);
            return true;
        });
    }
    EXPECT_EQ(back, 20u);
    EXPECT_EQ(notes, 20u);
    EXPECT_EQ(returns, 1u);
    EXPECT_TRUE(f.b->idle());
    auto c = f.a->counts();
    EXPECT_EQ(c.leases_out, 0u);
    EXPECT_EQ(c.deferred, 20u);  // back home, waiting for their retry time
}

// --- the operator's controls (issue 14) ---------------------------------------------------

std::shared_ptr<const suspensions> suspend_for(std::string domain, std::int64_t until) {
    auto s = std::make_shared<suspensions>();
    suspension e;
    e.scope = {suspension_kind::domain, std::move(domain), ""};
    e.since_unix = unix0;
    e.until_unix = until;
    EXPECT_TRUE(s->suspend(e));
    return s;
}

TEST(scheduler_controls, a_suspended_destination_opens_nothing_until_it_ends_or_resumes) {
    scheduler s(config());
    s.set_suspensions(suspend_for("a.test", unix0 + 600), t0, unix0);
    ASSERT_TRUE(s.submit("a.test", job(1), t0));
    ASSERT_TRUE(s.submit("b.test", job(2), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    EXPECT_EQ(o.domain, "b.test");
    auto w = expect<wait>(s.next_action(t0));
    ASSERT_TRUE(w.until);
    EXPECT_EQ(*w.until, t0 + 600s);  // the suspension's end wakes it
    // Resumed: at once.
    s.set_suspensions(std::make_shared<suspensions>(), t0 + 1s, unix0 + 1);
    EXPECT_EQ(expect<open_connection>(s.next_action(t0 + 1s)).domain, "a.test");
}

TEST(scheduler_controls, a_suspension_ends_by_itself) {
    scheduler s(config());
    s.set_suspensions(suspend_for("a.test", unix0 + 60), t0, unix0);
    ASSERT_TRUE(s.submit("a.test", job(1), t0 + 10s));  // a destination made after the set
    expect<wait>(s.next_action(t0 + 10s));
    EXPECT_EQ(expect<open_connection>(s.next_action(t0 + 60s)).domain, "a.test");
}

TEST(scheduler_controls, suspension_keeps_idle_connections_idle) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("a.test", job(1), t0));
    auto o = expect<open_connection>(s.next_action(t0));
    s.connection_opened(o.conn, t0);
    auto r = expect<run_job>(s.next_action(t0));
    ASSERT_TRUE(s.submit("a.test", job(2), t0));
    s.set_suspensions(suspend_for("a.test", unix0 + 600), t0, unix0);
    // The running job finishes; the next one waits although a connection is idle.
    std::vector<rcpt_result> ok{{0, rcpt_status::delivered, nullptr, false}};
    s.complete(r.conn, r.job, ok, t0, unix0);
    EXPECT_EQ(notices(s).size(), 1u);
    expect<wait>(s.next_action(t0 + 1s));
    EXPECT_EQ(s.counts().ready, 1u);
}

TEST(scheduler_controls, flush_makes_deferred_jobs_ready) {
    scheduler s(config());
    auto j = job(1);
    j.next_attempt = t0 + 1h;
    ASSERT_TRUE(s.submit("a.test", j, t0));
    auto j2 = job(2);
    j2.next_attempt = t0 + 1h;
    ASSERT_TRUE(s.submit("b.test", j2, t0));
    expect<wait>(s.next_action(t0));
    EXPECT_EQ(s.flush("a.test", t0), 1u);
    EXPECT_EQ(expect<open_connection>(s.next_action(t0)).domain, "a.test");
    expect<wait>(s.next_action(t0));
    EXPECT_EQ(s.flush("", t0), 1u);
}

TEST(scheduler_controls, bounce_fails_the_queued_jobs_with_the_reason) {
    scheduler s(config());
    ASSERT_TRUE(s.submit("a.test", job(1, {0, 1}), t0));
    auto later = job(2);
    later.next_attempt = t0 + 1h;
    ASSERT_TRUE(s.submit("a.test", later, t0));
    ASSERT_TRUE(s.submit("b.test", job(3), t0));
    attempt_reply why{550, "5.0.0", "bounced by the administrator", ""};
    EXPECT_EQ(s.bounce("a.test", 0, why, t0, unix0), 3u);
    auto ns = notices(s);
    ASSERT_EQ(ns.size(), 2u);
    for (const auto& n : ns) {
        for (auto st : n.status)
            EXPECT_EQ(st, rcpt_status::failed);
        ASSERT_TRUE(n.detail);
        EXPECT_EQ(n.detail->replies.front().second.text, "bounced by the administrator");
    }
    EXPECT_EQ(s.counts().ready, 1u);  // b.test's
    // By queue id.
    EXPECT_EQ(s.bounce("", 3, why, t0, unix0), 1u);
    EXPECT_EQ(s.counts().ready, 0u);
    EXPECT_TRUE(s.destinations().empty() || s.destinations().front().recipients == 0);
}

TEST(scheduler_controls, destinations_report_what_is_queued) {
    scheduler s(config());
    auto j = job(1, {0, 1, 2}, unix0 - 50);
    j.next_attempt = t0 + 1h;
    ASSERT_TRUE(s.submit("a.test", j, t0));
    auto d = s.destinations();
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].key, "a.test");
    EXPECT_EQ(d[0].recipients, 3u);
    EXPECT_EQ(d[0].deferred, 1u);
    EXPECT_EQ(d[0].oldest_arrival_unix, unix0 - 50);
    ASSERT_TRUE(d[0].next_attempt);
    EXPECT_EQ(s.jobs_of(1).size(), 1u);
    EXPECT_TRUE(s.jobs_of(2).empty());
}

}  // namespace
}  // namespace ringmail::queue
