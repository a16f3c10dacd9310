// Base64 (RFC 4648, standard alphabet, padded) for SASL exchanges and test tooling.
//
// Pure functions, no state: usable from any shard. Decoding is strict, because its input comes
// from the network: characters outside the alphabet, whitespace, missing or misplaced padding
// and non-zero trailing bits all make it fail (nullopt) instead of being skipped.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ringmail::core {

std::string base64_encode(std::string_view bytes);

// nullopt when `text` is not canonical padded base64. The empty string decodes to "".
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace ringmail::core
