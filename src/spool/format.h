// On-disk formats of the spool: segment records, the serialized envelope, journal entries.
//
// Internal to ringmail::spool. All integers little-endian. Decoders are defensive: every length
// is checked against the bytes available, a failure is errc::corrupt, never a crash.
//
// Segment record:
//   header (48 bytes)  magic "RMSG", u16 version, u16 header size, u64 record length,
//                      u64 queue id, u32 envelope length, u32 added-headers length,
//                      u64 body length, u32 CRC-32C of the body, u32 zero
//   envelope           see encode_envelope
//   added headers      bytes
//   body               transmission form (CRLF, dot-stuffed)
//   trailer (8 bytes)  u32 CRC-32C of header+envelope+added headers (the header carries the
//                      body's CRC, so everything is covered), magic "RMND"
// Journal entry (40 bytes): magic "RMJ1", u8 type, 3 zero, u64 queue id, u64 a, u64 b,
//   u32 CRC-32C of the 36 bytes before it, u32 zero.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"
#include "ringmail/spool/errc.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::spool::format {

inline constexpr std::uint32_t record_magic = 0x47534D52;   // "RMSG"
inline constexpr std::uint32_t trailer_magic = 0x444E4D52;  // "RMND"
inline constexpr std::uint32_t journal_magic = 0x314A4D52;  // "RMJ1"
inline constexpr std::uint16_t version = 1;
inline constexpr std::size_t header_size = 48;
inline constexpr std::size_t trailer_size = 8;
inline constexpr std::size_t journal_entry_size = 40;

enum class journal_type : std::uint8_t {
    rcpt = 1,     // a = rcpt index << 8 | outcome
    attempt = 2,  // a = attempts, b = next attempt (unix seconds, two's complement)
    done = 3,
    seq_floor = 4,  // a = highest segment sequence ever used (queue id 0)
};

inline void put16(char* p, std::uint16_t v) {
    for (int i = 0; i < 2; ++i)
        p[i] = char(v >> (8 * i));
}
inline void put32(char* p, std::uint32_t v) {
    for (int i = 0; i < 4; ++i)
        p[i] = char(v >> (8 * i));
}
inline void put64(char* p, std::uint64_t v) {
    for (int i = 0; i < 8; ++i)
        p[i] = char(v >> (8 * i));
}
inline std::uint16_t get16(const char* p) {
    return std::uint16_t(std::uint8_t(p[0]) | std::uint8_t(p[1]) << 8);
}
inline std::uint32_t get32(const char* p) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i)
        v = v << 8 | std::uint8_t(p[i]);
    return v;
}
inline std::uint64_t get64(const char* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = v << 8 | std::uint8_t(p[i]);
    return v;
}

std::string encode_envelope(const mail::envelope&);
result<mail::envelope> decode_envelope(std::string_view);

struct record_header {
    std::uint64_t record_length = 0;
    std::uint64_t id = 0;
    std::uint32_t envelope_length = 0;
    std::uint32_t added_headers_length = 0;
    std::uint64_t body_length = 0;
    std::uint32_t body_crc = 0;
    std::uint32_t pad_length = 0;
    // Offset of the body from the record's start.
    std::uint64_t body_offset() const {
        return header_size + std::uint64_t(envelope_length) + added_headers_length + pad_length;
    }
};

void encode_header(char* out, const record_header&);  // header_size bytes; computes record_length

// Record at the start of `bytes` (which runs to the end of the valid file region). Checks
// magics, lengths and both CRCs. On success fills `h`; the envelope and added headers follow
// the header back to back, then the pad, then the body.
result<record_header> check_record(std::string_view bytes);

struct journal_entry {
    journal_type type;
    std::uint64_t id = 0;
    std::uint64_t a = 0;
    std::uint64_t b = 0;
};
void encode_journal(char* out, const journal_entry&);  // journal_entry_size bytes
result<journal_entry> decode_journal(std::string_view bytes);

}  // namespace ringmail::spool::format
