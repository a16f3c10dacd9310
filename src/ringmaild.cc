// ringmaild: the daemon. Command line, configuration, start-up of the shards and of the admin
// endpoint, signals, the drain, systemd notifications.
//
// The main thread only starts and stops threads: it blocks the shutdown signals (every shard
// inherits the mask), waits for them with sigwaitinfo and drives the drain. Start-up
// failures (bad config, spool locked, a listen address in use or served by another process,
// io_uring unusable, a certificate, users file or DKIM key that does not load) print one
// clear message and exit non-zero. SIGHUP reloads the certificates, the DKIM keys and the
// users file here, on the main thread; a reload that fails is logged and the running ones stay.
//
// Drain (SIGTERM/SIGINT): /readyz turns 503 and systemd is told STOPPING=1 at once; the
// listeners keep accepting for server.drain_grace (a second signal ends the grace), then every
// shard drains (listeners close, idle sessions get 421, open transactions finish and commit,
// deliveries in flight finish) with what is left of server.shutdown_timeout, after which what
// is still open is closed. The admin endpoint stops last. Exit 0.
#include "ringmail/admin/server.h"
#include "ringmail/config/config.h"
#include "ringmail/core/log.h"
#include "ringmail/core/sd_notify.h"
#include "ringmail/core/shard_runner.h"
#include "ringmail/daemon/context.h"
#include "ringmail/daemon/privileges.h"
#include "ringmail/daemon/shard.h"
#include "ringmail/delivery/router.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string_view>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

namespace log = ringmail::core::log;
using ringmail::core::startup_state;

int check_config(const std::string& path) {
    auto parsed = ringmail::config::load_config_file(path);
    if (!parsed) {
        std::fprintf(stderr, "%s\n", parsed.error.c_str());
        return 1;
    }
    std::string why;
    // Validates what only start-up would otherwise find (unsupported listener features,
    // certificates and keys, the users file), without touching the spool or binding anything.
    if (!ringmail::daemon::check_context(*parsed.cfg, why)) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), why.c_str());
        return 1;
    }
    std::printf("%s: configuration OK\n", path.c_str());
    return 0;
}

// SIGHUP: certificates, DKIM keys and users file are read again; what fails to load keeps the
// old one.
void reload(ringmail::daemon::daemon_context& ctx,
            std::vector<std::unique_ptr<ringmail::daemon::shard>>& shards) {
    std::string why;
    if (auto creds = ringmail::daemon::load_tls_credentials(ctx.cfg, why)) {
        ctx.reload->tls.store(
            std::make_shared<const ringmail::daemon::tls_credentials_set>(std::move(*creds)));
        bool any = false;
        for (const auto& l : ctx.cfg.listen)
            any = any || !l.tls_certificates.empty();
        if (any)
            log::info("SIGHUP: certificates reloaded");
    } else {
        log::error("SIGHUP: certificates not reloaded, keeping the old ones: {}", why);
    }
    std::vector<std::string> warnings;
    if (auto keys = ringmail::daemon::load_dkim_keys(ctx.cfg, why, warnings)) {
        for (const auto& w : warnings)
            log::warn("SIGHUP: {}", w);
        const std::size_t n = keys->specs.size();
        ctx.reload->dkim.store(std::move(keys));
        if (n > 0)
            log::info("SIGHUP: DKIM keys reloaded ({} table(s))", n);
    } else {
        log::error("SIGHUP: DKIM keys not reloaded, keeping the old ones: {}", why);
    }
    if (ctx.verifier) {
        if (auto store = ringmail::daemon::load_users(ctx.cfg, why)) {
            auto users = store->size();
            if (ctx.verifier->reload(std::move(store))) {
                log::info("SIGHUP: users file reloaded ({} user(s))", users);
            } else {
                log::error("SIGHUP: users file not reloaded: the verifier is busy, try again");
            }
        } else {
            log::error("SIGHUP: users file not reloaded, keeping the old one: {}", why);
        }
    }
    ctx.reload->generation.fetch_add(1, std::memory_order_release);
    for (auto& s : shards)
        s->wake();
}

// systemd's notification socket, when there is one; failures are logged, never fatal.
void notify(std::string_view state) {
    auto r = ringmail::core::sd_notify(state);
    if (!r)
        log::warn("sd_notify: cannot tell the service manager: {}", r.error().message());
}

// The admin endpoint's thread, when [admin] address is set.
struct admin_thread {
    std::unique_ptr<ringmail::admin::server> server;
    std::thread thread;

    void stop() {
        if (!server)
            return;
        server->request_stop();
        if (thread.joinable())
            thread.join();
        server.reset();
    }
    ~admin_thread() { stop(); }
};

int serve(ringmail::config::settings cfg) {
    log::set_level(cfg.server.log_level);
    std::string why;
    auto ctx = ringmail::daemon::make_context(std::move(cfg), why);
    if (!ctx) {
        std::fprintf(stderr, "ringmaild: %s\n", why.c_str());
        return 1;
    }
    // One daemon per listen address: SO_REUSEPORT would let a second one share it silently.
    // The claims are held (open) until the process exits.
    std::vector<int> claims;
    if (!ringmail::daemon::claim_listen_addresses(*ctx, claims, why)) {
        std::fprintf(stderr, "ringmaild: %s\n", why.c_str());
        return 1;
    }
    auto sigs = ringmail::core::block_shutdown_signals();
    if (!sigs) {
        std::fprintf(stderr, "ringmaild: cannot block signals: %s\n",
                     sigs.error().message().c_str());
        return 1;
    }

    // The admin endpoint first: a busy address fails start-up before any spool is opened, and
    // /readyz says "starting" while the shards recover their spools.
    ringmail::admin::health health;
    admin_thread admin;
    // Without admin.address the thread still runs, listening nowhere: it keeps the one
    // suspension store the shaping rules write to.
    {
        std::optional<ringmail::core::endpoint> ep;
        if (ctx->cfg.admin.enabled()) {
            auto parsed = ringmail::core::parse_endpoint(ctx->cfg.admin.address);
            if (!parsed) {
                std::fprintf(stderr, "ringmaild: admin.address \"%s\": %s\n",
                             ctx->cfg.admin.address.c_str(), parsed.error().message().c_str());
                return 1;
            }
            ep = *parsed;
        }
        ringmail::admin::sources src;
        src.metrics =
            std::span<const ringmail::core::shard_metrics>(ctx->metrics.get(), ctx->shards);
        for (const auto& l : ctx->cfg.listen)
            src.listeners.push_back(l.address);
        src.spool_dir = ctx->cfg.server.spool_dir;
        src.token = ctx->admin_token;
        src.mailbox = ctx->admin_mailbox.get();
        src.shards = ctx->shards;
        src.suspensions = *ctx->suspensions;
        src.suspensions_path = ctx->suspensions_path;
        // As SIGTERM: the main thread's signal wait takes it and drains as usual.
        src.drain = [] { ::kill(::getpid(), SIGTERM); };
        admin.server =
            std::make_unique<ringmail::admin::server>(ctx->shards, ep, health, std::move(src));
        try {
            admin.thread = std::thread([s = admin.server.get()] { s->run(); });
        } catch (const std::system_error& e) {
            std::fprintf(stderr, "ringmaild: cannot start the admin thread: %s\n", e.what());
            return 1;
        }
        while (admin.server->status() == startup_state::pending)
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        if (admin.server->status() == startup_state::failed) {
            std::fprintf(stderr, "ringmaild: %s\n", admin.server->startup_error().c_str());
            admin.thread.join();
            admin.server.reset();
            return 1;
        }
    }

    std::vector<std::unique_ptr<ringmail::daemon::shard>> shards;
    for (unsigned i = 0; i < ctx->shards; ++i) {
        shards.push_back(std::make_unique<ringmail::daemon::shard>(i, *ctx));
    }
    ringmail::core::shard_runner runner;
    auto started = runner.start(ctx->shards, [&](unsigned i) { shards[i]->run(); });
    if (!started) {
        std::fprintf(stderr, "ringmaild: cannot start shard threads: %s\n",
                     started.error().message().c_str());
        return 1;
    }

    // Wait until every shard is serving (or, with server.user, has bound its listeners and
    // opened its spools: then root is dropped before any of them serves) or one has failed.
    auto* gate = ctx->start_gate.get();
    auto open_gate = [&](int value) {
        if (gate) {
            gate->store(value, std::memory_order_release);
            gate->notify_all();
        }
    };
    for (startup_state want : {startup_state::opened, startup_state::ready}) {
        if (want == startup_state::opened && !gate)
            continue;
        for (;;) {
            bool all = true;
            for (auto& s : shards) {
                auto st = s->status();
                if (st == startup_state::failed) {
                    std::fprintf(stderr, "ringmaild: shard %u failed to start: %s\n", s->id(),
                                 s->startup_error().c_str());
                    open_gate(ringmail::core::start_gate_stop);
                    for (auto& o : shards)
                        o->request_stop();
                    runner.join();
                    return 1;
                }
                if (st != want)
                    all = false;
            }
            if (all)
                break;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        if (want == startup_state::opened) {
            if (!ringmail::daemon::drop_privileges(ctx->cfg, why)) {
                std::fprintf(stderr, "ringmaild: %s\n", why.c_str());
                open_gate(ringmail::core::start_gate_stop);
                for (auto& o : shards)
                    o->request_stop();
                runner.join();
                return 1;
            }
            open_gate(ringmail::core::start_gate_go);
        }
    }
    if (!gate)
        (void)ringmail::daemon::drop_privileges(ctx->cfg, why);  // only the root warning
    // Ready before the "ready" line, so whoever waits for the line finds /readyz 200.
    health.started.store(true, std::memory_order_release);
    std::string addrs;
    for (const auto& l : ctx->cfg.listen)
        addrs += (addrs.empty() ? "" : ", ") + l.address;
    log::info("ringmaild {} ready: {} shard(s), listening on {}, smarthost {}", RINGMAIL_VERSION,
              ctx->shards, addrs,
              ctx->cfg.delivery.smarthost
                  ? ringmail::delivery::host_port_text(*ctx->cfg.delivery.smarthost)
                  : std::string("none"));
    notify(fmt::format("READY=1\nSTATUS=listening on {}", addrs));

    const char* stop_signal = nullptr;
    for (;;) {
        auto sig = ringmail::core::wait_for_signal(*sigs);
        if (!sig) {
            log::error("sigwaitinfo: {}", sig.error().message());
            break;
        }
        if (*sig == SIGHUP) {
            log::info(
                "SIGHUP: reopening the delivery log, reloading certificates, DKIM keys and "
                "users");
            reload(*ctx, shards);
            continue;
        }
        if (*sig == SIGTERM || *sig == SIGINT) {
            stop_signal = *sig == SIGTERM ? "SIGTERM" : "SIGINT";
            break;
        }
    }
    const auto signalled = std::chrono::steady_clock::now();
    health.draining.store(true, std::memory_order_release);
    notify("STOPPING=1\nSTATUS=draining");
    const auto grace = std::chrono::milliseconds(ctx->cfg.server.drain_grace);
    log::info("{}: draining: readiness 503, listeners open for {} ms more",
              stop_signal != nullptr ? stop_signal : "sigwaitinfo failed", grace.count());
    // The grace: connections a balancer routed before it saw the 503 are still served.
    while (stop_signal != nullptr) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            signalled + grace - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            break;
        auto sig = ringmail::core::wait_for_signal(*sigs, left);
        if (!sig || *sig == 0)
            break;
        if (*sig == SIGHUP) {
            log::info("SIGHUP: reopening the delivery log, reloading certificates and users");
            reload(*ctx, shards);
            continue;
        }
        if (*sig == SIGTERM || *sig == SIGINT) {
            log::info("second stop signal: the grace ends now");
            break;
        }
    }
    log::info("closing the listeners; open transactions finish");
    for (auto& s : shards)
        s->request_stop();
    runner.join();
    admin.stop();
    if (ctx->verifier)
        ctx->verifier->stop();
    log::info("ringmaild stopped ({} ms after the signal)",
              std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - signalled)
                  .count());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"ringmaild: high-throughput mail transfer agent on io_uring"};
    std::string config_path;
    std::string check_path;
    app.add_option("--config", config_path, "TOML configuration file (default: embedded config)");
    app.add_option("--check-config", check_path, "validate FILE and exit (0 when valid)");
    app.set_version_flag("--version", std::string("ringmaild ") + RINGMAIL_VERSION);
    CLI11_PARSE(app, argc, argv);

    if (!check_path.empty())
        return check_config(check_path);
    ringmail::core::log::prepare_output();

    ringmail::config::parsed_config parsed =
        config_path.empty() ? ringmail::config::parse_config(
                                  ringmail::config::default_config_toml(), "<embedded default>")
                            : ringmail::config::load_config_file(config_path);
    if (!parsed) {
        std::fprintf(stderr, "ringmaild: %s\n", parsed.error.c_str());
        return 1;
    }
    return serve(std::move(*parsed.cfg));
}
