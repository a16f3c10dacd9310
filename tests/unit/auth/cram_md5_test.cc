// auth::cram_md5: MD5 against RFC 1321's test suite and padding edges, HMAC-MD5 from the stored
// key state against RFC 2195's example and Python's hmac for key lengths around the block
// size, the {CRAM-MD5} entry format, and verification of client answers.
#include "ringmail/auth/cram_md5.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::auth {
namespace {

std::string hex(const md5_digest& d) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    for (auto b : d) {
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 15]);
    }
    return s;
}

struct md5_case {
    std::string input;
    const char* digest;
};

TEST(cram_md5, md5_matches_rfc_1321_and_padding_edges) {
    const md5_case cases[] = {
        {"", "d41d8cd98f00b204e9800998ecf8427e"},
        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
        {std::string(55, 'a'), "ef1772b6dff9a122358552954ad0df65"},  // length fits one block
        {std::string(56, 'a'), "3b0c8ac703f828b04c6c197006d17218"},  // length spills over
        {std::string(64, 'a'), "014842d480b571495a4a0363793f7367"},
        {std::string(119, 'a'), "8a7bd0732ed6a28ce75f6dabc90e1613"},
        {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
         "57edf4a22be3c955ac49da2e2107b67a"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.input.size());
        EXPECT_EQ(hex(md5(c.input)), c.digest);
    }
}

struct hmac_case {
    std::string password;
    std::string challenge;
    const char* digest;  // Python: hmac.new(password, challenge, hashlib.md5).hexdigest()
};

TEST(cram_md5, digest_from_the_stored_state_is_hmac_md5) {
    const hmac_case cases[] = {
        {"tanstaaftanstaaf", "<1896.697170952@postoffice.reston.mci.net>",
         "b913a602c7eda7a495b4e6e7334d3890"},  // RFC 2195 section 2
        {std::string(64, 'a'), "x", "56c50885b4328294604759a34989112c"},
        {std::string(65, 'b'), "<c@h>", "8a8fa9279dcda8f21718e3f8206d605f"},  // key hashed first
        {"p", "", "847b23cf9af43ac56556eb09eac586a5"},
        {std::string(200, 'q'), std::string(130, 'y'), "9b2d1b8cfacdde4e1ad25b42a1f3ac77"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.password.size());
        const cram_context ctx = make_cram_context(c.password);
        EXPECT_EQ(hex(cram_digest(ctx, c.challenge)), c.digest);
        // Through the users-file form and back.
        auto parsed = parse_cram_md5(format_cram_md5(ctx));
        ASSERT_TRUE(parsed);
        EXPECT_EQ(*parsed, ctx);
        EXPECT_TRUE(cram_verify(*parsed, c.challenge, c.digest));
    }
}

TEST(cram_md5, entry_layout_is_outer_then_inner_little_endian) {
    // From an independent Python MD5 compression of (key ^ opad) and (key ^ ipad).
    EXPECT_EQ(format_cram_md5(make_cram_context("tanstaaftanstaaf")),
              "{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b");
}

TEST(cram_md5, entry_format) {
    const std::string e = format_cram_md5(make_cram_context("secret"));
    EXPECT_EQ(e.size(), 10u + 64u);
    EXPECT_EQ(e.substr(0, 10), "{CRAM-MD5}");
    std::string upper = e;
    for (std::size_t i = 10; i < upper.size(); ++i)
        upper[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(upper[i])));
    EXPECT_TRUE(parse_cram_md5(upper));
    const std::string bad[] = {
        "",
        "{CRAM-MD5}",
        e.substr(0, e.size() - 1),
        e + "0",
        "{cram-md5}" + e.substr(10),
        "{CRAM-MD5}" + std::string(63, '0') + "g",
        e.substr(10),
    };
    for (const auto& b : bad) {
        SCOPED_TRACE(b);
        EXPECT_FALSE(parse_cram_md5(b));
    }
}

TEST(cram_md5, verification_refuses_wrong_and_malformed_answers) {
    const cram_context ctx = make_cram_context("tanstaaftanstaaf");
    const std::string ch = "<1896.697170952@postoffice.reston.mci.net>";
    EXPECT_TRUE(cram_verify(ctx, ch, "b913a602c7eda7a495b4e6e7334d3890"));
    EXPECT_TRUE(cram_verify(ctx, ch, "B913A602C7EDA7A495B4E6E7334D3890"));
    EXPECT_FALSE(cram_verify(ctx, ch, "b913a602c7eda7a495b4e6e7334d3891"));
    EXPECT_FALSE(cram_verify(ctx, ch + " ", "b913a602c7eda7a495b4e6e7334d3890"));
    EXPECT_FALSE(cram_verify(ctx, ch, "b913a602c7eda7a495b4e6e7334d389"));
    EXPECT_FALSE(cram_verify(ctx, ch, "b913a602c7eda7a495b4e6e7334d3890 "));
    EXPECT_FALSE(cram_verify(ctx, ch, "z913a602c7eda7a495b4e6e7334d3890"));
    EXPECT_FALSE(cram_verify(make_cram_context("other"), ch, "b913a602c7eda7a495b4e6e7334d3890"));
    EXPECT_TRUE(cram_equal(ctx, make_cram_context("tanstaaftanstaaf")));
    EXPECT_FALSE(cram_equal(ctx, make_cram_context("tanstaaftanstaag")));
}

}  // namespace
}  // namespace ringmail::auth
