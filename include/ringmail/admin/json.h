// The little JSON the admin API needs: string escaping for what it writes, and a reader for
// the request bodies it accepts (one flat object of strings, numbers, booleans and nulls;
// anything nested or malformed is refused, and the handler answers 400).
//
// Pure functions, any thread. Bounded by the body limit of the HTTP reader (16 KiB).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::admin {

// `s` as a JSON string literal, quotes included (core::append_json_string: control characters
// as \u00XX, UTF-8 kept, any other byte U+FFFD).
std::string json_string(std::string_view s);

// A flat object's members: strings unescaped, other scalars as their text ("12", "true",
// "null"). nullopt when the text is not one flat object, has a duplicate member, or has more
// than 32 members.
std::optional<std::map<std::string, std::string>> parse_flat_object(std::string_view text);

}  // namespace ringmail::admin
