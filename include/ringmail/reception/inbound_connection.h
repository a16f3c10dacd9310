// Reception: one accepted SMTP connection. The glue between the socket (a
// core::stream_connection, with the TLS record pump as its transform for STARTTLS or an smtps
// listener) and the pure smtp::server_session; the session's transaction_sink streams the
// message into the shard's spool (and through the DKIM signer when the message is ours to
// sign: the signature is stored beside the body with the Received header), its auth_backend
// hands SASL credentials to the daemon's auth::verifier (off the shard). On a proxy_protocol
// listener a PROXY v1/v2 header (smtp::proxy_reader) is read first, within
// proxy_header_timeout and before any greeting or TLS; the client it names is then the peer for
// everything (relay permission, Received, the AUTH failure limiter, logs). A connection without
// a valid header is closed, no greeting.
//
// Owned by the shard that accepted it (through reception::host); destroyed by the shard after
// on_closed, never inside its own call stack. Peer errors, timeouts, failed TLS handshakes and
// resets close this connection only; a message whose commit completes after the peer left is
// still delivered (it was durable, only the 250 could not be sent). A verification answer that
// arrives after the connection left is dropped by the shard.
#pragma once

#include "ringmail/auth/sasl.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/stream_connection.h"
#include "ringmail/dkim/signer.h"
#include "ringmail/reception/host.h"
#include "ringmail/reception/listener.h"
#include "ringmail/smtp/proxy_header.h"
#include "ringmail/smtp/server_session.h"
#include "ringmail/spool/spool.h"
#include "ringmail/tls/session.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace ringmail::reception {

class inbound_connection;

// The session's auth_backend: one SASL exchange at a time, credentials to the verifier.
class inbound_auth final : public smtp::auth_backend {
  public:
    explicit inbound_auth(inbound_connection& c) : _c(c) {}
    // PLAIN and LOGIN; CRAM-MD5 too while the users file holds CRAM-MD5 entries.
    std::vector<std::string> mechanisms() const override;
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
    auth::mechanism _mech = auth::mechanism::plain;  // of the exchange in progress (metrics)
    void count(bool ok) noexcept;
};

class inbound_connection final : public core::stream_connection, private smtp::transaction_sink {
  public:
    // How long a balancer has to send its PROXY header once connected.
    static constexpr std::chrono::seconds proxy_header_timeout{5};

    // `peer`: the socket's peer (on a proxy_protocol listener, a trusted balancer).
    inbound_connection(host& owner, std::uint64_t id, core::ring_fd fd, const core::endpoint& peer,
                       const listener_settings& listener);
    ~inbound_connection() override;

    void start();
    // The group commit this connection's message was in has completed.
    void on_committed(const result<spool::queue_id>& id);
    // The verifier answered this connection's AUTH attempt.
    void on_auth_verdict(auth::verdict v);
    // The daemon is stopping: idle sessions are told 421 now, a session inside a transaction
    // finishes it first. force: close now whatever the state (drain deadline passed).
    void shutdown(bool force);
    // The shard went over its budget of unwritten bytes, or back under it: a connection in a
    // message stops reading, or reads again.
    void budget_changed() {
        if (_writer)
            pump();  // only a connection in a message is held
    }
    std::uint64_t id() const noexcept { return _id; }

  private:
    friend class inbound_auth;

    // transaction_sink
    result<void> begin(const mail::envelope& env) override;
    result<void> append(std::string_view bytes) override;
    void commit() override;
    void abort() override;

    // stream_connection
    void on_received(std::string_view bytes) override;
    bool wants_input() const override;
    void on_sent() override { pump(); }
    void on_input_end(int err) override;
    void on_transform_ready() override;
    void on_transform_failed(std::string_view why) override;
    void on_deadline() override;
    void on_closed() override;

    void make_session(std::optional<smtp::tls_details> tls);
    // The protocol proper (TLS or the SMTP greeting) starts; `early`: bytes that arrived
    // behind the PROXY header (a TLS ClientHello, an impatient client's first command).
    void begin_protocol(std::string_view early);
    void proxy_input(std::string_view bytes);
    void proxy_failed(std::string_view why);
    void pump();
    // Adds what the session refused since the last call to the shard's counters.
    void publish_rejections() noexcept;
    void begin_tls(std::string_view early = {});
    void tls_broken(bool handshake, std::string_view why);
    void peer_gone();
    void start_close(bool flush);
    void log_disconnect();
    bool in_transaction() const noexcept;
    // Message data waits in the socket: the shard's spools are over their budget.
    bool held_by_budget() const noexcept { return _writer && _host.over_budget(); }

    host& _host;
    const std::uint64_t _id;
    const listener_settings& _listener;
    core::endpoint _peer;  // the client: the socket's peer, or the PROXY header's source
    std::string _peer_text;
    bool _relay_allowed = false;
    // While the PROXY header is awaited (proxy_protocol listeners); the balancer's address.
    std::optional<smtp::proxy_reader> _proxy;
    std::string _via_text;
    inbound_auth _auth{*this};
    // Built at start() or, on an smtps listener, once the handshake has finished (peer_info
    // carries the TLS details from the start).
    std::optional<smtp::server_session> _session;
    std::optional<spool::spool::writer_id> _writer;
    // Mail we send (relay_allowed or authenticated) with [[dkim]] tables: the body hash runs
    // while the content arrives, the signature is made in commit().
    std::optional<dkim::message_signer> _dkim;
    bool _commit_pending = false;  // finished into the spool, batch not yet completed

    // TLS: the transform of the stream (owned by it), from STARTTLS (after its 220 went out
    // in plaintext) or start() on an smtps listener.
    tls::session* _tls = nullptr;
    bool _tls_up = false;  // handshake finished, reported
    std::array<std::uint64_t, static_cast<std::size_t>(core::rejection::count)> _rejected_seen{};
    bool _tls_dead = false;     // failed: say nothing more, close
    bool _tls_closing = false;  // close_notify queued
    std::chrono::steady_clock::time_point _handshake_deadline{};

    std::string _out;  // the session's replies on their way to the stream (buffers swap)
    bool _peer_gone = false;
    bool _shutdown = false;
    bool _close_logged = false;
    std::int64_t _connected_at = 0;
};

}  // namespace ringmail::reception
