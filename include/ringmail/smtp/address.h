// RFC 5321 paths and the ESMTP parameters of MAIL FROM / RCPT TO.
//
// Parses `<local@domain>`, the null reverse-path `<>`, source routes (accepted, dropped),
// quoted and dot-atom local parts, LDH domains and address literals, with the RFC 5321
// length limits and RFC 6531 UTF-8 (valid UTF-8 only; non-ASCII only with SMTPUTF8).
// Pure functions, no shard affinity. Every refusal is a distinct smtp::errc so the session
// can say exactly what is wrong.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"
#include "ringmail/smtp/errc.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::smtp {

inline constexpr std::size_t max_local_part_length = 64;
inline constexpr std::size_t max_domain_length = 255;
inline constexpr std::size_t max_path_length = 256;  // "<" ... ">" included

enum class path_kind : std::uint8_t { reverse, forward };

struct path {
    std::string address;      // "local@domain" as written, source route dropped; empty for <>
    bool utf8 = false;        // contains non-ASCII octets (needs SMTPUTF8)
    bool postmaster = false;  // forward-path <Postmaster> without a domain (RFC 5321 4.5.1)
};

// Parses one path at the start of `text` ("<...>"). On success `rest` (if given) receives
// what follows the closing '>'. Valid UTF-8 is accepted here and flagged in path::utf8;
// whether it is allowed is the caller's decision (parse_mail_from / parse_rcpt_to apply it).
result<path> parse_path(std::string_view text, path_kind kind, std::string_view* rest = nullptr);

struct mail_parameters {
    bool has_size = false;
    std::uint64_t size = 0;  // SIZE= (RFC 1870)
    mail::body_type body = mail::body_type::unspecified;
    bool smtputf8 = false;
    mail::dsn_ret ret = mail::dsn_ret::unspecified;  // RET= (RFC 3461)
    std::string envid;                               // ENVID=, xtext as sent
};

struct mail_from_command {
    path reverse_path;
    mail_parameters params;
};

// `argument`: the text after "MAIL FROM:" (leading spaces tolerated).
result<mail_from_command> parse_mail_from(std::string_view argument);

struct rcpt_to_command {
    path forward_path;
    mail::rcpt_dsn dsn;  // NOTIFY=, ORCPT= (RFC 3461)
    bool has_dsn = false;
};

// `argument`: the text after "RCPT TO:". `smtputf8`: the transaction's MAIL had SMTPUTF8.
// NOTIFY= and ORCPT= are the RCPT parameters we implement.
result<rcpt_to_command> parse_rcpt_to(std::string_view argument, bool smtputf8);

// Space-separated ESMTP parameters of MAIL (RFC 5321 4.1.2 Mail-parameters).
result<mail_parameters> parse_mail_parameters(std::string_view text);

// The domain of a parsed address, ASCII letters lower-cased (for relay policy);
// empty for the null path and for <Postmaster>.
std::string domain_of(std::string_view address);

// RFC 3629 well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view text) noexcept;

}  // namespace ringmail::smtp
