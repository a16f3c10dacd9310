// CRAM-MD5 (RFC 2195) without the plaintext password: what the server stores is the HMAC-MD5
// key state (RFC 2104), the MD5 chaining values after the outer pad block and after the inner
// pad block, in the layout of Dovecot's CRAM-MD5 scheme (outer then inner, little-endian
// words, hex):
//
//   {CRAM-MD5}<64 hex digits>
//
// Such an entry is equivalent to the password for CRAM-MD5 (anyone who has it can log in with
// CRAM-MD5 without knowing the password, and it is cheap to attack by guessing), so a users
// file that holds one must be protected like a file of plaintext passwords. It also verifies
// PLAIN and LOGIN (the state is recomputed from the offered password).
//
// Pure functions, any thread. MD5 is implemented here from RFC 1321 because the key state must
// be exported and resumed after one block, which no library interface we link offers.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::auth {

using md5_digest = std::array<std::uint8_t, 16>;

md5_digest md5(std::string_view data);

struct cram_context {
    std::array<std::uint32_t, 4> outer{};  // after MD5 of (key XOR opad)
    std::array<std::uint32_t, 4> inner{};  // after MD5 of (key XOR ipad)
    friend bool operator==(const cram_context&, const cram_context&) = default;
};

inline constexpr std::string_view cram_md5_prefix = "{CRAM-MD5}";

cram_context make_cram_context(std::string_view password);
// "{CRAM-MD5}" + 64 lower-case hex digits.
std::string format_cram_md5(const cram_context& c);
// Takes the form above (hex in either case); nullopt for anything else.
std::optional<cram_context> parse_cram_md5(std::string_view encoded) noexcept;

// HMAC-MD5(password, challenge) from the stored state.
md5_digest cram_digest(const cram_context& c, std::string_view challenge);
// The client's answer as RFC 2195 sends it: 32 hex digits (either case); false when malformed
// or different. Constant-time in the digest.
bool cram_verify(const cram_context& c, std::string_view challenge, std::string_view hex_digest);
// Constant-time comparison of two contexts (PLAIN/LOGIN against a CRAM-MD5 entry).
bool cram_equal(const cram_context& a, const cram_context& b) noexcept;

}  // namespace ringmail::auth
