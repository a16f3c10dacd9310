#include "ringmail/auth/credential_store.h"

#include "ringmail/auth/errc.h"
#include "ringmail/auth/secret.h"
#include "ringmail/core/base64.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

namespace ringmail::auth {
namespace {

// libargon2 (argon2id_hash_encoded, t=1, m=64, p=1, salt "ringmail-salt-16") of "correct horse".
const std::string argon2_kat =
    "$argon2id$v=19$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg$"
    "3mIdT4hnB+2tXJLBvQRWrdmC2z/FYqqp9PG43a1rk5c";
// Python: hashlib.pbkdf2_hmac('sha256', b'correct horse', b'ringmail-salt-16', 1000).
const std::string pbkdf2_kat =
    "$pbkdf2-sha256$i=1000$cmluZ21haWwtc2FsdC0xNg==$u6pUMJTsaWmUqjPSK5f4i1Km/J0G3nRSjW5P7IG124c=";
// RFC 7914 section 11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1, dkLen=64) and
// (P="Password", S="NaCl", c=80000, dkLen=64).
const std::string rfc7914_1 =
    "$pbkdf2-sha256$i=1$c2FsdA==$VawEblbjCJ/sFpHCJUS2BflBhSFt3gRl5oudV8INrLxJypzM8Xm2RZkWZLOdd+"
    "8xfHG4RbHjC9UJESBB06GXgw==";
const std::string rfc7914_2 =
    "$pbkdf2-sha256$i=80000$TmFDbA==$TdzY9guYviGDDO5e8icB+WQaRBjQTAQUrv8Ih2s0q1ah1CWhIlgzVJrbhBtR"
    "ybMXaicr3ruh0HhHj2Kzl/M8jQ==";

credential_store parse_ok(const std::string& text) {
    loaded_users l = parse_users(text, "users");
    EXPECT_TRUE(l.ok()) << l.error;
    return l.ok() ? std::move(*l.store) : credential_store{};
}

TEST(credential_store, parses_good_lines_comments_and_blank_lines) {
    const credential_store s = parse_ok(
        "# users of the relay\n"
        "\n"
        "   \t\n"
        "  # indented comment\n"
        "alice:" +
        argon2_kat +
        "\n"
        "bob:" +
        pbkdf2_kat +
        "\r\n"
        "carol@example.test:" +
        rfc7914_1);  // no final newline
    EXPECT_EQ(s.size(), 3u);
    EXPECT_TRUE(s.contains("alice"));
    EXPECT_TRUE(s.contains("bob"));
    EXPECT_TRUE(s.contains("carol@example.test"));
    EXPECT_FALSE(s.contains("dave"));
}

TEST(credential_store, empty_file_is_an_empty_store) {
    const credential_store s = parse_ok("");
    EXPECT_EQ(s.size(), 0u);
    EXPECT_EQ(s.verify("alice", "x"), verdict::fail);
}

struct bad_case {
    std::string name;
    std::string text;
    std::string error;  // expected substring, "users:LINE: ..."
};

class bad_users : public ::testing::TestWithParam<bad_case> {};

TEST_P(bad_users, reports_file_line_and_reason_without_the_hash) {
    const bad_case& c = GetParam();
    const loaded_users l = parse_users(c.text, "users");
    ASSERT_FALSE(l.ok());
    EXPECT_NE(l.error.find(c.error), std::string::npos) << l.error;
    // The hash (or its salt) never shows up in an error.
    EXPECT_EQ(l.error.find("cmluZ21haWwtc2FsdC0xNg"), std::string::npos) << l.error;
    EXPECT_EQ(l.error.find("3mIdT4hn"), std::string::npos) << l.error;
}

INSTANTIATE_TEST_SUITE_P(
    auth, bad_users,
    ::testing::ValuesIn(std::vector<bad_case>{
        {"no_colon", "# c\nalice\n", "users:2: expected user:hash"},
        {"empty_user", ":" + argon2_kat, "users:1: empty user name"},
        {"space_in_user", "al ice:" + argon2_kat, "users:1: user \"al ice\": name contains"},
        {"tab_in_user", "al\tice:" + argon2_kat, "users:1: user \"al\\x09ice\": name contains"},
        {"long_user", std::string(256, 'u') + ":" + argon2_kat, "longer than 255 octets"},
        {"empty_hash", "alice:", "users:1: user \"alice\": unknown hash scheme"},
        {"unknown_scheme", "alice:$1$abc$def", "unknown hash scheme"},
        {"trailing_space", "alice:" + argon2_kat + " ", "hash contains whitespace"},
        {"argon2_version", "alice:$argon2id$v=16$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg$3mIdT4hn",
         "unsupported argon2id version"},
        {"argon2_missing_field", "alice:$argon2id$v=19$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg",
         "malformed argon2id hash"},
        {"argon2_t_zero",
         "alice:$argon2id$v=19$m=64,t=0,p=1$cmluZ21haWwtc2FsdC0xNg$"
         "3mIdT4hnB+2tXJLBvQRWrdmC2z/FYqqp9PG43a1rk5c",
         "argon2id parameters out of range"},
        {"argon2_params_order",
         "alice:$argon2id$v=19$t=1,m=64,p=1$cmluZ21haWwtc2FsdC0xNg$"
         "3mIdT4hnB+2tXJLBvQRWrdmC2z/FYqqp9PG43a1rk5c",
         "argon2id parameters out of range"},
        {"argon2_padded",
         "alice:$argon2id$v=19$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg==$"
         "3mIdT4hnB+2tXJLBvQRWrdmC2z/FYqqp9PG43a1rk5c",
         "not unpadded base64"},
        {"argon2_short_hash", "alice:$argon2id$v=19$m=64,t=1,p=1$cmluZ21haWwtc2FsdC0xNg$3mIdT4hn",
         "hash length out of range"},
        {"pbkdf2_zero_iterations", "alice:$pbkdf2-sha256$i=0$c2FsdA==$" + std::string(44, 'A'),
         "iterations out of range"},
        {"pbkdf2_leading_zero", "alice:$pbkdf2-sha256$i=01$c2FsdA==$" + std::string(44, 'A'),
         "iterations out of range"},
        {"pbkdf2_unpadded", "alice:$pbkdf2-sha256$i=1000$c2FsdA$" + std::string(44, 'A'),
         "not padded base64"},
        {"pbkdf2_short_hash", "alice:$pbkdf2-sha256$i=1000$c2FsdA==$AAAA", "hash length"},
        {"pbkdf2_fields", "alice:$pbkdf2-sha256$1000$c2FsdA==$" + std::string(44, 'A'),
         "iterations out of range"},
        {"duplicate", "alice:" + argon2_kat + "\n# x\nalice:" + pbkdf2_kat,
         "users:3: user \"alice\": duplicate (first defined on line 1)"},
    }),
    [](const auto& info) { return info.param.name; });

TEST(credential_store, reports_every_bad_line_at_once) {
    const loaded_users l =
        parse_users("alice\nbob:" + argon2_kat + "\n:x\ncarol:$x$\n", "/etc/ringmail/users");
    ASSERT_FALSE(l.ok());
    EXPECT_EQ(l.error,
              "/etc/ringmail/users:1: expected user:hash\n"
              "/etc/ringmail/users:3: empty user name\n"
              "/etc/ringmail/users:4: user \"carol\": unknown hash scheme (expected $argon2id$, "
              "$pbkdf2-sha256$ or {CRAM-MD5})");
}

TEST(credential_store, load_users_file_reads_and_names_unreadable_files) {
    const loaded_users missing = load_users_file("/nonexistent/ringmail-users");
    ASSERT_FALSE(missing.ok());
    EXPECT_NE(missing.error.find("/nonexistent/ringmail-users: cannot open"), std::string::npos);

    const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                       ("ringmail-users-test-" + std::to_string(::getpid()));
    {
        std::FILE* f = std::fopen(path.c_str(), "w");
        ASSERT_NE(f, nullptr);
        std::fputs(("alice:" + argon2_kat + "\nbroken\n").c_str(), f);
        std::fclose(f);
    }
    const loaded_users bad = load_users_file(path);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error, path.string() + ":2: expected user:hash");
    {
        std::FILE* f = std::fopen(path.c_str(), "w");
        std::fputs(("alice:" + argon2_kat + "\n").c_str(), f);
        std::fclose(f);
    }
    const loaded_users good = load_users_file(path);
    std::filesystem::remove(path);
    ASSERT_TRUE(good.ok()) << good.error;
    EXPECT_EQ(good.store->verify("alice", "correct horse"), verdict::ok);
}

struct verify_case {
    std::string name;
    std::string user;
    std::string password;
    verdict expected;
};

class store_verify : public ::testing::TestWithParam<verify_case> {
  protected:
    static const credential_store& store() {
        static const credential_store s =
            parse_ok("argon:" + argon2_kat + "\npbkdf:" + pbkdf2_kat + "\nrfc1:" + rfc7914_1 +
                     "\nrfc2:" + rfc7914_2 + "\n");
        return s;
    }
};

TEST_P(store_verify, verdict) {
    const verify_case& c = GetParam();
    EXPECT_EQ(store().verify(c.user, c.password), c.expected);
}

INSTANTIATE_TEST_SUITE_P(auth, store_verify,
                         ::testing::ValuesIn(std::vector<verify_case>{
                             {"argon2id_right", "argon", "correct horse", verdict::ok},
                             {"argon2id_wrong", "argon", "correct horsE", verdict::fail},
                             {"argon2id_prefix", "argon", "correct hors", verdict::fail},
                             {"argon2id_empty", "argon", "", verdict::fail},
                             {"pbkdf2_right", "pbkdf", "correct horse", verdict::ok},
                             {"pbkdf2_wrong", "pbkdf", "correct horse ", verdict::fail},
                             {"rfc7914_c1_right", "rfc1", "passwd", verdict::ok},
                             {"rfc7914_c1_wrong", "rfc1", "Passwd", verdict::fail},
                             {"rfc7914_c80000_right", "rfc2", "Password", verdict::ok},
                             {"unknown_user", "mallory", "correct horse", verdict::fail},
                             {"user_case_matters", "Argon", "correct horse", verdict::fail},
                         }),
                         [](const auto& info) { return info.param.name; });

TEST(hash_password, round_trips_both_schemes_with_fresh_salts) {
    argon2id_params fast;
    fast.m_cost_kib = 64;
    fast.t_cost = 1;
    const auto a1 = hash_password_argon2id("s3cret pass", fast);
    const auto a2 = hash_password_argon2id("s3cret pass", fast);
    const auto p1 = hash_password_pbkdf2_sha256("s3cret pass", 1000);
    const auto p2 = hash_password_pbkdf2_sha256("s3cret pass", 1000);
    ASSERT_TRUE(a1 && a2 && p1 && p2);
    EXPECT_NE(*a1, *a2);  // random salt
    EXPECT_NE(*p1, *p2);
    EXPECT_TRUE(a1->starts_with("$argon2id$v=19$m=64,t=1,p=1$")) << *a1;
    EXPECT_TRUE(p1->starts_with("$pbkdf2-sha256$i=1000$")) << *p1;
    for (const std::string* h : {&*a1, &*p1}) {
        std::string why;
        const auto parsed = password_hash::parse(*h, &why);
        ASSERT_TRUE(parsed) << why;
        EXPECT_EQ(parsed->verify("s3cret pass"), verdict::ok);
        EXPECT_EQ(parsed->verify("s3cret pasS"), verdict::fail);
    }
    // Salt: 16 octets; hash: 32 octets (padded base64 in our PBKDF2 format).
    const std::string_view rest =
        std::string_view(*p1).substr(std::string_view("$pbkdf2-sha256$i=1000$").size());
    const std::size_t dollar = rest.find('$');
    ASSERT_NE(dollar, std::string_view::npos);
    EXPECT_EQ(core::base64_decode(rest.substr(0, dollar))->size(), salt_octets);
    EXPECT_EQ(core::base64_decode(rest.substr(dollar + 1))->size(), hash_octets);
}

TEST(hash_password, defaults) {
    for (const scheme s : {scheme::argon2id, scheme::pbkdf2_sha256}) {
        const auto h = hash_password("default pass", s);
        ASSERT_TRUE(h) << h.error().message();
        if (s == scheme::argon2id)
            EXPECT_TRUE(h->starts_with("$argon2id$v=19$m=19456,t=2,p=1$")) << *h;
        else
            EXPECT_TRUE(h->starts_with("$pbkdf2-sha256$i=50000$")) << *h;
        const auto parsed = password_hash::parse(*h, nullptr);
        ASSERT_TRUE(parsed);
        EXPECT_EQ(parsed->kind(), s);
        EXPECT_EQ(parsed->verify("default pass"), verdict::ok);
    }
}

TEST(hash_password, refuses_empty_password_and_bad_parameters) {
    const auto empty = hash_password("", scheme::argon2id);
    ASSERT_FALSE(empty);
    EXPECT_EQ(empty.error(), errc::empty_password);
    EXPECT_EQ(hash_password_pbkdf2_sha256("x", 0).error(), errc::bad_option);
    argon2id_params bad;
    bad.t_cost = 0;
    EXPECT_EQ(hash_password_argon2id("x", bad).error(), errc::bad_option);
}

TEST(scheme, names) {
    EXPECT_EQ(parse_scheme("argon2id"), scheme::argon2id);
    EXPECT_EQ(parse_scheme("pbkdf2-sha256"), scheme::pbkdf2_sha256);
    EXPECT_EQ(parse_scheme("md5"), std::nullopt);
    EXPECT_EQ(scheme_name(scheme::pbkdf2_sha256), "pbkdf2-sha256");
}

TEST(user_name, syntax) {
    EXPECT_TRUE(valid_user_name("alice"));
    EXPECT_TRUE(valid_user_name("alice@example.test"));
    EXPECT_TRUE(valid_user_name(std::string(255, 'a')));
    EXPECT_FALSE(valid_user_name(std::string(256, 'a')));
    EXPECT_FALSE(valid_user_name(""));
    EXPECT_FALSE(valid_user_name("a:b"));
    EXPECT_FALSE(valid_user_name("a b"));
    EXPECT_FALSE(valid_user_name("a\x7f"));
    EXPECT_FALSE(valid_user_name(std::string("a\0b", 3)));
}

TEST(secret, constant_time_equal_and_wipe) {
    EXPECT_TRUE(constant_time_equal("abc", "abc"));
    EXPECT_FALSE(constant_time_equal("abc", "abd"));
    EXPECT_FALSE(constant_time_equal("abc", "ab"));
    EXPECT_TRUE(constant_time_equal("", ""));
    std::string s = "password";
    wipe(s);
    EXPECT_TRUE(s.empty());
}

TEST(credential_store, cram_md5_entries) {
    const std::string tim = *hash_password("tanstaaftanstaaf", scheme::cram_md5);
    EXPECT_TRUE(tim.starts_with("{CRAM-MD5}")) << tim;
    EXPECT_EQ(hash_password("", scheme::cram_md5).error(), errc::empty_password);
    const std::string ch = "<1896.697170952@postoffice.reston.mci.net>";
    const std::string answer = "b913a602c7eda7a495b4e6e7334d3890";

    const credential_store hashes_only = parse_ok("argon:" + argon2_kat + "\n");
    EXPECT_FALSE(hashes_only.has_cram());
    EXPECT_EQ(hashes_only.verify_cram("argon", ch, answer), verdict::fail);

    const credential_store s = parse_ok("tim:" + tim + "\nargon:" + argon2_kat + "\n");
    EXPECT_TRUE(s.has_cram());
    EXPECT_EQ(s.verify_cram("tim", ch, answer), verdict::ok);
    EXPECT_EQ(s.verify_cram("tim", ch + "x", answer), verdict::fail) << "another challenge";
    EXPECT_EQ(s.verify_cram("tim", ch, "b913a602c7eda7a495b4e6e7334d3891"), verdict::fail);
    EXPECT_EQ(s.verify_cram("mallory", ch, answer), verdict::fail);
    EXPECT_EQ(s.verify_cram("argon", ch, answer), verdict::fail)
        << "a slow hash cannot answer CRAM-MD5";
    // PLAIN and LOGIN work for a CRAM-MD5 user too.
    EXPECT_EQ(s.verify("tim", "tanstaaftanstaaf"), verdict::ok);
    EXPECT_EQ(s.verify("tim", "tanstaaftanstaag"), verdict::fail);

    const loaded_users bad = parse_users("tim:{CRAM-MD5}00\n", "users");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.error.find("users:1: user \"tim\": malformed {CRAM-MD5} entry"),
              std::string::npos)
        << bad.error;
    EXPECT_EQ(parse_scheme("cram-md5"), scheme::cram_md5);
    EXPECT_EQ(scheme_name(scheme::cram_md5), "cram-md5");
}

}  // namespace
}  // namespace ringmail::auth
