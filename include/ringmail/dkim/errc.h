// Error codes of ringmail::dkim: why a key could not be used or a message could not be signed.
//
// Plain values, no shard affinity. Start-up turns key errors into one message naming the file
// (the text comes with the load); at run time a signing error defers the message (451 4.3.0).
#pragma once

#include <string>
#include <system_error>

namespace ringmail::dkim {

enum class errc {
    bad_key = 1,       // unreadable, not PEM, not an RSA or Ed25519 private key, wrong size
    header_too_large,  // the header section is past max_header_bytes: it cannot be signed
    sign_failed,       // wolfSSL failed, or the signature did not verify with the public key
};

const std::error_category& dkim_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), dkim_category()};
}

}  // namespace ringmail::dkim

template <>
struct std::is_error_code_enum<ringmail::dkim::errc> : std::true_type {};
