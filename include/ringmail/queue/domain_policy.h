// Per-destination delivery policy: connection and message limits, connect timeout, rate.
//
// Built once from configuration ([delivery] defaults plus [[domain]] overrides, parsed by the
// daemon) and copied into each shard's scheduler; read-only afterwards, no shard affinity.
// Overrides match exact routing domains, case-insensitively (a trailing dot is ignored).
// A bad table is a configuration error: validate() names it; lookup never fails.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ringmail::queue {

struct destination_policy {
    // Across all shards (lent slots included): the global per-destination limit.
    std::uint32_t max_connections = 10;
    std::uint32_t max_messages_per_connection = 100;
    std::chrono::milliseconds connect_timeout{std::chrono::seconds(30)};
    double rate = 0.0;   // messages per second started towards the destination; 0 = unlimited
    double burst = 0.0;  // bucket size; 0 = max(1, rate)

    bool operator==(const destination_policy&) const = default;
};

// One [[domain]] table: unset fields take the default.
struct domain_override {
    std::string name;
    std::optional<std::uint32_t> max_connections;
    std::optional<std::uint32_t> max_messages_per_connection;
    std::optional<std::chrono::milliseconds> connect_timeout;
    std::optional<double> rate;
    std::optional<double> burst;
};

class domain_policy {
  public:
    domain_policy() = default;
    domain_policy(destination_policy defaults, const std::vector<domain_override>& overrides);

    // "" when usable, else one message naming the domain and the key (duplicate names, zero
    // limits, negative rates, empty names).
    static std::string validate(const destination_policy& defaults,
                                const std::vector<domain_override>& overrides);

    // The policy for a routing domain (any case, trailing dot or not).
    const destination_policy& lookup(std::string_view domain) const;
    const destination_policy& defaults() const noexcept { return _defaults; }
    std::size_t overrides() const noexcept { return _by_name.size(); }

  private:
    destination_policy _defaults;
    std::unordered_map<std::string, destination_policy> _by_name;  // lower-case keys
};

}  // namespace ringmail::queue
