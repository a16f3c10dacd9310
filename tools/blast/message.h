// The message ringmail-blast sends, and the addresses it sends it to.
//
// Built once at start-up on the main thread and then only read by every shard (each message
// is the same bytes; the envelope differs). Pure functions: they cannot fail, except that a
// generated message cannot be smaller than its headers (the size is raised to that minimum).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::blast {

// A generated message of exactly max(size, minimum) octets in transmission form (CRLF lines,
// no line starting with '.', without the final ".\r\n"): a few headers, a blank line, then
// body lines of 76 letters (the last one shorter).
struct generated_headers {
    std::string_view from;        // From: address
    std::string_view date;        // Date: value (RFC 5322)
    std::string_view message_id;  // Message-ID: value, with the angle brackets
};
std::string generate_message(std::size_t size, const generated_headers& h);

// A message file as sent: every line end (CRLF, bare LF or bare CR) becomes CRLF, a line
// starting with '.' gets another '.', and a last line without a line end gets one.
std::string to_transmission_form(std::string_view raw);

// Address templates: every "{n}" in `tmpl` becomes the decimal value of `n`.
std::string expand_address(std::string_view tmpl, std::uint64_t n);
void expand_address(std::string& out, std::string_view tmpl, std::uint64_t n);

// The {n} of recipient `slot` of message `index` (recipients R per message): the recipient's
// running number index * R + slot, taken modulo `spread` when spread > 0.
constexpr std::uint64_t recipient_number(std::uint64_t index, unsigned recipients, unsigned slot,
                                         std::uint64_t spread) noexcept {
    const std::uint64_t k = index * recipients + slot;
    return spread ? k % spread : k;
}
// The {n} of the sender of message `index`: the message index itself (never taken modulo,
// so each message can be traced back to its number at the receiving end).
constexpr std::uint64_t sender_number(std::uint64_t index) noexcept {
    return index;
}

}  // namespace ringmail::blast
