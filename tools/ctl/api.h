// ringmailctl's admin API client: one HTTP/1.1 request per call to ringmaild's [admin]
// address (blocking sockets, a 10 s timeout), a small JSON reader for its answers, and the
// subcommands that speak it (queue, top, inspect, suspend, resume, flush, bounce, drain,
// metrics), printing tables for people or the raw JSON (--json) for scripts.
//
// Tool code: one thread, no shard. Failures are one message on stderr and exit code 1
// (unreachable endpoint, HTTP error with the server's JSON reason), 2 for usage errors.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::ctl {

struct api_options {
    std::string admin = "127.0.0.1:8025";
    std::string token_file;  // "" = no Authorization header
    bool json = false;
};

struct http_answer {
    int status = 0;
    std::string body;
};

// One request; nullopt with `why` when the endpoint cannot be reached or answers garbage.
std::optional<http_answer> http_call(const api_options& o, std::string_view method,
                                     std::string_view target, std::string_view body,
                                     std::string& why);

// A parsed JSON value (objects keep their members sorted by name).
struct json_value {
    enum class kind { null, boolean, number, string, array, object } k = kind::null;
    bool b = false;
    double n = 0;
    std::string s;
    std::vector<json_value> a;
    std::map<std::string, json_value> o;

    const json_value& operator[](const std::string& key) const;
    std::string text() const;  // strings as they are, numbers without a trailing ".0"
    double num() const noexcept { return k == kind::number ? n : 0; }
};
std::optional<json_value> parse_json(std::string_view text);

// The subcommands; each returns the process exit code.
int cmd_queue(const api_options& o, unsigned limit, const std::string& sort);
int cmd_top(const api_options& o, double interval, unsigned iterations);
int cmd_inspect(const api_options& o, const std::string& queue_id);
int cmd_suspend(const api_options& o, const std::string& domain, const std::string& duration,
                const std::string& reason);
// Ends every suspension (an operator's or a shaping rule's) of a domain, or of a provider.
int cmd_resume(const api_options& o, const std::string& name, bool provider);
int cmd_flush(const api_options& o, const std::string& domain);
int cmd_bounce(const api_options& o, const std::string& target, const std::string& reason);
int cmd_drain(const api_options& o);
int cmd_metrics(const api_options& o);

}  // namespace ringmail::ctl
