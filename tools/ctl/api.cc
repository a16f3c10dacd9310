#include "api.h"

#include "ringmail/core/hex.h"
#include "ringmail/core/json_string.h"
#include "ringmail/core/socket.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

namespace ringmail::ctl {

namespace {

constexpr int timeout_ms = 10000;
constexpr std::size_t max_answer = 64u << 20;

bool wait_fd(int fd, short events) {
    pollfd p{fd, events, 0};
    for (;;) {
        const int r = ::poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        return r > 0;
    }
}

std::optional<std::string> read_token(const std::string& path, std::string& why) {
    std::ifstream f(path);
    std::string line;
    if (!f || !std::getline(f, line)) {
        why = fmt::format("--token-file {}: cannot read it", path);
        return std::nullopt;
    }
    const auto b = line.find_first_not_of(" \t\r");
    const auto e = line.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : line.substr(b, e - b + 1);
}

// The server's JSON reason, or the status line's meaning.
int fail_with(const http_answer& a) {
    std::string why = fmt::format("HTTP {}", a.status);
    if (auto j = parse_json(a.body); j && j->k == json_value::kind::object)
        why += ": " + (*j)["error"].text();
    std::fprintf(stderr, "ringmailctl: %s\n", why.c_str());
    return 1;
}

// GET/POST/DELETE returning the answer when 2xx; prints the error and returns nullopt else.
std::optional<std::string> call(const api_options& o, std::string_view method,
                                std::string_view target, std::string_view body, int& rc) {
    std::string why;
    auto a = http_call(o, method, target, body, why);
    if (!a) {
        std::fprintf(stderr, "ringmailctl: %s\n", why.c_str());
        rc = 1;
        return std::nullopt;
    }
    if (a->status < 200 || a->status >= 300) {
        rc = fail_with(*a);
        return std::nullopt;
    }
    rc = 0;
    return std::move(a->body);
}

std::string json_quote(std::string_view s) {
    std::string out = "\"";
    for (const char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
        } else {
            out += c;
        }
    }
    return out + "\"";
}

std::string url_encode(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
            c == ':')
            out += c;
        else
            out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
    return out;
}

std::string age_text(double s) {
    if (s <= 0)
        return "-";
    if (s < 120)
        return fmt::format("{:.0f}s", s);
    if (s < 7200)
        return fmt::format("{:.0f}m", s / 60);
    if (s < 172800)
        return fmt::format("{:.1f}h", s / 3600);
    return fmt::format("{:.1f}d", s / 86400);
}

std::string when_text(const json_value& v) {
    if (v.k != json_value::kind::number)
        return "-";
    const double d = v.n - static_cast<double>(std::time(nullptr));
    return d <= 0 ? "now" : "in " + age_text(d);
}

std::string cut(std::string s, std::size_t n) {
    if (s.size() > n)
        s = s.substr(0, n - 3) + "...";
    return s;
}

void print_destinations(const json_value& q, std::size_t max_rows) {
    const auto& t = q["totals"];
    std::printf(
        "messages %s, recipients %s (ready %s, in flight %s, deferred %s), "
        "%s destination(s), oldest %s\n",
        t["messages"].text().c_str(), t["recipients"].text().c_str(), t["ready"].text().c_str(),
        t["in_flight"].text().c_str(), t["deferred"].text().c_str(),
        t["destinations"].text().c_str(), age_text(t["oldest_age"].num()).c_str());
    std::printf("%-32s %8s %7s %8s %8s %7s %9s %-9s %s\n", "DESTINATION", "RCPTS", "READY",
                "INFLIGHT", "DEFERRED", "OLDEST", "NEXT", "SUSPENDED", "LAST REPLY");
    std::size_t n = 0;
    for (const auto& d : q["destinations"].a) {
        if (n++ >= max_rows)
            break;
        std::printf("%-32s %8s %7s %8s %8s %7s %9s %-9s %s\n",
                    cut(d["destination"].text(), 32).c_str(), d["recipients"].text().c_str(),
                    d["ready"].text().c_str(), d["in_flight"].text().c_str(),
                    d["deferred"].text().c_str(), age_text(d["oldest_age"].num()).c_str(),
                    when_text(d["next_attempt"]).c_str(),
                    d["suspended_until"].k == json_value::kind::number
                        ? when_text(d["suspended_until"]).c_str()
                        : "",
                    cut(d["last_reply"].text(), 60).c_str());
    }
}

struct json_reader {
    std::string_view s;
    std::size_t i = 0;
    int depth = 0;

    void ws() {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
            ++i;
    }
    bool value(json_value& v) {
        ws();
        if (i >= s.size() || ++depth > 64)
            return false;
        const char c = s[i];
        bool ok = false;
        if (c == '{') {
            ++i;
            v.k = json_value::kind::object;
            ws();
            if (i < s.size() && s[i] == '}') {
                ++i;
                ok = true;
            } else {
                for (;;) {
                    json_value key;
                    ws();
                    if (!string(key.s))
                        break;
                    ws();
                    if (i >= s.size() || s[i++] != ':')
                        break;
                    json_value member;
                    if (!value(member))
                        break;
                    v.o[key.s] = std::move(member);
                    ws();
                    if (i < s.size() && s[i] == ',') {
                        ++i;
                        continue;
                    }
                    ok = i < s.size() && s[i++] == '}';
                    break;
                }
            }
        } else if (c == '[') {
            ++i;
            v.k = json_value::kind::array;
            ws();
            if (i < s.size() && s[i] == ']') {
                ++i;
                ok = true;
            } else {
                for (;;) {
                    json_value e;
                    if (!value(e))
                        break;
                    v.a.push_back(std::move(e));
                    ws();
                    if (i < s.size() && s[i] == ',') {
                        ++i;
                        continue;
                    }
                    ok = i < s.size() && s[i++] == ']';
                    break;
                }
            }
        } else if (c == '"') {
            v.k = json_value::kind::string;
            ok = string(v.s);
        } else if (s.substr(i, 4) == "true" || s.substr(i, 5) == "false") {
            v.k = json_value::kind::boolean;
            v.b = s[i] == 't';
            i += v.b ? 4 : 5;
            ok = true;
        } else if (s.substr(i, 4) == "null") {
            i += 4;
            ok = true;
        } else {
            const std::size_t start = i;
            while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-' ||
                                    s[i] == '+' || s[i] == '.' || s[i] == 'e' || s[i] == 'E'))
                ++i;
            if (i > start) {
                v.k = json_value::kind::number;
                v.n = std::strtod(std::string(s.substr(start, i - start)).c_str(), nullptr);
                ok = true;
            }
        }
        --depth;
        return ok;
    }
    bool string(std::string& out) {
        if (i >= s.size() || s[i] != '"')
            return false;
        ++i;
        while (i < s.size()) {
            const char c = s[i++];
            if (c == '"')
                return true;
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= s.size())
                return false;
            const char e = s[i++];
            if (e == 'n')
                out += '\n';
            else if (e == 't')
                out += '\t';
            else if (e == 'r')
                out += '\r';
            else if (e == 'u') {
                // Four hex digits exactly; anything else is a malformed answer.
                if (i + 4 > s.size())
                    return false;
                unsigned cp = 0;
                for (int k = 0; k < 4; ++k) {
                    const int h = core::hex_value(s[i++]);
                    if (h < 0)
                        return false;
                    cp = cp * 16 + static_cast<unsigned>(h);
                }
                core::append_json_code_point(out, cp);
            } else {
                out += e;
            }
        }
        return false;
    }
};

std::map<std::string, double> parse_metrics(std::string_view text) {
    std::map<std::string, double> m;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        if (line.empty() || line[0] == '#')
            continue;
        const auto sp = line.rfind(' ');
        if (sp == std::string_view::npos)
            continue;
        m[std::string(line.substr(0, sp))] =
            std::strtod(std::string(line.substr(sp + 1)).c_str(), nullptr);
    }
    return m;
}

double sum_of(const std::map<std::string, double>& m, std::string_view name) {
    double s = 0;
    for (const auto& [k, v] : m) {
        if (k == name || (k.size() > name.size() && k.compare(0, name.size(), name) == 0 &&
                          k[name.size()] == '{'))
            s += v;
    }
    return s;
}

volatile std::sig_atomic_t stop_top = 0;

}  // namespace

const json_value& json_value::operator[](const std::string& key) const {
    static const json_value none;
    if (k != kind::object)
        return none;
    auto it = o.find(key);
    return it == o.end() ? none : it->second;
}

std::string json_value::text() const {
    switch (k) {
        case kind::null:
            return "";
        case kind::boolean:
            return b ? "true" : "false";
        case kind::number:
            if (std::floor(n) == n && std::fabs(n) < 1e15)
                return fmt::format("{}", static_cast<long long>(n));
            return fmt::format("{}", n);
        case kind::string:
            return s;
        default:
            return "...";
    }
}

std::optional<json_value> parse_json(std::string_view text) {
    json_reader r{text};
    json_value v;
    if (!r.value(v))
        return std::nullopt;
    r.ws();
    if (r.i != text.size())
        return std::nullopt;
    return v;
}

std::optional<http_answer> http_call(const api_options& o, std::string_view method,
                                     std::string_view target, std::string_view body,
                                     std::string& why) {
    auto ep = core::parse_endpoint(o.admin);
    if (!ep) {
        why = fmt::format("--admin {}: {} (expected ip:port)", o.admin, ep.error().message());
        return std::nullopt;
    }
    std::string auth;
    if (!o.token_file.empty()) {
        auto t = read_token(o.token_file, why);
        if (!t)
            return std::nullopt;
        auth = fmt::format("Authorization: Bearer {}\r\n", *t);
    }
    const int fd = ::socket(ep->addr()->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        why = fmt::format("socket: {}", std::strerror(errno));
        return std::nullopt;
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } guard{fd};
    if (::connect(fd, ep->addr(), ep->len) != 0 && errno != EINPROGRESS) {
        why = fmt::format("cannot connect to {}: {}", o.admin, std::strerror(errno));
        return std::nullopt;
    }
    if (!wait_fd(fd, POLLOUT)) {
        why = fmt::format("cannot connect to {}: timed out", o.admin);
        return std::nullopt;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        why = fmt::format("cannot connect to {}: {}", o.admin, std::strerror(err));
        return std::nullopt;
    }
    std::string req = fmt::format(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringmailctl\r\nConnection: close\r\n{}", method,
        target, o.admin, auth);
    if (!body.empty() || method == "POST")
        req += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
    req += "\r\n";
    req += body;
    std::string_view out = req;
    while (!out.empty()) {
        const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(fd, POLLOUT)) {
                why = "sending the request: timed out";
                return std::nullopt;
            }
            continue;
        }
        if (n < 0) {
            why = fmt::format("sending the request: {}", std::strerror(errno));
            return std::nullopt;
        }
        out.remove_prefix(static_cast<std::size_t>(n));
    }
    std::string in;
    char buf[65536];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(fd, POLLIN)) {
                why = "reading the answer: timed out";
                return std::nullopt;
            }
            continue;
        }
        if (n < 0) {
            why = fmt::format("reading the answer: {}", std::strerror(errno));
            return std::nullopt;
        }
        if (n == 0)
            break;
        in.append(buf, static_cast<std::size_t>(n));
        if (in.size() > max_answer) {
            why = "the answer is too large";
            return std::nullopt;
        }
    }
    const auto end = in.find("\r\n\r\n");
    if (in.compare(0, 9, "HTTP/1.1 ") != 0 || end == std::string::npos || in.size() < 12) {
        why = fmt::format("{} does not answer HTTP", o.admin);
        return std::nullopt;
    }
    http_answer a;
    a.status = std::atoi(in.c_str() + 9);
    a.body = in.substr(end + 4);
    return a;
}

int cmd_queue(const api_options& o, unsigned limit, const std::string& sort) {
    int rc = 0;
    auto body = call(o, "GET", fmt::format("/api/v1/queue?limit={}&sort={}", limit, sort), "", rc);
    if (!body)
        return rc;
    if (o.json) {
        std::fputs(body->c_str(), stdout);
        return 0;
    }
    auto j = parse_json(*body);
    if (!j) {
        std::fputs("ringmailctl: the answer is not JSON\n", stderr);
        return 1;
    }
    print_destinations(*j, limit);
    return 0;
}

int cmd_inspect(const api_options& o, const std::string& queue_id) {
    int rc = 0;
    auto body = call(o, "GET", "/api/v1/messages/" + url_encode(queue_id), "", rc);
    if (!body)
        return rc;
    if (o.json) {
        std::fputs(body->c_str(), stdout);
        return 0;
    }
    auto j = parse_json(*body);
    if (!j) {
        std::fputs("ringmailctl: the answer is not JSON\n", stderr);
        return 1;
    }
    const auto& m = *j;
    std::printf("queue id  %s\nsender    <%s>\nsize      %s bytes\nage       %s\nattempts  %s\n",
                m["queue_id"].text().c_str(), m["sender"].text().c_str(), m["size"].text().c_str(),
                age_text(m["age"].num()).c_str(), m["attempts"].text().c_str());
    std::printf("%-40s %-10s %-24s %-9s %s\n", "RECIPIENT", "STATE", "DESTINATION", "NEXT",
                "LAST REPLY");
    for (const auto& r : m["recipients"].a) {
        std::printf("%-40s %-10s %-24s %-9s %s\n", cut(r["address"].text(), 40).c_str(),
                    r["state"].text().c_str(), cut(r["destination"].text(), 24).c_str(),
                    when_text(r["next_attempt"]).c_str(), r["last_reply"].text().c_str());
    }
    return 0;
}

int cmd_suspend(const api_options& o, const std::string& domain, const std::string& duration,
                const std::string& reason) {
    int rc = 0;
    if (domain.empty()) {
        auto body = call(o, "GET", "/api/v1/suspend", "", rc);
        if (!body)
            return rc;
        if (o.json) {
            std::fputs(body->c_str(), stdout);
            return 0;
        }
        auto j = parse_json(*body);
        if (!j)
            return 1;
        // Operators' and shaping rules' entries: BY is "operator" or the rule (its key and
        // pattern); a rule's `set` shows the limits it lowered.
        std::printf("%-8s %-28s %-10s %-16s %-10s %-24s %s\n", "KIND", "NAME", "SOURCE", "EFFECT",
                    "UNTIL", "BY", "REASON");
        for (const auto& s : (*j)["suspensions"].a) {
            std::string effect = s["effect"].text();
            if (effect == "set") {
                if (s["set_rate"].num() > 0)
                    effect += fmt::format(" {:g}/s", s["set_rate"].num());
                if (s["set_connections"].num() > 0)
                    effect += fmt::format(" {:g}c", s["set_connections"].num());
            }
            const std::string by =
                s["origin"].text() == "rule" ? "rule " + s["rule"].text() : s["origin"].text();
            const std::string source = s["source"].text();
            std::printf("%-8s %-28s %-10s %-16s %-10s %-24s %s\n", s["kind"].text().c_str(),
                        cut(s["name"].text(), 28).c_str(),
                        source.empty() ? "*" : cut(source, 10).c_str(), effect.c_str(),
                        when_text(s["until"]).c_str(), cut(by, 24).c_str(),
                        s["reason"].text().c_str());
        }
        return 0;
    }
    const std::string req =
        fmt::format("{{\"domain\":{},\"duration\":{},\"reason\":{}}}", json_quote(domain),
                    json_quote(duration), json_quote(reason));
    auto body = call(o, "POST", "/api/v1/suspend", req, rc);
    if (!body)
        return rc;
    if (o.json) {
        std::fputs(body->c_str(), stdout);
        return 0;
    }
    auto j = parse_json(*body);
    std::printf("%s suspended until %s\n", domain.c_str(),
                j ? when_text((*j)["suspended"]["until"]).c_str() : "?");
    return 0;
}

int cmd_resume(const api_options& o, const std::string& name, bool provider) {
    int rc = 0;
    auto body = call(
        o, "DELETE",
        std::string("/api/v1/suspend?") + (provider ? "provider=" : "domain=") + url_encode(name),
        "", rc);
    if (!body)
        return rc;
    if (o.json)
        std::fputs(body->c_str(), stdout);
    else
        std::printf("%s resumed\n", name.c_str());
    return 0;
}

int cmd_flush(const api_options& o, const std::string& domain) {
    int rc = 0;
    const std::string req =
        domain.empty() ? "{}" : fmt::format("{{\"domain\":{}}}", json_quote(domain));
    auto body = call(o, "POST", "/api/v1/flush", req, rc);
    if (!body)
        return rc;
    if (o.json) {
        std::fputs(body->c_str(), stdout);
        return 0;
    }
    auto j = parse_json(*body);
    std::printf("%s job(s) made ready\n", j ? (*j)["flushed_jobs"].text().c_str() : "?");
    return 0;
}

int cmd_bounce(const api_options& o, const std::string& target, const std::string& reason) {
    const bool is_id = target.size() == 16 && std::all_of(target.begin(), target.end(), [](char c) {
                           return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                       });
    const std::string req =
        fmt::format("{{\"{}\":{},\"reason\":{}}}", is_id ? "queue_id" : "domain",
                    json_quote(target), json_quote(reason));
    int rc = 0;
    auto body = call(o, "POST", "/api/v1/bounce", req, rc);
    if (!body)
        return rc;
    if (o.json) {
        std::fputs(body->c_str(), stdout);
        return 0;
    }
    auto j = parse_json(*body);
    std::printf("%s recipient(s) bounced\n", j ? (*j)["bounced_recipients"].text().c_str() : "?");
    return 0;
}

int cmd_drain(const api_options& o) {
    int rc = 0;
    auto body = call(o, "POST", "/api/v1/drain", "", rc);
    if (!body)
        return rc;
    if (o.json)
        std::fputs(body->c_str(), stdout);
    else
        std::puts("draining (as SIGTERM)");
    return 0;
}

int cmd_metrics(const api_options& o) {
    int rc = 0;
    auto body = call(o, "GET", "/metrics", "", rc);
    if (!body)
        return rc;
    std::fputs(body->c_str(), stdout);
    return 0;
}

int cmd_top(const api_options& o, double interval, unsigned iterations) {
    std::signal(SIGINT, [](int) { stop_top = 1; });
    std::map<std::string, double> prev;
    auto prev_t = std::chrono::steady_clock::now();
    const bool tty = ::isatty(STDOUT_FILENO) == 1 && !o.json;
    for (unsigned it = 0; !stop_top && (iterations == 0 || it < iterations); ++it) {
        int rc = 0;
        auto mtext = call(o, "GET", "/metrics", "", rc);
        if (!mtext)
            return rc;
        auto qtext = call(o, "GET", "/api/v1/queue?limit=20", "", rc);
        if (!qtext)
            return rc;
        const auto now = std::chrono::steady_clock::now();
        const auto m = parse_metrics(*mtext);
        const double dt = std::chrono::duration<double>(now - prev_t).count();
        auto rate = [&](std::string_view name) {
            if (prev.empty() || dt <= 0)
                return 0.0;
            return std::max(0.0, (sum_of(m, name) - sum_of(prev, name)) / dt);
        };
        if (o.json) {
            std::printf(
                "{\"received_per_s\":%.2f,\"delivered_per_s\":%.2f,"
                "\"deferred_per_s\":%.2f,\"bounced_per_s\":%.2f,\"queue\":%s}\n",
                rate("ringmail_messages_received_total"),
                rate("ringmail_recipients_delivered_total"),
                rate("ringmail_recipients_deferred_total"),
                rate("ringmail_recipients_bounced_total"), qtext->c_str());
        } else {
            if (tty)
                std::fputs("\x1b[H\x1b[2J", stdout);
            std::printf("ringmail top - %s every %.1fs (Ctrl-C quits)\n\n", o.admin.c_str(),
                        interval);
            std::printf(
                "received %8.1f msg/s   delivered %8.1f rcpt/s   deferred %6.1f/s   "
                "bounced %6.1f/s\n",
                rate("ringmail_messages_received_total"),
                rate("ringmail_recipients_delivered_total"),
                rate("ringmail_recipients_deferred_total"),
                rate("ringmail_recipients_bounced_total"));
            std::printf("connections in %.0f out %.0f   loop lag max %.1f ms\n\n",
                        sum_of(m, "ringmail_connections_open{direction=\"inbound\"}"),
                        sum_of(m, "ringmail_connections_open{direction=\"outbound\"}"), [&] {
                            double mx = 0;
                            for (const auto& [k, v] : m)
                                if (k.rfind("ringmail_shard_loop_lag_seconds", 0) == 0)
                                    mx = std::max(mx, v);
                            return mx * 1000;
                        }());
            if (auto q = parse_json(*qtext))
                print_destinations(*q, 20);
        }
        std::fflush(stdout);
        prev = m;
        prev_t = now;
        if (iterations != 0 && it + 1 >= iterations)
            break;
        const auto until = now + std::chrono::duration<double>(interval);
        while (!stop_top && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return 0;
}

}  // namespace ringmail::ctl
