#include "ringmail/dns/wire.h"

#include <gtest/gtest.h>

#include "wire_builder.h"
#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::dns {
namespace {

using testing::wire_builder;

std::vector<std::uint8_t> mx_answer() {
    wire_builder b;
    b.header(0x1234, rcode_noerror, 1, 2, 0).question("example.test", type_mx);
    // Owner names compressed to the question name (offset 12).
    b.pointer(12)
        .u16(type_mx)
        .u16(1)
        .u32(600)
        .u16(2 + 6)
        .u16(10)
        .u8(3)
        .u8('m')
        .u8('x')
        .u8('1')
        .pointer(12);
    b.pointer(12)
        .u16(type_mx)
        .u16(1)
        .u32(300)
        .u16(2 + 6)
        .u16(20)
        .u8(3)
        .u8('m')
        .u8('x')
        .u8('2')
        .pointer(12);
    return b.bytes;
}

TEST(wire, summarizes_an_mx_answer) {
    const auto msg = mx_answer();
    auto s = summarize(msg);
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(s->id, 0x1234);
    EXPECT_EQ(s->rcode, rcode_noerror);
    EXPECT_FALSE(s->truncated);
    EXPECT_EQ(s->answer_count, 2);
    EXPECT_EQ(s->min_answer_ttl, 300u);
    EXPECT_FALSE(s->soa_ttl);
    EXPECT_FALSE(s->negative_ttl());
}

TEST(wire, negative_ttl_is_the_smaller_of_soa_ttl_and_minimum) {
    struct row {
        std::uint8_t rcode;
        std::uint32_t soa_ttl;
        std::uint32_t minimum;
        std::uint32_t expected;
    };
    const row rows[] = {
        {rcode_nxdomain, 900, 60, 60},
        {rcode_nxdomain, 30, 3600, 30},
        {rcode_noerror, 120, 120, 120},
        {rcode_nxdomain, 0x80000001u, 60, 0},  // top bit set: read as 0 (RFC 2181)
    };
    for (const auto& r : rows) {
        wire_builder b;
        b.header(1, r.rcode, 1, 0, 1)
            .question("nx.test", type_mx)
            .soa("test", r.soa_ttl, r.minimum);
        auto s = summarize(b.bytes);
        ASSERT_TRUE(s) << s.error().message();
        EXPECT_EQ(s->rcode, r.rcode);
        EXPECT_FALSE(s->min_answer_ttl);
        EXPECT_EQ(s->negative_ttl(), r.expected) << r.soa_ttl << " " << r.minimum;
    }
}

TEST(wire, reads_names_with_compression) {
    const auto msg = mx_answer();
    std::string name;
    auto end = read_name(msg, 12, &name);
    ASSERT_TRUE(end);
    EXPECT_EQ(name, "example.test");
    EXPECT_EQ(*end, 12 + 14u);
    // The first answer's exchange: "mx1" then a pointer to the question.
    const std::size_t rdata = 12 + 14 + 4 + 2 + 10;
    end = read_name(msg, rdata + 2, &name);
    ASSERT_TRUE(end);
    EXPECT_EQ(name, "mx1.example.test");
    EXPECT_EQ(*end, rdata + 2 + 6);
}

TEST(wire, root_name_and_case) {
    wire_builder b;
    b.u8(0).u8(3).u8('M').u8('X').u8('a').u8(0);
    std::string name = "junk";
    ASSERT_TRUE(read_name(b.bytes, 0, &name));
    EXPECT_EQ(name, "");
    ASSERT_TRUE(read_name(b.bytes, 1, &name));
    EXPECT_EQ(name, "mxa");
}

// Every broken message is refused with bad_response and (under ASan) without reading a byte
// outside the buffer.
TEST(wire, rejects_malformed_messages) {
    struct row {
        const char* what;
        std::vector<std::uint8_t> msg;
    };
    std::vector<row> rows;
    {
        rows.push_back({"empty", {}});
        rows.push_back({"short header", {0x12, 0x34, 0x81, 0x80, 0, 1}});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).u8(5).u8('a');  // label runs past the end
        rows.push_back({"label past end", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).pointer(12).u16(15).u16(1);  // points at itself
        rows.push_back({"self pointer", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).pointer(14).pointer(12).u16(15).u16(1);  // forward pointer
        rows.push_back({"forward pointer / loop", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).u8(1).u8('a').pointer(12).u16(15).u16(1);  // a -> a -> ...
        rows.push_back({"label then pointer back to itself", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).pointer(0x3FFF).u16(15).u16(1);
        rows.push_back({"pointer out of range", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).u8(0xC0);  // half a pointer
        rows.push_back({"truncated pointer", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).u8(0x41).u8(0).u16(15).u16(1);  // extended label type
        rows.push_back({"reserved label type", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0);
        for (int i = 0; i < 5; ++i) {  // 5 x 64 octets > 255
            b.u8(63);
            for (int j = 0; j < 63; ++j)
                b.u8('a');
        }
        b.u8(0).u16(15).u16(1);
        rows.push_back({"name longer than 255", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 0, 0).name("a.test").u16(15);  // qclass missing
        rows.push_back({"truncated question", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 1, 0).question("a.test", 15).rr_head("a.test", 15, 60).u16(50).u16(10);
        rows.push_back({"rdlength past end", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 0, 1, 3, 0).question("a.test", 15).mx("a.test", 60, 10, "mx.a.test");
        rows.push_back({"fewer answers than counted", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 3, 1, 0, 1)
            .question("a.test", 15)
            .rr_head("test", type_soa, 60)
            .u16(3)
            .name("x");
        rows.push_back({"SOA rdata too short", b.bytes});
    }
    {
        wire_builder b;
        b.header(1, 3, 1, 0, 1)
            .question("a.test", 15)
            .rr_head("test", type_soa, 60)
            .u16(4 + 20 + 1);
        b.u8(0).u8(0).u32(1).u32(2).u32(3).u32(4).u32(5).u8(0).u8(0).u8(0);
        rows.push_back({"SOA rdata with trailing bytes", b.bytes});
    }
    {
        wire_builder b;
        // SOA MNAME runs past its RDATA into the next bytes of the message.
        b.header(1, 3, 1, 0, 1).question("a.test", 15).rr_head("test", type_soa, 60).u16(2);
        b.u8(4).u8('a').u8('b').u8('c').u8('d').u8(0);
        rows.push_back({"SOA name outside rdata", b.bytes});
    }
    for (const auto& r : rows) {
        auto s = summarize(r.msg);
        ASSERT_FALSE(s) << r.what;
        EXPECT_EQ(s.error(), errc::bad_response) << r.what;
    }
}

TEST(wire, every_truncation_of_a_valid_message_is_refused) {
    wire_builder b;
    b.header(7, rcode_nxdomain, 1, 1, 1).question("nx.test", type_mx);
    b.mx("nx.test", 60, 0, "");
    b.soa("test", 300, 60);
    ASSERT_TRUE(summarize(b.bytes));
    for (std::size_t n = 0; n < b.bytes.size(); ++n) {
        std::vector<std::uint8_t> prefix(b.bytes.begin(), b.bytes.begin() + n);
        EXPECT_FALSE(summarize(prefix)) << "prefix of " << n << " bytes";
    }
}

TEST(wire, random_bytes_never_overread) {
    // Cheap deterministic fuzz: mutate a valid message byte by byte; any outcome is fine as
    // long as nothing reads outside the buffer (ASan) and nothing loops.
    wire_builder b;
    b.header(7, rcode_noerror, 1, 2, 1).question("x.test", type_mx);
    b.pointer(12).u16(type_mx).u16(1).u32(60).u16(4).u16(10).pointer(12);
    b.mx("x.test", 60, 20, "mx.x.test");
    b.soa("test", 300, 60);
    std::uint32_t seed = 1;
    for (int round = 0; round < 20000; ++round) {
        auto msg = b.bytes;
        for (int k = 0; k < 3; ++k) {
            seed = seed * 1664525u + 1013904223u;
            msg[(seed >> 8) % msg.size()] = static_cast<std::uint8_t>(seed >> 24);
        }
        (void)summarize(msg);
    }
    SUCCEED();
}

}  // namespace
}  // namespace ringmail::dns
