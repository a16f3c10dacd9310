#include "ringmail/queue/outcome.h"

namespace ringmail::queue {

std::string attempt_reply::to_string() const {
    std::string out = std::to_string(code);
    if (!enhanced.empty())
        out += " " + enhanced;
    if (!text.empty()) {
        out += ' ';
        for (char c : text)
            out += (c == '\n' || c == '\r') ? ' ' : c;
    }
    return out;
}

}  // namespace ringmail::queue
