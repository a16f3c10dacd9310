#include "format.h"

#include "ringmail/spool/crc32c.h"

#include <cstring>

namespace ringmail::spool::format {

namespace {

// 1: no DSN parameters; 2: RET, ENVID and per-recipient NOTIFY/ORCPT follow the recipients.
// Both are read, so a spool written before DSN recovers unchanged.
constexpr std::uint8_t envelope_version_1 = 1;
constexpr std::uint8_t envelope_version = 2;

void put_str(std::string& out, std::string_view s) {
    char len[4];
    put32(len, static_cast<std::uint32_t>(s.size()));
    out.append(len, 4);
    out.append(s);
}

// Bounds-checked reader over untrusted bytes.
class reader {
  public:
    explicit reader(std::string_view b) : _b(b) {}
    bool u8(std::uint8_t& v) {
        if (_b.size() < 1)
            return false;
        v = std::uint8_t(_b[0]);
        _b.remove_prefix(1);
        return true;
    }
    bool u32(std::uint32_t& v) {
        if (_b.size() < 4)
            return false;
        v = get32(_b.data());
        _b.remove_prefix(4);
        return true;
    }
    bool u64(std::uint64_t& v) {
        if (_b.size() < 8)
            return false;
        v = get64(_b.data());
        _b.remove_prefix(8);
        return true;
    }
    bool str(std::string& s) {
        std::uint32_t n;
        if (!u32(n) || _b.size() < n)
            return false;
        s.assign(_b.data(), n);
        _b.remove_prefix(n);
        return true;
    }
    bool empty() const { return _b.empty(); }
    std::size_t left() const { return _b.size(); }

  private:
    std::string_view _b;
};

}  // namespace

std::string encode_envelope(const mail::envelope& e) {
    std::string out;
    std::size_t n = 4 + 16 + 4 * 5 + e.mail_from.size() + e.helo_name.size() +
                    e.client_address.size() + e.protocol.size();
    for (const auto& r : e.rcpt_to)
        n += 4 + r.size();
    out.reserve(n);
    out.push_back(char(envelope_version));
    out.push_back(char(e.body));
    out.push_back(char(e.smtputf8 ? 1 : 0));
    out.push_back(0);
    char num[8];
    put64(num, e.declared_size);
    out.append(num, 8);
    put64(num, static_cast<std::uint64_t>(e.arrival_time));
    out.append(num, 8);
    put_str(out, e.mail_from);
    put_str(out, e.helo_name);
    put_str(out, e.client_address);
    put_str(out, e.protocol);
    put32(num, static_cast<std::uint32_t>(e.rcpt_to.size()));
    out.append(num, 4);
    for (const auto& r : e.rcpt_to)
        put_str(out, r);
    out.push_back(char(e.ret));
    put_str(out, e.envid);
    const std::size_t dsn_count =
        e.rcpt_params.size() == e.rcpt_to.size() ? e.rcpt_params.size() : 0;
    put32(num, static_cast<std::uint32_t>(dsn_count));
    out.append(num, 4);
    for (std::size_t i = 0; i < dsn_count; ++i) {
        out.push_back(char(e.rcpt_params[i].notify));
        put_str(out, e.rcpt_params[i].orcpt);
    }
    return out;
}

result<mail::envelope> decode_envelope(std::string_view b) {
    reader r(b);
    mail::envelope e;
    std::uint8_t ver, body, utf8, pad;
    std::uint64_t size, arrival;
    std::uint32_t count;
    if (!r.u8(ver) || (ver != envelope_version && ver != envelope_version_1) || !r.u8(body) ||
        body > 3 || !r.u8(utf8) || utf8 > 1 || !r.u8(pad) || !r.u64(size) || !r.u64(arrival) ||
        !r.str(e.mail_from) || !r.str(e.helo_name) || !r.str(e.client_address) ||
        !r.str(e.protocol) || !r.u32(count)) {
        return errc::corrupt;
    }
    // Each recipient takes at least its 4-byte length: bounds the reservation by the input.
    if (count > r.left() / 4)
        return errc::corrupt;
    e.body = static_cast<mail::body_type>(body);
    e.smtputf8 = utf8 != 0;
    e.declared_size = size;
    e.arrival_time = static_cast<std::int64_t>(arrival);
    e.rcpt_to.resize(count);
    for (auto& rc : e.rcpt_to) {
        if (!r.str(rc))
            return errc::corrupt;
    }
    if (ver >= 2) {
        std::uint8_t ret;
        std::uint32_t dsn_count;
        if (!r.u8(ret) || ret > 2 || !r.str(e.envid) || !r.u32(dsn_count))
            return errc::corrupt;
        if (dsn_count != 0 && dsn_count != count)
            return errc::corrupt;
        e.ret = static_cast<mail::dsn_ret>(ret);
        e.rcpt_params.resize(dsn_count);
        for (auto& d : e.rcpt_params) {
            if (!r.u8(d.notify) || d.notify > 15 || !r.str(d.orcpt))
                return errc::corrupt;
        }
    }
    if (!r.empty())
        return errc::corrupt;
    return e;
}

void encode_header(char* out, const record_header& h) {
    put32(out, record_magic);
    put16(out + 4, version);
    put16(out + 6, header_size);
    put64(out + 8, h.body_offset() + h.body_length + trailer_size);
    put64(out + 16, h.id);
    put32(out + 24, h.envelope_length);
    put32(out + 28, h.added_headers_length);
    put64(out + 32, h.body_length);
    put32(out + 40, h.body_crc);
    put32(out + 44, h.pad_length);
}

result<record_header> check_record(std::string_view bytes) {
    if (bytes.size() < header_size + trailer_size)
        return errc::corrupt;
    const char* p = bytes.data();
    if (get32(p) != record_magic || get16(p + 4) != version || get16(p + 6) != header_size) {
        return errc::corrupt;
    }
    record_header h;
    h.record_length = get64(p + 8);
    h.id = get64(p + 16);
    h.envelope_length = get32(p + 24);
    h.added_headers_length = get32(p + 28);
    h.body_length = get64(p + 32);
    h.body_crc = get32(p + 40);
    h.pad_length = get32(p + 44);
    // Lengths are untrusted: compare without overflow (body_length < 2^64 - 2^34 checked first).
    if (h.body_length > bytes.size())
        return errc::corrupt;
    const std::uint64_t expect = h.body_offset() + h.body_length + trailer_size;
    if (h.record_length != expect || h.record_length > bytes.size())
        return errc::corrupt;
    const std::size_t meta = header_size + h.envelope_length + h.added_headers_length;
    const char* t = p + h.body_offset() + h.body_length;
    if (get32(t + 4) != trailer_magic)
        return errc::corrupt;
    if (crc32c(p + h.body_offset(), h.body_length) != h.body_crc)
        return errc::corrupt;
    if (crc32c(p, meta) != get32(t))
        return errc::corrupt;
    return h;
}

void encode_journal(char* out, const journal_entry& e) {
    put32(out, journal_magic);
    out[4] = char(e.type);
    out[5] = out[6] = out[7] = 0;
    put64(out + 8, e.id);
    put64(out + 16, e.a);
    put64(out + 24, e.b);
    put32(out + 32, crc32c(out, 32));
    put32(out + 36, 0);
}

result<journal_entry> decode_journal(std::string_view b) {
    if (b.size() < journal_entry_size)
        return errc::corrupt;
    const char* p = b.data();
    if (get32(p) != journal_magic || p[5] || p[6] || p[7] || get32(p + 36) != 0 ||
        crc32c(p, 32) != get32(p + 32)) {
        return errc::corrupt;
    }
    const auto t = std::uint8_t(p[4]);
    if (t < 1 || t > 4)
        return errc::corrupt;
    return journal_entry{journal_type(t), get64(p + 8), get64(p + 16), get64(p + 24)};
}

}  // namespace ringmail::spool::format
