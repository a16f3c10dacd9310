// One accepted connection of ringmail-sink: the glue between the socket (through the shard's
// reactor) and the pure smtp::server_session, whose transaction_sink it implements. At end of
// data it draws the shard's injector and answers 250 / 451 / 550, or closes without a reply,
// now or after --delay-ms (a timer, so other sessions never wait).
//
// Owned by the shard that accepted it; destroyed by the shard once its fd is closed and no
// ring operation names it. Peer errors and timeouts close this connection only.
#pragma once

#include "ringmail/core/member_completion.h"
#include "ringmail/core/result.h"
#include "ringmail/core/timer.h"
#include "ringmail/smtp/server_session.h"

#include "sink/dump.h"
#include "sink/injector.h"
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::sink {

class shard;

// Sits between the socket and the session; none for plain SMTP, the TLS record pump
// (sink/tls_transform.h) after STARTTLS: wire bytes in -> plaintext for the session, the
// session's replies (and the pump's own handshake records) -> wire bytes. An error closes the
// connection.
class byte_transform {
  public:
    virtual ~byte_transform() = default;
    // Appends the plaintext decoded from `wire` to `plain` (possibly nothing yet).
    virtual result<void> decode(std::string_view wire, std::string& plain) = 0;
    // Appends the wire form of `plain` (and anything the transform must send) to `wire`.
    virtual result<void> encode(std::string_view plain, std::string& wire) = 0;
    // Bytes of its own to send even though the session has none (handshake, alerts).
    virtual bool has_output() const noexcept = 0;
    // The handshake has completed: application data flows.
    virtual bool established() const noexcept = 0;
    // Once, right after the handshake completed: what the session is told about it.
    virtual std::optional<smtp::tls_details> take_established() = 0;
    // Why decode()/encode() failed, for the debug log.
    virtual std::string_view error() const noexcept = 0;
};

// A timer that calls a member function of its owner (one owner, several timers).
template <typename Owner, void (Owner::*Method)()>
class member_timer final : public core::timer {
  public:
    explicit member_timer(Owner* owner) noexcept : _owner(owner) {}
    void on_expire() override { (_owner->*Method)(); }

  private:
    Owner* _owner;
};

class connection final : private smtp::transaction_sink {
  public:
    // `peer_ip`: the client's address for the dump's envelope; empty when not dumping.
    connection(shard& owner, std::uint64_t id, core::ring_fd fd, std::string peer_ip);
    ~connection() override;
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

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

    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_shutdown(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void on_idle();
    void on_delay();

    void final_reply();  // applies _outcome
    void receive_wire(std::string_view bytes);
    bool take_wire_output();
    void pump();
    void send_pending();
    void start_close();
    void start_tls();
    void maybe_finish();
    bool busy() const noexcept;  // inside a transaction or owing its final reply

    shard& _shard;
    const std::uint64_t _id;
    core::ring_fd _fd;
    smtp::server_session _session;
    std::unique_ptr<byte_transform> _transform;  // null: plaintext
    std::string _plain;                          // scratch for the transform
    dump_file _dump;
    std::uint64_t _seq = 0;  // this transaction's number in its shard
    outcome _outcome = outcome::accept;
    bool _reply_owed = false;  // commit() seen, final reply not yet given (delay)
    bool _drop_now = false;    // injected disconnect: close from pump()
    std::string _sending;
    std::size_t _sent = 0;
    unsigned _in_flight = 0;  // ring operations naming this connection
    bool _recv_armed = false;
    bool _send_in_flight = false;
    bool _cancel_sent = false;
    bool _closing = false;
    bool _closed = false;
    bool _peer_gone = false;
    bool _shutdown = false;
    core::timer::clock::time_point _last_activity{};
    core::member_completion<connection, &connection::on_recv> _recv_op{this};
    core::member_completion<connection, &connection::on_send> _send_op{this};
    core::member_completion<connection, &connection::on_cancel> _cancel_op{this};
    core::member_completion<connection, &connection::on_shutdown> _shutdown_op{this};
    core::member_completion<connection, &connection::on_close> _close_op{this};
    member_timer<connection, &connection::on_idle> _idle{this};
    member_timer<connection, &connection::on_delay> _delay{this};
};

}  // namespace ringmail::sink
