#include "ringmail/core/log.h"

#include "ringmail/core/oncore.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <ctime>
#include <fcntl.h>
#include <regex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace ringmail::core {
namespace {

// Sends fd 2 to a temporary file for the life of the object; text() returns what was written.
class capture_stderr {
  public:
    capture_stderr() {
        std::fflush(stderr);
        _file = std::tmpfile();
        _saved = ::dup(STDERR_FILENO);
        ::dup2(::fileno(_file), STDERR_FILENO);
    }
    ~capture_stderr() {
        restore();
        std::fclose(_file);
    }
    std::string text() {
        restore();
        std::string out;
        std::rewind(_file);
        char buf[4096];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, _file)) > 0)
            out.append(buf, n);
        return out;
    }

  private:
    void restore() {
        if (_saved >= 0) {
            ::dup2(_saved, STDERR_FILENO);
            ::close(_saved);
            _saved = -1;
        }
    }
    FILE* _file = nullptr;
    int _saved = -1;
};

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < text.size()) {
        const auto nl = text.find('\n', start);
        if (nl == std::string::npos) {
            out.push_back(text.substr(start) + "<no newline>");
            break;
        }
        out.push_back(text.substr(start, nl - start));
        start = nl + 1;
    }
    return out;
}

std::time_t realtime_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec;
}

class log_test : public ::testing::Test {
  protected:
    void SetUp() override {
        log::set_level(log::level::debug);
        this_shard_id() = no_shard;
    }
    void TearDown() override {
        log::set_level(log::level::info);
        this_shard_id() = no_shard;
    }
};

TEST_F(log_test, line_format) {
    capture_stderr cap;
    // time() reads the coarse clock, which can lag the logger's CLOCK_REALTIME across a second
    // boundary: read the same clock the logger does.
    const std::time_t before = realtime_seconds();
    log::info("hello {} {}", 42, "world");
    const std::time_t after = realtime_seconds();
    const auto text = cap.text();

    const std::regex shape(
        R"(^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{3}Z shard=main info: hello 42 world\n$)");
    std::smatch m;
    ASSERT_TRUE(std::regex_match(text, m, shape)) << text;
    std::tm tm{};
    ASSERT_NE(::strptime(m[1].str().c_str(), "%Y-%m-%dT%H:%M:%S", &tm), nullptr);
    const std::time_t stamp = ::timegm(&tm);
    EXPECT_GE(stamp, before);
    EXPECT_LE(stamp, after);
}

TEST_F(log_test, shard_and_level_names) {
    capture_stderr cap;
    this_shard_id() = 3;
    log::debug("d");
    log::info("i");
    log::warn("w");
    log::error("e");
    this_shard_id() = 0;
    log::info("zero");
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 5u);
    EXPECT_NE(lines[0].find("Z shard=3 debug: d"), std::string::npos) << lines[0];
    EXPECT_NE(lines[1].find("Z shard=3 info: i"), std::string::npos) << lines[1];
    EXPECT_NE(lines[2].find("Z shard=3 warn: w"), std::string::npos) << lines[2];
    EXPECT_NE(lines[3].find("Z shard=3 error: e"), std::string::npos) << lines[3];
    EXPECT_NE(lines[4].find("Z shard=0 info: zero"), std::string::npos) << lines[4];
}

TEST_F(log_test, threshold) {
    capture_stderr cap;
    log::set_level(log::level::warn);
    EXPECT_FALSE(log::enabled(log::level::info));
    EXPECT_TRUE(log::enabled(log::level::error));
    log::debug("no");
    log::info("no");
    log::warn("yes1");
    log::error("yes2");
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_NE(lines[0].find("warn: yes1"), std::string::npos);
    EXPECT_NE(lines[1].find("error: yes2"), std::string::npos);
}

TEST_F(log_test, control_characters_escaped) {
    capture_stderr cap;
    log::info("a{}b{}c", "\r\n", std::string_view("\0\x1b\x7f", 3));
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_NE(lines[0].find("info: a\\x0d\\x0ab\\x00\\x1b\\x7fc"), std::string::npos) << lines[0];
}

TEST_F(log_test, long_lines_truncated_to_pipe_buf) {
    capture_stderr cap;
    log::info("{}", std::string(10000, 'x'));
    log::info("after");
    const auto text = cap.text();
    const auto lines = lines_of(text);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0].size() + 1, log::max_line);
    EXPECT_EQ(lines[0].substr(lines[0].size() - 4), "x...");
    EXPECT_NE(lines[1].find("info: after"), std::string::npos);
}

TEST_F(log_test, escapes_count_towards_the_limit) {
    capture_stderr cap;
    log::info("{}", std::string(3000, '\n'));
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].size() + 1, log::max_line);
    EXPECT_EQ(lines[0].substr(lines[0].size() - 3), "...");
}

TEST_F(log_test, line_that_fits_exactly_is_kept) {
    std::size_t prefix = 0;
    {
        capture_stderr cap;
        log::info("");
        prefix = cap.text().size() - 1;  // without the newline
    }
    capture_stderr cap;
    const std::size_t room = log::max_line - 1 - prefix;
    log::info("{}", std::string(room, 'y'));
    log::info("{}", std::string(room + 1, 'z'));
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0].size() + 1, log::max_line);
    EXPECT_EQ(lines[0].back(), 'y');
    EXPECT_EQ(lines[1].size() + 1, log::max_line);
    EXPECT_EQ(lines[1].substr(lines[1].size() - 4), "z...");
}

TEST_F(log_test, threads_never_interleave) {
    capture_stderr cap;
    constexpr int threads = 4;
    constexpr int per_thread = 300;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([t] {
            this_shard_id() = static_cast<unsigned>(t);
            const std::string body(1000, static_cast<char>('a' + t));
            for (int i = 0; i < per_thread; ++i)
                log::info("{} {}", i, body);
        });
    }
    for (auto& w : workers)
        w.join();
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), static_cast<std::size_t>(threads * per_thread));
    const std::regex shape(R"(^\S+Z shard=(\d) info: \d+ ([a-d])\2{999}$)");
    for (const auto& l : lines) {
        std::smatch m;
        ASSERT_TRUE(std::regex_match(l, m, shape)) << l.substr(0, 120);
        EXPECT_EQ(m[2].str()[0], 'a' + std::stoi(m[1].str()));
    }
}

TEST(log_levels, names_round_trip) {
    for (const auto l :
         {log::level::debug, log::level::info, log::level::warn, log::level::error}) {
        EXPECT_EQ(log::parse_level(log::level_name(l)), l);
    }
    EXPECT_FALSE(log::parse_level("INFO"));
    EXPECT_FALSE(log::parse_level("warning"));
    EXPECT_FALSE(log::parse_level(""));
}

struct sanitize_case {
    std::string in;
    std::size_t max;
    std::string want;
};

class sanitize : public ::testing::TestWithParam<sanitize_case> {};

TEST_P(sanitize, escapes_and_caps) {
    const auto& c = GetParam();
    EXPECT_EQ(log::sanitize(c.in, c.max), c.want);
}

INSTANTIATE_TEST_SUITE_P(
    all, sanitize,
    ::testing::Values(sanitize_case{"MAIL FROM:<a@b.test>", 256, "MAIL FROM:<a@b.test>"},
                      sanitize_case{"", 256, ""}, sanitize_case{"a\r\nb", 256, "a\\x0d\\x0ab"},
                      sanitize_case{std::string("\0\x01\x1f\x7f", 4), 256, "\\x00\\x01\\x1f\\x7f"},
                      sanitize_case{"back\\slash", 256, "back\\x5cslash"},
                      sanitize_case{"caf\xc3\xa9", 256, "caf\\xc3\\xa9"},
                      sanitize_case{"\xff", 256, "\\xff"}, sanitize_case{" ~", 256, " ~"},
                      sanitize_case{"abcdef", 6, "abcdef"},
                      sanitize_case{"abcdefg", 6, "abcdef..."},
                      // an escape is never split: it fits whole or the output stops before it
                      sanitize_case{"abcd\n", 6, "abcd..."}, sanitize_case{"ab\n", 6, "ab\\x0a"},
                      sanitize_case{"ab\nc", 6, "ab\\x0a..."}));

TEST(log_sanitize, default_cap) {
    const auto out = log::sanitize(std::string(1000, 'q'));
    EXPECT_EQ(out, std::string(log::default_sanitize_len, 'q') + "...");
}

}  // namespace
}  // namespace ringmail::core

namespace ringmail::core {
namespace {

TEST_F(log_test, batched_lines_wait_for_flush_and_errors_do_not) {
    capture_stderr cap;
    log::begin_batching();
    log::info("first {}", 1);
    log::info("second {}", 2);
    log::flush();
    log::info("third");
    log::error("an error goes out at once");
    log::end_batching();
    const auto lines = lines_of(cap.text());
    ASSERT_EQ(lines.size(), 4u);
    EXPECT_TRUE(lines[0].ends_with("info: first 1"));
    EXPECT_TRUE(lines[1].ends_with("info: second 2"));
    EXPECT_TRUE(lines[2].ends_with("info: third"));
    EXPECT_TRUE(lines[3].ends_with("error: an error goes out at once"));
}

TEST_F(log_test, batched_lines_are_held_until_flush) {
    capture_stderr cap;
    log::begin_batching();
    log::info("held");
    std::fflush(stderr);
    EXPECT_EQ(::lseek(STDERR_FILENO, 0, SEEK_CUR), 0);  // nothing written yet
    log::flush();
    EXPECT_GT(::lseek(STDERR_FILENO, 0, SEEK_CUR), 0);
    log::end_batching();
    EXPECT_EQ(lines_of(cap.text()).size(), 1u);
}

// A full pipe (nobody reads it) must not block a batching thread: lines wait, then are
// dropped and counted, and once the pipe drains one line says how many were lost.
TEST(log_death, a_full_stderr_pipe_never_blocks_a_batching_thread) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            int p[2];
            if (::pipe(p) != 0)
                std::_Exit(2);
            ::dup2(p[1], STDERR_FILENO);
            log::prepare_output();
            log::begin_batching();
            const std::string filler(200, 'x');
            // Far more than the pipe (64 KiB) and the batch (256 KiB) hold together.
            for (int i = 0; i < 4000; ++i) {
                log::info("{} {}", i, filler);
                if (i % 100 == 0)
                    log::flush();
            }
            log::flush();
            if (log::dropped_lines() == 0)
                std::_Exit(3);
            // Drain the pipe and the batch; the report line must come through.
            ::fcntl(p[0], F_SETFL, O_NONBLOCK);
            std::string seen;
            char buf[65536];
            for (int round = 0; round < 200; ++round) {
                ssize_t n;
                while ((n = ::read(p[0], buf, sizeof buf)) > 0)
                    seen.append(buf, static_cast<std::size_t>(n));
                log::flush();
            }
            if (seen.find("log line(s) dropped: stderr did not keep up") == std::string::npos)
                std::_Exit(4);
            // Every line that arrived is whole.
            std::size_t start = 0;
            while (start < seen.size()) {
                const auto nl = seen.find('\n', start);
                if (nl == std::string::npos)
                    std::_Exit(5);
                const std::string_view line(seen.data() + start, nl - start);
                if (line.find(" info: ") == line.npos && line.find(" warn: ") == line.npos)
                    std::_Exit(6);
                start = nl + 1;
            }
            std::_Exit(0);
        },
        ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace ringmail::core
