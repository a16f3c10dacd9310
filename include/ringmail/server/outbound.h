// One outbound SMTP connection to one address (a smarthost or one MX host address): socket on
// the shard's ring, an smtp::client_session for the protocol and, when the peer offers
// STARTTLS and the policy wants it, a tls::session between the socket and the SMTP session.
//
// Owned by one shard; its handler (smarthost delivery or MX delivery) decides what it sends.
// It runs one transaction at a time on a persistent session (EHLO once, PIPELINING when
// offered). Failures are events, never exceptions: a refused connect, a refused greeting or
// EHLO, a failed TLS handshake with TLS required, a timeout or a peer that goes away all end in
// on_failed() (established() says whether the session ever became usable; a job that was
// running gets transient outcomes through the session), then on_closed() once nothing is in
// flight. Trying the next MX host is the handler's business: one object per address.
#pragma once

#include "ringmail/core/config.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/timer.h"
#include "ringmail/smtp/client_session.h"
#include "ringmail/tls/context.h"
#include "ringmail/tls/session.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/uio.h>
#include <vector>

namespace ringmail::server {

class shard;
class outbound_connection;

// Where to connect.
struct outbound_target {
    core::endpoint endpoint;
    std::string host;  // MX host name (TLS server name and verification, logs)
    std::string ip;    // address text for logs ("192.0.2.1", "2001:db8::1")
};

struct outbound_settings {
    smtp::client_config client;  // helo name, STARTTLS policy, timeouts
    // Client TLS context for STARTTLS; null: never STARTTLS whatever the policy says.
    std::shared_ptr<const tls::client_context> tls;
    std::chrono::milliseconds connect_timeout{30000};
    // 0: the handler manages idleness (MX scheduler); else QUIT after this long idle.
    std::chrono::milliseconds idle_timeout{0};
    std::uint32_t max_transactions = 0;  // then QUIT; 0 = no limit (the handler decides)
};

class outbound_handler {
  public:
    // The session is usable and idle: first after EHLO (and STARTTLS), then after each
    // transaction.
    virtual void on_ready(outbound_connection& c) = 0;
    virtual void on_transaction(outbound_connection& c, const smtp::transaction_result& r) = 0;
    // The connection cannot be used (any more). Called at most once, before on_closed.
    virtual void on_failed(outbound_connection& c, const smtp::server_reply& why) = 0;
    // Closed, nothing in flight: the handler destroys it later (never inside this call).
    virtual void on_closed(outbound_connection& c) = 0;

  protected:
    ~outbound_handler() = default;
};

class outbound_connection final : private core::timer {
  public:
    outbound_connection(outbound_handler& handler, shard& sh, std::uint64_t id,
                        outbound_target target, const outbound_settings& settings);
    ~outbound_connection();
    outbound_connection(const outbound_connection&) = delete;
    outbound_connection& operator=(const outbound_connection&) = delete;

    void connect();
    // One transaction (only when ready()); the message's views must outlive it.
    void start(const smtp::outbound_message& m);
    // Finish what is in flight, then QUIT (force: close now).
    void stop(bool force);

    bool ready() const noexcept;                                // usable, no transaction
    bool established() const noexcept { return _established; }  // greeting + EHLO succeeded
    bool busy() const noexcept { return _busy; }
    bool finished() const noexcept { return _finished; }  // closed, nothing in flight
    bool tls_active() const noexcept { return _session.tls_active(); }
    std::uint32_t transactions() const noexcept { return _transactions; }
    std::uint64_t id() const noexcept { return _id; }
    // The handler hands an idle session to another of its connection records (MX pooling).
    void rebind(std::uint64_t id) noexcept { _id = id; }
    const outbound_target& target() const noexcept { return _target; }
    std::string_view tls_version() const noexcept;
    const smtp::peer_capabilities& capabilities() const noexcept { return _session.capabilities(); }

  private:
    void on_connect(int res, std::uint32_t flags);
    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_shutdown(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void on_expire() override;
    void pump();
    void send_pieces();
    void send_plain(std::span<const std::string_view> pieces);
    void tls_fill();     // encrypt pending plaintext pieces, send ciphertext
    void tls_receive();  // after feeding: handshake progress, plaintext to the session
    void start_handshake();
    void fail(std::string_view why);
    void report_failure(const smtp::server_reply& why);
    void start_close();
    void check_finished();

    outbound_handler& _handler;
    shard& _shard;
    std::uint64_t _id;
    outbound_target _target;
    // A copy: a pooled session outlives the handler's record it was made for.
    const outbound_settings _settings;
    core::ring_fd _fd;
    smtp::client_session _session;
    std::unique_ptr<tls::session> _tls;
    std::uint32_t _transactions = 0;
    // Plaintext sendmsg in flight: iovecs over the session's pieces, advanced on partial sends.
    std::vector<iovec> _iov;
    std::size_t _iov_first = 0;
    msghdr _msg{};
    // TLS: session pieces being encrypted (between begin_send and end_send) and ciphertext.
    std::vector<std::string_view> _pieces;
    std::size_t _piece = 0;
    std::size_t _piece_off = 0;
    bool _pieces_pending = false;
    std::string _wire;
    std::size_t _wire_off = 0;
    std::string _plain_in;
    unsigned _in_flight = 0;
    bool _connecting = false;
    bool _established = false;
    bool _busy = false;
    bool _reported_failure = false;
    bool _recv_armed = false;
    bool _send_in_flight = false;
    bool _cancel_sent = false;
    bool _stopping = false;
    bool _closing = false;
    bool _finished = false;
    bool _idle = false;  // armed with the idle timeout rather than a reply deadline
    core::member_completion<outbound_connection, &outbound_connection::on_connect> _connect_op{
        this};
    core::member_completion<outbound_connection, &outbound_connection::on_recv> _recv_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_send> _send_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_cancel> _cancel_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_shutdown> _shutdown_op{
        this};
    core::member_completion<outbound_connection, &outbound_connection::on_close> _close_op{this};
};

smtp::tls_policy to_smtp_policy(core::tls_policy p) noexcept;
// A client TLS context for this shard (call on the shard's thread): system CAs plus
// delivery.tls_ca_file; `verify`: the chain must verify and name the MX host. Null (logged)
// when it cannot be built: STARTTLS is then not used.
std::shared_ptr<const tls::client_context> make_client_tls(const core::delivery_config& d,
                                                           bool verify);

}  // namespace ringmail::server
