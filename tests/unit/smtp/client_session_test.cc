#include "ringmail/smtp/client_session.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::smtp {
namespace {

using namespace std::chrono_literals;

client_config test_config() {
    client_config c;
    c.helo_name = "relay.example.test";
    c.greeting_timeout = 11s;
    c.ehlo_timeout = 12s;
    c.mail_timeout = 13s;
    c.rcpt_timeout = 14s;
    c.data_init_timeout = 15s;
    c.data_block_timeout = 16s;
    c.data_term_timeout = 17s;
    return c;
}

constexpr std::string_view ehlo_plain =
    "250-mx.example.test hello\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n";
constexpr std::string_view ehlo_pipelining =
    "250-mx.example.test hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";

struct harness {
    explicit harness(const client_config& config = test_config()) : s(config) {}
    client_session s;
    std::vector<std::string> rcpts{"b@example.org", "c@example.org"};
    std::string headers = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
    std::string body = "Subject: hi\r\n\r\n..dot\r\nbye\r\n";
    std::vector<std::string_view> last_pieces;

    outbound_message message() {
        outbound_message m;
        m.mail_from = "a@example.com";
        m.rcpts = rcpts;
        m.added_headers = headers;
        m.body = body;
        m.size = headers.size() + body.size();
        return m;
    }
    // Everything the session wants to send, as the socket would see it.
    std::string drain() {
        auto pieces = s.begin_send();
        last_pieces.assign(pieces.begin(), pieces.end());
        std::string out;
        for (std::string_view p : pieces)
            out += p;
        s.end_send();
        return out;
    }
    void connect(std::string_view ehlo_reply) {
        EXPECT_EQ(drain(), "");
        s.receive("220 mx.example.test ESMTP\r\n");
        EXPECT_EQ(drain(), "EHLO relay.example.test\r\n");
        s.receive(ehlo_reply);
        ASSERT_TRUE(s.ready());
        EXPECT_EQ(drain(), "");
    }
    std::string body_bytes() const { return headers + body + ".\r\n"; }
};

TEST(client_session, happy_path_lock_step_exact_bytes) {
    harness h;
    h.connect(ehlo_plain);
    EXPECT_FALSE(h.s.capabilities().pipelining);
    EXPECT_EQ(h.s.capabilities().max_size, 1000000u);
    h.s.start_transaction(h.message());
    EXPECT_FALSE(h.s.ready());
    std::string size = std::to_string(h.message().size);
    EXPECT_EQ(h.drain(), "MAIL FROM:<a@example.com> SIZE=" + size + "\r\n");
    EXPECT_EQ(h.s.current_timeout(), 13s);
    h.s.receive("250 2.1.0 ok\r\n");
    EXPECT_EQ(h.drain(), "RCPT TO:<b@example.org>\r\n");
    EXPECT_EQ(h.s.current_timeout(), 14s);
    h.s.receive("250 2.1.5 ok\r\n");
    EXPECT_EQ(h.drain(), "RCPT TO:<c@example.org>\r\n");
    h.s.receive("250 2.1.5 ok\r\n");
    EXPECT_EQ(h.drain(), "DATA\r\n");
    EXPECT_EQ(h.s.current_timeout(), 15s);
    h.s.receive("354 go ahead\r\n");
    auto pieces = h.s.begin_send();
    ASSERT_EQ(pieces.size(), 3u);
    EXPECT_EQ(h.s.current_timeout(), 16s);
    // The message is sent from the caller's memory, never copied.
    EXPECT_EQ(pieces[0].data(), h.headers.data());
    EXPECT_EQ(pieces[1].data(), h.body.data());
    EXPECT_EQ(pieces[1].size(), h.body.size());
    EXPECT_EQ(pieces[2], ".\r\n");
    h.s.end_send();
    EXPECT_EQ(h.s.current_timeout(), 17s);
    EXPECT_FALSE(h.s.take_result().has_value());
    h.s.receive("250 2.0.0 queued as X\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r.has_value());
    EXPECT_TRUE(r->accepted_any);
    EXPECT_TRUE(r->delivered(0));
    EXPECT_TRUE(r->delivered(1));
    EXPECT_EQ(r->data.code, 250);
    EXPECT_EQ(r->data.enhanced, "2.0.0");
    EXPECT_EQ(r->data.text, "queued as X");
    EXPECT_TRUE(h.s.ready());
    EXPECT_EQ(h.drain(), "");
    EXPECT_EQ(h.s.current_timeout(), 0s);
}

TEST(client_session, dsn_parameters_go_only_to_a_server_that_offers_dsn) {
    const std::vector<mail::rcpt_dsn> dsn{
        {mail::notify::success | mail::notify::failure, "rfc822;orig+2Bb@example.org"},
        {0, ""},
    };
    for (bool offered : {true, false}) {
        SCOPED_TRACE(offered);
        harness h;
        h.connect(offered ? "250-mx.example.test\r\n250-PIPELINING\r\n250 DSN\r\n"
                          : "250-mx.example.test\r\n250 PIPELINING\r\n");
        EXPECT_EQ(h.s.capabilities().dsn, offered);
        outbound_message m = h.message();
        m.ret = mail::dsn_ret::headers;
        m.envid = "QQ314159";
        m.rcpt_dsn = dsn;
        h.s.start_transaction(m);
        if (offered) {
            EXPECT_EQ(h.drain(),
                      "MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159\r\n"
                      "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE "
                      "ORCPT=rfc822;orig+2Bb@example.org\r\n"
                      "RCPT TO:<c@example.org>\r\nDATA\r\n");
        } else {
            EXPECT_EQ(h.drain(),
                      "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
                      "RCPT TO:<c@example.org>\r\nDATA\r\n");
        }
    }
}

TEST(client_session, happy_path_pipelining_one_flight) {
    harness h;
    h.connect(ehlo_pipelining);
    const auto& caps = h.s.capabilities();
    EXPECT_TRUE(caps.pipelining && caps.eight_bit_mime && caps.smtputf8 && caps.chunking &&
                caps.starttls && caps.enhanced_status_codes && caps.size);
    h.s.start_transaction(h.message());
    std::string size = std::to_string(h.message().size);
    EXPECT_EQ(h.drain(), "MAIL FROM:<a@example.com> SIZE=" + size +
                             "\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n");
    // All commands in one piece: one sendmsg, one packet.
    EXPECT_EQ(h.last_pieces.size(), 1u);
    h.s.receive("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n");
    EXPECT_EQ(h.drain(), h.body_bytes());
    h.s.receive("250 2.0.0 ok\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->delivered(0) && r->delivered(1));
    EXPECT_TRUE(h.s.ready());
}

TEST(client_session, several_transactions_on_one_session) {
    harness h;
    h.connect(ehlo_pipelining);
    for (int i = 0; i < 3; ++i) {
        h.rcpts = {"r" + std::to_string(i) + "@example.org"};
        h.s.start_transaction(h.message());
        EXPECT_NE(h.drain().find("RCPT TO:<" + h.rcpts[0] + ">\r\nDATA\r\n"), std::string::npos);
        h.s.receive("250 ok\r\n250 ok\r\n354 go\r\n");
        EXPECT_EQ(h.drain(), h.body_bytes());
        h.s.receive("250 ok\r\n");
        auto r = h.s.take_result();
        ASSERT_TRUE(r);
        EXPECT_TRUE(r->delivered(0));
        ASSERT_TRUE(h.s.ready());
    }
    h.s.quit();
    EXPECT_EQ(h.drain(), "QUIT\r\n");
    EXPECT_FALSE(h.s.closed());
    h.s.receive("221 bye\r\n");
    EXPECT_TRUE(h.s.closed());
    EXPECT_FALSE(h.s.failed());
}

// --- the next transaction behind the message data (RFC 2920 3.1) -------------------------

// A second message, with storage of its own (the session borrows it until its result).
struct second_message {
    std::vector<std::string> rcpts{"n@example.net"};
    std::string body = "Subject: two\r\n\r\nsecond\r\n";
    std::uint64_t size = 0;
    outbound_message message() {
        outbound_message m;
        m.mail_from = "s@example.com";
        m.rcpts = rcpts;
        m.body = body;
        m.size = size != 0 ? size : body.size();
        return m;
    }
};

// The first transaction up to its 354: its data is queued, not yet sent.
void first_until_354(harness& h) {
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    EXPECT_FALSE(h.s.can_pipeline());  // no data queued yet
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
}

TEST(client_session, next_transaction_rides_behind_the_data_in_one_flight) {
    harness h;
    second_message two;
    first_until_354(h);
    ASSERT_TRUE(h.s.can_pipeline());
    EXPECT_FALSE(h.s.ready());
    h.s.start_transaction(two.message());
    EXPECT_FALSE(h.s.can_pipeline());  // one waits behind the current one at most
    std::string size = std::to_string(two.body.size());
    EXPECT_EQ(h.drain(), h.body_bytes() + "MAIL FROM:<s@example.com> SIZE=" + size +
                             "\r\nRCPT TO:<n@example.net>\r\nDATA\r\n");
    // Headers and body borrowed, then the dot and the next flight as one owned piece.
    ASSERT_EQ(h.last_pieces.size(), 3u);
    EXPECT_EQ(h.last_pieces[1].data(), h.body.data());
    EXPECT_EQ(h.s.current_timeout(), 17s);  // the first's final reply is awaited
    // The server answers the dot and the next flight together.
    h.s.receive("250 2.0.0 first queued\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    auto r1 = h.s.take_result();
    ASSERT_TRUE(r1);
    EXPECT_EQ(r1->rcpts.size(), 2u);
    EXPECT_TRUE(r1->delivered(0) && r1->delivered(1));
    EXPECT_EQ(r1->data.text, "first queued");
    EXPECT_FALSE(h.s.take_result());
    EXPECT_TRUE(h.s.transaction_open());
    ASSERT_TRUE(h.s.can_pipeline());  // the second's data is queued now
    EXPECT_EQ(h.s.current_timeout(), 16s);
    EXPECT_EQ(h.drain(), two.body + ".\r\n");
    EXPECT_EQ(h.s.current_timeout(), 17s);
    h.s.receive("250 2.0.0 second queued\r\n");
    auto r2 = h.s.take_result();
    ASSERT_TRUE(r2);
    ASSERT_EQ(r2->rcpts.size(), 1u);
    EXPECT_TRUE(r2->delivered(0));
    EXPECT_EQ(r2->data.text, "second queued");
    EXPECT_FALSE(h.s.transaction_open());
    EXPECT_TRUE(h.s.ready());
    EXPECT_EQ(h.drain(), "");
}

TEST(client_session, no_next_transaction_in_lock_step) {
    client_config no_pipe = test_config();
    no_pipe.pipelining = false;
    // A peer without PIPELINING, and one with it that the configuration turns down.
    for (auto [config, ehlo] :
         {std::pair{test_config(), ehlo_plain}, std::pair{no_pipe, ehlo_pipelining}}) {
        harness h(config);
        h.connect(ehlo);
        h.s.start_transaction(h.message());
        for (int i = 0; i < 3; ++i) {  // MAIL, two RCPTs
            h.s.receive("250 ok\r\n");
            h.drain();
        }
        h.s.receive("354 go\r\n");
        EXPECT_FALSE(h.s.can_pipeline());
    }
}

struct second_case {
    const char* name;
    std::string_view replies;  // to the first's dot and the second's flight
    int first_code;            // the first's final reply
    int second_code;           // what decides the second's recipient
    std::string_view then;     // sent next
};
class second_refused : public testing::TestWithParam<second_case> {};

TEST_P(second_refused, each_transaction_gets_its_own_replies) {
    const second_case& c = GetParam();
    harness h;
    second_message two;
    first_until_354(h);
    h.s.start_transaction(two.message());
    h.drain();
    h.s.receive(c.replies);
    auto r1 = h.s.take_result();
    ASSERT_TRUE(r1) << c.name;
    EXPECT_EQ(r1->outcome(0).code, c.first_code) << c.name;
    auto r2 = h.s.take_result();
    ASSERT_TRUE(r2) << c.name;
    EXPECT_EQ(r2->outcome(0).code, c.second_code) << c.name;
    EXPECT_FALSE(r2->delivered(0));
    EXPECT_EQ(h.drain(), c.then) << c.name;
    EXPECT_FALSE(h.s.failed());
}

INSTANTIATE_TEST_SUITE_P(
    cases, second_refused,
    testing::Values(second_case{"mail_refused",
                                "250 ok\r\n550 5.7.1 no\r\n503 5.5.1 no rcpt\r\n554 no\r\n", 250,
                                550, "RSET\r\n"},
                    second_case{"rcpt_refused", "250 ok\r\n250 ok\r\n450 4.2.0 later\r\n554 no\r\n",
                                250, 450, "RSET\r\n"},
                    second_case{"first_failed_second_refused",
                                "554 5.6.0 content\r\n250 ok\r\n550 5.1.1 unknown\r\n554 no\r\n",
                                554, 550, "RSET\r\n"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(client_session, first_failed_second_goes_on) {
    harness h;
    second_message two;
    first_until_354(h);
    h.s.start_transaction(two.message());
    h.drain();
    h.s.receive("552 5.3.4 too big\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    auto r1 = h.s.take_result();
    ASSERT_TRUE(r1);
    EXPECT_TRUE(r1->permanent(0) && r1->permanent(1));
    EXPECT_EQ(h.drain(), two.body + ".\r\n");
    h.s.receive("250 ok\r\n");
    auto r2 = h.s.take_result();
    ASSERT_TRUE(r2);
    EXPECT_TRUE(r2->delivered(0));
    EXPECT_TRUE(h.s.ready());
}

TEST(client_session, second_refused_locally_waits_for_the_first_result) {
    harness h;
    second_message two;
    two.size = 2000000;  // over the peer's SIZE 1000000
    first_until_354(h);
    h.s.start_transaction(two.message());
    EXPECT_FALSE(h.s.take_result());       // the first comes out first
    EXPECT_EQ(h.drain(), h.body_bytes());  // nothing of the second goes out
    EXPECT_FALSE(h.s.can_pipeline());
    h.s.receive("250 ok\r\n");
    auto r1 = h.s.take_result();
    ASSERT_TRUE(r1);
    EXPECT_TRUE(r1->delivered(0));
    auto r2 = h.s.take_result();
    ASSERT_TRUE(r2);
    EXPECT_EQ(r2->outcome(0).code, 552);
    EXPECT_TRUE(h.s.ready());
    EXPECT_EQ(h.drain(), "");
}

TEST(client_session, failure_gives_both_transactions_transient_outcomes_in_order) {
    for (bool refused_locally : {false, true}) {
        SCOPED_TRACE(refused_locally);
        harness h;
        second_message two;
        if (refused_locally)
            two.size = 2000000;
        first_until_354(h);
        h.s.start_transaction(two.message());
        h.drain();
        h.s.on_connection_lost();
        EXPECT_TRUE(h.s.failed());
        auto r1 = h.s.take_result();
        ASSERT_TRUE(r1);
        EXPECT_EQ(r1->rcpts.size(), 2u);
        EXPECT_TRUE(r1->temporary(0) && r1->temporary(1));
        auto r2 = h.s.take_result();
        ASSERT_TRUE(r2);
        ASSERT_EQ(r2->rcpts.size(), 1u);
        EXPECT_EQ(r2->outcome(0).code, refused_locally ? 552 : 451);
        EXPECT_FALSE(h.s.take_result());
    }
    // A 421 after the first's dot: the second gets it too.
    harness h;
    second_message two;
    first_until_354(h);
    h.s.start_transaction(two.message());
    h.drain();
    h.s.receive("250 ok\r\n421 4.3.2 going down\r\n");
    auto r1 = h.s.take_result();
    ASSERT_TRUE(r1);
    EXPECT_TRUE(r1->delivered(0));
    auto r2 = h.s.take_result();
    ASSERT_TRUE(r2);
    EXPECT_EQ(r2->outcome(0).code, 421);
}

TEST(client_session, quit_after_both_pipelined_transactions) {
    harness h;
    second_message two;
    first_until_354(h);
    h.s.start_transaction(two.message());
    h.s.quit();
    h.drain();
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_FALSE(h.s.can_pipeline());  // quitting: nothing more is started
    EXPECT_EQ(h.drain(), two.body + ".\r\n");
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(h.drain(), "QUIT\r\n");
    EXPECT_TRUE(h.s.take_result());
    EXPECT_TRUE(h.s.take_result());
    h.s.receive("221 bye\r\n");
    EXPECT_TRUE(h.s.closed());
    EXPECT_FALSE(h.s.failed());
}

TEST(client_session, pipelined_replies_byte_by_byte) {
    const std::string replies =
        "250 a\r\n250 b\r\n250 c\r\n354 go\r\n250 one\r\n250 d\r\n250 e\r\n"
        "354 go\r\n250 two\r\n";
    harness h;
    second_message two;
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    std::vector<std::string> texts;
    bool second_started = false;
    for (char ch : replies) {
        h.s.receive(std::string_view(&ch, 1));
        if (!second_started && h.s.can_pipeline()) {
            h.s.start_transaction(two.message());
            second_started = true;
        }
        while (auto r = h.s.take_result())
            texts.push_back(r->data.text);
        h.drain();
    }
    EXPECT_TRUE(second_started);
    EXPECT_EQ(texts, (std::vector<std::string>{"one", "two"}));
    EXPECT_TRUE(h.s.ready());
}

struct mail_refused_case {
    bool pipelining;
    std::string_view reply;
    bool permanent;
};

class mail_refused : public testing::TestWithParam<mail_refused_case> {};

TEST_P(mail_refused, all_recipients_get_mail_reply_then_rset) {
    const auto& c = GetParam();
    harness h;
    h.connect(c.pipelining ? ehlo_pipelining : ehlo_plain);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive(c.reply);
    if (c.pipelining) {
        EXPECT_FALSE(h.s.take_result());
        h.s.receive("503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no valid recipients\r\n");
    }
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->accepted_any);
    for (std::size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(r->outcome(i).code, r->mail.code);
        EXPECT_EQ(r->permanent(i), c.permanent);
        EXPECT_EQ(r->temporary(i), !c.permanent);
    }
    EXPECT_EQ(h.drain(), "RSET\r\n");
    EXPECT_FALSE(h.s.ready());
    h.s.receive("250 2.0.0 reset\r\n");
    EXPECT_TRUE(h.s.ready());
}

INSTANTIATE_TEST_SUITE_P(codes, mail_refused,
                         testing::Values(mail_refused_case{false, "451 4.3.0 try later\r\n", false},
                                         mail_refused_case{false, "452 4.3.1 full\r\n", false},
                                         mail_refused_case{false, "550 5.7.1 no\r\n", true},
                                         mail_refused_case{false, "553 5.1.8 bad sender\r\n", true},
                                         mail_refused_case{true, "451 4.3.0 try later\r\n", false},
                                         mail_refused_case{true, "550 5.7.1 no\r\n", true}));

struct rcpt_case {
    bool pipelining;
    std::string_view rcpt0, rcpt1, rcpt2;
    bool delivered[3];
    bool permanent[3];
};

class some_rcpts_refused : public testing::TestWithParam<rcpt_case> {};

TEST_P(some_rcpts_refused, per_recipient_outcomes) {
    const auto& c = GetParam();
    harness h;
    h.rcpts = {"x@e.org", "y@e.org", "z@e.org"};
    h.connect(c.pipelining ? ehlo_pipelining : ehlo_plain);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n");
    h.s.receive(c.rcpt0);
    h.s.receive(c.rcpt1);
    h.s.receive(c.rcpt2);
    if (c.pipelining) {
        h.s.receive("354 go\r\n");
    } else {
        EXPECT_EQ(h.drain(),
                  "RCPT TO:<x@e.org>\r\nRCPT TO:<y@e.org>\r\nRCPT TO:<z@e.org>\r\nDATA\r\n");
        h.s.receive("354 go\r\n");
    }
    EXPECT_EQ(h.drain(), h.body_bytes());
    h.s.receive("250 2.0.0 ok\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->accepted_any);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(r->delivered(i), c.delivered[i]) << i;
        EXPECT_EQ(r->permanent(i), c.permanent[i]) << i;
        EXPECT_EQ(r->temporary(i), !c.delivered[i] && !c.permanent[i]) << i;
    }
    EXPECT_EQ(h.drain(), "");  // no RSET after a completed transaction
    EXPECT_TRUE(h.s.ready());
}

INSTANTIATE_TEST_SUITE_P(codes, some_rcpts_refused,
                         testing::Values(rcpt_case{false,
                                                   "250 ok\r\n",
                                                   "450 4.2.0 busy\r\n",
                                                   "550 5.1.1 unknown\r\n",
                                                   {true, false, false},
                                                   {false, false, true}},
                                         rcpt_case{true,
                                                   "250 ok\r\n",
                                                   "450 4.2.0 busy\r\n",
                                                   "550 5.1.1 unknown\r\n",
                                                   {true, false, false},
                                                   {false, false, true}},
                                         rcpt_case{true,
                                                   "553 5.1.3 bad\r\n",
                                                   "251 forwarded\r\n",
                                                   "452 4.5.3 too many\r\n",
                                                   {false, true, false},
                                                   {true, false, false}},
                                         rcpt_case{false,
                                                   "451 4.3.0 x\r\n",
                                                   "551 5.1.6 moved\r\n",
                                                   "250 ok\r\n",
                                                   {false, false, true},
                                                   {false, true, false}}));

TEST(client_session, all_rcpts_refused_lock_step_sends_rset_not_data) {
    harness h;
    h.connect(ehlo_plain);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(h.drain(), "RCPT TO:<b@example.org>\r\n");
    h.s.receive("550 5.1.1 unknown\r\n");
    EXPECT_EQ(h.drain(), "RCPT TO:<c@example.org>\r\n");
    h.s.receive("450 4.2.1 later\r\n");
    EXPECT_EQ(h.drain(), "RSET\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->accepted_any);
    EXPECT_EQ(r->data.code, 0);
    EXPECT_TRUE(r->permanent(0));
    EXPECT_TRUE(r->temporary(1));
    h.s.receive("250 ok\r\n");
    EXPECT_TRUE(h.s.ready());
}

TEST(client_session, all_rcpts_refused_pipelined_data_refused_then_rset) {
    harness h;
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n554 5.5.1 no valid recipients\r\n");
    EXPECT_EQ(h.drain(), "RSET\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->permanent(0) && r->permanent(1));
    EXPECT_EQ(r->outcome(0).text, "a");
}

TEST(client_session, pipelined_354_without_recipients_ends_with_lone_dot) {
    harness h;
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n354 go\r\n");
    EXPECT_EQ(h.drain(), ".\r\n");  // no body
    h.s.receive("554 5.5.1 no recipients\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->accepted_any);
    EXPECT_TRUE(h.s.ready());
}

struct data_case {
    std::string_view reply;
    bool permanent;
};
class after_data : public testing::TestWithParam<data_case> {};

TEST_P(after_data, final_reply_decides_every_accepted_recipient) {
    harness h;
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    h.drain();
    h.s.receive(GetParam().reply);
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->accepted_any);
    for (std::size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(r->permanent(i), GetParam().permanent);
        EXPECT_EQ(r->temporary(i), !GetParam().permanent);
    }
    EXPECT_TRUE(h.s.ready());
}

INSTANTIATE_TEST_SUITE_P(codes, after_data,
                         testing::Values(data_case{"451 4.3.0 later\r\n", false},
                                         data_case{"452 4.3.1 full\r\n", false},
                                         data_case{"550 5.7.1 spam\r\n", true},
                                         data_case{"552 5.3.4 too big\r\n", true},
                                         data_case{"554 5.6.0 bad content\r\n", true}));

TEST(client_session, data_command_refused_lock_step) {
    harness h;
    h.connect(ehlo_plain);
    h.s.start_transaction(h.message());
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n");
    h.drain();
    h.s.receive("451 4.3.0 not now\r\n");
    EXPECT_EQ(h.drain(), "RSET\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->temporary(0) && r->temporary(1));
    EXPECT_EQ(r->outcome(0).code, 451);
}

const std::string long_line = "250 " + std::string(2000, 'x');

struct broken_case {
    const char* name;
    std::string_view bytes;  // sent by the server after the pipelined flight
    int pending_code;        // what the pending recipients get
};
class broken_server : public testing::TestWithParam<broken_case> {};

TEST_P(broken_server, session_fails_and_pending_recipients_are_transient) {
    harness h;
    h.rcpts = {"x@e.org", "y@e.org", "z@e.org"};
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    // MAIL ok, first RCPT refused for good, then trouble.
    h.s.receive("250 ok\r\n550 5.1.1 unknown\r\n");
    h.s.receive(GetParam().bytes);
    EXPECT_TRUE(h.s.failed()) << GetParam().name;
    EXPECT_TRUE(h.s.closed());
    EXPECT_FALSE(h.s.ready());
    EXPECT_EQ(h.drain(), "");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->permanent(0));  // the answer received before stays
    EXPECT_TRUE(r->temporary(1));
    EXPECT_TRUE(r->temporary(2));
    EXPECT_EQ(r->outcome(1).code, GetParam().pending_code);
    EXPECT_EQ(h.s.last_error().code, GetParam().pending_code);
}

INSTANTIATE_TEST_SUITE_P(replies, broken_server,
                         testing::Values(broken_case{"421", "421 4.3.2 shutting down\r\n", 421},
                                         broken_case{"no code", "hello there\r\n", 451},
                                         broken_case{"short", "25\r\n", 451},
                                         broken_case{"four digits", "2500 ok\r\n", 451},
                                         broken_case{"code 6xx", "600 what\r\n", 451},
                                         broken_case{"mixed codes", "250-a\r\n251 b\r\n", 451},
                                         broken_case{"bad separator", "250+ok\r\n", 451},
                                         broken_case{"line too long", long_line, 451},
                                         broken_case{"2xx to DATA",
                                                     "250 ok\r\n250 ok\r\n250 ok\r\n", 451}),
                         [](const auto& info) {
                             std::string n = info.param.name;
                             for (char& c : n) {
                                 if (c == ' ')
                                     c = '_';
                             }
                             return n;
                         });

TEST(client_session, line_bound_holds_for_a_line_without_end) {
    harness h;
    h.connect(ehlo_plain);
    h.s.start_transaction(h.message());
    h.drain();
    std::string junk(reply_parser::max_line_length, '2');
    h.s.receive(junk);
    EXPECT_FALSE(h.s.failed());  // still within the bound
    h.s.receive("22");
    EXPECT_TRUE(h.s.failed());
}

TEST(client_session, greeting_failures) {
    for (std::string_view g : {"421 4.3.2 busy\r\n", "554 5.7.1 go away\r\n", "450 no\r\n"}) {
        harness h;
        h.s.receive(g);
        EXPECT_TRUE(h.s.failed()) << g;
        EXPECT_TRUE(h.s.closed());
        EXPECT_EQ(h.drain(), "");
        EXPECT_EQ(h.s.last_error().code, (g[0] - '0') * 100 + (g[1] - '0') * 10 + (g[2] - '0'));
    }
}

TEST(client_session, ehlo_refused_falls_back_to_helo_without_extensions) {
    harness h;
    h.s.receive("220 old\r\n");
    EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
    h.s.receive("502 5.5.1 what\r\n");
    EXPECT_EQ(h.drain(), "HELO relay.example.test\r\n");
    h.s.receive("250 old.example\r\n");
    ASSERT_TRUE(h.s.ready());
    EXPECT_FALSE(h.s.capabilities().pipelining);
    EXPECT_FALSE(h.s.capabilities().size);
    h.s.start_transaction(h.message());
    EXPECT_EQ(h.drain(), "MAIL FROM:<a@example.com>\r\n");  // no SIZE=
}

TEST(client_session, every_byte_split_gives_the_same_dialogue) {
    harness h;
    auto feed = [&](std::string_view bytes) {
        for (char c : bytes)
            h.s.receive(std::string_view(&c, 1));
    };
    feed("220-mx.example.test\r\n220 ESMTP\r\n");
    EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
    feed(ehlo_pipelining);
    ASSERT_TRUE(h.s.ready());
    EXPECT_TRUE(h.s.capabilities().pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    feed("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n");
    EXPECT_EQ(h.drain(), h.body_bytes());
    feed("250 2.0.0 ok\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->delivered(0));
    EXPECT_TRUE(r->permanent(1));
    EXPECT_EQ(r->rcpts[1].enhanced, "5.1.1");
    EXPECT_EQ(r->rcpts[1].text, "no such\nuser");
}

TEST(client_session, oversized_message_fails_locally_without_sending) {
    harness h;
    h.connect(ehlo_pipelining);
    outbound_message m = h.message();
    m.size = 1000001;
    h.s.start_transaction(m);
    EXPECT_EQ(h.drain(), "");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->mail.code, 552);
    EXPECT_EQ(r->mail.enhanced, "5.3.4");
    EXPECT_TRUE(r->permanent(0) && r->permanent(1));
    EXPECT_EQ(r->rcpts[1].code, 552);
    EXPECT_TRUE(h.s.ready());
}

TEST(client_session, smtputf8_to_a_peer_without_it_fails_locally) {
    harness h;
    h.connect(ehlo_plain);
    outbound_message m = h.message();
    m.smtputf8 = true;
    h.s.start_transaction(m);
    EXPECT_EQ(h.drain(), "");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome(0).code, 553);
    EXPECT_EQ(r->outcome(0).enhanced, "5.6.7");
    EXPECT_TRUE(h.s.ready());
}

TEST(client_session, mail_parameters) {
    {
        harness h;
        h.connect(ehlo_pipelining);
        outbound_message m = h.message();
        m.size = 42;
        m.eight_bit = true;
        m.smtputf8 = true;
        h.s.start_transaction(m);
        EXPECT_TRUE(
            h.drain().starts_with("MAIL FROM:<a@example.com> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n"));
    }
    {
        harness h;  // no 8BITMIME, but the content is 7-bit: sent as it is, without BODY=
        h.connect("250-mx\r\n250 SIZE\r\n");
        h.rcpts = {"b@e.org"};
        outbound_message m = h.message();
        m.size = 42;
        m.eight_bit = true;
        m.mail_from = "";
        h.s.start_transaction(m);
        EXPECT_EQ(h.drain(), "MAIL FROM:<> SIZE=42\r\n");
        h.s.receive("250 ok\r\n");
        h.s.receive("250 ok\r\n");
        h.s.receive("354 go\r\n");
        h.s.receive("250 ok\r\n");
        auto r = h.s.take_result();
        ASSERT_TRUE(r);
        EXPECT_TRUE(r->delivered(0));
    }
    for (bool in_headers : {false, true}) {
        harness h;  // no 8BITMIME and 8-bit octets: refused here (RFC 6152), nothing sent
        h.connect("250-mx\r\n250 SIZE\r\n");
        h.rcpts = {"b@e.org", "c@e.org"};
        outbound_message m = h.message();
        m.eight_bit = true;
        const std::string headers = "Subject: caf\xc3\xa9\r\n";
        const std::string body = "caf\xc3\xa9\r\n";
        if (in_headers) {
            m.added_headers = headers;
        } else {
            m.body = body;
        }
        h.s.start_transaction(m);
        EXPECT_EQ(h.drain(), "");
        auto r = h.s.take_result();
        ASSERT_TRUE(r);
        for (std::size_t i = 0; i < 2; ++i) {
            EXPECT_EQ(r->outcome(i).code, 554);
            EXPECT_EQ(r->outcome(i).enhanced, "5.6.3");
            EXPECT_TRUE(r->permanent(i));
        }
        EXPECT_TRUE(h.s.ready());
    }
}

TEST(client_session, unsendable_recipient_fails_locally_others_go) {
    harness h;
    h.rcpts = {"bad\r\nRCPT TO:<evil@x>", "ok@e.org"};
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    std::string flight = h.drain();
    EXPECT_EQ(flight.find("evil"), std::string::npos);
    EXPECT_NE(flight.find("RCPT TO:<ok@e.org>\r\nDATA\r\n"), std::string::npos);
    h.s.receive("250 ok\r\n250 ok\r\n354 go\r\n");
    h.drain();
    h.s.receive("250 ok\r\n");
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->outcome(0).code, 501);
    EXPECT_TRUE(r->delivered(1));
}

TEST(client_session, timeouts_per_state_and_timeout_failure) {
    harness h;
    EXPECT_EQ(h.s.current_timeout(), 11s);
    h.s.receive("220 hi\r\n");
    EXPECT_EQ(h.s.current_timeout(), 12s);
    h.s.receive(ehlo_pipelining);
    h.drain();
    EXPECT_EQ(h.s.current_timeout(), 0s);
    h.s.on_timeout();  // idle: nothing awaited, nothing happens
    EXPECT_FALSE(h.s.failed());
    h.s.start_transaction(h.message());
    h.drain();
    EXPECT_EQ(h.s.current_timeout(), 13s);
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(h.s.current_timeout(), 14s);
    h.s.receive("250 ok\r\n");
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(h.s.current_timeout(), 15s);
    h.s.receive("354 go\r\n");
    EXPECT_EQ(h.s.current_timeout(), 16s);
    h.drain();
    EXPECT_EQ(h.s.current_timeout(), 17s);
    h.s.on_timeout();
    EXPECT_TRUE(h.s.failed());
    EXPECT_TRUE(h.s.closed());
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->temporary(0) && r->temporary(1));
    EXPECT_EQ(r->outcome(0).enhanced, "4.4.2");
}

TEST(client_session, timeout_waiting_for_greeting_fails) {
    harness h;
    h.s.on_timeout();
    EXPECT_TRUE(h.s.failed());
    EXPECT_TRUE(h.s.closed());
    EXPECT_FALSE(h.s.take_result());
}

TEST(client_session, connection_lost_mid_transaction) {
    harness h;
    h.connect(ehlo_plain);
    h.s.start_transaction(h.message());
    h.s.receive("250 ok\r\n250 ok\r\n");
    h.s.on_connection_lost();
    EXPECT_TRUE(h.s.failed());
    auto r = h.s.take_result();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->temporary(0) && r->temporary(1));
    EXPECT_EQ(r->outcome(0).code, 451);
}

TEST(client_session, double_buffering_keeps_pieces_until_end_send) {
    harness h;
    h.connect(ehlo_plain);
    h.s.start_transaction(h.message());
    auto first = h.s.begin_send();
    ASSERT_EQ(first.size(), 1u);
    std::string_view mail = first[0];
    std::string copy(mail);
    // The reply can arrive before the send completes; new output must not disturb the pieces.
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(mail, copy);
    EXPECT_EQ(h.s.begin_send().data(), first.data());  // same pieces until end_send
    h.s.end_send();
    EXPECT_EQ(h.drain(), "RCPT TO:<b@example.org>\r\n");
}

TEST(client_session, quit_waits_for_the_current_transaction) {
    harness h;
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.quit();
    EXPECT_EQ(h.drain(), "");
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    h.drain();
    h.s.receive("250 ok\r\n");
    EXPECT_EQ(h.drain(), "QUIT\r\n");
    EXPECT_TRUE(h.s.take_result());
    EXPECT_FALSE(h.s.ready());
    h.s.on_connection_lost();  // server hung up without 221: fine after QUIT
    EXPECT_TRUE(h.s.closed());
    EXPECT_FALSE(h.s.failed());
}

TEST(client_session, body_without_final_crlf_gets_one_before_the_dot) {
    harness h;
    h.body = "Subject: x\r\n\r\nno newline";
    h.connect(ehlo_pipelining);
    h.s.start_transaction(h.message());
    h.drain();
    h.s.receive("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    EXPECT_EQ(h.drain(), h.headers + h.body + "\r\n.\r\n");
}

// --- STARTTLS and AUTH ---------------------------------------------------------------------

constexpr std::string_view ehlo_tls_offered =
    "250-mx.example.test hello\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n";
constexpr std::string_view ehlo_inside_tls =
    "250-mx.example.test hello\r\n250-PIPELINING\r\n250-SIZE 2000000\r\n"
    "250 AUTH PLAIN LOGIN\r\n";

client_config tls_config(tls_policy policy) {
    client_config c = test_config();
    c.starttls = policy;
    return c;
}

// Greeting and first EHLO; returns what the session sends after that EHLO reply.
std::string hello(harness& h, std::string_view ehlo_reply) {
    EXPECT_EQ(h.drain(), "");
    h.s.receive("220 mx.example.test ESMTP\r\n");
    EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
    h.s.receive(ehlo_reply);
    return h.drain();
}

TEST(client_session, starttls_offered_then_ehlo_again) {
    for (tls_policy policy : {tls_policy::opportunistic, tls_policy::required}) {
        harness h(tls_config(policy));
        EXPECT_EQ(hello(h, ehlo_tls_offered), "STARTTLS\r\n");
        EXPECT_FALSE(h.s.ready());
        EXPECT_EQ(h.s.current_timeout(), 12s);
        h.s.receive("220 2.0.0 Ready to start TLS\r\n");
        EXPECT_TRUE(h.s.wants_tls());
        EXPECT_FALSE(h.s.ready());
        EXPECT_EQ(h.drain(), "");
        EXPECT_EQ(h.s.current_timeout(), 0s);
        h.s.on_tls_established();
        EXPECT_TRUE(h.s.tls_active());
        EXPECT_FALSE(h.s.wants_tls());
        EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
        EXPECT_FALSE(h.s.capabilities().starttls);  // forgotten until the new EHLO reply
        h.s.receive(ehlo_inside_tls);
        ASSERT_TRUE(h.s.ready());
        EXPECT_EQ(h.drain(), "");  // no second STARTTLS
        EXPECT_EQ(h.s.capabilities().max_size, 2000000u);
        EXPECT_TRUE(h.s.capabilities().auth_plain);
        EXPECT_FALSE(h.s.failed());
    }
}

TEST(client_session, starttls_not_offered) {
    struct case_t {
        tls_policy policy;
        bool fails;
    };
    for (auto c : {case_t{tls_policy::none, false}, case_t{tls_policy::opportunistic, false},
                   case_t{tls_policy::required, true}}) {
        harness h(tls_config(c.policy));
        EXPECT_EQ(hello(h, ehlo_plain), "");
        EXPECT_EQ(h.s.failed(), c.fails);
        EXPECT_EQ(h.s.ready(), !c.fails);
        EXPECT_FALSE(h.s.tls_active());
        if (c.fails) {
            EXPECT_TRUE(h.s.closed());
            EXPECT_TRUE(h.s.last_error().transient());
            EXPECT_EQ(h.s.last_error().to_string(),
                      "451 4.7.0 TLS required but not offered by peer");
        }
    }
    harness h(tls_config(tls_policy::none));  // offered but not wanted
    EXPECT_EQ(hello(h, ehlo_tls_offered), "");
    EXPECT_TRUE(h.s.ready());
}

struct starttls_refused_case {
    tls_policy policy;
    std::string_view reply;
    bool fails;
};

class starttls_refused : public testing::TestWithParam<starttls_refused_case> {};

TEST_P(starttls_refused, opportunistic_carries_on_required_defers) {
    const auto& c = GetParam();
    harness h(tls_config(c.policy));
    EXPECT_EQ(hello(h, ehlo_tls_offered), "STARTTLS\r\n");
    h.s.receive(c.reply);
    EXPECT_FALSE(h.s.wants_tls());
    EXPECT_FALSE(h.s.tls_active());
    EXPECT_EQ(h.s.failed(), c.fails);
    EXPECT_EQ(h.s.ready(), !c.fails);
    if (c.fails) {
        EXPECT_TRUE(h.s.last_error().transient()) << h.s.last_error().to_string();
        EXPECT_EQ(h.s.last_error().enhanced, "4.7.0");
        EXPECT_NE(h.s.last_error().text.find("STARTTLS refused"), std::string::npos);
    }
}

INSTANTIATE_TEST_SUITE_P(
    replies, starttls_refused,
    testing::Values(
        starttls_refused_case{tls_policy::opportunistic, "454 4.7.0 TLS not available\r\n", false},
        starttls_refused_case{tls_policy::opportunistic, "502 5.5.1 not implemented\r\n", false},
        starttls_refused_case{tls_policy::required, "454 4.7.0 TLS not available\r\n", true},
        starttls_refused_case{tls_policy::required, "502 5.5.1 not implemented\r\n", true}));

TEST(client_session, starttls_failures) {
    {
        harness h(tls_config(tls_policy::opportunistic));
        hello(h, ehlo_tls_offered);
        h.s.receive("220 go ahead\r\n");
        h.s.on_tls_failed("certificate verify failed");
        EXPECT_TRUE(h.s.failed());
        EXPECT_TRUE(h.s.closed());
        EXPECT_EQ(h.s.last_error().to_string(),
                  "451 4.7.0 TLS handshake failed: certificate verify failed");
    }
    {
        // Bytes behind the 220 (in the same read or later) are never read as replies.
        harness h(tls_config(tls_policy::opportunistic));
        hello(h, ehlo_tls_offered);
        h.s.receive("220 go ahead\r\n250 injected\r\n");
        EXPECT_TRUE(h.s.failed());
        EXPECT_TRUE(h.s.last_error().transient());
        h.s.on_tls_established();  // a handshake already under way ends: nothing happens
        EXPECT_EQ(h.drain(), "");
        EXPECT_FALSE(h.s.tls_active());
        harness h2(tls_config(tls_policy::opportunistic));
        hello(h2, ehlo_tls_offered);
        h2.s.receive("220 go ahead\r\n");
        h2.s.receive("2");
        EXPECT_TRUE(h2.s.failed());
    }
    {
        harness h(tls_config(tls_policy::required));
        hello(h, ehlo_tls_offered);
        h.s.receive("421 4.3.2 shutting down\r\n");
        EXPECT_TRUE(h.s.failed());
        EXPECT_EQ(h.s.last_error().code, 421);
    }
}

client_config auth_config(tls_policy policy = tls_policy::none) {
    client_config c = tls_config(policy);
    c.credentials = client_credentials{"alice", "secret"};
    return c;
}

// base64("\0alice\0secret")
constexpr std::string_view auth_line = "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n";

struct auth_reply_case {
    std::string_view reply;
    bool ok;
    bool permanent;
};

class client_auth : public testing::TestWithParam<auth_reply_case> {};

TEST_P(client_auth, plain_reply) {
    const auto& c = GetParam();
    harness h(auth_config());
    EXPECT_EQ(hello(h, ehlo_inside_tls), auth_line);
    EXPECT_FALSE(h.s.ready());
    EXPECT_EQ(h.s.current_timeout(), 12s);
    h.s.receive(c.reply);
    EXPECT_EQ(h.s.ready(), c.ok);
    EXPECT_EQ(h.s.authenticated(), c.ok);
    EXPECT_EQ(h.s.failed(), !c.ok);
    if (!c.ok) {
        EXPECT_EQ(h.s.last_error().permanent(), c.permanent);
        EXPECT_EQ(h.s.last_error().transient(), !c.permanent);
        std::string_view first = c.reply.substr(0, c.reply.find('\r'));
        EXPECT_EQ(h.s.last_error().to_string(), first);
    }
}

INSTANTIATE_TEST_SUITE_P(
    replies, client_auth,
    testing::Values(auth_reply_case{"235 2.7.0 Authentication successful\r\n", true, false},
                    auth_reply_case{"535 5.7.8 Authentication credentials invalid\r\n", false,
                                    true},
                    auth_reply_case{"454 4.7.0 Temporary authentication failure\r\n", false, false},
                    auth_reply_case{"538 5.7.11 Encryption required\r\n", false, true}));

TEST(client_session, auth_plain_not_offered) {
    for (std::string_view ehlo : {ehlo_plain, ehlo_tls_offered}) {  // none / only LOGIN
        harness h(auth_config());
        EXPECT_EQ(hello(h, ehlo), "");
        EXPECT_TRUE(h.s.failed());
        EXPECT_EQ(h.s.last_error().to_string(),
                  "530 5.7.0 AUTH PLAIN required but not offered by peer");
    }
    harness h(auth_config());  // the pre-standard keyword
    EXPECT_EQ(hello(h, "250-mx\r\n250-AUTH=PLAIN LOGIN\r\n250 AUTH PLAIN\r\n"), auth_line);
}

TEST(client_session, starttls_then_auth_then_mail_byte_by_byte) {
    harness h(auth_config(tls_policy::required));
    auto feed = [&](std::string_view bytes) {
        for (char c : bytes)
            h.s.receive(std::string_view(&c, 1));
    };
    feed("220 mx.example.test ESMTP\r\n");
    EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
    feed("250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");  // AUTH waits for TLS
    EXPECT_EQ(h.drain(), "STARTTLS\r\n");
    feed("220 2.0.0 Ready to start TLS\r\n");
    ASSERT_TRUE(h.s.wants_tls());
    h.s.on_tls_established();
    EXPECT_EQ(h.drain(), "EHLO relay.example.test\r\n");
    feed(ehlo_inside_tls);
    EXPECT_EQ(h.drain(), auth_line);
    feed("235 2.7.0 Authentication successful\r\n");
    ASSERT_TRUE(h.s.ready());
    EXPECT_TRUE(h.s.tls_active() && h.s.authenticated());
    h.s.start_transaction(h.message());
    EXPECT_TRUE(h.drain().starts_with("MAIL FROM:<a@example.com>"));
}

}  // namespace
}  // namespace ringmail::smtp
