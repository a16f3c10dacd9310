// Dates as mail headers write them (Date:, Received:, Arrival-Date: of a DSN).
//
// Pure function, any thread (gmtime_r, no shared state).
#pragma once

#include <cstdint>
#include <string>

namespace ringmail::core {

// RFC 5322 3.3 date-time, always UTC: "Mon, 23 Nov 2026 10:00:00 +0000".
std::string rfc5322_date(std::int64_t unix_seconds);

}  // namespace ringmail::core
