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

}  // namespace ringmail::core
