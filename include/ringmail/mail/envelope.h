// The envelope of one message: what MAIL/RCPT said, plus the reception facts that the
// Received header and the delivery log need.
//
// Plain data of the mail part (types that protocol and storage both use, so that the spool
// depends on no protocol code): the server session fills it, the spool stores it with the
// body, delivery reads it back. Owned by one shard at a time; copied, never shared, when it
// crosses shards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::mail {

// MAIL FROM BODY= (RFC 6152, RFC 3030).
enum class body_type : std::uint8_t {
    unspecified = 0,
    seven_bit = 1,
    eight_bit_mime = 2,
    binary_mime = 3
};

// MAIL RET= (RFC 3461 4.3): how much of the message a failure notice returns.
enum class dsn_ret : std::uint8_t { unspecified = 0, full = 1, headers = 2 };

// RCPT NOTIFY= (RFC 3461 4.1) as bits; 0 = not given, which means FAILURE and DELAY.
namespace notify {
inline constexpr std::uint8_t never = 1;
inline constexpr std::uint8_t success = 2;
inline constexpr std::uint8_t failure = 4;
inline constexpr std::uint8_t delay = 8;
}  // namespace notify

// The DSN parameters of one recipient.
struct rcpt_dsn {
    std::uint8_t notify = 0;
    std::string orcpt;  // ORCPT= as sent ("rfc822;user+2Bx@example.com", xtext), "" = none

    friend bool operator==(const rcpt_dsn&, const rcpt_dsn&) = default;
};

// Whether a notice of this kind goes out for a recipient with these parameters.
inline bool wants_notice(const rcpt_dsn& d, std::uint8_t kind) noexcept {
    if (d.notify == 0)
        return kind == notify::failure || kind == notify::delay;
    return (d.notify & notify::never) == 0 && (d.notify & kind) != 0;
}

struct envelope {
    std::string mail_from;             // reverse-path without <>; empty for the null sender
    std::vector<std::string> rcpt_to;  // forward-paths without <>, in RCPT order
    body_type body = body_type::unspecified;
    bool smtputf8 = false;            // MAIL FROM ... SMTPUTF8
    std::uint64_t declared_size = 0;  // MAIL FROM ... SIZE=, 0 when absent
    // DSN (RFC 3461). rcpt_params is empty when no recipient had a DSN parameter, else one entry
    // per rcpt_to (dsn_of() reads it either way).
    dsn_ret ret = dsn_ret::unspecified;
    std::string envid;  // ENVID= as sent (xtext), "" = none
    std::vector<rcpt_dsn> rcpt_params;

    // Reception facts.
    std::string helo_name;          // argument of EHLO/HELO
    std::string client_address;     // textual IP of the client
    std::string protocol;           // RFC 3848 "with" value: SMTP, ESMTP, ESMTPSA, UTF8SMTPS, ...
    std::string auth_user;          // SASL identity after a successful AUTH; never in Received
    std::string tls_protocol;       // "TLSv1.3" when received inside TLS, else empty
    std::string tls_cipher;         // "TLS_AES_256_GCM_SHA384"
    std::int64_t arrival_time = 0;  // unix seconds

    const mail::rcpt_dsn& dsn_of(std::size_t i) const noexcept {
        static const mail::rcpt_dsn none;
        return i < rcpt_params.size() ? rcpt_params[i] : none;
    }
    bool has_dsn() const noexcept {
        return ret != dsn_ret::unspecified || !envid.empty() || !rcpt_params.empty();
    }
};

}  // namespace ringmail::mail
