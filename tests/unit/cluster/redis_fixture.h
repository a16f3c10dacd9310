// A redis-server of the test's own on a free loopback port (no persistence, killed with the
// test), a reactor and a buffer ring to run clients on: the fixture of the cluster tests
// (skipped when redis-server is not installed; meson passes its path in REDIS_SERVER).
#pragma once

#include "ringmail/cluster/limiter.h"
#include "ringmail/cluster/redis_client.h"
#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/reactor.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <netinet/in.h>
#include <spawn.h>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace ringmail_test {

using namespace ringmail;
using namespace std::chrono_literals;

inline int free_port() {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t n = sizeof a;
    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
    ::close(s);
    return ntohs(a.sin_port);
}

inline bool port_open(int port) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    return ok;
}

// One redis-server of our own: no persistence, loopback only, killed with the test.
class redis_process {
  public:
    explicit redis_process(int port) : _port(port) {}
    ~redis_process() { kill(); }
    bool start() {
        const char* bin = std::getenv("REDIS_SERVER");
        std::string port = std::to_string(_port);
        std::vector<std::string> args{
            bin,  "--port",      port, "--bind",    "127.0.0.1", "--save", "",    "--appendonly",
            "no", "--daemonize", "no", "--logfile", "/dev/null", "--dir",  "/tmp"};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        if (posix_spawn(&_pid, bin, nullptr, nullptr, argv.data(), environ) != 0)
            return false;
        for (int i = 0; i < 200; ++i) {
            if (port_open(_port))
                return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }
    void kill() {
        if (_pid > 0) {
            ::kill(_pid, SIGKILL);
            ::waitpid(_pid, nullptr, 0);
            _pid = -1;
        }
    }

  private:
    int _port;
    pid_t _pid = -1;
};

struct fixture : ::testing::Test {
    std::unique_ptr<core::reactor> r;
    std::unique_ptr<core::buffer_ring> buffers;
    int port = free_port();
    std::unique_ptr<redis_process> redis;

    void SetUp() override {
        const char* bin = std::getenv("REDIS_SERVER");
        if (bin == nullptr || *bin == '\0')
            GTEST_SKIP() << "redis-server not installed";
        std::string why;
        auto rr = core::reactor::create({}, &why);
        ASSERT_TRUE(rr) << why;
        r = std::move(rr.value());
        auto b = core::buffer_ring::create(*r, 3, 64, 4096);
        ASSERT_TRUE(b);
        buffers = std::move(b.value());
        redis = std::make_unique<redis_process>(port);
        ASSERT_TRUE(redis->start());
    }
    // Runs the loop until `done`, at most 10 s (a bound, not a measurement).
    bool spin(const std::function<bool()>& done) {
        const auto end = std::chrono::steady_clock::now() + 10s;
        while (!done() && std::chrono::steady_clock::now() < end)
            r->run_once(20ms);
        return done();
    }
    cluster::redis_options options() {
        cluster::redis_options o;
        o.server = core::parse_endpoint("127.0.0.1:" + std::to_string(port)).value();
        o.backoff_min = 50ms;
        o.backoff_max = 200ms;
        return o;
    }
    cluster::cluster_options cluster(std::string node) {
        cluster::cluster_options c;
        c.redis = options();
        c.node_id = std::move(node);
        c.prefix = "test" + std::to_string(port) + ":";
        return c;
    }
};

}  // namespace ringmail_test
