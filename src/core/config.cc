#include "ringmail/core/config.h"

#include "ringmail/core/duration.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <map>
#include <netinet/in.h>
#include <set>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace ringmail::core {

namespace {

constexpr std::string_view embedded_default =
    R"(# ringmail's built-in configuration: what ringmaild runs with when no --config is given.
# A development setup: loopback only, spool under the working directory.
[server]
shards = 0
spool_dir = "./var/spool"

[[listen]]
address = "127.0.0.1:2525"
role = "relay"

[delivery]
smarthost = ""

[admin]
address = "127.0.0.1:8025"
)";

// Values quoted in messages come from the file: keep them short and on one line.
std::string shown(std::string_view v) {
    return fmt::format("\"{}\"", log::sanitize(v, 120));
}

std::string_view type_name(const toml::node& n) {
    switch (n.type()) {
        case toml::node_type::table:
            return "a table";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a floating-point number";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::date:
            return "a date";
        case toml::node_type::time:
            return "a time";
        case toml::node_type::date_time:
            return "a date-time";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

bool parse_port(std::string_view s, std::uint16_t& port) {
    if (s.empty() || s.size() > 5 || s[0] == '0')
        return false;
    unsigned n = 0;
    for (const char c : s) {
        if (c < '0' || c > '9')
            return false;
        n = n * 10 + static_cast<unsigned>(c - '0');
    }
    if (n == 0 || n > 65535)
        return false;
    port = static_cast<std::uint16_t>(n);
    return true;
}

// inet_pton on a string_view; the canonical text form on success.
std::optional<std::string> canonical_ip(int family, std::string_view text) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (text.empty() || text.size() >= sizeof buf)
        return std::nullopt;
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    unsigned char bin[sizeof(in6_addr)];
    if (inet_pton(family, buf, bin) != 1)
        return std::nullopt;
    char out[INET6_ADDRSTRLEN];
    if (inet_ntop(family, bin, out, sizeof out) == nullptr)
        return std::nullopt;
    return std::string(out);
}

// Splits "host:port" / "[v6]:port". The host comes back without brackets; `bracketed` says
// whether it had them.
bool split_host_port(std::string_view text, std::string_view& host, std::uint16_t& port,
                     bool& bracketed) {
    bracketed = !text.empty() && text.front() == '[';
    std::string_view rest;
    if (bracketed) {
        const auto close = text.find(']');
        if (close == std::string_view::npos)
            return false;
        host = text.substr(1, close - 1);
        rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':')
            return false;
        rest.remove_prefix(1);
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos)
            return false;
        host = text.substr(0, colon);
        if (host.find(':') != std::string_view::npos)
            return false;  // IPv6 needs brackets
        rest = text.substr(colon + 1);
    }
    return !host.empty() && parse_port(rest, port);
}

// Collects errors with their place in the file.
class context {
  public:
    explicit context(std::string_view source) : _source(source) {}

    void fail(const toml::source_region* where, std::string_view key, std::string_view what) {
        if (where != nullptr && where->begin.line != 0) {
            _errors.push_back(fmt::format("{}:{}:{}: {}: {}", _source, where->begin.line,
                                          where->begin.column, key, what));
        } else {
            _errors.push_back(fmt::format("{}: {}: {}", _source, key, what));
        }
    }
    void fail(const toml::node& at, std::string_view key, std::string_view what) {
        fail(&at.source(), key, what);
    }

    bool failed() const { return !_errors.empty(); }
    std::string joined() const {
        std::string out;
        for (const auto& e : _errors) {
            if (!out.empty())
                out += '\n';
            out += e;
        }
        return out;
    }

  private:
    std::string _source;
    std::vector<std::string> _errors;
};

// One TOML table being read: hands out values by key, remembers which keys were used, and
// reports the rest as unknown when done.
class table_reader {
  public:
    table_reader(context& ctx, const toml::table& t, std::string path)
        : _ctx(ctx), _table(t), _path(std::move(path)) {}
    table_reader(const table_reader&) = delete;
    table_reader& operator=(const table_reader&) = delete;

    context& ctx() { return _ctx; }
    const toml::table& table() const { return _table; }

    std::string key(std::string_view k) const {
        return _path.empty() ? std::string(k) : fmt::format("{}.{}", _path, k);
    }

    const toml::node* take(std::string_view k) {
        _used.emplace(k);
        return _table.get(k);
    }

    void missing(std::string_view k, std::string_view what) {
        _ctx.fail(&_table.source(), key(k), what);
    }

    void finish() {
        for (auto&& [k, v] : _table) {
            if (_used.count(std::string(k.str())) != 0)
                continue;
            const std::string name = key(log::sanitize(k.str(), 80));
            _ctx.fail(&k.source(), name, v.is_table() ? "unknown table" : "unknown key");
        }
    }

  private:
    context& _ctx;
    const toml::table& _table;
    std::string _path;
    std::set<std::string, std::less<>> _used;
};

// --- typed readers: leave `out` untouched when the key is absent or wrong ---------------

bool expect_type(context& ctx, const toml::node& n, std::string_view key, toml::node_type t,
                 std::string_view want) {
    if (n.type() == t)
        return true;
    ctx.fail(n, key, fmt::format("expected {}, got {}", want, type_name(n)));
    return false;
}

const toml::node* read_string(table_reader& r, std::string_view k, std::string& out) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return nullptr;
    if (!expect_type(r.ctx(), *n, r.key(k), toml::node_type::string, "a string"))
        return nullptr;
    out = n->as_string()->get();
    return n;
}

void read_bool(table_reader& r, std::string_view k, bool& out) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return;
    if (!expect_type(r.ctx(), *n, r.key(k), toml::node_type::boolean, "a boolean"))
        return;
    out = n->as_boolean()->get();
}

// The largest value of T that a TOML integer (int64) can hold.
template <typename T>
constexpr std::int64_t toml_max() {
    constexpr auto t_max = std::numeric_limits<T>::max();
    constexpr auto i_max = std::numeric_limits<std::int64_t>::max();
    return static_cast<std::uint64_t>(t_max) > static_cast<std::uint64_t>(i_max)
               ? i_max
               : static_cast<std::int64_t>(t_max);
}

template <typename T>
void read_uint(table_reader& r, std::string_view k, T& out, std::int64_t min,
               std::int64_t max = toml_max<T>()) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return;
    if (!expect_type(r.ctx(), *n, r.key(k), toml::node_type::integer, "an integer"))
        return;
    const std::int64_t v = n->as_integer()->get();
    if (v < min || v > max) {
        r.ctx().fail(*n, r.key(k), fmt::format("must be between {} and {}, got {}", min, max, v));
        return;
    }
    out = static_cast<T>(v);
}

// A duration is a string ("5m") or an integer number of seconds.
bool duration_value(context& ctx, const toml::node& n, std::string_view key,
                    std::chrono::seconds& out) {
    constexpr std::string_view want = R"(a duration like "30s", "5m", "4h", "5d")";
    if (n.is_integer()) {
        const std::int64_t v = n.as_integer()->get();
        if (v <= 0 || v > max_duration.count()) {
            ctx.fail(n, key, fmt::format("expected {} (or seconds > 0), got {}", want, v));
            return false;
        }
        out = std::chrono::seconds(v);
        return true;
    }
    if (!n.is_string()) {
        ctx.fail(n, key, fmt::format("expected {}, got {}", want, type_name(n)));
        return false;
    }
    const std::string& text = n.as_string()->get();
    auto d = parse_duration(text);
    if (!d) {
        if (d.error() == std::errc::result_out_of_range) {
            ctx.fail(n, key, fmt::format("duration {} is too large", shown(text)));
        } else {
            ctx.fail(n, key, fmt::format("expected {}, got {}", want, shown(text)));
        }
        return false;
    }
    out = *d;
    return true;
}

void read_duration(table_reader& r, std::string_view k, std::chrono::seconds& out) {
    const toml::node* n = r.take(k);
    if (n != nullptr)
        duration_value(r.ctx(), *n, r.key(k), out);
}

// Calls each(node, "key[i]") for every element of an array; false if the key is not an array.
template <typename Each>
bool read_array(table_reader& r, std::string_view k, Each&& each) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return false;
    if (!expect_type(r.ctx(), *n, r.key(k), toml::node_type::array, "an array"))
        return false;
    std::size_t i = 0;
    for (const toml::node& e : *n->as_array()) {
        each(e, fmt::format("{}[{}]", r.key(k), i));
        ++i;
    }
    return true;
}

// Array of strings, each checked by `check(text) -> optional<T>`.
template <typename T, typename Check>
bool read_checked_strings(table_reader& r, std::string_view k, std::vector<T>& out,
                          std::string_view want, Check&& check) {
    std::vector<T> values;
    std::vector<std::string> keys;
    bool ok = true;
    const bool present = read_array(r, k, [&](const toml::node& e, const std::string& key) {
        if (!expect_type(r.ctx(), e, key, toml::node_type::string, "a string")) {
            ok = false;
            return;
        }
        const std::string& text = e.as_string()->get();
        std::optional<T> v = check(e, key, text);
        if (!v) {
            if (!want.empty()) {
                r.ctx().fail(e, key, fmt::format("expected {}, got {}", want, shown(text)));
            }
            ok = false;
            return;
        }
        for (std::size_t j = 0; j < values.size(); ++j) {
            if (values[j] == *v) {
                r.ctx().fail(e, key, fmt::format("{} duplicates {}", shown(text), keys[j]));
                ok = false;
                return;
            }
        }
        values.push_back(std::move(*v));
        keys.push_back(key);
    });
    if (present && ok)
        out = std::move(values);
    return present && ok;
}

void read_cidrs(table_reader& r, std::string_view k, cidr_set& out) {
    std::vector<cidr> ranges;
    auto check = [&](const toml::node& e, const std::string& key,
                     const std::string& text) -> std::optional<cidr> {
        if (auto c = parse_cidr(text))
            return *c;
        if (auto masked = parse_cidr(text, host_bits::clear)) {
            r.ctx().fail(e, key,
                         fmt::format("host bits set in {} (did you mean \"{}\"?)", shown(text),
                                     to_string(*masked)));
        } else {
            r.ctx().fail(e, key,
                         fmt::format("expected a CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", "
                                     "got {}",
                                     shown(text)));
        }
        return std::nullopt;
    };
    if (read_checked_strings(r, k, ranges, "", check))
        out = cidr_set(std::move(ranges));
}

std::optional<std::string> ip_port_check(const toml::node&, const std::string&,
                                         const std::string& text) {
    return canonical_ip_port(text);
}

// --- sections ------------------------------------------------------------------------

// Returns the sub-table, or null when absent or (reported) not a table.
const toml::table* section(table_reader& root, std::string_view k) {
    const toml::node* n = root.take(k);
    if (n == nullptr)
        return nullptr;
    if (!n->is_table()) {
        root.ctx().fail(*n, k, fmt::format("expected a table ([{}]), got {}", k, type_name(*n)));
        return nullptr;
    }
    return n->as_table();
}

std::string default_hostname() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) == 0) {
        if (auto d = canonical_domain(buf))
            return *d;
    }
    // Not a usable EHLO name (or none): a name that is always valid, to be configured.
    return "localhost";
}

void read_server(context& ctx, const toml::table* t, server_config& s) {
    s.hostname = default_hostname();
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "server");
    std::string text;
    if (const toml::node* n = read_string(r, "hostname", text)) {
        if (auto d = canonical_domain(text)) {
            s.hostname = *d;
        } else {
            ctx.fail(*n, r.key("hostname"),
                     fmt::format("expected a domain name, got {}", shown(text)));
        }
    }
    read_uint(r, "shards", s.shards, 0, 1024);
    if (const toml::node* n = read_string(r, "spool_dir", text)) {
        if (text.empty()) {
            ctx.fail(*n, r.key("spool_dir"), "must not be empty");
        } else {
            s.spool_dir = text;
        }
    }
    read_uint(r, "max_message_size", s.max_message_size, 1);
    read_uint(r, "max_recipients", s.max_recipients, 1);
    // A text line limit below the command line limit (512) would break ordinary mail.
    read_uint(r, "max_line_length", s.max_line_length, 512, 1 << 20);
    read_uint(r, "max_errors", s.max_errors, 1);
    read_uint(r, "max_connections", s.max_connections, 1);
    read_duration(r, "command_timeout", s.command_timeout);
    read_duration(r, "data_timeout", s.data_timeout);
    read_bool(r, "io_uring_defer_taskrun", s.io_uring_defer_taskrun);
    read_bool(r, "multishot_accept", s.multishot_accept);
    if (const toml::node* n = read_string(r, "log_level", text)) {
        if (auto l = log::parse_level(text)) {
            s.log_level = *l;
        } else {
            ctx.fail(
                *n, r.key("log_level"),
                fmt::format(R"(expected "debug", "info", "warn" or "error", got {})", shown(text)));
        }
    }
    r.finish();
}

cidr_set loopback_ranges() {
    cidr_set set;
    set.add(*parse_cidr("127.0.0.0/8"));
    set.add(*parse_cidr("::1/128"));
    return set;
}

// A string or an array of non-empty strings; false (reported) when malformed.
bool read_paths(table_reader& r, std::string_view k, std::vector<std::string>& out) {
    const toml::node* n = r.table().get(k);
    if (n == nullptr)
        return true;
    if (n->is_string()) {
        r.take(k);
        if (n->as_string()->get().empty()) {
            r.ctx().fail(*n, r.key(k), "must not be empty");
            return false;
        }
        out.push_back(n->as_string()->get());
        return true;
    }
    if (!n->is_array()) {
        r.take(k);
        r.ctx().fail(
            *n, r.key(k),
            fmt::format("expected a file name or an array of them, got {}", type_name(*n)));
        return false;
    }
    bool ok = true;
    read_array(r, k, [&](const toml::node& e, const std::string& key) {
        if (!expect_type(r.ctx(), e, key, toml::node_type::string, "a file name")) {
            ok = false;
        } else if (e.as_string()->get().empty()) {
            r.ctx().fail(e, key, "must not be empty");
            ok = false;
        } else {
            out.push_back(e.as_string()->get());
        }
    });
    return ok;
}

void read_tls_files(table_reader& r, listener_config& l) {
    std::vector<std::string> certs;
    std::vector<std::string> keys;
    // Both are read (and their errors reported) whatever the first one gave.
    const bool certs_ok = read_paths(r, "tls_cert", certs);
    const bool keys_ok = read_paths(r, "tls_key", keys);
    if (!certs_ok || !keys_ok)
        return;
    if (certs.size() != keys.size()) {
        const toml::node* at = r.table().get(certs.size() > keys.size() ? "tls_cert" : "tls_key");
        r.ctx().fail(&at->source(), r.key("tls_key"),
                     fmt::format("{} certificate file(s) but {} key file(s): give one key per "
                                 "certificate, in the same order",
                                 certs.size(), keys.size()));
        return;
    }
    for (std::size_t i = 0; i < certs.size(); ++i)
        l.tls_certificates.push_back({std::move(certs[i]), std::move(keys[i])});
}

void read_listeners(context& ctx, table_reader& root, std::vector<listener_config>& out) {
    const toml::node* n = root.take("listen");
    if (n == nullptr) {
        ctx.fail(nullptr, "listen", "at least one [[listen]] table is required");
        return;
    }
    if (!n->is_array_of_tables() || n->as_array()->empty()) {
        if (n->is_array() && n->as_array()->empty()) {
            ctx.fail(*n, "listen", "at least one [[listen]] table is required");
        } else {
            ctx.fail(*n, "listen",
                     fmt::format("expected an array of tables ([[listen]]), got {}",
                                 n->is_array() ? "an array with other values" : type_name(*n)));
        }
        return;
    }
    std::map<std::string, std::string> seen;  // canonical address -> key that used it
    std::size_t i = 0;
    for (const toml::node& e : *n->as_array()) {
        const std::string path = fmt::format("listen[{}]", i++);
        table_reader r(ctx, *e.as_table(), path);
        listener_config l;
        l.trusted_proxies = loopback_ranges();
        std::string text;
        if (const toml::node* a = read_string(r, "address", text)) {
            if (auto c = canonical_ip_port(text)) {
                if (auto [it, fresh] = seen.emplace(*c, r.key("address")); !fresh) {
                    ctx.fail(*a, r.key("address"),
                             fmt::format("{} is already used by {}", shown(text), it->second));
                }
                l.address = *c;
            } else {
                ctx.fail(*a, r.key("address"),
                         fmt::format("expected \"ip:port\", got {}", shown(text)));
            }
        } else if (r.table().get("address") == nullptr) {
            r.missing("address", R"(missing (an "ip:port" to listen on))");
        }
        if (const toml::node* ro = read_string(r, "role", text)) {
            if (text == "relay") {
                l.role = listener_role::relay;
            } else if (text == "submission") {
                l.role = listener_role::submission;
            } else if (text == "smtps") {
                l.role = listener_role::smtps;
            } else {
                ctx.fail(*ro, r.key("role"),
                         fmt::format(R"(expected "relay", "submission" or "smtps", got {})",
                                     shown(text)));
            }
        } else if (r.table().get("role") == nullptr) {
            r.missing("role", R"(missing ("relay", "submission" or "smtps"))");
        }
        read_bool(r, "proxy_protocol", l.proxy_protocol);
        read_cidrs(r, "trusted_proxies", l.trusted_proxies);
        read_tls_files(r, l);
        read_bool(r, "auth_plaintext", l.auth_plaintext);
        if (l.role == listener_role::smtps && l.tls_certificates.empty() &&
            r.table().get("tls_cert") == nullptr) {
            r.missing("tls_cert", R"(role "smtps" needs tls_cert and tls_key)");
        }
        r.finish();
        out.push_back(std::move(l));
    }
}

void read_relay(context& ctx, const toml::table* t, relay_config& rc) {
    rc.allow_networks = loopback_ranges();
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "relay");
    read_cidrs(r, "allow_networks", rc.allow_networks);
    read_checked_strings(r, "domains", rc.domains, "a domain name",
                         [](const toml::node&, const std::string&, const std::string& text) {
                             return canonical_domain(text);
                         });
    r.finish();
}

std::optional<tls_policy> read_tls_policy(table_reader& r, std::string_view k) {
    std::string text;
    const toml::node* n = read_string(r, k, text);
    if (n == nullptr)
        return std::nullopt;
    if (text == "none")
        return tls_policy::none;
    if (text == "opportunistic")
        return tls_policy::opportunistic;
    if (text == "required")
        return tls_policy::required;
    r.ctx().fail(
        *n, r.key(k),
        fmt::format(R"(expected "none", "opportunistic" or "required", got {})", shown(text)));
    return std::nullopt;
}

std::optional<host_port> parse_smarthost(std::string_view text) {
    std::string_view host;
    std::uint16_t port = 0;
    bool bracketed = false;
    if (!split_host_port(text, host, port, bracketed))
        return std::nullopt;
    if (bracketed) {
        if (auto ip = canonical_ip(AF_INET6, host))
            return host_port{*ip, port};
        return std::nullopt;
    }
    if (auto ip = canonical_ip(AF_INET, host))
        return host_port{*ip, port};
    if (auto name = canonical_domain(host))
        return host_port{*name, port};
    return std::nullopt;
}

void read_delivery(context& ctx, const toml::table* t, delivery_config& d,
                   const server_config& server) {
    using namespace std::chrono_literals;
    d.retry_schedule = {1min, 5min, 15min, 30min, 1h, 2h, 4h};
    d.helo_name = server.hostname;
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "delivery");
    std::string text;
    if (const toml::node* n = read_string(r, "smarthost", text)) {
        if (text.empty()) {
            d.smarthost.reset();
        } else if (auto hp = parse_smarthost(text)) {
            d.smarthost = std::move(*hp);
        } else {
            ctx.fail(
                *n, r.key("smarthost"),
                fmt::format(R"(expected "" or "host:port" (IPv6 as "[2001:db8::1]:25"), got {})",
                            shown(text)));
        }
    }
    read_uint(r, "mx_port", d.mx_port, 1);
    {
        std::vector<std::chrono::seconds> schedule;
        bool ok = true;
        const toml::node* n = r.table().get("retry_schedule");
        const bool present =
            read_array(r, "retry_schedule", [&](const toml::node& e, const std::string& key) {
                std::chrono::seconds v{};
                if (duration_value(ctx, e, key, v)) {
                    schedule.push_back(v);
                } else {
                    ok = false;
                }
            });
        if (present && ok) {
            if (schedule.empty()) {
                ctx.fail(*n, r.key("retry_schedule"), "must not be empty");
            } else {
                d.retry_schedule = std::move(schedule);
            }
        }
    }
    read_duration(r, "max_lifetime", d.max_lifetime);
    read_duration(r, "connect_timeout", d.connect_timeout);
    read_uint(r, "max_connections", d.max_connections, 1);
    read_uint(r, "destination_max_connections", d.destination_max_connections, 1, 100000);
    read_uint(r, "max_messages_per_connection", d.max_messages_per_connection, 1);
    read_duration(r, "idle_timeout", d.idle_timeout);
    if (const toml::node* n = read_string(r, "helo_name", text)) {
        if (auto name = canonical_domain(text)) {
            d.helo_name = *name;
        } else {
            ctx.fail(*n, r.key("helo_name"),
                     fmt::format("expected a domain name, got {}", shown(text)));
        }
    }
    if (auto p = read_tls_policy(r, "tls"))
        d.tls = *p;
    read_bool(r, "tls_verify", d.tls_verify);
    read_string(r, "tls_ca_file", d.tls_ca_file);
    read_string(r, "log_file", d.log_file);
    r.finish();
}

void read_auth(context& ctx, const toml::table* t, auth_config& a) {
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "auth");
    read_string(r, "users_file", a.users_file);
    read_uint(r, "max_failures", a.max_failures, 1, 1000000);
    read_duration(r, "failure_window", a.failure_window);
    read_uint(r, "verify_threads", a.verify_threads, 1, 64);
    r.finish();
}

void read_domains(context& ctx, table_reader& root, std::vector<domain_config>& out) {
    const toml::node* n = root.take("domain");
    if (n == nullptr)
        return;
    if (!n->is_array_of_tables()) {
        ctx.fail(*n, "domain",
                 fmt::format("expected an array of tables ([[domain]]), got {}", type_name(*n)));
        return;
    }
    std::map<std::string, std::string> seen;
    std::size_t i = 0;
    for (const toml::node& e : *n->as_array()) {
        const std::string path = fmt::format("domain[{}]", i++);
        table_reader r(ctx, *e.as_table(), path);
        domain_config d;
        std::string text;
        if (const toml::node* nn = read_string(r, "name", text)) {
            if (auto c = canonical_domain(text)) {
                if (auto [it, fresh] = seen.emplace(*c, r.key("name")); !fresh) {
                    ctx.fail(
                        *nn, r.key("name"),
                        fmt::format("{} is already configured by {}", shown(text), it->second));
                }
                d.name = *c;
            } else {
                ctx.fail(*nn, r.key("name"),
                         fmt::format("expected a domain name, got {}", shown(text)));
            }
        } else if (r.table().get("name") == nullptr) {
            r.missing("name", "missing (the destination domain)");
        }
        std::uint32_t u = 0;
        if (r.table().get("max_connections") != nullptr) {
            u = 0;
            read_uint(r, "max_connections", u, 1, 100000);
            if (u != 0)
                d.max_connections = u;
        }
        if (r.table().get("max_messages_per_connection") != nullptr) {
            u = 0;
            read_uint(r, "max_messages_per_connection", u, 1);
            if (u != 0)
                d.max_messages_per_connection = u;
        }
        if (const toml::node* c = r.take("connect_timeout")) {
            std::chrono::seconds v{};
            if (duration_value(ctx, *c, r.key("connect_timeout"), v))
                d.connect_timeout = v;
        }
        if (const toml::node* rt = r.take("rate")) {
            double v = -1;
            if (rt->is_integer())
                v = static_cast<double>(rt->as_integer()->get());
            else if (rt->is_floating_point())
                v = rt->as_floating_point()->get();
            if (!(v > 0) || v > 1e9) {
                ctx.fail(*rt, r.key("rate"), "expected messages per second, a number > 0");
            } else {
                d.rate = v;
            }
        }
        if (const toml::node* bt = r.take("burst")) {
            double v = -1;
            if (bt->is_integer())
                v = static_cast<double>(bt->as_integer()->get());
            else if (bt->is_floating_point())
                v = bt->as_floating_point()->get();
            if (!(v >= 1) || v > 1e9) {
                ctx.fail(*bt, r.key("burst"), "expected a bucket size in messages, a number >= 1");
            } else {
                d.burst = v;
            }
        }
        if (const toml::node* rn = read_string(r, "route", text)) {
            if (auto hp = parse_smarthost(text)) {
                d.route = std::move(*hp);
            } else if (!text.empty()) {
                ctx.fail(*rn, r.key("route"),
                         fmt::format(R"(expected "host:port" (IPv6 as "[2001:db8::1]:25"), got {})",
                                     shown(text)));
            }
        }
        d.tls = read_tls_policy(r, "tls");
        if (r.table().get("tls_verify") != nullptr) {
            bool v = false;
            read_bool(r, "tls_verify", v);
            d.tls_verify = v;
        }
        r.finish();
        out.push_back(std::move(d));
    }
}

void read_dns(context& ctx, const toml::table* t, dns_config& d) {
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "dns");
    read_checked_strings(r, "servers", d.servers, R"("ip:port")", ip_port_check);
    r.finish();
}

void read_admin(context& ctx, const toml::table* t, admin_config& a,
                const std::vector<listener_config>& listen) {
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, "admin");
    std::string text;
    if (const toml::node* n = read_string(r, "address", text)) {
        if (text.empty()) {
            a.address.clear();
        } else if (auto c = canonical_ip_port(text)) {
            a.address = *c;
            for (std::size_t i = 0; i < listen.size(); ++i) {
                if (listen[i].address == *c) {
                    ctx.fail(*n, r.key("address"),
                             fmt::format("{} is already used by listen[{}]", shown(text), i));
                }
            }
        } else {
            ctx.fail(*n, r.key("address"),
                     fmt::format(R"(expected "" or "ip:port", got {})", shown(text)));
        }
    }
    r.finish();
}

}  // namespace

std::string_view role_name(listener_role r) noexcept {
    switch (r) {
        case listener_role::relay:
            return "relay";
        case listener_role::submission:
            return "submission";
        case listener_role::smtps:
            return "smtps";
    }
    return "?";
}

std::string_view tls_policy_name(tls_policy p) noexcept {
    switch (p) {
        case tls_policy::none:
            return "none";
        case tls_policy::opportunistic:
            return "opportunistic";
        case tls_policy::required:
            return "required";
    }
    return "?";
}

unsigned effective_shards(const server_config& s) noexcept {
    if (s.shards != 0)
        return s.shards;
    const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<unsigned>(n) : 1;
}

std::optional<std::string> canonical_ip_port(std::string_view text) {
    std::string_view host;
    std::uint16_t port = 0;
    bool bracketed = false;
    if (!split_host_port(text, host, port, bracketed))
        return std::nullopt;
    if (bracketed) {
        if (auto ip = canonical_ip(AF_INET6, host))
            return fmt::format("[{}]:{}", *ip, port);
        return std::nullopt;
    }
    if (auto ip = canonical_ip(AF_INET, host))
        return fmt::format("{}:{}", *ip, port);
    return std::nullopt;
}

std::optional<std::string> canonical_domain(std::string_view text) {
    if (!text.empty() && text.back() == '.')
        text.remove_suffix(1);
    if (text.empty() || text.size() > 253)
        return std::nullopt;
    if (canonical_ip(AF_INET, text))
        return std::nullopt;
    std::string out;
    out.reserve(text.size());
    std::size_t label = 0;
    for (std::size_t i = 0; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == '.') {
            if (label == 0 || label > 63)
                return std::nullopt;
            if (out.back() == '-' || out[out.size() - label] == '-')
                return std::nullopt;
            if (i != text.size())
                out += '.';
            label = 0;
            continue;
        }
        char c = text[i];
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
        if (!ok)
            return std::nullopt;
        out += c;
        ++label;
    }
    return out;
}

parsed_config parse_config(std::string_view toml_text, std::string_view source_name) {
    parsed_config result;
    toml::table root;
    try {
        root = toml::parse(toml_text, source_name);
    } catch (const toml::parse_error& e) {
        const auto& where = e.source().begin;
        result.error = fmt::format("{}:{}:{}: TOML syntax error: {}", source_name, where.line,
                                   where.column, e.description());
        return result;
    }

    context ctx(source_name);
    table_reader r(ctx, root, "");
    config c;
    read_server(ctx, section(r, "server"), c.server);
    read_listeners(ctx, r, c.listen);
    read_relay(ctx, section(r, "relay"), c.relay);
    read_delivery(ctx, section(r, "delivery"), c.delivery, c.server);
    read_dns(ctx, section(r, "dns"), c.dns);
    read_admin(ctx, section(r, "admin"), c.admin, c.listen);
    read_auth(ctx, section(r, "auth"), c.auth);
    read_domains(ctx, r, c.domains);
    r.finish();
    if (!c.auth.enabled()) {
        for (std::size_t i = 0; i < c.listen.size(); ++i) {
            if (c.listen[i].role != listener_role::relay) {
                ctx.fail(nullptr, fmt::format("listen[{}].role", i),
                         fmt::format("role \"{}\" requires AUTH: set [auth] users_file",
                                     role_name(c.listen[i].role)));
            }
        }
    }

    if (ctx.failed()) {
        result.error = ctx.joined();
    } else {
        result.cfg = std::move(c);
    }
    return result;
}

parsed_config load_config_file(const std::filesystem::path& path) {
    parsed_config result;
    auto fail = [&](std::string_view what, int err) {
        result.error =
            fmt::format("{}: {}: {}", path.string(), what, std::generic_category().message(err));
        return result;
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail("cannot open", errno);
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } close_on_return{fd};

    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return fail("cannot stat", errno);
    if (!S_ISREG(st.st_mode))
        return fail("cannot read", S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
    // A configuration is a few kilobytes; anything this large is the wrong file.
    constexpr off_t max_size = 16 << 20;
    if (st.st_size > max_size)
        return fail("cannot read", EFBIG);

    std::string text;
    char buf[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail("read failed", errno);
        }
        if (n == 0)
            break;
        text.append(buf, static_cast<std::size_t>(n));
        if (text.size() > static_cast<std::size_t>(max_size))
            return fail("cannot read", EFBIG);
    }
    return parse_config(text, path.string());
}

std::string_view default_config_toml() noexcept {
    return embedded_default;
}

}  // namespace ringmail::core
