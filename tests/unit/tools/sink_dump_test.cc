#include <gtest/gtest.h>

#include "sink/dump.h"
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace ringmail::sink {
namespace {

std::string unstuff_all(std::string_view in, std::size_t piece) {
    dot_unstuffer u;
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += piece)
        u.feed(in.substr(i, piece), out);
    return out;
}

TEST(sink_dump, unstuffs_dot_lines_across_any_split) {
    struct row {
        std::string_view in, out;
    };
    const row rows[] = {
        {"", ""},
        {"plain\r\n", "plain\r\n"},
        {"..\r\n", ".\r\n"},
        {"..leading dot\r\n", ".leading dot\r\n"},
        {"a\r\n...\r\nb\r\n", "a\r\n..\r\nb\r\n"},
        {"mid.dot\r\n", "mid.dot\r\n"},
        {"x\r\n.\r\n", "x\r\n\r\n"},  // a lone stuffed dot (never the end: that is not passed)
        {"8bit \xe9\xff\r\n..\xe9\r\n", "8bit \xe9\xff\r\n.\xe9\r\n"},
        {"\r\n..\r\n\r\n..x\r\n", "\r\n.\r\n\r\n.x\r\n"},
        {"cr\r.no\r\n", "cr\r.no\r\n"},  // not a line start (never accepted anyway)
    };
    for (const auto& r : rows) {
        for (std::size_t piece : {1, 2, 3, 7, 1000}) {
            EXPECT_EQ(unstuff_all(r.in, piece), r.out) << r.in << " piece " << piece;
        }
    }
}

TEST(sink_dump, reset_starts_a_new_message_at_a_line_start) {
    dot_unstuffer u;
    std::string out;
    u.feed("abc", out);
    u.reset();
    u.feed("..x\r\n", out);
    EXPECT_EQ(out, "abc.x\r\n");
}

TEST(sink_dump, envelope_lists_sender_recipients_in_order_and_result) {
    mail::envelope env;
    env.mail_from = "a@x.test";
    env.rcpt_to = {"r1@y.test", "r2@y.test"};
    env.body = mail::body_type::eight_bit_mime;
    env.helo_name = "client.test";
    env.client_address = "127.0.0.1";
    EXPECT_EQ(format_envelope(env, "250 2.0.0"),
              "MAIL FROM:<a@x.test> BODY=8BITMIME\n"
              "RCPT TO:<r1@y.test>\n"
              "RCPT TO:<r2@y.test>\n"
              "HELO client.test\n"
              "CLIENT 127.0.0.1\n"
              "RESULT 250 2.0.0\n");
    mail::envelope null_sender;
    null_sender.rcpt_to = {"p@q"};
    null_sender.smtputf8 = true;
    null_sender.helo_name = "h";
    EXPECT_EQ(format_envelope(null_sender, "disconnect"),
              "MAIL FROM:<> SMTPUTF8\nRCPT TO:<p@q>\nHELO h\nRESULT disconnect\n");
}

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

class sink_dump_file : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/ringmail-sink-dump-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir = tmpl;
    }
    void TearDown() override { std::system(("rm -rf '" + dir + "'").c_str()); }
    std::string dir;
};

TEST_F(sink_dump_file, writes_content_then_envelope) {
    dump_file d;
    ASSERT_TRUE(d.open(dir, "0-1"));
    ASSERT_TRUE(d.append("Subject: t\r\n\r\n.."));
    ASSERT_TRUE(d.append("dot\r\n"));
    mail::envelope env;
    env.mail_from = "s@x";
    env.rcpt_to = {"r@y"};
    env.helo_name = "h";
    ASSERT_TRUE(d.finish(env, "250 2.0.0"));
    EXPECT_FALSE(d.is_open());
    EXPECT_EQ(slurp(dir + "/0-1.eml"), "Subject: t\r\n\r\n.dot\r\n");
    EXPECT_EQ(slurp(dir + "/0-1.env"),
              "MAIL FROM:<s@x>\nRCPT TO:<r@y>\nHELO h\nRESULT 250 2.0.0\n");
}

TEST_F(sink_dump_file, abort_removes_the_partial_content) {
    dump_file d;
    ASSERT_TRUE(d.open(dir, "1-7"));
    ASSERT_TRUE(d.append("partial"));
    d.abort();
    EXPECT_NE(::access((dir + "/1-7.eml").c_str(), F_OK), 0);
    EXPECT_NE(::access((dir + "/1-7.env").c_str(), F_OK), 0);
}

TEST_F(sink_dump_file, errors_are_values) {
    dump_file d;
    EXPECT_FALSE(d.open(dir + "/missing", "0-1"));
    EXPECT_FALSE(d.append("x"));
    EXPECT_FALSE(d.finish({}, "250"));
}

}  // namespace
}  // namespace ringmail::sink
