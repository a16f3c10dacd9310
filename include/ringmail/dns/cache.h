// The route cache: answers (routes and errors) kept until they expire.
//
// One per resolver, so one per shard; not thread-safe. Bounded: when full, the entry that
// expires soonest is dropped to make room (expired ones first, by construction). Time is
// passed in by the caller (the reactor's now(), or a test clock). Nothing here fails.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/dns/route.h"

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ringmail::dns {

class route_cache {
  public:
    explicit route_cache(std::size_t max_entries) : _max(max_entries) {}
    route_cache(const route_cache&) = delete;
    route_cache& operator=(const route_cache&) = delete;

    // The live entry for `domain`, or nullptr; an expired entry is dropped here. The pointer
    // stays valid until the next insert or find.
    const result<route>* find(const std::string& domain, clock::time_point now);

    // Stores `value` until `expires` (replacing an older entry for the domain). Nothing is
    // stored when `expires <= now` or the cache holds no entries at all (max_entries 0).
    void insert(const std::string& domain, result<route> value, clock::time_point expires,
                clock::time_point now);

    void erase(const std::string& domain);
    void clear() noexcept;
    std::size_t size() const noexcept { return _entries.size(); }
    std::size_t max_entries() const noexcept { return _max; }

  private:
    using expiry_index = std::multimap<clock::time_point, std::string>;
    struct entry {
        result<route> value;
        expiry_index::iterator expiry;
    };
    std::size_t _max;
    std::unordered_map<std::string, entry> _entries;
    expiry_index _by_expiry;
};

}  // namespace ringmail::dns
