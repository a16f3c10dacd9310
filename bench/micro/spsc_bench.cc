// Cross-shard hand-off cost: one producer thread, one consumer thread, one spsc_ring.
#include "ringmail/core/spsc_ring.h"

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

namespace {

using ringmail::core::spsc_ring;

// Messages per second through the ring with both sides spinning on full/empty.
template <std::size_t Capacity>
void bm_spsc_two_threads(benchmark::State& state) {
    constexpr std::uint64_t batch = 1 << 16;
    auto q = std::make_unique<spsc_ring<std::uint64_t, Capacity>>();
    for (auto _ : state) {
        std::thread producer([&] {
            for (std::uint64_t i = 0; i < batch;) {
                if (q->try_push(i))
                    ++i;
            }
        });
        std::uint64_t sum = 0;
        for (std::uint64_t got = 0; got < batch;) {
            if (auto v = q->try_pop()) {
                sum += *v;
                ++got;
            }
        }
        producer.join();
        benchmark::DoNotOptimize(sum);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
}
BENCHMARK(bm_spsc_two_threads<256>)->UseRealTime();
BENCHMARK(bm_spsc_two_threads<4096>)->UseRealTime();

// Uncontended push + pop on one thread: the floor of the per-message cost.
void bm_spsc_same_thread(benchmark::State& state) {
    auto q = std::make_unique<spsc_ring<std::uint64_t, 1024>>();
    std::uint64_t i = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(q->try_push(i++));
        benchmark::DoNotOptimize(q->try_pop());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(bm_spsc_same_thread);

}  // namespace

BENCHMARK_MAIN();
