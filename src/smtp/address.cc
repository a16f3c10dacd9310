#include "ringmail/smtp/address.h"

#include "ringmail/core/ascii.h"
#include "ringmail/smtp/dsn_params.h"

#include <arpa/inet.h>
#include <cstring>

namespace ringmail::smtp {

namespace {

constexpr bool is_alpha(unsigned char c) {
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
constexpr bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

// RFC 5322 atext; octets >= 0x80 stand for UTF8-non-ascii (validated separately).
constexpr bool is_atext(unsigned char c) {
    if (is_alpha(c) || is_digit(c) || c >= 0x80)
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
        case '/':
        case '=':
        case '?':
        case '^':
        case '_':
        case '`':
        case '{':
        case '|':
        case '}':
        case '~':
            return true;
        default:
            return false;
    }
}

// RFC 5321 qtextSMTP plus UTF8-non-ascii.
constexpr bool is_qtext(unsigned char c) {
    return c == 32 || c == 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126) || c >= 0x80;
}

using core::equals_nocase;

bool valid_ipv4(std::string_view s) {
    int parts = 0;
    std::size_t i = 0;
    while (true) {
        std::size_t start = i;
        unsigned value = 0;
        while (i < s.size() && is_digit(s[i]) && i - start < 3)
            value = value * 10 + (s[i++] - '0');
        if (i == start || value > 255)
            return false;
        if (i < s.size() && is_digit(s[i]))
            return false;  // more than 3 digits
        if (++parts == 4)
            return i == s.size();
        if (i >= s.size() || s[i] != '.')
            return false;
        ++i;
    }
}

bool valid_ipv6(std::string_view s) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (s.empty() || s.size() >= sizeof buf)
        return false;
    // inet_pton stops at a NUL: allow only IPv6 characters so the whole literal is checked.
    for (unsigned char c : s) {
        if (!(is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') || c == ':' || c == '.'))
            return false;
    }
    std::memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
    unsigned char addr[16];
    return inet_pton(AF_INET6, buf, addr) == 1;
}

// Parses a Domain or address-literal starting at s[i]; stops at the first octet that cannot
// continue it. Returns the error or advances i.
std::error_code parse_domain(std::string_view s, std::size_t& i) {
    const std::size_t start = i;
    if (i < s.size() && s[i] == '[') {
        std::size_t close = s.find(']', i);
        if (close == std::string_view::npos)
            return errc::address_literal_syntax;
        std::string_view lit = s.substr(i + 1, close - i - 1);
        bool ok = false;
        if (lit.size() > 5 && equals_nocase(lit.substr(0, 5), "IPv6:")) {
            ok = valid_ipv6(lit.substr(5));
        } else {
            ok = valid_ipv4(lit);
        }
        if (!ok)
            return errc::address_literal_syntax;
        i = close + 1;
        if (i - start > max_domain_length)
            return errc::domain_too_long;
        return {};
    }
    while (true) {
        std::size_t label = i;
        while (i < s.size()) {
            unsigned char c = s[i];
            if (is_alpha(c) || is_digit(c) || c >= 0x80 || c == '-') {
                ++i;
            } else {
                break;
            }
        }
        std::size_t len = i - label;
        if (len == 0 || len > 63 || s[label] == '-' || s[i - 1] == '-')
            return errc::domain_syntax;
        if (i < s.size() && s[i] == '.') {
            ++i;
            continue;
        }
        break;
    }
    if (i - start > max_domain_length)
        return errc::domain_too_long;
    return {};
}

// Local-part = Dot-string / Quoted-string, starting at s[i].
std::error_code parse_local_part(std::string_view s, std::size_t& i) {
    const std::size_t start = i;
    if (i < s.size() && s[i] == '"') {
        ++i;
        while (true) {
            if (i >= s.size())
                return errc::local_part_syntax;
            unsigned char c = s[i];
            if (c == '"')
                break;
            if (c == '\\') {
                if (i + 1 >= s.size())
                    return errc::local_part_syntax;
                unsigned char q = s[i + 1];
                if (q < 32 || q > 126)
                    return errc::local_part_syntax;
                i += 2;
            } else if (is_qtext(c)) {
                ++i;
            } else {
                return errc::local_part_syntax;
            }
        }
        ++i;  // closing quote
    } else {
        while (true) {
            std::size_t atom = i;
            while (i < s.size() && is_atext(static_cast<unsigned char>(s[i])))
                ++i;
            if (i == atom)
                return errc::local_part_syntax;
            if (i < s.size() && s[i] == '.') {
                ++i;
                continue;
            }
            break;
        }
    }
    if (i - start > max_local_part_length)
        return errc::local_part_too_long;
    return {};
}

bool has_non_ascii(std::string_view s) {
    for (unsigned char c : s) {
        if (c >= 0x80)
            return true;
    }
    return false;
}

std::string_view skip_spaces(std::string_view s) {
    while (!s.empty() && s.front() == ' ')
        s.remove_prefix(1);
    return s;
}

}  // namespace

bool is_valid_utf8(std::string_view text) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            ++p;
            continue;
        }
        int n;
        std::uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (end - p <= n)
            return false;
        for (int k = 1; k <= n; ++k) {
            if ((p[k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        p += n + 1;
    }
    return true;
}

result<path> parse_path(std::string_view s, path_kind kind, std::string_view* rest) {
    if (s.empty() || s[0] != '<')
        return errc::path_syntax;
    std::size_t i = 1;
    path p;
    if (s.size() > 1 && s[1] == '>') {
        if (kind == path_kind::forward)
            return errc::null_path_not_allowed;
        if (rest)
            *rest = s.substr(2);
        return p;
    }
    // Source route: "@a,@b:" (RFC 5321 4.1.2 A-d-l), checked and dropped.
    if (i < s.size() && s[i] == '@') {
        while (true) {
            ++i;  // '@'
            if (auto ec = parse_domain(s, i))
                return failure(ec);
            if (i < s.size() && s[i] == ',') {
                ++i;
                if (i >= s.size() || s[i] != '@')
                    return errc::path_syntax;
                continue;
            }
            if (i < s.size() && s[i] == ':') {
                ++i;
                break;
            }
            return errc::path_syntax;
        }
    }
    const std::size_t mailbox = i;
    if (auto ec = parse_local_part(s, i))
        return failure(ec);
    const std::size_t local_end = i;
    if (i < s.size() && s[i] == '@') {
        ++i;
        if (auto ec = parse_domain(s, i))
            return failure(ec);
    } else if (kind == path_kind::forward &&
               equals_nocase(s.substr(mailbox, local_end - mailbox), "postmaster")) {
        p.postmaster = true;
    } else {
        return errc::path_syntax;
    }
    if (i >= s.size() || s[i] != '>')
        return errc::path_syntax;
    if (i + 1 > max_path_length)
        return errc::path_too_long;
    std::string_view addr = s.substr(mailbox, i - mailbox);
    if (has_non_ascii(addr)) {
        if (!is_valid_utf8(addr))
            return errc::invalid_utf8;
        p.utf8 = true;
    }
    p.address.assign(addr);
    if (rest)
        *rest = s.substr(i + 1);
    return p;
}

result<mail_parameters> parse_mail_parameters(std::string_view text) {
    mail_parameters mp;
    bool seen_body = false;
    text = skip_spaces(text);
    while (!text.empty()) {
        std::size_t end = text.find(' ');
        std::string_view param = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view{} : skip_spaces(text.substr(end));
        std::size_t eq = param.find('=');
        std::string_view key = param.substr(0, eq);
        std::string_view value;
        bool has_value = eq != std::string_view::npos;
        if (has_value)
            value = param.substr(eq + 1);
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if (key.empty() || !(is_alpha(key[0]) || is_digit(key[0])))
            return errc::parameter_syntax;
        for (unsigned char c : key) {
            if (!(is_alpha(c) || is_digit(c) || c == '-'))
                return errc::parameter_syntax;
        }
        // esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531.
        if (has_value) {
            if (value.empty())
                return errc::parameter_syntax;
            for (unsigned char c : value) {
                if (c < 33 || c == '=' || c == 127)
                    return errc::parameter_syntax;
            }
            if (!is_valid_utf8(value))
                return errc::invalid_utf8;
        }
        if (equals_nocase(key, "SIZE")) {
            if (mp.has_size)
                return errc::duplicate_parameter;
            if (!has_value || value.size() > 20)
                return errc::size_syntax;
            std::uint64_t n = 0;
            for (unsigned char c : value) {
                if (!is_digit(c))
                    return errc::size_syntax;
                std::uint64_t d = c - '0';
                if (n > (UINT64_MAX - d) / 10)
                    return errc::size_syntax;
                n = n * 10 + d;
            }
            mp.has_size = true;
            mp.size = n;
        } else if (equals_nocase(key, "BODY")) {
            if (seen_body)
                return errc::duplicate_parameter;
            seen_body = true;
            if (equals_nocase(value, "7BIT")) {
                mp.body = mail::body_type::seven_bit;
            } else if (equals_nocase(value, "8BITMIME")) {
                mp.body = mail::body_type::eight_bit_mime;
            } else if (equals_nocase(value, "BINARYMIME")) {
                return errc::binarymime_unsupported;
            } else {
                return errc::body_syntax;
            }
        } else if (equals_nocase(key, "SMTPUTF8")) {
            if (has_value)
                return errc::smtputf8_syntax;
            if (mp.smtputf8)
                return errc::duplicate_parameter;
            mp.smtputf8 = true;
        } else if (equals_nocase(key, "RET")) {
            if (mp.ret != mail::dsn_ret::unspecified)
                return errc::duplicate_parameter;
            if (equals_nocase(value, "FULL"))
                mp.ret = mail::dsn_ret::full;
            else if (equals_nocase(value, "HDRS"))
                mp.ret = mail::dsn_ret::headers;
            else
                return errc::ret_syntax;
        } else if (equals_nocase(key, "ENVID")) {
            if (!mp.envid.empty())
                return errc::duplicate_parameter;
            if (!valid_envid(value))
                return errc::envid_syntax;
            mp.envid = value;
        } else {
            return errc::unknown_parameter;
        }
    }
    return mp;
}

result<mail_from_command> parse_mail_from(std::string_view argument) {
    argument = skip_spaces(argument);
    std::string_view rest;
    auto p = parse_path(argument, path_kind::reverse, &rest);
    if (!p)
        return failure(p.error());
    if (!rest.empty() && rest.front() != ' ')
        return errc::path_syntax;
    auto params = parse_mail_parameters(rest);
    if (!params)
        return failure(params.error());
    if (p->utf8 && !params->smtputf8)
        return errc::utf8_needs_smtputf8;
    return mail_from_command{std::move(*p), *params};
}

result<rcpt_to_command> parse_rcpt_to(std::string_view argument, bool smtputf8) {
    argument = skip_spaces(argument);
    std::string_view rest;
    auto p = parse_path(argument, path_kind::forward, &rest);
    if (!p)
        return failure(p.error());
    if (!rest.empty() && rest.front() != ' ')
        return errc::path_syntax;
    rcpt_to_command cmd;
    bool seen_notify = false;
    rest = skip_spaces(rest);
    while (!rest.empty()) {
        const std::size_t end = rest.find(' ');
        const std::string_view param = rest.substr(0, end);
        rest = end == std::string_view::npos ? std::string_view{} : skip_spaces(rest.substr(end));
        const std::size_t eq = param.find('=');
        const std::string_view key = param.substr(0, eq);
        // Report a malformed parameter as such before calling it unknown.
        if (key.empty() || !(is_alpha(key[0]) || is_digit(key[0])))
            return errc::parameter_syntax;
        for (unsigned char c : key) {
            if (!(is_alpha(c) || is_digit(c) || c == '-'))
                return errc::parameter_syntax;
        }
        const std::string_view value =
            eq == std::string_view::npos ? std::string_view{} : param.substr(eq + 1);
        if (equals_nocase(key, "NOTIFY")) {
            if (seen_notify)
                return errc::duplicate_parameter;
            seen_notify = true;
            auto bits = parse_notify(value);
            if (!bits)
                return errc::notify_syntax;
            cmd.dsn.notify = *bits;
        } else if (equals_nocase(key, "ORCPT")) {
            if (!cmd.dsn.orcpt.empty())
                return errc::duplicate_parameter;
            if (!valid_orcpt(value))
                return errc::orcpt_syntax;
            cmd.dsn.orcpt = value;
        } else {
            return errc::unknown_parameter;
        }
        cmd.has_dsn = true;
    }
    if (p->utf8 && !smtputf8)
        return errc::utf8_needs_smtputf8;
    cmd.forward_path = std::move(*p);
    return cmd;
}

std::string domain_of(std::string_view address) {
    std::size_t at = address.rfind('@');
    if (at == std::string_view::npos)
        return {};
    std::string d(address.substr(at + 1));
    for (char& c : d) {
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c | 0x20);
    }
    return d;
}

}  // namespace ringmail::smtp
