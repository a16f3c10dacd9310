#include "ringmail/tls/session.h"

#include "ringmail/tls/client_hello.h"

#include "wolfssl.h"
#include <algorithm>
#include <arpa/inet.h>
#include <cstring>

namespace ringmail::tls {

namespace detail {

int io_recv(WOLFSSL*, char* buf, int size, void* s) {
    return static_cast<session*>(s)->on_recv(buf, size);
}

int io_send(WOLFSSL*, char* buf, int size, void* s) {
    return static_cast<session*>(s)->on_send(buf, size);
}

int verify_peer(int preverify, WOLFSSL_X509_STORE_CTX* store) {
    auto* ssl = static_cast<WOLFSSL*>(
        wolfSSL_X509_STORE_CTX_get_ex_data(store, wolfSSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* s = ssl != nullptr ? static_cast<session*>(wolfSSL_GetIOReadCtx(ssl)) : nullptr;
    if (s == nullptr)
        return preverify;
    if (preverify != 0)
        return 1;
    const int err = wolfSSL_X509_STORE_CTX_get_error(store);
    const char* why = err > 0 ? wolfSSL_X509_verify_cert_error_string(err)
                              : wolfSSL_ERR_reason_error_string(static_cast<unsigned long>(err));
    return s->on_verify_failure(why != nullptr ? std::string_view(why) : "not verified") ? 1 : 0;
}

}  // namespace detail

void saved_session::deleter::operator()(WOLFSSL_SESSION* s) const noexcept {
    wolfSSL_SESSION_free(s);
}

namespace {
constexpr std::size_t record_size = 16384;  // TLS maximum plaintext per record
}

session::session(std::shared_ptr<const server_context> context, session_limits limits)
    : _server(std::move(context)), _limits(limits) {
    _server->check_shard();
    _ssl = wolfSSL_new(_server->native(0));
    init_io();
}

session::session(std::shared_ptr<const client_context> context, std::string_view host,
                 const saved_session* resume, session_limits limits)
    : _client(std::move(context)), _limits(limits) {
    _client->check_shard();
    _ssl = wolfSSL_new(_client->native());
    init_io();
    if (_ssl == nullptr)
        return;
    const std::string h(host);
    in6_addr probe;
    const bool literal =
        inet_pton(AF_INET, h.c_str(), &probe) == 1 || inet_pton(AF_INET6, h.c_str(), &probe) == 1;
    if (!h.empty() && !literal &&
        wolfSSL_UseSNI(_ssl, WOLFSSL_SNI_HOST_NAME, h.data(), static_cast<word16>(h.size())) !=
            WOLFSSL_SUCCESS) {
        fail(errc::context_failed, "cannot set SNI", 0);
        return;
    }
    if (!h.empty() && wolfSSL_check_domain_name(_ssl, h.c_str()) != WOLFSSL_SUCCESS) {
        fail(errc::context_failed, "cannot set the host name to check", 0);
        return;
    }
    if (resume != nullptr && *resume)
        wolfSSL_set_session(_ssl, resume->native());  // refused (expired): full handshake
}

void session::init_io() {
    if (_ssl == nullptr) {
        fail(errc::context_failed, "cannot create a TLS session", 0);
        return;
    }
    wolfSSL_SetIOReadCtx(_ssl, this);
    wolfSSL_SetIOWriteCtx(_ssl, this);
}

session::~session() {
    if (_ssl != nullptr)
        wolfSSL_free(_ssl);
}

// --- wolfSSL I/O -----------------------------------------------------------------------------

int session::on_recv(char* buf, int size) noexcept {
    const std::size_t avail = _in.size() - _in_pos;
    if (avail == 0)
        return _eof ? WOLFSSL_CBIO_ERR_CONN_CLOSE : WOLFSSL_CBIO_ERR_WANT_READ;
    const std::size_t n = std::min(avail, static_cast<std::size_t>(size));
    std::memcpy(buf, _in.data() + _in_pos, n);
    _in_pos += n;
    return static_cast<int>(n);
}

int session::on_send(const char* buf, int size) noexcept {
    // Never refused: write() bounds how much plaintext it encrypts, and handshake flights are
    // small, so the output stays near max_output.
    _out.append(buf, static_cast<std::size_t>(size));
    return size;
}

bool session::on_verify_failure(std::string_view why) {
    if (!_verify_failed) {
        _verify_failed = true;
        _verify_error.assign(why);
    }
    // Opportunistic: encrypt anyway (RFC 7435); the outcome stays visible in verified().
    return _client && _client->mode() == verify_mode::opportunistic;
}

// --- input -----------------------------------------------------------------------------------

void session::compact_input() {
    if (_in_pos == _in.size()) {
        _in.clear();
        _in_pos = 0;
    } else if (_in_pos > _in.size() / 2) {
        _in.erase(0, _in_pos);
        _in_pos = 0;
    }
}

void session::feed(std::string_view ciphertext) {
    if (_state == state::failed || _eof)
        return;
    compact_input();
    if (buffered_input() + ciphertext.size() > _limits.max_input) {
        fail(errc::input_overflow, "input limit exceeded", 0);
        return;
    }
    _in.append(ciphertext);
}

void session::on_eof() {
    _eof = true;
    if (_state == state::handshaking)
        step();
}

// --- progress --------------------------------------------------------------------------------

void session::step() {
    if (_state != state::handshaking)
        return;
    if (_server && !_hello_checked) {
        // Before wolfSSL reads the ClientHello: one it would refuse for its length (more than
        // 150 suites) is shortened to the suites we have, one without a group of ours is
        // refused (see client_hello.h).
        const hello_check c = check_client_hello(_in, _in_pos, _server->hello());
        if (c == hello_check::need_more) {
            if (_eof)
                fail(errc::connection_closed, "handshake failed: connection closed", 0);
            return;
        }
        if (c == hello_check::no_common_group) {
            _out += handshake_failure_alert();
            fail(errc::handshake_failed,
                 "handshake failed: no common group (X25519, P-256, P-384 only)", 0);
            return;
        }
        _hello_checked = true;
    }
    const int rc = _server ? wolfSSL_accept(_ssl) : wolfSSL_connect(_ssl);
    if (rc == WOLFSSL_SUCCESS) {
        finish_handshake();
        return;
    }
    const int err = wolfSSL_get_error(_ssl, rc);
    if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) {
        if (_eof && buffered_input() == 0)
            fail(errc::connection_closed, "handshake failed: connection closed", 0);
        return;
    }
    if (_eof && buffered_input() == 0) {
        fail(errc::connection_closed, "handshake failed: connection closed", 0);
        return;
    }
    if (_verify_failed)
        fail(errc::handshake_failed, "handshake failed: certificate not verified: " + _verify_error,
             0);
    else
        fail(errc::handshake_failed, "handshake failed", err);
}

void session::finish_handshake() {
    _state = state::established;
    if (const char* v = wolfSSL_get_version(_ssl))
        _version = v;
    if (const char* c = wolfSSL_get_cipher_name(_ssl))
        _cipher = c;
    _resumed = wolfSSL_session_reused(_ssl) != 0;
    if (_client) {
        if (_resumed) {
            // No certificate in an abbreviated handshake: verify mode only resumes sessions
            // that were verified; opportunistic ones are not vouched for.
            _verified = _client->mode() == verify_mode::verify;
            if (!_verified)
                _verify_error = "resumed session, certificate not presented";
        } else {
            WOLFSSL_X509* peer = wolfSSL_get_peer_certificate(_ssl);
            _verified = !_verify_failed && peer != nullptr;
            wolfSSL_X509_free(peer);
            if (!_verified && _verify_error.empty())
                _verify_error = "no certificate";
        }
    }
}

std::size_t session::read(std::string& out) {
    if (_state == state::handshaking)
        step();
    if (_state != state::established || _close_notify)
        return 0;
    const std::size_t start = out.size();
    while (out.size() - start < _limits.max_read) {
        const std::size_t room = std::min(record_size, _limits.max_read - (out.size() - start));
        const std::size_t old = out.size();
        out.resize(old + room);
        const int rc = wolfSSL_read(_ssl, out.data() + old, static_cast<int>(room));
        if (rc > 0) {
            out.resize(old + static_cast<std::size_t>(rc));
            continue;
        }
        out.resize(old);
        const int err = wolfSSL_get_error(_ssl, rc);
        if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE)
            break;
        if (err == WOLFSSL_ERROR_ZERO_RETURN) {
            _close_notify = true;
            break;
        }
        if (_eof && buffered_input() == 0)
            break;  // EOF without close_notify: peer_closed(), not an error of ours
        fail(errc::protocol_error, "read failed", err);
        break;
    }
    return out.size() - start;
}

std::size_t session::write(std::string_view plaintext) {
    if (_state != state::established || _close_sent)
        return 0;
    std::size_t done = 0;
    while (done < plaintext.size() && _out.size() < _limits.max_output) {
        const std::size_t n = std::min(record_size, plaintext.size() - done);
        const int rc = wolfSSL_write(_ssl, plaintext.data() + done, static_cast<int>(n));
        if (rc <= 0) {
            fail(errc::protocol_error, "write failed", wolfSSL_get_error(_ssl, rc));
            break;
        }
        done += static_cast<std::size_t>(rc);
    }
    return done;
}

void session::close() {
    if (_state != state::established || _close_sent)
        return;
    _close_sent = true;
    wolfSSL_shutdown(_ssl);  // sends close_notify; does not wait for the peer's
}

void session::take_output(std::string& out) {
    out.swap(_out);
    _out.clear();
}

void session::fail(errc code, std::string_view what, int wolf_error) {
    _state = state::failed;
    _error_code = make_error_code(code);
    _error.assign(what);
    if (wolf_error != 0) {
        _error += ": ";
        _error += detail::error_text(wolf_error);
    }
}

// --- information -----------------------------------------------------------------------------

std::vector<std::string> session::peer_names() const {
    std::vector<std::string> names;
    if (_ssl == nullptr)
        return names;
    WOLFSSL_X509* x = wolfSSL_get_peer_certificate(_ssl);
    if (x == nullptr)
        return names;
    if (const char* cn = wolfSSL_X509_get_subjectCN(x); cn != nullptr && *cn != '\0')
        names.emplace_back(cn);
    while (const char* alt = wolfSSL_X509_get_next_altname(x))
        names.emplace_back(alt);
    wolfSSL_X509_free(x);
    return names;
}

saved_session session::save() const {
    if (_ssl == nullptr || _state != state::established || !_client)
        return {};
    return saved_session(wolfSSL_get1_session(_ssl));
}

}  // namespace ringmail::tls
