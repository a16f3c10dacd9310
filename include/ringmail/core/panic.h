// The one way ringmail reports a broken invariant: one line on stderr, then abort().
//
// Any thread, no state. For bugs only: bad peer input is an SMTP reply and bad configuration
// a start-up error, never this (see "Conventions" in src/README.md).
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace ringmail::core {

// Writes "ringmail: invariant broken: <what>" with one write(2) and aborts.
[[noreturn]] void invariant_broken(std::string_view what) noexcept;

template <typename... Args>
[[noreturn]] void invariant_broken(fmt::format_string<Args...> format, Args&&... args) noexcept {
    invariant_broken(std::string_view(fmt::format(format, std::forward<Args>(args)...)));
}

}  // namespace ringmail::core
