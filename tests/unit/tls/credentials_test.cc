#include "ringmail/tls/credentials.h"

#include "ringmail/tls/errc.h"

#include <gtest/gtest.h>

#include "test_link.h"
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace ringmail::tls {
namespace {

using test::data;

struct name_case {
    const char* pattern;
    const char* host;
    bool matches;
};

TEST(tls_names, wildcard_covers_one_label) {
    const name_case cases[] = {
        {"mx.example.test", "mx.example.test", true},
        {"mx.example.test", "mx2.example.test", false},
        {"*.example.test", "a.example.test", true},
        {"*.example.test", "example.test", false},
        {"*.example.test", "a.b.example.test", false},
        {"*.example.test", ".example.test", false},
        {"*.example.test", "aexample.test", false},
        {"*", "a", false},
        {"", "a", false},
    };
    for (const auto& c : cases)
        EXPECT_EQ(name_matches(c.pattern, c.host), c.matches) << c.pattern << " vs " << c.host;
}

TEST(tls_credentials, loads_names_and_selects_by_sni) {
    auto creds = test::load_credentials();
    ASSERT_TRUE(creds);
    ASSERT_EQ(creds->entries().size(), 2u);
    EXPECT_EQ(creds->entries()[0].names,
              (std::vector<std::string>{"mx.example.test", "*.example.test"}));
    EXPECT_EQ(creds->entries()[1].names, (std::vector<std::string>{"other.test"}));
    EXPECT_EQ(creds->select("other.test"), 1u);
    EXPECT_EQ(creds->select("OTHER.test."), 1u);
    EXPECT_EQ(creds->select("mx.example.test"), 0u);
    EXPECT_EQ(creds->select("x.example.test"), 0u);
    EXPECT_EQ(creds->select("unknown.test"), 0u);
    EXPECT_EQ(creds->select(""), 0u);
}

class tls_bad_credentials : public ::testing::Test {
  protected:
    void SetUp() override {
        _dir = ::testing::TempDir() + "tls_bad_credentials";
        std::filesystem::create_directories(_dir);
    }
    void TearDown() override { std::filesystem::remove_all(_dir); }
    std::string write(const char* name, const std::string& text) {
        const std::string path = _dir + "/" + name;
        std::ofstream(path) << text;
        return path;
    }
    result<std::shared_ptr<const server_credentials>> load(std::string cert, std::string key) {
        const cert_key_files pairs[] = {{std::move(cert), std::move(key)}};
        return server_credentials::load(pairs, _why);
    }
    std::string _dir;
    std::string _why;
};

TEST_F(tls_bad_credentials, missing_file_names_file_and_reason) {
    auto r = load(_dir + "/nope.pem", data("mx.key"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::file_unreadable);
    EXPECT_NE(_why.find("nope.pem"), std::string::npos) << _why;
    EXPECT_NE(_why.find("No such file"), std::string::npos) << _why;

    r = load(data("mx.pem"), _dir + "/nokey.pem");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::file_unreadable);
    EXPECT_NE(_why.find("nokey.pem"), std::string::npos) << _why;
}

TEST_F(tls_bad_credentials, garbage_certificate) {
    auto r = load(write("garbage.pem", "not a certificate\n"), data("mx.key"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::bad_certificate);
    EXPECT_NE(_why.find("garbage.pem: no valid PEM certificate"), std::string::npos) << _why;
}

TEST_F(tls_bad_credentials, garbage_key) {
    auto r = load(data("mx.pem"), write("garbage.key",
                                        "-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                        "-----END PRIVATE KEY-----\n"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::bad_private_key);
    EXPECT_NE(_why.find("garbage.key: no valid PEM private key"), std::string::npos) << _why;
}

TEST_F(tls_bad_credentials, key_of_another_certificate) {
    auto r = load(data("mx.pem"), data("other.key"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::key_mismatch);
    EXPECT_NE(_why.find("other.key: private key does not match"), std::string::npos) << _why;
    EXPECT_NE(_why.find("mx.pem"), std::string::npos) << _why;
}

TEST_F(tls_bad_credentials, no_pairs) {
    auto r = server_credentials::load({}, _why);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::no_certificates);
}

TEST(tls_client_context, bad_ca_file) {
    client_options o;
    o.system_ca = false;
    o.extra_ca_file = data("mx.key");
    std::string why;
    auto r = client_context::create(o, why);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::bad_ca_file);
    EXPECT_NE(why.find("mx.key"), std::string::npos) << why;
}

}  // namespace
}  // namespace ringmail::tls
