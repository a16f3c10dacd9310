// Error codes of ringmail::tls: why credentials or a context could not be built, or why a
// session stopped.
//
// Plain values, no shard affinity. Credential and context errors happen at start-up or reload
// (the caller prints the accompanying text and exits, or keeps the old credentials); session
// errors are bad peer input: the daemon logs the session's error() and closes the connection.
#pragma once

#include <system_error>

namespace ringmail::tls {

enum class errc {
    no_certificates = 1,    // server credentials without any cert/key pair
    file_unreadable,        // a certificate or key file is missing or cannot be read
    bad_certificate,        // the certificate file holds no usable PEM certificate
    bad_private_key,        // the key file holds no usable PEM private key
    key_mismatch,           // the private key does not belong to the certificate
    bad_ca_file,            // the extra CA file of a client context does not load
    system_ca_unavailable,  // the system CA store could not be loaded
    context_failed,         // wolfSSL refused to build a context (out of memory, bad setting)
    handshake_failed,       // the peer's handshake or certificate was refused
    protocol_error,         // a record failed after the handshake (bad MAC, unexpected message)
    input_overflow,         // more ciphertext arrived than the session's input limit
    connection_closed,      // EOF from the socket before the handshake finished
};

const std::error_category& tls_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), tls_category()};
}

}  // namespace ringmail::tls

template <>
struct std::is_error_code_enum<ringmail::tls::errc> : std::true_type {};
