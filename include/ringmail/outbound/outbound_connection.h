// The SMTP client side: one outbound SMTP connection to one address (a route's host: an MX
// host or a fixed relay). A core::stream_connection on the shard's ring, an
// smtp::client_session for the protocol and, when the peer offers STARTTLS and the policy
// wants it, a tls::session as the stream's transform.
//
// Owned by one shard; its handler (the delivery engine) decides what it sends.
// It runs one transaction at a time on a persistent session (EHLO once, PIPELINING when
// offered); with PIPELINING the handler is offered to start the next behind the current one's
// data (link_handler::on_pipeline), so that the dot and the next MAIL, RCPTs and DATA leave in
// one send. Failures are events, never exceptions: a refused connect, a refused greeting or
// EHLO, a failed TLS handshake with TLS required, a timeout or a peer that goes away all end in
// on_failed() (established() says whether the session ever became usable; a job that was
// running gets transient outcomes through the session), then on_closed() once nothing is in
// flight. Trying the next MX host is the handler's business: one object per address.
#pragma once

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/metrics.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/stream_connection.h"
#include "ringmail/outbound/link.h"
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

namespace ringmail::outbound {

class outbound_connection final : public core::stream_connection, public link {
  public:
    outbound_connection(link_handler& handler, core::reactor& r, core::buffer_ring& buffers,
                        std::uint64_t id, outbound_target target,
                        const outbound_settings& settings);
    ~outbound_connection() override;
    // STARTTLS handshakes are counted there (null: not counted).
    void set_metrics(core::shard_metrics* m) noexcept { _metrics = m; }

    // link
    void connect() override;
    void start(const smtp::outbound_message& m) override;
    void stop(bool force) override;
    bool ready() const noexcept override;
    bool established() const noexcept override { return _established; }
    bool finished() const noexcept override { return core::stream_connection::finished(); }
    bool tls_active() const noexcept override { return _session.tls_active(); }
    std::uint32_t transactions() const noexcept override { return _transactions; }
    std::uint64_t id() const noexcept override { return _id; }
    void rebind(std::uint64_t id) noexcept override { _id = id; }
    const outbound_target& target() const noexcept override { return _target; }
    std::string_view tls_version() const noexcept override;
    int bind_error() const noexcept override { return _bind_error; }
    const smtp::peer_capabilities& capabilities() const noexcept override {
        return _session.capabilities();
    }
    bool busy() const noexcept { return _busy; }

  private:
    // stream_connection
    void on_connected(int res) override;
    void on_received(std::string_view bytes) override;
    bool wants_input() const override { return !_session.closed(); }
    void on_sent() override;
    void on_input_end(int err) override;
    void on_transform_ready() override;
    void on_transform_failed(std::string_view why) override;
    void on_deadline() override;
    void on_closed() override { _handler.on_closed(*this); }

    void pump();
    void start_handshake();
    void fail(std::string_view why);
    void report_failure(const smtp::server_reply& why);

    link_handler& _handler;
    std::uint64_t _id;
    outbound_target _target;
    // A copy: a pooled session outlives the handler's record it was made for.
    const outbound_settings _settings;
    smtp::client_session _session;
    tls::session* _tls = nullptr;  // the stream's transform after STARTTLS
    core::shard_metrics* _metrics = nullptr;
    void count_tls(core::tls_result r) noexcept {
        if (_metrics != nullptr)
            _metrics->tls_handshakes[1][static_cast<std::size_t>(r)].add();
    }
    std::uint32_t _transactions = 0;
    int _bind_error = 0;
    bool _pieces_out = false;  // the session's pieces are the stream's batch (end_send owed)
    bool _established = false;
    bool _busy = false;
    bool _reported_failure = false;
    bool _offered = false;   // on_pipeline was called for the running transaction
    bool _offering = false;  // inside on_pipeline: start() leaves the sending to pump()
    bool _stopping = false;
    bool _idle = false;  // the deadline is the idle timeout rather than a reply's
};

// A client TLS context for this shard (call on the shard's thread): system CAs plus
// `extra_ca_file`; `verify`: the chain must verify and name the host. Null (logged) when it
// cannot be built: STARTTLS is then not used.
std::shared_ptr<const tls::client_context> make_client_tls(const std::string& extra_ca_file,
                                                           bool verify);

}  // namespace ringmail::outbound
