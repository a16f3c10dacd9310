#include <gtest/gtest.h>

#include "blast/message.h"
#include <string>

namespace ringmail::blast {
namespace {

generated_headers headers() {
    return {"a@b.test", "Mon, 23 Nov 2026 10:00:00 +0000", "<1.2@ringmail-blast.test>"};
}

// Lines are CRLF-terminated, at most 78 octets with the CRLF, none starts with '.', no bare
// CR or LF.
void expect_transmission_form(const std::string& m) {
    ASSERT_TRUE(m.ends_with("\r\n"));
    std::size_t start = 0;
    while (start < m.size()) {
        auto end = m.find("\r\n", start);
        ASSERT_NE(end, std::string::npos);
        std::string_view line(m.data() + start, end - start);
        EXPECT_LE(line.size(), 998u);
        EXPECT_EQ(line.find('\r'), std::string_view::npos);
        EXPECT_EQ(line.find('\n'), std::string_view::npos);
        EXPECT_FALSE(line.starts_with('.'));
        start = end + 2;
    }
}

TEST(blast_message, generated_size_is_exact) {
    std::string minimal = generate_message(0, headers());
    for (std::size_t size = minimal.size(); size < minimal.size() + 400; ++size) {
        std::string m = generate_message(size, headers());
        ASSERT_EQ(m.size(), size) << size;
        expect_transmission_form(m);
    }
    for (std::size_t size : {1024u, 4096u, 100000u}) {
        std::string m = generate_message(size, headers());
        EXPECT_EQ(m.size(), size);
        expect_transmission_form(m);
    }
}

TEST(blast_message, too_small_becomes_the_headers) {
    std::string m = generate_message(1, headers());
    EXPECT_TRUE(m.starts_with("From: ringmail-blast <a@b.test>\r\n"));
    EXPECT_TRUE(m.ends_with("\r\n\r\n"));
    EXPECT_NE(m.find("Message-ID: <1.2@ringmail-blast.test>\r\n"), std::string::npos);
}

TEST(blast_message, body_lines_are_76_letters) {
    std::string m = generate_message(2048, headers());
    auto body = m.substr(m.find("\r\n\r\n") + 4);
    EXPECT_EQ(body.find("\r\n"), 76u);
}

struct form_case {
    const char* raw;
    const char* sent;
};

TEST(blast_message, transmission_form) {
    const form_case cases[] = {
        {"", ""},
        {"a", "a\r\n"},
        {"a\r\n", "a\r\n"},
        {"a\nb\n", "a\r\nb\r\n"},
        {"a\rb", "a\r\nb\r\n"},
        {"a\r\r\nb", "a\r\n\r\nb\r\n"},
        {".hidden\r\n..two\r\nmid.dle\r\n.", "..hidden\r\n...two\r\nmid.dle\r\n..\r\n"},
        {"\n.\n", "\r\n..\r\n"},
    };
    for (const auto& c : cases)
        EXPECT_EQ(to_transmission_form(c.raw), c.sent) << c.raw;
}

TEST(blast_message, address_templates) {
    EXPECT_EQ(expand_address("user@x.test", 7), "user@x.test");
    EXPECT_EQ(expand_address("user{n}@d{n}.test", 42), "user42@d42.test");
    EXPECT_EQ(expand_address("{n}", 0), "0");
    EXPECT_EQ(expand_address("{n", 3), "{n");
    EXPECT_EQ(recipient_number(0, 1, 0, 0), 0u);
    EXPECT_EQ(recipient_number(5, 3, 2, 0), 17u);
    EXPECT_EQ(recipient_number(5, 3, 2, 10), 7u);
    EXPECT_EQ(sender_number(12), 12u);
}

}  // namespace
}  // namespace ringmail::blast
