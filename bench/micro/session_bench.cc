// Throughput of the SMTP server session: pipelined MAIL/RCPT/DATA with a body of the given size
// per message (1 KiB, 100 KiB: lines of 76 letters, as ringmail-blast sends), fed in 16 KiB
// reads, into a sink that discards. Reports bytes processed (MB/s).
#include "ringmail/smtp/server_session.h"

#include <benchmark/benchmark.h>

#include <string>

namespace {

class discard_sink final : public ringmail::smtp::transaction_sink {
  public:
    ringmail::result<void> begin(const ringmail::mail::envelope&) override { return {}; }
    ringmail::result<void> append(std::string_view bytes) override {
        appended += bytes.size();
        return {};
    }
    void commit() override { ++committed; }
    void abort() override {}
    std::uint64_t appended = 0;
    std::uint64_t committed = 0;
};

std::string one_transaction(std::size_t size) {
    std::string t = "MAIL FROM:<sender@example.test> SIZE=" + std::to_string(size + 100) +
                    "\r\nRCPT TO:<rcpt@local.test>\r\nDATA\r\n";
    std::string body = "Subject: benchmark\r\n\r\n";
    while (body.size() < size - 104)
        body += "The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu\r\n";
    body += ".leading dot, stuffed\r\n";
    return t + body + ".\r\n";
}

void bm_session_pipelined(benchmark::State& state) {
    ringmail::smtp::server_config cfg;
    cfg.hostname = "bench.test";
    cfg.relay_domains = {"local.test"};
    const std::string txn = one_transaction(static_cast<std::size_t>(state.range(0)));
    std::string stream;
    while (stream.size() < (1u << 20))
        stream += txn;  // ~1 MiB of pipelined transactions
    const std::size_t read_size = 16 * 1024;
    std::string out;
    out.reserve(1 << 16);
    std::uint64_t bytes = 0;
    for (auto _ : state) {
        discard_sink sink;
        ringmail::smtp::server_session s(cfg, {"192.0.2.1", false}, sink);
        s.start();
        s.receive("EHLO client.test\r\n");
        for (std::size_t pos = 0; pos < stream.size(); pos += read_size) {
            s.receive(std::string_view(stream).substr(pos, read_size));
            while (s.awaiting_commit())
                s.on_commit(std::string_view("Q1"));
            out.clear();
            s.take_output(out);
        }
        benchmark::DoNotOptimize(sink.appended);
        bytes += stream.size();
        state.counters["messages"] = static_cast<double>(sink.committed);
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
}
BENCHMARK(bm_session_pipelined)->Arg(1024)->Arg(102400)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
