#include "ringmail/auth/failure_limiter.h"

#include "ringmail/auth/secret.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <netinet/in.h>
#include <random>

namespace ringmail::auth {

namespace {

// One word: tag (24 bits) | window start in seconds mod 2^26 | count (14 bits). 0 = empty.
constexpr unsigned count_bits = 14;
constexpr unsigned time_bits = 26;
constexpr std::uint64_t count_mask = (std::uint64_t{1} << count_bits) - 1;
constexpr std::uint64_t time_mask = (std::uint64_t{1} << time_bits) - 1;
constexpr unsigned tag_shift = count_bits + time_bits;
constexpr std::uint64_t tag_mask = (std::uint64_t{1} << (64 - tag_shift)) - 1;

static_assert(failure_limiter::max_count == count_mask);
static_assert(failure_limiter::max_window.count() < (std::int64_t{1} << time_bits));

constexpr std::uint32_t tag_of(std::uint64_t w) noexcept {
    return static_cast<std::uint32_t>(w >> tag_shift);
}
constexpr std::uint32_t start_of(std::uint64_t w) noexcept {
    return static_cast<std::uint32_t>((w >> count_bits) & time_mask);
}
constexpr unsigned count_of(std::uint64_t w) noexcept {
    return static_cast<unsigned>(w & count_mask);
}
constexpr std::uint64_t make_word(std::uint32_t tag, std::uint32_t start, unsigned count) noexcept {
    return (std::uint64_t{tag} << tag_shift) | ((std::uint64_t{start} & time_mask) << count_bits) |
           (std::uint64_t{count} & count_mask);
}
constexpr std::uint32_t age(std::uint32_t now_s, std::uint32_t start) noexcept {
    return static_cast<std::uint32_t>((now_s - start) & time_mask);
}

// splitmix64's finaliser: every input bit reaches every output bit.
constexpr std::uint64_t mix(std::uint64_t x) noexcept {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

std::uint64_t random_seed() {
    std::uint64_t s = 0;
    if (!random_bytes(&s, sizeof s) || s == 0) {
        std::random_device rd;
        s = (std::uint64_t{rd()} << 32) ^ rd() ^ 0x9e3779b97f4a7c15ull;
    }
    return s;
}

}  // namespace

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

failure_limiter::failure_limiter(options o) : _opts(o) {
    _opts.max_failures = std::clamp(_opts.max_failures, 1u, max_count);
    _opts.window = std::clamp(_opts.window, std::chrono::seconds(1), max_window);
    _slots = std::bit_ceil(std::max(_opts.max_entries, bucket_ways));
    _opts.max_entries = _slots;
    _bucket_mask = _slots / bucket_ways - 1;
    if (_opts.seed == 0)
        _opts.seed = random_seed();
    _words = std::make_unique<std::atomic<std::uint64_t>[]>(_slots);
    for (std::size_t i = 0; i < _slots; ++i)
        _words[i].store(0, std::memory_order_relaxed);
}

failure_limiter::located failure_limiter::locate(const key& k) const noexcept {
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    std::memcpy(&lo, k.data(), 8);
    std::memcpy(&hi, k.data() + 8, 8);
    const std::uint64_t h = mix(mix(lo ^ _opts.seed) ^ hi ^ std::rotl(_opts.seed, 32));
    // The bucket from the low bits, the tag from the high ones: independent of each other.
    auto tag = static_cast<std::uint32_t>((h >> tag_shift) & tag_mask);
    if (tag == 0)
        tag = 1;
    return {static_cast<std::size_t>(h & _bucket_mask) * bucket_ways, tag};
}

std::uint32_t failure_limiter::now_seconds(clock::time_point now) const noexcept {
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    return static_cast<std::uint32_t>(static_cast<std::uint64_t>(s) & time_mask);
}

bool failure_limiter::live(std::uint64_t w, std::uint32_t now_s) const noexcept {
    return w != 0 && age(now_s, start_of(w)) < static_cast<std::uint32_t>(_opts.window.count());
}

unsigned failure_limiter::failures(const key& k, clock::time_point now) const noexcept {
    const located at = locate(k);
    const std::uint32_t now_s = now_seconds(now);
    unsigned sum = 0;
    for (std::size_t i = 0; i < bucket_ways; ++i) {
        const std::uint64_t w = _words[at.bucket + i].load(std::memory_order_acquire);
        if (tag_of(w) == at.tag && live(w, now_s))
            sum += count_of(w);
    }
    return sum;
}

bool failure_limiter::blocked(const key& k, clock::time_point now) const noexcept {
    return failures(k, now) >= _opts.max_failures;
}

bool failure_limiter::record_failure(const key& k, clock::time_point now) noexcept {
    const located at = locate(k);
    const std::uint32_t now_s = now_seconds(now);
    for (;;) {
        std::uint64_t seen[bucket_ways];
        std::size_t mine = bucket_ways;    // live word with our tag
        std::size_t spare = bucket_ways;   // empty or expired word (ours first)
        std::size_t victim = bucket_ways;  // fewest failures, oldest among equals
        for (std::size_t i = 0; i < bucket_ways; ++i) {
            seen[i] = _words[at.bucket + i].load(std::memory_order_acquire);
            const bool is_live = live(seen[i], now_s);
            const bool ours = seen[i] != 0 && tag_of(seen[i]) == at.tag;
            if (is_live && ours) {
                if (mine == bucket_ways)
                    mine = i;
            } else if (!is_live) {
                if (spare == bucket_ways || (ours && tag_of(seen[spare]) != at.tag))
                    spare = i;
            } else if (victim == bucket_ways || count_of(seen[i]) < count_of(seen[victim]) ||
                       (count_of(seen[i]) == count_of(seen[victim]) &&
                        age(now_s, start_of(seen[i])) > age(now_s, start_of(seen[victim])))) {
                victim = i;
            }
        }
        std::size_t slot;
        std::uint64_t next;
        if (mine != bucket_ways) {
            slot = mine;
            const unsigned c = count_of(seen[slot]);
            if (c >= max_count)
                break;  // saturated: already blocked, nothing to write
            next = seen[slot] + 1;
        } else {
            // A fixed window from the first failure: once it has passed, counting starts again.
            slot = spare != bucket_ways ? spare : victim;
            next = make_word(at.tag, now_s, 1);
        }
        std::uint64_t expected = seen[slot];
        if (_words[at.bucket + slot].compare_exchange_weak(
                expected, next, std::memory_order_acq_rel, std::memory_order_relaxed))
            break;
        // Another shard changed this word since it was read: look at the bucket again.
    }
    return blocked(k, now);
}

std::size_t failure_limiter::size(clock::time_point now) const noexcept {
    const std::uint32_t now_s = now_seconds(now);
    std::size_t n = 0;
    for (std::size_t i = 0; i < _slots; ++i) {
        if (live(_words[i].load(std::memory_order_relaxed), now_s))
            ++n;
    }
    return n;
}

}  // namespace ringmail::auth
