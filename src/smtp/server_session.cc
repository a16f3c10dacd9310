#include "ringmail/smtp/server_session.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/byte_scan.h"
#include "ringmail/core/panic.h"
#include "ringmail/smtp/address.h"
#include "ringmail/smtp/errc.h"
#include "ringmail/smtp/reply.h"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ringmail::smtp {

namespace {

using core::equals_nocase;

bool starts_with_nocase(std::string_view s, std::string_view prefix) noexcept {
    return s.size() >= prefix.size() && equals_nocase(s.substr(0, prefix.size()), prefix);
}

enum class verb : std::uint8_t {
    unknown,
    ehlo,
    helo,
    mail,
    rcpt,
    data,
    bdat,
    rset,
    noop,
    quit,
    help,
    vrfy,
    expn,
    auth,
    starttls
};

verb parse_verb(std::string_view v) noexcept {
    if (v.size() == 8 && equals_nocase(v, "STARTTLS"))
        return verb::starttls;
    if (v.size() != 4)
        return verb::unknown;
    char u[4];
    for (int i = 0; i < 4; ++i) {
        unsigned char c = v[i];
        u[i] = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    std::string_view s(u, 4);
    if (s == "EHLO")
        return verb::ehlo;
    if (s == "HELO")
        return verb::helo;
    if (s == "MAIL")
        return verb::mail;
    if (s == "RCPT")
        return verb::rcpt;
    if (s == "DATA")
        return verb::data;
    if (s == "BDAT")
        return verb::bdat;
    if (s == "RSET")
        return verb::rset;
    if (s == "NOOP")
        return verb::noop;
    if (s == "QUIT")
        return verb::quit;
    if (s == "HELP")
        return verb::help;
    if (s == "VRFY")
        return verb::vrfy;
    if (s == "EXPN")
        return verb::expn;
    if (s == "AUTH")
        return verb::auth;
    return verb::unknown;
}

bool is_path_error(std::error_code ec) noexcept {
    if (ec.category() != smtp_category())
        return false;
    switch (static_cast<errc>(ec.value())) {
        case errc::path_syntax:
        case errc::null_path_not_allowed:
        case errc::local_part_syntax:
        case errc::local_part_too_long:
        case errc::domain_syntax:
        case errc::domain_too_long:
        case errc::address_literal_syntax:
        case errc::path_too_long:
        case errc::invalid_utf8:
            return true;
        default:
            return false;
    }
}

// Reply text for an address error: which part is wrong, never the peer's bytes.
std::string_view path_error_text(std::error_code ec, bool sender) noexcept {
    switch (static_cast<errc>(ec.value())) {
        case errc::null_path_not_allowed:
            return "Error: null address not allowed here";
        case errc::local_part_syntax:
            return "Error: bad local part syntax";
        case errc::local_part_too_long:
            return "Error: local part longer than 64 octets";
        case errc::domain_syntax:
            return "Error: bad domain syntax";
        case errc::domain_too_long:
            return "Error: domain longer than 255 octets";
        case errc::address_literal_syntax:
            return "Error: bad address literal";
        case errc::path_too_long:
            return "Error: path longer than 256 octets";
        case errc::invalid_utf8:
            return "Error: invalid UTF-8 in address";
        default:
            return sender ? "Error: bad sender address syntax"
                          : "Error: bad recipient address syntax";
    }
}

// RFC 4422 3.1: a mechanism name is 1..20 of A-Z 0-9 - _ (we compare case-insensitively).
bool valid_mechanism_name(std::string_view m) noexcept {
    if (m.empty() || m.size() > 20)
        return false;
    for (unsigned char c : m) {
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

}  // namespace

auth_step auth_step::challenge(std::string base64_text) {
    auth_step s;
    s.what = kind::challenge;
    s.text = std::move(base64_text);
    return s;
}

auth_step auth_step::pending() {
    auth_step s;
    s.what = kind::pending;
    return s;
}

auth_step auth_step::success(std::string user) {
    auth_step s;
    s.what = kind::success;
    s.user = std::move(user);
    return s;
}

auth_step auth_step::failure(unsigned code, std::string enhanced, std::string text, bool close) {
    auth_step s;
    s.what = kind::failure;
    s.code = code;
    s.enhanced = std::move(enhanced);
    s.text = std::move(text);
    s.close = close;
    return s;
}

server_session::server_session(const server_config& config, peer_info peer, transaction_sink& sink,
                               auth_backend* auth)
    : _config(config), _peer(std::move(peer)), _sink(sink), _auth(auth), _tls(_peer.tls) {
    _env.client_address = _peer.address;
    if (_tls) {
        _env.tls_protocol = _tls->protocol;
        _env.tls_cipher = _tls->cipher;
    }
}

void server_session::start() {
    _out.append("220 ").append(_config.hostname).append(" ESMTP ringmail\r\n");
}

std::chrono::seconds server_session::current_timeout() const noexcept {
    return _state == state::data || _state == state::bdat ? _config.data_timeout
                                                          : _config.command_timeout;
}

void server_session::take_output(std::string& out) {
    out.swap(_out);
    _out.clear();
}

// --- replies -----------------------------------------------------------------------------

void server_session::reply(unsigned code, std::string_view enhanced, std::string_view text,
                           bool counts) {
    append_reply(_out, code, enhanced, text);
    if (!is_error_reply(code))
        return;
    ++_stats.errors;
    auto refused = [&](core::rejection r) { ++_stats.rejected[static_cast<std::size_t>(r)]; };
    if (enhanced == "5.7.1")
        refused(core::rejection::relay_denied);
    else if (enhanced == "5.3.4")
        refused(core::rejection::too_big);
    else if (enhanced == "5.6.0")
        refused(core::rejection::bad_content);
    else if ((code == 451 || code == 452) && enhanced.starts_with("4.3."))
        refused(core::rejection::storage);
    else if (code == 530)
        refused(core::rejection::auth_required);
    if (counts && ++_error_count >= _config.max_errors && _state != state::closed) {
        close_with("4.7.0", "Error: too many errors");
    }
}

server_session::canned_reply server_session::storage_reply(std::error_code ec) noexcept {
    // Any part's "out of space" maps to the generic condition (spool::errc::no_space,
    // errc::insufficient_storage, a raw ENOSPC), so the session needs to know none of them.
    const std::error_condition cond = ec.default_error_condition();
    bool full = cond == std::errc::no_space_on_device ||
                ((cond.category() == std::generic_category() ||
                  cond.category() == std::system_category()) &&
                 cond.value() == EDQUOT);  // std::errc has no EDQUOT
    if (full)
        return {452, "4.3.1", "Error: insufficient system storage", false};
    return {451, "4.3.0", "Error: local error in processing", false};
}

void server_session::close_with(std::string_view enhanced, std::string_view text, unsigned code) {
    if (_begun) {
        _sink.abort();
        _begun = false;
    }
    cancel_auth();
    if (_state != state::tls_wait) {  // else the bytes would land inside the handshake
        std::string host_text = _config.hostname;
        host_text.append(" ").append(text);
        append_reply(_out, code, enhanced, host_text);
    }
    _state = state::closed;
}

// --- input -------------------------------------------------------------------------------

void server_session::receive(std::string_view bytes) {
    if (_state == state::closed)
        return;
    _processing = true;
    while (!bytes.empty() && _state != state::closed) {
        if (holding_input()) {
            _in.append(bytes);
            break;
        }
        if (!_in.empty()) {
            // Complete the held partial line one LF at a time, so that a long input behind
            // it is processed in place rather than copied.
            std::size_t lf = bytes.find('\n');
            std::size_t take = lf == std::string_view::npos ? bytes.size() : lf + 1;
            _in.append(bytes.data(), take);
            bytes.remove_prefix(take);
            _in.erase(0, process(_in));
            continue;
        }
        bytes.remove_prefix(process(bytes));
        if ((_state == state::command || _state == state::auth_response) && !bytes.empty()) {
            _in.append(bytes);  // a partial command line
            break;
        }
    }
    finish_input();
}

void server_session::drain() {
    _processing = true;
    _in.erase(0, process(_in));
    finish_input();
}

void server_session::finish_input() {
    _processing = false;
    if (_state == state::closed)
        _in.clear();
}

std::size_t server_session::process(std::string_view in) {
    std::size_t pos = 0;
    while (pos < in.size()) {
        std::string_view rest = in.substr(pos);
        std::size_t used;
        switch (_state) {
            case state::command:
            case state::auth_response:
                used = process_line(rest);
                if (used == 0)
                    return pos;
                break;
            case state::tls_wait:
                used = discard_plaintext(rest);
                break;
            case state::discard_line:
                used = discard_line(rest);
                break;
            case state::data:
                used = scan_data(rest);
                break;
            case state::bdat:
                used = scan_bdat(rest);
                break;
            case state::awaiting_commit:
            case state::auth_pending:
            case state::closed:
            default:
                return pos;
        }
        pos += used;
    }
    return pos;
}

// A command line, or a line answering a 334. AUTH lines may be longer (RFC 4954 4).
std::size_t server_session::process_line(std::string_view s) {
    const bool auth = _state == state::auth_response || starts_with_nocase(s, "AUTH ");
    const std::size_t limit =
        auth ? std::max(_config.max_command_line, _config.max_auth_line) : _config.max_command_line;
    const std::size_t window = std::min(s.size(), limit);
    std::size_t from = 0;
    while (from < window) {
        const void* hit = std::memchr(s.data() + from, '\n', window - from);
        if (!hit)
            break;
        std::size_t k = static_cast<const char*>(hit) - s.data();
        if (k > 0 && s[k - 1] == '\r') {
            if (_state == state::auth_response) {
                auth_line(s.substr(0, k - 1));
            } else {
                execute(s.substr(0, k - 1));
            }
            return k + 1;
        }
        from = k + 1;  // a bare LF does not end a command line
    }
    if (s.size() < limit)
        return 0;  // the line may still end within the limit
    // No CRLF within the limit: too long. Discard through the next CRLF.
    if (_state == state::auth_response)
        cancel_auth();
    _discard_auth = auth;
    _state = state::discard_line;
    _discard_prev_cr = s[window - 1] == '\r';
    return window;
}

std::size_t server_session::discard_line(std::string_view s) {
    std::size_t from = 0;
    while (const void* hit = std::memchr(s.data() + from, '\n', s.size() - from)) {
        std::size_t k = static_cast<const char*>(hit) - s.data();
        bool cr = k == 0 ? _discard_prev_cr : s[k - 1] == '\r';
        if (cr) {
            _state = state::command;
            if (_discard_auth) {
                ++_stats.auth_failures;
                reply(500, "5.5.6", "Authentication Exchange line is too long");
            } else {
                reply(500, "5.5.2", "Error: command line too long");
            }
            return k + 1;
        }
        from = k + 1;
    }
    _discard_prev_cr = s.back() == '\r';
    return s.size();
}

// After the 220 to STARTTLS: plaintext that must never be executed (CVE-2011-0411 class).
std::size_t server_session::discard_plaintext(std::string_view s) {
    _stats.starttls_discarded += s.size();
    return s.size();
}

// --- commands ----------------------------------------------------------------------------

void server_session::execute(std::string_view line) {
    if (line.find_first_of("\r\n") != std::string_view::npos) {
        ++_stats.other;
        reply(500, "5.5.2", "Error: bare <CR> or <LF> in command");
        return;
    }
    while (!line.empty() && line.back() == ' ')
        line.remove_suffix(1);
    std::size_t sp = line.find(' ');
    std::string_view arg = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
    switch (parse_verb(line.substr(0, sp))) {
        case verb::ehlo:
            ++_stats.ehlo;
            return cmd_ehlo(arg, true);
        case verb::helo:
            ++_stats.helo;
            return cmd_ehlo(arg, false);
        case verb::mail:
            ++_stats.mail;
            return cmd_mail(arg);
        case verb::rcpt:
            ++_stats.rcpt;
            return cmd_rcpt(arg);
        case verb::data:
            ++_stats.data;
            return cmd_data(arg);
        case verb::bdat:
            ++_stats.bdat;
            return cmd_bdat(arg);
        case verb::rset:
            ++_stats.rset;
            return cmd_rset(arg);
        case verb::noop:
            ++_stats.noop;
            return reply(250, "2.0.0", "Ok");
        case verb::quit:
            ++_stats.quit;
            if (_begun) {
                _sink.abort();
                _begun = false;
            }
            reply(221, "2.0.0", "Bye");
            _state = state::closed;
            return;
        case verb::help:
            ++_stats.other;
            return reply(214, "2.0.0",
                         "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY");
        case verb::vrfy:
            ++_stats.other;
            if (arg.empty())
                return reply(501, "5.5.4", "Syntax: VRFY address");
            return reply(252, "2.1.5",
                         "Cannot VRFY user, but will accept message and attempt delivery");
        case verb::expn:
            ++_stats.other;
            return reply(502, "5.5.1", "Error: EXPN not supported");
        case verb::starttls:
            ++_stats.starttls;
            return cmd_starttls(arg);
        case verb::auth:
            ++_stats.auth;
            return cmd_auth(arg);
        case verb::unknown:
        default:
            ++_stats.other;
            return reply(500, "5.5.1", "Error: command not recognized");
    }
}

void server_session::cmd_ehlo(std::string_view arg, bool extended) {
    bool ok = !arg.empty() && is_valid_utf8(arg);
    for (unsigned char c : arg) {
        if (c <= ' ' || c == 127)
            ok = false;
    }
    if (!ok) {
        return reply(501, "5.5.4", extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
    }
    reset_transaction();
    _greeted = true;
    _extended = extended;
    _env.helo_name.assign(arg);
    if (!extended) {
        append_reply(_out, 250, {}, _config.hostname);
        return;
    }
    char size[32] = "SIZE ";
    auto [end, ec] = std::to_chars(size + 5, size + sizeof size, _config.max_message_size);
    (void)ec;
    append_reply_line(_out, 250, true, _config.hostname);
    append_reply_line(_out, 250, true, "PIPELINING");
    append_reply_line(_out, 250, true, std::string_view(size, end - size));
    append_reply_line(_out, 250, true, "8BITMIME");
    append_reply_line(_out, 250, true, "SMTPUTF8");
    append_reply_line(_out, 250, true, "ENHANCEDSTATUSCODES");
    append_reply_line(_out, 250, true, "DSN");
    const bool starttls = _config.tls_available && !_tls;
    const bool auth = auth_offered();
    append_reply_line(_out, 250, starttls || auth, "CHUNKING");
    if (starttls)
        append_reply_line(_out, 250, auth, "STARTTLS");
    if (auth) {
        std::string line = "AUTH";
        for (const auto& m : advertised_mechanisms())
            line.append(" ").append(m);
        append_reply_line(_out, 250, false, line);
    }
}

std::vector<std::string> server_session::advertised_mechanisms() const {
    return _config.auth_mechanisms.empty() ? _auth->mechanisms() : _config.auth_mechanisms;
}

bool server_session::auth_offered() const noexcept {
    return _auth != nullptr && (_tls.has_value() || _config.auth_plaintext);
}

void server_session::cmd_mail(std::string_view arg) {
    if (!_greeted)
        return reply(503, "5.5.1", "Error: send HELO/EHLO first");
    if (_in_mail)
        return reply(503, "5.5.1", "Error: nested MAIL command");
    if (_config.require_auth && !_authenticated)
        return reply(530, "5.7.0", "Authentication required");
    if (!starts_with_nocase(arg, "FROM:"))
        return reply(501, "5.5.4", "Syntax: MAIL FROM:<address>");
    auto m = parse_mail_from(arg.substr(5));
    if (!m) {
        std::error_code ec = m.error();
        if (is_path_error(ec))
            return reply(501, "5.1.7", path_error_text(ec, true));
        switch (static_cast<errc>(ec.value())) {
            case errc::utf8_needs_smtputf8:
                return reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8");
            case errc::unknown_parameter:
                return reply(555, "5.5.4", "Error: unsupported MAIL parameter");
            case errc::binarymime_unsupported:
                return reply(555, "5.5.4", "Error: BODY=BINARYMIME not supported");
            case errc::duplicate_parameter:
                return reply(501, "5.5.4", "Error: duplicate MAIL parameter");
            case errc::ret_syntax:
                return reply(501, "5.5.4", "Error: RET must be FULL or HDRS");
            case errc::envid_syntax:
                return reply(501, "5.5.4",
                             "Error: bad ENVID (xtext of printable ASCII, 100 at most)");
            default:
                return reply(501, "5.5.4", "Error: bad MAIL parameter syntax");
        }
    }
    if (m->params.has_size && m->params.size > _config.max_message_size) {
        return reply(552, "5.3.4", "Error: message size exceeds fixed limit");
    }
    _in_mail = true;
    _env.mail_from = std::move(m->reverse_path.address);
    _env.body = m->params.body;
    _env.smtputf8 = m->params.smtputf8;
    _env.declared_size = m->params.has_size ? m->params.size : 0;
    _env.ret = m->params.ret;
    _env.envid = std::move(m->params.envid);
    // RFC 3848 / RFC 6531 3.7.3: S for TLS, A for AUTH; HELO clients stay "SMTP".
    if (!_extended) {
        _env.protocol = "SMTP";
    } else {
        _env.protocol = m->params.smtputf8 ? "UTF8SMTP" : "ESMTP";
        if (_tls)
            _env.protocol.push_back('S');
        if (_authenticated)
            _env.protocol.push_back('A');
    }
    reply(250, "2.1.0", "Ok");
}

void server_session::cmd_rcpt(std::string_view arg) {
    if (!_in_mail)
        return reply(503, "5.5.1", "Error: need MAIL command");
    if (_used_bdat)
        return reply(503, "5.5.1", "Error: RCPT after BDAT");
    if (!starts_with_nocase(arg, "TO:"))
        return reply(501, "5.5.4", "Syntax: RCPT TO:<address>");
    auto p = parse_rcpt_to(arg.substr(3), _env.smtputf8);
    if (!p) {
        std::error_code ec = p.error();
        if (is_path_error(ec))
            return reply(501, "5.1.3", path_error_text(ec, false));
        if (ec == errc::utf8_needs_smtputf8) {
            return reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8");
        }
        switch (static_cast<errc>(ec.value())) {
            case errc::unknown_parameter:
                return reply(555, "5.5.4", "Error: unsupported RCPT parameter");
            case errc::duplicate_parameter:
                return reply(501, "5.5.4", "Error: duplicate RCPT parameter");
            case errc::notify_syntax:
                return reply(501, "5.5.4",
                             "Error: NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY");
            case errc::orcpt_syntax:
                return reply(501, "5.5.4", "Error: bad ORCPT (addr-type;xtext, 500 at most)");
            default:
                return reply(501, "5.5.4", "Error: bad RCPT parameter syntax");
        }
    }
    if (_env.rcpt_to.size() >= _config.max_recipients) {
        return reply(452, "4.5.3", "Error: too many recipients");
    }
    if (!p->forward_path.postmaster && !relay_allowed()) {
        std::string domain = domain_of(p->forward_path.address);
        bool ours = false;
        for (const auto& d : _config.relay_domains) {
            if (equals_nocase(d, domain)) {
                ours = true;
                break;
            }
        }
        if (!ours)
            return reply(554, "5.7.1", "Error: relay access denied");
    }
    // rcpt_params stays empty until some recipient has DSN parameters, then one per recipient.
    if (p->has_dsn || !_env.rcpt_params.empty()) {
        _env.rcpt_params.resize(_env.rcpt_to.size());
        _env.rcpt_params.push_back(std::move(p->dsn));
    }
    _env.rcpt_to.push_back(std::move(p->forward_path.address));
    reply(250, "2.1.5", "Ok");
}

void server_session::cmd_data(std::string_view arg) {
    if (!arg.empty())
        return reply(501, "5.5.4", "Syntax: DATA");
    if (!_in_mail)
        return reply(503, "5.5.1", "Error: need MAIL command");
    if (_used_bdat)
        return reply(503, "5.5.1", "Error: DATA after BDAT");
    if (_env.rcpt_to.empty())
        return reply(503, "5.5.1", "Error: need RCPT command");
    if (!begin_content()) {
        reply(_pending);
        return;
    }
    append_reply(_out, 354, {}, "End data with <CR><LF>.<CR><LF>");
    _state = state::data;
}

void server_session::cmd_bdat(std::string_view arg) {
    // BDAT SP chunk-size [SP end-marker] (RFC 3030).
    std::size_t sp = arg.find(' ');
    std::string_view digits = arg.substr(0, sp);
    std::string_view marker =
        sp == std::string_view::npos ? std::string_view{} : arg.substr(sp + 1);
    std::uint64_t n = 0;
    bool ok =
        !digits.empty() && digits.size() <= 20 && (marker.empty() || equals_nocase(marker, "LAST"));
    for (unsigned char c : digits) {
        if (c < '0' || c > '9') {
            ok = false;
            break;
        }
        std::uint64_t d = c - '0';
        if (n > (UINT64_MAX - d) / 10) {
            ok = false;
            break;
        }
        n = n * 10 + d;
    }
    if (!ok)
        return reply(501, "5.5.4", "Syntax: BDAT size [LAST]");
    _bdat_remaining = n;
    _bdat_size = n;
    _bdat_last = !marker.empty();
    _bdat_discard = true;  // unless the transaction accepts this chunk
    if (!_in_mail) {
        _pending = {503, "5.5.1", "Error: need MAIL command"};
    } else if (_env.rcpt_to.empty()) {
        _pending = {503, "5.5.1", "Error: need RCPT command"};
    } else if (!_begun && !_used_bdat && !begin_content()) {
        reset_transaction();  // _pending holds the storage error
    } else {
        _used_bdat = true;
        _bdat_discard = false;
    }
    _state = state::bdat;
    if (n == 0)
        end_of_bdat_chunk();
}

void server_session::cmd_rset(std::string_view arg) {
    if (!arg.empty())
        return reply(501, "5.5.4", "Syntax: RSET");
    reset_transaction();
    reply(250, "2.0.0", "Ok");
}

void server_session::cmd_starttls(std::string_view arg) {
    if (!arg.empty())
        return reply(501, "5.5.4", "Syntax: STARTTLS");
    if (_tls)
        return reply(503, "5.5.1", "Error: TLS already active");
    if (!_config.tls_available)
        return reply(502, "5.5.1", "Error: STARTTLS not supported");
    if (in_transaction())
        return reply(503, "5.5.1", "Error: STARTTLS not permitted during a mail transaction");
    append_reply(_out, 220, "2.0.0", "Ready to start TLS");
    _state = state::tls_wait;  // process() drops whatever follows
}

void server_session::cmd_auth(std::string_view arg) {
    if (_auth == nullptr)
        return reply(502, "5.5.1", "Error: AUTH not supported");
    if (!_greeted || !_extended)
        return reply(503, "5.5.1", "Error: send EHLO first");
    if (!_tls && !_config.auth_plaintext) {
        return reply(538, "5.7.11", "Encryption required for requested authentication mechanism");
    }
    if (_authenticated)
        return reply(503, "5.5.1", "Error: already authenticated");
    if (in_transaction())
        return reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction");
    std::size_t sp = arg.find(' ');
    std::string_view mech = arg.substr(0, sp);
    std::optional<std::string_view> initial;
    if (sp != std::string_view::npos) {
        std::string_view ir = arg.substr(sp + 1);
        initial = ir == "=" ? std::string_view{} : ir;
        if (ir.empty() || ir.find(' ') != std::string_view::npos)
            return reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    }
    if (!valid_mechanism_name(mech))
        return reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
    const std::vector<std::string> mechanisms = advertised_mechanisms();
    const std::string* chosen = nullptr;
    for (const auto& m : mechanisms) {
        if (equals_nocase(m, mech)) {
            chosen = &m;
            break;
        }
    }
    if (chosen == nullptr)
        return reply(504, "5.5.4", "Unrecognized authentication type");
    apply_auth_step(_auth->start(*chosen, initial));
}

// A line answering a 334.
void server_session::auth_line(std::string_view line) {
    const bool cancelled = line == "*";
    if (cancelled || line.find_first_of("\r\n") != std::string_view::npos) {
        cancel_auth();
        _state = state::command;
        ++_stats.auth_failures;
        if (cancelled)
            return reply(501, "5.0.0", "Authentication aborted");
        return reply(501, "5.5.2", "Error: bare <CR> or <LF> in authentication response");
    }
    _state = state::command;
    apply_auth_step(_auth->step(line));
}

void server_session::apply_auth_step(auth_step step) {
    switch (step.what) {
        case auth_step::kind::challenge:
            if (step.text.find_first_of("\r\n") != std::string::npos)
                core::invariant_broken("smtp server session: CR or LF in an AUTH challenge");
            _out.append("334 ").append(step.text).append("\r\n");
            _state = state::auth_response;
            return;
        case auth_step::kind::pending:
            _state = state::auth_pending;
            return;
        case auth_step::kind::success:
            _state = state::command;
            _authenticated = true;
            _env.auth_user = std::move(step.user);
            ++_stats.authenticated;
            return reply(235, "2.7.0", "Authentication successful");
        case auth_step::kind::failure:
            break;
    }
    if (step.code < 400 || step.code > 599)
        core::invariant_broken("smtp server session: AUTH failure without a 4xx/5xx code");
    _state = state::command;
    ++_stats.auth_failures;
    if (step.close) {
        ++_stats.errors;
        return close_with(step.enhanced, step.text, step.code);
    }
    reply(step.code, step.enhanced, step.text);
}

void server_session::cancel_auth() {
    if (_auth != nullptr && (_state == state::auth_response || _state == state::auth_pending))
        _auth->cancel();
}

// --- content -----------------------------------------------------------------------------

bool server_session::begin_content() {
    auto r = _sink.begin(_env);
    if (!r) {
        _pending = storage_reply(r.error());
        reset_transaction();
        return false;
    }
    _begun = true;
    _scan = scan::line_start;
    _content_error = content_error::none;
    _content_size = 0;
    _line_length = 0;
    return true;
}

void server_session::fail_content(content_error e) {
    if (_content_error == content_error::none)
        _content_error = e;
}

void server_session::note_line_bytes(std::size_t n) {
    _line_length += n;
    if (_line_length + 2 > _config.max_line_length)
        fail_content(content_error::line_too_long);
}

void server_session::emit(const char* p, std::size_t n) {
    if (n == 0 || _content_error != content_error::none)
        return;
    if (n > _config.max_message_size - _content_size) {
        fail_content(content_error::too_big);
        return;
    }
    _content_size += n;
    auto r = _sink.append(std::string_view(p, n));
    if (!r) {
        _storage_error = r.error();
        fail_content(content_error::storage);
    }
}

// DATA: the input is already in transmission form. Only CRLF "." CRLF ends it, where the
// first CRLF may be the implicit one before the first line; everything before the final
// ".\r\n" goes to the sink unchanged. A held "." (or ".\r") may straddle receive() calls.
std::size_t server_session::scan_data(std::string_view s) {
    const char* b = s.data();
    const std::size_t n = s.size();
    std::size_t i = 0;
    std::size_t from = 0;  // start of content not yet given to the sink
    while (i < n) {
        switch (_scan) {
            case scan::mid_line:
            case scan::cr:
                i = scan_line(b, i, n);
                break;
            case scan::line_start:
                if (b[i] == '.') {
                    emit(b + from, i - from);
                    from = ++i;
                    _scan = scan::dot;
                } else {
                    _scan = scan::mid_line;
                }
                break;
            case scan::dot:
                if (b[i] == '\r') {
                    from = ++i;
                    _scan = scan::dot_cr;
                } else {
                    emit(".", 1);
                    _line_length = 1;
                    _scan = scan::mid_line;
                }
                break;
            case scan::dot_cr:
                if (b[i] == '\n') {
                    end_of_content();
                    return i + 1;
                }
                emit(".\r", 2);
                fail_content(content_error::bare_cr_lf);
                _line_length = 2;
                _scan = scan::mid_line;
                break;
        }
    }
    emit(b + from, n - from);
    return n;
}

// Inside a line and right after its CR: the same for DATA and BDAT. Only CRLF ends a line; a
// bare LF or CR marks the content as refused (it never ends a line or the data). Returns the
// index after the bytes consumed.
std::size_t server_session::scan_line(const char* b, std::size_t i, std::size_t n) {
    if (_scan == scan::cr) {
        if (b[i] == '\n') {
            _line_length = 0;
            _scan = scan::line_start;
            return i + 1;
        }
        // A bare CR: the byte after it is scanned again as line content (it may be the CR of
        // the real CRLF.CRLF).
        fail_content(content_error::bare_cr_lf);
        note_line_bytes(1);
        _scan = scan::mid_line;
        return i;
    }
    // One pass to the next CR, LF or NUL. A CRLF followed by anything but "." stays in this
    // loop: the line_start state only matters for a dot, and most lines have none.
    for (;;) {
        const std::size_t k = i + core::find_cr_lf_nul(b + i, n - i);
        note_line_bytes(k - i);
        if (k == n)
            return n;
        if (b[k] == '\r') {
            if (k + 2 < n && b[k + 1] == '\n' && b[k + 2] != '.') {
                _line_length = 0;
                i = k + 2;
                continue;
            }
            _scan = scan::cr;
            return k + 1;
        }
        // A bare LF; or a NUL, line content but never an end: a receiver that drops it would
        // see "\r\n\0.\r\n" as the end of data, so it is refused like a bare CR or LF.
        fail_content(b[k] == '\n' ? content_error::bare_cr_lf : content_error::nul);
        note_line_bytes(1);
        i = k + 1;
    }
}

std::size_t server_session::scan_bdat(std::string_view s) {
    std::size_t take = s.size() < _bdat_remaining ? s.size() : _bdat_remaining;
    if (!_bdat_discard)
        bdat_scan_bytes(s.data(), take);
    _bdat_remaining -= take;
    if (_bdat_remaining == 0)
        end_of_bdat_chunk();
    return take;
}

// BDAT: raw content. Converted to transmission form on the way to the sink: lines that
// begin with "." get another one. Bare CR/LF refuse the message as in DATA.
void server_session::bdat_scan_bytes(const char* b, std::size_t n) {
    std::size_t i = 0;
    std::size_t from = 0;
    while (i < n) {
        switch (_scan) {
            case scan::line_start:
                if (b[i] == '.') {
                    emit(b + from, i - from);
                    emit(".", 1);
                    note_line_bytes(1);
                    from = i;
                }
                _scan = scan::mid_line;
                break;
            case scan::mid_line:
            case scan::cr:
                i = scan_line(b, i, n);
                break;
            case scan::dot:
            case scan::dot_cr:
                core::invariant_broken("smtp server session: DATA scan state in BDAT");
        }
    }
    emit(b + from, n - from);
}

void server_session::end_of_bdat_chunk() {
    _state = state::command;
    if (_bdat_discard) {
        _bdat_discard = false;
        reply(_pending);
        return;
    }
    if (!_bdat_last) {
        char text[64] = "Ok: ";
        auto [end, ec] = std::to_chars(text + 4, text + 40, _bdat_size);
        (void)ec;
        std::memcpy(end, " octets received", 16);
        reply(250, "2.0.0", std::string_view(text, end + 16 - text));
        return;
    }
    if (_scan == scan::cr) {
        fail_content(content_error::bare_cr_lf);  // content ends in a bare CR
    } else if (_scan == scan::mid_line) {
        emit("\r\n", 2);
    }
    end_of_content();
}

void server_session::end_of_content() {
    _state = state::command;
    if (_content_error != content_error::none) {
        ++_stats.messages_rejected;
        content_error e = _content_error;
        reset_transaction();  // aborts the sink
        switch (e) {
            case content_error::bare_cr_lf:
                return reply(550, "5.6.0", "Error: message contains bare <CR> or <LF>");
            case content_error::nul:
                return reply(550, "5.6.0", "Error: message contains <NUL>");
            case content_error::line_too_long:
                return reply(500, "5.5.2", "Error: message line too long");
            case content_error::too_big:
                return reply(552, "5.3.4", "Error: message size exceeds fixed limit");
            case content_error::storage:
            case content_error::none:
            default:
                return reply(storage_reply(_storage_error));
        }
    }
    _begun = false;
    _committing = true;
    _state = state::awaiting_commit;
    _sink.commit();  // may call on_commit() before returning
}

void server_session::reset_transaction() {
    if (_begun) {
        _sink.abort();
        _begun = false;
    }
    _in_mail = false;
    _used_bdat = false;
    _env.mail_from.clear();
    _env.rcpt_to.clear();
    _env.body = mail::body_type::unspecified;
    _env.smtputf8 = false;
    _env.declared_size = 0;
    _env.ret = mail::dsn_ret::unspecified;
    _env.envid.clear();
    _env.rcpt_params.clear();
    _content_error = content_error::none;
    _scan = scan::line_start;
}

// --- events from the daemon --------------------------------------------------------------

void server_session::on_commit(result<std::string_view> queue_id) {
    if (queue_id) {
        // Composed in place: a queue id is 16 digits, and this reply is made once a message.
        constexpr std::string_view prefix = "Ok: queued as ";
        char buf[64];
        if (prefix.size() + queue_id->size() <= sizeof buf) {
            std::memcpy(buf, prefix.data(), prefix.size());
            std::memcpy(buf + prefix.size(), queue_id->data(), queue_id->size());
            on_commit_reply(250, "2.0.0", std::string_view(buf, prefix.size() + queue_id->size()));
        } else {
            on_commit_reply(250, "2.0.0", std::string(prefix) + std::string(*queue_id));
        }
    } else {
        const canned_reply r = storage_reply(queue_id.error());
        on_commit_reply(r.code, r.enhanced, r.text);
    }
}

void server_session::on_commit_reply(unsigned code, std::string_view enhanced,
                                     std::string_view text) {
    if (!_committing) {
        core::invariant_broken("smtp server session: on_commit() without a commit");
    }
    _committing = false;
    const bool accepted = code >= 200 && code < 300;
    if (accepted)
        ++_stats.messages_accepted;
    else
        ++_stats.messages_rejected;
    if (_state == state::closed)
        return;  // the peer went away; an accepted message stays queued
    // Our own refusals at commit (storage, injected by a sink) do not count towards max_errors.
    reply(code, enhanced, text, false);
    reset_transaction();
    _state = state::command;
    if (!_processing)
        drain();
}

void server_session::on_tls_established(tls_details details) {
    if (_state == state::closed)
        return;  // closed meanwhile (timeout, shutdown): nothing to resume
    if (_state != state::tls_wait)
        core::invariant_broken("smtp server session: on_tls_established() without STARTTLS");
    ++_stats.tls_established;
    // RFC 3207 4.2: forget everything learnt in plaintext.
    reset_transaction();
    _greeted = false;
    _extended = false;
    _authenticated = false;
    _env = mail::envelope{};
    _env.client_address = _peer.address;
    _env.tls_protocol = details.protocol;
    _env.tls_cipher = details.cipher;
    _tls = std::move(details);
    _in.clear();
    _state = state::command;
}

void server_session::on_tls_failed() {
    if (_state == state::closed)
        return;
    if (_state != state::tls_wait)
        core::invariant_broken("smtp server session: on_tls_failed() without STARTTLS");
    _state = state::closed;
    _in.clear();
}

void server_session::on_auth_result(auth_step result) {
    if (_state == state::closed)
        return;  // the peer went away meanwhile
    if (_state != state::auth_pending || result.what == auth_step::kind::pending)
        core::invariant_broken(
            "smtp server session: on_auth_result() without a pending AUTH, or pending again");
    apply_auth_step(std::move(result));
    if (!_processing)
        drain();
}

void server_session::on_timeout() {
    if (_state == state::closed)
        return;
    close_with("4.4.2", "Error: timeout exceeded");
    _in.clear();
}

void server_session::shutdown() {
    if (_state == state::closed || _state == state::awaiting_commit)
        return;
    close_with("4.3.2", "Service shutting down");
    _in.clear();
}

void server_session::on_peer_closed() {
    if (_begun) {
        _sink.abort();
        _begun = false;
    }
    cancel_auth();
    _state = state::closed;
    _in.clear();
}

}  // namespace ringmail::smtp
