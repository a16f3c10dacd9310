#include "ringmail/core/regex_set.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::core {
namespace {

TEST(regex_set, first_match_is_the_lowest_index) {
    std::vector<std::string> p{R"(\[TS0[34]\])", "(?i)mailbox (is )?full", "^421 ", "nomatch"};
    std::string why;
    auto set = regex_set::compile(p, why);
    ASSERT_TRUE(set) << why;
    EXPECT_EQ(set->size(), 4u);
    std::vector<int> scratch;
    EXPECT_EQ(set->first_match("421 4.7.0 [TS03] Mailbox Full", scratch), 0);
    EXPECT_EQ(set->first_match("452 4.2.2 MAILBOX IS FULL", scratch), 1);
    EXPECT_EQ(set->first_match("421 try later", scratch), 2);
    EXPECT_EQ(set->first_match("250 ok", scratch), -1);
    std::vector<int> all;
    set->matches("421 4.7.0 [TS04] mailbox full", all);
    EXPECT_EQ(all, (std::vector<int>{0, 1, 2}));
}

TEST(regex_set, case_insensitive_option) {
    std::vector<std::string> p{"user unknown"};
    std::string why;
    auto set = regex_set::compile(p, why, {.case_insensitive = true});
    ASSERT_TRUE(set) << why;
    std::vector<int> scratch;
    EXPECT_EQ(set->first_match("550 5.1.1 User Unknown", scratch), 0);
}

TEST(regex_set, a_bad_pattern_is_named) {
    std::vector<std::string> p{"fine", "(unclosed"};
    std::string why;
    EXPECT_FALSE(regex_set::compile(p, why));
    EXPECT_NE(why.find("(unclosed"), std::string::npos) << why;
}

TEST(regex_set, empty_set_matches_nothing) {
    std::string why;
    auto set = regex_set::compile({}, why);
    ASSERT_TRUE(set);
    std::vector<int> scratch;
    EXPECT_EQ(set->first_match("anything", scratch), -1);
}

TEST(regex_set, bytes_that_are_not_utf8_do_not_break_matching) {
    std::vector<std::string> p{"spam"};
    std::string why;
    auto set = regex_set::compile(p, why);
    ASSERT_TRUE(set);
    std::vector<int> scratch;
    EXPECT_EQ(set->first_match(std::string("550 \xff\xfe spam\0x", 14), scratch), 0);
}

}  // namespace
}  // namespace ringmail::core
