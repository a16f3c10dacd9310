// Delivery status notifications: the RFC 3464 report for a message's failed recipients,
// spooled as a new message from the null sender to the original sender, and then delivered
// like any other.
//
// Called by the engine of the origin shard (it owns both spools named). Failures are values:
// an unreadable original or a spool that refuses the notice are reported to the caller, which
// logs them.
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/queue/dsn.h"
#include "ringmail/queue/outcome.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ringmail::delivery {

// Builds the notice for `b` from the original in `original` and writes it into `into` (the
// shard's own spool; finished with `token`, committed with the next batch). The original's
// DSN parameters (RFC 3461) shape it: recipients whose NOTIFY excludes this kind of notice are
// left out, and when none is left nothing is spooled (nullopt); RET=FULL returns the whole
// message; ENVID and ORCPT come back as Original-Envelope-Id and Original-Recipient.
result<std::optional<spool::queue_id>> spool_dsn(spool::spool& original, spool::spool& into,
                                                 const queue::bounce_request& b,
                                                 std::string_view reporting_mta,
                                                 std::int64_t now_unix, std::uint64_t token = 0,
                                                 std::span<const std::string> category_names = {});

}  // namespace ringmail::delivery
