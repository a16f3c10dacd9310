#include "ringmail/core/panic.h"

#include "ringmail/core/log.h"

#include <cstdlib>
#include <string>
#include <unistd.h>

namespace ringmail::core {

void invariant_broken(std::string_view what) noexcept {
    std::string line = "ringmail: invariant broken: ";
    line.append(what);
    line.push_back('\n');
    log::end_batching();  // the lines that led here come first
    [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    std::abort();
}

}  // namespace ringmail::core
