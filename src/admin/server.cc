#include "ringmail/admin/server.h"

#include "ringmail/admin/json.h"
#include "ringmail/admin/metrics.h"
#include "ringmail/admin/status_page.h"
#include "ringmail/core/duration.h"
#include "ringmail/core/hex.h"
#include "ringmail/core/log.h"
#include "ringmail/core/stream_connection.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>
#include <map>
#include <sys/statvfs.h>

namespace ringmail::admin {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {

constexpr auto request_timeout = 10s;
// Input not yet parsed (a pipelined request behind the one being answered).
constexpr std::size_t max_pending_input = request_parser::max_header_bytes;

core::shard_options admin_options() {
    core::shard_options o;
    o.ring.sq_entries = 256;
    o.ring.cq_entries = 1024;
    o.ring.max_timers = 1024;
    o.buffer_group = 1;
    o.recv_buffers = 64;
    o.recv_buffer_size = 4096;
    o.drain_timeout = 2000ms;
    return o;
}

constexpr std::string_view text_plain = "text/plain; charset=utf-8";
constexpr std::string_view app_json = "application/json";
constexpr std::string_view prometheus_text = "text/plain; version=0.0.4; charset=utf-8";

std::int64_t unix_now() {
    return static_cast<std::int64_t>(std::time(nullptr));
}

std::string json_error(int status, std::string_view why, bool keep_alive,
                       std::string_view extra = {}) {
    return format_response(status, app_json, fmt::format("{{\"error\":{}}}\n", json_string(why)),
                           keep_alive, false, extra);
}

std::string json_ok(std::string body, bool keep_alive, int status = 200) {
    body += '\n';
    return format_response(status, app_json, body, keep_alive);
}

// The query parameter `name` of a target ("" when absent); %XX and '+' decoded.
std::string query_param(std::string_view target, std::string_view name) {
    const auto q = target.find('?');
    if (q == std::string_view::npos)
        return {};
    std::string_view rest = target.substr(q + 1);
    while (!rest.empty()) {
        const auto amp = rest.find('&');
        const std::string_view kv = rest.substr(0, amp);
        const auto eq = kv.find('=');
        if (kv.substr(0, eq) == name) {
            const std::string_view v = eq == std::string_view::npos ? "" : kv.substr(eq + 1);
            std::string out;
            for (std::size_t i = 0; i < v.size(); ++i) {
                if (v[i] == '+') {
                    out += ' ';
                } else if (v[i] == '%' && i + 2 < v.size() && core::hex_value(v[i + 1]) >= 0 &&
                           core::hex_value(v[i + 2]) >= 0) {
                    out += static_cast<char>(core::hex_value(v[i + 1]) * 16 +
                                             core::hex_value(v[i + 2]));
                    i += 2;
                } else {
                    out += v[i];
                }
            }
            return out;
        }
        if (amp == std::string_view::npos)
            break;
        rest.remove_prefix(amp + 1);
    }
    return {};
}

std::optional<std::uint64_t> parse_queue_id(std::string_view s) {
    if (s.size() != 16)
        return std::nullopt;
    std::uint64_t v = 0;
    for (const char c : s) {
        const int h = core::hex_value(c);
        if (h < 0)
            return std::nullopt;
        v = v * 16 + static_cast<std::uint64_t>(h);
    }
    return v;
}

bool valid_domain(std::string_view d) {
    if (d.empty() || d.size() > 255)
        return false;
    for (const char c : d) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '/' || c == '"' || c == '\\')
            return false;
    }
    return true;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c | 0x20);
    return out;
}

std::string suspension_json(const queue::suspension& s) {
    std::string set;
    if (s.effect == queue::suspension_effect::set)
        set = fmt::format(",\"set_rate\":{},\"set_connections\":{}", s.set_rate, s.set_connections);
    return fmt::format(
        "{{\"kind\":\"{}\",\"name\":{},\"domain\":{},\"source\":{},\"since\":{},\"until\":{},"
        "\"reason\":{},\"origin\":{},\"rule\":{},\"effect\":\"{}\"{}}}",
        queue::to_string(s.scope.kind), json_string(s.scope.name),
        s.scope.kind == queue::suspension_kind::domain ? json_string(s.scope.name)
                                                       : std::string("null"),
        json_string(s.scope.source), s.since_unix, s.until_unix, json_string(s.reason),
        json_string(s.origin), s.rule.empty() ? std::string("null") : json_string(s.rule),
        queue::to_string(s.effect), set);
}

std::string destination_json(const destination_row& r, const queue::suspensions& susp,
                             std::int64_t now) {
    const queue::suspension* s = susp.find(queue::suspension_kind::domain, r.key, "", now);
    return fmt::format(
        "{{\"destination\":{},\"recipients\":{},\"ready\":{},\"in_flight\":{},"
        "\"deferred\":{},\"connections\":{},\"next_attempt\":{},\"oldest_age\":{},"
        "\"last_reply\":{},\"suspended_until\":{}}}",
        json_string(r.key), r.recipients, r.ready, r.in_flight, r.deferred, r.connections,
        r.next_attempt_unix == 0 ? std::string("null") : std::to_string(r.next_attempt_unix),
        r.oldest_arrival_unix == 0 ? 0 : std::max<std::int64_t>(0, now - r.oldest_arrival_unix),
        r.last_reply.empty() ? std::string("null") : json_string(r.last_reply),
        s == nullptr ? std::string("null") : std::to_string(s->until_unix));
}

}  // namespace

bool authorized(std::string_view authorization, std::string_view token) noexcept {
    constexpr std::string_view scheme = "Bearer ";
    if (token.empty())
        return true;
    if (authorization.size() < scheme.size())
        return false;
    // The scheme is case-insensitive (RFC 9110 11.1).
    for (std::size_t i = 0; i < scheme.size(); ++i) {
        char c = authorization[i];
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c | 0x20);
        char e = scheme[i];
        if (e >= 'A' && e <= 'Z')
            e = static_cast<char>(e | 0x20);
        if (c != e)
            return false;
    }
    const std::string_view given = authorization.substr(scheme.size());
    // Constant time over the token: every octet is compared whatever the first mismatch, and
    // a wrong length costs the same walk.
    unsigned char diff = given.size() == token.size() ? 0 : 1;
    for (std::size_t i = 0; i < token.size(); ++i) {
        const unsigned char g =
            i < given.size() ? static_cast<unsigned char>(given[i]) : static_cast<unsigned char>(0);
        diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(token[i]));
    }
    return diff == 0;
}

std::string answer(const http_request& req, const health& h) {
    const bool head = req.method == "HEAD";
    if (req.method != "GET" && !head) {
        return format_response(405, text_plain, "method not allowed\n", req.keep_alive, false,
                               "Allow: GET, HEAD\r\n");
    }
    const auto path = req.path();
    if (path == "/healthz")
        return format_response(200, text_plain, "ok\n", req.keep_alive, head);
    if (path == "/readyz") {
        // Every 503 says why in JSON, as the spool-failing answer does (server::handle).
        if (h.draining.load(std::memory_order_acquire))
            return format_response(503, "application/json", "{\"reason\":\"draining\"}\n",
                                   req.keep_alive, head);
        if (!h.started.load(std::memory_order_acquire))
            return format_response(503, "application/json", "{\"reason\":\"starting\"}\n",
                                   req.keep_alive, head);
        return format_response(200, text_plain, "ready\n", req.keep_alive, head);
    }
    return format_response(404, text_plain, "not found\n", req.keep_alive, head);
}

// One client of the admin endpoint: requests answered one at a time, in order.
class admin_connection final : public core::stream_connection {
  public:
    admin_connection(server& owner, std::uint64_t id, core::ring_fd fd)
        : core::stream_connection(owner.ring(), owner.buffers()), _owner(owner), _id(id) {
        attach(std::move(fd));
    }

    void start() {
        set_deadline(ring().now() + request_timeout);
        update_input();
    }
    void stop() {
        if (!closing())
            close(false);
    }

  private:
    void on_received(std::string_view bytes) override {
        if (_closing_after)
            return;  // the last response is on its way: nothing more is read
        if (_in.size() + bytes.size() > max_pending_input) {
            // Pipelined past any request's size: answer if the line is free, then close.
            if (sending()) {
                close(false);
            } else {
                respond(json_error(431, "request too large", false), true);
            }
            return;
        }
        _in.append(bytes);
        process();
    }
    bool wants_input() const override { return !_closing_after && !sending() && !_waiting; }
    void on_sent() override {
        if (_closing_after) {
            close(true);
            return;
        }
        process();
        update_input();
    }
    void on_input_end(int) override { close(false); }
    void on_deadline() override {
        if (_waiting) {
            _waiting = false;
            respond(json_error(504, "the shards did not answer in time", false), true);
            return;
        }
        if (!sending() && _parser.size() > 0) {
            respond(json_error(408, "request timeout", false), true);
            return;
        }
        close(false);
    }
    void on_closed() override { _owner.forget(_id); }

    void process() {
        if (sending() || closing() || _closing_after || _waiting)
            return;
        const std::size_t n = _parser.feed(_in);
        _in.erase(0, n);
        if (_parser.failed()) {
            log::debug("admin: bad request: {}", _parser.error());
            respond(json_error(_parser.error_status(), _parser.error(), false), true);
            return;
        }
        if (!_parser.done())
            return;
        const http_request& req = _parser.request();
        const bool keep = req.keep_alive;
        auto out = _owner.handle(_id, req);
        _parser.reset();
        if (!out) {
            _waiting = true;  // the shards answer; nothing else is read meanwhile
            _waiting_keep = keep;
            set_deadline(ring().now() + request_timeout);
            return;
        }
        respond(std::move(*out), !keep);
    }

  public:
    // The answer the shards made possible (server::on_reply).
    void deliver(std::string out) {
        if (!_waiting || closing())
            return;
        _waiting = false;
        respond(std::move(out), !_waiting_keep);
    }

  private:
    void respond(std::string out, bool then_close) {
        _out = std::move(out);
        _closing_after = then_close;
        set_deadline(ring().now() + request_timeout);
        send(_out);
    }

    server& _owner;
    const std::uint64_t _id;
    request_parser _parser;
    std::string _in;
    std::string _out;
    bool _closing_after = false;
    bool _waiting = false;  // a request is with the shards
    bool _waiting_keep = true;
};

server::server(unsigned thread_id, std::optional<core::endpoint> address, const health& h,
               sources src)
    : core::shard_base(thread_id, admin_options()),
      _address(address),
      _health(h),
      _src(std::move(src)) {}

server::~server() {
    _connections.clear();
    _listener.reset();
}

bool server::start(std::string& why) {
    if (_address) {
        auto fd = core::make_listener(*_address, 64);
        if (!fd) {
            why = fmt::format("admin.address {}: {}", core::to_string(*_address),
                              fd.error().message());
            return false;
        }
        _listener = std::make_unique<core::acceptor>(
            ring(), core::ring_fd::adopt(*fd), true, "admin " + core::to_string(*_address),
            [this](core::ring_fd conn) { accepted(std::move(conn)); });
    }
    ring().on_iteration_end([this] { _connections.reap(); });
    if (_src.mailbox != nullptr) {
        _src.mailbox->attach(ring(), _src.shards,
                             [this](unsigned, control_message&& m) { on_reply(std::move(m)); });
    }
    // After the mailbox's drain: what the rules sent this iteration is written before sleeping.
    ring().on_iteration_end([this] { store_changed_by_rules(); });
    return true;
}

void server::started() {
    if (!_listener)
        return;
    _listener->arm();
    log::info("admin endpoint on http://{} (/, /metrics, /api/v1, /healthz, /readyz){}",
              core::to_string(*_address), _src.token.empty() ? "" : ", bearer token required");
}

void server::accepted(core::ring_fd fd) {
    check_shard();
    if (draining() || _connections.size() >= max_connections) {
        ring().close(std::move(fd));
        return;
    }
    const std::uint64_t id = _connections.next_id();
    _connections.add(id, std::make_unique<admin_connection>(*this, id, std::move(fd))).start();
}

void server::forget(std::uint64_t id) {
    check_shard();
    _connections.retire(id);
}

void server::begin_drain() {
    if (_listener)
        _listener->close();
    _connections.for_each([](admin_connection& c) { c.stop(); });
}

bool server::drained(bool) {
    store_changed_by_rules();  // the shards are gone: what they sent last is written
    return _connections.empty() && (!_listener || _listener->done());
}

}  // namespace ringmail::admin

namespace ringmail::admin {

// A request waiting for the shards' replies.
struct server::pending {
    std::uint64_t conn = 0;
    bool keep_alive = true;
    unsigned waiting = 0;
    std::vector<destination_row> destinations;
    message_detail message;
    std::uint64_t affected = 0;
    std::function<std::string(pending&)> finish;
};

bool server::ask_shards(std::uint64_t conn, bool keep_alive, control_message m,
                        std::function<std::string(pending&)> finish) {
    const std::uint64_t token = _next_token++;
    m.token = token;
    m.reply = false;
    // All or nothing: a shard that cannot take it means 503 (no partial order is given). The
    // rings from here hold 256 and at most max_connections requests are out at once, so this
    // is a safety net.
    for (unsigned i = 0; i < _src.shards; ++i) {
        if (_src.mailbox->pending_approx(_src.shards, i) + 1 >=
            admin_mailbox::ring_type::capacity())
            return false;
    }
    auto p = std::make_unique<pending>();
    p->conn = conn;
    p->keep_alive = keep_alive;
    p->waiting = _src.shards;
    p->finish = std::move(finish);
    _pending.emplace(token, std::move(p));
    for (unsigned i = 0; i < _src.shards; ++i) {
        control_message copy = m;
        if (!_src.mailbox->try_send(_src.shards, i, std::move(copy)))
            core::invariant_broken("admin: a shard ring filled although it had room");
    }
    return true;
}

void server::on_reply(control_message&& m) {
    check_shard();
    if (!m.reply && m.kind == request_kind::rule_effect) {
        on_rule_effect(std::move(m.effect));
        return;
    }
    auto it = _pending.find(m.token);
    if (it == _pending.end() || !m.reply)
        return;
    pending& p = *it->second;
    for (auto& d : m.destinations)
        p.destinations.push_back(std::move(d));
    if (m.message.found) {
        auto jobs = std::move(p.message.jobs);
        p.message = std::move(m.message);
        for (auto& j : jobs)
            p.message.jobs.push_back(std::move(j));
    } else {
        for (auto& j : m.message.jobs)
            p.message.jobs.push_back(std::move(j));
    }
    p.affected += m.affected;
    if (--p.waiting > 0)
        return;
    std::unique_ptr<pending> done = std::move(it->second);
    _pending.erase(it);
    std::string out = done->finish(*done);
    if (auto* c = _connections.find(done->conn))
        c->deliver(std::move(out));
}

void server::on_rule_effect(queue::suspension s) {
    _src.suspensions.expire(unix_now());
    const std::string name = s.scope.name;
    auto r = _src.suspensions.merge(std::move(s));
    if (!r) {
        log::warn("admin: the rule's suspension of {} is not stored: {}", log::sanitize(name),
                  r.error().message());
        return;
    }
    if (*r)
        _rules_unsaved = _rules_unsent = true;
}

void server::store_changed_by_rules() {
    if (_rules_unsaved) {
        _rules_unsaved = false;
        std::string why;
        save_suspensions(why);  // a failure is logged; the copy in memory and the shards' hold
    }
    if (!_rules_unsent || _broadcast_out)
        return;  // nothing new, or sent when the copy on its way is in
    if (_src.mailbox == nullptr || _src.shards == 0 || draining()) {
        _rules_unsent = false;
        return;
    }
    control_message m;
    m.kind = request_kind::suspensions;
    m.suspensions = std::make_shared<const queue::suspensions>(_src.suspensions);
    if (!ask_shards(0, false, std::move(m), [this](pending&) {
            _broadcast_out = false;
            store_changed_by_rules();
            return std::string();
        }))
        return;  // a ring is full: the next iteration tries again
    _broadcast_out = true;
    _rules_unsent = false;
}

bool server::save_suspensions(std::string& why) {
    if (_src.suspensions_path.empty())
        return true;
    auto r = _src.suspensions.save_file(_src.suspensions_path);
    if (!r) {
        why = fmt::format("cannot write {}: {}", _src.suspensions_path, r.error().message());
        log::error("admin: {}", why);
        return false;
    }
    return true;
}

std::optional<std::string> server::handle(std::uint64_t conn, const http_request& req) {
    check_shard();
    const std::string_view path = req.path();
    const bool keep = req.keep_alive;
    if (path == "/readyz" && (req.method == "GET" || req.method == "HEAD") &&
        _health.started.load(std::memory_order_acquire) &&
        !_health.draining.load(std::memory_order_acquire)) {
        // Serving, but a spool whose last commit failed cannot take mail: a balancer should
        // send it elsewhere until commits succeed again.
        std::int64_t failing = 0;
        for (const auto& m : _src.metrics)
            failing = std::max(failing, m.spool_failing.get());
        if (failing != 0) {
            return format_response(
                503, "application/json",
                failing == 1 ? "{\"reason\":\"disk full\"}\n" : "{\"reason\":\"spool failing\"}\n",
                req.keep_alive, req.method == "HEAD");
        }
    }
    if (path == "/healthz" || path == "/readyz")
        return answer(req, _health);
    const bool get = req.method == "GET" || req.method == "HEAD";
    if (path == "/" || path == "/index.html") {
        if (!get)
            return json_error(405, "method not allowed", keep, "Allow: GET, HEAD\r\n");
        return format_response(200, "text/html; charset=utf-8", status_page_html(), keep,
                               req.method == "HEAD");
    }
    if (!authorized(req.authorization, _src.token)) {
        return json_error(401, req.authorization.empty() ? "authorization required" : "wrong token",
                          keep, "WWW-Authenticate: Bearer realm=\"ringmail\"\r\n");
    }
    const std::int64_t now = unix_now();
    const bool have_shards = _src.mailbox != nullptr && _src.shards > 0;

    if (path == "/metrics") {
        if (!get)
            return json_error(405, "method not allowed", keep, "Allow: GET, HEAD\r\n");
        auto render = [this, head = req.method == "HEAD"](pending& p) {
            metrics_inputs in;
            in.shards = _src.metrics;
            in.listeners = _src.listeners;
            in.now_unix = unix_now();
            struct statvfs vfs {};
            if (!_src.spool_dir.empty() && ::statvfs(_src.spool_dir.c_str(), &vfs) == 0)
                in.spool_free_bytes = static_cast<std::int64_t>(vfs.f_bavail) *
                                      static_cast<std::int64_t>(vfs.f_frsize);
            auto rows = merge_destinations(std::move(p.destinations));
            in.destinations = &rows;
            _src.suspensions.expire(in.now_unix);
            in.suspensions_operator = _src.suspensions.count(queue::origin_operator);
            in.suspensions_rule = _src.suspensions.count(queue::origin_rule);
            return format_response(200, prometheus_text, render_metrics(in), p.keep_alive, head);
        };
        if (!have_shards) {
            pending p;
            p.keep_alive = keep;
            return render(p);
        }
        control_message m;
        m.kind = request_kind::destinations;
        if (!ask_shards(conn, req.keep_alive, std::move(m), render))
            return json_error(503, "shards busy, try again", keep);
        return std::nullopt;
    }

    if (path == "/api/v1/queue") {
        if (!get)
            return json_error(405, "method not allowed", keep, "Allow: GET\r\n");
        std::size_t limit = 100;
        if (const std::string l = query_param(req.target, "limit"); !l.empty()) {
            auto [p, ec] = std::from_chars(l.data(), l.data() + l.size(), limit);
            if (ec != std::errc{} || p != l.data() + l.size() || limit == 0 || limit > 10000)
                return json_error(400, "limit: a number from 1 to 10000", keep);
        }
        std::string sort = query_param(req.target, "sort");
        if (sort.empty())
            sort = "recipients";
        if (sort != "recipients" && sort != "age" && sort != "deferred" && sort != "name")
            return json_error(400, "sort: recipients, age, deferred or name", keep);
        if (!have_shards)
            return json_error(503, "no shards", keep);
        control_message m;
        m.kind = request_kind::destinations;
        m.ages = true;
        if (!ask_shards(conn, req.keep_alive, std::move(m), [this, limit, sort](pending& p) {
                _src.suspensions.expire(unix_now());
                auto rows = merge_destinations(std::move(p.destinations));
                const std::int64_t t = unix_now();
                std::uint64_t rc = 0, ready = 0, deferred = 0, in_flight = 0;
                for (const auto& r : rows) {
                    rc += r.recipients;
                    ready += r.ready;
                    deferred += r.deferred;
                    in_flight += r.in_flight;
                }
                std::sort(
                    rows.begin(), rows.end(),
                    [&](const destination_row& a, const destination_row& b) {
                        if (sort == "age" && a.oldest_arrival_unix != b.oldest_arrival_unix)
                            return (a.oldest_arrival_unix == 0 ? INT64_MAX
                                                               : a.oldest_arrival_unix) <
                                   (b.oldest_arrival_unix == 0 ? INT64_MAX : b.oldest_arrival_unix);
                        if (sort == "deferred" && a.deferred != b.deferred)
                            return a.deferred > b.deferred;
                        if (sort == "recipients" && a.recipients != b.recipients)
                            return a.recipients > b.recipients;
                        return a.key < b.key;
                    });
                std::int64_t oldest = 0;
                for (const auto& m : _src.metrics) {
                    const std::int64_t a = m.queue_oldest_arrival.get();
                    if (a > 0 && (oldest == 0 || a < oldest))
                        oldest = a;
                }
                std::int64_t msgs = 0, rcpts = 0;
                for (const auto& m : _src.metrics) {
                    msgs += m.queue_messages.get();
                    rcpts += m.queue_recipients.get();
                }
                std::string body = fmt::format(
                    "{{\"totals\":{{\"messages\":{},\"recipients\":{},\"queued_recipients\":{},"
                    "\"ready\":{},\"in_flight\":{},\"deferred\":{},\"destinations\":{},"
                    "\"oldest_age\":{}}},\"destinations\":[",
                    msgs, rcpts, rc, ready, in_flight, deferred, rows.size(),
                    oldest == 0 ? 0 : std::max<std::int64_t>(0, t - oldest));
                for (std::size_t i = 0; i < rows.size() && i < limit; ++i) {
                    if (i > 0)
                        body += ',';
                    body += destination_json(rows[i], _src.suspensions, t);
                }
                body += "]}";
                return json_ok(std::move(body), p.keep_alive);
            }))
            return json_error(503, "shards busy, try again", keep);
        return std::nullopt;
    }

    constexpr std::string_view messages_prefix = "/api/v1/messages/";
    if (path.starts_with(messages_prefix)) {
        if (!get)
            return json_error(405, "method not allowed", keep, "Allow: GET\r\n");
        const std::string qid(path.substr(messages_prefix.size()));
        const auto id = parse_queue_id(qid);
        if (!id)
            return json_error(400, "a queue id is 16 hexadecimal digits", keep);
        if (!have_shards)
            return json_error(503, "no shards", keep);
        control_message m;
        m.kind = request_kind::message;
        m.queue_id = *id;
        if (!ask_shards(conn, req.keep_alive, std::move(m), [qid](pending& p) {
                const message_detail& d = p.message;
                if (!d.found && d.jobs.empty())
                    return json_error(404, "no such message in the queue", p.keep_alive);
                const std::int64_t t = unix_now();
                std::string body = fmt::format(
                    "{{\"queue_id\":{},\"sender\":{},\"arrival\":{},\"age\":{},\"size\":{},"
                    "\"attempts\":{},\"recipients\":[",
                    json_string(qid), json_string(d.sender), d.arrival_unix,
                    d.arrival_unix == 0 ? 0 : std::max<std::int64_t>(0, t - d.arrival_unix), d.size,
                    d.attempts);
                for (std::size_t i = 0; i < d.recipients.size(); ++i) {
                    if (i > 0)
                        body += ',';
                    std::string last_reply = "null";
                    std::string next = "null";
                    std::string dest = "null";
                    for (const auto& j : d.jobs) {
                        if (std::find(j.rcpts.begin(), j.rcpts.end(), i) != j.rcpts.end()) {
                            dest = json_string(j.destination);
                            if (!j.last_reply.empty())
                                last_reply = json_string(j.last_reply);
                            if (j.next_attempt_unix != 0)
                                next = std::to_string(j.next_attempt_unix);
                        }
                    }
                    body += fmt::format(
                        "{{\"address\":{},\"state\":{},\"destination\":{},\"next_attempt\":{},"
                        "\"last_reply\":{}}}",
                        json_string(d.recipients[i].address), json_string(d.recipients[i].state),
                        dest, next, last_reply);
                }
                body += "]}";
                return json_ok(std::move(body), p.keep_alive);
            }))
            return json_error(503, "shards busy, try again", keep);
        return std::nullopt;
    }

    if (path == "/api/v1/suspend") {
        _src.suspensions.expire(now);
        if (req.method == "GET") {
            std::string body = "{\"suspensions\":[";
            bool first = true;
            for (const auto& s : _src.suspensions.list()) {
                if (!first)
                    body += ',';
                first = false;
                body += suspension_json(s);
            }
            body += "]}";
            return json_ok(std::move(body), keep);
        }
        std::string domain;
        queue::suspension s;
        std::vector<queue::suspension> lifted;
        if (req.method == "POST") {
            auto obj = parse_flat_object(req.body);
            if (!obj)
                return json_error(400, "the body must be a JSON object", keep);
            auto& o = *obj;
            domain = lower(o["domain"]);
            if (!valid_domain(domain))
                return json_error(400, "domain: required, a domain name", keep);
            std::chrono::seconds dur{3600};
            if (auto d = o.find("duration"); d != o.end() && !d->second.empty()) {
                auto parsed = core::parse_duration(d->second);
                if (!parsed)
                    return json_error(400, "duration: like \"90s\", \"30m\", \"4h\", \"2d\"", keep);
                dur = *parsed;
            }
            if (dur > std::chrono::seconds(366LL * 86400))
                return json_error(400, "duration: at most 366d", keep);
            s.scope = {queue::suspension_kind::domain, domain, ""};
            s.since_unix = now;
            s.until_unix = now + dur.count();
            s.reason = o["reason"];
            s.origin = std::string(queue::origin_operator);
            if (auto r = _src.suspensions.suspend(s); !r)
                return json_error(409, fmt::format("cannot suspend: {}", r.error().message()),
                                  keep);
        } else if (req.method == "DELETE") {
            // A domain's or a provider's entries, whoever set them (operators and rules).
            domain = lower(query_param(req.target, "domain"));
            const std::string provider = lower(query_param(req.target, "provider"));
            if (domain.empty() == provider.empty())
                return json_error(400, "give either domain or provider", keep);
            const bool by_provider = !provider.empty();
            if (by_provider)
                domain = provider;
            if (!valid_domain(domain))
                return json_error(
                    400, by_provider ? "provider: a provider name" : "domain: a domain name", keep);
            if (_src.suspensions.resume_all(
                    by_provider ? queue::suspension_kind::provider : queue::suspension_kind::domain,
                    domain, &lifted) == 0)
                return json_error(
                    404,
                    by_provider ? "that provider is not suspended" : "that domain is not suspended",
                    keep);
            log::info("admin: {} {} resumed ({} entr{})", by_provider ? "provider" : "domain",
                      log::sanitize(domain), lifted.size(), lifted.size() == 1 ? "y" : "ies");
        } else {
            return json_error(405, "method not allowed", keep, "Allow: GET, POST, DELETE\r\n");
        }
        std::string why;
        if (!save_suspensions(why))
            return json_error(500, why, keep);
        const bool post = req.method == "POST";
        std::string done_body = post ? fmt::format("{{\"suspended\":{}}}", suspension_json(s))
                                     : fmt::format("{{\"resumed\":{}}}", json_string(domain));
        if (!have_shards)
            return json_ok(std::move(done_body), keep);
        control_message m;
        m.kind = request_kind::suspensions;
        m.suspensions = std::make_shared<const queue::suspensions>(_src.suspensions);
        m.lifted = std::move(lifted);
        // The answer waits until every shard has the new set: in force when it is read.
        if (!ask_shards(conn, req.keep_alive, std::move(m),
                        [done_body](pending& p) { return json_ok(done_body, p.keep_alive); }))
            return json_error(503, "shards busy, try again", keep);
        return std::nullopt;
    }

    if (path == "/api/v1/flush" || path == "/api/v1/bounce") {
        if (req.method != "POST")
            return json_error(405, "method not allowed", keep, "Allow: POST\r\n");
        std::map<std::string, std::string> o;
        if (!req.body.empty()) {
            auto obj = parse_flat_object(req.body);
            if (!obj)
                return json_error(400, "the body must be a JSON object", keep);
            o = std::move(*obj);
        }
        control_message m;
        m.key = lower(o["domain"]);
        if (!m.key.empty() && !valid_domain(m.key))
            return json_error(400, "domain: a domain name", keep);
        const bool flush = path == "/api/v1/flush";
        m.kind = flush ? request_kind::flush : request_kind::bounce;
        if (!flush) {
            const std::string qid = o["queue_id"];
            if (m.key.empty() == qid.empty())
                return json_error(400, "give either domain or queue_id", keep);
            if (!qid.empty()) {
                auto id = parse_queue_id(qid);
                if (!id)
                    return json_error(400, "a queue id is 16 hexadecimal digits", keep);
                m.queue_id = *id;
            }
            m.reason = o["reason"];
            if (m.reason.size() > 200)
                m.reason.resize(200);
        }
        if (!have_shards)
            return json_error(503, "no shards", keep);
        if (!ask_shards(conn, req.keep_alive, std::move(m), [flush](pending& p) {
                return json_ok(
                    fmt::format("{{\"{}\":{}}}", flush ? "flushed_jobs" : "bounced_recipients",
                                p.affected),
                    p.keep_alive);
            }))
            return json_error(503, "shards busy, try again", keep);
        return std::nullopt;
    }

    if (path == "/api/v1/drain") {
        if (req.method != "POST")
            return json_error(405, "method not allowed", keep, "Allow: POST\r\n");
        if (!_src.drain)
            return json_error(503, "drain is not available", keep);
        log::info("admin: drain requested over the API");
        _src.drain();
        return json_ok("{\"draining\":true}", keep, 202);
    }
    return json_error(404, "not found", keep);
}

}  // namespace ringmail::admin
