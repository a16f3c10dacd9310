#include "ringmail/admin/http.h"

#include <fmt/format.h>

namespace ringmail::admin {

namespace {

bool is_tchar(char c) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~':
            return true;
        default:
            return false;
    }
}

bool is_token(std::string_view s) noexcept {
    if (s.empty())
        return false;
    for (char c : s) {
        if (!is_tchar(c))
            return false;
    }
    return true;
}

char lower(char c) noexcept {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size())
        return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (lower(a[i]) != lower(b[i]))
            return false;
    }
    return true;
}

std::string_view trim_ows(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

}  // namespace

std::string_view http_request::path() const noexcept {
    std::string_view t(target);
    return t.substr(0, t.find('?'));
}

void request_parser::reset() {
    _state = state::request_line;
    _line.clear();
    _cr = false;
    _taken = 0;
    _fields = 0;
    _connection_close = false;
    _connection_keep_alive = false;
    _have_length = false;
    _content_length = 0;
    _request = http_request{};
    _status = 0;
    _error.clear();
}

void request_parser::fail(int status, std::string why) {
    _state = state::failed;
    _status = status;
    _error = std::move(why);
}

std::size_t request_parser::feed(std::string_view bytes) {
    std::size_t n = 0;
    while (n < bytes.size() &&
           (_state == state::request_line || _state == state::fields || _state == state::body)) {
        if (_state == state::body) {
            const std::size_t take =
                std::min(bytes.size() - n, _content_length - _request.body.size());
            _request.body.append(bytes.substr(n, take));
            n += take;
            _taken += take;
            if (_request.body.size() == _content_length)
                _state = state::done;
            continue;
        }
        const char c = bytes[n++];
        ++_taken;
        if (_state == state::request_line && _taken > max_request_line) {
            fail(414, fmt::format("request line longer than {} octets", max_request_line));
            break;
        }
        if (_state == state::fields && _taken > max_header_bytes) {
            fail(431, fmt::format("header block larger than {} octets", max_header_bytes));
            break;
        }
        if (_cr) {
            _cr = false;
            if (c != '\n') {
                fail(400, "bare CR");
                break;
            }
            line_done();
            _line.clear();
            continue;
        }
        if (c == '\r') {
            _cr = true;
        } else if (c == '\n') {
            fail(400, "bare LF (lines end in CRLF)");
        } else if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) {
            fail(400, "control character");
        } else {
            _line += c;
        }
    }
    return n;
}

void request_parser::line_done() {
    if (_state == state::request_line) {
        if (_line.empty())
            return;  // RFC 9112 2.2: empty lines before the request line are ignored
        request_line();
    } else {
        field_line();
    }
}

void request_parser::request_line() {
    std::string_view l(_line);
    const auto sp1 = l.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : l.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || l.find(' ', sp2 + 1) != std::string_view::npos) {
        fail(400, "request line is not \"METHOD target HTTP/1.x\"");
        return;
    }
    const auto method = l.substr(0, sp1);
    const auto target = l.substr(sp1 + 1, sp2 - sp1 - 1);
    const auto version = l.substr(sp2 + 1);
    if (!is_token(method)) {
        fail(400, "method is not a token");
        return;
    }
    if (target.empty() || target.front() != '/') {
        fail(400, "target is not a path");
        return;
    }
    for (char c : target) {
        if (c == '\t' || c == '#') {
            fail(400, "target has a character not allowed there");
            return;
        }
    }
    if (version == "HTTP/1.1") {
        _request.minor = 1;
    } else if (version == "HTTP/1.0") {
        _request.minor = 0;
    } else if (version.substr(0, 5) == "HTTP/") {
        fail(505, "not HTTP/1.0 or HTTP/1.1");
        return;
    } else {
        fail(400, "no HTTP version");
        return;
    }
    _request.method = std::string(method);
    _request.target = std::string(target);
    _state = state::fields;
}

void request_parser::field_line() {
    if (_line.empty()) {
        _request.keep_alive = _request.minor == 1 ? !_connection_close
                                                  : (_connection_keep_alive && !_connection_close);
        _state = _content_length > 0 ? state::body : state::done;
        return;
    }
    if (++_fields > max_fields) {
        fail(431, fmt::format("more than {} header fields", max_fields));
        return;
    }
    std::string_view l(_line);
    if (l.front() == ' ' || l.front() == '\t') {
        fail(400, "obsolete line folding");
        return;
    }
    const auto colon = l.find(':');
    if (colon == std::string_view::npos || !is_token(l.substr(0, colon))) {
        fail(400, "header field without a valid name");
        return;
    }
    const auto name = l.substr(0, colon);
    const auto value = trim_ows(l.substr(colon + 1));
    if (iequals(name, "content-length")) {
        std::size_t len = 0;
        if (value.empty() || value.size() > 9) {
            fail(value.size() > 9 ? 413 : 400, "bad Content-Length");
            return;
        }
        for (char c : value) {
            if (c < '0' || c > '9') {
                fail(400, "bad Content-Length");
                return;
            }
            len = len * 10 + static_cast<std::size_t>(c - '0');
        }
        if (_have_length && len != _content_length) {
            fail(400, "conflicting Content-Length fields");
            return;
        }
        if (len > max_body) {
            fail(413, fmt::format("body larger than {} octets", max_body));
            return;
        }
        _have_length = true;
        _content_length = len;
    } else if (iequals(name, "transfer-encoding")) {
        fail(400, "Transfer-Encoding is not supported (send Content-Length)");
        return;
    } else if (iequals(name, "authorization")) {
        if (!_request.authorization.empty()) {
            fail(400, "more than one Authorization field");
            return;
        }
        _request.authorization = std::string(value);
    } else if (iequals(name, "connection")) {
        std::string_view rest = value;
        while (!rest.empty()) {
            const auto comma = rest.find(',');
            const auto opt = trim_ows(rest.substr(0, comma));
            if (iequals(opt, "close"))
                _connection_close = true;
            if (iequals(opt, "keep-alive"))
                _connection_keep_alive = true;
            if (comma == std::string_view::npos)
                break;
            rest.remove_prefix(comma + 1);
        }
    }
}

std::string_view reason_phrase(int status) noexcept {
    switch (status) {
        case 200:
            return "OK";
        case 202:
            return "Accepted";
        case 401:
            return "Unauthorized";
        case 409:
            return "Conflict";
        case 413:
            return "Content Too Large";
        case 400:
            return "Bad Request";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 414:
            return "URI Too Long";
        case 431:
            return "Request Header Fields Too Large";
        case 503:
            return "Service Unavailable";
        case 505:
            return "HTTP Version Not Supported";
        default:
            return "Unknown";
    }
}

std::string format_response(int status, std::string_view content_type, std::string_view body,
                            bool keep_alive, bool head, std::string_view extra_fields) {
    std::string out = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: "
        "no-store\r\nConnection: {}\r\n{}\r\n",
        status, reason_phrase(status), content_type, body.size(),
        keep_alive ? "keep-alive" : "close", extra_fields);
    if (!head)
        out.append(body);
    return out;
}

}  // namespace ringmail::admin
