// A small reader for raw DNS messages (RFC 1035 §4): the TTLs c-ares's parsers do not give.
//
// c-ares parses MX records without their TTL and says nothing about the SOA of a negative
// answer, so the resolver reads those from the raw answer here. Pure functions over untrusted
// bytes, no shard affinity. Every read is bounds-checked; compression pointers must point
// strictly before the run of labels they end (so chains cannot loop) and an expanded name
// stays within 255 octets. A message that breaks any rule fails with errc::bad_response.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/dns/errc.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace ringmail::dns {

inline constexpr std::uint16_t type_a = 1;
inline constexpr std::uint16_t type_soa = 6;
inline constexpr std::uint16_t type_mx = 15;
inline constexpr std::uint16_t type_aaaa = 28;

inline constexpr std::uint8_t rcode_noerror = 0;
inline constexpr std::uint8_t rcode_servfail = 2;
inline constexpr std::uint8_t rcode_nxdomain = 3;

struct message_summary {
    std::uint16_t id = 0;
    std::uint8_t rcode = 0;
    bool truncated = false;
    std::uint16_t answer_count = 0;
    std::optional<std::uint32_t> min_answer_ttl;  // smallest TTL in the answer section
    std::optional<std::uint32_t> soa_ttl;         // TTL of the first SOA in the authority
    std::optional<std::uint32_t> soa_minimum;     // its MINIMUM field

    // How long a negative answer may be cached (RFC 2308 §5: the smaller of the SOA's TTL
    // and its MINIMUM); nullopt without an SOA.
    std::optional<std::uint32_t> negative_ttl() const noexcept;
};

// Reads the header, skips the questions, walks the answer and authority sections (the
// additional section is not needed and not read).
result<message_summary> summarize(std::span<const std::uint8_t> msg);

// Reads the (possibly compressed) name at `at`. Returns the offset just past the name as it
// sits at `at` (a pointer ends it); `dotted`, when given, receives the name in lower-case
// dotted form without the final dot ("" for the root).
result<std::size_t> read_name(std::span<const std::uint8_t> msg, std::size_t at,
                              std::string* dotted = nullptr);

// TTLs with the top bit set are read as 0 (RFC 2181 §8).
constexpr std::uint32_t clamp_ttl(std::uint32_t ttl) noexcept {
    return (ttl & 0x80000000u) ? 0 : ttl;
}

}  // namespace ringmail::dns
