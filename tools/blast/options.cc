#include "blast/options.h"

#include "ringmail/core/duration.h"
#include "ringmail/core/socket.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <charconv>

namespace ringmail::blast {

parse_outcome parse_command_line(int argc, const char* const* argv) {
    parse_outcome out;
    options& o = out.opts;
    CLI::App app{
        "ringmail-blast: SMTP load generator on io_uring (one shard per core).\n"
        "Sends --messages N (or for --duration) to --target over --connections, closed loop,\n"
        "or open loop at --rate messages/s with latency measured from each message's\n"
        "scheduled send time."};
    app.set_version_flag("--version", std::string("ringmail-blast ") + RINGMAIL_VERSION);
    std::string duration_text;
    std::string timeout_text = "30s";
    bool no_progress = false;
    app.add_option("--target", o.target_text, "SMTP server, host:port or [v6]:port")->required();
    app.add_option("--connections", o.connections, "connections in total (default 10)")
        ->check(CLI::Range(1u, 1000000u));
    app.add_option("--shards", o.shards,
                   "threads, each pinned to a CPU with its own ring (default: one per CPU, at "
                   "most one per connection)")
        ->check(CLI::Range(0u, 4096u));
    auto* messages = app.add_option("--messages", o.messages, "messages to send (default 1000)")
                         ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 48));
    auto* duration =
        app.add_option("--duration", duration_text, "send for this long (\"30\", \"30s\", \"5m\")");
    app.add_option("--rate", o.rate,
                   "open loop: messages/s in total, message i scheduled at start + i/rate")
        ->check(CLI::Range(1e-3, 1e9));
    auto* size = app.add_option("--size", o.size, "generated message size in octets (default 1024)")
                     ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30));
    app.add_option("--message-file", o.message_file,
                   "send this message instead (CRLF-normalised and dot-stuffed once)")
        ->excludes(size);
    app.add_option("--recipients", o.recipients, "recipients per message (default 1)")
        ->check(CLI::Range(1u, 10000u));
    app.add_option("--per-connection", o.per_connection,
                   "transactions per connection, then QUIT and reconnect (0: unlimited)");
    app.add_option("--from", o.from,
                   "envelope sender; {n} expands to the message number (0, 1, 2, ...)");
    app.add_option("--to", o.to, "recipient; {n} expands to the recipient number");
    app.add_option("--domains", o.domains,
                   "recipients' {n} is taken modulo this (0: no modulo): --to 'u{n}@d{n}.test' "
                   "--domains 10 spreads over 10 domains");
    app.add_option("--helo", o.helo, "EHLO name (default ringmail-blast.test)");
    app.add_flag("--pipelining", o.pipelining, "use PIPELINING when the server offers it");
    app.add_flag("--json", o.json, "print the summary as JSON on stdout");
    app.add_flag("--allow-errors", o.allow_errors, "exit 0 even when errors occurred");
    app.add_flag("--no-progress", no_progress, "no progress line on stderr");
    app.add_option("--timeout", timeout_text, "connect and per-reply timeout (default 30s)");
    app.add_flag("--starttls", o.starttls,
                 "STARTTLS on every connection (required: a server that does not offer it "
                 "fails the connection). Certificates are NOT verified: this measures, it "
                 "does not protect");
    std::string auth_text;
    auto* auth = app.add_option("--auth", auth_text,
                                "AUTH PLAIN with user:pass (the first ':' separates them) after "
                                "EHLO (after STARTTLS with --starttls)");
    (void)messages;
    (void)duration;

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        out.status = parse_status::exit_ok;
        out.message = app.help();
        return out;
    } catch (const CLI::CallForAllHelp&) {
        out.status = parse_status::exit_ok;
        out.message = app.help();
        return out;
    } catch (const CLI::CallForVersion&) {
        out.status = parse_status::exit_ok;
        out.message = std::string("ringmail-blast ") + RINGMAIL_VERSION + "\n";
        return out;
    } catch (const CLI::ParseError& e) {
        out.status = parse_status::usage_error;
        out.message = e.what();
        return out;
    }
    auto usage = [&](std::string msg) {
        out.status = parse_status::usage_error;
        out.message = std::move(msg);
        return out;
    };
    if (auth->count() > 0) {
        auto colon = auth_text.find(':');
        if (colon == std::string::npos || colon == 0)
            return usage("--auth: expected user:pass");
        o.auth = true;
        o.auth_user = auth_text.substr(0, colon);
        o.auth_password = auth_text.substr(colon + 1);
    }
    auto target =
        core::split_host_port(o.target_text, core::host_port_rules{.leading_zeros = true});
    if (!target)
        return usage(fmt::format("--target: \"{}\" is not host:port", o.target_text));
    o.target_host = std::string(target->host);
    o.target_port = target->port;
    if (!duration_text.empty()) {
        auto d = core::parse_duration(duration_text);
        if (!d)
            return usage(fmt::format("--duration: \"{}\" is not a duration", duration_text));
        o.duration = *d;
    }
    auto t = core::parse_duration(timeout_text);
    if (!t)
        return usage(fmt::format("--timeout: \"{}\" is not a duration", timeout_text));
    o.timeout = *t;
    if (o.messages == 0 && o.duration.count() == 0)
        o.messages = 1000;
    if (o.helo.empty())
        return usage("--helo: empty");
    o.progress = !no_progress;
    return out;
}

}  // namespace ringmail::blast
