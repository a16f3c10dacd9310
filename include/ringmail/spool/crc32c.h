// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of spool records and
// journal entries.
//
// Pure functions, no shard affinity, cannot fail. Chainable like zlib's crc32:
// crc32c(b, nb, crc32c(a, na)) == crc32c(a||b). `crc32c` uses the SSE4.2 instruction when the
// CPU has it (on long inputs three streams at once, joined by shift tables: the instruction's
// latency, not its rate, bounds one stream) and slicing-by-8 tables otherwise; both give the
// same values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ringmail::spool {

std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0) noexcept;
std::uint32_t crc32c_portable(const void* data, std::size_t size, std::uint32_t crc = 0) noexcept;

inline std::uint32_t crc32c(std::string_view s, std::uint32_t crc = 0) noexcept {
    return crc32c(s.data(), s.size(), crc);
}

}  // namespace ringmail::spool
