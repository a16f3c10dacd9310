// The reactor: one io_uring per shard, the only code that touches the kernel on the hot path.
//
// Created on the shard's own thread (SINGLE_ISSUER) and used only there. Every ring operation
// carries a `completion*` as its user_data; run_once() submits, waits, and calls
// completion::complete(res, cqe_flags) for every CQE, then fires due timers, then runs the
// end-of-iteration hooks (group commit, mailbox drain). Start-up fails with a clear error when
// io_uring is unusable or lacks an operation; afterwards a ring error is an invariant
// violation (logged, abort).
//
// Rules for owners of completion objects (the reactor cannot enforce them):
// - Lifetime: a completion must outlive every operation that names it. An owner counts its
//   in-flight operations and frees itself only when the count is zero. Cancelling does not
//   shorten this: the cancelled operation still delivers a CQE (often -ECANCELED, but it may
//   also have completed normally just before the cancel landed), and only that CQE ends it.
// - Multishot (accept_multishot, recv_multishot): many CQEs per operation. A CQE without
//   IORING_CQE_F_MORE in cqe_flags means the operation has ended (error, -ENOBUFS, CQ
//   overflow, EOF): the owner re-arms if it still wants data.
// - recv with buffer selection: res == -ENOBUFS means the buffer ring ran dry; the owner
//   recycles buffers and re-arms. A CQE with IORING_CQE_F_BUFFER hands buffer ownership to the
//   owner until it calls buffer_ring::recycle.
// - send/sendmsg may complete partially (res < len) on stream sockets: the caller resubmits
//   the remainder. res == 0 from recv is EOF.
// - Buffers passed to send/recv/read/sendmsg/write_chain must stay valid until the CQE.
// - Sockets (ring_fd.h): an fd is closed only after every operation naming it has completed,
//   and named by none after its close. So every socket operation takes the holder's ring_fd
//   and a completion (no fire-and-forget operation names a socket; the holder counts each,
//   shutdown included), and close() takes the ring_fd away from its holder. Checked builds
//   verify the rule at every prep, completion and close (ring_fd.h). A completion carries at
//   most one socket operation at a time.
// - Plain int fds (read, write_chain) are for files and eventfds whose holders outlive the
//   ring, or order their closes by their own rule (the spool's segments).
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/core/ring_fd.h"
#include "ringmail/core/timer.h"

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unordered_set>
#include <vector>

namespace ringmail::core {

class completion {
  public:
    virtual void complete(int res, std::uint32_t cqe_flags) = 0;

  protected:
    ~completion() = default;

  private:
    friend class reactor;
    // The socket operation in flight with this completion, for the fd checks (ring_fd.h).
    std::uint64_t _op_holder = 0;
    int _op_fd = -1;
    std::uint8_t _op_kind = 0;
};

struct reactor_options {
    unsigned sq_entries = 4096;
    unsigned cq_entries = 32768;
    bool single_issuer = true;  // SINGLE_ISSUER (needs the ring created on its thread)
    bool defer_taskrun = true;  // DEFER_TASKRUN (only with single_issuer); switchable because
                                // of kernel bugs reported with multishot accept on 6.6-6.8
    std::size_t max_timers = std::size_t{1} << 22;
};

// One positioned vectored write of a group-commit chain.
struct write_request {
    int fd;
    std::uint64_t offset;
    const iovec* iov;
    unsigned iovcnt;
};

class reactor {
  public:
    using clock = std::chrono::steady_clock;

    // `why`, when given, receives a one-line explanation of a failure (which flag or opcode).
    static result<std::unique_ptr<reactor>> create(const reactor_options& = {},
                                                   std::string* why = nullptr);
    ~reactor();
    reactor(const reactor&) = delete;
    reactor& operator=(const reactor&) = delete;

    // Setup flags the ring actually got (after fallbacks), for the start-up log line.
    unsigned setup_flags() const noexcept { return _setup_flags; }

    // Preparation helpers: each takes an SQE (submitting first when the SQ is full) and sets
    // its user_data to the completion. Nothing reaches the kernel before the next run_once()
    // unless the SQ filled up.
    // Socket operations: `c` is required and names the operation until its last CQE.
    // res of an accept: the new fd (SOCK_CLOEXEC), for ring_fd::adopt.
    void accept_multishot(const ring_fd& listener, completion* c);
    void accept(const ring_fd& listener, completion* c);  // one connection, then re-arm
    void recv_multishot(const ring_fd& fd, std::uint16_t buf_group, completion* c);
    void recv(const ring_fd& fd, void* buf, std::size_t len, completion* c);
    void send(const ring_fd& fd, const void* buf, std::size_t len, completion* c);  // MSG_NOSIGNAL
    void sendmsg(const ring_fd& fd, const msghdr* msg, completion* c);              // MSG_NOSIGNAL
    void connect(const ring_fd& fd, const sockaddr* addr, socklen_t len, completion* c);
    void shutdown(const ring_fd& fd, int how, completion* c);
    void poll_add(const ring_fd& fd, unsigned mask, completion* c);  // one shot
    // Takes the fd from its holder (`fd` is empty afterwards). Only once nothing names it.
    // c == nullptr: nobody waits for the result.
    void close(ring_fd&& fd, completion* c = nullptr);

    // Cancels every operation whose user_data is `target` (IORING_ASYNC_CANCEL_ALL).
    // `c` gets the number cancelled (0 when nothing matched: the target already completed)
    // or -errno; see the lifetime rule above.
    void cancel(completion* target, completion* c = nullptr);
    void read(int fd, void* buf, std::size_t len, completion* c);  // at the current offset
    // Drops the pages of [addr, addr + len) from this process (MADV_DONTNEED), nobody waiting.
    // Only for a shared mapping of a file, whose pages stay in the file and come back on the
    // next touch: on anonymous memory it would zero the bytes. addr page-aligned.
    void drop_mapped_pages(const void* addr, std::size_t len);
    // Closes a file (never a socket: those are ring_fds) in an io-wq worker (IOSQE_ASYNC), so
    // that what the last close of an unlinked file frees is freed off the loop.
    void close_file_async(int fd, completion* c);
    // Punches a hole in a file (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; the kernel runs it
    // in an io-wq worker): an unlinked file's extents freed a slice at a time.
    void punch_hole_async(int fd, std::uint64_t offset, std::uint64_t length, completion* c);
    void nop(completion* c);

    // Group commit: every write (vectored, positioned) then an fdatasync of every sync fd, then
    // a full fsync of every fsync fd (directories: new names), as one linked chain. `done` gets one
    // CQE-like call: 0 when every write was complete and every fdatasync succeeded, else the first
    // failure as -errno (-EIO for a short write); a failure cancels the rest of the chain, so
    // nothing after it claims durability. The chain must fit the SQ (writes + syncs <= sq_entries)
    // or it is an invariant violation. The iovecs must stay valid until `done` is called.
    void write_chain(std::span<const write_request> writes, std::span<const int> sync_fds,
                     completion* done, std::span<const int> fsync_fds = {});

    // Time: cached at the start of each wait and after it returns.
    clock::time_point now() const noexcept { return _now; }
    void arm(timer& t, clock::time_point deadline) { _timers.arm(t, deadline); }
    void disarm(timer& t) noexcept { _timers.disarm(t); }
    std::size_t armed_timers() const noexcept { return _timers.size(); }

    // End-of-iteration hooks run after all CQEs and timers of an iteration, in registration
    // order. Registered at setup; the id removes it (the hook's owner must do so before dying).
    using hook_id = std::size_t;
    hook_id on_iteration_end(std::function<void()> hook);
    void remove_iteration_end(hook_id id) noexcept;

    // Submits pending SQEs, waits for at least one CQE, the nearest timer or max_wait
    // (whichever is first), dispatches every CQE, expires timers, runs hooks. Returns the
    // number of CQEs reaped (fire-and-forget ones included) plus timers fired; 0 means the
    // wait timed out with nothing to do.
    std::size_t run_once(clock::duration max_wait);
    // Runs until `stop` is true; the flag is checked once per iteration, so whoever sets it
    // must also wake the loop (a mailbox wake, or it notices within `poll`).
    void run_until(const std::atomic<bool>& stop,
                   clock::duration poll = std::chrono::milliseconds(100));

    // Submits pending SQEs without waiting.
    void flush();

    io_uring* ring() noexcept { return &_ring; }
    const reactor_options& options() const noexcept { return _opts; }

  private:
    friend class detached_close;
    explicit reactor(const reactor_options& opts);
    enum class op_kind : std::uint8_t { none, single, multishot, close };
    // Preps an SQE for a socket operation: checks the rule (ring_fd.h) and records the fd in c.
    io_uring_sqe* socket_sqe(const ring_fd& fd, completion* c, op_kind kind, const char* op);
    io_uring_sqe* get_sqe();
    void reserve_sqes(unsigned count);  // room for `count` consecutive SQEs (a link chain)
    std::size_t dispatch_cqes();

    reactor_options _opts;
    io_uring _ring{};
    bool _ring_ready = false;
    unsigned _setup_flags = 0;
    clock::time_point _now;
    timer_queue _timers;
    std::vector<std::function<void()>> _hooks;
    // Checked builds: closes nobody waits for, freed at their CQE or with the ring.
    std::unordered_set<completion*> _detached_closes;
    bool _in_run = false;
};

}  // namespace ringmail::core
