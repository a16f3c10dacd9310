// Error codes of ringmail::core: the reactor, its buffer rings, sockets and shard threads.
//
// Kernel errors travel as std::system_category codes (sys_failure(errno)); these codes name
// the failures that are ringmail's own judgement (an unusable kernel, a malformed endpoint).
// No shard affinity: the category is a process-wide constant.
#pragma once

#include <system_error>

namespace ringmail::core {

enum class errc {
    ok = 0,
    io_uring_unavailable,  // io_uring_setup failed (kernel too old, disabled, seccomp)
    opcode_unsupported,    // the kernel lacks an io_uring operation the reactor needs
    bad_buffer_ring,       // buffer ring geometry invalid (count not a power of two, too big)
    bad_endpoint,          // "ip:port" text does not parse
    bad_port,              // port missing, not a number or outside 0..65535
    bad_address_family,    // sockaddr family other than AF_INET/AF_INET6
    address_listened,      // another socket already listens on (an address overlapping) it
    address_claimed,       // another ringmaild holds this listen address
};

const std::error_category& core_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), core_category()};
}

}  // namespace ringmail::core

template <>
struct std::is_error_code_enum<ringmail::core::errc> : std::true_type {};
