#include "ringmail/dkim/canon.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/panic.h"

namespace ringmail::dkim {

std::string_view canon_name(canon c) noexcept {
    return c == canon::simple ? "simple" : "relaxed";
}

std::string canonicalize_body(canon c, std::string_view body) {
    std::string out;
    body_canonicalizer bc(c);
    auto sink = [&](const char* p, std::size_t n) { out.append(p, n); };
    bc.update(body, sink);
    bc.finish(sink);
    return out;
}

std::string canonicalize_header(canon c, std::string_view field) {
    if (c == canon::simple) {
        std::string out(field);
        if (out.size() < 2 || out.compare(out.size() - 2, 2, "\r\n") != 0)
            out += "\r\n";
        return out;
    }
    std::string out;
    out.reserve(field.size());
    const std::size_t colon = field.find(':');
    std::string_view name = field.substr(0, colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t'))
        name.remove_suffix(1);
    for (char ch : name)
        out += core::to_lower_ascii(ch);
    out += ':';
    if (colon != std::string_view::npos) {
        bool wsp = false;
        bool started = false;
        for (char ch : field.substr(colon + 1)) {
            if (ch == '\r' || ch == '\n')
                continue;  // unfolding (content holds no bare CR or LF; the final CRLF goes too)
            if (ch == ' ' || ch == '\t') {
                wsp = true;
                continue;
            }
            if (wsp && started)
                out += ' ';
            wsp = false;
            started = true;
            out += ch;
        }
    }
    out += "\r\n";
    return out;
}

}  // namespace ringmail::dkim
