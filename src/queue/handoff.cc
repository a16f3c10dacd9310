#include "ringmail/queue/handoff.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/panic.h"

#include <cstdio>
#include <cstdlib>

namespace ringmail::queue {

std::uint64_t fnv1a64_nocase(std::string_view s) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) {
        h ^= static_cast<unsigned char>(core::to_lower_ascii(c));
        h *= 0x100000001b3ull;
    }
    return h;
}

unsigned owner_shard(std::string_view domain, unsigned shards) noexcept {
    while (!domain.empty() && domain.back() == '.')
        domain.remove_suffix(1);
    if (shards <= 1)
        return 0;
    return static_cast<unsigned>(fnv1a64_nocase(domain) % shards);
}

void destination_slots::release() noexcept {
    std::uint32_t before = _in_use.fetch_sub(1, std::memory_order_acq_rel);
    if (before == 0) {
        core::invariant_broken("destination slot released twice");
    }
}

}  // namespace ringmail::queue
