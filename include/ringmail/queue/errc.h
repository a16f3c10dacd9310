// Error codes of ringmail::queue: why the delivery queue refused a message or a configuration.
//
// Plain values, no shard affinity. The daemon turns queue_full into 452 4.3.1 for new mail and
// bad_retry_policy into a start-up message naming the [delivery] key; nothing here aborts.
#pragma once

#include <string>
#include <system_error>

namespace ringmail::queue {

enum class errc {
    queue_full = 1,    // the shard's queue holds max_entries messages already
    duplicate_id,      // a message with this queue id is queued already
    no_recipients,     // an entry without recipients
    bad_retry_policy,  // empty schedule, non-positive interval or lifetime, jitter out of [0, 1)
};

const std::error_category& queue_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), queue_category()};
}

}  // namespace ringmail::queue

template <>
struct std::is_error_code_enum<ringmail::queue::errc> : std::true_type {};
