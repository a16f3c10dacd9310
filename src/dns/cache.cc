#include "ringmail/dns/cache.h"

namespace ringmail::dns {

const result<route>* route_cache::find(const std::string& domain, clock::time_point now) {
    auto it = _entries.find(domain);
    if (it == _entries.end())
        return nullptr;
    if (it->second.expiry->first <= now) {
        _by_expiry.erase(it->second.expiry);
        _entries.erase(it);
        return nullptr;
    }
    return &it->second.value;
}

void route_cache::insert(const std::string& domain, result<route> value, clock::time_point expires,
                         clock::time_point now) {
    erase(domain);
    if (expires <= now || _max == 0)
        return;
    // Drop what has expired, then (still full) whatever expires soonest.
    while (!_by_expiry.empty() && (_by_expiry.begin()->first <= now || _entries.size() >= _max)) {
        _entries.erase(_by_expiry.begin()->second);
        _by_expiry.erase(_by_expiry.begin());
    }
    auto expiry = _by_expiry.emplace(expires, domain);
    _entries.emplace(domain, entry{std::move(value), expiry});
}

void route_cache::erase(const std::string& domain) {
    auto it = _entries.find(domain);
    if (it == _entries.end())
        return;
    _by_expiry.erase(it->second.expiry);
    _entries.erase(it);
}

void route_cache::clear() noexcept {
    _entries.clear();
    _by_expiry.clear();
}

}  // namespace ringmail::dns
