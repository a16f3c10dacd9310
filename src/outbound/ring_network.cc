#include "ringmail/outbound/ring_network.h"

#include "ringmail/outbound/outbound_connection.h"

namespace ringmail::outbound {

ring_network::ring_network(core::reactor& r, core::buffer_ring& buffers,
                           std::unique_ptr<dns::resolver> resolver, std::string tls_ca_file)
    : _reactor(r),
      _buffers(buffers),
      _resolver(std::move(resolver)),
      _tls_ca_file(std::move(tls_ca_file)) {}

ring_network::~ring_network() {
    if (_resolver)
        _resolver->shutdown();
}

std::unique_ptr<link> ring_network::make_link(link_handler& handler, std::uint64_t id,
                                              outbound_target target,
                                              const outbound_settings& settings) {
    return std::make_unique<outbound_connection>(handler, _reactor, _buffers, id, std::move(target),
                                                 settings);
}

void ring_network::resolve_route(std::string_view domain, route_callback cb) {
    _resolver->resolve_route(domain, std::move(cb));
}

void ring_network::resolve_host(std::string_view host, std::uint16_t port, route_callback cb) {
    _resolver->resolve_host(host, port, std::move(cb));
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
