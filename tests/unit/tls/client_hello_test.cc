#include "ringmail/tls/client_hello.h"

#include <gtest/gtest.h>

#include "hello_builder.h"
#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::tls {
namespace {

using test::client_hello_message;
using test::hello_spec;
using test::in_records;
using test::many_suites;

const std::vector<std::uint16_t> server = {0x1303, 0x1301, 0xcca9, 0xc02b};
const std::vector<std::uint16_t> groups = {0x001d, 0x0017, 0x0018};
const hello_policy policy{server, groups};

std::size_t be16(const std::string& s, std::size_t at) {
    return static_cast<std::size_t>(static_cast<unsigned char>(s[at])) << 8 |
           static_cast<unsigned char>(s[at + 1]);
}

// The suites of the ClientHello at the start of `records` (one record).
std::vector<std::uint16_t> suites_of(const std::string& records) {
    const std::size_t off = 5 + 4 + 2 + 32 + 1;
    const std::size_t len = be16(records, off);
    std::vector<std::uint16_t> out;
    for (std::size_t i = 0; i < len / 2; ++i)
        out.push_back(static_cast<std::uint16_t>(be16(records, off + 2 + 2 * i)));
    return out;
}

TEST(client_hello, a_usual_hello_is_untouched) {
    hello_spec h;
    h.suites = {0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xcca9, 0xcca8, 0x00ff};
    const std::string original = in_records(client_hello_message(h));
    std::string in = original;
    EXPECT_EQ(check_client_hello(in, 0, policy), hello_check::untouched);
    EXPECT_EQ(in, original);
}

TEST(client_hello, exactly_150_suites_are_untouched) {
    hello_spec h;
    h.suites = many_suites(150, {0xcca9});
    std::string in = in_records(client_hello_message(h));
    const std::string original = in;
    EXPECT_EQ(check_client_hello(in, 0, policy), hello_check::untouched);
    EXPECT_EQ(in, original);
}

TEST(client_hello, sslscan_sized_hello_keeps_our_suites_and_everything_else) {
    hello_spec h;
    h.suites = many_suites(344, {0xc02b, 0x00ff, 0xcca9, 0x5600, 0x1301});
    h.extra_extensions = std::string("\x00\x17\x00\x00", 4);  // extended_master_secret
    const std::string msg = client_hello_message(h);
    const std::string trailing = "\x15\x03\x03\x00\x02\x01\x00";  // whatever came next
    std::string in = "prefix" + in_records(msg) + trailing;
    ASSERT_EQ(check_client_hello(in, 6, policy), hello_check::rewritten);
    EXPECT_EQ(in.substr(0, 6), "prefix");
    const std::string records = in.substr(6);
    ASSERT_EQ(records.substr(0, 3), "\x16\x03\x01");
    const std::size_t len = be16(records, 3);
    ASSERT_EQ(records.size(), 5 + len + trailing.size());
    EXPECT_EQ(records.substr(5 + len), trailing);
    // Client order, signalling values kept, nothing else.
    EXPECT_EQ(suites_of(records),
              (std::vector<std::uint16_t>{0xc02b, 0x00ff, 0xcca9, 0x5600, 0x1301}));
    // Everything before and after the suite list is byte-exact, and the lengths agree.
    const std::string hello = records.substr(5, len);
    EXPECT_EQ(hello[0], '\x01');
    EXPECT_EQ(static_cast<std::size_t>(static_cast<unsigned char>(hello[1])) << 16 | be16(hello, 2),
              hello.size() - 4);
    const std::size_t before = 4 + 2 + 32 + 1;
    EXPECT_EQ(hello.substr(0, 1), msg.substr(0, 1));
    EXPECT_EQ(hello.substr(4, before - 4), msg.substr(4, before - 4));
    const std::size_t old_after = before + 2 + 344 * 2;
    const std::size_t new_after = before + 2 + 5 * 2;
    EXPECT_EQ(hello.substr(new_after), msg.substr(old_after));
}

TEST(client_hello, nothing_in_common_keeps_the_first_150) {
    hello_spec h;
    h.suites = many_suites(200, {});
    std::string in = in_records(client_hello_message(h));
    ASSERT_EQ(check_client_hello(in, 0, policy), hello_check::rewritten);
    const auto kept = suites_of(in);
    ASSERT_EQ(kept.size(), max_hello_suites);
    EXPECT_EQ(kept.front(), h.suites.front());
    EXPECT_EQ(kept.back(), h.suites[max_hello_suites - 1]);
}

TEST(client_hello, a_hello_spread_over_records_and_reads) {
    hello_spec h;
    h.suites = many_suites(344, {0xcca9});
    const std::string msg = client_hello_message(h);
    const std::string records = in_records(msg, 100);  // 100-byte fragments
    ASSERT_GT(records.size(), 700u);
    std::string in;
    for (std::size_t i = 0; i + 1 < records.size(); i += 37) {
        in = records.substr(0, i);
        ASSERT_EQ(check_client_hello(in, 0, policy), hello_check::need_more) << i;
        EXPECT_EQ(in, records.substr(0, i));
    }
    in = records;
    ASSERT_EQ(check_client_hello(in, 0, policy), hello_check::rewritten);
    EXPECT_EQ(suites_of(in), (std::vector<std::uint16_t>{0xcca9}));
}

TEST(client_hello, anything_else_is_untouched) {
    hello_spec h;
    h.suites = many_suites(344, {0xcca9});
    const std::string msg = client_hello_message(h);
    std::string server_hello = msg;
    server_hello[0] = '\x02';
    const std::string cases[] = {
        "EHLO example.test\r\n",                                            // not TLS
        std::string("\x80\x2e\x01\x03\x01", 5) + std::string(41, 'x'),      // SSLv2-style hello
        in_records(server_hello),                                           // not a ClientHello
        std::string("\x16\x03\x01\x00\x00", 5),                             // empty record
        std::string("\x16\x03\x01\x48\x01", 5) + std::string(0x4801, 'x'),  // record too long
        std::string("\x16\x03\x01\x00\x04\x01\x01\x00\x00", 9),             // a 64 KiB+ hello
        in_records(msg + std::string("\x14\x00\x00\x00", 4)),               // more behind the hello
    };
    for (const auto& c : cases) {
        std::string in = c;
        EXPECT_NE(check_client_hello(in, 0, policy), hello_check::rewritten) << c.size();
        EXPECT_EQ(in, c);
    }
}

TEST(client_hello, a_hello_without_a_group_of_ours_is_refused) {
    struct group_case {
        std::vector<std::uint16_t> offered;
        hello_check expected;
    };
    const group_case cases[] = {
        {{0x0016}, hello_check::no_common_group},                  // secp256k1
        {{0x001a, 0x001b, 0x001c}, hello_check::no_common_group},  // brainpool
        {{0x0019, 0x001e, 0x0100}, hello_check::no_common_group},  // P-521, X448, ffdhe2048
        {{0x0a0a, 0x0016, 0x0018}, hello_check::untouched},        // GREASE, secp256k1, P-384
        {{0x001d}, hello_check::untouched},
        {{}, hello_check::untouched},  // no supported_groups: any curve will do (RFC 8422)
    };
    for (const bool many : {false, true}) {
        for (const auto& c : cases) {
            hello_spec h;
            h.suites = many ? many_suites(344, {0xcca9}) : std::vector<std::uint16_t>{0xcca9};
            h.groups = c.offered;
            std::string in = in_records(client_hello_message(h));
            const hello_check want =
                many && c.expected == hello_check::untouched ? hello_check::rewritten : c.expected;
            EXPECT_EQ(check_client_hello(in, 0, policy), want) << c.offered.size() << many;
        }
    }
    EXPECT_EQ(handshake_failure_alert(), std::string("\x15\x03\x03\x00\x02\x02\x28", 7));
}

TEST(client_hello, malformed_lengths_are_left_to_wolfssl) {
    hello_spec h;
    h.suites = many_suites(344, {0xcca9});
    std::string msg = client_hello_message(h);
    std::string odd = msg;
    odd[4 + 2 + 32 + 1 + 1] = '\x01';  // suite list length now odd
    std::string in = in_records(odd);
    const std::string original = in;
    EXPECT_EQ(check_client_hello(in, 0, policy), hello_check::untouched);
    EXPECT_EQ(in, original);
    std::string long_sid = msg;
    long_sid[4 + 2 + 32] = '\xff';  // session id past the end
    in = in_records(long_sid);
    EXPECT_EQ(check_client_hello(in, 0, policy), hello_check::untouched);
}

}  // namespace
}  // namespace ringmail::tls
