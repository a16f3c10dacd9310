#include "ringmail/admin/json.h"

#include "ringmail/core/hex.h"
#include "ringmail/core/json_string.h"

#include <fmt/format.h>

#include <cctype>

namespace ringmail::admin {

std::string json_string(std::string_view s) {
    std::string out;
    out.reserve(s.size() + 2);
    core::append_json_string(out, s);
    return out;
}

namespace {

struct reader {
    std::string_view s;
    std::size_t i = 0;

    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            ++i;
    }
    bool eat(char c) {
        ws();
        if (i < s.size() && s[i] == c) {
            ++i;
            return true;
        }
        return false;
    }
    static int hex(char c) { return core::hex_value(c); }
    std::optional<std::string> string() {
        ws();
        if (i >= s.size() || s[i] != '"')
            return std::nullopt;
        ++i;
        std::string out;
        while (i < s.size()) {
            const char c = s[i++];
            if (c == '"')
                return out;
            if (static_cast<unsigned char>(c) < 0x20)
                return std::nullopt;
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= s.size())
                return std::nullopt;
            const char e = s[i++];
            switch (e) {
                case '"':
                case '\\':
                case '/':
                    out += e;
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    if (i + 4 > s.size())
                        return std::nullopt;
                    unsigned cp = 0;
                    for (int k = 0; k < 4; ++k) {
                        const int h = hex(s[i++]);
                        if (h < 0)
                            return std::nullopt;
                        cp = cp * 16 + static_cast<unsigned>(h);
                    }
                    core::append_json_code_point(out, cp);
                    break;
                }
                default:
                    return std::nullopt;
            }
        }
        return std::nullopt;
    }
    std::optional<std::string> scalar() {
        ws();
        if (i < s.size() && s[i] == '"')
            return string();
        const std::size_t start = i;
        while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '-' ||
                                s[i] == '+' || s[i] == '.'))
            ++i;
        const std::string_view t = s.substr(start, i - start);
        if (t.empty())
            return std::nullopt;
        if (t == "true" || t == "false" || t == "null")
            return std::string(t);
        for (const char c : t) {
            if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.' ||
                  c == 'e' || c == 'E'))
                return std::nullopt;
        }
        return std::string(t);
    }
};

}  // namespace

std::optional<std::map<std::string, std::string>> parse_flat_object(std::string_view text) {
    reader r{text};
    std::map<std::string, std::string> out;
    if (!r.eat('{'))
        return std::nullopt;
    if (!r.eat('}')) {
        for (;;) {
            auto k = r.string();
            if (!k || !r.eat(':'))
                return std::nullopt;
            auto v = r.scalar();
            if (!v || out.size() >= 32 || !out.emplace(std::move(*k), std::move(*v)).second)
                return std::nullopt;
            if (r.eat(','))
                continue;
            if (r.eat('}'))
                break;
            return std::nullopt;
        }
    }
    r.ws();
    if (r.i != text.size())
        return std::nullopt;
    return out;
}

}  // namespace ringmail::admin
