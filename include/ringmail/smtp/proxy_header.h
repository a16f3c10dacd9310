// Reader of the PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer
// sends before the client's first byte, so that the server learns the client's address.
//
// A pure machine: bytes in, split anywhere; it takes exactly the header's bytes and leaves the
// rest (the client's SMTP or TLS bytes) to the caller. Owned by one inbound connection (so by
// one shard). Bounded: a v1 line is at most 107 octets (the spec's limit), a v2 header at most
// max_v2_size octets; past that, or on anything that is not a well-formed header (bad
// signature, bad version or command, an address that does not parse, an address block shorter
// than its family needs), the reader fails for good with a one-line reason, and the
// connection is closed without a greeting. TLVs of v2 are skipped.
#pragma once

#include "ringmail/core/socket.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::smtp {

struct proxy_header {
    int version = 0;  // 1 or 2
    // v2 LOCAL (a health check of the balancer itself), v1 UNKNOWN or a v2 PROXY with an
    // unspecified family: no client address, the connection's own address stands.
    bool local = false;
    core::endpoint source;       // the client (when !local)
    core::endpoint destination;  // the address the client connected to (when !local)
};

class proxy_reader {
  public:
    static constexpr std::size_t max_v1_size = 107;  // "PROXY TCP6 <39> <39> 65535 65535\r\n"
    static constexpr std::size_t v2_fixed_size = 16;
    static constexpr std::size_t default_max_v2_size = 1024;

    explicit proxy_reader(std::size_t max_v2_size = default_max_v2_size) noexcept
        : _max_v2(max_v2_size < v2_fixed_size + 36 ? v2_fixed_size + 36 : max_v2_size) {}

    // Takes bytes of the header from the front of `bytes`; returns how many (the rest is not
    // the header's). Takes nothing once done or failed.
    std::size_t feed(std::string_view bytes);

    bool done() const noexcept { return _state == state::done; }
    bool failed() const noexcept { return _state == state::failed; }
    // Bytes taken so far (at most the size limit).
    std::size_t size() const noexcept { return _buf.size(); }
    // When done().
    const proxy_header& header() const noexcept { return _header; }
    // When failed(): why, one line ("bad v2 signature", "v1 line longer than 107 octets").
    const std::string& error() const noexcept { return _error; }

  private:
    enum class state : std::uint8_t { start, v1, v2, done, failed };

    void fail(std::string why);
    void finish_v1();
    void finish_v2();

    const std::size_t _max_v2;
    state _state = state::start;
    std::string _buf;
    std::size_t _v2_total = 0;  // 16 + length, once the fixed part is in
    proxy_header _header;
    std::string _error;
};

}  // namespace ringmail::smtp
