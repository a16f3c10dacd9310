#include "ringmail/tls/session.h"

#include <gtest/gtest.h>

#include "test_link.h"
#include <algorithm>
#include <random>
#include <string>

namespace ringmail::tls {
namespace {

using test::link;

class tls_session : public ::testing::Test {
  protected:
    void SetUp() override {
        _creds = test::load_credentials();
        _key = test::make_ticket_key();
        _server_ctx = test::make_server(_creds, _key);
        _client_ctx = test::make_client(test::trusting_test_ca());
        ASSERT_TRUE(_server_ctx && _client_ctx);
    }

    std::shared_ptr<const server_credentials> _creds;
    std::shared_ptr<const ticket_key> _key;
    std::shared_ptr<const server_context> _server_ctx;
    std::shared_ptr<const client_context> _client_ctx;
};

TEST_F(tls_session, handshake_tls13) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    EXPECT_TRUE(server.handshaking());
    link l{client, server};
    l.pump();
    ASSERT_TRUE(client.established()) << client.error();
    ASSERT_TRUE(server.established()) << server.error();
    EXPECT_EQ(client.version(), "TLSv1.3");
    EXPECT_EQ(server.version(), "TLSv1.3");
    EXPECT_EQ(server.cipher(), "TLS13-CHACHA20-POLY1305-SHA256");  // the server's preference
    EXPECT_EQ(client.cipher(), server.cipher());
    EXPECT_EQ(server.server_name(), "mx.example.test");
    EXPECT_FALSE(server.resumed());
    EXPECT_TRUE(client.verified()) << client.verify_error();
    EXPECT_TRUE(server.is_server());
    EXPECT_FALSE(client.is_server());
}

TEST_F(tls_session, handshake_tls12_when_client_caps_version) {
    auto o = test::trusting_test_ca();
    o.max_version = tls_version::tls1_2;
    auto ctx = test::make_client(o);
    session server(_server_ctx);
    session client(ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    ASSERT_TRUE(client.established()) << client.error();
    ASSERT_TRUE(server.established()) << server.error();
    EXPECT_EQ(server.version(), "TLSv1.2");
    EXPECT_EQ(server.cipher(), "ECDHE-ECDSA-CHACHA20-POLY1305");
    EXPECT_TRUE(client.verified());
}

TEST_F(tls_session, application_data_both_ways_in_random_pieces) {
    for (unsigned seed = 1; seed <= 20; ++seed) {
        std::mt19937 rng(seed);
        session server(_server_ctx);
        session client(_client_ctx, "mx.example.test");
        link l{client, server};
        l.splits = &rng;
        l.pump();
        ASSERT_TRUE(client.established() && server.established()) << seed;
        std::string to_server, to_client;
        for (int i = 0; i < 30; ++i) {
            std::string piece(std::uniform_int_distribution<std::size_t>(1, 5000)(rng),
                              static_cast<char>('a' + i % 26));
            ASSERT_EQ(client.write(piece), piece.size());
            to_server += piece;
            piece.assign(piece.size() / 2 + 1, static_cast<char>('A' + i % 26));
            ASSERT_EQ(server.write(piece), piece.size());
            to_client += piece;
            if (i % 3 == 0)
                l.pump();
        }
        l.pump();
        EXPECT_EQ(l.server_got, to_server) << seed;
        EXPECT_EQ(l.client_got, to_client) << seed;
        EXPECT_FALSE(client.failed() || server.failed()) << client.error() << server.error();
    }
}

TEST_F(tls_session, one_mebibyte_with_back_pressure) {
    session_limits small;
    small.max_output = 64 * 1024;
    small.max_read = 32 * 1024;
    session server(_server_ctx, small);
    session client(_client_ctx, "mx.example.test", nullptr, small);
    link l{client, server};
    l.pump();
    ASSERT_TRUE(client.established() && server.established());
    std::string payload(1024 * 1024, '\0');
    std::mt19937 rng(7);
    std::generate(payload.begin(), payload.end(), [&] { return static_cast<char>(rng()); });
    std::size_t sent = 0;
    bool saw_back_pressure = false;
    for (int i = 0; i < 10000 && sent < payload.size(); ++i) {
        const std::size_t n = client.write(std::string_view(payload).substr(sent));
        saw_back_pressure |= sent + n < payload.size();
        sent += n;
        l.pump();
    }
    EXPECT_TRUE(saw_back_pressure);
    ASSERT_EQ(sent, payload.size());
    l.pump();
    EXPECT_EQ(l.server_got.size(), payload.size());
    EXPECT_TRUE(l.server_got == payload);
}

TEST_F(tls_session, read_is_bounded_per_call) {
    session_limits small;
    small.max_read = 1000;
    session server(_server_ctx, small);
    session client(_client_ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    ASSERT_TRUE(server.established());
    ASSERT_EQ(client.write(std::string(5000, 'x')), 5000u);
    std::string out;
    client.take_output(out);
    server.feed(out);
    std::string got;
    EXPECT_EQ(server.read(got), 1000u);
    EXPECT_EQ(got.size(), 1000u);
    while (server.read(got) > 0) {
    }
    EXPECT_EQ(got, std::string(5000, 'x'));
}

struct sni_case {
    const char* host;
    const char* expect_cn;
    bool verified;
};

class tls_sni : public tls_session, public ::testing::WithParamInterface<tls_version> {};

TEST_P(tls_sni, picks_the_certificate) {
    auto options = test::trusting_test_ca(verify_mode::opportunistic);
    options.max_version = GetParam();
    auto opportunistic = test::make_client(options);
    const sni_case cases[] = {
        {"mx.example.test", "mx.example.test", true},
        {"other.test", "other.test", true},
        {"Other.Test", "other.test", true},
        {"a.example.test", "mx.example.test", true},  // wildcard
        {"unknown.test", "mx.example.test", false},   // default certificate
        {"a.b.example.test", "mx.example.test", false},
        {"127.0.0.1", "mx.example.test", false},  // no SNI for IP literals
    };
    for (const auto& c : cases) {
        session server(_server_ctx);
        session client(opportunistic, c.host);
        link l{client, server};
        l.pump();
        ASSERT_TRUE(client.established()) << c.host << ": " << client.error();
        EXPECT_EQ(server.version(), GetParam() == tls_version::tls1_2 ? "TLSv1.2" : "TLSv1.3");
        const auto names = client.peer_names();
        ASSERT_FALSE(names.empty()) << c.host;
        EXPECT_EQ(names.front(), c.expect_cn) << c.host;
        EXPECT_EQ(client.verified(), c.verified) << c.host << ": " << client.verify_error();
        if (!c.verified) {
            EXPECT_FALSE(client.verify_error().empty()) << c.host;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(versions, tls_sni,
                         ::testing::Values(tls_version::tls1_2, tls_version::tls1_3));

TEST_F(tls_session, wildcard_certificate_lists_its_alt_names) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    EXPECT_EQ(client.peer_names(),
              (std::vector<std::string>{"mx.example.test", "mx.example.test", "*.example.test"}));
}

// A full handshake against `first`, then a resumption attempt against `second`.
bool resumes(const std::shared_ptr<const client_context>& client_ctx,
             const std::shared_ptr<const server_context>& first,
             const std::shared_ptr<const server_context>& second) {
    saved_session saved;
    {
        session server(first);
        session client(client_ctx, "mx.example.test");
        link l{client, server};
        l.pump();
        EXPECT_TRUE(client.established()) << client.error();
        EXPECT_FALSE(client.resumed());
        // TLS 1.3 tickets follow the handshake; exchange data so the client has read it.
        client.write("ping");
        server.write("pong");
        l.pump();
        saved = client.save();
        EXPECT_TRUE(saved);
    }
    session server(second);
    session client(client_ctx, "mx.example.test", &saved);
    link l{client, server};
    l.pump();
    EXPECT_TRUE(client.established()) << client.error();
    EXPECT_TRUE(server.established()) << server.error();
    EXPECT_EQ(client.resumed(), server.resumed());
    client.write("after");
    l.pump();
    EXPECT_EQ(l.server_got, "after");
    return server.resumed();
}

TEST_F(tls_session, resumes_on_another_context_with_the_same_ticket_key) {
    auto other_shard = test::make_server(_creds, _key);
    EXPECT_TRUE(resumes(_client_ctx, _server_ctx, other_shard));
    EXPECT_TRUE(resumes(_client_ctx, _server_ctx, _server_ctx));
}

TEST_F(tls_session, resumes_tls12_on_another_context) {
    auto o = test::trusting_test_ca();
    o.max_version = tls_version::tls1_2;
    auto client12 = test::make_client(o);
    auto other_shard = test::make_server(_creds, _key);
    EXPECT_TRUE(resumes(client12, _server_ctx, other_shard));
}

TEST_F(tls_session, resumes_after_reload) {
    auto reloaded = test::make_server(test::load_credentials(), _key);
    EXPECT_TRUE(resumes(_client_ctx, _server_ctx, reloaded));
}

TEST_F(tls_session, another_ticket_key_means_full_handshake) {
    auto stranger = test::make_server(_creds, test::make_ticket_key());
    EXPECT_FALSE(resumes(_client_ctx, _server_ctx, stranger));
}

TEST_F(tls_session, session_started_before_reload_keeps_working) {
    auto current = _server_ctx;  // what the shard would hold
    session server(current);
    session client(_client_ctx, "other.test");
    client.step();  // ClientHello in flight
    // Reload: the shard swaps in a context built from fresh credentials and drops the old one.
    current = test::make_server(test::load_credentials(), _key);
    _server_ctx.reset();
    link l{client, server};
    l.pump();
    ASSERT_TRUE(server.established()) << server.error();
    EXPECT_EQ(client.peer_names().front(), "other.test");
    client.write("hello");
    server.write("world");
    l.pump();
    EXPECT_EQ(l.server_got, "hello");
    EXPECT_EQ(l.client_got, "world");
    // And a new session on the reloaded context works too.
    session server2(current);
    session client2(_client_ctx, "mx.example.test");
    link l2{client2, server2};
    l2.pump();
    EXPECT_TRUE(server2.established()) << server2.error();
}

TEST_F(tls_session, verify_fails_for_unknown_ca) {
    client_options o;
    o.mode = verify_mode::verify;  // system store only: the test CA is unknown
    auto ctx = test::make_client(o);
    session server(_server_ctx);
    session client(ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    EXPECT_TRUE(client.failed());
    EXPECT_EQ(client.error_code(), errc::handshake_failed);
    EXPECT_NE(client.error().find("handshake failed"), std::string::npos) << client.error();
    EXPECT_NE(client.error().find("certificate not verified"), std::string::npos);
    EXPECT_TRUE(server.failed());  // the client's alert
    EXPECT_FALSE(server.established());
}

TEST_F(tls_session, opportunistic_goes_on_with_unknown_ca) {
    client_options o;
    o.mode = verify_mode::opportunistic;
    auto ctx = test::make_client(o);
    session server(_server_ctx);
    session client(ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    ASSERT_TRUE(client.established()) << client.error();
    EXPECT_FALSE(client.verified());
    EXPECT_FALSE(client.verify_error().empty());
}

TEST_F(tls_session, verify_fails_on_host_name_mismatch) {
    session server(_server_ctx);
    session client(_client_ctx, "wrong.example.org");
    link l{client, server};
    l.pump();
    EXPECT_TRUE(client.failed());
    EXPECT_NE(client.error().find("handshake failed"), std::string::npos) << client.error();
    EXPECT_NE(client.error().find("name mismatch"), std::string::npos) << client.error();
}

TEST_F(tls_session, garbage_instead_of_client_hello_fails) {
    const std::string garbage[] = {
        "EHLO example.test\r\n",
        std::string("\x16\x03\x01\x00\x30") + std::string(0x30, '\xff'),
        std::string("\x17\x03\x03\x00\x10") + std::string(0x10, 'x'),
        std::string("\x16\x03\x01\x00\x05hello", 10),
        std::string(5000, '\0'),
    };
    for (const auto& g : garbage) {
        session server(_server_ctx);
        server.feed(g);
        server.step();
        EXPECT_TRUE(server.failed()) << g.size();
        EXPECT_FALSE(server.error().empty());
        std::string out;
        server.take_output(out);  // an alert, or nothing: never a crash
    }
}

TEST_F(tls_session, truncated_client_hello_waits_then_fails_on_eof) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    client.step();
    std::string hello;
    client.take_output(hello);
    ASSERT_GT(hello.size(), 20u);
    server.feed(std::string_view(hello).substr(0, hello.size() / 2));
    server.step();
    EXPECT_TRUE(server.handshaking());
    server.on_eof();
    EXPECT_TRUE(server.failed());
    EXPECT_EQ(server.error_code(), errc::connection_closed);
    EXPECT_EQ(server.error(), "handshake failed: connection closed");
}

TEST_F(tls_session, close_notify_is_peer_closed) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    client.write("last words");
    client.close();
    EXPECT_EQ(client.write("more"), 0u);
    l.pump();
    EXPECT_EQ(l.server_got, "last words");
    EXPECT_TRUE(server.peer_closed());
    EXPECT_TRUE(server.close_notify_received());
    EXPECT_FALSE(server.failed()) << server.error();
    EXPECT_FALSE(client.peer_closed());
}

TEST_F(tls_session, eof_after_handshake_is_peer_closed_not_failure) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    server.on_eof();
    std::string got;
    EXPECT_EQ(server.read(got), 0u);
    EXPECT_TRUE(server.peer_closed());
    EXPECT_FALSE(server.close_notify_received());
    EXPECT_FALSE(server.failed()) << server.error();
}

TEST_F(tls_session, input_over_the_limit_fails) {
    session_limits small;
    small.max_input = 1000;
    session server(_server_ctx, small);
    server.feed(std::string(600, '\x16'));
    EXPECT_FALSE(server.failed());
    EXPECT_FALSE(server.input_full());
    server.feed(std::string(600, '\x16'));
    EXPECT_TRUE(server.failed());
    EXPECT_EQ(server.error_code(), errc::input_overflow);
}

TEST_F(tls_session, corrupted_record_after_handshake_fails) {
    session server(_server_ctx);
    session client(_client_ctx, "mx.example.test");
    link l{client, server};
    l.pump();
    client.write("hello");
    std::string out;
    client.take_output(out);
    out[out.size() - 3] ^= 0x55;
    server.feed(out);
    std::string got;
    server.read(got);
    EXPECT_TRUE(server.failed());
    EXPECT_EQ(server.error_code(), errc::protocol_error);
    EXPECT_EQ(server.error().rfind("read failed: ", 0), 0u) << server.error();
    EXPECT_TRUE(got.empty());
}

TEST_F(tls_session, write_before_handshake_takes_nothing) {
    session client(_client_ctx, "mx.example.test");
    EXPECT_EQ(client.write("early"), 0u);
    std::string got;
    EXPECT_EQ(client.read(got), 0u);  // produces the ClientHello, reads nothing
    EXPECT_TRUE(client.has_output());
}

}  // namespace
}  // namespace ringmail::tls
