#include "ringmail/tls/client_hello.h"

#include <algorithm>
#include <vector>

namespace ringmail::tls {

namespace {

constexpr std::uint8_t handshake_record = 22;  // ContentType handshake
constexpr std::uint8_t client_hello_type = 1;  // HandshakeType client_hello
constexpr std::size_t record_header = 5;       // type, version, length
constexpr std::size_t handshake_header = 4;    // type, 24-bit length
constexpr std::size_t max_fragment = 16384;    // TLSPlaintext.length limit (RFC 8446 5.1)
constexpr std::size_t max_hello = 64 * 1024;
// Signalling values, not suites: always kept (RFC 5746 renegotiation info, RFC 7507 fallback).
constexpr std::uint16_t scsv_renegotiation = 0x00ff;
constexpr std::uint16_t scsv_fallback = 0x5600;

std::size_t be16(const std::string& s, std::size_t at) {
    return static_cast<std::size_t>(static_cast<unsigned char>(s[at])) << 8 |
           static_cast<unsigned char>(s[at + 1]);
}

std::size_t be24(const std::string& s, std::size_t at) {
    return static_cast<std::size_t>(static_cast<unsigned char>(s[at])) << 16 | be16(s, at + 1);
}

void put16(std::string& out, std::size_t v) {
    out.push_back(static_cast<char>((v >> 8) & 0xff));
    out.push_back(static_cast<char>(v & 0xff));
}

}  // namespace

std::string handshake_failure_alert() {
    // alert record, TLS 1.2 record version, length 2: fatal (2), handshake_failure (40).
    return std::string("\x15\x03\x03\x00\x02\x02\x28", 7);
}

hello_check check_client_hello(std::string& in, std::size_t pos, const hello_policy& policy,
                               std::size_t max_suites) {
    const std::span<const std::uint16_t> server_suites = policy.suites;
    // The handshake message, gathered from consecutive handshake records.
    std::string msg;
    std::size_t at = pos;
    std::size_t need = 0;
    std::string version;  // the first record's, reused for the rewritten records
    for (;;) {
        if (in.size() < at + record_header)
            return hello_check::need_more;
        if (static_cast<std::uint8_t>(in[at]) != handshake_record)
            return hello_check::untouched;  // SSLv2-style hello, alert, garbage: wolfSSL's call
        if (version.empty())
            version = in.substr(at + 1, 2);
        const std::size_t len = be16(in, at + 3);
        if (len == 0 || len > max_fragment)
            return hello_check::untouched;
        if (in.size() < at + record_header + len)
            return hello_check::need_more;
        msg.append(in, at + record_header, len);
        at += record_header + len;
        if (msg.size() >= handshake_header) {
            if (static_cast<std::uint8_t>(msg[0]) != client_hello_type)
                return hello_check::untouched;
            need = handshake_header + be24(msg, 1);
            if (need > max_hello)
                return hello_check::untouched;
            if (msg.size() >= need)
                break;
        }
    }
    if (msg.size() != need)
        return hello_check::untouched;  // more handshake data behind the hello: not ours to edit

    // ClientHello: version (2), random (32), session id (1 + n), cipher suites (2 + n), ...
    std::size_t off = handshake_header + 2 + 32;
    if (need < off + 1)
        return hello_check::untouched;
    off += 1 + static_cast<unsigned char>(msg[off]);
    if (need < off + 2)
        return hello_check::untouched;
    const std::size_t suites_len = be16(msg, off);
    if (suites_len % 2 != 0 || need < off + 2 + suites_len)
        return hello_check::untouched;
    const std::size_t count = suites_len / 2;

    // Compression methods, then the extensions: supported_groups (10) must share a group.
    std::size_t ext = off + 2 + suites_len;
    if (need >= ext + 1)
        ext += 1 + static_cast<unsigned char>(msg[ext]);
    if (need >= ext + 2) {
        const std::size_t end = std::min(need, ext + 2 + be16(msg, ext));
        for (std::size_t e = ext + 2; e + 4 <= end;) {
            const std::size_t type = be16(msg, e);
            const std::size_t len = be16(msg, e + 2);
            if (e + 4 + len > end)
                break;  // malformed: wolfSSL's call
            if (type == 10 && len >= 2) {
                const std::size_t list = std::min(be16(msg, e + 4), len - 2);
                bool common = false;
                for (std::size_t g = 0; g + 1 < list; g += 2) {
                    const auto v = static_cast<std::uint16_t>(be16(msg, e + 6 + g));
                    common = common || std::find(policy.groups.begin(), policy.groups.end(), v) !=
                                           policy.groups.end();
                }
                if (!common)
                    return hello_check::no_common_group;
            }
            e += 4 + len;
        }
    }

    if (count <= max_suites)
        return hello_check::untouched;

    std::vector<std::uint16_t> kept;
    bool common = false;
    for (std::size_t i = 0; i < count; ++i) {
        const auto s = static_cast<std::uint16_t>(be16(msg, off + 2 + 2 * i));
        const bool ours =
            std::find(server_suites.begin(), server_suites.end(), s) != server_suites.end();
        common = common || ours;
        if ((ours || s == scsv_renegotiation || s == scsv_fallback) &&
            std::find(kept.begin(), kept.end(), s) == kept.end())
            kept.push_back(s);
    }
    // Nothing in common: the first suites as offered, so wolfSSL gives the answer it would give
    // to the full list (handshake_failure).
    if (!common) {
        kept.clear();
        for (std::size_t i = 0; i < max_suites; ++i)
            kept.push_back(static_cast<std::uint16_t>(be16(msg, off + 2 + 2 * i)));
    }
    kept.resize(std::min(kept.size(), max_suites));

    std::string body = msg.substr(handshake_header, off - handshake_header);
    put16(body, kept.size() * 2);
    for (const std::uint16_t s : kept)
        put16(body, s);
    body.append(msg, off + 2 + suites_len, need - (off + 2 + suites_len));

    std::string hello;
    hello.push_back(static_cast<char>(client_hello_type));
    hello.push_back(static_cast<char>((body.size() >> 16) & 0xff));
    put16(hello, body.size() & 0xffff);
    hello += body;

    std::string records;
    for (std::size_t done = 0; done < hello.size(); done += max_fragment) {
        const std::size_t n = std::min(max_fragment, hello.size() - done);
        records.push_back(static_cast<char>(handshake_record));
        records += version;
        put16(records, n);
        records.append(hello, done, n);
    }
    in.replace(pos, at - pos, records);
    return hello_check::rewritten;
}

}  // namespace ringmail::tls
