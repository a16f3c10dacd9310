#include "ringmail/admin/server.h"

#include "ringmail/core/log.h"
#include "ringmail/core/stream_connection.h"

#include <fmt/format.h>

#include <chrono>

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

}  // namespace

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
        if (h.draining.load(std::memory_order_acquire))
            return format_response(503, text_plain, "draining\n", req.keep_alive, head);
        if (!h.started.load(std::memory_order_acquire))
            return format_response(503, text_plain, "starting\n", req.keep_alive, head);
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
                respond(format_response(431, text_plain, "request too large\n", false), true);
            }
            return;
        }
        _in.append(bytes);
        process();
    }
    bool wants_input() const override { return !_closing_after && !sending(); }
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
        if (!sending() && _parser.size() > 0) {
            respond(format_response(408, text_plain, "request timeout\n", false), true);
            return;
        }
        close(false);
    }
    void on_closed() override { _owner.forget(_id); }

    void process() {
        if (sending() || closing() || _closing_after)
            return;
        const std::size_t n = _parser.feed(_in);
        _in.erase(0, n);
        if (_parser.failed()) {
            log::debug("admin: bad request: {}", _parser.error());
            respond(format_response(_parser.error_status(), text_plain,
                                    fmt::format("{}\n", _parser.error()), false),
                    true);
            return;
        }
        if (!_parser.done())
            return;
        const http_request& req = _parser.request();
        const bool keep = req.keep_alive;
        std::string out = answer(req, _owner.state());
        _parser.reset();
        respond(std::move(out), !keep);
    }
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
};

server::server(unsigned thread_id, core::endpoint address, const health& h)
    : core::shard_base(thread_id, admin_options()), _address(address), _health(h) {}

server::~server() {
    _connections.clear();
    _listener.reset();
}

bool server::start(std::string& why) {
    auto fd = core::make_listener(_address, 64);
    if (!fd) {
        why = fmt::format("admin.address {}: {}", core::to_string(_address), fd.error().message());
        return false;
    }
    _listener = std::make_unique<core::acceptor>(
        ring(), core::ring_fd::adopt(*fd), true, "admin " + core::to_string(_address),
        [this](core::ring_fd conn) { accepted(std::move(conn)); });
    ring().on_iteration_end([this] { _connections.reap(); });
    return true;
}

void server::started() {
    _listener->arm();
    log::info("admin endpoint on http://{} (/healthz, /readyz)", core::to_string(_address));
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
    return _connections.empty() && (!_listener || _listener->done());
}

}  // namespace ringmail::admin
