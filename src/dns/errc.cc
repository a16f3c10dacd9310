#include "ringmail/dns/errc.h"

#include <optional>
#include <string>

namespace ringmail::dns {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.dns"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::nxdomain:
                return "domain does not exist";
            case errc::null_mx:
                return "domain does not accept mail (null MX)";
            case errc::no_address:
                return "domain has no MX and no address";
            case errc::bad_domain:
                return "invalid domain name";
            case errc::server_failure:
                return "DNS server failure";
            case errc::timeout:
                return "DNS timeout";
            case errc::connection_refused:
                return "DNS server refused the connection";
            case errc::bad_response:
                return "malformed DNS response";
            case errc::no_reachable_mx:
                return "no MX host resolves";
            case errc::cancelled:
                return "DNS lookup cancelled";
            case errc::overloaded:
                return "too many DNS lookups in flight";
            case errc::internal:
                return "DNS resolver internal error";
        }
        return "unknown ringmail.dns error";
    }
};

std::optional<errc> as_dns(const std::error_code& ec) noexcept {
    if (ec.category() != dns_category())
        return std::nullopt;
    return static_cast<errc>(ec.value());
}
}  // namespace

const std::error_category& dns_category() noexcept {
    static const category c;
    return c;
}

bool is_permanent(std::error_code ec) noexcept {
    const std::optional<errc> e = as_dns(ec);
    if (!e)
        return false;
    switch (*e) {
        case errc::nxdomain:
        case errc::null_mx:
        case errc::no_address:
        case errc::bad_domain:
            return true;
        default:
            return false;
    }
}

std::string_view enhanced_status(std::error_code ec) noexcept {
    const std::optional<errc> e = as_dns(ec);
    if (!e)
        return "4.4.3";
    switch (*e) {
        case errc::nxdomain:
        case errc::no_address:
        case errc::bad_domain:
            return "5.1.2";
        case errc::null_mx:
            return "5.1.10";
        case errc::no_reachable_mx:
            return "4.4.4";
        case errc::internal:
            return "4.3.0";
        default:
            return "4.4.3";
    }
}

int reply_code(std::error_code ec) noexcept {
    const std::optional<errc> e = as_dns(ec);
    if (e && *e == errc::null_mx)
        return 556;
    return is_permanent(ec) ? 550 : 451;
}

}  // namespace ringmail::dns
