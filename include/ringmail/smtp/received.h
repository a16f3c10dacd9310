// The Received: trace header (RFC 5321 4.4, RFC 5322 3.6.7) the MTA stores beside a message.
//
// Built once per accepted message on the receiving shard; pure formatting, cannot fail.
// Peer-supplied text (the HELO name) is sanitised so it cannot break the header.
#pragma once

#include "ringmail/smtp/envelope.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::smtp {

// "Received: from HELO ([ip])\r\n\tby HOST (ringmail) with PROTO id QID (shard N)\r\n
//  \t[for <rcpt>]; Mon, 23 Nov 2026 10:00:00 +0000\r\n" — folded, ending in CRLF.
// `for` appears only with exactly one recipient (more would disclose the others).
std::string format_received(const envelope& env, std::string_view hostname,
                            std::string_view queue_id, unsigned shard, std::int64_t now_unix);


}  // namespace ringmail::smtp
