#include "blast/message.h"

#include <fmt/format.h>

namespace ringmail::blast {

namespace {
constexpr std::size_t line_letters = 76;
}

std::string generate_message(std::size_t size, const generated_headers& h) {
    auto headers = [&](std::string_view subject_tail) {
        return fmt::format(
            "From: ringmail-blast <{}>\r\n"
            "To: undisclosed-recipients:;\r\n"
            "Subject: ringmail-blast test message{}\r\n"
            "Date: {}\r\n"
            "Message-ID: {}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n",
            h.from, subject_tail, h.date, h.message_id);
    };
    std::string m = headers("");
    // One octet more than the headers cannot be a body line (a line end alone is two): the
    // subject takes it instead.
    if (size == m.size() + 1)
        return headers(".");
    if (m.size() >= size)
        return m;
    m.reserve(size);
    std::size_t left = size - m.size();
    // Full lines of 76 letters + CRLF while they fit; the remainder becomes the last line. A
    // remainder of one octet cannot be a line either: the line before it gives up one
    // letter and the last line is empty.
    std::size_t full = left / (line_letters + 2);
    std::size_t rest = left % (line_letters + 2);
    bool shorten = rest == 1;  // full > 0 here: left == 1 was handled above
    for (std::size_t i = 0; i < full; ++i) {
        std::size_t letters = (shorten && i + 1 == full) ? line_letters - 1 : line_letters;
        for (std::size_t j = 0; j < letters; ++j)
            m += static_cast<char>('a' + (i + j) % 26);
        m += "\r\n";
    }
    if (shorten) {
        m += "\r\n";
    } else if (rest >= 2) {
        for (std::size_t j = 0; j + 2 < rest; ++j)
            m += static_cast<char>('A' + j % 26);
        m += "\r\n";
    }
    return m;
}

std::string to_transmission_form(std::string_view raw) {
    std::string out;
    out.reserve(raw.size() + raw.size() / 32 + 2);
    bool line_start = true;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        char c = raw[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n')
                ++i;
            out += "\r\n";
            line_start = true;
            continue;
        }
        if (line_start && c == '.')
            out += '.';
        out += c;
        line_start = false;
    }
    if (!line_start)
        out += "\r\n";
    return out;
}

void expand_address(std::string& out, std::string_view tmpl, std::uint64_t n) {
    out.clear();
    for (;;) {
        auto pos = tmpl.find("{n}");
        if (pos == std::string_view::npos)
            break;
        out.append(tmpl.substr(0, pos));
        fmt::format_to(std::back_inserter(out), "{}", n);
        tmpl.remove_prefix(pos + 3);
    }
    out.append(tmpl);
}

std::string expand_address(std::string_view tmpl, std::uint64_t n) {
    std::string out;
    expand_address(out, tmpl, n);
    return out;
}

}  // namespace ringmail::blast
