#include "ringmail/smtp/server_session.h"

#include "ringmail/core/base64.h"
#include "ringmail/smtp/errc.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace ringmail::smtp {
namespace {

using namespace std::chrono_literals;

// Records every sink call; flags calls that break the transaction_sink contract.
class fake_sink final : public transaction_sink {
  public:
    result<void> begin(const mail::envelope& env) override {
        if (open)
            violation = true;
        log += "begin " + env.mail_from + " ->";
        for (const auto& r : env.rcpt_to)
            log += " " + r;
        log += " [" + env.protocol + "]\n";
        last_env = env;
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
            session->on_commit(std::string_view(std::string("Q") + std::to_string(commits)));
    }
    void abort() override {
        if (!open)
            violation = true;
        open = false;
        log += "abort\n";
    }

    std::string log;
    mail::envelope last_env;
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

// A SASL backend speaking PLAIN and LOGIN over base64, with users chosen by password:
// "pass" succeeds, "slow"/"slowfail" verify asynchronously, "ratelimit" closes, others fail.
class fake_auth final : public auth_backend {
  public:
    std::vector<std::string> mechanisms() const override { return {"PLAIN", "LOGIN"}; }
    auth_step start(std::string_view mechanism,
                    std::optional<std::string_view> initial_response) override {
        log += "start " + std::string(mechanism);
        if (initial_response)
            log += " ir=" + std::string(*initial_response);
        log += "\n";
        _mech = std::string(mechanism);
        _user.clear();
        _step = 0;
        if (_mech == "PLAIN") {
            if (!initial_response)
                return auth_step::challenge("");
            return plain(*initial_response);
        }
        if (initial_response)
            return auth_step::failure(501, "5.5.2", "No initial response with LOGIN");
        return auth_step::challenge("VXNlcm5hbWU6");  // "Username:"
    }
    auth_step step(std::string_view response) override {
        log += "step " + std::string(response.substr(0, 40)) + "\n";
        if (_mech == "PLAIN")
            return plain(response);
        auto decoded = core::base64_decode(response);
        if (!decoded)
            return auth_step::failure(501, "5.5.2", "Cannot decode response");
        if (_step++ == 0) {
            _user = *decoded;
            return auth_step::challenge("UGFzc3dvcmQ6");  // "Password:"
        }
        return verify(_user, *decoded);
    }
    void cancel() noexcept override { log += "cancel\n"; }

    std::string log;
    std::optional<auth_step> deferred;

  private:
    auth_step plain(std::string_view b64) {
        auto decoded = core::base64_decode(b64);
        if (!decoded)
            return auth_step::failure(501, "5.5.2", "Cannot decode response");
        std::size_t a = decoded->find('\0');
        std::size_t b = a == std::string::npos ? a : decoded->find('\0', a + 1);
        if (b == std::string::npos)
            return auth_step::failure(501, "5.5.2", "Malformed PLAIN response");
        return verify(decoded->substr(a + 1, b - a - 1), decoded->substr(b + 1));
    }
    auth_step verify(const std::string& user, const std::string& password) {
        if (password == "pass")
            return auth_step::success(user);
        if (password == "slow" || password == "slowfail") {
            deferred = password == "slow"
                           ? auth_step::success(user)
                           : auth_step::failure(535, "5.7.8", "Authentication credentials invalid");
            return auth_step::pending();
        }
        if (password == "ratelimit")
            return auth_step::failure(421, "4.7.0", "Too many authentication failures", true);
        return auth_step::failure(535, "5.7.8", "Authentication credentials invalid");
    }
    std::string _mech;
    std::string _user;
    int _step = 0;
};

std::string plain_ir(std::string_view user, std::string_view password) {
    std::string raw;
    raw.push_back('\0');
    raw.append(user);
    raw.push_back('\0');
    raw.append(password);
    return core::base64_encode(raw);
}

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
    std::string auth_log;
    mail::envelope last_env;
    std::vector<std::string> messages;
    session_stats stats;
    bool closed = false;
    bool violation = false;
    bool authenticated = false;
};

struct run_options {
    bool relay_allowed = false;
    bool auth = false;                          // give the session a fake_auth
    std::optional<tls_details> implicit_tls{};  // the connection starts inside TLS
};

// In test input: the daemon completes a TLS handshake here (the session must want it).
const std::string tls_here("\0<tls>\0", 7);
const tls_details test_tls{"TLSv1.3", "TLS_AES_256_GCM_SHA384"};

outcome run(const server_config& cfg, std::string_view input, split mode, unsigned seed = 1,
            const run_options& opts = {}) {
    fake_sink sink;
    fake_auth auth;
    peer_info peer{"192.0.2.1", opts.relay_allowed};
    peer.tls = opts.implicit_tls;
    server_session s(cfg, peer, sink, opts.auth ? &auth : nullptr);
    sink.session = &s;
    sink.commit_inline = mode == split::inline_commit;
    outcome o;
    int queued = 0;
    auto collect = [&] {
        for (;;) {
            if (s.awaiting_commit()) {
                s.on_commit(std::string_view(std::string("Q") + std::to_string(++queued)));
            } else if (s.awaiting_auth()) {
                ASSERT_TRUE(auth.deferred.has_value());
                s.on_auth_result(*std::exchange(auth.deferred, std::nullopt));
            } else {
                break;
            }
        }
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
        std::size_t marker = input.find(tls_here, pos);
        if (marker == pos) {
            EXPECT_TRUE(s.wants_tls());
            if (s.wants_tls())
                s.on_tls_established(test_tls);
            o.output += "[tls]\n";
            pos += tls_here.size();
            collect();
            continue;
        }
        if (marker != std::string_view::npos)
            n = std::min(n, marker - pos);
        s.receive(input.substr(pos, n));
        pos += n;
        collect();
    }
    o.log = sink.log;
    o.auth_log = auth.log;
    o.last_env = sink.last_env;
    o.messages = sink.messages;
    o.stats = s.stats();
    o.closed = s.wants_close();
    o.violation = sink.violation;
    o.authenticated = s.authenticated();
    return o;
}

// Runs every way of splitting the input and requires the same transcript from each.
outcome run_all(const server_config& cfg, std::string_view input, const run_options& opts) {
    outcome whole = run(cfg, input, split::whole, 1, opts);
    EXPECT_FALSE(whole.violation);
    for (auto mode : {split::bytes, split::random, split::inline_commit}) {
        for (unsigned seed = 1; seed <= (mode == split::random ? 5u : 1u); ++seed) {
            outcome o = run(cfg, input, mode, seed, opts);
            EXPECT_EQ(o.output, whole.output) << "split mode " << int(mode) << " seed " << seed;
            EXPECT_EQ(o.log, whole.log) << "split mode " << int(mode);
            EXPECT_EQ(o.auth_log, whole.auth_log) << "split mode " << int(mode);
            EXPECT_EQ(o.messages, whole.messages);
            EXPECT_EQ(o.closed, whole.closed);
            EXPECT_FALSE(o.violation);
            EXPECT_EQ(o.stats.starttls_discarded, whole.stats.starttls_discarded);
        }
    }
    return whole;
}

outcome run_all(const server_config& cfg, std::string_view input, bool relay_allowed = false) {
    return run_all(cfg, input, run_options{.relay_allowed = relay_allowed});
}

const std::string greeting = "220 mx.test ESMTP ringmail\r\n";
const std::string ehlo_reply =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 CHUNKING\r\n";
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
                     "RCPT TO:<b@local.test> FOO=1\r\n"
                     "RCPT TO:<b@local.test> NOTIFY=BOGUS\r\n"
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
                            "501 5.5.4 Error: NOTIFY must be NEVER or a list of SUCCESS, "
                            "FAILURE, DELAY\r\n"
                            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
                            "501 5.5.4 Syntax: DATA\r\n");
}

TEST(server_session, dsn_parameters_travel_with_the_envelope) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "EHLO c.test\r\nMAIL FROM:<a@x.test> RET=HDRS ENVID=QQ314159+2Bx\r\n"
                     "RCPT TO:<b@local.test>\r\n"
                     "RCPT TO:<c@local.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;C+40local.test\r\n"
                     "RCPT TO:<d@local.test> NOTIFY=NEVER\r\n"
                     "DATA\r\nx\r\n.\r\n"
                     "MAIL FROM:<a@x.test> RET=FULL\r\nRCPT TO:<e@local.test>\r\nRSET\r\n"
                     "MAIL FROM:<a@x.test> RET=ALL\r\n"
                     "MAIL FROM:<a@x.test> ENVID=a+ZZ\r\n");
    EXPECT_NE(o.output.find("250-DSN\r\n"), std::string::npos);
    EXPECT_NE(o.output.find("501 5.5.4 Error: RET must be FULL or HDRS\r\n"), std::string::npos)
        << o.output;
    EXPECT_NE(o.output.find("501 5.5.4 Error: bad ENVID"), std::string::npos) << o.output;
    EXPECT_EQ(o.last_env.ret, mail::dsn_ret::headers);
    EXPECT_EQ(o.last_env.envid, "QQ314159+2Bx");
    ASSERT_EQ(o.last_env.rcpt_params.size(), 3u);
    EXPECT_EQ(o.last_env.rcpt_params[0], mail::rcpt_dsn{});
    EXPECT_EQ(o.last_env.rcpt_params[1].notify, mail::notify::success | mail::notify::delay);
    EXPECT_EQ(o.last_env.rcpt_params[1].orcpt, "rfc822;C+40local.test");
    EXPECT_EQ(o.last_env.rcpt_params[2].notify, mail::notify::never);

    // The first recipient's parameters count too.
    auto first = run_all(cfg,
                         "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n"
                         "RCPT TO:<b@local.test> NOTIFY=DELAY\r\nRCPT TO:<c@local.test>\r\n"
                         "DATA\r\nx\r\n.\r\n");
    ASSERT_EQ(first.last_env.rcpt_params.size(), 2u);
    EXPECT_EQ(first.last_env.rcpt_params[0].notify, mail::notify::delay);
    EXPECT_EQ(first.last_env.rcpt_params[1], mail::rcpt_dsn{});
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

// NUL in content: refused like a bare CR or LF (a receiver that drops NULs would see
// "\r\n\0.\r\n" as the end of data), only after the real end; the smuggled transaction after
// the fake terminator is content, never commands.
TEST(server_session, nul_in_data_refused_after_real_end) {
    auto cfg = test_config();
    const std::string nul(1, '\0');
    auto o =
        run_all(cfg, envelope_in + "DATA\r\nbody\r\n" + nul +
                         ".\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@local.test>\r\n"
                         "DATA\r\nsmuggled\r\n.\r\nNOOP\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "550 5.6.0 Error: message contains <NUL>\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_TRUE(o.messages.empty());
    EXPECT_EQ(o.stats.mail, 1u);
    EXPECT_EQ(o.stats.messages_rejected, 1u);
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
    // Mid-line, after a leading dot, and as the last octet before the terminator.
    for (std::string body : {"a" + nul + "b\r\n", "." + nul + "\r\n", "line" + nul + "\r\n"}) {
        o = run_all(cfg, envelope_in + "DATA\r\n" + body + ".\r\nNOOP\r\n");
        EXPECT_EQ(o.output, envelope_out +
                                "354 End data with <CR><LF>.<CR><LF>\r\n"
                                "550 5.6.0 Error: message contains <NUL>\r\n"
                                "250 2.0.0 Ok\r\n");
        EXPECT_TRUE(o.messages.empty());
    }
}

TEST(server_session, nul_in_bdat_refused_at_last_chunk) {
    auto cfg = test_config();
    const std::string nul(1, '\0');
    auto o = run_all(
        cfg, envelope_in + "BDAT 6\r\nab\r\n" + nul + "." + "BDAT 4 LAST\r\n\r\nok" + "NOOP\r\n");
    EXPECT_EQ(o.output, envelope_out +
                            "250 2.0.0 Ok: 6 octets received\r\n"
                            "550 5.6.0 Error: message contains <NUL>\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_TRUE(o.messages.empty());
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTP]\nabort\n");
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
    s.on_commit(std::string_view("A"));
    EXPECT_TRUE(s.awaiting_commit());
    s.on_commit(std::string_view("B"));
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
    s.on_commit(std::string_view("Q"));
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
    s2.on_commit(std::string_view("Q"));
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
    EXPECT_EQ(env.body, mail::body_type::eight_bit_mime);
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

// --- STARTTLS -----------------------------------------------------------------------------

// The EHLO reply with extra last lines after CHUNKING ("STARTTLS", "AUTH PLAIN LOGIN").
std::string ehlo_with(std::vector<std::string_view> extra) {
    std::string r =
        ehlo_reply.substr(0, ehlo_reply.size() - std::string("250 CHUNKING\r\n").size());
    r += "250-CHUNKING\r\n";
    for (std::size_t i = 0; i < extra.size(); ++i)
        r += std::string(i + 1 < extra.size() ? "250-" : "250 ") + std::string(extra[i]) + "\r\n";
    return r;
}

server_config tls_config() {
    auto cfg = test_config();
    cfg.tls_available = true;
    return cfg;
}

const std::string ready_tls = "220 2.0.0 Ready to start TLS\r\n";

TEST(server_session, starttls_then_fresh_session) {
    auto cfg = tls_config();
    auto o = run_all(cfg, "EHLO c.test\r\nSTARTTLS\r\n" + tls_here +
                              "MAIL FROM:<a@x.test>\r\n"  // EHLO is required again
                              "EHLO c2.test\r\nSTARTTLS\r\n" +
                              envelope_in.substr(13) + "DATA\r\nm\r\n.\r\n");
    EXPECT_EQ(o.output, greeting + ehlo_with({"STARTTLS"}) + ready_tls + "[tls]\n" +
                            "503 5.5.1 Error: send HELO/EHLO first\r\n" + ehlo_reply +
                            "503 5.5.1 Error: TLS already active\r\n"
                            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                            "354 End data with <CR><LF>.<CR><LF>\r\n"
                            "250 2.0.0 Ok: queued as Q1\r\n");
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTPS]\ncommit\n");
    EXPECT_EQ(o.last_env.helo_name, "c2.test");
    EXPECT_EQ(o.last_env.tls_protocol, "TLSv1.3");
    EXPECT_EQ(o.last_env.tls_cipher, "TLS_AES_256_GCM_SHA384");
    EXPECT_EQ(o.last_env.client_address, "192.0.2.1");
    EXPECT_EQ(o.stats.starttls, 2u);
    EXPECT_EQ(o.stats.tls_established, 1u);
    EXPECT_EQ(o.stats.starttls_discarded, 0u);
}

// CVE-2011-0411 class: plaintext pipelined behind STARTTLS is never executed, whether it comes
// in the same receive() call, later ones, or after a commit held it.
struct injection_case {
    const char* name;
    std::string input;
    std::string output;  // after the greeting
    std::uint64_t discarded;
};

void PrintTo(const injection_case& c, std::ostream* os) {
    *os << c.name;
}

class starttls_injection : public testing::TestWithParam<injection_case> {};

TEST_P(starttls_injection, plaintext_after_starttls_is_dropped) {
    auto cfg = tls_config();
    auto o = run_all(cfg, GetParam().input);
    EXPECT_EQ(o.output, greeting + GetParam().output);
    EXPECT_EQ(o.stats.starttls_discarded, GetParam().discarded);
    EXPECT_EQ(o.stats.rset, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    cases, starttls_injection,
    testing::Values(
        injection_case{"mail_in_same_read", "STARTTLS\r\nMAIL FROM:<a@b>\r\n" + tls_here,
                       ready_tls + "[tls]\n", 17},
        injection_case{
            "after_ehlo",
            "EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\nRSET\r\n" + tls_here + "NOOP\r\n",
            ehlo_with({"STARTTLS"}) + ready_tls + "[tls]\n250 2.0.0 Ok\r\n", 23},
        // A partial plaintext line must not join the first line read inside TLS.
        injection_case{"partial_line", "STARTTLS\r\nRSET" + tls_here + "NOOP\r\n",
                       ready_tls + "[tls]\n250 2.0.0 Ok\r\n", 4},
        injection_case{"held_behind_commit",
                       envelope_in + "DATA\r\nm\r\n.\r\nSTARTTLS\r\nRSET\r\n" + tls_here,
                       ehlo_with({"STARTTLS"}) +
                           "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                           "250 2.0.0 Ok: queued as Q1\r\n" +
                           ready_tls + "[tls]\n",
                       6}),
    [](const auto& info) { return std::string(info.param.name); });

struct starttls_error_case {
    const char* name;
    bool available;
    bool implicit_tls;
    std::string input;
    std::string output;  // after the greeting
};

void PrintTo(const starttls_error_case& c, std::ostream* os) {
    *os << c.name;
}

class starttls_errors : public testing::TestWithParam<starttls_error_case> {};

TEST_P(starttls_errors, replies) {
    const auto& c = GetParam();
    auto cfg = test_config();
    cfg.tls_available = c.available;
    run_options opts;
    if (c.implicit_tls)
        opts.implicit_tls = test_tls;
    auto o = run_all(cfg, c.input, opts);
    EXPECT_EQ(o.output, greeting + c.output);
    EXPECT_FALSE(o.closed);
}

INSTANTIATE_TEST_SUITE_P(
    cases, starttls_errors,
    testing::Values(
        starttls_error_case{"not_offered", false, false, "EHLO c.test\r\nSTARTTLS\r\nNOOP\r\n",
                            ehlo_reply + "502 5.5.1 Error: STARTTLS not supported\r\n"
                                         "250 2.0.0 Ok\r\n"},
        starttls_error_case{"argument", true, false, "STARTTLS now\r\nNOOP\r\n",
                            "501 5.5.4 Syntax: STARTTLS\r\n250 2.0.0 Ok\r\n"},
        starttls_error_case{"in_transaction", true, false,
                            "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\nNOOP\r\n",
                            ehlo_with({"STARTTLS"}) +
                                "250 2.1.0 Ok\r\n"
                                "503 5.5.1 Error: STARTTLS not permitted during a mail "
                                "transaction\r\n250 2.0.0 Ok\r\n"},
        starttls_error_case{"implicit_tls", true, true, "EHLO c.test\r\nSTARTTLS\r\nNOOP\r\n",
                            ehlo_reply + "503 5.5.1 Error: TLS already active\r\n"
                                         "250 2.0.0 Ok\r\n"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(server_session, tls_failure_timeout_and_shutdown_close_without_reply) {
    auto cfg = tls_config();
    for (int how = 0; how < 3; ++how) {
        fake_sink sink;
        server_session s(cfg, peer_info{"192.0.2.1", false}, sink);
        s.receive("STARTTLS\r\nNOOP\r\n");
        ASSERT_TRUE(s.wants_tls());
        std::string out;
        s.take_output(out);
        EXPECT_EQ(out, ready_tls);
        if (how == 0)
            s.on_tls_failed();
        if (how == 1)
            s.on_timeout();
        if (how == 2)
            s.shutdown();
        EXPECT_TRUE(s.wants_close());
        EXPECT_FALSE(s.wants_tls());
        EXPECT_FALSE(s.has_output()) << how;
        s.on_tls_established(test_tls);  // a late handshake result is ignored
        EXPECT_TRUE(s.wants_close());
    }
}

TEST(server_session, implicit_tls_envelope_and_protocol) {
    auto cfg = test_config();
    auto o = run_all(cfg, envelope_in + "DATA\r\n.\r\n", run_options{.implicit_tls = test_tls});
    EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [ESMTPS]\ncommit\n");
    EXPECT_EQ(o.last_env.tls_protocol, "TLSv1.3");
}

// --- AUTH --------------------------------------------------------------------------------

struct auth_case {
    const char* name;
    bool in_tls;  // else plaintext with auth_plaintext
    std::string input;
    std::string output;  // after greeting and the first EHLO reply
    std::string auth_log;
    bool authenticated;
};

void PrintTo(const auth_case& c, std::ostream* os) {
    *os << c.name;
}

class auth_exchange : public testing::TestWithParam<auth_case> {};

const std::string auth_ok = "235 2.7.0 Authentication successful\r\n";
const std::string auth_bad = "535 5.7.8 Authentication credentials invalid\r\n";

TEST_P(auth_exchange, transcript) {
    const auto& c = GetParam();
    auto cfg = test_config();
    run_options opts{.auth = true};
    if (c.in_tls) {
        opts.implicit_tls = test_tls;
    } else {
        cfg.auth_plaintext = true;
    }
    auto o = run_all(cfg, "EHLO c.test\r\n" + c.input, opts);
    EXPECT_EQ(o.output, greeting + ehlo_with({"AUTH PLAIN LOGIN"}) + c.output);
    EXPECT_EQ(o.auth_log, c.auth_log);
    EXPECT_EQ(o.authenticated, c.authenticated);
}

const std::string ir_ok = plain_ir("alice", "pass");
const std::string ir_bad = plain_ir("alice", "wrong");

INSTANTIATE_TEST_SUITE_P(
    cases, auth_exchange,
    testing::Values(
        auth_case{"plain_initial_response", true, "AUTH PLAIN " + ir_ok + "\r\n", auth_ok,
                  "start PLAIN ir=" + ir_ok + "\n", true},
        auth_case{"plain_lower_case_mechanism", false, "auth plain " + ir_ok + "\r\n", auth_ok,
                  "start PLAIN ir=" + ir_ok + "\n", true},
        auth_case{"plain_after_empty_challenge", true, "AUTH PLAIN\r\n" + ir_ok + "\r\n",
                  "334 \r\n" + auth_ok, "start PLAIN\nstep " + ir_ok + "\n", true},
        auth_case{"empty_initial_response", true, "AUTH PLAIN =\r\n",
                  "501 5.5.2 Malformed PLAIN response\r\n", "start PLAIN ir=\n", false},
        auth_case{"login_challenges", false, "AUTH LOGIN\r\nYWxpY2U=\r\ncGFzcw==\r\n",
                  "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" + auth_ok,
                  "start LOGIN\nstep YWxpY2U=\nstep cGFzcw==\n", true},
        auth_case{"failure_then_retry", true,
                  "AUTH PLAIN " + ir_bad + "\r\nAUTH PLAIN " + ir_ok + "\r\n", auth_bad + auth_ok,
                  "start PLAIN ir=" + ir_bad + "\nstart PLAIN ir=" + ir_ok + "\n", true},
        auth_case{"pending_success_then_pipelined_mail", true,
                  "AUTH PLAIN " + plain_ir("bob", "slow") +
                      "\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<z@elsewhere.test>\r\n",
                  auth_ok + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
                  "start PLAIN ir=" + plain_ir("bob", "slow") + "\n", true},
        auth_case{"pending_failure", true,
                  "AUTH PLAIN " + plain_ir("bob", "slowfail") +
                      "\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<z@elsewhere.test>\r\n",
                  auth_bad + "250 2.1.0 Ok\r\n554 5.7.1 Error: relay access denied\r\n",
                  "start PLAIN ir=" + plain_ir("bob", "slowfail") + "\n", false},
        auth_case{"pending_after_challenge", false, "AUTH LOGIN\r\nYm9i\r\nc2xvdw==\r\nNOOP\r\n",
                  "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n" + auth_ok + "250 2.0.0 Ok\r\n",
                  "start LOGIN\nstep Ym9i\nstep c2xvdw==\n", true},
        auth_case{"cancel", true, "AUTH LOGIN\r\n*\r\nNOOP\r\n",
                  "334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication aborted\r\n250 2.0.0 Ok\r\n",
                  "start LOGIN\ncancel\n", false},
        auth_case{"bad_base64_in_step", true, "AUTH LOGIN\r\n!!!\r\n",
                  "334 VXNlcm5hbWU6\r\n501 5.5.2 Cannot decode response\r\n",
                  "start LOGIN\nstep !!!\n", false},
        auth_case{"already_authenticated", true,
                  "AUTH PLAIN " + ir_ok + "\r\nAUTH PLAIN " + ir_ok + "\r\n",
                  auth_ok + "503 5.5.1 Error: already authenticated\r\n",
                  "start PLAIN ir=" + ir_ok + "\n", true},
        auth_case{"in_transaction", true, "MAIL FROM:<a@x.test>\r\nAUTH PLAIN " + ir_ok + "\r\n",
                  "250 2.1.0 Ok\r\n"
                  "503 5.5.1 Error: AUTH not permitted during a mail transaction\r\n",
                  "", false},
        auth_case{"unknown_mechanism", true, "AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n",
                  "504 5.5.4 Unrecognized authentication type\r\n"
                  "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"
                  "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
                  "", false},
        auth_case{"rate_limited_close", true,
                  "AUTH PLAIN " + plain_ir("eve", "ratelimit") + "\r\nNOOP\r\n",
                  "421 4.7.0 mx.test Too many authentication failures\r\n",
                  "start PLAIN ir=" + plain_ir("eve", "ratelimit") + "\n", false}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(server_session, auth_relays_and_marks_envelope) {
    auto cfg = test_config();
    auto o = run_all(cfg,
                     "EHLO c.test\r\nAUTH PLAIN " + ir_ok +
                         "\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<z@elsewhere.test>\r\n"
                         "DATA\r\nm\r\n.\r\n",
                     run_options{.auth = true, .implicit_tls = test_tls});
    EXPECT_EQ(o.log, "begin a@x.test -> z@elsewhere.test [ESMTPSA]\ncommit\n");
    EXPECT_EQ(o.last_env.auth_user, "alice");
    EXPECT_EQ(o.stats.authenticated, 1u);
    EXPECT_EQ(o.stats.auth, 1u);
}

TEST(server_session, auth_refusals_outside_an_exchange) {
    struct refusal {
        const char* name;
        bool backend, tls, plaintext;
        std::string input;
        std::string output;  // after the greeting
    };
    const std::vector<refusal> cases = {
        {"no_backend", false, true, false, "EHLO c.test\r\nAUTH PLAIN " + ir_ok + "\r\n",
         ehlo_reply + "502 5.5.1 Error: AUTH not supported\r\n"},
        {"not_in_tls", true, false, false, "EHLO c.test\r\nAUTH PLAIN " + ir_ok + "\r\n",
         ehlo_reply + "538 5.7.11 Encryption required for requested authentication mechanism\r\n"},
        {"before_ehlo", true, true, false, "AUTH PLAIN " + ir_ok + "\r\n",
         "503 5.5.1 Error: send EHLO first\r\n"},
        {"after_helo", true, true, false, "HELO c.test\r\nAUTH PLAIN " + ir_ok + "\r\n",
         "250 mx.test\r\n503 5.5.1 Error: send EHLO first\r\n"},
    };
    for (const auto& c : cases) {
        auto cfg = test_config();
        cfg.auth_plaintext = c.plaintext;
        run_options opts{.auth = c.backend};
        if (c.tls)
            opts.implicit_tls = test_tls;
        auto o = run_all(cfg, c.input, opts);
        EXPECT_EQ(o.output, greeting + c.output) << c.name;
        EXPECT_EQ(o.auth_log, "") << c.name;
        EXPECT_FALSE(o.authenticated) << c.name;
    }
}

TEST(server_session, auth_line_length) {
    auto cfg = test_config();
    run_options opts{.auth = true, .implicit_tls = test_tls};
    // "AUTH PLAIN " + n base64 octets + CRLF; 'A's decode to NULs: a malformed PLAIN response
    // proves the backend got the line.
    auto line = [](std::size_t total) {
        return "AUTH PLAIN " + std::string(total - 13, 'A') + "\r\n";
    };
    std::string ok = line(12288);  // 12275 'A's: not a multiple of 4, so "Cannot decode"
    ASSERT_EQ(ok.size(), 12288u);
    auto o = run_all(cfg, "EHLO c.test\r\n" + ok + line(12289) + "NOOP\r\n", opts);
    EXPECT_EQ(o.output, greeting + ehlo_with({"AUTH PLAIN LOGIN"}) +
                            "501 5.5.2 Cannot decode response\r\n"
                            "500 5.5.6 Authentication Exchange line is too long\r\n"
                            "250 2.0.0 Ok\r\n");
    // Continuation lines have the same limit; an over-long one ends the exchange.
    std::string cont_ok = std::string(12284, 'A') + "\r\n";  // decodes: wrong password
    std::string cont_long = std::string(12287, 'A') + "\r\n";
    o = run_all(
        cfg, "EHLO c.test\r\nAUTH PLAIN\r\n" + cont_ok + "AUTH PLAIN\r\n" + cont_long + "NOOP\r\n",
        opts);
    EXPECT_EQ(o.output, greeting + ehlo_with({"AUTH PLAIN LOGIN"}) + "334 \r\n" + auth_bad +
                            "334 \r\n"
                            "500 5.5.6 Authentication Exchange line is too long\r\n"
                            "250 2.0.0 Ok\r\n");
    EXPECT_EQ(o.auth_log, "start PLAIN\nstep " + std::string(40, 'A') + "\nstart PLAIN\ncancel\n");
    // Other command lines keep their 512 limit.
    o = run_all(cfg, "EHLO c.test\r\nNOOP " + std::string(600, 'x') + "\r\n", opts);
    EXPECT_EQ(o.output, greeting + ehlo_with({"AUTH PLAIN LOGIN"}) +
                            "500 5.5.2 Error: command line too long\r\n");
}

TEST(server_session, submission_requires_auth) {
    auto cfg = test_config();
    cfg.require_auth = true;
    auto o = run_all(cfg,
                     "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nAUTH PLAIN " + ir_ok +
                         "\r\nMAIL FROM:<a@x.test>\r\n",
                     run_options{.auth = true, .implicit_tls = test_tls});
    EXPECT_EQ(o.output, greeting + ehlo_with({"AUTH PLAIN LOGIN"}) +
                            "530 5.7.0 Authentication required\r\n" + auth_ok + "250 2.1.0 Ok\r\n");
}

TEST(server_session, starttls_forgets_plaintext_auth) {
    auto cfg = tls_config();
    cfg.auth_plaintext = true;
    cfg.require_auth = true;
    auto o = run_all(cfg,
                     "EHLO c.test\r\nAUTH PLAIN " + ir_ok + "\r\nSTARTTLS\r\n" + tls_here +
                         "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n",
                     run_options{.auth = true});
    EXPECT_EQ(o.output, greeting + ehlo_with({"STARTTLS", "AUTH PLAIN LOGIN"}) + auth_ok +
                            ready_tls + "[tls]\n" + ehlo_with({"AUTH PLAIN LOGIN"}) +
                            "530 5.7.0 Authentication required\r\n");
    EXPECT_FALSE(o.authenticated);
}

TEST(server_session, pending_auth_holds_pipelined_input) {
    auto cfg = test_config();
    fake_sink sink;
    fake_auth auth;
    peer_info peer{"192.0.2.1", false};
    peer.tls = test_tls;
    server_session s(cfg, peer, sink, &auth);
    s.receive("EHLO c.test\r\nAUTH PLAIN " + plain_ir("bob", "slow") + "\r\nMAIL FROM:<a@x.test>");
    EXPECT_TRUE(s.awaiting_auth());
    std::string out;
    s.take_output(out);
    EXPECT_EQ(out, ehlo_with({"AUTH PLAIN LOGIN"}));
    s.receive("\r\nRCPT TO:<z@elsewhere.test>\r\n");
    EXPECT_FALSE(s.has_output());
    EXPECT_EQ(s.stats().mail, 0u);
    ASSERT_TRUE(auth.deferred);
    s.on_auth_result(*auth.deferred);
    EXPECT_FALSE(s.awaiting_auth());
    out.clear();
    s.take_output(out);
    EXPECT_EQ(out, auth_ok + "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    EXPECT_EQ(s.current_envelope().auth_user, "bob");
    // A result that arrives after the peer left is ignored; the exchange was cancelled.
    fake_auth auth2;
    server_session s2(cfg, peer, sink, &auth2);
    s2.receive("EHLO c.test\r\nAUTH PLAIN " + plain_ir("bob", "slow") + "\r\n");
    ASSERT_TRUE(s2.awaiting_auth());
    s2.on_peer_closed();
    s2.on_auth_result(*auth2.deferred);
    EXPECT_FALSE(s2.authenticated());
    EXPECT_EQ(auth2.log, "start PLAIN ir=" + plain_ir("bob", "slow") + "\ncancel\n");
}

struct protocol_case {
    bool tls;
    bool auth;
    std::string hello;
    std::string mail_params;
    std::string protocol;
};

TEST(server_session, received_protocol_names) {
    const std::vector<protocol_case> cases = {
        {false, false, "HELO", "", "SMTP"},
        {false, false, "EHLO", "", "ESMTP"},
        {true, false, "EHLO", "", "ESMTPS"},
        {true, false, "HELO", "", "SMTP"},
        {false, true, "EHLO", "", "ESMTPA"},
        {true, true, "EHLO", "", "ESMTPSA"},
        {false, false, "EHLO", " SMTPUTF8", "UTF8SMTP"},
        {true, false, "EHLO", " SMTPUTF8", "UTF8SMTPS"},
        {true, true, "EHLO", " SMTPUTF8", "UTF8SMTPSA"},
    };
    for (const auto& c : cases) {
        auto cfg = test_config();
        cfg.auth_plaintext = true;
        run_options opts{.auth = true};
        if (c.tls)
            opts.implicit_tls = test_tls;
        std::string in = "EHLO c.test\r\n";
        if (c.auth)
            in += "AUTH PLAIN " + ir_ok + "\r\n";
        in += c.hello + " c.test\r\nMAIL FROM:<a@x.test>" + c.mail_params +
              "\r\nRCPT TO:<b@local.test>\r\nDATA\r\n.\r\n";
        auto o = run(cfg, in, split::whole, 1, opts);
        EXPECT_EQ(o.log, "begin a@x.test -> b@local.test [" + c.protocol + "]\ncommit\n")
            << c.protocol;
    }
}

}  // namespace
}  // namespace ringmail::smtp
