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

}  // namespace
}  // namespace ringmail::core
