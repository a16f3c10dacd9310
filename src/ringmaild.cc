// ringmaild: the daemon. Command line, configuration, start-up of the shards, signals.
//
// The main thread only starts and stops shards: it blocks the shutdown signals (every shard
// inherits the mask), waits for them with sigwaitinfo and asks each shard to drain. Start-up
// failures (bad config, spool locked, a listen address in use or served by another process,
// io_uring unusable, a certificate, users file or DKIM key that does not load) print one
// clear message and exit non-zero. SIGHUP reloads the certificates, the DKIM keys and the
// users file here, on the main thread; a reload that fails is logged and the running ones stay.
#include "ringmail/config/config.h"
#include "ringmail/core/log.h"
#include "ringmail/core/shard_runner.h"
#include "ringmail/daemon/context.h"
#include "ringmail/daemon/shard.h"
#include "ringmail/delivery/router.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
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

    // Wait until every shard is serving or one has failed.
    for (;;) {
        bool all_ready = true;
        for (auto& s : shards) {
            auto st = s->status();
            if (st == startup_state::failed) {
                std::fprintf(stderr, "ringmaild: shard %u failed to start: %s\n", s->id(),
                             s->startup_error().c_str());
                for (auto& o : shards)
                    o->request_stop();
                runner.join();
                return 1;
            }
            if (st != startup_state::ready)
                all_ready = false;
        }
        if (all_ready)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::string addrs;
    for (const auto& l : ctx->cfg.listen)
        addrs += (addrs.empty() ? "" : ", ") + l.address;
    log::info("ringmaild {} ready: {} shard(s), listening on {}, smarthost {}", RINGMAIL_VERSION,
              ctx->shards, addrs,
              ctx->cfg.delivery.smarthost
                  ? ringmail::delivery::host_port_text(*ctx->cfg.delivery.smarthost)
                  : std::string("none"));

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
            log::info("signal {}: draining", *sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
    }
    for (auto& s : shards)
        s->request_stop();
    runner.join();
    if (ctx->verifier)
        ctx->verifier->stop();
    log::info("ringmaild stopped");
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
