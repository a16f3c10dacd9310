// ringmailctl: the administration client. Subcommands:
//   passwd USER [--scheme argon2id|pbkdf2-sha256|cram-md5]
//                        password on stdin -> "USER:HASH" on stdout
//   dkim-record KEY_FILE SELECTOR [--domain D]
//                        the DNS TXT record that publishes a DKIM key
// and, speaking ringmaild's admin API ([--admin ADDR] [--token-file F] [--json]):
//   queue, top, inspect QUEUE_ID, suspend [DOMAIN [--for 30m] [--reason R]],
//   resume DOMAIN [--provider],
//   flush [DOMAIN], bounce DOMAIN|QUEUE_ID [--reason R], drain, metrics
//
// Exit codes: 0 success, 2 usage error (CLI11 parse errors, bad arguments), 1 any other
// failure, always with one message on stderr.
#include "ringmail/auth/credential_store.h"

#include <CLI/CLI.hpp>

#include "api.h"
#include "dkim_record.h"
#include "passwd.h"
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    CLI::App app{"ringmailctl: ringmail administration"};
    app.require_subcommand(1);

    CLI::App* passwd = app.add_subcommand(
        "passwd", "hash a password read from standard input; prints USER:HASH for users_file");
    std::string user;
    std::string scheme_text = "argon2id";
    passwd->add_option("USER", user, "user name (no ':', whitespace or control characters)")
        ->required();
    passwd
        ->add_option("--scheme", scheme_text,
                     "hash scheme; cram-md5 enables CRAM-MD5 for this user, and its entry is "
                     "equivalent to the password")
        ->check(CLI::IsMember({"argon2id", "pbkdf2-sha256", "cram-md5"}))
        ->capture_default_str();

    CLI::App* record = app.add_subcommand(
        "dkim-record", "print the DNS TXT record that publishes a DKIM key ([[dkim]] key_file)");
    std::string key_file;
    std::string selector;
    std::string domain;
    record->add_option("KEY_FILE", key_file, "PEM private key (RSA or Ed25519)")->required();
    record->add_option("SELECTOR", selector, "the [[dkim]] selector (s=)")->required();
    record->add_option("--domain", domain, "the signing domain: print the full record name");

    ringmail::ctl::api_options api;
    app.add_option("--admin", api.admin, "ringmaild's [admin] address (ip:port)")
        ->capture_default_str();
    app.add_option("--token-file", api.token_file,
                   "file whose first line is the admin bearer token ([admin] token_file)");
    app.add_flag("--json", api.json, "print the API's JSON instead of tables");

    CLI::App* queue = app.add_subcommand("queue", "the queue by destination");
    unsigned limit = 50;
    std::string sort = "recipients";
    queue->add_option("--limit", limit, "destinations shown")->capture_default_str();
    queue->add_option("--sort", sort, "order")
        ->check(CLI::IsMember({"recipients", "age", "deferred", "name"}))
        ->capture_default_str();
    CLI::App* top = app.add_subcommand("top", "live view: rates per second, the queue");
    double interval = 2.0;
    unsigned iterations = 0;
    top->add_option("--interval", interval, "seconds between refreshes")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    top->add_option("--iterations", iterations, "stop after N refreshes (0 = until Ctrl-C)");
    CLI::App* inspect = app.add_subcommand("inspect", "one message: envelope, recipients, state");
    std::string qid;
    inspect->add_option("QUEUE_ID", qid, "16 hexadecimal digits")->required();
    CLI::App* suspend = app.add_subcommand(
        "suspend", "no new delivery attempts to DOMAIN (without DOMAIN: list suspensions)");
    std::string target_domain;
    std::string duration = "1h";
    std::string reason;
    suspend->add_option("DOMAIN", target_domain, "destination domain");
    suspend->add_option("--for", duration, "how long (90s, 30m, 4h, 2d)")->capture_default_str();
    suspend->add_option("--reason", reason, "shown to other operators");
    CLI::App* resume =
        app.add_subcommand("resume", "end DOMAIN's suspensions, an operator's or a shaping rule's");
    bool resume_provider = false;
    resume->add_option("DOMAIN", target_domain, "destination domain (or provider: --provider)")
        ->required();
    resume->add_flag("--provider", resume_provider, "DOMAIN names a [[provider]]");
    CLI::App* flush = app.add_subcommand("flush", "retry deferred recipients now");
    flush->add_option("DOMAIN", target_domain, "only this destination");
    CLI::App* bounce =
        app.add_subcommand("bounce", "bounce the queued recipients now (a DSN to each sender)");
    std::string bounce_target;
    bounce->add_option("TARGET", bounce_target, "a destination domain or a queue id")->required();
    bounce->add_option("--reason", reason, "goes into the DSN's diagnostic");
    CLI::App* drain = app.add_subcommand("drain", "drain and stop ringmaild (as SIGTERM)");
    CLI::App* metrics = app.add_subcommand("metrics", "print /metrics (Prometheus text)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }

    if (passwd->parsed()) {
        const auto s = ringmail::auth::parse_scheme(scheme_text);
        if (!s) {
            std::fprintf(stderr, "ringmailctl: passwd: unknown scheme %s\n", scheme_text.c_str());
            return 2;
        }
        return ringmail::ctl::run_passwd(user, *s, stdin);
    }
    if (record->parsed())
        return ringmail::ctl::run_dkim_record(key_file, selector, domain);
    namespace ctl = ringmail::ctl;
    if (queue->parsed())
        return ctl::cmd_queue(api, limit, sort);
    if (top->parsed())
        return ctl::cmd_top(api, interval, iterations);
    if (inspect->parsed())
        return ctl::cmd_inspect(api, qid);
    if (suspend->parsed())
        return ctl::cmd_suspend(api, target_domain, duration, reason);
    if (resume->parsed())
        return ctl::cmd_resume(api, target_domain, resume_provider);
    if (flush->parsed())
        return ctl::cmd_flush(api, target_domain);
    if (bounce->parsed())
        return ctl::cmd_bounce(api, bounce_target, reason);
    if (drain->parsed())
        return ctl::cmd_drain(api);
    if (metrics->parsed())
        return ctl::cmd_metrics(api);
    std::fputs("ringmailctl: no subcommand\n", stderr);
    return 2;
}
