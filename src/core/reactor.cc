#include "ringmail/core/reactor.h"

#include "ringmail/core/errc.h"
#include "ringmail/core/panic.h"

#include <climits>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>

namespace ringmail::core {

namespace {

struct required_op {
    int op;
    const char* name;
};

constexpr required_op required_ops[] = {
    {IORING_OP_ACCEPT, "ACCEPT"},     {IORING_OP_RECV, "RECV"},
    {IORING_OP_SEND, "SEND"},         {IORING_OP_SENDMSG, "SENDMSG"},
    {IORING_OP_CONNECT, "CONNECT"},   {IORING_OP_CLOSE, "CLOSE"},
    {IORING_OP_TIMEOUT, "TIMEOUT"},   {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {IORING_OP_WRITEV, "WRITEV"},     {IORING_OP_FSYNC, "FSYNC"},
    {IORING_OP_READ, "READ"},         {IORING_OP_POLL_ADD, "POLL_ADD"},
    {IORING_OP_SHUTDOWN, "SHUTDOWN"}, {IORING_OP_NOP, "NOP"},
    {IORING_OP_MADVISE, "MADVISE"},   {IORING_OP_FALLOCATE, "FALLOCATE"},
};

// One linked group-commit chain: a completion per SQE (so a short write is recognised by
// the step that made it) and one call of the caller's `done` when the last step completes.
class write_chain_state;

class chain_step final : public completion {
  public:
    void complete(int res, std::uint32_t cqe_flags) override;

    write_chain_state* chain = nullptr;
    std::size_t expected = 0;  // bytes a write must move; SIZE_MAX for an fdatasync
    unsigned index = 0;
    write_request request{};  // the write (copied), for the cause of a short one
};

// A short write to a regular file carries no errno: the kernel wrote what fitted and would only
// say why (ENOSPC, EDQUOT, EFBIG) on the next write. Ask it, writing the rest synchronously —
// only on this failure path — so the spool can answer 452 for a full disk rather than 451 for
// an unexplained I/O error. The chain has failed either way (its links after this write were
// cancelled), so a probe that succeeds still reports -EIO.
int short_write_cause(const write_request& w, std::size_t done) {
    std::vector<iovec> rest;
    std::size_t skip = done;
    for (unsigned k = 0; k < w.iovcnt; ++k) {
        const iovec& v = w.iov[k];
        if (skip >= v.iov_len) {
            skip -= v.iov_len;
            continue;
        }
        rest.push_back(iovec{static_cast<char*>(v.iov_base) + skip, v.iov_len - skip});
        skip = 0;
    }
    if (rest.empty())
        return -EIO;
    int count = static_cast<int>(std::min<std::size_t>(rest.size(), IOV_MAX));
    ssize_t n = ::pwritev(w.fd, rest.data(), count, static_cast<off_t>(w.offset + done));
    return n < 0 ? -errno : -EIO;
}

class write_chain_state {
  public:
    write_chain_state(completion* done, unsigned steps)
        : _done(done), _pending(steps), _steps(new chain_step[steps]) {
        for (unsigned i = 0; i < steps; ++i) {
            _steps[i].chain = this;
            _steps[i].index = i;
        }
    }
    chain_step& step(unsigned i) { return _steps[i]; }

    void step_done(unsigned index, int res, std::size_t expected) {
        int err = 0;
        if (res < 0) {
            err = res;
        } else if (expected != SIZE_MAX && static_cast<std::size_t>(res) != expected) {
            err = short_write_cause(_steps[index].request, static_cast<std::size_t>(res));
        }
        // The cause of a failed chain is its earliest real failure; the -ECANCELED of the
        // steps after it are only the consequence.
        if (err != 0) {
            bool real = err != -ECANCELED;
            if (_error == 0 || (real && (!_error_real || index < _error_index))) {
                _error = err;
                _error_index = index;
                _error_real = real;
            }
        }
        if (--_pending == 0) {
            completion* done = _done;
            int result = _error;
            delete this;
            done->complete(result, 0);
        }
    }

  private:
    completion* _done;
    unsigned _pending;
    std::unique_ptr<chain_step[]> _steps;
    int _error = 0;
    unsigned _error_index = UINT_MAX;
    bool _error_real = false;
};

void chain_step::complete(int res, std::uint32_t) {
    chain->step_done(index, res, expected);
}

}  // namespace

// A close nobody waits for: in checked builds the table must still see its completion. One
// still in flight when the ring goes away is freed with it.
class detached_close final : public completion {
  public:
    explicit detached_close(reactor& r) : _r(r) { _r._detached_closes.insert(this); }
    void complete(int, std::uint32_t) override {
        _r._detached_closes.erase(this);
        delete this;
    }

  private:
    reactor& _r;
};

reactor::reactor(const reactor_options& opts)
    : _opts(opts), _now(clock::now()), _timers(opts.max_timers) {}

reactor::~reactor() {
    if (_ring_ready)
        io_uring_queue_exit(&_ring);
    for (completion* c : _detached_closes)
        delete static_cast<detached_close*>(c);
}

result<std::unique_ptr<reactor>> reactor::create(const reactor_options& opts, std::string* why) {
    std::unique_ptr<reactor> r(new reactor(opts));

    const unsigned base = IORING_SETUP_CQSIZE;
    const unsigned extras =
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    unsigned issuer = 0;
    if (opts.single_issuer) {
        issuer |= IORING_SETUP_SINGLE_ISSUER;
        if (opts.defer_taskrun)
            issuer |= IORING_SETUP_DEFER_TASKRUN;
    }
    // Most wanted first; each step drops what an older kernel may reject with EINVAL.
    const unsigned attempts[] = {
        base | extras | issuer,
        base | IORING_SETUP_SUBMIT_ALL | issuer,
        base | extras,
        base,
    };
    int ret = -EINVAL;
    for (unsigned flags : attempts) {
        io_uring_params p{};
        p.flags = flags;
        p.cq_entries = opts.cq_entries;
        ret = io_uring_queue_init_params(opts.sq_entries, &r->_ring, &p);
        if (ret == 0) {
            r->_setup_flags = flags;
            break;
        }
        if (ret != -EINVAL)
            break;
    }
    if (ret != 0) {
        if (why)
            *why = std::string("io_uring_setup: ") + std::strerror(-ret);
        return failure(errc::io_uring_unavailable);
    }
    r->_ring_ready = true;

    io_uring_probe* probe = io_uring_get_probe_ring(&r->_ring);
    if (probe == nullptr) {
        if (why)
            *why = "io_uring probe (IORING_REGISTER_PROBE) failed";
        return failure(errc::opcode_unsupported);
    }
    std::string missing;
    for (const auto& op : required_ops) {
        if (!io_uring_opcode_supported(probe, op.op)) {
            if (!missing.empty())
                missing += ", ";
            missing += op.name;
        }
    }
    io_uring_free_probe(probe);
    if (!missing.empty()) {
        if (why)
            *why = "io_uring lacks IORING_OP_" + missing;
        return failure(errc::opcode_unsupported);
    }
    return r;
}

io_uring_sqe* reactor::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
    if (sqe == nullptr) {
        int ret = io_uring_submit(&_ring);
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN)
            invariant_broken("io_uring_submit: {}", std::strerror(-ret));
        sqe = io_uring_get_sqe(&_ring);
        if (sqe == nullptr)
            invariant_broken("no SQE after submit: {}", std::strerror(EBUSY));
    }
    return sqe;
}

void reactor::reserve_sqes(unsigned count) {
    if (count > _ring.sq.ring_entries)
        invariant_broken("link chain longer than the SQ: {}", std::strerror(E2BIG));
    if (io_uring_sq_space_left(&_ring) >= count)
        return;
    int ret = io_uring_submit(&_ring);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN)
        invariant_broken("io_uring_submit: {}", std::strerror(-ret));
    if (io_uring_sq_space_left(&_ring) < count)
        invariant_broken("no room for a link chain: {}", std::strerror(EBUSY));
}

io_uring_sqe* reactor::socket_sqe(const ring_fd& fd, completion* c, op_kind kind, const char* op) {
    if (!fd.valid())
        invariant_broken("{} on a closed or empty ring_fd", op);
    if (c == nullptr)
        invariant_broken("{} on fd {} without a completion: its holder could not count it", op,
                         fd.get());
    if constexpr (fd_checks_enabled) {
        if (c->_op_kind != static_cast<std::uint8_t>(op_kind::none)) {
            invariant_broken("{} on fd {}: its completion still carries an operation on fd {}", op,
                             fd.get(), c->_op_fd);
        }
        if (kind == op_kind::close) {
            fd_checks::close_begin(fd.get(), fd.holder());
        } else {
            fd_checks::op_begin(fd.get(), fd.holder(), op);
        }
        c->_op_fd = fd.get();
        c->_op_holder = fd.holder();
        c->_op_kind = static_cast<std::uint8_t>(kind);
    }
    io_uring_sqe* sqe = get_sqe();
    return sqe;
}

void reactor::accept_multishot(const ring_fd& listener, completion* c) {
    io_uring_sqe* sqe = socket_sqe(listener, c, op_kind::multishot, "accept");
    io_uring_prep_multishot_accept(sqe, listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::accept(const ring_fd& listener, completion* c) {
    io_uring_sqe* sqe = socket_sqe(listener, c, op_kind::single, "accept");
    io_uring_prep_accept(sqe, listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::recv_multishot(const ring_fd& fd, std::uint16_t buf_group, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::multishot, "recv");
    io_uring_prep_recv_multishot(sqe, fd.get(), nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = buf_group;
    io_uring_sqe_set_data(sqe, c);
}

void reactor::recv(const ring_fd& fd, void* buf, std::size_t len, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "recv");
    io_uring_prep_recv(sqe, fd.get(), buf, len, 0);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::send(const ring_fd& fd, const void* buf, std::size_t len, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "send");
    io_uring_prep_send(sqe, fd.get(), buf, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::sendmsg(const ring_fd& fd, const msghdr* msg, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "sendmsg");
    io_uring_prep_sendmsg(sqe, fd.get(), msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::connect(const ring_fd& fd, const sockaddr* addr, socklen_t len, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "connect");
    io_uring_prep_connect(sqe, fd.get(), addr, len);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::shutdown(const ring_fd& fd, int how, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "shutdown");
    io_uring_prep_shutdown(sqe, fd.get(), how);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::poll_add(const ring_fd& fd, unsigned mask, completion* c) {
    io_uring_sqe* sqe = socket_sqe(fd, c, op_kind::single, "poll");
    io_uring_prep_poll_add(sqe, fd.get(), mask);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::close(ring_fd&& fd, completion* c) {
    if (c == nullptr && fd_checks_enabled)
        c = new detached_close(*this);
    io_uring_sqe* sqe;
    if (c != nullptr) {
        sqe = socket_sqe(fd, c, op_kind::close, "close");
    } else {
        if (!fd.valid())
            invariant_broken("close on a closed or empty ring_fd");
        sqe = get_sqe();
    }
    io_uring_prep_close(sqe, fd.get());
    io_uring_sqe_set_data(sqe, c);
    fd._fd = -1;
    fd._holder = 0;
}

void reactor::cancel(completion* target, completion* c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uintptr_t>(target), IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::drop_mapped_pages(const void* addr, std::size_t len) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_madvise(sqe, const_cast<void*>(addr), static_cast<off_t>(len), MADV_DONTNEED);
    io_uring_sqe_set_data(sqe, nullptr);
}

void reactor::read(int fd, void* buf, std::size_t len, completion* c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, fd, buf, static_cast<unsigned>(len), static_cast<__u64>(-1));
    io_uring_sqe_set_data(sqe, c);
}

void reactor::close_file_async(int fd, completion* c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_close(sqe, fd);
    sqe->flags |= IOSQE_ASYNC;
    io_uring_sqe_set_data(sqe, c);
}

void reactor::punch_hole_async(int fd, std::uint64_t offset, std::uint64_t length, completion* c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            static_cast<off_t>(offset), static_cast<off_t>(length));
    io_uring_sqe_set_data(sqe, c);
}

void reactor::nop(completion* c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, c);
}

void reactor::write_chain(std::span<const write_request> writes, std::span<const int> sync_fds,
                          completion* done, std::span<const int> fsync_fds) {
    const std::size_t steps = writes.size() + sync_fds.size() + fsync_fds.size();
    if (steps == 0) {
        nop(done);  // an empty batch is trivially durable; still answered from the loop
        return;
    }
    reserve_sqes(static_cast<unsigned>(steps));
    auto* chain = new write_chain_state(done, static_cast<unsigned>(steps));
    unsigned i = 0;
    for (const write_request& w : writes) {
        std::size_t bytes = 0;
        for (unsigned k = 0; k < w.iovcnt; ++k)
            bytes += w.iov[k].iov_len;
        chain_step& s = chain->step(i);
        s.expected = bytes;
        s.request = w;
        io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
        io_uring_prep_writev(sqe, w.fd, w.iov, w.iovcnt, w.offset);
        if (++i < steps)
            sqe->flags |= IOSQE_IO_LINK;
        io_uring_sqe_set_data(sqe, static_cast<completion*>(&s));
    }
    for (int fd : sync_fds) {
        chain_step& s = chain->step(i);
        s.expected = SIZE_MAX;
        io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        if (++i < steps)
            sqe->flags |= IOSQE_IO_LINK;
        io_uring_sqe_set_data(sqe, static_cast<completion*>(&s));
    }
    for (int fd : fsync_fds) {
        chain_step& s = chain->step(i);
        s.expected = SIZE_MAX;
        io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
        io_uring_prep_fsync(sqe, fd, 0);
        if (++i < steps)
            sqe->flags |= IOSQE_IO_LINK;
        io_uring_sqe_set_data(sqe, static_cast<completion*>(&s));
    }
}

reactor::hook_id reactor::on_iteration_end(std::function<void()> hook) {
    _hooks.push_back(std::move(hook));
    return _hooks.size() - 1;
}

void reactor::remove_iteration_end(hook_id id) noexcept {
    if (id < _hooks.size())
        _hooks[id] = nullptr;
}

void reactor::flush() {
    int ret = io_uring_submit(&_ring);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR)
        invariant_broken("io_uring_submit: {}", std::strerror(-ret));
}

std::size_t reactor::dispatch_cqes() {
    struct event {
        std::uint64_t user_data;
        std::int32_t res;
        std::uint32_t flags;
    };
    // Copy a batch out and release the CQ slots before calling owners, so handlers that
    // submit new work never run with the CQ held full.
    std::array<event, 256> batch;
    std::size_t dispatched = 0;
    const std::size_t limit = _ring.cq.ring_entries;
    while (dispatched < limit) {
        unsigned head;
        io_uring_cqe* cqe;
        unsigned n = 0;
        io_uring_for_each_cqe(&_ring, head, cqe) {
            if (n == batch.size())
                break;
            batch[n++] = {cqe->user_data, cqe->res, cqe->flags};
        }
        if (n == 0)
            break;
        io_uring_cq_advance(&_ring, n);
        for (unsigned i = 0; i < n; ++i) {
            const event& e = batch[i];
            if (e.user_data == LIBURING_UDATA_TIMEOUT)
                continue;  // liburing's own wait timeout
            ++dispatched;
            if (e.user_data == 0)
                continue;  // fire and forget
            auto* c = reinterpret_cast<completion*>(static_cast<std::uintptr_t>(e.user_data));
            if constexpr (fd_checks_enabled) {
                const auto kind = static_cast<op_kind>(c->_op_kind);
                if (kind != op_kind::none &&
                    (kind != op_kind::multishot || !(e.flags & IORING_CQE_F_MORE))) {
                    // The operation's last CQE: it names the fd no more.
                    c->_op_kind = static_cast<std::uint8_t>(op_kind::none);
                    if (kind == op_kind::close) {
                        fd_checks::close_end(c->_op_fd, c->_op_holder);
                    } else {
                        fd_checks::op_end(c->_op_fd, c->_op_holder);
                    }
                }
            }
            c->complete(e.res, e.flags);
        }
    }
    return dispatched;
}

std::size_t reactor::run_once(clock::duration max_wait) {
    if (_in_run)
        invariant_broken("reactor::run_once re-entered from a handler: {}", std::strerror(EDEADLK));
    _in_run = true;
    _now = clock::now();
    clock::duration wait = max_wait;
    if (auto next = _timers.next_deadline())
        wait = std::min(wait, *next - _now);
    if (wait < clock::duration::zero())
        wait = clock::duration::zero();

    int ret;
    if (wait > clock::duration::zero() && io_uring_cq_ready(&_ring) == 0) {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
        __kernel_timespec ts{};
        ts.tv_sec = ns / 1'000'000'000;
        ts.tv_nsec = ns % 1'000'000'000;
        io_uring_cqe* cqe = nullptr;
        ret = io_uring_submit_and_wait_timeout(&_ring, &cqe, 1, &ts, nullptr);
    } else {
        // Something is due already: submit and run deferred task work without sleeping.
        ret = io_uring_submit_and_get_events(&_ring);
    }
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
        invariant_broken("io_uring_enter: {}", std::strerror(-ret));
    }

    _now = clock::now();
    std::size_t events = dispatch_cqes();
    events += _timers.expire(_now);
    for (std::size_t i = 0; i < _hooks.size(); ++i) {
        if (_hooks[i])
            _hooks[i]();
    }
    _in_run = false;
    return events;
}

void reactor::run_until(const std::atomic<bool>& stop, clock::duration poll) {
    while (!stop.load(std::memory_order_acquire))
        run_once(poll);
}

}  // namespace ringmail::core
