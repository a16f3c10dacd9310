#include "ringmail/delivery/delivery_log.h"

#include "ringmail/core/json_string.h"
#include "ringmail/core/log.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <unistd.h>

namespace ringmail::delivery {

namespace log = core::log;

std::string_view event_name(delivery_event e) noexcept {
    switch (e) {
        case delivery_event::reception:
            return "Reception";
        case delivery_event::delivery:
            return "Delivery";
        case delivery_event::transient_failure:
            return "TransientFailure";
        case delivery_event::bounce:
            return "Bounce";
        case delivery_event::expiration:
            return "Expiration";
    }
    return "?";
}

namespace {

void field(std::string& out, std::string_view name, std::string_view value) {
    if (value.empty())
        return;
    out += ",\"";
    out += name;
    out += "\":";
    core::append_json_string(out, value);
}

void field(std::string& out, std::string_view name, std::int64_t value) {
    if (value < 0)
        return;
    fmt::format_to(std::back_inserter(out), ",\"{}\":{}", name, value);
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size())
        return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        if (c != prefix[i])
            return false;
    }
    return true;
}

}  // namespace

void format_delivery_record(const delivery_record& r, std::string& out) {
    const std::time_t secs = static_cast<std::time_t>(r.time_ms / 1000);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    fmt::format_to(std::back_inserter(out),
                   "{{\"time\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"type\":\"{}\"",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   r.time_ms % 1000, event_name(r.type));
    field(out, "queue_id", r.queue_id);
    field(out, "message_id", r.message_id);
    // The null sender is meaningful: always present.
    out += ",\"sender\":";
    core::append_json_string(out, r.sender);
    if (r.type == delivery_event::reception) {
        field(out, "recipients", static_cast<std::int64_t>(r.recipients));
        field(out, "client_ip", r.client_ip);
    } else {
        field(out, "recipient", r.recipient);
    }
    field(out, "mx_host", r.mx_host);
    field(out, "mx_ip", r.mx_ip);
    field(out, "source", r.source);
    field(out, "reply", r.reply);
    field(out, "category", r.category);
    field(out, "attempt", r.attempt);
    field(out, "latency_ms", r.latency_ms);
    field(out, "size", r.size);
    out += "}\n";
}

std::string_view find_message_id(std::string_view message, std::string& scratch) {
    constexpr std::size_t max_header_block = 256 * 1024;
    if (message.size() > max_header_block)
        message = message.substr(0, max_header_block);
    std::size_t pos = 0;
    while (pos < message.size()) {
        std::size_t eol = message.find("\r\n", pos);
        if (eol == std::string_view::npos)
            eol = message.size();
        std::string_view line = message.substr(pos, eol - pos);
        if (line.empty())
            return {};  // end of the header block
        if (starts_with_nocase(line, "message-id:")) {
            scratch.assign(line.substr(11));
            // Unfold continuation lines.
            std::size_t next = eol + 2;
            while (next < message.size() && (message[next] == ' ' || message[next] == '\t')) {
                std::size_t e2 = message.find("\r\n", next);
                if (e2 == std::string_view::npos)
                    e2 = message.size();
                scratch.append(message.substr(next, e2 - next));
                next = e2 + 2;
            }
            std::string_view v = scratch;
            while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
                v.remove_prefix(1);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
                v.remove_suffix(1);
            return v.substr(0, 998);
        }
        pos = eol + 2;
    }
    return {};
}

delivery_log::delivery_log(std::string path, const std::atomic<std::uint64_t>& generation,
                           std::size_t max_buffer)
    : _path(std::move(path)),
      _generation(generation),
      _seen_generation(generation.load(std::memory_order_acquire)),
      _max_buffer(max_buffer) {
    if (enabled())
        reopen();
}

delivery_log::~delivery_log() {
    flush();
    if (_fd >= 0)
        ::close(_fd);
}

void delivery_log::add(const delivery_record& r) {
    if (!enabled())
        return;
    if (_buffer.size() >= _max_buffer) {
        ++_dropped;
        return;
    }
    format_delivery_record(r, _buffer);
}

bool delivery_log::reopen() {
    const int fd = ::open(_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        if (!_failing)
            log::error("delivery log {}: cannot open: {}", _path, std::strerror(errno));
        _failing = true;
        return false;
    }
    if (_fd >= 0)
        ::close(_fd);
    _fd = fd;
    return true;
}

bool delivery_log::flush() {
    if (!enabled())
        return true;
    const std::uint64_t g = _generation.load(std::memory_order_acquire);
    if (g != _seen_generation) {
        _seen_generation = g;
        reopen();
    } else if (_fd < 0 && !_buffer.empty()) {
        reopen();
    }
    if (_buffer.empty())
        return true;
    if (_fd < 0) {
        ++_dropped;
        _buffer.clear();
        return false;
    }
    // Whole lines in one write: with O_APPEND the shards' writes do not interleave mid-line.
    std::size_t done = 0;
    while (done < _buffer.size()) {
        const ssize_t n = ::write(_fd, _buffer.data() + done, _buffer.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (!_failing)
                log::error("delivery log {}: write failed: {}", _path, std::strerror(errno));
            _failing = true;
            ++_dropped;
            _buffer.clear();
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    if (_failing)
        log::info("delivery log {}: writing again", _path);
    _failing = false;
    _buffer.clear();
    return true;
}

}  // namespace ringmail::delivery
