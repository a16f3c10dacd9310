// Per-shard wolfSSL contexts: server_context for inbound TLS (STARTTLS, smtps), client_context
// for outbound STARTTLS.
//
// Thread model: a context is built by the shard that uses it and used only there (it keeps a
// core::oncore). wolfSSL documents a WOLFSSL_CTX as shareable once set up, but wolfSSL_new and
// wolfSSL_free update its reference count and its certificate manager under wolfSSL mutexes;
// one context per shard keeps every per-connection path free of shared locks, and costs only
// start-up time. What may be shared is immutable: server_credentials and ticket_key
// (tls/credentials.h). Sessions hold a shared_ptr to their context, so a shard swapping in a
// new context after a reload leaves running sessions untouched.
// Failures are start-up or reload errors returned as values with a text naming the cause.
#pragma once

#include "ringmail/core/oncore.h"
#include "ringmail/core/result.h"
#include "ringmail/tls/client_hello.h"
#include "ringmail/tls/credentials.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct WOLFSSL_CTX;

namespace ringmail::tls {

enum class tls_version { tls1_2, tls1_3 };

// Both sides: TLS 1.2 and 1.3 only; TLS 1.2 limited to ECDHE with AES-GCM or
// ChaCha20-Poly1305, TLS 1.3 with its standard AEAD suites; key exchange over X25519, P-256
// or P-384 only.
class server_context {
  public:
    // Builds one wolfSSL context per certificate of `credentials`, all using `tickets`.
    static result<std::shared_ptr<const server_context>> create(
        std::shared_ptr<const server_credentials> credentials,
        std::shared_ptr<const ticket_key> tickets, std::string& error_text);

    ~server_context();
    server_context(const server_context&) = delete;
    server_context& operator=(const server_context&) = delete;

    const server_credentials& credentials() const noexcept { return *_credentials; }
    // What the server may choose (IANA values), for check_client_hello.
    hello_policy hello() const noexcept { return {_suites, _groups}; }
    // Internal to tls: the wolfSSL context of credentials().entries()[i].
    WOLFSSL_CTX* native(std::size_t i) const noexcept { return _ctx[i]; }
    void check_shard() const noexcept { _oncore.check(); }

    server_context(std::shared_ptr<const server_credentials> credentials,
                   std::shared_ptr<const ticket_key> tickets);

  private:
    std::shared_ptr<const server_credentials> _credentials;
    std::shared_ptr<const ticket_key> _tickets;
    std::vector<WOLFSSL_CTX*> _ctx;
    std::vector<std::uint16_t> _suites;
    std::vector<std::uint16_t> _groups;
    core::oncore _oncore;
};

enum class verify_mode {
    opportunistic,  // encrypt whatever the peer presents; verification is only reported
    verify,         // the chain must reach a trusted CA and the certificate name the host
};

struct client_options {
    verify_mode mode = verify_mode::opportunistic;
    bool system_ca = true;      // trust the system CA store (wolfSSL_CTX_load_system_CA_certs)
    std::string extra_ca_file;  // PEM CA file trusted in addition (tests, private CAs)
    std::optional<tls_version> max_version;  // cap the offered version (tests, interop)
};

class client_context {
  public:
    // In verify mode a system store that does not load is an error; in opportunistic mode it
    // only means every peer reports "not verified".
    static result<std::shared_ptr<const client_context>> create(const client_options& options,
                                                                std::string& error_text);

    ~client_context();
    client_context(const client_context&) = delete;
    client_context& operator=(const client_context&) = delete;

    verify_mode mode() const noexcept { return _mode; }
    WOLFSSL_CTX* native() const noexcept { return _ctx; }
    void check_shard() const noexcept { _oncore.check(); }

    explicit client_context(verify_mode mode) : _mode(mode) {}

  private:
    verify_mode _mode;
    WOLFSSL_CTX* _ctx = nullptr;
    core::oncore _oncore;
};

// wolfSSL (built with FP_ECC) keeps a per-thread cache of precomputed ECC points. A thread that
// ran handshakes (a shard) calls this before it exits, or the cache is lost memory
// (LeakSanitizer reports it). Harmless on a thread that never used ECC.
void release_thread_cache() noexcept;

}  // namespace ringmail::tls
