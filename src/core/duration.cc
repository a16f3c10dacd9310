#include "ringmail/core/duration.h"

#include <fmt/format.h>

#include <cstdint>
#include <system_error>

namespace ringmail::core {

namespace {

struct unit {
    char suffix;
    std::int64_t seconds;
};

// Largest first: format_duration picks the first that divides exactly.
constexpr unit units[] = {{'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};

}  // namespace

result<std::chrono::seconds> parse_duration(std::string_view text) {
    std::int64_t scale = 1;
    if (!text.empty()) {
        const char last = text.back();
        if (last < '0' || last > '9') {
            bool known = false;
            for (const auto& u : units) {
                if (u.suffix == last) {
                    scale = u.seconds;
                    known = true;
                }
            }
            if (!known)
                return failure(std::make_error_code(std::errc::invalid_argument));
            text.remove_suffix(1);
        }
    }
    if (text.empty())
        return failure(std::make_error_code(std::errc::invalid_argument));

    const std::int64_t limit = max_duration.count();
    std::int64_t n = 0;
    for (const char c : text) {
        if (c < '0' || c > '9')
            return failure(std::make_error_code(std::errc::invalid_argument));
        // Checked before multiplying, so n never leaves [0, limit].
        if (n > (limit - (c - '0')) / 10) {
            return failure(std::make_error_code(std::errc::result_out_of_range));
        }
        n = n * 10 + (c - '0');
    }
    if (n == 0)
        return failure(std::make_error_code(std::errc::invalid_argument));
    if (n > limit / scale)
        return failure(std::make_error_code(std::errc::result_out_of_range));
    return std::chrono::seconds(n * scale);
}

std::string format_duration(std::chrono::seconds d) {
    const std::int64_t s = d.count();
    if (s == 0)
        return "0s";
    for (const auto& u : units) {
        if (s % u.seconds == 0)
            return fmt::format("{}{}", s / u.seconds, u.suffix);
    }
    return fmt::format("{}s", s);  // unreachable: the last unit divides everything
}

}  // namespace ringmail::core
