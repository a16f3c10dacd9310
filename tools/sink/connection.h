// One accepted connection of ringmail-sink: the glue between the socket (a
// core::stream_connection, with a tls::session as its transform after STARTTLS) and the pure
// smtp::server_session, whose transaction_sink it implements. At end of
// data it draws the shard's injector and answers 250 / 451 / 550, or closes without a reply,
// now or after --delay-ms (a timer, so other sessions never wait).
//
// Owned by the shard that accepted it; destroyed by the shard once its fd is closed and no
// ring operation names it. Peer errors and timeouts close this connection only.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/core/stream_connection.h"
#include "ringmail/core/timer.h"
#include "ringmail/smtp/server_session.h"
#include "ringmail/tls/session.h"

#include "sink/dump.h"
#include "sink/injector.h"
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::sink {

class shard;

// A timer that calls a member function of its owner (one owner, several timers).
template <typename Owner, void (Owner::*Method)()>
class member_timer final : public core::timer {
  public:
    explicit member_timer(Owner* owner) noexcept : _owner(owner) {}
    void on_expire() override { (_owner->*Method)(); }

  private:
    Owner* _owner;
};

class connection final : public core::stream_connection, private smtp::transaction_sink {
  public:
    // `peer_ip`: the client's address for the dump's envelope; empty when not dumping.
    connection(shard& owner, std::uint64_t id, core::ring_fd fd, std::string peer_ip);
    ~connection() override;

    void start();
    // The sink is stopping: idle sessions get 421 now, an open transaction finishes first.
    // force: close now whatever the state.
    void shutdown(bool force);
    std::uint64_t id() const noexcept { return _id; }

  private:
    // transaction_sink
    result<void> begin(const mail::envelope& env) override;
    result<void> append(std::string_view bytes) override;
    void commit() override;
    void abort() override;

    // stream_connection
    void on_received(std::string_view bytes) override;
    bool wants_input() const override { return !_peer_gone && !_session.input_full(); }
    void on_sent() override { pump(); }
    void on_input_end(int err) override;
    void on_transform_ready() override;
    void on_transform_failed(std::string_view why) override;
    void on_deadline() override;
    void on_closed() override;

    void on_delay();
    void final_reply();  // applies _outcome
    void pump();
    void start_close(bool flush);
    void start_tls();
    bool busy() const noexcept;  // inside a transaction or owing its final reply

    shard& _shard;
    const std::uint64_t _id;
    smtp::server_session _session;
    tls::session* _tls = nullptr;  // the stream's transform after STARTTLS
    dump_file _dump;
    std::uint64_t _seq = 0;  // this transaction's number in its shard
    outcome _outcome = outcome::accept;
    bool _reply_owed = false;  // commit() seen, final reply not yet given (delay)
    bool _drop_now = false;    // injected disconnect: close from pump()
    std::string _out;          // the session's replies on their way (buffers swap)
    bool _peer_gone = false;
    bool _shutdown = false;
    bool _tls_counted = false;
    core::timer::clock::time_point _last_activity{};
    member_timer<connection, &connection::on_delay> _delay{this};
};

}  // namespace ringmail::sink
