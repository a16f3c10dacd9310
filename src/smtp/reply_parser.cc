#include "ringmail/smtp/reply_parser.h"

#include <algorithm>

namespace ringmail::smtp {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// Length of an RFC 3463 code ("c.sss.ddd") at the start of text whose class matches the reply
// code's first digit, followed by a space or the end; 0 when there is none.
std::size_t enhanced_length(std::string_view text, int code) {
    if (text.size() < 5 || text[0] != static_cast<char>('0' + code / 100) || text[1] != '.') {
        return 0;
    }
    std::size_t i = 2;
    for (int field = 0; field < 2; ++field) {
        std::size_t digits = 0;
        while (i < text.size() && is_digit(text[i]) && digits < 4) {
            ++i;
            ++digits;
        }
        if (digits == 0 || digits > 3)
            return 0;
        if (field == 0) {
            if (i >= text.size() || text[i] != '.')
                return 0;
            ++i;
        }
    }
    if (i < text.size() && text[i] != ' ')
        return 0;
    return i;
}

}  // namespace

std::string server_reply::to_string() const {
    std::string out = std::to_string(code);
    if (!enhanced.empty()) {
        out += ' ';
        out += enhanced;
    }
    if (!text.empty()) {
        out += ' ';
        for (char c : text)
            out += c == '\n' ? ' ' : c;
    }
    return out;
}

server_reply make_reply(int code, std::string_view enhanced, std::string_view text,
                        local_failure why) {
    server_reply r;
    r.local = why;
    r.code = code;
    r.enhanced = std::string(enhanced);
    r.text = std::string(text);
    return r;
}

void reply_parser::fail() {
    _failed = true;
    _line.clear();
}

std::size_t reply_parser::feed(std::string_view bytes) {
    if (_complete || _failed)
        return 0;
    std::size_t consumed = 0;
    while (consumed < bytes.size()) {
        std::string_view rest = bytes.substr(consumed);
        std::size_t lf = rest.find('\n');
        std::size_t take = lf == std::string_view::npos ? rest.size() : lf;
        // +1 leaves room for the CR that precedes the LF.
        if (_line.size() + take > max_line_length + 1) {
            fail();
            return consumed + take;
        }
        _line.append(rest.substr(0, take));
        if (lf == std::string_view::npos)
            return bytes.size();
        consumed += lf + 1;
        if (!_line.empty() && _line.back() == '\r')
            _line.pop_back();
        if (_line.size() > max_line_length) {
            fail();
            return consumed;
        }
        finish_line();
        if (_failed || _complete)
            return consumed;
    }
    return consumed;
}

void reply_parser::finish_line() {
    std::string_view line = _line;
    if (line.size() < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) ||
        !is_digit(line[2]) || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
        fail();
        return;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (_count > 0 && code != _current.code) {
        fail();
        return;
    }
    if (_count >= max_reply_lines) {
        fail();
        return;
    }
    _current.code = code;
    bool last = line.size() == 3 || line[3] == ' ';
    std::string_view raw = line.size() > 4 ? line.substr(4) : std::string_view{};
    std::string* text = &_first;
    if (_count > 0) {
        if (_count == 1)
            _current.lines.push_back(_first);
        text = &_current.lines.emplace_back();
    }
    text->assign(raw);
    // Control characters never reach logs or bounces.
    for (char& c : *text) {
        auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u == 0x7f)
            c = ' ';
    }
    ++_count;
    _line.clear();
    if (!last)
        return;

    const std::string_view first = _first;
    if (std::size_t n = enhanced_length(first, code); n > 0)
        _current.enhanced = first.substr(0, n);
    auto add_text = [this](std::string_view t) {
        if (!_current.enhanced.empty() && t.starts_with(_current.enhanced) &&
            (t.size() == _current.enhanced.size() || t[_current.enhanced.size()] == ' ')) {
            t.remove_prefix(std::min(t.size(), _current.enhanced.size() + 1));
        }
        if (!_current.text.empty())
            _current.text += '\n';
        _current.text.append(t);
    };
    if (_current.lines.empty()) {
        add_text(first);
    } else {
        for (const std::string& l : _current.lines)
            add_text(l);
    }
    _complete = true;
}

server_reply reply_parser::take() {
    server_reply r = std::move(_current);
    _current = server_reply{};
    _count = 0;
    _complete = false;
    return r;
}

}  // namespace ringmail::smtp
