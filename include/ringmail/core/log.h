// Logging: one line per call on stderr, e.g.
//   2026-11-23T10:00:00.123Z shard=1 info: accepted 192.0.2.7:51234
//
// Any thread. Each line is formatted into a thread-local buffer and written with a single
// write(2): no locks, and lines up to PIPE_BUF (4096 bytes) never interleave. Longer lines are
// cut to 4096 bytes ending in "...". Control characters in the formatted text are escaped as
// \xNN, so one call is always one line; pass anything a peer sent through sanitize() as well,
// which also escapes non-ASCII and caps the length. A failed write is dropped: logging never
// fails the caller. The level threshold is set once at start-up, before the shards run.
//
// Shard threads batch (begin_batching): a line goes to a bounded per-thread buffer that flush()
// writes at the end of each loop iteration, in whole-line chunks of at most PIPE_BUF, so a
// shard makes one write(2) per iteration, not one per line. After prepare_output(), a shard
// never blocks on a slow stderr (a full pipe or socket to journald): what cannot be written
// waits in the buffer; lines that do not fit are dropped, counted (dropped_lines) and
// reported by one line once stderr drains. Errors are written at once.
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

// Once at start-up, before any thread logs: when stderr is a pipe or a socket, shard batches
// are written without blocking (a pipe through a second, non-blocking open of it; a socket
// with MSG_DONTWAIT). Without it (or for files and terminals) batches are written as usual.
void prepare_output() noexcept;

// The calling thread batches its lines from now on; end_batching() writes what is left
// (blocking) and stops. flush() writes what it can without blocking; cheap when empty.
inline constexpr std::size_t batch_capacity = 256 * 1024;
void begin_batching() noexcept;
void flush() noexcept;
void end_batching() noexcept;

// Lines dropped because stderr did not keep up, over all threads.
std::uint64_t dropped_lines() noexcept;

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
