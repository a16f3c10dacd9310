// libFuzzer target: the server session fed arbitrary bytes in arbitrary splits.
//
// The first bytes choose the configuration and the split sizes; the rest is the client's
// input. Invariants: the transaction_sink contract holds (no append outside begin..commit or
// begin..abort, abort never after commit), output is whole CRLF-terminated reply lines,
// a committed message is in transmission form (CRLF only, never a lone "." line), and the
// buffered input respects its bound. STARTTLS/AUTH: while the session waits for a handshake no
// input produces output (pipelined plaintext is dropped), a handshake leaves a fresh session,
// and the auth_backend contract holds (no "*" or CR/LF passed to step(), no new step while a
// verification is pending, a result only when one is pending).
#include "ringmail/smtp/server_session.h"

#include "fuzz_check.h"
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using ringmail::fuzz::check;

class checking_sink final : public ringmail::smtp::transaction_sink {
  public:
    ringmail::result<void> begin(const ringmail::mail::envelope& env) override {
        check(!open && !committed, "begin while a transaction is open");
        check(!env.rcpt_to.empty(), "begin without recipients");
        open = true;
        content.clear();
        if (fail_next_begin) {
            open = false;
            return ringmail::sys_failure(28);
        }
        return {};
    }
    ringmail::result<void> append(std::string_view bytes) override {
        check(open, "append outside a transaction");
        check(!bytes.empty(), "empty append");
        content.append(bytes);
        return {};
    }
    void commit() override {
        check(open, "commit outside a transaction");
        open = false;
        committed = true;
        // Transmission form: CRLF line ends only, no terminator line inside.
        check(content.empty() || content.size() >= 2, "content too short");
        if (!content.empty()) {
            check(content.compare(content.size() - 2, 2, "\r\n") == 0, "content ends CRLF");
        }
        for (std::size_t i = 0; i < content.size(); ++i) {
            if (content[i] == '\n')
                check(i > 0 && content[i - 1] == '\r', "bare LF committed");
            if (content[i] == '\r')
                check(i + 1 < content.size() && content[i + 1] == '\n', "bare CR committed");
            check(content[i] != '\0', "NUL committed");
        }
        check(content.rfind(".\r\n", 0) != 0 && content.find("\r\n.\r\n") == std::string::npos,
              "lone dot line inside committed content");
    }
    void abort() override {
        check(open, "abort outside a transaction");
        open = false;
    }
    bool open = false;
    bool committed = false;
    bool fail_next_begin = false;
    std::string content;
};

// Answers by the first character of the response: A success, B pending, C 535, D 421 and
// close, E another challenge, anything else 501.
class checking_auth final : public ringmail::smtp::auth_backend {
  public:
    std::vector<std::string> mechanisms() const override { return {"PLAIN", "LOGIN"}; }
    ringmail::smtp::auth_step start(std::string_view mechanism,
                                    std::optional<std::string_view> ir) override {
        check(!pending, "start while a verification is pending");
        check(mechanism == "PLAIN" || mechanism == "LOGIN", "unknown mechanism passed on");
        if (!ir)
            return ringmail::smtp::auth_step::challenge(mechanism == "PLAIN" ? "" : "VXNlcg==");
        return decide(*ir);
    }
    ringmail::smtp::auth_step step(std::string_view response) override {
        check(!pending, "step while a verification is pending");
        check(response != "*", "cancel line passed to the backend");
        check(response.find_first_of("\r\n") == std::string_view::npos, "CR/LF in a response");
        return decide(response);
    }
    void cancel() noexcept override { pending = false; }
    bool pending = false;

  private:
    ringmail::smtp::auth_step decide(std::string_view r) {
        using ringmail::smtp::auth_step;
        switch (r.empty() ? '\0' : r[0]) {
            case 'A':
                return auth_step::success("user");
            case 'B':
                pending = true;
                return auth_step::pending();
            case 'C':
                return auth_step::failure(535, "5.7.8", "Authentication credentials invalid");
            case 'D':
                return auth_step::failure(421, "4.7.0", "Too many failures", true);
            case 'E':
                return auth_step::challenge("UGFzcw==");
            default:
                return auth_step::failure(501, "5.5.2", "Cannot decode response");
        }
    }
};

void check_output(const std::string& out) {
    if (out.empty())
        return;
    check(out.size() >= 2 && out.compare(out.size() - 2, 2, "\r\n") == 0, "output ends CRLF");
    std::size_t line = 0;
    while (line < out.size()) {
        std::size_t end = out.find("\r\n", line);
        check(end != std::string::npos, "unterminated reply line");
        check(end - line >= 3, "reply line too short");
        for (std::size_t i = line; i < line + 3; ++i)
            check(out[i] >= '0' && out[i] <= '9', "code");
        check(out.find('\n', line) == end + 1, "bare LF in reply");
        line = end + 2;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4)
        return 0;
    ringmail::smtp::server_config cfg;
    cfg.hostname = "fuzz.test";
    cfg.max_message_size = 64 + data[0] * 16;
    cfg.max_recipients = 1 + data[1] % 4;
    cfg.max_line_length = 20 + data[2];
    cfg.max_command_line = 40 + data[3];
    cfg.max_errors = 50;
    cfg.max_buffered_input = 512;
    cfg.relay_domains = {"local.test"};
    cfg.tls_available = (data[1] & 0x10) != 0;
    const bool with_auth = (data[1] & 0x20) != 0;
    cfg.auth_plaintext = (data[1] & 0x40) != 0;
    cfg.require_auth = (data[1] & 0x80) != 0;
    cfg.max_auth_line = 64 + data[2] * 2u;
    const bool implicit_tls = (data[0] & 1) != 0;
    const std::uint8_t mode = data[1] >> 2;
    data += 4;
    size -= 4;

    checking_sink sink;
    checking_auth auth;
    ringmail::smtp::peer_info peer{"192.0.2.9", (mode & 1) != 0};
    if (implicit_tls)
        peer.tls = ringmail::smtp::tls_details{"TLSv1.3", "TLS_AES_128_GCM_SHA256"};
    ringmail::smtp::server_session s(cfg, peer, sink, with_auth ? &auth : nullptr);
    s.start();
    std::string out;
    unsigned queue = 0;
    std::size_t pos = 0;
    std::uint32_t rng = 2463534242u ^ size;
    while (pos < size && !s.wants_close()) {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        std::size_t n = 1 + rng % 64;
        if (n > size - pos)
            n = size - pos;
        if (!s.input_full()) {
            const bool waiting_for_tls = s.wants_tls();
            const bool had_output = s.has_output();
            s.receive(std::string_view(reinterpret_cast<const char*>(data) + pos, n));
            pos += n;
            if (waiting_for_tls) {
                check(s.wants_tls(), "input ended the wait for a handshake");
                check(s.has_output() == had_output, "plaintext after STARTTLS was answered");
            }
        }
        check(s.current_timeout().count() > 0, "timeout");
        if (s.awaiting_commit() && (rng & 3) != 0) {
            check(sink.committed, "awaiting commit without sink.commit()");
            sink.committed = false;
            if (rng & 16) {
                s.on_commit(ringmail::sys_failure(28));
            } else {
                s.on_commit(std::string_view(std::string("Q") + std::to_string(++queue)));
            }
        }
        if (s.awaiting_auth() && (rng & 0xc00) != 0) {
            check(auth.pending, "awaiting AUTH without a pending verification");
            auth.pending = false;
            if (rng & 0x1000) {
                s.on_auth_result(ringmail::smtp::auth_step::success("late"));
            } else {
                s.on_auth_result(ringmail::smtp::auth_step::failure(535, "5.7.8", "no"));
            }
        }
        if (s.wants_tls() && (rng & 0x6000) != 0) {
            if ((rng & 0x6000) == 0x6000) {
                s.on_tls_failed();
                check(s.wants_close(), "TLS failure leaves the session open");
            } else {
                out.clear();
                s.take_output(out);  // the 220 goes out in plaintext before the handshake
                check_output(out);
                s.on_tls_established({"TLSv1.3", "TLS_AES_128_GCM_SHA256"});
                check(s.tls_active() && !s.authenticated() && !s.in_transaction(),
                      "TLS did not leave a fresh session");
                check(s.current_envelope().helo_name.empty(), "HELO name survived STARTTLS");
                check(!s.has_output(), "output after the handshake before any input");
            }
        }
        sink.fail_next_begin = (rng & 0x300) == 0x300;
        out.clear();
        s.take_output(out);
        check_output(out);
        check(!s.has_output(), "take_output left output behind");
    }
    if (mode & 2) {
        s.on_timeout();
    } else {
        s.on_peer_closed();
    }
    if (s.awaiting_commit())
        s.on_commit(std::string_view("late"));
    s.on_auth_result(ringmail::smtp::auth_step::success("after close"));  // ignored when closed
    out.clear();
    s.take_output(out);
    check_output(out);
    check(!sink.open, "transaction left open at close");
    return 0;
}
