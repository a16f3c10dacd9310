// MX-routing scheduler costs: jobs/s through the cross-shard hand-off (a producer shard submits
// jobs for a destination another shard owns; the owner takes them off the ring and queues
// them), and next_action throughput on one shard with many destinations.
#include "ringmail/core/spsc_ring.h"
#include "ringmail/queue/scheduler.h"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace ringmail::queue;
using namespace std::chrono_literals;

scheduler_config config(unsigned shard, unsigned shards) {
    scheduler_config c;
    c.shard = shard;
    c.shards = shards;
    c.retry.schedule = {60s};
    c.max_jobs = 1u << 22;
    c.max_outbox = 1u << 22;
    return c;
}

// Two threads: shard 0 submits (the outbox becomes job_handoff messages pushed into the ring);
// shard 1 pops them and queues them on its destination queue.
void bm_handoff_two_threads(benchmark::State& state) {
    constexpr std::uint64_t batch = 1 << 15;
    std::string remote;
    for (int i = 0; remote.empty(); ++i) {
        std::string d = "d" + std::to_string(i) + ".example";
        if (owner_shard(d, 2) == 1)
            remote = d;
    }
    auto ring = std::make_unique<ringmail::core::spsc_ring<shard_message, 1024>>();
    const steady_time now = std::chrono::steady_clock::now();
    std::uint64_t next_id = 0;
    for (auto _ : state) {
        state.PauseTiming();
        auto producer_sched = std::make_unique<scheduler>(config(0, 2));
        auto owner_sched = std::make_unique<scheduler>(config(1, 2));
        state.ResumeTiming();
        std::thread producer([&] {
            for (std::uint64_t i = 0; i < batch; ++i) {
                delivery_job j;
                j.queue_id = next_id + i;
                j.rcpts = {0, 1};
                (void)producer_sched->submit(remote, j, now);
                producer_sched->flush_outgoing(
                    [&](unsigned, shard_message& m) { return ring->try_push(std::move(m)); });
            }
            while (producer_sched->has_outgoing()) {
                producer_sched->flush_outgoing(
                    [&](unsigned, shard_message& m) { return ring->try_push(std::move(m)); });
            }
        });
        for (std::uint64_t got = 0; got < batch;) {
            if (auto m = ring->try_pop()) {
                (void)owner_sched->receive(0, std::move(*m), now);
                ++got;
            }
        }
        producer.join();
        next_id += batch;
        benchmark::DoNotOptimize(owner_sched->counts().ready);
        state.PauseTiming();
        producer_sched.reset();
        owner_sched.reset();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
}
BENCHMARK(bm_handoff_two_threads)->UseRealTime()->Unit(benchmark::kMillisecond);

// Both sides on one thread: the per-job CPU cost of submit + ring + receive, free of the
// scheduling noise two spinning threads see on a shared machine.
void bm_handoff_same_thread(benchmark::State& state) {
    std::string remote;
    for (int i = 0; remote.empty(); ++i) {
        std::string d = "d" + std::to_string(i) + ".example";
        if (owner_shard(d, 2) == 1)
            remote = d;
    }
    auto ring = std::make_unique<ringmail::core::spsc_ring<shard_message, 1024>>();
    const steady_time now = std::chrono::steady_clock::now();
    auto producer = std::make_unique<scheduler>(config(0, 2));
    auto owner = std::make_unique<scheduler>(config(1, 2));
    std::uint64_t id = 0;
    for (auto _ : state) {
        delivery_job j;
        j.queue_id = id++;
        j.rcpts = {0, 1};
        (void)producer->submit(remote, j, now);
        producer->flush_outgoing(
            [&](unsigned, shard_message& m) { return ring->try_push(std::move(m)); });
        (void)owner->receive(0, std::move(*ring->try_pop()), now);
        if ((id & 0xffff) == 0) {
            state.PauseTiming();
            owner = std::make_unique<scheduler>(config(1, 2));
            state.ResumeTiming();
        }
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(bm_handoff_same_thread);

// One shard, `range(0)` destinations with backlogs, connections already open: each loop is
// next_action (a run_job) plus the complete() that makes the connection idle again.
void bm_next_action_run_complete(benchmark::State& state) {
    const auto dests = static_cast<std::size_t>(state.range(0));
    scheduler_config c = config(0, 1);
    c.policies = domain_policy(destination_policy{4, 1u << 30, 30s, 0.0, 0.0}, {});
    scheduler s(std::move(c));
    steady_time now = std::chrono::steady_clock::now();
    std::uint64_t id = 0;
    auto refill = [&] {
        for (std::size_t d = 0; d < dests; ++d) {
            for (int k = 0; k < 64; ++k) {
                delivery_job j;
                j.queue_id = id++;
                j.rcpts = {0};
                (void)s.submit("d" + std::to_string(d) + ".example", j, now);
            }
        }
    };
    refill();
    // Open every connection the policy allows.
    for (;;) {
        action a = s.next_action(now);
        if (auto* o = std::get_if<open_connection>(&a)) {
            s.connection_opened(o->conn, now);
            continue;
        }
        if (auto* r = std::get_if<run_job>(&a)) {
            rcpt_result ok{0, rcpt_status::delivered, nullptr};
            s.complete(r->conn, r->job, {&ok, 1}, now, 0);
            continue;
        }
        break;
    }
    refill();
    rcpt_result ok{0, rcpt_status::delivered, nullptr};
    std::uint64_t ran = 0;
    for (auto _ : state) {
        action a = s.next_action(now);
        if (auto* r = std::get_if<run_job>(&a)) {
            s.complete(r->conn, r->job, {&ok, 1}, now, 0);
            ++ran;
        } else if (auto* o = std::get_if<open_connection>(&a)) {
            s.connection_opened(o->conn, now);
        } else {
            state.PauseTiming();
            refill();
            state.ResumeTiming();
        }
        s.flush_outgoing([](unsigned, shard_message&) { return true; });
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(ran));
}
BENCHMARK(bm_next_action_run_complete)->Arg(1)->Arg(100)->Arg(10000);

}  // namespace

BENCHMARK_MAIN();
