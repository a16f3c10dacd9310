#include <gtest/gtest.h>

#include "sink/injector.h"
#include <array>
#include <vector>

namespace ringmail::sink {
namespace {

std::array<unsigned, 4> tally(const injection& inj, std::uint64_t seed, unsigned shard,
                              unsigned n) {
    injector in(inj, seed, shard);
    std::array<unsigned, 4> counts{};
    for (unsigned i = 0; i < n; ++i)
        ++counts[static_cast<unsigned>(in.pick())];
    return counts;
}

TEST(sink_injector, nothing_injected_accepts_everything_without_drawing) {
    injector in({}, 1, 0);
    EXPECT_FALSE(in.active());
    for (int i = 0; i < 1000; ++i)
        EXPECT_EQ(in.pick(), outcome::accept);
}

TEST(sink_injector, hundred_percent_is_always) {
    struct row {
        injection inj;
        outcome expected;
    };
    const row rows[] = {
        {{.defer_percent = 100}, outcome::defer},
        {{.reject_percent = 100}, outcome::reject},
        {{.disconnect_percent = 100}, outcome::disconnect},
    };
    for (const auto& r : rows) {
        injector in(r.inj, 42, 3);
        for (int i = 0; i < 10000; ++i)
            ASSERT_EQ(in.pick(), r.expected);
    }
}

TEST(sink_injector, shares_follow_the_percentages) {
    const unsigned n = 200000;
    auto c = tally({.defer_percent = 30, .reject_percent = 10, .disconnect_percent = 5}, 7, 0, n);
    auto near = [&](unsigned got, double percent) {
        double expect = n * percent / 100;
        EXPECT_NEAR(got, expect, expect * 0.05) << percent;
    };
    near(c[static_cast<unsigned>(outcome::defer)], 30);
    near(c[static_cast<unsigned>(outcome::reject)], 10);
    near(c[static_cast<unsigned>(outcome::disconnect)], 5);
    near(c[static_cast<unsigned>(outcome::accept)], 55);
}

TEST(sink_injector, same_seed_same_sequence_other_shard_other_sequence) {
    injection inj{.defer_percent = 50};
    injector a(inj, 99, 0), b(inj, 99, 0), c(inj, 99, 1);
    std::vector<outcome> sa, sb, sc;
    for (int i = 0; i < 256; ++i) {
        sa.push_back(a.pick());
        sb.push_back(b.pick());
        sc.push_back(c.pick());
    }
    EXPECT_EQ(sa, sb);
    EXPECT_NE(sa, sc);
}

TEST(sink_injector, validate_names_the_bad_option) {
    EXPECT_EQ(validate({}), "");
    EXPECT_EQ(validate({.defer_percent = 50, .reject_percent = 50}), "");
    EXPECT_NE(validate({.defer_percent = -1}).find("--defer-percent"), std::string::npos);
    EXPECT_NE(validate({.reject_percent = 101}).find("--reject-percent"), std::string::npos);
    EXPECT_NE(validate({.disconnect_percent = 0.0 / 0.0}).find("--disconnect-percent"),
              std::string::npos);
    EXPECT_NE(validate({.defer_percent = 60, .reject_percent = 30, .disconnect_percent = 20})
                  .find("add up to"),
              std::string::npos);
}

}  // namespace
}  // namespace ringmail::sink
