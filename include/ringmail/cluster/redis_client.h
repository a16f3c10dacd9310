// A small Redis client on the shard's ring: one connection (a core::stream_connection), RESP2
// commands pipelined (at most max_pipeline unanswered), each answered through its callback in
// order.
//
// Owned by one shard, used on its thread only. It never blocks and never stops the caller: a
// command it cannot take (not connected, pipeline full) is refused at once (call() returns
// false) so that the caller falls back to its local limits. A broken connection (reset, EOF,
// a reply that is not RESP2, no reply within reply_timeout) answers every pending command with
// an error value ("ERR ringmail: connection lost") and reconnects after a backoff that doubles
// from backoff_min to backoff_max; state changes are reported through on_state.
#pragma once

#include "ringmail/cluster/resp.h"
#include "ringmail/core/stream_connection.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

namespace ringmail::cluster {

struct redis_options {
    core::endpoint server;
    std::size_t max_pipeline = 1024;
    std::chrono::milliseconds connect_timeout{1000};
    std::chrono::milliseconds reply_timeout{1000};
    std::chrono::milliseconds backoff_min{100};
    std::chrono::milliseconds backoff_max{5000};
};

class redis_client final : private core::stream_connection {
  public:
    using callback = std::function<void(const resp_value&)>;

    redis_client(core::reactor& r, core::buffer_ring& buffers, redis_options o,
                 std::function<void(bool up)> on_state = {});
    ~redis_client() override;

    // Connects (and reconnects after each failure) until stop().
    void start();
    // Closes; pending commands get the error value. finished() once the socket is gone.
    void stop();
    bool up() const noexcept { return _link == link::up; }
    bool stopped() const noexcept { return _stopping && !has_socket(); }
    std::size_t pending() const noexcept { return _pending.size(); }
    std::uint64_t reconnects() const noexcept { return _reconnects; }

    // Queues one command; false (and `cb` is not called) when not connected or the pipeline
    // is full.
    bool call(std::vector<std::string> args, callback cb);

  private:
    void connect_now();
    void flush();
    void broken(std::string_view why);
    void answer_all(std::string_view why);

    void on_connected(int res) override;
    void on_received(std::string_view bytes) override;
    bool wants_input() const override { return true; }
    void on_sent() override;
    void on_input_end(int err) override;
    void on_deadline() override;
    void on_closed() override;
    void on_backoff();

    // The connection's own deadline does not fire once it is closing: the wait before a
    // reconnect has a timer of its own.
    struct backoff_timer final : core::timer {
        redis_client* owner = nullptr;
        void on_expire() override { owner->on_backoff(); }
    };

    redis_options _o;
    backoff_timer _retry;
    std::function<void(bool)> _on_state;
    resp_parser _parser;
    std::deque<callback> _pending;  // sent or queued, in order
    std::string _out;               // encoded, not yet handed to the socket
    std::string _batch;
    // `down` once a failure was logged and reported. The first failure is, even when the
    // client was never up (a Redis unreachable at start-up must be said once); then again only
    // after a success.
    enum class link : std::uint8_t { unknown, up, down };
    link _link = link::unknown;
    bool _stopping = false;
    bool _waiting_backoff = false;
    std::chrono::milliseconds _backoff;
    std::uint64_t _reconnects = 0;
};

}  // namespace ringmail::cluster
