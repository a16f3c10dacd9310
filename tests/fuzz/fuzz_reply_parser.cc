// libFuzzer target: the parser of replies from SMTP servers (smtp::reply_parser), fed what a
// hostile or broken receiving server could send.
//
// The first byte chooses how the rest is split into reads; the rest is the server's bytes.
// Properties: the split never changes the outcome (the same replies, then the same sticky
// failure or the same unfinished tail, as one read of everything); feed() consumes at most what
// it is given and nothing once failed; every reply keeps the promised bounds (code 200..599,
// 1..max_reply_lines lines of at most max_line_length octets, no control characters but tab in
// the text, an enhanced code of the reply's class or none) and prints on one line.
#include "ringmail/smtp/reply_parser.h"

#include "fuzz_check.h"
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using ringmail::fuzz::check;
using ringmail::smtp::reply_parser;
using ringmail::smtp::server_reply;

struct outcome {
    std::vector<server_reply> replies;
    bool failed = false;
    bool mid_reply = false;
};

void check_reply(const server_reply& r) {
    check(r.code >= 200 && r.code <= 599, "reply code within 200..599");
    // A one-line reply keeps no line vector (its text is all in enhanced + text).
    check(r.lines.size() != 1 && r.lines.size() <= reply_parser::max_reply_lines,
          "no lines (one-line reply) or 2..max_reply_lines lines");
    check(r.text.size() <= reply_parser::max_line_length * std::max<std::size_t>(1, r.lines.size()),
          "text within its lines' length");
    for (unsigned char c : r.text)
        check((c >= 0x20 || c == '\t' || (c == '\n' && !r.lines.empty())) && c != 0x7f,
              "no control characters in the text but the line breaks");
    for (const std::string& l : r.lines) {
        check(l.size() <= reply_parser::max_line_length, "line within max_line_length");
        for (unsigned char c : l)
            check((c >= 0x20 || c == '\t') && c != 0x7f, "no control characters in a line");
    }
    check(r.enhanced.empty() || (r.enhanced[0] == '0' + r.code / 100 && r.enhanced[1] == '.'),
          "enhanced code of the reply's class");
    const std::string printed = r.to_string();
    check(printed.find_first_of("\r\n") == std::string::npos, "to_string is one line");
}

// Feeds `chunks` in order, as reads from the socket; a reply is taken as soon as it is whole.
outcome run(const std::vector<std::string_view>& chunks) {
    outcome o;
    reply_parser p;
    for (std::string_view chunk : chunks) {
        while (!chunk.empty()) {
            const std::size_t n = p.feed(chunk);
            check(n <= chunk.size(), "feed consumes at most its input");
            chunk.remove_prefix(n);
            if (p.has_reply()) {
                o.replies.push_back(p.take());
                check_reply(o.replies.back());
                check(!p.has_reply(), "take empties the parser");
                continue;
            }
            if (p.failed()) {
                check(p.feed("250 ok\r\n") == 0, "a failed parser consumes nothing");
                o.failed = true;
                o.mid_reply = p.mid_reply();
                return o;
            }
            check(chunk.empty(), "a parser that is neither done nor failed takes every byte");
        }
    }
    o.mid_reply = p.mid_reply();
    return o;
}

bool same(const server_reply& a, const server_reply& b) {
    return a.code == b.code && a.enhanced == b.enhanced && a.text == b.text && a.lines == b.lines;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0)
        return 0;
    const unsigned stride = data[0];
    std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

    const outcome whole = run({in});

    // Splits of 1..16 octets, the sizes cycling through the stride's bits.
    std::vector<std::string_view> pieces;
    for (std::size_t at = 0, k = 0; at < in.size(); ++k) {
        const std::size_t n = 1 + ((stride >> (k % 8)) & 0x0F);
        pieces.push_back(in.substr(at, n));
        at += n;
    }
    const outcome split = run(pieces);

    check(whole.replies.size() == split.replies.size(), "the split changes no reply count");
    for (std::size_t i = 0; i < whole.replies.size(); ++i)
        check(same(whole.replies[i], split.replies[i]), "the split changes no reply");
    check(whole.failed == split.failed, "the split changes no failure");
    check(whole.mid_reply == split.mid_reply, "the split changes no unfinished tail");
    return 0;
}
