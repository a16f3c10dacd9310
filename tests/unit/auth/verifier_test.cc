#include "ringmail/auth/verifier.h"

#include "ringmail/auth/errc.h"

#include <gtest/gtest.h>

#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <vector>

namespace ringmail::auth {
namespace {

// Cheap hashes (libargon2 m=64,t=1 and PBKDF2 with 1000 iterations) of "correct horse".
const std::string argon2_hash =
    "$argon2id$v=19$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg$"
    "3mIdT4hnB+2tXJLBvQRWrdmC2z/FYqqp9PG43a1rk5c";
const std::string pbkdf2_hash =
    "$pbkdf2-sha256$i=1000$cmluZ21haWwtc2FsdC0xNg==$u6pUMJTsaWmUqjPSK5f4i1Km/J0G3nRSjW5P7IG124c=";

std::shared_ptr<const credential_store> make_store(const std::string& text) {
    loaded_users l = parse_users(text, "users");
    EXPECT_TRUE(l.ok()) << l.error;
    return std::make_shared<const credential_store>(std::move(*l.store));
}

std::shared_ptr<const credential_store> default_store() {
    return make_store("alice:" + argon2_hash + "\nbob:" + pbkdf2_hash + "\n");
}

std::unique_ptr<verifier> make_verifier(unsigned shards, verifier::options o = {},
                                        std::shared_ptr<const credential_store> s = nullptr) {
    auto v = verifier::create(s ? s : default_store(), shards, o);
    EXPECT_TRUE(v) << v.error().message();
    return std::move(*v);
}

// What a shard's reactor does: wait for the eventfd, read it, drain the response ring.
// Bounded by a generous timeout so a broken verifier fails the test instead of hanging it.
verify_response wait_one(verifier& v, unsigned shard) {
    if (auto r = v.poll(shard))
        return *r;
    for (int round = 0; round < 100; ++round) {
        pollfd p{v.response_fd(shard), POLLIN, 0};
        const int n = ::poll(&p, 1, 100);
        if (n == 1) {
            eventfd_t value = 0;
            EXPECT_EQ(::eventfd_read(v.response_fd(shard), &value), 0);
            EXPECT_GE(value, 1u);
        }
        if (auto r = v.poll(shard))
            return *r;
    }
    ADD_FAILURE() << "no response on shard " << shard;
    return {};
}

struct round_trip_case {
    std::string name;
    std::string user;
    std::string password;
    verdict expected;
};

class verifier_round_trip : public ::testing::TestWithParam<round_trip_case> {};

TEST_P(verifier_round_trip, through_rings_and_eventfd) {
    const round_trip_case& c = GetParam();
    auto v = make_verifier(2);
    for (unsigned shard = 0; shard < 2; ++shard) {
        const std::uint64_t token = 1000 + shard;
        ASSERT_TRUE(v->submit(shard, token, c.user, c.password));
        EXPECT_EQ(v->in_flight(shard), 1u);
        const verify_response r = wait_one(*v, shard);
        EXPECT_EQ(r.token, token);
        EXPECT_EQ(r.result, c.expected);
        EXPECT_EQ(v->in_flight(shard), 0u);
        EXPECT_FALSE(v->poll(shard));
    }
}

INSTANTIATE_TEST_SUITE_P(auth, verifier_round_trip,
                         ::testing::ValuesIn(std::vector<round_trip_case>{
                             {"argon2id_ok", "alice", "correct horse", verdict::ok},
                             {"argon2id_wrong", "alice", "wrong horse", verdict::fail},
                             {"pbkdf2_ok", "bob", "correct horse", verdict::ok},
                             {"pbkdf2_wrong", "bob", "correct", verdict::fail},
                             {"unknown_user", "carol", "correct horse", verdict::fail},
                         }),
                         [](const auto& info) { return info.param.name; });

TEST(verifier, many_requests_from_many_shards_and_workers) {
    verifier::options o;
    o.workers = 2;
    auto v = make_verifier(3, o);
    EXPECT_EQ(v->workers(), 2u);
    for (unsigned shard = 0; shard < 3; ++shard) {
        for (std::uint64_t i = 0; i < 4; ++i)
            ASSERT_TRUE(v->submit(shard, shard * 100 + i, i % 2 ? "alice" : "bob",
                                  i < 2 ? "correct horse" : "nope"));
    }
    for (unsigned shard = 0; shard < 3; ++shard) {
        for (std::uint64_t i = 0; i < 4; ++i) {
            // One worker serves a shard in order.
            const verify_response r = wait_one(*v, shard);
            EXPECT_EQ(r.token, shard * 100 + i);
            EXPECT_EQ(r.result, i < 2 ? verdict::ok : verdict::fail);
        }
    }
}

TEST(verifier, cache_hit_avoids_a_second_slow_hash) {
    auto v = make_verifier(1);
    ASSERT_TRUE(v->submit(0, 1, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    EXPECT_EQ(v->stats().hashes, 1u);

    ASSERT_TRUE(v->submit(0, 2, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    EXPECT_EQ(v->stats().hashes, 1u);
    EXPECT_EQ(v->stats().cache_hits, 1u);

    // A wrong password for a cached user still costs a full verification and fails.
    ASSERT_TRUE(v->submit(0, 3, "alice", "correct horsE"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::fail);
    EXPECT_EQ(v->stats().hashes, 2u);

    // And the right one is still cached.
    ASSERT_TRUE(v->submit(0, 4, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    EXPECT_EQ(v->stats().hashes, 2u);
    EXPECT_EQ(v->stats().cache_hits, 2u);
}

TEST(verifier, reload_clears_the_cache) {
    auto v = make_verifier(1);
    ASSERT_TRUE(v->submit(0, 1, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    // alice's password changes (her line now holds a hash of something else).
    ASSERT_TRUE(
        v->reload(make_store("alice:$pbkdf2-sha256$i=1$c2FsdA==$"
                             "VawEblbjCJ/sFpHCJUS2BflBhSFt3gRl5oudV8INrLxJypzM8Xm2RZkWZLOdd+"
                             "8xfHG4RbHjC9UJESBB06GXgw==\n")));
    ASSERT_TRUE(v->submit(0, 2, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::fail);
    EXPECT_EQ(v->stats().cache_hits, 0u);
    ASSERT_TRUE(v->submit(0, 3, "alice", "passwd"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    EXPECT_EQ(v->stats().hashes, 3u);
}

TEST(verifier, disabled_cache_hashes_every_time) {
    verifier::options o;
    o.cache_entries = 0;
    auto v = make_verifier(1, o);
    for (std::uint64_t i = 0; i < 3; ++i) {
        ASSERT_TRUE(v->submit(0, i, "bob", "correct horse"));
        EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    }
    EXPECT_EQ(v->stats().hashes, 3u);
    EXPECT_EQ(v->stats().cache_hits, 0u);
}

TEST(verifier, bounded_cache_evicts) {
    verifier::options o;
    o.cache_entries = 1;
    auto v = make_verifier(1, o);
    // alice fills the single slot, bob takes it over, alice has to hash again.
    for (const char* user : {"alice", "bob", "alice"}) {
        ASSERT_TRUE(v->submit(0, 0, user, "correct horse"));
        EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    }
    EXPECT_EQ(v->stats().hashes, 3u);
    ASSERT_TRUE(v->submit(0, 0, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).result, verdict::ok);
    EXPECT_EQ(v->stats().hashes, 3u);
}

TEST(verifier, full_request_ring_is_a_temporary_failure) {
    verifier::options o;
    o.max_in_flight = 1;
    auto v = make_verifier(2, o);
    ASSERT_TRUE(v->submit(0, 1, "alice", "correct horse"));
    // Outstanding until the shard polls the response: no second request, whatever the worker
    // has done meanwhile.
    EXPECT_FALSE(v->submit(0, 2, "alice", "correct horse"));
    EXPECT_EQ(v->stats().refused, 1u);
    // Other shards are not affected.
    ASSERT_TRUE(v->submit(1, 3, "bob", "correct horse"));
    EXPECT_EQ(wait_one(*v, 1).token, 3u);
    EXPECT_EQ(wait_one(*v, 0).token, 1u);
    EXPECT_TRUE(v->submit(0, 4, "alice", "correct horse"));
    EXPECT_EQ(wait_one(*v, 0).token, 4u);
}

TEST(verifier, stop_joins_and_refuses_new_requests) {
    auto v = make_verifier(1);
    ASSERT_TRUE(v->submit(0, 1, "alice", "correct horse"));
    v->stop();
    // Whatever was queued got an answer before the worker left (ok if it was verified first,
    // temporary if the stop came first).
    const auto r = v->poll(0);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->token, 1u);
    EXPECT_NE(r->result, verdict::fail);
    EXPECT_FALSE(v->submit(0, 2, "alice", "correct horse"));
    v->stop();  // idempotent
}

TEST(verifier, refuses_bad_options) {
    verifier::options o;
    EXPECT_EQ(verifier::create(default_store(), 0, o).error(), errc::bad_option);
    o.workers = 0;
    EXPECT_EQ(verifier::create(default_store(), 1, o).error(), errc::bad_option);
    o.workers = 1;
    o.max_in_flight = verifier::ring_capacity + 1;
    EXPECT_EQ(verifier::create(default_store(), 1, o).error(), errc::bad_option);
    o.max_in_flight = 1;
    EXPECT_EQ(verifier::create(nullptr, 1, o).error(), errc::bad_option);
}

}  // namespace
}  // namespace ringmail::auth
