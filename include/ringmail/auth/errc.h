// Error codes of ringmail::auth: why a users file, a hash or the verifier could not be used.
//
// Plain values, no shard affinity. Start-up turns bad_users_file into one message naming
// file:line (the text comes with the load result); the verifier turns the rest into a
// temporary failure (454 4.7.0) for the client; nothing here aborts.
#pragma once

#include <string>
#include <system_error>

namespace ringmail::auth {

enum class errc {
    bad_users_file = 1,  // unreadable, or a line that is not `user:hash` (details in the text)
    bad_hash,            // an encoded hash that is not one of the supported formats
    empty_password,      // hash_password refuses to hash ""
    random_failed,       // wolfSSL's RNG could not produce a salt or a key
    hash_failed,         // libargon2 or wolfSSL failed to compute a hash
    bad_option,          // an option out of range (worker count, ring size, limits)
};

const std::error_category& auth_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), auth_category()};
}

}  // namespace ringmail::auth

template <>
struct std::is_error_code_enum<ringmail::auth::errc> : std::true_type {};
