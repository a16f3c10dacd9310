#include "ringmail/queue/shaping.h"

#include "ringmail/core/panic.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace ringmail::queue {

std::int64_t interval_ns(double rate) noexcept {
    if (rate <= 0.0)
        return 0;
    const double ns = 1e9 / rate;
    if (ns >= 9e18)
        return std::numeric_limits<std::int64_t>::max() / 4;
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(ns)));
}

// GCRA (virtual scheduling): an event conforms when the theoretical arrival time is at most
// (burst - 1) intervals ahead of now; it then moves the TAT one interval past max(TAT, now).
take_result gcra_cell::take(steady_time now, std::int64_t interval, std::uint32_t burst) noexcept {
    const std::int64_t t = to_ns(now);
    const std::int64_t tolerance = interval * (static_cast<std::int64_t>(std::max(burst, 1u)) - 1);
    std::int64_t tat = _tat.load(std::memory_order_relaxed);
    for (;;) {
        // A take that comes late (the loop was busy when the token was due) by at most one
        // interval counts from its due time, so wake-up delays do not add up to a lower rate;
        // any window of time still holds at most one event more than the rate gives it, the
        // bound of a burst of one. Later than that (idle), it counts from now: nothing banked.
        const std::int64_t base = tat >= t || t - tat <= interval ? tat : t;
        if (base - t > tolerance)
            return {false, from_ns(base - tolerance)};
        if (_tat.compare_exchange_weak(tat, base + interval, std::memory_order_acq_rel,
                                       std::memory_order_relaxed))
            return {true, now};
    }
}

steady_time gcra_cell::next(steady_time now, std::int64_t interval,
                            std::uint32_t burst) const noexcept {
    const std::int64_t t = to_ns(now);
    const std::int64_t tolerance = interval * (static_cast<std::int64_t>(std::max(burst, 1u)) - 1);
    const std::int64_t base = std::max(_tat.load(std::memory_order_relaxed), t);
    return base - t > tolerance ? from_ns(base - tolerance) : now;
}

smooth_wrr::smooth_wrr(std::vector<std::uint32_t> weights) {
    for (auto w : weights) {
        _weight.push_back(std::max<std::uint32_t>(w, 1));
        _current.push_back(0);
    }
}

bool suffix_matches(std::string_view host, std::string_view suffix) noexcept {
    if (!host.empty() && host.back() == '.')
        host.remove_suffix(1);
    if (suffix.empty())
        return false;
    auto ieq = [](std::string_view a, std::string_view b) {
        if (a.size() != b.size())
            return false;
        for (std::size_t i = 0; i < a.size(); ++i) {
            char x = a[i], y = b[i];
            if (x >= 'A' && x <= 'Z')
                x = static_cast<char>(x - 'A' + 'a');
            if (y >= 'A' && y <= 'Z')
                y = static_cast<char>(y - 'A' + 'a');
            if (x != y)
                return false;
        }
        return true;
    };
    if (suffix.front() == '.')
        return host.size() > suffix.size() && ieq(host.substr(host.size() - suffix.size()), suffix);
    if (ieq(host, suffix))
        return true;
    return host.size() > suffix.size() + 1 && host[host.size() - suffix.size() - 1] == '.' &&
           ieq(host.substr(host.size() - suffix.size()), suffix);
}

provider_table::provider_table(std::vector<provider_spec> providers) : _p(std::move(providers)) {}

int provider_table::match_domain(std::string_view domain) const noexcept {
    for (std::size_t i = 0; i < _p.size(); ++i) {
        for (const auto& s : _p[i].domain_suffix) {
            if (suffix_matches(domain, s))
                return static_cast<int>(i);
        }
    }
    return -1;
}

int provider_table::match_mx(std::span<const std::string> hosts) const noexcept {
    if (hosts.empty())
        return -1;
    for (std::size_t i = 0; i < _p.size(); ++i) {
        if (_p[i].mx_suffix.empty())
            continue;
        const bool all = std::all_of(hosts.begin(), hosts.end(), [&](const std::string& h) {
            return std::any_of(_p[i].mx_suffix.begin(), _p[i].mx_suffix.end(),
                               [&](const std::string& s) { return suffix_matches(h, s); });
        });
        if (all)
            return static_cast<int>(i);
    }
    return -1;
}

double returning_value(double normal, double override_value, steady_time start,
                       std::chrono::nanoseconds duration, steady_time now) noexcept {
    if (override_value <= 0.0 || now < start)
        return normal;
    const auto end = start + std::chrono::duration_cast<steady_time::duration>(duration);
    if (now < end)
        return override_value;
    const auto quarter = std::max<std::int64_t>(1, duration.count() / 4);
    const std::int64_t k = (to_ns(now) - to_ns(end)) / quarter + 1;
    if (k >= 62)
        return normal;
    const double v = override_value * std::ldexp(1.0, static_cast<int>(k));
    if (normal <= 0.0)
        return k > 4 ? normal : v;  // unlimited: back after four doublings
    return v >= normal ? normal : v;
}

// --- local_limiter ------------------------------------------------------------------------

struct local_limiter::cell {
    gcra_cell messages;
    gcra_cell connects;
    std::atomic<std::uint32_t> conns{0};
    std::atomic<std::int64_t> suspended{std::numeric_limits<std::int64_t>::min()};
    std::atomic<int> suspend_rule{-1};
    // A `set`: written rate, connections, duration, then start with release; read start first.
    std::atomic<std::int64_t> set_start{std::numeric_limits<std::int64_t>::min()};
    std::atomic<std::int64_t> set_duration{0};
    std::atomic<std::uint64_t> set_rate_bits{0};
    std::atomic<std::uint32_t> set_conns{0};
    std::atomic<int> set_rule{-1};
};

struct local_limiter::source_cell {
    std::uint32_t limit = 0;
    std::atomic<std::uint32_t> conns{0};
    std::atomic<std::int64_t> suspended{std::numeric_limits<std::int64_t>::min()};
};

local_limiter::local_limiter(const provider_table& providers, std::size_t domain_scopes,
                             std::vector<std::uint32_t> source_limits)
    : _providers(providers),
      _scopes(providers.size() + domain_scopes),
      _slots(source_limits.size() + 1),
      _cells(new cell[std::max<std::size_t>(1, _scopes * _slots)]),
      _sources(new source_cell[_slots]) {
    for (std::size_t i = 0; i < source_limits.size(); ++i)
        _sources[i + 1].limit = source_limits[i];
}

local_limiter::~local_limiter() = default;

local_limiter::cell* local_limiter::at(int scope, unsigned slot) const noexcept {
    if (scope < 0 || static_cast<std::size_t>(scope) >= _scopes || slot >= _slots)
        return nullptr;
    return &_cells[static_cast<std::size_t>(scope) * _slots + slot];
}

namespace {
struct set_view {
    bool active = false;
    steady_time start{};
    std::chrono::nanoseconds duration{0};
    double rate = 0.0;
    std::uint32_t conns = 0;
};
template <typename Cell>
set_view read_set(const Cell& c) {
    set_view v;
    const std::int64_t start = c.set_start.load(std::memory_order_acquire);
    if (start == std::numeric_limits<std::int64_t>::min())
        return v;
    v.active = true;
    v.start = from_ns(start);
    v.duration = std::chrono::nanoseconds(c.set_duration.load(std::memory_order_relaxed));
    v.rate = std::bit_cast<double>(c.set_rate_bits.load(std::memory_order_relaxed));
    v.conns = c.set_conns.load(std::memory_order_relaxed);
    return v;
}
}  // namespace

double local_limiter::message_rate(int provider, const cell& c, steady_time now) const noexcept {
    const double normal = provider >= 0 && static_cast<std::size_t>(provider) < _providers.size()
                              ? _providers[static_cast<std::size_t>(provider)].message_rate
                              : 0.0;
    const set_view s = read_set(c);
    if (!s.active || s.rate <= 0.0)
        return normal;
    return returning_value(normal, s.rate, s.start, s.duration, now);
}

double local_limiter::message_rate(int scope, unsigned slot, steady_time now) const noexcept {
    const cell* c = at(scope, slot);
    return c == nullptr ? 0.0 : message_rate(scope, *c, now);
}

std::uint32_t local_limiter::message_burst(int scope) const noexcept {
    return scope >= 0 && static_cast<std::size_t>(scope) < _providers.size()
               ? _providers[static_cast<std::size_t>(scope)].message_burst
               : 1;
}

double local_limiter::connection_rate(int provider) const noexcept {
    return provider >= 0 && static_cast<std::size_t>(provider) < _providers.size()
               ? _providers[static_cast<std::size_t>(provider)].connection_rate
               : 0.0;
}

std::uint32_t local_limiter::max_connections(int provider, unsigned slot, steady_time now) const {
    const cell* c = at(provider, slot);
    if (c == nullptr)
        return 0;
    const std::uint32_t normal =
        static_cast<std::size_t>(provider) < _providers.size()
            ? _providers[static_cast<std::size_t>(provider)].max_connections
            : 0;
    const set_view s = read_set(*c);
    if (!s.active || s.conns == 0)
        return normal;
    const double v = returning_value(normal, s.conns, s.start, s.duration, now);
    return v <= 0.0 ? 0 : static_cast<std::uint32_t>(std::min(v, 1e9));
}

namespace {
bool try_inc(std::atomic<std::uint32_t>& n, std::uint32_t limit) {
    std::uint32_t v = n.load(std::memory_order_relaxed);
    do {
        if (limit != 0 && v >= limit)
            return false;
    } while (
        !n.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_relaxed));
    return true;
}
void dec(std::atomic<std::uint32_t>& n) {
    if (n.fetch_sub(1, std::memory_order_acq_rel) == 0)
        core::invariant_broken("shaping: connection slot released twice");
}
}  // namespace

take_result local_limiter::acquire_connection(int provider, unsigned slot, steady_time now) {
    if (slot >= _slots)
        core::invariant_broken("shaping: unknown source slot");
    source_cell& src = _sources[slot];
    if (!try_inc(src.conns, src.limit))
        return {false, now + std::chrono::milliseconds(50)};
    cell* c = at(provider, slot);
    if (c == nullptr)
        return {true, now};
    const std::uint32_t limit = max_connections(provider, slot, now);
    if (!try_inc(c->conns, limit)) {
        dec(src.conns);
        return {false, now + std::chrono::milliseconds(50)};
    }
    const double crate = static_cast<std::size_t>(provider) < _providers.size()
                             ? _providers[static_cast<std::size_t>(provider)].connection_rate
                             : 0.0;
    if (crate > 0.0) {
        auto t = c->connects.take(now, interval_ns(crate), 1);
        if (!t.ok) {
            dec(c->conns);
            dec(src.conns);
            return t;
        }
    }
    return {true, now};
}

void local_limiter::attach_provider(int provider, unsigned slot) {
    if (cell* c = at(provider, slot))
        c->conns.fetch_add(1, std::memory_order_acq_rel);
}

void local_limiter::release_connection(int provider, unsigned slot) {
    if (slot >= _slots)
        core::invariant_broken("shaping: unknown source slot");
    if (cell* c = at(provider, slot))
        dec(c->conns);
    dec(_sources[slot].conns);
}

take_result local_limiter::take_message(int provider, unsigned slot, steady_time now) {
    cell* c = at(provider, slot);
    if (c == nullptr)
        return {true, now};
    const double rate = message_rate(provider, *c, now);
    if (rate <= 0.0)
        return {true, now};
    const bool is_provider = static_cast<std::size_t>(provider) < _providers.size();
    const std::uint32_t burst =
        is_provider ? _providers[static_cast<std::size_t>(provider)].message_burst : 1;
    return c->messages.take(now, interval_ns(rate), burst);
}

steady_time local_limiter::suspended_until(int scope, unsigned slot) const {
    const cell* c = at(scope, slot);
    return c == nullptr ? steady_time{} : from_ns(c->suspended.load(std::memory_order_acquire));
}

void local_limiter::suspend(int scope, unsigned slot, steady_time until, int rule) {
    cell* c = at(scope, slot);
    if (c == nullptr)
        return;
    c->suspend_rule.store(rule, std::memory_order_relaxed);
    std::int64_t cur = c->suspended.load(std::memory_order_relaxed);
    const std::int64_t want = to_ns(until);
    while (cur < want && !c->suspended.compare_exchange_weak(cur, want, std::memory_order_acq_rel,
                                                             std::memory_order_relaxed)) {
    }
}

void local_limiter::set_limits(int scope, unsigned slot, const rule_spec& r, int rule,
                               steady_time now) {
    cell* c = at(scope, slot);
    if (c == nullptr)
        return;
    c->set_duration.store(r.duration.count(), std::memory_order_relaxed);
    c->set_rate_bits.store(std::bit_cast<std::uint64_t>(r.set_rate), std::memory_order_relaxed);
    c->set_conns.store(r.set_connections, std::memory_order_relaxed);
    c->set_rule.store(rule, std::memory_order_relaxed);
    c->set_start.store(to_ns(now), std::memory_order_release);
}

void local_limiter::lift(int scope, unsigned slot) {
    cell* c = at(scope, slot);
    if (c == nullptr)
        return;
    c->suspended.store(std::numeric_limits<std::int64_t>::min(), std::memory_order_release);
    c->set_start.store(std::numeric_limits<std::int64_t>::min(), std::memory_order_release);
}

bool local_limiter::effect_active(int scope, unsigned slot, int rule, steady_time now) const {
    const cell* c = at(scope, slot);
    if (c == nullptr)
        return false;
    if (c->suspend_rule.load(std::memory_order_relaxed) == rule &&
        c->suspended.load(std::memory_order_acquire) > to_ns(now))
        return true;
    if (c->set_rule.load(std::memory_order_relaxed) == rule) {
        const set_view s = read_set(*c);
        // Until it is back to normal (the return counts as the rule's effect too).
        if (s.active && now < s.start + std::chrono::duration_cast<steady_time::duration>(
                                            s.duration * 2 + std::chrono::seconds(1)))
            return true;
    }
    return false;
}

void local_limiter::suspend_source(unsigned slot, steady_time until) {
    if (slot >= _slots)
        return;
    _sources[slot].suspended.store(to_ns(until), std::memory_order_release);
}

steady_time local_limiter::source_suspended_until(unsigned slot) const {
    if (slot >= _slots)
        return steady_time{};
    return from_ns(_sources[slot].suspended.load(std::memory_order_acquire));
}

std::uint32_t local_limiter::connections(int provider, unsigned slot) const {
    const cell* c = at(provider, slot);
    return c == nullptr ? _sources[slot].conns.load() : c->conns.load();
}

// --- shaping_rules ----------------------------------------------------------------------

// The last `n` match times of one rule from one source: a ring of atomics written at
// fetch_add positions; the trigger fires when the match n-1 places back is within the window.
struct shaping_rules::ring {
    std::atomic<std::uint64_t> next{0};
    std::uint32_t n = 1;
    std::unique_ptr<std::atomic<std::int64_t>[]> times;
};

std::optional<shaping_rules> shaping_rules::build(std::vector<rule_spec> rules,
                                                  std::size_t providers, std::size_t slots,
                                                  std::string& why) {
    shaping_rules out;
    std::vector<std::string> patterns;
    for (const auto& r : rules)
        patterns.push_back(r.match);
    auto set = core::regex_set::compile(patterns, why);
    if (!set)
        return std::nullopt;
    out._set.emplace(std::move(*set));
    out._providers = providers;
    out._slots = std::max<std::size_t>(1, slots);
    for (const auto& r : rules) {
        if (r.trigger_count == 0 || r.trigger_count > max_trigger_count) {
            why = r.where + ": trigger count out of range";
            return std::nullopt;
        }
        if (!r.domain.empty() && !out._domains.count(r.domain)) {
            const int scope = static_cast<int>(providers + out._domains.size());
            out._domains.emplace(r.domain, scope);
        }
    }
    out._rings =
        std::shared_ptr<ring[]>(new ring[std::max<std::size_t>(1, rules.size() * out._slots)]);
    for (std::size_t i = 0; i < rules.size(); ++i) {
        for (std::size_t s = 0; s < out._slots; ++s) {
            ring& g = out._rings[i * out._slots + s];
            g.n = rules[i].trigger_count;
            g.times.reset(new std::atomic<std::int64_t>[g.n]);
            for (std::uint32_t k = 0; k < g.n; ++k)
                g.times[k].store(std::numeric_limits<std::int64_t>::min() / 2);
        }
    }
    out._rules = std::move(rules);
    return out;
}

int shaping_rules::domain_scope(std::string_view domain) const {
    auto it = _domains.find(std::string(domain));
    return it == _domains.end() ? -1 : it->second;
}

bool shaping_rules::count(std::size_t rule, unsigned slot, steady_time now) const {
    const rule_spec& r = _rules[rule];
    if (r.trigger_window.count() == 0 || r.trigger_count <= 1)
        return true;
    ring& g = _rings[rule * _slots + std::min<std::size_t>(slot, _slots - 1)];
    const std::uint64_t i = g.next.fetch_add(1, std::memory_order_acq_rel);
    const std::int64_t t = to_ns(now);
    g.times[i % g.n].store(t, std::memory_order_release);
    if (i + 1 < g.n)
        return false;
    // The oldest of the last n matches (ours included).
    const std::int64_t oldest = g.times[(i + 1) % g.n].load(std::memory_order_acquire);
    if (t - oldest > r.trigger_window.count())
        return false;
    // Fired: start counting afresh, so the same matches do not fire it twice.
    for (std::uint32_t k = 0; k < g.n; ++k)
        g.times[k].store(std::numeric_limits<std::int64_t>::min() / 2, std::memory_order_relaxed);
    return true;
}

void shaping_rules::on_reply(std::string_view line, int provider, int dscope, unsigned slot,
                             steady_time now, limiter& lim, std::vector<rule_effect>& out,
                             std::vector<int>& scratch) const {
    if (!_set || _rules.empty())
        return;
    _set->matches(line, scratch);
    for (int idx : scratch) {
        const rule_spec& r = _rules[static_cast<std::size_t>(idx)];
        int scope = -1;
        if (r.any) {
            scope = provider >= 0 ? provider : dscope;
        } else if (r.provider >= 0) {
            if (r.provider != provider)
                continue;
            scope = provider;
        } else {
            const int s = domain_scope(r.domain);
            if (s < 0 || s != dscope)
                continue;
            scope = s;
        }
        if (r.action != rule_action::bounce && scope >= 0 &&
            lim.effect_active(scope, slot, idx, now))
            continue;  // the rule's own effect never triggers it again
        if (!count(static_cast<std::size_t>(idx), slot, now))
            continue;
        rule_effect e;
        e.rule = idx;
        e.action = r.action;
        e.scope = scope;
        e.until = now + std::chrono::duration_cast<steady_time::duration>(r.duration);
        if (r.action == rule_action::suspend && scope >= 0)
            lim.suspend(scope, slot, e.until, idx);
        else if (r.action == rule_action::set && scope >= 0)
            lim.set_limits(scope, slot, r, idx, now);
        out.push_back(e);
    }
}

namespace {

// The limiter scope of a stored entry (-1: none it knows) and its slots: one source's, or
// every slot for an entry of every source.
int scope_of(const shaping_context& sh, const suspension& s) {
    if (s.scope.kind == suspension_kind::domain)
        return sh.rules.domain_scope(s.scope.name);
    for (std::size_t i = 0; i < sh.provider_names.size(); ++i) {
        if (sh.provider_names[i] == s.scope.name)
            return static_cast<int>(i);
    }
    return -1;
}

template <typename F>
void for_each_slot(const shaping_context& sh, const suspension& s, F&& f) {
    if (s.scope.source.empty()) {
        for (unsigned slot = 0; slot <= sh.sources; ++slot)
            f(slot);
        return;
    }
    for (std::size_t i = 0; i < sh.source_names.size(); ++i) {
        if (sh.source_names[i] == s.scope.source)
            f(static_cast<unsigned>(i + 1));
    }
}

}  // namespace

std::size_t apply_suspensions(const shaping_context& sh, const suspensions& store,
                              std::int64_t now_unix, steady_time now) {
    std::size_t applied = 0;
    for (const suspension& s : store.list()) {
        if (s.until_unix <= now_unix)
            continue;
        const int scope = scope_of(sh, s);
        if (scope < 0)
            continue;
        if (s.effect == suspension_effect::set) {
            rule_spec r;
            r.action = rule_action::set;
            r.duration = std::chrono::seconds(s.until_unix - s.since_unix);
            r.set_rate = s.set_rate;
            r.set_connections = s.set_connections;
            const steady_time start = now - std::chrono::seconds(now_unix - s.since_unix);
            for_each_slot(sh, s,
                          [&](unsigned slot) { sh.limits->set_limits(scope, slot, r, -1, start); });
        } else {
            const steady_time until = now + std::chrono::seconds(s.until_unix - now_unix);
            for_each_slot(sh, s,
                          [&](unsigned slot) { sh.limits->suspend(scope, slot, until, -1); });
        }
        ++applied;
    }
    return applied;
}

std::size_t lift_suspensions(const shaping_context& sh, std::span<const suspension> lifted,
                             limiter* through) {
    limiter& l = through != nullptr ? *through : *sh.limits;
    std::size_t n = 0;
    for (const suspension& s : lifted) {
        const int scope = scope_of(sh, s);
        if (scope < 0)
            continue;
        for_each_slot(sh, s, [&](unsigned slot) { l.lift(scope, slot); });
        ++n;
    }
    return n;
}

}  // namespace ringmail::queue
