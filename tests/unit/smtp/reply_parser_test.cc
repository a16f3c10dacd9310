#include "ringmail/smtp/reply_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace ringmail::smtp {
namespace {

struct reply_case {
    const char* name;
    std::string_view wire;
    int code;
    std::string_view enhanced;
    std::string_view text;
    std::vector<std::string> lines;  // empty for a one-line reply
};

// One reply per case, fed whole and then byte by byte; the parser is reused across all cases
// (its first-line buffer must not carry anything from one reply into the next).
TEST(reply_parser, replies) {
    const reply_case cases[] = {
        {"one line, enhanced",
         "250 2.0.0 Ok: queued as 1A2B3C4D5E6F\r\n",
         250,
         "2.0.0",
         "Ok: queued as 1A2B3C4D5E6F",
         {}},
        {"one line, short", "354 go\r\n", 354, "", "go", {}},
        {"code only", "250\r\n", 250, "", "", {}},
        {"code and space", "250 \r\n", 250, "", "", {}},
        {"bare LF", "221 2.0.0 Bye\n", 221, "2.0.0", "Bye", {}},
        {"enhanced only", "250 2.1.0\r\n", 250, "2.1.0", "", {}},
        {"two lines",
         "550-5.1.1 first\r\n550 5.1.1 second\r\n",
         550,
         "5.1.1",
         "first\nsecond",
         {"5.1.1 first", "5.1.1 second"}},
        {"EHLO",
         "250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
         250,
         "",
         "mx.example.test\nPIPELINING\nSIZE 1000",
         {"mx.example.test", "PIPELINING", "SIZE 1000"}},
        {"enhanced on the first line only",
         "451-4.3.0 try\r\n451 later\r\n",
         451,
         "4.3.0",
         "try\nlater",
         {"4.3.0 try", "later"}},
        {"control characters", "250-a\x01z\r\n250 b\x7fy\r\n", 250, "", "a z\nb y", {"a z", "b y"}},
    };
    reply_parser reused;
    for (const reply_case& c : cases) {
        SCOPED_TRACE(c.name);
        for (int split = 0; split < 2; ++split) {
            reply_parser fresh;
            for (reply_parser* p : {&reused, &fresh}) {
                std::size_t used = 0;
                if (split == 0) {
                    used = p->feed(c.wire);
                } else {
                    for (char ch : c.wire)
                        used += p->feed(std::string_view(&ch, 1));
                }
                EXPECT_EQ(used, c.wire.size());
                ASSERT_TRUE(p->has_reply());
                EXPECT_FALSE(p->failed());
                server_reply r = p->take();
                EXPECT_FALSE(p->mid_reply());
                EXPECT_EQ(r.code, c.code);
                EXPECT_EQ(r.enhanced, c.enhanced);
                EXPECT_EQ(r.text, c.text);
                EXPECT_EQ(r.lines, c.lines);
            }
        }
    }
}

TEST(reply_parser, mid_reply_after_a_first_line) {
    reply_parser p;
    EXPECT_FALSE(p.mid_reply());
    p.feed("250-first\r\n");
    EXPECT_FALSE(p.has_reply());
    EXPECT_TRUE(p.mid_reply());  // one line in, no partial bytes buffered
    p.feed("250 last\r\n");
    ASSERT_TRUE(p.has_reply());
    EXPECT_EQ(p.take().lines, (std::vector<std::string>{"first", "last"}));
}

TEST(reply_parser, malformed_replies_fail) {
    const std::string_view cases[] = {
        "25\r\n",                      // too short
        "650 no such class\r\n",       // first digit out of range
        "2x0 letters\r\n",             // not a number
        "250_underscore\r\n",          // neither space nor hyphen
        "250-first\r\n550 mixed\r\n",  // codes differ across lines
    };
    for (std::string_view wire : cases) {
        SCOPED_TRACE(std::string(wire));
        reply_parser p;
        p.feed(wire.substr(0, wire.find('\n') + 1));
        if (!p.failed())
            p.feed(wire.substr(wire.find('\n') + 1));
        EXPECT_TRUE(p.failed());
        EXPECT_FALSE(p.has_reply());
    }

    reply_parser many;
    std::string lines;
    for (std::size_t i = 0; i <= reply_parser::max_reply_lines; ++i)
        lines += "250-line\r\n";
    many.feed(lines);
    EXPECT_TRUE(many.failed());

    reply_parser long_line;
    long_line.feed("250 " + std::string(reply_parser::max_line_length, 'a') + "\r\n");
    EXPECT_TRUE(long_line.failed());
}

TEST(reply_parser, made_up_replies_are_one_line) {
    server_reply r = make_reply(451, "4.4.1", "no answer", local_failure::no_answer);
    EXPECT_EQ(r.code, 451);
    EXPECT_TRUE(r.lines.empty());
    EXPECT_EQ(r.to_string(), "451 4.4.1 no answer");
    EXPECT_EQ(r.local, local_failure::no_answer);
}

TEST(reply_parser, enhanced_codes_and_lf_lines) {
    reply_parser p;
    std::string_view in = "550-5.1.1 first\n550 5.1.1 second\r\n";
    EXPECT_EQ(p.feed(in), in.size());
    ASSERT_TRUE(p.has_reply());
    server_reply r = p.take();
    EXPECT_EQ(r.code, 550);
    EXPECT_EQ(r.enhanced, "5.1.1");
    EXPECT_EQ(r.text, "first\nsecond");
    EXPECT_EQ(r.to_string(), "550 5.1.1 first second");

    reply_parser q;
    std::string_view two = "250 4.1.1 wrong class\r\n250 next\r\n";
    std::size_t n = q.feed(two);
    EXPECT_EQ(n, two.find('\n') + 1);  // stops after one reply
    server_reply a = q.take();
    EXPECT_EQ(a.enhanced, "");  // class 4 under a 2xx code is not an enhanced code
    EXPECT_EQ(a.text, "4.1.1 wrong class");
    q.feed(two.substr(n));
    EXPECT_EQ(q.take().text, "next");

    reply_parser c;
    c.feed(
        "250 a\x01"
        "b\r\n");
    EXPECT_EQ(c.take().text, "a b");  // control characters never pass
}

}  // namespace
}  // namespace ringmail::smtp
