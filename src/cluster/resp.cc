#include "ringmail/cluster/resp.h"

#include <fmt/format.h>

#include <charconv>

namespace ringmail::cluster {

namespace {

template <typename Args>
void encode(std::string& out, const Args& args) {
    fmt::format_to(std::back_inserter(out), "*{}\r\n", args.size());
    for (std::string_view a : args) {
        fmt::format_to(std::back_inserter(out), "${}\r\n", a.size());
        out.append(a);
        out += "\r\n";
    }
}

bool to_int(std::string_view s, std::int64_t& v) {
    if (s.empty())
        return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

void encode_command(std::string& out, std::initializer_list<std::string_view> args) {
    encode(out, args);
}

void encode_command(std::string& out, const std::vector<std::string>& args) {
    encode(out, args);
}

void resp_parser::fail(std::string why) {
    _failed = true;
    _error = std::move(why);
    _buf.clear();
}

bool resp_parser::line_at(std::size_t& pos, std::string_view& line) {
    const std::size_t eol = _buf.find("\r\n", pos);
    if (eol == std::string::npos) {
        if (_buf.size() - pos > max_line)
            fail("line too long");
        return false;
    }
    if (eol - pos > max_line) {
        fail("line too long");
        return false;
    }
    line = std::string_view(_buf).substr(pos, eol - pos);
    pos = eol + 2;
    return true;
}

bool resp_parser::parse_value(std::size_t& pos, resp_value& out, std::size_t depth) {
    if (pos >= _buf.size())
        return false;
    const char t = _buf[pos];
    std::size_t p = pos + 1;
    std::string_view line;
    if (!line_at(p, line))
        return false;
    switch (t) {
        case '+':
            out.type = resp_value::kind::simple;
            out.str.assign(line);
            break;
        case '-':
            out.type = resp_value::kind::error;
            out.str.assign(line);
            break;
        case ':':
            out.type = resp_value::kind::integer;
            if (!to_int(line, out.integer)) {
                fail("bad integer");
                return false;
            }
            break;
        case '$': {
            std::int64_t n = 0;
            if (!to_int(line, n) || n < -1 || n > static_cast<std::int64_t>(max_bulk)) {
                fail("bad bulk length");
                return false;
            }
            if (n == -1) {
                out.type = resp_value::kind::nil;
                break;
            }
            const auto len = static_cast<std::size_t>(n);
            if (_buf.size() - p < len + 2)
                return false;
            if (_buf.compare(p + len, 2, "\r\n") != 0) {
                fail("bulk string not followed by CRLF");
                return false;
            }
            out.type = resp_value::kind::bulk;
            out.str.assign(_buf, p, len);
            p += len + 2;
            break;
        }
        case '*': {
            std::int64_t n = 0;
            if (!to_int(line, n) || n < -1 || n > static_cast<std::int64_t>(max_elements)) {
                fail("bad array length");
                return false;
            }
            if (n == -1) {
                out.type = resp_value::kind::nil;
                break;
            }
            if (depth + 1 > max_depth) {
                fail("arrays nested too deep");
                return false;
            }
            out.type = resp_value::kind::array;
            out.elements.clear();
            out.elements.resize(static_cast<std::size_t>(n));
            for (auto& e : out.elements) {
                if (!parse_value(p, e, depth + 1))
                    return false;
            }
            break;
        }
        default:
            fail(fmt::format("unexpected byte 0x{:02x}", static_cast<unsigned char>(t)));
            return false;
    }
    pos = p;
    return true;
}

void resp_parser::feed(std::string_view bytes) {
    if (_failed)
        return;
    _buf.append(bytes);
    std::size_t pos = 0;
    while (!_failed && pos < _buf.size()) {
        resp_value v;
        std::size_t p = pos;
        if (!parse_value(p, v, 0))
            break;
        _done.push_back(std::move(v));
        pos = p;
    }
    if (_failed)
        return;
    _buf.erase(0, pos);
    // A reply that is still incomplete is bounded by its parts' bounds; the whole buffer too.
    if (_buf.size() > max_bulk + 2 * max_line)
        fail("reply too large");
}

std::optional<resp_value> resp_parser::take() {
    if (_taken == _done.size())
        return std::nullopt;
    resp_value v = std::move(_done[_taken++]);
    if (_taken == _done.size()) {
        _done.clear();
        _taken = 0;
    }
    return v;
}

}  // namespace ringmail::cluster
