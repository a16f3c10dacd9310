#include "ringmail/queue/domain_policy.h"

#include <gtest/gtest.h>

#include <functional>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

destination_policy defaults() {
    destination_policy p;
    p.max_connections = 10;
    p.max_messages_per_connection = 100;
    p.connect_timeout = 30s;
    return p;
}

std::vector<domain_override> overrides() {
    domain_override gmail;
    gmail.name = "Gmail.com";
    gmail.max_connections = 40;
    gmail.rate = 50.0;
    domain_override slow;
    slow.name = "slow.example.";
    slow.max_messages_per_connection = 5;
    slow.connect_timeout = 5s;
    return {gmail, slow};
}

struct lookup_case {
    const char* domain;
    std::uint32_t max_connections;
    std::uint32_t max_messages;
    std::int64_t connect_ms;
    double rate;
};

class domain_policy_lookup : public testing::TestWithParam<lookup_case> {};

TEST_P(domain_policy_lookup, exact_names_case_insensitive_unset_fields_default) {
    domain_policy dp(defaults(), overrides());
    const auto& c = GetParam();
    const destination_policy& p = dp.lookup(c.domain);
    EXPECT_EQ(p.max_connections, c.max_connections);
    EXPECT_EQ(p.max_messages_per_connection, c.max_messages);
    EXPECT_EQ(p.connect_timeout.count(), c.connect_ms);
    EXPECT_DOUBLE_EQ(p.rate, c.rate);
}

INSTANTIATE_TEST_SUITE_P(names, domain_policy_lookup,
                         testing::Values(lookup_case{"gmail.com", 40, 100, 30000, 50.0},
                                         lookup_case{"GMAIL.COM", 40, 100, 30000, 50.0},
                                         lookup_case{"gmail.com.", 40, 100, 30000, 50.0},
                                         lookup_case{"mail.gmail.com", 10, 100, 30000,
                                                     0.0},  // exact names only
                                         lookup_case{"gmail.co", 10, 100, 30000, 0.0},
                                         lookup_case{"Slow.Example", 10, 5, 5000, 0.0},
                                         lookup_case{"other.test", 10, 100, 30000, 0.0},
                                         lookup_case{"", 10, 100, 30000, 0.0}));

TEST(domain_policy, validate_accepts_a_good_table) {
    EXPECT_EQ(domain_policy::validate(defaults(), overrides()), "");
}

struct bad_case {
    const char* name;
    std::function<void(destination_policy&, std::vector<domain_override>&)> breaks;
    const char* mentions;
};

TEST(domain_policy, validate_names_what_is_wrong) {
    const std::vector<bad_case> cases = {
        {"zero default connections", [](auto& d, auto&) { d.max_connections = 0; },
         "max_connections"},
        {"duplicate names",
         [](auto&, auto& o) {
             o.push_back(o[0]);
             o.back().name = "GMAIL.com.";
         },
         "listed twice"},
        {"empty name", [](auto&, auto& o) { o[0].name = ""; }, "name"},
        {"zero messages", [](auto&, auto& o) { o[1].max_messages_per_connection = 0; },
         "slow.example"},
        {"negative rate", [](auto&, auto& o) { o[0].rate = -1.0; }, "rate"},
        {"zero timeout", [](auto&, auto& o) { o[1].connect_timeout = 0ms; }, "connect_timeout"},
    };
    for (const auto& c : cases) {
        auto d = defaults();
        auto o = overrides();
        c.breaks(d, o);
        std::string err = domain_policy::validate(d, o);
        EXPECT_NE(err.find(c.mentions), std::string::npos) << c.name << ": " << err;
    }
}

}  // namespace
}  // namespace ringmail::queue
