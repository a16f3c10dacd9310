// One accepted SMTP connection: the glue between the socket (through the shard's reactor) and
// the pure smtp::server_session, the session's transaction_sink into the shard's spool, the
// TLS record pump (STARTTLS, or implicit TLS on an smtps listener) and the session's
// auth_backend (SASL PLAIN/LOGIN, verified by the daemon's auth::verifier off the shard).
//
// Owned by the shard that accepted it (its map of connections); destroyed by the shard when
// it has closed its fd and no ring operation names it any more. Peer errors, timeouts, failed
// TLS handshakes and resets close this connection only; a message whose commit completes
// after the peer left is still delivered (it was durable, only the 250 could not be sent).
// A verification answer that arrives after the connection left is dropped by the shard.
#pragma once

#include "ringmail/auth/credential_store.h"
#include "ringmail/auth/sasl.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/timer.h"
#include "ringmail/server/context.h"
#include "ringmail/smtp/server_session.h"
#include "ringmail/spool/spool.h"
#include "ringmail/tls/session.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace ringmail::server {

class shard;
class inbound_connection;

// The session's auth_backend: one SASL exchange at a time, credentials to the verifier.
class inbound_auth final : public smtp::auth_backend {
  public:
    explicit inbound_auth(inbound_connection& c) : _c(c) {}
    std::vector<std::string> mechanisms() const override { return {"PLAIN", "LOGIN"}; }
    smtp::auth_step start(std::string_view mechanism,
                          std::optional<std::string_view> initial_response) override;
    smtp::auth_step step(std::string_view response) override;
    void cancel() noexcept override;
    // The verifier answered: the step for the session, or nullopt when nothing waits for it.
    std::optional<smtp::auth_step> on_verdict(auth::verdict v);

  private:
    smtp::auth_step apply(auth::sasl_step s);
    smtp::auth_step failed_attempt();

    inbound_connection& _c;
    std::optional<auth::sasl_server> _sasl;
    std::string _user;  // while a verification is pending
    bool _pending = false;
};

class inbound_connection final : private smtp::transaction_sink, private core::timer {
  public:
    inbound_connection(shard& owner, std::uint64_t id, core::ring_fd fd, const core::endpoint& peer,
                       const listener_settings& listener, bool relay_allowed);
    ~inbound_connection() override;
    inbound_connection(const inbound_connection&) = delete;
    inbound_connection& operator=(const inbound_connection&) = delete;

    void start();
    // The group commit this connection's message was in has completed.
    void on_committed(const result<spool::queue_id>& id);
    // The verifier answered this connection's AUTH attempt.
    void on_auth_verdict(auth::verdict v);
    // The daemon is stopping: idle sessions are told 421 now, a session inside a transaction
    // finishes it first. force: close now whatever the state (drain deadline passed).
    void shutdown(bool force);
    std::uint64_t id() const noexcept { return _id; }

  private:
    friend class inbound_auth;

    // transaction_sink
    result<void> begin(const mail::envelope& env) override;
    result<void> append(std::string_view bytes) override;
    void commit() override;
    void abort() override;
    // timer
    void on_expire() override;

    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_shutdown(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void make_session(std::optional<smtp::tls_details> tls);
    void pump();
    void tls_input();
    void begin_tls();
    void tls_broken(bool handshake, std::string_view why);
    void flush_output();
    bool output_pending() const noexcept;
    void send_pending();
    void peer_gone();
    void start_close();
    void maybe_finish();
    bool in_transaction() const noexcept;

    shard& _shard;
    const std::uint64_t _id;
    core::ring_fd _fd;
    const listener_settings& _listener;
    core::endpoint _peer;
    std::string _peer_text;
    bool _relay_allowed;
    inbound_auth _auth{*this};
    // Built at start() or, on an smtps listener, once the handshake has finished (peer_info
    // carries the TLS details from the start).
    std::optional<smtp::server_session> _session;
    std::optional<spool::spool::writer_id> _writer;
    bool _commit_pending = false;  // finished into the spool, batch not yet completed

    // TLS: created when the session wants it (after its 220 to STARTTLS went out in
    // plaintext) or at start() on an smtps listener. Ciphertext the pump has no room for waits
    // in _cipher_in (the recv is stopped meanwhile); plaintext replies it has not taken yet
    // wait in _plain_out.
    std::unique_ptr<tls::session> _tls;
    std::string _cipher_in;
    std::size_t _cipher_pos = 0;
    std::string _plain_in;
    std::string _plain_out;
    bool _tls_up = false;       // handshake finished, reported
    bool _tls_dead = false;     // failed: say nothing more, close
    bool _tls_closing = false;  // close_notify queued
    bool _in_tls_input = false;
    std::chrono::steady_clock::time_point _handshake_deadline{};

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
    std::int64_t _connected_at = 0;
    core::member_completion<inbound_connection, &inbound_connection::on_recv> _recv_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_send> _send_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_cancel> _cancel_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_shutdown> _shutdown_op{
        this};
    core::member_completion<inbound_connection, &inbound_connection::on_close> _close_op{this};
};

}  // namespace ringmail::server
