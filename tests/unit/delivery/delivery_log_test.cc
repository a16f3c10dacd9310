#include "ringmail/delivery/delivery_log.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace ringmail::delivery {
namespace {

std::string format(const delivery_record& r) {
    std::string out;
    format_delivery_record(r, out);
    return out;
}

TEST(delivery_log, formats_a_delivery_line) {
    delivery_record r;
    r.type = delivery_event::delivery;
    r.time_ms = 1700000000123;
    r.queue_id = "0001ABC";
    r.message_id = "<m1@example.test>";
    r.sender = "a@example.test";
    r.recipient = "b@example.test";
    r.mx_host = "mx.example.test";
    r.mx_ip = "127.0.0.2";
    r.reply = "250 2.0.0 Ok";
    r.attempt = 2;
    r.latency_ms = 1500;
    r.size = 1024;
    EXPECT_EQ(format(r),
              R"({"time":"2023-11-14T22:13:20.123Z","type":"Delivery","queue_id":"0001ABC",)"
              R"("message_id":"<m1@example.test>","sender":"a@example.test",)"
              R"("recipient":"b@example.test","mx_host":"mx.example.test","mx_ip":"127.0.0.2",)"
              R"("reply":"250 2.0.0 Ok","attempt":2,"latency_ms":1500,"size":1024})"
              "\n");
}

TEST(delivery_log, reception_lists_counts_and_keeps_the_null_sender) {
    delivery_record r;
    r.type = delivery_event::reception;
    r.time_ms = 0;
    r.queue_id = "Q";
    r.sender = "";
    r.recipients = 3;
    r.client_ip = "::1";
    EXPECT_EQ(format(r), R"({"time":"1970-01-01T00:00:00.000Z","type":"Reception","queue_id":"Q",)"
                         R"("sender":"","recipients":3,"client_ip":"::1"})"
                         "\n");
}

TEST(delivery_log, escapes_everything_json_needs) {
    struct {
        std::string in;
        std::string out;
    } cases[] = {
        {"plain", "\"plain\""},
        {"q\"b\\", R"("q\"b\\")"},
        {"a\r\nb\tc", R"("a\r\nb\tc")"},
        {std::string("nul\0x", 5), R"("nul\u0000x")"},
        {"\x1f\x7f", R"("\u001f\u007f")"},
        {"caf\xc3\xa9", "\"caf\xc3\xa9\""},            // valid UTF-8 passes through
        {"\xf0\x9f\x93\xa7", "\"\xf0\x9f\x93\xa7\""},  // 4-byte sequence
        {"bad\xff", R"("bad\ufffd")"},
        {"\xc3", R"("\ufffd")"},                      // truncated sequence
        {"\xc0\xaf", R"("\ufffd\ufffd")"},            // overlong
        {"\xed\xa0\x80", R"("\ufffd\ufffd\ufffd")"},  // surrogate
    };
    for (const auto& c : cases) {
        delivery_record r;
        r.type = delivery_event::bounce;
        r.sender = c.in;
        const std::string line = format(r);
        const std::string want = ",\"sender\":" + c.out;
        EXPECT_NE(line.find(want), std::string::npos) << line;
    }
}

TEST(delivery_log, finds_the_message_id_in_the_header_block_only) {
    struct {
        std::string message;
        std::string want;
    } cases[] = {
        {"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", "<a@b>"},
        {"message-id:<a@b>  \r\n\r\n", "<a@b>"},
        {"MESSAGE-ID:\r\n <folded@b>\r\nX: y\r\n\r\n", "<folded@b>"},
        {"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", ""},
        {"Subject: no id\r\n\r\n", ""},
        {"Message-IDX: <no@b>\r\n\r\n", ""},
        {"", ""},
    };
    for (const auto& c : cases) {
        std::string scratch;
        EXPECT_EQ(find_message_id(c.message, scratch), c.want) << c.message;
    }
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

TEST(delivery_log, flushes_whole_lines_and_reopens_on_a_new_generation) {
    char dir[] = "/tmp/ringmail-dlog-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/d.json";
    std::atomic<std::uint64_t> generation{0};
    {
        delivery_log dlog(path, generation);
        ASSERT_TRUE(dlog.enabled());
        delivery_record r;
        r.queue_id = "A";
        dlog.add(r);
        EXPECT_EQ(read_file(path), "");  // nothing before the flush
        EXPECT_TRUE(dlog.flush());
        EXPECT_NE(read_file(path).find("\"queue_id\":\"A\""), std::string::npos);

        ASSERT_EQ(std::rename(path.c_str(), (path + ".1").c_str()), 0);
        generation.fetch_add(1);
        r.queue_id = "B";
        dlog.add(r);
        EXPECT_TRUE(dlog.flush());
        EXPECT_EQ(read_file(path).find("\"A\""), std::string::npos);
        EXPECT_NE(read_file(path).find("\"queue_id\":\"B\""), std::string::npos);
        EXPECT_EQ(read_file(path + ".1").find("\"B\""), std::string::npos);
    }
    std::remove((path + ".1").c_str());
    std::remove(path.c_str());
    ::rmdir(dir);
}

TEST(delivery_log, a_full_buffer_drops_and_counts) {
    char dir[] = "/tmp/ringmail-dlog-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/d.json";
    std::atomic<std::uint64_t> generation{0};
    delivery_log dlog(path, generation, 200);
    delivery_record r;
    for (int i = 0; i < 10; ++i)
        dlog.add(r);
    EXPECT_GT(dlog.dropped(), 0u);
    EXPECT_TRUE(dlog.flush());
    std::remove(path.c_str());
    ::rmdir(dir);
}

TEST(delivery_log, unwritable_path_drops_without_failing_mail) {
    std::atomic<std::uint64_t> generation{0};
    delivery_log dlog("/nonexistent-dir/ringmail/d.json", generation);
    delivery_record r;
    dlog.add(r);
    EXPECT_FALSE(dlog.flush());
    EXPECT_EQ(dlog.dropped(), 1u);
}

TEST(delivery_log, disabled_is_a_no_op) {
    std::atomic<std::uint64_t> generation{0};
    delivery_log dlog("", generation);
    EXPECT_FALSE(dlog.enabled());
    dlog.add(delivery_record{});
    EXPECT_TRUE(dlog.flush());
}

}  // namespace
}  // namespace ringmail::delivery
