#include "ringmail/core/json_string.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::core {
namespace {

std::string lit(std::string_view s) {
    std::string out;
    append_json_string(out, s);
    return out;
}

TEST(json_string, table) {
    struct {
        std::string in;
        std::string want;
    } cases[] = {
        {"", "\"\""},
        {"plain", "\"plain\""},
        {"a\"b\\c", "\"a\\\"b\\\\c\""},
        {"\n\r\t", "\"\\n\\r\\t\""},
        {std::string("\x01\x7f\0", 3), "\"\\u0001\\u007f\\u0000\""},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7",
         "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7\""},
        {"\xff", "\"\\ufffd\""},
        {"\xc0\xaf", "\"\\ufffd\\ufffd\""},             // overlong
        {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""},  // a surrogate
        {"\xe2\x82", "\"\\ufffd\\ufffd\""},             // cut short
    };
    for (const auto& c : cases)
        EXPECT_EQ(lit(c.in), c.want) << c.in;
}

TEST(json_string, code_points_of_escapes) {
    struct {
        unsigned cp;
        std::string want;
    } cases[] = {
        {0x41, "A"},
        {0xe9, "\xc3\xa9"},
        {0x20ac, "\xe2\x82\xac"},
        {0xd83d, "\xef\xbf\xbd"},  // a lone surrogate half: U+FFFD
        {0xffff, "\xef\xbf\xbf"},
    };
    for (const auto& c : cases) {
        std::string out;
        append_json_code_point(out, c.cp);
        EXPECT_EQ(out, c.want) << c.cp;
    }
}

}  // namespace
}  // namespace ringmail::core
