#include "ringmail/auth/secret.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/random.h>

#include <cstring>
#include <strings.h>

namespace ringmail::auth {

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size())
        return false;
    // volatile keeps the compiler from turning the loop into an early-exit memcmp.
    volatile unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

void wipe(std::string& s) noexcept {
    if (!s.empty())
        ::explicit_bzero(s.data(), s.size());
    s.clear();
}

bool random_bytes(void* out, std::size_t n) noexcept {
    WC_RNG rng;
    if (wc_InitRng(&rng) != 0)
        return false;
    const int rc =
        wc_RNG_GenerateBlock(&rng, static_cast<unsigned char*>(out), static_cast<word32>(n));
    wc_FreeRng(&rng);
    return rc == 0;
}

}  // namespace ringmail::auth
