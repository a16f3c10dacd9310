// regex_set: many regular expressions compiled once into one automaton, matched in one pass.
//
// Used where a reply or a header must be classified by a table of patterns (bounce categories,
// response-driven shaping rules). The syntax is RE2's, which is that of Rust's regex crate:
// KumoMTA's rule files load unchanged. No backreferences or look-around, so a match is linear
// in the text whatever the patterns (no catastrophic backtracking on a peer's reply).
//
// Built at start-up or reload (a bad pattern is a config error: compile() names it); after
// that immutable, so one set may be read by every shard. The caller owns the scratch vector.
// Should the automaton outgrow its memory budget on some text, matching falls back to the
// patterns one by one (slower, same answer) rather than missing a match.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace re2 {
class RE2;
}  // namespace re2

namespace ringmail::core {

class regex_set {
  public:
    struct options {
        bool case_insensitive = false;
    };

    // Every pattern, in order (the index of a pattern is its position). On a bad pattern,
    // nullopt and `why` names the pattern and the error.
    static std::optional<regex_set> compile(std::span<const std::string> patterns, std::string& why,
                                            options opts);
    static std::optional<regex_set> compile(std::span<const std::string> patterns,
                                            std::string& why) {
        return compile(patterns, why, options{});
    }

    regex_set(regex_set&&) noexcept;
    regex_set& operator=(regex_set&&) noexcept;
    ~regex_set();

    std::size_t size() const noexcept { return _size; }

    // The lowest index among the patterns that match anywhere in `text`, or -1.
    int first_match(std::string_view text, std::vector<int>& scratch) const;
    // Every matching index, ascending, into `out`.
    void matches(std::string_view text, std::vector<int>& out) const;

  private:
    struct impl;
    explicit regex_set(std::unique_ptr<impl> p, std::size_t n);

    std::unique_ptr<impl> _impl;
    std::size_t _size = 0;
};

}  // namespace ringmail::core
