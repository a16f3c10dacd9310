#include "ringmail/core/reactor.h"

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/socket.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace ringmail::core {
namespace {

struct recorder final : completion {
    std::vector<std::pair<int, std::uint32_t>> events;
    std::function<void(int, std::uint32_t)> on;
    void complete(int res, std::uint32_t flags) override {
        events.emplace_back(res, flags);
        if (on)
            on(res, flags);
    }
};

std::unique_ptr<reactor> make_reactor(reactor_options opts = {}) {
    std::string why;
    auto r = reactor::create(opts, &why);
    if (!r)
        ADD_FAILURE() << "reactor::create: " << r.error().message() << ": " << why;
    return r ? std::move(r.value()) : nullptr;
}

// Runs the loop until `done` holds; gives up after ~20 s so a broken reactor fails, not hangs.
bool spin(reactor& r, const std::function<bool()>& done) {
    for (int i = 0; i < 200 && !done(); ++i)
        r.run_once(std::chrono::milliseconds(100));
    return done();
}

int listen_loopback(std::uint16_t& port) {
    auto ep = parse_endpoint("127.0.0.1:0");
    auto fd = make_listener(ep.value(), 16);
    EXPECT_TRUE(fd.has_value());
    port = local_endpoint(fd.value()).value().port();
    return fd.value();
}

int connect_blocking(std::uint16_t port) {
    auto ep = parse_endpoint("127.0.0.1:" + std::to_string(port)).value();
    int fd = make_tcp_socket(AF_INET).value();
    EXPECT_EQ(::connect(fd, ep.addr(), ep.len), 0) << std::strerror(errno);
    return fd;
}

class reactor_modes : public ::testing::TestWithParam<bool> {};

TEST_P(reactor_modes, accept_recv_multishot_and_send_echo) {
    reactor_options opts;
    opts.defer_taskrun = GetParam();
    auto r = make_reactor(opts);
    ASSERT_TRUE(r);
    if (opts.defer_taskrun) {
        EXPECT_TRUE(r->setup_flags() & IORING_SETUP_DEFER_TASKRUN);
    }

    auto br = buffer_ring::create(*r, 7, 8, 4096);
    ASSERT_TRUE(br.has_value());
    std::uint16_t port = 0;
    ring_fd lfd = ring_fd::adopt(listen_loopback(port));

    ring_fd conn;
    std::string echo;
    recorder accept_c, recv_c, send_c;
    accept_c.on = [&](int res, std::uint32_t flags) {
        if (res < 0)
            return;                              // the cancel at the end
        EXPECT_TRUE(flags & IORING_CQE_F_MORE);  // multishot accept stays armed
        conn = ring_fd::adopt(res);
        r->recv_multishot(conn, 7, &recv_c);
    };
    recv_c.on = [&](int res, std::uint32_t flags) {
        if (res <= 0)
            return;
        ASSERT_TRUE(flags & IORING_CQE_F_BUFFER);
        auto id = buffer_ring::buffer_id(flags);
        echo.append((*br)->data(id, static_cast<std::size_t>(res)));
        (*br)->recycle(id);
        r->send(conn, echo.data(), echo.size(), &send_c);
    };
    r->accept_multishot(lfd, &accept_c);

    int client = connect_blocking(port);
    const std::string msg = "EHLO ring.test\r\n";
    ASSERT_EQ(::send(client, msg.data(), msg.size(), 0), static_cast<ssize_t>(msg.size()));
    ASSERT_TRUE(spin(*r, [&] { return !send_c.events.empty(); }));
    EXPECT_EQ(send_c.events[0].first, static_cast<int>(msg.size()));

    std::string got(msg.size(), '\0');
    ASSERT_EQ(::recv(client, got.data(), got.size(), MSG_WAITALL),
              static_cast<ssize_t>(msg.size()));
    EXPECT_EQ(got, msg);
    EXPECT_EQ((*br)->available(), 8u);

    // EOF ends the multishot recv: res 0 and no IORING_CQE_F_MORE.
    ::close(client);
    ASSERT_TRUE(
        spin(*r, [&] { return !recv_c.events.empty() && recv_c.events.back().first == 0; }));
    EXPECT_FALSE(recv_c.events.back().second & IORING_CQE_F_MORE);

    // Cancel the still-armed multishot accept: it ends with -ECANCELED, the cancel reports 1.
    recorder cancel_c;
    r->cancel(&accept_c, &cancel_c);
    ASSERT_TRUE(spin(*r, [&] { return !cancel_c.events.empty() && accept_c.events.size() >= 2; }));
    EXPECT_EQ(cancel_c.events[0].first, 1);
    EXPECT_EQ(accept_c.events.back().first, -ECANCELED);
    EXPECT_FALSE(accept_c.events.back().second & IORING_CQE_F_MORE);

    r->close(std::move(conn));
    r->close(std::move(lfd));
    r->run_once(std::chrono::milliseconds(0));
}

INSTANTIATE_TEST_SUITE_P(defer_taskrun, reactor_modes, ::testing::Bool());

TEST(reactor, connect_to_listener_and_to_closed_port) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    std::uint16_t port = 0;
    int lfd = listen_loopback(port);
    auto ep = parse_endpoint("127.0.0.1:" + std::to_string(port)).value();
    ring_fd fd = ring_fd::adopt(make_tcp_socket(AF_INET).value());
    recorder ok;
    r->connect(fd, ep.addr(), ep.len, &ok);

    // A port with a bound but not listening socket refuses connections.
    int bound = make_tcp_socket(AF_INET).value();
    auto any = parse_endpoint("127.0.0.1:0").value();
    ASSERT_EQ(::bind(bound, any.addr(), any.len), 0);
    auto closed_ep = local_endpoint(bound).value();
    ring_fd fd2 = ring_fd::adopt(make_tcp_socket(AF_INET).value());
    recorder refused;
    r->connect(fd2, closed_ep.addr(), closed_ep.len, &refused);

    ASSERT_TRUE(spin(*r, [&] { return !ok.events.empty() && !refused.events.empty(); }));
    EXPECT_EQ(ok.events[0].first, 0);
    EXPECT_EQ(refused.events[0].first, -ECONNREFUSED);
    fd.close_now();
    fd2.close_now();
    for (int f : {bound, lfd})
        ::close(f);
}

TEST(reactor, recv_send_partial_rules_and_cancel_of_pending_recv) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    ring_fd sock = ring_fd::adopt(sv[0]);
    char buf[64];
    recorder rc, cc;
    r->recv(sock, buf, sizeof buf, &rc);
    r->run_once(std::chrono::milliseconds(0));
    EXPECT_TRUE(rc.events.empty());
    r->cancel(&rc, &cc);
    ASSERT_TRUE(spin(*r, [&] { return !rc.events.empty() && !cc.events.empty(); }));
    EXPECT_EQ(rc.events[0].first, -ECANCELED);
    EXPECT_EQ(cc.events[0].first, 1);

    // Cancelling an operation that already completed finds nothing.
    recorder cc2;
    r->cancel(&rc, &cc2);
    ASSERT_TRUE(spin(*r, [&] { return !cc2.events.empty(); }));
    EXPECT_EQ(cc2.events[0].first, 0);
    EXPECT_EQ(rc.events.size(), 1u);

    recorder rd;
    ASSERT_EQ(::write(sv[1], "abc", 3), 3);
    r->read(sock.get(), buf, sizeof buf, &rd);
    ASSERT_TRUE(spin(*r, [&] { return !rd.events.empty(); }));
    EXPECT_EQ(rd.events[0].first, 3);
    sock.close_now();
    ::close(sv[1]);
}

class temp_file {
  public:
    temp_file() {
        const char* dir = std::getenv("TMPDIR");
        path = std::string(dir ? dir : "/tmp") + "/ringmail-reactor-XXXXXX";
        fd = ::mkstemp(path.data());
    }
    ~temp_file() {
        if (fd >= 0)
            ::close(fd);
        ::unlink(path.c_str());
    }
    std::string path;
    int fd = -1;
};

TEST(reactor, write_chain_writes_and_fdatasyncs) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    temp_file a, b;
    ASSERT_GE(a.fd, 0);
    ASSERT_GE(b.fd, 0);
    std::string p1 = "hello ", p2 = "ring", p3 = "mail", body = "journal record\n";
    iovec first[1] = {{p1.data(), p1.size()}};
    iovec second[2] = {{p2.data(), p2.size()}, {p3.data(), p3.size()}};
    iovec third[1] = {{body.data(), body.size()}};
    write_request writes[] = {
        {a.fd, 0, first, 1},
        {a.fd, 6, second, 2},
        {b.fd, 100, third, 1},
    };
    int syncs[] = {a.fd, b.fd};
    recorder done;
    r->write_chain(writes, syncs, &done);
    ASSERT_TRUE(spin(*r, [&] { return !done.events.empty(); }));
    ASSERT_EQ(done.events.size(), 1u);
    EXPECT_EQ(done.events[0].first, 0);

    char got[32] = {};
    ASSERT_EQ(::pread(a.fd, got, sizeof got, 0), 14);
    EXPECT_EQ(std::string(got, 14), "hello ringmail");
    ASSERT_EQ(::pread(b.fd, got, body.size(), 100), static_cast<ssize_t>(body.size()));
    EXPECT_EQ(std::string(got, body.size()), body);

    // An empty batch is answered too.
    recorder empty;
    r->write_chain({}, {}, &empty);
    ASSERT_TRUE(spin(*r, [&] { return !empty.events.empty(); }));
    EXPECT_EQ(empty.events[0].first, 0);
}

// A released file's extents go a hole at a time (spool::release_op), then the close.
TEST(reactor, punch_hole_frees_extents_and_keeps_the_size) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    temp_file a;
    ASSERT_GE(a.fd, 0);
    const std::string block(1 << 16, 'x');
    for (int i = 0; i < 4; ++i)
        ASSERT_EQ(::write(a.fd, block.data(), block.size()), ssize_t(block.size()));
    ASSERT_EQ(::fsync(a.fd), 0);
    struct stat before {};
    ASSERT_EQ(::fstat(a.fd, &before), 0);
    recorder done;
    r->punch_hole_async(a.fd, 1 << 16, 2 << 16, &done);
    ASSERT_TRUE(spin(*r, [&] { return !done.events.empty(); }));
    if (done.events[0].first == -EOPNOTSUPP)
        GTEST_SKIP() << "this filesystem cannot punch holes (the spool then closes files whole)";
    ASSERT_EQ(done.events[0].first, 0) << std::strerror(-done.events[0].first);
    struct stat after {};
    ASSERT_EQ(::fstat(a.fd, &after), 0);
    EXPECT_EQ(after.st_size, before.st_size);
    EXPECT_LE(after.st_blocks, before.st_blocks - (2 << 16) / 512);
    char got[2] = {};
    ASSERT_EQ(::pread(a.fd, got, 2, (1 << 16) - 1), 2);
    EXPECT_EQ(got[0], 'x');
    EXPECT_EQ(got[1], '\0');  // the hole reads as zeros
    ASSERT_EQ(::pread(a.fd, got, 1, 3 << 16), 1);
    EXPECT_EQ(got[0], 'x');

    recorder closed;
    r->close_file_async(a.fd, &closed);
    ASSERT_TRUE(spin(*r, [&] { return !closed.events.empty(); }));
    EXPECT_EQ(closed.events[0].first, 0);
    a.fd = -1;
}

TEST(reactor, write_chain_reports_the_first_failure) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    temp_file a;
    ASSERT_GE(a.fd, 0);
    int ro = ::open(a.path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(ro, 0);
    std::string data = "x";
    iovec iov[1] = {{data.data(), data.size()}};

    // Write through a read-only fd fails; the linked fdatasync after it is cancelled.
    write_request bad_write[] = {{a.fd, 0, iov, 1}, {ro, 1, iov, 1}};
    int syncs[] = {a.fd};
    recorder done;
    r->write_chain(bad_write, syncs, &done);
    ASSERT_TRUE(spin(*r, [&] { return !done.events.empty(); }));
    EXPECT_EQ(done.events[0].first, -EBADF);

    // A sync of a closed descriptor fails.
    int closed = ::dup(a.fd);
    ::close(closed);
    write_request fine[] = {{a.fd, 0, iov, 1}};
    int bad_sync[] = {closed};
    recorder done2;
    r->write_chain(fine, bad_sync, &done2);
    ASSERT_TRUE(spin(*r, [&] { return !done2.events.empty(); }));
    EXPECT_EQ(done2.events[0].first, -EBADF);
    ::close(ro);
}

TEST(reactor, iteration_end_hooks_run_after_completions) {
    auto r = make_reactor();
    ASSERT_TRUE(r);
    std::vector<std::string> order;
    struct tagger final : completion {
        std::vector<std::string>* order;
        void complete(int, std::uint32_t) override { order->push_back("cqe"); }
    } t;
    t.order = &order;
    auto id = r->on_iteration_end([&] { order.push_back("hook"); });
    r->nop(&t);
    r->nop(&t);
    ASSERT_TRUE(spin(*r, [&] { return order.size() >= 3; }));
    EXPECT_EQ(order, (std::vector<std::string>{"cqe", "cqe", "hook"}));
    r->remove_iteration_end(id);
    order.clear();
    r->nop(&t);
    ASSERT_TRUE(spin(*r, [&] { return !order.empty(); }));
    EXPECT_EQ(order, (std::vector<std::string>{"cqe"}));
}

TEST(reactor, many_sqes_beyond_sq_size_are_submitted) {
    reactor_options opts;
    opts.sq_entries = 8;
    opts.cq_entries = 64;
    auto r = make_reactor(opts);
    ASSERT_TRUE(r);
    recorder c;
    for (int i = 0; i < 50; ++i)
        r->nop(&c);
    ASSERT_TRUE(spin(*r, [&] { return c.events.size() == 50; }));
}

}  // namespace
}  // namespace ringmail::core
