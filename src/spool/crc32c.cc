#include "ringmail/spool/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace ringmail::spool {

namespace {

constexpr std::uint32_t poly = 0x82F63B78u;

// tables[k][b]: CRC of byte b followed by k zero bytes, for slicing-by-8.
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_tables() {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t b = 0; b < 256; ++b) {
        std::uint32_t c = b;
        for (int i = 0; i < 8; ++i)
            c = (c >> 1) ^ ((c & 1u) ? poly : 0u);
        t[0][b] = c;
    }
    for (std::size_t k = 1; k < 8; ++k) {
        for (std::uint32_t b = 0; b < 256; ++b)
            t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
    }
    return t;
}

constexpr auto tables = make_tables();

inline std::uint32_t load32_le(const unsigned char* p) noexcept {
    return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
           std::uint32_t(p[3]) << 24;
}

std::uint32_t update_portable(std::uint32_t c, const unsigned char* p, std::size_t n) noexcept {
    while (n >= 8) {
        const std::uint32_t lo = load32_le(p) ^ c;
        const std::uint32_t hi = load32_le(p + 4);
        c = tables[7][lo & 0xFF] ^ tables[6][(lo >> 8) & 0xFF] ^ tables[5][(lo >> 16) & 0xFF] ^
            tables[4][lo >> 24] ^ tables[3][hi & 0xFF] ^ tables[2][(hi >> 8) & 0xFF] ^
            tables[1][(hi >> 16) & 0xFF] ^ tables[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ tables[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__)
// shift(c): the register after c runs through `len` zero bytes; linear in c, so it is the XOR
// of four byte tables. It joins CRCs computed side by side: crc(A||B) = shift_|B|(crc(A)) ^
// crc_from_zero(B).
struct shift_op {
    std::array<std::array<std::uint32_t, 256>, 4> t{};

    constexpr std::uint32_t operator()(std::uint32_t c) const noexcept {
        return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
    }
};

// Every byte value of every position as the XOR of its bits' images.
constexpr shift_op from_bits(const std::array<std::uint32_t, 32>& bit) {
    shift_op op;
    for (std::size_t pos = 0; pos < 4; ++pos) {
        for (std::uint32_t v = 0; v < 256; ++v) {
            std::uint32_t c = 0;
            for (std::size_t b = 0; b < 8; ++b) {
                if (v & (1u << b))
                    c ^= bit[pos * 8 + b];
            }
            op.t[pos][v] = c;
        }
    }
    return op;
}

constexpr shift_op make_shift(std::size_t len) {
    // Each bit's image through len zero bytes (4 at a time with the slicing tables).
    std::array<std::uint32_t, 32> bit{};
    for (std::size_t b = 0; b < 32; ++b) {
        std::uint32_t c = std::uint32_t(1) << b;
        for (std::size_t k = 0; k < len / 4; ++k)
            c = tables[3][c & 0xFF] ^ tables[2][(c >> 8) & 0xFF] ^ tables[1][(c >> 16) & 0xFF] ^
                tables[0][c >> 24];
        bit[b] = c;
    }
    return from_bits(bit);
}

// The shift over twice as many zero bytes: the same map applied twice (shifts are linear). A
// long shift so costs the constant evaluation no more than a short one (clang stops one that
// runs too many steps, and make_shift(4096) did).
constexpr shift_op twice(const shift_op& s) {
    std::array<std::uint32_t, 32> bit{};
    for (std::size_t b = 0; b < 32; ++b)
        bit[b] = s(s(std::uint32_t(1) << b));
    return from_bits(bit);
}

// The crc32 instruction takes 3 cycles but starts one per cycle: three streams over three
// consecutive blocks keep it busy, and the shifts join them. Blocks are a multiple of 8 bytes
// (and of 4, which make_shift needs).
constexpr std::size_t big_block = 2048;
constexpr std::size_t small_block = 256;
constexpr shift_op shift_big = make_shift(big_block);
constexpr shift_op shift_big2 = twice(shift_big);
constexpr shift_op shift_small = make_shift(small_block);
constexpr shift_op shift_small2 = twice(shift_small);

inline std::uint64_t load64(const unsigned char* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

__attribute__((target("sse4.2"))) std::uint32_t three_way(std::uint32_t c, const unsigned char* p,
                                                          std::size_t block, const shift_op& s1,
                                                          const shift_op& s2) noexcept {
    std::uint64_t a = c, b = 0, d = 0;
    for (std::size_t i = 0; i < block; i += 8) {
        a = _mm_crc32_u64(a, load64(p + i));
        b = _mm_crc32_u64(b, load64(p + block + i));
        d = _mm_crc32_u64(d, load64(p + 2 * block + i));
    }
    return s2(static_cast<std::uint32_t>(a)) ^ s1(static_cast<std::uint32_t>(b)) ^
           static_cast<std::uint32_t>(d);
}

__attribute__((target("sse4.2"))) std::uint32_t update_sse42(std::uint32_t c,
                                                             const unsigned char* p,
                                                             std::size_t n) noexcept {
    while (n >= 3 * big_block) {
        c = three_way(c, p, big_block, shift_big, shift_big2);
        p += 3 * big_block;
        n -= 3 * big_block;
    }
    while (n >= 3 * small_block) {
        c = three_way(c, p, small_block, shift_small, shift_small2);
        p += 3 * small_block;
        n -= 3 * small_block;
    }
    std::uint64_t c64 = c;
    while (n >= 8) {
        c64 = _mm_crc32_u64(c64, load64(p));
        p += 8;
        n -= 8;
    }
    c = static_cast<std::uint32_t>(c64);
    while (n--)
        c = _mm_crc32_u8(c, *p++);
    return c;
}

const bool have_sse42 = __builtin_cpu_supports("sse4.2");
#endif

}  // namespace

std::uint32_t crc32c_portable(const void* data, std::size_t size, std::uint32_t crc) noexcept {
    return ~update_portable(~crc, static_cast<const unsigned char*>(data), size);
}

std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc) noexcept {
#if defined(__x86_64__)
    if (have_sse42)
        return ~update_sse42(~crc, static_cast<const unsigned char*>(data), size);
#endif
    return crc32c_portable(data, size, crc);
}

}  // namespace ringmail::spool
