#include "ringmail/core/base64.h"

#include <gtest/gtest.h>

#include <string>

namespace ringmail::core {
namespace {

struct vector_case {
    std::string plain;
    std::string encoded;
};

// RFC 4648 section 10, plus bytes that need the whole alphabet.
const vector_case vectors[] = {
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"},
    {std::string("\0user\0pass", 10), "AHVzZXIAcGFzcw=="},
    {"\xfb\xff\xbf", "+/+/"},
};

TEST(base64, encodes_and_decodes_the_rfc_vectors) {
    for (const auto& v : vectors) {
        EXPECT_EQ(base64_encode(v.plain), v.encoded);
        auto d = base64_decode(v.encoded);
        ASSERT_TRUE(d.has_value()) << v.encoded;
        EXPECT_EQ(*d, v.plain);
    }
}

TEST(base64, refuses_anything_not_canonical) {
    for (const char* bad : {"Zg", "Zg=", "Zg===", "Z===", "====", "Zm9v\r\n", " Zm9v", "Zm 9v",
                            "Zm9v====", "Zh==", "Zm9=", "Zg==Zg==", "Zm*v", "Z=9v"}) {
        EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
    }
}

TEST(base64, round_trips_every_byte_value) {
    std::string all;
    for (int i = 0; i < 256; ++i)
        all.push_back(static_cast<char>(i));
    for (std::size_t n = 0; n <= all.size(); n += 37) {
        const std::string part = all.substr(0, n);
        EXPECT_EQ(base64_decode(base64_encode(part)), part);
    }
}

}  // namespace
}  // namespace ringmail::core
