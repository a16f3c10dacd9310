// outbound::outbound_connection against the real reactor and a scripted SMTP server on
// loopback: a transaction and its QUIT, a refused connect, a refused greeting, a server that
// goes away after 354 and one that never answers the final dot, and the next transaction
// pipelined behind a message's data. Each failure is reported once
// (on_failed) before on_closed, and a running transaction gets transient outcomes.
#include "ringmail/outbound/outbound_connection.h"

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <functional>
#include <memory>
#include <netinet/in.h>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace ringmail::outbound {
namespace {

using namespace std::chrono_literals;

struct events final : link_handler {
    int ready = 0;
    std::vector<smtp::transaction_result> results;
    std::vector<smtp::server_reply> failures;
    int closed = 0;
    std::function<void(link&)> on_ready_hook;
    std::function<void(link&)> on_pipeline_hook;
    int offers = 0;

    void on_ready(link& c) override {
        ++ready;
        if (on_ready_hook)
            on_ready_hook(c);
    }
    void on_pipeline(link& c) override {
        ++offers;
        if (on_pipeline_hook)
            on_pipeline_hook(c);
    }
    void on_transaction(link&, const smtp::transaction_result& r) override { results.push_back(r); }
    void on_failed(link&, const smtp::server_reply& why) override {
        EXPECT_EQ(closed, 0) << "on_failed comes before on_closed";
        failures.push_back(why);
    }
    void on_closed(link&) override { ++closed; }
};

// A listening socket on 127.0.0.1 and the one connection it accepts, driven by the test.
struct server {
    int lfd = -1;
    int fd = -1;
    std::uint16_t port = 0;
    std::string in;

    server() {
        lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        EXPECT_EQ(::listen(lfd, 4), 0);
        socklen_t len = sizeof a;
        ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
    }
    ~server() {
        if (fd >= 0)
            ::close(fd);
        if (lfd >= 0)
            ::close(lfd);
    }
    void poll() {
        if (fd < 0)
            fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        char buf[8192];
        ssize_t k;
        while ((k = ::recv(fd, buf, sizeof buf, 0)) > 0)
            in.append(buf, static_cast<std::size_t>(k));
    }
    void say(std::string_view s) {
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
    }
    void reset() {
        if (fd >= 0) {
            linger l{1, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
            ::close(fd);
            fd = -1;
        }
    }
};

struct fixture {
    std::unique_ptr<core::reactor> r;
    std::unique_ptr<core::buffer_ring> buffers;
    events ev;
    outbound_settings settings;
    server srv;
    std::unique_ptr<outbound_connection> conn;

    fixture() {
        std::string why;
        auto rr = core::reactor::create({}, &why);
        EXPECT_TRUE(rr) << why;
        r = std::move(rr.value());
        auto b = core::buffer_ring::create(*r, 6, 64, 4096);
        EXPECT_TRUE(b);
        buffers = std::move(b.value());
        settings.client.helo_name = "client.test";
        settings.connect_timeout = 5s;
    }
    ~fixture() {
        if (conn && ev.closed == 0) {
            conn->stop(true);
            spin([&] { return ev.closed > 0; });
        }
    }

    void open(std::uint16_t port) {
        auto ep = core::parse_endpoint("127.0.0.1:" + std::to_string(port));
        ASSERT_TRUE(ep);
        conn = std::make_unique<outbound_connection>(
            ev, *r, *buffers, 1, outbound_target{*ep, "mx.test", "127.0.0.1"}, settings);
        conn->connect();
    }
    bool spin(const std::function<bool()>& done) {
        for (int i = 0; i < 300 && !done(); ++i) {
            r->run_once(20ms);
            srv.poll();
        }
        return done();
    }
    bool wait_for(std::string_view text) {
        return spin([&] { return srv.in.find(text) != std::string::npos; });
    }
    // Greeting and EHLO (PIPELINING offered) up to on_ready.
    void establish() {
        open(srv.port);
        ASSERT_TRUE(spin([&] { return srv.fd >= 0; }));
        srv.say("220 mx.test ESMTP\r\n");
        ASSERT_TRUE(wait_for("EHLO client.test\r\n"));
        srv.say("250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        ASSERT_TRUE(spin([&] { return ev.ready == 1; }));
        EXPECT_TRUE(conn->established());
        EXPECT_TRUE(conn->ready());
    }
};

struct message {
    std::vector<std::string> rcpts{"b@dest.test", "c@dest.test"};
    smtp::outbound_message m;
    message() {
        m.mail_from = "a@client.test";
        m.rcpts = rcpts;
        m.added_headers = "Received: by relay.test\r\n";
        m.body = "Subject: t\r\n\r\n..dot-stuffed\r\n";
        m.size = m.added_headers.size() + m.body.size();
    }
};

TEST(outbound_connection, runs_a_transaction_then_quits) {
    fixture f;
    f.establish();
    message msg;
    f.conn->start(msg.m);
    EXPECT_FALSE(f.conn->ready());
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    EXPECT_NE(f.srv.in.find("MAIL FROM:<a@client.test>"), std::string::npos);
    EXPECT_NE(f.srv.in.find("RCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\n"),
              std::string::npos);
    f.srv.say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    ASSERT_TRUE(f.wait_for("\r\n.\r\n"));
    EXPECT_NE(f.srv.in.find("Received: by relay.test\r\nSubject: t\r\n\r\n..dot-stuffed\r\n.\r\n"),
              std::string::npos)
        << "the body goes as it is, already in transmission form";
    f.srv.say("250 2.0.0 queued\r\n");
    ASSERT_TRUE(f.spin([&] { return f.ev.results.size() == 1; }));
    const auto& r = f.ev.results[0];
    EXPECT_TRUE(r.delivered(0));
    EXPECT_TRUE(r.permanent(1));
    EXPECT_EQ(r.data.code, 250);
    EXPECT_EQ(f.conn->transactions(), 1u);
    EXPECT_TRUE(f.spin([&] { return f.ev.ready == 2; })) << "idle again after the transaction";

    f.srv.in.clear();
    f.conn->stop(false);
    ASSERT_TRUE(f.wait_for("QUIT\r\n"));
    f.srv.say("221 bye\r\n");
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    EXPECT_TRUE(f.ev.failures.empty());
    EXPECT_TRUE(f.conn->finished());
}

TEST(outbound_connection, the_next_transaction_follows_the_dot_before_its_reply) {
    fixture f;
    f.establish();
    message one;
    message two;
    two.rcpts = {"n@dest.test"};
    two.m.rcpts = two.rcpts;
    two.m.mail_from = "second@client.test";
    int started = 0;
    f.ev.on_pipeline_hook = [&](link& c) {
        if (started++ == 0)
            c.start(two.m);
    };
    f.conn->start(one.m);
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    EXPECT_EQ(f.ev.offers, 0);  // no data queued yet
    f.srv.in.clear();
    f.srv.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    // The server holds back its reply to the dot, and still gets the next MAIL: it left with
    // the data.
    ASSERT_TRUE(f.wait_for("RCPT TO:<n@dest.test>\r\nDATA\r\n"));
    EXPECT_EQ(f.ev.offers, 1);
    EXPECT_NE(f.srv.in.find("..dot-stuffed\r\n.\r\nMAIL FROM:<second@client.test>"),
              std::string::npos);
    EXPECT_TRUE(f.ev.results.empty());
    f.srv.in.clear();
    f.srv.say("250 2.0.0 first\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    ASSERT_TRUE(f.wait_for("\r\n.\r\n"));
    ASSERT_EQ(f.ev.results.size(), 1u);
    EXPECT_EQ(f.ev.results[0].data.text, "first");
    EXPECT_EQ(f.ev.offers, 2);  // asked again for the second, declined
    EXPECT_FALSE(f.conn->ready());
    EXPECT_EQ(f.ev.ready, 1);
    f.srv.say("250 2.0.0 second\r\n");
    ASSERT_TRUE(f.spin([&] { return f.ev.ready == 2; }));
    ASSERT_EQ(f.ev.results.size(), 2u);
    EXPECT_EQ(f.ev.results[1].data.text, "second");
    EXPECT_TRUE(f.ev.results[1].delivered(0));
    EXPECT_EQ(f.conn->transactions(), 2u);
    EXPECT_TRUE(f.conn->ready());
}

TEST(outbound_connection, a_server_gone_with_two_transactions_gives_both_outcomes) {
    fixture f;
    f.establish();
    message one;
    message two;
    f.ev.on_pipeline_hook = [&](link& c) {
        if (f.ev.offers == 1)
            c.start(two.m);
    };
    f.conn->start(one.m);
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    f.srv.in.clear();
    f.srv.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    f.srv.reset();
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    ASSERT_EQ(f.ev.results.size(), 2u);
    for (const auto& r : f.ev.results)
        EXPECT_TRUE(r.temporary(0) && r.temporary(1));
    EXPECT_EQ(f.ev.failures.size(), 1u);
}

TEST(outbound_connection, a_refused_connect_fails_once_then_closes) {
    fixture f;
    const std::uint16_t dead = f.srv.port;
    ::close(f.srv.lfd);  // nothing listens there any more
    f.srv.lfd = -1;
    f.open(dead);
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    ASSERT_EQ(f.ev.failures.size(), 1u);
    EXPECT_EQ(f.ev.failures[0].code, 421);
    EXPECT_EQ(f.ev.failures[0].enhanced, "4.4.1");
    EXPECT_FALSE(f.conn->established());
    EXPECT_EQ(f.ev.ready, 0);
}

TEST(outbound_connection, a_refused_greeting_fails_the_session) {
    fixture f;
    f.open(f.srv.port);
    ASSERT_TRUE(f.spin([&] { return f.srv.fd >= 0; }));
    f.srv.say("554 5.7.1 go away\r\n");
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    ASSERT_EQ(f.ev.failures.size(), 1u);
    EXPECT_EQ(f.ev.failures[0].code, 554);
    EXPECT_FALSE(f.conn->established());
    EXPECT_EQ(f.ev.ready, 0);
}

TEST(outbound_connection, a_server_gone_after_354_leaves_transient_outcomes) {
    fixture f;
    f.establish();
    message msg;
    f.conn->start(msg.m);
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    f.srv.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    ASSERT_TRUE(f.wait_for("\r\n.\r\n"));
    f.srv.reset();
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    ASSERT_EQ(f.ev.results.size(), 1u);
    EXPECT_TRUE(f.ev.results[0].temporary(0));
    EXPECT_TRUE(f.ev.results[0].temporary(1));
    EXPECT_FALSE(f.ev.results[0].accepted_any);
    EXPECT_EQ(f.ev.failures.size(), 1u);
}

TEST(outbound_connection, no_answer_to_the_dot_times_out_as_transient) {
    fixture f;
    f.settings.client.data_term_timeout = 1s;
    f.establish();
    message msg;
    f.conn->start(msg.m);
    ASSERT_TRUE(f.wait_for("DATA\r\n"));
    f.srv.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    ASSERT_TRUE(f.wait_for("\r\n.\r\n"));
    ASSERT_TRUE(f.spin([&] { return f.ev.closed == 1; }));
    ASSERT_EQ(f.ev.results.size(), 1u);
    EXPECT_TRUE(f.ev.results[0].temporary(0));
    EXPECT_EQ(f.ev.failures.size(), 1u);
    EXPECT_EQ(f.ev.failures[0].code / 100, 4);
}

}  // namespace
}  // namespace ringmail::outbound
