// Bounce classification with the shipped rules (packaging/bounces.toml): the cost of one reply,
// the one-line form included. The budget is under 1 us per reply (median).
#include "ringmail/queue/bounce_class.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using ringmail::queue::bounce_classifier;

struct sample {
    int code;
    const char* enhanced;
    const char* text;
};

// A mix of what bulk mail meets: provider texts, bare enhanced codes, replies no rule matches.
const sample samples[] = {
    {550, "5.1.1",
     "The email account that you tried to reach does not exist. Please try\ndouble-checking the "
     "recipient's email address for typos or\nunnecessary spaces. https://support.google.com/mail/"
     "?p=NoSuchUser a1si2.3 - gsmtp"},
    {421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"},
    {550, "5.7.1",
     "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service "
     "provider since part of their network is on our block list (S3150)."},
    {452, "4.2.2", "The email account that you tried to reach is over quota. - gsmtp"},
    {450, "4.2.0", "<someone@example.com>: Recipient address rejected: Greylisted"},
    {554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"},
    {550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. - gsmtp"},
    {451, "4.4.1", "x"},
    {554, "5.0.0", "Transaction failed"},
    {550, "", "Requested action not taken: mailbox unavailable"},
};

bounce_classifier make() {
    std::string why;
    std::vector<bounce_classifier::source> f{
        {"bounces.toml", std::string(ringmail::queue::shipped_bounce_rules())}};
    auto c = bounce_classifier::parse(f, why);
    if (!c) {
        std::fprintf(stderr, "bounce rules: %s\n", why.c_str());
        std::abort();
    }
    return std::move(*c);
}

void BM_classify_shipped(benchmark::State& state) {
    const bounce_classifier c = make();
    bounce_classifier::scratch s;
    std::size_t i = 0;
    for (auto _ : state) {
        const sample& x = samples[i];
        benchmark::DoNotOptimize(c.classify(x.code, x.enhanced, x.text, s));
        i = (i + 1) % std::size(samples);
    }
    state.counters["rules"] = static_cast<double>(c.rules());
}
BENCHMARK(BM_classify_shipped);

void BM_load_shipped(benchmark::State& state) {
    for (auto _ : state)
        benchmark::DoNotOptimize(make());
}
BENCHMARK(BM_load_shipped)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
