// smtp::dsn_params: xtext (RFC 3461 section 4) both ways, NOTIFY lists, ORCPT and ENVID
// validity, and which notices a recipient's parameters ask for.
#include "ringmail/smtp/dsn_params.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace ringmail::smtp {
namespace {

struct xtext_case {
    std::string xtext;
    std::optional<std::string> decoded;
};

TEST(dsn_params, xtext_decoding) {
    const xtext_case cases[] = {
        {"", std::string()},           {"abc", std::string("abc")},   {"a+2Bb", std::string("a+b")},
        {"a+3Db", std::string("a=b")}, {"a+2bb", std::string("a+b")},  // lower-case hex tolerated
        {"+20", std::string(" ")},     {"a+", std::nullopt},          {"a+2", std::nullopt},
        {"a+GG", std::nullopt},        {"a=b", std::nullopt},         {"a b", std::nullopt},
        {"a+0Ab", std::nullopt},    // LF decoded: not printable
        {"a+00", std::nullopt},     // NUL
        {"a+7F", std::nullopt},     // DEL
        {"a+C3+A9", std::nullopt},  // non-ASCII
        {"caf\xc3\xa9", std::nullopt},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.xtext);
        EXPECT_EQ(xtext_decode(c.xtext), c.decoded);
    }
}

TEST(dsn_params, xtext_encoding_round_trips) {
    for (std::string s : {"plain", "a+b=c", "with space", "~!#$%&'*-./"}) {
        SCOPED_TRACE(s);
        const std::string x = xtext_encode(s);
        EXPECT_EQ(x.find_first_of(" ="), std::string::npos);
        EXPECT_EQ(xtext_decode(x), s);
    }
    EXPECT_EQ(xtext_encode("a+b c"), "a+2Bb+20c");
}

struct notify_case {
    std::string value;
    std::optional<std::uint8_t> bits;
};

TEST(dsn_params, notify_lists) {
    namespace n = mail::notify;
    const notify_case cases[] = {
        {"NEVER", n::never},
        {"never", n::never},
        {"SUCCESS", n::success},
        {"FAILURE,DELAY", std::uint8_t(n::failure | n::delay)},
        {"delay,Success,FAILURE", std::uint8_t(n::failure | n::delay | n::success)},
        {"", std::nullopt},
        {"NEVER,SUCCESS", std::nullopt},
        {"SUCCESS,NEVER", std::nullopt},
        {"SUCCESS,SUCCESS", std::nullopt},
        {"SUCCESS,", std::nullopt},
        {",SUCCESS", std::nullopt},
        {"SUCCESS FAILURE", std::nullopt},
        {"ALWAYS", std::nullopt},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.value);
        EXPECT_EQ(parse_notify(c.value), c.bits);
        if (c.bits) {
            EXPECT_EQ(parse_notify(format_notify(*c.bits)), c.bits);
        }
    }
}

TEST(dsn_params, orcpt_and_envid) {
    EXPECT_TRUE(valid_orcpt("rfc822;a@b.test"));
    EXPECT_TRUE(valid_orcpt("rfc822;a+2Bb@b.test"));
    EXPECT_TRUE(valid_orcpt("utf-8;a@b.test"));
    EXPECT_FALSE(valid_orcpt("a@b.test"));
    EXPECT_FALSE(valid_orcpt(";a@b.test"));
    EXPECT_FALSE(valid_orcpt("rfc822;"));
    EXPECT_FALSE(valid_orcpt("rfc 822;a@b"));
    EXPECT_FALSE(valid_orcpt("rfc822;a+0D+0Ab"));
    EXPECT_TRUE(valid_orcpt("rfc822;" + std::string(493, 'a')));
    EXPECT_FALSE(valid_orcpt("rfc822;" + std::string(494, 'a')));
    EXPECT_TRUE(valid_envid("QQ314159"));
    EXPECT_TRUE(valid_envid(std::string(100, 'e')));
    EXPECT_FALSE(valid_envid(std::string(101, 'e')));
    EXPECT_FALSE(valid_envid(""));
    EXPECT_FALSE(valid_envid("a+0A"));
}

TEST(dsn_params, which_notices_a_recipient_asks_for) {
    namespace n = mail::notify;
    const mail::rcpt_dsn absent{};
    EXPECT_TRUE(mail::wants_notice(absent, n::failure));
    EXPECT_TRUE(mail::wants_notice(absent, n::delay));
    EXPECT_FALSE(mail::wants_notice(absent, n::success));
    const mail::rcpt_dsn nothing{n::never, {}};
    for (auto k : {n::success, n::failure, n::delay})
        EXPECT_FALSE(mail::wants_notice(nothing, k));
    const mail::rcpt_dsn ok_only{n::success, {}};
    EXPECT_TRUE(mail::wants_notice(ok_only, n::success));
    EXPECT_FALSE(mail::wants_notice(ok_only, n::failure));
    EXPECT_FALSE(mail::wants_notice(ok_only, n::delay));
}

}  // namespace
}  // namespace ringmail::smtp
