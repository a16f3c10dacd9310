#include "ringmail/smtp/dsn_params.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/hex.h"

#include <utility>

namespace ringmail::smtp {

std::optional<std::string> xtext_decode(std::string_view x) {
    std::string out;
    out.reserve(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        const auto c = static_cast<unsigned char>(x[i]);
        if (c == '+') {
            if (i + 2 >= x.size())
                return std::nullopt;
            const int hi = core::hex_value(x[i + 1]);
            const int lo = core::hex_value(x[i + 2]);
            if (hi < 0 || lo < 0)
                return std::nullopt;
            out.push_back(static_cast<char>(hi << 4 | lo));
            i += 2;
            continue;
        }
        if (c < 33 || c > 126 || c == '=')
            return std::nullopt;
        out.push_back(static_cast<char>(c));
    }
    for (const char c : out) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 32 || u > 126)
            return std::nullopt;
    }
    return out;
}

std::string xtext_encode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 33 || u > 126 || c == '+' || c == '=') {
            out.push_back('+');
            out.push_back(core::hex_upper[u >> 4]);
            out.push_back(core::hex_upper[u & 15]);
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::optional<std::uint8_t> parse_notify(std::string_view value) noexcept {
    if (value.empty())
        return std::nullopt;
    std::uint8_t bits = 0;
    while (true) {
        const std::size_t comma = value.find(',');
        const std::string_view word = value.substr(0, comma);
        std::uint8_t bit = 0;
        if (core::equals_nocase(word, "NEVER"))
            bit = mail::notify::never;
        else if (core::equals_nocase(word, "SUCCESS"))
            bit = mail::notify::success;
        else if (core::equals_nocase(word, "FAILURE"))
            bit = mail::notify::failure;
        else if (core::equals_nocase(word, "DELAY"))
            bit = mail::notify::delay;
        else
            return std::nullopt;
        if ((bits & bit) != 0)
            return std::nullopt;
        bits |= bit;
        if (comma == std::string_view::npos)
            break;
        value.remove_prefix(comma + 1);
    }
    if ((bits & mail::notify::never) != 0 && bits != mail::notify::never)
        return std::nullopt;  // NEVER must stand alone
    return bits;
}

std::string format_notify(std::uint8_t bits) {
    if (bits & mail::notify::never)
        return "NEVER";
    std::string out;
    for (auto [bit, name] :
         {std::pair{mail::notify::success, "SUCCESS"}, std::pair{mail::notify::failure, "FAILURE"},
          std::pair{mail::notify::delay, "DELAY"}}) {
        if (bits & bit) {
            if (!out.empty())
                out.push_back(',');
            out.append(name);
        }
    }
    return out;
}

bool valid_orcpt(std::string_view value) noexcept {
    if (value.empty() || value.size() > max_orcpt_length)
        return false;
    const std::size_t semi = value.find(';');
    if (semi == 0 || semi == std::string_view::npos || semi + 1 == value.size())
        return false;
    for (const char c : value.substr(0, semi)) {
        const auto u = static_cast<unsigned char>(c);
        const bool atext = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
                           (u >= '0' && u <= '9') || c == '-' || c == '_' || c == '.';
        if (!atext)
            return false;
    }
    return xtext_decode(value.substr(semi + 1)).has_value();
}

bool valid_envid(std::string_view value) noexcept {
    return !value.empty() && value.size() <= max_envid_length && xtext_decode(value).has_value();
}

}  // namespace ringmail::smtp
