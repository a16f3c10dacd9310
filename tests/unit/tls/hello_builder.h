// Test helper: TLS ClientHello bytes built by hand, for what no library client sends (hundreds
// of cipher suites, as sslscan and testssl do).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ringmail::tls::test {

inline void put8(std::string& s, std::size_t v) {
    s.push_back(static_cast<char>(v & 0xff));
}
inline void put16(std::string& s, std::size_t v) {
    put8(s, v >> 8);
    put8(s, v);
}
inline void put24(std::string& s, std::size_t v) {
    put8(s, v >> 16);
    put16(s, v);
}

struct hello_spec {
    std::vector<std::uint16_t> suites;
    std::vector<std::uint16_t> groups = {0x001d, 0x0017};  // x25519, secp256r1; {} = none
    bool tls13 = false;                                    // supported_versions + key_share
    std::uint16_t key_share = 0x001d;  // TLS 1.3: x25519 share, or 0 for an empty list
    std::string extra_extensions;      // appended as they are
};

// The handshake message (type, length, body).
inline std::string client_hello_message(const hello_spec& h) {
    std::string body;
    put16(body, 0x0303);
    for (int i = 0; i < 32; ++i)
        put8(body, 0x40 + i);  // "random"
    put8(body, 0);             // no session id
    put16(body, h.suites.size() * 2);
    for (const std::uint16_t s : h.suites)
        put16(body, s);
    put8(body, 1);  // one compression method: null
    put8(body, 0);

    std::string ext;
    auto add = [&ext](std::uint16_t type, const std::string& data) {
        put16(ext, type);
        put16(ext, data.size());
        ext += data;
    };
    if (!h.groups.empty()) {
        std::string groups;
        put16(groups, h.groups.size() * 2);
        for (const std::uint16_t g : h.groups)
            put16(groups, g);
        add(0x000a, groups);  // supported_groups
    }
    add(0x000b, std::string("\x01\x00", 2));  // ec_point_formats: uncompressed
    std::string sigs;
    const std::uint16_t schemes[] = {0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501};
    put16(sigs, sizeof schemes);
    for (const std::uint16_t s : schemes)
        put16(sigs, s);
    add(0x000d, sigs);  // signature_algorithms
    if (h.tls13) {
        add(0x002b, std::string("\x02\x03\x04", 3));  // supported_versions: TLS 1.3
        // key_share: x25519 with a fixed public value (the test stops at the ServerHello).
        std::string share;
        if (h.key_share != 0) {
            put16(share, 2 + 2 + 32);
            put16(share, h.key_share);
            put16(share, 32);
            for (int i = 0; i < 32; ++i)
                put8(share, 9 + i);
        } else {
            put16(share, 0);
        }
        add(0x0033, share);
    }
    ext += h.extra_extensions;
    put16(body, ext.size());
    body += ext;

    std::string msg;
    put8(msg, 1);  // client_hello
    put24(msg, body.size());
    return msg + body;
}

// The message in records of at most `fragment` bytes (record version TLS 1.0, as clients
// send their first flight).
inline std::string in_records(const std::string& msg, std::size_t fragment = 16384) {
    std::string out;
    for (std::size_t at = 0; at < msg.size(); at += fragment) {
        const std::size_t n = std::min(fragment, msg.size() - at);
        put8(out, 22);
        put16(out, 0x0301);
        put16(out, n);
        out.append(msg, at, n);
    }
    return out;
}

// `n` suites: the given ones spread among values no server offers (0x0a00 upwards, skipping
// the signalling values).
inline std::vector<std::uint16_t> many_suites(std::size_t n, std::vector<std::uint16_t> ours) {
    std::vector<std::uint16_t> out;
    std::uint16_t next = 0x0a00;
    std::size_t step = ours.empty() ? n + 1 : n / (ours.size() + 1);
    while (out.size() < n) {
        if (!ours.empty() && step != 0 && out.size() % step == step - 1) {
            out.push_back(ours.front());
            ours.erase(ours.begin());
        } else {
            out.push_back(next++);
        }
    }
    return out;
}

}  // namespace ringmail::tls::test
