#include "ringmail/core/log.h"

#include "ringmail/core/hex.h"
#include "ringmail/core/oncore.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <memory>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ringmail::core::log {

namespace {

// Written once at start-up, read by every shard: relaxed is enough and costs a plain load.
std::atomic<level> g_level{level::info};

constexpr const char* hex_digits = hex_lower;

struct line_state {
    char message[max_line];  // the caller's text, formatted (cut at max_line)
    char line[max_line];     // the finished line, escaped, with prefix and newline
    std::time_t stamp_second = -1;
    char stamp[24];  // "YYYY-MM-DDTHH:MM:SS", rebuilt only when the second changes
};

thread_local line_state tl;

// How batches reach stderr: chosen once by prepare_output() before the threads start, then
// only read.
int g_batch_fd = STDERR_FILENO;
bool g_batch_socket = false;
std::atomic<std::uint64_t> g_dropped{0};

struct batch_state {
    bool on = false;
    std::unique_ptr<char[]> data;
    std::size_t len = 0;
    std::uint64_t unreported = 0;  // dropped since the last report
};

thread_local batch_state tb;

bool is_control(unsigned char c) {
    return c < 0x20 || c == 0x7f;
}

// Appends to a fixed buffer, remembering whether anything did not fit.
struct appender {
    char* data;
    std::size_t cap;
    std::size_t len = 0;
    bool cut = false;

    void put(std::string_view s) {
        const std::size_t n = std::min(s.size(), cap - len);
        std::memcpy(data + len, s.data(), n);
        len += n;
        if (n < s.size())
            cut = true;
    }
    void put_escaped(unsigned char c) {
        if (cap - len < 4) {
            cut = true;
            return;
        }
        data[len++] = '\\';
        data[len++] = 'x';
        data[len++] = hex_digits[c >> 4];
        data[len++] = hex_digits[c & 0xf];
    }
};

void write_all(const char* p, std::size_t n) noexcept {
    while (n > 0) {
        const ssize_t w = ::write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;  // nowhere left to report it
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// One non-blocking write of at most n bytes; the bytes written, 0 when it would block, -1 when
// stderr is gone (the batch is then discarded: there is nowhere to report it).
ssize_t write_some(const char* p, std::size_t n) noexcept {
    for (;;) {
        const ssize_t w = g_batch_socket ? ::send(g_batch_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
                                         : ::write(g_batch_fd, p, n);
        if (w >= 0)
            return w;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -1;
    }
}

// Writes the batch in chunks that end at a line end and hold at most max_line bytes (so no
// line of ours interleaves with another writer's on a pipe), until done or stderr is full.
void drain(batch_state& b) noexcept {
    std::size_t done = 0;
    while (done < b.len) {
        std::size_t n = std::min(b.len - done, max_line);
        if (done + n < b.len) {
            const char* start = b.data.get() + done;
            const void* nl = ::memrchr(start, '\n', n);
            if (nl != nullptr)
                n = static_cast<std::size_t>(static_cast<const char*>(nl) - start) + 1;
        }
        const ssize_t w = write_some(b.data.get() + done, n);
        if (w < 0) {
            done = b.len;
            break;
        }
        if (w == 0)
            break;
        done += static_cast<std::size_t>(w);
    }
    if (done > 0) {
        std::memmove(b.data.get(), b.data.get() + done, b.len - done);
        b.len -= done;
    }
}

}  // namespace

void prepare_output() noexcept {
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0)
        return;
    if (S_ISSOCK(st.st_mode)) {
        g_batch_socket = true;
    } else if (S_ISFIFO(st.st_mode)) {
        // A second open of the pipe is a file description of its own: O_NONBLOCK on it leaves
        // the one we share with our parent as it was.
        const int fd = ::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0)
            g_batch_fd = fd;
    }
}

void begin_batching() noexcept {
    if (tb.on)
        return;
    if (!tb.data)
        tb.data = std::make_unique<char[]>(batch_capacity);
    tb.len = 0;
    tb.on = true;
}

void flush() noexcept {
    batch_state& b = tb;
    if (!b.on || (b.len == 0 && b.unreported == 0))
        return;
    drain(b);
    if (b.unreported > 0 && b.len == 0) {
        const std::uint64_t n = b.unreported;
        b.unreported = 0;
        write_line(level::warn, "{} log line(s) dropped: stderr did not keep up",
                   fmt::make_format_args(n));
        drain(b);
    }
}

void end_batching() noexcept {
    batch_state& b = tb;
    if (!b.on)
        return;
    flush();
    b.on = false;
    if (b.len > 0)
        write_all(b.data.get(), b.len);  // shutting down: blocking is fine now
    b.len = 0;
}

std::uint64_t dropped_lines() noexcept {
    return g_dropped.load(std::memory_order_relaxed);
}

void set_level(level l) noexcept {
    g_level.store(l, std::memory_order_relaxed);
}
level current_level() noexcept {
    return g_level.load(std::memory_order_relaxed);
}

std::optional<level> parse_level(std::string_view name) noexcept {
    if (name == "debug")
        return level::debug;
    if (name == "info")
        return level::info;
    if (name == "warn")
        return level::warn;
    if (name == "error")
        return level::error;
    return std::nullopt;
}

std::string_view level_name(level l) noexcept {
    switch (l) {
        case level::debug:
            return "debug";
        case level::info:
            return "info";
        case level::warn:
            return "warn";
        case level::error:
            return "error";
    }
    return "?";
}

void write_line(level l, fmt::string_view format, fmt::format_args args) noexcept {
    line_state& st = tl;

    std::size_t msg_len = 0;
    bool msg_cut = false;
    try {
        const auto r = fmt::vformat_to_n(st.message, sizeof st.message, format, args);
        msg_len = std::min(r.size, sizeof st.message);
        msg_cut = r.size > sizeof st.message;
    } catch (...) {
        // A formatter threw (a bug in a custom formatter, or bad_alloc inside one): keep the
        // line, say so, and do not take the caller down with it.
        constexpr std::string_view failed = "<log formatting failed>";
        std::memcpy(st.message, failed.data(), failed.size());
        msg_len = failed.size();
    }

    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != st.stamp_second) {
        std::tm tm{};
        ::gmtime_r(&now.tv_sec, &tm);
        std::strftime(st.stamp, sizeof st.stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        st.stamp_second = now.tv_sec;
    }

    // One byte is kept back for the newline.
    appender out{st.line, sizeof st.line - 1};
    char head[96];
    const unsigned shard = this_shard_id();
    const auto millis = static_cast<unsigned>(now.tv_nsec / 1000000);
    const auto h = shard == no_shard
                       ? fmt::format_to_n(head, sizeof head, "{}.{:03}Z shard=main {}: ", st.stamp,
                                          millis, level_name(l))
                       : fmt::format_to_n(head, sizeof head, "{}.{:03}Z shard={} {}: ", st.stamp,
                                          millis, shard, level_name(l));
    out.put(std::string_view(head, std::min(h.size, sizeof head)));

    for (std::size_t i = 0; i < msg_len && !out.cut; ++i) {
        const auto c = static_cast<unsigned char>(st.message[i]);
        if (is_control(c)) {
            out.put_escaped(c);
        } else {
            out.put(std::string_view(&st.message[i], 1));
        }
    }
    if (out.cut || msg_cut) {
        // The marker replaces the last bytes, so the line still fits in max_line.
        const std::size_t keep = std::min(out.len, out.cap - 3);
        out.len = keep;
        out.cut = false;
        out.put("...");
    }
    st.line[out.len++] = '\n';

    batch_state& b = tb;
    if (!b.on) {
        write_all(st.line, out.len);
        return;
    }
    if (b.len + out.len > batch_capacity)
        drain(b);
    if (b.len + out.len > batch_capacity) {
        ++b.unreported;
        g_dropped.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    std::memcpy(b.data.get() + b.len, st.line, out.len);
    b.len += out.len;
    if (l >= level::error)
        drain(b);
}

std::string sanitize(std::string_view peer_text, std::size_t max_len) {
    // Most text is plain: then it is copied as it is, in a string of its own size (inline for
    // 15 octets or fewer), not into a buffer reserved for four octets per character.
    auto is_plain = [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c >= 0x20 && c < 0x7f && c != '\\';
    };
    if (peer_text.size() <= max_len && std::all_of(peer_text.begin(), peer_text.end(), is_plain))
        return std::string(peer_text);
    std::string out;
    out.reserve(std::min(peer_text.size() * 4, max_len) + 3);
    for (const char ch : peer_text) {
        const auto c = static_cast<unsigned char>(ch);
        const bool plain = c >= 0x20 && c < 0x7f && c != '\\';
        const std::size_t need = plain ? 1 : 4;
        if (out.size() + need > max_len) {
            out += "...";
            return out;
        }
        if (plain) {
            out += ch;
        } else {
            out += '\\';
            out += 'x';
            out += hex_digits[c >> 4];
            out += hex_digits[c & 0xf];
        }
    }
    return out;
}

}  // namespace ringmail::core::log
