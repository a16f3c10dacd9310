// Delivery suspensions: "no new delivery attempt to this destination until T", set by an
// operator (the admin API, ringmailctl suspend) or by response-driven shaping, kept across
// restarts in one small file in the spool directory.
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

struct suspension_scope {
    suspension_kind kind = suspension_kind::domain;
    std::string name;    // lower-case domain or provider name
    std::string source;  // egress source name, empty = every source

    bool operator==(const suspension_scope&) const = default;
};

struct suspension {
    suspension_scope scope;
    std::int64_t until_unix = 0;   // seconds since the epoch; the suspension ends then
    std::int64_t since_unix = 0;   // when it was set
    std::string reason;            // free text for people (one line)
    std::string origin = "admin";  // who set it: "admin", "shaping", ...
};

class suspensions {
  public:
    static constexpr std::size_t max_entries = 10000;
    static constexpr std::size_t max_name = 255;
    static constexpr std::size_t max_reason = 512;
    // The file's name inside the spool directory.
    static constexpr std::string_view file_name = "suspensions";

    // Adds or replaces (same scope) a suspension. Names are lower-cased, the reason cut to
    // max_reason and its control characters replaced by spaces. Fails (std::errc::
    // invalid_argument) on an empty or over-long name or source, an until not after since, and
    // (std::errc::no_buffer_space) when max_entries other scopes are held.
    result<void> suspend(suspension s);
    // Removes the suspension of exactly this scope; false if there was none.
    bool resume(const suspension_scope& scope);
    // Removes every suspension of `name` of that kind, whatever its source; how many.
    std::size_t resume_all(suspension_kind kind, std::string_view name);

    // The suspension in force at `now_unix` for delivery to `name` (of that kind) through
    // `source` ("" = not known / none): one for exactly that source, else one for every source.
    // Null when none. Names compare without case.
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

    // Every entry, ordered by kind, name, source.
    std::vector<suspension> list() const;
    std::size_t size() const noexcept { return _size; }
    bool empty() const noexcept { return _size == 0; }
    // Changes with every suspend/resume/expire that changed something: readers compare it to
    // know whether a published copy is new.
    std::uint64_t generation() const noexcept { return _generation; }

    // The file form: a version line, then one line per entry (tab-separated fields, the
    // reason escaped). parse() reads it back; entries expired at `now_unix` are skipped.
    std::string serialize() const;
    static result<suspensions> parse(std::string_view text, std::int64_t now_unix);

    // Durable write to `path` (a temporary file beside it, fsync, rename, fsync of the
    // directory), and the read at start-up (a missing file is an empty store).
    result<void> save_file(const std::string& path) const;
    static result<suspensions> load_file(const std::string& path, std::int64_t now_unix);

  private:
    static std::string key(suspension_kind kind, std::string_view name);

    // kind + name -> its entries (one per source; usually one): a lookup per attempt is one
    // hash probe.
    std::unordered_map<std::string, std::vector<suspension>> _by_name;
    std::size_t _size = 0;
    std::uint64_t _generation = 0;
};

std::string_view to_string(suspension_kind k) noexcept;

}  // namespace ringmail::queue
