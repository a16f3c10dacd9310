#include "ringmail/core/regex_set.h"

#include <algorithm>
#include <re2/re2.h>
#include <re2/set.h>

namespace ringmail::core {

namespace {

// Enough for some hundreds of rules' DFA states; the set falls back (see the header) rather
// than fail should a text need more.
constexpr std::int64_t max_automaton_bytes = 64 << 20;

RE2::Options re2_options(const regex_set::options& opts) {
    RE2::Options o;
    o.set_log_errors(false);
    o.set_case_sensitive(!opts.case_insensitive);
    o.set_max_mem(max_automaton_bytes);
    return o;
}

}  // namespace

struct regex_set::impl {
    explicit impl(const RE2::Options& o) : set(o, RE2::UNANCHORED) {}
    RE2::Set set;
    // One RE2 per pattern, for the fallback.
    std::vector<std::unique_ptr<RE2>> each;
};

regex_set::regex_set(std::unique_ptr<impl> p, std::size_t n) : _impl(std::move(p)), _size(n) {}
regex_set::regex_set(regex_set&&) noexcept = default;
regex_set& regex_set::operator=(regex_set&&) noexcept = default;
regex_set::~regex_set() = default;

std::optional<regex_set> regex_set::compile(std::span<const std::string> patterns, std::string& why,
                                            options opts) {
    const RE2::Options o = re2_options(opts);
    auto p = std::make_unique<impl>(o);
    for (std::size_t i = 0; i < patterns.size(); ++i) {
        std::string error;
        if (p->set.Add(patterns[i], &error) < 0) {
            why = "bad regular expression '" + patterns[i] + "': " + error;
            return std::nullopt;
        }
        p->each.push_back(std::make_unique<RE2>(patterns[i], o));
    }
    if (!patterns.empty() && !p->set.Compile()) {
        why = "the regular expressions do not fit in " + std::to_string(max_automaton_bytes >> 20) +
              " MiB";
        return std::nullopt;
    }
    return regex_set(std::move(p), patterns.size());
}

void regex_set::matches(std::string_view text, std::vector<int>& out) const {
    out.clear();
    if (_size == 0)
        return;
    RE2::Set::ErrorInfo info{};
    if (_impl->set.Match(re2::StringPiece(text.data(), text.size()), &out, &info)) {
        std::sort(out.begin(), out.end());
        return;
    }
    out.clear();
    if (info.kind == RE2::Set::kNoError)
        return;  // no pattern matched
    for (std::size_t i = 0; i < _impl->each.size(); ++i)
        if (RE2::PartialMatch(re2::StringPiece(text.data(), text.size()), *_impl->each[i]))
            out.push_back(static_cast<int>(i));
}

int regex_set::first_match(std::string_view text, std::vector<int>& scratch) const {
    matches(text, scratch);
    return scratch.empty() ? -1 : scratch.front();
}

}  // namespace ringmail::core
