// Routes: where the mail of a recipient domain goes. A smarthost is a route, not a second
// engine (DESIGN.md): every recipient becomes a job on a destination queue of the one
// scheduler, and the route says which queue and how its connections find their host.
//
// - A [[domain]] with `route = "host:port"`: its own destination (the domain's key and its
//   [[domain]] limits), whose connections go to that host.
// - Else with delivery.smarthost: every other domain shares one destination, ":smarthost",
//   placed on every shard (scheduler placement::local: each shard delivers what it spooled,
//   as fast as it spools it, with delivery.max_connections per shard).
// - Else MX routing: the domain's own destination, resolved by MX.
// Built once from the configuration, then read-only; any thread.
#pragma once

#include "ringmail/config/config.h"
#include "ringmail/queue/scheduler.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ringmail::delivery {

class router {
  public:
    // The key of the shared smarthost destination (':' never appears in a domain).
    static constexpr std::string_view smarthost_key = ":smarthost";

    router() = default;
    router(std::optional<core::host_port> smarthost,
           const std::vector<config::domain_config>& domains);

    struct destination {
        std::string key;
        queue::scheduler::placement placement = queue::scheduler::placement::owner;
    };
    // The destination of a recipient domain.
    destination destination_of(std::string_view domain) const;

    // How the connections of a destination find their host: a fixed host and port, or
    // (nullopt) the MX records of the key's domain.
    std::optional<core::host_port> fixed_host(std::string_view key) const;

    const std::optional<core::host_port>& smarthost() const noexcept { return _smarthost; }

  private:
    std::optional<core::host_port> _smarthost;
    std::unordered_map<std::string, core::host_port> _routes;  // [[domain]] route, by key
};

// "host:port", "[v6]:port" for logs.
std::string host_port_text(const core::host_port& hp);

}  // namespace ringmail::delivery
