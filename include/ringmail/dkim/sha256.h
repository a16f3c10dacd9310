// SHA-256 for DKIM's body and header hashes: incremental, with the x86 SHA extensions when the
// CPU has them (about eight times wolfSSL's portable C, which Debian builds without its
// assembly), else portable code.
//
// The body hash runs over every byte of every signed message on the shard that receives it,
// so its speed is the cost of signing large mail (RSA or Ed25519 then sign 32 bytes). The
// choice between the two compressions is made once per process from CPUID; both give the
// same digest (the unit tests compare them with wolfSSL's on every length up to some blocks).
// Pure code, no shard affinity, cannot fail.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ringmail::dkim {

using digest = std::array<std::uint8_t, 32>;

class sha256 {
  public:
    enum class engine : std::uint8_t { automatic, portable, sha_ni };

    // `automatic`: the SHA extensions if the CPU has them. Asking for sha_ni on a CPU without
    // them gives portable (tests use this to run both).
    explicit sha256(engine e = engine::automatic) noexcept;
    sha256(const sha256&) = delete;
    sha256& operator=(const sha256&) = delete;

    void update(const void* p, std::size_t n) noexcept;
    void update(std::string_view s) noexcept { update(s.data(), s.size()); }
    // Once; the object is then spent.
    digest final() noexcept;

    static bool cpu_has_sha_ni() noexcept;

  private:
    using compress_fn = void (*)(std::uint32_t* state, const std::uint8_t* blocks,
                                 std::size_t count) noexcept;

    std::uint32_t _state[8];
    std::uint8_t _block[64];
    std::size_t _fill = 0;
    std::uint64_t _total = 0;
    compress_fn _compress;
};

digest sha256_of(std::string_view s) noexcept;

}  // namespace ringmail::dkim
