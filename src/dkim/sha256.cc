#include "ringmail/dkim/sha256.h"

#include <cpuid.h>
#include <cstring>
#include <immintrin.h>

namespace ringmail::dkim {

namespace {

constexpr std::uint32_t k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

constexpr std::uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

constexpr std::uint32_t rotr(std::uint32_t x, int n) noexcept {
    return (x >> n) | (x << (32 - n));
}

std::uint32_t load_be32(const std::uint8_t* p) noexcept {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

void compress_portable(std::uint32_t* s, const std::uint8_t* p, std::size_t count) noexcept {
    for (; count > 0; --count, p += 64) {
        std::uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = load_be32(p + 4 * i);
        for (int i = 16; i < 64; ++i) {
            const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        std::uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6],
                      h = s[7];
        for (int i = 0; i < 64; ++i) {
            const std::uint32_t t1 =
                h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            const std::uint32_t t2 =
                (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        s[0] += a;
        s[1] += b;
        s[2] += c;
        s[3] += d;
        s[4] += e;
        s[5] += f;
        s[6] += g;
        s[7] += h;
    }
}

// The SHA extensions keep the state as two vectors, ABEF and CDGH, and do two rounds per
// instruction; the message schedule is sha256msg1/msg2 over four words at a time.
__attribute__((target("sha,sse4.1"))) void compress_sha_ni(std::uint32_t* s, const std::uint8_t* p,
                                                           std::size_t count) noexcept {
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));      // DCBA
    __m128i st1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 4));  // HGFE
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                                      // CDAB
    st1 = _mm_shuffle_epi32(st1, 0x1B);                                      // EFGH
    __m128i st0 = _mm_alignr_epi8(tmp, st1, 8);                              // ABEF
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);                                   // CDGH

    for (; count > 0; --count, p += 64) {
        const __m128i save0 = st0;
        const __m128i save1 = st1;
        __m128i w[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
            if (i < 4) {
                w[i] = _mm_shuffle_epi8(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), byteswap);
            } else {
                const __m128i t = _mm_add_epi32(_mm_sha256msg1_epu32(w[i - 4], w[i - 3]),
                                                _mm_alignr_epi8(w[i - 1], w[i - 2], 4));
                w[i] = _mm_sha256msg2_epu32(t, w[i - 1]);
            }
            __m128i msg =
                _mm_add_epi32(w[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(k + 4 * i)));
            st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
        }
        st0 = _mm_add_epi32(st0, save0);
        st1 = _mm_add_epi32(st1, save1);
    }

    tmp = _mm_shuffle_epi32(st0, 0x1B);     // FEBA
    st1 = _mm_shuffle_epi32(st1, 0xB1);     // DCHG
    st0 = _mm_blend_epi16(tmp, st1, 0xF0);  // DCBA
    st1 = _mm_alignr_epi8(st1, tmp, 8);     // HGFE
    _mm_storeu_si128(reinterpret_cast<__m128i*>(s), st0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(s + 4), st1);
}

bool detect_sha_ni() noexcept {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) == 0)
        return false;
    const bool ssse3 = (c & bit_SSSE3) != 0;
    const bool sse41 = (c & bit_SSE4_1) != 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0)
        return false;
    return ssse3 && sse41 && (b & bit_SHA) != 0;
}

}  // namespace

bool sha256::cpu_has_sha_ni() noexcept {
    static const bool has = detect_sha_ni();  // set once, read-only after
    return has;
}

sha256::sha256(engine e) noexcept
    : _compress(e != engine::portable && cpu_has_sha_ni() ? compress_sha_ni : compress_portable) {
    std::memcpy(_state, initial, sizeof _state);
}

void sha256::update(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const std::uint8_t*>(data);
    _total += n;
    if (_fill > 0) {
        const std::size_t take = n < 64 - _fill ? n : 64 - _fill;
        std::memcpy(_block + _fill, p, take);
        _fill += take;
        p += take;
        n -= take;
        if (_fill < 64)
            return;
        _compress(_state, _block, 1);
        _fill = 0;
    }
    if (n >= 64) {
        _compress(_state, p, n / 64);
        p += n & ~std::size_t{63};
        n &= 63;
    }
    if (n > 0) {
        std::memcpy(_block, p, n);
        _fill = n;
    }
}

digest sha256::final() noexcept {
    const std::uint64_t bits = _total * 8;
    _block[_fill++] = 0x80;
    if (_fill > 56) {
        std::memset(_block + _fill, 0, 64 - _fill);
        _compress(_state, _block, 1);
        _fill = 0;
    }
    std::memset(_block + _fill, 0, 56 - _fill);
    for (int i = 0; i < 8; ++i)
        _block[56 + i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
    _compress(_state, _block, 1);
    digest d{};
    for (int i = 0; i < 8; ++i) {
        d[4 * i] = static_cast<std::uint8_t>(_state[i] >> 24);
        d[4 * i + 1] = static_cast<std::uint8_t>(_state[i] >> 16);
        d[4 * i + 2] = static_cast<std::uint8_t>(_state[i] >> 8);
        d[4 * i + 3] = static_cast<std::uint8_t>(_state[i]);
    }
    return d;
}

digest sha256_of(std::string_view s) noexcept {
    sha256 h;
    h.update(s);
    return h.final();
}

}  // namespace ringmail::dkim
