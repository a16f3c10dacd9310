#include "ringmail/core/byte_scan.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <string>

namespace ringmail::core {
namespace {

std::size_t reference(const std::string& s) {
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return i;
    }
    return s.size();
}

TEST(byte_scan, each_target_at_every_position_and_length) {
    // Lengths across the 16-byte blocks and the tail loop; fillers that sit next to the
    // targets' values and high bytes (a signed-char compare must not match them).
    for (char target : {'\r', '\n', '\0'}) {
        for (char filler : {'a', '\x0b', '\x0c', '\x0e', '\x01', '\x8a', '\x8d', '\xff'}) {
            for (std::size_t len = 0; len <= 70; ++len) {
                for (std::size_t pos = 0; pos <= len; ++pos) {
                    std::string s(len, filler);
                    if (pos < len)
                        s[pos] = target;
                    ASSERT_EQ(find_cr_lf_nul(s.data(), s.size()), pos)
                        << int(target) << " " << int(filler) << " " << len;
                }
            }
        }
    }
}

TEST(byte_scan, first_of_several_wins) {
    const std::string s = std::string(20, 'x') + "\n" + std::string(3, 'x') + "\r" + '\0';
    EXPECT_EQ(find_cr_lf_nul(s.data(), s.size()), 20u);
    EXPECT_EQ(find_cr_lf_nul(s.data() + 21, s.size() - 21), 3u);
    EXPECT_EQ(find_cr_lf_nul(s.data() + 25, s.size() - 25), 0u);
    EXPECT_EQ(find_cr_lf_nul(s.data(), 20), 20u);  // the bound is respected
}

TEST(byte_scan, matches_reference_on_random_buffers_at_every_offset) {
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<int> sparse(0, 60);
    for (int round = 0; round < 200; ++round) {
        std::string s(1 + round * 3, 'a');
        for (char& c : s)
            c = sparse(rng) == 0 ? "\r\n"[byte(rng) & 1] : static_cast<char>(byte(rng) | 0x10);
        for (std::size_t off = 0; off < 17 && off <= s.size(); ++off) {
            const std::string t = s.substr(off);
            ASSERT_EQ(find_cr_lf_nul(s.data() + off, s.size() - off), reference(t)) << round;
        }
    }
}

}  // namespace
}  // namespace ringmail::core
