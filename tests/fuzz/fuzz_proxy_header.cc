// libFuzzer target: the PROXY protocol header reader (smtp::proxy_reader), fed what anyone who
// reaches a proxy_protocol listener could send.
//
// The first byte chooses how the rest is split into reads; the rest is the stream. Properties:
// the split never changes the outcome (done or failed, the same octets taken, the same header
// or the same reason); the reader never takes more than its size limits, nothing once done or
// failed, and only the header's octets (what follows stays the caller's); a header it accepts
// names a version 1 or 2 and, unless local, IPv4 or IPv6 addresses of one family.
#include "ringmail/smtp/proxy_header.h"

#include "fuzz_check.h"
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using ringmail::fuzz::check;
using ringmail::smtp::proxy_reader;

constexpr std::size_t limit = 512;

struct outcome {
    bool done = false;
    bool failed = false;
    std::size_t taken = 0;
    std::string error;
    ringmail::smtp::proxy_header header;
};

outcome run(const std::vector<std::string_view>& chunks) {
    outcome o;
    proxy_reader r(limit);
    for (std::string_view chunk : chunks) {
        const std::size_t n = r.feed(chunk);
        check(n <= chunk.size(), "feed takes at most its input");
        o.taken += n;
        check(r.size() <= o.taken, "the reader holds only what it took");
        if (r.done() || r.failed()) {
            check(r.feed("PROXY UNKNOWN\r\n") == 0, "a finished reader takes nothing");
            break;
        }
        check(n == chunk.size(), "an unfinished reader takes every octet");
    }
    check(o.taken <= std::max(limit, proxy_reader::max_v1_size), "within the size limits");
    o.done = r.done();
    o.failed = r.failed();
    check(!(o.done && o.failed), "done and failed exclude each other");
    if (o.failed)
        o.error = r.error();
    check(!o.failed || !o.error.empty(), "a failure has a reason");
    if (o.done) {
        o.header = r.header();
        check(r.size() == o.taken, "a header is exactly the octets taken");
        check(o.header.version == 1 || o.header.version == 2, "version 1 or 2");
        if (!o.header.local) {
            const int f = o.header.source.family();
            check(f == AF_INET || f == AF_INET6, "an IP family");
            check(o.header.destination.family() == f, "one family for both ends");
        }
    }
    return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0)
        return 0;
    const unsigned stride = data[0];
    std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

    const outcome whole = run({in});
    std::vector<std::string_view> pieces;
    for (std::size_t at = 0, k = 0; at < in.size(); ++k) {
        const std::size_t n = 1 + ((stride >> (k % 8)) & 0x0F);
        pieces.push_back(in.substr(at, n));
        at += n;
    }
    const outcome split = run(pieces);

    check(whole.done == split.done && whole.failed == split.failed, "the split changes no end");
    check(whole.taken == split.taken, "the split changes no count of octets taken");
    check(whole.error == split.error, "the split changes no reason");
    if (whole.done) {
        check(whole.header.local == split.header.local, "the split changes no command");
        check(whole.header.version == split.header.version, "the split changes no version");
        check(whole.header.local || (whole.header.source == split.header.source &&
                                     whole.header.destination == split.header.destination),
              "the split changes no address");
    }
    return 0;
}
