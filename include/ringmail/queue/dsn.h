// RFC 3464 delivery status notifications: the bounce sent to the envelope sender when some
// recipients of a message failed for good (5xx) or expired (max_lifetime).
//
// A pure function of its request; no shard affinity. The result is a complete message in
// transmission form (CRLF lines, dot-stuffed, without the final ".\r\n"), ready to be spooled and
// sent with envelope sender "" (null) to the original sender. Never build one for a null sender:
// the delivery queue never asks for it, and build_dsn aborts if called so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace ringmail::queue {

struct failed_recipient {
    std::string address;     // the original forward-path, without <>
    std::string status;      // RFC 3463 "5.x.y"
    std::string remote_mta;  // host that answered, "" when unknown (no connection)
    std::string diagnostic;  // the SMTP reply ("550 5.1.1 no such user"), "" when none
    bool expired = false;    // gave up after max_lifetime rather than on a 5xx
};

struct dsn_request {
    std::string_view reporting_mta;    // our hostname: From: MAILER-DAEMON@, Reporting-MTA
    std::string_view original_sender;  // envelope sender of the failed message (To:)
    std::int64_t arrival_unix = 0;     // when the failed message arrived
    std::int64_t now_unix = 0;         // Date:
    std::span<const failed_recipient> rcpts;
    // The failed message in transmission form: the headers ringmail added, then the stored
    // message. Only the header block (up to the first empty line) is returned to the sender.
    std::string_view original_added_headers;
    std::string_view original_message;
    std::string_view message_id_token;  // unique per DSN: Message-ID: <token@reporting_mta>
    std::size_t max_header_bytes = 64 * 1024;
};

std::string build_dsn(const dsn_request& request);

}  // namespace ringmail::queue
