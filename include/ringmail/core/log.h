// Logging: one line per call on stderr, e.g.
//   2026-11-23T10:00:00.123Z shard=1 info: accepted 192.0.2.7:51234
//
// Any thread. Each line is formatted into a thread-local buffer and written with a single
// write(2): no locks, and lines up to PIPE_BUF (4096 bytes) never interleave. Longer lines are
// cut to 4096 bytes ending in "...". Control characters in the formatted text are escaped as
// \xNN, so one call is always one line; pass anything a peer sent through sanitize() as well,
// which also escapes non-ASCII and caps the length. A failed write is dropped: logging never
// fails the caller. The level threshold is set once at start-up, before the shards run.
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::core::log {

enum class level : std::uint8_t { debug, info, warn, error };

// Longest line written, newline included (PIPE_BUF on Linux).
inline constexpr std::size_t max_line = 4096;

void set_level(level l) noexcept;
level current_level() noexcept;
inline bool enabled(level l) noexcept {
    return l >= current_level();
}

// "debug" | "info" | "warn" | "error"; nullopt for anything else.
std::optional<level> parse_level(std::string_view name) noexcept;
std::string_view level_name(level l) noexcept;

// Formats and writes one line (no level check: the templates below do that first, so disabled
// levels cost neither formatting nor a write).
void write_line(level l, fmt::string_view format, fmt::format_args args) noexcept;

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (enabled(level::debug))
        write_line(level::debug, format, fmt::make_format_args(args...));
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (enabled(level::info))
        write_line(level::info, format, fmt::make_format_args(args...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (enabled(level::warn))
        write_line(level::warn, format, fmt::make_format_args(args...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (enabled(level::error))
        write_line(level::error, format, fmt::make_format_args(args...));
}

// Peer input made safe to log: printable ASCII is kept except the backslash; every other byte
// (controls, DEL, non-ASCII, '\') becomes \xNN, so the output is unambiguous and one line.
// The result is at most max_len bytes, plus "..." when the input was cut.
inline constexpr std::size_t default_sanitize_len = 256;
std::string sanitize(std::string_view peer_text, std::size_t max_len = default_sanitize_len);

}  // namespace ringmail::core::log
