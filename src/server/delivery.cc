#include "ringmail/server/delivery.h"

#include "ringmail/core/log.h"
#include "ringmail/core/socket.h"
#include "ringmail/queue/dsn.h"
#include "ringmail/server/delivery_log.h"
#include "ringmail/server/mx_delivery.h"
#include "ringmail/server/shard.h"

#include <fmt/format.h>
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits.h>

namespace ringmail::server {

namespace log = core::log;
using namespace std::chrono_literals;

namespace {
// Messages one shard keeps queued in memory before new mail gets 452 4.3.1 (each entry is a
// few hundred bytes; the spool holds the bodies).
constexpr std::size_t max_queue_entries = 500000;

queue::queue_config make_queue_config(const daemon_context& ctx) {
    queue::queue_config qc;
    qc.max_entries = max_queue_entries;
    qc.retry.schedule = ctx.cfg.delivery.retry_schedule;
    qc.retry.max_lifetime = ctx.cfg.delivery.max_lifetime;
    return qc;
}

std::string one_line(std::string_view text) {
    std::string s(text);
    std::replace(s.begin(), s.end(), '\n', ' ');
    return s;
}

std::string_view status_word(int code) {
    if (code >= 200 && code < 300)
        return "sent";
    if (code >= 500 && code < 600)
        return "bounced";
    return "deferred";
}

bool contains(const std::vector<std::uint32_t>& v, std::uint32_t x) {
    return std::find(v.begin(), v.end(), x) != v.end();
}
}  // namespace

// Delivery log lines for one attempt's recipients, once the queue has decided their fate
// (a 4xx past max_lifetime is an Expiration, not a TransientFailure).
void delivery::log_outcomes(const attempt_context& at, const queue::apply_actions& a,
                            const std::function<const queue::attempt_reply&(std::size_t)>& reply) {
    delivery_log& events = _shard.events();
    if (!events.enabled())
        return;
    std::string id = spool::format_queue_id(at.id);
    std::string scratch;
    std::string_view message_id = find_message_id(at.message, scratch);
    const std::int64_t now_ms = _shard.unix_now_ms();
    for (std::size_t i = 0; i < at.rcpts.size(); ++i) {
        const std::uint32_t index = at.rcpt_index[i];
        delivery_record r;
        r.type = contains(a.delivered, index) ? delivery_event::delivery
                 : contains(a.bounced, index) ? delivery_event::bounce
                 : contains(a.expired, index) ? delivery_event::expiration
                                              : delivery_event::transient_failure;
        const queue::attempt_reply& rep = reply(i);
        std::string reply_text = rep.to_string();
        r.time_ms = now_ms;
        r.queue_id = id;
        r.message_id = message_id;
        r.sender = at.sender;
        r.recipient = at.rcpts[i];
        r.mx_host = rep.remote_mta;
        r.mx_ip = at.mx_ip;
        r.reply = reply_text;
        r.attempt = at.attempt;
        r.latency_ms = std::max<std::int64_t>(0, now_ms - at.arrival * 1000);
        r.size = static_cast<std::int64_t>(at.message.size());
        events.add(r);
    }
}

// --- delivery ---

delivery::delivery(shard& sh)
    : _shard(sh), _queue(make_queue_config(sh.ctx())), _rng(std::random_device{}()) {
    const auto& d = sh.ctx().cfg.delivery;
    _settings.client = sh.ctx().client;
    _settings.client.starttls = to_smtp_policy(d.tls);
    _settings.connect_timeout = d.connect_timeout;
    _settings.idle_timeout = d.idle_timeout;
    _settings.max_transactions = d.max_messages_per_connection;
    if (!sh.ctx().smarthost) {
        _mx = std::make_unique<mx_delivery>(sh);
    } else if (_settings.client.starttls != smtp::tls_policy::none) {
        _settings.tls = make_client_tls(d, d.tls_verify);
        if (!_settings.tls)
            _settings.client.starttls = smtp::tls_policy::none;
    }
}

delivery::~delivery() {
    _conns.clear();
}

const std::string& delivery::smarthost_text() const {
    return _shard.ctx().smarthost_text;
}

std::string_view delivery::smarthost_ip() const {
    if (_smarthost_ip.empty() && _shard.ctx().smarthost) {
        _smarthost_ip = core::ip_text(*_shard.ctx().smarthost);
    }
    return _smarthost_ip;
}

bool delivery::can_accept() const {
    if (_mx)
        return _mx->can_accept();
    return _queue.counts().queued < _queue.max_entries();
}

void delivery::add_recovered(spool::spool& sp, const spool::recovered_message& m) {
    if (_mx) {
        _mx->add_recovered(sp, m);
        return;
    }
    queue::queue_entry e;
    e.id = m.msg.id;
    e.sender = m.msg.env.mail_from;
    e.arrival = m.msg.env.arrival_time;
    e.attempts = m.attempts;
    e.next_attempt = m.next_attempt;
    for (std::size_t i = 0; i < m.msg.env.rcpt_to.size(); ++i) {
        queue::recipient r;
        r.address = m.msg.env.rcpt_to[i];
        if (i < m.rcpt_done.size() && m.rcpt_done[i]) {
            auto o = m.rcpt_outcome[i];
            r.state = o == spool::outcome::delivered ? queue::rcpt_state::delivered
                      : o == spool::outcome::bounced ? queue::rcpt_state::bounced
                                                     : queue::rcpt_state::expired;
        }
        e.rcpts.push_back(std::move(r));
    }
    auto added = _queue.add(std::move(e));
    if (!added) {
        log::error("{}: cannot queue recovered message: {}", spool::format_queue_id(m.msg.id),
                   added.error().message());
        return;
    }
    kick();
}

void delivery::add_committed(spool::spool& sp, spool::queue_id id) {
    if (_mx) {
        _mx->add_committed(sp, id);
        return;
    }
    auto m = sp.read(id);
    if (!m) {
        log::error("{}: committed but unreadable: {}", spool::format_queue_id(id),
                   m.error().message());
        return;
    }
    queue::queue_entry e;
    e.id = id;
    e.sender = m->env.mail_from;
    e.arrival = m->env.arrival_time;
    for (const auto& r : m->env.rcpt_to) {
        queue::recipient rc;
        rc.address = r;
        e.rcpts.push_back(std::move(rc));
    }
    if (_shard.events().enabled()) {
        std::string qid = spool::format_queue_id(id);
        std::string scratch;
        delivery_record r;
        r.type = delivery_event::reception;
        r.time_ms = _shard.unix_now_ms();
        r.queue_id = qid;
        r.message_id = find_message_id(m->body, scratch);
        r.sender = m->env.mail_from;
        r.recipients = static_cast<std::uint32_t>(m->env.rcpt_to.size());
        r.client_ip = m->env.client_address;
        r.size = static_cast<std::int64_t>(m->body.size());
        _shard.events().add(r);
    }
    auto added = _queue.add(std::move(e));
    if (!added) {
        // Durable all the same: the next start-up queues it again.
        log::error("{}: queue full, message stays in the spool until restart",
                   spool::format_queue_id(id));
        return;
    }
    kick();
}

void delivery::internal_committed(const result<spool::queue_id>& id) {
    if (!id)
        log::error("a delivery status notification could not be spooled: {}", id.error().message());
}

std::optional<smarthost_job> delivery::next_job() {
    std::int64_t now = _shard.unix_now();
    while (auto id = _queue.pop_ready(now)) {
        const queue::queue_entry* e = _queue.find(*id);
        spool::spool* sp = _shard.spool_for(*id);
        auto m = sp ? sp->read(*id) : result<spool::stored_message>(spool::errc::unknown_queue_id);
        if (!m) {
            log::error("{}: cannot read from the spool: {}", spool::format_queue_id(*id),
                       m.error().message());
            queue::attempt_reply why;
            why.code = 451;
            why.enhanced = "4.3.0";
            why.text = "spool read failed";
            std::string sender = e->sender;  // the entry may be gone after apply
            auto a = _queue.apply_connection_failure(*id, why, now, _rng);
            if (sp)
                apply(*sp, *id, a, sender);
            continue;
        }
        smarthost_job job;
        job.sp = sp;
        job.msg = std::move(*m);
        job.attempt = e->attempts + 1;
        for (std::uint32_t i = 0; i < e->rcpts.size(); ++i) {
            if (e->rcpts[i].state != queue::rcpt_state::pending)
                continue;
            job.rcpts.push_back(e->rcpts[i].address);
            job.rcpt_index.push_back(i);
        }
        return job;
    }
    return std::nullopt;
}

void delivery::finished(smarthost_job& job, const smtp::transaction_result& r) {
    std::int64_t now = _shard.unix_now();
    std::vector<queue::rcpt_outcome> outcomes;
    outcomes.reserve(job.rcpts.size());
    for (std::size_t i = 0; i < job.rcpts.size(); ++i) {
        const smtp::server_reply& rep = r.outcome(i);
        queue::attempt_reply a{.code = rep.code,
                               .enhanced = rep.enhanced,
                               .text = one_line(rep.text),
                               .remote_mta = smarthost_text()};
        // A made-up reply (no server answer) is transient whatever else it says.
        if (r.temporary(i) && (a.code < 400 || a.code >= 500))
            a.code = 451;
        log::info("{}: to=<{}>, relay={}, delay={}, attempt={}, status={} ({})",
                  spool::format_queue_id(job.msg.id), log::sanitize(job.rcpts[i]), smarthost_text(),
                  now - job.msg.env.arrival_time, job.attempt, status_word(a.code),
                  log::sanitize(a.to_string()));
        outcomes.push_back(queue::rcpt_outcome{.rcpt = job.rcpt_index[i], .reply = std::move(a)});
    }
    auto actions = _queue.apply(job.msg.id, outcomes, now, _rng);
    log_outcomes(job_context(job), actions,
                 [&](std::size_t i) -> const queue::attempt_reply& { return outcomes[i].reply; });
    apply(*job.sp, job.msg.id, actions, job.msg.env.mail_from);
    kick();
}

delivery::attempt_context delivery::job_context(const smarthost_job& job) const {
    return attempt_context{.id = job.msg.id,
                           .sender = job.msg.env.mail_from,
                           .arrival = job.msg.env.arrival_time,
                           .attempt = job.attempt,
                           .message = job.msg.body,
                           .mx_ip = smarthost_ip(),
                           .rcpts = job.rcpts,
                           .rcpt_index = job.rcpt_index};
}

void delivery::connection_failed(outbound_connection& c, std::optional<smarthost_job> job,
                                 const smtp::server_reply& why) {
    std::int64_t now = _shard.unix_now();
    queue::attempt_reply a{.code = why.transient() ? why.code : 421,
                           .enhanced = why.enhanced.empty() ? "4.4.1" : why.enhanced,
                           .text = one_line(why.text),
                           .remote_mta = smarthost_text()};
    if (why.permanent())
        a.code = 421;  // a refusing greeting defers; only replies to mail bounce
    if (job) {
        auto actions = _queue.apply_connection_failure(job->msg.id, a, now, _rng);
        for (const auto& rc : job->rcpts) {
            log::info("{}: to=<{}>, relay={}, delay={}, attempt={}, status=deferred ({})",
                      spool::format_queue_id(job->msg.id), log::sanitize(rc), smarthost_text(),
                      now - job->msg.env.arrival_time, job->attempt, log::sanitize(a.to_string()));
        }
        log_outcomes(job_context(*job), actions,
                     [&](std::size_t) -> const queue::attempt_reply& { return a; });
        apply(*job->sp, job->msg.id, actions, job->msg.env.mail_from);
    }
    // While no connection to the smarthost works, everything due waits for its retry time:
    // the retry schedule paces reconnection instead of a connect storm.
    bool any_working = false;
    for (const auto& o : _conns) {
        if (o.get() != &c && o->established() && !o->finished())
            any_working = true;
    }
    if (!any_working)
        defer_all_ready(smtp::make_reply(a.code, a.enhanced, a.text));
    kick();
}

void delivery::defer_all_ready(const smtp::server_reply& why) {
    std::int64_t now = _shard.unix_now();
    queue::attempt_reply a{.code = why.code,
                           .enhanced = why.enhanced,
                           .text = one_line(why.text),
                           .remote_mta = smarthost_text()};
    std::size_t n = 0;
    while (auto id = _queue.pop_ready(now)) {
        spool::spool* sp = _shard.spool_for(*id);
        const queue::queue_entry* e = _queue.find(*id);
        std::string sender = e->sender;  // the entry may be gone after apply
        attempt_context at;
        at.id = *id;
        at.sender = sender;
        at.arrival = e->arrival;
        at.attempt = e->attempts + 1;
        at.mx_ip = smarthost_ip();
        std::vector<std::string> rcpts;
        std::vector<std::uint32_t> index;
        if (_shard.events().enabled()) {
            for (std::uint32_t i = 0; i < e->rcpts.size(); ++i) {
                if (e->rcpts[i].state != queue::rcpt_state::pending)
                    continue;
                rcpts.push_back(e->rcpts[i].address);
                index.push_back(i);
            }
            at.rcpts = rcpts;
            at.rcpt_index = index;
        }
        auto actions = _queue.apply_connection_failure(*id, a, now, _rng);
        log_outcomes(at, actions, [&](std::size_t) -> const queue::attempt_reply& { return a; });
        if (sp)
            apply(*sp, *id, actions, sender);
        ++n;
    }
    if (n != 0) {
        log::warn("smarthost {} unavailable ({}): {} message(s) deferred", smarthost_text(),
                  log::sanitize(a.to_string()), n);
    }
}

void delivery::apply(spool::spool& sp, spool::queue_id id, const queue::apply_actions& a,
                     std::string_view sender) {
    for (auto i : a.delivered)
        sp.record_rcpt(id, i, spool::outcome::delivered);
    for (auto i : a.bounced)
        sp.record_rcpt(id, i, spool::outcome::bounced);
    for (auto i : a.expired) {
        sp.record_rcpt(id, i, spool::outcome::expired);
        log::info("{}: recipient {} expired after delivery.max_lifetime",
                  spool::format_queue_id(id), i);
    }
    if (a.retry)
        sp.record_attempt(id, a.retry->attempts, a.retry->next_attempt);
    if (a.bounce) {
        spool_bounce(_shard, sp, *a.bounce);
    } else if (sender.empty() && (!a.bounced.empty() || !a.expired.empty())) {
        // RFC 5321 6.1: never a notification about a notification (or any null-sender mail).
        log::info("{}: undeliverable, null sender: no notification sent",
                  spool::format_queue_id(id));
    }
    if (a.done)
        sp.record_done(id);
}

void spool_bounce(shard& _shard, spool::spool& sp, const queue::bounce_request& b) {
    std::int64_t now = _shard.unix_now();
    auto orig = sp.read(b.id);
    if (!orig) {
        log::error("{}: cannot read the message to bounce it: {}", spool::format_queue_id(b.id),
                   orig.error().message());
        return;
    }
    std::string token = fmt::format("{}.{}", spool::format_queue_id(b.id), now);
    queue::dsn_request req;
    req.reporting_mta = _shard.ctx().cfg.server.hostname;
    req.original_sender = b.sender;
    req.arrival_unix = b.arrival;
    req.now_unix = now;
    req.rcpts = b.rcpts;
    req.original_added_headers = orig->added_headers;
    req.original_message = orig->body;
    req.message_id_token = token;
    std::string text = queue::build_dsn(req);

    mail::envelope env;
    env.mail_from = "";
    env.rcpt_to.push_back(b.sender);
    env.smtputf8 = orig->env.smtputf8;
    env.body = orig->env.body == mail::body_type::seven_bit ? mail::body_type::seven_bit
                                                            : mail::body_type::eight_bit_mime;
    env.helo_name = _shard.ctx().cfg.server.hostname;
    env.protocol = "local";
    env.arrival_time = now;
    auto& own = _shard.own_spool();
    auto w = own.begin(env);
    if (!w) {
        log::error("{}: cannot spool its bounce: {}", spool::format_queue_id(b.id),
                   w.error().message());
        return;
    }
    if (auto ok = own.append(*w, text); !ok) {
        own.abort(*w);
        log::error("{}: cannot spool its bounce: {}", spool::format_queue_id(b.id),
                   ok.error().message());
        return;
    }
    auto id = own.finish(*w, {}, 0);
    if (!id) {
        log::error("{}: cannot spool its bounce: {}", spool::format_queue_id(b.id),
                   id.error().message());
        return;
    }
    log::info("{}: sender non-delivery notification: {} (to=<{}>, {} recipient(s))",
              spool::format_queue_id(b.id), spool::format_queue_id(*id), log::sanitize(b.sender),
              b.rcpts.size());
}

void delivery::kick() {
    if (_kicking) {
        _rekick = true;
        return;
    }
    _kicking = true;
    do {
        _rekick = false;
        if (_draining || _mx)
            break;
        for (auto& c : _conns) {
            if (!c->ready())
                continue;
            auto job = next_job();
            if (!job)
                break;
            auto [it, fresh] = _jobs.insert_or_assign(c->id(), std::move(*job));
            (void)fresh;
            const auto& env = it->second.msg.env;
            smtp::outbound_message m;
            m.mail_from = env.mail_from;
            m.rcpts = it->second.rcpts;
            m.added_headers = it->second.msg.added_headers;
            m.body = it->second.msg.body;
            m.size = m.added_headers.size() + m.body.size();
            m.eight_bit = env.body == mail::body_type::eight_bit_mime;
            m.smtputf8 = env.smtputf8;
            c->start(m);
        }
        std::size_t spare = 0;
        for (auto& c : _conns) {
            if (!c->busy() && !c->finished())
                ++spare;
        }
        std::size_t ready = _queue.due(_shard.unix_now());
        std::size_t limit = _shard.ctx().cfg.delivery.max_connections;
        while (ready > spare && _conns.size() < limit) {
            outbound_target t;
            t.endpoint = *_shard.ctx().smarthost;
            t.host = _shard.ctx().cfg.delivery.smarthost->host;
            t.ip = std::string(smarthost_ip());
            auto c =
                std::make_unique<outbound_connection>(static_cast<outbound_handler&>(*this), _shard,
                                                      _next_conn_id++, std::move(t), _settings);
            auto* raw = c.get();
            _conns.push_back(std::move(c));
            ++spare;
            raw->connect();
        }
    } while (_rekick);
    _kicking = false;
    arm_wakeup();
}

void delivery::arm_wakeup() {
    auto w = _queue.next_wakeup();
    std::int64_t now = _shard.unix_now();
    if (!w || *w <= now) {
        // Due work is picked up when a connection frees up; nothing to wait for.
        if (!w)
            _shard.reactor().disarm(*this);
        if (w && !armed())
            _shard.reactor().arm(*this, _shard.reactor().now() + 1s);
        return;
    }
    _shard.reactor().arm(*this, _shard.reactor().now() + std::chrono::seconds(*w - now));
}

void delivery::on_expire() {
    kick();
}

void delivery::on_ready(outbound_connection&) {
    kick();
}

void delivery::on_transaction(outbound_connection& c, const smtp::transaction_result& r) {
    auto it = _jobs.find(c.id());
    if (it == _jobs.end())
        return;
    smarthost_job job = std::move(it->second);
    _jobs.erase(it);
    finished(job, r);
}

void delivery::on_failed(outbound_connection& c, const smtp::server_reply& why) {
    std::optional<smarthost_job> job;
    if (auto it = _jobs.find(c.id()); it != _jobs.end()) {
        job = std::move(it->second);
        _jobs.erase(it);
    }
    if (c.established() && !job) {
        kick();
        return;  // a working session broke between transactions: nothing was lost
    }
    if (!c.established())
        log::warn("smarthost {}: {}", smarthost_text(), log::sanitize(one_line(why.text)));
    connection_failed(c, std::move(job), why);
}

void delivery::on_closed(outbound_connection& c) {
    if (auto it = _jobs.find(c.id()); it != _jobs.end()) {
        // Closed by force with a transaction running: its recipients wait for their retry.
        smarthost_job job = std::move(it->second);
        _jobs.erase(it);
        connection_failed(c, std::move(job),
                          smtp::make_reply(421, "4.4.2", "connection closed during delivery"));
    }
    // Destroyed at the end of this loop iteration, never inside its own call stack.
    _reap_pending = true;
}

void delivery::reap() {
    if (_mx) {
        _mx->reap();
        return;
    }
    if (!_reap_pending)
        return;
    _reap_pending = false;
    std::size_t before = _conns.size();
    _conns.remove_if([](const auto& c) { return c->finished(); });
    if (_conns.size() != before)
        kick();
}

void delivery::begin_drain(bool force) {
    if (_mx) {
        _mx->begin_drain(force);
        return;
    }
    _draining = true;
    for (auto& c : _conns)
        c->stop(force);
}

bool delivery::idle() const {
    if (_mx)
        return _mx->idle();
    return _conns.empty();
}

}  // namespace ringmail::server
