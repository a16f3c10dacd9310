// The per-shard delivery scheduler: the destination queues this shard owns (or borrows under a
// lease), the connections it runs to them, and what the daemon must do next.
//
// Owned by one shard (core::oncore checked on every entry point). A pure state machine: jobs,
// events and time go in; actions (open a connection, run a job on a connection, close one,
// wait until T) and messages for other shards come out. It does no I/O; the daemon turns the
// actions into sockets and SMTP client sessions, and pushes the outgoing messages into the
// core::mailbox (see handoff.h for the protocol between shards).
//
// Bounded: submit() refuses with errc::queue_full when this shard holds max_jobs jobs or its
// outbox holds max_outbox messages; jobs handed over by other shards are always taken (their
// number is bounded by the origins' admission). Per destination: at most max_connections
// connections over all shards (the shared slot counter), max_messages_per_connection
// transactions per connection, rate messages per second (token bucket, owner only).
// Caller bugs (unknown connection or job id, an event in the wrong state) abort.
#pragma once

#include "ringmail/core/oncore.h"
#include "ringmail/core/result.h"
#include "ringmail/queue/domain_policy.h"
#include "ringmail/queue/handoff.h"
#include "ringmail/queue/retry.h"
#include "ringmail/queue/shaping.h"
#include "ringmail/queue/suspensions.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

namespace ringmail::queue {

struct scheduler_config {
    unsigned shard = 0;   // this shard
    unsigned shards = 1;  // owner_shard() modulus
    domain_policy policies;
    retry_policy retry;  // must have passed validate()
    std::uint64_t seed = 1;
    std::uint32_t max_total_connections = 1000;  // this shard, all destinations
    std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
    std::size_t max_jobs = 500000;   // jobs held here (owned and borrowed)
    std::size_t max_outbox = 65536;  // messages waiting for flush_outgoing
    // Spreading: null gauges = never lend (single shard, tests).
    spare_gauges* gauges = nullptr;
    std::size_t spread_backlog = 256;  // ready jobs at one destination before lending
    std::size_t lend_batch = 128;      // jobs per lease
    std::uint32_t max_leases_per_destination = 4;
    std::uint32_t spread_margin = 8;  // a borrower must be this much less loaded than us
    std::chrono::milliseconds spread_interval{100};
    // A connection refused only by the global slot counter (other shards hold the slots) is
    // tried again after this long: their releases cannot wake us.
    std::chrono::milliseconds slot_poll{50};
    // Traffic shaping (issue 16): providers, egress pools, shared limits, rules. Null: none.
    const shaping_context* shaping = nullptr;
    // The limiter this shard asks (with shaping): null = shaping->limits, shared by every
    // shard; the daemon gives each shard its own cluster::shard_limiter with [cluster] redis.
    limiter* limits = nullptr;
};

// --- what the daemon does next ---
struct open_connection {
    std::uint64_t conn = 0;
    std::string_view domain;  // valid while the connection exists
    std::chrono::milliseconds connect_timeout{0};
    int source = -1;    // egress source to bind (shaping), -1 = none
    int provider = -1;  // the destination's provider as known now, -1 = none (yet)
};
// Run `job` on the connection (one transaction: MAIL, one RCPT per recipient, DATA), then
// report with complete() or job_failed().
struct run_job {
    std::uint64_t conn = 0;
    std::uint64_t job = 0;
    delivery_job detail;
};
// QUIT and close; then connection_closed().
struct close_connection {
    std::uint64_t conn = 0;
};
// Nothing to do before `until` (nullopt: not before new input: a job, a message, an event).
struct wait {
    std::optional<steady_time> until;
};
using action = std::variant<open_connection, run_job, close_connection, wait>;

// One recipient's outcome of a transaction. Recipients of the job without a result are
// treated as deferred (not attempted).
struct rcpt_result {
    std::uint16_t rcpt = 0;
    rcpt_status status = rcpt_status::deferred;  // delivered, failed (5xx) or deferred (4xx)
    const attempt_reply* reply = nullptr;        // copied into the notice unless delivered
    // Delivered to a hop without DSN while NOTIFY asked SUCCESS: the reply goes into the
    // notice too, marked relayed (RFC 3461 5.2.2).
    bool relayed_notice = false;
};

// One destination as the admin API shows it (this shard's part of it).
struct destination_info {
    std::string key;
    bool borrowed = false;
    std::size_t ready = 0, deferred = 0, in_flight = 0, connections = 0;
    std::size_t recipients = 0;               // in the queued jobs (ready and deferred)
    std::optional<steady_time> next_attempt;  // the earliest deferred job
    std::int64_t oldest_arrival_unix = 0;     // 0 = no job queued
    std::string last_reply;                   // of the last attempt that failed, "" = none
};

struct scheduler_counts {
    std::size_t destinations = 0;  // owned
    std::size_t borrowed = 0;      // leases held from other shards
    std::size_t ready = 0;
    std::size_t deferred = 0;
    std::size_t in_flight = 0;
    std::size_t connections = 0;
    std::size_t leases_out = 0;
    std::size_t outbox = 0;
    std::uint64_t lent_jobs = 0;  // ever
};

class scheduler {
  public:
    explicit scheduler(scheduler_config config);
    ~scheduler();
    scheduler(const scheduler&) = delete;
    scheduler& operator=(const scheduler&) = delete;

    unsigned shard() const noexcept { return _cfg.shard; }

    // Where a destination's queue lives. owner: on the shard its key hashes to (every shard
    // hands its jobs there; one global connection limit, lending when hot). local: on every
    // shard that has mail for it, each with its own queue, connections and limit, never
    // handed over or lent: for a route the same for all mail (a smarthost), which must not
    // funnel everything through one shard.
    enum class placement : std::uint8_t { owner, local };

    // A job of a message spooled here, for destination `key`: queued here when this shard
    // owns it (or it is local), else put in the outbox for the owner. job.origin is set to
    // this shard.
    result<void> submit(std::string_view key, delivery_job job, steady_time now,
                        placement where = placement::owner);

    // A message from shard `from`. A job_notice is for the daemon (this shard is the origin of
    // the message): it is returned, everything else is consumed.
    std::optional<job_notice> receive(unsigned from, shard_message&& msg, steady_time now);

    // The next thing to do. Call until it returns wait, then sleep until wait::until or the
    // next input. Cheap when there is nothing to do.
    action next_action(steady_time now);

    // Connection events.
    void connection_opened(std::uint64_t conn, steady_time now);
    // Connect, greeting, EHLO or TLS failed: the slot is given back and, when no other
    // connection to the destination works, every ready job there counts a failed attempt with
    // `why` (the retry schedule paces reconnection, not a connect loop). Returns how many.
    std::size_t connection_failed(std::uint64_t conn, const attempt_reply& why, steady_time now,
                                  std::int64_t now_unix);
    // Shaping: the route of a connection showed its destination's provider (MX suffixes);
    // from now on the destination counts against it (this connection at once).
    void learn_provider(std::uint64_t conn, int provider);
    // The provider and source slot of a connection (for rules and logs).
    int provider_of(std::uint64_t conn) const;
    // The shaping limiter this shard asks (null without shaping).
    limiter* limits() const noexcept { return _cfg.limits; }
    int domain_scope_of(std::uint64_t conn) const;
    unsigned slot_of(std::uint64_t conn) const;
    // A "*" rule fired on a destination of no provider and no rule domain: only its own
    // queue (this shard) stops for the source until `until`.
    void suspend_destination(std::uint64_t conn, steady_time until);
    // An operator resumed `key` (a domain): the suspensions suspend_destination set on its
    // queue end now, and its ready jobs may run. Whether such a queue is here.
    bool lift_destination(std::string_view key);
    // The socket is gone (after close_connection, an idle timeout or a peer close). A job
    // still running on it must be reported first (job_failed).
    void connection_closed(std::uint64_t conn, steady_time now);

    // The job running on `conn` has its data on the way and the session can pipeline the next
    // transaction behind it (RFC 2920): a second job for the same connection when its
    // destination has one ready that may be sent now (suspensions, rates and
    // max_messages_per_connection as for an idle connection), else nullopt. The connection
    // runs both; they finish in any order.
    std::optional<run_job> pipeline_job(std::uint64_t conn, steady_time now);

    // Job outcomes. complete() makes the connection idle again when no other job runs on it
    // (or closes it when it has sent max_messages_per_connection); job_failed() means the
    // connection broke: every recipient is deferred with `why`, and once every job on it is
    // reported the daemon must call connection_closed().
    void complete(std::uint64_t conn, std::uint64_t job, std::span<const rcpt_result> results,
                  steady_time now, std::int64_t now_unix);
    void job_failed(std::uint64_t conn, std::uint64_t job, const attempt_reply& why,
                    steady_time now, std::int64_t now_unix);

    // Messages for other shards (and notices for this shard, to == shard(): hand them to the
    // daemon's own notice handling). `send(to, msg)` returns false when the ring is full and
    // must leave `msg` untouched then (as core::mailbox::try_send); flushing stops there.
    template <typename Send>
    std::size_t flush_outgoing(Send&& send) {
        _oncore.check();
        std::size_t n = 0;
        while (!_outbox.empty()) {
            auto& o = _outbox.front();
            if (!send(o.to, o.msg))
                break;
            _outbox.pop_front();
            ++n;
        }
        return n;
    }
    bool has_outgoing() const noexcept { return !_outbox.empty(); }

    scheduler_counts counts() const;

    // --- the operator's controls (admin API) ---
    // The suspensions in force (null = none). A suspended destination starts no new
    // transaction and opens no connection until its suspension ends; running jobs finish.
    // Call again whenever the set changes (resume: its jobs become runnable at once).
    void set_suspensions(std::shared_ptr<const suspensions> s, steady_time now,
                         std::int64_t now_unix);
    // Deferred jobs of destination `key` ("" = every destination) are ready now; how many.
    std::size_t flush(std::string_view key, steady_time now);
    // The queued jobs of `key` (or, with key "", those of message `queue_id`) fail now with
    // `why` (a 5xx): notices go to their origins, which bounce as usual. How many recipients.
    std::size_t bounce(std::string_view key, std::uint64_t queue_id, const attempt_reply& why,
                       steady_time now, std::int64_t now_unix);
    // Owned and borrowed destinations with something queued, running or connected. `ages`:
    // also oldest_arrival_unix, a walk over every queued job (the queue API); without it the
    // cost is one entry per destination (/metrics).
    std::vector<destination_info> destinations(bool ages = true) const;
    // The jobs of message `queue_id` queued here, with their destination key.
    std::vector<std::pair<std::string, delivery_job>> jobs_of(std::uint64_t queue_id) const;
    // Nothing held: no job, connection, lease (either way) or outgoing message.
    bool idle() const;
    // The load this shard publishes in the spare gauge.
    std::uint32_t spare() const noexcept;

  private:
    struct dest;
    struct conn;
    enum class conn_state : std::uint8_t { connecting, idle, busy, closing };
    struct outgoing {
        unsigned to;
        shard_message msg;
    };

    dest& owned_dest(std::string_view key, steady_time now);
    void apply_suspension(dest& d);
    void enqueue(dest& d, delivery_job job, steady_time now);
    void note_runnable(dest& d);
    void arm_deferred(dest& d);
    void finish_job(dest& d, delivery_job job, std::span<const rcpt_result> results,
                    const attempt_reply* all, steady_time now, std::int64_t now_unix);
    void release_conn(std::unordered_map<std::uint64_t, conn>::iterator it);
    void drop_job(conn& c, std::uint64_t job_id);  // c.job or c.next is done
    void maybe_retire(dest& d);
    void maybe_lend(steady_time now);
    void publish_spare();
    std::optional<action> expire_idle(steady_time now);
    void push_out(unsigned to, shard_message msg);
    conn& find_conn(std::uint64_t id);
    const conn& find_conn(std::uint64_t id) const;
    void shape_dest(dest& d, int provider_hint);
    std::uint32_t messages_per_conn(const dest& d) const;
    // Shaping: may a new message start on idle connection `cid` now (else when)?
    bool may_send(dest& d, std::uint64_t cid, steady_time now, std::optional<steady_time>& when);
    // Shaping: the source slot for a new connection to d, slots taken; nullopt and `when`.
    std::optional<int> pick_source(dest& d, steady_time now, std::optional<steady_time>& when);
    steady_time blocked_until(const dest& d, unsigned slot) const;
    bool provider_room(const dest& d, steady_time now) const;

    core::oncore _oncore;
    scheduler_config _cfg;
    std::mt19937_64 _rng;
    std::unordered_map<std::string, std::unique_ptr<dest>> _owned;
    std::unordered_map<std::uint64_t, std::unique_ptr<dest>> _borrowed;  // lender << 32 | lease
    std::unordered_map<std::uint64_t, dest*> _by_id;
    std::list<dest*> _runnable;  // destinations with ready jobs, round robin
    struct timer_entry {
        steady_time when;
        std::uint64_t dest_id;
        bool operator>(const timer_entry& o) const { return when > o.when; }
    };
    std::vector<timer_entry> _timers;  // min-heap; stale entries skipped
    std::unordered_map<std::uint64_t, conn> _conns;
    struct idle_entry {
        steady_time since;
        std::uint64_t conn;
        std::uint64_t epoch;
    };
    std::deque<idle_entry> _idle;  // in idle order; stale entries skipped
    std::deque<std::uint64_t> _to_close;
    struct running {
        delivery_job job;
        dest* d;
        std::uint64_t conn;
    };
    std::unordered_map<std::uint64_t, running> _running;
    std::deque<outgoing> _outbox;
    std::uint64_t _next_dest = 1;
    std::uint64_t _next_conn = 1;
    std::uint64_t _next_job = 1;
    std::uint32_t _next_lease = 1;
    std::size_t _jobs = 0;  // ready + deferred + running, owned and borrowed
    std::size_t _ready = 0;
    std::size_t _leases_out = 0;
    std::uint64_t _lent_jobs = 0;
    steady_time _last_spread{};
    std::uint32_t _published = ~0u;
    std::shared_ptr<const suspensions> _suspensions;
    // unix seconds - steady seconds, as of the last set_suspensions (to place expiries).
    std::int64_t _unix_offset = 0;
    steady_time _susp_now{};
    std::vector<smooth_wrr> _wrr;                   // per egress pool, this shard's
    std::unordered_map<std::string, int> _learned;  // destination -> provider from its MX
};

}  // namespace ringmail::queue
