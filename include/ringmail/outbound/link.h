// The SMTP client side as the delivery engine sees it: a link is one SMTP client session to
// one address (connect, greeting, EHLO, STARTTLS, then transactions one at a time, or two
// when the next is pipelined behind the current one's data), and the
// network makes links and resolves routes. The daemon's are outbound_connection and
// ring_network (io_uring sockets, c-ares); the engine's unit tests give fakes of both.
//
// Links and the network belong to one shard and are used on its thread only. Failures are
// events, never exceptions: a link that cannot be used (any more) reports on_failed once, then
// on_closed when nothing is in flight; route lookups end in their callback, exactly once,
// never inside the call that asked.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/core/socket.h"
#include "ringmail/dns/route.h"
#include "ringmail/smtp/client_session.h"
#include "ringmail/tls/context.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::outbound {

// Where to connect.
struct outbound_target {
    core::endpoint endpoint;
    std::string host;  // the host's name (TLS server name and verification, logs)
    std::string ip;    // address text for logs ("192.0.2.1", "2001:db8::1")
};

struct outbound_settings {
    smtp::client_config client;  // helo name, STARTTLS policy, timeouts
    // Client TLS context for STARTTLS; null: never STARTTLS whatever the policy says.
    std::shared_ptr<const tls::client_context> tls;
    std::chrono::milliseconds connect_timeout{30000};
    // 0: the handler manages idleness (the scheduler); else QUIT after this long idle.
    std::chrono::milliseconds idle_timeout{0};
    std::uint32_t max_transactions = 0;  // then QUIT; 0 = no limit (the handler decides)
    // Egress source (shaping): the socket binds this address (port 0) before connecting.
    std::optional<core::endpoint> source;
};

class link {
  public:
    virtual ~link() = default;
    // Opens the connection; everything after it is an event (a failure too, even one that
    // happens inside this call: the caller holds the link before it connects).
    virtual void connect() = 0;
    // One transaction (when ready(), or inside link_handler::on_pipeline); the message's
    // views must outlive its result.
    virtual void start(const smtp::outbound_message& m) = 0;
    // Finish what is in flight, then QUIT (force: close now).
    virtual void stop(bool force) = 0;

    virtual bool ready() const noexcept = 0;        // usable, no transaction
    virtual bool established() const noexcept = 0;  // greeting + EHLO succeeded
    virtual bool finished() const noexcept = 0;     // closed, nothing in flight
    virtual bool tls_active() const noexcept = 0;
    virtual std::uint32_t transactions() const noexcept = 0;
    virtual std::uint64_t id() const noexcept = 0;
    // The handler hands an idle session to another of its connection records (pooling).
    virtual void rebind(std::uint64_t id) noexcept = 0;
    virtual const outbound_target& target() const noexcept = 0;
    virtual std::string_view tls_version() const noexcept = 0;
    virtual const smtp::peer_capabilities& capabilities() const noexcept = 0;
    // The errno of a failed bind to settings.source (EADDRNOTAVAIL: the address is on no
    // interface), 0 when the bind did not fail.
    virtual int bind_error() const noexcept { return 0; }
};

class link_handler {
  public:
    // The session is usable and idle: first after EHLO (and STARTTLS), then after each
    // transaction.
    virtual void on_ready(link& c) = 0;
    // The running transaction's data is about to go out and the next transaction may follow
    // it in the same flight (RFC 2920): start() may be called inside this call, once. Asked
    // once per transaction; a handler with nothing to send does nothing.
    virtual void on_pipeline(link&) {}
    // Results in the order the transactions were started.
    virtual void on_transaction(link& c, const smtp::transaction_result& r) = 0;
    // The link cannot be used (any more). Called at most once, before on_closed.
    virtual void on_failed(link& c, const smtp::server_reply& why) = 0;
    // Closed, nothing in flight: the handler destroys it later (never inside this call).
    virtual void on_closed(link& c) = 0;

  protected:
    ~link_handler() = default;
};

class network {
  public:
    using route_callback = std::function<void(const result<dns::route>&)>;
    virtual ~network() = default;
    // A new link to `target`, not connected yet (link::connect). Its events go to `handler`.
    virtual std::unique_ptr<link> make_link(link_handler& handler, std::uint64_t id,
                                            outbound_target target,
                                            const outbound_settings& settings) = 0;
    // The mail exchangers of a domain (MX, implicit MX, address literal), with the MX port.
    virtual void resolve_route(std::string_view domain, route_callback cb) = 0;
    // One fixed host (a relay): its addresses with `port`.
    virtual void resolve_host(std::string_view host, std::uint16_t port, route_callback cb) = 0;
    // The client TLS context for STARTTLS (verify: the chain must verify and name the host);
    // null when it cannot be built (STARTTLS is then not used).
    virtual std::shared_ptr<const tls::client_context> client_tls(bool verify) = 0;
    // Ends every lookup (callbacks with dns::errc::cancelled); later ones fail the same way.
    virtual void shutdown() = 0;
    // No ring operation of the network's own (DNS) is in flight.
    virtual bool idle() const = 0;
};

}  // namespace ringmail::outbound
