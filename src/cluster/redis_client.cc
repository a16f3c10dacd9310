#include "ringmail/cluster/redis_client.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include <cstring>

namespace ringmail::cluster {

namespace log = core::log;

redis_client::redis_client(core::reactor& r, core::buffer_ring& buffers, redis_options o,
                           std::function<void(bool up)> on_state)
    : core::stream_connection(r, buffers),
      _o(std::move(o)),
      _on_state(std::move(on_state)),
      _backoff(_o.backoff_min) {
    _retry.owner = this;
}

redis_client::~redis_client() {
    ring().disarm(_retry);
}

void redis_client::start() {
    _stopping = false;
    if (!has_socket() && !_waiting_backoff)
        connect_now();
}

void redis_client::stop() {
    _stopping = true;
    _waiting_backoff = false;
    ring().disarm(_retry);
    clear_deadline();
    flush();  // what is encoded goes out before the FIN (lease releases)
    answer_all("stopped");
    if (_link == link::up) {
        _link = link::unknown;
        if (_on_state)
            _on_state(false);
    }
    if (has_socket())
        close(true);
}

void redis_client::connect_now() {
    auto fd = core::make_tcp_socket(_o.server.family());
    if (!fd) {
        _waiting_backoff = true;
        ring().arm(_retry, ring().now() + _backoff);
        return;
    }
    (void)core::set_nodelay(*fd);
    _parser = resp_parser{};
    connect(core::ring_fd::adopt(*fd), _o.server);
    set_deadline(ring().now() + _o.connect_timeout);
}

bool redis_client::call(std::vector<std::string> args, callback cb) {
    if (_link != link::up || _pending.size() >= _o.max_pipeline || closing())
        return false;
    encode_command(_out, args);
    _pending.push_back(std::move(cb));
    if (_pending.size() == 1)
        set_deadline(ring().now() + _o.reply_timeout);
    flush();
    return true;
}

void redis_client::flush() {
    if (sending() || _out.empty() || !has_socket() || closing())
        return;
    _batch.clear();
    _batch.swap(_out);
    send(_batch);
}

void redis_client::answer_all(std::string_view why) {
    resp_value err;
    err.type = resp_value::kind::error;
    err.str = fmt::format("ERR ringmail: {}", why);
    std::deque<callback> pending;
    pending.swap(_pending);
    _out.clear();
    for (auto& cb : pending) {
        if (cb)
            cb(err);
    }
}

void redis_client::broken(std::string_view why) {
    if (_link != link::down) {
        log::warn("redis {}: {}; reconnecting", core::to_string(_o.server), why);
        _link = link::down;
        if (_on_state)
            _on_state(false);
    }
    clear_deadline();
    answer_all(why);
    if (has_socket() && !closing())
        close();
}

void redis_client::on_connected(int res) {
    if (res < 0) {
        broken(fmt::format("connect: {}", std::strerror(-res)));
        return;
    }
    clear_deadline();
    _link = link::up;
    _backoff = _o.backoff_min;
    log::info("redis {}: connected", core::to_string(_o.server));
    update_input();
    if (_on_state)
        _on_state(true);
}

void redis_client::on_received(std::string_view bytes) {
    _parser.feed(bytes);
    if (_parser.failed()) {
        broken(fmt::format("bad reply: {}", _parser.error()));
        return;
    }
    while (auto v = _parser.take()) {
        if (_pending.empty()) {
            broken("a reply nobody asked for");
            return;
        }
        callback cb = std::move(_pending.front());
        _pending.pop_front();
        if (cb)
            cb(*v);
    }
    if (_pending.empty())
        clear_deadline();
    else if (_link == link::up)
        set_deadline(ring().now() + _o.reply_timeout);
}

void redis_client::on_sent() {
    flush();
}

void redis_client::on_input_end(int err) {
    broken(err == 0 ? std::string("connection closed by the server")
                    : fmt::format("connection lost: {}", std::strerror(-err)));
}

void redis_client::on_deadline() {
    broken(connecting() ? "connect timed out" : "no reply in time");
}

void redis_client::on_backoff() {
    _waiting_backoff = false;
    if (!_stopping && !has_socket())
        connect_now();
}

void redis_client::on_closed() {
    if (_link == link::up)
        _link = link::unknown;
    if (_stopping)
        return;
    ++_reconnects;
    _waiting_backoff = true;
    ring().arm(_retry, ring().now() + _backoff);
    _backoff = std::min(_backoff * 2, _o.backoff_max);
}

}  // namespace ringmail::cluster
