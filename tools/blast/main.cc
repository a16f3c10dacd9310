// ringmail-blast: an SMTP load generator on io_uring, one shard per core. See tools/README.md.
//
// Exit status: 0 when every message was accepted (or --allow-errors), 1 when any message got a
// 4xx/5xx or any connection failed (or a shard could not start), 2 for usage errors.

#include "ringmail/core/date.h"
#include "ringmail/core/shard_runner.h"
#include "ringmail/core/socket.h"

#include <fmt/format.h>

#include "blast/message.h"
#include "blast/options.h"
#include "blast/stats.h"
#include "blast/worker.h"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <netdb.h>
#include <signal.h>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using ringmail::blast::clock;
namespace blast = ringmail::blast;
namespace core = ringmail::core;

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "ringmail-blast: %s\n", msg.c_str());
    return 2;
}

// Names are resolved once, here, with the system resolver (the first address wins).
bool resolve(const blast::options& o, core::endpoint& ep, std::string& why) {
    std::string literal = o.target_host.find(':') != std::string::npos
                              ? fmt::format("[{}]:{}", o.target_host, o.target_port)
                              : fmt::format("{}:{}", o.target_host, o.target_port);
    if (auto e = core::parse_endpoint(literal)) {
        ep = *e;
        return true;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc =
        ::getaddrinfo(o.target_host.c_str(), std::to_string(o.target_port).c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
        why = fmt::format("--target: cannot resolve \"{}\": {}", o.target_host,
                          rc != 0 ? gai_strerror(rc) : "no address");
        return false;
    }
    auto e = core::endpoint_from_sockaddr(res->ai_addr, res->ai_addrlen);
    ::freeaddrinfo(res);
    if (!e) {
        why = fmt::format("--target: unusable address for \"{}\"", o.target_host);
        return false;
    }
    ep = *e;
    return true;
}

bool load_file(const std::string& path, std::string& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad())
        return false;
    out = ss.str();
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    auto parsed = blast::parse_command_line(argc, argv);
    if (parsed.status == blast::parse_status::exit_ok) {
        std::fputs(parsed.message.c_str(), stdout);
        return 0;
    }
    if (parsed.status == blast::parse_status::usage_error)
        return usage_error(parsed.message);
    const blast::options& o = parsed.opts;

    blast::plan p;
    std::string why;
    if (!resolve(o, p.target, why))
        return usage_error(why);
    const auto now_unix = static_cast<std::int64_t>(std::time(nullptr));
    if (!o.message_file.empty()) {
        std::string raw;
        if (!load_file(o.message_file, raw))
            return usage_error(fmt::format("--message-file: cannot read \"{}\"", o.message_file));
        p.body = blast::to_transmission_form(raw);
    } else {
        std::string from = blast::expand_address(o.from, 0);
        std::string date = core::rfc5322_date(now_unix);
        std::string id = fmt::format("<{}.{}@ringmail-blast.test>", now_unix, ::getpid());
        p.body = blast::generate_message(o.size, {from, date, id});
    }
    const unsigned cpus =
        static_cast<unsigned>(std::max<std::size_t>(1, core::online_cpus().size()));
    p.shards = std::min(o.shards ? o.shards : cpus, o.connections);
    p.connections = o.connections;
    p.limit = o.messages;
    p.duration = o.duration;
    p.rate = o.rate;
    if (o.rate > 0 && o.duration.count() > 0) {
        // Message i is scheduled at i / rate: those scheduled before the end of --duration.
        auto scheduled =
            static_cast<std::uint64_t>(std::ceil(o.rate * static_cast<double>(o.duration.count())));
        p.limit = p.limit ? std::min(p.limit, scheduled) : scheduled;
    }
    p.recipients = o.recipients;
    p.per_connection = o.per_connection;
    p.from = o.from;
    p.to = o.to;
    p.domains = o.domains;
    p.timeout = o.timeout;
    p.client.helo_name = o.helo;
    p.client.pipelining = o.pipelining;
    if (o.starttls) {
        p.starttls = true;
        p.tls_host = o.target_host;
        p.client.starttls = ringmail::smtp::tls_policy::required;
    }
    if (o.auth)
        p.client.credentials = ringmail::smtp::client_credentials{o.auth_user, o.auth_password};
    p.client.greeting_timeout = p.client.ehlo_timeout = p.client.mail_timeout = o.timeout;
    p.client.rcpt_timeout = p.client.data_init_timeout = o.timeout;
    p.client.data_block_timeout = p.client.data_term_timeout = o.timeout;

    auto sigs = core::block_shutdown_signals();
    if (!sigs) {
        std::fprintf(stderr, "ringmail-blast: cannot block signals: %s\n",
                     sigs.error().message().c_str());
        return 1;
    }

    std::atomic<bool> stop{false};
    auto progs = std::make_unique<blast::progress[]>(p.shards);
    std::vector<std::unique_ptr<blast::worker>> workers;
    for (unsigned s = 0; s < p.shards; ++s)
        workers.push_back(std::make_unique<blast::worker>(p, s, stop, progs[s]));
    std::vector<std::string> failures(p.shards);

    p.start = clock::now();
    core::shard_runner runner;
    auto started = runner.start(
        p.shards,
        [&](unsigned s) {
            if (!workers[s]->run(failures[s]) && failures[s].empty())
                failures[s] = "failed";
            progs[s].done.store(true, std::memory_order_release);
        },
        true);
    if (!started) {
        std::fprintf(stderr, "ringmail-blast: cannot start shards: %s\n",
                     started.error().message().c_str());
        stop = true;
        runner.join();
        return 1;
    }

    const bool show_progress = o.progress && ::isatty(STDERR_FILENO);
    bool interrupted = false;
    bool progress_shown = false;
    std::uint64_t last_accepted = 0;
    auto last_tick = clock::now();
    for (;;) {
        bool all_done = true;
        for (unsigned s = 0; s < p.shards; ++s)
            all_done = all_done && progs[s].done.load(std::memory_order_acquire);
        if (all_done)
            break;
        timespec ts{0, 200'000'000};
        siginfo_t info{};
        int sig = ::sigtimedwait(&*sigs, &info, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            if (interrupted)
                std::_Exit(130);  // second signal: no summary, stop now
            interrupted = true;
            stop.store(true, std::memory_order_relaxed);
        }
        auto now = clock::now();
        if (show_progress && now - last_tick >= std::chrono::seconds(1)) {
            std::uint64_t sent = 0, accepted = 0, errors = 0;
            for (unsigned s = 0; s < p.shards; ++s) {
                sent += progs[s].sent.load(std::memory_order_relaxed);
                accepted += progs[s].accepted.load(std::memory_order_relaxed);
                errors += progs[s].errors.load(std::memory_order_relaxed);
            }
            double secs = std::chrono::duration<double>(now - last_tick).count();
            double elapsed = std::chrono::duration<double>(now - p.start).count();
            std::fprintf(
                stderr, "\r\033[K[%6.1fs] sent %llu  accepted %llu  errors %llu  %.0f msg/s",
                elapsed, static_cast<unsigned long long>(sent),
                static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(errors),
                static_cast<double>(accepted - last_accepted) / secs);
            std::fflush(stderr);
            progress_shown = true;
            last_accepted = accepted;
            last_tick = now;
        }
    }
    runner.join();
    if (progress_shown)
        std::fputs("\r\033[K", stderr);

    bool start_failed = false;
    for (unsigned s = 0; s < p.shards; ++s) {
        if (!failures[s].empty()) {
            std::fprintf(stderr, "ringmail-blast: shard %u: %s\n", s, failures[s].c_str());
            start_failed = true;
        }
    }
    blast::shard_stats total;
    clock::time_point last = p.start;
    for (auto& w : workers) {
        total.merge(w->stats());
        last = std::max(last, w->last_outcome());
    }
    blast::run_info run;
    run.target = o.target_text;
    run.shards = p.shards;
    run.connections = p.connections;
    run.rate = p.rate;
    run.messages = o.messages;
    run.duration_s = static_cast<double>(o.duration.count());
    run.message_size = p.body.size();
    run.recipients = p.recipients;
    run.pipelining = o.pipelining;
    run.starttls = o.starttls;
    run.auth = o.auth;
    run.elapsed_s = std::chrono::duration<double>(last - p.start).count();
    run.interrupted = interrupted;
    std::string report = o.json ? blast::format_json(run, total) : blast::format_text(run, total);
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);
    if (start_failed)
        return 1;
    if (total.c.any_error() && !o.allow_errors)
        return 1;
    return 0;
}
