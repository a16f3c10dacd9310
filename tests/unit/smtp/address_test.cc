#include "ringmail/smtp/address.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <string_view>

namespace ringmail::smtp {
namespace {

struct mail_case {
    std::string arg;      // after "MAIL FROM:"
    int error;            // 0 = accepted, else errc value
    std::string address;  // expected address when accepted
};

// Printable in gtest's XML report: non-ASCII and control octets as \xNN.
std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (c >= 0x20 && c < 0x7f) {
            out.push_back(static_cast<char>(c));
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    return out;
}

std::ostream& operator<<(std::ostream& os, const mail_case& c) {
    return os << printable(c.arg);
}

class mail_from_test : public ::testing::TestWithParam<mail_case> {};

TEST_P(mail_from_test, parses) {
    const auto& c = GetParam();
    auto r = parse_mail_from(c.arg);
    if (c.error == 0) {
        ASSERT_TRUE(r.has_value()) << r.error().message();
        EXPECT_EQ(r->reverse_path.address, c.address);
    } else {
        ASSERT_FALSE(r.has_value()) << "accepted: " << r->reverse_path.address;
        EXPECT_EQ(r.error(), make_error_code(static_cast<errc>(c.error))) << r.error().message();
    }
}

constexpr int ok = 0;
constexpr int e(errc x) {
    return static_cast<int>(x);
}

const std::string s64(64, 'a');
const std::string s65(65, 'a');
const std::string label63(63, 'b');

INSTANTIATE_TEST_SUITE_P(
    table, mail_from_test,
    ::testing::Values(
        mail_case{"<user@example.test>", ok, "user@example.test"},
        mail_case{" <user@example.test>", ok, "user@example.test"}, mail_case{"<>", ok, ""},
        mail_case{"<> SIZE=100", ok, ""},
        mail_case{"<first.last+tag@sub.example.test>", ok, "first.last+tag@sub.example.test"},
        mail_case{"<!#$%&'*+-/=?^_`{|}~@x.test>", ok, "!#$%&'*+-/=?^_`{|}~@x.test"},
        mail_case{"<\"john doe\"@x.test>", ok, "\"john doe\"@x.test"},
        mail_case{"<\"a\\\"b\"@x.test>", ok, "\"a\\\"b\"@x.test"},
        mail_case{"<\"a@b>c\"@x.test>", ok, "\"a@b>c\"@x.test"},
        mail_case{"<\"\"@x.test>", ok, "\"\"@x.test"},
        mail_case{"<u@[127.0.0.1]>", ok, "u@[127.0.0.1]"},
        mail_case{"<u@[IPv6:2001:db8::1]>", ok, "u@[IPv6:2001:db8::1]"},
        mail_case{"<u@[ipv6:::ffff:192.0.2.1]>", ok, "u@[ipv6:::ffff:192.0.2.1]"},
        mail_case{"<@a.test,@b.test:u@d.test>", ok, "u@d.test"},
        mail_case{"<@[10.0.0.1]:u@d.test>", ok, "u@d.test"},
        mail_case{"<u@localhost>", ok, "u@localhost"},
        mail_case{"<u@a-b.c0.test>", ok, "u@a-b.c0.test"},
        mail_case{"<" + s64 + "@x.test>", ok, s64 + "@x.test"},
        mail_case{"<u@" + label63 + ".test>", ok, "u@" + label63 + ".test"},
        mail_case{"<j\xc3\xb6rg@b\xc3\xbc"
                  "cher.test> SMTPUTF8",
                  ok,
                  "j\xc3\xb6rg@b\xc3\xbc"
                  "cher.test"},
        mail_case{"<u@x.test> BODY=8BITMIME SIZE=1000 SMTPUTF8", ok, "u@x.test"},
        mail_case{"<u@x.test> body=7bit", ok, "u@x.test"},
        // Path syntax.
        mail_case{"u@x.test", e(errc::path_syntax), ""},
        mail_case{"<u@x.test", e(errc::path_syntax), ""},
        mail_case{"<u@x.test>junk", e(errc::path_syntax), ""},
        mail_case{"<u>", e(errc::path_syntax), ""},
        mail_case{"<postmaster>", e(errc::path_syntax), ""},
        mail_case{"<u@x.test >", e(errc::path_syntax), ""},
        mail_case{"<@a.test u@d.test>", e(errc::path_syntax), ""},
        mail_case{"<@a.test,u@d.test>", e(errc::path_syntax), ""},
        mail_case{"", e(errc::path_syntax), ""},
        // Local parts.
        mail_case{"<.u@x.test>", e(errc::local_part_syntax), ""},
        mail_case{"<u.@x.test>", e(errc::local_part_syntax), ""},
        mail_case{"<u..v@x.test>", e(errc::local_part_syntax), ""},
        mail_case{"<@x.test>", e(errc::path_syntax), ""},
        mail_case{"<u v@x.test>", e(errc::path_syntax), ""},
        mail_case{"<\"unterminated@x.test>", e(errc::local_part_syntax), ""},
        mail_case{"<\"a\tb\"@x.test>", e(errc::local_part_syntax), ""},
        mail_case{"<" + s65 + "@x.test>", e(errc::local_part_too_long), ""},
        // Domains.
        mail_case{"<u@-x.test>", e(errc::domain_syntax), ""},
        mail_case{"<u@x-.test>", e(errc::domain_syntax), ""},
        mail_case{"<u@x..test>", e(errc::domain_syntax), ""},
        mail_case{"<u@x.test.>", e(errc::domain_syntax), ""},
        mail_case{"<u@x_y.test>", e(errc::path_syntax), ""},
        mail_case{"<u@" + std::string(64, 'b') + ".test>", e(errc::domain_syntax), ""},
        mail_case{"<u@[256.0.0.1]>", e(errc::address_literal_syntax), ""},
        mail_case{"<u@[1.2.3]>", e(errc::address_literal_syntax), ""},
        mail_case{"<u@[1.2.3.4.5]>", e(errc::address_literal_syntax), ""},
        mail_case{"<u@[IPv6:2001:db8::g]>", e(errc::address_literal_syntax), ""},
        mail_case{"<u@[IPv6:fe80::1%eth0]>", e(errc::address_literal_syntax), ""},
        mail_case{"<u@[tag:foo]>", e(errc::address_literal_syntax), ""},
        // Found by fuzz_address: inet_pton stopped at the NUL and accepted "20::".
        mail_case{std::string("<u@[IPv6:20::\0\0:1]>", 19), e(errc::address_literal_syntax), ""},
        mail_case{"<u@[1.2.3.4>", e(errc::address_literal_syntax), ""},
        // Lengths: 4 labels of 63 + dots = 255 domain; path over 256.
        mail_case{"<u@" + label63 + "." + label63 + "." + label63 + "." + label63 + ">",
                  e(errc::path_too_long), ""},
        mail_case{"<u@" + label63 + "." + label63 + "." + label63 + "." + label63 + ".xx>",
                  e(errc::domain_too_long), ""},
        // UTF-8.
        mail_case{"<j\xc3\xb6rg@x.test>", e(errc::utf8_needs_smtputf8), ""},
        mail_case{"<u@b\xc3\xbc"
                  "cher.test>",
                  e(errc::utf8_needs_smtputf8), ""},
        mail_case{"<j\xc3rg@x.test> SMTPUTF8", e(errc::invalid_utf8), ""},
        mail_case{"<j\xc0\xafrg@x.test> SMTPUTF8", e(errc::invalid_utf8), ""},
        mail_case{"<j\xed\xa0\x80@x.test> SMTPUTF8", e(errc::invalid_utf8), ""},
        mail_case{"<j\xf4\x90\x80\x80@x.test> SMTPUTF8", e(errc::invalid_utf8), ""},
        mail_case{"<j\xff@x.test> SMTPUTF8", e(errc::invalid_utf8), ""},
        // Parameters.
        mail_case{"<u@x.test> FOO=bar", e(errc::unknown_parameter), ""},
        mail_case{"<u@x.test> AUTH=<>", e(errc::unknown_parameter), ""},
        mail_case{"<u@x.test> BODY=BINARYMIME", e(errc::binarymime_unsupported), ""},
        mail_case{"<u@x.test> BODY=9BIT", e(errc::body_syntax), ""},
        mail_case{"<u@x.test> BODY", e(errc::body_syntax), ""},
        mail_case{"<u@x.test> SIZE=", e(errc::parameter_syntax), ""},
        mail_case{"<u@x.test> SIZE=12a", e(errc::size_syntax), ""},
        mail_case{"<u@x.test> SIZE", e(errc::size_syntax), ""},
        mail_case{"<u@x.test> SIZE=99999999999999999999", e(errc::size_syntax), ""},
        mail_case{"<u@x.test> SIZE=1 SIZE=2", e(errc::duplicate_parameter), ""},
        mail_case{"<u@x.test> SMTPUTF8 SMTPUTF8", e(errc::duplicate_parameter), ""},
        mail_case{"<u@x.test> SMTPUTF8=yes", e(errc::smtputf8_syntax), ""},
        mail_case{"<u@x.test> -X=1", e(errc::parameter_syntax), ""},
        mail_case{"<u@x.test> X=a=b", e(errc::parameter_syntax), ""},
        mail_case{"<u@x.test> =1", e(errc::parameter_syntax), ""}));

TEST(mail_parameters, values) {
    auto r = parse_mail_parameters("SIZE=18446744073709551615 BODY=8BITMIME SMTPUTF8");
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->has_size);
    EXPECT_EQ(r->size, UINT64_MAX);
    EXPECT_EQ(r->body, mail::body_type::eight_bit_mime);
    EXPECT_TRUE(r->smtputf8);
    auto none = parse_mail_parameters("");
    ASSERT_TRUE(none.has_value());
    EXPECT_FALSE(none->has_size);
    EXPECT_EQ(none->body, mail::body_type::unspecified);
    EXPECT_FALSE(none->smtputf8);
    auto seven = parse_mail_parameters("BODY=7BIT");
    ASSERT_TRUE(seven.has_value());
    EXPECT_EQ(seven->body, mail::body_type::seven_bit);
}

struct rcpt_case {
    std::string arg;
    bool smtputf8;
    int error;
    std::string address;
    bool postmaster = false;
};
std::ostream& operator<<(std::ostream& os, const rcpt_case& c) {
    return os << printable(c.arg);
}

class rcpt_to_test : public ::testing::TestWithParam<rcpt_case> {};

TEST_P(rcpt_to_test, parses) {
    const auto& c = GetParam();
    auto r = parse_rcpt_to(c.arg, c.smtputf8);
    if (c.error == 0) {
        ASSERT_TRUE(r.has_value()) << r.error().message();
        EXPECT_EQ(r->forward_path.address, c.address);
        EXPECT_EQ(r->forward_path.postmaster, c.postmaster);
    } else {
        ASSERT_FALSE(r.has_value()) << "accepted: " << r->forward_path.address;
        EXPECT_EQ(r.error(), make_error_code(static_cast<errc>(c.error))) << r.error().message();
    }
}

INSTANTIATE_TEST_SUITE_P(
    table, rcpt_to_test,
    ::testing::Values(rcpt_case{"<a@b.test>", false, ok, "a@b.test"},
                      rcpt_case{"<Postmaster>", false, ok, "Postmaster", true},
                      rcpt_case{"<postmaster>", false, ok, "postmaster", true},
                      rcpt_case{"<@relay.test:a@b.test>", false, ok, "a@b.test"},
                      rcpt_case{"<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.test>", true,
                                ok, "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.test"},
                      rcpt_case{"<\xe7\x94\xa8@x.test>", false, e(errc::utf8_needs_smtputf8), ""},
                      rcpt_case{"<\xe7\x94@x.test>", true, e(errc::invalid_utf8), ""},
                      rcpt_case{"<>", false, e(errc::null_path_not_allowed), ""},
                      rcpt_case{"<postmaster> NOTIFY=NEVER", false, ok, "postmaster", true},
                      rcpt_case{"<a@b.test> ORCPT=rfc822;a@b.test", false, ok, "a@b.test"},
                      rcpt_case{"<a@b.test> NOTIFY=NEVER,DELAY", false, e(errc::notify_syntax), ""},
                      rcpt_case{"<a@b.test> NOTIFY=DELAY NOTIFY=DELAY", false,
                                e(errc::duplicate_parameter), ""},
                      rcpt_case{"<a@b.test> ORCPT=a@b.test", false, e(errc::orcpt_syntax), ""},
                      rcpt_case{"<a@b.test> FOO=1", false, e(errc::unknown_parameter), ""},
                      rcpt_case{"<a@b.test> =x", false, e(errc::parameter_syntax), ""},
                      rcpt_case{"<a@b.test>x", false, e(errc::path_syntax), ""},
                      rcpt_case{"a@b.test", false, e(errc::path_syntax), ""}));

TEST(domain_of, lower_cases_ascii_only) {
    EXPECT_EQ(domain_of("User@Example.TEST"), "example.test");
    EXPECT_EQ(domain_of("\"a@b\"@X.test"), "x.test");
    EXPECT_EQ(domain_of("u@B\xc3\x9c"
                        "CHER.test"),
              "b\xc3\x9c"
              "cher.test");
    EXPECT_EQ(domain_of("postmaster"), "");
    EXPECT_EQ(domain_of(""), "");
}

TEST(parse_path, rest_and_kinds) {
    std::string_view rest;
    auto p = parse_path("<a@b.test> SIZE=1", path_kind::forward, &rest);
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(rest, " SIZE=1");
    EXPECT_FALSE(p->utf8);
    auto n = parse_path("<>", path_kind::reverse, &rest);
    ASSERT_TRUE(n.has_value());
    EXPECT_TRUE(n->address.empty());
    EXPECT_EQ(parse_path("<>", path_kind::forward).error(),
              make_error_code(errc::null_path_not_allowed));
    auto u = parse_path("<\xc3\xa9@x.test>", path_kind::forward);
    ASSERT_TRUE(u.has_value());
    EXPECT_TRUE(u->utf8);
}

TEST(utf8, validity) {
    EXPECT_TRUE(is_valid_utf8(""));
    EXPECT_TRUE(is_valid_utf8("plain"));
    EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
    EXPECT_TRUE(is_valid_utf8("\xf4\x8f\xbf\xbf"));   // U+10FFFF
    EXPECT_FALSE(is_valid_utf8("\xc1\xbf"));          // overlong
    EXPECT_FALSE(is_valid_utf8("\xe0\x9f\xbf"));      // overlong
    EXPECT_FALSE(is_valid_utf8("\xf0\x8f\xbf\xbf"));  // overlong
    EXPECT_FALSE(is_valid_utf8("\xed\xbf\xbf"));      // surrogate
    EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
    EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
    EXPECT_FALSE(is_valid_utf8("\x80"));              // lone continuation
}

}  // namespace
}  // namespace ringmail::smtp
