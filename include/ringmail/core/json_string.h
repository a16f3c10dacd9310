// JSON string literals for what ringmail writes as JSON (the delivery log, the admin API): one
// escaper, so every JSON output is valid whatever bytes a peer sent. Control characters become
// \uXXXX, well-formed UTF-8 (RFC 3629: no overlongs, no surrogates) passes through, and any
// other byte becomes U+FFFD. Pure, any thread, cannot fail.
#pragma once

#include <string>
#include <string_view>

namespace ringmail::core {

// Appends `s` as a JSON string literal, quotes included.
void append_json_string(std::string& out, std::string_view s);

// The code point of a JSON \uXXXX escape (0..0xFFFF) as UTF-8, for the readers of JSON; a lone
// surrogate half (what we read never needs a pair) becomes U+FFFD.
void append_json_code_point(std::string& out, unsigned cp);

}  // namespace ringmail::core
