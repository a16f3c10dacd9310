#include "ringmail/smtp/server_session.h"

#include "ringmail/smtp/errc.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <random>
#include <string>
#include <vector>

namespace ringmail::smtp {
namespace {

using namespace std::chrono_literals;

// Records every sink call; flags calls that break the transaction_sink contract.
class fake_sink final : public transaction_sink {
  public:
    result<void> begin(const envelope& env) override {
        if (open)
            violation = true;
        log += "begin " + env.mail_from + " ->";
        for (const auto& r : env.rcpt_to)
            log += " " + r;
        log += " [" + env.protocol + "]\n";
        if (begin_error)
            return failure(begin_error);
        open = true;
        content.clear();
        return {};
    }
    result<void> append(std::string_view bytes) override {
        if (!open || bytes.empty())
            violation = true;
        content.append(bytes);
        if (append_error)
            return failure(append_error);
        return {};
    }
    void commit() override {
        if (!open)
            violation = true;
        open = false;
        log += "commit\n";
        messages.push_back(content);
        ++commits;
        if (session && commit_inline)
            session->on_commit(std::string("Q") + std::to_string(commits));
    }
    void abort() override {
        if (!open)
            violation = true;
        open = false;
        log += "abort\n";
    }

    std::string log;
    std::string content;
    std::vector<std::string> messages;
    std::error_code begin_error;
    std::error_code append_error;
    bool open = false;
    bool violation = false;
    int commits = 0;
    bool commit_inline = false;
    server_session* session = nullptr;
};

server_config test_config() {
    server_config c;
    c.hostname = "mx.test";
    c.max_message_size = 10000;
    c.relay_domains = {"local.test"};
    return c;
}

enum class split { whole, bytes, random, inline_commit };

struct outcome {
    std::string output;
    std::string log;
    std::vector<std::string> messages;
    session_stats stats;
    bool closed = false;
    bool violation = false;
};

outcome run(const server_config& cfg, std::string_view input, split mode, unsigned seed = 1,
            bool relay_allowed = false) {
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", relay_allowed}, sink);
    sink.session = &s;
    sink.commit_inline = mode == split::inline_commit;
    outcome o;
    int queued = 0;
    auto collect = [&] {
        while (s.awaiting_commit())
            s.on_commit(std::string("Q") + std::to_string(++queued));
        std::string out;
        s.take_output(out);
        o.output += out;
    };
    s.start();
    collect();
    std::mt19937 rng(seed);
    std::size_t pos = 0;
    while (pos < input.size()) {
        std::size_t n = input.size() - pos;
        if (mode == split::bytes)
            n = 1;
        if (mode == split::random)
            n = std::min<std::size_t>(n, 1 + rng() % 37);
        s.receive(input.substr(pos, n));
        pos += n;
        collect();
    }
    o.log = sink.log;
    o.messages = sink.messages;
    o.stats = s.stats();
    o.closed = s.wants_close();
    o.violation = sink.violation;
    return o;
}

// Runs every way of splitting the input and requires the same transcript from each.
outcome run_all(const server_config& cfg, std::string_view input, bool relay_allowed = false) {
    outcome whole = run(cfg, input, split::whole, 1, relay_allowed);
    EXPECT_FALSE(whole.violation);
    for (auto mode : {split::bytes, split::random, split::inline_commit}) {
        for (unsigned seed = 1; seed <= (mode == split::random ? 5u : 1u); ++seed) {
            outcome o = run(cfg, input, mode, seed, relay_allowed);
            EXPECT_EQ(o.output, whole.output) << "split mode " << int(mode) << " seed " << seed;
            EXPECT_EQ(o.log, whole.log) << "split mode " << int(mode);
            EXPECT_EQ(o.messages, whole.messages);
            EXPECT_EQ(o.closed, whole.closed);
            EXPECT_FALSE(o.violation);
        }
    }
    return whole;
}

const std::string greeting = "220 mx.test ESMTP ringmail\r\n";
const std::string ehlo_reply =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n";
const std::string envelope_in = "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\n";
const std::string envelope_out = greeting + ehlo_reply + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n";

TEST(server_session, golden_transaction) {
    auto cfg = test_config();
    auto o =
        run_all(cfg, envelope_in + "DATA\r\nSubject: hi\r\n\r\nHello\r\n..dot\r\n.\r\nQUIT\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "Subject: hi\r\n\r\nHello\r\n..dot\r\n");  // still dot-stuffed
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\ncommit\n");
    EXPECT_TRUE(o.closed);
    EXPECT_EQ(o.stats.ehlo, 1u);
    EXPECT_EQ(o.stats.mail, 1u);
    EXPECT_EQ(o.stats.rcpt, 1u);
    EXPECT_EQ(o.stats.data, 1u);
    EXPECT_EQ(o.stats.quit, 1u);
    EXPECT_EQ(o.stats.messages_accepted, 1u);
    EXPECT_EQ(o.stats.errors, 0u);
}

TEST(server_session, helo_has_no_extensions_and_protocol_smtp) {
    auto cfg = test_config();
    auto o = run_all(cfg, "HELO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n.\r\n");
    EXPECT_EQ(o.output,
              greeting +
                  "250 mx.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                  "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n");
    EXPECT_EQ(o.log, "begin  -> b@local.test [SMTP]\ncommit\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "");  // "." right after 354 ends the (empty) message
}

TEST(server_session, other_commands) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "NOOP\r\nnoop anything\r\nHELP\r\nVRFY bob\r\nVRFY\r\nEXPN list\r\n"
                     "RSET\r\nRSET x\r\nFOO\r\nMAILX\r\n");
    EXPECT_EQ(o.output,
              greeting +
                  "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
                  "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT "
                  "HELP VRFY\r\n"
                  "252 2.1.5 Cannot VRFY user, but will accept message and attempt "
                  "delivery\r\n"
                  "501 5.5.4 Syntax: VRFY address\r\n502 5.5.1 Error: EXPN not supported\r\n"
                  "250 2.0.0 Ok\r\n501 5.5.4 Syntax: RSET\r\n"
                  "500 5.5.1 Error: command not recognized\r\n"
                  "500 5.5.1 Error: command not recognized\r\n");
    EXPECT_EQ(o.stats.errors, 5u);
    EXPECT_EQ(o.stats.noop, 2u);
    EXPECT_EQ(o.stats.rset, 2u);
    EXPECT_FALSE(o.closed);
}

TEST(server_session, sequencing_errors) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "MAIL FROM:<a@x.test>\r\n"  // before EHLO
                     "EHLO c.test\r\n"
                     "RCPT TO:<b@local.test>\r\n"  // before MAIL
                     "DATA\r\n"                    // before MAIL
                     "MAIL FROM:<a@x.test>\r\n"
                     "MAIL FROM:<a@x.test>\r\n"      // nested
                     "DATA\r\n"                      // before RCPT
                     "EHLO again.test\r\n"           // resets the transaction
                     "RCPT TO:<b@local.test>\r\n");  // so this has no MAIL
    EXPECT_EQ(o.output, greeting + "503 5.5.1 Error: send HELO/EHLO first\r\n" + ehlo_reply +
                            "503 5.5.1 Error: need MAIL command\r\n"
                            "503 5.5.1 Error: need MAIL command\r\n"
                            "250 2.1.0 Ok\r\n"
                            "503 5.5.1 Error: nested MAIL command\r\n"
                            "503 5.5.1 Error: need RCPT command\r\n" +
                            ehlo_reply + "503 5.5.1 Error: need MAIL command\r\n");
    EXPECT_EQ(o.log, "");
}

TEST(server_session, syntax_errors) {
    auto cfg = test_config();
    cfg.max_errors = 100;
    auto o = run_all(cfg,
                     "EHLO\r\n"
                     "EHLO c.test\r\n"
                     "MAIL TO:<a@x.test>\r\n"
                     "MAIL FROM:a@x.test\r\n"
                     "MAIL FROM:<a..b@x.test>\r\n"
                     "MAIL FROM:<a@x.test> FOO=1\r\n"
                     "MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n"
                     "MAIL FROM:<a@x.test> SIZE=1x\r\n"
                     "MAIL FROM:<\xc3\xa9@x.test>\r\n"
                     "MAIL FROM:<a@x.test> SIZE=10001\r\n"
                     "MAIL FROM: <a@x.test> SIZE=10000\r\n"
                     "RCPT TO:<>\r\n"
                     "RCPT TO:<b@-bad.test>\r\n"
                     "RCPT TO:<\xc3\xa9@local.test>\r\n"
                     "RCPT TO:<b@local.test> NOTIFY=NEVER\r\n"
                     "RCPT FROM:<b@local.test>\r\n"
                     "DATA now\r\n");
    EXPECT_EQ(o.output, greeting + "501 5.5.4 Syntax: EHLO hostname\r\n" + ehlo_reply +
                            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
                            "501 5.1.7 Error: bad sender address syntax\r\n"
                            "501 5.1.7 Error: bad local part syntax\r\n"
                            "555 5.5.4 Error: unsupported MAIL parameter\r\n"
                            "555 5.5.4 Error: BODY=BINARYMIME not supported\r\n"
                            "501 5.5.4 Error: bad MAIL parameter syntax\r\n"
                            "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
                            "552 5.3.4 Error: message size exceeds fixed limit\r\n"
                            "250 2.1.0 Ok\r\n"
                            "501 5.1.3 Error: null address not allowed here\r\n"
                            "501 5.1.3 Error: bad domain syntax\r\n"
                            "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
                            "555 5.5.4 Error: unsupported RCPT parameter\r\n"
                            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
                            "501 5.5.4 Syntax: DATA\r\n");
}

TEST(server_session, smtputf8_transaction) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "EHLO c.test\r\nMAIL FROM:<\xc3\xa9@x.test> SMTPUTF8 BODY=8BITMIME\r\n"
                     "RCPT TO:<\xc3\xbc@local.test>\r\nDATA\r\nx\r\n.\r\n");
    EXPECT_EQ(o.log, "begin \xc3\xa9@x.test -> \xc3\xbc@local.test [UTF8SMTP]\ncommit\n");
}

TEST(server_session, command_line_limit) {
    auto cfg = test_config();
    std::string ok_line = "NOOP " + std::string(512 - 7, 'x') + "\r\n";    // exactly 512
    std::string long_line = "NOOP " + std::string(512 - 6, 'x') + "\r\n";  // 513
    std::string huge = "MAIL FROM:<" + std::string(20000, 'a') + "\n\r" + "@x.test>\r\n";
    ASSERT_EQ(ok_line.size(), 512u);
    auto o = run_all(cfg, "EHLO c.test\r\n" + ok_line + long_line + huge + "NOOP\r\n" +
                              std::string(511, 'y') + "\r" + "\r\n" + "NOOP\r\n");
    EXPECT_EQ(o.output, greeting + ehlo_reply +
                            "250 2.0.0 Ok\r\n"
                            "500 5.5.2 Error: command line too long\r\n"
                            "500 5.5.2 Error: command line too long\r\n"
                            "250 2.0.0 Ok\r\n"
                            "500 5.5.2 Error: command line too long\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_EQ(o.stats.mail, 0u);  // the discarded MAIL line was never executed
}

TEST(server_session, bare_cr_or_lf_never_ends_a_command) {
    auto cfg = test_config();
    auto o = run_all(cfg, "EHLO c.test\nMAIL FROM:<a@x.test>\r\nNOOP\rQUIT\r\nNOOP\r\n");
    EXPECT_EQ(o.output, greeting +
                            "500 5.5.2 Error: bare <CR> or <LF> in command\r\n"
                            "500 5.5.2 Error: bare <CR> or <LF> in command\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_EQ(o.stats.mail, 0u);
    EXPECT_EQ(o.stats.quit, 0u);
}

class smuggling_test : public ::testing::TestWithParam<std::string> {};

// gtest's XML report cannot hold raw CR/LF in parameter values.
std::string name_of(const ::testing::TestParamInfo<std::string>& info) {
    std::string n;
    for (char c : info.param)
        n += c == '\r' ? "CR" : c == '\n' ? "LF" : c == '.' ? "DOT" : "_";
    return n;
}

TEST_P(smuggling_test, fake_terminator_never_ends_data) {
    auto cfg = test_config();
    const std::string& fake = GetParam();
    std::string input = envelope_in + "DATA\r\nSubject: x\r\n\r\nbody" + fake +
                        "MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@local.test>\r\n"
                        "DATA\r\nsmuggled\r\n.\r\nNOOP\r\n";
    auto o = run_all(cfg, input);
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_EQ(o.stats.mail, 1u);
    EXPECT_EQ(o.stats.rcpt, 1u);
    EXPECT_EQ(o.stats.data, 1u);
    EXPECT_TRUE(o.messages.empty());
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
    EXPECT_EQ(o.stats.messages_rejected, 1u);
}

INSTANTIATE_TEST_SUITE_P(variants, smuggling_test,
                         ::testing::Values(std::string("\n.\n"), std::string("\r.\r"),
                                           std::string("\r\n.\n"), std::string("\n.\r\n"),
                                           std::string("\r\n.\r"), std::string("\r\n.\r\r\n"),
                                           std::string("\r\n\n.\r\n")),
                         name_of);

TEST(server_session, bare_lf_alone_rejects_message) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "DATA\r\nline one\nline two\r\n.\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n");
    EXPECT_TRUE(o.messages.empty());
}

// A bare CR right before the real terminator: the byte after the bare CR is the CR of
// CRLF.CRLF and must still be seen as such, in DATA and in BDAT.
TEST(server_session, bare_cr_before_real_end_of_data) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "DATA\r\nbody\r\r\n.\r\nNOOP\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_TRUE(o.messages.empty());
    o = run_all(cfg, envelope_in + "DATA\r\nbody\r\r\r\n.\r\nNOOP\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n"
                            "250 2.0.0 Ok\r\n");
}

TEST(server_session, dot_lines_are_content_unless_alone) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "DATA\r\n.\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "");
    o = run_all(cfg, envelope_in + "DATA\r\n..\r\n.x\r\n. \r\n...\r\n.\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "..\r\n.x\r\n. \r\n...\r\n");
    o = run_all(cfg, envelope_in + "DATA\r\na.\r\n.\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "a.\r\n");
}

TEST(server_session, data_line_length) {
    auto cfg = test_config();
    std::string ok_line = std::string(998, 'a') + "\r\n";
    std::string long_line = std::string(999, 'a') + "\r\n";
    auto o = run_all(cfg, envelope_in + "DATA\r\n" + ok_line + ".\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], ok_line);
    o = run_all(cfg, envelope_in + "DATA\r\n" + long_line + ".\r\nNOOP\r\n");
    EXPECT_TRUE(o.messages.empty());
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "500 5.5.2 Error: message line too long\r\n250 2.0.0 Ok\r\n");
}

TEST(server_session, message_size_limit) {
    auto cfg = test_config();
    std::string line = std::string(98, 'a') + "\r\n";  // 100 octets
    std::string exact;
    for (int i = 0; i < 100; ++i)
        exact += line;  // 10000 = max_message_size
    auto o = run_all(cfg, envelope_in + "DATA\r\n" + exact + ".\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0].size(), 10000u);
    o = run_all(cfg, envelope_in + "DATA\r\n" + exact + "x\r\n.\r\nNOOP\r\n");
    EXPECT_TRUE(o.messages.empty());
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "552 5.3.4 Error: message size exceeds fixed limit\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
}

TEST(server_session, recipient_limit) {
    auto cfg = test_config();
    cfg.max_recipients = 2;
    auto o = run_all(cfg,
                     "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<1@local.test>\r\n"
                     "RCPT TO:<2@local.test>\r\nRCPT TO:<3@local.test>\r\nDATA\r\n.\r\n");
    EXPECT_EQ(o.output,
              greeting + ehlo_reply +
                  "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                  "452 4.5.3 Error: too many recipients\r\n"
                  "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n");
    EXPECT_EQ(o.log, "begin a@x.test -> 1@local.test 2@local.test [ESMTP]\ncommit\n");
}

TEST(server_session, relay_policy) {
    auto cfg = test_config();
    std::string in =
        "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@elsewhere.test>\r\n"
        "RCPT TO:<c@LOCAL.Test>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<d@sub.local.test>\r\n";
    auto o = run_all(cfg, in);
    EXPECT_EQ(o.output, greeting + ehlo_reply +
                            "250 2.1.0 Ok\r\n554 5.7.1 Error: relay access denied\r\n"
                            "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                            "554 5.7.1 Error: relay access denied\r\n");
    o = run_all(cfg, in, /*relay_allowed=*/true);
    EXPECT_EQ(o.output, greeting + ehlo_reply +
                            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                            "250 2.1.5 Ok\r\n");
}

TEST(server_session, bdat_chunks_are_dot_stuffed_and_completed) {
    auto cfg = test_config();
    auto o = run_all(
        cfg, envelope_in + "BDAT 11\r\n.hidden\r\nab" + "BDAT 8 LAST\r\nc\r\n.\r\nxy" + "NOOP\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "250 2.0.0 Ok: 11 octets received\r\n"
                            "250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 Ok\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "..hidden\r\nabc\r\n..\r\nxy\r\n");
    EXPECT_EQ(o.stats.bdat, 2u);
}

TEST(server_session, bdat_zero_last_and_crlf_split_across_chunks) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "BDAT 3\r\nab\rBDAT 2\r\n\n.BDAT 0 LAST\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "250 2.0.0 Ok: 3 octets received\r\n"
                            "250 2.0.0 Ok: 2 octets received\r\n"
                            "250 2.0.0 Ok: queued as Q1\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "ab\r\n..\r\n");
    o = run_all(cfg, envelope_in + "BDAT 0 LAST\r\n");
    ASSERT_EQ(o.messages.size(), 1u);
    EXPECT_EQ(o.messages[0], "");
}

TEST(server_session, bdat_errors_consume_their_octets) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "EHLO c.test\r\nBDAT 10\r\nMAIL FROM:"  // no transaction: 10 octets eaten
                     "MAIL FROM:<a@x.test>\r\nBDAT 6 LAST\r\nRSET\r\n"  // no RCPT
                     "RCPT TO:<b@local.test>\r\nBDAT 3\r\nabcDATA\r\nBDAT x\r\n"
                     "BDAT 3 LAST\r\na\nb"
                     "RCPT TO:<c@local.test>\r\n");
    EXPECT_EQ(o.output, greeting + ehlo_reply +
                            "503 5.5.1 Error: need MAIL command\r\n"
                            "250 2.1.0 Ok\r\n"
                            "503 5.5.1 Error: need RCPT command\r\n"
                            "250 2.1.5 Ok\r\n"
                            "250 2.0.0 Ok: 3 octets received\r\n"
                            "503 5.5.1 Error: DATA after BDAT\r\n"
                            "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
                            "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n"
                            "503 5.5.1 Error: need MAIL command\r\n");
    EXPECT_EQ(o.stats.mail, 1u);
    EXPECT_EQ(o.stats.rset, 0u);
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
}

TEST(server_session, bdat_bare_cr_at_end) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "BDAT 3 LAST\r\nab\r");
    EXPECT_EQ(o.output, envelope_out + "550 5.6.0 Error: message contains bare <CR> or <LF>\r\n");
}

TEST(server_session, bdat_size_limit) {
    auto cfg = test_config();
    cfg.max_message_size = 10;
    auto o = run(cfg, envelope_in + "BDAT 8\r\n12345678BDAT 5 LAST\r\n90123", split::whole);
    EXPECT_NE(o.output.find("250 2.0.0 Ok: 8 octets received\r\n"
                            "552 5.3.4 Error: message size exceeds fixed limit\r\n"),
              std::string::npos)
        << o.output;
    EXPECT_TRUE(o.messages.empty());
}

TEST(server_session, pipelined_replies_come_in_one_buffer_in_order) {
    auto cfg = test_config();
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.start();
    std::string out;
    s.take_output(out);
    EXPECT_EQ(out, greeting);
    out.clear();
    s.receive(envelope_in +
              "DATA\r\nm1\r\n.\r\nMAIL FROM:<c@x.test>\r\nRCPT TO:<d@local.test>\r\n"
              "DATA\r\nm2\r\n.\r\nNOOP\r\n");
    // The first message waits for its commit; nothing after it is processed yet.
    EXPECT_TRUE(s.awaiting_commit());
    EXPECT_EQ(s.current_envelope().mail_from, "a@x.test");
    s.take_output(out);
    EXPECT_EQ(out,
              envelope_out.substr(greeting.size()) + "354 End data with <CR><LF>.<CR><LF>\r\n");
    out.clear();
    EXPECT_FALSE(s.has_output());
    s.on_commit(std::string("A"));
    EXPECT_TRUE(s.awaiting_commit());
    s.on_commit(std::string("B"));
    EXPECT_FALSE(s.awaiting_commit());
    s.take_output(out);
    EXPECT_EQ(out,
              "250 2.0.0 Ok: queued as A\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
              "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as B\r\n"
              "250 2.0.0 Ok\r\n");
    EXPECT_EQ(sink.messages, (std::vector<std::string>{"m1\r\n", "m2\r\n"}));
}

TEST(server_session, input_is_bounded_while_awaiting_commit) {
    auto cfg = test_config();
    cfg.max_buffered_input = 64;
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.start();
    s.receive(envelope_in + "DATA\r\nm\r\n.\r\n");
    ASSERT_TRUE(s.awaiting_commit());
    EXPECT_FALSE(s.input_full());
    std::string more;
    for (int i = 0; i < 20; ++i)
        more += "NOOP\r\n";
    s.receive(more);
    EXPECT_TRUE(s.input_full());
    s.on_commit(std::string("Q"));
    EXPECT_FALSE(s.input_full());
    std::string out;
    s.take_output(out);
    std::size_t noops = 0;
    for (std::size_t p = 0; (p = out.find("250 2.0.0 Ok\r\n", p)) != std::string::npos; ++p)
        ++noops;
    EXPECT_EQ(noops, 20u);
}

TEST(server_session, commit_and_begin_errors) {
    auto cfg = test_config();
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.receive(envelope_in + "DATA\r\nm\r\n.\r\n");
    ASSERT_TRUE(s.awaiting_commit());
    s.on_commit(sys_failure(ENOSPC));
    s.receive("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nm\r\n.\r\n");
    s.on_commit(sys_failure(EIO));
    s.receive("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nm\r\n.\r\n");
    s.on_commit(failure(errc::insufficient_storage));
    sink.begin_error = sys_failure(EDQUOT).code;
    s.receive(
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\nRCPT TO:<b@local.test>\r\n");
    sink.begin_error = sys_failure(EIO).code;
    s.receive("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 2 LAST\r\nxyNOOP\r\n");
    std::string out;
    s.take_output(out);
    EXPECT_EQ(out, ehlo_reply +
                       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                       "354 End data with <CR><LF>.<CR><LF>\r\n"
                       "452 4.3.1 Error: insufficient system storage\r\n"
                       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                       "451 4.3.0 Error: local error in processing\r\n"
                       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                       "452 4.3.1 Error: insufficient system storage\r\n"
                       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                       "452 4.3.1 Error: insufficient system storage\r\n"
                       "503 5.5.1 Error: need MAIL command\r\n"
                       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                       "451 4.3.0 Error: local error in processing\r\n"
                       "250 2.0.0 Ok\r\n");
    EXPECT_EQ(s.stats().messages_accepted, 0u);
    EXPECT_FALSE(s.wants_close());
}

TEST(server_session, append_error_is_reported_at_end_of_data) {
    auto cfg = test_config();
    fake_sink sink;
    sink.append_error = sys_failure(ENOSPC).code;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.receive(envelope_in + "DATA\r\nline\r\nmore\r\n.\r\n");
    std::string out;
    s.take_output(out);
    EXPECT_NE(out.find("354 End data with <CR><LF>.<CR><LF>\r\n"
                       "452 4.3.1 Error: insufficient system storage\r\n"),
              std::string::npos)
        << out;
    EXPECT_EQ(sink.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
}

TEST(server_session, timeouts) {
    auto cfg = test_config();
    cfg.command_timeout = 300s;
    cfg.data_timeout = 180s;
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.start();
    EXPECT_EQ(s.current_timeout(), 300s);
    s.receive(envelope_in + "DATA\r\npartial");
    EXPECT_EQ(s.current_timeout(), 180s);
    s.on_timeout();
    EXPECT_TRUE(s.wants_close());
    std::string out;
    s.take_output(out);
    const std::string last = "421 4.4.2 mx.test Error: timeout exceeded\r\n";
    ASSERT_GE(out.size(), last.size());
    EXPECT_EQ(out.substr(out.size() - last.size()), last);
    EXPECT_EQ(sink.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
    s.receive("NOOP\r\n");  // ignored once closed
    EXPECT_FALSE(s.has_output());
}

TEST(server_session, too_many_errors_closes) {
    auto cfg = test_config();
    cfg.max_errors = 3;
    auto o = run_all(cfg, "X\r\nY\r\nZ\r\nNOOP\r\n");
    EXPECT_EQ(o.output, greeting +
                            "500 5.5.1 Error: command not recognized\r\n"
                            "500 5.5.1 Error: command not recognized\r\n"
                            "500 5.5.1 Error: command not recognized\r\n"
                            "421 4.7.0 mx.test Error: too many errors\r\n");
    EXPECT_TRUE(o.closed);
    EXPECT_EQ(o.stats.noop, 0u);
}

TEST(server_session, quit_aborts_open_bdat_and_ignores_the_rest) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "BDAT 1\r\nxQUIT\r\nNOOP\r\n");
    EXPECT_EQ(o.output, envelope_out + "250 2.0.0 Ok: 1 octets received\r\n221 2.0.0 Bye\r\n");
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
    EXPECT_TRUE(o.closed);
    EXPECT_EQ(o.stats.noop, 0u);
}

TEST(server_session, peer_close_aborts_transaction) {
    auto cfg = test_config();
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.receive(envelope_in + "DATA\r\nsome");
    s.on_peer_closed();
    EXPECT_EQ(sink.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
    EXPECT_FALSE(sink.violation);
    // A committed message is never aborted, and its on_commit still counts.
    fake_sink sink2;
    server_session s2(cfg, peer_info{"192.0.2.1", false}, sink2);
    s2.receive(envelope_in + "DATA\r\nm\r\n.\r\n");
    s2.on_peer_closed();
    s2.on_commit(std::string("Q"));
    EXPECT_EQ(sink2.log, "begin a@x.test -> b@local.test [ESMTP]\ncommit\n");
    EXPECT_EQ(s2.stats().messages_accepted, 1u);
}

TEST(server_session, envelope_reception_facts) {
    auto cfg = test_config();
    fake_sink sink;
    server_session s(cfg, peer_info{"2001:db8::5", true}, sink);
    s.receive(
        "EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=123 BODY=8BITMIME\r\n"
        "RCPT TO:<b@anywhere.test>\r\n");
    const auto& env = s.current_envelope();
    EXPECT_EQ(env.helo_name, "client.test");
    EXPECT_EQ(env.client_address, "2001:db8::5");
    EXPECT_EQ(env.protocol, "ESMTP");
    EXPECT_EQ(env.declared_size, 123u);
    EXPECT_EQ(env.body, body_type::eight_bit_mime);
    EXPECT_EQ(env.rcpt_to, (std::vector<std::string>{"b@anywhere.test"}));
}

TEST(server_session, take_output_swaps_buffers) {
    auto cfg = test_config();
    fake_sink sink;
    server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
    s.start();
    std::string out;
    out.reserve(4096);
    s.take_output(out);
    EXPECT_EQ(out, greeting);
    EXPECT_FALSE(s.has_output());
    out.clear();
    s.receive("NOOP\r\n");
    s.take_output(out);
    EXPECT_EQ(out, "250 2.0.0 Ok\r\n");
    EXPECT_GE(out.capacity(), 15u);
}

}  // namespace
}  // namespace ringmail::smtp
