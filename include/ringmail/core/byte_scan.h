// Finding the bytes that matter to a protocol scanner in bulk: the first CR, LF or NUL of a
// buffer. The SMTP DATA scanner spends its time between line ends; one pass over 16 bytes at
// a time, instead of a memchr per byte value per line, is what keeps that time small.
//
// A pure function, no shard affinity, cannot fail. SSE2 on x86-64 (always there), a plain
// loop elsewhere; both give the same answers.
#pragma once

#include <cstddef>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ringmail::core {

// The index of the first '\r', '\n' or '\0' in [p, p + n), or n when there is none.
inline std::size_t find_cr_lf_nul(const char* p, std::size_t n) noexcept {
    std::size_t i = 0;
#if defined(__SSE2__)
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i lf = _mm_set1_epi8('\n');
    const __m128i nul = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
                                         _mm_cmpeq_epi8(v, nul));
        if (const unsigned bits = static_cast<unsigned>(_mm_movemask_epi8(hit)); bits != 0)
            return i + static_cast<std::size_t>(__builtin_ctz(bits));
    }
#endif
    for (; i < n; ++i) {
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return i;
    }
    return n;
}

}  // namespace ringmail::core
