// Micro benchmarks of ringmail::spool: the CRC-32C paths, and the per-message CPU cost of the
// reception path (begin, append, finish, prepare_batch, complete_batch) without the disk.
#include "ringmail/spool/crc32c.h"
#include "ringmail/spool/spool.h"

#include <benchmark/benchmark.h>

#include <filesystem>
#include <stdlib.h>
#include <string>

namespace {

using namespace ringmail;

void bm_crc32c(benchmark::State& st) {
    const std::string data(std::size_t(st.range(0)), 'x');
    for (auto _ : st)
        benchmark::DoNotOptimize(spool::crc32c(data));
    st.SetBytesProcessed(std::int64_t(st.iterations()) * st.range(0));
}
BENCHMARK(bm_crc32c)->Arg(64)->Arg(4096)->Arg(1 << 20);

void bm_crc32c_portable(benchmark::State& st) {
    const std::string data(std::size_t(st.range(0)), 'x');
    for (auto _ : st)
        benchmark::DoNotOptimize(spool::crc32c_portable(data.data(), data.size()));
    st.SetBytesProcessed(std::int64_t(st.iterations()) * st.range(0));
}
BENCHMARK(bm_crc32c_portable)->Arg(64)->Arg(4096)->Arg(1 << 20);

// range(0) = body bytes, range(1) = messages per batch. Batches are reported committed without
// being executed: this measures the spool's bookkeeping, not the disk. Messages are marked done
// right away so the live set stays small.
void bm_reception(benchmark::State& st) {
    char tmpl[] = "/tmp/ringmail-spool-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) {
        st.SkipWithError("mkdtemp");
        return;
    }
    {
        auto sp = spool::spool::open(tmpl, 0, {}).value();
        if (!sp->recover()) {
            st.SkipWithError("recover");
            return;
        }
        mail::envelope env;
        env.mail_from = "sender@example.test";
        env.rcpt_to = {"a@dest.test", "b@dest.test"};
        env.helo_name = "client.example.test";
        env.client_address = "192.0.2.1";
        env.protocol = "ESMTP";
        const std::string body(std::size_t(st.range(0)), 'b');
        const std::string_view piece(body.data(), std::min<std::size_t>(body.size(), 16384));
        std::uint64_t token = 0;
        for (auto _ : st) {
            for (std::int64_t i = 0; i < st.range(1); ++i) {
                auto w = *sp->begin(env);
                for (std::size_t off = 0; off < body.size(); off += piece.size()) {
                    (void)sp->append(w, piece.substr(0, std::min(piece.size(), body.size() - off)));
                }
                (void)sp->finish(w, "Received: by bench\r\n", token++);
            }
            benchmark::DoNotOptimize(sp->prepare_batch());
            for (auto& c : sp->complete_batch(0))
                sp->record_done(*c.id);
        }
        st.SetItemsProcessed(std::int64_t(st.iterations()) * st.range(1));
        st.SetBytesProcessed(std::int64_t(st.iterations()) * st.range(1) * st.range(0));
    }
    std::filesystem::remove_all(tmpl);
}
BENCHMARK(bm_reception)->Args({2048, 1})->Args({2048, 64})->Args({262144, 16});

}  // namespace

BENCHMARK_MAIN();
