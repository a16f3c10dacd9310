#include "ringmail/auth/failure_limiter.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string>
#include <vector>

namespace ringmail::auth {
namespace {

using namespace std::chrono_literals;
using clock = failure_limiter::clock;

sockaddr_storage addr(const std::string& ip) {
    sockaddr_storage ss{};
    if (ip.find(':') == std::string::npos) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        EXPECT_EQ(::inet_pton(AF_INET, ip.c_str(), &in->sin_addr), 1);
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        EXPECT_EQ(::inet_pton(AF_INET6, ip.c_str(), &in6->sin6_addr), 1);
    }
    return ss;
}

failure_limiter::key key(const std::string& ip) {
    const sockaddr_storage ss = addr(ip);
    return failure_limiter::key_of(reinterpret_cast<const sockaddr*>(&ss));
}

// One step of a scripted run: at `at` (offset from t0), `ip` fails (or is only checked), and
// blocked() must then be `blocked`.
struct step {
    std::chrono::seconds at;
    std::string ip;
    bool fail;
    bool blocked;
};

struct limiter_case {
    std::string name;
    failure_limiter::options opts;
    std::vector<step> steps;
};

class limiter_table : public ::testing::TestWithParam<limiter_case> {};

TEST_P(limiter_table, script) {
    const limiter_case& c = GetParam();
    failure_limiter l(c.opts);
    const clock::time_point t0{};
    std::size_t i = 0;
    for (const step& s : c.steps) {
        const clock::time_point now = t0 + s.at;
        if (s.fail) {
            EXPECT_EQ(l.record_failure(key(s.ip), now), s.blocked) << "step " << i;
        }
        EXPECT_EQ(l.blocked(key(s.ip), now), s.blocked) << "step " << i;
        ++i;
    }
}

failure_limiter::options opts(unsigned n, std::chrono::seconds window, std::size_t entries) {
    failure_limiter::options o;
    o.max_failures = n;
    o.window = window;
    o.max_entries = entries;
    return o;
}

INSTANTIATE_TEST_SUITE_P(
    auth, limiter_table,
    ::testing::ValuesIn(std::vector<limiter_case>{
        {"blocks_at_the_limit",
         opts(3, 300s, 16),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.1", true, false},
          {2s, "192.0.2.1", true, true},
          {3s, "192.0.2.1", false, true},
          {3s, "192.0.2.2", false, false}}},
        {"window_expires",
         opts(2, 300s, 16),
         {{0s, "192.0.2.1", true, false},
          {10s, "192.0.2.1", true, true},
          {299s, "192.0.2.1", false, true},
          {300s, "192.0.2.1", false, false},
          // A new window starts with the next failure.
          {301s, "192.0.2.1", true, false},
          {302s, "192.0.2.1", true, true}}},
        {"failures_spread_over_windows_never_block",
         opts(2, 60s, 16),
         {{0s, "192.0.2.1", true, false},
          {60s, "192.0.2.1", true, false},
          {120s, "192.0.2.1", true, false}}},
        {"eviction_of_the_oldest",
         opts(2, 300s, 2),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.1", true, true},
          {2s, "192.0.2.2", true, false},
          // A third address evicts 192.0.2.1 (oldest last failure): its count is gone.
          {3s, "192.0.2.3", true, false},
          {4s, "192.0.2.1", false, false},
          {5s, "192.0.2.2", true, true}}},
        {"recent_failure_protects_from_eviction",
         opts(2, 300s, 2),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.2", true, false},
          {2s, "192.0.2.1", true, true},
          // 192.0.2.2 is now the oldest and goes.
          {3s, "192.0.2.3", true, false},
          {4s, "192.0.2.1", false, true},
          {5s, "192.0.2.2", true, false}}},
        {"ipv6_keyed_by_64",
         opts(2, 300s, 16),
         {{0s, "2001:db8:1:2::1", true, false},
          {1s, "2001:db8:1:2:ffff::9", true, true},
          {2s, "2001:db8:1:3::1", false, false}}},
        {"ipv4_mapped_is_ipv4",
         opts(2, 300s, 16),
         {{0s, "::ffff:192.0.2.7", true, false},
          {1s, "192.0.2.7", true, true},
          {2s, "::ffff:192.0.2.8", false, false}}},
    }),
    [](const auto& info) { return info.param.name; });

TEST(failure_limiter, stays_bounded) {
    failure_limiter l(opts(5, 300s, 100));
    const clock::time_point t0{};
    for (unsigned i = 0; i < 1000; ++i) {
        sockaddr_in in{};
        in.sin_family = AF_INET;
        in.sin_addr.s_addr = htonl(0x0a000000u + i);
        (void)l.record_failure(reinterpret_cast<const sockaddr*>(&in),
                               t0 + std::chrono::seconds(i));
    }
    EXPECT_EQ(l.size(), 100u);
}

TEST(failure_limiter, zero_options_are_clamped) {
    failure_limiter l(opts(0, 300s, 0));
    EXPECT_EQ(l.opts().max_failures, 1u);
    EXPECT_EQ(l.opts().max_entries, 1u);
    EXPECT_TRUE(l.record_failure(key("192.0.2.1"), clock::time_point{}));
}

TEST(failure_limiter, other_families_share_one_key) {
    EXPECT_EQ(failure_limiter::key_of(nullptr), failure_limiter::key{});
    sockaddr un{};
    un.sa_family = AF_UNIX;
    EXPECT_EQ(failure_limiter::key_of(&un), failure_limiter::key{});
}

}  // namespace
}  // namespace ringmail::auth
