#include "ringmail/queue/scheduler.h"

#include "ringmail/core/panic.h"
#include "ringmail/queue/errc.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>

namespace ringmail::queue {

namespace {
std::uint64_t lease_key(unsigned lender, std::uint32_t lease) {
    return (std::uint64_t{lender} << 32) | lease;
}
}  // namespace

struct scheduler::dest {
    dest(std::uint64_t id_, std::string key, const destination_policy& p, steady_time now)
        : id(id_), q(std::move(key), p, now) {}

    std::uint64_t id;
    destination_queue q;
    std::unique_ptr<destination_slots> own_slots;  // owner: the global counter lives here
    destination_slots* slots = nullptr;            // owner: own_slots; borrower: the lender's
    bool borrowed = false;
    bool local = false;  // placement::local: this shard's own queue, never lent
    unsigned lender = 0;
    std::uint32_t lease = 0;
    std::uint32_t awaited = 0;     // borrower: lent jobs announced by the grant, not yet here
    std::uint32_t conn_cap = 0;    // this shard's cap for the destination
    std::uint32_t leases_out = 0;  // owner: leases not yet returned
    std::uint32_t connecting = 0;
    std::uint32_t established = 0;  // opened and not yet closed (idle, busy or closing)
    std::vector<std::uint64_t> idle_conns;
    bool listed = false;
    std::list<dest*>::iterator pos;
    std::optional<steady_time> armed;            // earliest deferred-timer entry pushed for it
    std::optional<steady_time> suspended_until;  // an operator's or shaping's suspension
    std::string last_reply;                      // of the last failed attempt
    // Shaping: the destination's provider (-1 none/unknown), rule domain scope, egress pool,
    // and its own suspensions per source slot ("*" rules on a domain of no provider).
    int provider = -1;
    int dscope = -1;
    int pool = -1;
    std::vector<steady_time> suspended;
};

struct scheduler::conn {
    dest* d = nullptr;
    conn_state st = conn_state::connecting;
    std::uint32_t messages = 0;
    std::uint64_t job = 0;
    std::uint64_t next = 0;  // a job pipelined behind `job` (pipeline_job), 0 = none
    std::uint64_t epoch = 0;
    unsigned slot = 0;    // shaping: egress source + 1, 0 = none
    int provider = -1;    // shaping: the provider its slots were taken for
    bool shaped = false;  // holds limiter slots
    bool broken = false;  // a job failed on it: it closes once every job is reported
};

scheduler::scheduler(scheduler_config config) : _cfg(std::move(config)), _rng(_cfg.seed) {
    if (_cfg.shards == 0 || _cfg.shard >= _cfg.shards)
        core::invariant_broken("scheduler: bad shard numbers");
    if (!_cfg.retry.validate())
        core::invariant_broken("scheduler: retry policy not validated");
    if (_cfg.gauges && _cfg.gauges->shards() != _cfg.shards)
        core::invariant_broken("scheduler: spare gauges sized for another shard count");
    if (_cfg.shaping) {
        if (!_cfg.limits)
            _cfg.limits = _cfg.shaping->limits.get();
        if (!_cfg.limits)
            core::invariant_broken("scheduler: shaping without a limiter");
        for (const auto& p : _cfg.shaping->pools)
            _wrr.emplace_back(p.weights);
    }
}

void scheduler::shape_dest(dest& d, int provider_hint) {
    const shaping_context* sh = _cfg.shaping;
    if (!sh)
        return;
    d.provider = provider_hint >= 0 ? provider_hint : sh->providers.match_domain(d.q.key());
    if (d.provider < 0) {
        auto it = _learned.find(d.q.key());
        if (it != _learned.end())
            d.provider = it->second;
    }
    d.dscope = sh->rules.domain_scope(d.q.key());
    d.pool = sh->default_pool;
    if (d.provider >= 0 && sh->providers[static_cast<std::size_t>(d.provider)].pool >= 0)
        d.pool = sh->providers[static_cast<std::size_t>(d.provider)].pool;
}

std::uint32_t scheduler::messages_per_conn(const dest& d) const {
    const std::uint32_t own = d.q.policy().max_messages_per_connection;
    if (!_cfg.shaping || d.provider < 0)
        return own;
    const std::uint32_t p =
        _cfg.shaping->providers[static_cast<std::size_t>(d.provider)].max_messages_per_connection;
    return p != 0 ? p : own;
}

// The latest end of any suspension that keeps d from using `slot` (<= now: none).
steady_time scheduler::blocked_until(const dest& d, unsigned slot) const {
    steady_time t = _cfg.limits->source_suspended_until(slot);
    if (d.provider >= 0)
        t = std::max(t, _cfg.limits->suspended_until(d.provider, slot));
    if (d.dscope >= 0)
        t = std::max(t, _cfg.limits->suspended_until(d.dscope, slot));
    if (slot < d.suspended.size())
        t = std::max(t, d.suspended[slot]);
    return t;
}

bool scheduler::may_send(dest& d, std::uint64_t cid, steady_time now,
                         std::optional<steady_time>& when) {
    auto earliest = [&](steady_time t) {
        if (!when || t < *when)
            when = t;
    };
    const conn& c = find_conn(cid);
    if (_cfg.shaping) {
        const steady_time b = blocked_until(d, c.slot);
        if (b > now) {
            earliest(b);
            return false;
        }
    }
    // The destination's own bucket is only looked at first, so a refused shared token wastes
    // nothing of it.
    const steady_time own = d.q.bucket().next_available(now);
    if (own > now) {
        earliest(own);
        return false;
    }
    if (_cfg.shaping) {
        limiter& lim = *_cfg.limits;
        if (d.provider >= 0) {
            auto t = lim.take_message(d.provider, c.slot, now);
            if (!t.ok) {
                earliest(t.at);
                return false;
            }
        }
        if (d.dscope >= 0) {
            auto t = lim.take_message(d.dscope, c.slot, now);
            if (!t.ok) {
                earliest(t.at);
                return false;
            }
        }
    }
    return d.q.bucket().try_take(now);
}

std::optional<int> scheduler::pick_source(dest& d, steady_time now,
                                          std::optional<steady_time>& when) {
    auto earliest = [&](steady_time t) {
        if (!when || t < *when)
            when = t;
    };
    const shaping_context& sh = *_cfg.shaping;
    limiter& lim = *_cfg.limits;
    auto try_slot = [&](unsigned slot) -> bool {
        const steady_time b = blocked_until(d, slot);
        if (b > now) {
            earliest(b);
            return false;
        }
        auto t = lim.acquire_connection(d.provider, slot, now);
        if (!t.ok) {
            earliest(std::max(t.at, now + std::chrono::milliseconds(1)));
            return false;
        }
        return true;
    };
    if (d.pool < 0 || static_cast<std::size_t>(d.pool) >= sh.pools.size())
        return try_slot(0) ? std::optional<int>(-1) : std::nullopt;
    const egress_pool_spec& pool = sh.pools[static_cast<std::size_t>(d.pool)];
    smooth_wrr& wrr = _wrr[static_cast<std::size_t>(d.pool)];
    std::uint64_t refused = 0;  // members tried and refused in this decision
    for (std::size_t round = 0; round < pool.sources.size(); ++round) {
        const int m = wrr.pick([&](std::size_t i) {
            if (i < 64 && (refused >> i & 1))
                return false;
            const unsigned slot = pool.sources[i] + 1;
            if (blocked_until(d, slot) > now)
                return false;
            return true;
        });
        if (m < 0)
            break;
        const unsigned source = pool.sources[static_cast<std::size_t>(m)];
        if (try_slot(source + 1))
            return static_cast<int>(source);
        if (m < 64)
            refused |= std::uint64_t{1} << m;
    }
    // Nothing usable: wake when the first suspension of a member ends (or poll the slots).
    for (unsigned source : pool.sources) {
        const steady_time b = blocked_until(d, source + 1);
        if (b > now)
            earliest(b);
    }
    earliest(now + _cfg.slot_poll);
    return std::nullopt;
}

scheduler::~scheduler() = default;

scheduler::dest& scheduler::owned_dest(std::string_view key, steady_time now) {
    auto it = _owned.find(std::string(key));
    if (it != _owned.end())
        return *it->second;
    const destination_policy& p = _cfg.policies.lookup(key);
    auto d = std::make_unique<dest>(_next_dest++, std::string(key), p, now);
    d->own_slots = std::make_unique<destination_slots>(p.max_connections);
    d->slots = d->own_slots.get();
    d->conn_cap = p.max_connections;
    dest& ref = *d;
    shape_dest(ref, -1);
    _by_id.emplace(ref.id, &ref);
    _owned.emplace(ref.q.key(), std::move(d));
    apply_suspension(ref);
    return ref;
}

void scheduler::apply_suspension(dest& d) {
    d.suspended_until.reset();
    if (!_suspensions || _suspensions->empty())
        return;
    const std::int64_t now_unix =
        _unix_offset +
        std::chrono::duration_cast<std::chrono::seconds>(_susp_now.time_since_epoch()).count();
    if (const suspension* s =
            _suspensions->find(suspension_kind::domain, d.q.key(), "", now_unix)) {
        d.suspended_until = _susp_now + std::chrono::seconds(s->until_unix - now_unix);
    }
    // A "*" rule's suspension of one source on a domain no rule names (kept on the queue
    // itself, see suspend_destination), as the store has it after a restart.
    if (_cfg.shaping == nullptr || d.dscope >= 0)
        return;
    const auto& names = _cfg.shaping->source_names;
    for (std::size_t i = 0; i < names.size(); ++i) {
        const suspension* s =
            _suspensions->find(suspension_kind::domain, d.q.key(), names[i], now_unix);
        if (s == nullptr || s->scope.source.empty())
            continue;
        const std::size_t slot = i + 1;
        if (d.suspended.size() <= slot)
            d.suspended.resize(slot + 1);
        d.suspended[slot] =
            std::max(d.suspended[slot], _susp_now + std::chrono::seconds(s->until_unix - now_unix));
    }
}

void scheduler::set_suspensions(std::shared_ptr<const suspensions> s, steady_time now,
                                std::int64_t now_unix) {
    _oncore.check();
    _suspensions = std::move(s);
    _susp_now = now;
    _unix_offset =
        now_unix - std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    for (auto& [id, d] : _by_id) {
        (void)id;
        apply_suspension(*d);
        if (d->q.counts().ready > 0)
            note_runnable(*d);
    }
}

std::size_t scheduler::flush(std::string_view key, steady_time now) {
    _oncore.check();
    std::size_t n = 0;
    for (auto& [id, d] : _by_id) {
        (void)id;
        if (!key.empty() && d->q.key() != key)
            continue;
        const std::size_t k = d->q.promote_all();
        if (k > 0) {
            _ready += k;
            n += k;
            note_runnable(*d);
        }
    }
    (void)now;
    return n;
}

std::size_t scheduler::bounce(std::string_view key, std::uint64_t queue_id,
                              const attempt_reply& why, steady_time now, std::int64_t now_unix) {
    _oncore.check();
    std::size_t rcpts = 0;
    std::vector<dest*> touched;
    for (auto& [id, d] : _by_id) {
        (void)id;
        if (!key.empty() && d->q.key() != key)
            continue;
        std::size_t ready_taken = 0;
        auto jobs = d->q.take_if(
            [&](const delivery_job& j) { return !key.empty() || j.queue_id == queue_id; },
            ready_taken);
        if (jobs.empty())
            continue;
        _ready -= ready_taken;
        for (auto& j : jobs) {
            std::vector<rcpt_result> results;
            results.reserve(j.rcpts.size());
            for (auto r : j.rcpts)
                results.push_back({r, rcpt_status::failed, &why, false});
            rcpts += j.rcpts.size();
            finish_job(*d, std::move(j), results, &why, now, now_unix);
        }
        touched.push_back(d);
    }
    for (dest* d : touched)
        maybe_retire(*d);
    return rcpts;
}

std::vector<destination_info> scheduler::destinations(bool ages) const {
    _oncore.check();
    std::vector<destination_info> out;
    out.reserve(_by_id.size());
    for (const auto& [id, d] : _by_id) {
        (void)id;
        destination_info i;
        i.key = d->q.key();
        i.borrowed = d->borrowed;
        const destination_counts c = d->q.counts();
        i.ready = c.ready;
        i.deferred = c.deferred;
        i.in_flight = c.in_flight;
        i.connections = d->connecting + d->established;
        i.next_attempt = d->q.next_deferred();
        i.recipients = d->q.queued_recipients();
        if (ages) {
            d->q.for_each_job([&](const delivery_job& j) {
                if (i.oldest_arrival_unix == 0 || j.arrival_unix < i.oldest_arrival_unix)
                    i.oldest_arrival_unix = j.arrival_unix;
            });
        }
        i.last_reply = d->last_reply;
        out.push_back(std::move(i));
    }
    return out;
}

std::vector<std::pair<std::string, delivery_job>> scheduler::jobs_of(std::uint64_t queue_id) const {
    _oncore.check();
    std::vector<std::pair<std::string, delivery_job>> out;
    for (const auto& entry : _by_id) {
        const auto& d = entry.second;  // not a structured binding: clang 14 cannot capture one
        d->q.for_each_job([&](const delivery_job& j) {
            if (j.queue_id == queue_id)
                out.emplace_back(d->q.key(), j);
        });
    }
    for (const auto& [id, r] : _running) {
        (void)id;
        if (r.job.queue_id == queue_id)
            out.emplace_back(r.d->q.key(), r.job);
    }
    return out;
}

void scheduler::note_runnable(dest& d) {
    if (d.listed)
        return;
    d.listed = true;
    d.pos = _runnable.insert(_runnable.end(), &d);
}

void scheduler::arm_deferred(dest& d) {
    auto next = d.q.next_deferred();
    if (!next || (d.armed && *d.armed <= *next))
        return;
    d.armed = *next;
    _timers.push_back({*next, d.id});
    std::push_heap(_timers.begin(), _timers.end(), std::greater<>{});
}

void scheduler::enqueue(dest& d, delivery_job job, steady_time now) {
    std::size_t before = d.q.counts().ready;
    d.q.push(std::move(job), now);
    ++_jobs;
    if (d.q.counts().ready > before) {
        ++_ready;
        note_runnable(d);
    } else {
        arm_deferred(d);
    }
}

void scheduler::push_out(unsigned to, shard_message msg) {
    _outbox.push_back({to, std::move(msg)});
}

result<void> scheduler::submit(std::string_view domain, delivery_job job, steady_time now,
                               placement where) {
    _oncore.check();
    if (_jobs >= _cfg.max_jobs || _outbox.size() >= _cfg.max_outbox)
        return errc::queue_full;
    if (job.rcpts.empty())
        return errc::no_recipients;
    std::string key = destination_key(domain);
    job.origin = static_cast<std::uint16_t>(_cfg.shard);
    unsigned owner = where == placement::local ? _cfg.shard : owner_shard(key, _cfg.shards);
    if (owner == _cfg.shard) {
        dest& d = owned_dest(key, now);
        if (where == placement::local)
            d.local = true;
        enqueue(d, std::move(job), now);
    } else {
        push_out(owner, job_handoff{std::move(key), std::move(job), 0});
    }
    return {};
}

std::optional<job_notice> scheduler::receive(unsigned from, shard_message&& msg, steady_time now) {
    _oncore.check();
    if (auto* h = std::get_if<job_handoff>(&msg)) {
        if (h->lease == 0) {
            if (owner_shard(h->domain, _cfg.shards) != _cfg.shard)
                core::invariant_broken(
                    "scheduler: job handed to a shard that does not own its destination");
            enqueue(owned_dest(h->domain, now), std::move(h->job), now);
        } else {
            auto it = _borrowed.find(lease_key(from, h->lease));
            if (it == _borrowed.end())
                core::invariant_broken("scheduler: lent job for an unknown lease");
            if (it->second->awaited == 0)
                core::invariant_broken("scheduler: more lent jobs than the lease announced");
            --it->second->awaited;
            enqueue(*it->second, std::move(h->job), now);
        }
        return std::nullopt;
    }
    if (auto* g = std::get_if<lease_grant>(&msg)) {
        destination_policy p = g->policy;
        p.rate = 0.0;
        auto d = std::make_unique<dest>(_next_dest++, std::move(g->domain), p, now);
        d->borrowed = true;
        d->lender = from;
        d->lease = g->lease;
        d->awaited = g->jobs;
        d->slots = g->slots;
        d->conn_cap = std::max<std::uint32_t>(1, g->max_connections);
        shape_dest(*d, g->provider);
        if (!d->slots)
            core::invariant_broken("scheduler: lease without a slot counter");
        _by_id.emplace(d->id, d.get());
        apply_suspension(*d);
        if (!_borrowed.emplace(lease_key(from, g->lease), std::move(d)).second)
            core::invariant_broken("scheduler: lease granted twice");
        return std::nullopt;
    }
    if (auto* r = std::get_if<lease_return>(&msg)) {
        auto it = _owned.find(r->domain);
        if (it == _owned.end() || it->second->leases_out == 0)
            core::invariant_broken(
                "scheduler: lease returned for a destination without leases out");
        --it->second->leases_out;
        --_leases_out;
        maybe_retire(*it->second);
        return std::nullopt;
    }
    return std::move(std::get<job_notice>(msg));
}

std::optional<action> scheduler::expire_idle(steady_time now) {
    while (!_idle.empty()) {
        const idle_entry e = _idle.front();
        auto it = _conns.find(e.conn);
        if (it == _conns.end() || it->second.st != conn_state::idle ||
            it->second.epoch != e.epoch) {
            _idle.pop_front();
            continue;
        }
        if (e.since + _cfg.idle_timeout > now)
            break;
        _idle.pop_front();
        conn& c = it->second;
        c.st = conn_state::closing;
        std::erase(c.d->idle_conns, e.conn);
        return close_connection{e.conn};
    }
    return std::nullopt;
}

action scheduler::next_action(steady_time now) {
    _oncore.check();
    while (!_to_close.empty()) {
        std::uint64_t id = _to_close.front();
        _to_close.pop_front();
        auto it = _conns.find(id);
        if (it == _conns.end() || it->second.st != conn_state::idle)
            continue;
        it->second.st = conn_state::closing;
        std::erase(it->second.d->idle_conns, id);
        return close_connection{id};
    }
    if (auto a = expire_idle(now))
        return *a;

    while (!_timers.empty() && _timers.front().when <= now) {
        std::pop_heap(_timers.begin(), _timers.end(), std::greater<>{});
        std::uint64_t id = _timers.back().dest_id;
        _timers.pop_back();
        auto it = _by_id.find(id);
        if (it == _by_id.end())
            continue;
        dest& d = *it->second;
        std::size_t n = d.q.promote(now);
        _ready += n;
        if (n > 0)
            note_runnable(d);
        d.armed.reset();
        arm_deferred(d);
    }

    maybe_lend(now);
    publish_spare();

    std::optional<steady_time> soonest;
    auto consider = [&](steady_time t) {
        if (!soonest || t < *soonest)
            soonest = t;
    };
    for (std::size_t i = 0, n = _runnable.size(); i < n; ++i) {
        dest& d = *_runnable.front();
        _runnable.splice(_runnable.end(), _runnable, _runnable.begin());
        const destination_counts dc = d.q.counts();
        if (dc.ready == 0) {
            _runnable.erase(d.pos);
            d.listed = false;
            continue;
        }
        if (d.suspended_until) {
            if (now < *d.suspended_until) {
                consider(*d.suspended_until);
                continue;  // no new attempt; what runs finishes
            }
            d.suspended_until.reset();
        }
        if (_cfg.shaping && !d.idle_conns.empty()) {
            // Idle connections from a source the destination may not use now are closed (a
            // suspension lasts minutes to hours); their slots go to other sources.
            for (std::size_t k = 0; k < d.idle_conns.size();) {
                const std::uint64_t id = d.idle_conns[k];
                if (blocked_until(d, find_conn(id).slot) > now) {
                    _to_close.push_back(id);
                    d.idle_conns.erase(d.idle_conns.begin() + static_cast<long>(k));
                    continue;
                }
                ++k;
            }
        }
        if (!d.idle_conns.empty()) {
            std::optional<steady_time> when;
            if (may_send(d, d.idle_conns.back(), now, when)) {
                std::uint64_t cid = d.idle_conns.back();
                d.idle_conns.pop_back();
                conn& c = find_conn(cid);
                c.st = conn_state::busy;
                c.job = _next_job++;
                delivery_job job = *d.q.pop_ready();
                --_ready;
                d.q.job_started();
                _running.emplace(c.job, running{job, &d, cid});
                if (d.borrowed && d.q.counts().ready == 0 && d.q.counts().deferred == 0) {
                    // The lease drains: idle connections are not kept for jobs that will
                    // not come.
                    for (auto other : d.idle_conns)
                        _to_close.push_back(other);
                }
                return run_job{cid, c.job, std::move(job)};
            }
            if (when)
                consider(*when);
            continue;  // more connections would not beat the rate
        }
        if (dc.ready > d.connecting && d.q.below_connection_cap(d.conn_cap) &&
            _conns.size() < _cfg.max_total_connections) {
            int source = -1;
            if (_cfg.shaping) {
                std::optional<steady_time> when;
                auto picked = pick_source(d, now, when);
                if (!picked) {
                    if (when)
                        consider(*when);
                    continue;
                }
                source = *picked;
            }
            if (!d.slots->try_acquire()) {
                if (_cfg.shaping)
                    _cfg.limits->release_connection(d.provider, static_cast<unsigned>(source + 1));
                consider(now + _cfg.slot_poll);
                continue;
            }
            std::uint64_t cid = _next_conn++;
            conn c{&d, conn_state::connecting, 0, 0, 0, 0};
            c.slot = static_cast<unsigned>(source + 1);
            c.provider = d.provider;
            c.shaped = _cfg.shaping != nullptr;
            _conns.emplace(cid, c);
            ++d.connecting;
            d.q.connection_opening();
            return open_connection{cid, d.q.key(), d.q.policy().connect_timeout, source,
                                   d.provider};
        }
    }
    if (!_idle.empty())
        consider(_idle.front().since + _cfg.idle_timeout);
    if (!_timers.empty())
        consider(_timers.front().when);
    if (_cfg.gauges && _ready >= _cfg.spread_backlog)
        consider(_last_spread + _cfg.spread_interval);
    if (!_to_close.empty())
        return next_action(now);  // idle connections of a suspended source, found above
    return wait{soonest};
}

scheduler::conn& scheduler::find_conn(std::uint64_t id) {
    auto it = _conns.find(id);
    if (it == _conns.end())
        core::invariant_broken("scheduler: unknown connection id");
    return it->second;
}

const scheduler::conn& scheduler::find_conn(std::uint64_t id) const {
    auto it = _conns.find(id);
    if (it == _conns.end())
        core::invariant_broken("scheduler: unknown connection id");
    return it->second;
}

void scheduler::learn_provider(std::uint64_t id, int provider) {
    _oncore.check();
    if (!_cfg.shaping || provider < 0)
        return;
    conn& c = find_conn(id);
    dest& d = *c.d;
    if (d.provider < 0) {
        shape_dest(d, provider);
        if (_learned.size() >= 65536)
            _learned.clear();  // bounded; relearned at the next lookup
        _learned[d.q.key()] = provider;
    }
    if (c.shaped && c.provider < 0) {
        _cfg.limits->attach_provider(provider, c.slot);
        c.provider = provider;
    }
}

int scheduler::provider_of(std::uint64_t id) const {
    return find_conn(id).d->provider;
}

int scheduler::domain_scope_of(std::uint64_t id) const {
    return find_conn(id).d->dscope;
}

unsigned scheduler::slot_of(std::uint64_t id) const {
    return find_conn(id).slot;
}

void scheduler::suspend_destination(std::uint64_t id, steady_time until) {
    _oncore.check();
    conn& c = find_conn(id);
    dest& d = *c.d;
    if (d.suspended.size() <= c.slot)
        d.suspended.resize(c.slot + 1);
    d.suspended[c.slot] = std::max(d.suspended[c.slot], until);
}

bool scheduler::lift_destination(std::string_view key) {
    _oncore.check();
    bool found = false;
    for (auto& [id, d] : _by_id) {
        (void)id;
        if (d->q.key() != key)
            continue;
        found = true;
        d->suspended.clear();
        if (d->q.counts().ready > 0)
            note_runnable(*d);
    }
    return found;
}

void scheduler::connection_opened(std::uint64_t id, steady_time now) {
    _oncore.check();
    conn& c = find_conn(id);
    if (c.st != conn_state::connecting)
        core::invariant_broken(
            "scheduler: connection_opened on a connection that is not connecting");
    --c.d->connecting;
    ++c.d->established;
    c.st = conn_state::idle;
    ++c.epoch;
    dest& d = *c.d;
    const destination_counts dc = d.q.counts();
    if (d.borrowed && dc.ready == 0 && dc.deferred == 0) {
        _to_close.push_back(id);
        return;
    }
    d.idle_conns.push_back(id);
    _idle.push_back({now, id, c.epoch});
}

void scheduler::release_conn(std::unordered_map<std::uint64_t, conn>::iterator it) {
    dest& d = *it->second.d;
    if (it->second.shaped)
        _cfg.limits->release_connection(it->second.provider, it->second.slot);
    // Slot first: a borrower's last release must precede its lease_return.
    d.slots->release();
    d.q.connection_gone();
    _conns.erase(it);
    maybe_retire(d);
}

std::size_t scheduler::connection_failed(std::uint64_t id, const attempt_reply& why,
                                         steady_time now, std::int64_t now_unix) {
    _oncore.check();
    auto it = _conns.find(id);
    if (it == _conns.end() || it->second.st != conn_state::connecting)
        core::invariant_broken(
            "scheduler: connection_failed on a connection that is not connecting");
    dest& d = *it->second.d;
    --d.connecting;
    std::size_t deferred = 0;
    if (d.established == 0) {
        auto jobs = d.q.take_all_ready();
        _ready -= jobs.size();
        deferred = jobs.size();
        for (auto& j : jobs) {
            finish_job(d, std::move(j), {}, &why, now, now_unix);
        }
    }
    release_conn(it);
    return deferred;
}

void scheduler::connection_closed(std::uint64_t id, steady_time) {
    _oncore.check();
    auto it = _conns.find(id);
    if (it == _conns.end())
        core::invariant_broken("scheduler: connection_closed on an unknown connection");
    conn& c = it->second;
    dest& d = *c.d;
    switch (c.st) {
        case conn_state::busy:
            core::invariant_broken(
                "scheduler: connection_closed with a job running: report it first");
        case conn_state::connecting:
            --d.connecting;
            break;
        case conn_state::idle:
            std::erase(d.idle_conns, id);
            --d.established;
            break;
        case conn_state::closing:
            --d.established;
            break;
    }
    release_conn(it);
}

void scheduler::finish_job(dest& d, delivery_job job, std::span<const rcpt_result> results,
                           const attempt_reply* all, steady_time now, std::int64_t now_unix) {
    --_jobs;
    ++job.attempts;
    if (all != nullptr) {
        d.last_reply = all->to_string();
    } else {
        for (const auto& res : results) {
            if (res.status != rcpt_status::delivered && res.reply != nullptr) {
                d.last_reply = res.reply->to_string();
                break;
            }
        }
    }
    job_notice n;
    n.queue_id = job.queue_id;
    n.attempts = job.attempts;
    rcpt_list again;
    for (std::uint16_t r : job.rcpts) {
        rcpt_status st = rcpt_status::deferred;
        const attempt_reply* reply = all;
        bool relayed = false;
        for (const auto& res : results) {
            if (res.rcpt == r) {
                st = res.status;
                reply = res.reply;
                relayed = res.relayed_notice && st == rcpt_status::delivered;
                break;
            }
        }
        if (st == rcpt_status::expired)
            st = rcpt_status::deferred;  // expiry is the schedule's call
        n.status.push_back(st);
        n.rcpts.push_back(r);
        if (st == rcpt_status::deferred)
            again.push_back(r);
        if ((st != rcpt_status::delivered || relayed) && reply) {
            if (!n.detail)
                n.detail = std::make_unique<notice_detail>();
            n.detail->replies.emplace_back(r, *reply);
            if (relayed)
                n.detail->relayed.push_back(r);
        }
    }
    if (!again.empty()) {
        auto next = _cfg.retry.next_attempt(job.attempts, job.arrival_unix, now_unix, _rng);
        if (!next) {
            for (std::size_t i = 0; i < n.rcpts.size(); ++i) {
                if (n.status[i] == rcpt_status::deferred)
                    n.status[i] = rcpt_status::expired;
            }
        } else {
            n.next_attempt_unix = *next;
            job.rcpts = again;
            job.next_attempt = now + std::chrono::seconds(*next - now_unix);
            if (d.borrowed) {
                push_out(d.lender, job_handoff{d.q.key(), job, 0});
            } else {
                enqueue(d, job, now);
            }
        }
    }
    push_out(job.origin, std::move(n));
}

void scheduler::complete(std::uint64_t conn_id, std::uint64_t job_id,
                         std::span<const rcpt_result> results, steady_time now,
                         std::int64_t now_unix) {
    _oncore.check();
    auto rit = _running.find(job_id);
    if (rit == _running.end() || rit->second.conn != conn_id)
        core::invariant_broken("scheduler: complete on a job not running on that connection");
    conn& c = find_conn(conn_id);
    if (c.st != conn_state::busy || (c.job != job_id && c.next != job_id))
        core::invariant_broken("scheduler: complete on a connection not running that job");
    dest& d = *rit->second.d;
    delivery_job job = std::move(rit->second.job);
    _running.erase(rit);
    d.q.job_finished();
    ++c.messages;
    drop_job(c, job_id);
    finish_job(d, std::move(job), results, nullptr, now, now_unix);
    if (c.job != 0)
        return;  // the pipelined one still runs

    c.st = conn_state::idle;
    ++c.epoch;
    const destination_counts dc = d.q.counts();
    if (c.messages >= messages_per_conn(d) || (d.borrowed && dc.ready == 0 && dc.deferred == 0)) {
        _to_close.push_back(conn_id);
        return;
    }
    d.idle_conns.push_back(conn_id);
    _idle.push_back({now, conn_id, c.epoch});
}

void scheduler::job_failed(std::uint64_t conn_id, std::uint64_t job_id, const attempt_reply& why,
                           steady_time now, std::int64_t now_unix) {
    _oncore.check();
    auto rit = _running.find(job_id);
    if (rit == _running.end() || rit->second.conn != conn_id)
        core::invariant_broken("scheduler: job_failed on a job not running on that connection");
    conn& c = find_conn(conn_id);
    dest& d = *rit->second.d;
    delivery_job job = std::move(rit->second.job);
    _running.erase(rit);
    d.q.job_finished();
    drop_job(c, job_id);
    c.broken = true;
    if (c.job == 0)
        c.st = conn_state::closing;  // else: the other job is reported next
    finish_job(d, std::move(job), {}, &why, now, now_unix);
}

void scheduler::drop_job(conn& c, std::uint64_t job_id) {
    if (c.job == job_id) {
        c.job = c.next;
        c.next = 0;
    } else if (c.next == job_id) {
        c.next = 0;
    }
}

std::optional<run_job> scheduler::pipeline_job(std::uint64_t conn_id, steady_time now) {
    _oncore.check();
    conn& c = find_conn(conn_id);
    if (c.st != conn_state::busy || c.job == 0 || c.next != 0 || c.broken)
        return std::nullopt;
    dest& d = *c.d;
    if (d.q.counts().ready == 0)
        return std::nullopt;
    if (d.suspended_until && now < *d.suspended_until)
        return std::nullopt;
    // The running job counts: this one would be message number messages + 2.
    if (c.messages + 2 > messages_per_conn(d))
        return std::nullopt;
    std::optional<steady_time> when;
    if (!may_send(d, conn_id, now, when))
        return std::nullopt;  // the destination's turn comes through next_action then
    c.next = _next_job++;
    delivery_job job = *d.q.pop_ready();
    --_ready;
    d.q.job_started();
    _running.emplace(c.next, running{job, &d, conn_id});
    return run_job{conn_id, c.next, std::move(job)};
}

void scheduler::maybe_retire(dest& d) {
    if (!d.q.empty() || d.leases_out != 0 || d.connecting != 0 || d.established != 0 ||
        d.awaited != 0)
        return;
    if (d.listed) {
        _runnable.erase(d.pos);
        d.listed = false;
    }
    _by_id.erase(d.id);
    if (d.borrowed) {
        push_out(d.lender, lease_return{d.q.key(), d.lease});
        _borrowed.erase(lease_key(d.lender, d.lease));
    } else {
        std::string key = d.q.key();
        _owned.erase(key);
    }
}

std::uint32_t scheduler::spare() const noexcept {
    std::size_t load = _conns.size() + _ready;
    return load >= _cfg.max_total_connections
               ? 0
               : static_cast<std::uint32_t>(_cfg.max_total_connections - load);
}

void scheduler::publish_spare() {
    if (!_cfg.gauges)
        return;
    std::uint32_t v = spare();
    if (v != _published) {
        _cfg.gauges->publish(_cfg.shard, v);
        _published = v;
    }
}

bool scheduler::provider_room(const dest& d, steady_time now) const {
    const shaping_context& sh = *_cfg.shaping;
    auto room = [&](unsigned slot) {
        const std::uint32_t cap = _cfg.limits->max_connections(d.provider, slot, now);
        return cap == 0 || _cfg.limits->connections(d.provider, slot) < cap;
    };
    if (d.pool < 0 || static_cast<std::size_t>(d.pool) >= sh.pools.size())
        return room(0);
    for (unsigned source : sh.pools[static_cast<std::size_t>(d.pool)].sources) {
        if (room(source + 1))
            return true;
    }
    return false;
}

void scheduler::maybe_lend(steady_time now) {
    if (!_cfg.gauges || _cfg.shards < 2 || _ready < _cfg.spread_backlog)
        return;
    if (now < _last_spread + _cfg.spread_interval)
        return;
    _last_spread = now;
    if (_outbox.size() + _cfg.lend_batch + 1 > _cfg.max_outbox)
        return;
    const std::uint32_t mine = spare();
    unsigned best = _cfg.shard;
    std::uint32_t best_spare = 0;
    for (unsigned s = 0; s < _cfg.shards; ++s) {
        if (s == _cfg.shard)
            continue;
        std::uint32_t v = _cfg.gauges->read(s);
        if (v > best_spare) {
            best_spare = v;
            best = s;
        }
    }
    if (best == _cfg.shard || best_spare < std::uint64_t{mine} + _cfg.spread_margin)
        return;
    for (dest* dp : _runnable) {
        dest& d = *dp;
        const destination_counts dc = d.q.counts();
        // A provider's destination is lent only while the provider has connections to spare
        // for one of its sources: its limits are shared by every shard, but a borrower must
        // not wait for slots the owner's idle connections hold.
        if (d.borrowed || d.local || d.q.policy().rate > 0.0 ||
            (d.provider >= 0 && !provider_room(d, now)) || dc.ready < _cfg.spread_backlog ||
            d.leases_out >= _cfg.max_leases_per_destination)
            continue;
        std::uint32_t in_use = d.slots->in_use();
        if (in_use >= d.slots->limit())
            continue;  // every slot is busy: another shard could not connect anyway
        std::size_t batch = std::min(_cfg.lend_batch, dc.ready / 2);
        if (batch == 0)
            continue;
        const auto& p = d.q.policy();
        std::size_t conns =
            (batch + p.max_messages_per_connection - 1) / p.max_messages_per_connection;
        lease_grant g;
        g.domain = d.q.key();
        g.slots = d.slots;
        g.lease = _next_lease++;
        g.jobs = static_cast<std::uint32_t>(batch);
        g.max_connections = static_cast<std::uint32_t>(
            std::clamp<std::size_t>(conns, 1, d.slots->limit() - in_use));
        g.policy = p;
        g.policy.rate = 0.0;
        g.provider = d.provider;
        const std::uint32_t lease = g.lease;
        push_out(best, std::move(g));
        for (std::size_t i = 0; i < batch; ++i) {
            push_out(best, job_handoff{d.q.key(), *d.q.pop_ready(), lease});
        }
        _ready -= batch;
        _jobs -= batch;
        _lent_jobs += batch;
        ++d.leases_out;
        ++_leases_out;
        return;  // one lease per decision; the gauges change after it
    }
}

scheduler_counts scheduler::counts() const {
    scheduler_counts c;
    c.destinations = _owned.size();
    c.borrowed = _borrowed.size();
    for (const auto& [id, d] : _by_id) {
        auto dc = d->q.counts();
        c.ready += dc.ready;
        c.deferred += dc.deferred;
        c.in_flight += dc.in_flight;
    }
    c.connections = _conns.size();
    c.leases_out = _leases_out;
    c.outbox = _outbox.size();
    c.lent_jobs = _lent_jobs;
    return c;
}

bool scheduler::idle() const {
    return _jobs == 0 && _conns.empty() && _leases_out == 0 && _borrowed.empty() && _outbox.empty();
}

}  // namespace ringmail::queue
