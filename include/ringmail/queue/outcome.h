// What an attempt says about recipients, in the vocabulary the scheduler, the origin ledger
// and the delivery log share: a recipient's state, the reply that decided, the retry record a
// message journals, and the request for a DSN.
//
// Plain values; no shard affinity.
#pragma once

#include "ringmail/queue/bounce_class.h"
#include "ringmail/queue/dsn.h"

#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::queue {

enum class rcpt_state : std::uint8_t { pending, delivered, bounced, expired };

// What a server (or the client session, for local and connection failures) answered.
struct attempt_reply {
    int code = 0;          // 2xx delivered, 5xx bounced, anything else retried
    std::string enhanced;  // "x.y.z" or ""
    std::string text;
    std::string remote_mta;  // host name of the server, "" when no connection was made
    // Why it failed (set by the shard that made the attempt; meaningless when delivered).
    bounce_class category = bounce_class::uncategorized;

    std::string to_string() const;  // "550 5.1.1 text", on one line
};

struct retry_record {
    std::uint32_t attempts = 0;
    std::int64_t next_attempt = 0;  // unix seconds
};

struct bounce_request {
    std::uint64_t id = 0;  // the failed message (its bytes become text/rfc822-headers)
    std::string sender;    // the DSN's recipient
    std::int64_t arrival = 0;
    std::vector<failed_recipient> rcpts;
};

}  // namespace ringmail::queue
