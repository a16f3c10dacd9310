// The daemon's configuration: TOML text in, a plain struct out (keys and meanings: the contract
// in DESIGN.md). Every key is declared once, in the schema (schema()): its table, name, type,
// default and meaning; the reader applies it, --check-config is the reader, and a unit test
// holds packaging/ringmail.toml to it.
//
// Parsed once at start-up on the main thread, then read-only: shards may share one `settings`.
// Parsing is strict. Unknown tables and keys, wrong types and bad values are all errors, and
// every message names the file, line and key ("ringmail.toml:7:11: listen[1].address: expected
// \"ip:port\", got \"foo\""); all errors of a file are reported at once, one per line.
#pragma once

#include "ringmail/core/cidr.h"
#include "ringmail/core/log.h"
#include "ringmail/core/socket.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::config {

using core::cidr_set;
using core::host_port;

enum class listener_role {
    relay,       // port 25 style: anyone may send to relay.domains, trusted networks anywhere
    submission,  // AUTH required before MAIL
    smtps,       // implicit TLS, then as submission
};
std::string_view role_name(listener_role r) noexcept;

struct server_config {
    std::string hostname;  // default: gethostname()
    unsigned shards = 0;   // 0 = one per online CPU (see effective_shards)
    std::string spool_dir = "/var/spool/ringmail";
    std::uint64_t max_message_size = 52428800;
    std::uint32_t max_recipients = 1000;
    std::uint32_t max_line_length = 1000;
    std::uint32_t max_errors = 10;
    std::uint32_t max_connections = 10000;         // per shard
    std::uint64_t max_unwritten_bytes = 33554432;  // per shard: received, not yet on disk
    std::chrono::seconds command_timeout{5 * 60};
    std::chrono::seconds data_timeout{3 * 60};
    core::log::level log_level = core::log::level::info;
    // Kernel feature switches (LIBRARY-NOTES: a kernel bug combining DEFER_TASKRUN with
    // multishot accept was reported on 6.6-6.8): turn either off on an affected kernel.
    bool io_uring_defer_taskrun = true;
    bool multishot_accept = true;
    // SIGTERM/SIGINT: readiness turns 503 at once, the listeners keep accepting for
    // drain_grace (a balancer still routes connections for a few seconds), then close; the
    // process exits within shutdown_timeout of the signal.
    std::chrono::seconds drain_grace{5};
    std::chrono::seconds shutdown_timeout{30};
    // Started as root: the user to become once the listeners are bound and the spools open
    // (daemon/privileges.h); empty = no switch.
    std::string user;
};

// One certificate chain and its private key (PEM files); read when the daemon starts and on
// SIGHUP, not by the parser.
struct tls_certificate {
    std::string cert_file;
    std::string key_file;
    friend bool operator==(const tls_certificate&, const tls_certificate&) = default;
};

struct listener_config {
    // Canonical "ip:port" / "[v6]:port" (inet_ntop form), validated; core::parse_endpoint turns
    // it into a socket address.
    std::string address;
    listener_role role = listener_role::relay;
    bool proxy_protocol = false;
    // Sources allowed to send a PROXY header; only consulted when proxy_protocol is on.
    cidr_set trusted_proxies;
    // tls_cert / tls_key: one file each, or arrays of the same length (several certificates,
    // chosen by SNI; the first is the default). STARTTLS is offered when present; role smtps
    // requires them.
    std::vector<tls_certificate> tls_certificates;
    // Offer AUTH without TLS (tests only: passwords would cross the network in clear).
    bool auth_plaintext = false;
};

struct relay_config {
    cidr_set allow_networks;           // default 127.0.0.0/8, ::1/128
    std::vector<std::string> domains;  // lower case, no trailing dot
};

// Outbound TLS policy (issue "TLS and authentication"): none = never STARTTLS, opportunistic =
// STARTTLS when offered (failures fall back to plaintext only before the handshake starts),
// required = no TLS, no delivery (deferred).
enum class tls_policy { none, opportunistic, required };
std::string_view tls_policy_name(tls_policy p) noexcept;

struct delivery_config {
    std::optional<host_port> smarthost;  // empty = MX routing
    std::uint16_t mx_port = 25;
    std::vector<std::chrono::seconds> retry_schedule;  // non-empty; the last interval repeats
    std::chrono::seconds max_lifetime{5 * 86400};
    std::chrono::seconds delay_warning{4 * 3600};  // 0: no delay notices
    std::chrono::seconds connect_timeout{30};
    std::chrono::seconds data_timeout{600};  // reply to the final dot; then the jobs defer
    std::uint32_t max_connections = 32;      // per shard: to the smarthost, or all MX connections
    // MX routing: connections to one destination (routing domain) over all shards, unless
    // its [[domain]] says otherwise.
    std::uint32_t destination_max_connections = 10;
    std::uint32_t max_messages_per_connection = 1000;
    std::chrono::seconds idle_timeout{60};
    std::string helo_name;                       // default: server.hostname
    tls_policy tls = tls_policy::opportunistic;  // outbound default; [[domain]] tls overrides
    bool tls_verify = false;
    std::string tls_ca_file;  // extra trusted CAs (PEM) besides the system store
    std::string log_file;     // JSON lines delivery log; empty = none; reopened on SIGHUP
    // Bounce classification rules, KumoMTA's format, first file first; never empty.
    std::vector<std::string> bounce_rules_files;
    // Issue 16 (shaping): the [[egress_pool]] used when a [[provider]] names none; "" = the
    // kernel's choice of source address (no pool).
    std::string egress_pool;
    // [[provider]] and [[shaping_rule]] tables shipped with ringmail, merged under the file's
    // own (a provider of the main file replaces the shipped one of the same name; the main
    // file's rules come first). "" = none; a missing file at the default path is skipped.
    std::string shaping_file = "/usr/share/ringmail/shaping.toml";
};

// A rate as written: "N/s", "N/min", "N/h" (N > 0, decimals allowed).
struct rate_config {
    double per_second = 0.0;
    std::string text;  // as written, for logs
    friend bool operator==(const rate_config& a, const rate_config& b) {
        return a.per_second == b.per_second;
    }
};
// nullopt when malformed.
std::optional<rate_config> parse_rate(std::string_view text);

// [[egress_source]]: one source address outbound connections bind before connecting.
struct egress_source_config {
    std::string name;
    std::string address;                // canonical IPv4 or IPv6 literal (no port)
    std::string ehlo_name;              // default: delivery.helo_name
    std::uint32_t max_connections = 0;  // open from this source, all shards; 0 = no limit
};

struct egress_pool_member {
    std::string source;  // an [[egress_source]] name
    std::uint32_t weight = 1;
};
// [[egress_pool]]: sources used by smooth weighted round-robin, per connection.
struct egress_pool_config {
    std::string name;
    std::vector<egress_pool_member> sources;
};

// [[provider]]: destinations that share limits (per egress source, over all shards).
struct provider_config {
    std::string name;
    std::vector<std::string> mx_suffix;      // lower case; every MX host must match one
    std::vector<std::string> domain_suffix;  // lower case; the routing domain matches one
    std::optional<std::uint32_t> max_connections;
    std::optional<std::uint32_t> max_messages_per_connection;
    std::optional<rate_config> max_message_rate;
    std::optional<std::uint32_t> max_message_burst;  // default 1
    std::optional<rate_config> max_connection_rate;
    std::optional<tls_policy> tls;
    std::string egress_pool;  // pin; "" = delivery.egress_pool
    std::string origin;       // "file" or the shaping file's path: for messages
};

enum class shaping_action { suspend, set, bounce };
std::string_view shaping_action_name(shaping_action a) noexcept;

// [[shaping_rule]]: what a matching reply does.
struct shaping_rule_config {
    std::string provider;  // a [[provider]] name, or "*" (any destination)
    std::string domain;    // or one routing domain; exactly one of provider/domain is set
    std::string match;     // RE2 regex on "code enhanced-code text"
    shaping_action action = shaping_action::suspend;
    std::chrono::seconds duration{0};              // suspend and set
    std::uint32_t trigger_count = 1;               // matches ...
    std::chrono::seconds trigger_window{0};        // ... within this window; 0 = immediate
    std::optional<rate_config> max_message_rate;   // set
    std::optional<std::uint32_t> max_connections;  // set
    std::string where;  // "shaping_rule[3]" or "FILE: shaping_rule[3]": for messages
};

// Where the Debian package (and meson install with prefix /usr) puts packaging/bounces.toml:
// the default of delivery.bounce_rules_file.
inline constexpr std::string_view shipped_bounce_rules_path = "/usr/share/ringmail/bounces.toml";

// [[domain]]: per-destination overrides of the [delivery] defaults (exact name match).
struct domain_config {
    std::string name;  // canonical lower-case domain
    std::optional<std::uint32_t> max_connections;
    std::optional<std::uint32_t> max_messages_per_connection;
    std::optional<std::chrono::seconds> connect_timeout;
    std::optional<double> rate;   // messages per second (token bucket)
    std::optional<double> burst;  // bucket size (messages); default max(1, rate)
    std::optional<tls_policy> tls;
    std::optional<bool> tls_verify;  // system CA store (+ delivery.tls_ca_file), host name check
    std::optional<host_port> route;  // send there instead of the domain's MX hosts
};

// [[dkim]]: one DKIM signature made for mail we send whose From: domain is `domain` or a
// subdomain of it. The key file is read when the daemon starts, by --check-config and on
// SIGHUP, not by the parser.
enum class dkim_canon { simple, relaxed };
struct dkim_config {
    std::string domain;                // d=, canonical lower case
    std::string selector;              // s=, canonical lower case
    std::string key_file;              // PEM private key: RSA or Ed25519 (PKCS#8)
    std::vector<std::string> headers;  // empty = the default list (dkim::default_headers)
    bool over_sign = true;
    dkim_canon header_canon = dkim_canon::relaxed;
    dkim_canon body_canon = dkim_canon::relaxed;
    std::chrono::seconds expire_after{0};  // 0 = no x=
};

struct auth_config {
    std::string users_file;          // "user:hash" lines; empty = no AUTH anywhere
    std::uint32_t max_failures = 5;  // per client IP within failure_window (all shards), then 421
    std::chrono::seconds failure_window{5 * 60};
    std::uint32_t verify_threads = 1;  // slow hashes are verified off the shard threads
    bool enabled() const noexcept { return !users_file.empty(); }
};

struct dns_config {
    std::vector<std::string> servers;  // canonical "ip:port"; empty = /etc/resolv.conf
};

struct admin_config {
    std::string address = "127.0.0.1:8025";  // canonical "ip:port"; empty = disabled
    std::string token_file;  // one bearer token; "" = no authentication (loopback only)
    bool enabled() const noexcept { return !address.empty(); }
    // The address is 127.0.0.0/8 or [::1].
    bool loopback() const noexcept;
};

// [cluster]: limits and suspensions shared by every node through one Redis.
struct cluster_config {
    std::string redis;  // canonical "ip:port"; empty = this node alone (local limits)
    bool enabled() const noexcept { return !redis.empty(); }
};

struct settings {
    server_config server;
    std::vector<listener_config> listen;  // at least one, addresses distinct
    relay_config relay;
    delivery_config delivery;
    dns_config dns;
    admin_config admin;
    auth_config auth;
    cluster_config cluster;
    std::vector<domain_config> domains;  // [[domain]], names distinct
    std::vector<dkim_config> dkim;       // [[dkim]], (domain, selector) pairs distinct
    std::vector<egress_source_config> egress_sources;  // [[egress_source]], names distinct
    std::vector<egress_pool_config> egress_pools;      // [[egress_pool]], names distinct
    std::vector<provider_config> providers;          // [[provider]] (file's, then the shipped ones)
    std::vector<shaping_rule_config> shaping_rules;  // [[shaping_rule]], file's first
};

// The number of shards to start: server.shards, or the online CPUs when it is 0.
unsigned effective_shards(const server_config& s) noexcept;

struct config_error {
    std::string message;  // "source:line:col: key: what is wrong"
};

// Either a configuration or every error found in the text (one per line in `error`).
struct parsed_config {
    std::optional<settings> cfg;
    std::string error;

    bool ok() const noexcept { return cfg.has_value(); }
    explicit operator bool() const noexcept { return ok(); }
    const settings& operator*() const { return *cfg; }
    const settings* operator->() const { return &*cfg; }
};

parsed_config parse_config(std::string_view toml_text, std::string_view source_name);
// Unreadable files are errors naming the path and the reason.
parsed_config load_config_file(const std::filesystem::path& path);

// One key of the configuration, as the schema declares it.
struct key_spec {
    std::string_view table;  // "server", "listen" ([[listen]], one per element), "domain", ...
    std::string_view name;
    std::string_view type;           // for people: "integer", "duration", "\"ip:port\"", ...
    std::string_view default_value;  // TOML text; "" when required or computed (see doc)
    std::string_view doc;            // one line
    bool required = false;
};
// Every key ringmail reads, in the order of packaging/ringmail.toml.
std::span<const key_spec> schema();

// The configuration the daemon runs with when no --config is given: listen on 127.0.0.1:2525
// (relay), spool in ./var/spool, admin on 127.0.0.1:8025, one shard per CPU, MX routing.
std::string_view default_config_toml() noexcept;

// Syntax checks shared with the other parts (IP literals only, via inet_pton). On success they
// return the canonical form: "127.0.0.1:25", "[::1]:25". nullopt when malformed; port 0 is
// malformed.
std::optional<std::string> canonical_ip_port(std::string_view text);
// A DNS name (letters, digits, hyphens; labels 1..63, total <= 253, one trailing dot allowed),
// returned lower-cased without the trailing dot; nullopt when malformed or an IPv4 literal.
std::optional<std::string> canonical_domain(std::string_view text);

}  // namespace ringmail::config
