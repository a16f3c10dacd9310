// tls::session: one TLS connection as a pure record pump over memory buffers (wolfSSL).
//
// No sockets and no clock: the owner feeds the ciphertext it received (any split), drives the
// handshake with step(), reads the plaintext, writes plaintext and sends whatever
// take_output() hands back. The daemon puts it between its io_uring socket and the SMTP state
// machine (inbound STARTTLS/smtps, outbound STARTTLS); the tools do the same.
//
// Owned by one shard (like its context); never shared. Bad peer input (garbage, a refused
// certificate, a bad record, EOF mid-handshake) ends in failed() with a short error() text;
// the owner logs it, sends take_output() (it may hold an alert) and closes. Nothing is counted
// here: the daemon counts. Buffers are bounded: ciphertext input past max_input is an error,
// write() stops taking plaintext while the output holds max_output bytes, read() hands out at
// most max_read bytes per call.
#pragma once

#include "ringmail/core/stream_connection.h"
#include "ringmail/tls/context.h"
#include "ringmail/tls/errc.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

struct WOLFSSL;
struct WOLFSSL_SESSION;

namespace ringmail::tls {

struct session_limits {
    std::size_t max_input = 256 * 1024;   // ciphertext received but not yet consumed
    std::size_t max_output = 256 * 1024;  // ciphertext waiting for take_output()
    std::size_t max_read = 256 * 1024;    // plaintext appended by one read() call
};

// A client's resumable session (ticket), taken from an established client session with
// save() and offered by a later one. Owned by whoever holds it; belongs to one shard.
class saved_session {
  public:
    saved_session() = default;
    explicit saved_session(WOLFSSL_SESSION* s) noexcept : _s(s) {}
    explicit operator bool() const noexcept { return _s != nullptr; }
    WOLFSSL_SESSION* native() const noexcept { return _s.get(); }

  private:
    struct deleter {
        void operator()(WOLFSSL_SESSION* s) const noexcept;
    };
    std::unique_ptr<WOLFSSL_SESSION, deleter> _s;
};

// The byte_transform of a core::stream_connection that speaks TLS.
class session final : public core::byte_transform {
  public:
    // Server side: waits for a ClientHello; SNI picks the certificate.
    explicit session(std::shared_ptr<const server_context> context, session_limits limits = {});
    // Client side: sends SNI with `host` (unless it is an IP literal) and, in verify mode,
    // checks the certificate names it. `resume` offers a saved session (may be null).
    session(std::shared_ptr<const client_context> context, std::string_view host,
            const saved_session* resume = nullptr, session_limits limits = {});
    ~session() override;
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    // --- input -------------------------------------------------------------------------
    // Bytes received from the socket. Past max_input the session fails (input_overflow).
    void feed(std::string_view ciphertext) override;
    // The socket returned 0. Mid-handshake this fails the session; afterwards it is
    // peer_closed() (a truncation unless close_notify_received()).
    void on_eof() override;
    bool input_full() const noexcept { return buffered_input() >= _limits.max_input; }
    std::size_t buffered_input() const noexcept { return _in.size() - _in_pos; }
    std::size_t input_room() const noexcept override {
        return input_full() ? 0 : _limits.max_input - buffered_input();
    }

    // --- progress ----------------------------------------------------------------------
    // Advances the handshake with the input fed so far (the client's first step() produces
    // its ClientHello). No-op once established or failed.
    void step() override;
    // Appends the application data available now (at most max_read bytes) to `out`; returns
    // how many bytes. Also consumes post-handshake messages (TLS 1.3 tickets, close_notify).
    std::size_t read(std::string& out) override;
    // Encrypts plaintext; returns how much was taken (less than asked while the output holds
    // max_output bytes; 0 before the handshake ends or after close()).
    std::size_t write(std::string_view plaintext) override;
    // Queues close_notify; write() takes nothing afterwards.
    void close() override;
    // Swaps the pending ciphertext into `out` (pass an empty string; its capacity is reused).
    void take_output(std::string& out) override;
    bool has_output() const noexcept override { return !_out.empty(); }

    // --- state -------------------------------------------------------------------------
    bool handshaking() const noexcept override { return _state == state::handshaking; }
    bool established() const noexcept override { return _state == state::established; }
    bool failed() const noexcept override { return _state == state::failed; }
    bool peer_closed() const noexcept { return _close_notify || (_eof && _in_pos == _in.size()); }
    bool close_notify_received() const noexcept override { return _close_notify; }
    std::error_code error_code() const noexcept { return _error_code; }
    // Short text for logs, e.g. "handshake failed: ASN no signer error to confirm failure".
    const std::string& error() const noexcept override { return _error; }

    // --- information (valid once established) -------------------------------------------
    bool is_server() const noexcept { return _server != nullptr; }
    std::string_view version() const noexcept { return _version; }  // "TLSv1.3"
    std::string_view cipher() const noexcept { return _cipher; }    // wolfSSL's suite name
    // Server: the name the client asked for (SNI), empty without SNI.
    const std::string& server_name() const noexcept { return _server_name; }
    bool resumed() const noexcept { return _resumed; }
    // Client: whether the chain reached a trusted CA and the certificate names the host; in
    // opportunistic mode the session goes on either way. verify_error() says why not.
    bool verified() const noexcept { return _verified; }
    const std::string& verify_error() const noexcept { return _verify_error; }
    // Client: the peer certificate's subject CN followed by its DNS subjectAltNames.
    std::vector<std::string> peer_names() const;
    // Client: the session to offer for resumption next time (empty if none was issued).
    saved_session save() const;

    // Internal to tls (wolfSSL callbacks).
    int on_recv(char* buf, int size) noexcept;
    int on_send(const char* buf, int size) noexcept;
    bool on_verify_failure(std::string_view why);  // true: go on anyway (opportunistic)
    void on_server_name(std::string_view name) { _server_name.assign(name); }

  private:
    enum class state : std::uint8_t { handshaking, established, failed };

    void init_io();
    void finish_handshake();
    void fail(errc code, std::string_view what, int wolf_error);
    void compact_input();

    std::shared_ptr<const server_context> _server;
    std::shared_ptr<const client_context> _client;
    session_limits _limits;
    WOLFSSL* _ssl = nullptr;
    state _state = state::handshaking;
    std::string _in;
    std::size_t _in_pos = 0;
    std::string _out;
    bool _eof = false;
    bool _close_notify = false;
    bool _close_sent = false;
    bool _resumed = false;
    bool _hello_checked = false;  // server: the ClientHello went through check_client_hello
    bool _verified = false;
    bool _verify_failed = false;
    std::error_code _error_code;
    std::string _error;
    std::string_view _version;
    std::string_view _cipher;
    std::string _server_name;
    std::string _verify_error;
};

}  // namespace ringmail::tls
