// The resolver against a real dnsmasq on 127.0.0.1 (a free port, local data only), driven by a
// real reactor. Skipped when dnsmasq is not installed.
#include "ringmail/dns/resolver.h"

#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"
#include "ringmail/dns/wire.h"

#include <gtest/gtest.h>

#include "wire_builder.h"
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <set>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace ringmail::dns {
namespace {

using namespace std::chrono_literals;

constexpr const char* dnsmasq_path = "/usr/sbin/dnsmasq";

// A UDP socket bound to 127.0.0.1 on a free port; kept open it is a server that never answers.
int bound_udp(std::uint16_t& port) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    socklen_t len = sizeof sin;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    port = ntohs(sin.sin_port);
    return fd;
}

// Sends one query with plain sockets (test set-up only): true once dnsmasq answers.
bool answers(std::uint16_t port) {
    testing::wire_builder b;
    b.u16(0x4242).u16(0x0100).u16(1).u16(0).u16(0).u16(0).question("mx.test", type_mx);
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::sendto(fd, b.bytes.data(), b.bytes.size(), 0, reinterpret_cast<sockaddr*>(&sin), sizeof sin);
    pollfd p{fd, POLLIN, 0};
    bool ok = ::poll(&p, 1, 100) == 1;
    if (ok) {
        std::uint8_t buf[512];
        ok = ::recv(fd, buf, sizeof buf, 0) > 0;
    }
    ::close(fd);
    return ok;
}

class dnsmasq {
  public:
    ~dnsmasq() { stop(); }

    bool start(std::string* why) {
        for (int attempt = 0; attempt < 5; ++attempt) {
            int probe = bound_udp(port);  // a port free right now; dnsmasq takes it next
            ::close(probe);
            std::vector<std::string> args = {
                dnsmasq_path,
                "--keep-in-foreground",
                "--port=" + std::to_string(port),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file",
                "--local=/test/",
                "--local-ttl=300",
                "--mx-host=mx.test,a.mx.test,10",
                "--mx-host=mx.test,b.mx.test,20",
                "--host-record=a.mx.test,127.0.0.2",
                "--host-record=b.mx.test,127.0.0.3",
                "--host-record=implicit.test,127.0.0.4",
                "--dns-rr=nullmx.test,15,000000",
                "--mx-host=skip.test,missing.skip.test,5",
                "--mx-host=skip.test,good.skip.test,10",
                "--host-record=good.skip.test,127.0.0.5",
                "--mx-host=dead.test,missing.dead.test,10",
                "--host-record=v6.test,::1",
                "--host-record=dual.test,127.0.0.6,::1",
                "--mx-host=many.test,m1.many.test,10",
                "--mx-host=many.test,m2.many.test,10",
                "--mx-host=many.test,m3.many.test,10",
                "--host-record=m1.many.test,127.0.1.1",
                "--host-record=m2.many.test,127.0.1.2",
                "--host-record=m3.many.test,127.0.1.3",
            };
            // Too many MX records for 512 octets of UDP: truncated, c-ares retries over TCP.
            for (int i = 0; i < 30; ++i) {
                args.push_back("--mx-host=big.test,a-rather-long-mail-exchanger-name-" +
                               std::to_string(i) + ".big.test," + std::to_string(10 + i));
            }
            args.push_back("--host-record=a-rather-long-mail-exchanger-name-0.big.test,127.0.3.1");
            args.push_back("--host-record=a-rather-long-mail-exchanger-name-15.big.test,127.0.3.2");
            for (int i = 0; i < 40; ++i) {
                const std::string n = "n" + std::to_string(i) + ".test";
                args.push_back("--host-record=" + n + ",127.0.2." + std::to_string(i + 1));
            }
            pid = ::fork();
            if (pid == 0) {
                int null = ::open("/dev/null", O_RDWR);
                ::dup2(null, 1);
                ::dup2(null, 2);
                std::vector<char*> argv;
                for (auto& a : args)
                    argv.push_back(a.data());
                argv.push_back(nullptr);
                ::execv(dnsmasq_path, argv.data());
                ::_exit(127);
            }
            for (int i = 0; i < 50; ++i) {
                if (answers(port))
                    return true;
                int status = 0;
                if (::waitpid(pid, &status, WNOHANG) == pid) {
                    pid = -1;
                    break;  // lost the port race or a bad flag: try again
                }
            }
            stop();
        }
        *why = "dnsmasq did not start";
        return false;
    }

    void stop() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            int status = 0;
            ::waitpid(pid, &status, 0);
            pid = -1;
        }
    }

    std::string server() const { return "127.0.0.1:" + std::to_string(port); }

    std::uint16_t port = 0;
    pid_t pid = -1;
};

class resolver_test : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::access(dnsmasq_path, X_OK) != 0)
            GTEST_SKIP() << "dnsmasq not installed at " << dnsmasq_path;
        std::string why;
        auto r = core::reactor::create({}, &why);
        ASSERT_TRUE(r) << why;
        reactor = std::move(r.value());
        ASSERT_TRUE(dns.start(&why)) << why;
    }

    void TearDown() override {
        for (auto& r : resolvers)
            drain(*r);
        resolvers.clear();
        dns.stop();
    }

    resolver_options options_for(std::string server) {
        resolver_options o;
        o.servers = {std::move(server)};
        o.timeout = 500ms;
        o.tries = 2;
        o.now = [this] { return reactor->now() + skew; };
        return o;
    }

    resolver& make(resolver_options o) {
        std::string why;
        auto r = resolver::create(*reactor, std::move(o), &why);
        EXPECT_TRUE(r) << why;
        resolvers.push_back(std::move(r.value()));
        return *resolvers.back();
    }
    resolver& make() { return make(options_for(dns.server())); }

    // Runs the loop until `done` holds, with a hard deadline (a safety net, not an assertion
    // about time).
    bool spin(const std::function<bool()>& done, clock::duration limit = 20s) {
        const auto deadline = clock::now() + limit;
        while (!done() && clock::now() < deadline)
            reactor->run_once(20ms);
        return done();
    }

    void drain(resolver& r) {
        r.shutdown();
        EXPECT_TRUE(spin([&] { return r.idle(); }));
    }

    std::optional<result<route>> resolve(resolver& r, std::string_view domain) {
        std::optional<result<route>> out;
        r.resolve_route(domain, [&](const result<route>& v) { out.emplace(v); });
        EXPECT_FALSE(out) << "callback ran inside resolve_route";
        EXPECT_TRUE(spin([&] { return out.has_value(); })) << domain;
        return out;
    }

    std::unique_ptr<core::reactor> reactor;
    dnsmasq dns;
    clock::duration skew{0};
    std::vector<std::unique_ptr<resolver>> resolvers;
};

std::vector<std::string> addresses_of(const mx_host& h) {
    std::vector<std::string> out;
    for (const auto& ep : h.addresses)
        out.push_back(core::to_string(ep));
    return out;
}

TEST_F(resolver_test, mx_with_two_preferences) {
    auto& r = make();
    auto got = resolve(r, "MX.test.");
    ASSERT_TRUE(got && *got) << (got ? got->error().message() : "no answer");
    const route& rt = got->value();
    EXPECT_EQ(rt.domain, "mx.test");
    EXPECT_FALSE(rt.implicit);
    ASSERT_EQ(rt.hosts.size(), 2u);
    EXPECT_EQ(rt.hosts[0].name, "a.mx.test");
    EXPECT_EQ(rt.hosts[0].preference, 10);
    EXPECT_EQ(addresses_of(rt.hosts[0]), std::vector<std::string>{"127.0.0.2:25"});
    EXPECT_EQ(rt.hosts[1].name, "b.mx.test");
    EXPECT_EQ(rt.hosts[1].preference, 20);
    EXPECT_EQ(addresses_of(rt.hosts[1]), std::vector<std::string>{"127.0.0.3:25"});
    // TTL 300 from dnsmasq; no address answer (negative or positive) is shorter.
    EXPECT_GT(rt.expires, reactor->now() + 200s);
    EXPECT_LE(rt.expires, reactor->now() + 300s);
}

TEST_F(resolver_test, implicit_mx) {
    auto& r = make();
    auto got = resolve(r, "implicit.test");
    ASSERT_TRUE(got && *got) << (got ? got->error().message() : "no answer");
    EXPECT_TRUE(got->value().implicit);
    ASSERT_EQ(got->value().hosts.size(), 1u);
    EXPECT_EQ(got->value().hosts[0].name, "implicit.test");
    EXPECT_EQ(got->value().hosts[0].preference, 0);
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"127.0.0.4:25"});
}

TEST_F(resolver_test, a_fixed_host_by_name_and_by_address) {
    auto& r = make();
    std::optional<result<route>> got;
    r.resolve_host("a.mx.test", 2525, [&](const result<route>& v) { got.emplace(v); });
    ASSERT_TRUE(spin([&] { return got.has_value(); }));
    ASSERT_TRUE(*got) << got->error().message();
    ASSERT_EQ(got->value().hosts.size(), 1u);
    EXPECT_EQ(got->value().hosts[0].name, "a.mx.test");
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"127.0.0.2:2525"});
    // Names are case-insensitive; the port is part of the answer.
    got.reset();
    r.resolve_host("A.MX.TEST", 2626, [&](const result<route>& v) { got.emplace(v); });
    ASSERT_TRUE(spin([&] { return got.has_value(); }));
    ASSERT_TRUE(*got);
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"127.0.0.2:2626"});
    // An address literal needs no DNS; a name that does not exist is permanent.
    const auto lookups = r.stats().lookups;
    got.reset();
    r.resolve_host("::1", 26, [&](const result<route>& v) { got.emplace(v); });
    ASSERT_TRUE(spin([&] { return got.has_value(); }));
    ASSERT_TRUE(*got);
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"[::1]:26"});
    EXPECT_EQ(got->value().hosts[0].name, "::1");
    EXPECT_EQ(r.stats().lookups, lookups);
    // So does localhost (RFC 6761): the loopback addresses, whatever the DNS server says.
    got.reset();
    r.resolve_host("LocalHost.", 10025, [&](const result<route>& v) { got.emplace(v); });
    ASSERT_TRUE(spin([&] { return got.has_value(); }));
    ASSERT_TRUE(*got);
    EXPECT_EQ(addresses_of(got->value().hosts[0]),
              (std::vector<std::string>{"127.0.0.1:10025", "[::1]:10025"}));
    EXPECT_EQ(r.stats().lookups, lookups);
    got.reset();
    r.resolve_host("nowhere.test", 25, [&](const result<route>& v) { got.emplace(v); });
    ASSERT_TRUE(spin([&] { return got.has_value(); }));
    ASSERT_FALSE(*got);
    EXPECT_TRUE(is_permanent(got->error())) << got->error().message();
}

TEST_F(resolver_test, permanent_failures) {
    auto& r = make();
    struct row {
        const char* domain;
        errc expected;
        int reply;
    };
    const row rows[] = {
        {"nullmx.test", errc::null_mx, 556},
        {"nx.test", errc::nxdomain, 550},
        {"bad..test", errc::bad_domain, 550},
    };
    for (const auto& rw : rows) {
        auto got = resolve(r, rw.domain);
        ASSERT_TRUE(got) << rw.domain;
        ASSERT_FALSE(*got) << rw.domain;
        EXPECT_EQ(got->error(), rw.expected) << rw.domain << ": " << got->error().message();
        EXPECT_TRUE(is_permanent(got->error())) << rw.domain;
        EXPECT_EQ(reply_code(got->error()), rw.reply) << rw.domain;
    }
}

TEST_F(resolver_test, unresolvable_mx_host_is_skipped) {
    auto& r = make();
    auto got = resolve(r, "skip.test");
    ASSERT_TRUE(got && *got) << (got ? got->error().message() : "no answer");
    ASSERT_EQ(got->value().hosts.size(), 1u);
    EXPECT_EQ(got->value().hosts[0].name, "good.skip.test");
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"127.0.0.5:25"});

    auto dead = resolve(r, "dead.test");
    ASSERT_TRUE(dead && !*dead);
    EXPECT_EQ(dead->error(), errc::no_reachable_mx);
    EXPECT_FALSE(is_permanent(dead->error()));
}

TEST_F(resolver_test, ipv6_addresses) {
    auto o = options_for(dns.server());
    o.port = 2525;
    auto& r = make(std::move(o));
    auto v6 = resolve(r, "v6.test");
    ASSERT_TRUE(v6 && *v6) << (v6 ? v6->error().message() : "no answer");
    EXPECT_EQ(addresses_of(v6->value().hosts[0]), std::vector<std::string>{"[::1]:2525"});

    auto dual = resolve(r, "dual.test");
    ASSERT_TRUE(dual && *dual);
    EXPECT_EQ(addresses_of(dual->value().hosts[0]),
              (std::vector<std::string>{"127.0.0.6:2525", "[::1]:2525"}));
}

TEST_F(resolver_test, truncated_answer_is_retried_over_tcp) {
    auto& r = make();
    auto got = resolve(r, "big.test");
    ASSERT_TRUE(got && *got) << (got ? got->error().message() : "no answer");
    // The UDP answer holds 7 of the 30 records; name-15 (16th by preference, the last one
    // kept) only comes with the full answer over TCP.
    ASSERT_EQ(got->value().hosts.size(), 2u);
    EXPECT_EQ(got->value().hosts[0].name, "a-rather-long-mail-exchanger-name-0.big.test");
    EXPECT_EQ(addresses_of(got->value().hosts[0]), std::vector<std::string>{"127.0.3.1:25"});
    EXPECT_EQ(got->value().hosts[1].name, "a-rather-long-mail-exchanger-name-15.big.test");
    EXPECT_EQ(addresses_of(got->value().hosts[1]), std::vector<std::string>{"127.0.3.2:25"});
}

TEST_F(resolver_test, equal_preferences_come_in_every_order) {
    auto o = options_for(dns.server());
    o.cache_entries = 0;  // every lookup goes to dnsmasq
    auto& r = make(std::move(o));
    std::set<std::string> orders;
    for (int i = 0; i < 60 && orders.size() < 6; ++i) {
        auto got = resolve(r, "many.test");
        ASSERT_TRUE(got && *got);
        std::string order;
        for (const auto& h : got->value().hosts)
            order += h.name.substr(0, 2);
        orders.insert(order);
    }
    EXPECT_EQ(orders.size(), 6u);
}

TEST_F(resolver_test, second_lookup_is_served_from_the_cache) {
    auto& r = make();
    auto first = resolve(r, "mx.test");
    ASSERT_TRUE(first && *first);
    dns.stop();  // nobody answers any more
    auto second = resolve(r, "mx.test");
    ASSERT_TRUE(second && *second);
    EXPECT_EQ(second->value().hosts.size(), 2u);
    EXPECT_EQ(r.stats().cache_hits, 1u);
    EXPECT_EQ(r.stats().lookups, 1u);

    auto nx1 = resolve(r, "nx.test");  // not cached: dnsmasq is gone -> temporary
    ASSERT_TRUE(nx1 && !*nx1);
    EXPECT_FALSE(is_permanent(nx1->error())) << nx1->error().message();

    // Past the TTL the entry is gone, and a temporary failure is what we get (and cache).
    skew = 301s;
    auto third = resolve(r, "mx.test");
    ASSERT_TRUE(third && !*third);
    EXPECT_FALSE(is_permanent(third->error())) << third->error().message();
    const auto lookups = r.stats().lookups;
    auto fourth = resolve(r, "mx.test");
    ASSERT_TRUE(fourth && !*fourth);
    EXPECT_EQ(fourth->error(), third->error());
    EXPECT_EQ(r.stats().lookups, lookups);  // the failure came from the cache
    skew = 301s + 31s;
    auto fifth = resolve(r, "mx.test");
    ASSERT_TRUE(fifth);
    EXPECT_EQ(r.stats().lookups, lookups + 1);
}

TEST_F(resolver_test, negative_answers_are_cached) {
    auto& r = make();
    auto first = resolve(r, "nx.test");
    ASSERT_TRUE(first && !*first);
    dns.stop();
    auto second = resolve(r, "nx.test");
    ASSERT_TRUE(second && !*second);
    EXPECT_EQ(second->error(), errc::nxdomain);  // 5 min default: no SOA from dnsmasq
    EXPECT_EQ(r.stats().lookups, 1u);
    skew = 301s;
    auto third = resolve(r, "nx.test");
    ASSERT_TRUE(third && !*third);
    EXPECT_FALSE(is_permanent(third->error()));
}

TEST_F(resolver_test, concurrent_requests_share_one_lookup) {
    auto& r = make();
    std::vector<result<route>> got;
    for (int i = 0; i < 3; ++i)
        r.resolve_route("mx.test", [&](const result<route>& v) { got.push_back(v); });
    EXPECT_EQ(r.lookups_in_flight(), 1u);
    ASSERT_TRUE(spin([&] { return got.size() == 3; }));
    for (const auto& g : got)
        ASSERT_TRUE(g);
    EXPECT_EQ(r.stats().lookups, 1u);
    EXPECT_EQ(r.stats().joined, 2u);
}

TEST_F(resolver_test, waiters_and_lookups_are_bounded) {
    auto o = options_for(dns.server());
    o.max_waiters = 2;
    o.max_lookups = 2;
    auto& r = make(std::move(o));
    std::vector<std::error_code> errors;
    int ok = 0;
    auto cb = [&](const result<route>& v) {
        if (v)
            ++ok;
        else
            errors.push_back(v.error());
    };
    r.resolve_route("mx.test", cb);
    r.resolve_route("mx.test", cb);
    r.resolve_route("mx.test", cb);  // third waiter: refused
    r.resolve_route("implicit.test", cb);
    r.resolve_route("v6.test", cb);  // third lookup: refused
    ASSERT_TRUE(spin([&] { return ok + errors.size() == 5; }));
    EXPECT_EQ(ok, 3);
    ASSERT_EQ(errors.size(), 2u);
    for (const auto& e : errors) {
        EXPECT_EQ(e, errc::overloaded);
        EXPECT_FALSE(is_permanent(e));
    }
}

TEST_F(resolver_test, many_domains_at_once) {
    auto& r = make();
    int done = 0;
    for (int i = 0; i < 40; ++i) {
        const std::string n = "n" + std::to_string(i) + ".test";
        r.resolve_route(n, [&, i](const result<route>& v) {
            ASSERT_TRUE(v) << v.error().message();
            EXPECT_EQ(core::to_string(v->hosts[0].addresses[0]),
                      "127.0.2." + std::to_string(i + 1) + ":25");
            ++done;
        });
    }
    ASSERT_TRUE(spin([&] { return done == 40; }));
}

TEST_F(resolver_test, silent_server_is_a_temporary_timeout) {
    std::uint16_t port = 0;
    int silent = bound_udp(port);
    auto o = options_for("127.0.0.1:" + std::to_string(port));
    o.timeout = 200ms;
    o.tries = 1;
    auto& r = make(std::move(o));
    auto got = resolve(r, "mx.test");
    ASSERT_TRUE(got && !*got);
    EXPECT_EQ(got->error(), errc::timeout) << got->error().message();
    EXPECT_FALSE(is_permanent(got->error()));
    EXPECT_EQ(enhanced_status(got->error()), "4.4.3");
    ::close(silent);
}

TEST_F(resolver_test, refused_server_is_temporary) {
    std::uint16_t port = 0;
    ::close(bound_udp(port));  // nobody listens there: ICMP port unreachable
    auto o = options_for("127.0.0.1:" + std::to_string(port));
    o.timeout = 200ms;
    o.tries = 1;
    auto& r = make(std::move(o));
    auto got = resolve(r, "mx.test");
    ASSERT_TRUE(got && !*got);
    EXPECT_EQ(got->error(), errc::connection_refused) << got->error().message();
    EXPECT_FALSE(is_permanent(got->error()));
}

TEST_F(resolver_test, shutdown_cancels_outstanding_lookups) {
    std::uint16_t port = 0;
    int silent = bound_udp(port);
    auto o = options_for("127.0.0.1:" + std::to_string(port));
    o.timeout = 5000ms;
    auto& r = make(std::move(o));
    std::optional<result<route>> got;
    r.resolve_route("mx.test", [&](const result<route>& v) { got.emplace(v); });
    for (int i = 0; i < 3; ++i)
        reactor->run_once(10ms);  // the query is out, its poll armed
    EXPECT_FALSE(r.idle());
    r.shutdown();
    ASSERT_TRUE(got);  // completed inside shutdown()
    ASSERT_FALSE(*got);
    EXPECT_EQ(got->error(), errc::cancelled);
    EXPECT_FALSE(is_permanent(got->error()));
    ASSERT_TRUE(spin([&] { return r.idle(); }));

    std::optional<result<route>> late;
    r.resolve_route("mx.test", [&](const result<route>& v) { late.emplace(v); });
    ASSERT_TRUE(spin([&] { return late.has_value(); }));
    EXPECT_EQ(late->error(), errc::cancelled);
    ::close(silent);
}

TEST_F(resolver_test, destroying_with_lookups_outstanding_is_safe) {
    std::uint16_t port = 0;
    int silent = bound_udp(port);
    auto o = options_for("127.0.0.1:" + std::to_string(port));
    o.timeout = 5000ms;
    std::optional<result<route>> got;
    {
        std::string why;
        auto r = resolver::create(*reactor, std::move(o), &why);
        ASSERT_TRUE(r) << why;
        r.value()->resolve_route("mx.test", [&](const result<route>& v) { got.emplace(v); });
        reactor->run_once(10ms);
        EXPECT_FALSE(r.value()->idle());
    }  // destroyed with a poll (and now a cancel) in flight
    ASSERT_TRUE(got);
    EXPECT_EQ(got->error(), errc::cancelled);
    // The detached completions arrive and free themselves (ASan checks the memory).
    for (int i = 0; i < 10; ++i)
        reactor->run_once(10ms);
    ::close(silent);
}

TEST(resolver_options_test, bad_server_is_refused) {
    std::string why;
    auto reactor = core::reactor::create({}, &why);
    ASSERT_TRUE(reactor) << why;
    resolver_options o;
    o.servers = {"not-an-address"};
    auto r = resolver::create(*reactor.value(), o, &why);
    ASSERT_FALSE(r);
    EXPECT_NE(why.find("not-an-address"), std::string::npos);

    o.servers = {"127.0.0.1", "::1", "[::1]:5353", "127.0.0.1:5353"};
    auto ok = resolver::create(*reactor.value(), o, &why);
    EXPECT_TRUE(ok) << why;
}

}  // namespace
}  // namespace ringmail::dns
