#include "ringmail/core/timer.h"

#include "ringmail/core/reactor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

namespace ringmail::core {
namespace {

using clock = timer::clock;
using std::chrono::milliseconds;

struct named_timer final : timer {
    int id = 0;
    std::vector<int>* fired = nullptr;
    std::function<void()> then;
    void on_expire() override {
        fired->push_back(id);
        if (then)
            then();
    }
};

const clock::time_point t0{};

TEST(timer_queue, fires_in_deadline_order_and_ties_in_arm_order) {
    timer_queue q;
    std::vector<int> fired;
    named_timer t[5];
    const int delays[] = {30, 10, 20, 10, 5};
    for (int i = 0; i < 5; ++i) {
        t[i].id = i;
        t[i].fired = &fired;
        q.arm(t[i], t0 + milliseconds(delays[i]));
    }
    EXPECT_EQ(q.next_deadline(), t0 + milliseconds(5));
    EXPECT_EQ(q.expire(t0 + milliseconds(9)), 1u);
    EXPECT_EQ(q.expire(t0 + milliseconds(100)), 4u);
    EXPECT_EQ(fired, (std::vector<int>{4, 1, 3, 2, 0}));
    EXPECT_EQ(q.size(), 0u);
    EXPECT_FALSE(q.next_deadline().has_value());
    for (auto& x : t)
        EXPECT_FALSE(x.armed());
}

TEST(timer_queue, disarm_and_rearm) {
    timer_queue q;
    std::vector<int> fired;
    named_timer a, b, c;
    for (auto* x : {&a, &b, &c})
        x->fired = &fired;
    a.id = 1, b.id = 2, c.id = 3;
    q.arm(a, t0 + milliseconds(10));
    q.arm(b, t0 + milliseconds(20));
    q.arm(c, t0 + milliseconds(30));
    q.disarm(b);
    EXPECT_FALSE(b.armed());
    q.disarm(b);                      // twice is harmless
    q.arm(c, t0 + milliseconds(1));   // earlier
    q.arm(a, t0 + milliseconds(50));  // later
    EXPECT_EQ(q.size(), 2u);
    q.expire(t0 + milliseconds(100));
    EXPECT_EQ(fired, (std::vector<int>{3, 1}));
}

TEST(timer_queue, destroying_an_armed_timer_disarms_it) {
    timer_queue q;
    std::vector<int> fired;
    {
        named_timer gone;
        gone.fired = &fired;
        q.arm(gone, t0 + milliseconds(1));
        EXPECT_EQ(q.size(), 1u);
    }
    EXPECT_EQ(q.size(), 0u);
    EXPECT_EQ(q.expire(t0 + milliseconds(10)), 0u);
}

TEST(timer_queue, rearm_from_on_expire_waits_for_next_call) {
    timer_queue q;
    std::vector<int> fired;
    named_timer t;
    t.fired = &fired;
    t.then = [&] { q.arm(t, t0); };  // already due again
    q.arm(t, t0);
    EXPECT_EQ(q.expire(t0 + milliseconds(1)), 1u);
    EXPECT_TRUE(t.armed());
    EXPECT_EQ(q.expire(t0 + milliseconds(1)), 1u);
    EXPECT_EQ(fired.size(), 2u);
    t.then = nullptr;
}

TEST(timer_queue, random_operations_match_a_sorted_reference) {
    std::mt19937 rng(42);
    timer_queue q;
    std::vector<int> fired;
    std::vector<std::unique_ptr<named_timer>> timers;
    for (int i = 0; i < 2000; ++i) {
        timers.push_back(std::make_unique<named_timer>());
        timers.back()->id = i;
        timers.back()->fired = &fired;
    }
    std::vector<std::pair<long, int>> expected;  // (deadline, id) of still-armed timers
    std::vector<long> deadline(timers.size(), -1);
    for (int step = 0; step < 20000; ++step) {
        int i = static_cast<int>(rng() % timers.size());
        if (rng() % 4 == 0) {
            q.disarm(*timers[i]);
            deadline[i] = -1;
        } else {
            long d = static_cast<long>(rng() % 100000);
            q.arm(*timers[i], t0 + milliseconds(d));
            deadline[i] = d;
        }
    }
    for (std::size_t i = 0; i < timers.size(); ++i) {
        if (deadline[i] >= 0)
            expected.emplace_back(deadline[i], static_cast<int>(i));
    }
    EXPECT_EQ(q.size(), expected.size());
    q.expire(t0 + milliseconds(200000));
    ASSERT_EQ(fired.size(), expected.size());
    // Deadlines must come out non-decreasing and every armed timer exactly once.
    for (std::size_t k = 1; k < fired.size(); ++k) {
        EXPECT_LE(deadline[fired[k - 1]], deadline[fired[k]]);
    }
    std::vector<int> ids = fired;
    std::sort(ids.begin(), ids.end());
    std::vector<int> want;
    for (auto& e : expected)
        want.push_back(e.second);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(ids, want);
}

TEST(reactor_timers, fire_in_order_cancel_and_rearm_on_a_real_ring) {
    auto r = reactor::create().value();
    std::vector<int> fired;
    named_timer a, b, c, d;
    for (auto* x : {&a, &b, &c, &d})
        x->fired = &fired;
    a.id = 30, b.id = 10, c.id = 20, d.id = 99;
    const auto now = r->now();
    r->arm(a, now + milliseconds(30));
    r->arm(b, now + milliseconds(10));
    r->arm(c, now + milliseconds(20));
    r->arm(d, now + milliseconds(15));
    r->disarm(d);
    r->arm(c, now + milliseconds(40));  // re-armed later: now fires after a
    EXPECT_EQ(r->armed_timers(), 3u);
    // max_wait far beyond the deadlines: the loop must wake for the timers themselves.
    for (int i = 0; i < 50 && fired.size() < 3; ++i)
        r->run_once(std::chrono::seconds(2));
    EXPECT_EQ(fired, (std::vector<int>{10, 30, 20}));
    EXPECT_GE(r->now(), now + milliseconds(40));
}

}  // namespace
}  // namespace ringmail::core
