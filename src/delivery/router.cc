#include "ringmail/delivery/router.h"

#include <fmt/format.h>

namespace ringmail::delivery {

router::router(std::optional<core::host_port> smarthost,
               const std::vector<config::domain_config>& domains)
    : _smarthost(std::move(smarthost)) {
    for (const auto& d : domains) {
        if (d.route)
            _routes.emplace(queue::destination_key(d.name), *d.route);
    }
}

router::destination router::destination_of(std::string_view domain) const {
    std::string key = queue::destination_key(domain);
    if (_routes.count(key) != 0 || !_smarthost)
        return {std::move(key), queue::scheduler::placement::owner};
    return {std::string(smarthost_key), queue::scheduler::placement::local};
}

std::optional<core::host_port> router::fixed_host(std::string_view key) const {
    if (key == smarthost_key)
        return _smarthost;
    if (auto it = _routes.find(std::string(key)); it != _routes.end())
        return it->second;
    return std::nullopt;
}

std::string host_port_text(const core::host_port& hp) {
    return hp.host.find(':') != std::string::npos ? fmt::format("[{}]:{}", hp.host, hp.port)
                                                  : fmt::format("{}:{}", hp.host, hp.port);
}

}  // namespace ringmail::delivery
