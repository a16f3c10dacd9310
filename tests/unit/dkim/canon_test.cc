// Canonicalization (RFC 6376 section 3.4): tables of whole-buffer results, then the streamed
// machines split at every byte must give the same bytes.
#include "ringmail/dkim/canon.h"

#include "ringmail/core/base64.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::dkim {
namespace {

struct body_case {
    std::string name;
    std::string in;
    std::string simple;
    std::string relaxed;
};

std::vector<body_case> body_cases() {
    return {
        {"empty", "", "\r\n", ""},
        {"only_crlf", "\r\n", "\r\n", ""},
        {"only_blank_lines", "\r\n\r\n\r\n", "\r\n", ""},
        {"no_final_crlf", "abc", "abc\r\n", "abc\r\n"},
        {"one_line", "abc\r\n", "abc\r\n", "abc\r\n"},
        {"trailing_blank_lines", "abc\r\n\r\n\r\n", "abc\r\n", "abc\r\n"},
        {"inner_whitespace", "a  b \t\r\n", "a  b \t\r\n", "a b\r\n"},
        {"whitespace_only_line", "  \r\n", "  \r\n", ""},
        {"trailing_whitespace_lines", "x\r\n \r\n\t\r\n", "x\r\n \r\n\t\r\n", "x\r\n"},
        {"inner_blank_line", "x\r\n\r\ny\r\n", "x\r\n\r\ny\r\n", "x\r\n\r\ny\r\n"},
        // RFC 6376 section 3.4.5.
        {"rfc6376_example", " C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n", " C\r\nD E\r\n"},
        {"leading_whitespace", "\t\t x\r\n", "\t\t x\r\n", " x\r\n"},
        {"bare_cr", "a\rb\r\n", "a\rb\r\n", "a\rb\r\n"},
        {"ends_in_cr", "a\r", "a\r\r\n", "a\r\r\n"},
        {"bare_lf", "a\nb\r\n", "a\nb\r\n", "a\nb\r\n"},
        {"utf8", "caf\xc3\xa9  \r\n", "caf\xc3\xa9  \r\n", "caf\xc3\xa9\r\n"},
        {"trailing_whitespace_no_crlf", "abc  ", "abc  \r\n", "abc\r\n"},
        {"many_inner_blank_lines",
         "a" +
             [] {
                 std::string s;
                 for (int i = 0; i < 40; ++i)
                     s += "\r\n";
                 return s;
             }() +
             "b",
         "a" +
             [] {
                 std::string s;
                 for (int i = 0; i < 40; ++i)
                     s += "\r\n";
                 return s;
             }() +
             "b\r\n",
         "a" +
             [] {
                 std::string s;
                 for (int i = 0; i < 40; ++i)
                     s += "\r\n";
                 return s;
             }() +
             "b\r\n"},
        {"dots_are_content", ".\r\n..\r\n", ".\r\n..\r\n", ".\r\n..\r\n"},
        {"words", "one two  three \r\nx y\tz \t w \r\n", "one two  three \r\nx y\tz \t w \r\n",
         "one two three\r\nx y z w\r\n"},
        {"space_before_cr_mid_run", "a b\rc d \r\n", "a b\rc d \r\n", "a b\rc d\r\n"},
    };
}

std::string streamed_body(canon c, const std::vector<std::string_view>& parts) {
    std::string out;
    body_canonicalizer bc(c);
    auto sink = [&](const char* p, std::size_t n) { out.append(p, n); };
    for (auto part : parts)
        bc.update(part, sink);
    bc.finish(sink);
    return out;
}

TEST(dkim_canon, body_table) {
    for (const auto& t : body_cases()) {
        EXPECT_EQ(canonicalize_body(canon::simple, t.in), t.simple) << t.name;
        EXPECT_EQ(canonicalize_body(canon::relaxed, t.in), t.relaxed) << t.name;
    }
}

TEST(dkim_canon, body_split_at_every_byte) {
    for (const auto& t : body_cases()) {
        std::string_view in = t.in;
        for (canon c : {canon::simple, canon::relaxed}) {
            const std::string& want = c == canon::simple ? t.simple : t.relaxed;
            for (std::size_t i = 0; i <= in.size(); ++i) {
                for (std::size_t j = i; j <= in.size(); ++j) {
                    EXPECT_EQ(
                        streamed_body(c, {in.substr(0, i), in.substr(i, j - i), in.substr(j)}),
                        want)
                        << t.name << " split at " << i << "," << j;
                }
            }
            std::vector<std::string_view> bytes;
            for (std::size_t i = 0; i < in.size(); ++i)
                bytes.push_back(in.substr(i, 1));
            EXPECT_EQ(streamed_body(c, bytes), want) << t.name << " byte by byte";
        }
    }
}

// The relaxed body rules written the plain way (RFC 6376 3.4.4), against the streamed machine
// with its sixteen-byte scan, on random text rich in the bytes that matter.
std::string relaxed_reference(const std::string& in) {
    std::vector<std::string> lines;
    std::string cur;
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] == '\r' && i + 1 < in.size() && in[i + 1] == '\n') {
            lines.push_back(cur);
            cur.clear();
            ++i;
        } else {
            cur += in[i];
        }
    }
    const bool unterminated = !cur.empty();
    if (unterminated)
        lines.push_back(cur);
    std::string out;
    for (auto& line : lines) {
        std::string l;
        for (char c : line) {
            const bool wsp = c == ' ' || c == '\t';
            if (wsp) {
                if (l.empty() || l.back() != ' ')
                    l += ' ';
            } else {
                l += c;
            }
        }
        while (!l.empty() && l.back() == ' ')
            l.pop_back();
        out += l + "\r\n";
    }
    while (out.size() >= 2 && out.ends_with("\r\n\r\n"))
        out.resize(out.size() - 2);
    if (out == "\r\n")
        out.clear();
    return out;
}

TEST(dkim_canon, relaxed_matches_the_plain_rules_on_random_text) {
    const char alphabet[] = {'a', 'b', ' ', ' ', '\t', '\r', '\n', '.'};
    std::uint32_t seed = 12345;
    for (int round = 0; round < 3000; ++round) {
        std::string in;
        const std::size_t n = round % 97 + round / 50;
        for (std::size_t i = 0; i < n; ++i) {
            seed = seed * 1103515245 + 12345;
            in += alphabet[(seed >> 16) % sizeof alphabet];
        }
        ASSERT_EQ(canonicalize_body(canon::relaxed, in), relaxed_reference(in))
            << "round " << round;
    }
}

TEST(dkim_canon, empty_body_hashes) {
    // The well-known body hashes of an empty body.
    auto b64 = [](const digest& d) {
        return core::base64_encode(
            std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
    };
    body_hasher s(canon::simple);
    EXPECT_EQ(b64(s.finish()), "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    body_hasher r(canon::relaxed);
    EXPECT_EQ(b64(r.finish()), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

struct header_case {
    std::string in;
    std::string simple;
    std::string relaxed;
};

TEST(dkim_canon, header_table) {
    const std::vector<header_case> cases = {
        // RFC 6376 section 3.4.5.
        {"A: X\r\n", "A: X\r\n", "a:X\r\n"},
        {"B : Y\t\r\n\tZ  \r\n", "B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n"},
        {"Subject:   hello   world  \r\n", "Subject:   hello   world  \r\n",
         "subject:hello world\r\n"},
        {"SUBJECT:x", "SUBJECT:x\r\n", "subject:x\r\n"},
        {"Subject: Caf\xc3\xa9 \xe2\x98\x95\r\n", "Subject: Caf\xc3\xa9 \xe2\x98\x95\r\n",
         "subject:Caf\xc3\xa9 \xe2\x98\x95\r\n"},
        {"X-Empty:\r\n", "X-Empty:\r\n", "x-empty:\r\n"},
        {"X-Empty:   \r\n", "X-Empty:   \r\n", "x-empty:\r\n"},
        {"To: a@example.com,\r\n b@example.com,\r\n\t c@example.com\r\n",
         "To: a@example.com,\r\n b@example.com,\r\n\t c@example.com\r\n",
         "to:a@example.com, b@example.com, c@example.com\r\n"},
        {"X-Colon: a:b : c\r\n", "X-Colon: a:b : c\r\n", "x-colon:a:b : c\r\n"},
    };
    for (const auto& t : cases) {
        EXPECT_EQ(canonicalize_header(canon::simple, t.in), t.simple) << t.in;
        EXPECT_EQ(canonicalize_header(canon::relaxed, t.in), t.relaxed) << t.in;
    }
}

std::string unstuffed(const std::vector<std::string_view>& parts) {
    std::string out;
    unstuffer u;
    for (auto p : parts)
        u.update(p, [&](const char* b, std::size_t n) { out.append(b, n); });
    return out;
}

TEST(dkim_canon, unstuffer_split_at_every_byte) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"", ""},
        {"..\r\n", ".\r\n"},
        {"..a\r\nb.c\r\n...\r\n", ".a\r\nb.c\r\n..\r\n"},
        {".x\r\n", "x\r\n"},
        {"a\r\n..\r\n\r\n..b", "a\r\n.\r\n\r\n.b"},
        {"a\n.b\r\n", "a\n.b\r\n"},  // a bare LF does not start a line
        {"a\r.b\r\n", "a\r.b\r\n"},
    };
    for (const auto& [in, want] : cases) {
        std::string_view s = in;
        for (std::size_t i = 0; i <= s.size(); ++i) {
            for (std::size_t j = i; j <= s.size(); ++j) {
                EXPECT_EQ(unstuffed({s.substr(0, i), s.substr(i, j - i), s.substr(j)}), want)
                    << in << " split at " << i << "," << j;
            }
        }
    }
}

struct split_result {
    std::string header;
    std::string body;
    bool overflow = false;
};

split_result split(const std::vector<std::string_view>& parts, std::size_t max = 1 << 20) {
    split_result r;
    header_splitter h(max);
    for (auto p : parts) {
        auto b = h.update(p);
        r.body.append(b);
    }
    h.finish();
    r.header = h.header();
    r.overflow = h.overflowed();
    return r;
}

TEST(dkim_canon, header_splitter_split_at_every_byte) {
    struct c {
        std::string in, header, body;
    };
    const std::vector<c> cases = {
        {"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n", "body\r\n"},
        {"A: 1\r\n\tfolded\r\n\r\n\r\n\r\n", "A: 1\r\n\tfolded\r\n", "\r\n\r\n"},
        {"\r\nbody", "", "body"},
        {"A: 1\r\n", "A: 1\r\n", ""},
        {"A: 1\r\n\r\n", "A: 1\r\n", ""},
        {"A: 1\r\n\r", "A: 1\r\n\r", ""},
        {"A: 1\r\n\rX: 2\r\n\r\nb", "A: 1\r\n\rX: 2\r\n", "b"},
        {"A: 1\n\nB: 2\r\n\r\nb", "A: 1\n\nB: 2\r\n", "b"},
    };
    for (const auto& t : cases) {
        std::string_view s = t.in;
        for (std::size_t i = 0; i <= s.size(); ++i) {
            for (std::size_t j = i; j <= s.size(); ++j) {
                auto r = split({s.substr(0, i), s.substr(i, j - i), s.substr(j)});
                EXPECT_EQ(r.header, t.header) << t.in << " split at " << i << "," << j;
                EXPECT_EQ(r.body, t.body) << t.in << " split at " << i << "," << j;
                EXPECT_FALSE(r.overflow);
            }
        }
    }
}

TEST(dkim_canon, header_splitter_bounded) {
    auto r = split({"Subject: 0123456789\r\n\r\nbody"}, 10);
    EXPECT_TRUE(r.overflow);
    EXPECT_EQ(r.body, "body");
    auto ok = split({"A: 12345\r\n\r\nbody"}, 10);
    EXPECT_FALSE(ok.overflow);
    EXPECT_EQ(ok.header, "A: 12345\r\n");
}

}  // namespace
}  // namespace ringmail::dkim
