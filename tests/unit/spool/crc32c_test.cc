#include "ringmail/spool/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::spool {
namespace {

struct vector_case {
    const char* name;
    std::string data;
    std::uint32_t crc;
};

std::string bytes(std::initializer_list<int> l) {
    std::string s;
    for (int b : l)
        s.push_back(char(b));
    return s;
}

std::string ascending() {
    std::string s;
    for (int i = 0; i < 32; ++i)
        s.push_back(char(i));
    return s;
}

std::string descending() {
    std::string s;
    for (int i = 31; i >= 0; --i)
        s.push_back(char(i));
    return s;
}

// RFC 3720 B.4 and the customary check value.
const std::vector<vector_case> cases = {
    {"empty", "", 0x00000000u},
    {"check", "123456789", 0xE3069283u},
    {"zeros32", std::string(32, '\0'), 0x8A9136AAu},
    {"ones32", std::string(32, '\xFF'), 0x62A8AB43u},
    {"ascending32", ascending(), 0x46DD794Eu},
    {"descending32", descending(), 0x113FDB5Cu},
    {"iscsi_read", bytes({0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                          0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
                          0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
                          0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}),
     0xD9963A56u},
};

TEST(crc32c, known_vectors) {
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        EXPECT_EQ(crc32c(c.data), c.crc);
        EXPECT_EQ(crc32c_portable(c.data.data(), c.data.size()), c.crc);
    }
}

TEST(crc32c, chaining_equals_whole) {
    std::string s;
    for (int i = 0; i < 1000; ++i)
        s.push_back(char(i * 7 + 3));
    const std::uint32_t whole = crc32c(s);
    for (std::size_t cut : {0u, 1u, 7u, 8u, 9u, 500u, 999u, 1000u}) {
        SCOPED_TRACE(cut);
        const std::uint32_t a = crc32c(s.data(), cut);
        EXPECT_EQ(crc32c(s.data() + cut, s.size() - cut, a), whole);
        const std::uint32_t pa = crc32c_portable(s.data(), cut);
        EXPECT_EQ(crc32c_portable(s.data() + cut, s.size() - cut, pa), whole);
    }
}

TEST(crc32c, portable_matches_dispatch_at_every_alignment_and_length) {
    std::string s;
    for (int i = 0; i < 300; ++i)
        s.push_back(char((i * 131) ^ (i >> 3)));
    for (std::size_t off = 0; off < 9; ++off) {
        for (std::size_t len = 0; off + len <= s.size(); len += 13) {
            ASSERT_EQ(crc32c(s.data() + off, len), crc32c_portable(s.data() + off, len))
                << off << " " << len;
        }
    }
}

// Long inputs go through three streams at once (blocks of 2048 and 256 octets, joined by
// shifts): every length around those block edges, at every alignment, in pieces too.
TEST(crc32c, three_streams_match_portable_around_block_edges) {
    std::string s;
    for (int i = 0; i < 20000; ++i)
        s.push_back(char((i * 2654435761u) >> 13));
    std::vector<std::size_t> lengths;
    for (std::size_t edge : {768u, 3 * 768u, 6144u, 6144u + 768u, 2 * 6144u + 3 * 768u}) {
        for (std::size_t d = 0; d <= 17; ++d) {
            lengths.push_back(edge - d);
            lengths.push_back(edge + d);
        }
    }
    lengths.push_back(s.size() - 8);
    for (std::size_t off = 0; off < 9; ++off) {
        for (std::size_t len : lengths) {
            ASSERT_EQ(crc32c(s.data() + off, len), crc32c_portable(s.data() + off, len))
                << off << " " << len;
        }
    }
    const std::uint32_t whole = crc32c_portable(s.data(), s.size());
    for (std::size_t cut : {1u, 767u, 6145u, 13000u}) {
        EXPECT_EQ(crc32c(s.data() + cut, s.size() - cut, crc32c(s.data(), cut)), whole) << cut;
    }
}

TEST(crc32c, detects_single_bit_flip) {
    std::string s(4096, 'a');
    const std::uint32_t good = crc32c(s);
    for (std::size_t i = 0; i < s.size(); i += 511) {
        std::string t = s;
        t[i] ^= 0x10;
        EXPECT_NE(crc32c(t), good) << i;
    }
}

}  // namespace
}  // namespace ringmail::spool
