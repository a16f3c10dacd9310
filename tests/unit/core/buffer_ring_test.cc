#include "ringmail/core/buffer_ring.h"

#include "ringmail/core/errc.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <functional>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace ringmail::core {
namespace {

struct recv_log final : completion {
    struct event {
        int res;
        std::uint32_t flags;
    };
    std::vector<event> events;
    void complete(int res, std::uint32_t flags) override { events.push_back({res, flags}); }
    bool ended() const { return !events.empty() && !(events.back().flags & IORING_CQE_F_MORE); }
};

bool spin(reactor& r, const std::function<bool()>& done) {
    for (int i = 0; i < 200 && !done(); ++i)
        r.run_once(std::chrono::milliseconds(100));
    return done();
}

// A connected loopback TCP pair made with plain syscalls: {server side, client side}.
std::pair<int, int> tcp_pair() {
    auto l = make_listener(parse_endpoint("127.0.0.1:0").value(), 4).value();
    auto ep = local_endpoint(l).value();
    int c = make_tcp_socket(AF_INET).value();
    EXPECT_EQ(::connect(c, ep.addr(), ep.len), 0);
    int s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    EXPECT_GE(s, 0);
    ::close(l);
    return {s, c};
}

TEST(buffer_ring, rejects_bad_geometry) {
    auto r = reactor::create().value();
    for (unsigned count : {0u, 3u, 100u, 65536u}) {
        auto b = buffer_ring::create(*r, 1, count, 512);
        ASSERT_FALSE(b.has_value()) << count;
        EXPECT_EQ(b.error(), make_error_code(errc::bad_buffer_ring));
    }
    EXPECT_FALSE(buffer_ring::create(*r, 1, 8, 0).has_value());
    auto ok = buffer_ring::create(*r, 1, 8, 512);
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ((*ok)->available(), 8u);
    // The same group id cannot be registered twice on one ring.
    EXPECT_FALSE(buffer_ring::create(*r, 1, 8, 512).has_value());
}

TEST(buffer_ring, enobufs_when_exhausted_then_recovers_after_recycle) {
    auto r = reactor::create().value();
    auto br = std::move(buffer_ring::create(*r, 3, 4, 16).value());
    auto [server_fd, client] = tcp_pair();
    ring_fd server = ring_fd::adopt(server_fd);

    std::string sent;
    for (int i = 0; i < 100; ++i)
        sent.push_back(static_cast<char>('a' + i % 26));
    ASSERT_EQ(::send(client, sent.data(), sent.size(), 0), 100);

    recv_log log;
    r->recv_multishot(server, 3, &log);
    ASSERT_TRUE(spin(*r, [&] { return log.ended(); }));

    // Four buffers of 16 bytes filled, then the ring ran dry and the multishot ended.
    ASSERT_EQ(log.events.size(), 5u);
    std::string got;
    std::vector<std::uint16_t> held;
    for (std::size_t i = 0; i < 4; ++i) {
        const auto& e = log.events[i];
        ASSERT_EQ(e.res, 16);
        ASSERT_TRUE(e.flags & IORING_CQE_F_BUFFER);
        EXPECT_TRUE(e.flags & IORING_CQE_F_MORE);
        auto id = buffer_ring::buffer_id(e.flags);
        got.append(br->data(id, static_cast<std::size_t>(e.res)));
        held.push_back(id);
    }
    EXPECT_EQ(log.events[4].res, -ENOBUFS);
    EXPECT_EQ(br->available(), 0u);

    for (auto id : held)
        br->recycle(id);
    EXPECT_EQ(br->available(), 4u);
    log.events.clear();
    r->recv_multishot(server, 3, &log);
    ASSERT_TRUE(spin(*r, [&] {
        std::size_t n = 0;
        for (const auto& e : log.events)
            n += e.res > 0 ? static_cast<std::size_t>(e.res) : 0;
        return n == 36;
    }));
    for (const auto& e : log.events) {
        ASSERT_GT(e.res, 0);
        EXPECT_TRUE(e.flags & IORING_CQE_F_MORE);
        auto id = buffer_ring::buffer_id(e.flags);
        got.append(br->data(id, static_cast<std::size_t>(e.res)));
        br->recycle(id);
    }
    EXPECT_EQ(got, sent);
    EXPECT_EQ(br->available(), 4u);

    ::close(client);
    ASSERT_TRUE(spin(*r, [&] { return log.ended(); }));
    EXPECT_EQ(log.events.back().res, 0);
    EXPECT_FALSE(log.events.back().flags & IORING_CQE_F_BUFFER);  // the end takes no buffer
    EXPECT_EQ(br->available(), 4u);
    server.close_now();
}

TEST(buffer_ring_death, recycling_a_buffer_not_held_aborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            auto r = reactor::create().value();
            auto br = std::move(buffer_ring::create(*r, 1, 4, 64).value());
            br->recycle(2);
        },
        "not held");
}

}  // namespace
}  // namespace ringmail::core
