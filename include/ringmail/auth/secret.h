// Small helpers for secrets (passwords, hashes, MAC keys) shared by the auth part.
//
// Pure functions, any thread. They cannot fail. constant_time_equal's running time depends
// only on the lengths, never on where two inputs differ, so comparing a computed hash with a
// stored one does not leak how many leading bytes matched.
#pragma once

#include <string>
#include <string_view>

namespace ringmail::auth {

// Lengths are not secret (they come from the stored format); contents are.
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

// Overwrites the bytes (in a way the compiler may not elide) and clears the string, so a
// password does not linger in freed memory longer than needed.
void wipe(std::string& s) noexcept;

// Fills `out` with `n` bytes from wolfSSL's DRBG; false when the RNG fails.
bool random_bytes(void* out, std::size_t n) noexcept;

}  // namespace ringmail::auth
