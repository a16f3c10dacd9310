#include "ringmail/queue/bounce_class.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace ringmail::queue {

namespace {

constexpr std::array<std::string_view, predefined_bounce_classes> class_names = {
    "InvalidRecipient",
    "DNSFailure",
    "SpamBlock",
    "SpamContent",
    "ProhibitedAttachment",
    "RelayDenied",
    "AutoReply",
    "TransientFailure",
    "Subscribe",
    "Unsubscribe",
    "ChallengeResponse",
    "BadConfiguration",
    "BadConnection",
    "BadDomain",
    "ContentRelated",
    "InactiveMailbox",
    "InvalidSender",
    "MessageExpired",
    "NoAnswerFromHost",
    "PolicyRelated",
    "ProtocolErrors",
    "QuotaIssues",
    "RelayingIssues",
    "RoutingErrors",
    "SpamRelated",
    "VirusRelated",
    "AuthenticationFailed",
    "TooManyRecipients",
    "Uncategorized",
};

std::string at(const std::string& file, const toml::source_region& r) {
    return fmt::format("{}:{}", file, r.begin.line);
}

}  // namespace

std::string_view predefined_name(bounce_class c) noexcept {
    const auto i = static_cast<std::size_t>(c);
    return i < class_names.size() ? class_names[i] : std::string_view();
}

std::optional<bounce_class> predefined_class(std::string_view name) noexcept {
    for (std::size_t i = 0; i < class_names.size(); ++i) {
        if (class_names[i] == name)
            return static_cast<bounce_class>(i);
    }
    return std::nullopt;
}

std::string_view outcome_name(failure_outcome o) noexcept {
    switch (o) {
        case failure_outcome::transient:
            return "transient";
        case failure_outcome::bounced:
            return "bounced";
        case failure_outcome::expired:
            return "expired";
    }
    return "?";
}

void single_line(int code, std::string_view enhanced, std::string_view text, std::string& out) {
    out.clear();
    fmt::format_to(std::back_inserter(out), "{} ", code);
    if (!enhanced.empty()) {
        out.append(enhanced);
        out += ' ';
    }
    for (char c : text) {
        if (c == '\n')
            out += "\\n";
        else if (c == '\r')
            out += "\\r";
        else
            out += c;
    }
}

bounce_classifier::bounce_classifier(core::regex_set set, std::vector<bounce_class> rule_class,
                                     std::vector<std::string> names)
    : _set(std::move(set)), _rule_class(std::move(rule_class)), _names(std::move(names)) {}

std::optional<bounce_classifier> bounce_classifier::parse(std::span<const source> files,
                                                          std::string& why) {
    std::vector<std::string> names(class_names.begin(), class_names.end());
    std::vector<std::string> patterns;
    std::vector<bounce_class> rule_class;
    std::vector<std::string> rule_where;  // "FILE:LINE: rules.Category[i]" per pattern
    for (const source& f : files) {
        toml::table root;
        try {
            root = toml::parse(std::string_view(f.text), std::string_view(f.name));
        } catch (const toml::parse_error& e) {
            why = fmt::format("{}:{}:{}: TOML syntax error: {}", f.name, e.source().begin.line,
                              e.source().begin.column, e.description());
            return std::nullopt;
        }
        const toml::node* rules_node = root.get("rules");
        if (rules_node == nullptr) {
            why = fmt::format("{}: no [rules] table", f.name);
            return std::nullopt;
        }
        const toml::table* rules = rules_node->as_table();
        if (rules == nullptr) {
            why = fmt::format("{}: rules: expected a table", at(f.name, rules_node->source()));
            return std::nullopt;
        }
        // toml++ keeps keys sorted; KumoMTA takes the categories in the order they are
        // written, which decides which rule wins.
        std::vector<std::pair<const toml::key*, const toml::node*>> entries;
        for (const auto& [k, v] : *rules)
            entries.emplace_back(&k, &v);
        std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
            const auto& x = a.first->source().begin;
            const auto& y = b.first->source().begin;
            return x.line != y.line ? x.line < y.line : x.column < y.column;
        });
        for (const auto& [k, v] : entries) {
            const std::string cat(k->str());
            const toml::array* list = v->as_array();
            if (list == nullptr) {
                why = fmt::format("{}: rules.{}: expected an array of regular expressions",
                                  at(f.name, k->source()), cat);
                return std::nullopt;
            }
            bounce_class c{};
            if (auto p = predefined_class(cat)) {
                c = *p;
            } else {
                auto it = std::find(names.begin(), names.end(), cat);
                if (it == names.end()) {
                    if (names.size() >= max_bounce_classes) {
                        why = fmt::format("{}: rules.{}: more than {} categories",
                                          at(f.name, k->source()), cat, max_bounce_classes);
                        return std::nullopt;
                    }
                    names.push_back(cat);
                    it = names.end() - 1;
                }
                c = static_cast<bounce_class>(it - names.begin());
            }
            for (std::size_t i = 0; i < list->size(); ++i) {
                const toml::node& e = *list->get(i);
                const auto* s = e.as_string();
                if (s == nullptr) {
                    why = fmt::format("{}: rules.{}[{}]: expected a string (a regular expression)",
                                      at(f.name, e.source()), cat, i);
                    return std::nullopt;
                }
                patterns.push_back(s->get());
                rule_class.push_back(c);
                rule_where.push_back(
                    fmt::format("{}: rules.{}[{}]", at(f.name, e.source()), cat, i));
            }
        }
    }
    // Checked one by one first, so that the message names the rule; the set then compiles.
    for (std::size_t i = 0; i < patterns.size(); ++i) {
        std::string one;
        if (!core::regex_set::compile(std::span(&patterns[i], 1), one)) {
            why = fmt::format("{}: {}", rule_where[i], one);
            return std::nullopt;
        }
    }
    std::string err;
    auto set = core::regex_set::compile(patterns, err);
    if (!set) {
        why = files.empty() ? err : fmt::format("{}: {}", files.front().name, err);
        return std::nullopt;
    }
    return bounce_classifier(std::move(*set), std::move(rule_class), std::move(names));
}

std::optional<bounce_classifier> bounce_classifier::load(std::span<const std::string> paths,
                                                         std::string& why) {
    std::vector<source> files;
    for (const std::string& p : paths) {
        std::ifstream in(p, std::ios::binary);
        if (!in) {
            why = fmt::format("{}: cannot read the bounce rules", p);
            return std::nullopt;
        }
        std::ostringstream text;
        text << in.rdbuf();
        files.push_back(source{p, text.str()});
    }
    return parse(files, why);
}

bounce_class bounce_classifier::classify(int code, std::string_view enhanced, std::string_view text,
                                         scratch& s) const {
    single_line(code, enhanced, text, s.line);
    return classify_line(s.line, s);
}

bounce_class bounce_classifier::classify_line(std::string_view line, scratch& s) const {
    const int i = _set.first_match(line, s.matches);
    if (i < 0 || static_cast<std::size_t>(i) >= _rule_class.size())
        return bounce_class::uncategorized;
    return _rule_class[static_cast<std::size_t>(i)];
}

std::string_view bounce_classifier::name(bounce_class c) const noexcept {
    const auto i = static_cast<std::size_t>(c);
    return i < _names.size() ? std::string_view(_names[i]) : std::string_view("Uncategorized");
}

}  // namespace ringmail::queue
