// The DSN parameters of MAIL and RCPT (RFC 3461): RET=, ENVID=, NOTIFY=, ORCPT=, and the
// xtext encoding they travel in (RFC 3461 section 4).
//
// Pure functions, no shard affinity. Values are kept as sent (xtext) so they pass on to a
// next hop unchanged; xtext_decode gives the text a notice shows. Every refusal is an
// smtp::errc (the session answers 501 5.5.4 naming the parameter).
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::smtp {

// RFC 3461 4.4 and 4.2.
inline constexpr std::size_t max_envid_length = 100;
inline constexpr std::size_t max_orcpt_length = 500;

// xtext = *( xchar / "+" 2HEXDIG ), xchar = "!".."~" except "+" and "=" (hex upper case, as
// RFC 3461 section 4 writes it; lower case tolerated). nullopt when malformed, or when the
// decoded text holds anything but printable US-ASCII (RFC 3461 4.2, 4.4: what a notice shows).
std::optional<std::string> xtext_decode(std::string_view xtext);
std::string xtext_encode(std::string_view text);

// NOTIFY=NEVER | 1#(SUCCESS / FAILURE / DELAY), case-insensitive; NEVER alone, no repeats.
std::optional<std::uint8_t> parse_notify(std::string_view value) noexcept;
std::string format_notify(std::uint8_t bits);
// ORCPT=addr-type;xtext: addr-type an atom (RFC 3461 4.2, "rfc822" or "utf-8" in practice),
// the xtext decodable, at most max_orcpt_length. Returns the value as sent.
bool valid_orcpt(std::string_view value) noexcept;
// ENVID=xtext, decodable, at most max_envid_length.
bool valid_envid(std::string_view value) noexcept;

}  // namespace ringmail::smtp
