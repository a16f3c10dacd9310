// What every libFuzzer target of ringmail asserts with: a property that does not hold is a
// broken invariant (core::invariant_broken: one line on stderr, abort), which libFuzzer
// reports as a crash and keeps the input.
#pragma once

#include "ringmail/core/panic.h"

namespace ringmail::fuzz {

inline void check(bool ok, const char* what) {
    if (!ok)
        core::invariant_broken(what);
}

}  // namespace ringmail::fuzz
