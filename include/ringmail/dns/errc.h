// Error codes of ringmail::dns: why a mail route could not be found, and what delivery does
// about it.
//
// Plain values, no shard affinity. Each code is either permanent (the recipient bounces with
// the code's enhanced status) or temporary (the delivery is deferred and retried; a DNS
// problem never bounces mail). Codes from other categories count as temporary.
#pragma once

#include <string_view>
#include <system_error>

namespace ringmail::dns {

enum class errc {
    nxdomain = 1,        // the domain does not exist (NXDOMAIN)                  5.1.2
    null_mx,             // the domain publishes a null MX (RFC 7505)             5.1.10 (556)
    no_address,          // no MX and the domain itself has no A/AAAA (NODATA)    5.1.2
    bad_domain,          // not a valid domain name                                5.1.2
    server_failure,      // SERVFAIL, REFUSED, FORMERR, NOTIMP from every server   4.4.3
    timeout,             // no server answered within timeout x tries              4.4.3
    connection_refused,  // every server refused the connection                    4.4.3
    bad_response,        // an answer that does not parse                          4.4.3
    no_reachable_mx,     // MX records exist but none of their hosts resolves      4.4.4
    cancelled,           // the resolver shut down before the lookup finished      4.4.3
    overloaded,          // too many lookups in flight, or waiters on one lookup   4.4.3
    internal,            // c-ares out of memory or refusing a call                4.3.0
};

const std::error_category& dns_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), dns_category()};
}

// True when the recipient should bounce; false means defer and retry. Only dns codes can be
// permanent.
bool is_permanent(std::error_code ec) noexcept;
// The RFC 3463 enhanced status code delivery reports for `ec` ("5.1.10", "4.4.3", ...).
std::string_view enhanced_status(std::error_code ec) noexcept;
// The SMTP reply code that goes with it: 556 for a null MX (RFC 7505), 550 for other
// permanent errors, 451 for temporary ones.
int reply_code(std::error_code ec) noexcept;

}  // namespace ringmail::dns

template <>
struct std::is_error_code_enum<ringmail::dns::errc> : std::true_type {};
