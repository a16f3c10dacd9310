#include "ringmail/smtp/client_session.h"

#include "ringmail/core/base64.h"
#include "ringmail/core/panic.h"
#include "ringmail/smtp/dsn_params.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace ringmail::smtp {

namespace {

// Whether the content really holds octets above 127: a message declared BODY=8BITMIME is
// often plain ASCII, and then it can go to a 7-bit server as it is.
bool has_8bit_octets(const outbound_message& m) {
    auto any = [](std::string_view s) {
        for (const char c : s) {
            if (static_cast<unsigned char>(c) >= 0x80)
                return true;
        }
        return false;
    };
    return any(m.added_headers) || any(m.body);
}

// RFC 5321 4.5.3.1.3: a path is at most 256 octets; we refuse only what could break the
// command line (line breaks, NUL) or is absurdly long, and leave the rest to the server.
bool sendable_address(std::string_view a) {
    if (a.size() > 998)
        return false;
    for (char c : a) {
        if (c == '\r' || c == '\n' || c == '\0')
            return false;
    }
    return true;
}

bool keyword_is(std::string_view line, std::string_view keyword, std::string_view* param) {
    if (line.size() < keyword.size())
        return false;
    for (std::size_t i = 0; i < keyword.size(); ++i) {
        char c = line[i];
        if (c >= 'a' && c <= 'z')
            c = static_cast<char>(c - 'a' + 'A');
        if (c != keyword[i])
            return false;
    }
    if (line.size() > keyword.size() && line[keyword.size()] != ' ')
        return false;
    if (param) {
        *param =
            line.size() > keyword.size() ? line.substr(keyword.size() + 1) : std::string_view{};
    }
    return true;
}

// The mechanisms after "AUTH " (RFC 4954) or the pre-standard "AUTH=".
void parse_auth_mechanisms(std::string_view list, peer_capabilities& caps) {
    while (!list.empty()) {
        std::size_t sp = list.find(' ');
        std::string_view m = list.substr(0, sp);
        list = sp == std::string_view::npos ? std::string_view{} : list.substr(sp + 1);
        if (keyword_is(m, "PLAIN", nullptr))
            caps.auth_plain = true;
        if (keyword_is(m, "LOGIN", nullptr))
            caps.auth_login = true;
    }
}

// A transaction refused before anything was sent: every recipient without its own reason
// gets the transaction's.
void refuse(transaction_result& tx, server_reply why) {
    for (server_reply& rcpt : tx.rcpts) {
        if (rcpt.code == 0)
            rcpt = why;
    }
    tx.mail = std::move(why);
}

// accepted_any from the final outcomes.
void settle_accepted(transaction_result& tx) {
    tx.accepted_any = false;
    for (std::size_t i = 0; i < tx.rcpts.size(); ++i) {
        if (tx.delivered(i))
            tx.accepted_any = true;
    }
}

std::uint64_t parse_size(std::string_view s) {
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9')
            return 0;
        if (v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
}

}  // namespace

const server_reply& transaction_result::outcome(std::size_t i) const {
    if (!mail.positive())
        return mail;
    if (!rcpts[i].positive())
        return rcpts[i];
    return data;
}

void client_session::out_buffer::clear() {
    commands.clear();
    segments.clear();
    pieces.clear();
    body_of = 0;
    file_backed_body = {};
}

client_session::client_session(const client_config& config) : _config(config) {}

void client_session::check_invariant(bool ok, const char* what) const {
    if (!ok) {
        core::invariant_broken("smtp client session: {}", what);
    }
}

// --- output -------------------------------------------------------------------------------

void client_session::send_command(std::string_view a, std::string_view b, std::string_view c) {
    out_buffer& out = *_back;
    std::size_t offset = out.commands.size();
    out.commands.append(a).append(b).append(c).append("\r\n");
    std::size_t length = out.commands.size() - offset;
    if (!out.segments.empty() && out.segments.back().owned &&
        out.segments.back().offset + out.segments.back().length == offset) {
        out.segments.back().length += length;
    } else {
        out.segments.push_back(segment{true, offset, length, {}});
    }
}

void client_session::send_borrowed(std::string_view bytes) {
    if (bytes.empty())
        return;
    _back->segments.push_back(segment{false, 0, 0, bytes});
}

std::string_view client_session::file_backed_body() const noexcept {
    return _sending ? _front->file_backed_body : std::string_view{};
}

std::span<const std::string_view> client_session::begin_send() {
    if (_sending)
        return _front->pieces;
    if (_back->segments.empty())
        return {};
    std::swap(_front, _back);
    out_buffer& out = *_front;
    std::string_view commands = out.commands;
    for (const segment& s : out.segments) {
        out.pieces.push_back(s.owned ? commands.substr(s.offset, s.length) : s.view);
    }
    _sending = true;
    return out.pieces;
}

void client_session::end_send() {
    if (!_sending)
        return;
    if (_front->body_of != 0 && _front->body_of == _serial)
        _body_sent = true;
    _front->clear();
    _sending = false;
}

// --- state --------------------------------------------------------------------------------

bool client_session::ready() const {
    return _state == state::idle && !_quit_requested && _results.empty();
}

bool client_session::can_pipeline() const {
    return _caps.pipelining && _state == state::transaction && _tx && !_next && !_quit_requested &&
           _expected_head < _expected.size() && _expected.back().kind == expect_kind::data_end;
}

std::chrono::seconds client_session::current_timeout() const {
    switch (_state) {
        case state::greeting:
            return _config.greeting_timeout;
        case state::ehlo:
        case state::helo:
        case state::starttls:
        case state::auth:
            return _config.ehlo_timeout;
        case state::tls_wait:
            return std::chrono::seconds{0};  // the caller times its handshake
        case state::rset:
        case state::quit:
            return _config.mail_timeout;
        case state::idle:
        case state::closed:
            return std::chrono::seconds{0};
        case state::transaction:
            break;
    }
    if (_expected_head >= _expected.size())
        return _config.mail_timeout;
    switch (_expected[_expected_head].kind) {
        case expect_kind::mail:
            return _config.mail_timeout;
        case expect_kind::rcpt:
            return _config.rcpt_timeout;
        case expect_kind::data:
            return _config.data_init_timeout;
        case expect_kind::data_end:
            return _body_sent ? _config.data_term_timeout : _config.data_block_timeout;
    }
    return _config.mail_timeout;
}

void client_session::fail(server_reply reason) {
    _failed = true;
    // Every answer still missing becomes transient: the message is retried elsewhere/later.
    const server_reply pending =
        reason.transient()
            ? reason
            : make_reply(451, "4.4.0", "session failed: " + reason.to_string(), reason.local);
    auto settle = [&](transaction_result& tx) {
        if (tx.mail.code == 0)
            tx.mail = pending;
        for (server_reply& r : tx.rcpts) {
            if (r.code == 0)
                r = pending;
        }
        if (tx.data.code == 0)
            tx.data = pending;
        settle_accepted(tx);
        _results.push_back(std::move(tx));
    };
    if (_tx) {
        settle(*_tx);
        _tx.reset();
    }
    if (_next) {
        if (_next->refused) {
            _results.push_back(std::move(_next->tx));
        } else {
            settle(_next->tx);
        }
        _next.reset();
    }
    _last_error = std::move(reason);
    _expected.clear();
    _expected_head = 0;
    // Nothing more goes out on a dead session; the message views in it may die with the result.
    _back->clear();
    _state = state::closed;
}

void client_session::become_idle() {
    _state = state::idle;
    _expected.clear();
    _expected_head = 0;
    if (_quit_requested) {
        send_command("QUIT");
        _state = state::quit;
    }
}

void client_session::quit() {
    if (_state == state::closed || _quit_requested)
        return;
    _quit_requested = true;
    if (_state == state::idle)
        become_idle();
}

void client_session::on_timeout() {
    switch (_state) {
        case state::idle:
        case state::closed:
            return;
        case state::quit:
            _state = state::closed;
            return;
        default:
            fail(make_reply(451, "4.4.2", "timeout waiting for the server's reply",
                            local_failure::no_answer));
    }
}

void client_session::on_connection_lost() {
    if (_state == state::closed)
        return;
    if (_state == state::quit) {
        _state = state::closed;
        return;
    }
    fail(make_reply(451, "4.4.2", "connection lost", local_failure::connection_lost));
}

// --- input --------------------------------------------------------------------------------

void client_session::receive(std::string_view bytes) {
    while (!bytes.empty() && _state != state::closed) {
        if (_state == state::tls_wait) {
            // Plaintext after the 220 would be read as if it came through TLS.
            fail(make_reply(451, "4.7.0", "server sent data after its 220 to STARTTLS",
                            local_failure::protocol));
            return;
        }
        std::size_t n = _parser.feed(bytes);
        bytes.remove_prefix(n);
        if (_parser.failed()) {
            fail(make_reply(451, "4.5.0", "malformed reply from the server",
                            local_failure::protocol));
            return;
        }
        if (_parser.has_reply())
            on_reply(_parser.take());
    }
}

void client_session::on_reply(server_reply reply) {
    if (reply.code == 421 && _state != state::quit) {
        fail(std::move(reply));
        return;
    }
    switch (_state) {
        case state::greeting:
            on_greeting(reply);
            break;
        case state::ehlo:
            on_ehlo(reply);
            break;
        case state::helo:
            on_helo(reply);
            break;
        case state::starttls:
            on_starttls(reply);
            break;
        case state::auth:
            on_auth(reply);
            break;
        case state::transaction:
            on_transaction_reply(reply);
            break;
        case state::rset:
            if (reply.positive()) {
                become_idle();
            } else {
                fail(std::move(reply));
            }
            break;
        case state::quit:
            _state = state::closed;
            break;
        case state::idle:
        case state::tls_wait:
            fail(make_reply(451, "4.5.0", "unexpected reply from the server: " + reply.to_string(),
                            local_failure::protocol));
            break;
        case state::closed:
            break;
    }
}

void client_session::on_greeting(server_reply& reply) {
    if (reply.code != 220) {
        fail(std::move(reply));
        return;
    }
    send_command("EHLO ", _config.helo_name);
    _state = state::ehlo;
}

void client_session::on_ehlo(server_reply& reply) {
    if (reply.permanent()) {
        // RFC 5321 3.2: a server that does not know EHLO still knows HELO.
        send_command("HELO ", _config.helo_name);
        _state = state::helo;
        return;
    }
    if (!reply.positive()) {
        fail(std::move(reply));
        return;
    }
    _caps = peer_capabilities{};
    for (std::size_t i = 1; i < reply.lines.size(); ++i) {
        std::string_view line = reply.lines[i];
        std::string_view param;
        if (keyword_is(line, "PIPELINING", nullptr)) {
            _caps.pipelining = _config.pipelining;
        } else if (keyword_is(line, "SIZE", &param)) {
            _caps.size = true;
            _caps.max_size = parse_size(param);
        } else if (keyword_is(line, "8BITMIME", nullptr)) {
            _caps.eight_bit_mime = true;
        } else if (keyword_is(line, "SMTPUTF8", nullptr)) {
            _caps.smtputf8 = true;
        } else if (keyword_is(line, "CHUNKING", nullptr)) {
            _caps.chunking = true;
        } else if (keyword_is(line, "STARTTLS", nullptr)) {
            _caps.starttls = true;
        } else if (keyword_is(line, "DSN", nullptr)) {
            _caps.dsn = true;
        } else if (keyword_is(line, "ENHANCEDSTATUSCODES", nullptr)) {
            _caps.enhanced_status_codes = true;
        } else if (keyword_is(line, "AUTH", &param)) {
            parse_auth_mechanisms(param, _caps);
        } else if (line.size() > 5 && keyword_is(line.substr(0, 4), "AUTH", nullptr) &&
                   line[4] == '=') {
            parse_auth_mechanisms(line.substr(5), _caps);
        }
    }
    after_hello();
}

void client_session::on_helo(server_reply& reply) {
    if (!reply.positive()) {
        fail(std::move(reply));
        return;
    }
    _caps = peer_capabilities{};
    after_hello();
}

void client_session::after_hello() {
    if (!_tls_active && _config.starttls != tls_policy::none) {
        if (_caps.starttls) {
            send_command("STARTTLS");
            _state = state::starttls;
            return;
        }
        if (_config.starttls == tls_policy::required) {
            fail(make_reply(451, "4.7.0", "TLS required but not offered by peer",
                            local_failure::tls_unavailable));
            return;
        }
    }
    after_tls_decision();
}

void client_session::after_tls_decision() {
    if (_config.credentials && !_authenticated) {
        if (!_caps.auth_plain) {
            fail(make_reply(530, "5.7.0", "AUTH PLAIN required but not offered by peer",
                            local_failure::auth_unavailable));
            return;
        }
        std::string raw;
        raw.push_back('\0');
        raw.append(_config.credentials->user);
        raw.push_back('\0');
        raw.append(_config.credentials->password);
        send_command("AUTH PLAIN ", core::base64_encode(raw));
        _state = state::auth;
        return;
    }
    become_idle();
}

void client_session::on_starttls(server_reply& reply) {
    if (reply.code == 220) {
        _state = state::tls_wait;  // receive() refuses whatever follows the 220
        return;
    }
    if (_config.starttls == tls_policy::required) {
        fail(make_reply(451, "4.7.0", "TLS required but STARTTLS refused: " + reply.to_string(),
                        local_failure::tls));
        return;
    }
    after_tls_decision();  // opportunistic: carry on in plaintext
}

void client_session::on_tls_established() {
    if (_state == state::closed)
        return;  // failed meanwhile (bytes behind the 220, timeout): the caller closes
    check_invariant(_state == state::tls_wait, "on_tls_established without a 220 to STARTTLS");
    _tls_active = true;
    _parser = reply_parser{};
    _caps = peer_capabilities{};
    send_command("EHLO ", _config.helo_name);  // RFC 3207 4.2: learn the capabilities anew
    _state = state::ehlo;
}

void client_session::on_tls_failed(std::string_view reason) {
    if (_state == state::closed)
        return;
    check_invariant(_state == state::tls_wait, "on_tls_failed without a 220 to STARTTLS");
    std::string text = "TLS handshake failed";
    if (!reason.empty())
        text.append(": ").append(reason);
    fail(make_reply(451, "4.7.0", text, local_failure::tls));
}

void client_session::on_auth(server_reply& reply) {
    if (reply.code != 235) {
        fail(std::move(reply));
        return;
    }
    _authenticated = true;
    become_idle();
}

// --- transaction --------------------------------------------------------------------------

std::optional<server_reply> client_session::local_refusal(const outbound_message& m,
                                                          transaction_result& tx) const {
    if (m.smtputf8 && !_caps.smtputf8)
        return make_reply(553, "5.6.7", "the receiving server does not support SMTPUTF8");
    if (_caps.size && _caps.max_size > 0 && m.size > _caps.max_size)
        return make_reply(552, "5.3.4", "message size exceeds the receiving server's limit");
    if (!sendable_address(m.mail_from))
        return make_reply(501, "5.1.7", "sender address cannot be sent");
    bool any_sendable = false;
    for (std::size_t i = 0; i < m.rcpts.size(); ++i) {
        if (sendable_address(m.rcpts[i])) {
            any_sendable = true;
        } else {
            tx.rcpts[i] = make_reply(501, "5.1.3", "recipient address cannot be sent");
        }
    }
    if (!any_sendable)
        return make_reply(501, "5.1.3", "no recipient address can be sent");
    if (m.eight_bit && !_caps.eight_bit_mime && has_8bit_octets(m)) {
        // RFC 6152 section 3: never 8-bit octets to a server that did not announce 8BITMIME;
        // ringmail does not downgrade MIME, so the message goes back to its sender.
        return make_reply(554, "5.6.3",
                          "8-bit message and the receiving server does not support 8BITMIME");
    }
    return std::nullopt;
}

void client_session::start_transaction(const outbound_message& message) {
    check_invariant(!message.rcpts.empty(), "transaction without recipients");
    if (!ready()) {
        check_invariant(can_pipeline(), "start_transaction while not ready");
        start_pipelined(message);
        return;
    }
    _msg = message;
    _tx.emplace();
    _tx->rcpts.resize(message.rcpts.size());
    _next_rcpt = 0;
    _body_sent = false;
    ++_serial;
    _expected.clear();
    _expected_head = 0;

    if (auto why = local_refusal(message, *_tx)) {
        refuse(*_tx, std::move(*why));
        _results.push_back(std::move(*_tx));
        _tx.reset();
        return;
    }
    _state = state::transaction;
    if (_caps.pipelining) {
        send_pipelined_flight(message, *_tx, _expected);
    } else {
        append_mail_command(message);
        _expected.push_back(expect{expect_kind::mail});
    }
}

void client_session::start_pipelined(const outbound_message& message) {
    _next.emplace();
    _next->expected = std::move(_spare_expected);  // its capacity: no allocation per message
    _next->msg = message;
    _next->tx.rcpts.resize(message.rcpts.size());
    if (auto why = local_refusal(message, _next->tx)) {
        // Its result waits for the current transaction's, so results keep their order.
        refuse(_next->tx, std::move(*why));
        _next->refused = true;
        return;
    }
    send_pipelined_flight(message, _next->tx, _next->expected);
}

void client_session::send_pipelined_flight(const outbound_message& m, const transaction_result& tx,
                                           std::vector<expect>& into) {
    append_mail_command(m);
    into.push_back(expect{expect_kind::mail});
    for (std::uint32_t i = 0; i < m.rcpts.size(); ++i) {
        if (tx.rcpts[i].code == 0)
            send_rcpt(m, i, into);
    }
    send_command("DATA");
    into.push_back(expect{expect_kind::data});
}

void client_session::append_mail_command(const outbound_message& m) {
    std::string params;
    if (_caps.size)
        params += " SIZE=" + std::to_string(m.size);
    if (m.eight_bit && _caps.eight_bit_mime)
        params += " BODY=8BITMIME";
    if (m.smtputf8)
        params += " SMTPUTF8";
    if (_caps.dsn) {
        if (m.ret == mail::dsn_ret::full)
            params += " RET=FULL";
        else if (m.ret == mail::dsn_ret::headers)
            params += " RET=HDRS";
        if (!m.envid.empty())
            params.append(" ENVID=").append(m.envid);
    }
    send_command("MAIL FROM:<", m.mail_from, ">" + params);
}

void client_session::send_rcpt(const outbound_message& m, std::uint32_t index,
                               std::vector<expect>& into) {
    std::string params = ">";
    if (_caps.dsn && index < m.rcpt_dsn.size()) {
        const mail::rcpt_dsn& d = m.rcpt_dsn[index];
        if (d.notify != 0)
            params.append(" NOTIFY=").append(format_notify(d.notify));
        if (!d.orcpt.empty())
            params.append(" ORCPT=").append(d.orcpt);
    }
    send_command("RCPT TO:<", m.rcpts[index], params);
    into.push_back(expect{expect_kind::rcpt, index});
}

bool client_session::any_rcpt_accepted() const {
    if (!_tx->mail.positive())
        return false;
    for (const server_reply& r : _tx->rcpts) {
        if (r.positive())
            return true;
    }
    return false;
}

void client_session::send_next_rcpt_or_data() {
    while (_next_rcpt < _msg.rcpts.size() && _tx->rcpts[_next_rcpt].code != 0)
        ++_next_rcpt;
    if (_next_rcpt < _msg.rcpts.size()) {
        send_rcpt(_msg, _next_rcpt++, _expected);
        return;
    }
    if (any_rcpt_accepted()) {
        send_command("DATA");
        _expected.push_back(expect{expect_kind::data});
        return;
    }
    finish_transaction(true);
}

void client_session::send_body() {
    send_borrowed(_msg.added_headers);
    send_borrowed(_msg.body);
    std::string_view last = !_msg.body.empty() ? _msg.body : _msg.added_headers;
    if (last.empty() || last.ends_with("\r\n")) {
        send_command(".");
    } else {
        send_command("\r\n.");
    }
    _back->body_of = _serial;
    if (_msg.file_backed)
        _back->file_backed_body = _msg.body;
    _expected.push_back(expect{expect_kind::data_end});
}

void client_session::on_transaction_reply(server_reply& reply) {
    if (_expected_head >= _expected.size()) {
        fail(make_reply(451, "4.5.0", "unexpected reply from the server: " + reply.to_string(),
                        local_failure::protocol));
        return;
    }
    expect e = _expected[_expected_head++];
    bool intermediate = reply.intermediate();
    switch (e.kind) {
        case expect_kind::mail:
            if (intermediate)
                break;
            _tx->mail = std::move(reply);
            if (_caps.pipelining)
                return;
            if (_tx->mail.positive()) {
                send_next_rcpt_or_data();
            } else {
                finish_transaction(true);
            }
            return;
        case expect_kind::rcpt:
            if (intermediate)
                break;
            _tx->rcpts[e.rcpt] = std::move(reply);
            if (!_caps.pipelining)
                send_next_rcpt_or_data();
            return;
        case expect_kind::data:
            if (reply.code == 354) {
                if (any_rcpt_accepted()) {
                    send_body();
                } else {
                    // RFC 2920 3.1: DATA went out in the flight although nobody was accepted;
                    // end the (empty) message at once.
                    send_command(".");
                    _expected.push_back(expect{expect_kind::data_end});
                }
                return;
            }
            if (reply.positive() || intermediate)
                break;
            _tx->data = std::move(reply);
            finish_transaction(true);
            return;
        case expect_kind::data_end:
            if (intermediate)
                break;
            _tx->data = std::move(reply);
            finish_transaction(false);
            return;
    }
    fail(make_reply(451, "4.5.0", "reply out of sequence from the server: " + reply.to_string(),
                    local_failure::protocol));
}

void client_session::finish_transaction(bool need_rset) {
    transaction_result& tx = *_tx;
    for (server_reply& r : tx.rcpts) {
        if (r.code == 0)
            r = tx.mail;  // never sent: MAIL was refused
    }
    settle_accepted(tx);
    _results.push_back(std::move(tx));
    _tx.reset();
    _expected.clear();
    _expected_head = 0;
    if (need_rset) {
        // Only a transaction that ended before its data can need one, and nothing is
        // pipelined behind such a transaction.
        check_invariant(!_next, "RSET with a transaction pipelined behind");
        send_command("RSET");
        _state = state::rset;
        return;
    }
    if (!_next) {
        become_idle();
        return;
    }
    if (_next->refused) {
        _results.push_back(std::move(_next->tx));
        _next.reset();
        become_idle();
        return;
    }
    // The pipelined transaction becomes the current one; its replies are the next to come.
    _msg = _next->msg;
    _tx.emplace(std::move(_next->tx));
    _spare_expected = std::move(_expected);
    _spare_expected.clear();
    _expected = std::move(_next->expected);
    _expected_head = 0;
    _next_rcpt = 0;
    _body_sent = false;
    ++_serial;
    _next.reset();
}

std::optional<transaction_result> client_session::take_result() {
    if (_results.empty())
        return std::nullopt;
    std::optional<transaction_result> r = std::move(_results.front());
    _results.erase(_results.begin());
    return r;
}

}  // namespace ringmail::smtp
