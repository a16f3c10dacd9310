#include "ringmail/auth/failure_limiter.h"

#include <algorithm>
#include <cstring>
#include <netinet/in.h>

namespace ringmail::auth {

failure_limiter::key failure_limiter::key_of(const sockaddr* addr) noexcept {
    key k{};
    if (addr == nullptr)
        return k;
    if (addr->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
        k[10] = 0xff;
        k[11] = 0xff;
        std::memcpy(&k[12], &in->sin_addr, 4);
    } else if (addr->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
        std::memcpy(k.data(), &in6->sin6_addr, 16);
        // IPv4-mapped stays whole (it is one IPv4 client); native IPv6 is keyed by its /64.
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            std::fill(k.begin() + 8, k.end(), 0);
    }
    return k;
}

std::size_t failure_limiter::key_hash::operator()(const key& k) const noexcept {
    // FNV-1a: the key is an address the client chose, but the map is bounded and small, so a
    // crafted collision costs at most a slower lookup in one shard's table.
    std::uint64_t h = 1469598103934665603ull;
    for (const std::uint8_t b : k) {
        h ^= b;
        h *= 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
}

failure_limiter::failure_limiter(options o) : _opts(o) {
    _opts.max_failures = std::max(1u, _opts.max_failures);
    _opts.max_entries = std::max<std::size_t>(1, _opts.max_entries);
}

bool failure_limiter::blocked(const key& k, clock::time_point now) const {
    const auto it = _entries.find(k);
    if (it == _entries.end())
        return false;
    const entry& e = it->second;
    return now - e.window_start < _opts.window && e.failures >= _opts.max_failures;
}

bool failure_limiter::record_failure(const key& k, clock::time_point now) {
    auto it = _entries.find(k);
    if (it == _entries.end()) {
        if (_entries.size() >= _opts.max_entries) {
            _entries.erase(_order.front());
            _order.pop_front();
        }
        _order.push_back(k);
        it = _entries.emplace(k, entry{0, now, std::prev(_order.end())}).first;
    } else {
        _order.splice(_order.end(), _order, it->second.order);
    }
    entry& e = it->second;
    // A fixed window from the first failure: once it has passed, counting starts again.
    if (now - e.window_start >= _opts.window) {
        e.failures = 0;
        e.window_start = now;
    }
    ++e.failures;
    return e.failures >= _opts.max_failures;
}

}  // namespace ringmail::auth
