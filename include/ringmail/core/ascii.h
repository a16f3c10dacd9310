// ASCII helpers for protocol keywords (SMTP verbs, ESMTP parameters, domain comparisons).
//
// Pure functions, no shard affinity, no locale: protocol text is compared as ASCII whatever the
// process locale says, and non-ASCII bytes only ever equal themselves.
#pragma once

#include <cstddef>
#include <string_view>

namespace ringmail::core {

constexpr char to_lower_ascii(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : c;
}

constexpr bool equals_nocase(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (to_lower_ascii(a[i]) != to_lower_ascii(b[i])) return false;
    }
    return true;
}

}  // namespace ringmail::core
