// One shard of ringmail-blast: a thread pinned to a CPU with its own io_uring, its share of
// the connections, its share of the messages and its own counters.
//
// Messages are numbered 0, 1, 2, ... over the whole run; shard s of S sends numbers s, s+S,
// s+2S, ... so that in open loop every message keeps its global schedule (start + i/rate)
// without any cross-shard traffic. A worker is created and run on its own thread; the main
// thread only reads its progress atomics while it runs and its stats after it has returned.
//
// Failures are counted, never fatal: a failed connection attempt takes one message off the
// schedule (counted as not sent) so that --messages N always ends after N outcomes, and a
// shard whose last 3 x (its connections) attempts all failed gives up and counts the rest as
// not sent. Start-up failures (no io_uring) end the run with a message and exit status 1.
#pragma once

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/timer.h"
#include "ringmail/smtp/client_session.h"
#include "ringmail/tls/context.h"
#include "ringmail/tls/session.h"

#include "blast/stats.h"
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <vector>

namespace ringmail::blast {

using clock = std::chrono::steady_clock;

// What every shard reads; built by main before the shards start, never written afterwards.
struct plan {
    core::endpoint target;
    unsigned shards = 1;
    unsigned connections = 1;
    std::uint64_t limit = 0;           // message numbers below this are sent; 0: unlimited
    std::chrono::seconds duration{0};  // 0: none
    double rate = 0;
    std::string body;  // transmission form
    unsigned recipients = 1;
    std::uint32_t per_connection = 0;
    std::string from;
    std::string to;
    std::uint64_t domains = 0;
    std::chrono::seconds timeout{30};
    smtp::client_config client;  // starttls = required with --starttls, credentials with --auth
    bool starttls = false;
    std::string tls_host;     // SNI (not sent for an IP literal); certificates are not verified
    clock::time_point start;  // the run's start (for --duration and the elapsed time)
};

// Read by the main thread for the progress line; each field has a single writer (its shard).
struct alignas(64) progress {
    std::atomic<std::uint64_t> sent{0};
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<bool> done{false};
};

struct job {
    std::uint64_t index = 0;
    clock::time_point scheduled;  // open loop: start + index/rate; closed loop: when started
};

class worker;

// One SMTP connection slot: connects, runs transactions one after the other on the same
// session, and when the session ends (per-connection limit, failure) opens a new one while the
// worker has work. The bytes between the socket and the session pass through from_wire() and
// to_wire(): as they are, or after STARTTLS through a tls::session (a record pump over memory)
// that decrypts what comes in and encrypts the session's pieces into one buffer to send.
class connection final : private core::timer {
  public:
    connection(worker& w, unsigned slot);
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection();

    void open();
    void start(const job& j);  // only while parked
    void finish();             // no more work: QUIT when idle
    bool parked() const noexcept { return _parked; }

  private:
    enum class wait_kind : std::uint8_t { none, connect, reply, backoff };

    void on_connect(int res, std::uint32_t flags);
    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_shutdown(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void on_expire() override;

    void from_wire(std::string_view bytes);
    void to_wire();
    void to_wire_tls();
    void start_tls();
    void tls_progress();
    void tls_failed();
    void submit_send();
    void pump();
    void begin_transaction(const job& j);
    void on_result(const smtp::transaction_result& r, bool cut);
    void on_session_failed_busy(bool busy);
    void attempt_failed(conn_error why);
    void start_close();
    void check_finished();
    void arm_wait(wait_kind k, clock::duration d);
    void arm_recv();

    worker& _w;
    const unsigned _slot;
    core::ring_fd _fd;
    std::optional<smtp::client_session> _session;
    std::optional<job> _job;
    clock::time_point _tx_start;
    clock::time_point _connect_start;
    std::vector<std::string> _rcpts;
    std::string _from;
    std::uint32_t _transactions = 0;
    std::optional<conn_error> _cause;  // set when we feed the session a timeout or a loss
    std::vector<iovec> _iov;
    std::size_t _iov_first = 0;
    msghdr _msg{};
    // STARTTLS: the record pump, the session's pieces it has not taken yet, and the ciphertext
    // being sent (a send is either the session's pieces or ciphertext: _send_is_tls).
    std::unique_ptr<tls::session> _tls;
    clock::time_point _tls_start;
    std::span<const std::string_view> _pieces;
    std::size_t _piece = 0;
    std::size_t _piece_offset = 0;
    bool _pieces_held = false;
    bool _tls_up = false;
    bool _send_is_tls = false;
    std::string _plain;
    std::string _cipher;
    unsigned _in_flight = 0;
    wait_kind _wait = wait_kind::none;
    bool _connecting = false;
    bool _recv_armed = false;
    bool _send_in_flight = false;
    bool _established = false;
    bool _failure_seen = false;
    bool _parked = false;
    bool _finishing = false;
    bool _closing = false;
    bool _cancel_sent = false;
    bool _counted_initial = false;
    bool _attempt_failed = false;
    bool _idle_slot = true;  // closed (or never opened), nothing in flight
    core::member_completion<connection, &connection::on_connect> _connect_op{this};
    core::member_completion<connection, &connection::on_recv> _recv_op{this};
    core::member_completion<connection, &connection::on_send> _send_op{this};
    core::member_completion<connection, &connection::on_cancel> _cancel_op{this};
    core::member_completion<connection, &connection::on_shutdown> _shutdown_op{this};
    core::member_completion<connection, &connection::on_close> _close_op{this};
};

class worker {
  public:
    worker(const plan& p, unsigned shard, const std::atomic<bool>& stop, progress& prog);
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;
    ~worker();

    // Runs the shard to its end on the calling thread. false: start-up failed (`why` says).
    bool run(std::string& why);
    const shard_stats& stats() const noexcept { return _stats; }
    clock::time_point last_outcome() const noexcept { return _last_outcome; }

    // For connections.
    enum class next { job, wait, finish };
    next take(connection& c, job& out);
    void initial_attempt_done();
    void transaction_done(clock::time_point when) noexcept;
    void attempt_failed();
    void attempt_succeeded() noexcept { _consecutive_failures = 0; }
    // A connection slot closed: true when it should open again, false when it is done.
    bool closed() noexcept;
    void slot_done() noexcept { --_live; }
    void unpark(connection& c);
    bool work_remaining() const noexcept;

    const plan& p() const noexcept { return _plan; }
    unsigned shard() const noexcept { return _shard; }
    core::reactor& reactor() noexcept { return *_reactor; }
    core::buffer_ring& buffers() noexcept { return *_buffers; }
    const std::shared_ptr<const tls::client_context>& tls() const noexcept { return _tls; }
    counters& count() noexcept { return _stats.c; }
    shard_stats& stats_mut() noexcept { return _stats; }

  private:
    struct callback_timer final : core::timer {
        worker* w = nullptr;
        void (worker::*fn)() = nullptr;
        void on_expire() override { (w->*fn)(); }
    };
    void on_schedule();
    void on_deadline();
    void stop_work();
    std::uint64_t remaining() const noexcept;  // message numbers of this shard not taken yet
    clock::time_point scheduled(std::uint64_t index) const noexcept;
    void publish() noexcept;

    const plan& _plan;
    const unsigned _shard;
    const std::atomic<bool>& _stop;
    progress& _progress;
    unsigned _conns = 0;
    std::unique_ptr<core::reactor> _reactor;
    std::unique_ptr<core::buffer_ring> _buffers;
    std::shared_ptr<const tls::client_context> _tls;  // with --starttls
    std::vector<std::unique_ptr<connection>> _connections;
    std::deque<connection*> _parked;
    callback_timer _schedule_timer;
    callback_timer _deadline_timer;
    std::uint64_t _next = 0;  // next message number of this shard
    unsigned _live = 0;       // connection slots not finished for good
    unsigned _initial_pending = 0;
    bool _clock_started = false;
    clock::time_point _schedule_start;
    bool _no_more_work = false;
    unsigned _consecutive_failures = 0;
    shard_stats _stats;
    clock::time_point _last_outcome;
};

}  // namespace ringmail::blast
