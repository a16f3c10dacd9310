// Per-thread TLS clean-up for the tools' shard threads (ringmail-blast, ringmail-sink).
//
// Debian's wolfSSL is built with FP_ECC and thread-local storage: every thread that did an
// ECC handshake keeps a fixed-point cache that only wc_ecc_fp_free() on that same thread
// releases. It is bounded, so not a growing leak, but LeakSanitizer reports it at exit. A
// shard thread calls this once, last, if it used TLS. (It belongs in ringmail::tls; until
// tls offers it, it lives here.) Cannot fail.
#pragma once

// clang-format off
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/ecc.h>
// clang-format on

namespace ringmail::tools {

inline void release_tls_thread_caches() noexcept {
#if defined(HAVE_ECC) && defined(FP_ECC)
    wc_ecc_fp_free();
#endif
}

}  // namespace ringmail::tools
