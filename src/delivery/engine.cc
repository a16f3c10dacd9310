#include "ringmail/delivery/engine.h"

#include "ringmail/core/duration.h"
#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"
#include "ringmail/delivery/bounce.h"
#include "ringmail/dns/errc.h"

#include <fmt/format.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <random>
#include <unordered_map>

namespace ringmail::delivery {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {

std::string one_line(std::string_view text) {
    std::string s(text);
    std::replace(s.begin(), s.end(), '\n', ' ');
    return s;
}

// Failures without a server's reply have no text worth matching: their category is what
// happened.
queue::bounce_class local_category(smtp::local_failure f) noexcept {
    using smtp::local_failure;
    switch (f) {
        case local_failure::connect:
        case local_failure::connection_lost:
        case local_failure::tls:
            return queue::bounce_class::bad_connection;
        case local_failure::no_answer:
            return queue::bounce_class::no_answer_from_host;
        case local_failure::tls_unavailable:
        case local_failure::auth_unavailable:
            return queue::bounce_class::bad_configuration;
        case local_failure::protocol:
            return queue::bounce_class::protocol_errors;
        case local_failure::none:
            break;
    }
    return queue::bounce_class::uncategorized;
}

queue::failure_outcome outcome_of(queue::rcpt_status s) noexcept {
    return s == queue::rcpt_status::failed    ? queue::failure_outcome::bounced
           : s == queue::rcpt_status::expired ? queue::failure_outcome::expired
                                              : queue::failure_outcome::transient;
}

smtp::tls_policy to_smtp_policy(config::tls_policy p) noexcept {
    switch (p) {
        case config::tls_policy::none:
            return smtp::tls_policy::none;
        case config::tls_policy::opportunistic:
            return smtp::tls_policy::opportunistic;
        case config::tls_policy::required:
            return smtp::tls_policy::required;
    }
    return smtp::tls_policy::none;
}

std::shared_ptr<message_view> make_view(const spool::stored_message& m) {
    auto v = std::make_shared<message_view>();
    v->id = m.id;
    v->mail_from = m.env.mail_from;
    v->rcpts = m.env.rcpt_to;
    v->added_headers = m.added_headers;
    v->body = m.body;
    v->eight_bit = m.env.body == mail::body_type::eight_bit_mime;
    v->smtputf8 = m.env.smtputf8;
    v->arrival = m.env.arrival_time;
    v->ret = m.env.ret;
    v->envid = m.env.envid;
    v->rcpt_dsn = m.env.rcpt_params;
    std::string scratch;
    v->message_id = std::string(find_message_id(m.body, scratch));
    return v;
}

std::string_view status_word(queue::rcpt_status st) {
    switch (st) {
        case queue::rcpt_status::delivered:
            return "sent";
        case queue::rcpt_status::failed:
            return "bounced";
        case queue::rcpt_status::expired:
            return "expired";
        case queue::rcpt_status::deferred:
            break;
    }
    return "deferred";
}

}  // namespace

namespace {
// An IP literal (canonical, from the configuration) as a socket address with port 0.
std::optional<core::endpoint> source_endpoint(const std::string& ip) {
    core::endpoint ep;
    if (ip.find(':') == std::string::npos) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        if (inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1)
            return std::nullopt;
        std::memcpy(&ep.storage, &a, sizeof a);
        ep.len = sizeof a;
    } else {
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, ip.c_str(), &a.sin6_addr) != 1)
            return std::nullopt;
        std::memcpy(&ep.storage, &a, sizeof a);
        ep.len = sizeof a;
    }
    return ep;
}

queue::rule_action to_rule_action(config::shaping_action a) {
    switch (a) {
        case config::shaping_action::suspend:
            return queue::rule_action::suspend;
        case config::shaping_action::set:
            return queue::rule_action::set;
        case config::shaping_action::bounce:
            break;
    }
    return queue::rule_action::bounce;
}
}  // namespace

std::unique_ptr<queue::shaping_context> make_shaping(const config::settings& cfg,
                                                     std::string& why) {
    if (cfg.providers.empty() && cfg.shaping_rules.empty() && cfg.egress_pools.empty() &&
        cfg.delivery.egress_pool.empty())
        return nullptr;
    auto sh = std::make_unique<queue::shaping_context>();
    std::unordered_map<std::string, unsigned> source_index;
    std::vector<std::uint32_t> source_limits;
    for (const auto& e : cfg.egress_sources) {
        source_index.emplace(e.name, static_cast<unsigned>(source_limits.size()));
        source_limits.push_back(e.max_connections);
    }
    sh->sources = source_limits.size();
    std::unordered_map<std::string, int> pool_index;
    for (const auto& p : cfg.egress_pools) {
        queue::egress_pool_spec spec;
        for (const auto& m : p.sources) {
            auto it = source_index.find(m.source);
            if (it == source_index.end()) {
                why = fmt::format("egress pool {}: unknown source {}", p.name, m.source);
                return nullptr;
            }
            spec.sources.push_back(it->second);
            spec.weights.push_back(m.weight);
        }
        pool_index.emplace(p.name, static_cast<int>(sh->pools.size()));
        sh->pools.push_back(std::move(spec));
    }
    auto pool_of = [&](const std::string& name) {
        auto it = pool_index.find(name);
        return it == pool_index.end() ? -1 : it->second;
    };
    sh->default_pool = cfg.delivery.egress_pool.empty() ? -1 : pool_of(cfg.delivery.egress_pool);
    std::vector<queue::provider_spec> providers;
    std::unordered_map<std::string, int> provider_index;
    for (const auto& p : cfg.providers) {
        queue::provider_spec spec;
        spec.name = p.name;
        spec.mx_suffix = p.mx_suffix;
        spec.domain_suffix = p.domain_suffix;
        spec.max_connections = p.max_connections.value_or(0);
        spec.max_messages_per_connection = p.max_messages_per_connection.value_or(0);
        spec.message_rate = p.max_message_rate ? p.max_message_rate->per_second : 0.0;
        spec.message_burst = p.max_message_burst.value_or(1);
        spec.connection_rate = p.max_connection_rate ? p.max_connection_rate->per_second : 0.0;
        spec.pool = p.egress_pool.empty() ? -1 : pool_of(p.egress_pool);
        provider_index.emplace(p.name, static_cast<int>(providers.size()));
        providers.push_back(std::move(spec));
    }
    sh->providers = queue::provider_table(std::move(providers));
    std::vector<queue::rule_spec> rules;
    for (const auto& r : cfg.shaping_rules) {
        queue::rule_spec spec;
        spec.any = r.provider == "*";
        if (!spec.any && !r.provider.empty()) {
            auto it = provider_index.find(r.provider);
            if (it == provider_index.end()) {
                why = fmt::format("{}: unknown provider {}", r.where, r.provider);
                return nullptr;
            }
            spec.provider = it->second;
        }
        spec.domain = r.domain;
        spec.match = r.match;
        spec.action = to_rule_action(r.action);
        spec.duration = r.duration;
        spec.trigger_count = std::min(r.trigger_count, queue::max_trigger_count);
        spec.trigger_window = r.trigger_window;
        spec.set_rate = r.max_message_rate ? r.max_message_rate->per_second : 0.0;
        spec.set_connections = r.max_connections.value_or(0);
        spec.where = r.where;
        rules.push_back(std::move(spec));
    }
    auto built =
        queue::shaping_rules::build(std::move(rules), sh->providers.size(), sh->sources + 1, why);
    if (!built)
        return nullptr;
    sh->rules = std::move(*built);
    sh->limits = std::make_unique<queue::local_limiter>(sh->providers, sh->rules.domain_scopes(),
                                                        std::move(source_limits));
    for (const auto& e : cfg.egress_sources)
        sh->source_names.push_back(e.name);
    for (const auto& p : cfg.providers)
        sh->provider_names.push_back(p.name);
    return sh;
}

engine_settings make_settings(const config::settings& cfg, unsigned shard, unsigned shards,
                              queue::spare_gauges* gauges, const queue::shaping_context* shaping) {
    const auto& d = cfg.delivery;
    engine_settings s;
    queue::scheduler_config& sc = s.scheduler;
    sc.shard = shard;
    sc.shards = shards;
    queue::destination_policy defaults;
    defaults.max_connections = d.destination_max_connections;
    defaults.max_messages_per_connection = d.max_messages_per_connection;
    defaults.connect_timeout = d.connect_timeout;
    std::vector<queue::domain_override> overrides;
    for (const auto& dc : cfg.domains) {
        queue::domain_override o;
        o.name = dc.name;
        o.max_connections = dc.max_connections;
        o.max_messages_per_connection = dc.max_messages_per_connection;
        if (dc.connect_timeout)
            o.connect_timeout = std::chrono::milliseconds(*dc.connect_timeout);
        o.rate = dc.rate;
        o.burst = dc.burst;
        overrides.push_back(std::move(o));
    }
    // The smarthost destination is per shard (placement::local): delivery.max_connections of
    // this shard's may go to it, as many as the shard may open at all.
    queue::domain_override relay;
    relay.name = std::string(router::smarthost_key);
    relay.max_connections = d.max_connections;
    overrides.push_back(std::move(relay));
    sc.policies = queue::domain_policy(defaults, overrides);
    sc.retry.schedule = d.retry_schedule;
    sc.retry.max_lifetime = d.max_lifetime;
    sc.seed = std::random_device{}();
    sc.max_total_connections = d.max_connections;
    sc.idle_timeout = d.idle_timeout;
    sc.gauges = gauges;
    s.routes = router(d.smarthost, cfg.domains);
    s.client.helo_name = d.helo_name.empty() ? cfg.server.hostname : d.helo_name;
    s.client.data_term_timeout = d.data_timeout;
    s.tls = d.tls;
    s.tls_verify = d.tls_verify;
    s.domains = cfg.domains;
    s.hostname = cfg.server.hostname;
    s.delay_warning = d.delay_warning;
    s.connect_timeout = d.connect_timeout;
    s.idle_timeout = d.idle_timeout;
    s.max_messages_per_connection = d.max_messages_per_connection;
    s.max_connections = d.max_connections;
    if (shaping) {
        sc.shaping = shaping;
        s.shaping = shaping;
        for (const auto& e : cfg.egress_sources) {
            auto ep = source_endpoint(e.address);
            if (!ep)
                core::invariant_broken("egress source {}: address {} passed the config check",
                                       e.name, e.address);
            s.sources.push_back(
                {e.name, *ep, e.ehlo_name.empty() ? s.client.helo_name : e.ehlo_name});
        }
        for (const auto& p : cfg.providers) {
            s.provider_names.push_back(p.name);
            s.provider_tls.push_back(p.tls);
        }
    }
    return s;
}

engine::engine(host& h, outbound::network& net, engine_settings settings)
    : _host(h),
      _net(net),
      _settings(std::move(settings)),
      _sched(_settings.scheduler),
      _ledger(500000, _settings.delay_warning) {
    _host.set_quiet(false);
}

engine::~engine() {
    _conns.clear();
    _dead.clear();
}

bool engine::can_accept() const {
    return _ledger.size() < std::min(_ledger.max_messages(), _settings.max_messages);
}

// --- the origin side ---------------------------------------------------------------------

void engine::hold_view(const std::shared_ptr<const message_view>& v, std::size_t rcpts) {
    auto& ref = _views[v->id];
    if (!ref.view)
        ref.view = v;
    ref.rcpts += rcpts;
}

void engine::submit(const std::shared_ptr<const message_view>& view,
                    std::span<const std::uint32_t> pending, std::uint32_t attempts,
                    std::int64_t next_attempt_unix) {
    const auto now = _host.now();
    const std::int64_t now_unix = _host.unix_now();
    std::vector<queue::scheduler::placement> placements;
    auto groups = queue::group_by_destination(view->rcpts, pending, [&](std::string_view domain) {
        return _settings.routes.destination_of(domain).key;
    });
    for (auto& g : groups) {
        queue::delivery_job j;
        j.queue_id = view->id;
        j.rcpts = g.rcpts;
        j.attempts = attempts;
        j.arrival_unix = view->arrival;
        j.next_attempt = next_attempt_unix > now_unix
                             ? now + std::chrono::seconds(next_attempt_unix - now_unix)
                             : now;
        const std::size_t n = j.rcpts.size();
        const auto where = g.domain == router::smarthost_key ? queue::scheduler::placement::local
                                                             : queue::scheduler::placement::owner;
        hold_view(view, n);
        if (auto ok = _sched.submit(g.domain, std::move(j), now, where); !ok) {
            // Durable all the same: the next start-up submits it again.
            log::error("{}: cannot schedule {} recipient(s) at {}: {}",
                       spool::format_queue_id(view->id), n, log::sanitize(g.domain),
                       ok.error().message());
            release(view->id, n);
        }
    }
    _dirty = true;
}

void engine::add_recovered(spool::spool& sp, const spool::recovered_message& m) {
    _oncore.check();
    ledger_message lm;
    lm.id = m.msg.id;
    lm.sender = m.msg.env.mail_from;
    lm.arrival = m.msg.env.arrival_time;
    lm.rcpts = m.msg.env.rcpt_to;
    lm.attempts = m.attempts;
    lm.delay_noticed = m.rcpt_delay_noticed;
    std::vector<std::uint32_t> pending;
    lm.state.resize(lm.rcpts.size(), queue::rcpt_state::pending);
    for (std::uint32_t i = 0; i < lm.rcpts.size(); ++i) {
        if (i < m.rcpt_done.size() && m.rcpt_done[i]) {
            auto o = m.rcpt_outcome[i];
            lm.state[i] = o == spool::outcome::delivered ? queue::rcpt_state::delivered
                          : o == spool::outcome::bounced ? queue::rcpt_state::bounced
                                                         : queue::rcpt_state::expired;
        } else {
            pending.push_back(i);
        }
    }
    if (pending.empty()) {
        // Every recipient final but not done: the process stopped before the DSN was durable
        // (or before the done entry was). Failed recipients get their DSN now.
        queue::bounce_request b;
        b.id = m.msg.id;
        b.sender = lm.sender;
        b.arrival = lm.arrival;
        for (std::size_t i = 0; i < lm.rcpts.size(); ++i) {
            if (lm.state[i] != queue::rcpt_state::bounced &&
                lm.state[i] != queue::rcpt_state::expired) {
                continue;
            }
            queue::failed_recipient f;
            f.address = lm.rcpts[i];
            f.expired = lm.state[i] == queue::rcpt_state::expired;
            f.status = f.expired ? "5.4.7" : "5.0.0";
            f.category = f.expired ? queue::bounce_class::message_expired
                                   : queue::bounce_class::uncategorized;
            b.rcpts.push_back(std::move(f));
        }
        if (b.rcpts.empty() || b.sender.empty()) {
            sp.record_done(m.msg.id);
        } else {
            _dsn_waits[m.msg.id] += 1;
            spool_bounce(pending_dsn{m.msg.id, std::move(b)});
        }
        _journaled = true;
        return;
    }
    if (auto ok = _ledger.add(std::move(lm)); !ok) {
        log::error("{}: cannot queue recovered message: {}", spool::format_queue_id(m.msg.id),
                   ok.error().message());
        return;
    }
    // Only the recipients still pending become jobs again.
    submit(make_view(m.msg), pending, m.attempts, m.next_attempt);
}

void engine::set_suspensions(std::shared_ptr<const queue::suspensions> s) {
    _oncore.check();
    _sched.set_suspensions(std::move(s), _host.now(), _host.unix_now());
    _dirty = true;
}

void engine::lift_suspensions(std::span<const queue::suspension> lifted) {
    _oncore.check();
    // Every shard lifts the shared limiter (idempotent) before it looks at its destinations
    // again, so none of them finds the old suspension still there.
    // With [cluster] the scheduler's limiter is this shard's cluster::shard_limiter: it lifts
    // the node's local state too, and takes the suspension out of Redis.
    const queue::shaping_context* sh = _settings.shaping;
    if (sh != nullptr)
        queue::lift_suspensions(*sh, lifted, _sched.limits());
    for (const auto& s : lifted) {
        if (s.scope.kind == queue::suspension_kind::domain)
            _sched.lift_destination(s.scope.name);
    }
    _dirty = true;
}

std::size_t engine::flush(std::string_view key) {
    _oncore.check();
    const std::size_t n = _sched.flush(key, _host.now());
    _dirty = true;
    return n;
}

std::size_t engine::bounce(std::string_view key, std::uint64_t queue_id, std::string_view reason) {
    _oncore.check();
    queue::attempt_reply why;
    why.code = 550;
    why.enhanced = "5.0.0";
    why.text = reason.empty() ? std::string("bounced by the administrator")
                              : fmt::format("bounced by the administrator: {}", reason);
    const std::size_t n = _sched.bounce(key, queue_id, why, _host.now(), _host.unix_now());
    _dirty = true;
    return n;
}

void engine::add_committed(spool::spool& sp, spool::queue_id id) {
    _oncore.check();
    retry_bounces();
    auto m = sp.read(id);
    if (!m) {
        log::error("{}: committed but unreadable: {}", spool::format_queue_id(id),
                   m.error().message());
        return;
    }
    auto view = make_view(*m);
    if (_host.events().enabled()) {
        const spool::queue_id_text qid = spool::format_queue_id(id);
        delivery_record r;
        r.type = delivery_event::reception;
        r.time_ms = _host.unix_now_ms();
        r.queue_id = qid.view();
        r.message_id = view->message_id;
        r.sender = m->env.mail_from;
        r.recipients = static_cast<std::uint32_t>(m->env.rcpt_to.size());
        r.client_ip = m->env.client_address;
        r.size = static_cast<std::int64_t>(m->body.size());
        _host.events().add(r);
    }
    ledger_message lm;
    lm.id = id;
    lm.sender = m->env.mail_from;
    lm.arrival = m->env.arrival_time;
    lm.rcpts = m->env.rcpt_to;
    if (auto ok = _ledger.add(std::move(lm)); !ok) {
        log::error("{}: queue full, message stays in the spool until restart",
                   spool::format_queue_id(id));
        return;
    }
    if (core::shard_metrics* mt = _host.metrics())
        mt->messages_received.add();
    std::vector<std::uint32_t> pending(view->rcpts.size());
    for (std::uint32_t i = 0; i < pending.size(); ++i)
        pending[i] = i;
    submit(view, pending, 0, 0);
}

void engine::internal_committed(std::uint64_t token, const result<spool::queue_id>& id) {
    _oncore.check();
    auto it = _dsns.find(token);
    if (it == _dsns.end()) {
        if (!id)
            log::error("a message of ours could not be spooled: {}", id.error().message());
        return;
    }
    pending_dsn d = std::move(it->second);
    _dsns.erase(it);
    if (!id) {
        log::warn("{}: its bounce was not committed ({}), spooling it again",
                  spool::format_queue_id(d.original), id.error().message());
        spool_bounce(std::move(d));
        return;
    }
    // The DSN is durable: now the original may be done.
    notice_durable(d.original);
}

// One of the notices the original waits for is durable (or wanted by nobody): once none is
// left, the original is done.
void engine::notice_durable(spool::queue_id original) {
    auto it = _dsn_waits.find(original);
    if (it != _dsn_waits.end() && --it->second != 0)
        return;
    if (it != _dsn_waits.end())
        _dsn_waits.erase(it);
    if (spool::spool* sp = _host.spool_for(original)) {
        sp->record_done(original);
        _journaled = true;
    }
}

void engine::spool_bounce(pending_dsn d) {
    spool::spool* sp = _host.spool_for(d.original);
    if (!sp)
        return;
    const std::uint64_t token = internal_token_bit | _next_dsn_token++;
    auto dsn = spool_dsn(*sp, _host.own_spool(), d.bounce, _settings.hostname, _host.unix_now(),
                         token, category_names());
    if (dsn && !*dsn) {
        log::info("{}: no notification: NOTIFY excludes it for every recipient concerned",
                  spool::format_queue_id(d.original));
        notice_durable(d.original);
        return;
    }
    if (!dsn) {
        // Kept: retried with the next committed batch, and after a restart (the original is
        // not done).
        log::error("{}: cannot spool its bounce: {}", spool::format_queue_id(d.original),
                   dsn.error().message());
        _dsn_retry.push_back(std::move(d));
        return;
    }
    log::info("{}: sender {} notification: {} (to=<{}>, {} recipient(s))",
              spool::format_queue_id(d.original),
              !d.bounce.rcpts.empty() && d.bounce.rcpts.front().action == queue::dsn_action::relayed
                  ? "relayed"
                  : "non-delivery",
              spool::format_queue_id(**dsn), log::sanitize(d.bounce.sender), d.bounce.rcpts.size());
    _dsns.emplace(token, std::move(d));
    _journaled = true;
}

void engine::retry_bounces() {
    if (_dsn_retry.empty())
        return;
    auto retry = std::move(_dsn_retry);
    _dsn_retry.clear();
    for (auto& d : retry)
        spool_bounce(std::move(d));
}

// The one outcome path: a notice's recipients -> journal (final states, the retry record) ->
// at most one DSN per message, once no recipient is pending -> done.
void engine::apply_notice(const queue::job_notice& n) {
    spool::spool* sp = _host.spool_for(n.queue_id);
    const ledger_message* lm = _ledger.find(n.queue_id);
    for (std::size_t i = 0; lm != nullptr && i < n.rcpts.size(); ++i) {
        if (n.status[i] == queue::rcpt_status::expired && n.rcpts[i] < lm->rcpts.size()) {
            log::info("{}: recipient <{}> expired after delivery.max_lifetime",
                      spool::format_queue_id(n.queue_id), log::sanitize(lm->rcpts[n.rcpts[i]]));
        }
    }
    const std::int64_t arrival = lm != nullptr ? lm->arrival : 0;
    auto a = _ledger.apply(n, _host.unix_now());
    if (core::shard_metrics* m = _host.metrics()) {
        const double age =
            arrival > 0 ? static_cast<double>(_host.unix_now_ms() - arrival * 1000) / 1000.0 : 0.0;
        for (auto [i, o] : a.outcomes) {
            (void)i;
            if (o == spool::outcome::delivered)
                m->rcpt_delivered.add();
            else if (o == spool::outcome::bounced)
                m->rcpt_bounced.add();
            else if (o == spool::outcome::expired)
                m->rcpt_expired.add();
            else
                continue;
            m->delivery_latency.observe(age);
        }
        if (lm != nullptr) {
            for (auto st : n.status)
                if (st == queue::rcpt_status::deferred)
                    m->rcpt_deferred.add();
        }
    }
    if (!sp)
        return;
    for (auto [i, o] : a.outcomes)
        sp->record_rcpt(n.queue_id, i, o);
    for (auto i : a.delay_noticed)
        sp->record_rcpt(n.queue_id, i, spool::outcome::delay_noticed);
    if (a.retry)
        sp->record_attempt(n.queue_id, a.retry->attempts, a.retry->next_attempt);
    if (a.delayed)
        send_notice(*sp, *a.delayed);  // informational: the message is not done
    if (a.null_sender_failure) {
        // RFC 5321 6.1: never a notification about a notification (or any null-sender mail).
        log::info("{}: undeliverable, null sender: no notification sent",
                  spool::format_queue_id(n.queue_id));
    }
    // The notices that come with the message's end (failed, relayed): done once they are
    // committed (internal_committed), never before. A relayed notice while others are pending
    // is informational like a delay notice.
    std::vector<queue::bounce_request> finals;
    for (auto* notice : {&a.bounce, &a.relayed}) {
        if (!*notice)
            continue;
        if (a.done) {
            finals.push_back(std::move(**notice));
        } else {
            send_notice(*sp, **notice);
        }
    }
    if (a.done) {
        if (finals.empty()) {
            sp->record_done(n.queue_id);
        } else {
            _dsn_waits[n.queue_id] += static_cast<unsigned>(finals.size());
            for (auto& f : finals)
                spool_bounce(pending_dsn{n.queue_id, std::move(f)});
        }
    }
    if (!a.outcomes.empty() || a.retry || a.done)
        _journaled = true;
}

// --- messages between shards -------------------------------------------------------------

void engine::receive(unsigned from, shard_message&& m) {
    _oncore.check();
    if (auto* h = std::get_if<queue::job_handoff>(&m.msg)) {
        if (m.view)
            hold_view(m.view, h->job.rcpts.size());
    }
    auto notice = _sched.receive(from, std::move(m.msg), _host.now());
    if (notice)
        apply_notice(*notice);
    _dirty = true;
}

void engine::release(std::uint64_t id, std::size_t n) {
    auto it = _views.find(id);
    if (it == _views.end() || n == 0)
        return;
    it->second.rcpts -= std::min(n, it->second.rcpts);
    if (it->second.rcpts == 0)
        _views.erase(it);
}

// Jobs leaving this shard, and final outcomes, release their hold on the message view.
std::pair<std::uint64_t, std::size_t> engine::released(const queue::shard_message& msg) {
    std::uint64_t id = 0;
    std::size_t n = 0;
    if (auto* h = std::get_if<queue::job_handoff>(&msg)) {
        id = h->job.queue_id;
        n = h->job.rcpts.size();
    } else if (auto* nt = std::get_if<queue::job_notice>(&msg)) {
        id = nt->queue_id;
        for (std::size_t i = 0; i < nt->rcpts.size(); ++i) {
            if (nt->status[i] != queue::rcpt_status::deferred)
                ++n;
        }
    }
    return {id, n};
}

// The delivery-log record and the log line of every recipient of a notice, written by the
// shard that made the attempt (it knows the host and address), once the scheduler decided the
// recipient's fate (a 4xx past max_lifetime is an expiration, not a transient failure).
void engine::log_notice(const queue::job_notice& n) {
    auto notes_it = _notes.find(n.queue_id);
    auto vit = _views.find(n.queue_id);
    const message_view* v = vit == _views.end() ? nullptr : vit->second.view.get();
    delivery_log& events = _host.events();
    const spool::queue_id_text id = spool::format_queue_id(n.queue_id);
    const std::int64_t now_ms = _host.unix_now_ms();
    for (std::size_t i = 0; i < n.rcpts.size(); ++i) {
        const std::uint16_t r = n.rcpts[i];
        const tx_note* note = nullptr;
        if (notes_it != _notes.end()) {
            for (const auto& t : notes_it->second) {
                if (t.rcpt == r)
                    note = &t;
            }
        }
        std::string reply_text;
        std::string_view host;
        std::string_view ip;
        queue::bounce_class category = queue::bounce_class::uncategorized;
        if (note) {
            reply_text = note->reply;
            host = note->host;
            ip = note->ip;
            category = note->category;
        } else if (n.detail) {
            for (const auto& [idx, rep] : n.detail->replies) {
                if (idx == r) {
                    reply_text = rep.to_string();
                    host = rep.remote_mta;
                    category = rep.category;
                }
            }
        }
        // Whatever the last reply said, an expired recipient failed because its time ran out.
        if (n.status[i] == queue::rcpt_status::expired)
            category = queue::bounce_class::message_expired;
        const bool failed = n.status[i] != queue::rcpt_status::delivered;
        std::string_view category_name;
        if (failed) {
            category_name = _settings.bounces ? _settings.bounces->name(category)
                                              : queue::predefined_name(category);
            if (_settings.bounce_counts)
                _settings.bounce_counts->add(outcome_of(n.status[i]), category);
        }
        std::string_view rcpt = v && r < v->rcpts.size() ? std::string_view(v->rcpts[r]) : "";
        log::info("{}: to=<{}>, relay={}[{}]{}{}, attempt={}, status={} ({}){}{}", id,
                  log::sanitize(rcpt), host.empty() ? "none" : host, ip,
                  note && !note->source.empty() ? ", source=" : "",
                  note ? std::string_view(note->source) : std::string_view(), n.attempts,
                  status_word(n.status[i]), log::sanitize(reply_text), failed ? ", category=" : "",
                  category_name);
        if (!events.enabled())
            continue;
        delivery_record rec;
        switch (n.status[i]) {
            case queue::rcpt_status::delivered:
                rec.type = delivery_event::delivery;
                break;
            case queue::rcpt_status::failed:
                rec.type = delivery_event::bounce;
                break;
            case queue::rcpt_status::expired:
                rec.type = delivery_event::expiration;
                break;
            case queue::rcpt_status::deferred:
                rec.type = delivery_event::transient_failure;
                break;
        }
        rec.time_ms = now_ms;
        rec.queue_id = id.view();
        if (v) {
            rec.message_id = v->message_id;
            rec.sender = v->mail_from;
            rec.recipient = rcpt;
            rec.latency_ms = std::max<std::int64_t>(0, now_ms - v->arrival * 1000);
            rec.size = static_cast<std::int64_t>(v->body.size());
        }
        rec.mx_host = host;
        rec.mx_ip = ip;
        if (note)
            rec.source = note->source;
        rec.reply = reply_text;
        rec.category = category_name;
        rec.attempt = n.attempts;
        events.add(rec);
    }
    if (notes_it != _notes.end()) {
        auto& notes = notes_it->second;
        std::erase_if(notes, [&](const tx_note& t) {
            return std::find(n.rcpts.begin(), n.rcpts.end(), t.rcpt) != n.rcpts.end();
        });
        if (notes.empty())
            _notes.erase(notes_it);
    }
}

// --- the owner side: the scheduler's actions ----------------------------------------------

void engine::on_timer() {
    retry_bounces();
    _dirty = true;
    run();
}

void engine::reap() {
    if (!_dead.empty())
        std::erase_if(_dead, [](const auto& c) { return c->finished(); });
    if (_dirty)
        run();
}

void engine::run() {
    _oncore.check();
    if (_running) {
        _dirty = true;
        return;
    }
    _running = true;
    std::optional<queue::steady_time> until;
    do {
        _dirty = false;
        if (!_draining) {
            for (int guard = 0; guard < 100000; ++guard) {
                auto a = _sched.next_action(_host.now());
                if (auto* w = std::get_if<queue::wait>(&a)) {
                    until = w->until;
                    break;
                }
                if (auto* o = std::get_if<queue::open_connection>(&a)) {
                    open(*o);
                } else if (auto* j = std::get_if<queue::run_job>(&a)) {
                    run_job(*j);
                } else if (auto* c = std::get_if<queue::close_connection>(&a)) {
                    close(c->conn);
                }
            }
        }
        const unsigned self = _host.shard_id();
        _sched.flush_outgoing([&](unsigned to, queue::shard_message& msg) -> bool {
            if (to == self) {
                // Our own notice: this shard is both the owner and the origin.
                auto& n = std::get<queue::job_notice>(msg);
                log_notice(n);
                auto [id, count] = released(msg);
                release(id, count);
                apply_notice(n);
                return true;
            }
            // The log and the view accounting need the message after it has gone (the
            // receiver owns it then): keep what they need first.
            auto [id, count] = released(msg);
            std::optional<queue::job_notice> copy;
            if (auto* nt = std::get_if<queue::job_notice>(&msg)) {
                copy.emplace();
                copy->queue_id = nt->queue_id;
                copy->rcpts = nt->rcpts;
                copy->status = nt->status;
                copy->attempts = nt->attempts;
                if (nt->detail)
                    copy->detail = std::make_unique<queue::notice_detail>(*nt->detail);
            }
            shard_message out;
            if (auto* h = std::get_if<queue::job_handoff>(&msg)) {
                auto it = _views.find(h->job.queue_id);
                if (it != _views.end())
                    out.view = it->second.view;
            }
            out.msg = std::move(msg);
            if (!_host.send(to, std::move(out))) {
                msg = std::move(out.msg);
                return false;
            }
            if (copy)
                log_notice(*copy);
            release(id, count);
            return true;
        });
        if (!_draining)
            reclaim_idle();
    } while (_dirty);
    _running = false;
    auto parked_next = _pool.expire(_host.now(), _dead);
    if (parked_next && (!until || *parked_next < *until))
        until = parked_next;
    if (_sched.has_outgoing()) {
        // A ring is full: try again soon (the consumer is draining it).
        until = _host.now() + 1ms;
    }
    _host.wake_at(until);
    if (_journaled) {
        // The spool's commit hook ran before us in this iteration: make the next one come now.
        _journaled = false;
        _host.nudge();
    }
}

// The scheduler keeps an idle connection until delivery.idle_timeout even when this shard's
// connection cap (delivery.max_connections) then keeps other destinations with ready jobs from
// opening one: with more destinations than connections, delivery would stall for the idle
// timeout. When jobs wait, the cap is reached and few connections are being opened, one idle
// connection is handed back to the scheduler at once (its QUIT goes out afterwards, so the
// destination's global limit may be passed by that one closing connection for a moment).
void engine::reclaim_idle() {
    constexpr std::size_t max_opening = 8;
    const auto counts = _sched.counts();
    if (counts.ready == 0 || counts.connections < _settings.max_connections)
        return;
    std::size_t opening = 0;
    auto victim = _conns.end();
    for (auto it = _conns.begin(); it != _conns.end(); ++it) {
        const conn& mc = it->second;
        if (!mc.opened)
            ++opening;
        else if (victim == _conns.end() && mc.c && !mc.job && mc.c->ready())
            victim = it;
    }
    if (opening >= max_opening || victim == _conns.end())
        return;
    const std::uint64_t cid = victim->first;
    park(victim->second);
    auto c = std::move(victim->second.c);  // null when parked
    _conns.erase(victim);
    _sched.connection_closed(cid, _host.now());
    if (c) {
        c->stop(false);  // QUIT; its on_closed finds no connection record and is ignored
        _dead.push_back(std::move(c));
    }
    _dirty = true;
}

// --- parked sessions: reuse across destinations that share a host -------------------------

// Takes mc's idle session into the pool; false (mc untouched) when it cannot be kept. A session
// past the default message limit per connection is not kept: the scheduler counts messages per
// its own connection only.
bool engine::park(conn& mc) {
    // A session bound to an egress source stays with its destination: the pool does not know
    // sources, and another destination may be pinned to another pool.
    if (_draining || !mc.c || mc.job || mc.source >= 0 || _settings.idle_timeout.count() <= 0 ||
        (_settings.max_messages_per_connection != 0 &&
         mc.c->transactions() >= _settings.max_messages_per_connection))
        return false;
    const bool verified = mc.c->tls_active() && mc.settings.tls &&
                          mc.settings.client.starttls != smtp::tls_policy::none &&
                          mc.settings.tls == _net.client_tls(true);
    if (!_pool.park(mc.c, verified, _host.now() + _settings.idle_timeout))
        return false;
    log::debug("{}: session parked", log::sanitize(mc.key));
    return true;
}

outbound::adoption_policy engine::adoption_for(const outbound::outbound_settings& s) const {
    outbound::adoption_policy p;
    p.starttls = s.client.starttls;
    p.tls_context = s.tls != nullptr;
    p.verify = s.tls && s.tls == _net.client_tls(true);
    return p;
}

// Before connecting to mc's next target: a parked session to any address of the same
// preference level whose TLS state satisfies mc's policy becomes mc's connection, opened at
// once. Lower preference levels are only reached after this level failed.
bool engine::adopt(std::uint64_t cid, conn& mc) {
    if (_pool.empty() || mc.next_target >= mc.targets.size() || mc.source >= 0 ||
        (_settings.shaping && !_settings.sources.empty()))
        return false;
    const std::uint16_t level = mc.preferences[mc.next_target];
    std::size_t end = mc.next_target;
    while (end < mc.targets.size() && mc.preferences[end] == level)
        ++end;
    std::span<const outbound::outbound_target> candidates(mc.targets.data() + mc.next_target,
                                                          end - mc.next_target);
    auto l = _pool.adopt(candidates, adoption_for(mc.settings));
    if (!l)
        return false;
    l->rebind(cid);
    log::debug("{}: reusing the session to {} [{}]", log::sanitize(mc.key), l->target().host,
               l->target().ip);
    mc.c = std::move(l);
    mc.next_target = mc.targets.size();
    mc.opened = true;
    _sched.connection_opened(cid, _host.now());
    _dirty = true;
    return true;
}

outbound::outbound_settings engine::settings_for(std::string_view key, int provider) {
    outbound::outbound_settings s;
    s.client = _settings.client;
    config::tls_policy policy = _settings.tls;
    bool verify = _settings.tls_verify;
    // A provider's policy, then the domain's own (more specific) over it.
    if (provider >= 0 && static_cast<std::size_t>(provider) < _settings.provider_tls.size() &&
        _settings.provider_tls[static_cast<std::size_t>(provider)])
        policy = *_settings.provider_tls[static_cast<std::size_t>(provider)];
    for (const auto& dc : _settings.domains) {
        if (dc.name == key) {
            if (dc.tls)
                policy = *dc.tls;
            if (dc.tls_verify)
                verify = *dc.tls_verify;
        }
    }
    s.client.starttls = to_smtp_policy(policy);
    if (s.client.starttls != smtp::tls_policy::none) {
        s.tls = _net.client_tls(verify);
        // No context: opportunistic goes plaintext, required fails (deferred) in the session.
        if (!s.tls && s.client.starttls == smtp::tls_policy::opportunistic)
            s.client.starttls = smtp::tls_policy::none;
    }
    s.connect_timeout = _settings.connect_timeout;
    s.idle_timeout = std::chrono::milliseconds(0);  // the scheduler closes idle connections
    s.max_transactions = 0;                         // and counts transactions
    return s;
}

queue::bounce_class engine::classify(const smtp::server_reply& r) {
    if (r.local != smtp::local_failure::none)
        return local_category(r.local);
    if (r.positive() || !_settings.bounces)
        return queue::bounce_class::uncategorized;
    return _settings.bounces->classify(r.code, r.enhanced, r.text, _bounce_scratch);
}

queue::attempt_reply engine::to_attempt(const smtp::server_reply& r, std::string_view host) {
    return queue::attempt_reply{.code = r.code,
                                .enhanced = r.enhanced,
                                .text = one_line(r.text),
                                .remote_mta = std::string(host),
                                .category = classify(r)};
}

std::span<const std::string> engine::category_names() const noexcept {
    return _settings.bounces ? _settings.bounces->names() : std::span<const std::string>();
}

void engine::open(const queue::open_connection& a) {
    const std::uint64_t cid = a.conn;
    conn& mc = _conns[cid];
    mc.key = std::string(a.domain);
    mc.settings = settings_for(mc.key, a.provider);
    mc.settings.connect_timeout = a.connect_timeout;
    mc.source = a.source;
    apply_source(mc);
    auto cb = [this, cid](const result<dns::route>& r) { on_route(cid, r); };
    // The callback runs from the loop later, never inside the lookup call.
    if (auto fixed = _settings.routes.fixed_host(mc.key)) {
        _net.resolve_host(fixed->host, fixed->port, std::move(cb));
    } else {
        _net.resolve_route(mc.key, std::move(cb));
    }
}

void engine::on_route(std::uint64_t cid, const result<dns::route>& r) {
    auto it = _conns.find(cid);
    if (it == _conns.end())
        return;
    conn& mc = it->second;
    _dirty = true;
    const auto now = _host.now();
    if (_draining) {
        _sched.connection_closed(cid, now);
        _conns.erase(it);
        return;
    }
    if (!r) {
        const std::error_code ec = r.error();
        const auto fixed = _settings.routes.fixed_host(mc.key);
        queue::attempt_reply why;
        why.code = dns::reply_code(ec);
        why.enhanced = std::string(dns::enhanced_status(ec));
        why.text = fmt::format("{}: {}", mc.key, ec.message());
        why.category = dns::is_permanent(ec) ? queue::bounce_class::bad_domain
                                             : queue::bounce_class::dns_failure;
        if (fixed) {
            // A route's host is the operator's choice, not the recipient's: a name that does
            // not resolve is a configuration or DNS problem, and mail waits for it (as far as
            // max_lifetime) instead of bouncing.
            why.code = 451;
            why.enhanced = "4.4.3";
            why.text = fmt::format("relay {}: {}", host_port_text(*fixed), ec.message());
            why.category = queue::bounce_class::dns_failure;
            connection_failed(cid, mc, std::move(why));
        } else if (dns::is_permanent(ec)) {
            // Every job of the destination fails with this reply: the scheduler runs them on
            // a connection that exists only here.
            log::info("{}: {} ({})", log::sanitize(mc.key), ec.message(), why.enhanced);
            mc.dns_failure = why;
            mc.opened = true;
            _sched.connection_opened(cid, now);
        } else {
            log::warn("{}: route lookup failed: {}", log::sanitize(mc.key), ec.message());
            connection_failed(cid, mc, std::move(why));
        }
        if (!_running)
            run();
        return;
    }
    if (_settings.shaping && _sched.provider_of(cid) < 0) {
        // A provider known by its MX hosts: from this lookup on (this connection included).
        std::vector<std::string> names;
        for (const auto& h : r->hosts)
            names.push_back(h.name);
        const int p = _settings.shaping->providers.match_mx(names);
        if (p >= 0) {
            _sched.learn_provider(cid, p);
            const auto timeout = mc.settings.connect_timeout;
            mc.settings = settings_for(mc.key, p);
            mc.settings.connect_timeout = timeout;
            apply_source(mc);
        }
    }
    for (const auto& h : r->hosts) {
        for (const auto& ep : h.addresses) {
            if (mc.targets.size() >= _settings.max_targets)
                break;
            mc.targets.push_back(outbound::outbound_target{ep, h.name, core::ip_text(ep)});
            mc.preferences.push_back(h.preference);
        }
    }
    mc.next_target = 0;
    connect_next(cid, mc);
    if (!_running)
        run();
}

// Every address of the attempt refused or failed: the ready jobs of the destination wait for
// their retry (the retry schedule paces reconnection).
void engine::connection_failed(std::uint64_t cid, conn& mc, queue::attempt_reply why) {
    const std::size_t deferred = _sched.connection_failed(cid, why, _host.now(), _host.unix_now());
    log::warn("{} unavailable ({}): {} message(s) deferred",
              mc.key == router::smarthost_key && _settings.routes.smarthost()
                  ? "smarthost " + host_port_text(*_settings.routes.smarthost())
                  : log::sanitize(mc.key),
              log::sanitize(why.to_string()), deferred);
    _conns.erase(cid);
    _dirty = true;
}

void engine::connect_next(std::uint64_t cid, conn& mc) {
    if (mc.c)
        _dead.push_back(std::move(mc.c));
    if (mc.next_target >= mc.targets.size() || _draining) {
        if (_draining) {
            _sched.connection_closed(cid, _host.now());
            _conns.erase(cid);
            _dirty = true;
            return;
        }
        // One policy for a refused greeting or EHLO, whatever the route: it defers (451); only
        // replies to mail bounce.
        smtp::server_reply last = mc.last_error.code != 0
                                      ? mc.last_error
                                      : smtp::make_reply(451, "4.4.4", "no usable mail exchanger");
        queue::attempt_reply why =
            to_attempt(last, mc.targets.empty() ? "" : mc.targets.back().host);
        if (why.code < 400 || why.code >= 500)
            why.code = 451;
        if (why.enhanced.empty() || why.enhanced[0] != '4')
            why.enhanced = "4.4.1";
        connection_failed(cid, mc, std::move(why));
        return;
    }
    if (adopt(cid, mc))
        return;
    const outbound::outbound_target& t = mc.targets[mc.next_target++];
    mc.c = _net.make_link(*this, cid, t, mc.settings);
    mc.c->connect();
}

void engine::finish_pseudo(std::uint64_t cid, conn& mc, running_job& j) {
    std::vector<queue::rcpt_result> results;
    auto& notes = _notes[j.job.queue_id];
    for (auto r : j.job.rcpts) {
        results.push_back(queue::rcpt_result{
            .rcpt = r, .status = queue::rcpt_status::failed, .reply = &*mc.dns_failure});
        notes.push_back(
            tx_note{r, "", "", mc.dns_failure->to_string(), mc.dns_failure->category, ""});
    }
    _sched.complete(cid, j.id, results, _host.now(), _host.unix_now());
}

void engine::run_job(queue::run_job& a) {
    auto it = _conns.find(a.conn);
    if (it == _conns.end())
        core::invariant_broken("run_job on connection {}, which the engine does not hold", a.conn);
    conn& mc = it->second;
    running_job j;
    j.id = a.job;
    j.job = a.detail;
    if (mc.dns_failure) {
        finish_pseudo(a.conn, mc, j);
        _sched.connection_closed(a.conn, _host.now());
        _conns.erase(it);
        return;
    }
    const bool held = prepare_job(j);
    if (!held || !mc.c || mc.c->finished()) {
        queue::attempt_reply why{.code = 451,
                                 .enhanced = !held ? "4.3.0" : "4.4.2",
                                 .text = !held ? "message not available" : "connection lost",
                                 .remote_mta = mc.c ? mc.c->target().host : "",
                                 .category = !held ? queue::bounce_class::transient_failure
                                                   : queue::bounce_class::bad_connection};
        _sched.job_failed(a.conn, a.job, why, _host.now(), _host.unix_now());
        if (mc.c && !mc.c->finished()) {
            mc.c->stop(true);  // on_closed reports connection_closed
        } else {
            _sched.connection_closed(a.conn, _host.now());
            if (mc.c)
                _dead.push_back(std::move(mc.c));
            _conns.erase(it);
        }
        return;
    }
    mc.job = std::move(j);
    // A session still finishing its last transaction (an RSET after refused recipients) takes
    // the job when it is ready: on_ready. Closing it would throw a good session away.
    if (mc.c->ready())
        start_job(mc, *mc.job);
}

bool engine::prepare_job(running_job& j) {
    auto vit = _views.find(j.job.queue_id);
    if (vit == _views.end())
        return false;
    j.view = vit->second.view;
    for (auto r : j.job.rcpts) {
        j.rcpts.push_back(r < j.view->rcpts.size() ? j.view->rcpts[r] : std::string());
        if (!j.view->rcpt_dsn.empty())
            j.rcpt_dsn.push_back(r < j.view->rcpt_dsn.size() ? j.view->rcpt_dsn[r]
                                                             : mail::rcpt_dsn{});
    }
    return true;
}

void engine::send_notice(spool::spool& sp, const queue::bounce_request& b) {
    const char* what = "non-delivery";
    if (!b.rcpts.empty() && b.rcpts.front().action == queue::dsn_action::relayed)
        what = "relayed";
    else if (!b.rcpts.empty() && b.rcpts.front().action == queue::dsn_action::delayed)
        what = "delay";
    auto dsn = spool_dsn(sp, _host.own_spool(), b, _settings.hostname, _host.unix_now(), 0,
                         category_names());
    if (dsn && *dsn) {
        log::info("{}: sender {} notification: {} (to=<{}>, {} recipient(s))",
                  spool::format_queue_id(b.id), what, spool::format_queue_id(**dsn),
                  log::sanitize(b.sender), b.rcpts.size());
    } else if (dsn) {
        log::info("{}: no {} notification: NOTIFY excludes it for every recipient concerned",
                  spool::format_queue_id(b.id), what);
    } else {
        log::error("{}: cannot spool its {} notification: {}", spool::format_queue_id(b.id), what,
                   dsn.error().message());
    }
}

void engine::start_job(conn& mc, running_job& rj) {
    rj.started = true;
    smtp::outbound_message m;
    m.mail_from = rj.view->mail_from;
    m.rcpts = rj.rcpts;
    m.added_headers = rj.view->added_headers;
    m.body = rj.view->body;
    m.file_backed = true;  // views of the origin spool's mapping (messages.h)
    m.size = m.added_headers.size() + m.body.size();
    m.eight_bit = rj.view->eight_bit;
    m.smtputf8 = rj.view->smtputf8;
    m.ret = rj.view->ret;
    m.envid = rj.view->envid;
    m.rcpt_dsn = rj.rcpt_dsn;
    mc.c->start(m);
}

void engine::close(std::uint64_t cid) {
    auto it = _conns.find(cid);
    if (it == _conns.end())
        return;
    // A provider's connection is not parked: its slot (a counter, or a lease in Redis) goes
    // back below, and an open session holding none would pass the provider's limit.
    const bool provider = _settings.shaping != nullptr && _sched.provider_of(cid) >= 0;
    if (it->second.c && (provider || !park(it->second))) {
        it->second.c->stop(false);  // QUIT; on_closed reports it
        return;
    }
    _sched.connection_closed(cid, _host.now());
    _conns.erase(it);
}

// --- link events ---------------------------------------------------------------------------

void engine::on_ready(outbound::link& c) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;
    conn& mc = it->second;
    if (_draining && !mc.job) {
        c.stop(false);
        return;
    }
    if (!mc.opened) {
        mc.opened = true;
        _sched.connection_opened(c.id(), _host.now());
    }
    if (mc.job && !mc.job->started) {
        start_job(mc, *mc.job);
        return;
    }
    _dirty = true;
    if (!_running)
        run();
}

// The session can take the next transaction behind the running one's data: when the
// destination has a job ready that may go now, it rides in the same flight (one send instead
// of two, and the server's replies to both in one read).
void engine::on_pipeline(outbound::link& c) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c || _draining)
        return;
    conn& mc = it->second;
    if (!mc.job || !mc.job->started || mc.next)
        return;
    auto a = _sched.pipeline_job(c.id(), _host.now());
    if (!a)
        return;
    running_job j;
    j.id = a->job;
    j.job = std::move(a->detail);
    if (!prepare_job(j)) {
        // Not held here: its recipients wait for their retry; the session is fine.
        queue::attempt_reply why{.code = 451,
                                 .enhanced = "4.3.0",
                                 .text = "message not available",
                                 .remote_mta = c.target().host,
                                 .category = queue::bounce_class::transient_failure};
        std::vector<queue::rcpt_result> results;
        for (auto r : j.job.rcpts)
            results.push_back(queue::rcpt_result{r, queue::rcpt_status::deferred, &why});
        _sched.complete(c.id(), j.id, results, _host.now(), _host.unix_now());
        _dirty = true;
        return;
    }
    mc.next = std::move(j);
    start_job(mc, *mc.next);
}

void engine::on_transaction(outbound::link& c, const smtp::transaction_result& r) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c || !it->second.job)
        return;
    conn& mc = it->second;
    running_job j = std::move(*mc.job);
    mc.job = std::move(mc.next);  // results come in start order
    mc.next.reset();
    const auto& t = c.target();
    std::vector<queue::attempt_reply> replies;
    replies.reserve(j.rcpts.size());
    std::vector<queue::rcpt_result> results;
    auto& notes = _notes[j.job.queue_id];
    std::string last_line;
    bool last_bounce = false;
    for (std::size_t i = 0; i < j.rcpts.size(); ++i) {
        const smtp::server_reply& rep = r.outcome(i);
        replies.push_back(to_attempt(rep, t.host));
        queue::rcpt_status st = queue::rcpt_status::deferred;
        bool bounce = false;
        if (_settings.shaping && !r.delivered(i) && replies.back().code != 0) {
            // Each distinct reply once through the rules (one RE2::Set pass).
            std::string line = replies.back().to_string();
            if (line != last_line) {
                last_bounce = shape_reply(c.id(), mc, line);
                last_line = std::move(line);
            }
            bounce = last_bounce;
        }
        if (r.delivered(i)) {
            st = queue::rcpt_status::delivered;
        } else if (r.permanent(i) || bounce) {
            st = queue::rcpt_status::failed;
        } else if (replies.back().code < 400 || replies.back().code >= 500) {
            replies.back().code = 451;  // a made-up reply (no server answer) is transient
        }
        std::string text = replies.back().to_string();
        if (c.tls_active())
            text += ", tls";
        notes.push_back(tx_note{j.job.rcpts[i], t.host, t.ip, std::move(text),
                                replies.back().category, std::string(source_name(mc.source))});
        results.push_back(queue::rcpt_result{j.job.rcpts[i], st, nullptr});
        // RFC 3461 5.2.2: a next hop without DSN ends the chain of reports here.
        if (st == queue::rcpt_status::delivered && i < j.rcpt_dsn.size() && !c.capabilities().dsn &&
            mail::wants_notice(j.rcpt_dsn[i], mail::notify::success))
            results.back().relayed_notice = true;
    }
    for (std::size_t i = 0; i < results.size(); ++i)
        results[i].reply = &replies[i];
    _sched.complete(c.id(), j.id, results, _host.now(), _host.unix_now());
    _dirty = true;
    if (_draining)
        c.stop(false);
}

void engine::on_failed(outbound::link& c, const smtp::server_reply& why) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;
    conn& mc = it->second;
    if (c.established() || mc.opened)
        return;  // a working session broke: on_closed reports it
    if (c.bind_error() != 0 && mc.source >= 0 && _settings.shaping) {
        // The source cannot be used (an address on no interface): out for a while, and this
        // connection is withdrawn without counting an attempt, so the jobs go out from the
        // pool's other sources.
        const auto until = _host.now() + _settings.shaping->unbindable_for;
        _sched.limits()->suspend_source(static_cast<unsigned>(mc.source + 1), until);
        log::warn(
            "egress source {} ({}) cannot bind: {}; suspended for {}, traffic moves to the "
            "pool's other sources",
            source_name(mc.source),
            core::ip_text(_settings.sources[static_cast<std::size_t>(mc.source)].address),
            std::strerror(c.bind_error()),
            core::format_duration(std::chrono::duration_cast<std::chrono::seconds>(
                _settings.shaping->unbindable_for)));
        const std::uint64_t cid = c.id();
        _dead.push_back(std::move(mc.c));
        _sched.connection_closed(cid, _host.now());
        _conns.erase(it);
        _dirty = true;
        if (!_running)
            run();
        return;
    }
    if (_settings.shaping && why.code != 0)
        shape_reply(c.id(), mc, to_attempt(why, c.target().host).to_string());
    // Connection refused, greeting or EHLO refused, required TLS failed: next address, same
    // attempt (RFC 5321 5.1).
    mc.last_error = why;
    log::info("{}: {} [{}] failed ({}), {}", log::sanitize(mc.key), c.target().host, c.target().ip,
              log::sanitize(one_line(why.text)),
              mc.next_target < mc.targets.size() ? "trying the next" : "no more to try");
    connect_next(c.id(), mc);
    if (!_running)
        run();
}

void engine::apply_source(conn& mc) {
    if (mc.source < 0 || static_cast<std::size_t>(mc.source) >= _settings.sources.size())
        return;
    const auto& src = _settings.sources[static_cast<std::size_t>(mc.source)];
    mc.settings.source = src.address;
    mc.settings.client.helo_name = src.ehlo_name;
}

std::string_view engine::source_name(int source) const {
    if (source < 0 || static_cast<std::size_t>(source) >= _settings.sources.size())
        return {};
    return _settings.sources[static_cast<std::size_t>(source)].name;
}

bool engine::shape_reply(std::uint64_t cid, const conn& mc, const std::string& line) {
    const queue::shaping_context* sh = _settings.shaping;
    if (!sh || sh->rules.size() == 0)
        return false;
    const auto now = _host.now();
    _effects.clear();
    sh->rules.on_reply(line, _sched.provider_of(cid), _sched.domain_scope_of(cid),
                       _sched.slot_of(cid), now, *_sched.limits(), _effects, _rule_scratch);
    bool bounce = false;
    for (const auto& e : _effects) {
        const queue::rule_spec& r = sh->rules[static_cast<std::size_t>(e.rule)];
        std::string scope;
        if (e.scope < 0)
            scope = fmt::format("domain {}", log::sanitize(mc.key));
        else if (static_cast<std::size_t>(e.scope) < _settings.provider_names.size())
            scope = fmt::format("provider {}",
                                _settings.provider_names[static_cast<std::size_t>(e.scope)]);
        else
            scope = fmt::format("domain {}", r.domain);
        const std::string_view src = mc.source >= 0 ? source_name(mc.source) : "(default)";
        const auto dur =
            core::format_duration(std::chrono::duration_cast<std::chrono::seconds>(r.duration));
        switch (e.action) {
            case queue::rule_action::bounce:
                bounce = true;
                log::info("shaping: {} matched ({}): the recipients fail now: {}", r.where, scope,
                          log::sanitize(line));
                break;
            case queue::rule_action::suspend:
                if (e.scope < 0)
                    _sched.suspend_destination(cid, e.until);
                record_effect(mc, r, e.scope, line);
                log::warn("shaping: {} suspended from source {} for {} ({}): {}", scope, src, dur,
                          r.where, log::sanitize(line));
                break;
            case queue::rule_action::set:
                if (e.scope >= 0)
                    record_effect(mc, r, e.scope, line);
                log::warn(
                    "shaping: {} limited from source {} for {} to {}{} then back by doubling "
                    "every quarter of it ({}): {}",
                    scope, src, dur,
                    r.set_rate > 0 ? fmt::format("{:g}/s", r.set_rate) : std::string(),
                    r.set_connections > 0 ? fmt::format(" {} connection(s)", r.set_connections)
                                          : std::string(),
                    r.where, log::sanitize(line));
                break;
        }
    }
    return bounce;
}

// A fired suspend or set, told to the store's keeper (the admin thread) with its scope as the
// store names it: the provider, the rule's domain, or the destination itself (scope -1).
void engine::record_effect(const conn& mc, const queue::rule_spec& r, int scope,
                           std::string_view line) {
    const queue::shaping_context* sh = _settings.shaping;
    if (sh == nullptr || sh->recorder == nullptr)
        return;
    queue::suspension rec;
    const bool provider =
        scope >= 0 && static_cast<std::size_t>(scope) < _settings.provider_names.size();
    rec.scope.kind = provider ? queue::suspension_kind::provider : queue::suspension_kind::domain;
    rec.scope.name = provider ? _settings.provider_names[static_cast<std::size_t>(scope)]
                              : (scope < 0 ? mc.key : r.domain);
    rec.scope.source = std::string(source_name(mc.source));
    rec.since_unix = _host.unix_now();
    rec.until_unix = rec.since_unix +
                     std::max<std::int64_t>(
                         1, std::chrono::duration_cast<std::chrono::seconds>(r.duration).count());
    rec.reason = std::string(line);
    rec.origin = std::string(queue::origin_rule);
    rec.rule = fmt::format("{} {}", r.where, r.match);
    if (r.action == queue::rule_action::set) {
        rec.effect = queue::suspension_effect::set;
        rec.set_rate = r.set_rate;
        rec.set_connections = r.set_connections;
    }
    sh->recorder->record(_host.shard_id(), std::move(rec));
}

void engine::on_closed(outbound::link& c) {
    if (c.id() == 0) {
        if (auto l = _pool.take(c)) {
            _dead.push_back(std::move(l));
            _dirty = true;
        }
        return;
    }
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;  // a failed fallback attempt, already replaced: reaped from _dead
    conn& mc = it->second;
    const auto now = _host.now();
    if (mc.job) {
        // Closed with a transaction running (or waiting): its recipients wait for their retry.
        queue::attempt_reply why{.code = 421,
                                 .enhanced = "4.4.2",
                                 .text = "connection closed during delivery",
                                 .remote_mta = c.target().host,
                                 .category = queue::bounce_class::bad_connection};
        _sched.job_failed(c.id(), mc.job->id, why, now, _host.unix_now());
        mc.job.reset();
        if (mc.next) {
            _sched.job_failed(c.id(), mc.next->id, why, now, _host.unix_now());
            mc.next.reset();
        }
    }
    _sched.connection_closed(c.id(), now);
    _dead.push_back(std::move(mc.c));
    _conns.erase(it);
    _dirty = true;
}

// --- drain -----------------------------------------------------------------------------------

void engine::begin_drain(bool force) {
    _draining = true;
    std::vector<std::uint64_t> ids;
    for (auto& [id, mc] : _conns)
        ids.push_back(id);
    for (auto id : ids) {
        auto it = _conns.find(id);
        if (it == _conns.end())
            continue;
        if (it->second.c) {
            if (force || !it->second.job)
                it->second.c->stop(force);
        } else if (it->second.dns_failure) {
            // A DNS-failure placeholder (a lookup in flight is cancelled below).
            _sched.connection_closed(id, _host.now());
            _conns.erase(it);
        }
    }
    _pool.stop_all(force, _dead);
    _net.shutdown();  // callbacks run now with errc::cancelled: on_route closes
    _dirty = true;
    run();
}

bool engine::idle() {
    const bool quiet = _conns.empty() && _pool.empty() && !_sched.has_outgoing() &&
                       _host.inbox_empty() && _net.idle();
    _host.set_quiet(quiet);
    if (!quiet || !_host.all_quiet())
        return false;
    // Everyone is quiet; a message pushed before its sender said so is visible now.
    return _host.inbox_empty() && _dead.empty();
}

}  // namespace ringmail::delivery
