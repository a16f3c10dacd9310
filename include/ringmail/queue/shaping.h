// Bulk traffic shaping (issue 16): egress-source choice, provider limits shared by every shard,
// and response-driven rules.
//
// Pieces:
// - gcra_cell: one rate limit (generic cell rate algorithm) whose state is a single atomic
//   theoretical arrival time in nanoseconds, updated by compare-and-swap: any shard may take
//   from it, and "no burst beyond one" holds exactly, to the nanosecond.
// - smooth_wrr: nginx-style smooth weighted round-robin (per shard, per pool; no shared state).
// - provider_table: which [[provider]] a routing domain belongs to (domain suffix, or every MX
//   host matching an MX suffix). Immutable.
// - limiter: the interface the scheduler asks for connection slots, message and connection
//   tokens, suspensions and rule effects. local_limiter keeps them in fixed arrays of atomics
//   built at start-up (no lock, no allocation after construction): one process. With
//   [cluster] redis each shard's scheduler asks a cluster::shard_limiter instead, which keeps
//   the shared counts in Redis and reads the limits in force (and the rules' state) here.
// - shaping_rules: the [[shaping_rule]] table compiled once into one core::regex_set; a reply is
//   matched in one pass, triggers count matches per (rule, source) in a shared ring of the
//   last N match times.
//
// Ownership: one `shaping` object is built by the daemon's context at start-up and shared
// read-only by every shard (its mutable state is atomics only). Nothing here does I/O or
// fails at run time: bad tables are configuration errors caught by config (and build()).
#pragma once

#include "ringmail/core/regex_set.h"
#include "ringmail/queue/suspensions.h"
#include "ringmail/queue/token_bucket.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ringmail::queue {

// Nanoseconds of the reactor's steady clock.
inline std::int64_t to_ns(steady_time t) noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline steady_time from_ns(std::int64_t ns) noexcept {
    return steady_time(
        std::chrono::duration_cast<steady_time::duration>(std::chrono::nanoseconds(ns)));
}
// Nanoseconds between events at `rate` per second (rate > 0).
std::int64_t interval_ns(double rate) noexcept;

struct take_result {
    bool ok = false;
    steady_time at{};  // !ok: when a take would succeed (a timer, never a poll)
};

class gcra_cell {
  public:
    // One event at `interval` (ns, > 0) with up to `burst` (>= 1) back to back. Lock-free.
    take_result take(steady_time now, std::int64_t interval, std::uint32_t burst) noexcept;
    // When take() would next succeed (now when it would now).
    steady_time next(steady_time now, std::int64_t interval, std::uint32_t burst) const noexcept;

  private:
    std::atomic<std::int64_t> _tat{std::numeric_limits<std::int64_t>::min() / 2};
};

// Smooth weighted round-robin: each pick adds every eligible member's weight to its current
// value and takes the largest, which then gives back the eligible total. Weights 2:1 give
// a,b,a,a,b,a,...: exact proportions over every whole cycle, evenly interleaved.
class smooth_wrr {
  public:
    smooth_wrr() = default;
    explicit smooth_wrr(std::vector<std::uint32_t> weights);
    std::size_t size() const noexcept { return _weight.size(); }
    // Index of the pick among members with eligible(i) true, or -1 when none is.
    template <typename Eligible>
    int pick(Eligible&& eligible) {
        std::int64_t total = 0;
        int best = -1;
        for (std::size_t i = 0; i < _weight.size(); ++i) {
            if (!eligible(i))
                continue;
            _current[i] += _weight[i];
            total += _weight[i];
            if (best < 0 || _current[i] > _current[static_cast<std::size_t>(best)])
                best = static_cast<int>(i);
        }
        if (best >= 0)
            _current[static_cast<std::size_t>(best)] -= total;
        return best;
    }

  private:
    std::vector<std::int64_t> _weight;
    std::vector<std::int64_t> _current;
};

// One [[provider]], as the scheduler uses it. 0 = no limit of the provider's (the
// destination's own limits apply).
struct provider_spec {
    std::string name;
    std::vector<std::string> mx_suffix;      // ".google.com": subdomains; "google.com": it too
    std::vector<std::string> domain_suffix;  // lower case
    std::uint32_t max_connections = 0;       // per source, all shards
    std::uint32_t max_messages_per_connection = 0;
    double message_rate = 0.0;  // per source, all shards
    std::uint32_t message_burst = 1;
    double connection_rate = 0.0;  // per source
    int pool = -1;                 // pinned egress pool, -1 = the default pool
};

// True when `host` is `suffix` ("google.com", or below it) or below ".suffix".
bool suffix_matches(std::string_view host, std::string_view suffix) noexcept;

class provider_table {
  public:
    provider_table() = default;
    explicit provider_table(std::vector<provider_spec> providers);
    std::size_t size() const noexcept { return _p.size(); }
    const provider_spec& operator[](std::size_t i) const { return _p[i]; }
    // First provider whose domain_suffix matches the routing domain, or -1.
    int match_domain(std::string_view domain) const noexcept;
    // First provider one of whose mx_suffix matches every host (none empty), or -1.
    int match_mx(std::span<const std::string> hosts) const noexcept;

  private:
    std::vector<provider_spec> _p;
};

enum class rule_action : std::uint8_t { suspend, set, bounce };

struct rule_spec {
    int provider = -1;   // index in the provider_table; -1 with domain set; any = true for "*"
    bool any = false;    // "*"
    std::string domain;  // lower case, or ""
    std::string match;   // RE2
    rule_action action = rule_action::suspend;
    std::chrono::nanoseconds duration{0};
    std::uint32_t trigger_count = 1;             // <= max_trigger_count
    std::chrono::nanoseconds trigger_window{0};  // 0 = immediate
    double set_rate = 0.0;                       // set: messages per second, 0 = unchanged
    std::uint32_t set_connections = 0;           // set: 0 = unchanged
    std::string where;                           // config key, for logs
};
inline constexpr std::uint32_t max_trigger_count = 1000;

// A scope is what a limit or an effect applies to: a provider (index < providers) or one
// domain named by a rule (index >= providers). A source slot is 0 for connections that bind
// no source, else egress source index + 1.
struct scope_ref {
    int scope = -1;
    unsigned slot = 0;
};

// What the scheduler asks. Implementations are shared by every shard and lock-free on these
// calls. All-or-nothing: a refused acquire holds nothing.
class limiter {
  public:
    virtual ~limiter() = default;
    // A new connection for `provider` (-1: none known) from source slot `slot`: the source's
    // and the provider's connection slots and a connection-rate token. !ok: nothing taken; `at`
    // is when a rate token is due (slots: the earliest retry the caller should make).
    virtual take_result acquire_connection(int provider, unsigned slot, steady_time now) = 0;
    // The provider of a connection opened without one became known (its route): counted now,
    // whatever the limit (that one connection may pass it).
    virtual void attach_provider(int provider, unsigned slot) = 0;
    virtual void release_connection(int provider, unsigned slot) = 0;
    // May one more message start on a connection of `provider` from `slot`?
    virtual take_result take_message(int provider, unsigned slot, steady_time now) = 0;
    // The effective limits (a `set` in force, returning gradually).
    virtual std::uint32_t max_connections(int provider, unsigned slot, steady_time now) const = 0;
    // Connections counted against (provider, slot) now, over all shards.
    virtual std::uint32_t connections(int provider, unsigned slot) const = 0;
    // Until when a scope is suspended for a source (<= now: not suspended).
    virtual steady_time suspended_until(int scope, unsigned slot) const = 0;
    virtual void suspend(int scope, unsigned slot, steady_time until, int rule) = 0;
    // A `set` from `now` for `duration`, then back to normal by doubling every quarter.
    virtual void set_limits(int scope, unsigned slot, const rule_spec& r, int rule,
                            steady_time now) = 0;
    // An operator's resume: the suspension and the `set` of (scope, slot) end now (limits are
    // normal at once). An implementation that cannot lift keeps them to their end.
    virtual void lift(int scope, unsigned slot) {
        (void)scope;
        (void)slot;
    }
    // Is `rule`'s own effect in force on (scope, slot)? Its matches then do not count.
    virtual bool effect_active(int scope, unsigned slot, int rule, steady_time now) const = 0;
    // A source that cannot bind (EADDRNOTAVAIL) is out until `until`.
    virtual void suspend_source(unsigned slot, steady_time until) = 0;
    virtual steady_time source_suspended_until(unsigned slot) const = 0;
};

// The gradual return of a `set`: the override holds for `duration` from `start`, then the
// value doubles every quarter of it until it reaches `normal` (0 = unlimited: reached after
// four doublings). Returns the value in force, `normal` once back.
double returning_value(double normal, double override_value, steady_time start,
                       std::chrono::nanoseconds duration, steady_time now) noexcept;

class local_limiter final : public limiter {
  public:
    // `sources`: connection limit per egress source (0 = none), in source order.
    local_limiter(const provider_table& providers, std::size_t domain_scopes,
                  std::vector<std::uint32_t> source_limits);
    ~local_limiter() override;

    take_result acquire_connection(int provider, unsigned slot, steady_time now) override;
    void attach_provider(int provider, unsigned slot) override;
    void release_connection(int provider, unsigned slot) override;
    take_result take_message(int provider, unsigned slot, steady_time now) override;
    std::uint32_t max_connections(int provider, unsigned slot, steady_time now) const override;
    steady_time suspended_until(int scope, unsigned slot) const override;
    void suspend(int scope, unsigned slot, steady_time until, int rule) override;
    void set_limits(int scope, unsigned slot, const rule_spec& r, int rule,
                    steady_time now) override;
    void lift(int scope, unsigned slot) override;
    bool effect_active(int scope, unsigned slot, int rule, steady_time now) const override;
    void suspend_source(unsigned slot, steady_time until) override;
    steady_time source_suspended_until(unsigned slot) const override;

    std::uint32_t connections(int provider, unsigned slot) const override;

    // The limits in force on (scope, slot), a `set` included: messages per second and burst
    // (0: no rate), new connections per second (0: none). For a limiter that keeps the
    // counts elsewhere (cluster::shard_limiter, which leaves the rules' state here).
    double message_rate(int scope, unsigned slot, steady_time now) const noexcept;
    std::uint32_t message_burst(int scope) const noexcept;
    double connection_rate(int provider) const noexcept;
    std::size_t scopes() const noexcept { return _scopes; }
    std::size_t slots() const noexcept { return _slots; }

  private:
    struct cell;
    struct source_cell;
    cell* at(int scope, unsigned slot) const noexcept;
    double message_rate(int provider, const cell& c, steady_time now) const noexcept;

    const provider_table& _providers;
    std::size_t _scopes = 0;
    std::size_t _slots = 0;
    std::unique_ptr<cell[]> _cells;  // _scopes x _slots
    std::unique_ptr<source_cell[]> _sources;
};

// What a reply did (for the caller's log lines and the recipients' outcomes).
struct rule_effect {
    int rule = -1;
    rule_action action = rule_action::suspend;
    int scope = -1;  // -1: the destination itself ("*" rule on a domain of no provider)
    steady_time until{};
};

class shaping_rules {
  public:
    shaping_rules() = default;
    // nullopt and `why` (naming the rule) when a pattern does not compile.
    static std::optional<shaping_rules> build(std::vector<rule_spec> rules, std::size_t providers,
                                              std::size_t slots, std::string& why);
    std::size_t size() const noexcept { return _rules.size(); }
    const rule_spec& operator[](std::size_t i) const { return _rules[i]; }
    // The scope index of a rule's domain (providers + k), or -1 when no rule names it.
    int domain_scope(std::string_view domain) const;
    std::size_t domain_scopes() const noexcept { return _domains.size(); }

    // One reply ("code enhanced text") of a connection to a destination of `provider` (-1)
    // whose domain scope is `dscope` (-1), from source slot `slot`: matched in one pass; each
    // matching rule counts the match (unless its own effect is in force there) and, when its
    // trigger fires, applies its effect through `lim`. Appends what fired to `out`.
    void on_reply(std::string_view line, int provider, int dscope, unsigned slot, steady_time now,
                  limiter& lim, std::vector<rule_effect>& out, std::vector<int>& scratch) const;

  private:
    struct ring;
    bool count(std::size_t rule, unsigned slot, steady_time now) const;

    std::vector<rule_spec> _rules;
    std::optional<core::regex_set> _set;
    std::size_t _providers = 0;
    std::size_t _slots = 0;
    std::unordered_map<std::string, int> _domains;  // domain -> scope
    std::shared_ptr<ring[]> _rings;                 // rule x slot (mutable atomics)
};

// One [[egress_pool]]: source indexes and their weights.
struct egress_pool_spec {
    std::vector<unsigned> sources;
    std::vector<std::uint32_t> weights;
};

// Where the suspensions and `set`s the rules fire are kept beyond this process:
// queue::suspensions, the one store (the admin thread's: persisted, listed by the admin API,
// lifted by an operator's resume). Called on shard `shard`, the one that saw the reply, once
// per fired rule (never per message); an implementation must not block or lock there.
class suspension_recorder {
  public:
    virtual ~suspension_recorder() = default;
    virtual void record(unsigned shard, suspension s) = 0;
};

// Everything the schedulers share about shaping, built once (daemon::context) and read by
// every shard; its mutable state is the limiter's atomics and the rules' trigger rings.
struct shaping_context {
    provider_table providers;
    shaping_rules rules;
    std::vector<egress_pool_spec> pools;
    int default_pool = -1;    // -1: connections of destinations without a pinned pool bind none
    std::size_t sources = 0;  // egress sources; slot = source + 1
    // The node's limiter, shared by its shards; with [cluster] each shard's
    // cluster::shard_limiter keeps the rules' state here.
    std::unique_ptr<local_limiter> limits;
    // A source that cannot bind is out for this long, then tried again.
    std::chrono::milliseconds unbindable_for{std::chrono::minutes(5)};
    std::vector<std::string> source_names;    // by source index
    std::vector<std::string> provider_names;  // by provider index
    suspension_recorder* recorder = nullptr;  // null: suspensions last this process only
};

// The stored suspensions and `set`s still in force (a restart, or set by an operator) applied
// to the limiter: provider scopes and the domains rules name, for one source or every source
// (a `set` from its original start, so its return continues where it was). Returns how many
// entries applied; the others (domains no rule names, unknown names) are left to the store's
// other readers.
std::size_t apply_suspensions(const shaping_context& sh, const suspensions& store,
                              std::int64_t now_unix, steady_time now);
// Entries an operator resumed, lifted in the limiter (limiter::lift on their scopes and
// slots: `through`, or the context's own); how many named a scope it knows.
std::size_t lift_suspensions(const shaping_context& sh, std::span<const suspension> lifted,
                             limiter* through = nullptr);

}  // namespace ringmail::queue
