// Delivery: the one engine that sends every message on (DESIGN.md "The path of a message",
// steps 5-7), whatever the route — MX routing, a [[domain]] route, a smarthost.
//
// One per shard. As the ORIGIN of the messages it spooled it keeps an origin_ledger, splits
// each message's pending recipients into jobs per destination (router.h) and submits them to
// the queue::scheduler, which keeps them (this shard owns the destination, or it is local) or
// hands them to the owner through the cross-shard rings with a shared_ptr to the immutable
// message_view; the notices coming back are journaled in the origin's spool and end in at most
// one DSN per message (RFC 3464), listing its failed recipients with the status and diagnostic
// of the reply that decided. As the OWNER of destinations it runs the scheduler's actions:
// resolve the route (MX records, or the fixed host of a route), connect to its addresses in
// order (next address on a refused connect, a refused greeting or EHLO, a failed required
// STARTTLS, all in the same attempt; a refused greeting defers with 451), run transactions and
// report per-recipient outcomes. Permanent DNS errors (NXDOMAIN, null MX) fail the jobs with the
// resolver's status (5.1.2, 556 5.1.10); temporary ones defer them. Idle healthy sessions are
// parked (outbound::session_pool) and adopted by other destinations that reach the same host.
// Every recipient's outcome is one delivery-log record and one log line, in one format.
//
// Failures are outcomes, never exceptions. Bounded: the ledger (max_messages per shard; new
// mail then gets 452), the scheduler (max_jobs, outbox), the rings (a full ring leaves the
// message in the scheduler's outbox for the next iteration). Time, timers, spools and rings
// come through delivery::host, connections and lookups through outbound::network, so the
// engine runs the same against the daemon's ring and against the fakes of its unit tests.
#pragma once

#include "ringmail/config/config.h"
#include "ringmail/core/oncore.h"
#include "ringmail/delivery/host.h"
#include "ringmail/delivery/messages.h"
#include "ringmail/delivery/origin_ledger.h"
#include "ringmail/delivery/router.h"
#include "ringmail/outbound/link.h"
#include "ringmail/outbound/session_pool.h"
#include "ringmail/queue/bounce_class.h"
#include "ringmail/queue/scheduler.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ringmail::delivery {

// What the engine takes from the configuration (built once per shard by make_settings).
struct engine_settings {
    queue::scheduler_config scheduler;
    router routes;
    smtp::client_config client;  // helo name, timeouts
    config::tls_policy tls = config::tls_policy::opportunistic;
    bool tls_verify = false;
    std::vector<config::domain_config> domains;  // [[domain]]: tls, tls_verify overrides
    std::string hostname;                        // reporting MTA of DSNs
    std::chrono::milliseconds connect_timeout{30000};
    std::chrono::seconds idle_timeout{60};  // of parked sessions
    std::uint32_t max_messages_per_connection = 1000;
    std::uint32_t max_connections = 32;  // this shard, all destinations
    std::size_t max_messages = 500000;   // in the ledger: then new mail gets 452
    std::size_t max_targets = 10;        // addresses tried per attempt, over all hosts
    // A deferred recipient this old gets one "Action: delayed" notice (NOTIFY permitting);
    // 0 = never.
    std::chrono::seconds delay_warning{4 * 3600};
    // Bounce categories of failed attempts (shared, immutable); null: every failure is
    // Uncategorized, except those without a reply (connection, DNS, expiry), categorised by
    // the engine itself.
    std::shared_ptr<const queue::bounce_classifier> bounces;
    // This shard's failed recipients per (outcome, category); may be null.
    queue::bounce_counters* bounce_counts = nullptr;
    // Shaping: the egress sources (by index), the providers' names and TLS policies.
    struct egress_source {
        std::string name;
        core::endpoint address;  // port 0
        std::string ehlo_name;
    };
    std::vector<egress_source> sources;
    std::vector<std::string> provider_names;
    std::vector<std::optional<config::tls_policy>> provider_tls;
    const queue::shaping_context* shaping = nullptr;  // also in scheduler.shaping
};

// Traffic shaping (issue 16) from [[egress_source]], [[egress_pool]], [[provider]] and
// [[shaping_rule]]: null when none is configured (no cost on the delivery path then). Built
// once by the daemon's context and shared by every shard; `why` names a table that the
// configuration reader let through but the scheduler cannot use.
std::unique_ptr<queue::shaping_context> make_shaping(const config::settings& cfg, std::string& why);

engine_settings make_settings(const config::settings& cfg, unsigned shard, unsigned shards,
                              queue::spare_gauges* gauges,
                              const queue::shaping_context* shaping = nullptr);

class engine final : private outbound::link_handler {
  public:
    engine(host& h, outbound::network& net, engine_settings settings);
    ~engine();
    engine(const engine&) = delete;
    engine& operator=(const engine&) = delete;

    // Origin side: a message from the spool after a restart (its journaled recipient states
    // and attempts), a message just committed, a DSN of ours committed (or not).
    //
    // A DSN is never lost: the message it reports on is journaled done only once the DSN's
    // own commit succeeded. A DSN whose batch failed is spooled again (the original is still
    // live, so it can be read again); a restart in between finds the original with every
    // recipient final but not done, and spools its DSN then.
    void add_recovered(spool::spool& sp, const spool::recovered_message& m);
    void add_committed(spool::spool& sp, spool::queue_id id);
    // Tokens of the engine's own messages (DSNs) in spool::finish / complete_batch.
    static constexpr std::uint64_t internal_token_bit = 1ull << 63;
    static bool internal_token(std::uint64_t token) noexcept {
        return token == 0 || (token & internal_token_bit) != 0;
    }
    void internal_committed(std::uint64_t token, const result<spool::queue_id>& id);
    // DSNs spooled and not yet committed, or waiting to be spooled again.
    std::size_t dsns_pending() const noexcept { return _dsns.size() + _dsn_retry.size(); }
    // New mail is refused (452) when the ledger is full.
    bool can_accept() const;

    // A message from another shard's engine.
    void receive(unsigned from, shard_message&& m);
    // The wake-up asked with host::wake_at.
    void on_timer();
    // Something the scheduler waits for came (a limiter's grant from Redis): it decides again
    // at the end of this loop iteration.
    void wake() noexcept { _dirty = true; }
    // End of each loop iteration: run the scheduler, flush messages, destroy closed links.
    void reap();

    // Stops starting transactions; open ones finish and QUIT (force: close now).
    void begin_drain(bool force);
    // Nothing in flight here and on every other shard (see host's quiet flags).
    bool idle();

    const queue::scheduler& scheduler() const noexcept { return _sched; }
    // The operator's controls (the admin API, through the shard): see queue::scheduler.
    void set_suspensions(std::shared_ptr<const queue::suspensions> s);
    // An operator resumed these entries (then set_suspensions without them): the rules'
    // effects on their scopes end now, in the shared limiter and on this shard's own queues.
    void lift_suspensions(std::span<const queue::suspension> lifted);
    std::size_t flush(std::string_view key);
    std::size_t bounce(std::string_view key, std::uint64_t queue_id, std::string_view reason);
    const origin_ledger& ledger() const noexcept { return _ledger; }

  private:
    struct running_job {
        std::uint64_t id = 0;
        queue::delivery_job job;
        std::shared_ptr<const message_view> view;
        std::vector<std::string> rcpts;        // addresses, parallel to job.rcpts
        std::vector<mail::rcpt_dsn> rcpt_dsn;  // empty, or parallel to job.rcpts
        bool started = false;                  // false: waits for the link to be ready (RSET)
    };
    // One scheduler connection: a route lookup, then one link per address tried.
    struct conn {
        std::string key;
        outbound::outbound_settings settings;
        std::vector<outbound::outbound_target> targets;
        std::vector<std::uint16_t> preferences;  // parallel to targets
        std::size_t next_target = 0;
        std::unique_ptr<outbound::link> c;
        std::optional<queue::attempt_reply> dns_failure;  // permanent: every job fails with it
        std::optional<running_job> job;
        std::optional<running_job> next;  // pipelined behind `job` (RFC 2920), started
        bool opened = false;              // connection_opened reported
        smtp::server_reply last_error;
        int source = -1;  // egress source index (shaping), -1 = none
    };
    struct view_ref {
        std::shared_ptr<const message_view> view;
        std::size_t rcpts = 0;  // recipients of jobs held on this shard
    };
    struct tx_note {  // what the delivery log needs about one recipient's last attempt
        std::uint16_t rcpt = 0;
        std::string host;
        std::string ip;
        std::string reply;
        queue::bounce_class category = queue::bounce_class::uncategorized;
        std::string source;  // egress source name, "" = none
    };

    void run();
    void submit(const std::shared_ptr<const message_view>& view,
                std::span<const std::uint32_t> pending, std::uint32_t attempts,
                std::int64_t next_attempt_unix);
    void apply_notice(const queue::job_notice& n);
    // A DSN for `b` (the original stays live until the DSN is committed).
    struct pending_dsn {
        spool::queue_id original = 0;
        queue::bounce_request bounce;
    };
    void spool_bounce(pending_dsn d);
    void notice_durable(spool::queue_id original);
    void retry_bounces();
    void log_notice(const queue::job_notice& n);
    void hold_view(const std::shared_ptr<const message_view>& v, std::size_t rcpts);
    void release(std::uint64_t id, std::size_t n);
    static std::pair<std::uint64_t, std::size_t> released(const queue::shard_message& msg);

    void open(const queue::open_connection& a);
    void on_route(std::uint64_t cid, const result<dns::route>& r);
    void connect_next(std::uint64_t cid, conn& mc);
    void run_job(queue::run_job& a);
    // The job's addresses and DSN parameters from its message; false: the message is not
    // held here (a bug upstream; the caller defers the job).
    bool prepare_job(running_job& j);
    void start_job(conn& mc, running_job& j);
    void close(std::uint64_t cid);
    void finish_pseudo(std::uint64_t cid, conn& mc, running_job& j);
    void connection_failed(std::uint64_t cid, conn& mc, queue::attempt_reply why);
    // The reply as the scheduler and the notices carry it, with its bounce category.
    queue::attempt_reply to_attempt(const smtp::server_reply& r, std::string_view host);
    queue::bounce_class classify(const smtp::server_reply& r);
    std::span<const std::string> category_names() const noexcept;
    // Shaping: one reply of a connection through the rules; true when a bounce rule fired.
    bool shape_reply(std::uint64_t cid, const conn& mc, const std::string& line);
    void record_effect(const conn& mc, const queue::rule_spec& r, int scope, std::string_view line);
    std::string_view source_name(int source) const;
    outbound::outbound_settings settings_for(std::string_view key, int provider = -1);
    void apply_source(conn& mc);
    outbound::adoption_policy adoption_for(const outbound::outbound_settings& s) const;
    void reclaim_idle();
    bool park(conn& mc);
    bool adopt(std::uint64_t cid, conn& mc);

    // link_handler
    void on_ready(outbound::link& c) override;
    void on_pipeline(outbound::link& c) override;
    void on_transaction(outbound::link& c, const smtp::transaction_result& r) override;
    void on_failed(outbound::link& c, const smtp::server_reply& why) override;
    void on_closed(outbound::link& c) override;

    // Spools one notice (failure, relayed or delayed) about a message of `sp`; logs either way.
    void send_notice(spool::spool& sp, const queue::bounce_request& b);

    core::oncore _oncore;
    host& _host;
    outbound::network& _net;
    const engine_settings _settings;
    queue::scheduler _sched;
    origin_ledger _ledger;
    outbound::session_pool _pool;
    std::unordered_map<std::uint64_t, view_ref> _views;  // by queue id
    std::unordered_map<std::uint64_t, conn> _conns;      // by scheduler connection id
    std::vector<std::unique_ptr<outbound::link>> _dead;
    std::unordered_map<std::uint64_t, std::vector<tx_note>> _notes;  // by queue id
    std::unordered_map<std::uint64_t, pending_dsn> _dsns;      // spooled, by their finish token
    std::vector<pending_dsn> _dsn_retry;                       // the spool refused them: try again
    std::unordered_map<spool::queue_id, unsigned> _dsn_waits;  // original -> notices not durable
    std::uint64_t _next_dsn_token = 1;
    queue::bounce_classifier::scratch _bounce_scratch;
    bool _dirty = true;
    bool _running = false;
    bool _journaled = false;
    bool _draining = false;
    std::vector<int> _rule_scratch;
    std::vector<queue::rule_effect> _effects;
};

}  // namespace ringmail::delivery
