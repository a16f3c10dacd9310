// The lifetime rule of an fd on the ring (ring_fd.h), against the real reactor and kernel:
// why it exists (an uncounted shutdown reaches the socket that reuses the number), that the
// counted pattern keeps the next socket whole, and that checked builds turn every breach into
// an invariant failure.
#include "ringmail/core/ring_fd.h"

#include "ringmail/core/reactor.h"

#include <gtest/gtest.h>
#include <liburing.h>

#include <cerrno>
#include <functional>
#include <memory>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

namespace ringmail::core {
namespace {

struct recorder final : completion {
    int calls = 0;
    int last = 0;
    std::uint32_t flags = 0;
    void complete(int res, std::uint32_t f) override {
        ++calls;
        last = res;
        flags = f;
    }
};

std::unique_ptr<reactor> make_reactor() {
    std::string why;
    auto r = reactor::create({}, &why);
    if (!r)
        ADD_FAILURE() << "reactor::create: " << why;
    return r ? std::move(r.value()) : nullptr;
}

bool spin(reactor& r, const std::function<bool()>& done) {
    for (int i = 0; i < 200 && !done(); ++i)
        r.run_once(std::chrono::milliseconds(100));
    return done();
}

struct pair_of_sockets {
    int a = -1;
    int b = -1;
    pair_of_sockets() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
            a = sv[0];
            b = sv[1];
        }
    }
};

// Whether a socket has been shut down: its peer sees the end (a read gives 0 at once).
bool was_shut_down(int fd, int peer) {
    if (::send(peer, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1)
        return true;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) != 1)
        return true;
    char c = 0;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) != 1 || c != 'x';
}

// The hazard, at the kernel level (raw SQEs, around the reactor): a shutdown and a close of
// the same number in one submission. The shutdown runs later in an io-wq worker and looks the
// number up only then, so the close has freed it and a new socket may have it by then. This
// is what cut inbound sessions while outbound sessions churned (issue "MX routing cuts
// inbound sessions"); the rule exists because of it.
TEST(ring_fd_rule, an_uncounted_shutdown_reaches_the_socket_that_reuses_the_number) {
    io_uring ring{};
    ASSERT_EQ(io_uring_queue_init(8, &ring, 0), 0);
    int cut = 0;
    constexpr int trials = 200;
    for (int t = 0; t < trials; ++t) {
        pair_of_sockets old;
        ASSERT_GE(old.a, 0);
        io_uring_sqe* s = io_uring_get_sqe(&ring);
        io_uring_prep_shutdown(s, old.a, SHUT_RDWR);
        io_uring_sqe_set_data64(s, 1);
        s = io_uring_get_sqe(&ring);
        io_uring_prep_close(s, old.a);
        io_uring_sqe_set_data64(s, 2);
        ASSERT_EQ(io_uring_submit(&ring), 2);
        pair_of_sockets next;  // takes the lowest free number: the one just closed
        for (int i = 0; i < 2; ++i) {
            io_uring_cqe* cqe = nullptr;
            ASSERT_EQ(io_uring_wait_cqe(&ring, &cqe), 0);
            io_uring_cqe_seen(&ring, cqe);
        }
        const int victim = next.a == old.a ? next.a : (next.b == old.a ? next.b : -1);
        if (victim >= 0 && was_shut_down(victim, victim == next.a ? next.b : next.a))
            ++cut;
        ::close(old.b);
        ::close(next.a);
        ::close(next.b);
    }
    io_uring_queue_exit(&ring);
    if (cut == 0)
        GTEST_SKIP() << "this kernel resolved every shutdown before the close that followed it";
    RecordProperty("cut_of_200", cut);
    EXPECT_GT(cut, 0);
}

// The rule kept, as every connection of ringmail does it: the shutdown is an operation of its
// holder like any other, counted, and the close waits for its completion. The socket that gets
// the number next is never touched.
TEST(ring_fd_rule, a_counted_shutdown_leaves_the_next_socket_whole) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    for (int t = 0; t < 200; ++t) {
        pair_of_sockets old;
        ASSERT_GE(old.a, 0);
        const int number = old.a;
        ring_fd fd = ring_fd::adopt(old.a);
        recorder shut, closed;
        r->shutdown(fd, SHUT_RDWR, &shut);
        EXPECT_EQ(fd_checks::in_flight(number, fd.holder()), fd_checks_enabled ? 1u : 0u);
        ASSERT_TRUE(spin(*r, [&] { return shut.calls == 1; }));
        EXPECT_EQ(fd_checks::in_flight(number, fd.holder()), 0u);
        r->close(std::move(fd), &closed);
        EXPECT_FALSE(fd.valid());
        ASSERT_TRUE(spin(*r, [&] { return closed.calls == 1; }));
        pair_of_sockets next;
        ring_fd reused = ring_fd::adopt(next.a);  // the table has released the old holder
        EXPECT_EQ(next.a, number);
        EXPECT_FALSE(was_shut_down(next.a, next.b));
        reused.close_now();
        ::close(old.b);
        ::close(next.b);
    }
}

TEST(ring_fd_rule, multishot_operations_count_until_their_last_cqe) {
    if constexpr (!fd_checks_enabled)
        GTEST_SKIP() << "release build: no fd table";
    auto r = make_reactor();
    ASSERT_TRUE(r);
    pair_of_sockets p;
    ring_fd fd = ring_fd::adopt(p.a);
    char buf[16];
    recorder rc, cc;
    r->recv(fd, buf, sizeof buf, &rc);
    EXPECT_EQ(fd_checks::in_flight(p.a, fd.holder()), 1u);
    r->cancel(&rc, &cc);
    ASSERT_TRUE(spin(*r, [&] { return rc.calls == 1 && cc.calls == 1; }));
    EXPECT_EQ(rc.last, -ECANCELED);
    EXPECT_EQ(fd_checks::in_flight(p.a, fd.holder()), 0u);
    recorder closed;
    r->close(std::move(fd), &closed);
    ASSERT_TRUE(spin(*r, [&] { return closed.calls == 1; }));
    ::close(p.b);
}

// --- checked builds: each breach is an invariant failure --------------------------------------

class ring_fd_checks : public ::testing::Test {
  protected:
    void SetUp() override {
        if constexpr (!fd_checks_enabled)
            GTEST_SKIP() << "release build: the checks are compiled out";
        GTEST_FLAG_SET(death_test_style, "threadsafe");
    }
};

TEST_F(ring_fd_checks, close_while_a_shutdown_is_in_flight) {
    EXPECT_DEATH(
        {
            auto r = make_reactor();
            pair_of_sockets p;
            ring_fd fd = ring_fd::adopt(p.a);
            recorder shut;
            r->shutdown(fd, SHUT_RDWR, &shut);
            r->close(std::move(fd));  // the broken pattern: the shutdown is not back yet
        },
        "close of fd [0-9]+ by holder [0-9]+ with 1 operation\\(s\\) naming it in flight");
}

TEST_F(ring_fd_checks, an_operation_without_a_completion) {
    EXPECT_DEATH(
        {
            auto r = make_reactor();
            pair_of_sockets p;
            ring_fd fd = ring_fd::adopt(p.a);
            r->shutdown(fd, SHUT_RDWR, nullptr);
        },
        "shutdown on fd [0-9]+ without a completion");
}

TEST_F(ring_fd_checks, an_operation_after_the_close) {
    EXPECT_DEATH(
        {
            pair_of_sockets p;
            ring_fd fd = ring_fd::adopt(p.a);
            fd_checks::close_begin(p.a, fd.holder());
            fd_checks::op_begin(p.a, fd.holder(), "send");
        },
        "send on fd [0-9]+ by holder [0-9]+ after its close");
}

TEST_F(ring_fd_checks, an_operation_by_a_previous_holder_of_the_number) {
    EXPECT_DEATH(
        {
            pair_of_sockets p;
            ring_fd old = ring_fd::adopt(p.a);
            const std::uint64_t stale = old.holder();
            old.close_now();
            pair_of_sockets q;  // gets the number
            ring_fd next = ring_fd::adopt(q.a);
            fd_checks::op_begin(q.a, stale, "recv");
        },
        "recv on fd [0-9]+ by holder [0-9]+, but the fd now belongs to holder [0-9]+");
}

TEST_F(ring_fd_checks, a_completion_after_the_number_changed_hands) {
    EXPECT_DEATH(
        {
            pair_of_sockets p;
            ring_fd old = ring_fd::adopt(p.a);
            const std::uint64_t stale = old.holder();
            old.close_now();
            pair_of_sockets q;
            ring_fd next = ring_fd::adopt(q.a);
            fd_checks::op_end(q.a, stale);
        },
        "an operation on fd [0-9]+ of holder [0-9]+ completed after the fd changed hands");
}

TEST_F(ring_fd_checks, a_number_closed_behind_its_holders_back) {
    EXPECT_DEATH(
        {
            pair_of_sockets p;
            ring_fd fd = ring_fd::adopt(p.a);
            ::close(p.a);  // not through the holder: the table still shows it open
            pair_of_sockets q;
            ring_fd next = ring_fd::adopt(q.a);
        },
        "fd [0-9]+ handed to holder [0-9]+ while holder [0-9]+ still has it open");
}

TEST_F(ring_fd_checks, one_completion_two_operations) {
    EXPECT_DEATH(
        {
            auto r = make_reactor();
            pair_of_sockets p;
            ring_fd fd = ring_fd::adopt(p.a);
            char buf[8];
            recorder c;
            r->recv(fd, buf, sizeof buf, &c);
            r->recv(fd, buf, sizeof buf, &c);
        },
        "recv on fd [0-9]+: its completion still carries an operation");
}

}  // namespace
}  // namespace ringmail::core
