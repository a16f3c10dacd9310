// outbound::session_pool against fake links: the bounds (total and per address), what a
// destination may adopt (address order, TLS policy, verification for the same host name),
// expiry with QUIT, a session that closes by itself while parked, and stop_all.
#include "ringmail/outbound/session_pool.h"

#include "ringmail/core/socket.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace ringmail::outbound {
namespace {

using clock = std::chrono::steady_clock;

outbound_target target(std::string_view ip, std::uint16_t port, std::string host = "mx.test") {
    auto ep = core::parse_endpoint(std::string(ip) + ":" + std::to_string(port));
    EXPECT_TRUE(ep);
    return outbound_target{*ep, std::move(host), std::string(ip)};
}

class fake_link final : public link {
  public:
    fake_link(outbound_target t, bool tls = false, bool offers_starttls = false)
        : _target(std::move(t)), _tls(tls) {
        _caps.starttls = offers_starttls || tls;
    }
    void connect() override {}
    void start(const smtp::outbound_message&) override { _ready = false; }
    void stop(bool force) override {
        ++stops;
        forced = force;
        _ready = false;
    }
    bool ready() const noexcept override { return _ready; }
    bool established() const noexcept override { return _established; }
    bool finished() const noexcept override { return false; }
    bool tls_active() const noexcept override { return _tls; }
    std::uint32_t transactions() const noexcept override { return 1; }
    std::uint64_t id() const noexcept override { return _id; }
    void rebind(std::uint64_t id) noexcept override { _id = id; }
    const outbound_target& target() const noexcept override { return _target; }
    std::string_view tls_version() const noexcept override { return _tls ? "TLSv1.3" : ""; }
    const smtp::peer_capabilities& capabilities() const noexcept override { return _caps; }

    int stops = 0;
    bool forced = false;
    bool _ready = true;
    bool _established = true;

  private:
    outbound_target _target;
    bool _tls;
    smtp::peer_capabilities _caps;
    std::uint64_t _id = 7;
};

std::unique_ptr<link> make(outbound_target t, bool tls = false, bool offers = false) {
    return std::make_unique<fake_link>(std::move(t), tls, offers);
}

const auto later = clock::now() + std::chrono::seconds(60);

TEST(session_pool, parks_only_ready_established_sessions_within_its_bounds) {
    session_pool pool(3, 2);
    auto a = target("127.0.0.2", 25);
    auto b = target("127.0.0.3", 25);

    auto busy = make(a);
    static_cast<fake_link&>(*busy)._ready = false;
    EXPECT_FALSE(pool.park(busy, false, later));
    EXPECT_NE(busy, nullptr) << "a refused session stays with the caller";

    auto unestablished = make(a);
    static_cast<fake_link&>(*unestablished)._established = false;
    EXPECT_FALSE(pool.park(unestablished, false, later));

    auto l1 = make(a);
    auto l2 = make(a);
    auto l3 = make(a);
    EXPECT_TRUE(pool.park(l1, false, later));
    EXPECT_EQ(l1, nullptr);
    EXPECT_TRUE(pool.park(l2, false, later));
    EXPECT_FALSE(pool.park(l3, false, later)) << "max_per_address";
    auto l4 = make(b);
    auto l5 = make(b);
    EXPECT_TRUE(pool.park(l4, false, later));
    EXPECT_FALSE(pool.park(l5, false, later)) << "max_total";
    EXPECT_EQ(pool.size(), 3u);
}

TEST(session_pool, a_parked_session_belongs_to_no_record) {
    session_pool pool;
    auto l = make(target("127.0.0.2", 25));
    link* raw = l.get();
    ASSERT_TRUE(pool.park(l, false, later));
    EXPECT_EQ(raw->id(), 0u) << "its events must find no connection record";
}

TEST(session_pool, adopts_in_candidate_order_by_address_and_port) {
    session_pool pool;
    auto on_26 = make(target("127.0.0.2", 26));
    auto on_3 = make(target("127.0.0.3", 25));
    link* raw3 = on_3.get();
    ASSERT_TRUE(pool.park(on_26, false, later));
    ASSERT_TRUE(pool.park(on_3, false, later));

    std::vector<outbound_target> none{target("127.0.0.2", 25)};
    EXPECT_EQ(pool.adopt(none, {}), nullptr) << "same address, other port";

    std::vector<outbound_target> candidates{target("127.0.0.4", 25), target("127.0.0.3", 25),
                                            target("127.0.0.2", 26)};
    auto got = pool.adopt(candidates, {});
    EXPECT_EQ(got.get(), raw3) << "the first candidate with a parked session";
    EXPECT_EQ(pool.size(), 1u);
}

struct policy_case {
    const char* name;
    bool tls_active;
    bool offers_starttls;
    bool verified;
    std::string parked_host;
    adoption_policy policy;
    bool adopted;
};

TEST(session_pool, adoption_meets_the_adopters_tls_policy) {
    using smtp::tls_policy;
    const policy_case cases[] = {
        {"plain for none", false, true, false, "mx.test", {tls_policy::none, true, false}, true},
        {"plain where TLS is required", false, false, false, "mx.test",
         {tls_policy::required, true, false}, false},
        {"TLS where required", true, true, false, "mx.test", {tls_policy::required, true, false},
         true},
        {"plain where a fresh session would get TLS", false, true, false, "mx.test",
         {tls_policy::opportunistic, true, false}, false},
        {"plain, peer offers no STARTTLS", false, false, false, "mx.test",
         {tls_policy::opportunistic, true, false}, true},
        {"plain, no client context", false, true, false, "mx.test",
         {tls_policy::opportunistic, false, false}, true},
        {"unverified where verification is asked", true, true, false, "mx.test",
         {tls_policy::required, true, true}, false},
        {"verified for another name", true, true, true, "other.test",
         {tls_policy::required, true, true}, false},
        {"verified for the same name", true, true, true, "mx.test",
         {tls_policy::required, true, true}, true},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        session_pool pool;
        auto l = make(target("127.0.0.2", 25, c.parked_host), c.tls_active, c.offers_starttls);
        ASSERT_TRUE(pool.park(l, c.verified, later));
        std::vector<outbound_target> want{target("127.0.0.2", 25, "mx.test")};
        EXPECT_EQ(pool.adopt(want, c.policy) != nullptr, c.adopted);
    }
}

TEST(session_pool, expiry_quits_the_sessions_whose_time_has_come) {
    session_pool pool;
    const auto now = clock::now();
    auto soon = make(target("127.0.0.2", 25));
    auto late = make(target("127.0.0.3", 25));
    auto* raw_soon = static_cast<fake_link*>(soon.get());
    auto* raw_late = static_cast<fake_link*>(late.get());
    ASSERT_TRUE(pool.park(soon, false, now + std::chrono::seconds(1)));
    ASSERT_TRUE(pool.park(late, false, now + std::chrono::seconds(9)));

    std::vector<std::unique_ptr<link>> stopped;
    auto next = pool.expire(now, stopped);
    EXPECT_TRUE(stopped.empty());
    ASSERT_TRUE(next);
    EXPECT_EQ(*next, now + std::chrono::seconds(1));

    next = pool.expire(now + std::chrono::seconds(2), stopped);
    ASSERT_EQ(stopped.size(), 1u);
    EXPECT_EQ(stopped[0].get(), raw_soon);
    EXPECT_EQ(raw_soon->stops, 1);
    EXPECT_FALSE(raw_soon->forced) << "an expired session says QUIT";
    EXPECT_EQ(raw_late->stops, 0);
    ASSERT_TRUE(next);
    EXPECT_EQ(*next, now + std::chrono::seconds(9));
}

TEST(session_pool, a_session_that_closes_by_itself_leaves_the_pool) {
    session_pool pool;
    auto l = make(target("127.0.0.2", 25));
    link* raw = l.get();
    ASSERT_TRUE(pool.park(l, false, later));
    fake_link stranger(target("127.0.0.2", 25));
    EXPECT_EQ(pool.take(stranger), nullptr);
    auto back = pool.take(*raw);
    EXPECT_EQ(back.get(), raw);
    EXPECT_TRUE(pool.empty());
}

TEST(session_pool, stop_all_stops_every_session) {
    session_pool pool;
    auto a = make(target("127.0.0.2", 25));
    auto b = make(target("127.0.0.3", 25));
    auto* ra = static_cast<fake_link*>(a.get());
    auto* rb = static_cast<fake_link*>(b.get());
    ASSERT_TRUE(pool.park(a, false, later));
    ASSERT_TRUE(pool.park(b, false, later));
    std::vector<std::unique_ptr<link>> stopped;
    pool.stop_all(true, stopped);
    EXPECT_EQ(stopped.size(), 2u);
    EXPECT_TRUE(pool.empty());
    EXPECT_EQ(ra->stops, 1);
    EXPECT_TRUE(ra->forced);
    EXPECT_EQ(rb->stops, 1);
}

}  // namespace
}  // namespace ringmail::outbound
