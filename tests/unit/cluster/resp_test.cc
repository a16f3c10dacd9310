#include "ringmail/cluster/resp.h"

#include <gtest/gtest.h>

#include <string>

namespace {

using ringmail::cluster::encode_command;
using ringmail::cluster::resp_parser;
using ringmail::cluster::resp_value;

TEST(Resp, EncodesArraysOfBulkStrings) {
    std::string out;
    encode_command(out, {"SET", "k", ""});
    EXPECT_EQ(out, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
}

TEST(Resp, ParsesEveryTypeSplitAnywhere) {
    const std::string wire =
        "+OK\r\n-NOSCRIPT No matching script\r\n:-42\r\n$5\r\nhe\r\nl\r\n$-1\r\n"
        "*3\r\n:1\r\n*1\r\n$1\r\nx\r\n*-1\r\n*0\r\n";
    for (std::size_t step = 1; step <= wire.size(); ++step) {
        resp_parser p;
        for (std::size_t i = 0; i < wire.size(); i += step)
            p.feed(std::string_view(wire).substr(i, step));
        ASSERT_FALSE(p.failed()) << p.error();
        ASSERT_EQ(p.ready(), 7u) << step;
        auto v = *p.take();
        EXPECT_EQ(v.type, resp_value::kind::simple);
        EXPECT_EQ(v.str, "OK");
        v = *p.take();
        EXPECT_TRUE(v.is_error());
        EXPECT_EQ(v.str, "NOSCRIPT No matching script");
        v = *p.take();
        EXPECT_EQ(v.integer, -42);
        v = *p.take();
        EXPECT_EQ(v.type, resp_value::kind::bulk);
        EXPECT_EQ(v.str, "he\r\nl");
        EXPECT_TRUE(p.take()->is_nil());
        v = *p.take();
        ASSERT_EQ(v.type, resp_value::kind::array);
        ASSERT_EQ(v.elements.size(), 3u);
        EXPECT_EQ(v.elements[0].integer, 1);
        EXPECT_EQ(v.elements[1].elements[0].str, "x");
        EXPECT_TRUE(v.elements[2].is_nil());
        v = *p.take();
        EXPECT_EQ(v.type, resp_value::kind::array);
        EXPECT_TRUE(v.elements.empty());
        EXPECT_FALSE(p.take());
    }
}

TEST(Resp, BoundsAndGarbageFailForGood) {
    const char* bad[] = {"?x\r\n",         ":12a\r\n",   "$-2\r\n",
                         "$3\r\nabcd\r\n", "*99999\r\n", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                         "$2000000\r\n"};
    for (const char* b : bad) {
        resp_parser p;
        p.feed(b);
        EXPECT_TRUE(p.failed()) << b;
        p.feed("+OK\r\n");
        EXPECT_FALSE(p.take()) << b;
    }
    resp_parser p;
    p.feed(std::string(resp_parser::max_line + 10, 'a'));
    EXPECT_TRUE(p.failed());
}

}  // namespace
