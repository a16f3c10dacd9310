#include "ringmail/server/mx_delivery.h"

#include "ringmail/core/log.h"
#include "ringmail/dns/errc.h"
#include "ringmail/server/delivery.h"
#include "ringmail/server/delivery_log.h"
#include "ringmail/server/shard.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace ringmail::server {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// Addresses tried per attempt over all MX hosts (RFC 5321 5.1 asks for "multiple
// addresses"; a bound keeps a broken domain from holding a connection slot for long).
constexpr std::size_t max_targets = 10;
// Parked sessions (idle, belonging to no destination): per shard and per MX address.
constexpr std::size_t max_parked = 32;
constexpr std::size_t max_parked_per_address = 4;

queue::scheduler_config make_scheduler_config(const daemon_context& ctx, unsigned shard) {
    const auto& d = ctx.cfg.delivery;
    queue::scheduler_config sc;
    sc.shard = shard;
    sc.shards = ctx.shards;
    queue::destination_policy defaults;
    defaults.max_connections = d.destination_max_connections;
    defaults.max_messages_per_connection = d.max_messages_per_connection;
    defaults.connect_timeout = d.connect_timeout;
    std::vector<queue::domain_override> overrides;
    for (const auto& dc : ctx.cfg.domains) {
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
    sc.policies = queue::domain_policy(defaults, overrides);
    sc.retry.schedule = d.retry_schedule;
    sc.retry.max_lifetime = d.max_lifetime;
    sc.seed = std::random_device{}();
    sc.max_total_connections = d.max_connections;
    sc.idle_timeout = d.idle_timeout;
    sc.gauges = ctx.mx.gauges.get();
    return sc;
}

std::string one_line(std::string_view text) {
    std::string s(text);
    std::replace(s.begin(), s.end(), '\n', ' ');
    return s;
}

queue::attempt_reply to_attempt(const smtp::server_reply& r, std::string_view host) {
    return queue::attempt_reply{.code = r.code,
                                .enhanced = r.enhanced,
                                .text = one_line(r.text),
                                .remote_mta = std::string(host)};
}
}  // namespace

mx_delivery::mx_delivery(shard& sh)
    : _shard(sh), _ctx(sh.ctx()), _sched(make_scheduler_config(sh.ctx(), sh.id())) {
    dns::resolver_options ro;
    ro.servers = _ctx.cfg.dns.servers;
    ro.port = _ctx.cfg.delivery.mx_port;
    std::string why;
    auto r = dns::resolver::create(sh.reactor(), ro, &why);
    if (!r) {
        // Every destination then defers (4.4.3) until the daemon is restarted with a usable
        // resolver configuration: mail is kept, never bounced.
        log::error("shard {}: DNS resolver: {}", sh.id(), why.empty() ? r.error().message() : why);
    } else {
        _resolver = std::move(*r);
    }
    _ctx.mx.quiet[sh.id()].store(false, std::memory_order_relaxed);
    _ctx.mx.mailbox->attach(sh.reactor(), sh.id(), [this](unsigned from, mx_message&& m) {
        on_message(from, std::move(m));
    });
}

mx_delivery::~mx_delivery() {
    _conns.clear();
    _parked.clear();
    _dead.clear();
    if (_resolver)
        _resolver->shutdown();
}

bool mx_delivery::can_accept() const {
    return _ledger.size() < _ledger.max_messages();
}

// --- the origin side ---

void mx_delivery::hold_view(const std::shared_ptr<const message_view>& v, std::size_t rcpts) {
    auto& ref = _views[v->id];
    if (!ref.view)
        ref.view = v;
    ref.rcpts += rcpts;
}

void mx_delivery::submit(const std::shared_ptr<const message_view>& view,
                         std::span<const std::uint32_t> pending, std::uint32_t attempts,
                         std::int64_t next_attempt_unix) {
    const auto now = _shard.reactor().now();
    const std::int64_t now_unix = _shard.unix_now();
    for (auto& g : queue::group_by_domain(view->rcpts, pending)) {
        queue::delivery_job j;
        j.queue_id = view->id;
        j.rcpts = g.rcpts;
        j.attempts = attempts;
        j.arrival_unix = view->arrival;
        j.next_attempt = next_attempt_unix > now_unix
                             ? now + std::chrono::seconds(next_attempt_unix - now_unix)
                             : now;
        std::size_t n = j.rcpts.size();
        hold_view(view, n);
        if (auto ok = _sched.submit(g.domain, std::move(j), now); !ok) {
            // Durable all the same: the next start-up submits it again.
            log::error("{}: cannot schedule {} recipient(s) at {}: {}",
                       spool::format_queue_id(view->id), n, log::sanitize(g.domain),
                       ok.error().message());
            auto it = _views.find(view->id);
            it->second.rcpts -= n;
            if (it->second.rcpts == 0)
                _views.erase(it);
        }
    }
    _dirty = true;
}

namespace {
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
    std::string scratch;
    v->message_id = std::string(find_message_id(m.body, scratch));
    return v;
}
}  // namespace

void mx_delivery::add_recovered(spool::spool& sp, const spool::recovered_message& m) {
    (void)sp;
    ledger_message lm;
    lm.id = m.msg.id;
    lm.sender = m.msg.env.mail_from;
    lm.arrival = m.msg.env.arrival_time;
    lm.rcpts = m.msg.env.rcpt_to;
    lm.attempts = m.attempts;
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
    if (auto ok = _ledger.add(std::move(lm)); !ok) {
        log::error("{}: cannot queue recovered message: {}", spool::format_queue_id(m.msg.id),
                   ok.error().message());
        return;
    }
    // Only the recipients still pending become jobs again.
    submit(make_view(m.msg), pending, m.attempts, m.next_attempt);
}

void mx_delivery::add_committed(spool::spool& sp, spool::queue_id id) {
    auto m = sp.read(id);
    if (!m) {
        log::error("{}: committed but unreadable: {}", spool::format_queue_id(id),
                   m.error().message());
        return;
    }
    auto view = make_view(*m);
    if (_shard.events().enabled()) {
        std::string qid = spool::format_queue_id(id);
        delivery_record r;
        r.type = delivery_event::reception;
        r.time_ms = _shard.unix_now_ms();
        r.queue_id = qid;
        r.message_id = view->message_id;
        r.sender = m->env.mail_from;
        r.recipients = static_cast<std::uint32_t>(m->env.rcpt_to.size());
        r.client_ip = m->env.client_address;
        r.size = static_cast<std::int64_t>(m->body.size());
        _shard.events().add(r);
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
    std::vector<std::uint32_t> pending(view->rcpts.size());
    for (std::uint32_t i = 0; i < pending.size(); ++i)
        pending[i] = i;
    submit(view, pending, 0, 0);
}

void mx_delivery::apply_notice(const queue::job_notice& n) {
    spool::spool* sp = _shard.spool_for(n.queue_id);
    auto a = _ledger.apply(n);
    if (!sp)
        return;
    for (auto [i, o] : a.outcomes)
        sp->record_rcpt(n.queue_id, i, o);
    if (a.retry)
        sp->record_attempt(n.queue_id, a.retry->attempts, a.retry->next_attempt);
    if (a.bounce)
        spool_bounce(_shard, *sp, *a.bounce);
    if (a.null_sender_failure) {
        // RFC 5321 6.1: never a notification about a notification (or any null-sender mail).
        log::info("{}: undeliverable, null sender: no notification sent",
                  spool::format_queue_id(n.queue_id));
    }
    if (a.done)
        sp->record_done(n.queue_id);
    if (!a.outcomes.empty() || a.retry || a.done)
        _journaled = true;
}

// --- messages between shards ---

void mx_delivery::on_message(unsigned from, mx_message&& m) {
    if (auto* h = std::get_if<queue::job_handoff>(&m.msg)) {
        if (m.view)
            hold_view(m.view, h->job.rcpts.size());
    }
    auto notice = _sched.receive(from, std::move(m.msg), _shard.reactor().now());
    if (notice)
        apply_notice(*notice);
    _dirty = true;
}

void mx_delivery::account(const queue::shard_message& msg) {
    auto [id, n] = released(msg);
    release(id, n);
}

void mx_delivery::release(std::uint64_t id, std::size_t n) {
    auto it = _views.find(id);
    if (it == _views.end() || n == 0)
        return;
    it->second.rcpts -= std::min(n, it->second.rcpts);
    if (it->second.rcpts == 0)
        _views.erase(it);
}

// Jobs leaving this shard, and final outcomes, release their hold on the message view.
std::pair<std::uint64_t, std::size_t> mx_delivery::released(const queue::shard_message& msg) {
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

// The delivery log line of every recipient of a notice, written by the shard that made the
// attempt (it knows the MX host and address), once the scheduler decided the recipient's fate.
void mx_delivery::log_notice(const queue::job_notice& n) {
    auto notes_it = _notes.find(n.queue_id);
    delivery_log& events = _shard.events();
    if (events.enabled()) {
        auto vit = _views.find(n.queue_id);
        const message_view* v = vit == _views.end() ? nullptr : vit->second.view.get();
        std::string id = spool::format_queue_id(n.queue_id);
        const std::int64_t now_ms = _shard.unix_now_ms();
        for (std::size_t i = 0; i < n.rcpts.size(); ++i) {
            std::uint16_t r = n.rcpts[i];
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
            const tx_note* note = nullptr;
            if (notes_it != _notes.end()) {
                for (const auto& t : notes_it->second) {
                    if (t.rcpt == r)
                        note = &t;
                }
            }
            std::string reply_text;
            std::string_view host;
            if (note) {
                reply_text = note->reply;
                host = note->mx_host;
                rec.mx_ip = note->mx_ip;
            } else if (n.detail) {
                for (const auto& [idx, rep] : n.detail->replies) {
                    if (idx == r) {
                        reply_text = rep.to_string();
                        host = rep.remote_mta;
                    }
                }
            }
            rec.time_ms = now_ms;
            rec.queue_id = id;
            if (v) {
                rec.message_id = v->message_id;
                rec.sender = v->mail_from;
                if (r < v->rcpts.size())
                    rec.recipient = v->rcpts[r];
                rec.latency_ms = std::max<std::int64_t>(0, now_ms - v->arrival * 1000);
                rec.size = static_cast<std::int64_t>(v->body.size());
            }
            rec.mx_host = host;
            rec.reply = reply_text;
            rec.attempt = n.attempts;
            events.add(rec);
        }
    }
    if (notes_it != _notes.end()) {
        auto& v = notes_it->second;
        std::erase_if(v, [&](const tx_note& t) {
            return std::find(n.rcpts.begin(), n.rcpts.end(), t.rcpt) != n.rcpts.end();
        });
        if (v.empty())
            _notes.erase(notes_it);
    }
}

// --- the owner side: the scheduler's actions ---

void mx_delivery::on_expire() {
    _dirty = true;
    run();
}

void mx_delivery::reap() {
    if (!_dead.empty()) {
        std::erase_if(_dead, [](const auto& c) { return c->finished(); });
    }
    if (_dirty)
        run();
}

void mx_delivery::run() {
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
                auto a = _sched.next_action(_shard.reactor().now());
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
        auto& mb = *_ctx.mx.mailbox;
        const unsigned self = _shard.id();
        _sched.flush_outgoing([&](unsigned to, queue::shard_message& msg) -> bool {
            if (to == self) {
                // Our own notice: this shard is both the owner and the origin.
                auto& n = std::get<queue::job_notice>(msg);
                log_notice(n);
                account(msg);
                apply_notice(n);
                return true;
            }
            // The log and the view accounting need the message after it has gone (the
            // receiver owns it then): keep what they need first.
            auto [id, n] = released(msg);
            std::optional<queue::job_notice> copy;
            if (auto* nt = std::get_if<queue::job_notice>(&msg); nt && _shard.events().enabled()) {
                copy.emplace();
                copy->queue_id = nt->queue_id;
                copy->rcpts = nt->rcpts;
                copy->status = nt->status;
                copy->attempts = nt->attempts;
                if (nt->detail)
                    copy->detail = std::make_unique<queue::notice_detail>(*nt->detail);
            }
            mx_message out;
            if (auto* h = std::get_if<queue::job_handoff>(&msg)) {
                auto it = _views.find(h->job.queue_id);
                if (it != _views.end())
                    out.view = it->second.view;
            }
            out.msg = std::move(msg);
            if (!mb.try_send(self, to, std::move(out))) {
                msg = std::move(out.msg);
                return false;
            }
            if (copy)
                log_notice(*copy);
            release(id, n);
            return true;
        });
        if (!_draining)
            reclaim_idle();
    } while (_dirty);
    _running = false;
    if (auto p = expire_parked(); p && (!until || *p < *until))
        until = p;
    if (_sched.has_outgoing()) {
        // A ring is full: try again soon (the consumer is draining it).
        until = _shard.reactor().now() + 1ms;
    }
    if (until) {
        _shard.reactor().arm(*this, *until);
    } else {
        _shard.reactor().disarm(*this);
    }
    if (_journaled) {
        // The spool's commit hook ran before us in this iteration: make the next one come now.
        _journaled = false;
        _shard.reactor().nop(nullptr);
    }
}

// The scheduler keeps an idle connection until delivery.idle_timeout even when this shard's
// connection cap (delivery.max_connections) then keeps other destinations with ready jobs from
// opening one: with more destinations than connections, delivery would stall for the idle
// timeout. When jobs wait, the cap is reached and few connections are being opened, one idle
// connection is handed back to the scheduler at once (its QUIT goes out afterwards, so the
// destination's global limit may be passed by that one closing connection for a moment).
void mx_delivery::reclaim_idle() {
    constexpr std::size_t max_opening = 8;
    const auto counts = _sched.counts();
    if (counts.ready == 0 || counts.connections < _ctx.cfg.delivery.max_connections)
        return;
    std::size_t opening = 0;
    auto victim = _conns.end();
    for (auto it = _conns.begin(); it != _conns.end(); ++it) {
        const mx_conn& mc = it->second;
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
    _sched.connection_closed(cid, _shard.reactor().now());
    if (c) {
        c->stop(false);  // QUIT; its on_closed finds no connection record and is ignored
        _dead.push_back(std::move(c));
    }
    _dirty = true;
}

// --- parked sessions: reuse across destinations that share an MX address ---

// Takes mc's idle session into the pool; false (mc untouched) when it cannot be kept. A
// session past the default message limit per connection is not kept: the scheduler counts
// messages per its own connection only.
bool mx_delivery::park(mx_conn& mc) {
    const auto& d = _ctx.cfg.delivery;
    if (_draining || !mc.c || mc.job || !mc.c->ready() || !mc.c->established() ||
        d.idle_timeout.count() <= 0 || _parked.size() >= max_parked ||
        (d.max_messages_per_connection != 0 &&
         mc.c->transactions() >= d.max_messages_per_connection))
        return false;
    const auto& ep = mc.c->target().endpoint;
    std::size_t same = 0;
    for (const auto& p : _parked) {
        if (p.c->target().endpoint == ep)
            ++same;
    }
    if (same >= max_parked_per_address)
        return false;
    parked_session p;
    p.verified = mc.c->tls_active() && mc.settings.tls && mc.settings.tls == _tls_verify;
    p.until = _shard.reactor().now() + d.idle_timeout;
    p.c = std::move(mc.c);
    p.c->rebind(0);  // scheduler ids start at 1: events of a parked session find no record
    log::debug("{}: {} [{}] session parked", log::sanitize(mc.domain), p.c->target().host,
               p.c->target().ip);
    _parked.push_back(std::move(p));
    return true;
}

// Before connecting to mc's next target: a parked session to any address of the same
// preference level whose TLS state satisfies mc's policy becomes mc's connection, opened at
// once. Lower preference levels are only reached after this level failed.
bool mx_delivery::adopt(std::uint64_t cid, mx_conn& mc) {
    if (_parked.empty() || mc.next_target >= mc.targets.size())
        return false;
    const std::uint16_t level = mc.preferences[mc.next_target];
    const auto& s = mc.settings;
    const bool verify = s.tls && s.tls == _tls_verify;
    for (std::size_t i = mc.next_target; i < mc.targets.size() && mc.preferences[i] == level; ++i) {
        const outbound_target& t = mc.targets[i];
        for (auto it = _parked.begin(); it != _parked.end(); ++it) {
            const outbound_connection& c = *it->c;
            if (!(c.target().endpoint == t.endpoint) || !c.ready())
                continue;
            if (s.client.starttls == smtp::tls_policy::required && !c.tls_active())
                continue;
            // Opportunistic: not plaintext where a fresh session would have had TLS.
            if (s.client.starttls != smtp::tls_policy::none && s.tls && !c.tls_active() &&
                c.capabilities().starttls)
                continue;
            if (verify && (!it->verified || c.target().host != t.host))
                continue;
            auto conn = std::move(it->c);
            _parked.erase(it);
            conn->rebind(cid);
            log::debug("{}: reusing the session to {} [{}]", log::sanitize(mc.domain),
                       conn->target().host, conn->target().ip);
            mc.c = std::move(conn);
            mc.next_target = mc.targets.size();
            mc.opened = true;
            _sched.connection_opened(cid, _shard.reactor().now());
            _dirty = true;
            return true;
        }
    }
    return false;
}

// QUITs parked sessions idle for delivery.idle_timeout; the next expiry, if any.
std::optional<queue::steady_time> mx_delivery::expire_parked() {
    const auto now = _shard.reactor().now();
    std::optional<queue::steady_time> next;
    for (auto it = _parked.begin(); it != _parked.end();) {
        if (it->until <= now) {
            it->c->stop(false);
            _dead.push_back(std::move(it->c));
            it = _parked.erase(it);
            continue;
        }
        if (!next || it->until < *next)
            next = it->until;
        ++it;
    }
    return next;
}

// The peer closed (or broke) a parked session: it leaves the pool.
bool mx_delivery::parked_closed(outbound_connection& c) {
    for (auto it = _parked.begin(); it != _parked.end(); ++it) {
        if (it->c.get() == &c) {
            _dead.push_back(std::move(it->c));
            _parked.erase(it);
            return true;
        }
    }
    return false;
}

outbound_settings mx_delivery::settings_for(const std::string& domain) {
    const auto& d = _ctx.cfg.delivery;
    outbound_settings s;
    s.client = _ctx.client;
    core::tls_policy policy = d.tls;
    bool verify = d.tls_verify;
    for (const auto& dc : _ctx.cfg.domains) {
        if (dc.name == domain) {
            if (dc.tls)
                policy = *dc.tls;
            if (dc.tls_verify)
                verify = *dc.tls_verify;
        }
    }
    s.client.starttls = to_smtp_policy(policy);
    if (s.client.starttls != smtp::tls_policy::none) {
        if (verify) {
            if (!_tls_verify_tried) {
                _tls_verify_tried = true;
                _tls_verify = make_client_tls(d, true);
            }
            s.tls = _tls_verify;
        } else {
            if (!_tls_tried) {
                _tls_tried = true;
                _tls_opportunistic = make_client_tls(d, false);
            }
            s.tls = _tls_opportunistic;
        }
        // No context: opportunistic goes plaintext, required fails (deferred) in the session.
        if (!s.tls && s.client.starttls == smtp::tls_policy::opportunistic)
            s.client.starttls = smtp::tls_policy::none;
    }
    s.connect_timeout = d.connect_timeout;
    s.idle_timeout = std::chrono::milliseconds(0);  // the scheduler closes idle connections
    s.max_transactions = 0;                         // and counts transactions
    return s;
}

void mx_delivery::open(const queue::open_connection& a) {
    std::uint64_t cid = a.conn;
    mx_conn& mc = _conns[cid];
    mc.domain = std::string(a.domain);
    mc.settings = settings_for(mc.domain);
    mc.settings.connect_timeout = a.connect_timeout;
    if (!_resolver) {
        on_route(cid, result<dns::route>(dns::errc::internal));
        return;
    }
    // The callback runs from the loop later, never inside resolve_route.
    _resolver->resolve_route(mc.domain,
                             [this, cid](const result<dns::route>& r) { on_route(cid, r); });
}

void mx_delivery::on_route(std::uint64_t cid, const result<dns::route>& r) {
    auto it = _conns.find(cid);
    if (it == _conns.end())
        return;
    mx_conn& mc = it->second;
    _dirty = true;
    const auto now = _shard.reactor().now();
    if (_draining) {
        _sched.connection_closed(cid, now);
        _conns.erase(it);
        return;
    }
    if (!r) {
        const std::error_code ec = r.error();
        queue::attempt_reply why;
        why.code = dns::reply_code(ec);
        why.enhanced = std::string(dns::enhanced_status(ec));
        why.text = fmt::format("{}: {}", mc.domain, ec.message());
        if (dns::is_permanent(ec)) {
            // Every job of the destination fails with this reply: the scheduler runs them on
            // a connection that exists only here.
            log::info("{}: {} ({})", log::sanitize(mc.domain), ec.message(), why.enhanced);
            mc.dns_failure = why;
            mc.opened = true;
            _sched.connection_opened(cid, now);
        } else {
            log::warn("{}: route lookup failed: {}", log::sanitize(mc.domain), ec.message());
            _sched.connection_failed(cid, why, now, _shard.unix_now());
            _conns.erase(it);
        }
        if (!_running)
            run();
        return;
    }
    for (const auto& h : r->hosts) {
        for (const auto& ep : h.addresses) {
            if (mc.targets.size() >= max_targets)
                break;
            mc.targets.push_back(outbound_target{ep, h.name, core::ip_text(ep)});
            mc.preferences.push_back(h.preference);
        }
    }
    mc.next_target = 0;
    connect_next(cid, mc);
    if (!_running)
        run();
}

void mx_delivery::connect_next(std::uint64_t cid, mx_conn& mc) {
    if (mc.c)
        _dead.push_back(std::move(mc.c));
    if (mc.next_target >= mc.targets.size() || _draining) {
        // Every address refused or failed: the attempt defers what is ready there.
        smtp::server_reply last = mc.last_error.code != 0
                                      ? mc.last_error
                                      : smtp::make_reply(451, "4.4.4", "no usable mail exchanger");
        queue::attempt_reply why =
            to_attempt(last, mc.targets.empty() ? "" : mc.targets.back().host);
        if (why.code < 400 || why.code >= 500)
            why.code = 451;  // a refusing greeting defers; only replies to mail bounce
        if (why.enhanced.empty() || why.enhanced[0] != '4')
            why.enhanced = "4.4.1";
        const auto now = _shard.reactor().now();
        if (_draining)
            _sched.connection_closed(cid, now);
        else
            _sched.connection_failed(cid, why, now, _shard.unix_now());
        _conns.erase(cid);
        _dirty = true;
        return;
    }
    if (adopt(cid, mc))
        return;
    const outbound_target& t = mc.targets[mc.next_target++];
    mc.c = std::make_unique<outbound_connection>(static_cast<outbound_handler&>(*this), _shard, cid,
                                                 t, mc.settings);
    mc.c->connect();
}

void mx_delivery::finish_pseudo(std::uint64_t cid, mx_conn& mc, running_job& j) {
    std::vector<queue::rcpt_result> results;
    auto& notes = _notes[j.job.queue_id];
    for (auto r : j.job.rcpts) {
        results.push_back(queue::rcpt_result{
            .rcpt = r, .status = queue::rcpt_status::failed, .reply = &*mc.dns_failure});
        notes.push_back(tx_note{r, "", "", mc.dns_failure->to_string()});
    }
    _sched.complete(cid, j.id, results, _shard.reactor().now(), _shard.unix_now());
}

void mx_delivery::run_job(queue::run_job& a) {
    auto it = _conns.find(a.conn);
    if (it == _conns.end())
        return;  // cannot happen: connections leave the map only when the scheduler forgets them
    mx_conn& mc = it->second;
    running_job j;
    j.id = a.job;
    j.job = a.detail;
    if (mc.dns_failure) {
        finish_pseudo(a.conn, mc, j);
        _sched.connection_closed(a.conn, _shard.reactor().now());
        _conns.erase(it);
        return;
    }
    auto vit = _views.find(j.job.queue_id);
    if (vit == _views.end() || !mc.c || !mc.c->ready()) {
        queue::attempt_reply why{
            .code = 451,
            .enhanced = vit == _views.end() ? "4.3.0" : "4.4.2",
            .text = vit == _views.end() ? "message not available" : "connection lost",
            .remote_mta = mc.c ? mc.c->target().host : ""};
        _sched.job_failed(a.conn, a.job, why, _shard.reactor().now(), _shard.unix_now());
        if (mc.c && !mc.c->finished()) {
            mc.c->stop(true);  // on_closed reports connection_closed
        } else {
            _sched.connection_closed(a.conn, _shard.reactor().now());
            if (mc.c)
                _dead.push_back(std::move(mc.c));
            _conns.erase(it);
        }
        return;
    }
    j.view = vit->second.view;
    for (auto r : j.job.rcpts)
        j.rcpts.push_back(r < j.view->rcpts.size() ? j.view->rcpts[r] : std::string());
    mc.job = std::move(j);
    const running_job& rj = *mc.job;
    smtp::outbound_message m;
    m.mail_from = rj.view->mail_from;
    m.rcpts = rj.rcpts;
    m.added_headers = rj.view->added_headers;
    m.body = rj.view->body;
    m.size = m.added_headers.size() + m.body.size();
    m.eight_bit = rj.view->eight_bit;
    m.smtputf8 = rj.view->smtputf8;
    mc.c->start(m);
}

void mx_delivery::close(std::uint64_t cid) {
    auto it = _conns.find(cid);
    if (it == _conns.end())
        return;
    if (it->second.c && !park(it->second)) {
        it->second.c->stop(false);  // QUIT; on_closed reports it
        return;
    }
    _sched.connection_closed(cid, _shard.reactor().now());
    _conns.erase(it);
}

// --- outbound connection events ---

void mx_delivery::on_ready(outbound_connection& c) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;
    mx_conn& mc = it->second;
    if (_draining) {
        c.stop(false);
        return;
    }
    if (!mc.opened) {
        mc.opened = true;
        _sched.connection_opened(c.id(), _shard.reactor().now());
    }
    _dirty = true;
    if (!_running)
        run();
}

void mx_delivery::on_transaction(outbound_connection& c, const smtp::transaction_result& r) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c || !it->second.job)
        return;
    mx_conn& mc = it->second;
    running_job j = std::move(*mc.job);
    mc.job.reset();
    const auto& t = c.target();
    std::vector<queue::attempt_reply> replies;
    replies.reserve(j.rcpts.size());
    std::vector<queue::rcpt_result> results;
    auto& notes = _notes[j.job.queue_id];
    for (std::size_t i = 0; i < j.rcpts.size(); ++i) {
        const smtp::server_reply& rep = r.outcome(i);
        replies.push_back(to_attempt(rep, t.host));
        queue::rcpt_status st = queue::rcpt_status::deferred;
        if (r.delivered(i)) {
            st = queue::rcpt_status::delivered;
        } else if (r.permanent(i)) {
            st = queue::rcpt_status::failed;
        } else if (replies.back().code < 400 || replies.back().code >= 500) {
            replies.back().code = 451;  // a made-up reply (no server answer) is transient
        }
        log::info("{}: to=<{}>, relay={}[{}], attempt={}, status={} ({}){}",
                  spool::format_queue_id(j.job.queue_id), log::sanitize(j.rcpts[i]), t.host, t.ip,
                  j.job.attempts + 1,
                  st == queue::rcpt_status::delivered ? "sent"
                  : st == queue::rcpt_status::failed  ? "bounced"
                                                      : "deferred",
                  log::sanitize(replies.back().to_string()), c.tls_active() ? ", tls" : "");
        notes.push_back(tx_note{j.job.rcpts[i], t.host, t.ip, replies.back().to_string()});
        results.push_back(queue::rcpt_result{j.job.rcpts[i], st, nullptr});
    }
    for (std::size_t i = 0; i < results.size(); ++i)
        results[i].reply = &replies[i];
    _sched.complete(c.id(), j.id, results, _shard.reactor().now(), _shard.unix_now());
    _dirty = true;
    if (_draining)
        c.stop(false);
}

void mx_delivery::on_failed(outbound_connection& c, const smtp::server_reply& why) {
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;
    mx_conn& mc = it->second;
    if (c.established() || mc.opened)
        return;  // a working session broke: on_closed reports it
    // Connection refused, greeting or EHLO refused, required TLS failed: next address, same
    // attempt (RFC 5321 5.1).
    mc.last_error = why;
    log::info("{}: {} [{}] failed ({}), {}", log::sanitize(mc.domain), c.target().host,
              c.target().ip, log::sanitize(one_line(why.text)),
              mc.next_target < mc.targets.size() ? "trying the next" : "no more to try");
    connect_next(c.id(), mc);
    if (!_running)
        run();
}

void mx_delivery::on_closed(outbound_connection& c) {
    if (c.id() == 0 && parked_closed(c)) {
        _dirty = true;
        return;
    }
    auto it = _conns.find(c.id());
    if (it == _conns.end() || it->second.c.get() != &c)
        return;  // a failed fallback attempt, already replaced: reaped from _dead
    mx_conn& mc = it->second;
    const auto now = _shard.reactor().now();
    if (mc.job) {
        // Closed by force with a transaction running: its recipients wait for their retry.
        queue::attempt_reply why{.code = 421,
                                 .enhanced = "4.4.2",
                                 .text = "connection closed during delivery",
                                 .remote_mta = c.target().host};
        _sched.job_failed(c.id(), mc.job->id, why, now, _shard.unix_now());
        mc.job.reset();
    }
    if (!mc.opened && !c.established()) {
        // Never usable and no failure reported (closed by a drain): nothing was attempted.
        _sched.connection_closed(c.id(), now);
    } else {
        _sched.connection_closed(c.id(), now);
    }
    _dead.push_back(std::move(mc.c));
    _conns.erase(it);
    _dirty = true;
}

// --- drain ---

void mx_delivery::begin_drain(bool force) {
    _draining = true;
    std::vector<std::uint64_t> ids;
    for (auto& [id, mc] : _conns)
        ids.push_back(id);
    for (auto id : ids) {
        auto it = _conns.find(id);
        if (it == _conns.end())
            continue;
        if (it->second.c) {
            it->second.c->stop(force);
        } else if (it->second.dns_failure || it->second.targets.empty()) {
            // A lookup in flight (cancelled below) or a DNS-failure placeholder.
            if (it->second.dns_failure) {
                _sched.connection_closed(id, _shard.reactor().now());
                _conns.erase(it);
            }
        }
    }
    for (auto& p : _parked) {
        p.c->stop(force);
        _dead.push_back(std::move(p.c));
    }
    _parked.clear();
    if (_resolver)
        _resolver->shutdown();  // callbacks run now with errc::cancelled: on_route closes
    _dirty = true;
    run();
}

bool mx_delivery::idle() {
    const unsigned self = _shard.id();
    auto& mb = *_ctx.mx.mailbox;
    bool inbox_empty = true;
    for (unsigned from = 0; from < _ctx.shards; ++from) {
        if (mb.pending_approx(from, self) != 0)
            inbox_empty = false;
    }
    bool quiet = _conns.empty() && _parked.empty() && !_sched.has_outgoing() && inbox_empty &&
                 (!_resolver || _resolver->idle());
    _ctx.mx.quiet[self].store(quiet, std::memory_order_seq_cst);
    if (!quiet)
        return false;
    for (unsigned s = 0; s < _ctx.shards; ++s) {
        if (!_ctx.mx.quiet[s].load(std::memory_order_seq_cst))
            return false;
    }
    // Everyone is quiet; a message pushed before its sender said so is visible now.
    for (unsigned from = 0; from < _ctx.shards; ++from) {
        if (mb.pending_approx(from, self) != 0)
            return false;
    }
    return _dead.empty();
}

}  // namespace ringmail::server
