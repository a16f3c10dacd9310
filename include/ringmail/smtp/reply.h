// SMTP reply formatting (RFC 5321 4.2, enhanced status codes RFC 2034/3463).
//
// Appends to a caller-owned buffer so a session's replies for one input batch land in one
// buffer. Pure functions, no shard affinity; they cannot fail (the caller bounds the text).
#pragma once

#include <string>
#include <string_view>

namespace ringmail::smtp {

// "ccc e.e.e text\r\n", or "ccc text\r\n" when `enhanced` is empty (greeting, EHLO, 354).
void append_reply(std::string& out, unsigned code, std::string_view enhanced,
                  std::string_view text);

// One line of a multi-line reply: "ccc-text\r\n" while `more`, "ccc text\r\n" for the last.
void append_reply_line(std::string& out, unsigned code, bool more, std::string_view text);

// 4xx and 5xx replies are errors (they count towards server_config::max_errors).
constexpr bool is_error_reply(unsigned code) noexcept {
    return code >= 400;
}

}  // namespace ringmail::smtp
