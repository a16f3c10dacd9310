#include "ringmail/outbound/ring_network.h"

#include "ringmail/outbound/outbound_connection.h"

namespace ringmail::outbound {

ring_network::ring_network(core::reactor& r, core::buffer_ring& buffers,
                           std::unique_ptr<dns::resolver> resolver, std::string tls_ca_file,
                           core::shard_metrics* metrics)
    : _reactor(r),
      _buffers(buffers),
      _resolver(std::move(resolver)),
      _tls_ca_file(std::move(tls_ca_file)),
      _metrics(metrics) {}

ring_network::~ring_network() {
    if (_resolver)
        _resolver->shutdown();
}

std::unique_ptr<link> ring_network::make_link(link_handler& handler, std::uint64_t id,
                                              outbound_target target,
                                              const outbound_settings& settings) {
    auto c = std::make_unique<outbound_connection>(handler, _reactor, _buffers, id,
                                                   std::move(target), settings);
    c->set_metrics(_metrics);
    return c;
}

ring_network::route_callback ring_network::counted(route_callback cb) {
    if (_metrics == nullptr)
        return cb;
    return [m = _metrics, cb = std::move(cb)](const result<dns::route>& r) {
        core::dns_result k = core::dns_result::ok;
        if (!r) {
            const auto ec = r.error();
            if (ec == dns::errc::nxdomain || ec == dns::errc::bad_domain)
                k = core::dns_result::nxdomain;
            else if (ec == dns::errc::no_address || ec == dns::errc::null_mx)
                k = core::dns_result::nodata;
            else
                k = core::dns_result::temporary;
        }
        m->dns[static_cast<std::size_t>(k)].add();
        cb(r);
    };
}

void ring_network::resolve_route(std::string_view domain, route_callback cb) {
    _resolver->resolve_route(domain, counted(std::move(cb)));
}

void ring_network::resolve_host(std::string_view host, std::uint16_t port, route_callback cb) {
    _resolver->resolve_host(host, port, counted(std::move(cb)));
}

std::shared_ptr<const tls::client_context> ring_network::client_tls(bool verify) {
    const int i = verify ? 1 : 0;
    if (!_tls_tried[i]) {
        _tls_tried[i] = true;
        _tls[i] = make_client_tls(_tls_ca_file, verify);
    }
    return _tls[i];
}

void ring_network::shutdown() {
    _resolver->shutdown();
}

bool ring_network::idle() const {
    return _resolver->idle();
}

}  // namespace ringmail::outbound
