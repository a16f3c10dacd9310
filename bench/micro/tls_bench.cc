// TLS cost on one core over a memory transport (no sockets): full and resumed TLS 1.3
// handshakes per second (both sides' work), and bulk encrypt + decrypt throughput.
#include "ringmail/tls/context.h"
#include "ringmail/tls/credentials.h"
#include "ringmail/tls/session.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace {

using namespace ringmail::tls;

std::string data(const char* name) {
    return std::string(RINGMAIL_TLS_TEST_DATA) + "/" + name;
}

struct fixture {
    std::shared_ptr<const server_context> server;
    std::shared_ptr<const client_context> client;

    explicit fixture(std::optional<tls_version> max = {}) {
        const cert_key_files pairs[] = {{data("mx.pem"), data("mx.key")}};
        std::string why;
        auto creds = server_credentials::load(pairs, why);
        auto key = ticket_key::generate();
        if (!creds || !key) {
            std::fprintf(stderr, "tls_bench: %s\n", why.c_str());
            std::abort();
        }
        auto s = server_context::create(*creds, *key, why);
        client_options o;
        o.mode = verify_mode::verify;
        o.system_ca = false;
        o.extra_ca_file = data("ca.pem");
        o.max_version = max;
        auto c = client_context::create(o, why);
        if (!s || !c) {
            std::fprintf(stderr, "tls_bench: %s\n", why.c_str());
            std::abort();
        }
        server = *s;
        client = *c;
    }
};

// Moves ciphertext both ways until neither side has output; `scratch` keeps its capacity.
void pump(session& a, session& b, std::string& scratch, std::string& a_got, std::string& b_got) {
    for (int i = 0; i < 64; ++i) {
        a.step();
        b.step();
        bool moved = false;
        a.take_output(scratch);
        if (!scratch.empty()) {
            b.feed(scratch);
            b.read(b_got);
            moved = true;
        }
        scratch.clear();
        b.take_output(scratch);
        if (!scratch.empty()) {
            a.feed(scratch);
            a.read(a_got);
            moved = true;
        }
        scratch.clear();
        if (!moved)
            return;
    }
}

void bm_handshake(benchmark::State& state, bool resume, std::optional<tls_version> max) {
    fixture f(max);
    std::string scratch, a, b;
    saved_session saved;
    {
        session server(f.server);
        session client(f.client, "mx.example.test");
        pump(client, server, scratch, a, b);
        client.write("x");
        server.write("y");
        pump(client, server, scratch, a, b);
        saved = client.save();
    }
    std::int64_t resumed = 0;
    for (auto _ : state) {
        session server(f.server);
        session client(f.client, "mx.example.test", resume ? &saved : nullptr);
        pump(client, server, scratch, a, b);
        if (!server.established() || !client.established()) {
            state.SkipWithError("handshake failed");
            break;
        }
        resumed += server.resumed() ? 1 : 0;
    }
    state.SetItemsProcessed(state.iterations());
    state.counters["resumed"] =
        benchmark::Counter(static_cast<double>(resumed), benchmark::Counter::kAvgIterations);
}
BENCHMARK_CAPTURE(bm_handshake, tls13_full, false, tls_version::tls1_3);
BENCHMARK_CAPTURE(bm_handshake, tls13_resumed, true, tls_version::tls1_3);
BENCHMARK_CAPTURE(bm_handshake, tls12_full, false, tls_version::tls1_2);

// Client encrypts `size` bytes in one write, server decrypts them: bytes/s through both.
void bm_bulk(benchmark::State& state) {
    fixture f;
    session_limits limits;
    limits.max_output = 1 << 20;
    limits.max_input = 1 << 20;
    limits.max_read = 1 << 20;
    session server(f.server, limits);
    session client(f.client, "mx.example.test", nullptr, limits);
    std::string scratch, a, b;
    pump(client, server, scratch, a, b);
    const std::string payload(static_cast<std::size_t>(state.range(0)), 'x');
    std::string wire;
    for (auto _ : state) {
        client.write(payload);
        wire.clear();
        client.take_output(wire);
        server.feed(wire);
        b.clear();
        server.read(b);
        if (b.size() != payload.size()) {
            state.SkipWithError("short read");
            break;
        }
    }
    state.SetBytesProcessed(state.iterations() * state.range(0));
    state.counters["cipher_" + std::string(client.cipher())] = 1;
}
BENCHMARK(bm_bulk)->Arg(4096)->Arg(65536)->Arg(262144);

}  // namespace

BENCHMARK_MAIN();
