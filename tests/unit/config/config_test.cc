#include "ringmail/config/config.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace ringmail::config {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view one_listener =
    "[[listen]]\naddress = \"127.0.0.1:2525\"\nrole = \"relay\"\n";

std::string with_listener(std::string_view rest) {
    return std::string(one_listener) + std::string(rest);
}

parsed_config parse(std::string_view text) {
    return parse_config(text, "test.toml");
}

// --- errors: each case is a whole file and a piece of the message it must produce -----------

struct bad_case {
    const char* name;
    std::string toml;
    const char* expect;
};

void PrintTo(const bad_case& c, std::ostream* os) {
    *os << c.name;
}

class config_errors : public ::testing::TestWithParam<bad_case> {};

TEST_P(config_errors, names_the_key) {
    const auto& c = GetParam();
    const auto r = parse(c.toml);
    ASSERT_FALSE(r.ok()) << c.toml;
    EXPECT_FALSE(static_cast<bool>(r));
    EXPECT_NE(r.error.find(c.expect), std::string::npos)
        << "error:  " << r.error << "\nwanted: " << c.expect;
    EXPECT_EQ(r.error.rfind("test.toml:", 0), 0u) << r.error;
}

std::string server(std::string_view kv) {
    return with_listener("[server]\n" + std::string(kv) + "\n");
}
std::string section(std::string_view name, std::string_view kv) {
    return with_listener("[" + std::string(name) + "]\n" + std::string(kv) + "\n");
}
std::string listener(std::string_view kv) {
    return "[[listen]]\n" + std::string(kv) + "\n";
}
std::string listener_with(std::string_view kv) {
    return "[[listen]]\naddress = \"127.0.0.1:25\"\nrole = \"relay\"\n" + std::string(kv) + "\n";
}

const bad_case bad_cases[] = {
    // [server], every key with a wrong type and a bad value
    {"hostname_type", server("hostname = 1"), "server.hostname: expected a string, got an integer"},
    {"hostname_value", server("hostname = \"bad_name\""),
     "server.hostname: expected a domain name, got \"bad_name\""},
    {"hostname_dash", server("hostname = \"-x.test\""), "server.hostname: expected a domain name"},
    {"shards_type", server("shards = \"2\""), "server.shards: expected an integer, got a string"},
    {"shards_negative", server("shards = -1"), "server.shards: must be between 0 and 1024, got -1"},
    {"shards_huge", server("shards = 5000"), "server.shards: must be between 0 and 1024, got 5000"},
    {"spool_type", server("spool_dir = 5"), "server.spool_dir: expected a string, got an integer"},
    {"spool_empty", server("spool_dir = \"\""), "server.spool_dir: must not be empty"},
    {"size_float", server("max_message_size = 1.5"),
     "server.max_message_size: expected an integer, got a floating-point number"},
    {"size_zero", server("max_message_size = 0"), "server.max_message_size: must be between 1 and"},
    {"recipients_bool", server("max_recipients = true"),
     "server.max_recipients: expected an integer, got a boolean"},
    {"recipients_overflow", server("max_recipients = 4294967296"),
     "server.max_recipients: must be between 1 and 4294967295, got 4294967296"},
    {"line_short", server("max_line_length = 100"),
     "server.max_line_length: must be between 512 and 1048576, got 100"},
    {"line_type", server("max_line_length = \"1000\""),
     "server.max_line_length: expected an integer"},
    {"errors_type", server("max_errors = \"x\""),
     "server.max_errors: expected an integer, got a string"},
    {"errors_zero", server("max_errors = 0"), "server.max_errors: must be between 1"},
    {"connections_array", server("max_connections = [1]"),
     "server.max_connections: expected an integer, got an array"},
    {"command_timeout_unit", server("command_timeout = \"5x\""),
     "server.command_timeout: expected a duration like \"30s\", \"5m\", \"4h\", \"5d\", got "
     "\"5x\""},
    {"command_timeout_type", server("command_timeout = true"),
     "server.command_timeout: expected a duration like \"30s\", \"5m\", \"4h\", \"5d\", got a "
     "boolean"},
    {"command_timeout_huge", server("command_timeout = \"99999999999999d\""),
     "server.command_timeout: duration \"99999999999999d\" is too large"},
    {"data_timeout_zero", server("data_timeout = \"0s\""),
     "server.data_timeout: expected a duration"},
    {"data_timeout_zero_int", server("data_timeout = 0"),
     "server.data_timeout: expected a duration"},
    {"data_timeout_negative", server("data_timeout = \"-1m\""),
     "server.data_timeout: expected a duration"},
    {"log_level_value", server("log_level = \"verbose\""),
     "server.log_level: expected \"debug\", \"info\", \"warn\" or \"error\", got \"verbose\""},
    {"log_level_type", server("log_level = 3"),
     "server.log_level: expected a string, got an integer"},
    {"defer_taskrun_type", server("io_uring_defer_taskrun = \"no\""),
     "server.io_uring_defer_taskrun: expected a boolean, got a string"},
    {"multishot_accept_type", server("multishot_accept = 0"),
     "server.multishot_accept: expected a boolean, got an integer"},
    {"drain_grace_negative", server("drain_grace = \"-1s\""),
     "server.drain_grace: expected a duration"},
    {"drain_grace_type", server("drain_grace = true"), "server.drain_grace: expected a duration"},
    {"shutdown_timeout_zero", server("shutdown_timeout = 0"),
     "server.shutdown_timeout: expected a duration"},
    {"shutdown_not_past_grace", server("drain_grace = \"30s\"\nshutdown_timeout = \"30s\""),
     "server.shutdown_timeout: 30s must be longer than server.drain_grace (30s)"},
    {"shutdown_below_default_grace", server("shutdown_timeout = \"3s\""),
     "server.shutdown_timeout: 3s must be longer than server.drain_grace (5s)"},
    {"server_unknown_key", server("shardz = 4"), "server.shardz: unknown key"},
    {"server_unknown_table", server("[server.extra]\nx = 1"), "server.extra: unknown table"},
    {"server_not_table", "server = 1\n" + std::string(one_listener),
     "server: expected a table ([server]), got an integer"},

    // [[listen]]
    {"listen_missing", "[server]\nshards = 1\n",
     "listen: at least one [[listen]] table is required"},
    {"listen_empty", "listen = []\n", "listen: at least one [[listen]] table is required"},
    {"listen_single_table", "[listen]\naddress = \"127.0.0.1:25\"\nrole = \"relay\"\n",
     "listen: expected an array of tables ([[listen]]), got a table"},
    {"listen_strings", "listen = [\"127.0.0.1:25\"]\n", "listen: expected an array of tables"},
    {"address_foo", listener("address = \"foo\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\", got \"foo\""},
    {"address_second", with_listener(listener("address = \"foo\"\nrole = \"relay\"")),
     "listen[1].address: expected \"ip:port\", got \"foo\""},
    {"address_no_port", listener("address = \"127.0.0.1\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\", got \"127.0.0.1\""},
    {"address_port_zero", listener("address = \"127.0.0.1:0\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_port_big", listener("address = \"127.0.0.1:65536\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_port_leading_zero", listener("address = \"127.0.0.1:025\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_v6_unbracketed", listener("address = \"::1:25\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_v4_bracketed", listener("address = \"[127.0.0.1]:25\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_v6_no_colon", listener("address = \"[::1]25\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_v6_zone", listener("address = \"[fe80::1%eth0]:25\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\""},
    {"address_hostname", listener("address = \"localhost:25\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\", got \"localhost:25\""},
    {"address_type", listener("address = 25\nrole = \"relay\""),
     "listen[0].address: expected a string, got an integer"},
    {"address_control_chars", listener("address = \"a\\nb\"\nrole = \"relay\""),
     "listen[0].address: expected \"ip:port\", got \"a\\x0ab\""},
    {"address_missing", listener("role = \"relay\""), "listen[0].address: missing"},
    {"role_missing", listener("address = \"127.0.0.1:25\""), "listen[0].role: missing"},
    {"role_value", listener("address = \"127.0.0.1:25\"\nrole = \"mx\""),
     "listen[0].role: expected \"relay\", \"submission\" or \"smtps\", got \"mx\""},
    {"role_type", listener("address = \"127.0.0.1:25\"\nrole = 1"),
     "listen[0].role: expected a string, got an integer"},
    {"proxy_type", listener_with("proxy_protocol = \"yes\""),
     "listen[0].proxy_protocol: expected a boolean, got a string"},
    {"trusted_type", listener_with("trusted_proxies = \"10.0.0.0/8\""),
     "listen[0].trusted_proxies: expected an array, got a string"},
    {"trusted_value", listener_with("trusted_proxies = [\"10.0.0.0/8\", \"nope\"]"),
     "listen[0].trusted_proxies[1]: expected a CIDR"},
    {"listen_unknown_key", listener_with("port = 25"), "listen[0].port: unknown key"},
    {"listen_duplicate", with_listener(listener("address = \"127.0.0.1:2525\"\nrole = \"smtps\"")),
     "listen[1].address: \"127.0.0.1:2525\" is already used by listen[0].address"},
    {"listen_duplicate_v6_spelling",
     listener("address = \"[::1]:25\"\nrole = \"relay\"") +
         listener("address = \"[0:0::1]:25\"\nrole = \"relay\""),
     "listen[1].address: \"[0:0::1]:25\" is already used by listen[0].address"},

    // [relay]
    {"allow_type", section("relay", "allow_networks = \"127.0.0.0/8\""),
     "relay.allow_networks: expected an array, got a string"},
    {"allow_element_type", section("relay", "allow_networks = [1]"),
     "relay.allow_networks[0]: expected a string, got an integer"},
    {"allow_prefix_too_long", section("relay", "allow_networks = [\"127.0.0.0/33\"]"),
     "relay.allow_networks[0]: expected a CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got "
     "\"127.0.0.0/33\""},
    {"allow_not_ip", section("relay", "allow_networks = [\"::1/128\", \"example.com/8\"]"),
     "relay.allow_networks[1]: expected a CIDR"},
    {"allow_host_bits", section("relay", "allow_networks = [\"10.0.0.1/8\"]"),
     "relay.allow_networks[0]: host bits set in \"10.0.0.1/8\" (did you mean \"10.0.0.0/8\"?)"},
    {"allow_duplicate", section("relay", "allow_networks = [\"10.0.0.0/8\", \"10.0.0.0/8\"]"),
     "relay.allow_networks[1]: \"10.0.0.0/8\" duplicates relay.allow_networks[0]"},
    {"domains_value", section("relay", "domains = [\"bad domain\"]"),
     "relay.domains[0]: expected a domain name, got \"bad domain\""},
    {"domains_ip", section("relay", "domains = [\"192.0.2.1\"]"),
     "relay.domains[0]: expected a domain name"},
    {"domains_long_label", section("relay", "domains = [\"" + std::string(64, 'a') + ".test\"]"),
     "relay.domains[0]: expected a domain name"},
    {"domains_duplicate_case", section("relay", "domains = [\"a.test\", \"A.TEST.\"]"),
     "relay.domains[1]: \"A.TEST.\" duplicates relay.domains[0]"},
    {"domains_type", section("relay", "domains = \"a.test\""),
     "relay.domains: expected an array, got a string"},
    {"relay_unknown", section("relay", "networks = []"), "relay.networks: unknown key"},

    // [delivery]
    {"smarthost_no_port", section("delivery", "smarthost = \"mail.example.com\""),
     "delivery.smarthost: expected \"\" or \"host:port\""},
    {"smarthost_v6_unbracketed", section("delivery", "smarthost = \"2001:db8::1:25\""),
     "delivery.smarthost: expected \"\" or \"host:port\""},
    {"smarthost_bracketed_name", section("delivery", "smarthost = \"[mail.example.com]:25\""),
     "delivery.smarthost: expected \"\" or \"host:port\""},
    {"smarthost_bad_name", section("delivery", "smarthost = \"mail_x:25\""),
     "delivery.smarthost: expected \"\" or \"host:port\""},
    {"smarthost_port_zero", section("delivery", "smarthost = \"mail.example.com:0\""),
     "delivery.smarthost: expected \"\" or \"host:port\""},
    {"smarthost_type", section("delivery", "smarthost = false"),
     "delivery.smarthost: expected a string, got a boolean"},
    {"mx_port_zero", section("delivery", "mx_port = 0"),
     "delivery.mx_port: must be between 1 and 65535, got 0"},
    {"mx_port_big", section("delivery", "mx_port = 65536"),
     "delivery.mx_port: must be between 1 and 65535, got 65536"},
    {"mx_port_type", section("delivery", "mx_port = \"25\""),
     "delivery.mx_port: expected an integer, got a string"},
    {"retry_empty", section("delivery", "retry_schedule = []"),
     "delivery.retry_schedule: must not be empty"},
    {"retry_type", section("delivery", "retry_schedule = \"1m\""),
     "delivery.retry_schedule: expected an array, got a string"},
    {"retry_element", section("delivery", "retry_schedule = [\"1m\", \"5q\"]"),
     "delivery.retry_schedule[1]: expected a duration like"},
    {"retry_element_type", section("delivery", "retry_schedule = [\"1m\", 1.5]"),
     "delivery.retry_schedule[1]: expected a duration like \"30s\", \"5m\", \"4h\", \"5d\", got a "
     "floating-point number"},
    {"lifetime_unit", section("delivery", "max_lifetime = \"5y\""),
     "delivery.max_lifetime: expected a duration like"},
    {"connect_timeout_space", section("delivery", "connect_timeout = \"30 s\""),
     "delivery.connect_timeout: expected a duration like"},
    {"delivery_connections_zero", section("delivery", "max_connections = 0"),
     "delivery.max_connections: must be between 1"},
    {"per_connection_type", section("delivery", "max_messages_per_connection = \"many\""),
     "delivery.max_messages_per_connection: expected an integer, got a string"},
    {"idle_timeout_float", section("delivery", "idle_timeout = 1.5"),
     "delivery.idle_timeout: expected a duration like"},
    {"idle_timeout_date", section("delivery", "idle_timeout = 2024-01-01"),
     "delivery.idle_timeout: expected a duration like \"30s\", \"5m\", \"4h\", \"5d\", got a date"},
    {"helo_value", section("delivery", "helo_name = \"-bad-\""),
     "delivery.helo_name: expected a domain name, got \"-bad-\""},
    {"delivery_unknown", section("delivery", "smart_host = \"\""),
     "delivery.smart_host: unknown key"},

    // [dns]
    {"dns_no_port", section("dns", "servers = [\"192.0.2.53\"]"),
     "dns.servers[0]: expected \"ip:port\", got \"192.0.2.53\""},
    {"dns_type", section("dns", "servers = \"192.0.2.53:53\""),
     "dns.servers: expected an array, got a string"},
    {"dns_duplicate", section("dns", "servers = [\"[::1]:53\", \"[::1]:53\"]"),
     "dns.servers[1]: \"[::1]:53\" duplicates dns.servers[0]"},
    {"dns_unknown", section("dns", "timeout = \"5s\""), "dns.timeout: unknown key"},

    // [admin]
    {"admin_name", section("admin", "address = \"localhost:8025\""),
     "admin.address: expected \"\" or \"ip:port\", got \"localhost:8025\""},
    {"admin_type", section("admin", "address = 8025"),
     "admin.address: expected a string, got an integer"},
    {"admin_clash", section("admin", "address = \"127.0.0.1:2525\""),
     "admin.address: \"127.0.0.1:2525\" is already used by listen[0]"},
    {"admin_unknown", section("admin", "port = 8025"), "admin.port: unknown key"},
    {"admin_public_without_token", section("admin", "address = \"0.0.0.0:8025\""),
     "admin.token_file: \"0.0.0.0:8025\" is not a loopback address: set admin.token_file"},
    {"admin_v6_public_without_token", section("admin", "address = \"[::]:8025\""),
     "admin.token_file: \"[::]:8025\" is not a loopback address: set admin.token_file"},

    // [cluster]
    {"cluster_name", section("cluster", "redis = \"redis.example:6379\""),
     "cluster.redis: expected \"\" or \"ip:port\" (an IP address: names are not resolved), "
     "got \"redis.example:6379\""},
    {"cluster_no_port", section("cluster", "redis = \"127.0.0.1\""),
     "cluster.redis: expected \"\" or \"ip:port\""},
    {"cluster_type", section("cluster", "redis = 6379"),
     "cluster.redis: expected a string, got an integer"},
    {"cluster_unknown", section("cluster", "prefix = \"x\""), "cluster.prefix: unknown key"},

    // the file as a whole
    {"top_unknown_key", with_listener("foo = 1\n"), "foo: unknown key"},
    {"top_unknown_table", with_listener("[foo]\nx = 1\n"), "foo: unknown table"},
    {"syntax", with_listener("[server\n"), "TOML syntax error"},
    {"redefined_key", server("shards = 1\nshards = 2"), "TOML syntax error"},
    // TLS / AUTH / [[domain]]
    {"tls_cert_type", listener_with("tls_cert = 5"),
     "listen[0].tls_cert: expected a file name or an array of them, got an integer"},
    {"tls_cert_empty", listener_with("tls_cert = \"\"\ntls_key = \"k\""),
     "listen[0].tls_cert: must not be empty"},
    {"tls_key_missing", listener_with("tls_cert = \"c.pem\""),
     "listen[0].tls_key: 1 certificate file(s) but 0 key file(s)"},
    {"tls_count_mismatch", listener_with("tls_cert = [\"a\", \"b\"]\ntls_key = [\"a\"]"),
     "listen[0].tls_key: 2 certificate file(s) but 1 key file(s)"},
    {"auth_plaintext_type", listener_with("auth_plaintext = 1"),
     "listen[0].auth_plaintext: expected a boolean, got an integer"},
    {"smtps_without_cert",
     "[auth]\nusers_file = \"u\"\n[[listen]]\naddress = \"127.0.0.1:465\"\nrole = \"smtps\"\n",
     "listen[0].tls_cert: role \"smtps\" needs tls_cert and tls_key"},
    {"submission_without_auth", "[[listen]]\naddress = \"127.0.0.1:587\"\nrole = \"submission\"\n",
     "listen[0].role: role \"submission\" requires AUTH: set [auth] users_file"},
    {"auth_unknown", "[auth]\nuser_file = \"x\"\n" + listener_with(""),
     "auth.user_file: unknown key"},
    {"auth_failures_zero", "[auth]\nmax_failures = 0\n" + listener_with(""),
     "auth.max_failures: must be between 1 and 10000, got 0"},
    {"delivery_tls_value", "[delivery]\ntls = \"always\"\n" + listener_with(""),
     "delivery.tls: expected \"none\", \"opportunistic\" or \"required\", got \"always\""},
    {"domain_table", "domain = 5\n" + listener_with(""),
     "domain: expected an array of tables ([[domain]]), got an integer"},
    {"domain_name_missing", "[[domain]]\nrate = 1\n" + listener_with(""),
     "domain[0].name: missing (the destination domain)"},
    {"domain_name_bad", "[[domain]]\nname = \"a_b\"\n" + listener_with(""),
     "domain[0].name: expected a domain name, got \"a_b\""},
    {"domain_duplicate",
     "[[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"A.test.\"\n" + listener_with(""),
     "domain[1].name: \"A.test.\" is already configured by domain[0].name"},
    {"domain_rate_zero", "[[domain]]\nname = \"a.test\"\nrate = 0\n" + listener_with(""),
     "domain[0].rate: expected messages per second, a number > 0"},
    {"domain_tls_value", "[[domain]]\nname = \"a.test\"\ntls = \"yes\"\n" + listener_with(""),
     "domain[0].tls: expected \"none\", \"opportunistic\" or \"required\", got \"yes\""},
    {"domain_unknown", "[[domain]]\nname = \"a.test\"\nmx = \"x\"\n" + listener_with(""),
     "domain[0].mx: unknown key"},
    // [[dkim]]
    {"dkim_domain_missing", "[[dkim]]\nselector = \"s\"\nkey_file = \"k\"\n" + listener_with(""),
     "dkim[0].domain: missing (the signing domain, d=)"},
    {"dkim_selector_missing",
     "[[dkim]]\ndomain = \"a.test\"\nkey_file = \"k\"\n" + listener_with(""),
     "dkim[0].selector: missing (the selector, s=)"},
    {"dkim_key_missing", "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\n" + listener_with(""),
     "dkim[0].key_file: missing (the private key file)"},
    {"dkim_selector_bad",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"a b\"\nkey_file = \"k\"\n" + listener_with(""),
     "dkim[0].selector: expected a selector (DNS labels), got \"a b\""},
    {"dkim_canon_bad",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "canonicalization = \"relaxed/loose\"\n" +
         listener_with(""),
     "dkim[0].canonicalization: expected \"relaxed/relaxed\""},
    {"dkim_headers_without_from",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "headers = [\"Subject\", \"To\"]\n" +
         listener_with(""),
     "dkim[0].headers: must include From"},
    {"dkim_headers_bad_name",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "headers = [\"From\", \"Sub ject\"]\n" +
         listener_with(""),
     "dkim[0].headers[1]: expected a header field name, got \"Sub ject\""},
    {"dkim_headers_duplicate",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "headers = [\"From\", \"from\"]\n" +
         listener_with(""),
     "dkim[0].headers[1]: \"from\" duplicates dkim[0].headers[0]"},
    {"dkim_expire_bad",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "expire_after = \"soon\"\n" +
         listener_with(""),
     "dkim[0].expire_after: expected a duration"},
    {"dkim_duplicate_selector",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "[[dkim]]\ndomain = \"A.test\"\nselector = \"S\"\nkey_file = \"k2\"\n" +
         listener_with(""),
     "dkim[1].selector: selector \"S\" of a.test is already configured by dkim[0].selector"},
    {"dkim_unknown",
     "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\n"
     "algorithm = \"rsa\"\n" +
         listener_with(""),
     "dkim[0].algorithm: unknown key"},
};

INSTANTIATE_TEST_SUITE_P(all, config_errors, ::testing::ValuesIn(bad_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(config, error_names_line_and_column) {
    const auto r = parse(
        "[[listen]]\naddress = \"127.0.0.1:25\"\nrole = \"relay\"\n[server]\n"
        "shards = \"x\"\n");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error, "test.toml:5:10: server.shards: expected an integer, got a string");
}

TEST(config, reports_every_error_one_per_line) {
    const auto r = parse(server("shards = \"x\"\nmax_errors = 0\nbogus = 1"));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error.find("server.shards:"), std::string::npos) << r.error;
    EXPECT_NE(r.error.find("server.max_errors:"), std::string::npos) << r.error;
    EXPECT_NE(r.error.find("server.bogus: unknown key"), std::string::npos) << r.error;
    EXPECT_EQ(std::count(r.error.begin(), r.error.end(), '\n'), 2) << r.error;
}

// --- successful parses -----------------------------------------------------------------

TEST(config, defaults_applied) {
    const auto r = parse(one_listener);
    ASSERT_TRUE(r.ok()) << r.error;
    const settings& c = *r;
    EXPECT_FALSE(c.server.hostname.empty());
    EXPECT_TRUE(canonical_domain(c.server.hostname).has_value()) << c.server.hostname;
    EXPECT_EQ(c.server.shards, 0u);
    EXPECT_EQ(c.server.spool_dir, "/var/spool/ringmail");
    EXPECT_EQ(c.server.max_message_size, 52428800u);
    EXPECT_EQ(c.server.max_recipients, 1000u);
    EXPECT_EQ(c.server.max_line_length, 1000u);
    EXPECT_EQ(c.server.max_errors, 10u);
    EXPECT_EQ(c.server.max_connections, 10000u);
    EXPECT_EQ(c.server.command_timeout, 5min);
    EXPECT_EQ(c.server.data_timeout, 3min);
    EXPECT_EQ(c.server.log_level, core::log::level::info);
    EXPECT_EQ(c.server.drain_grace, 5s);
    EXPECT_EQ(c.server.shutdown_timeout, 30s);

    ASSERT_EQ(c.listen.size(), 1u);
    EXPECT_EQ(c.listen[0].address, "127.0.0.1:2525");
    EXPECT_EQ(c.listen[0].role, listener_role::relay);
    EXPECT_FALSE(c.listen[0].proxy_protocol);
    EXPECT_EQ(c.listen[0].trusted_proxies.size(), 2u);

    ASSERT_EQ(c.relay.allow_networks.size(), 2u);
    EXPECT_EQ(to_string(c.relay.allow_networks.ranges()[0]), "127.0.0.0/8");
    EXPECT_EQ(to_string(c.relay.allow_networks.ranges()[1]), "::1/128");
    EXPECT_TRUE(c.relay.domains.empty());

    EXPECT_FALSE(c.delivery.smarthost.has_value());
    EXPECT_EQ(c.delivery.mx_port, 25);
    const std::vector<std::chrono::seconds> schedule{1min, 5min, 15min, 30min, 1h, 2h, 4h};
    EXPECT_EQ(c.delivery.retry_schedule, schedule);
    EXPECT_EQ(c.delivery.max_lifetime, 5 * 24h);
    EXPECT_EQ(c.delivery.connect_timeout, 30s);
    EXPECT_EQ(c.delivery.max_connections, 32u);
    EXPECT_EQ(c.delivery.max_messages_per_connection, 1000u);
    EXPECT_EQ(c.delivery.idle_timeout, 60s);
    EXPECT_EQ(c.delivery.helo_name, c.server.hostname);

    EXPECT_TRUE(c.dns.servers.empty());
    EXPECT_EQ(c.admin.address, "127.0.0.1:8025");
    EXPECT_TRUE(c.admin.enabled());
    EXPECT_FALSE(c.cluster.enabled());
}

TEST(config, cluster_redis_is_canonicalised) {
    auto r = parse_config(section("cluster", "redis = \"127.0.0.1:6379\""), "t");
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->cluster.redis, "127.0.0.1:6379");
    EXPECT_TRUE(r->cluster.enabled());
    r = parse_config(section("cluster", "redis = \"[0:0::1]:6379\""), "t");
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->cluster.redis, "[::1]:6379");
    r = parse_config(section("cluster", "redis = \"\""), "t");
    ASSERT_TRUE(r) << r.error;
    EXPECT_FALSE(r->cluster.enabled());
}

TEST(config, values_read_and_canonicalised) {
    const auto r = parse(R"(
[server]
hostname = "MX1.Example.TEST."
shards = 3
spool_dir = "/srv/spool"
max_message_size = 1000000
max_recipients = 50
max_line_length = 2000
max_errors = 3
max_connections = 7
command_timeout = 90
data_timeout = "2h"
log_level = "debug"

[[listen]]
address = "[0:0::1]:25"
role = "smtps"
proxy_protocol = true
trusted_proxies = ["10.1.0.0/16"]
tls_cert = ["/etc/a.pem", "/etc/b.pem"]
tls_key = ["/etc/a.key", "/etc/b.key"]

[[listen]]
address = "192.0.2.10:587"
role = "submission"
tls_cert = "/etc/c.pem"
tls_key = "/etc/c.key"
auth_plaintext = true

[auth]
users_file = "/etc/ringmail/users"
max_failures = 3
failure_window = "10m"
verify_threads = 2

[[domain]]
name = "Big.Example."
max_connections = 50
max_messages_per_connection = 100
connect_timeout = "5s"
rate = 12.5
tls = "required"
tls_verify = true

[[domain]]
name = "small.example"
rate = 2

[relay]
allow_networks = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
domains = ["Example.COM.", "sub.example.org"]

[delivery]
smarthost = "[2001:DB8::25]:2525"
mx_port = 2526
retry_schedule = ["30s", 600]
max_lifetime = "2d"
connect_timeout = "10s"
max_connections = 4
max_messages_per_connection = 9
idle_timeout = "5m"
tls = "none"
tls_verify = true
tls_ca_file = "/etc/ca.pem"
log_file = "/var/log/ringmail/delivery.json"

[dns]
servers = ["192.0.2.53:53", "[2001:db8::53]:5353"]

[admin]
address = ""
)");
    ASSERT_TRUE(r.ok()) << r.error;
    const settings& c = *r;
    EXPECT_EQ(c.server.hostname, "mx1.example.test");
    EXPECT_EQ(c.server.shards, 3u);
    EXPECT_EQ(effective_shards(c.server), 3u);
    EXPECT_EQ(c.server.spool_dir, "/srv/spool");
    EXPECT_EQ(c.server.max_message_size, 1000000u);
    EXPECT_EQ(c.server.max_recipients, 50u);
    EXPECT_EQ(c.server.max_line_length, 2000u);
    EXPECT_EQ(c.server.max_errors, 3u);
    EXPECT_EQ(c.server.max_connections, 7u);
    EXPECT_EQ(c.server.command_timeout, 90s);
    EXPECT_EQ(c.server.data_timeout, 2h);
    EXPECT_EQ(c.server.log_level, core::log::level::debug);

    ASSERT_EQ(c.listen.size(), 2u);
    EXPECT_EQ(c.listen[0].address, "[::1]:25");
    EXPECT_EQ(c.listen[0].role, listener_role::smtps);
    EXPECT_TRUE(c.listen[0].proxy_protocol);
    ASSERT_EQ(c.listen[0].trusted_proxies.size(), 1u);
    EXPECT_EQ(to_string(c.listen[0].trusted_proxies.ranges()[0]), "10.1.0.0/16");
    EXPECT_EQ(c.listen[1].address, "192.0.2.10:587");
    EXPECT_EQ(c.listen[1].role, listener_role::submission);
    EXPECT_EQ(role_name(c.listen[1].role), "submission");
    EXPECT_EQ(
        c.listen[0].tls_certificates,
        (std::vector<tls_certificate>{{"/etc/a.pem", "/etc/a.key"}, {"/etc/b.pem", "/etc/b.key"}}));
    EXPECT_FALSE(c.listen[0].auth_plaintext);
    EXPECT_EQ(c.listen[1].tls_certificates,
              (std::vector<tls_certificate>{{"/etc/c.pem", "/etc/c.key"}}));
    EXPECT_TRUE(c.listen[1].auth_plaintext);

    EXPECT_TRUE(c.auth.enabled());
    EXPECT_EQ(c.auth.users_file, "/etc/ringmail/users");
    EXPECT_EQ(c.auth.max_failures, 3u);
    EXPECT_EQ(c.auth.failure_window, 10min);
    EXPECT_EQ(c.auth.verify_threads, 2u);

    ASSERT_EQ(c.domains.size(), 2u);
    EXPECT_EQ(c.domains[0].name, "big.example");
    EXPECT_EQ(c.domains[0].max_connections, 50u);
    EXPECT_EQ(c.domains[0].max_messages_per_connection, 100u);
    EXPECT_EQ(c.domains[0].connect_timeout, 5s);
    EXPECT_EQ(c.domains[0].rate, 12.5);
    EXPECT_EQ(c.domains[0].tls, tls_policy::required);
    EXPECT_EQ(c.domains[0].tls_verify, true);
    EXPECT_EQ(c.domains[1].name, "small.example");
    EXPECT_EQ(c.domains[1].rate, 2.0);
    EXPECT_FALSE(c.domains[1].max_connections.has_value());
    EXPECT_FALSE(c.domains[1].tls.has_value());
    EXPECT_FALSE(c.domains[1].tls_verify.has_value());

    ASSERT_EQ(c.relay.allow_networks.size(), 3u);
    EXPECT_EQ(to_string(c.relay.allow_networks.ranges()[2]), "198.51.100.7/32");
    EXPECT_EQ(c.relay.domains, (std::vector<std::string>{"example.com", "sub.example.org"}));

    ASSERT_TRUE(c.delivery.smarthost.has_value());
    EXPECT_EQ(*c.delivery.smarthost, (host_port{"2001:db8::25", 2525}));
    EXPECT_EQ(c.delivery.mx_port, 2526);
    EXPECT_EQ(c.delivery.retry_schedule, (std::vector<std::chrono::seconds>{30s, 10min}));
    EXPECT_EQ(c.delivery.max_lifetime, 48h);
    EXPECT_EQ(c.delivery.connect_timeout, 10s);
    EXPECT_EQ(c.delivery.max_connections, 4u);
    EXPECT_EQ(c.delivery.max_messages_per_connection, 9u);
    EXPECT_EQ(c.delivery.idle_timeout, 5min);
    EXPECT_EQ(c.delivery.helo_name, "mx1.example.test");  // follows server.hostname
    EXPECT_EQ(c.delivery.tls, tls_policy::none);
    EXPECT_TRUE(c.delivery.tls_verify);
    EXPECT_EQ(c.delivery.tls_ca_file, "/etc/ca.pem");
    EXPECT_EQ(c.delivery.log_file, "/var/log/ringmail/delivery.json");

    EXPECT_EQ(c.dns.servers, (std::vector<std::string>{"192.0.2.53:53", "[2001:db8::53]:5353"}));
    EXPECT_FALSE(c.admin.enabled());
}

TEST(config, dkim_tables) {
    const auto r = parse(
        "[[dkim]]\ndomain = \"Example.COM\"\nselector = \"S2026\"\nkey_file = \"/k.pem\"\n"
        "[[dkim]]\ndomain = \"example.com\"\nselector = \"ed\"\nkey_file = \"/e.pem\"\n"
        "headers = [\"From\", \"Subject\", \"List-Unsubscribe\"]\nover_sign = false\n"
        "canonicalization = \"simple/relaxed\"\nexpire_after = \"30d\"\n" +
        with_listener(""));
    ASSERT_TRUE(r.ok()) << r.error;
    ASSERT_EQ(r->dkim.size(), 2u);
    const auto& a = r->dkim[0];
    EXPECT_EQ(a.domain, "example.com");
    EXPECT_EQ(a.selector, "s2026");
    EXPECT_EQ(a.key_file, "/k.pem");
    EXPECT_TRUE(a.headers.empty());
    EXPECT_TRUE(a.over_sign);
    EXPECT_EQ(a.header_canon, dkim_canon::relaxed);
    EXPECT_EQ(a.body_canon, dkim_canon::relaxed);
    EXPECT_EQ(a.expire_after, 0s);
    const auto& b = r->dkim[1];
    EXPECT_EQ(b.headers, (std::vector<std::string>{"From", "Subject", "List-Unsubscribe"}));
    EXPECT_FALSE(b.over_sign);
    EXPECT_EQ(b.header_canon, dkim_canon::simple);
    EXPECT_EQ(b.body_canon, dkim_canon::relaxed);
    EXPECT_EQ(b.expire_after, 30 * 86400s);
}

TEST(config, smarthost_forms) {
    struct {
        const char* text;
        host_port want;
    } cases[] = {
        {"mail.example.com:25", {"mail.example.com", 25}},
        {"Mail.Example.COM:2525", {"mail.example.com", 2525}},
        {"192.0.2.1:587", {"192.0.2.1", 587}},
        {"[::1]:25", {"::1", 25}},
        {"localhost:10025", {"localhost", 10025}},
    };
    for (const auto& c : cases) {
        const auto r = parse(section("delivery", std::string("smarthost = \"") + c.text + "\""));
        ASSERT_TRUE(r.ok()) << c.text << ": " << r.error;
        ASSERT_TRUE(r->delivery.smarthost.has_value()) << c.text;
        EXPECT_EQ(*r->delivery.smarthost, c.want) << c.text;
    }
}

TEST(config, drain_grace_may_be_zero) {
    for (const char* zero : {"\"0s\"", "0", "\"0\""}) {
        auto r = parse_config(
            server(std::string("drain_grace = ") + zero + "\nshutdown_timeout = \"2s\""),
            "test.toml");
        ASSERT_TRUE(r) << zero << ": " << r.error;
        EXPECT_EQ(r->server.drain_grace, 0s);
        EXPECT_EQ(r->server.shutdown_timeout, 2s);
    }
    auto r = parse_config(server("drain_grace = \"1m\"\nshutdown_timeout = \"2m\""), "t");
    ASSERT_TRUE(r) << r.error;
    EXPECT_EQ(r->server.drain_grace, 60s);
}

TEST(config, helo_name_overrides_hostname) {
    const auto r = parse(with_listener(
        "[server]\nhostname = \"a.test\"\n[delivery]\nhelo_name = \"out.example.test\"\n"));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r->server.hostname, "a.test");
    EXPECT_EQ(r->delivery.helo_name, "out.example.test");
}

TEST(config, effective_shards_zero_means_online_cpus) {
    server_config s;
    s.shards = 0;
    EXPECT_EQ(effective_shards(s), static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN)));
}

TEST(config, canonical_helpers) {
    EXPECT_EQ(canonical_ip_port("127.0.0.1:25"), "127.0.0.1:25");
    EXPECT_EQ(canonical_ip_port("[2001:DB8:0::1]:65535"), "[2001:db8::1]:65535");
    EXPECT_EQ(canonical_ip_port("[::ffff:127.0.0.1]:25"), "[::ffff:127.0.0.1]:25");
    EXPECT_FALSE(canonical_ip_port(""));
    EXPECT_FALSE(canonical_ip_port(":25"));
    EXPECT_FALSE(canonical_ip_port("[]:25"));
    EXPECT_FALSE(canonical_ip_port("127.0.0.1:"));
    EXPECT_FALSE(canonical_ip_port("127.0.0.1:+25"));
    EXPECT_FALSE(canonical_ip_port("127.1:25"));
    EXPECT_FALSE(canonical_ip_port("[::1]:25:"));

    EXPECT_EQ(canonical_domain("Example.COM."), "example.com");
    EXPECT_EQ(canonical_domain("localhost"), "localhost");
    EXPECT_EQ(canonical_domain("a-b.c9.test"), "a-b.c9.test");
    EXPECT_EQ(canonical_domain(std::string(63, 'a') + ".test"), std::string(63, 'a') + ".test");
    EXPECT_FALSE(canonical_domain(""));
    EXPECT_FALSE(canonical_domain("."));
    EXPECT_FALSE(canonical_domain("a..b"));
    EXPECT_FALSE(canonical_domain(".a"));
    EXPECT_FALSE(canonical_domain("a-.b"));
    EXPECT_FALSE(canonical_domain("a.-b"));
    EXPECT_FALSE(canonical_domain("a_b.test"));
    EXPECT_FALSE(canonical_domain("10.0.0.1"));
    EXPECT_FALSE(canonical_domain("a.test.."));
    std::string long_name;
    for (int i = 0; i < 4; ++i)
        long_name += std::string(63, 'a') + ".";
    long_name.pop_back();  // 255 characters
    EXPECT_FALSE(canonical_domain(long_name));
}

// --- the two configurations shipped with ringmail ---------------------------------------

TEST(config, embedded_default_parses) {
    const auto r = parse_config(default_config_toml(), "<built-in>");
    ASSERT_TRUE(r.ok()) << r.error;
    ASSERT_EQ(r->listen.size(), 1u);
    EXPECT_EQ(r->listen[0].address, "127.0.0.1:2525");
    EXPECT_EQ(r->listen[0].role, listener_role::relay);
    EXPECT_EQ(r->server.spool_dir, "./var/spool");
    EXPECT_EQ(r->server.shards, 0u);
    EXPECT_EQ(r->admin.address, "127.0.0.1:8025");
    EXPECT_FALSE(r->delivery.smarthost.has_value());
}

std::filesystem::path source_root() {
    const char* root = std::getenv("RINGMAIL_SOURCE_ROOT");
    return root != nullptr ? std::filesystem::path(root) : std::filesystem::path();
}

TEST(config, packaging_example_parses) {
    const auto root = source_root();
    ASSERT_FALSE(root.empty()) << "RINGMAIL_SOURCE_ROOT not set (run through meson test)";
    const auto r = load_config_file(root / "packaging" / "ringmail.toml");
    ASSERT_TRUE(r.ok()) << r.error;
    // The example documents the defaults: apart from the names it sets, it must equal them.
    const auto d = parse(R"(
[server]
hostname = "relay.example.test"
[[listen]]
address = "127.0.0.1:2525"
role = "relay"
)");
    ASSERT_TRUE(d.ok()) << d.error;
    const settings& a = *r;
    const settings& b = *d;
    EXPECT_EQ(a.server.hostname, b.server.hostname);
    EXPECT_EQ(a.server.shards, b.server.shards);
    EXPECT_EQ(a.server.spool_dir, b.server.spool_dir);
    EXPECT_EQ(a.server.max_message_size, b.server.max_message_size);
    EXPECT_EQ(a.server.max_recipients, b.server.max_recipients);
    EXPECT_EQ(a.server.max_line_length, b.server.max_line_length);
    EXPECT_EQ(a.server.max_errors, b.server.max_errors);
    EXPECT_EQ(a.server.max_connections, b.server.max_connections);
    EXPECT_EQ(a.server.command_timeout, b.server.command_timeout);
    EXPECT_EQ(a.server.data_timeout, b.server.data_timeout);
    EXPECT_EQ(a.server.log_level, b.server.log_level);
    EXPECT_EQ(a.server.io_uring_defer_taskrun, b.server.io_uring_defer_taskrun);
    EXPECT_EQ(a.server.multishot_accept, b.server.multishot_accept);
    EXPECT_EQ(a.server.drain_grace, b.server.drain_grace);
    EXPECT_EQ(a.server.shutdown_timeout, b.server.shutdown_timeout);
    ASSERT_EQ(a.listen.size(), b.listen.size());
    for (std::size_t i = 0; i < a.listen.size(); ++i) {
        EXPECT_EQ(a.listen[i].address, b.listen[i].address);
        EXPECT_EQ(a.listen[i].role, b.listen[i].role);
        EXPECT_EQ(a.listen[i].proxy_protocol, b.listen[i].proxy_protocol);
        EXPECT_EQ(a.listen[i].trusted_proxies, b.listen[i].trusted_proxies);
    }
    EXPECT_EQ(a.relay.allow_networks, b.relay.allow_networks);
    EXPECT_EQ(a.relay.domains, b.relay.domains);
    EXPECT_EQ(a.delivery.smarthost, b.delivery.smarthost);
    EXPECT_EQ(a.delivery.mx_port, b.delivery.mx_port);
    EXPECT_EQ(a.delivery.retry_schedule, b.delivery.retry_schedule);
    EXPECT_EQ(a.delivery.max_lifetime, b.delivery.max_lifetime);
    EXPECT_EQ(a.delivery.connect_timeout, b.delivery.connect_timeout);
    EXPECT_EQ(a.delivery.max_connections, b.delivery.max_connections);
    EXPECT_EQ(a.delivery.max_messages_per_connection, b.delivery.max_messages_per_connection);
    EXPECT_EQ(a.delivery.idle_timeout, b.delivery.idle_timeout);
    EXPECT_EQ(a.delivery.helo_name, b.delivery.helo_name);
    EXPECT_EQ(a.dns.servers, b.dns.servers);
    EXPECT_EQ(a.admin.address, b.admin.address);
}

TEST(config, file_errors_are_clear) {
    const auto missing = load_config_file("/nonexistent/ringmail.toml");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error, "/nonexistent/ringmail.toml: cannot open: No such file or directory");

    const auto dir = load_config_file("/");
    ASSERT_FALSE(dir.ok());
    EXPECT_EQ(dir.error, "/: cannot read: Is a directory");
}

TEST(config, file_errors_carry_the_path) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("ringmail-config-test-" + std::to_string(::getpid()) + ".toml");
    {
        FILE* f = std::fopen(path.c_str(), "w");
        ASSERT_NE(f, nullptr);
        std::fputs("[[listen]]\naddress = \"foo\"\nrole = \"relay\"\n", f);
        std::fclose(f);
    }
    const auto r = load_config_file(path);
    std::filesystem::remove(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error,
              path.string() + ":2:11: listen[0].address: expected \"ip:port\", got \"foo\"");
}

}  // namespace
}  // namespace ringmail::config
