// The Received: trace header (RFC 5321 4.4, RFC 5322 3.6.7) the MTA stores beside a message.
//
// Built once per accepted message on the receiving shard; pure formatting, cannot fail.
// Peer-supplied text (the HELO name) is sanitised so it cannot break the header.
#pragma once

#include "ringmail/mail/envelope.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::smtp {

// "Received: from HELO ([ip])\r\n[\t(using TLSv1.3 with cipher C)\r\n]
//  \tby HOST (ringmail) with PROTO id QID (shard N)\r\n
//  \t[for <rcpt>]; Mon, 23 Nov 2026 10:00:00 +0000\r\n" — folded, ending in CRLF.
// PROTO is env.protocol (RFC 3848: ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP*; SMTP when
// empty). The TLS comment appears when env.tls_protocol is set.
// `for` appears only with exactly one recipient (more would disclose the others).
// env.auth_user is never written: the header travels with the message to every later hop and
// would disclose the account (Postfix's default, smtpd_sasl_authenticated_header = no).
std::string format_received(const mail::envelope& env, std::string_view hostname,
                            std::string_view queue_id, unsigned shard, std::int64_t now_unix);

}  // namespace ringmail::smtp
