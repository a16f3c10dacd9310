// Password hashes and the credential store behind SMTP AUTH (`[auth] users_file`).
//
// The store is built once (start-up or reload) on the main thread and then only read, by the
// verifier's worker threads, never by a shard: every verification costs a deliberately slow
// hash (tens of milliseconds), which would stall all sessions of a shard. A bad users file is a
// start-up error naming file:line and what is wrong (never the hash); a failed hash computation
// at verify time is `verdict::temporary` (the client gets 454 4.7.0 and may retry).
//
// Users file: one `user:hash` per line; blank lines and lines starting with '#' (after
// optional spaces) are ignored; a trailing CR is tolerated. User names are 1..255 octets
// without ':', whitespace or control characters, each at most once. Hash formats:
//
//   $argon2id$v=19$m=M,t=T,p=P$SALT$HASH   the PHC string of libargon2 (argon2id_hash_encoded;
//                                          base64 without padding). Verified by argon2id_verify.
//   $pbkdf2-sha256$i=N$SALT$HASH           ours: PBKDF2-HMAC-SHA256 (RFC 8018) through wolfSSL,
//                                          N iterations, SALT and HASH in padded standard base64
//                                          (RFC 4648 section 4); the derived length is HASH's.
//                                          Not passlib's "$pbkdf2-sha256$N$..." form.
//   {CRAM-MD5}HEX64                        the HMAC-MD5 key state (auth/cram_md5.h), Dovecot's
//                                          CRAM-MD5 scheme. The only entry CRAM-MD5 can verify,
//                                          and EQUIVALENT TO THE PASSWORD: protect the file as
//                                          you would plaintext passwords. Verifies PLAIN/LOGIN
//                                          too (cheaply: no slow hash stands behind it).
//
// Default parameters, measured on the 2-core development VM (one verification, one thread):
//   argon2id  m=19456 KiB, t=2, p=1 (OWASP's minimum)  ~22 ms, 19 MiB while verifying
//   pbkdf2    50000 iterations                        ~43 ms with wolfSSL 5.5.4
// PBKDF2's count is below OWASP's 600000 because those take ~0.5 s here and every
// verification holds a verifier worker; argon2id (memory-hard) is the default and the
// recommendation, PBKDF2 exists for sites that must stay with NIST primitives.
//
// Timing: an unknown user costs one verification against a dummy hash (the first entry's hash,
// or a built-in argon2id hash with the default parameters when the file is empty), so response
// time does not reveal whether a user exists. Keep one scheme and one set of parameters per
// file for that to hold exactly.
#pragma once

#include "ringmail/auth/cram_md5.h"
#include "ringmail/core/result.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ringmail::auth {

enum class scheme : std::uint8_t { argon2id, pbkdf2_sha256, cram_md5 };

// "argon2id" | "pbkdf2-sha256" | "cram-md5"
std::string_view scheme_name(scheme s) noexcept;
std::optional<scheme> parse_scheme(std::string_view name) noexcept;

enum class verdict : std::uint8_t {
    ok,         // the password matches
    fail,       // wrong password or unknown user: 535 5.7.8
    temporary,  // could not decide now (hashing failed, verifier busy): 454 4.7.0
};

struct argon2id_params {
    std::uint32_t t_cost = 2;          // passes
    std::uint32_t m_cost_kib = 19456;  // memory in KiB
    std::uint32_t parallelism = 1;     // lanes (threads)
};
inline constexpr std::uint32_t default_pbkdf2_iterations = 50000;
inline constexpr std::size_t salt_octets = 16;
inline constexpr std::size_t hash_octets = 32;

// Hashes with a fresh random 16-byte salt (wolfSSL's DRBG) and the default parameters.
// Fails with errc::empty_password, errc::random_failed or errc::hash_failed.
// cram-md5 needs no salt and cannot fail except for an empty password.
result<std::string> hash_password(std::string_view password, scheme s = scheme::argon2id);
result<std::string> hash_password_argon2id(std::string_view password, const argon2id_params& p);
result<std::string> hash_password_pbkdf2_sha256(std::string_view password,
                                                std::uint32_t iterations);

// A parsed, validated hash: checked once at load so a verification never meets a bad format.
class password_hash {
  public:
    // nullopt and a reason in `why` (which never quotes the hash) when malformed or out of the
    // accepted ranges: argon2id v=19, m 8..1048576 KiB, t 1..64, p 1..16, salt >= 8 octets,
    // hash 16..64 octets; pbkdf2 i 1..10000000, salt 1..64 octets, hash 16..64 octets.
    static std::optional<password_hash> parse(std::string_view encoded, std::string* why);

    scheme kind() const noexcept { return _scheme; }
    // Costs one full hash computation; the comparison is constant-time.
    verdict verify(std::string_view password) const;
    // CRAM-MD5's answer (32 hex digits) to `challenge`: only a cram-md5 entry can say ok.
    verdict verify_cram(std::string_view challenge, std::string_view hex_digest) const;

  private:
    scheme _scheme = scheme::argon2id;
    std::string _encoded;           // argon2id: the PHC string, given as is to argon2id_verify
    std::uint32_t _iterations = 0;  // pbkdf2
    std::string _salt;              // pbkdf2
    std::string _hash;              // pbkdf2
    cram_context _cram;             // cram-md5
};

class credential_store {
  public:
    // Empty store: every user is unknown.
    credential_store();

    // Unknown users cost the same as known ones (see above). Any thread; const.
    verdict verify(std::string_view user, std::string_view password) const;
    // A CRAM-MD5 answer; users whose entry is not cram-md5 fail (as unknown ones do).
    verdict verify_cram(std::string_view user, std::string_view challenge,
                        std::string_view hex_digest) const;
    // Some entry is cram-md5: CRAM-MD5 is offered only then.
    bool has_cram() const noexcept { return _has_cram; }

    bool contains(std::string_view user) const;
    std::size_t size() const noexcept { return _users.size(); }

    // Adds one entry; false when the user is already there (used by the loader and tests).
    bool add(std::string user, password_hash hash);

  private:
    struct string_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };
    std::unordered_map<std::string, password_hash, string_hash, std::equal_to<>> _users;
    std::optional<password_hash> _first;  // the dummy for unknown users, once there is one
    password_hash _builtin_dummy;
    cram_context _cram_dummy = make_cram_context("ringmail unknown user");
    bool _has_cram = false;
};

// What loading a users file gives: a store, or every error found (one per line of `error`,
// each "file:line: what is wrong").
struct loaded_users {
    std::optional<credential_store> store;
    std::string error;

    bool ok() const noexcept { return store.has_value(); }
    explicit operator bool() const noexcept { return ok(); }
};

loaded_users parse_users(std::string_view text, std::string_view source_name);
// An unreadable file is one error naming the path and the reason.
loaded_users load_users_file(const std::filesystem::path& path);

// Syntax of a user name in the users file (and what ringmailctl accepts).
bool valid_user_name(std::string_view user) noexcept;

}  // namespace ringmail::auth
