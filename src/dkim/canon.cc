#include "ringmail/dkim/canon.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/panic.h"

#include "wolfssl.h"

namespace ringmail::dkim {

static_assert(sizeof(wc_Sha256) <= 256, "dkim::sha256 storage too small for wc_Sha256");
static_assert(alignof(wc_Sha256) <= 16, "dkim::sha256 storage under-aligned");

std::string_view canon_name(canon c) noexcept {
    return c == canon::simple ? "simple" : "relaxed";
}

sha256::sha256() {
    if (wc_InitSha256(reinterpret_cast<wc_Sha256*>(_state)) != 0)
        core::invariant_broken("dkim: wc_InitSha256 failed");
}

sha256::~sha256() {
    wc_Sha256Free(reinterpret_cast<wc_Sha256*>(_state));
}

void sha256::update(const void* p, std::size_t n) {
    // wolfSSL takes word32 lengths: feed huge buffers in pieces.
    const auto* b = static_cast<const byte*>(p);
    while (n > 0) {
        const std::size_t k = n < (1u << 30) ? n : (1u << 30);
        wc_Sha256Update(reinterpret_cast<wc_Sha256*>(_state), b, static_cast<word32>(k));
        b += k;
        n -= k;
    }
}

digest sha256::final() {
    digest d{};
    wc_Sha256Final(reinterpret_cast<wc_Sha256*>(_state), d.data());
    return d;
}

digest sha256_of(std::string_view s) {
    sha256 h;
    h.update(s);
    return h.final();
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
