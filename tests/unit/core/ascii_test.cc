#include "ringmail/core/ascii.h"

#include <gtest/gtest.h>

namespace ringmail::core {
namespace {

TEST(ascii, equals_nocase) {
    struct row {
        std::string_view a, b;
        bool equal;
    };
    const row rows[] = {
        {"MAIL", "mail", true},      {"Mail", "mAIL", true},   {"", "", true},
        {"MAIL", "MAI", false},      {"RCPT", "RCPU", false},  {"@", "`", false},
        {"[", "{", false},           {"\xc3\x84", "\xc3\xa4", false},  // no case folding past ASCII
        {"SIZE=1", "size=1", true},
    };
    for (const auto& r : rows) EXPECT_EQ(equals_nocase(r.a, r.b), r.equal) << r.a << " / " << r.b;
    static_assert(equals_nocase("BODY", "body"));
    static_assert(to_lower_ascii('Z') == 'z' && to_lower_ascii('z') == 'z' && to_lower_ascii('1') == '1');
}

}  // namespace
}  // namespace ringmail::core
