// SASL server mechanisms for SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN.
//
// Pure state machines, owned by one SMTP session on its shard: the session feeds the AUTH
// command's initial response and each client continuation line (base64, CRLF already
// stripped), and gets back what to do next: send a 334 challenge, verify credentials (through
// auth::verifier, off the shard thread), or send a failure reply. No I/O, no clock. Bad client
// input is always a reply value; only calling an exchange that has finished aborts (a bug in
// the caller).
//
// Failure replies (RFC 4954 section 6 wording):
//   501 5.5.2  response is not strict base64, or a PLAIN message without its two NULs
//              (a client syntax error: the client is broken, not the credentials);
//   501 5.0.0  "*": the client cancelled;
//   535 5.7.8  credentials that can never verify: empty user or password, user over 255
//              octets, password over 1024, a NUL inside a LOGIN user or password, a PLAIN
//              authzid that is neither empty nor the authcid, or a response longer than any
//              valid one. These get the same answer as a wrong password, so a prober learns
//              nothing about which rule it hit, and the session counts them as failed attempts
//              (auth::failure_limiter) like any other 535.
//
// CRAM-MD5 (RFC 2195): the caller gives the challenge (a fresh one per attempt, made from
// random bytes, the time and the host name: this machine has no RNG or clock); the client's
// answer "user SP 32-hex-digest" comes back as credentials with cram_challenge set, which the
// verifier checks against a {CRAM-MD5} entry of the users file (auth/cram_md5.h; such an entry
// is equivalent to the password). The daemon offers CRAM-MD5 only when the users file holds
// such entries. CRAM-MD5 takes no initial response (501 5.5.2). DIGEST-MD5 and SCRAM are not
// offered.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::auth {

enum class mechanism : std::uint8_t { plain, login, cram_md5 };

// Case-insensitive "PLAIN" / "LOGIN" / "CRAM-MD5"; nullopt for anything else (the session answers
// 504 5.5.4 Unrecognized authentication type).
std::optional<mechanism> parse_mechanism(std::string_view name) noexcept;
std::string_view mechanism_name(mechanism m) noexcept;

// Limits on what a client may send (octets after base64 decoding).
inline constexpr std::size_t max_user_octets = 255;
inline constexpr std::size_t max_password_octets = 1024;
// Longest base64 response accepted: a PLAIN message with authzid and authcid at their limit
// and the longest password, encoded (4 * ceil((255 + 1 + 255 + 1 + 1024) / 3)).
inline constexpr std::size_t max_response_chars =
    4 * ((2 * max_user_octets + 2 + max_password_octets + 2) / 3);

struct credentials {
    std::string user;
    std::string password;        // wipe() it once verified; CRAM-MD5: the hex digest
    std::string cram_challenge;  // CRAM-MD5 only: the challenge the digest answers
};

struct sasl_failure {
    unsigned code;              // 501 or 535
    std::string_view enhanced;  // "5.5.2", "5.0.0", "5.7.8"
    std::string_view text;      // for smtp::append_reply
};

struct sasl_step {
    enum class kind : std::uint8_t {
        challenge,    // send "334 " + challenge (base64; "" for PLAIN's empty challenge)
        credentials,  // verify `creds`; the exchange is over
        failure,      // send `failure`; the exchange is over
    };
    kind what = kind::failure;
    std::string challenge;
    credentials creds;
    sasl_failure failure{0, {}, {}};
};

class sasl_server {
  public:
    // `cram_challenge`: the challenge for CRAM-MD5 ("<...@host>", sent base64), else unused.
    explicit sasl_server(mechanism m, std::string cram_challenge = {}) noexcept
        : _mech(m), _challenge(std::move(cram_challenge)) {}
    ~sasl_server();
    sasl_server(const sasl_server&) = delete;
    sasl_server& operator=(const sasl_server&) = delete;

    mechanism mech() const noexcept { return _mech; }

    // The AUTH command. `initial_response`: nullopt when the command had none, "=" for an
    // empty one (RFC 4954 section 4), otherwise base64. Call once, first.
    sasl_step start(std::optional<std::string_view> initial_response);

    // One client line after a 334 challenge: base64, or "*" to cancel.
    sasl_step respond(std::string_view line);

    // True once a step returned credentials or a failure.
    bool finished() const noexcept { return _state == state::finished; }

  private:
    enum class state : std::uint8_t {
        idle,
        want_plain,
        want_user,
        want_password,
        want_cram,
        finished
    };

    sasl_step on_plain(std::string_view message);
    sasl_step on_login_user(std::string_view user);
    sasl_step on_login_password(std::string_view password);
    sasl_step on_cram(std::string_view answer);
    sasl_step fail(unsigned code, std::string_view enhanced, std::string_view text);

    mechanism _mech;
    state _state = state::idle;
    std::string _user;       // LOGIN: between the two challenges
    std::string _challenge;  // CRAM-MD5
};

}  // namespace ringmail::auth
