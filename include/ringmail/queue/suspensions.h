// Delivery suspensions: "no new delivery attempt to this destination until T", set by an
// operator (the admin API, ringmailctl suspend) or by response-driven shaping, kept across
// restarts in one small file in the spool directory. The store also keeps the shaping rules'
// `set` overrides (lower limits until T, see queue::limiter): they are listed, persisted and
// lifted like suspensions, but never make is_suspended() true.
//
// A suspension names a scope: a destination domain (the scheduler's queue key, e.g.
// "example.com") or a provider (a [[provider]] name: every domain it covers), optionally
// narrowed to one egress source (empty = every source). Messages stay queued; transactions in
// flight finish; the scheduler asks is_suspended() before it starts a new attempt, and the
// entry stops counting at its expiry (expire() drops it).
//
// A plain value type with no shard affinity and no I/O of its own: one owner writes it (the
// admin thread holds the master copy and persists it), readers get immutable copies (a
// std::shared_ptr<const suspensions> published to the shards). Bounded: at most max_entries
// scopes, names of at most max_name octets, reasons of at most max_reason (longer ones are
// cut). save_file/load_file do blocking file I/O: never call them on a shard thread. A file
// that does not parse is an error value (start-up reports it), never an abort.
#pragma once

#include "ringmail/core/result.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ringmail::queue {

enum class suspension_kind : std::uint8_t { domain, provider };
// What an entry does: stops new attempts, or (a shaping rule's `set`) lowers the limits.
enum class suspension_effect : std::uint8_t { suspend, set };

struct suspension_scope {
    suspension_kind kind = suspension_kind::domain;
    std::string name;    // lower-case domain or provider name
    std::string source;  // egress source name, empty = every source

    bool operator==(const suspension_scope&) const = default;
};

inline constexpr std::string_view origin_operator = "operator";
inline constexpr std::string_view origin_rule = "rule";

struct suspension {
    suspension_scope scope;
    std::int64_t until_unix = 0;  // seconds since the epoch; the suspension ends then
    std::int64_t since_unix = 0;  // when it was set
    std::string reason;           // free text for people (one line)
    // Who set it: origin_operator (the admin API) or origin_rule (a shaping rule; `rule` names
    // it: its config key and pattern). The legacy "admin" and "shaping" read as these.
    std::string origin = std::string(origin_operator);
    std::string rule;  // one line, cut like the reason; "" for an operator's
    suspension_effect effect = suspension_effect::suspend;
    // effect == set: the overridden limits (0 = unchanged); the override holds from since to
    // until, then returns gradually (queue::returning_value).
    double set_rate = 0.0;  // messages per second
    std::uint32_t set_connections = 0;
};

class suspensions {
  public:
    static constexpr std::size_t max_entries = 10000;
    static constexpr std::size_t max_name = 255;
    static constexpr std::size_t max_reason = 512;
    // The file's name inside the spool directory.
    static constexpr std::string_view file_name = "suspensions";

    // Adds or replaces (same scope and effect) an entry. Names are lower-cased, the reason
    // and rule cut to max_reason and their control characters replaced by spaces. Fails
    // (std::errc::invalid_argument) on an empty or over-long name or source, an until not
    // after since, and (std::errc::no_buffer_space) when max_entries other entries are held.
    result<void> suspend(suspension s);
    // As suspend(), but an entry of the same scope and effect that lasts at least as long is
    // kept (a rule firing again never shortens an operator's suspension). Whether it changed.
    result<bool> merge(suspension s);
    // Removes the entries (every effect) of exactly this scope; false if there was none.
    bool resume(const suspension_scope& scope);
    // Removes every entry of `name` of that kind, whatever its source and effect, and appends
    // them to `removed` when given; how many.
    std::size_t resume_all(suspension_kind kind, std::string_view name,
                           std::vector<suspension>* removed = nullptr);

    // The suspension (effect suspend) in force at `now_unix` for delivery to `name` (of that
    // kind) through `source` ("" = not known / none): one for exactly that source, else one for
    // every source. Null when none. Names compare without case.
    const suspension* find(suspension_kind kind, std::string_view name, std::string_view source,
                           std::int64_t now_unix) const;
    // A new attempt to domain `domain`, of provider `provider` ("" = none), through `source`
    // must wait: a domain or a provider suspension is in force.
    bool is_suspended(std::string_view domain, std::string_view provider, std::string_view source,
                      std::int64_t now_unix) const {
        return find(suspension_kind::domain, domain, source, now_unix) != nullptr ||
               (!provider.empty() &&
                find(suspension_kind::provider, provider, source, now_unix) != nullptr);
    }

    // Drops every entry whose until is at or before now; how many.
    std::size_t expire(std::int64_t now_unix);
    // The earliest until of the entries held (0 when empty): when the next one ends.
    std::int64_t next_expiry() const noexcept;

    // Every entry, ordered by kind, name, source, effect.
    std::vector<suspension> list() const;
    // How many entries `origin` (origin_operator or origin_rule) set.
    std::size_t count(std::string_view origin) const noexcept;
    std::size_t size() const noexcept { return _size; }
    bool empty() const noexcept { return _size == 0; }
    // Changes with every suspend/resume/expire that changed something: readers compare it to
    // know whether a published copy is new.
    std::uint64_t generation() const noexcept { return _generation; }

    // The file form: a version line, then one line per entry (tab-separated fields, the
    // reason escaped). parse() reads it back (version 2, and the 1 of older releases);
    // entries expired at `now_unix` are skipped.
    std::string serialize() const;
    static result<suspensions> parse(std::string_view text, std::int64_t now_unix);

    // Durable write to `path` (a temporary file beside it, fsync, rename, fsync of the
    // directory), and the read at start-up (a missing file is an empty store).
    result<void> save_file(const std::string& path) const;
    static result<suspensions> load_file(const std::string& path, std::int64_t now_unix);
    // Start-up: load_file(path), plus the entries of `legacy_path` (the rules' own file of
    // older releases) when it exists; those are merged in, the result written to `path`, and
    // only then is `legacy_path` removed, so an upgrade loses nothing whenever it stops.
    // `migrated` says how many legacy entries were read.
    static result<suspensions> load_and_migrate(const std::string& path,
                                                const std::string& legacy_path,
                                                std::int64_t now_unix, std::size_t& migrated);
    // The legacy file's name inside the spool directory.
    static constexpr std::string_view legacy_file_name = "suspensions.shaping";

  private:
    static std::string key(suspension_kind kind, std::string_view name);

    // kind + name -> its entries (one per source; usually one): a lookup per attempt is one
    // hash probe.
    std::unordered_map<std::string, std::vector<suspension>> _by_name;
    std::size_t _size = 0;
    std::uint64_t _generation = 0;
};

std::string_view to_string(suspension_kind k) noexcept;
std::string_view to_string(suspension_effect e) noexcept;

}  // namespace ringmail::queue
