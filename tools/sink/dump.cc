#include "sink/dump.h"

#include <cerrno>
#include <fcntl.h>
#include <system_error>
#include <unistd.h>

namespace ringmail::sink {

namespace {
std::error_code last_error() {
    return {errno, std::system_category()};
}

result<void> write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return failure(last_error());
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
}

std::string_view body_name(mail::body_type b) noexcept {
    switch (b) {
        case mail::body_type::seven_bit:
            return "7BIT";
        case mail::body_type::eight_bit_mime:
            return "8BITMIME";
        case mail::body_type::binary_mime:
            return "BINARYMIME";
        case mail::body_type::unspecified:
        default:
            return {};
    }
}
}  // namespace

void dot_unstuffer::feed(std::string_view in, std::string& out) {
    std::size_t from = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        switch (_state) {
            case state::line_start:
                if (c == '.') {
                    out.append(in.data() + from, i - from);
                    from = i + 1;
                    _state = state::mid_line;
                    continue;
                }
                _state = c == '\r' ? state::cr : state::mid_line;
                break;
            case state::mid_line:
                if (c == '\r')
                    _state = state::cr;
                break;
            case state::cr:
                _state = c == '\n' ? state::line_start : c == '\r' ? state::cr : state::mid_line;
                break;
        }
    }
    out.append(in.data() + from, in.size() - from);
}

std::string format_envelope(const mail::envelope& env, std::string_view result) {
    std::string s;
    s.append("MAIL FROM:<").append(env.mail_from).append(">");
    if (auto b = body_name(env.body); !b.empty())
        s.append(" BODY=").append(b);
    if (env.smtputf8)
        s.append(" SMTPUTF8");
    s.append("\n");
    for (const auto& r : env.rcpt_to)
        s.append("RCPT TO:<").append(r).append(">\n");
    s.append("HELO ").append(env.helo_name).append("\n");
    if (!env.client_address.empty())
        s.append("CLIENT ").append(env.client_address).append("\n");
    s.append("RESULT ").append(result).append("\n");
    return s;
}

dump_file::~dump_file() {
    abort();
}

result<void> dump_file::open(const std::string& dir, std::string_view name) {
    abort();
    _base.assign(dir).append("/").append(name);
    std::string path = _base + ".eml";
    _fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (_fd < 0)
        return failure(last_error());
    _unstuff.reset();
    return {};
}

result<void> dump_file::append(std::string_view bytes) {
    if (_fd < 0)
        return failure(std::make_error_code(std::errc::bad_file_descriptor));
    _scratch.clear();
    _unstuff.feed(bytes, _scratch);
    return write_all(_fd, _scratch);
}

result<void> dump_file::finish(const mail::envelope& env, std::string_view result) {
    if (_fd < 0)
        return failure(std::make_error_code(std::errc::bad_file_descriptor));
    int rc = ::close(_fd);
    _fd = -1;
    if (rc != 0)
        return failure(last_error());
    std::string path = _base + ".env";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return failure(last_error());
    auto w = write_all(fd, format_envelope(env, result));
    if (::close(fd) != 0 && w)
        return failure(last_error());
    return w;
}

void dump_file::abort() noexcept {
    if (_fd < 0)
        return;
    ::close(_fd);
    _fd = -1;
    ::unlink((_base + ".eml").c_str());
}

}  // namespace ringmail::sink
