// Delivery of one shard's queued mail. With delivery.smarthost: the per-shard delivery queue, a
// pool of persistent SMTP client connections to the smarthost (EHLO once, many transactions,
// PIPELINING and STARTTLS when offered) and the bookkeeping after each attempt (journal
// outcomes, retries, bounces). Without one, everything is handed to mx_delivery (MX routing,
// destination queues, cross-shard scheduler; mx_delivery.h).
//
// Owned by one shard; in smarthost mode messages never leave it (each shard delivers what it
// spooled: every message has the same destination, so a hand-off would buy nothing). Failures
// are outcomes: a refused or broken connection defers the messages it carried and, when no
// connection to the smarthost works, every message due (the retry schedule then paces
// reconnection); 5xx and expiry produce a DSN to the sender (never to the null sender).
#pragma once

#include "ringmail/core/member_completion.h"
#include "ringmail/core/timer.h"
#include "ringmail/queue/delivery_queue.h"
#include "ringmail/server/outbound.h"
#include "ringmail/smtp/client_session.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unordered_map>
#include <vector>

namespace ringmail::server {

class shard;
class delivery;

// One message being sent to the smarthost on a connection.
struct smarthost_job {
    spool::spool* sp = nullptr;
    spool::stored_message msg;
    std::vector<std::string> rcpts;         // the pending recipients, in send order
    std::vector<std::uint32_t> rcpt_index;  // their index in the queue entry
    std::uint32_t attempt = 0;
};

class mx_delivery;

// Spools an RFC 3464 DSN for `b` into the shard's own spool (from <>, to b.sender); the
// original message is read from `sp`. Failures are logged (the bounce is lost).
void spool_bounce(shard& sh, spool::spool& sp, const queue::bounce_request& b);

class delivery final : private core::timer, private outbound_handler {
  public:
    explicit delivery(shard& sh);
    ~delivery();
    delivery(const delivery&) = delete;
    delivery& operator=(const delivery&) = delete;

    void add_recovered(spool::spool& sp, const spool::recovered_message& m);
    void add_committed(spool::spool& sp, spool::queue_id id);
    // A DSN spooled by this shard was committed (or not).
    void internal_committed(const result<spool::queue_id>& id);
    // New mail is refused (452) when the queue cannot take more.
    bool can_accept() const;

    void begin_drain(bool force);
    bool idle() const;

    void reap();  // end of each loop iteration: destroy closed connections

  private:
    // What the delivery log needs about one attempt (views valid during the call).
    struct attempt_context {
        spool::queue_id id = 0;
        std::string_view sender;
        std::int64_t arrival = 0;
        std::uint32_t attempt = 0;
        std::string_view message;  // transmission form, for Message-ID and size
        std::string_view mx_ip;
        std::span<const std::string> rcpts;
        std::span<const std::uint32_t> rcpt_index;
    };
    attempt_context job_context(const smarthost_job& job) const;
    void log_outcomes(const attempt_context& at, const queue::apply_actions& a,
                      const std::function<const queue::attempt_reply&(std::size_t)>& reply);
    std::string_view smarthost_ip() const;
    void on_expire() override;
    void apply(spool::spool& sp, spool::queue_id id, const queue::apply_actions& a,
               std::string_view sender);
    void defer_all_ready(const smtp::server_reply& why);
    void arm_wakeup();

    // outbound_handler
    void on_ready(outbound_connection& c) override;
    void on_transaction(outbound_connection& c, const smtp::transaction_result& r) override;
    void on_failed(outbound_connection& c, const smtp::server_reply& why) override;
    void on_closed(outbound_connection& c) override;

    std::optional<smarthost_job> next_job();
    void finished(smarthost_job& job, const smtp::transaction_result& r);
    void connection_failed(outbound_connection& c, std::optional<smarthost_job> job,
                           const smtp::server_reply& why);
    void kick();
    const std::string& smarthost_text() const;

    shard& _shard;
    std::unique_ptr<mx_delivery> _mx;  // MX routing (no delivery.smarthost)
    outbound_settings _settings;
    std::unordered_map<std::uint64_t, smarthost_job> _jobs;  // by connection id
    queue::delivery_queue _queue;
    std::mt19937_64 _rng;
    std::list<std::unique_ptr<outbound_connection>> _conns;
    std::uint64_t _next_conn_id = 1;
    bool _draining = false;
    bool _kicking = false;
    bool _rekick = false;
    bool _reap_pending = false;
    std::uint64_t _warned_no_route = 0;
    mutable std::string _smarthost_ip;  // for the delivery log
};

}  // namespace ringmail::server
