// Hexadecimal digits both ways, for the text formats that carry bytes as hex (CRAM-MD5 answers
// and stored key states, RFC 3461 xtext, log escapes). Pure, constexpr, any thread.
#pragma once

namespace ringmail::core {

inline constexpr char hex_lower[] = "0123456789abcdef";
inline constexpr char hex_upper[] = "0123456789ABCDEF";

// 0..15 for a hex digit of either case, -1 for anything else.
constexpr int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

}  // namespace ringmail::core
