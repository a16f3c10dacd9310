#include "ringmail/smtp/received.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::smtp {
namespace {

mail::envelope sample() {
    mail::envelope env;
    env.helo_name = "client.example.test";
    env.client_address = "192.0.2.7";
    env.protocol = "ESMTP";
    env.mail_from = "a@example.test";
    env.rcpt_to = {"b@example.test"};
    return env;
}

// 2026-11-23 10:00:00 UTC, a Monday.
constexpr std::int64_t when = 1795428000;

TEST(received, one_recipient_has_for) {
    EXPECT_EQ(format_received(sample(), "mx.example.test", "Q1", 3, when),
              "Received: from client.example.test ([192.0.2.7])\r\n"
              "\tby mx.example.test (ringmail) with ESMTP id Q1 (shard 3)\r\n"
              "\tfor <b@example.test>; Mon, 23 Nov 2026 10:00:00 +0000\r\n");
}

TEST(received, several_recipients_no_for) {
    auto env = sample();
    env.rcpt_to.push_back("c@example.test");
    EXPECT_EQ(format_received(env, "mx", "Q2", 0, when),
              "Received: from client.example.test ([192.0.2.7])\r\n"
              "\tby mx (ringmail) with ESMTP id Q2 (shard 0);\r\n"
              "\tMon, 23 Nov 2026 10:00:00 +0000\r\n");
}

TEST(received, ipv6_literal_and_hostile_helo) {
    auto env = sample();
    env.client_address = "2001:db8::1";
    env.helo_name = "evil)(\\;x";
    env.protocol = "UTF8SMTP";
    std::string h = format_received(env, "mx", "Q3", 1, when);
    EXPECT_EQ(h.rfind("Received: from evil????x ([IPv6:2001:db8::1])\r\n", 0), 0u) << h;
    EXPECT_NE(h.find("with UTF8SMTP id Q3"), std::string::npos);
    env.helo_name.clear();
    env.protocol.clear();
    h = format_received(env, "mx", "Q4", 1, when);
    EXPECT_EQ(h.rfind("Received: from unknown (", 0), 0u) << h;
    EXPECT_NE(h.find("with SMTP id Q4"), std::string::npos);
}

TEST(received, every_line_ends_crlf_and_folds_with_tab) {
    std::string h = format_received(sample(), "mx", "Q", 0, when);
    ASSERT_GE(h.size(), 2u);
    EXPECT_EQ(h.substr(h.size() - 2), "\r\n");
    for (std::size_t i = 0; i + 2 < h.size(); ++i) {
        if (h[i] == '\n') {
            EXPECT_EQ(h[i - 1], '\r');
            EXPECT_EQ(h[i + 1], '\t');
        }
    }
}

TEST(received, tls_comment_and_protocol_never_the_auth_user) {
    struct tls_case {
        std::string protocol, tls_protocol, tls_cipher, user, expected_middle;
    };
    const std::vector<tls_case> cases = {
        {"ESMTPS", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "",
         "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
         "\tby mx (ringmail) with ESMTPS id Q (shard 0)\r\n"},
        {"ESMTPSA", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "alice@example.test",
         "\t(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256)\r\n"
         "\tby mx (ringmail) with ESMTPSA id Q (shard 0)\r\n"},
        {"ESMTPA", "", "", "bob", "\tby mx (ringmail) with ESMTPA id Q (shard 0)\r\n"},
        {"ESMTPS", "TLS)v1\r\n", "", "",
         "\t(using TLS?v1?"
         "?)\r\n"},  // sanitised
    };
    for (const auto& c : cases) {
        auto env = sample();
        env.protocol = c.protocol;
        env.tls_protocol = c.tls_protocol;
        env.tls_cipher = c.tls_cipher;
        env.auth_user = c.user;
        std::string h = format_received(env, "mx", "Q", 0, when);
        EXPECT_EQ(h.rfind("Received: from client.example.test ([192.0.2.7])\r\n", 0), 0u) << h;
        EXPECT_NE(h.find(c.expected_middle), std::string::npos) << h;
        if (!c.user.empty()) {
            EXPECT_EQ(h.find(c.user), std::string::npos) << h;
        }
    }
}

}  // namespace
}  // namespace ringmail::smtp
