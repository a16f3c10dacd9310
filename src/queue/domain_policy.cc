#include "ringmail/queue/domain_policy.h"

#include "ringmail/queue/destination.h"

#include <fmt/format.h>

#include <unordered_set>

namespace ringmail::queue {

namespace {

destination_policy merged(const destination_policy& defaults, const domain_override& o) {
    destination_policy p = defaults;
    if (o.max_connections)
        p.max_connections = *o.max_connections;
    if (o.max_messages_per_connection)
        p.max_messages_per_connection = *o.max_messages_per_connection;
    if (o.connect_timeout)
        p.connect_timeout = *o.connect_timeout;
    if (o.rate) {
        p.rate = *o.rate;
        // A rate set without a burst gets the default burst for that rate, not the default's.
        if (!o.burst)
            p.burst = 0.0;
    }
    if (o.burst)
        p.burst = *o.burst;
    return p;
}

std::string check(const destination_policy& p, std::string_view where) {
    if (p.max_connections == 0)
        return fmt::format("{}: max_connections must be at least 1", where);
    if (p.max_messages_per_connection == 0)
        return fmt::format("{}: max_messages_per_connection must be at least 1", where);
    if (p.connect_timeout.count() <= 0)
        return fmt::format("{}: connect_timeout must be positive", where);
    if (!(p.rate >= 0.0))
        return fmt::format("{}: rate must be 0 (unlimited) or positive", where);
    if (!(p.burst >= 0.0))
        return fmt::format("{}: burst must be 0 (default) or positive", where);
    return {};
}

}  // namespace

std::string domain_policy::validate(const destination_policy& defaults,
                                    const std::vector<domain_override>& overrides) {
    if (auto e = check(defaults, "delivery"); !e.empty())
        return e;
    std::unordered_set<std::string> seen;
    for (const auto& o : overrides) {
        std::string key = destination_key(o.name);
        if (key.empty())
            return "domain: name must not be empty";
        if (!seen.insert(key).second)
            return fmt::format("domain \"{}\": listed twice", o.name);
        if (auto e = check(merged(defaults, o), fmt::format("domain \"{}\"", o.name)); !e.empty())
            return e;
    }
    return {};
}

domain_policy::domain_policy(destination_policy defaults,
                             const std::vector<domain_override>& overrides)
    : _defaults(defaults) {
    for (const auto& o : overrides)
        _by_name.insert_or_assign(destination_key(o.name), merged(_defaults, o));
}

const destination_policy& domain_policy::lookup(std::string_view domain) const {
    if (_by_name.empty())
        return _defaults;
    auto it = _by_name.find(destination_key(domain));
    return it == _by_name.end() ? _defaults : it->second;
}

}  // namespace ringmail::queue
