// Delivery of one shard's queued mail to the smarthost: the per-shard delivery queue, a pool
// of persistent SMTP client connections (EHLO once, many transactions, PIPELINING when
// offered) and the bookkeeping after each attempt (journal outcomes, retries, bounces).
//
// Owned by one shard; messages never leave it (each shard delivers what it spooled, so no
// cross-shard hand-off is needed for a smarthost). Failures are outcomes: a refused or
// broken connection defers the messages it carried and, when no connection to the smarthost
// works, every message due (the retry schedule then paces reconnection); 5xx and expiry
// produce a DSN to the sender (never to the null sender). With no smarthost configured
// (MX routing is a later part) messages stay queued and a log line says so.
#pragma once

#include "ringmail/core/member_completion.h"
#include "ringmail/core/timer.h"
#include "ringmail/queue/delivery_queue.h"
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
#include <vector>

namespace ringmail::server {

class shard;
class delivery;

// One message being sent on a connection.
struct delivery_job {
    spool::spool* sp = nullptr;
    spool::stored_message msg;
    std::vector<std::string> rcpts;         // the pending recipients, in send order
    std::vector<std::uint32_t> rcpt_index;  // their index in the queue entry
    std::uint32_t attempt = 0;
};

class outbound_connection final : private core::timer {
  public:
    outbound_connection(delivery& owner, shard& sh, std::uint64_t id);
    ~outbound_connection();
    outbound_connection(const outbound_connection&) = delete;
    outbound_connection& operator=(const outbound_connection&) = delete;

    void connect();
    // Give it a message (only when ready()).
    void start(delivery_job job);
    // Finish what is in flight, then QUIT (force: close now).
    void stop(bool force);

    bool ready() const noexcept;                            // connected, EHLO done, no job
    bool working() const noexcept { return _established; }  // greeting + EHLO succeeded once
    bool has_job() const noexcept { return _job.has_value(); }
    bool finished() const noexcept { return _finished; }  // closed, nothing in flight
    std::uint64_t id() const noexcept { return _id; }

  private:
    void on_connect(int res, std::uint32_t flags);
    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void on_expire() override;
    void pump();
    void send_pieces();
    void fail(std::string_view why);
    void start_close();
    void check_finished();

    delivery& _owner;
    shard& _shard;
    const std::uint64_t _id;
    int _fd = -1;
    smtp::client_session _session;
    std::optional<delivery_job> _job;
    std::uint32_t _transactions = 0;
    // The sendmsg in flight: iovecs over the session's pieces, advanced on partial sends.
    std::vector<iovec> _iov;
    std::size_t _iov_first = 0;
    msghdr _msg{};
    unsigned _in_flight = 0;
    bool _connecting = false;
    bool _established = false;
    bool _recv_armed = false;
    bool _send_in_flight = false;
    bool _cancel_sent = false;
    bool _stopping = false;
    bool _closing = false;
    bool _finished = false;
    bool _idle = false;  // armed with the idle timeout rather than a reply deadline
    core::member_completion<outbound_connection, &outbound_connection::on_connect> _connect_op{
        this};
    core::member_completion<outbound_connection, &outbound_connection::on_recv> _recv_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_send> _send_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_cancel> _cancel_op{this};
    core::member_completion<outbound_connection, &outbound_connection::on_close> _close_op{this};
};

class delivery final : private core::timer {
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

    // For connections.
    std::optional<delivery_job> next_job();
    void finished(outbound_connection& c, delivery_job& job, const smtp::transaction_result& r);
    void connection_failed(outbound_connection& c, std::optional<delivery_job> job,
                           const smtp::server_reply& why);
    void connection_closed(outbound_connection& c);
    void kick();
    const std::string& smarthost_text() const;

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
    attempt_context job_context(const delivery_job& job) const;
    void log_outcomes(const attempt_context& at, const queue::apply_actions& a,
                      const std::function<const queue::attempt_reply&(std::size_t)>& reply);
    std::string_view smarthost_ip() const;
    void on_expire() override;
    void apply(spool::spool& sp, spool::queue_id id, const queue::apply_actions& a,
               std::string_view sender);
    void spool_bounce(spool::spool& sp, const queue::bounce_request& b);
    void defer_all_ready(const smtp::server_reply& why);
    void arm_wakeup();

  public:
    void reap();  // end of each loop iteration: destroy closed connections

  private:
    shard& _shard;
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
