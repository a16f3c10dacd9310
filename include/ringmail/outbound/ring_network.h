// The daemon's outbound::network: links are outbound_connections on the shard's io_uring
// (sockets, the provided-buffer ring), routes come from the shard's c-ares resolver polled on
// the same ring, client TLS contexts are built once per shard on first use.
//
// One per shard, owned by its delivery engine's owner (the daemon's shard), used on that
// shard's thread. The resolver must outlive no reactor: shut it down (shutdown()), let the
// ring give back its operations (idle()), then destroy.
#pragma once

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/metrics.h"
#include "ringmail/core/reactor.h"
#include "ringmail/dns/resolver.h"
#include "ringmail/outbound/link.h"

#include <memory>
#include <string>

namespace ringmail::outbound {

class ring_network final : public network {
  public:
    ring_network(core::reactor& r, core::buffer_ring& buffers,
                 std::unique_ptr<dns::resolver> resolver, std::string tls_ca_file,
                 core::shard_metrics* metrics = nullptr);
    ~ring_network() override;

    std::unique_ptr<link> make_link(link_handler& handler, std::uint64_t id, outbound_target target,
                                    const outbound_settings& settings) override;
    void resolve_route(std::string_view domain, route_callback cb) override;
    void resolve_host(std::string_view host, std::uint16_t port, route_callback cb) override;
    std::shared_ptr<const tls::client_context> client_tls(bool verify) override;
    void shutdown() override;
    bool idle() const override;

  private:
    route_callback counted(route_callback cb);

    core::reactor& _reactor;
    core::buffer_ring& _buffers;
    std::unique_ptr<dns::resolver> _resolver;
    std::string _tls_ca_file;
    core::shard_metrics* _metrics;                       // null: not counted
    std::shared_ptr<const tls::client_context> _tls[2];  // opportunistic, verify
    bool _tls_tried[2] = {false, false};
};

}  // namespace ringmail::outbound
