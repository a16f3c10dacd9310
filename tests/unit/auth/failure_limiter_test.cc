#include "ringmail/auth/failure_limiter.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <atomic>
#include <netinet/in.h>
#include <string>
#include <thread>
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
    o.seed = 0x5eed5eed12345678ull;  // the same buckets and tags in every run
    return o;
}

// With 8 entries the table is one bucket: every address competes for the same 8 words.
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
        {"eviction_of_the_oldest_among_equals",
         opts(2, 300s, 8),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.2", true, false},
          {2s, "192.0.2.3", true, false},
          {3s, "192.0.2.4", true, false},
          {4s, "192.0.2.5", true, false},
          {5s, "192.0.2.6", true, false},
          {6s, "192.0.2.7", true, false},
          {7s, "192.0.2.8", true, false},
          // The bucket is full: a ninth address takes the word of 192.0.2.1 (oldest of the
          // ones with one failure), whose count is gone.
          {8s, "192.0.2.9", true, false},
          {9s, "192.0.2.9", true, true},
          // Its next failure is its first again (and evicts 192.0.2.2).
          {10s, "192.0.2.1", true, false},
          {11s, "192.0.2.2", true, false},
          {12s, "192.0.2.8", true, true}}},
        {"a_flood_does_not_evict_the_blocked",
         opts(2, 300s, 8),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.1", true, true},
          {2s, "198.51.100.1", true, false},
          {3s, "198.51.100.2", true, false},
          {4s, "198.51.100.3", true, false},
          {5s, "198.51.100.4", true, false},
          {6s, "198.51.100.5", true, false},
          {7s, "198.51.100.6", true, false},
          {8s, "198.51.100.7", true, false},
          {9s, "198.51.100.8", true, false},
          {10s, "198.51.100.9", true, false},
          {11s, "198.51.100.10", true, false},
          {12s, "192.0.2.1", false, true}}},
        {"expired_words_are_reused_first",
         opts(2, 10s, 8),
         {{0s, "192.0.2.1", true, false},
          {1s, "192.0.2.1", true, true},
          {2s, "192.0.2.2", true, false},
          {3s, "192.0.2.3", true, false},
          {4s, "192.0.2.4", true, false},
          {5s, "192.0.2.5", true, false},
          {6s, "192.0.2.6", true, false},
          {7s, "192.0.2.7", true, false},
          {8s, "192.0.2.8", true, false},
          // 192.0.2.1's window is over: the ninth address takes its word, evicting nobody.
          {10s, "192.0.2.9", true, false},
          // 192.0.2.2 (the oldest live word, the victim otherwise) keeps its count.
          {11s, "192.0.2.2", true, true}}},
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
    EXPECT_EQ(l.capacity(), 128u);  // rounded up to a power of two
    const clock::time_point t0{};
    for (unsigned i = 0; i < 1000; ++i) {
        sockaddr_in in{};
        in.sin_family = AF_INET;
        in.sin_addr.s_addr = htonl(0x0a000000u + i);
        (void)l.record_failure(reinterpret_cast<const sockaddr*>(&in),
                               t0 + std::chrono::seconds(i));
    }
    EXPECT_LE(l.size(t0 + 1000s), 128u);
    EXPECT_GT(l.size(t0 + 1000s), 0u);
}

TEST(failure_limiter, options_are_clamped) {
    failure_limiter l(opts(0, 0s, 0));
    EXPECT_EQ(l.opts().max_failures, 1u);
    EXPECT_EQ(l.opts().window, 1s);
    EXPECT_EQ(l.capacity(), failure_limiter::bucket_ways);
    EXPECT_TRUE(l.record_failure(key("192.0.2.1"), clock::time_point{}));

    failure_limiter big(opts(1000000, std::chrono::hours(24 * 365), 8));
    EXPECT_EQ(big.opts().max_failures, failure_limiter::max_count);
    EXPECT_EQ(big.opts().window, failure_limiter::max_window);
}

TEST(failure_limiter, counts_saturate) {
    failure_limiter l(opts(failure_limiter::max_count, 300s, 8));
    const clock::time_point t0{};
    for (unsigned i = 0; i < failure_limiter::max_count + 10; ++i)
        (void)l.record_failure(key("192.0.2.1"), t0);
    EXPECT_EQ(l.failures(key("192.0.2.1"), t0), failure_limiter::max_count);
    EXPECT_TRUE(l.blocked(key("192.0.2.1"), t0));
    EXPECT_EQ(l.failures(key("192.0.2.2"), t0), 0u);
}

TEST(failure_limiter, random_seeds_differ) {
    failure_limiter::options o;
    failure_limiter a(o);
    failure_limiter b(o);
    EXPECT_NE(a.opts().seed, 0u);
    EXPECT_NE(a.opts().seed, b.opts().seed);
}

TEST(failure_limiter, other_families_share_one_key) {
    EXPECT_EQ(failure_limiter::key_of(nullptr), failure_limiter::key{});
    sockaddr un{};
    un.sa_family = AF_UNIX;
    EXPECT_EQ(failure_limiter::key_of(&un), failure_limiter::key{});
}

// Shards as threads: failures recorded by every thread count against one limit, none lost to
// a race, while other threads fill the same small table with other addresses.
TEST(failure_limiter, threads_share_one_count) {
    constexpr unsigned threads = 4;
    constexpr unsigned per_thread = 2000;
    failure_limiter l(opts(threads * per_thread, 300s, 1024));
    const clock::time_point t0 = clock::time_point{} + 1000s;
    const auto target = key("203.0.113.7");
    std::atomic<unsigned> go{0};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            go.fetch_add(1);
            while (go.load() < threads) {
            }
            for (unsigned i = 0; i < per_thread; ++i) {
                (void)l.record_failure(target, t0);
                // Noise: other clients with a few failures each, never more than the target.
                sockaddr_in in{};
                in.sin_family = AF_INET;
                in.sin_addr.s_addr = htonl(0x0a000000u + t * 1000 + i % 7);
                (void)l.record_failure(reinterpret_cast<const sockaddr*>(&in), t0);
            }
        });
    }
    for (auto& th : pool)
        th.join();
    EXPECT_EQ(l.failures(target, t0), threads * per_thread);
    EXPECT_TRUE(l.blocked(target, t0));
}

TEST(failure_limiter, limit_is_reached_across_threads) {
    // Two "shards" each see two failures of one client: with a limit of 4 both refuse it.
    failure_limiter l(opts(4, 300s, 16384));
    const clock::time_point t0{};
    auto one_shard = [&] {
        (void)l.record_failure(key("192.0.2.44"), t0);
        (void)l.record_failure(key("192.0.2.44"), t0 + 1s);
    };
    std::thread a(one_shard);
    std::thread b(one_shard);
    a.join();
    b.join();
    EXPECT_TRUE(l.blocked(key("192.0.2.44"), t0 + 2s));
    EXPECT_FALSE(l.blocked(key("192.0.2.45"), t0 + 2s));
}

}  // namespace
}  // namespace ringmail::auth
