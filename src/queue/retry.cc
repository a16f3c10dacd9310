#include "ringmail/queue/retry.h"

#include "ringmail/core/panic.h"
#include "ringmail/queue/errc.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ringmail::queue {

result<void> retry_policy::validate() const {
    if (schedule.empty() || max_lifetime.count() <= 0 || !(jitter >= 0.0 && jitter < 1.0)) {
        return errc::bad_retry_policy;
    }
    for (auto s : schedule) {
        if (s.count() <= 0)
            return errc::bad_retry_policy;
    }
    return {};
}

std::optional<std::int64_t> retry_policy::next_attempt_with(std::uint32_t attempts_so_far,
                                                            std::int64_t arrival_unix,
                                                            std::int64_t now_unix,
                                                            double unit) const {
    if (schedule.empty()) {
        core::invariant_broken("retry policy without a schedule");
    }
    std::int64_t deadline = arrival_unix + max_lifetime.count();
    if (now_unix >= deadline)
        return std::nullopt;
    std::size_t index =
        std::min<std::size_t>(attempts_so_far == 0 ? 0 : attempts_so_far - 1, schedule.size() - 1);
    double factor = 1.0 + jitter * std::clamp(unit, -1.0, 1.0);
    auto interval = static_cast<std::int64_t>(
        std::llround(static_cast<double>(schedule[index].count()) * factor));
    std::int64_t next = now_unix + std::max<std::int64_t>(interval, 1);
    return std::min(next, deadline);
}

}  // namespace ringmail::queue
