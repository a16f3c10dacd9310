#include "ringmail/dkim/sha256.h"

#include <gtest/gtest.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <random>
#include <string>

namespace ringmail::dkim {
namespace {

std::string hex(const digest& d) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (auto b : d) {
        s += digits[b >> 4];
        s += digits[b & 15];
    }
    return s;
}

digest reference(std::string_view s) {
    wc_Sha256 h;
    wc_InitSha256(&h);
    wc_Sha256Update(&h, reinterpret_cast<const byte*>(s.data()), static_cast<word32>(s.size()));
    digest d{};
    wc_Sha256Final(&h, d.data());
    wc_Sha256Free(&h);
    return d;
}

digest with(sha256::engine e, std::string_view s, std::size_t piece) {
    sha256 h(e);
    for (std::size_t i = 0; i < s.size(); i += piece)
        h.update(s.substr(i, piece));
    return h.final();
}

const sha256::engine engines[] = {sha256::engine::portable, sha256::engine::sha_ni};

// FIPS 180-2's examples.
TEST(sha256, known_answers) {
    struct {
        std::string in;
        const char* want;
    } cases[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {std::string(1000000, 'a'),
         "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (auto e : engines)
        for (const auto& c : cases)
            EXPECT_EQ(hex(with(e, c.in, c.in.size() + 1)), c.want) << c.in.size();
}

// Every length over a few blocks, fed whole and in odd pieces, against wolfSSL.
TEST(sha256, matches_wolfssl_at_every_length_and_split) {
    std::mt19937 rng(7);
    std::string data(700, '\0');
    for (auto& c : data)
        c = static_cast<char>(rng());
    for (std::size_t n = 0; n <= data.size(); ++n) {
        const std::string_view s(data.data(), n);
        const digest want = reference(s);
        for (auto e : engines)
            for (std::size_t piece :
                 {std::size_t{1}, std::size_t{7}, std::size_t{64}, std::size_t{65}, n + 1})
                ASSERT_EQ(with(e, s, piece), want) << "n=" << n << " piece=" << piece;
    }
}

TEST(sha256, the_cpu_is_reported) {
    // Not an assertion about the machine: the answer is stable and both engines agree.
    EXPECT_EQ(sha256::cpu_has_sha_ni(), sha256::cpu_has_sha_ni());
    EXPECT_EQ(sha256_of("abc"), with(sha256::engine::portable, "abc", 3));
}

}  // namespace
}  // namespace ringmail::dkim
