// The scheduler's cost per decision (issue 16): 100,000 destinations spread over 50 providers
// and 2 egress sources (smooth WRR, provider slots and GCRA tokens taken on every decision,
// no limit reached), against the same load without shaping. One decision is one next_action()
// that returns an action (open, run, close); the benchmark answers each as the engine would
// and keeps one job queued per destination.
#include "ringmail/queue/scheduler.h"

#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t destinations = 100000;
constexpr std::size_t providers = 50;

std::unique_ptr<shaping_context> make_shaping() {
    auto sh = std::make_unique<shaping_context>();
    std::vector<provider_spec> ps;
    for (std::size_t p = 0; p < providers; ++p) {
        provider_spec s;
        s.name = "p" + std::to_string(p);
        s.domain_suffix = {"p" + std::to_string(p) + ".test"};
        s.max_connections = 100000;  // limits that are never reached
        s.message_rate = 1e9;
        s.connection_rate = 1e9;
        ps.push_back(std::move(s));
    }
    sh->providers = provider_table(std::move(ps));
    std::string why;
    sh->rules = *shaping_rules::build({}, providers, 3, why);
    sh->sources = 2;
    sh->pools.push_back({{0, 1}, {2, 1}});
    sh->default_pool = 0;
    sh->limits = std::make_unique<local_limiter>(sh->providers, 0, std::vector<std::uint32_t>{0, 0});
    return sh;
}

void run(benchmark::State& state, bool shaped) {
    auto sh = shaped ? make_shaping() : nullptr;
    scheduler_config c;
    destination_policy p;
    p.max_connections = 1;
    p.max_messages_per_connection = 1;
    c.policies = domain_policy(p, {});
    c.retry.schedule = {60s};
    c.retry.max_lifetime = 24h;
    c.max_total_connections = 1000000;
    c.max_jobs = 10000000;
    c.max_outbox = 100000000;
    c.shaping = sh.get();
    scheduler s(c);
    steady_time now = steady_time{} + 1000s;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < destinations; ++i)
        names.push_back("d" + std::to_string(i) + ".p" + std::to_string(i % providers) + ".test");
    std::uint64_t qid = 1;
    auto job = [&] {
        delivery_job j;
        j.queue_id = qid++;
        j.rcpts = {0};
        j.arrival_unix = 1'700'000'000;
        return j;
    };
    for (const auto& n : names)
        (void)s.submit(n, job(), now);
    std::unordered_map<std::uint64_t, std::size_t> dest_of;
    std::size_t next_dest = 0;
    std::int64_t decisions = 0;
    for (auto _ : state) {
        now += 1us;  // time passes (a frozen clock would make any rate limit bite)
        action a = s.next_action(now);
        ++decisions;
        if (auto* o = std::get_if<open_connection>(&a)) {
            s.connection_opened(o->conn, now);
        } else if (auto* r = std::get_if<run_job>(&a)) {
            rcpt_result ok{0, rcpt_status::delivered, nullptr};
            s.complete(r->conn, r->job, std::span(&ok, 1), now, 1'700'000'000);
            (void)s.submit(names[next_dest++ % destinations], job(), now);
        } else if (auto* cl = std::get_if<close_connection>(&a)) {
            s.connection_closed(cl->conn, now);
        } else {
            state.SkipWithError("the scheduler waited");
            break;
        }
        if (s.has_outgoing())
            s.flush_outgoing([](unsigned, shard_message&) { return true; });
    }
    state.SetItemsProcessed(decisions);
}

void BM_scheduler_decision_unshaped(benchmark::State& state) {
    run(state, false);
}
void BM_scheduler_decision_shaped(benchmark::State& state) {
    run(state, true);
}
BENCHMARK(BM_scheduler_decision_unshaped)->Iterations(600000);
BENCHMARK(BM_scheduler_decision_shaped)->Iterations(600000);

}  // namespace
}  // namespace ringmail::queue

BENCHMARK_MAIN();
