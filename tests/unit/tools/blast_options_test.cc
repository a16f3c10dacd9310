#include <gtest/gtest.h>

#include "blast/options.h"
#include "blast/stats.h"
#include <string>
#include <vector>

namespace ringmail::blast {
namespace {

parse_outcome parse(std::vector<const char*> args) {
    args.insert(args.begin(), "ringmail-blast");
    return parse_command_line(static_cast<int>(args.size()), args.data());
}

TEST(blast_options, defaults) {
    auto r = parse({"--target", "127.0.0.1:2525"});
    ASSERT_EQ(r.status, parse_status::run) << r.message;
    EXPECT_EQ(r.opts.target_host, "127.0.0.1");
    EXPECT_EQ(r.opts.target_port, 2525);
    EXPECT_EQ(r.opts.messages, 1000u);
    EXPECT_EQ(r.opts.connections, 10u);
    EXPECT_EQ(r.opts.size, 1024u);
    EXPECT_EQ(r.opts.recipients, 1u);
    EXPECT_EQ(r.opts.timeout.count(), 30);
    EXPECT_FALSE(r.opts.pipelining);
}

TEST(blast_options, everything) {
    auto r = parse({"--target",
                    "[::1]:25",
                    "--connections",
                    "50",
                    "--shards",
                    "2",
                    "--duration",
                    "1m",
                    "--rate",
                    "250.5",
                    "--recipients",
                    "3",
                    "--per-connection",
                    "10",
                    "--from",
                    "s{n}@x.test",
                    "--to",
                    "u{n}@d{n}.test",
                    "--domains",
                    "7",
                    "--pipelining",
                    "--json",
                    "--allow-errors",
                    "--timeout",
                    "2"});
    ASSERT_EQ(r.status, parse_status::run) << r.message;
    EXPECT_EQ(r.opts.target_host, "::1");
    EXPECT_EQ(r.opts.target_port, 25);
    EXPECT_EQ(r.opts.messages, 0u);  // a --duration run
    EXPECT_EQ(r.opts.duration.count(), 60);
    EXPECT_DOUBLE_EQ(r.opts.rate, 250.5);
    EXPECT_EQ(r.opts.per_connection, 10u);
    EXPECT_EQ(r.opts.domains, 7u);
    EXPECT_TRUE(r.opts.pipelining && r.opts.json && r.opts.allow_errors);
    EXPECT_EQ(r.opts.timeout.count(), 2);
}

TEST(blast_options, usage_errors) {
    const std::vector<std::vector<const char*>> bad = {
        {},
        {"--target", "nohost"},
        {"--target", "::1:25"},
        {"--target", "h:0"},
        {"--target", "h:65536"},
        {"--target", "h:25", "--connections", "0"},
        {"--target", "h:25", "--duration", "soon"},
        {"--target", "h:25", "--timeout", "0"},
        {"--target", "h:25", "--size", "10", "--message-file", "/dev/null"},
        {"--target", "h:25", "--bogus"},
        {"--target", "h:25", "--auth", "no-colon"},
        {"--target", "h:25", "--auth", ":password-only"},
    };
    for (const auto& args : bad) {
        auto r = parse(args);
        EXPECT_EQ(r.status, parse_status::usage_error) << (args.empty() ? "" : args.back());
        EXPECT_FALSE(r.message.empty());
    }
    EXPECT_NE(parse({"--target", "h:25", "--auth", "x"}).message.find("user:pass"),
              std::string::npos);
}

TEST(blast_options, starttls_and_auth) {
    auto r = parse({"--target", "h:25"});
    ASSERT_EQ(r.status, parse_status::run) << r.message;
    EXPECT_FALSE(r.opts.starttls || r.opts.auth);
    r = parse({"--target", "h:25", "--starttls", "--auth", "bench:pa:ss word"});
    ASSERT_EQ(r.status, parse_status::run) << r.message;
    EXPECT_TRUE(r.opts.starttls);
    EXPECT_TRUE(r.opts.auth);
    EXPECT_EQ(r.opts.auth_user, "bench");
    EXPECT_EQ(r.opts.auth_password, "pa:ss word");  // the first ':' separates them
    r = parse({"--target", "h:25", "--auth", "u:"});
    ASSERT_EQ(r.status, parse_status::run) << r.message;
    EXPECT_EQ(r.opts.auth_user, "u");
    EXPECT_EQ(r.opts.auth_password, "");
}

TEST(blast_options, help_and_version) {
    EXPECT_EQ(parse({"--help"}).status, parse_status::exit_ok);
    EXPECT_EQ(parse({"--version"}).status, parse_status::exit_ok);
}

TEST(blast_stats, merge_and_errors) {
    counters a, b;
    a.sent = 3;
    a.accepted = 3;
    b.sent = 2;
    b.accepted = 1;
    b.temp_failed = 1;
    b.conn_errors[static_cast<std::size_t>(conn_error::timeout)] = 2;
    EXPECT_FALSE(a.any_error());
    EXPECT_TRUE(b.any_error());
    a.merge(b);
    EXPECT_EQ(a.sent, 5u);
    EXPECT_EQ(a.accepted, 4u);
    EXPECT_EQ(a.connection_errors(), 2u);
    EXPECT_TRUE(a.any_error());
}

TEST(blast_stats, json_is_one_line_with_the_counts) {
    shard_stats s;
    s.c.sent = 10;
    s.c.accepted = 9;
    s.c.perm_failed = 1;
    s.latency.record(1500);
    run_info run;
    run.target = "127.0.0.1:25";
    run.elapsed_s = 2;
    std::string j = format_json(run, s);
    EXPECT_EQ(j.find('\n'), j.size() - 1);
    EXPECT_NE(j.find(R"("sent": 10, "accepted": 9, "temp_failed": 0, "perm_failed": 1)"),
              std::string::npos)
        << j;
    EXPECT_NE(j.find(R"("accepted_per_s": 4.500)"), std::string::npos) << j;
    EXPECT_NE(j.find(R"("errors": true)"), std::string::npos) << j;
    std::string t = format_text(run, s);
    EXPECT_NE(t.find("sent 10  accepted 9  4xx 0  5xx 1"), std::string::npos) << t;
    EXPECT_EQ(t.find("\ntls "), std::string::npos) << t;  // no TLS line without --starttls
}

TEST(blast_stats, tls_handshake_times_are_reported) {
    shard_stats s;
    s.c.sent = s.c.accepted = 2;
    s.c.tls_established = 2;
    s.c.conn_errors[static_cast<std::size_t>(conn_error::tls)] = 1;
    s.tls.record(2'000'000);
    s.tls.record(4'000'000);
    run_info run;
    run.target = "127.0.0.1:25";
    run.starttls = true;
    run.elapsed_s = 1;
    std::string j = format_json(run, s);
    EXPECT_NE(j.find(R"("starttls": true)"), std::string::npos) << j;
    EXPECT_NE(j.find(R"("tls_established": 2)"), std::string::npos) << j;
    EXPECT_NE(j.find(R"("tls": 1)"), std::string::npos) << j;
    EXPECT_NE(j.find(R"("tls_handshake_us": {"count": 2, "p50": )"), std::string::npos) << j;
    std::string t = format_text(run, s);
    EXPECT_NE(t.find("tls          p50 2.0"), std::string::npos) << t;
    EXPECT_NE(t.find("2 established"), std::string::npos) << t;
    EXPECT_NE(t.find("[connect to EHLO in TLS done]"), std::string::npos) << t;
}

}  // namespace
}  // namespace ringmail::blast
