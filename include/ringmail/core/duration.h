// Durations as operators write them in the configuration: "90s", "5m", "4h", "5d", or a plain
// number of seconds ("300").
//
// Pure functions, no state; any thread. Malformed text is std::errc::invalid_argument, zero is
// rejected too (every duration in ringmail is a timeout or an interval, and 0 would mean "never
// wait" or "spin"), and values past max_duration are std::errc::result_out_of_range: they are
// capped so that adding one to a steady_clock time point in nanoseconds can never overflow.
#pragma once

#include "ringmail/core/result.h"

#include <chrono>
#include <string>
#include <string_view>

namespace ringmail::core {

// About 292 years: the largest whole number of seconds a std::chrono::nanoseconds can hold.
inline constexpr std::chrono::seconds max_duration{
    std::chrono::duration_cast<std::chrono::seconds>(std::chrono::nanoseconds::max())};

// "<digits><unit>" with unit one of s, m, h, d, or "<digits>" alone (seconds). No sign, no
// spaces, no fractions, no compound forms ("1h30m" is written "90m").
result<std::chrono::seconds> parse_duration(std::string_view text);

// The shortest form parse_duration reads back to the same value, using the largest unit that
// divides it exactly: 86400s -> "1d", 5400s -> "90m", 61s -> "61s". Zero formats as "0s".
std::string format_duration(std::chrono::seconds d);

}  // namespace ringmail::core
