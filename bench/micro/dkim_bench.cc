// DKIM: canonicalization + body hash throughput, and signatures per second per core.
//   build/bench/micro/dkim_bench
// The keys are the unit tests' (tests/unit/dkim/data).
#include "ringmail/dkim/signer.h"

#include <benchmark/benchmark.h>

#include <string>

namespace {

using namespace ringmail;

std::string data(const std::string& name) {
    return std::string(RINGMAIL_DKIM_TEST_DATA) + "/" + name;
}

// A body like a newsletter's: 72-character lines with some runs of spaces and blank lines.
std::string make_body(std::size_t size) {
    std::string b;
    std::size_t i = 0;
    while (b.size() < size) {
        std::string line = "Lorem ipsum dolor sit amet,  consectetur adipiscing elit " +
                           std::to_string(i++) + " sed do eiusmod";
        line.resize(72, 'x');
        b += line;
        b += (i % 10 == 0) ? "  \r\n\r\n" : "\r\n";
    }
    return b;
}

void canonicalize_and_hash(benchmark::State& st, dkim::canon c) {
    const std::string body = make_body(static_cast<std::size_t>(st.range(0)));
    for (auto _ : st) {
        dkim::body_hasher h(c);
        h.update(body);
        benchmark::DoNotOptimize(h.finish());
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * body.size()));
}
void BM_body_relaxed(benchmark::State& st) {
    canonicalize_and_hash(st, dkim::canon::relaxed);
}
void BM_body_simple(benchmark::State& st) {
    canonicalize_and_hash(st, dkim::canon::simple);
}
BENCHMARK(BM_body_relaxed)->Arg(1024)->Arg(100 * 1024);
BENCHMARK(BM_body_simple)->Arg(1024)->Arg(100 * 1024);

// SHA-256 alone: the ceiling of the body hash.
void BM_sha256(benchmark::State& st) {
    const std::string body = make_body(100 * 1024);
    for (auto _ : st)
        benchmark::DoNotOptimize(dkim::sha256_of(body));
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * body.size()));
}
BENCHMARK(BM_sha256);

void sign(benchmark::State& st, const char* key_file) {
    std::string why;
    auto key = dkim::private_key::load_file(data(key_file), why);
    if (!key) {
        st.SkipWithError(why.c_str());
        return;
    }
    auto s = dkim::key_signer::create(key, why);
    const dkim::digest d = dkim::sha256_of("header data");
    for (auto _ : st)
        benchmark::DoNotOptimize(s->sign(d));
    st.counters["signs/s"] =
        benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
}
void BM_sign_rsa2048(benchmark::State& st) {
    sign(st, "rsa2048.pem");
}
void BM_sign_ed25519(benchmark::State& st) {
    sign(st, "ed25519.pem");
}
BENCHMARK(BM_sign_rsa2048)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_sign_ed25519)->Unit(benchmark::kMicrosecond);

// A whole message as reception sees it: streamed in 16 KiB reads, headers parsed, body
// hashed, signed (RSA-2048 relaxed/relaxed), DKIM-Signature built.
void BM_message(benchmark::State& st) {
    std::string why;
    auto keys = std::make_shared<dkim::key_set>();
    dkim::signature_spec spec;
    spec.domain = "example.com";
    spec.selector = "s";
    spec.headers = dkim::default_headers();
    spec.key = dkim::private_key::load_file(data("rsa2048.pem"), why);
    keys->specs.push_back(spec);
    auto signer = dkim::signer::create(keys, why);
    const std::string msg =
        "From: Sender <sender@example.com>\r\nTo: rcpt@example.net\r\nSubject: benchmark\r\n"
        "Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n" +
        make_body(static_cast<std::size_t>(st.range(0)));
    for (auto _ : st) {
        dkim::message_signer m(signer);
        for (std::size_t at = 0; at < msg.size(); at += 16384)
            m.update(std::string_view(msg).substr(at, 16384));
        benchmark::DoNotOptimize(m.finish(1700000000));
    }
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * msg.size()));
    st.counters["msgs/s"] =
        benchmark::Counter(static_cast<double>(st.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_message)->Arg(1024)->Arg(100 * 1024)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
