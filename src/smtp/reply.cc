#include "ringmail/smtp/reply.h"

namespace ringmail::smtp {

namespace {
void append_code(std::string& out, unsigned code, char sep) {
    char digits[4] = {static_cast<char>('0' + code / 100 % 10),
                      static_cast<char>('0' + code / 10 % 10), static_cast<char>('0' + code % 10),
                      sep};
    out.append(digits, 4);
}
}  // namespace

void append_reply(std::string& out, unsigned code, std::string_view enhanced,
                  std::string_view text) {
    append_code(out, code, ' ');
    if (!enhanced.empty()) {
        out.append(enhanced);
        out.push_back(' ');
    }
    out.append(text);
    out.append("\r\n");
}

void append_reply_line(std::string& out, unsigned code, bool more, std::string_view text) {
    append_code(out, code, more ? '-' : ' ');
    out.append(text);
    out.append("\r\n");
}

}  // namespace ringmail::smtp
