// Many shards, many destinations, real SPSC rings between them, random lending: the global
// per-destination connection limit must hold at every instant and every recipient must be
// accounted for exactly once. Also built with -fsanitize=thread (queue_sched_stress_tsan).
//
// Time is virtual (a shared counter every shard advances), so retries, idle timeouts and
// lending intervals pass quickly and the run does not depend on the machine's speed.
#include "ringmail/core/spsc_ring.h"
#include "ringmail/queue/scheduler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

constexpr unsigned shards = 4;
constexpr unsigned destinations = 24;
constexpr std::uint64_t jobs_per_shard = 4000;
constexpr std::int64_t unix_base = 1'700'000'000;
constexpr std::uint64_t max_iterations = 20'000'000;  // a hang guard, not a timing

using ring = core::spsc_ring<shard_message, 256>;

struct world {
    std::vector<std::string> names;
    std::vector<std::uint32_t> limit;
    std::unordered_map<std::string, unsigned> index;  // read-only while the threads run
    std::unique_ptr<std::atomic<int>[]> live = std::make_unique<std::atomic<int>[]>(destinations);
    std::unique_ptr<ring[]> rings = std::make_unique<ring[]>(shards * shards);
    spare_gauges gauges{shards};
    std::atomic<std::int64_t> clock_ms{0};
    std::atomic<std::uint64_t> total_rcpts{0};
    std::atomic<std::uint64_t> terminal{0};
    std::atomic<bool> all_produced_flags[shards] = {};
    std::atomic<unsigned> finished{0};
    std::atomic<std::uint64_t> violations{0};
    std::atomic<std::uint64_t> duplicates{0};
    std::atomic<std::uint64_t> opened{0};
    std::atomic<bool> gave_up{false};

    ring& link(unsigned from, unsigned to) { return rings[to * shards + from]; }
};

struct shard_sim {
    world& w;
    unsigned self;
    scheduler sched;
    std::mt19937_64 rng;
    struct pending_conn {
        std::uint64_t id;
        unsigned dest;
    };
    std::vector<pending_conn> connecting;
    std::unordered_map<std::uint64_t, unsigned> open;  // connection -> destination
    std::vector<run_job> running;
    std::unordered_map<std::uint64_t, std::uint32_t> outstanding;  // queue id -> rcpt bits
    std::uint64_t produced = 0;
    std::uint64_t lent_seen = 0;

    static scheduler_config make_config(world& w, unsigned self) {
        scheduler_config c;
        c.shard = self;
        c.shards = shards;
        destination_policy d;
        d.max_connections = 2;
        d.max_messages_per_connection = 5;
        std::vector<domain_override> o;
        for (unsigned i = 0; i < destinations; ++i) {
            domain_override x;
            x.name = w.names[i];
            x.max_connections = w.limit[i];
            if (i % 7 == 6)
                x.rate = 200.0;  // a few throttled ones (never lent)
            o.push_back(x);
        }
        c.policies = domain_policy(d, o);
        c.retry.schedule = {1s, 2s};
        c.retry.max_lifetime = 20s;
        c.retry.jitter = 0.2;
        c.seed = 100 + self;
        c.max_total_connections = 48;
        c.idle_timeout = 500ms;
        c.gauges = &w.gauges;
        c.spread_backlog = 12;
        c.lend_batch = 6;
        c.spread_margin = 4;
        c.spread_interval = 20ms;
        c.slot_poll = 5ms;
        return c;
    }

    shard_sim(world& w_, unsigned s) : w(w_), self(s), sched(make_config(w_, s)), rng(7 + s) {}

    steady_time now() const {
        return steady_time{} +
               std::chrono::milliseconds(w.clock_ms.load(std::memory_order_relaxed));
    }
    std::int64_t now_unix() const {
        return unix_base + w.clock_ms.load(std::memory_order_relaxed) / 1000;
    }
    bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

    void account(const job_notice& n) {
        auto it = outstanding.find(n.queue_id);
        for (std::size_t i = 0; i < n.rcpts.size(); ++i) {
            if (n.status[i] == rcpt_status::deferred)
                continue;
            std::uint32_t bit = 1u << n.rcpts[i];
            if (it == outstanding.end() || !(it->second & bit)) {
                w.duplicates.fetch_add(1);
                continue;
            }
            it->second &= ~bit;
            w.terminal.fetch_add(1);
        }
        if (it != outstanding.end() && it->second == 0)
            outstanding.erase(it);
    }

    void produce() {
        if (produced == jobs_per_shard || !chance(0.5))
            return;
        // Skewed: a third of the jobs go to two hot destinations, which get lent.
        unsigned d = chance(0.35) ? static_cast<unsigned>(rng() % 2)
                                  : static_cast<unsigned>(rng() % destinations);
        delivery_job j;
        j.queue_id = (std::uint64_t{self} << 32) | produced;
        std::uint32_t n = 1 + static_cast<std::uint32_t>(rng() % 3);
        std::uint32_t bits = 0;
        for (std::uint16_t r = 0; r < n; ++r) {
            j.rcpts.push_back(r);
            bits |= 1u << r;
        }
        j.arrival_unix = now_unix();
        if (!sched.submit(w.names[d], j, now()))
            return;  // full: try again later
        outstanding[j.queue_id] = bits;
        w.total_rcpts.fetch_add(n);
        if (++produced == jobs_per_shard)
            w.all_produced_flags[self].store(true);
    }

    void receive() {
        for (unsigned from = 0; from < shards; ++from) {
            for (int k = 0; k < 64; ++k) {
                auto m = w.link(from, self).try_pop();
                if (!m)
                    break;
                if (auto n = sched.receive(from, std::move(*m), now()))
                    account(*n);
            }
        }
    }

    void act() {
        for (int k = 0; k < 64; ++k) {
            action a = sched.next_action(now());
            if (auto* o = std::get_if<open_connection>(&a)) {
                unsigned d = w.index.at(std::string(o->domain));
                int live = w.live[d].fetch_add(1) + 1;
                if (live > static_cast<int>(w.limit[d]))
                    w.violations.fetch_add(1);
                w.opened.fetch_add(1, std::memory_order_relaxed);
                connecting.push_back({o->conn, d});
            } else if (auto* r = std::get_if<run_job>(&a)) {
                running.push_back(*r);
            } else if (auto* c = std::get_if<close_connection>(&a)) {
                close(c->conn);
            } else {
                break;
            }
        }
    }

    void close(std::uint64_t conn) {
        auto it = open.find(conn);
        ASSERT_NE(it, open.end());
        w.live[it->second].fetch_sub(1);
        open.erase(it);
        sched.connection_closed(conn, now());
    }

    void simulate() {
        static const attempt_reply refused{421, "4.4.1", "connection refused", ""};
        static const attempt_reply busy{451, "4.3.0", "busy", "mx"};
        static const attempt_reply nouser{550, "5.1.1", "no such user", "mx"};
        for (std::size_t i = 0; i < connecting.size();) {
            if (chance(0.5)) {
                ++i;
                continue;
            }
            auto pc = connecting[i];
            connecting[i] = connecting.back();
            connecting.pop_back();
            if (chance(0.9)) {
                open.emplace(pc.id, pc.dest);
                sched.connection_opened(pc.id, now());
            } else {
                w.live[pc.dest].fetch_sub(1);
                sched.connection_failed(pc.id, refused, now(), now_unix());
            }
        }
        for (std::size_t i = 0; i < running.size();) {
            if (chance(0.4)) {
                ++i;
                continue;
            }
            run_job r = running[i];
            running[i] = running.back();
            running.pop_back();
            if (chance(0.05)) {
                sched.job_failed(r.conn, r.job, busy, now(), now_unix());
                close(r.conn);
                continue;
            }
            std::vector<rcpt_result> res;
            for (std::uint16_t rc : r.detail.rcpts) {
                double x = std::uniform_real_distribution<double>(0, 1)(rng);
                if (x < 0.7)
                    res.push_back({rc, rcpt_status::delivered, nullptr});
                else if (x < 0.8)
                    res.push_back({rc, rcpt_status::failed, &nouser});
                else if (x < 0.95)
                    res.push_back({rc, rcpt_status::deferred, &busy});
                // else: not reported, deferred
            }
            sched.complete(r.conn, r.job, res, now(), now_unix());
        }
    }

    void send() {
        sched.flush_outgoing([&](unsigned to, shard_message& m) {
            if (to == self) {
                account(std::get<job_notice>(m));
                return true;
            }
            return w.link(self, to).try_push(std::move(m));
        });
    }

    bool everyone_produced() const {
        for (auto& f : w.all_produced_flags) {
            if (!f.load())
                return false;
        }
        return true;
    }

    void run() {
        bool marked = false;
        for (std::uint64_t it = 0;; ++it) {
            if (it == max_iterations) {
                w.gave_up.store(true);
                w.finished.fetch_add(1);
                return;
            }
            w.clock_ms.fetch_add(1, std::memory_order_relaxed);
            produce();
            receive();
            simulate();
            act();
            send();
            bool done = everyone_produced() && w.terminal.load() == w.total_rcpts.load() &&
                        sched.idle() && connecting.empty() && running.empty() && open.empty();
            if (done && !marked) {
                marked = true;
                w.finished.fetch_add(1);
            }
            if (marked && w.finished.load() == shards)
                return;
            if (w.gave_up.load())
                return;
            if ((it & 15) == 0)
                std::this_thread::yield();
        }
    }
};

TEST(scheduler_stress, global_limits_hold_and_every_recipient_is_accounted_once) {
    world w;
    for (unsigned i = 0; i < destinations; ++i) {
        w.names.push_back("dest" + std::to_string(i) + ".test");
        w.limit.push_back(1 + i % 3);
        w.index.emplace(w.names.back(), i);
        w.live[i].store(0);
    }
    std::vector<std::unique_ptr<shard_sim>> sims;
    for (unsigned s = 0; s < shards; ++s)
        sims.push_back(std::make_unique<shard_sim>(w, s));
    std::vector<std::thread> threads;
    for (unsigned s = 0; s < shards; ++s)
        threads.emplace_back([&, s] { sims[s]->run(); });
    for (auto& t : threads)
        t.join();

    ASSERT_FALSE(w.gave_up.load())
        << "no progress: terminal " << w.terminal.load() << " of " << w.total_rcpts.load();
    EXPECT_EQ(w.violations.load(), 0u);
    EXPECT_EQ(w.duplicates.load(), 0u);
    EXPECT_EQ(w.terminal.load(), w.total_rcpts.load());
    EXPECT_GT(w.opened.load(), 0u);
    std::uint64_t lent = 0;
    for (auto& s : sims) {
        EXPECT_TRUE(s->outstanding.empty());
        EXPECT_TRUE(s->sched.idle());
        lent += s->sched.counts().lent_jobs;
    }
    for (unsigned i = 0; i < destinations; ++i)
        EXPECT_EQ(w.live[i].load(), 0);
    EXPECT_GT(lent, 0u) << "the run never exercised lending";
    std::printf("stress: %llu recipients, %llu connections, %llu jobs lent\n",
                static_cast<unsigned long long>(w.total_rcpts.load()),
                static_cast<unsigned long long>(w.opened.load()),
                static_cast<unsigned long long>(lent));
}

}  // namespace
}  // namespace ringmail::queue
