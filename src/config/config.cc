#include "ringmail/config/config.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/duration.h"
#include "ringmail/core/panic.h"
#include "ringmail/core/regex_set.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
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

namespace ringmail::config {

namespace log = core::log;
using core::cidr;
using core::host_bits;
using core::max_duration;
using core::parse_cidr;
using core::parse_duration;

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

}  // namespace

bool admin_config::loopback() const noexcept {
    std::string_view a = address;
    if (a.starts_with("[::1]:"))
        return true;
    return a.starts_with("127.");
}

namespace {

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

// A duration that may also be zero ("0s" or 0): "do not wait at all" is meaningful there.
void read_duration_or_zero(table_reader& r, std::string_view k, std::chrono::seconds& out) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return;
    if ((n->is_integer() && n->as_integer()->get() == 0) ||
        (n->is_string() && (n->as_string()->get() == "0s" || n->as_string()->get() == "0"))) {
        out = std::chrono::seconds(0);
        return;
    }
    duration_value(r.ctx(), *n, r.key(k), out);
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
    auto parts = core::split_host_port(text);
    if (!parts)
        return std::nullopt;
    if (parts->bracketed) {
        if (auto ip = canonical_ip(AF_INET6, parts->host))
            return host_port{*ip, parts->port};
        return std::nullopt;
    }
    if (auto ip = canonical_ip(AF_INET, parts->host))
        return host_port{*ip, parts->port};
    if (auto name = canonical_domain(parts->host))
        return host_port{*name, parts->port};
    return std::nullopt;
}

// --- the schema: every key declared once ------------------------------------------------------
//
// A section is a table of fields. Each field is its key_spec (table, name, type, default as
// TOML text, one line of meaning) and the function that reads its value. The reader applies a
// section's defaults by reading that same text (so a default is written in exactly one place),
// then the file's values; schema() lists the specs for --check-config's users, the docs and the
// test that holds packaging/ringmail.toml to them.

template <typename S>
struct field {
    key_spec spec;
    void (*read)(table_reader& r, std::string_view key, S& out);
};

// One double in (0, max] (or [1, max] with min1): rates and bucket sizes.
std::optional<double> read_number(table_reader& r, std::string_view k, double min, bool inclusive,
                                  std::string_view want) {
    const toml::node* n = r.take(k);
    if (n == nullptr)
        return std::nullopt;
    double v = -1;
    if (n->is_integer())
        v = static_cast<double>(n->as_integer()->get());
    else if (n->is_floating_point())
        v = n->as_floating_point()->get();
    const bool ok = inclusive ? v >= min : v > min;
    if (!ok || v > 1e9) {
        r.ctx().fail(*n, r.key(k), want);
        return std::nullopt;
    }
    return v;
}

std::optional<std::string> read_domain_value(table_reader& r, std::string_view k) {
    std::string text;
    const toml::node* n = read_string(r, k, text);
    if (n == nullptr)
        return std::nullopt;
    if (auto d = canonical_domain(text))
        return d;
    r.ctx().fail(*n, r.key(k), fmt::format("expected a domain name, got {}", shown(text)));
    return std::nullopt;
}

constexpr std::string_view smarthost_want =
    R"(expected "" or "host:port" (IPv6 as "[2001:db8::1]:25"), got {})";

const field<server_config> server_fields[] = {
    {{"server", "hostname", "domain name", "",
      "greeting, EHLO and Received name (default: the host's name, or \"localhost\")"},
     [](table_reader& r, std::string_view k, server_config& s) {
         if (auto d = read_domain_value(r, k))
             s.hostname = *d;
     }},
    {{"server", "shards", "integer", "0",
      "shards (threads pinned to CPUs); 0 = one per online CPU"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.shards, 0, 1024);
     }},
    {{"server", "spool_dir", "path", "\"/var/spool/ringmail\"",
      "where the spool segments and journals live (one shard-N directory per shard)"},
     [](table_reader& r, std::string_view k, server_config& s) {
         std::string text;
         if (const toml::node* n = read_string(r, k, text)) {
             if (text.empty()) {
                 r.ctx().fail(*n, r.key(k), "must not be empty");
             } else {
                 s.spool_dir = text;
             }
         }
     }},
    {{"server", "user", "string", "\"\"",
      "started as root: the user to switch to once the listeners are bound and the spool is open "
      "(the spool is chowned to it); \"\" = no switch"},
     [](table_reader& r, std::string_view k, server_config& s) { read_string(r, k, s.user); }},
    {{"server", "max_message_size", "integer (bytes)", "52428800",
      "largest message accepted (announced with SIZE)"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_message_size, 1);
     }},
    {{"server", "max_recipients", "integer", "1000", "most RCPT TO accepted per transaction"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_recipients, 1);
     }},
    // A text line limit below the command line limit (512) would break ordinary mail.
    {{"server", "max_line_length", "integer (512..1048576)", "1000",
      "longest DATA line in octets with its CRLF; longer gets 500 5.5.2"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_line_length, 512, 1 << 20);
     }},
    {{"server", "max_errors", "integer", "10", "bad commands per session before it is closed"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_errors, 1);
     }},
    {{"server", "max_connections", "integer", "10000",
      "open inbound connections per shard; more get 421"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_connections, 1);
     }},
    {{"server", "max_unwritten_bytes", "integer (bytes)", "33554432",
      "per shard (all its spools): message data received but not yet written to the spool; past "
      "it, sessions sending data wait (their sockets are not read, their data timeout does not "
      "run) until writes complete"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_uint(r, k, s.max_unwritten_bytes, 1 << 20);
     }},
    {{"server", "command_timeout", "duration", "\"5m\"", "wait for the next command"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_duration(r, k, s.command_timeout);
     }},
    {{"server", "data_timeout", "duration", "\"3m\"", "idle time between chunks of message data"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_duration(r, k, s.data_timeout);
     }},
    {{"server", "log_level", "\"debug\"|\"info\"|\"warn\"|\"error\"", "\"info\"",
      "least severe level written to stderr"},
     [](table_reader& r, std::string_view k, server_config& s) {
         std::string text;
         if (const toml::node* n = read_string(r, k, text)) {
             if (auto l = log::parse_level(text)) {
                 s.log_level = *l;
             } else {
                 r.ctx().fail(*n, r.key(k),
                              fmt::format(R"(expected "debug", "info", "warn" or "error", got {})",
                                          shown(text)));
             }
         }
     }},
    {{"server", "io_uring_defer_taskrun", "boolean", "true",
      "IORING_SETUP_DEFER_TASKRUN (turn off on a kernel where it misbehaves)"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_bool(r, k, s.io_uring_defer_taskrun);
     }},
    {{"server", "multishot_accept", "boolean", "true",
      "multishot accept (off: one accept re-armed per connection)"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_bool(r, k, s.multishot_accept);
     }},
    {{"server", "drain_grace", "duration (or \"0s\")", "\"5s\"",
      "after SIGTERM, listeners keep accepting this long (readiness 503 at once), then close"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_duration_or_zero(r, k, s.drain_grace);
     }},
    {{"server", "shutdown_timeout", "duration", "\"30s\"",
      "from SIGTERM to exit; what is still open then is closed (acknowledged mail is durable)"},
     [](table_reader& r, std::string_view k, server_config& s) {
         read_duration(r, k, s.shutdown_timeout);
     }},
};

// tls_cert / tls_key are read together (listener_tls_files below); their fields only declare
// them and take them off the unknown-key list.
void take_only(table_reader& r, std::string_view k, listener_config&) {
    (void)r.table().get(k);
}

const field<listener_config> listen_fields[] = {
    {{"listen", "address", "\"ip:port\"", "", "address to listen on; IPv6 as \"[::1]:2525\"", true},
     [](table_reader& r, std::string_view k, listener_config& l) {
         std::string text;
         if (const toml::node* a = read_string(r, k, text)) {
             if (auto c = canonical_ip_port(text)) {
                 l.address = *c;
             } else {
                 r.ctx().fail(*a, r.key(k),
                              fmt::format("expected \"ip:port\", got {}", shown(text)));
             }
         } else if (r.table().get(k) == nullptr) {
             r.missing(k, R"(missing (an "ip:port" to listen on))");
         }
     }},
    {{"listen", "role", "\"relay\"|\"submission\"|\"smtps\"", "",
      "relay (port 25), submission (AUTH required), smtps (implicit TLS)", true},
     [](table_reader& r, std::string_view k, listener_config& l) {
         std::string text;
         if (const toml::node* ro = read_string(r, k, text)) {
             if (text == "relay") {
                 l.role = listener_role::relay;
             } else if (text == "submission") {
                 l.role = listener_role::submission;
             } else if (text == "smtps") {
                 l.role = listener_role::smtps;
             } else {
                 r.ctx().fail(*ro, r.key(k),
                              fmt::format(R"(expected "relay", "submission" or "smtps", got {})",
                                          shown(text)));
             }
         } else if (r.table().get(k) == nullptr) {
             r.missing(k, R"(missing ("relay", "submission" or "smtps"))");
         }
     }},
    {{"listen", "tls_cert", "path, or array of paths", "",
      "certificate chain(s), PEM (STARTTLS offered; several: chosen by SNI)"},
     take_only},
    {{"listen", "tls_key", "path, or array of paths", "", "private key(s), PEM, one per tls_cert"},
     take_only},
    {{"listen", "auth_plaintext", "boolean", "false", "offer AUTH outside TLS (tests only)"},
     [](table_reader& r, std::string_view k, listener_config& l) {
         read_bool(r, k, l.auth_plaintext);
     }},
    {{"listen", "proxy_protocol", "boolean", "false",
      "expect a PROXY protocol v1/v2 header first (from trusted_proxies)"},
     [](table_reader& r, std::string_view k, listener_config& l) {
         read_bool(r, k, l.proxy_protocol);
     }},
    {{"listen", "trusted_proxies", "array of CIDRs", R"(["127.0.0.0/8", "::1/128"])",
      "sources allowed to send a PROXY header"},
     [](table_reader& r, std::string_view k, listener_config& l) {
         read_cidrs(r, k, l.trusted_proxies);
     }},
};

const field<relay_config> relay_fields[] = {
    {{"relay", "allow_networks", "array of CIDRs", R"(["127.0.0.0/8", "::1/128"])",
      "clients that may relay anywhere without AUTH"},
     [](table_reader& r, std::string_view k, relay_config& rc) {
         read_cidrs(r, k, rc.allow_networks);
     }},
    {{"relay", "domains", "array of domain names", "[]", "domains accepted from anyone"},
     [](table_reader& r, std::string_view k, relay_config& rc) {
         read_checked_strings(r, k, rc.domains, "a domain name",
                              [](const toml::node&, const std::string&, const std::string& text) {
                                  return canonical_domain(text);
                              });
     }},
};

const field<delivery_config> delivery_fields[] = {
    {{"delivery", "smarthost", "\"host:port\"", "\"\"",
      "send all mail there instead of MX routing; \"\" = MX routing"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         std::string text;
         if (const toml::node* n = read_string(r, k, text)) {
             if (text.empty()) {
                 d.smarthost.reset();
             } else if (auto hp = parse_smarthost(text)) {
                 d.smarthost = std::move(*hp);
             } else {
                 r.ctx().fail(*n, r.key(k), fmt::format(smarthost_want, shown(text)));
             }
         }
     }},
    {{"delivery", "mx_port", "integer", "25", "port used on MX hosts"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_uint(r, k, d.mx_port, 1);
     }},
    {{"delivery", "retry_schedule", "array of durations",
      R"(["1m", "5m", "15m", "30m", "1h", "2h", "4h"])",
      "waits between attempts after a temporary failure; the last repeats"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         std::vector<std::chrono::seconds> schedule;
         bool ok = true;
         const toml::node* n = r.table().get(k);
         const bool present = read_array(r, k, [&](const toml::node& e, const std::string& key) {
             std::chrono::seconds v{};
             if (duration_value(r.ctx(), e, key, v)) {
                 schedule.push_back(v);
             } else {
                 ok = false;
             }
         });
         if (present && ok) {
             if (schedule.empty()) {
                 r.ctx().fail(*n, r.key(k), "must not be empty");
             } else {
                 d.retry_schedule = std::move(schedule);
             }
         }
     }},
    {{"delivery", "max_lifetime", "duration", "\"5d\"", "age after which a message bounces"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_duration(r, k, d.max_lifetime);
     }},
    {{"delivery", "delay_warning", "duration or \"\"", "\"4h\"",
      "age of a deferred recipient that gets one delay notice (RFC 3461); \"\" = none"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         const toml::node* n = r.take(k);
         if (n == nullptr)
             return;
         if (const auto* str = n->as_string(); str && str->get().empty()) {
             d.delay_warning = std::chrono::seconds(0);
             return;
         }
         duration_value(r.ctx(), *n, r.key(k), d.delay_warning);
     }},
    {{"delivery", "connect_timeout", "duration", "\"30s\"",
      "time to establish an outbound connection"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_duration(r, k, d.connect_timeout);
     }},
    {{"delivery", "data_timeout", "duration", "\"10m\"",
      "wait for the reply to the end of data (RFC 5321 4.5.3.2.6), then defer"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         if (const toml::node* n = r.take(k)) {
             std::chrono::seconds v{};
             if (duration_value(r.ctx(), *n, r.key(k), v)) {
                 if (v.count() < 1)
                     r.ctx().fail(*n, r.key(k), "must be at least 1s");
                 else
                     d.data_timeout = v;
             }
         }
     }},
    {{"delivery", "max_connections", "integer", "32",
      "open outbound connections per shard, all destinations together"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_uint(r, k, d.max_connections, 1);
     }},
    {{"delivery", "destination_max_connections", "integer", "10",
      "connections to one destination over all shards (unless its [[domain]] says otherwise)"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_uint(r, k, d.destination_max_connections, 1, 100000);
     }},
    {{"delivery", "max_messages_per_connection", "integer", "1000",
      "transactions on one connection before a fresh one"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_uint(r, k, d.max_messages_per_connection, 1);
     }},
    {{"delivery", "idle_timeout", "duration", "\"60s\"", "how long an idle connection is kept"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_duration(r, k, d.idle_timeout);
     }},
    {{"delivery", "helo_name", "domain name", "",
      "EHLO name towards other servers (default: server.hostname)"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         if (auto name = read_domain_value(r, k))
             d.helo_name = *name;
     }},
    {{"delivery", "tls", "\"none\"|\"opportunistic\"|\"required\"", "\"opportunistic\"",
      "outbound STARTTLS ([[domain]] tls overrides)"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         if (auto p = read_tls_policy(r, k))
             d.tls = *p;
     }},
    {{"delivery", "tls_verify", "boolean", "false",
      "outbound TLS must verify (system CAs + tls_ca_file) and name the host"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_bool(r, k, d.tls_verify);
     }},
    {{"delivery", "tls_ca_file", "path", "\"\"", "extra trusted CAs (PEM) for tls_verify"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_string(r, k, d.tls_ca_file);
     }},
    {{"delivery", "log_file", "path", "\"\"",
      "JSON lines delivery log; \"\" = none; reopened on SIGHUP"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_string(r, k, d.log_file);
     }},
    {{"delivery", "bounce_rules_file", "path, or array of paths",
      "\"/usr/share/ringmail/bounces.toml\"",
      "bounce classification rules in KumoMTA's format; the first file's rules first"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         std::vector<std::string> files;
         const toml::node* n = r.table().get(k);
         if (read_paths(r, k, files) && n != nullptr) {
             if (files.empty())
                 r.ctx().fail(*n, r.key(k), "must not be empty");
             else
                 d.bounce_rules_files = std::move(files);
         }
     }},
    {{"delivery", "egress_pool", "pool name", "\"\"",
      "[[egress_pool]] of connections whose [[provider]] pins none; \"\" = no source binding"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_string(r, k, d.egress_pool);
     }},
    {{"delivery", "shaping_file", "path", "\"/usr/share/ringmail/shaping.toml\"",
      "shipped [[provider]] and [[shaping_rule]] tables, merged under this file's"},
     [](table_reader& r, std::string_view k, delivery_config& d) {
         read_string(r, k, d.shaping_file);
     }},
};

// --- shaping (issue 16): egress sources and pools, providers, response-driven rules -------

std::optional<std::string> read_name(table_reader& r, std::string_view k, std::string_view what) {
    std::string text;
    const toml::node* n = read_string(r, k, text);
    if (n == nullptr) {
        if (r.table().get(k) == nullptr)
            r.missing(k, fmt::format("missing ({})", what));
        return std::nullopt;
    }
    if (text.empty() || text.size() > 64 || !std::all_of(text.begin(), text.end(), [](char c) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_' || c == '.';
        })) {
        r.ctx().fail(*n, r.key(k),
                     fmt::format("expected a name (letters, digits, - _ ., at most 64), got {}",
                                 shown(text)));
        return std::nullopt;
    }
    return text;
}

std::optional<rate_config> read_rate(table_reader& r, std::string_view k) {
    std::string text;
    const toml::node* n = read_string(r, k, text);
    if (n == nullptr)
        return std::nullopt;
    if (auto v = parse_rate(text))
        return v;
    r.ctx().fail(
        *n, r.key(k),
        fmt::format(R"(expected a rate "N/s", "N/min" or "N/h" (N > 0), got {})", shown(text)));
    return std::nullopt;
}

template <typename T>
void read_optional_uint(table_reader& r, std::string_view k, std::optional<T>& out,
                        std::int64_t min, std::int64_t max) {
    if (r.table().get(k) == nullptr)
        return;
    T v{};
    const toml::node* n = r.table().get(k);
    read_uint(r, k, v, min, max);
    if (n->is_integer() && n->as_integer()->get() >= min && n->as_integer()->get() <= max)
        out = v;
}

// A domain suffix: ".google.com" (subdomains only) or "google.com" (itself and subdomains).
std::optional<std::string> suffix_check(const toml::node&, const std::string&,
                                        const std::string& text) {
    std::string_view t = text;
    const bool dot = !t.empty() && t.front() == '.';
    if (dot)
        t.remove_prefix(1);
    auto d = canonical_domain(t);
    if (!d)
        return std::nullopt;
    return dot ? "." + *d : *d;
}

const field<egress_source_config> egress_source_fields[] = {
    {{"egress_source", "name", "name", "", "how pools and the delivery log call it", true},
     [](table_reader& r, std::string_view k, egress_source_config& e) {
         if (auto v = read_name(r, k, "the source's name"))
             e.name = *v;
     }},
    {{"egress_source", "address", "IP address", "",
      "source address bound before connect (IPv4 or IPv6)", true},
     [](table_reader& r, std::string_view k, egress_source_config& e) {
         std::string text;
         const toml::node* n = read_string(r, k, text);
         if (n == nullptr) {
             if (r.table().get(k) == nullptr)
                 r.missing(k, "missing (the source IP address)");
             return;
         }
         if (auto ip = canonical_ip(AF_INET, text)) {
             e.address = *ip;
         } else if (auto ip6 = canonical_ip(AF_INET6, text)) {
             e.address = *ip6;
         } else {
             r.ctx().fail(*n, r.key(k),
                          fmt::format("expected an IPv4 or IPv6 address, got {}", shown(text)));
         }
     }},
    {{"egress_source", "ehlo_name", "domain name", "",
      "EHLO name of connections from it (default: delivery.helo_name)"},
     [](table_reader& r, std::string_view k, egress_source_config& e) {
         if (auto v = read_domain_value(r, k))
             e.ehlo_name = *v;
     }},
    {{"egress_source", "max_connections", "integer", "0",
      "open connections from this source, all shards together; 0 = no limit"},
     [](table_reader& r, std::string_view k, egress_source_config& e) {
         read_uint(r, k, e.max_connections, 0, 1000000);
     }},
};

const field<egress_pool_config> egress_pool_fields[] = {
    {{"egress_pool", "name", "name", "", "delivery.egress_pool and providers name it", true},
     [](table_reader& r, std::string_view k, egress_pool_config& p) {
         if (auto v = read_name(r, k, "the pool's name"))
             p.name = *v;
     }},
    {{"egress_pool", "sources", "array of { name, weight }", "",
      "members; weights share connections by smooth weighted round-robin", true},
     [](table_reader& r, std::string_view k, egress_pool_config& p) {
         if (r.table().get(k) == nullptr) {
             r.missing(k, "missing (at least one source)");
             return;
         }
         const toml::node* all = r.table().get(k);
         bool any = false;
         read_array(r, k, [&](const toml::node& e, const std::string& key) {
             any = true;
             if (!expect_type(r.ctx(), e, key, toml::node_type::table,
                              R"(a table like { name = "ip1", weight = 1 })"))
                 return;
             table_reader er(r.ctx(), *e.as_table(), key);
             egress_pool_member m;
             if (auto v = read_name(er, "name", "the source's name"))
                 m.source = *v;
             read_uint(er, "weight", m.weight, 1, 1000);
             er.finish();
             for (const auto& o : p.sources) {
                 if (!m.source.empty() && o.source == m.source) {
                     r.ctx().fail(e, key,
                                  fmt::format("source {} is listed twice", shown(m.source)));
                     return;
                 }
             }
             if (!m.source.empty())
                 p.sources.push_back(std::move(m));
         });
         if (!any && all->is_array())
             r.ctx().fail(*all, r.key(k), "must not be empty");
     }},
};

const field<provider_config> provider_fields[] = {
    {{"provider", "name", "name", "", "shaping rules and logs name it", true},
     [](table_reader& r, std::string_view k, provider_config& p) {
         if (auto v = read_name(r, k, "the provider's name"))
             p.name = *v;
     }},
    {{"provider", "mx_suffix", "array of suffixes", "",
      "the provider's destinations: every MX host ends with one (\".google.com\")"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_checked_strings(r, k, p.mx_suffix, "a host name suffix", suffix_check);
     }},
    {{"provider", "domain_suffix", "array of suffixes", "",
      "or: the routing domain is one of these or below (\"yahoo.com\")"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_checked_strings(r, k, p.domain_suffix, "a domain suffix", suffix_check);
     }},
    {{"provider", "max_connections", "integer", "",
      "connections per egress source over all shards (default: the destination's)"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_optional_uint(r, k, p.max_connections, 1, 100000);
     }},
    {{"provider", "max_messages_per_connection", "integer", "",
      "transactions per connection (default: the destination's)"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_optional_uint(r, k, p.max_messages_per_connection, 1, 10000000);
     }},
    {{"provider", "max_message_rate", "\"N/s\"|\"N/min\"|\"N/h\"", "",
      "messages started per egress source, all shards (GCRA); none = no limit"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         p.max_message_rate = read_rate(r, k);
     }},
    {{"provider", "max_message_burst", "integer", "",
      "messages that may start at once at max_message_rate (default 1)"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_optional_uint(r, k, p.max_message_burst, 1, 100000);
     }},
    {{"provider", "max_connection_rate", "\"N/s\"|\"N/min\"|\"N/h\"", "",
      "connections opened per egress source, all shards (GCRA, no burst)"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         p.max_connection_rate = read_rate(r, k);
     }},
    {{"provider", "tls", "\"none\"|\"opportunistic\"|\"required\"", "",
      "outbound STARTTLS for the provider's domains"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         p.tls = read_tls_policy(r, k);
     }},
    {{"provider", "egress_pool", "pool name", "", "pin the provider's connections to this pool"},
     [](table_reader& r, std::string_view k, provider_config& p) {
         read_string(r, k, p.egress_pool);
     }},
};

const field<shaping_rule_config> shaping_rule_fields[] = {
    {{"shaping_rule", "provider", "provider name or \"*\"", "",
      "the rule watches this provider's replies (\"*\": every destination)"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         read_string(r, k, s.provider);
     }},
    {{"shaping_rule", "domain", "domain name", "", "or one routing domain's replies"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         if (auto v = read_domain_value(r, k))
             s.domain = *v;
     }},
    {{"shaping_rule", "match", "regex", "",
      "RE2 regex searched in the reply as one line: \"code enhanced-code text\"", true},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         const toml::node* n = read_string(r, k, s.match);
         if (n == nullptr && r.table().get(k) == nullptr) {
             r.missing(k, "missing (the regex)");
             return;
         }
         if (n == nullptr)
             return;
         std::string why;
         std::vector<std::string> one{s.match};
         if (s.match.empty() || !core::regex_set::compile(one, why)) {
             r.ctx().fail(
                 *n, r.key(k),
                 fmt::format("bad regex {}: {}", shown(s.match), s.match.empty() ? "empty" : why));
             s.match.clear();
         }
     }},
    {{"shaping_rule", "action", "\"suspend\"|\"set\"|\"bounce\"", "\"suspend\"",
      "stop new attempts / override limits / fail the recipients now"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         std::string text;
         const toml::node* n = read_string(r, k, text);
         if (n == nullptr)
             return;
         if (text == "suspend")
             s.action = shaping_action::suspend;
         else if (text == "set")
             s.action = shaping_action::set;
         else if (text == "bounce")
             s.action = shaping_action::bounce;
         else
             r.ctx().fail(
                 *n, r.key(k),
                 fmt::format(R"(expected "suspend", "set" or "bounce", got {})", shown(text)));
     }},
    {{"shaping_rule", "duration", "duration", "",
      "how long a suspend or set lasts (required for them)"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         read_duration(r, k, s.duration);
     }},
    {{"shaping_rule", "trigger", "\"immediate\"|\"N/DURATION\"", "\"immediate\"",
      "act at the first match, or at N matches within DURATION (\"5/10m\")"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         std::string text;
         const toml::node* n = read_string(r, k, text);
         if (n == nullptr)
             return;
         if (text == "immediate") {
             s.trigger_count = 1;
             s.trigger_window = std::chrono::seconds(0);
             return;
         }
         const std::size_t slash = text.find('/');
         unsigned count = 0;
         bool ok = slash != std::string::npos && slash > 0 && slash <= 6;
         for (std::size_t i = 0; ok && i < slash; ++i) {
             ok = text[i] >= '0' && text[i] <= '9';
             count = count * 10 + static_cast<unsigned>(text[i] - '0');
         }
         if (ok) {
             auto w = parse_duration(std::string_view(text).substr(slash + 1));
             ok = count >= 1 && w.has_value();
             if (ok) {
                 s.trigger_count = count;
                 s.trigger_window = *w;
             }
         }
         if (!ok)
             r.ctx().fail(
                 *n, r.key(k),
                 fmt::format(R"(expected "immediate" or "N/DURATION" like "5/10m", got {})",
                             shown(text)));
     }},
    {{"shaping_rule", "max_message_rate", "\"N/s\"|\"N/min\"|\"N/h\"", "",
      "action set: the provider's message rate for the duration"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         s.max_message_rate = read_rate(r, k);
     }},
    {{"shaping_rule", "max_connections", "integer", "",
      "action set: the provider's connections per source for the duration"},
     [](table_reader& r, std::string_view k, shaping_rule_config& s) {
         read_optional_uint(r, k, s.max_connections, 1, 100000);
     }},
};

const field<domain_config> domain_fields[] = {
    {{"domain", "name", "domain name", "", "the destination domain (the part after @)", true},
     [](table_reader& r, std::string_view k, domain_config& d) {
         std::string text;
         if (const toml::node* nn = read_string(r, k, text)) {
             if (auto c = canonical_domain(text)) {
                 d.name = *c;
             } else {
                 r.ctx().fail(*nn, r.key(k),
                              fmt::format("expected a domain name, got {}", shown(text)));
             }
         } else if (r.table().get(k) == nullptr) {
             r.missing(k, "missing (the destination domain)");
         }
     }},
    {{"domain", "route", "\"host:port\"", "",
      "send this domain's mail there instead of its MX hosts"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         std::string text;
         if (const toml::node* rn = read_string(r, k, text)) {
             if (auto hp = parse_smarthost(text)) {
                 d.route = std::move(*hp);
             } else if (!text.empty()) {
                 r.ctx().fail(
                     *rn, r.key(k),
                     fmt::format(R"(expected "host:port" (IPv6 as "[2001:db8::1]:25"), got {})",
                                 shown(text)));
             }
         }
     }},
    {{"domain", "max_connections", "integer", "",
      "connections over all shards (default: delivery's)"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (r.table().get(k) != nullptr) {
             std::uint32_t u = 0;
             read_uint(r, k, u, 1, 100000);
             if (u != 0)
                 d.max_connections = u;
         }
     }},
    {{"domain", "max_messages_per_connection", "integer", "", "transactions per connection"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (r.table().get(k) != nullptr) {
             std::uint32_t u = 0;
             read_uint(r, k, u, 1);
             if (u != 0)
                 d.max_messages_per_connection = u;
         }
     }},
    {{"domain", "connect_timeout", "duration", "", "time to establish a connection"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (const toml::node* c = r.take(k)) {
             std::chrono::seconds v{};
             if (duration_value(r.ctx(), *c, r.key(k), v))
                 d.connect_timeout = v;
         }
     }},
    {{"domain", "rate", "number", "", "messages per second started (token bucket)"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (auto v = read_number(r, k, 0, false, "expected messages per second, a number > 0"))
             d.rate = *v;
     }},
    {{"domain", "burst", "number", "", "bucket size in messages (default: max(1, rate))"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (auto v =
                 read_number(r, k, 1, true, "expected a bucket size in messages, a number >= 1"))
             d.burst = *v;
     }},
    {{"domain", "tls", "\"none\"|\"opportunistic\"|\"required\"", "",
      "outbound STARTTLS for the domain"},
     [](table_reader& r, std::string_view k, domain_config& d) { d.tls = read_tls_policy(r, k); }},
    {{"domain", "tls_verify", "boolean", "", "TLS must verify and name the MX host"},
     [](table_reader& r, std::string_view k, domain_config& d) {
         if (r.table().get(k) != nullptr) {
             bool v = false;
             read_bool(r, k, v);
             d.tls_verify = v;
         }
     }},
};

// A header field name (RFC 5322 section 3.6.8: printable ASCII except the colon).
bool field_name_ok(std::string_view n) {
    if (n.empty() || n.size() > 64)
        return false;
    for (char c : n) {
        if (c < 33 || c > 126 || c == ':')
            return false;
    }
    return true;
}

const field<dkim_config> dkim_fields[] = {
    {{"dkim", "domain", "domain name", "",
      "d=; signs mail whose From: domain is this domain or a subdomain of it", true},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         if (auto v = read_domain_value(r, k))
             d.domain = *v;
         else if (r.table().get(k) == nullptr)
             r.missing(k, "missing (the signing domain, d=)");
     }},
    {{"dkim", "selector", "selector", "", "s=; the key is published at SELECTOR._domainkey.DOMAIN",
      true},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         std::string text;
         if (const toml::node* n = read_string(r, k, text)) {
             if (auto c = canonical_domain(text)) {
                 d.selector = *c;
             } else {
                 r.ctx().fail(*n, r.key(k),
                              fmt::format("expected a selector (DNS labels), got {}", shown(text)));
             }
         } else if (r.table().get(k) == nullptr) {
             r.missing(k, "missing (the selector, s=)");
         }
     }},
    {{"dkim", "key_file", "path", "",
      "PEM private key: RSA (1024-4096 bits) or Ed25519 (PKCS#8); the algorithm follows it", true},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         if (const toml::node* n = read_string(r, k, d.key_file)) {
             if (d.key_file.empty())
                 r.ctx().fail(*n, r.key(k), "must not be empty");
         } else if (r.table().get(k) == nullptr) {
             r.missing(k, "missing (the private key file)");
         }
     }},
    {{"dkim", "headers", "array of header names", "[]",
      "h= candidates; [] = RFC 6376 5.4.1's list + List-Unsubscribe(-Post), Feedback-ID"},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         auto check = [](const toml::node&, const std::string&,
                         const std::string& text) -> std::optional<std::string> {
             if (!field_name_ok(text))
                 return std::nullopt;
             std::string lower;
             for (char c : text)
                 lower += core::to_lower_ascii(c);
             return lower;
         };
         std::vector<std::string> lowered;
         if (!read_checked_strings(r, k, lowered, "a header field name", check))
             return;
         // Keep the names as written (they appear in h=); duplicates were refused above.
         d.headers.clear();
         const toml::node* n = r.table().get(k);
         for (const toml::node& e : *n->as_array())
             d.headers.push_back(e.as_string()->get());
         if (!d.headers.empty() &&
             std::find(lowered.begin(), lowered.end(), "from") == lowered.end()) {
             r.ctx().fail(*n, r.key(k), "must include From (RFC 6376 section 5.4)");
         }
     }},
    {{"dkim", "over_sign", "boolean", "true",
      "sign each listed header once more than it occurs, so none can be added"},
     [](table_reader& r, std::string_view k, dkim_config& d) { read_bool(r, k, d.over_sign); }},
    {{"dkim", "canonicalization", "\"HEADER/BODY\"", "\"relaxed/relaxed\"",
      "c=; each simple or relaxed"},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         std::string text;
         const toml::node* n = read_string(r, k, text);
         if (n == nullptr)
             return;
         auto one = [](std::string_view t) -> std::optional<dkim_canon> {
             if (t == "simple")
                 return dkim_canon::simple;
             if (t == "relaxed")
                 return dkim_canon::relaxed;
             return std::nullopt;
         };
         const std::size_t slash = text.find('/');
         auto h = one(std::string_view(text).substr(0, slash));
         auto b = slash == std::string::npos ? std::optional<dkim_canon>(dkim_canon::simple)
                                             : one(std::string_view(text).substr(slash + 1));
         if (!h || !b) {
             r.ctx().fail(*n, r.key(k),
                          fmt::format(R"(expected "relaxed/relaxed", "simple/simple", )"
                                      R"("relaxed/simple" or "simple/relaxed", got {})",
                                      shown(text)));
             return;
         }
         d.header_canon = *h;
         d.body_canon = *b;
     }},
    {{"dkim", "expire_after", "duration", "\"\"", "x= is t= plus this; \"\" = no x="},
     [](table_reader& r, std::string_view k, dkim_config& d) {
         const toml::node* n = r.take(k);
         if (n == nullptr)
             return;
         if (n->is_string() && n->as_string()->get().empty()) {
             d.expire_after = std::chrono::seconds(0);
             return;
         }
         std::chrono::seconds v{};
         if (duration_value(r.ctx(), *n, r.key(k), v))
             d.expire_after = v;
     }},
};

const field<dns_config> dns_fields[] = {
    {{"dns", "servers", "array of \"ip:port\"", "[]", "resolvers; empty = /etc/resolv.conf"},
     [](table_reader& r, std::string_view k, dns_config& d) {
         read_checked_strings(r, k, d.servers, R"("ip:port")", ip_port_check);
     }},
};

const field<auth_config> auth_fields[] = {
    {{"auth", "users_file", "path", "\"\"", "\"user:hash\" lines for SMTP AUTH; \"\" = no AUTH"},
     [](table_reader& r, std::string_view k, auth_config& a) { read_string(r, k, a.users_file); }},
    {{"auth", "max_failures", "integer", "5",
      "failed AUTH per client address within failure_window, all shards together"},
     [](table_reader& r, std::string_view k, auth_config& a) {
         read_uint(r, k, a.max_failures, 1, 10000);
     }},
    {{"auth", "failure_window", "duration", "\"5m\"",
      "the window of max_failures (at most 30 days)"},
     [](table_reader& r, std::string_view k, auth_config& a) {
         read_duration(r, k, a.failure_window);
     }},
    {{"auth", "verify_threads", "integer", "1", "threads verifying passwords, off the shards"},
     [](table_reader& r, std::string_view k, auth_config& a) {
         read_uint(r, k, a.verify_threads, 1, 64);
     }},
};

// "" (off) or an "ip:port" kept in its canonical form; `note` follows "ip:port" in the error.
void read_optional_ip_port(table_reader& r, std::string_view k, std::string& out,
                           std::string_view note) {
    std::string text;
    const toml::node* n = read_string(r, k, text);
    if (n == nullptr)
        return;
    if (text.empty()) {
        out.clear();
    } else if (auto c = canonical_ip_port(text)) {
        out = *c;
    } else {
        r.ctx().fail(*n, r.key(k),
                     fmt::format(R"(expected "" or "ip:port"{}, got {})", note, shown(text)));
    }
}

const field<admin_config> admin_fields[] = {
    {{"admin", "address", "\"ip:port\"", "\"127.0.0.1:8025\"",
      "the admin HTTP endpoint; \"\" disables it"},
     [](table_reader& r, std::string_view k, admin_config& a) {
         read_optional_ip_port(r, k, a.address, "");
     }},
    {{"admin", "token_file", "path", "\"\"",
      "file holding the bearer token every admin request but /healthz and /readyz must send; "
      "required when address is not loopback"},
     [](table_reader& r, std::string_view k, admin_config& a) { read_string(r, k, a.token_file); }},
};

const field<cluster_config> cluster_fields[] = {
    {{"cluster", "redis", "\"ip:port\"", "\"\"",
      "Redis shared by every node: provider rates, connection limits and suspensions hold "
      "across them; \"\" = this node alone"},
     [](table_reader& r, std::string_view k, cluster_config& c) {
         read_optional_ip_port(r, k, c.redis, " (an IP address: names are not resolved)");
     }},
};

// The defaults of a section: its fields' default texts read like a file of their own. They
// are part of the program, so a default that does not read is a bug.
template <typename S>
void apply_defaults(std::span<const field<S>> fields, std::string_view path, S& out) {
    std::string text;
    for (const auto& f : fields) {
        if (!f.spec.default_value.empty())
            text += fmt::format("{} = {}\n", f.spec.name, f.spec.default_value);
    }
    toml::table t;
    try {
        t = toml::parse(std::string_view(text), std::string_view("<defaults>"));
    } catch (const toml::parse_error& e) {
        core::invariant_broken("config schema: defaults of [{}] do not parse: {}", path,
                               e.description());
    }
    context ctx("<defaults>");
    table_reader r(ctx, t, std::string(path));
    for (const auto& f : fields) {
        if (!f.spec.default_value.empty())
            f.read(r, f.spec.name, out);
    }
    if (ctx.failed())
        core::invariant_broken("config schema: {}", ctx.joined());
}

// Defaults, then the table's own values; unknown keys are errors.
template <typename S>
void read_section(context& ctx, const toml::table* t, std::string_view path,
                  std::span<const field<S>> fields, S& out) {
    apply_defaults(fields, path, out);
    if (t == nullptr)
        return;
    table_reader r(ctx, *t, std::string(path));
    for (const auto& f : fields)
        f.read(r, f.spec.name, out);
    r.finish();
}

// An array of tables ([[listen]], [[domain]]): each element read like a section; `check` is
// the element's cross-key rules.
template <typename S, typename Check>
void read_array_of_tables(context& ctx, table_reader& root, std::string_view name,
                          std::span<const field<S>> fields, std::vector<S>& out, Check&& check) {
    const toml::node* n = root.take(name);
    if (n == nullptr)
        return;
    if (!n->is_array_of_tables()) {
        ctx.fail(*n, name,
                 fmt::format("expected an array of tables ([[{}]]), got {}", name,
                             n->is_array() ? "an array with other values" : type_name(*n)));
        return;
    }
    std::size_t i = 0;
    for (const toml::node& e : *n->as_array()) {
        const std::string path = fmt::format("{}[{}]", name, i++);
        S element;
        apply_defaults(fields, path, element);
        table_reader r(ctx, *e.as_table(), path);
        for (const auto& f : fields)
            f.read(r, f.spec.name, element);
        check(r, element);
        r.finish();
        out.push_back(std::move(element));
    }
}

void listener_tls_files(table_reader& r, listener_config& l) {
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

// Name -> the key that first used it; a second use is an error on `key`.
bool unique_name(context& ctx, std::map<std::string, std::string>& seen, table_reader& r,
                 const std::string& name, std::string_view what) {
    if (name.empty())
        return false;
    auto [it, fresh] = seen.emplace(name, r.key("name"));
    if (!fresh) {
        ctx.fail(*r.table().get("name"), r.key("name"),
                 fmt::format("{} {} is already configured by {}", what, shown(name), it->second));
    }
    return fresh;
}

// [[provider]] and [[shaping_rule]] of one file (the main one or the shaping file).
void read_shaping_tables(context& ctx, table_reader& root, std::string_view origin,
                         std::vector<provider_config>& providers,
                         std::vector<shaping_rule_config>& rules) {
    std::map<std::string, std::string> seen;
    read_array_of_tables<provider_config>(
        ctx, root, "provider", provider_fields, providers,
        [&](table_reader& pr, provider_config& p) {
            unique_name(ctx, seen, pr, p.name, "provider");
            p.origin = std::string(origin);
            if (p.mx_suffix.empty() && p.domain_suffix.empty() && !p.name.empty())
                pr.missing("mx_suffix", "give mx_suffix or domain_suffix (not empty)");
        });
    read_array_of_tables<shaping_rule_config>(
        ctx, root, "shaping_rule", shaping_rule_fields, rules,
        [&](table_reader& sr, shaping_rule_config& s) {
            s.where =
                origin.empty() ? sr.key("match") : fmt::format("{}: {}", origin, sr.key("match"));
            if (s.provider.empty() == s.domain.empty())
                sr.missing("provider", R"(give provider (a name or "*") or domain, exactly one)");
            const bool timed = s.action != shaping_action::bounce;
            if (timed && s.duration.count() == 0)
                sr.missing("duration", fmt::format("action \"{}\" needs a duration",
                                                   shaping_action_name(s.action)));
            if (!timed && sr.table().get("duration") != nullptr)
                sr.missing("duration", "action \"bounce\" takes no duration");
            const bool overrides = s.max_message_rate || s.max_connections;
            if (s.action == shaping_action::set && !overrides)
                sr.missing("action",
                           "action \"set\" needs max_message_rate or max_connections to set");
            if (s.action != shaping_action::set && overrides)
                sr.missing("action", "max_message_rate and max_connections go with action \"set\"");
        });
}

// The shipped tables: read on their own (only [[provider]] and [[shaping_rule]]), then merged
// under the main file's (a provider named in both keeps the main file's; rules: main first).
void merge_shaping_file(context& ctx, settings& c, bool explicit_path) {
    const std::string& path = c.delivery.shaping_file;
    if (path.empty())
        return;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (err == ENOENT && !explicit_path)
            return;  // the default path of a build that is not installed
        ctx.fail(
            nullptr, "delivery.shaping_file",
            fmt::format("cannot open {}: {}", shown(path), std::generic_category().message(err)));
        return;
    }
    std::string text;
    char buf[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || text.size() > (4u << 20))
            break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    toml::table root;
    try {
        root = toml::parse(std::string_view(text), std::string_view(path));
    } catch (const toml::parse_error& e) {
        const auto& where = e.source().begin;
        ctx.fail(nullptr, "delivery.shaping_file",
                 fmt::format("{}:{}:{}: TOML syntax error: {}", path, where.line, where.column,
                             e.description()));
        return;
    }
    context fctx(path);
    table_reader r(fctx, root, "");
    std::vector<provider_config> providers;
    std::vector<shaping_rule_config> rules;
    read_shaping_tables(fctx, r, path, providers, rules);
    r.finish();
    if (fctx.failed()) {
        ctx.fail(nullptr, "delivery.shaping_file", fctx.joined());
        return;
    }
    for (auto& p : providers) {
        const bool shadowed =
            std::any_of(c.providers.begin(), c.providers.end(),
                        [&](const provider_config& o) { return o.name == p.name; });
        if (!shadowed)
            c.providers.push_back(std::move(p));
    }
    for (auto& s : rules)
        c.shaping_rules.push_back(std::move(s));
}

// References between the tables, once everything is merged.
void check_shaping(context& ctx, const settings& c) {
    auto has_source = [&](const std::string& n) {
        return std::any_of(c.egress_sources.begin(), c.egress_sources.end(),
                           [&](const egress_source_config& s) { return s.name == n; });
    };
    auto has_pool = [&](const std::string& n) {
        return std::any_of(c.egress_pools.begin(), c.egress_pools.end(),
                           [&](const egress_pool_config& p) { return p.name == n; });
    };
    for (std::size_t i = 0; i < c.egress_pools.size(); ++i) {
        const auto& p = c.egress_pools[i];
        for (std::size_t j = 0; j < p.sources.size(); ++j) {
            if (!has_source(p.sources[j].source))
                ctx.fail(nullptr, fmt::format("egress_pool[{}].sources[{}].name", i, j),
                         fmt::format("unknown egress source {} (no [[egress_source]] has it)",
                                     shown(p.sources[j].source)));
        }
        // One pool mixes families only if every destination could be reached from both: refuse.
        bool v4 = false, v6 = false;
        for (const auto& m : p.sources) {
            for (const auto& s : c.egress_sources) {
                if (s.name == m.source)
                    (s.address.find(':') == std::string::npos ? v4 : v6) = true;
            }
        }
        if (v4 && v6)
            ctx.fail(nullptr, fmt::format("egress_pool[{}].sources", i),
                     "mixes IPv4 and IPv6 sources: make one pool per address family");
    }
    if (!c.delivery.egress_pool.empty() && !has_pool(c.delivery.egress_pool))
        ctx.fail(nullptr, "delivery.egress_pool",
                 fmt::format("unknown egress pool {}", shown(c.delivery.egress_pool)));
    for (std::size_t i = 0; i < c.providers.size(); ++i) {
        const auto& p = c.providers[i];
        if (!p.egress_pool.empty() && !has_pool(p.egress_pool))
            ctx.fail(nullptr,
                     fmt::format("{}provider[{}].egress_pool",
                                 p.origin.empty() ? "" : p.origin + ": ", i),
                     fmt::format("unknown egress pool {}", shown(p.egress_pool)));
    }
    for (const auto& s : c.shaping_rules) {
        if (s.provider.empty() || s.provider == "*")
            continue;
        const bool known =
            std::any_of(c.providers.begin(), c.providers.end(),
                        [&](const provider_config& p) { return p.name == s.provider; });
        if (!known)
            ctx.fail(nullptr, s.where.substr(0, s.where.rfind('.')) + ".provider",
                     fmt::format("unknown provider {}", shown(s.provider)));
    }
}

}  // namespace

std::span<const key_spec> schema() {
    static const std::vector<key_spec> all = [] {
        std::vector<key_spec> v;
        auto add = [&](const auto& fields) {
            for (const auto& f : fields)
                v.push_back(f.spec);
        };
        add(server_fields);
        add(listen_fields);
        add(relay_fields);
        add(delivery_fields);
        add(domain_fields);
        add(dkim_fields);
        add(dns_fields);
        add(auth_fields);
        add(admin_fields);
        add(egress_source_fields);
        add(egress_pool_fields);
        add(provider_fields);
        add(shaping_rule_fields);
        add(cluster_fields);
        return v;
    }();
    return all;
}

std::optional<rate_config> parse_rate(std::string_view text) {
    const std::size_t slash = text.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash > 15)
        return std::nullopt;
    const std::string_view num = text.substr(0, slash);
    const std::string_view unit = text.substr(slash + 1);
    double per = 0;
    if (unit == "s")
        per = 1;
    else if (unit == "min")
        per = 60;
    else if (unit == "h")
        per = 3600;
    else
        return std::nullopt;
    double v = 0;
    double scale = 0;
    for (char ch : num) {
        if (ch == '.' && scale == 0) {
            scale = 1;
            continue;
        }
        if (ch < '0' || ch > '9')
            return std::nullopt;
        if (scale == 0) {
            v = v * 10 + (ch - '0');
        } else {
            scale /= 10;
            v += (ch - '0') * scale;
        }
    }
    if (num == "." || v <= 0 || v > 1e7)
        return std::nullopt;
    return rate_config{v / per, std::string(text)};
}

std::string_view shaping_action_name(shaping_action a) noexcept {
    switch (a) {
        case shaping_action::suspend:
            return "suspend";
        case shaping_action::set:
            return "set";
        case shaping_action::bounce:
            return "bounce";
    }
    return "?";
}

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
    auto parts = core::split_host_port(text);
    if (!parts)
        return std::nullopt;
    if (parts->bracketed) {
        if (auto ip = canonical_ip(AF_INET6, parts->host))
            return fmt::format("[{}]:{}", *ip, parts->port);
        return std::nullopt;
    }
    if (auto ip = canonical_ip(AF_INET, parts->host))
        return fmt::format("{}:{}", *ip, parts->port);
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
    settings c;
    read_section<server_config>(ctx, section(r, "server"), "server", server_fields, c.server);
    if (c.server.hostname.empty())
        c.server.hostname = default_hostname();
    if (c.server.shutdown_timeout <= c.server.drain_grace) {
        const toml::table* st = root.get_as<toml::table>("server");
        const toml::node* n = st != nullptr ? st->get("shutdown_timeout") : nullptr;
        if (n == nullptr && st != nullptr)
            n = st->get("drain_grace");
        ctx.fail(n != nullptr ? &n->source() : nullptr, "server.shutdown_timeout",
                 fmt::format("{} must be longer than server.drain_grace ({})",
                             core::format_duration(c.server.shutdown_timeout),
                             core::format_duration(c.server.drain_grace)));
    }

    // [[listen]]: at least one; addresses distinct; smtps has certificates.
    const toml::node* ln = root.get("listen");
    if (ln == nullptr || (ln->is_array() && ln->as_array()->empty())) {
        r.take("listen");
        if (ln == nullptr) {
            ctx.fail(nullptr, "listen", "at least one [[listen]] table is required");
        } else {
            ctx.fail(*ln, "listen", "at least one [[listen]] table is required");
        }
    } else {
        std::map<std::string, std::string> seen;  // canonical address -> key that used it
        read_array_of_tables<listener_config>(
            ctx, r, "listen", listen_fields, c.listen, [&](table_reader& lr, listener_config& l) {
                listener_tls_files(lr, l);
                if (!l.address.empty()) {
                    if (auto [it, fresh] = seen.emplace(l.address, lr.key("address")); !fresh) {
                        const toml::node* a = lr.table().get("address");
                        ctx.fail(*a, lr.key("address"),
                                 fmt::format("{} is already used by {}",
                                             shown(a->as_string()->get()), it->second));
                    }
                }
                if (l.role == listener_role::smtps && l.tls_certificates.empty() &&
                    lr.table().get("tls_cert") == nullptr) {
                    lr.missing("tls_cert", R"(role "smtps" needs tls_cert and tls_key)");
                }
            });
    }
    read_section<relay_config>(ctx, section(r, "relay"), "relay", relay_fields, c.relay);
    read_section<delivery_config>(ctx, section(r, "delivery"), "delivery", delivery_fields,
                                  c.delivery);
    if (c.delivery.helo_name.empty())
        c.delivery.helo_name = c.server.hostname;
    read_section<dns_config>(ctx, section(r, "dns"), "dns", dns_fields, c.dns);
    read_section<admin_config>(ctx, section(r, "admin"), "admin", admin_fields, c.admin);
    if (c.admin.enabled() && !c.admin.loopback() && c.admin.token_file.empty()) {
        const toml::table* at = root.get_as<toml::table>("admin");
        const toml::node* n = at != nullptr ? at->get("address") : nullptr;
        const std::string why = fmt::format(
            "{} is not a loopback address: set admin.token_file (anyone who reaches it could "
            "read and steer the queue)",
            shown(c.admin.address));
        if (n != nullptr)
            ctx.fail(*n, "admin.token_file", why);
        else
            ctx.fail(root, "admin.token_file", why);
    }
    if (const toml::table* at = root.get_as<toml::table>("admin"); at && !c.admin.address.empty()) {
        for (std::size_t i = 0; i < c.listen.size(); ++i) {
            if (c.listen[i].address == c.admin.address) {
                const toml::node* n = at->get("address");
                ctx.fail(*n, "admin.address",
                         fmt::format("{} is already used by listen[{}]",
                                     shown(n->as_string()->get()), i));
            }
        }
    }
    read_section<auth_config>(ctx, section(r, "auth"), "auth", auth_fields, c.auth);
    read_section<cluster_config>(ctx, section(r, "cluster"), "cluster", cluster_fields, c.cluster);
    std::map<std::string, std::string> domains_seen;
    read_array_of_tables<domain_config>(
        ctx, r, "domain", domain_fields, c.domains, [&](table_reader& dr, domain_config& d) {
            if (d.name.empty())
                return;
            if (auto [it, fresh] = domains_seen.emplace(d.name, dr.key("name")); !fresh) {
                const toml::node* nn = dr.table().get("name");
                ctx.fail(*nn, dr.key("name"),
                         fmt::format("{} is already configured by {}",
                                     shown(nn->as_string()->get()), it->second));
            }
        });
    std::map<std::pair<std::string, std::string>, std::string> dkim_seen;
    read_array_of_tables<dkim_config>(
        ctx, r, "dkim", dkim_fields, c.dkim, [&](table_reader& dr, dkim_config& d) {
            if (d.domain.empty() || d.selector.empty())
                return;
            if (auto [it, fresh] =
                    dkim_seen.emplace(std::pair(d.domain, d.selector), dr.key("selector"));
                !fresh) {
                const toml::node* sn = dr.table().get("selector");
                ctx.fail(*sn, dr.key("selector"),
                         fmt::format("selector {} of {} is already configured by {}",
                                     shown(sn->as_string()->get()), d.domain, it->second));
            }
        });
    std::map<std::string, std::string> sources_seen;
    read_array_of_tables<egress_source_config>(
        ctx, r, "egress_source", egress_source_fields, c.egress_sources,
        [&](table_reader& er, egress_source_config& e) {
            unique_name(ctx, sources_seen, er, e.name, "egress source");
        });
    for (auto& e : c.egress_sources) {
        if (e.ehlo_name.empty())
            e.ehlo_name = c.delivery.helo_name;
    }
    std::map<std::string, std::string> pools_seen;
    read_array_of_tables<egress_pool_config>(
        ctx, r, "egress_pool", egress_pool_fields, c.egress_pools,
        [&](table_reader& pr, egress_pool_config& p) {
            unique_name(ctx, pools_seen, pr, p.name, "egress pool");
        });
    read_shaping_tables(ctx, r, "", c.providers, c.shaping_rules);
    r.finish();
    {
        const toml::table* dt = root.get_as<toml::table>("delivery");
        merge_shaping_file(ctx, c, dt != nullptr && dt->get("shaping_file") != nullptr);
    }
    check_shaping(ctx, c);
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

}  // namespace ringmail::config
