// What an inbound connection needs from the shard that owns it: the ring, the shard's spool
// (and its back-pressure) and TLS contexts, the AUTH limiter and verifier, the DKIM signer,
// whether delivery takes new mail, the relay networks. The daemon's shard implements it; tests
// may fake it. Used on the owning shard's thread only.
#pragma once

#include "ringmail/auth/failure_limiter.h"
#include "ringmail/auth/verifier.h"
#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/metrics.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"
#include "ringmail/dkim/signer.h"
#include "ringmail/spool/spool.h"
#include "ringmail/tls/context.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ringmail::reception {

class host {
  public:
    virtual core::reactor& reactor() noexcept = 0;
    virtual core::buffer_ring& buffers() noexcept = 0;
    virtual unsigned shard_id() const noexcept = 0;
    // The shard's own spool: new mail is written there.
    virtual spool::spool& spool() noexcept = 0;
    // Delivery can take another message (else new mail gets 452).
    virtual bool can_accept() const = 0;
    // The server context of listener `index` as of the last reload (null without
    // certificates); a connection keeps the one it started its handshake with.
    virtual const std::shared_ptr<const tls::server_context>& tls_context(
        std::size_t index) const = 0;
    virtual void count_tls_failure() noexcept = 0;
    // Where this shard publishes its counters (/metrics); null: not counted (tests).
    virtual core::shard_metrics* metrics() noexcept { return nullptr; }
    virtual auth::failure_limiter& auth_limiter() noexcept = 0;
    virtual auth::verifier* verifier() noexcept = 0;  // null without [auth]
    // The shard's DKIM signer as of the last reload; null without [[dkim]] tables. A message
    // keeps the one it started with.
    virtual const std::shared_ptr<dkim::signer>& dkim_signer() const noexcept = 0;
    virtual const std::string& hostname() const noexcept = 0;
    // The client (the connection's peer, or the one a PROXY header named) may relay anywhere
    // without AUTH (relay.allow_networks).
    virtual bool relay_allowed(const core::endpoint& client) const noexcept = 0;
    virtual std::int64_t unix_now() const noexcept = 0;
    // The connection has closed and nothing names it: destroy it after this call returns.
    virtual void connection_closed(std::uint64_t id) = 0;
    // The shard's spools together hold at least server.max_unwritten_bytes of message bytes not
    // yet on disk: connections receiving message data stop reading (back-pressure).
    virtual bool over_budget() const noexcept = 0;
    // A connection stopped reading because of over_budget(): once it is not, the host calls
    // budget_changed() on its connections (it also does when it goes over: see the shard). A held connection's data timeout does not run (the
    // wait is ours, not the client's); it starts afresh when reading resumes.
    virtual void input_held() noexcept = 0;

  protected:
    ~host() = default;
};

}  // namespace ringmail::reception
