#include "ringmail/core/errc.h"

#include <string>

namespace ringmail::core {

namespace {

class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.core"; }
    std::string message(int c) const override {
        switch (static_cast<errc>(c)) {
            case errc::ok:
                return "success";
            case errc::io_uring_unavailable:
                return "io_uring is unavailable (kernel too old, disabled by "
                       "kernel.io_uring_disabled, or blocked by seccomp)";
            case errc::opcode_unsupported:
                return "the kernel's io_uring lacks an operation ringmail needs";
            case errc::bad_buffer_ring:
                return "invalid buffer ring geometry (count must be a power of two <= 32768)";
            case errc::bad_endpoint:
                return "malformed endpoint (expected \"ip:port\" or \"[ipv6]:port\")";
            case errc::bad_port:
                return "port missing or outside 0..65535";
            case errc::bad_address_family:
                return "unsupported address family (only IPv4 and IPv6)";
            case errc::address_listened:
                return "another process already listens on this address (or on a wildcard "
                       "address covering it)";
            case errc::address_claimed:
                return "another ringmaild already listens on this address";
        }
        return "unknown ringmail.core error";
    }
};

}  // namespace

const std::error_category& core_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::core
