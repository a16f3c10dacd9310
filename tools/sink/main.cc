// ringmail-sink: an SMTP sink for benchmarking, on the project's own engine (one io_uring
// shard per core, smtp::server_session). Accepts everything, counts exactly, optionally dumps
// every transaction and injects failures. See tools/README.md.
//
// The main thread parses the command line, opens every listening socket (so a bad address
// fails before any thread starts), starts the shards, then only reads their counters: a
// running count each second on stderr, the final summary on stdout after a signal or
// --exit-after. Bad options exit 2, start-up failures exit 1, a normal stop exits 0.
#include "ringmail/core/log.h"
#include "ringmail/core/shard_runner.h"
#include "ringmail/core/socket.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sink/injector.h"
#include "sink/shard.h"
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <signal.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using namespace ringmail;
using sink::shard;
using sink::startup_state;

constexpr int listen_backlog = 4096;

struct totals {
    std::uint64_t accepted = 0, recipients = 0, deferred = 0, rejected = 0, disconnected = 0;
    std::int64_t first_ns = 0, last_ns = 0;
};

totals sum(const std::vector<std::unique_ptr<shard>>& shards) {
    totals t;
    for (const auto& s : shards) {
        const auto& c = s->counters();
        t.accepted += c.accepted.load(std::memory_order_relaxed);
        t.recipients += c.recipients.load(std::memory_order_relaxed);
        t.deferred += c.deferred.load(std::memory_order_relaxed);
        t.rejected += c.rejected.load(std::memory_order_relaxed);
        t.disconnected += c.disconnected.load(std::memory_order_relaxed);
        auto f = c.first_connection_ns.load(std::memory_order_relaxed);
        if (f != 0 && (t.first_ns == 0 || f < t.first_ns))
            t.first_ns = f;
        t.last_ns = std::max(t.last_ns, c.last_reply_ns.load(std::memory_order_relaxed));
    }
    return t;
}

std::string default_hostname() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0')
        return "localhost";
    return buf;
}

// Every --listen address gets one SO_REUSEPORT socket per shard. Port 0 is resolved by the
// first socket, and the others join its port.
bool open_listeners(sink::sink_config& cfg, std::vector<std::vector<int>>& fds) {
    fds.assign(cfg.shards, {});
    for (auto& ep : cfg.listen) {
        for (unsigned s = 0; s < cfg.shards; ++s) {
            auto fd = core::make_listener(ep, listen_backlog);
            if (!fd) {
                std::fprintf(stderr, "ringmail-sink: listen on %s: %s\n",
                             core::to_string(ep).c_str(), fd.error().message().c_str());
                return false;
            }
            fds[s].push_back(*fd);
            // Accepted sockets inherit TCP_NODELAY: replies never wait for Nagle.
            (void)core::set_nodelay(*fd);
            if (ep.port() == 0) {
                if (auto local = core::local_endpoint(*fd))
                    ep = *local;
            }
        }
    }
    return true;
}

void close_all(std::vector<std::vector<int>>& fds) {
    for (auto& v : fds)
        for (int fd : v)
            ::close(fd);
    fds.clear();
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "ringmail-sink: an SMTP sink for benchmarking (io_uring, one shard per core).\n"
        "Accepts any sender and recipients and counts exactly; the final summary goes to stdout:\n"
        "  ringmail-sink: received N messages, R recipients, D deferred, J rejected, "
        "X disconnected in T s (M msg/s)\n"
        "(T runs from the first connection to the last final reply.)\n"
        "--dump DIR writes DIR/<shard>-<seq>.eml (the content as the client meant it:\n"
        "dot-unstuffed, byte-exact; BDAT content gets a final CRLF if it lacks one) and then\n"
        "DIR/<shard>-<seq>.env (lines \"MAIL FROM:<a>[ BODY=..][ SMTPUTF8]\", \"RCPT TO:<r>\"\n"
        "per recipient, \"HELO name\", \"CLIENT ip\", \"RESULT 250 2.0.0|451 4.3.0|550 5.7.1|"
        "disconnect\").\n"
        "The 250 text names the same <shard>-<seq> (\"Ok: queued as 0-17\")."};
    std::vector<std::string> listen_text;
    unsigned shards = 0;
    std::string dump_dir;
    sink::injection inj;
    unsigned delay_ms = 0;
    std::uint64_t exit_after = 0;
    std::uint64_t seed = 0;
    std::string hostname = default_hostname();
    std::uint64_t max_message_size = 52428800;
    bool quiet = false;
    std::string tls_cert, tls_key;

    app.add_option("--listen", listen_text,
                   "address to listen on, ip:port or [ipv6]:port (repeatable; default "
                   "127.0.0.1:2526; port 0 picks a free port)");
    app.add_option("--shards", shards, "threads, one io_uring each (default: online CPUs)");
    app.add_option("--dump", dump_dir,
                   "write every transaction to DIR (see above; debugging: "
                   "plain write(2), slow)");
    app.add_option("--defer-percent", inj.defer_percent,
                   "answer this share of messages 451 4.3.0 at end of data")
        ->check(CLI::Range(0.0, 100.0));
    app.add_option("--reject-percent", inj.reject_percent,
                   "answer this share of messages 550 5.7.1 at end of data")
        ->check(CLI::Range(0.0, 100.0));
    app.add_option("--disconnect-percent", inj.disconnect_percent,
                   "close the connection without a reply at end of data for this share")
        ->check(CLI::Range(0.0, 100.0));
    app.add_option("--delay-ms", delay_ms,
                   "delay every final reply by MS milliseconds (other sessions go on)");
    app.add_option("--exit-after", exit_after,
                   "exit (summary, status 0) once N messages were accepted, all shards "
                   "counted");
    auto* seed_opt = app.add_option("--seed", seed, "seed of the injection PRNG (default: random)");
    app.add_option("--hostname", hostname, "name in the greeting and EHLO reply");
    app.add_option("--max-message-size", max_message_size,
                   "SIZE limit in bytes (default 52428800)");
    app.add_flag("--quiet", quiet, "no running count on stderr");
    app.add_option("--tls-cert", tls_cert, "STARTTLS certificate (not yet supported)");
    app.add_option("--tls-key", tls_key, "STARTTLS key (not yet supported)");
    app.set_version_flag("--version", std::string("ringmail-sink ") + RINGMAIL_VERSION);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }

    auto usage_error = [](const std::string& msg) {
        std::fprintf(stderr, "ringmail-sink: %s\n", msg.c_str());
        return 2;
    };
    if (!tls_cert.empty() || !tls_key.empty()) {
        return usage_error("STARTTLS (--tls-cert/--tls-key) is not yet supported");
    }
    if (auto why = sink::validate(inj); !why.empty())
        return usage_error(why);

    sink::sink_config cfg;
    if (listen_text.empty())
        listen_text.push_back("127.0.0.1:2526");
    for (const auto& t : listen_text) {
        auto ep = core::parse_endpoint(t);
        if (!ep) {
            return usage_error(fmt::format("--listen {}: {} (expected ip:port or [ipv6]:port)", t,
                                           ep.error().message()));
        }
        cfg.listen.push_back(*ep);
    }
    cfg.shards = shards != 0 ? shards : static_cast<unsigned>(core::online_cpus().size());
    if (cfg.shards == 0)
        cfg.shards = 1;
    if (cfg.shards > 1024)
        return usage_error("--shards: at most 1024");
    if (!dump_dir.empty()) {
        if (::access(dump_dir.c_str(), W_OK | X_OK) != 0) {
            return usage_error(fmt::format("--dump {}: {}", dump_dir, std::strerror(errno)));
        }
    }
    if (max_message_size == 0)
        return usage_error("--max-message-size must be positive");
    cfg.dump_dir = dump_dir;
    cfg.inject = inj;
    cfg.delay = std::chrono::milliseconds(delay_ms);
    cfg.exit_after = exit_after;
    cfg.seed = seed_opt->count() > 0 ? seed
                                     : std::random_device{}() * 0x9e3779b97f4a7c15ULL ^
                                           static_cast<std::uint64_t>(::time(nullptr));
    cfg.quiet = quiet;
    cfg.session.hostname = hostname;
    cfg.session.max_message_size = max_message_size;

    core::log::set_level(core::log::level::warn);

    std::vector<std::vector<int>> fds;
    if (!open_listeners(cfg, fds)) {
        close_all(fds);
        return 1;
    }
    auto sigs = core::block_shutdown_signals();
    if (!sigs) {
        std::fprintf(stderr, "ringmail-sink: cannot block signals: %s\n",
                     sigs.error().message().c_str());
        return 1;
    }

    std::vector<std::unique_ptr<shard>> shard_list;
    for (unsigned i = 0; i < cfg.shards; ++i) {
        shard_list.push_back(std::make_unique<shard>(i, cfg, std::move(fds[i])));
    }
    fds.clear();
    core::shard_runner runner;
    if (auto started = runner.start(cfg.shards, [&](unsigned i) { shard_list[i]->run(); });
        !started) {
        std::fprintf(stderr, "ringmail-sink: cannot start shard threads: %s\n",
                     started.error().message().c_str());
        return 1;
    }
    for (;;) {
        bool all_ready = true;
        for (auto& s : shard_list) {
            auto st = s->status();
            if (st == startup_state::failed) {
                std::fprintf(stderr, "ringmail-sink: shard %u failed to start: %s\n", s->id(),
                             s->startup_error().c_str());
                for (auto& o : shard_list)
                    o->request_stop();
                runner.join();
                return 1;
            }
            if (st != startup_state::ready)
                all_ready = false;
        }
        if (all_ready)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!quiet) {
        std::string addrs;
        for (const auto& ep : cfg.listen)
            addrs += (addrs.empty() ? "" : " ") + core::to_string(ep);
        std::fprintf(stderr, "ringmail-sink: listening on %s (%u shards, seed %llu)\n",
                     addrs.c_str(), cfg.shards, static_cast<unsigned long long>(cfg.seed));
    }

    // Poll the counters every 10 ms (cheap: a few relaxed loads), so --exit-after reacts
    // quickly without any shard writing a shared line per message.
    using clock = std::chrono::steady_clock;
    auto next_report = clock::now() + std::chrono::seconds(1);
    std::uint64_t last_accepted = 0;
    const timespec tick{0, 10'000'000};
    for (;;) {
        siginfo_t info;
        int sig = ::sigtimedwait(&*sigs, &info, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            std::fprintf(stderr, "ringmail-sink: sigtimedwait: %s\n", std::strerror(errno));
            break;
        }
        totals t = sum(shard_list);
        if (exit_after != 0 && t.accepted >= exit_after)
            break;
        if (clock::now() >= next_report) {
            next_report += std::chrono::seconds(1);
            if (!quiet) {
                std::fprintf(stderr, "ringmail-sink: %llu messages, %llu recipients, %llu msg/s\n",
                             static_cast<unsigned long long>(t.accepted),
                             static_cast<unsigned long long>(t.recipients),
                             static_cast<unsigned long long>(t.accepted - last_accepted));
            }
            last_accepted = t.accepted;
        }
    }
    for (auto& s : shard_list)
        s->request_stop();
    runner.join();

    totals t = sum(shard_list);
    double seconds = t.first_ns != 0 && t.last_ns > t.first_ns
                         ? static_cast<double>(t.last_ns - t.first_ns) / 1e9
                         : 0.0;
    double rate = seconds > 0 ? static_cast<double>(t.accepted) / seconds : 0.0;
    std::printf(
        "ringmail-sink: received %llu messages, %llu recipients, %llu deferred, %llu rejected, "
        "%llu disconnected in %.3f s (%.0f msg/s)\n",
        static_cast<unsigned long long>(t.accepted), static_cast<unsigned long long>(t.recipients),
        static_cast<unsigned long long>(t.deferred), static_cast<unsigned long long>(t.rejected),
        static_cast<unsigned long long>(t.disconnected), seconds, rate);
    std::fflush(stdout);
    return 0;
}
