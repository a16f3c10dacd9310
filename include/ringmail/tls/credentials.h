// TLS credentials shared by every shard: the server's certificate/key pairs and the session
// ticket key.
//
// Both are built on the main thread (start-up, SIGHUP reload) and are immutable afterwards, so
// every shard may hold the same object through a shared_ptr<const ...> and read it without
// locks. Each shard builds its own wolfSSL contexts from them (tls/context.h). A reload builds
// a new server_credentials object and hands it to the shards; sessions already running keep
// the context (and credentials) they started with, so a reload never drops a session.
// Failure to load is a start-up or reload error: load() returns an errc plus a message naming
// the file and the reason; nothing here aborts.
#pragma once

#include "ringmail/core/result.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::tls {

// Encrypts and authenticates session tickets (ChaCha20-Poly1305). Created once per process and
// passed to every server context, so a ticket issued by one shard resumes on any other and
// after a credentials reload. Keys live in memory only: a restart invalidates old tickets
// (clients fall back to a full handshake). Read-only after creation: safe on every thread.
class ticket_key {
  public:
    static constexpr std::size_t name_size = 16;
    static constexpr std::size_t key_size = 32;

    // A fresh random key from wolfCrypt's RNG.
    static result<std::shared_ptr<const ticket_key>> generate();

    const std::array<std::uint8_t, name_size>& name() const noexcept { return _name; }
    const std::array<std::uint8_t, key_size>& key() const noexcept { return _key; }

    ticket_key(const std::array<std::uint8_t, name_size>& name,
               const std::array<std::uint8_t, key_size>& key) noexcept
        : _name(name), _key(key) {}
    ~ticket_key();
    ticket_key(const ticket_key&) = delete;
    ticket_key& operator=(const ticket_key&) = delete;

  private:
    std::array<std::uint8_t, name_size> _name;
    std::array<std::uint8_t, key_size> _key;
};

// One certificate chain (PEM, leaf first) and its private key (PEM), by file name.
struct cert_key_files {
    std::string cert_file;
    std::string key_file;
};

// The server's certificates, loaded and checked once. The first pair is the default; the others
// are chosen when the client's SNI matches one of their DNS names (subjectAltName DNS entries,
// else the subject CN; "*.example.test" matches exactly one label).
class server_credentials {
  public:
    struct entry {
        std::string cert_file;
        std::string cert_pem;  // the chain as read, validated by wolfSSL
        std::string key_pem;
        std::vector<std::string> names;  // lower case, as in the certificate
    };

    // Reads and checks every pair: the files exist, hold PEM, and each key matches its
    // certificate. On failure `error_text` says which file and why, e.g.
    // "tls: /etc/ringmail/mx.key: private key does not match /etc/ringmail/mx.pem".
    static result<std::shared_ptr<const server_credentials>> load(
        std::span<const cert_key_files> pairs, std::string& error_text);

    const std::vector<entry>& entries() const noexcept { return _entries; }
    // Index of the entry serving `server_name` (case-insensitive, trailing dot ignored):
    // an exact name first, then a wildcard, else 0 (the default).
    std::size_t select(std::string_view server_name) const noexcept;

    explicit server_credentials(std::vector<entry> entries) : _entries(std::move(entries)) {}

  private:
    std::vector<entry> _entries;
};

// True when `pattern` (a certificate DNS name, lower case) covers `host` (lower case, no
// trailing dot): equal, or "*.rest" where host is one label followed by ".rest".
bool name_matches(std::string_view pattern, std::string_view host) noexcept;

}  // namespace ringmail::tls
