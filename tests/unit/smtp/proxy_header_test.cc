#include "ringmail/smtp/proxy_header.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::smtp {
namespace {

const std::string sig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string v2(unsigned char ver_cmd, unsigned char fam, const std::string& body) {
    std::string h = sig;
    h += static_cast<char>(ver_cmd);
    h += static_cast<char>(fam);
    h += static_cast<char>((body.size() >> 8) & 0xFF);
    h += static_cast<char>(body.size() & 0xFF);
    return h + body;
}

std::string bytes(std::initializer_list<int> b) {
    std::string s;
    for (int x : b)
        s += static_cast<char>(x);
    return s;
}

// 192.0.2.7:40000 -> 198.51.100.1:25
const std::string v4_block = bytes({192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25});
// 2001:db8::7:40000 -> 2001:db8::1:25
const std::string v6_block =
    bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    7,    0x20, 0x01,
           0x0d, 0xb8, 0,    0,    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x9c, 0x40, 0,    25});
// A TLV of type 0x01 (ALPN) "smtp", and a NOOP TLV (0x04) of 3 bytes.
const std::string tlvs = bytes({0x01, 0, 4, 's', 'm', 't', 'p', 0x04, 0, 3, 0, 0, 0});

struct ok_case {
    const char* name;
    std::string header;
    int version;
    bool local;
    std::string source;  // "ip:port" form of core::to_string, "" when local
    std::string destination;
};

std::vector<ok_case> ok_cases() {
    return {
        {"v1_tcp4", "PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", 1, false, "192.0.2.7:40000",
         "198.51.100.1:25"},
        {"v1_tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n", 1, false,
         "[2001:db8::7]:40000", "[2001:db8::1]:25"},
        {"v1_unknown", "PROXY UNKNOWN\r\n", 1, true, "", ""},
        {"v1_unknown_with_addresses", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 1, true, "", ""},
        {"v1_port_zero", "PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", 1, false, "10.0.0.1:0",
         "10.0.0.2:65535"},
        {"v1_longest",
         "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
         1, false, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
         "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
        {"v2_proxy_tcp4", v2(0x21, 0x11, v4_block), 2, false, "192.0.2.7:40000", "198.51.100.1:25"},
        {"v2_proxy_tcp6", v2(0x21, 0x21, v6_block), 2, false, "[2001:db8::7]:40000",
         "[2001:db8::1]:25"},
        {"v2_tlvs_skipped", v2(0x21, 0x11, v4_block + tlvs), 2, false, "192.0.2.7:40000",
         "198.51.100.1:25"},
        {"v2_local", v2(0x20, 0x00, ""), 2, true, "", ""},
        {"v2_local_with_addresses", v2(0x20, 0x11, v4_block), 2, true, "", ""},
        {"v2_proxy_unspec", v2(0x21, 0x00, tlvs), 2, true, "", ""},
    };
}

struct bad_case {
    const char* name;
    std::string input;
    std::string error_part;
};

std::vector<bad_case> bad_cases() {
    return {
        {"smtp_instead", "EHLO x\r\n", "not a PROXY protocol header"},
        {"lower_case", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY"},
        {"v1_bad_protocol", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "not TCP4"},
        {"v1_v6_in_tcp4", "PROXY TCP4 ::1 ::1 1 2\r\n", "IPv4 literal"},
        {"v1_v4_in_tcp6", "PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", "IPv6 literal"},
        {"v1_double_space", "PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "single spaces"},
        {"v1_missing_port", "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "single spaces"},
        {"v1_extra_field", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "single spaces"},
        {"v1_port_too_big", "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "port"},
        {"v1_port_leading_zero", "PROXY TCP4 1.2.3.4 1.2.3.4 025 2\r\n", "port"},
        {"v1_port_sign", "PROXY TCP4 1.2.3.4 1.2.3.4 +25 2\r\n", "port"},
        {"v1_bare_lf", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "bare LF"},
        {"v1_bare_cr", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", "bare CR"},
        {"v1_no_protocol", "PROXY \r\n", "not TCP4"},
        {"v1_oversize", "PROXY UNKNOWN " + std::string(200, 'x') + "\r\n", "longer than 107"},
        {"v2_bad_signature", std::string("\r\n\r\n\0\r\nQUIX\n", 12) + "xxxx", "bad v2 signature"},
        {"v2_version_1", v2(0x11, 0x11, v4_block), "version 1"},
        {"v2_bad_command", v2(0x22, 0x11, v4_block), "command 2"},
        {"v2_unix", v2(0x21, 0x31, std::string(216, '\0')), "AF_UNIX"},
        {"v2_family_4", v2(0x21, 0x41, v4_block), "family 4"},
        {"v2_dgram", v2(0x21, 0x12, v4_block), "not STREAM"},
        {"v2_short_v4_block", v2(0x21, 0x11, v4_block.substr(0, 11)), "too short for IPv4"},
        {"v2_short_v6_block", v2(0x21, 0x21, v4_block), "too short for IPv6"},
        {"v2_oversize", v2(0x21, 0x11, v4_block + std::string(2000, '\0')), "more than the limit"},
    };
}

// Feeds `in` split into pieces of `step` octets (0: all at once); returns octets taken.
std::size_t feed_split(proxy_reader& r, std::string_view in, std::size_t step) {
    std::size_t taken = 0;
    while (taken < in.size() && !r.done() && !r.failed()) {
        const std::size_t n = step == 0 ? in.size() - taken : std::min(step, in.size() - taken);
        const std::size_t t = r.feed(in.substr(taken, n));
        EXPECT_LE(t, n);
        taken += t;
        if (t < n)
            break;
    }
    return taken;
}

TEST(proxy_header, accepts_every_form_whole_and_split_at_every_byte) {
    const std::string after = "EHLO client.test\r\n";
    for (const auto& c : ok_cases()) {
        const std::string in = c.header + after;
        for (std::size_t step = 0; step <= 3; ++step) {
            // Split once at every position too: header then the rest of the stream.
            for (std::size_t cut = 0; cut <= in.size(); cut += step == 0 ? 1 : in.size() + 1) {
                proxy_reader r;
                std::size_t taken = 0;
                if (step == 0) {
                    taken = r.feed(std::string_view(in).substr(0, cut));
                    if (!r.done() && !r.failed())
                        taken += r.feed(std::string_view(in).substr(taken));
                } else {
                    taken = feed_split(r, in, step);
                }
                ASSERT_TRUE(r.done())
                    << c.name << " step " << step << " cut " << cut << ": " << r.error();
                EXPECT_EQ(taken, c.header.size()) << c.name;
                EXPECT_EQ(r.size(), c.header.size()) << c.name;
                EXPECT_EQ(r.feed(after), 0u) << c.name << ": a done reader takes nothing";
                const auto& h = r.header();
                EXPECT_EQ(h.version, c.version) << c.name;
                EXPECT_EQ(h.local, c.local) << c.name;
                if (!c.local) {
                    EXPECT_EQ(core::to_string(h.source), c.source) << c.name;
                    EXPECT_EQ(core::to_string(h.destination), c.destination) << c.name;
                }
            }
        }
    }
}

TEST(proxy_header, refuses_malformed_headers_whole_and_byte_by_byte) {
    for (const auto& c : bad_cases()) {
        for (std::size_t step : {std::size_t{0}, std::size_t{1}, std::size_t{7}}) {
            proxy_reader r;
            feed_split(r, c.input, step);
            ASSERT_TRUE(r.failed()) << c.name << " step " << step;
            EXPECT_NE(r.error().find(c.error_part), std::string::npos)
                << c.name << ": " << r.error();
            EXPECT_EQ(r.feed("PROXY UNKNOWN\r\n"), 0u) << c.name << ": sticky";
            EXPECT_LE(r.size(), proxy_reader::default_max_v2_size) << c.name;
        }
    }
}

TEST(proxy_header, truncated_headers_wait_for_more) {
    for (const auto& c : ok_cases()) {
        for (std::size_t n = 0; n < c.header.size(); ++n) {
            proxy_reader r;
            EXPECT_EQ(r.feed(std::string_view(c.header).substr(0, n)), n) << c.name;
            EXPECT_FALSE(r.done()) << c.name << " after " << n << " octets";
            EXPECT_FALSE(r.failed()) << c.name << " after " << n << " octets: " << r.error();
        }
    }
}

TEST(proxy_header, oversize_is_refused_before_the_bytes_arrive) {
    // The length field alone decides: 16 octets in, the reader already knows.
    proxy_reader r(64);
    const std::string h = v2(0x21, 0x11, v4_block + std::string(100, '\0'));
    EXPECT_EQ(r.feed(std::string_view(h).substr(0, 16)), 16u);
    EXPECT_TRUE(r.failed());
    EXPECT_EQ(r.size(), 16u);

    // The limit is never below what an IPv6 address block needs.
    proxy_reader small(1);
    const std::string v6 = v2(0x21, 0x21, v6_block);
    EXPECT_EQ(small.feed(v6), v6.size());
    EXPECT_TRUE(small.done()) << small.error();
}

TEST(proxy_header, v1_line_at_the_limit) {
    // 107 octets with CRLF is accepted, 108 is not (UNKNOWN allows padding to test it).
    std::string at_limit = "PROXY UNKNOWN ";
    at_limit += std::string(proxy_reader::max_v1_size - at_limit.size() - 2, 'x') + "\r\n";
    ASSERT_EQ(at_limit.size(), proxy_reader::max_v1_size);
    proxy_reader ok;
    EXPECT_EQ(ok.feed(at_limit), at_limit.size());
    EXPECT_TRUE(ok.done()) << ok.error();

    std::string over = "PROXY UNKNOWN ";
    over += std::string(proxy_reader::max_v1_size - over.size() - 1, 'x') + "\r\n";
    proxy_reader bad;
    bad.feed(over);
    EXPECT_TRUE(bad.failed());
    EXPECT_LE(bad.size(), proxy_reader::max_v1_size);
}

}  // namespace
}  // namespace ringmail::smtp
