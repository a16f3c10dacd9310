#include "ringmail/daemon/context.h"

#include "ringmail/core/log.h"
#include "ringmail/core/shard_base.h"
#include "ringmail/core/shard_runner.h"
#include "ringmail/daemon/privileges.h"
#include "ringmail/delivery/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <unistd.h>

namespace ringmail::daemon {

namespace {

// shard-<N> directories already in spool_dir, so that mail spooled by a run with more shards
// is still delivered.
std::vector<unsigned> existing_shard_dirs(const std::string& spool_dir) {
    std::vector<unsigned> found;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(spool_dir, ec)) {
        std::string name = e.path().filename().string();
        if (name.rfind("shard-", 0) != 0 || !e.is_directory(ec))
            continue;
        unsigned n = 0;
        auto digits = std::string_view(name).substr(6);
        auto [p, err] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
        if (err == std::errc() && p == digits.data() + digits.size())
            found.push_back(n);
    }
    std::sort(found.begin(), found.end());
    return found;
}

namespace fs = std::filesystem;

// Proves that files can be created in the directory `dir` by creating one and removing it at
// once: access(2) says yes to root on a read-only or virtual filesystem (/proc, /sys).
bool can_create_in(const fs::path& dir, std::string& problem) {
    std::string tmpl = (dir / ".ringmaild-check-XXXXXX").string();
    const int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
    if (fd < 0) {
        problem = std::strerror(errno);
        return false;
    }
    ::unlink(tmpl.c_str());
    ::close(fd);
    return true;
}

// --check-config: `dir` is a directory the daemon can write in, or does not exist yet and can
// be created (its nearest existing ancestor is a directory it can write in). Touches nothing.
bool check_writable_dir(const fs::path& dir, std::string& problem) {
    std::error_code ec;
    // not_found covers ENOENT and ENOTDIR (a file on the way: found walking up below).
    const auto st = fs::status(dir, ec);
    if (st.type() == fs::file_type::none) {
        problem = fmt::format("cannot be examined: {}", ec.message());
        return false;
    }
    if (fs::exists(st)) {
        if (!fs::is_directory(st)) {
            problem = "is not a directory";
            return false;
        }
        std::string why;
        if (!can_create_in(dir, why)) {
            problem = fmt::format("is not writable: {}", why);
            return false;
        }
        return true;
    }
    // Walk up to the first ancestor that exists: that is where creation would start.
    fs::path at = fs::absolute(dir, ec);
    if (ec) {
        problem = fmt::format("cannot be examined: {}", ec.message());
        return false;
    }
    while (at.has_parent_path() && at.parent_path() != at) {
        at = at.parent_path();
        const auto ast = fs::status(at, ec);
        if (ast.type() == fs::file_type::none) {
            problem = fmt::format("cannot be created: {}: {}", at.string(), ec.message());
            return false;
        }
        if (!fs::exists(ast))
            continue;
        if (!fs::is_directory(ast)) {
            problem = fmt::format("cannot be created: {} is not a directory", at.string());
            return false;
        }
        std::string why;
        if (!can_create_in(at, why)) {
            problem = fmt::format("cannot be created in {}: {}", at.string(), why);
            return false;
        }
        return true;
    }
    problem = "cannot be created: no existing parent directory";
    return false;
}

// The delivery log: its directory must exist (the daemon creates the file, not directories)
// and be writable; an existing file must be a file the daemon can append to.
bool check_log_file(const fs::path& file, std::string& problem) {
    std::error_code ec;
    const auto st = fs::status(file, ec);
    if (fs::exists(st)) {
        if (fs::is_directory(st)) {
            problem = "is a directory";
            return false;
        }
        const int fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            problem = fmt::format("is not writable: {}", std::strerror(errno));
            return false;
        }
        ::close(fd);
    }
    fs::path dir = file.parent_path();
    if (dir.empty())
        dir = ".";
    const auto dst = fs::status(dir, ec);
    if (!fs::exists(dst)) {
        problem = fmt::format("directory {} does not exist", dir.string());
        return false;
    }
    if (!fs::is_directory(dst)) {
        problem = fmt::format("{} is not a directory", dir.string());
        return false;
    }
    std::string why;
    if (!can_create_in(dir, why)) {
        problem = fmt::format("directory {} is not writable: {}", dir.string(), why);
        return false;
    }
    return true;
}

}  // namespace

std::optional<daemon_context> make_context(config::settings cfg, std::string& why) {
    if (!check_run_user(cfg, why))
        return std::nullopt;
    daemon_context ctx;
    ctx.shards = config::effective_shards(cfg.server);
    if (ctx.shards == 0)
        ctx.shards = 1;

    for (std::size_t i = 0; i < cfg.listen.size(); ++i) {
        const auto& l = cfg.listen[i];
        if (l.proxy_protocol && l.trusted_proxies.empty()) {
            why = fmt::format(
                "listen[{}].trusted_proxies: empty, but proxy_protocol is on: no "
                "balancer could connect",
                i);
            return std::nullopt;
        }
        auto ep = core::parse_endpoint(l.address);
        if (!ep) {
            why = fmt::format("listen[{}].address: \"{}\": {}", i, l.address, ep.error().message());
            return std::nullopt;
        }
        reception::listener_settings ls;
        ls.endpoint = *ep;
        ls.session.hostname = cfg.server.hostname;
        ls.session.max_message_size = cfg.server.max_message_size;
        ls.session.max_recipients = cfg.server.max_recipients;
        ls.session.max_line_length = cfg.server.max_line_length;
        ls.session.max_errors = cfg.server.max_errors;
        ls.session.command_timeout = cfg.server.command_timeout;
        ls.session.data_timeout = cfg.server.data_timeout;
        ls.session.relay_domains = cfg.relay.domains;
        ls.index = i;
        ls.implicit_tls = l.role == config::listener_role::smtps;
        ls.proxy_protocol = l.proxy_protocol;
        ls.trusted_proxies = l.trusted_proxies;
        ls.auth = cfg.auth.enabled();
        ls.session.tls_available = !l.tls_certificates.empty();
        ls.session.auth_plaintext = l.auth_plaintext;
        ls.session.require_auth = l.role != config::listener_role::relay;
        // auth_mechanisms stays empty: the connection's backend says what is offered (CRAM-MD5
        // only while the users file has CRAM-MD5 entries, which a reload may change).
        ctx.listeners.push_back(std::move(ls));
    }

    auto creds = load_tls_credentials(cfg, why);
    if (!creds)
        return std::nullopt;
    if (std::any_of(creds->begin(), creds->end(), [](const auto& c) { return c != nullptr; })) {
        auto key = tls::ticket_key::generate();
        if (!key) {
            why =
                fmt::format("tls: cannot create the session ticket key: {}", key.error().message());
            return std::nullopt;
        }
        ctx.tickets = std::move(*key);
    }
    ctx.reload->tls.store(std::make_shared<const tls_credentials_set>(std::move(*creds)));

    std::vector<std::string> warnings;
    auto keys = load_dkim_keys(cfg, why, warnings);
    if (!keys)
        return std::nullopt;
    for (const auto& w : warnings)
        core::log::warn("{}", w);
    ctx.reload->dkim.store(std::move(keys));

    // The rings between the shards' delivery engines: destination queues owned by hash of
    // their key, jobs and notices handed over through these.
    auto mb = delivery::mailbox::create(ctx.shards);
    if (!mb) {
        why = fmt::format("cross-shard mailbox: {}", mb.error().message());
        return std::nullopt;
    }
    ctx.delivery.mailbox = std::move(*mb);
    if (ctx.shards > 1)
        ctx.delivery.gauges = std::make_unique<queue::spare_gauges>(ctx.shards);
    ctx.delivery.quiet = std::make_unique<std::atomic<bool>[]>(ctx.shards);
    ctx.delivery.bounces = load_bounce_rules(cfg, why);
    if (!ctx.delivery.bounces)
        return std::nullopt;
    ctx.delivery.bounce_counts = std::make_unique<queue::bounce_counters[]>(ctx.shards);
    {
        std::string shaping_why;
        ctx.delivery.shaping = delivery::make_shaping(cfg, shaping_why);
        if (!ctx.delivery.shaping && !shaping_why.empty()) {
            why = fmt::format("shaping: {}", shaping_why);
            return std::nullopt;
        }
    }

    std::error_code ec;
    std::filesystem::create_directories(cfg.server.spool_dir, ec);
    if (ec) {
        why = fmt::format("server.spool_dir: cannot create \"{}\": {}", cfg.server.spool_dir,
                          ec.message());
        return std::nullopt;
    }
    ctx.spool_dirs.resize(ctx.shards);
    for (unsigned i = 0; i < ctx.shards; ++i)
        ctx.spool_dirs[i].push_back(i);
    for (unsigned n : existing_shard_dirs(cfg.server.spool_dir)) {
        if (n >= ctx.shards)
            ctx.spool_dirs[n % ctx.shards].push_back(n);
    }

    if (cfg.auth.enabled()) {
        auto store = load_users(cfg, why);
        if (!store)
            return std::nullopt;
        auth::verifier_options vo;
        vo.workers = std::max(1u, cfg.auth.verify_threads);
        auto v = auth::verifier::create(std::move(store), ctx.shards, vo);
        if (!v) {
            why = fmt::format("auth: cannot start the verifier: {}", v.error().message());
            return std::nullopt;
        }
        ctx.verifier = std::move(*v);
    }
    auth::failure_limiter_options lo;
    lo.max_failures = cfg.auth.max_failures;
    lo.window = cfg.auth.failure_window;
    // As many addresses as the per-shard tables of old held together, and at least 16384.
    lo.max_entries = std::max<std::size_t>(16384, std::size_t{4096} * ctx.shards);
    ctx.auth_limiter = std::make_unique<auth::failure_limiter>(lo);
    ctx.metrics = std::make_unique<core::shard_metrics[]>(ctx.shards);
    if (auto mb = admin::admin_mailbox::create(ctx.shards + 1); mb) {
        ctx.admin_mailbox = std::move(*mb);
    } else {
        why = fmt::format("admin rings: {}", mb.error().message());
        return std::nullopt;
    }
    ctx.suspensions_path =
        (fs::path(cfg.server.spool_dir) / std::string(queue::suspensions::file_name)).string();
    {
        // One store: the operators' and the rules' suspensions. Older releases kept the rules'
        // in a file of their own: read once, merged in, written, then removed.
        const std::string legacy =
            (fs::path(cfg.server.spool_dir) / std::string(queue::suspensions::legacy_file_name))
                .string();
        const auto now_unix = static_cast<std::int64_t>(std::time(nullptr));
        std::size_t migrated = 0;
        auto s =
            queue::suspensions::load_and_migrate(ctx.suspensions_path, legacy, now_unix, migrated);
        if (!s) {
            why = fmt::format("suspensions file {} (or {}): {} (fix or remove it)",
                              ctx.suspensions_path, legacy, s.error().message());
            return std::nullopt;
        }
        if (migrated > 0)
            core::log::info("{} rule suspension(s) of {} moved into {}", migrated, legacy,
                            ctx.suspensions_path);
        if (ctx.delivery.shaping) {
            // Those still in force apply to the shared limits before any shard starts.
            const std::size_t n = queue::apply_suspensions(*ctx.delivery.shaping, *s, now_unix,
                                                           std::chrono::steady_clock::now());
            if (n > 0)
                core::log::info("{} suspension(s) from {} still in force", n, ctx.suspensions_path);
            ctx.delivery.recorder =
                std::make_unique<admin::rule_recorder>(*ctx.admin_mailbox, ctx.shards);
            ctx.delivery.shaping->recorder = ctx.delivery.recorder.get();
        }
        ctx.suspensions = std::make_shared<const queue::suspensions>(std::move(*s));
    }
    if (cfg.admin.enabled() && !cfg.admin.token_file.empty()) {
        auto t = load_admin_token(cfg, why);
        if (!t)
            return std::nullopt;
        ctx.admin_token = std::move(*t);
    }
    ctx.cfg = std::move(cfg);
    if (!ctx.cfg.server.user.empty())
        ctx.start_gate = std::make_unique<std::atomic<int>>(core::start_gate_wait);
    return ctx;
}

bool claim_listen_addresses(const daemon_context& ctx, std::vector<int>& claims, std::string& why) {
    std::vector<core::endpoint> done;
    for (const auto& l : ctx.listeners) {
        // The same address twice in one configuration is this daemon's own business.
        if (std::find(done.begin(), done.end(), l.endpoint) != done.end())
            continue;
        done.push_back(l.endpoint);
        auto claim = core::claim_endpoint(l.endpoint);
        if (!claim) {
            why = fmt::format("listen[{}].address \"{}\": {}", l.index,
                              ctx.cfg.listen[l.index].address, claim.error().message());
            return false;
        }
        if (*claim >= 0)
            claims.push_back(*claim);
        if (auto probe = core::probe_unshared(l.endpoint); !probe) {
            why = fmt::format("listen[{}].address \"{}\": {}", l.index,
                              ctx.cfg.listen[l.index].address, probe.error().message());
            return false;
        }
    }
    return true;
}

std::optional<tls_credentials_set> load_tls_credentials(const config::settings& cfg,
                                                        std::string& why) {
    tls_credentials_set set;
    for (std::size_t i = 0; i < cfg.listen.size(); ++i) {
        const auto& l = cfg.listen[i];
        if (l.tls_certificates.empty()) {
            set.emplace_back();
            continue;
        }
        std::vector<tls::cert_key_files> pairs;
        for (const auto& c : l.tls_certificates)
            pairs.push_back({c.cert_file, c.key_file});
        std::string text;
        auto loaded = tls::server_credentials::load(pairs, text);
        if (!loaded) {
            why = fmt::format("listen[{}] ({}): {}", i, l.address,
                              text.empty() ? loaded.error().message() : text);
            return std::nullopt;
        }
        set.push_back(std::move(*loaded));
    }
    return set;
}

std::shared_ptr<const auth::credential_store> load_users(const config::settings& cfg,
                                                         std::string& why) {
    if (!cfg.auth.enabled())
        return std::make_shared<const auth::credential_store>();
    auto loaded = auth::load_users_file(cfg.auth.users_file);
    if (!loaded) {
        why = fmt::format("auth.users_file: {}", loaded.error);
        while (!why.empty() && why.back() == '\n')
            why.pop_back();
        return nullptr;
    }
    return std::make_shared<const auth::credential_store>(std::move(*loaded.store));
}

std::shared_ptr<const dkim::key_set> load_dkim_keys(const config::settings& cfg, std::string& why,
                                                    std::vector<std::string>& warnings) {
    auto set = std::make_shared<dkim::key_set>();
    for (std::size_t i = 0; i < cfg.dkim.size(); ++i) {
        const auto& d = cfg.dkim[i];
        std::string text;
        auto key = dkim::private_key::load_file(d.key_file, text);
        if (!key) {
            why = fmt::format("dkim[{}] ({}, selector {}): key_file {}", i, d.domain, d.selector,
                              text);
            return nullptr;
        }
        if (key->alg() == dkim::algorithm::rsa_sha256 && key->bits() < dkim::warn_rsa_bits) {
            warnings.push_back(fmt::format(
                "dkim[{}] ({}, selector {}): {} is an RSA key of {} bits; use 2048 or more "
                "(RFC 8301)",
                i, d.domain, d.selector, d.key_file, key->bits()));
        }
        dkim::signature_spec s;
        s.domain = d.domain;
        s.selector = d.selector;
        s.headers = d.headers.empty() ? dkim::default_headers() : d.headers;
        s.over_sign = d.over_sign;
        s.header_canon = d.header_canon == config::dkim_canon::simple ? dkim::canon::simple
                                                                      : dkim::canon::relaxed;
        s.body_canon =
            d.body_canon == config::dkim_canon::simple ? dkim::canon::simple : dkim::canon::relaxed;
        s.expire_after = d.expire_after;
        s.key = std::move(key);
        set->specs.push_back(std::move(s));
    }
    return set;
}

std::shared_ptr<const queue::bounce_classifier> load_bounce_rules(const config::settings& cfg,
                                                                  std::string& why) {
    const auto& files = cfg.delivery.bounce_rules_files;
    std::string problem;
    std::optional<queue::bounce_classifier> c;
    std::error_code ec;
    if (files.size() == 1 && files[0] == config::shipped_bounce_rules_path &&
        !fs::exists(files[0], ec)) {
        // Not installed (a build tree): the same rules, built in.
        std::vector<queue::bounce_classifier::source> src{
            {std::string(config::shipped_bounce_rules_path) + " (built in)",
             std::string(queue::shipped_bounce_rules())}};
        c = queue::bounce_classifier::parse(src, problem);
    } else {
        c = queue::bounce_classifier::load(files, problem);
    }
    if (!c) {
        why = fmt::format("delivery.bounce_rules_file: {}", problem);
        return nullptr;
    }
    return std::make_shared<const queue::bounce_classifier>(std::move(*c));
}

std::optional<std::string> load_admin_token(const config::settings& cfg, std::string& why) {
    const std::string& path = cfg.admin.token_file;
    std::ifstream f(path);
    std::string line;
    if (!f || !std::getline(f, line)) {
        why = fmt::format("admin.token_file: \"{}\": cannot read it", path);
        return std::nullopt;
    }
    const auto b = line.find_first_not_of(" \t\r");
    const auto e = line.find_last_not_of(" \t\r");
    std::string token = b == std::string::npos ? std::string() : line.substr(b, e - b + 1);
    if (token.size() < 16) {
        why = fmt::format(
            "admin.token_file: \"{}\": the first line must hold a token of at "
            "least 16 characters",
            path);
        return std::nullopt;
    }
    for (const char c : token) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
            why = fmt::format(
                "admin.token_file: \"{}\": the token has a blank or control "
                "character",
                path);
            return std::nullopt;
        }
    }
    return token;
}

bool check_context(const config::settings& cfg, std::string& why) {
    if (cfg.admin.enabled() && !cfg.admin.token_file.empty() && !load_admin_token(cfg, why))
        return false;
    if (!check_run_user(cfg, why))
        return false;
    for (std::size_t i = 0; i < cfg.listen.size(); ++i) {
        const auto& l = cfg.listen[i];
        if (l.proxy_protocol && l.trusted_proxies.empty()) {
            why = fmt::format(
                "listen[{}].trusted_proxies: empty, but proxy_protocol is on: no "
                "balancer could connect",
                i);
            return false;
        }
    }
    std::string problem;
    const std::string& spool = cfg.server.spool_dir;
    if (!check_writable_dir(spool, problem)) {
        why = fmt::format("server.spool_dir: \"{}\" {}", spool, problem);
        return false;
    }
    // Shard directories left by earlier runs are written again (recovery, new segments).
    for (unsigned n : existing_shard_dirs(spool)) {
        const auto dir = fs::path(spool) / fmt::format("shard-{}", n);
        if (!check_writable_dir(dir, problem)) {
            why = fmt::format("server.spool_dir: \"{}\" {}", dir.string(), problem);
            return false;
        }
    }
    const std::string& log_file = cfg.delivery.log_file;
    if (!log_file.empty() && !check_log_file(log_file, problem)) {
        why = fmt::format("delivery.log_file: \"{}\" {}", log_file, problem);
        return false;
    }
    if (!load_tls_credentials(cfg, why))
        return false;
    std::vector<std::string> warnings;
    if (!load_dkim_keys(cfg, why, warnings))
        return false;
    for (const auto& w : warnings)
        std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (!load_bounce_rules(cfg, why))
        return false;
    return load_users(cfg, why) != nullptr;
}

}  // namespace ringmail::daemon
