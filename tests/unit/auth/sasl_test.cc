#include "ringmail/auth/sasl.h"

#include "ringmail/core/base64.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

namespace ringmail::auth {
namespace {

using namespace std::string_literals;

std::string b64(const std::string& s) {
    return core::base64_encode(s);
}

struct expect_result {
    sasl_step::kind what;
    std::string user;      // credentials
    std::string password;  // credentials
    unsigned code = 0;     // failure
    std::string enhanced;  // failure
};

expect_result creds(std::string user, std::string password) {
    return {sasl_step::kind::credentials, std::move(user), std::move(password), 0, {}};
}
expect_result failed(unsigned code, std::string enhanced) {
    return {sasl_step::kind::failure, {}, {}, code, std::move(enhanced)};
}

struct sasl_case {
    std::string name;
    mechanism mech;
    std::optional<std::string> initial;   // as sent on the AUTH line (already base64 or "=")
    std::vector<std::string> lines;       // client continuation lines
    std::vector<std::string> challenges;  // expected 334 texts, in order
    expect_result result;
};

const std::string user_challenge = "VXNlcm5hbWU6";
const std::string cram_challenge = "<1896.697170952@postoffice.reston.mci.net>";
const std::string cram_digest_hex = "b913a602c7eda7a495b4e6e7334d3890";
const std::string password_challenge = "UGFzc3dvcmQ6";

std::vector<sasl_case> cases() {
    const std::string u255(255, 'u');
    const std::string u256(256, 'u');
    const std::string p1024(1024, 'p');
    const std::string p1025(1025, 'p');
    return {
        // PLAIN (RFC 4616)
        {"plain_initial",
         mechanism::plain,
         b64("\0alice\0secret"s),
         {},
         {},
         creds("alice", "secret")},
        {"plain_authzid_same",
         mechanism::plain,
         b64("alice\0alice\0secret"s),
         {},
         {},
         creds("alice", "secret")},
        {"plain_authzid_other",
         mechanism::plain,
         b64("bob\0alice\0secret"s),
         {},
         {},
         failed(535, "5.7.8")},
        {"plain_after_empty_challenge",
         mechanism::plain,
         std::nullopt,
         {b64("\0alice\0secret"s)},
         {""},
         creds("alice", "secret")},
        {"plain_empty_initial", mechanism::plain, "=", {}, {}, failed(501, "5.5.2")},
        {"plain_bad_base64", mechanism::plain, "not base64!", {}, {}, failed(501, "5.5.2")},
        {"plain_unpadded_base64", mechanism::plain, "YWJjZA", {}, {}, failed(501, "5.5.2")},
        {"plain_bad_base64_after_challenge",
         mechanism::plain,
         std::nullopt,
         {"@@@@"},
         {""},
         failed(501, "5.5.2")},
        {"plain_no_nul", mechanism::plain, b64("alice"), {}, {}, failed(501, "5.5.2")},
        {"plain_one_nul", mechanism::plain, b64("\0alice"s), {}, {}, failed(501, "5.5.2")},
        {"plain_all_empty", mechanism::plain, b64("\0\0"s), {}, {}, failed(535, "5.7.8")},
        {"plain_empty_user", mechanism::plain, b64("\0\0secret"s), {}, {}, failed(535, "5.7.8")},
        {"plain_empty_password", mechanism::plain, b64("\0alice\0"s), {}, {}, failed(535, "5.7.8")},
        {"plain_nul_in_password",
         mechanism::plain,
         b64("\0alice\0se\0cret"s),
         {},
         {},
         failed(535, "5.7.8")},
        {"plain_user_255", mechanism::plain, b64("\0"s + u255 + "\0x"s), {}, {}, creds(u255, "x")},
        {"plain_user_256",
         mechanism::plain,
         b64("\0"s + u256 + "\0x"s),
         {},
         {},
         failed(535, "5.7.8")},
        {"plain_password_1024", mechanism::plain, b64("\0a\0"s + p1024), {}, {}, creds("a", p1024)},
        {"plain_password_1025",
         mechanism::plain,
         b64("\0a\0"s + p1025),
         {},
         {},
         failed(535, "5.7.8")},
        {"plain_longest_valid",
         mechanism::plain,
         b64(u255 + "\0"s + u255 + "\0"s + p1024),
         {},
         {},
         creds(u255, p1024)},
        {"plain_response_too_long",
         mechanism::plain,
         std::string(max_response_chars + 4, 'A'),
         {},
         {},
         failed(535, "5.7.8")},
        {"plain_cancel", mechanism::plain, std::nullopt, {"*"}, {""}, failed(501, "5.0.0")},
        {"plain_star_as_initial", mechanism::plain, "*", {}, {}, failed(501, "5.5.2")},
        // LOGIN
        {"login_full",
         mechanism::login,
         std::nullopt,
         {b64("alice"), b64("secret")},
         {user_challenge, password_challenge},
         creds("alice", "secret")},
        {"login_initial_user",
         mechanism::login,
         b64("alice"),
         {b64("secret")},
         {password_challenge},
         creds("alice", "secret")},
        {"login_empty_initial", mechanism::login, "=", {}, {}, failed(535, "5.7.8")},
        {"login_empty_user_line",
         mechanism::login,
         std::nullopt,
         {""},
         {user_challenge},
         failed(535, "5.7.8")},
        {"login_empty_password",
         mechanism::login,
         std::nullopt,
         {b64("alice"), ""},
         {user_challenge, password_challenge},
         failed(535, "5.7.8")},
        {"login_nul_in_user",
         mechanism::login,
         std::nullopt,
         {b64("al\0ice"s)},
         {user_challenge},
         failed(535, "5.7.8")},
        {"login_nul_in_password",
         mechanism::login,
         std::nullopt,
         {b64("alice"), b64("s\0"s)},
         {user_challenge, password_challenge},
         failed(535, "5.7.8")},
        {"login_user_256", mechanism::login, b64(u256), {}, {}, failed(535, "5.7.8")},
        {"login_user_255",
         mechanism::login,
         b64(u255),
         {b64("x")},
         {password_challenge},
         creds(u255, "x")},
        {"login_password_1025",
         mechanism::login,
         b64("a"),
         {b64(p1025)},
         {password_challenge},
         failed(535, "5.7.8")},
        {"login_password_1024",
         mechanism::login,
         b64("a"),
         {b64(p1024)},
         {password_challenge},
         creds("a", p1024)},
        {"login_cancel_user",
         mechanism::login,
         std::nullopt,
         {"*"},
         {user_challenge},
         failed(501, "5.0.0")},
        {"login_cancel_password",
         mechanism::login,
         std::nullopt,
         {b64("alice"), "*"},
         {user_challenge, password_challenge},
         failed(501, "5.0.0")},
        {"login_bad_base64_user", mechanism::login, "dXNlcg=", {}, {}, failed(501, "5.5.2")},
        // CRAM-MD5 (RFC 2195)
        {"cram_rfc_2195",
         mechanism::cram_md5,
         std::nullopt,
         {b64("tim " + cram_digest_hex)},
         {b64(cram_challenge)},
         creds("tim", cram_digest_hex)},
        {"cram_user_with_a_space",
         mechanism::cram_md5,
         std::nullopt,
         {b64("tim smith " + cram_digest_hex)},
         {b64(cram_challenge)},
         creds("tim smith", cram_digest_hex)},
        {"cram_initial_response", mechanism::cram_md5, b64("tim"), {}, {}, failed(501, "5.5.2")},
        {"cram_no_space",
         mechanism::cram_md5,
         std::nullopt,
         {b64("tim" + cram_digest_hex)},
         {b64(cram_challenge)},
         failed(501, "5.5.2")},
        {"cram_short_digest",
         mechanism::cram_md5,
         std::nullopt,
         {b64("tim " + cram_digest_hex.substr(1))},
         {b64(cram_challenge)},
         failed(501, "5.5.2")},
        {"cram_not_hex",
         mechanism::cram_md5,
         std::nullopt,
         {b64("tim " + std::string(32, 'g'))},
         {b64(cram_challenge)},
         failed(501, "5.5.2")},
        {"cram_empty_user",
         mechanism::cram_md5,
         std::nullopt,
         {b64(" " + cram_digest_hex)},
         {b64(cram_challenge)},
         failed(535, "5.7.8")},
        {"cram_cancel",
         mechanism::cram_md5,
         std::nullopt,
         {"*"},
         {b64(cram_challenge)},
         failed(501, "5.0.0")},
        {"login_bad_base64_password",
         mechanism::login,
         std::nullopt,
         {b64("alice"), "c2VjcmV0="},
         {user_challenge, password_challenge},
         failed(501, "5.5.2")},
    };
}

class sasl_table : public ::testing::TestWithParam<sasl_case> {};

TEST_P(sasl_table, exchange) {
    const sasl_case& c = GetParam();
    sasl_server server(c.mech, c.mech == mechanism::cram_md5 ? cram_challenge : std::string());
    std::optional<std::string_view> initial;
    if (c.initial)
        initial = *c.initial;
    sasl_step step = server.start(initial);
    std::vector<std::string> challenges;
    std::size_t next_line = 0;
    while (step.what == sasl_step::kind::challenge) {
        ASSERT_FALSE(server.finished());
        challenges.push_back(step.challenge);
        ASSERT_LT(next_line, c.lines.size()) << "server wants more than the case gives";
        step = server.respond(c.lines[next_line++]);
    }
    EXPECT_TRUE(server.finished());
    EXPECT_EQ(next_line, c.lines.size()) << "lines left over";
    EXPECT_EQ(challenges, c.challenges);
    ASSERT_EQ(step.what, c.result.what);
    if (step.what == sasl_step::kind::credentials) {
        EXPECT_EQ(step.creds.user, c.result.user);
        EXPECT_EQ(step.creds.password, c.result.password);
        EXPECT_EQ(step.creds.cram_challenge,
                  c.mech == mechanism::cram_md5 ? cram_challenge : std::string());
    } else {
        EXPECT_EQ(step.failure.code, c.result.code);
        EXPECT_EQ(step.failure.enhanced, c.result.enhanced);
        EXPECT_FALSE(step.failure.text.empty());
    }
}

INSTANTIATE_TEST_SUITE_P(auth, sasl_table, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(sasl, longest_valid_plain_fits_the_response_limit) {
    // authzid == authcid, both at their limit, and the longest password.
    const std::string user(max_user_octets, 'u');
    const std::string password(max_password_octets, 'p');
    const std::string encoded = b64(user + "\0"s + user + "\0"s + password);
    EXPECT_LE(encoded.size(), max_response_chars);
    sasl_server server(mechanism::plain);
    const sasl_step step = server.start(std::string_view(encoded));
    ASSERT_EQ(step.what, sasl_step::kind::credentials);
    EXPECT_EQ(step.creds.user, user);
}

TEST(sasl, cancel_and_failure_texts) {
    sasl_server server(mechanism::login);
    ASSERT_EQ(server.start(std::nullopt).what, sasl_step::kind::challenge);
    const sasl_step step = server.respond("*");
    EXPECT_EQ(step.failure.text, "Authentication cancelled");
}

TEST(sasl, parse_mechanism) {
    EXPECT_EQ(parse_mechanism("PLAIN"), mechanism::plain);
    EXPECT_EQ(parse_mechanism("plain"), mechanism::plain);
    EXPECT_EQ(parse_mechanism("Login"), mechanism::login);
    EXPECT_EQ(parse_mechanism("CRAM-MD5"), mechanism::cram_md5);
    EXPECT_EQ(parse_mechanism("cram-md5"), mechanism::cram_md5);
    EXPECT_EQ(parse_mechanism("DIGEST-MD5"), std::nullopt);
    EXPECT_EQ(mechanism_name(mechanism::cram_md5), "CRAM-MD5");
    EXPECT_EQ(parse_mechanism(""), std::nullopt);
    EXPECT_EQ(mechanism_name(mechanism::plain), "PLAIN");
    EXPECT_EQ(mechanism_name(mechanism::login), "LOGIN");
}

}  // namespace
}  // namespace ringmail::auth
