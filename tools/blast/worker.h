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
#include "ringmail/core/stream_connection.h"
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
// worker has work. The socket is a core::stream_connection, reused by the slot's next session;
// after STARTTLS a tls::session is its transform.
class connection final : public core::stream_connection {
  public:
    using clock = blast::clock;  // not the stream's timer's

    explicit connection(worker& w);
    ~connection() override;

    void open();
    void start(const job& j);  // only while parked
    void finish();             // no more work: QUIT when idle
    bool parked() const noexcept { return _parked; }

  private:
    enum class wait_kind : std::uint8_t { none, connect, reply };
    struct backoff_timer final : core::timer {
        connection* c = nullptr;
        void on_expire() override { c->on_backoff(); }
    };

    // stream_connection
    void on_connected(int res) override;
    void on_received(std::string_view bytes) override;
    bool wants_input() const override { return _session && !_session->closed(); }
    void on_sent() override;
    void on_input_end(int err) override;
    void on_transform_ready() override;
    void on_transform_failed(std::string_view why) override;
    void on_deadline() override;
    void on_closed() override;

    void on_backoff();
    void start_tls();
    void pump();
    void begin_transaction(const job& j);
    void on_result(const smtp::transaction_result& r, bool cut);
    void on_session_failed_busy(bool busy);
    void attempt_failed(conn_error why);
    void start_close();
    void arm_wait(wait_kind k, clock::duration d);

    worker& _w;
    std::optional<smtp::client_session> _session;
    std::optional<job> _job;
    clock::time_point _tx_start;
    clock::time_point _connect_start;
    std::vector<std::string> _rcpts;
    std::string _from;
    std::uint32_t _transactions = 0;
    std::optional<conn_error> _cause;  // set when we feed the session a timeout or a loss
    tls::session* _tls = nullptr;      // the stream's transform after STARTTLS
    clock::time_point _tls_start;
    bool _tls_up = false;
    bool _pieces_out = false;  // the session's pieces are the stream's batch (end_send owed)
    wait_kind _wait = wait_kind::none;
    bool _established = false;
    bool _failure_seen = false;
    bool _parked = false;
    bool _finishing = false;
    bool _counted_initial = false;
    bool _attempt_failed = false;
    backoff_timer _backoff;
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
