// Test helper: builds DNS messages byte by byte, so tests control every field (including the
// broken ones). Not a general encoder: names are written uncompressed unless a test writes a
// pointer itself.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ringmail::dns::testing {

class wire_builder {
  public:
    wire_builder& u8(std::uint8_t v) {
        bytes.push_back(v);
        return *this;
    }
    wire_builder& u16(std::uint16_t v) {
        bytes.push_back(static_cast<std::uint8_t>(v >> 8));
        bytes.push_back(static_cast<std::uint8_t>(v));
        return *this;
    }
    wire_builder& u32(std::uint32_t v) {
        u16(static_cast<std::uint16_t>(v >> 16));
        return u16(static_cast<std::uint16_t>(v));
    }
    // id, flags (QR set + rcode), then the four counts.
    wire_builder& header(std::uint16_t id, std::uint8_t rcode, std::uint16_t qd, std::uint16_t an,
                         std::uint16_t ns, std::uint16_t ar = 0) {
        u16(id);
        u16(static_cast<std::uint16_t>(0x8180 | rcode));
        u16(qd);
        u16(an);
        u16(ns);
        return u16(ar);
    }
    // Uncompressed dotted name; "" is the root.
    wire_builder& name(std::string_view dotted) {
        while (!dotted.empty()) {
            const auto dot = dotted.find('.');
            const auto label = dotted.substr(0, dot);
            u8(static_cast<std::uint8_t>(label.size()));
            bytes.insert(bytes.end(), label.begin(), label.end());
            dotted = dot == std::string_view::npos ? std::string_view{} : dotted.substr(dot + 1);
        }
        return u8(0);
    }
    wire_builder& pointer(std::uint16_t offset) {
        return u16(static_cast<std::uint16_t>(0xC000 | offset));
    }
    wire_builder& question(std::string_view n, std::uint16_t type) {
        name(n);
        u16(type);
        return u16(1);
    }
    // Owner name, type, class IN, TTL; the caller then writes rdlength and RDATA.
    wire_builder& rr_head(std::string_view n, std::uint16_t type, std::uint32_t ttl) {
        name(n);
        u16(type);
        u16(1);
        return u32(ttl);
    }
    wire_builder& mx(std::string_view owner, std::uint32_t ttl, std::uint16_t pref,
                     std::string_view host) {
        rr_head(owner, 15, ttl);
        u16(static_cast<std::uint16_t>(2 + encoded_size(host)));
        u16(pref);
        return name(host);
    }
    wire_builder& a(std::string_view owner, std::uint32_t ttl, std::uint8_t a0, std::uint8_t a1,
                    std::uint8_t a2, std::uint8_t a3) {
        rr_head(owner, 1, ttl);
        u16(4);
        return u8(a0).u8(a1).u8(a2).u8(a3);
    }
    wire_builder& aaaa_loopback(std::string_view owner, std::uint32_t ttl) {
        rr_head(owner, 28, ttl);
        u16(16);
        for (int i = 0; i < 15; ++i)
            u8(0);
        return u8(1);
    }
    wire_builder& soa(std::string_view owner, std::uint32_t ttl, std::uint32_t minimum) {
        rr_head(owner, 6, ttl);
        u16(static_cast<std::uint16_t>(encoded_size("ns.test") + encoded_size("admin.test") + 20));
        name("ns.test");
        name("admin.test");
        u32(1).u32(3600).u32(600).u32(86400);
        return u32(minimum);
    }

    static std::size_t encoded_size(std::string_view dotted) {
        return dotted.empty() ? 1 : dotted.size() + 2;
    }

    std::vector<std::uint8_t> bytes;
};

}  // namespace ringmail::dns::testing
