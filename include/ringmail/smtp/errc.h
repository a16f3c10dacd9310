// Error codes of ringmail::smtp: why an address, a parameter or a transaction was refused.
//
// Plain values, no shard affinity. The server session turns each one into a precise SMTP reply
// (see server_session.cc); nothing here aborts.
#pragma once

#include <string>
#include <system_error>

namespace ringmail::smtp {

enum class errc {
    // Paths (RFC 5321 4.1.2).
    path_syntax = 1,         // no <...>, stray characters, bad source route
    null_path_not_allowed,   // <> where a forward-path is required
    local_part_syntax,       // neither a dot-string nor a quoted-string
    local_part_too_long,     // > 64 octets (RFC 5321 4.5.3.1.1)
    domain_syntax,           // not LDH labels
    domain_too_long,         // > 255 octets (RFC 5321 4.5.3.1.2)
    address_literal_syntax,  // [...] that is neither IPv4 nor IPv6
    path_too_long,           // > 256 octets (RFC 5321 4.5.3.1.3)
    invalid_utf8,            // malformed UTF-8: refused whatever was negotiated
    utf8_needs_smtputf8,     // non-ASCII address without MAIL ... SMTPUTF8 (RFC 6531)
    // ESMTP parameters (RFC 5321 4.1.2, 1870, 6152, 6531, 3030).
    parameter_syntax,        // not keyword[=value]
    unknown_parameter,       // keyword we do not implement
    duplicate_parameter,     // the same keyword twice
    size_syntax,             // SIZE= not a decimal number that fits
    body_syntax,             // BODY= not 7BIT / 8BITMIME / BINARYMIME
    binarymime_unsupported,  // BODY=BINARYMIME: we do not advertise it
    smtputf8_syntax,         // SMTPUTF8 with a value
    // DSN parameters (RFC 3461).
    ret_syntax,     // RET= not FULL / HDRS
    envid_syntax,   // ENVID= not xtext of printable ASCII, or too long
    notify_syntax,  // NOTIFY= not NEVER or a list of SUCCESS / FAILURE / DELAY
    orcpt_syntax,   // ORCPT= not addr-type;xtext, or too long
    // Storage, reported by the daemon's transaction_sink.
    insufficient_storage,  // spool full: 452 4.3.1
};

const std::error_category& smtp_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), smtp_category()};
}

}  // namespace ringmail::smtp

template <>
struct std::is_error_code_enum<ringmail::smtp::errc> : std::true_type {};
