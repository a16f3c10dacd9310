// The envelope of one message: what MAIL/RCPT said, plus the reception facts that the
// Received header and the delivery log need.
//
// Plain data of the mail part (types that protocol and storage both use, so that the spool
// depends on no protocol code): the server session fills it, the spool stores it with the
// body, delivery reads it back. Owned by one shard at a time; copied, never shared, when it
// crosses shards.
#pragma once

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

struct envelope {
    std::string mail_from;             // reverse-path without <>; empty for the null sender
    std::vector<std::string> rcpt_to;  // forward-paths without <>, in RCPT order
    body_type body = body_type::unspecified;
    bool smtputf8 = false;            // MAIL FROM ... SMTPUTF8
    std::uint64_t declared_size = 0;  // MAIL FROM ... SIZE=, 0 when absent

    // Reception facts.
    std::string helo_name;          // argument of EHLO/HELO
    std::string client_address;     // textual IP of the client
    std::string protocol;           // RFC 3848 "with" value: SMTP, ESMTP, ESMTPSA, UTF8SMTPS, ...
    std::string auth_user;          // SASL identity after a successful AUTH; never in Received
    std::string tls_protocol;       // "TLSv1.3" when received inside TLS, else empty
    std::string tls_cipher;         // "TLS_AES_256_GCM_SHA384"
    std::int64_t arrival_time = 0;  // unix seconds
};

}  // namespace ringmail::mail
