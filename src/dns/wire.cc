#include "ringmail/dns/wire.h"

#include "ringmail/core/ascii.h"

#include <algorithm>

namespace ringmail::dns {

namespace {

constexpr std::size_t header_size = 12;
constexpr std::size_t max_name = 255;  // RFC 1035 §3.1, length octets included

std::uint16_t get16(std::span<const std::uint8_t> m, std::size_t at) noexcept {
    return static_cast<std::uint16_t>((m[at] << 8) | m[at + 1]);
}

std::uint32_t get32(std::span<const std::uint8_t> m, std::size_t at) noexcept {
    return (std::uint32_t{m[at]} << 24) | (std::uint32_t{m[at + 1]} << 16) |
           (std::uint32_t{m[at + 2]} << 8) | std::uint32_t{m[at + 3]};
}

struct rr_header {
    std::uint16_t type;
    std::uint16_t klass;
    std::uint32_t ttl;
    std::size_t rdata;  // offset of the RDATA
    std::size_t rdlength;
};

// Reads one resource record at `at`; returns the offset after it.
result<std::size_t> read_rr(std::span<const std::uint8_t> m, std::size_t at, rr_header& out) {
    auto name_end = read_name(m, at);
    if (!name_end)
        return failure(name_end.error());
    std::size_t p = *name_end;
    if (m.size() - p < 10)
        return errc::bad_response;
    out.type = get16(m, p);
    out.klass = get16(m, p + 2);
    out.ttl = clamp_ttl(get32(m, p + 4));
    out.rdlength = get16(m, p + 8);
    out.rdata = p + 10;
    if (m.size() - out.rdata < out.rdlength)
        return errc::bad_response;
    return out.rdata + out.rdlength;
}

}  // namespace

std::optional<std::uint32_t> message_summary::negative_ttl() const noexcept {
    if (!soa_ttl || !soa_minimum)
        return std::nullopt;
    return std::min(*soa_ttl, *soa_minimum);
}

result<std::size_t> read_name(std::span<const std::uint8_t> m, std::size_t at,
                              std::string* dotted) {
    if (dotted)
        dotted->clear();
    std::size_t p = at;
    std::size_t segment_start = at;  // start of the current run of labels
    std::optional<std::size_t> end;  // offset after the name in place (set at the first jump)
    std::size_t length = 1;          // expanded length including the root octet
    for (;;) {
        if (p >= m.size())
            return errc::bad_response;
        const std::uint8_t len = m[p];
        if ((len & 0xC0) == 0xC0) {
            if (m.size() - p < 2)
                return errc::bad_response;
            const std::size_t target = static_cast<std::size_t>(get16(m, p) & 0x3FFF);
            // Strictly before the labels this pointer ends: segment starts decrease at every
            // jump, so no chain can loop, and the target lies inside the message.
            if (target >= segment_start)
                return errc::bad_response;
            if (!end)
                end = p + 2;
            p = target;
            segment_start = target;
            continue;
        }
        if ((len & 0xC0) != 0)  // 0x40 / 0x80: extended and reserved label types
            return errc::bad_response;
        if (len == 0) {
            if (!end)
                end = p + 1;
            return *end;
        }
        length += std::size_t{len} + 1;
        if (length > max_name || m.size() - p - 1 < len)
            return errc::bad_response;
        if (dotted) {
            if (!dotted->empty())
                dotted->push_back('.');
            for (std::size_t i = 0; i < len; ++i)
                dotted->push_back(core::to_lower_ascii(static_cast<char>(m[p + 1 + i])));
        }
        p += std::size_t{len} + 1;
    }
}

result<message_summary> summarize(std::span<const std::uint8_t> m) {
    if (m.size() < header_size)
        return errc::bad_response;
    message_summary s;
    s.id = get16(m, 0);
    const std::uint16_t flags = get16(m, 2);
    s.truncated = (flags & 0x0200) != 0;
    s.rcode = static_cast<std::uint8_t>(flags & 0x000F);
    const std::uint16_t qdcount = get16(m, 4);
    s.answer_count = get16(m, 6);
    const std::uint16_t nscount = get16(m, 8);

    std::size_t p = header_size;
    for (std::uint16_t i = 0; i < qdcount; ++i) {
        auto next = read_name(m, p);
        if (!next)
            return failure(next.error());
        p = *next;
        if (m.size() - p < 4)
            return errc::bad_response;
        p += 4;
    }
    rr_header rr{};
    for (std::uint16_t i = 0; i < s.answer_count; ++i) {
        auto next = read_rr(m, p, rr);
        if (!next)
            return failure(next.error());
        p = *next;
        s.min_answer_ttl = s.min_answer_ttl ? std::min(*s.min_answer_ttl, rr.ttl) : rr.ttl;
    }
    for (std::uint16_t i = 0; i < nscount; ++i) {
        auto next = read_rr(m, p, rr);
        if (!next)
            return failure(next.error());
        p = *next;
        if (rr.type != type_soa || s.soa_ttl)
            continue;
        // SOA RDATA: MNAME, RNAME, then SERIAL REFRESH RETRY EXPIRE MINIMUM; the names may
        // point back into the message but must sit inside the RDATA themselves.
        const auto rdata = m.first(rr.rdata + rr.rdlength);
        auto mname_end = read_name(rdata, rr.rdata);
        if (!mname_end)
            return failure(mname_end.error());
        auto rname_end = read_name(rdata, *mname_end);
        if (!rname_end)
            return failure(rname_end.error());
        if (rdata.size() - *rname_end != 20)
            return errc::bad_response;
        s.soa_ttl = rr.ttl;
        s.soa_minimum = clamp_ttl(get32(rdata, *rname_end + 16));
    }
    return s;
}

}  // namespace ringmail::dns
