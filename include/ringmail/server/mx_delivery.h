// Delivery by MX routing (no delivery.smarthost): DESIGN.md "The path of a message" steps 5-7.
//
// One per shard. As the ORIGIN of the messages it spooled it keeps an origin_ledger, splits
// each message's pending recipients into jobs per routing domain and submits them to the
// scheduler, which keeps them (this shard owns the domain) or hands them to the owner through
// the cross-shard mailbox, with a shared_ptr to the immutable message_view (context.h); job
// notices coming back are journaled in the origin's spool and end in one DSN per message.
// As the OWNER of destinations it runs queue::scheduler's actions: resolve the route with the
// shard's dns::resolver, connect to the MX hosts in order (next address / next host on a
// connect failure, a refused greeting or EHLO, or a failed required STARTTLS, all in the same
// attempt), run transactions and report per-recipient outcomes. Permanent DNS errors (NXDOMAIN,
// null MX) fail the destination's jobs with the resolver's status (5.1.2, 556 5.1.10);
// temporary ones defer them.
//
// A session the scheduler closes while idle and healthy is parked (keyed by MX address and
// port, at most 32 per shard and 4 per address, QUIT after delivery.idle_timeout) and adopted
// by the next connection of any destination whose route reaches that address at the
// preference level being tried, when its TLS state satisfies that destination's policy.
//
// Failures are outcomes, never exceptions. Bounded: the ledger (500,000 messages per shard;
// new mail then gets 452), the scheduler (max_jobs, outbox), the mailbox rings (a full ring
// leaves the message in the scheduler's outbox for the next iteration).
#pragma once

#include "ringmail/core/timer.h"
#include "ringmail/dns/resolver.h"
#include "ringmail/queue/scheduler.h"
#include "ringmail/server/context.h"
#include "ringmail/server/origin_ledger.h"
#include "ringmail/server/outbound.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ringmail::server {

class shard;

class mx_delivery final : private core::timer, private outbound_handler {
  public:
    explicit mx_delivery(shard& sh);
    ~mx_delivery();
    mx_delivery(const mx_delivery&) = delete;
    mx_delivery& operator=(const mx_delivery&) = delete;

    void add_recovered(spool::spool& sp, const spool::recovered_message& m);
    void add_committed(spool::spool& sp, spool::queue_id id);
    bool can_accept() const;

    // Stops starting transactions; open ones finish and QUIT (force: close now).
    void begin_drain(bool force);
    // Nothing in flight here and on every other shard (see the quiet flags in context.h).
    bool idle();
    // End of each loop iteration: run the scheduler, flush messages, destroy closed
    // connections.
    void reap();

  private:
    struct running_job {
        std::uint64_t id = 0;
        queue::delivery_job job;
        std::shared_ptr<const message_view> view;
        std::vector<std::string> rcpts;  // addresses, parallel to job.rcpts
    };
    // One scheduler connection: a DNS lookup, then one outbound_connection per address tried.
    struct mx_conn {
        std::string domain;
        outbound_settings settings;
        std::vector<outbound_target> targets;
        std::vector<std::uint16_t> preferences;  // parallel to targets
        std::size_t next_target = 0;
        std::unique_ptr<outbound_connection> c;
        std::optional<queue::attempt_reply> dns_failure;  // permanent: every job fails with it
        std::optional<running_job> job;
        bool opened = false;  // connection_opened reported
        smtp::server_reply last_error;
    };
    // An idle SMTP session that belongs to no scheduler connection.
    struct parked_session {
        std::unique_ptr<outbound_connection> c;
        bool verified = false;  // TLS active under the verifying context (names target().host)
        queue::steady_time until;
    };
    struct view_ref {
        std::shared_ptr<const message_view> view;
        std::size_t rcpts = 0;  // recipients of jobs held on this shard
    };
    struct tx_note {  // what the delivery log needs about one recipient's last transaction
        std::uint16_t rcpt = 0;
        std::string mx_host;
        std::string mx_ip;
        std::string reply;
    };

    void on_expire() override;
    void run();
    void submit(const std::shared_ptr<const message_view>& view,
                std::span<const std::uint32_t> pending, std::uint32_t attempts,
                std::int64_t next_attempt_unix);
    void on_message(unsigned from, mx_message&& m);
    void apply_notice(const queue::job_notice& n);
    void log_notice(const queue::job_notice& n);
    void account(const queue::shard_message& msg);
    static std::pair<std::uint64_t, std::size_t> released(const queue::shard_message& msg);
    void release(std::uint64_t id, std::size_t n);
    void hold_view(const std::shared_ptr<const message_view>& v, std::size_t rcpts);

    void open(const queue::open_connection& a);
    void on_route(std::uint64_t cid, const result<dns::route>& r);
    void connect_next(std::uint64_t cid, mx_conn& mc);
    void run_job(queue::run_job& a);
    void close(std::uint64_t cid);
    void finish_pseudo(std::uint64_t cid, mx_conn& mc, running_job& j);
    outbound_settings settings_for(const std::string& domain);
    void reclaim_idle();
    bool park(mx_conn& mc);
    bool adopt(std::uint64_t cid, mx_conn& mc);
    std::optional<queue::steady_time> expire_parked();
    bool parked_closed(outbound_connection& c);

    // outbound_handler
    void on_ready(outbound_connection& c) override;
    void on_transaction(outbound_connection& c, const smtp::transaction_result& r) override;
    void on_failed(outbound_connection& c, const smtp::server_reply& why) override;
    void on_closed(outbound_connection& c) override;

    shard& _shard;
    const daemon_context& _ctx;
    queue::scheduler _sched;
    std::unique_ptr<dns::resolver> _resolver;
    origin_ledger _ledger;
    std::unordered_map<std::uint64_t, view_ref> _views;  // by queue id
    std::unordered_map<std::uint64_t, mx_conn> _conns;   // by scheduler connection id
    std::vector<std::unique_ptr<outbound_connection>> _dead;
    std::vector<parked_session> _parked;  // oldest first; bounded by max_parked
    std::unordered_map<std::uint64_t, std::vector<tx_note>> _notes;  // by queue id
    std::shared_ptr<const tls::client_context> _tls_opportunistic;
    std::shared_ptr<const tls::client_context> _tls_verify;
    bool _tls_tried = false;
    bool _tls_verify_tried = false;
    bool _dirty = true;
    bool _running = false;
    bool _journaled = false;
    bool _draining = false;
    std::uint64_t _dropped_outgoing = 0;
};

}  // namespace ringmail::server
