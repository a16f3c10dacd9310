// A look at a server connection's first TLS bytes before wolfSSL reads them, for the one
// ClientHello Debian's wolfSSL 5.5.4 cannot take: more than 150 cipher suites.
//
// wolfSSL refuses a ClientHello whose suite list is longer than WOLFSSL_MAX_SUITE_SZ (300
// bytes, fixed when the library is built) with decode_error, so scanners that offer every
// suite they know (sslscan: 344) see no handshake at all. check_client_hello keeps, of such
// a list, the suites the server can choose (in the client's order) plus the signalling values
// (renegotiation info, fallback), so wolfSSL reads the hello and answers with the ServerHello
// (or handshake_failure) it would give to the full list: the server's preference decides, and
// it only prefers suites it has. Every other ClientHello is left untouched, byte for byte.
//
// The same look answers a hello whose supported_groups lists none of the server's groups
// (X25519, P-256, P-384): wolfSSL 5.5.4 would go on in TLS 1.2 with P-256, which the client
// never offered (RFC 8422 5.1 forbids it); the caller refuses it with handshake_failure.
//
// The edited hello is not the one the client hashed into its transcript, so a client that
// goes on past the ServerHello fails at Finished: this serves scanners (which read the
// ServerHello and stop), not real clients, none of which offers 150 suites.
//
// Pure: bytes in, bytes out, no state. Any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ringmail::tls {

enum class hello_check {
    need_more,        // the first handshake message is not complete yet: wait for more bytes
    untouched,        // hand the bytes to wolfSSL as they are (also: not a TLS ClientHello)
    rewritten,        // `in` now starts (at `pos`) with a ClientHello wolfSSL accepts
    no_common_group,  // supported_groups names none of `server_groups`: refuse the handshake
};

struct hello_policy {
    std::span<const std::uint16_t> suites;  // IANA values the server may choose
    std::span<const std::uint16_t> groups;  // named groups the server may use
};

// The most suites wolfSSL 5.5.4 takes in one ClientHello (WOLFSSL_MAX_SUITE_SZ / 2).
inline constexpr std::size_t max_hello_suites = 150;

// Looks at the TLS records starting at in[pos]. A ClientHello (possibly spread over several
// handshake records, at most 64 KiB) listing more than `max_suites` suites is rewritten in
// place as one or more records holding the shorter list; bytes after it are kept.
hello_check check_client_hello(std::string& in, std::size_t pos, const hello_policy& policy,
                               std::size_t max_suites = max_hello_suites);

// A fatal handshake_failure alert record (what the caller sends for no_common_group).
std::string handshake_failure_alert();

}  // namespace ringmail::tls
