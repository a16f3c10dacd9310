#include "ringmail/auth/cram_md5.h"

#include "ringmail/auth/secret.h"
#include "ringmail/core/hex.h"

#include <cstring>
#include <string.h>

namespace ringmail::auth {

namespace {

// RFC 1321 section 3.4: T[i] = floor(2^32 * abs(sin(i + 1))).
constexpr std::uint32_t k_table[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
constexpr unsigned shifts[4][4] = {
    {7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};
constexpr std::array<std::uint32_t, 4> initial_state = {0x67452301, 0xefcdab89, 0x98badcfe,
                                                        0x10325476};

std::uint32_t rotl(std::uint32_t x, unsigned n) noexcept {
    return (x << n) | (x >> (32 - n));
}

void compress(std::array<std::uint32_t, 4>& st, const std::uint8_t* block) noexcept {
    std::uint32_t m[16];
    for (int i = 0; i < 16; ++i) {
        m[i] = std::uint32_t(block[4 * i]) | std::uint32_t(block[4 * i + 1]) << 8 |
               std::uint32_t(block[4 * i + 2]) << 16 | std::uint32_t(block[4 * i + 3]) << 24;
    }
    std::uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    for (unsigned i = 0; i < 64; ++i) {
        std::uint32_t f;
        unsigned g;
        const unsigned round = i / 16;
        switch (round) {
            case 0:
                f = (b & c) | (~b & d);
                g = i;
                break;
            case 1:
                f = (d & b) | (~d & c);
                g = (5 * i + 1) % 16;
                break;
            case 2:
                f = b ^ c ^ d;
                g = (3 * i + 5) % 16;
                break;
            default:
                f = c ^ (b | ~d);
                g = (7 * i) % 16;
                break;
        }
        const std::uint32_t next = b + rotl(a + f + k_table[i] + m[g], shifts[round][i % 4]);
        a = d;
        d = c;
        c = b;
        b = next;
    }
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    ::explicit_bzero(m, sizeof m);
}

// MD5 continued from `st`, which has already absorbed `done` bytes (a multiple of 64).
md5_digest finish(std::array<std::uint32_t, 4> st, std::uint64_t done, std::string_view data) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(data.data());
    std::size_t n = data.size();
    while (n >= 64) {
        compress(st, p);
        p += 64;
        n -= 64;
    }
    std::uint8_t tail[128] = {};
    std::memcpy(tail, p, n);
    tail[n] = 0x80;
    const std::size_t tail_len = n + 1 + 8 <= 64 ? 64 : 128;
    const std::uint64_t bits = (done + data.size()) * 8;
    for (int i = 0; i < 8; ++i)
        tail[tail_len - 8 + i] = std::uint8_t(bits >> (8 * i));
    compress(st, tail);
    if (tail_len == 128)
        compress(st, tail + 64);
    ::explicit_bzero(tail, sizeof tail);
    md5_digest out;
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j)
            out[4 * i + j] = std::uint8_t(st[i] >> (8 * j));
    }
    return out;
}

std::array<std::uint32_t, 4> pad_state(const std::uint8_t key[64], std::uint8_t pad) noexcept {
    std::uint8_t block[64];
    for (int i = 0; i < 64; ++i)
        block[i] = key[i] ^ pad;
    auto st = initial_state;
    compress(st, block);
    ::explicit_bzero(block, sizeof block);
    return st;
}

bool parse_hex(std::string_view hex, std::uint8_t* out, std::size_t n) noexcept {
    if (hex.size() != 2 * n)
        return false;
    for (std::size_t i = 0; i < n; ++i) {
        const int hi = core::hex_value(hex[2 * i]);
        const int lo = core::hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = std::uint8_t(hi << 4 | lo);
    }
    return true;
}

}  // namespace

md5_digest md5(std::string_view data) {
    return finish(initial_state, 0, data);
}

cram_context make_cram_context(std::string_view password) {
    std::uint8_t key[64] = {};
    if (password.size() > 64) {
        const md5_digest d = md5(password);  // RFC 2104: longer keys are hashed first
        std::memcpy(key, d.data(), d.size());
    } else {
        std::memcpy(key, password.data(), password.size());
    }
    cram_context c;
    c.outer = pad_state(key, 0x5c);
    c.inner = pad_state(key, 0x36);
    ::explicit_bzero(key, sizeof key);
    return c;
}

std::string format_cram_md5(const cram_context& c) {
    std::string s(cram_md5_prefix);
    for (const auto* words : {&c.outer, &c.inner}) {
        for (std::uint32_t w : *words) {
            for (int j = 0; j < 4; ++j) {
                const auto byte = std::uint8_t(w >> (8 * j));
                s.push_back(core::hex_lower[byte >> 4]);
                s.push_back(core::hex_lower[byte & 15]);
            }
        }
    }
    return s;
}

std::optional<cram_context> parse_cram_md5(std::string_view encoded) noexcept {
    if (encoded.substr(0, cram_md5_prefix.size()) != cram_md5_prefix)
        return std::nullopt;
    std::uint8_t raw[32];
    if (!parse_hex(encoded.substr(cram_md5_prefix.size()), raw, sizeof raw))
        return std::nullopt;
    cram_context c;
    for (int i = 0; i < 8; ++i) {
        const std::uint32_t w = std::uint32_t(raw[4 * i]) | std::uint32_t(raw[4 * i + 1]) << 8 |
                                std::uint32_t(raw[4 * i + 2]) << 16 |
                                std::uint32_t(raw[4 * i + 3]) << 24;
        (i < 4 ? c.outer[i] : c.inner[i - 4]) = w;
    }
    return c;
}

md5_digest cram_digest(const cram_context& c, std::string_view challenge) {
    const md5_digest inner = finish(c.inner, 64, challenge);
    return finish(c.outer, 64,
                  std::string_view(reinterpret_cast<const char*>(inner.data()), inner.size()));
}

bool cram_verify(const cram_context& c, std::string_view challenge, std::string_view hex_digest) {
    std::uint8_t offered[16];
    if (!parse_hex(hex_digest, offered, sizeof offered))
        return false;
    const md5_digest want = cram_digest(c, challenge);
    return constant_time_equal(
        std::string_view(reinterpret_cast<const char*>(want.data()), want.size()),
        std::string_view(reinterpret_cast<const char*>(offered), sizeof offered));
}

bool cram_equal(const cram_context& a, const cram_context& b) noexcept {
    return constant_time_equal(std::string_view(reinterpret_cast<const char*>(&a), sizeof a),
                               std::string_view(reinterpret_cast<const char*>(&b), sizeof b));
}

}  // namespace ringmail::auth
