#include "ringmail/auth/sasl.h"

#include "ringmail/auth/secret.h"
#include "ringmail/core/ascii.h"
#include "ringmail/core/base64.h"
#include "ringmail/core/hex.h"
#include "ringmail/core/panic.h"

#include <cstdio>
#include <cstdlib>

namespace ringmail::auth {

namespace {

// base64("Username:") and base64("Password:"), what every LOGIN client expects.
constexpr std::string_view login_user_challenge = "VXNlcm5hbWU6";
constexpr std::string_view login_password_challenge = "UGFzc3dvcmQ6";

constexpr std::string_view text_undecodable = "Cannot Base64-decode client response";
constexpr std::string_view text_malformed_plain = "Malformed PLAIN response";
constexpr std::string_view text_cancelled = "Authentication cancelled";
constexpr std::string_view text_invalid = "Authentication credentials invalid";
constexpr std::string_view text_no_initial_response = "CRAM-MD5 takes no initial response";
constexpr std::string_view text_malformed_cram = "Malformed CRAM-MD5 response";

bool hex_digest(std::string_view s) noexcept {
    if (s.size() != 32)
        return false;
    for (const char c : s) {
        if (core::hex_value(c) < 0)
            return false;
    }
    return true;
}

bool user_acceptable(std::string_view user) noexcept {
    return !user.empty() && user.size() <= max_user_octets &&
           user.find('\0') == std::string_view::npos;
}

bool password_acceptable(std::string_view password) noexcept {
    return !password.empty() && password.size() <= max_password_octets &&
           password.find('\0') == std::string_view::npos;
}

}  // namespace

std::optional<mechanism> parse_mechanism(std::string_view name) noexcept {
    if (core::equals_nocase(name, "PLAIN"))
        return mechanism::plain;
    if (core::equals_nocase(name, "LOGIN"))
        return mechanism::login;
    if (core::equals_nocase(name, "CRAM-MD5"))
        return mechanism::cram_md5;
    return std::nullopt;
}

std::string_view mechanism_name(mechanism m) noexcept {
    switch (m) {
        case mechanism::plain:
            return "PLAIN";
        case mechanism::login:
            return "LOGIN";
        case mechanism::cram_md5:
            return "CRAM-MD5";
    }
    return "?";
}

sasl_server::~sasl_server() {
    wipe(_user);
}

sasl_step sasl_server::fail(unsigned code, std::string_view enhanced, std::string_view text) {
    wipe(_user);
    _state = state::finished;
    sasl_step s;
    s.what = sasl_step::kind::failure;
    s.failure = {code, enhanced, text};
    return s;
}

sasl_step sasl_server::start(std::optional<std::string_view> initial_response) {
    if (_state != state::idle)
        core::invariant_broken("sasl_server::start called twice");
    if (_mech == mechanism::cram_md5) {
        if (_challenge.empty())
            core::invariant_broken("sasl_server: CRAM-MD5 without a challenge");
        if (initial_response)
            return fail(501, "5.5.2", text_no_initial_response);
        _state = state::want_cram;
        sasl_step s;
        s.what = sasl_step::kind::challenge;
        s.challenge = core::base64_encode(_challenge);
        return s;
    }
    if (!initial_response) {
        sasl_step s;
        s.what = sasl_step::kind::challenge;
        if (_mech == mechanism::plain) {
            _state = state::want_plain;  // RFC 4954: an empty challenge, "334 "
        } else {
            _state = state::want_user;
            s.challenge = login_user_challenge;
        }
        return s;
    }
    _state = _mech == mechanism::plain ? state::want_plain : state::want_user;
    // "=" is an empty initial response (RFC 4954 section 4).
    if (*initial_response == "=")
        return _mech == mechanism::plain ? on_plain({}) : on_login_user({});
    // Cancelling answers a challenge; before any challenge "*" is just bad base64.
    if (*initial_response == "*")
        return fail(501, "5.5.2", text_undecodable);
    return respond(*initial_response);
}

sasl_step sasl_server::respond(std::string_view line) {
    if (_state == state::idle || _state == state::finished)
        core::invariant_broken("sasl_server::respond outside an exchange");
    if (line == "*")
        return fail(501, "5.0.0", text_cancelled);
    if (line.size() > max_response_chars)
        return fail(535, "5.7.8", text_invalid);
    std::optional<std::string> decoded = core::base64_decode(line);
    if (!decoded)
        return fail(501, "5.5.2", text_undecodable);
    sasl_step s;
    switch (_state) {
        case state::want_plain:
            s = on_plain(*decoded);
            break;
        case state::want_user:
            s = on_login_user(*decoded);
            break;
        case state::want_password:
            s = on_login_password(*decoded);
            break;
        case state::want_cram:
            s = on_cram(*decoded);
            break;
        case state::idle:
        case state::finished:
            break;
    }
    wipe(*decoded);
    return s;
}

sasl_step sasl_server::on_plain(std::string_view message) {
    // message = [authzid] NUL authcid NUL passwd (RFC 4616 section 2)
    const std::size_t first = message.find('\0');
    if (first == std::string_view::npos)
        return fail(501, "5.5.2", text_malformed_plain);
    const std::size_t second = message.find('\0', first + 1);
    if (second == std::string_view::npos)
        return fail(501, "5.5.2", text_malformed_plain);
    const std::string_view authzid = message.substr(0, first);
    const std::string_view authcid = message.substr(first + 1, second - first - 1);
    const std::string_view password = message.substr(second + 1);
    // A third NUL lands in the password, which password_acceptable refuses.
    if (!user_acceptable(authcid) || !password_acceptable(password))
        return fail(535, "5.7.8", text_invalid);
    // We do not let one user act for another: the authorization identity, when given, must be
    // the authenticated one.
    if (!authzid.empty() && authzid != authcid)
        return fail(535, "5.7.8", text_invalid);
    _state = state::finished;
    sasl_step s;
    s.what = sasl_step::kind::credentials;
    s.creds.user = authcid;
    s.creds.password = password;
    return s;
}

sasl_step sasl_server::on_login_user(std::string_view user) {
    if (!user_acceptable(user))
        return fail(535, "5.7.8", text_invalid);
    _user = user;
    _state = state::want_password;
    sasl_step s;
    s.what = sasl_step::kind::challenge;
    s.challenge = login_password_challenge;
    return s;
}

sasl_step sasl_server::on_login_password(std::string_view password) {
    if (!password_acceptable(password))
        return fail(535, "5.7.8", text_invalid);
    _state = state::finished;
    sasl_step s;
    s.what = sasl_step::kind::credentials;
    s.creds.user = std::move(_user);
    _user.clear();
    s.creds.password = password;
    return s;
}

sasl_step sasl_server::on_cram(std::string_view answer) {
    // RFC 2195: the user name, one space, the digest as 32 lower-case hex digits (upper case
    // tolerated). A user name may itself hold spaces: the digest is after the last one.
    const std::size_t space = answer.rfind(' ');
    if (space == std::string_view::npos || !hex_digest(answer.substr(space + 1)))
        return fail(501, "5.5.2", text_malformed_cram);
    const std::string_view user = answer.substr(0, space);
    if (!user_acceptable(user))
        return fail(535, "5.7.8", text_invalid);
    _state = state::finished;
    sasl_step s;
    s.what = sasl_step::kind::credentials;
    s.creds.user = user;
    s.creds.password = answer.substr(space + 1);
    s.creds.cram_challenge = _challenge;
    return s;
}

}  // namespace ringmail::auth
