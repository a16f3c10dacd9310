// Bounce classification: why a delivery attempt failed, in KumoMTA's categories (InvalidRecipient,
// QuotaIssues, SpamBlock, ...), from a rules file in KumoMTA's format so that its files load as
// they are:
//
//   [rules]
//   InvalidRecipient = ["^5\\d\\d 5\\.1\\.1 ", "(?i)no such user"]
//   QuotaIssues = ["..."]
//
// Every pattern of every file, in order (files in the order given, categories in the order they
// are written, patterns in array order), is one entry of one core::regex_set; a reply is matched
// once and the lowest-numbered matching entry decides (first match wins); no match is
// Uncategorized. A category name that is not KumoMTA's is kept as a category of its own
// (KumoMTA's user-defined classes), up to max_bounce_classes in all. Patterns are RE2 (the
// syntax of Rust's regex crate, which KumoMTA uses), case-sensitive unless they say (?i).
//
// The text matched is the reply as one line, as KumoMTA writes it: "550 5.1.1 text", the code, the
// enhanced code when there is one, then the text with the lines of a multi-line reply joined by
// the two characters "\n" (and a CR as "\r").
//
// Built on the main thread at start-up (a bad file or pattern is a start-up error naming the file,
// the line and the category); immutable after that, so every shard reads the same classifier. The
// caller of classify owns the scratch (one per shard).
#pragma once

#include "ringmail/core/regex_set.h"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::queue {

// KumoMTA's predefined classes; values past `uncategorized` are user-defined names of the
// classifier that made them.
enum class bounce_class : std::uint8_t {
    invalid_recipient,
    dns_failure,
    spam_block,
    spam_content,
    prohibited_attachment,
    relay_denied,
    auto_reply,
    transient_failure,
    subscribe,
    unsubscribe,
    challenge_response,
    bad_configuration,
    bad_connection,
    bad_domain,
    content_related,
    inactive_mailbox,
    invalid_sender,
    message_expired,
    no_answer_from_host,
    policy_related,
    protocol_errors,
    quota_issues,
    relaying_issues,
    routing_errors,
    spam_related,
    virus_related,
    authentication_failed,
    too_many_recipients,
    uncategorized,
};

inline constexpr std::size_t predefined_bounce_classes =
    static_cast<std::size_t>(bounce_class::uncategorized) + 1;
// Predefined plus user-defined: bounds the metrics' table.
inline constexpr std::size_t max_bounce_classes = 64;

// KumoMTA's spelling ("InvalidRecipient"); "" for a value past the predefined ones.
std::string_view predefined_name(bounce_class c) noexcept;
// The predefined class spelled exactly so (names are case-sensitive, as in KumoMTA).
std::optional<bounce_class> predefined_class(std::string_view name) noexcept;

// packaging/bounces.toml as built into the program (installed as
// /usr/share/ringmail/bounces.toml too).
std::string_view shipped_bounce_rules() noexcept;

// "550 5.1.1 text" with the lines of `text` ('\n'-separated) joined by the two characters \n.
void single_line(int code, std::string_view enhanced, std::string_view text, std::string& out);

class bounce_classifier {
  public:
    struct scratch {
        std::string line;
        std::vector<int> matches;
    };

    // One rules file's text; `name` is how messages call it (its path). Errors go to `why`:
    // "FILE:LINE: rules.Category[2]: bad regular expression '...': ...".
    struct source {
        std::string name;
        std::string text;
    };
    static std::optional<bounce_classifier> parse(std::span<const source> files, std::string& why);
    // Reads the files, then parse.
    static std::optional<bounce_classifier> load(std::span<const std::string> paths,
                                                 std::string& why);

    bounce_classifier(bounce_classifier&&) noexcept = default;
    bounce_classifier& operator=(bounce_classifier&&) noexcept = default;

    bounce_class classify(int code, std::string_view enhanced, std::string_view text,
                          scratch& s) const;
    // The reply already as one line.
    bounce_class classify_line(std::string_view line, scratch& s) const;

    // Predefined or user-defined name; "Uncategorized" for a value this classifier does not know.
    std::string_view name(bounce_class c) const noexcept;
    // Every name, indexed by class value (the predefined first): for metrics labels.
    std::span<const std::string> names() const noexcept { return _names; }
    std::size_t rules() const noexcept { return _rule_class.size(); }

  private:
    bounce_classifier(core::regex_set set, std::vector<bounce_class> rule_class,
                      std::vector<std::string> names);

    core::regex_set _set;
    std::vector<bounce_class> _rule_class;  // by pattern index
    std::vector<std::string> _names;
};

// What happened to a recipient that failed, for counting: the delivery log's TransientFailure,
// Bounce and Expiration.
enum class failure_outcome : std::uint8_t { transient, bounced, expired };
inline constexpr std::size_t failure_outcomes = 3;
std::string_view outcome_name(failure_outcome o) noexcept;  // "transient", "bounced", "expired"

// Failed recipients per (outcome, class), one table per shard: written by its shard only
// (relaxed increments), read by any thread (relaxed loads; the metrics endpoint sums the shards).
struct alignas(64) bounce_counters {
    std::array<std::array<std::atomic<std::uint64_t>, max_bounce_classes>, failure_outcomes>
        count{};

    void add(failure_outcome o, bounce_class c) noexcept {
        const auto i = static_cast<std::size_t>(c);
        if (i < max_bounce_classes)
            count[static_cast<std::size_t>(o)][i].fetch_add(1, std::memory_order_relaxed);
    }
    std::uint64_t get(failure_outcome o, bounce_class c) const noexcept {
        const auto i = static_cast<std::size_t>(c);
        return i < max_bounce_classes
                   ? count[static_cast<std::size_t>(o)][i].load(std::memory_order_relaxed)
                   : 0;
    }
};

}  // namespace ringmail::queue
