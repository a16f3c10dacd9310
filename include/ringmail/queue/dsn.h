// RFC 3464 delivery status notifications: the bounce sent to the envelope sender when some
// recipients of a message failed for good (5xx) or expired (max_lifetime), and the notices a
// sender asks for with RFC 3461 NOTIFY: delayed (still being retried) and relayed (handed to
// a next hop that does not offer DSN). One notice holds recipients of one action.
//
// A pure function of its request; no shard affinity. The result is a complete message in
// transmission form (CRLF lines, dot-stuffed, without the final ".\r\n"), ready to be spooled and
// sent with envelope sender "" (null) to the original sender. Never build one for a null sender:
// the delivery queue never asks for it, and build_dsn aborts if called so.
#pragma once

#include "ringmail/queue/bounce_class.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ringmail::queue {

// RFC 3464 section 2.3.3 Action values ringmail reports.
enum class dsn_action : std::uint8_t { failed, delayed, relayed };

struct failed_recipient {
    std::string address;     // the original forward-path, without <>
    std::string status;      // RFC 3463 "5.x.y" (4.x.y delayed, 2.x.y relayed)
    std::string remote_mta;  // host that answered, "" when unknown (no connection)
    std::string diagnostic;  // the SMTP reply ("550 5.1.1 no such user"), "" when none
    bool expired = false;    // gave up after max_lifetime rather than on a 5xx
    dsn_action action = dsn_action::failed;
    // ORCPT decoded from xtext ("rfc822;user@example.com"), "" when none: Original-Recipient.
    std::string original_recipient;
    // The bounce category: an X-Ringmail-Category field (failed and delayed notices).
    std::optional<bounce_class> category;
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
    // RET=FULL: the whole message comes back (message/rfc822) rather than its headers.
    bool return_full = false;
    // ENVID decoded from xtext, "" when none: Original-Envelope-Id.
    std::string_view original_envelope_id;
    // Names of the categories (bounce_classifier::names()); empty: the predefined names only.
    std::span<const std::string> category_names;
};

std::string build_dsn(const dsn_request& request);

}  // namespace ringmail::queue
